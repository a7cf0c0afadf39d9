//! Authentication: the caller's `Authorization: Bearer` JWT is verified (see [`verify`]) and the
//! resulting [`Principal`] goes into request extensions for policy, rate limiting and audit.
//!
//! Only governed requests (connector writes) are authenticated here; other traffic passes to
//! Graph, which authenticates it itself. Verification with a known key is synchronous (and cached);
//! only a token with an unknown `kid` waits, for the single shared key refresh.

pub mod keys;
pub mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Request;
use http::header::AUTHORIZATION;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use keys::{KeySet, KeyStore};
pub use verify::{Verdict, Verifier};

use crate::error::GatewayError;

/// Delegated (a user, `scp`) or application (app-only, `roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A user's token: permissions in `scp`.
    Delegated,
    /// An app-only token: permissions in `roles`.
    Application,
}

/// Who asks, as the verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `tid`.
    pub tenant_id: String,
    /// `oid`.
    pub object_id: Option<String>,
    /// `appid` (v1) or `azp` (v2).
    pub app_id: Option<String>,
    /// Delegated when `scp` is present.
    pub kind: PrincipalKind,
    /// `preferred_username`, `upn` or `name`.
    pub name: Option<String>,
    /// `scp`, split on spaces.
    pub scopes: Vec<String>,
    /// `roles`.
    pub roles: Vec<String>,
}

/// Why a token was not accepted. Messages say what failed and never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header, or an empty token.
    #[error("no access token: send Authorization: Bearer <token>")]
    MissingToken,
    /// An Authorization scheme other than Bearer.
    #[error("only Bearer tokens are accepted")]
    NotBearer,
    /// Larger than 16 KiB.
    #[error("the access token is too large")]
    TooLarge,
    /// Not a well-formed JWT.
    #[error("the access token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` outside the allowlist (including `none` and HMAC).
    #[error("the token's signing algorithm {0} is not accepted")]
    UnsupportedAlgorithm(String),
    /// `kid` not in the key set, even after a refresh.
    #[error("the token's signing key is not known")]
    UnknownKey,
    /// `alg` does not fit the key's type or the JWK's own `alg`.
    #[error("the token's algorithm does not match its signing key")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// No `exp`.
    #[error("the token has no expiry")]
    MissingExpiry,
    /// Past `exp` + leeway.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` - leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` not among the accepted audiences.
    #[error("the token's audience is not accepted")]
    WrongAudience,
    /// `iss` not among the accepted issuers for its tenant.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `tid` missing or not a GUID.
    #[error("the token's tenant id is missing or not a GUID")]
    BadTenantId,
    /// A Graph-audience token with a nonce header, and the nonce option is off.
    #[error("the token was issued for Microsoft Graph; request a token for this gateway's audience")]
    GraphToken,
    /// No key set is loaded yet.
    #[error("signing keys are not loaded yet")]
    KeysUnavailable,
}

/// Extracts the bearer token; the scheme is case-insensitive (RFC 7235).
pub fn bearer_token<B>(request: &Request<B>) -> Result<&str, AuthError> {
    let value = request.headers().get(AUTHORIZATION).ok_or(AuthError::MissingToken)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed("the Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    match token.trim() {
        "" => Err(AuthError::MissingToken),
        token => Ok(token),
    }
}

/// Verifies the caller's token on governed requests (on every request with
/// [`AuthenticateLayer::every_request`]). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    verifier: Arc<Verifier>,
    every_request: bool,
}

impl AuthenticateLayer {
    /// Authentication of governed requests with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier, every_request: false }
    }

    /// Also authenticates requests that are not connector writes: needed when the gateway calls
    /// Graph with its own credential, which it must never lend to an unverified caller.
    pub fn every_request(mut self, every_request: bool) -> Self {
        self.every_request = every_request;
        self
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, verifier: self.verifier.clone(), every_request: self.every_request }
    }
}

/// See [`AuthenticateLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<Verifier>,
    every_request: bool,
}

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Error = GatewayError> + Clone,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let governed = crate::route::is_governed(request.extensions());
        if !governed && !self.every_request {
            return ResponseFuture::Forwarding { inner: self.inner.call(request) };
        }
        let verdict = match bearer_token(&request) {
            Ok(token) => self.verifier.verify_now(token),
            Err(error) => Verdict::Done(Err(error)),
        };
        match verdict {
            Verdict::Done(Ok(principal)) => {
                crate::audit::note_principal(request.extensions(), &principal);
                request.extensions_mut().insert(principal);
                ResponseFuture::Forwarding { inner: self.inner.call(request) }
            }
            Verdict::Done(Err(error)) => ResponseFuture::Rejected { error: Some(error) },
            Verdict::UnknownKid(kid) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let keys = self.verifier.keys().clone();
                ResponseFuture::Refreshing {
                    refresh: Box::pin(async move {
                        keys.refresh_for_unknown_kid(&kid).await;
                    }),
                    state: Some((request, inner, self.verifier.clone())),
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`Authenticate`]. Only the rare unknown-`kid` path allocates.
    #[project = Projection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        /// Verified (or not governed): waiting on the inner service.
        Forwarding { #[pin] inner: S::Future },
        /// Refused.
        Rejected { error: Option<AuthError> },
        /// Waiting for the shared key refresh, then verifying again.
        Refreshing { refresh: Pin<Box<dyn Future<Output = ()> + Send>>, state: Option<(Request<B>, S, Arc<Verifier>)> },
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Output = Result<S::Response, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                Projection::Forwarding { inner } => return inner.poll(cx),
                Projection::Rejected { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or(AuthError::MissingToken).into()));
                }
                Projection::Refreshing { refresh, state } => {
                    ready!(refresh.as_mut().poll(cx));
                    let Some((mut request, mut inner, verifier)) = state.take() else {
                        return Poll::Ready(Err(AuthError::UnknownKey.into()));
                    };
                    let verdict = match bearer_token(&request) {
                        Ok(token) => verifier.verify_now(token),
                        Err(error) => Verdict::Done(Err(error)),
                    };
                    match verdict {
                        Verdict::Done(Ok(principal)) => {
                            crate::audit::note_principal(request.extensions(), &principal);
                            request.extensions_mut().insert(principal);
                            ResponseFuture::Forwarding { inner: inner.call(request) }
                        }
                        Verdict::Done(Err(error)) => ResponseFuture::Rejected { error: Some(error) },
                        Verdict::UnknownKid(_) => ResponseFuture::Rejected { error: Some(AuthError::UnknownKey) },
                    }
                }
            };
            self.set(next);
        }
    }
}
