//! A local stand-in for Entra (OpenID configuration, JWKS, token endpoint) and for Graph's
//! connector endpoints, on loopback. Used by `demo`, the tests and the benches, and a way to try a
//! Graph client against realistic connector behaviour offline, with optional fault injection
//! (a share of 429s with `Retry-After`, 503s, added latency) to exercise retry handlers.

pub mod entra;
pub mod graph;
pub mod token;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::{self, ListenerLimits};
use entra::{DEV_TENANT, DevKey};
use graph::{Connector, GraphPath};

/// Fault injection on the Graph endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Share of Graph requests answered 429 with `Retry-After: 1` (0.0 to 1.0).
    pub throttle: f64,
    /// Share of Graph requests answered 503.
    pub unavailable: f64,
    /// Delay added before every Graph answer.
    pub latency: Duration,
}

/// A request as the simulated Graph received it, for tests to inspect.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path_and_query: String,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The body bytes.
    pub body: Bytes,
}

struct State {
    base: String,
    key: DevKey,
    connectors: Mutex<BTreeMap<String, Connector>>,
    received: Mutex<Vec<ReceivedRequest>>,
    tokens_issued: AtomicU64,
    token_requests: AtomicU64,
    token_lifetime: AtomicU64,
    token_endpoint_down: AtomicBool,
    certificates: Mutex<Vec<Vec<u8>>>,
    faults: Faults,
}

