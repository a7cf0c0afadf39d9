//! Prometheus metrics: request counts by route class, decision and status, latency histograms per
//! class, and upstream errors by kind. Fixed label sets let every counter be a plain atomic, so
//! recording takes no lock on the request path.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::{Decision, UpstreamFailure};
use crate::route::{Route, RouteClass};

const CLASSES: [RouteClass; 3] = [RouteClass::ConnectorWrite, RouteClass::Batch, RouteClass::Other];
const DECISIONS: [Decision; 3] = [Decision::Forwarded, Decision::Denied, Decision::Failed];
/// Status codes 100..=599, one slot each.
const STATUSES: usize = 500;
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const UPSTREAM_ERRORS: [&str; 3] = ["connect", "broken", "timeout"];

fn class_index(class: RouteClass) -> usize {
    CLASSES.iter().position(|c| *c == class).unwrap_or(0)
}

fn decision_index(decision: Decision) -> usize {
    DECISIONS.iter().position(|d| *d == decision).unwrap_or(0)
}

struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&upper| seconds <= upper) {
            self.buckets.get(i).map(|b| b.fetch_add(1, Relaxed));
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// Every counter the gateway exports. Cheap to share: wrap it in an `Arc`.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    latency: [Histogram; CLASSES.len()],
    upstream_errors: [AtomicU64; UPSTREAM_ERRORS.len()],
    redis_fallbacks: AtomicU64,
    started: Instant,
    /// Counters other parts keep themselves (the audit writer, the credential), read at render.
    sources: std::sync::Mutex<Vec<CounterSource>>,
}

/// A counter read from elsewhere when `/metrics` is rendered.
struct CounterSource {
    name: &'static str,
    help: &'static str,
    read: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: (0..CLASSES.len() * DECISIONS.len() * STATUSES).map(|_| AtomicU64::new(0)).collect(),
            latency: std::array::from_fn(|_| Histogram::new()),
            upstream_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            redis_fallbacks: AtomicU64::new(0),
            started: Instant::now(),
            sources: std::sync::Mutex::default(),
        }
    }
}

