//! JSON batching: `POST /{v}/$batch` carries inner requests (`requests[].id/method/url/body/
//! headers`), and an inner connector write must be governed exactly like a direct one.
//!
//! [`BatchPlanLayer`] buffers the batch (size-limited like any governed body), parses it strictly
//! (duplicate keys anywhere are refused), and classifies every inner request with the same rules
//! as a direct request. The [`BatchPlan`] lists the inner connector writes; a batch without any
//! passes through untouched (unless `policy.other_requests = "deny"`). With writes, the later
//! stages authenticate the outer token, authorise, validate each inner body, and audit one record
//! set per inner write. An inner write that would be refused refuses the whole batch, naming its
//! `id`; nothing of it is forwarded. `dependsOn` and inner headers are forwarded as sent: the
//! upstream receives the caller's bytes.

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body::Body;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::body::{BodyError, ConnectorPatch, Inspect, buffer, parse_patch};
use crate::config::{OtherRequests, WritableProperty};
use crate::error::GatewayError;
use crate::gateway::ForwardBody;
use crate::proxy::BoxError;
use crate::route::{ApiVersion, ConnectorTarget, Route, RouteClass, RouteError, classify};

/// Inner requests a batch may carry (Graph's own limit).
pub const MAX_INNER_REQUESTS: usize = 20;

/// Why a batch is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not a well-formed batch document.
    #[error("the batch is not valid: {0}")]
    Malformed(String),
    /// More inner requests than Graph accepts.
    #[error("a batch carries at most {MAX_INNER_REQUESTS} requests")]
    TooMany,
    /// A `$batch` inside a batch.
    #[error("batch request {0}: a batch cannot contain another batch")]
    Nested(String),
    /// Two inner requests with the same id.
    #[error("batch request id {0} appears more than once")]
    DuplicateId(String),
}

/// One inner connector write.
#[derive(Debug, Clone)]
pub struct InnerWrite {
    /// The inner request's `id`.
    pub id: String,
    /// Its method (upper-cased).
    pub method: Method,
    /// Its path, below the API version.
    pub path: String,
    /// The connector it writes.
    pub target: ConnectorTarget,
    body: Option<Value>,
    json_content_type: bool,
    /// The validated change, once the validation stage ran.
    pub patch: Option<ConnectorPatch>,
}

/// The inner connector writes of a batch, in request extensions.
#[derive(Debug, Clone, Default)]
pub struct BatchPlan {
    /// In batch order.
    pub writes: Vec<InnerWrite>,
}

/// A JSON value parsed with duplicate keys refused at every depth.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn strict_parse(bytes: &[u8]) -> Result<Value, BatchError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BatchError::Malformed("not UTF-8".into()))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let StrictValue(value) =
        StrictValue::deserialize(&mut deserializer).map_err(|e| BatchError::Malformed(e.to_string()))?;
    deserializer.end().map_err(|e| BatchError::Malformed(e.to_string()))?;
    Ok(value)
}

/// The inner URL as a request target below `version`: relative (`/users`, `users`) or absolute.
fn inner_uri(url: &str, version: ApiVersion) -> Option<Uri> {
    let uri: Uri = if url.contains("://") {
        url.parse().ok()?
    } else {
        format!("/{}/{}", version.as_str(), url.strip_prefix('/').unwrap_or(url)).parse().ok()?
    };
    uri.path_and_query().map(|p| p.as_str().to_owned()).and_then(|p| p.parse().ok())
}

fn inner_headers(value: Option<&Value>) -> (HeaderMap, bool) {
    let mut headers = HeaderMap::new();
    let mut json = false;
    if let Some(Value::Object(map)) = value {
        for (name, value) in map {
            let Some(text) = value.as_str() else { continue };
            if name.eq_ignore_ascii_case("content-type") {
                json = text.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
            }
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(text)) {
                headers.append(name, value);
            }
        }
    }
    (headers, json)
}

fn in_batch(id: &str, error: impl Into<GatewayError>) -> GatewayError {
    GatewayError::InBatch { id: id.to_owned(), error: Box::new(error.into()) }
}

