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

impl<S, B> Service<Request<B>> for ValidateBody<S>
where
    S: Service<Request<ForwardBody<B>>, Error = GatewayError> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let connector_id = match request.extensions().get::<Route>() {
            Some(Route { class: RouteClass::ConnectorWrite, target: Some(target), .. }) => target.connector_id.clone(),
            _ => {
                return ResponseFuture::Forwarding { inner: self.inner.call(request.map(Either::Right)) };
            }
        };
        if !is_json(request.headers()) {
            return ResponseFuture::rejected(BodyError::UnsupportedMediaType);
        }
        let declared =
            request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let limit = self.limits.max_body_bytes;
        if declared.is_some_and(|length| length > limit as u64) {
            return ResponseFuture::rejected(BodyError::TooLarge { limit });
        }
        // The ready inner service handles this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        ResponseFuture::Collecting {
            collect: Limited::new(body, limit).collect(),
            state: Some(Pending { parts, inner, limits: self.limits.clone(), connector_id }),
        }
    }
}

/// What a collecting future needs once the body is in.
#[derive(Debug)]
pub struct Pending<S> {
    parts: http::request::Parts,
    inner: S,
    limits: Arc<Limits>,
    connector_id: String,
}

pin_project! {
    /// Response future of [`ValidateBody`]: forwarding at once, refusing at once, or collecting the
    /// body and then calling the inner service.
    #[project = Projection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum ResponseFuture<S, B>
    where
        S: Service<Request<ForwardBody<B>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        /// Not governed: the inner service already has the request.
        Forwarding { #[pin] inner: S::Future },
        /// Refused before reading the body.
        Rejected { error: Option<BodyError> },
        /// Reading the governed body.
        Collecting { #[pin] collect: Collect<Limited<B>>, state: Option<Pending<S>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ForwardBody<B>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn rejected(error: BodyError) -> Self {
        Self::Rejected { error: Some(error) }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<ForwardBody<B>>, Error = GatewayError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                Projection::Forwarding { inner } => return inner.poll(cx),
                Projection::Rejected { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or(BodyError::Unreadable).into()));
                }
                Projection::Collecting { collect, state } => {
                    let collected = ready!(collect.poll(cx));
                    let Some(Pending { parts, mut inner, limits, connector_id }) = state.take() else {
                        return Poll::Ready(Err(BodyError::Unreadable.into()));
                    };
                    let bytes = match collected {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                            return Poll::Ready(Err(BodyError::TooLarge { limit: limits.max_body_bytes }.into()));
                        }
                        Err(_) => return Poll::Ready(Err(BodyError::Unreadable.into())),
                    };
                    let patch = match parse_patch(&bytes, &connector_id, &limits.writable) {
                        Ok(patch) => patch,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let mut request = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                    crate::audit::note_changes(&request, &patch);
                    request.extensions_mut().insert(patch);
                    ResponseFuture::Forwarding { inner: inner.call(request) }
                }
            };
            self.set(next);
        }
    }
}

#[cfg(test)]
mod tests;
