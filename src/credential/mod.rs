//! The gateway's own Graph credential: what `Authorization` the upstream receives.
//!
//! Microsoft states that only Graph may validate tokens issued for Graph, so the supported way to
//! put a policy gateway in front of it is: callers get tokens for the **gateway's own** app
//! registration, the gateway verifies them fully, and calls Graph with a token it obtains itself.
//!
//! - `passthrough`: the caller's `Authorization` goes upstream as is.
//! - `client_credentials`: the gateway's app token (application permissions on Graph), cached and
//!   renewed ahead of expiry ([`AppTokenSource`]).
//! - `on_behalf_of`: the caller's verified token is exchanged for a Graph token for the same user,
//!   so Graph still applies the user's own permissions ([`OboCache`]).
//!
//! In the last two modes the caller's `Authorization` never reaches Graph, and the gateway's
//! credential is attached only to requests whose caller it verified (a [`Principal`] in the
//! request extensions): it never lends its own permissions to an unauthenticated request. A
//! request that cannot get a token is refused (503, or 401/403 for an exchange Entra refused).

pub mod cache;
pub mod entra;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Request;
use http::header::AUTHORIZATION;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use cache::{AppTokenSource, OboCache};
pub use entra::TokenClient;

use crate::auth::Principal;
use crate::config::{UpstreamConfig, UpstreamCredential};
use crate::error::GatewayError;

/// On-behalf-of tokens kept at most (distinct caller tokens).
pub const OBO_CACHE_CAPACITY: usize = 10_000;

/// Why no Graph token could be had for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The token endpoint could not be reached or answered nonsense.
    #[error("the gateway could not obtain its Graph token: {0}")]
    Unavailable(String),
    /// The token endpoint refused the request.
    #[error("the token endpoint refused: {code}{}", aadsts.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        /// Whether this was an on-behalf-of exchange of the caller's token.
        exchange: bool,
        /// The HTTP status Entra answered.
        status: u16,
        /// The OAuth `error` (`invalid_grant`, `interaction_required`, `invalid_client`, ...).
        code: String,
        /// The `AADSTS` code at the start of the description.
        aadsts: Option<String>,
    },
}

impl CredentialError {
    /// Whether an exchange's refusal is about the caller (their token or their consent), not the
    /// gateway (for the gateway's own app token, every refusal is the gateway's): `invalid_grant` means the caller's token cannot be exchanged (401); `interaction_required`
    /// and `consent_required` mean the user must act first (403). Anything else is the gateway's
    /// own problem (503).
    pub fn caller_fault(&self) -> Option<CallerFault> {
        match self {
            Self::Refused { exchange: true, code, .. } if code == "invalid_grant" => Some(CallerFault::TokenRejected),
            Self::Refused { exchange: true, code, .. }
                if code == "interaction_required" || code == "consent_required" =>
            {
                Some(CallerFault::ActionRequired)
            }
            _ => None,
        }
    }
}

/// How an on-behalf-of refusal is the caller's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerFault {
    /// Entra would not exchange the caller's token (401).
    TokenRejected,
    /// The user must consent or satisfy a policy such as MFA first (403).
    ActionRequired,
}

/// Where Graph tokens come from, in the modes that get their own.
#[derive(Debug)]
pub enum CredentialProvider {
    /// The gateway's app token.
    ClientCredentials(Arc<AppTokenSource>),
    /// Per-caller exchanged tokens.
    OnBehalfOf(Arc<OboCache>),
}

impl CredentialProvider {
    /// The provider for `upstream.credential`; `None` for passthrough.
    pub fn from_config(upstream: &UpstreamConfig) -> Option<Arc<Self>> {
        let connector = || crate::proxy::https_connector(&upstream.extra_roots, upstream.connect_timeout);
        match &upstream.credential {
            UpstreamCredential::Passthrough => None,
            UpstreamCredential::ClientCredentials(app) => {
                let client = Arc::new(TokenClient::new(app.clone(), connector()));
                Some(Arc::new(Self::ClientCredentials(Arc::new(AppTokenSource::new(client)))))
            }
            UpstreamCredential::OnBehalfOf(app) => {
                let client = Arc::new(TokenClient::new(app.clone(), connector()));
                Some(Arc::new(Self::OnBehalfOf(Arc::new(OboCache::new(client, OBO_CACHE_CAPACITY)))))
            }
        }
    }

