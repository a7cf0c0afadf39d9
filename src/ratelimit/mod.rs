//! Rate limiting: every governed write must pass two GCRA quotas, per principal (tenant + object
//! id, or tenant + app id for application tokens) and per connector, before Graph's budget is
//! spent. State lives in memory ([`memory`]) or in Redis ([`redis`]), shared by every gateway.
//!
//! When Redis cannot decide within `rate_limit.redis_timeout`, the gateway neither hangs nor
//! allows everything: it decides with the in-memory limiter (`on_redis_error = "local"`) or
//! refuses (`"deny"`), counts the fallback in `/metrics`, and fails `/readyz`. A throttled write
//! gets 429 with `Retry-After` in whole seconds (rounded up, at least 1); governed answers carry
//! the IETF `RateLimit-Policy` and `RateLimit` headers.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::auth::{Principal, PrincipalKind};
use crate::batch::BatchPlan;
use crate::config::{OnRedisError, RateLimitBackend, RateLimitConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::route::Route;
pub use memory::MemoryLimiter;
pub use redis::RedisLimiter;

/// The IETF `RateLimit-Policy` header.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The IETF `RateLimit` header.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Which quota decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaName {
    /// `rate_limit.per_principal`.
    PerPrincipal,
    /// `rate_limit.per_connector`.
    PerConnector,
}

impl QuotaName {
    /// As named in headers and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerPrincipal => "per-principal",
            Self::PerConnector => "per-connector",
        }
    }
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Both quotas passed.
    Allowed {
        /// Requests left in the principal's burst.
        principal_remaining: u32,
        /// Requests left in the connector's burst.
        connector_remaining: u32,
    },
    /// A quota is exhausted.
    Limited {
        /// Which one.
        quota: QuotaName,
        /// When the write would pass.
        retry_after: Duration,
    },
}

/// A throttled write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many connector changes: the {} quota ({}) is exhausted; retry after {} s", quota.as_str(), policy_text, retry_after_secs)]
pub struct RateLimited {
    /// The exhausted quota.
    pub quota: QuotaName,
    /// Whole seconds to wait, rounded up, at least 1.
    pub retry_after_secs: u64,
    /// The quota, as configured (`60/min, burst 10`).
    pub policy_text: String,
    /// The `RateLimit-Policy` value.
    pub policy: HeaderValue,
}

/// Whole seconds, rounded up, at least 1 (Graph SDK retry handlers parse integers).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The rate-limit key of a principal: tenant + object id, or tenant + app id for app tokens.
pub fn principal_key(principal: &Principal) -> String {
    let id = match principal.kind {
        PrincipalKind::Application => principal.app_id.as_deref().or(principal.object_id.as_deref()),
        PrincipalKind::Delegated => principal.object_id.as_deref().or(principal.app_id.as_deref()),
    };
    format!("{}:{}", principal.tenant_id, id.unwrap_or("-"))
}

/// The configured limiter: memory, or Redis with a memory fallback.
pub struct Limiter {
    memory: MemoryLimiter,
    redis: Option<RedisLimiter>,
    on_redis_error: OnRedisError,
    redis_healthy: AtomicBool,
    metrics: Arc<Metrics>,
    config: RateLimitConfig,
    policy: HeaderValue,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("memory", &self.memory).field("redis", &self.redis).finish_non_exhaustive()
    }
}