/// A running simulator.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts a simulator on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr, faults: Faults) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            key: DevKey::generate("sim-key-1")?,
            connectors: Mutex::new(graph::seed()),
            received: Mutex::new(Vec::new()),
            tokens_issued: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_lifetime: AtomicU64::new(3599),
            token_endpoint_down: AtomicBool::new(false),
            certificates: Mutex::new(token::certificate_der(token::DEV_CERTIFICATE_PEM).into_iter().collect()),
            faults,
        });
        let (stop, mut stopped) = watch::channel(false);
        let service_state = state.clone();
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let state = service_state.clone();
            async move { Ok::<_, Infallible>(handle(&state, request).await) }
        });
        let limits = ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 1024,
            drain_timeout: Duration::from_secs(5),
        };
        let task = tokio::spawn(server::serve(listener, None, service, limits, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Ok(Self { addr, state, stop, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> &str {
        &self.state.base
    }

    /// The v2.0 issuer of its tokens.
    pub fn issuer(&self) -> String {
        entra::issuer(&self.state.base, DEV_TENANT)
    }

    /// The OpenID configuration URL of the dev tenant.
    pub fn openid_configuration_url(&self) -> String {
        format!("{}/{DEV_TENANT}/v2.0/.well-known/openid-configuration", self.state.base)
    }

    /// The JWKS URL of the dev tenant.
    pub fn jwks_url(&self) -> String {
        format!("{}/{DEV_TENANT}/discovery/v2.0/keys", self.state.base)
    }

    /// The token endpoint of the dev tenant.
    pub fn token_url(&self) -> String {
        format!("{}/{DEV_TENANT}/oauth2/v2.0/token", self.state.base)
    }

    /// The signing key, for tests that mint their own tokens.
    pub fn key(&self) -> &DevKey {
        &self.state.key
    }

    /// Mints an access token for `audience` with the given grant.
    pub fn mint(&self, audience: &str, grant: &entra::Grant) -> String {
        let claims = entra::access_token_claims(&self.state.base, audience, entra::DEV_CLIENT_ID, grant);
        self.state.key.sign(&json!({}), &claims)
    }

    /// Every request the Graph side received so far.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// How many tokens the token endpoint issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::Relaxed)
    }

    /// How many requests reached the token endpoint (issued or refused).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    /// Sets the lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.token_lifetime.store(lifetime.as_secs().max(1), Ordering::Relaxed);
    }

    /// Makes the token endpoint answer 503 (`true`) or serve again (`false`).
    pub fn set_token_endpoint_down(&self, down: bool) {
        self.state.token_endpoint_down.store(down, Ordering::Relaxed);
    }

    /// Trusts a certificate (PEM) for the dev app's client assertions, besides `config/dev/`'s.
    pub fn trust_certificate(&self, pem: &str) -> bool {
        match (token::certificate_der(pem), self.state.certificates.lock()) {
            (Some(der), Ok(mut certificates)) => {
                certificates.push(der);
                true
            }
            _ => false,
        }
    }

    /// The current state of a connector.
    pub fn connector(&self, id: &str) -> Option<Connector> {
        self.state.connectors.lock().ok().and_then(|c| c.get(id).cloned())
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn graph_error(
    status: u16,
    code: &str,
    message: &str,
    request_id: &str,
    client_request_id: &str,
) -> Response<Full<Bytes>> {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    json_response(
        status,
        &json!({"error": {"code": code, "message": message, "innerError": {
        "date": date, "request-id": request_id, "client-request-id": client_request_id }}}),
    )
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, 1024 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_response(
                413,
                &json!({"error": {"code": "RequestEntityTooLarge", "message": "body too large"}}),
            );
        }
    };
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (parts.method.clone(), segments.as_slice()) {
        (Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            json_response(200, &entra::openid_configuration(&state.base, tenant))
        }
        (Method::GET, [_, "discovery", "v2.0", "keys"]) => json_response(200, &json!({ "keys": [state.key.jwk()] })),
        (Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
            state.token_requests.fetch_add(1, Ordering::Relaxed);
            if state.token_endpoint_down.load(Ordering::Relaxed) {
                let error =
                    token::oauth_error("temporarily_unavailable", "AADSTS90033", "A transient error has occurred.");
                return json_response(503, &error);
            }
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            let certificates = state.certificates.lock().map(|c| c.clone()).unwrap_or_default();
            let issuer = token::TokenIssuer {
                base: &state.base,
                token_url: &format!("{}/{tenant}/oauth2/v2.0/token", state.base),
                key: &state.key,
                lifetime: state.token_lifetime.load(Ordering::Relaxed),
                certificates: &certificates,
            };
            match token::token_response(&issuer, &form) {
                Ok(token) => {
                    state.tokens_issued.fetch_add(1, Ordering::Relaxed);
                    json_response(200, &token)
                }
                Err((status, error)) => json_response(status, &error),
            }
        }
        _ => graph(state, parts, body).await,
    }
}

async fn graph(state: &State, parts: http::request::Parts, body: Bytes) -> Response<Full<Bytes>> {
    if let Ok(mut received) = state.received.lock() {
        received.push(ReceivedRequest {
            method: parts.method.clone(),
            path_and_query: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id =
        parts.headers.get("client-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let is_batch = parts.method == Method::POST && parts.uri.path().to_ascii_lowercase().ends_with("/$batch");
    let mut response = if is_batch {
        batch_answer(state, &parts, &body, &request_id, &client_request_id).await
    } else {
        graph_answer(state, &parts, &body, &request_id, &client_request_id).await
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&client_request_id) {
        headers.insert("client-request-id", value);
    }
    response
}

/// `POST /{v}/$batch`: runs each inner request against the simulated Graph, in order.
async fn batch_answer(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
    request_id: &str,
    client_request_id: &str,
) -> Response<Full<Bytes>> {
    let version = parts.uri.path().trim_start_matches('/').split('/').next().unwrap_or("v1.0").to_owned();
    let Ok(document) = serde_json::from_slice::<Value>(body) else {
        return graph_error(400, "BadRequest", "Invalid batch payload.", request_id, client_request_id);
    };
    let mut responses = Vec::new();
    for inner in document["requests"].as_array().into_iter().flatten() {
        let id = inner["id"].as_str().unwrap_or_default();
        let url = inner["url"].as_str().unwrap_or_default();
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_owned(),
            None => format!("/{version}/{}", url.trim_start_matches('/')),
        };
        let mut builder = Request::builder()
            .method(inner["method"].as_str().unwrap_or("GET").to_ascii_uppercase().as_str())
            .uri(path);
        if let Some(auth) = parts.headers.get(http::header::AUTHORIZATION) {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        let Ok(request) = builder.body(()) else {
            responses.push(json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Invalid request."}}}));
            continue;
        };
        let (inner_parts, ()) = request.into_parts();
        let inner_body = inner.get("body").map(|b| b.to_string()).unwrap_or_default();
        let answer = graph_answer(state, &inner_parts, inner_body.as_bytes(), request_id, client_request_id).await;
        let status = answer.status().as_u16();
        let bytes = answer.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        responses
            .push(json!({"id": id, "status": status, "headers": {"content-type": "application/json"}, "body": body}));
    }
    json_response(200, &json!({ "responses": responses }))
}

/// Graph's tolerance for clock skew on `exp`.
const GRAPH_CLOCK_SKEW_SECS: u64 = 300;

/// Whether the bearer token is a JWT whose `exp` has passed, beyond Graph's clock skew (Graph
/// refuses those).
fn bearer_expired(headers: &HeaderMap) -> bool {
    use base64::Engine;
    let token = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.get(7..));
    let exp = token
        .and_then(|t| t.split('.').nth(1))
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|claims| claims["exp"].as_u64());
    exp.is_some_and(|exp| exp + GRAPH_CLOCK_SKEW_SECS <= entra::now())
}

async fn graph_answer(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
    request_id: &str,
    client_request_id: &str,
) -> Response<Full<Bytes>> {
    let error = |status, code, message: &str| graph_error(status, code, message, request_id, client_request_id);
    if !state.faults.latency.is_zero() {
        tokio::time::sleep(state.faults.latency).await;
    }
    let roll = random_unit();
    if roll < state.faults.throttle {
        let mut response = error(429, "TooManyRequests", "Too many requests.");
        response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    if roll < state.faults.throttle + state.faults.unavailable {
        return error(503, "serviceNotAvailable", "The service is temporarily unavailable.");
    }
    let authorized = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer ")));
    if !authorized {
        return error(401, "InvalidAuthenticationToken", "Access token is empty.");
    }
    if bearer_expired(&parts.headers) {
        return error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.");
    }
    let Some(target) = graph::parse_path(parts.uri.path()) else {
        return error(400, "BadRequest", &format!("Resource not found for the segment '{}'.", parts.uri.path()));
    };
    let Ok(mut connectors) = state.connectors.lock() else {
        return error(500, "InternalServerError", "state poisoned");
    };
    match (&parts.method, target) {
        (&Method::GET | &Method::HEAD, GraphPath::Connectors { version }) => {
            json_response(200, &graph::collection(&version, connectors.values().map(|c| c.to_json(&version))))
        }
        (&Method::GET | &Method::HEAD, GraphPath::Connector { version, id }) => match connectors.get(&id) {
            Some(connector) => json_response(200, &connector.to_json(&version)),
            None => error(
                404,
                "ResourceNotFound",
                &format!(
                    "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
                ),
            ),
        },
        (&Method::PATCH, GraphPath::Connector { version, id }) => match connectors.get_mut(&id) {
            Some(connector) => match graph::apply_patch(connector, body) {
                Ok(()) => json_response(200, &connector.to_json(&version)),
                Err((code, message)) => error(400, code, &message),
            },
            None => error(
                404,
                "ResourceNotFound",
                &format!(
                    "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
                ),
            ),
        },
        _ => error(405, "Request_BadRequest", "The specified HTTP method is not allowed for the request target."),
    }
}
