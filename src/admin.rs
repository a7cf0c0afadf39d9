//! The admin listener: `GET /healthz` (the process is alive), `GET /readyz` (every readiness check
//! passes: keys loaded, audit writable, rate-limit backend reachable, as stages register them) and
//! `GET /metrics` (Prometheus text). Kept off the public listener so it is never exposed with it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::metrics::Metrics;

/// One named readiness check: `Ok` when that part of the gateway can serve.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The set of readiness checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.iter().map(|(name, _)| name)).finish()
    }
}

impl Readiness {
    /// Adds a check under `name`.
    pub fn add(&mut self, name: &'static str, check: Check) {
        self.checks.push((name, check));
    }

    /// Runs every check; `(ready, {name: "ok" | reason})`.
    pub fn evaluate(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut ready = true;
        let mut report = serde_json::Map::new();
        for (name, check) in &self.checks {
            let state = match check() {
                Ok(()) => "ok".to_owned(),
                Err(reason) => {
                    ready = false;
                    reason
                }
            };
            report.insert((*name).to_owned(), serde_json::Value::String(state));
        }
        (ready, report)
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Answers one admin request.
pub fn respond<B>(request: &Request<B>, metrics: &Metrics, readiness: &Readiness) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, checks) = readiness.evaluate();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = serde_json::json!({ "ready": ready, "checks": checks });
            text(status, "application/json", body.to_string())
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

/// The admin listener's service.
pub fn service(
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> impl tower::Service<Request<hyper::body::Incoming>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(&request, &metrics, &readiness);
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn readyz_fails_while_any_check_fails_and_names_it() {
        let mut readiness = Readiness::default();
        readiness.add("keys", Arc::new(|| Ok(())));
        let metrics = Metrics::default();
        assert_eq!(respond(&get("/readyz"), &metrics, &readiness).status(), StatusCode::OK);
        readiness.add("audit", Arc::new(|| Err("disk full".into())));
        let response = respond(&get("/readyz"), &metrics, &readiness);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let (_, checks) = readiness.evaluate();
        assert_eq!(checks["audit"], "disk full");
        assert_eq!(checks["keys"], "ok");
    }

    #[test]
    fn healthz_metrics_and_unknown_paths() {
        let (metrics, readiness) = (Metrics::default(), Readiness::default());
        assert_eq!(respond(&get("/healthz"), &metrics, &readiness).status(), StatusCode::OK);
        let response = respond(&get("/metrics"), &metrics, &readiness);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; version=0.0.4");
        assert_eq!(respond(&get("/nope"), &metrics, &readiness).status(), StatusCode::NOT_FOUND);
    }
}