impl Metrics {
    /// Exports a counter that another part keeps (read only when `/metrics` is rendered, so the
    /// request path pays nothing for it).
    pub fn register_counter(&self, name: &'static str, help: &'static str, read: Arc<dyn Fn() -> u64 + Send + Sync>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(CounterSource { name, help, read });
        }
    }

    /// Counts one finished request.
    pub fn record(&self, class: RouteClass, decision: Decision, status: u16, elapsed: Duration) {
        let status = usize::from(status.clamp(100, 599) - 100);
        let slot = (class_index(class) * DECISIONS.len() + decision_index(decision)) * STATUSES + status;
        if let Some(counter) = self.requests.get(slot) {
            counter.fetch_add(1, Relaxed);
        }
        if let Some(histogram) = self.latency.get(class_index(class)) {
            histogram.observe(elapsed);
        }
    }

    /// Counts one upstream failure by kind (`connect`, `broken`, `timeout`).
    pub fn upstream_error(&self, kind: &str) {
        if let Some(i) = UPSTREAM_ERRORS.iter().position(|k| *k == kind) {
            self.upstream_errors.get(i).map(|c| c.fetch_add(1, Relaxed));
        }
    }

    /// Counts one rate-limit decision made without Redis.
    pub fn redis_fallback(&self) {
        self.redis_fallbacks.fetch_add(1, Relaxed);
    }

    /// How many requests of this class, decision and status were counted.
    pub fn requests(&self, class: RouteClass, decision: Decision, status: u16) -> u64 {
        let status = usize::from(status.clamp(100, 599) - 100);
        let slot = (class_index(class) * DECISIONS.len() + decision_index(decision)) * STATUSES + status;
        self.requests.get(slot).map_or(0, |c| c.load(Relaxed))
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP gateway_requests_total Requests by route class, decision and status.\n");
        out.push_str("# TYPE gateway_requests_total counter\n");
        for (c, class) in CLASSES.iter().enumerate() {
            for (d, decision) in DECISIONS.iter().enumerate() {
                for status in 0..STATUSES {
                    let slot = (c * DECISIONS.len() + d) * STATUSES + status;
                    let value = self.requests.get(slot).map_or(0, |v| v.load(Relaxed));
                    if value > 0 {
                        let _ = writeln!(
                            out,
                            "gateway_requests_total{{class=\"{}\",decision=\"{}\",status=\"{}\"}} {value}",
                            class.as_str(),
                            decision.as_str(),
                            status + 100
                        );
                    }
                }
            }
        }
        out.push_str("# HELP gateway_request_duration_seconds Time from request to response head.\n");
        out.push_str("# TYPE gateway_request_duration_seconds histogram\n");
        for (class, histogram) in CLASSES.iter().zip(&self.latency) {
            let mut cumulative = 0;
            for (upper, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Relaxed);
                let _ = writeln!(
                    out,
                    "gateway_request_duration_seconds_bucket{{class=\"{}\",le=\"{upper}\"}} {cumulative}",
                    class.as_str()
                );
            }
            let count = histogram.count.load(Relaxed);
            let sum = histogram.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "gateway_request_duration_seconds_bucket{{class=\"{}\",le=\"+Inf\"}} {count}",
                class.as_str()
            );
            let _ = writeln!(out, "gateway_request_duration_seconds_sum{{class=\"{}\"}} {sum}", class.as_str());
            let _ = writeln!(out, "gateway_request_duration_seconds_count{{class=\"{}\"}} {count}", class.as_str());
        }
        out.push_str("# HELP gateway_upstream_errors_total Upstream failures by kind.\n");
        out.push_str("# TYPE gateway_upstream_errors_total counter\n");
        for (kind, counter) in UPSTREAM_ERRORS.iter().zip(&self.upstream_errors) {
            let _ = writeln!(out, "gateway_upstream_errors_total{{kind=\"{kind}\"}} {}", counter.load(Relaxed));
        }
        out.push_str("# HELP gateway_ratelimit_redis_fallbacks_total Rate-limit decisions made without Redis.\n");
        out.push_str("# TYPE gateway_ratelimit_redis_fallbacks_total counter\n");
        let _ = writeln!(out, "gateway_ratelimit_redis_fallbacks_total {}", self.redis_fallbacks.load(Relaxed));
        if let Ok(sources) = self.sources.lock() {
            for source in sources.iter() {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", source.name, source.help, source.name);
                let _ = writeln!(out, "{} {}", source.name, (source.read)());
            }
        }
        out.push_str("# HELP gateway_uptime_seconds Seconds since the gateway started.\n");
        out.push_str("# TYPE gateway_uptime_seconds gauge\n");
        let _ = writeln!(out, "gateway_uptime_seconds {}", self.started.elapsed().as_secs());
        out
    }
}

/// Records every request in [`Metrics`]; sits outside the rescue edge so it sees every answer.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResB> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let class = request.extensions().get::<Route>().map_or(RouteClass::Other, |r| r.class);
        ResponseFuture {
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            class,
            started: Instant::now(),
        }
    }
}

pin_project! {
    /// Response future of [`MetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
        class: RouteClass,
        started: Instant,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let decision = response.extensions().get::<Decision>().copied().unwrap_or(Decision::Forwarded);
            this.metrics.record(*this.class, decision, response.status().as_u16(), this.started.elapsed());
            if let Some(UpstreamFailure(kind)) = response.extensions().get::<UpstreamFailure>() {
                this.metrics.upstream_error(kind);
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_counts_buckets_and_errors() {
        let metrics = Metrics::default();
        metrics.record(RouteClass::ConnectorWrite, Decision::Denied, 401, Duration::from_millis(2));
        metrics.record(RouteClass::ConnectorWrite, Decision::Denied, 401, Duration::from_millis(20));
        metrics.record(RouteClass::Other, Decision::Forwarded, 200, Duration::from_micros(300));
        metrics.upstream_error("timeout");
        let text = metrics.render();
        assert!(
            text.contains("gateway_requests_total{class=\"connector_write\",decision=\"denied\",status=\"401\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("gateway_requests_total{class=\"other\",decision=\"forwarded\",status=\"200\"} 1\n"));
        assert!(text.contains("gateway_request_duration_seconds_bucket{class=\"connector_write\",le=\"0.005\"} 1\n"));
        assert!(text.contains("gateway_request_duration_seconds_bucket{class=\"connector_write\",le=\"0.025\"} 2\n"));
        assert!(text.contains("gateway_request_duration_seconds_count{class=\"other\"} 1\n"));
        assert!(text.contains("gateway_upstream_errors_total{kind=\"timeout\"} 1\n"));
        assert_eq!(metrics.requests(RouteClass::ConnectorWrite, Decision::Denied, 401), 2);
    }
}
