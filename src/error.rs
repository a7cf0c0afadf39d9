//! The one rescue edge: every typed failure of every stage becomes a Graph-style response here, so
//! a status code, its Graph error code and its headers are decided in one place.
//!
//! Graph's error shape is `{"error":{"code","message","innerError":{"date","request-id",
//! "client-request-id"}}}`; Graph SDKs parse it, so the gateway's own answers use it too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::batch::BatchError;
use crate::body::BodyError;
use crate::credential::{CallerFault, CredentialError};
use crate::policy::PolicyError;
use crate::proxy::{BoxError, UpstreamError};
use crate::ratelimit::{RATELIMIT, RATELIMIT_POLICY, RateLimited};
use crate::route::RouteError;

/// Graph's per-request id header, set on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
/// The caller's correlation id header, echoed on every response.
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

/// A failure of any stage, typed by the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request's path or method was refused by classification.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The caller's token was not accepted.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller may not write connectors.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The body is not a legal connector change.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A `$batch` document that cannot be governed.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// An inner request of a batch was refused; the whole batch is refused with its answer.
    #[error("batch request {id}: {error}")]
    InBatch {
        /// The inner request's `id`.
        id: String,
        /// Why it was refused.
        error: Box<GatewayError>,
    },
    /// A quota is exhausted.
    #[error(transparent)]
    RateLimit(#[from] RateLimited),
    /// No Graph token could be had for the request; nothing was forwarded.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The audit trail could not be written; nothing was forwarded.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The upstream failed to answer.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The embedding service's own upstream failed with an error of its own type.
    #[error("the upstream failed: {0}")]
    Embedded(BoxError),
    /// The whole request took longer than `server.request_timeout`.
    #[error("the request did not complete within {}", humantime::format_duration(*.0))]
    RequestTimeout(Duration),
}

/// What the gateway did with a request, recorded in response extensions for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sent upstream; the response is the upstream's.
    Forwarded,
    /// Refused by policy (auth, scope, body, method, rate limit, route).
    Denied,
    /// Could not be completed (upstream down or slow, audit unavailable, timeout).
    Failed,
}

