//! Request ids and the access log.
//!
//! `request-id` is the gateway's to assign: an inbound one is dropped (a client must not choose the
//! id its audit record is filed under), then tower-http's `SetRequestId` assigns a UUID and
//! `PropagateRequestId` puts it on the response unless Graph already sent its own.
//! `client-request-id` is the caller's: kept when sent, assigned when missing, echoed back.
//! Each request gets a span with its id and one `response` line when its head is sent.

use std::time::Duration;

use http::{Request, Response};
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_http::trace::{MakeSpan, OnResponse};
use tracing::Span;

use crate::error::{CLIENT_REQUEST_ID, Decision, REQUEST_ID};
use crate::route::{Route, RouteClass};

/// Drops any inbound `request-id` header so the next layer assigns a fresh one.
#[derive(Debug, Clone, Copy, Default)]
pub struct DropInboundRequestId;

impl crate::step::RequestStep for DropInboundRequestId {
    fn apply<B>(&self, request: &mut Request<B>) {
        request.headers_mut().remove(REQUEST_ID);
    }
}

/// Makes UUID v4 ids (Graph's `client-request-id` is a GUID).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeGuid;

impl MakeRequestId for MakeGuid {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        http::HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// The span every request runs in: its ids, method, path (never the query or headers, which can
/// carry secrets) and route class.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let header = |name| request.headers().get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).unwrap_or("");
        let class = request.extensions().get::<Route>().map_or(RouteClass::Other, |r| r.class);
        tracing::info_span!(
            "request",
            request_id = header(REQUEST_ID),
            client_request_id = header(CLIENT_REQUEST_ID),
            method = %request.method(),
            path = request.uri().path(),
            class = class.as_str(),
        )
    }
}

/// The access log: one line per request, when its response head is ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog;

impl<B> OnResponse<B> for AccessLog {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &Span) {
        let decision = response.extensions().get::<Decision>().copied().unwrap_or(Decision::Forwarded);
        tracing::info!(
            status = response.status().as_u16(),
            decision = decision.as_str(),
            latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            "response"
        );
    }
}