impl Limiter {
    /// The limiter `config` describes, counting Redis fallbacks in `metrics`.
    pub fn new(config: &RateLimitConfig, metrics: Arc<Metrics>) -> Result<Self, redis::RedisLimitError> {
        let redis = match &config.backend {
            RateLimitBackend::Memory => None,
            RateLimitBackend::Redis { url } => {
                Some(RedisLimiter::new(url, &config.per_principal, &config.per_connector, config.redis_timeout)?)
            }
        };
        let window = |q: &crate::config::Quota| (q.rate.emission_interval() * q.burst.get()).as_secs().max(1);
        let policy = format!(
            "\"per-principal\";q={};w={}, \"per-connector\";q={};w={}",
            config.per_principal.burst,
            window(&config.per_principal),
            config.per_connector.burst,
            window(&config.per_connector)
        );
        Ok(Self {
            memory: MemoryLimiter::new(&config.per_principal, &config.per_connector),
            redis,
            on_redis_error: config.on_redis_error,
            redis_healthy: AtomicBool::new(false),
            metrics,
            config: config.clone(),
            policy: HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("")),
        })
    }

    /// The in-memory limiter (the backend, or Redis's fallback).
    pub fn memory(&self) -> &MemoryLimiter {
        &self.memory
    }

    /// Whether decisions are made in Redis.
    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// `/readyz`: the backend can decide.
    pub fn health(&self) -> Result<(), String> {
        match &self.redis {
            Some(_) if !self.redis_healthy.load(Ordering::Relaxed) => Err("redis is not reachable".into()),
            _ => Ok(()),
        }
    }

    /// Checks Redis now (for the readiness probe loop).
    pub async fn probe(&self) {
        if let Some(redis) = &self.redis {
            let healthy = redis.decide("probe", "probe").await.is_ok();
            self.redis_healthy.store(healthy, Ordering::Relaxed);
        }
    }

    fn refusal(&self, quota: QuotaName, retry_after: Duration) -> RateLimited {
        let q = match quota {
            QuotaName::PerPrincipal => &self.config.per_principal,
            QuotaName::PerConnector => &self.config.per_connector,
        };
        RateLimited {
            quota,
            retry_after_secs: retry_after_secs(retry_after),
            policy_text: format!("{}, burst {}", q.rate, q.burst),
            policy: self.policy.clone(),
        }
    }

    /// Decides every write of one request, in order; the first refusal wins.
    pub async fn decide_all(&self, writes: &[(String, String)]) -> Result<HeaderValue, RateLimited> {
        let mut last = (u32::MAX, u32::MAX);
        for (principal, connector) in writes {
            let verdict = match &self.redis {
                None => self.memory.decide(principal, connector),
                Some(redis) => match redis.decide(principal, connector).await {
                    Ok(verdict) => {
                        self.redis_healthy.store(true, Ordering::Relaxed);
                        verdict
                    }
                    Err(error) => {
                        self.redis_healthy.store(false, Ordering::Relaxed);
                        self.metrics.redis_fallback();
                        tracing::warn!(%error, "rate limit decided without redis");
                        match self.on_redis_error {
                            OnRedisError::Local => self.memory.decide(principal, connector),
                            OnRedisError::Deny => {
                                Verdict::Limited { quota: QuotaName::PerPrincipal, retry_after: Duration::from_secs(1) }
                            }
                        }
                    }
                },
            };
            match verdict {
                Verdict::Allowed { principal_remaining, connector_remaining } => {
                    last = (last.0.min(principal_remaining), last.1.min(connector_remaining));
                }
                Verdict::Limited { quota, retry_after } => return Err(self.refusal(quota, retry_after)),
            }
        }
        let remaining = format!("\"per-principal\";r={}, \"per-connector\";r={}", last.0, last.1);
        Ok(HeaderValue::from_str(&remaining).unwrap_or_else(|_| HeaderValue::from_static("")))
    }

    /// The `RateLimit-Policy` value.
    pub fn policy(&self) -> &HeaderValue {
        &self.policy
    }
}

/// The writes of a governed request, as (principal key, connector key) pairs.
fn writes<B>(request: &Request<B>) -> Vec<(String, String)> {
    let Some(principal) = request.extensions().get::<Principal>() else { return Vec::new() };
    let key = principal_key(principal);
    if let Some(plan) = request.extensions().get::<BatchPlan>() {
        return plan.writes.iter().map(|w| (key.clone(), w.target.connector_id.clone())).collect();
    }
    match request.extensions().get::<Route>().and_then(|r| r.target.as_ref()) {
        Some(target) => vec![(key, target.connector_id.clone())],
        None => Vec::new(),
    }
}