impl Decision {
    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// Set on responses to upstream failures, so metrics can count them by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamFailure(pub &'static str);

/// How one error is answered.
struct Answer {
    status: StatusCode,
    code: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    decision: Decision,
}

impl Answer {
    fn new(status: StatusCode, code: &'static str, decision: Decision) -> Self {
        Self { status, code, headers: Vec::new(), decision }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl GatewayError {
    fn answer(&self) -> Answer {
        use Decision::*;
        match self {
            Self::Route(RouteError::Ambiguous { .. }) => Answer::new(StatusCode::BAD_REQUEST, "BadRequest", Denied),
            Self::Route(RouteError::MethodOverride { .. }) => {
                Answer::new(StatusCode::BAD_REQUEST, "BadRequest", Denied)
            }
            Self::Route(RouteError::MethodNotAllowed { .. }) => {
                Answer::new(StatusCode::METHOD_NOT_ALLOWED, "Request_BadRequest", Denied)
                    .header(http::header::ALLOW, HeaderValue::from_static("GET, HEAD, PATCH"))
            }
            Self::Route(RouteError::NotAConnectorWrite) => {
                Answer::new(StatusCode::FORBIDDEN, "Authorization_RequestDenied", Denied)
            }
            Self::Auth(AuthError::KeysUnavailable) => {
                Answer::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", Failed)
                    .header(RETRY_AFTER, HeaderValue::from_static("5"))
            }
            Self::Auth(error) => {
                let challenge = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    error.to_string().replace('"', "'")
                );
                Answer::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", Denied).header(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_str(&challenge)
                        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
                )
            }
            Self::Policy(PolicyError::InsufficientScope { required, .. }) => {
                let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", required.join(" "));
                Answer::new(StatusCode::FORBIDDEN, "Authorization_RequestDenied", Denied).header(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_str(&challenge)
                        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"insufficient_scope\"")),
                )
            }
            Self::Policy(PolicyError::TenantNotAllowed { .. }) => {
                Answer::new(StatusCode::FORBIDDEN, "Authorization_RequestDenied", Denied)
            }
            Self::Body(BodyError::TooLarge { .. }) => {
                Answer::new(StatusCode::PAYLOAD_TOO_LARGE, "Request_EntityTooLarge", Denied)
            }
            Self::Body(BodyError::UnsupportedMediaType) => {
                Answer::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", Denied)
            }
            Self::Body(BodyError::NotWritable(_)) => {
                Answer::new(StatusCode::FORBIDDEN, "Authorization_RequestDenied", Denied)
            }
            Self::Body(_) => Answer::new(StatusCode::BAD_REQUEST, "Request_BadRequest", Denied),
            Self::RateLimit(limited) => {
                let remaining = format!("\"{}\";r=0;t={}", limited.quota.as_str(), limited.retry_after_secs);
                Answer::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", Denied)
                    .header(RETRY_AFTER, HeaderValue::from(limited.retry_after_secs))
                    .header(RATELIMIT_POLICY, limited.policy.clone())
                    .header(
                        RATELIMIT,
                        HeaderValue::from_str(&remaining).unwrap_or_else(|_| HeaderValue::from_static("")),
                    )
            }
            Self::Batch(_) => Answer::new(StatusCode::BAD_REQUEST, "BadRequest", Denied),
            Self::InBatch { error, .. } => error.answer(),
            Self::Audit(_) => Answer::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", Failed)
                .header(RETRY_AFTER, HeaderValue::from_static("5")),
            Self::Credential(error) => match error.caller_fault() {
                Some(CallerFault::TokenRejected) => {
                    Answer::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", Denied).header(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static(
                            "Bearer error=\"invalid_token\", error_description=\"the token cannot be exchanged for a Graph token\"",
                        ),
                    )
                }
                Some(CallerFault::ActionRequired) => {
                    Answer::new(StatusCode::FORBIDDEN, "Authorization_RequestDenied", Denied)
                }
                None => Answer::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", Failed)
                    .header(RETRY_AFTER, HeaderValue::from_static("5")),
            },
            Self::Upstream(UpstreamError::Timeout(_)) => {
                Answer::new(StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout", Failed)
            }
            Self::Upstream(_) | Self::Embedded(_) => Answer::new(StatusCode::BAD_GATEWAY, "BadGateway", Failed),
            Self::RequestTimeout(_) => Answer::new(StatusCode::GATEWAY_TIMEOUT, "RequestTimeout", Failed),
        }
    }

    /// Recovers a gateway error that travelled through an embedding service as a boxed error.
    pub fn from_boxed(error: BoxError) -> Self {
        match error.downcast::<GatewayError>() {
            Ok(error) => *error,
            Err(other) => Self::Embedded(other),
        }
    }

    /// Whether this error is a policy refusal or a failure.
    pub fn decision(&self) -> Decision {
        self.answer().decision
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.answer().status
    }

    /// The Graph error code this error is answered with.
    pub fn code(&self) -> &'static str {
        self.answer().code
    }

    /// Builds the Graph-style response for this error.
    pub fn into_response<B>(self, ids: &RequestIds) -> Response<Either<Full<Bytes>, B>> {
        let answer = self.answer();
        // Upstream details (addresses, TLS errors) go to the log, not to the caller.
        let message = match &self {
            Self::Upstream(UpstreamError::Connect(_)) => "the upstream could not be reached".to_owned(),
            Self::Upstream(UpstreamError::Broken(_)) => "the upstream connection failed".to_owned(),
            Self::Credential(CredentialError::Unavailable(_)) => {
                "the gateway could not obtain its Graph token; try again later".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = graph_error(answer.status, answer.code, &message, ids);
        for (name, value) in answer.headers {
            response.headers_mut().insert(name, value);
        }
        if answer.status == StatusCode::UNAUTHORIZED && !response.headers().contains_key(WWW_AUTHENTICATE) {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        if answer.status == StatusCode::SERVICE_UNAVAILABLE && !response.headers().contains_key(RETRY_AFTER) {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(answer.decision);
        if let Self::Upstream(error) = &self {
            response.extensions_mut().insert(UpstreamFailure(error.kind()));
        }
        response.map(Either::Left)
    }
}

/// The ids a response must carry, captured from the request before it moves down the stack.
#[derive(Debug, Clone, Default)]
pub struct RequestIds {
    /// The gateway's own id for this request.
    pub request_id: Option<HeaderValue>,
    /// The caller's correlation id (or the one the gateway assigned).
    pub client_request_id: Option<HeaderValue>,
}

impl RequestIds {
    /// Reads both ids from the request headers (set by the request-id layers).
    pub fn of<B>(request: &Request<B>) -> Self {
        Self {
            request_id: request.headers().get(REQUEST_ID).cloned(),
            client_request_id: request.headers().get(CLIENT_REQUEST_ID).cloned(),
        }
    }
}

/// A Graph-style JSON error response.
pub fn graph_error(status: StatusCode, code: &str, message: &str, ids: &RequestIds) -> Response<Full<Bytes>> {
    let text = |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                "request-id": text(&ids.request_id),
                "client-request-id": text(&ids.client_request_id),
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = &ids.request_id {
        response.headers_mut().insert(REQUEST_ID, id.clone());
    }
    if let Some(id) = &ids.client_request_id {
        response.headers_mut().insert(CLIENT_REQUEST_ID, id.clone());
    }
    response
}

/// Applies the rescue edge: bounds the request by `timeout` and answers every [`GatewayError`]
/// with a Graph-style response.
///
/// tower-http's `TimeoutLayer` answers with an empty body; Graph clients expect an error object,
/// so the request timeout lives here, next to the mapping.
#[derive(Debug, Clone, Copy)]
pub struct RescueLayer {
    timeout: Duration,
}

impl RescueLayer {
    /// A rescue edge bounding every request by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner, timeout: self.timeout }
    }
}

/// See [`RescueLayer`].
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Rescue<S>
where
    S: Service<Request<ReqB>, Response = Response<Either<Full<Bytes>, ResB>>, Error = GatewayError>,
{
    type Response = Response<Either<Full<Bytes>, ResB>>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Inner stages are always ready (the client pool queues internally); an error here would
        // have no request to answer, so it is surfaced on the call instead.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let ids = RequestIds::of(&request);
        ResponseFuture {
            inner: self.inner.call(request),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            ids,
        }
    }
}

pin_project! {
    /// Response future of [`Rescue`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        ids: RequestIds,
    }
}