/// Parses a batch and lists its inner connector writes; refuses what a direct request would.
pub fn plan(bytes: &[u8], version: ApiVersion) -> Result<BatchPlan, GatewayError> {
    let document = strict_parse(bytes)?;
    let requests = document
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| BatchError::Malformed("`requests` must be an array".into()))?;
    if requests.len() > MAX_INNER_REQUESTS {
        return Err(BatchError::TooMany.into());
    }
    let mut seen: Vec<&str> = Vec::with_capacity(requests.len());
    let mut plan = BatchPlan::default();
    for (index, inner) in requests.iter().enumerate() {
        let field = |name: &str| inner.get(name).and_then(Value::as_str);
        let id = field("id").ok_or_else(|| BatchError::Malformed(format!("request {index} has no string `id`")))?;
        if seen.contains(&id) {
            return Err(BatchError::DuplicateId(id.to_owned()).into());
        }
        seen.push(id);
        let method = field("method").ok_or_else(|| BatchError::Malformed(format!("request {id} has no `method`")))?;
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| BatchError::Malformed(format!("request {id} has an invalid method")))?;
        let url = field("url").ok_or_else(|| BatchError::Malformed(format!("request {id} has no `url`")))?;
        let uri =
            inner_uri(url, version).ok_or_else(|| BatchError::Malformed(format!("request {id} has an invalid url")))?;
        let (headers, json_content_type) = inner_headers(inner.get("headers"));
        let route = classify(&method, &uri, &headers);
        if let Some(error) = route.rejection {
            return Err(in_batch(id, error));
        }
        match route.class {
            RouteClass::Batch => return Err(BatchError::Nested(id.to_owned()).into()),
            RouteClass::ConnectorWrite => {
                let Some(target) = route.target else { continue };
                let full = uri.path();
                let path = full.get(1..).and_then(|p| p.find('/').map(|i| &p[i..])).unwrap_or(full).to_owned();
                plan.writes.push(InnerWrite {
                    id: id.to_owned(),
                    method,
                    path,
                    target,
                    body: inner.get("body").cloned(),
                    json_content_type,
                    patch: None,
                });
            }
            RouteClass::Other => {}
        }
    }
    Ok(plan)
}

/// Validates every inner write's body, as a direct write's body is validated.
pub fn validate_writes(extensions: &mut http::Extensions, writable: &[WritableProperty]) -> Result<(), GatewayError> {
    let Some(plan) = extensions.get_mut::<BatchPlan>() else { return Ok(()) };
    for write in &mut plan.writes {
        let body = match &write.body {
            None | Some(Value::Null) => return Err(in_batch(&write.id, BodyError::Empty)),
            Some(body) => body,
        };
        if !write.json_content_type {
            return Err(in_batch(&write.id, BodyError::UnsupportedMediaType));
        }
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let patch = parse_patch(&bytes, &write.target.connector_id, writable).map_err(|e| in_batch(&write.id, e))?;
        write.patch = Some(patch);
    }
    Ok(())
}

/// Buffers and plans `$batch` requests. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct BatchPlanLayer {
    max_body_bytes: usize,
    other_requests: OtherRequests,
}

impl BatchPlanLayer {
    /// Batches up to `max_body_bytes`; `other_requests` decides batches without connector writes.
    pub fn new(max_body_bytes: usize, other_requests: OtherRequests) -> Self {
        Self { max_body_bytes, other_requests }
    }
}

impl<S> Layer<S> for BatchPlanLayer {
    type Service = BatchPlanner<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BatchPlanner { inner, max_body_bytes: self.max_body_bytes, other_requests: self.other_requests }
    }
}

/// See [`BatchPlanLayer`].
#[derive(Debug, Clone)]
pub struct BatchPlanner<S> {
    inner: S,
    max_body_bytes: usize,
    other_requests: OtherRequests,
}

/// Plans a buffered batch body.
#[derive(Debug)]
pub struct PlanCheck {
    version: ApiVersion,
    other_requests: OtherRequests,
}

impl Inspect for PlanCheck {
    fn inspect(self, parts: &mut http::request::Parts, bytes: &Bytes) -> Result<(), GatewayError> {
        let plan = plan(bytes, self.version)?;
        if plan.writes.is_empty() && self.other_requests == OtherRequests::Deny {
            return Err(RouteError::NotAConnectorWrite.into());
        }
        crate::audit::note_batch(&parts.extensions, &plan);
        parts.extensions.insert(plan);
        Ok(())
    }
}

impl<S, B> Service<Request<B>> for BatchPlanner<S>
where
    S: Service<Request<ForwardBody<B>>, Error = GatewayError> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = crate::body::Buffering<S, B, B, PlanCheck>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !matches!(request.extensions().get::<Route>(), Some(Route { class: RouteClass::Batch, .. })) {
            return crate::body::Buffering::Forwarding {
                inner: self.inner.call(request.map(http_body_util::Either::Right)),
            };
        }
        let version = if request.uri().path().get(1..5).is_some_and(|v| v.eq_ignore_ascii_case("beta")) {
            ApiVersion::Beta
        } else {
            ApiVersion::V1
        };
        let check = PlanCheck { version, other_requests: self.other_requests };
        buffer(&mut self.inner, request, self.max_body_bytes, check)
    }
}

/// Reads a `$batch` response: the status of each inner response, by id.
pub fn inner_statuses(bytes: &[u8]) -> Vec<(String, u16)> {
    let Ok(document) = serde_json::from_slice::<Value>(bytes) else { return Vec::new() };
    document
        .get("responses")
        .and_then(Value::as_array)
        .map(|responses| {
            responses
                .iter()
                .filter_map(|r| {
                    let id = r.get("id")?.as_str()?.to_owned();
                    let status = u16::try_from(r.get("status")?.as_u64()?).ok()?;
                    Some((id, status))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
