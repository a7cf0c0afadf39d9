//! Body validation: only a legal connector change reaches Graph, byte for byte.
//!
//! Governed bodies are read up to `server.max_body_bytes` (declared or not: a chunked body is cut
//! off as soon as it passes the limit), must be `application/json`, and must parse strictly into a
//! [`ConnectorPatch`] (see [`patch`]). The patch goes into request extensions for the audit stage;
//! the upstream receives the *original bytes*, never a re-serialisation. Other requests stream
//! through untouched.

pub mod patch;

pub use patch::{BodyError, ConnectorPatch, ConnectorStatus, parse_patch};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Either, Full, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::WritableProperty;
use crate::error::GatewayError;
use crate::gateway::ForwardBody;
use crate::proxy::BoxError;
use crate::route::{Route, RouteClass};

/// Is this Content-Type JSON? `application/json`, any case, optional parameters.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Settings of the validation stage.
#[derive(Debug)]
struct Limits {
    max_body_bytes: usize,
    writable: Vec<WritableProperty>,
}

/// Buffers and validates governed bodies. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ValidateBodyLayer {
    limits: Arc<Limits>,
}

impl ValidateBodyLayer {
    /// Validation with a body limit and the properties a PATCH may change.
    pub fn new(max_body_bytes: usize, writable: Vec<WritableProperty>) -> Self {
        Self { limits: Arc::new(Limits { max_body_bytes, writable }) }
    }
}

impl<S> Layer<S> for ValidateBodyLayer {
    type Service = ValidateBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateBody { inner, limits: self.limits.clone() }
    }
}

/// See [`ValidateBodyLayer`].
#[derive(Debug, Clone)]
pub struct ValidateBody<S> {
    inner: S,
    limits: Arc<Limits>,
}

/// Parses a buffered connector PATCH body into the request's [`ConnectorPatch`].
#[derive(Debug)]
pub struct PatchCheck {
    limits: Arc<Limits>,
    connector_id: String,
}

impl Inspect for PatchCheck {
    fn inspect(self, parts: &mut http::request::Parts, bytes: &Bytes) -> Result<(), GatewayError> {
        let patch = parse_patch(bytes, &self.connector_id, &self.limits.writable)?;
        crate::audit::note_changes(&parts.extensions, &patch);
        parts.extensions.insert(patch);
        Ok(())
    }
}

impl<S, B> Service<Request<ForwardBody<B>>> for ValidateBody<S>
where
    S: Service<Request<ForwardBody<B>>, Error = GatewayError> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Buffering<S, ForwardBody<B>, B, PatchCheck>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ForwardBody<B>>) -> Self::Future {
        let connector_id = match request.extensions().get::<Route>() {
            Some(Route { class: RouteClass::ConnectorWrite, target: Some(target), .. }) => target.connector_id.clone(),
            Some(Route { class: RouteClass::Batch, .. }) => {
                // The batch was buffered and planned earlier; its inner writes are checked here,
                // after authentication, as a direct write's body would be.
                if let Err(error) = crate::batch::validate_writes(request.extensions_mut(), &self.limits.writable) {
                    return Buffering::Rejected { error: Some(error) };
                }
                return Buffering::Forwarding { inner: self.inner.call(request) };
            }
            _ => return Buffering::Forwarding { inner: self.inner.call(request) },
        };
        let check = PatchCheck { limits: self.limits.clone(), connector_id };
        buffer(&mut self.inner, request, self.limits.max_body_bytes, check)
    }
}

/// What to do with a buffered body before the request goes on: check it, and note what was
/// learned in the request's extensions.
pub trait Inspect {
    /// Checks `bytes`; an error refuses the request.
    fn inspect(self, parts: &mut http::request::Parts, bytes: &Bytes) -> Result<(), GatewayError>;
}

/// Starts buffering `request` (refusing non-JSON and declared-oversized bodies at once), to be
/// inspected by `check` and then handed to `inner` with the buffered bytes.
pub fn buffer<S, ReqB, B, C>(inner: &mut S, request: Request<ReqB>, limit: usize, check: C) -> Buffering<S, ReqB, B, C>
where
    S: Service<Request<ForwardBody<B>>> + Clone,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
{
    if !is_json(request.headers()) {
        return Buffering::Rejected { error: Some(BodyError::UnsupportedMediaType.into()) };
    }
    let declared =
        request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Buffering::Rejected { error: Some(BodyError::TooLarge { limit }.into()) };
    }
    // The ready inner service handles this request; a fresh clone takes its place.
    let clone = inner.clone();
    let inner = std::mem::replace(inner, clone);
    let (parts, body) = request.into_parts();
    Buffering::Collecting {
        collect: Limited::new(body, limit).collect(),
        state: Some(Pending { parts, inner, limit, check }),
    }
}

/// What a collecting future needs once the body is in.
#[derive(Debug)]
pub struct Pending<S, C> {
    parts: http::request::Parts,
    inner: S,
    limit: usize,
    check: C,
}

pin_project! {
    /// Response future of the buffering stages: forwarding at once, refusing at once, or collecting
    /// the body, inspecting it, and then calling the inner service.
    #[project = Projection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum Buffering<S, ReqB, B, C>
    where
        S: Service<Request<ForwardBody<B>>>,
        ReqB: Body,
        ReqB::Error: Into<BoxError>,
    {
        /// Not buffered here: the inner service already has the request.
        Forwarding { #[pin] inner: S::Future },
        /// Refused before reading the body.
        Rejected { error: Option<GatewayError> },
        /// Reading the body.
        Collecting { #[pin] collect: Collect<Limited<ReqB>>, state: Option<Pending<S, C>> },
    }
}

impl<S, ReqB, B, C> Future for Buffering<S, ReqB, B, C>
where
    S: Service<Request<ForwardBody<B>>, Error = GatewayError>,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<BoxError>,
    C: Inspect,
{
    type Output = Result<S::Response, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                Projection::Forwarding { inner } => return inner.poll(cx),
                Projection::Rejected { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| BodyError::Unreadable.into())));
                }
                Projection::Collecting { collect, state } => {
                    let collected = ready!(collect.poll(cx));
                    let Some(Pending { mut parts, mut inner, limit, check }) = state.take() else {
                        return Poll::Ready(Err(BodyError::Unreadable.into()));
                    };
                    let bytes = match collected {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                            return Poll::Ready(Err(BodyError::TooLarge { limit }.into()));
                        }
                        Err(_) => return Poll::Ready(Err(BodyError::Unreadable.into())),
                    };
                    if let Err(error) = check.inspect(&mut parts, &bytes) {
                        return Poll::Ready(Err(error));
                    }
                    let request = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                    Buffering::Forwarding { inner: inner.call(request) }
                }
            };
            self.set(next);
        }
    }
}

#[cfg(test)]
mod tests;