/// Applies the [`Limiter`] to governed requests. Runs after body validation, before the audit
/// intent: a throttled write is never forwarded.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

impl RateLimitLayer {
    /// Rate limiting with `limiter`.
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone() }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

type Decision = Pin<Box<dyn Future<Output = Result<HeaderValue, RateLimited>> + Send>>;

impl<S, B, ResB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError> + Clone,
{
    type Response = Response<ResB>;
    type Error = GatewayError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !crate::route::is_governed(request.extensions()) {
            return ResponseFuture::Forwarding { inner: self.inner.call(request), headers: None };
        }
        let writes = writes(&request);
        if !self.limiter.uses_redis() {
            // In memory the decision is immediate: nothing to wait for, nothing boxed.
            let mut decision = std::pin::pin!(self.limiter.decide_all(&writes));
            let waker = std::task::Waker::noop();
            if let Poll::Ready(result) = decision.as_mut().poll(&mut Context::from_waker(waker)) {
                return match result {
                    Ok(remaining) => ResponseFuture::Forwarding {
                        inner: self.inner.call(request),
                        headers: Some((self.limiter.policy().clone(), remaining)),
                    },
                    Err(limited) => ResponseFuture::Rejected { error: Some(limited) },
                };
            }
        }
        let limiter = self.limiter.clone();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Deciding {
            decision: Box::pin(async move { limiter.decide_all(&writes).await }),
            state: Some((request, inner, self.limiter.policy().clone())),
        }
    }
}

pin_project! {
    /// Response future of [`RateLimit`].
    #[project = Projection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        /// Allowed (or not governed): waiting on the inner service.
        Forwarding { #[pin] inner: S::Future, headers: Option<(HeaderValue, HeaderValue)> },
        /// Throttled.
        Rejected { error: Option<RateLimited> },
        /// Waiting for Redis.
        Deciding { decision: Decision, state: Option<(Request<B>, S, HeaderValue)> },
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError>,
{
    type Output = Result<Response<ResB>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                Projection::Forwarding { inner, headers } => {
                    let mut response = ready!(inner.poll(cx))?;
                    if let Some((policy, remaining)) = headers.take() {
                        response.headers_mut().insert(RATELIMIT_POLICY, policy);
                        response.headers_mut().insert(RATELIMIT, remaining);
                    }
                    return Poll::Ready(Ok(response));
                }
                Projection::Rejected { error } => {
                    let error = error.take().map_or(GatewayError::RequestTimeout(Duration::ZERO), GatewayError::from);
                    return Poll::Ready(Err(error));
                }
                Projection::Deciding { decision, state } => {
                    let result = ready!(decision.as_mut().poll(cx));
                    let Some((request, mut inner, policy)) = state.take() else {
                        return Poll::Ready(Err(GatewayError::RequestTimeout(Duration::ZERO)));
                    };
                    match result {
                        Ok(remaining) => ResponseFuture::Forwarding {
                            inner: inner.call(request),
                            headers: Some((policy, remaining)),
                        },
                        Err(limited) => ResponseFuture::Rejected { error: Some(limited) },
                    }
                }
            };
            self.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }

    #[test]
    fn principal_keys_follow_the_token_kind() {
        let mut p = Principal {
            tenant_id: "t".into(),
            object_id: Some("o".into()),
            app_id: Some("a".into()),
            kind: PrincipalKind::Delegated,
            name: None,
            scopes: vec![],
            roles: vec![],
        };
        assert_eq!(principal_key(&p), "t:o");
        p.kind = PrincipalKind::Application;
        assert_eq!(principal_key(&p), "t:a");
    }
}