    /// Calls made to the token endpoint so far.
    pub fn token_requests(&self) -> u64 {
        match self {
            Self::ClientCredentials(source) => source.requests(),
            Self::OnBehalfOf(cache) => cache.requests(),
        }
    }
}

/// Sets the upstream `Authorization` per `upstream.credential`. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct UpstreamCredentialLayer {
    provider: Option<Arc<CredentialProvider>>,
}

impl UpstreamCredentialLayer {
    /// `None` forwards the caller's `Authorization` (passthrough).
    pub fn new(provider: Option<Arc<CredentialProvider>>) -> Self {
        Self { provider }
    }
}

impl<S> Layer<S> for UpstreamCredentialLayer {
    type Service = AttachCredential<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttachCredential { inner, provider: self.provider.clone() }
    }
}

/// See [`UpstreamCredentialLayer`].
#[derive(Debug, Clone)]
pub struct AttachCredential<S> {
    inner: S,
    provider: Option<Arc<CredentialProvider>>,
}

type TokenFetch = Pin<Box<dyn Future<Output = Result<http::HeaderValue, CredentialError>> + Send>>;

impl<S, B> Service<Request<B>> for AttachCredential<S>
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
        let Some(provider) = self.provider.clone() else {
            return ResponseFuture::Forwarding { inner: self.inner.call(request) };
        };
        let verified = request.extensions().get::<Principal>().is_some();
        // On-behalf-of: look the caller's token up before its header goes; it is copied only
        // when it must be exchanged.
        let exchange = match provider.as_ref() {
            CredentialProvider::OnBehalfOf(cache) if verified => {
                crate::auth::bearer_token(&request).ok().map(|token| {
                    let key = cache::token_key(token);
                    (key, cache.now(&key).ok_or_else(|| token.to_owned()))
                })
            }
            _ => None,
        };
        // Whatever happens next, the caller's own credential is not for Graph.
        request.headers_mut().remove(AUTHORIZATION);
        if !verified {
            return ResponseFuture::Forwarding { inner: self.inner.call(request) };
        }
        let fetch: TokenFetch = match (provider.as_ref(), exchange) {
            (CredentialProvider::ClientCredentials(source), _) => match source.now() {
                Some(token) => return self.forward_with(request, token),
                None => {
                    let source = source.clone();
                    Box::pin(async move { source.token().await })
                }
            },
            (CredentialProvider::OnBehalfOf(_), Some((_, Ok(token)))) => return self.forward_with(request, token),
            (CredentialProvider::OnBehalfOf(cache), Some((key, Err(assertion)))) => {
                let cache = cache.clone();
                Box::pin(async move { cache.token(key, &assertion).await })
            }
            // Verified without a bearer token cannot happen; refuse rather than guess.
            (CredentialProvider::OnBehalfOf(_), None) => {
                return ResponseFuture::Rejected { error: Some(crate::auth::AuthError::MissingToken.into()) };
            }
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Fetching { fetch, state: Some((request, inner)) }
    }
}

impl<S> AttachCredential<S> {
    fn forward_with<B>(&mut self, mut request: Request<B>, token: http::HeaderValue) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>, Error = GatewayError>,
    {
        request.headers_mut().insert(AUTHORIZATION, token);
        ResponseFuture::Forwarding { inner: self.inner.call(request) }
    }
}

pin_project! {
    /// Response future of [`AttachCredential`]. Only a request that must wait for a token boxes.
    #[project = Projection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        /// Waiting on the inner service.
        Forwarding { #[pin] inner: S::Future },
        /// Refused.
        Rejected { error: Option<GatewayError> },
        /// Waiting for a token (the single fetch in flight, or an exchange).
        Fetching { fetch: TokenFetch, state: Option<(Request<B>, S)> },
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
                    let error = error.take().unwrap_or(GatewayError::Credential(CredentialError::Unavailable(
                        "the request was polled after it was refused".into(),
                    )));
                    return Poll::Ready(Err(error));
                }
                Projection::Fetching { fetch, state } => {
                    let token = ready!(fetch.as_mut().poll(cx));
                    let Some((mut request, mut inner)) = state.take() else {
                        return Poll::Ready(Err(CredentialError::Unavailable("polled after completion".into()).into()));
                    };
                    match token {
                        Ok(token) => {
                            request.headers_mut().insert(AUTHORIZATION, token);
                            ResponseFuture::Forwarding { inner: inner.call(request) }
                        }
                        Err(error) => ResponseFuture::Rejected { error: Some(error.into()) },
                    }
                }
            };
            self.set(next);
        }
    }
}