impl<F, ResB> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Either<Full<Bytes>, ResB>>, GatewayError>>,
{
    type Output = Result<Response<Either<Full<Bytes>, ResB>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                ready!(this.sleep.poll(cx));
                Err(GatewayError::RequestTimeout(*this.timeout))
            }
        };
        Poll::Ready(Ok(match result {
            Ok(mut response) => {
                if response.extensions().get::<Decision>().is_none() {
                    response.extensions_mut().insert(Decision::Forwarded);
                }
                response
            }
            Err(error) => {
                tracing::info!(status = error.status().as_u16(), code = error.code(), error = %error, "refused");
                error.into_response(this.ids)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_become_graph_error_bodies_with_both_ids() {
        let ids = RequestIds {
            request_id: Some(HeaderValue::from_static("gw-1")),
            client_request_id: Some(HeaderValue::from_static("client-7")),
        };
        let response = GatewayError::RequestTimeout(Duration::from_secs(2)).into_response::<Full<Bytes>>(&ids);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[REQUEST_ID], "gw-1");
        assert_eq!(response.headers()[CLIENT_REQUEST_ID], "client-7");
        assert_eq!(response.extensions().get::<Decision>(), Some(&Decision::Failed));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "RequestTimeout");
        assert_eq!(json["error"]["message"], "the request did not complete within 2s");
        assert_eq!(json["error"]["innerError"]["request-id"], "gw-1");
        assert_eq!(json["error"]["innerError"]["client-request-id"], "client-7");
        assert!(json["error"]["innerError"]["date"].as_str().unwrap().starts_with("20"));
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_allowed_methods() {
        let error = GatewayError::Route(RouteError::MethodNotAllowed { method: http::Method::PUT });
        let response = error.into_response::<Full<Bytes>>(&RequestIds::default());
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[http::header::ALLOW], "GET, HEAD, PATCH");
        assert_eq!(response.extensions().get::<Decision>(), Some(&Decision::Denied));
    }
}
