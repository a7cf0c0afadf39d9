//! The gateway as one tower layer: the same stack serves the standalone proxy and any Rust
//! service that embeds it. Data flows one way through the stages of DESIGN.md:
//!
//! ```text
//! request ids -> classify -> trace -> metrics -> rescue (errors, timeout)
//!   -> record denials -> route guard -> authenticate -> authorize -> validate body
//!   -> rate limit -> upstream credential -> write-ahead audit -> forward
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tower::{Layer, Service};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestId, SetRequestId};
use tower_http::trace::{Trace, TraceLayer};

use crate::admin::Readiness;
use crate::audit::journal::OpenError;
use crate::audit::{AuditJournal, RecordDenials, RecordDenialsLayer, WriteAhead, WriteAheadLayer};
use crate::auth::{Authenticate, AuthenticateLayer, KeyStore, Verifier};
use crate::batch::{BatchPlanLayer, BatchPlanner};
use crate::body::{ValidateBody, ValidateBodyLayer};
use crate::config::Config;
use crate::credential::{AttachCredential, CredentialProvider, UpstreamCredentialLayer};
use crate::error::{CLIENT_REQUEST_ID, GatewayError, REQUEST_ID, Rescue, RescueLayer};
use crate::future;
use crate::metrics::{Metrics, MetricsLayer, MetricsService};
use crate::policy::{Authorize, AuthorizeLayer, Rules};
use crate::proxy::BoxError;
use crate::ratelimit::{Limiter, RateLimit, RateLimitLayer};
use crate::route::{Classify, ClassifyLayer, RouteGuard, RouteGuardLayer};
use crate::step::{Step, StepLayer};
use crate::trace::{AccessLog, DropInboundRequestId, MakeGuid, RequestSpan};

/// The request body the upstream receives: a governed body the gateway buffered and validated
/// (forwarded byte for byte), or the caller's body streamed through untouched.
pub type ForwardBody<B> = Either<Full<Bytes>, B>;

/// The response body callers receive: the gateway's own answer, or the upstream's.
pub type GatewayBody<B> = tower_http::trace::ResponseBody<
    Either<Full<Bytes>, B>,
    tower_http::classify::NeverClassifyEos<tower_http::classify::ServerErrorsFailureClass>,
    (),
    (),
    (),
>;

type Traced<S> = Trace<S, SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), AccessLog, (), (), ()>;

/// The policy stages inside the rescue edge, in the order of DESIGN.md.
type Stages<S> = RecordDenials<
    RouteGuard<
        BatchPlanner<Authenticate<Authorize<ValidateBody<RateLimit<AttachCredential<WriteAhead<Forward<S>>>>>>>>,
    >,
>;

type Stack<S> = Step<
    SetRequestId<
        PropagateRequestId<
            SetRequestId<PropagateRequestId<Classify<Traced<MetricsService<Rescue<Stages<S>>>>>>, MakeGuid>,
        >,
        MakeRequestUuid,
    >,
    DropInboundRequestId,
>;

/// The whole policy gateway as a layer around an upstream service.
///
/// ```
/// use connector_gateway::{Config, GatewayLayer};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_toml(r#"
///     [upstream]
///     url = "https://graph.microsoft.com"
///     [auth]
///     jwks_file = "keys.json"
///     audiences = ["api://connector-gateway"]
///     [audit]
///     path = "audit.jsonl"
/// "#, &std::env::temp_dir())?;
/// let layer = GatewayLayer::new(&config)?;
/// // Wrap any `Service<Request<ForwardBody<B>>>`, e.g. a hyper-util client or your own handler:
/// let upstream = tower::service_fn(|_req: http::Request<connector_gateway::ForwardBody<String>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
/// });
/// let _service = tower::Layer::layer(&layer, upstream);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GatewayLayer {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    verifier: Arc<Verifier>,
    journal: AuditJournal,
    limiter: Arc<Limiter>,
    credential: Option<Arc<CredentialProvider>>,
}

/// Why a gateway layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] OpenError),
    /// The rate-limit backend could not be set up.
    #[error("rate_limit.redis_url: {0}")]
    RateLimit(#[from] crate::ratelimit::redis::RedisLimitError),
}

impl GatewayLayer {
    /// A gateway with the given configuration: opens the audit trail (continuing its chain) and
    /// prepares the key store, which loads once [`GatewayLayer::spawn_background`] runs.
    pub fn new(config: &Config) -> Result<Self, BuildError> {
        let connector = crate::proxy::https_connector(&config.upstream.extra_roots, config.upstream.connect_timeout);
        let keys = KeyStore::new(config.auth.key_source.clone(), connector, config.auth.unknown_kid_cooldown);
        Self::with_parts(config, keys, AuditJournal::open(&config.audit)?)
    }

    /// A gateway from parts made elsewhere: keys (e.g. [`KeyStore::fixed`]) and an open journal.
    pub fn with_parts(config: &Config, keys: KeyStore, journal: AuditJournal) -> Result<Self, BuildError> {
        let metrics = Arc::new(Metrics::default());
        let limiter = Arc::new(Limiter::new(&config.rate_limit, metrics.clone())?);
        let credential = CredentialProvider::from_config(&config.upstream);
        let (records, syncs) = (journal.clone(), journal.clone());
        metrics.register_counter(
            "gateway_audit_records_total",
            "Audit records written.",
            Arc::new(move || records.counters().0),
        );
        metrics.register_counter(
            "gateway_audit_syncs_total",
            "Syncs of the audit trail (one per group commit with fsync = batch).",
            Arc::new(move || syncs.counters().1),
        );
        if let Some(provider) = credential.clone() {
            metrics.register_counter(
                "gateway_upstream_token_requests_total",
                "Calls to Entra's token endpoint for the gateway's own Graph credential.",
                Arc::new(move || provider.token_requests()),
            );
        }
        Ok(Self {
            config: Arc::new(config.clone()),
            metrics,
            verifier: Arc::new(Verifier::new(&config.auth, keys)),
            journal: journal.with_credential(&config.upstream.credential),
            limiter,
            credential,
        })
    }

    /// Where the gateway's own Graph tokens come from (`None` in passthrough mode).
    pub fn credential(&self) -> Option<Arc<CredentialProvider>> {
        self.credential.clone()
    }

    /// The rate limiter (memory, or Redis with its fallback).
    pub fn limiter(&self) -> Arc<Limiter> {
        self.limiter.clone()
    }

    /// Starts the background work: loading and refreshing signing keys. Call once, inside a
    /// tokio runtime; abort the handles to stop.
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let limiter = self.limiter.clone();
        let evict = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                limiter.memory().evict_idle();
            }
        });
        let mut tasks = vec![self.verifier.keys().spawn_refresh(self.config.auth.refresh_interval), evict];
        if let Some(CredentialProvider::ClientCredentials(source)) = self.credential.as_deref() {
            tasks.push(source.spawn_renewal());
        }
        if self.limiter.uses_redis() {
            let limiter = self.limiter.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
                loop {
                    every.tick().await;
                    limiter.probe().await;
                }
            }));
        }
        tasks
    }

    /// The checks behind `/readyz`.
    pub fn readiness(&self) -> Readiness {
        let mut readiness = Readiness::default();
        let keys = self.verifier.keys().clone();
        readiness.add(
            "keys",
            Arc::new(move || keys.current().map(|_| ()).ok_or_else(|| "signing keys not loaded".to_owned())),
        );
        let journal = self.journal.clone();
        readiness.add("audit", Arc::new(move || journal.health()));
        let limiter = self.limiter.clone();
        readiness.add("rate_limit", Arc::new(move || limiter.health()));
        if let Some(CredentialProvider::ClientCredentials(source)) = self.credential.as_deref() {
            let source = source.clone();
            readiness.add("upstream_credential", Arc::new(move || source.health()));
        }
        readiness
    }

    /// The audit journal every service built from this layer writes to.
    pub fn journal(&self) -> AuditJournal {
        self.journal.clone()
    }

    /// The token verifier (and through it, the key store).
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.clone()
    }

    /// The metrics every service built from this layer records into.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

impl<S> Layer<S> for GatewayLayer {
    type Service = GatewayService<S>;

    fn layer(&self, upstream: S) -> Self::Service {
        let inner = tower::ServiceBuilder::new()
            .layer(StepLayer::new(DropInboundRequestId))
            .layer(tower_http::request_id::SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(tower_http::request_id::PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(tower_http::request_id::SetRequestIdLayer::new(CLIENT_REQUEST_ID, MakeGuid))
            .layer(tower_http::request_id::PropagateRequestIdLayer::new(CLIENT_REQUEST_ID))
            .layer(ClassifyLayer::new(crate::route::ClassifyRequest))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(RequestSpan)
                    .on_request(())
                    .on_response(AccessLog)
                    .on_body_chunk(())
                    .on_eos(())
                    .on_failure(()),
            )
            .layer(MetricsLayer::new(self.metrics.clone()))
            .layer(RescueLayer::new(self.config.server.request_timeout))
            .layer(RecordDenialsLayer::new(self.journal.clone()))
            .layer(RouteGuardLayer::new(self.config.policy.other_requests))
            .layer(BatchPlanLayer::new(self.config.server.max_body_bytes, self.config.policy.other_requests))
            .layer(AuthenticateLayer::new(self.verifier.clone()).every_request(self.credential.is_some()))
            .layer(AuthorizeLayer::new(Rules::new(&self.config.policy, &self.config.auth)))
            .layer(ValidateBodyLayer::new(
                self.config.server.max_body_bytes,
                self.config.policy.writable_properties.clone(),
            ))
            .layer(RateLimitLayer::new(self.limiter.clone()))
            .layer(UpstreamCredentialLayer::new(self.credential.clone()))
            .layer(WriteAheadLayer::new(self.journal.clone()))
            .service(Forward { inner: upstream });
        GatewayService { inner }
    }
}

/// The gateway wrapped around an upstream `S`. See [`GatewayLayer`].
#[derive(Clone)]
pub struct GatewayService<S> {
    inner: Stack<S>,
}

impl<S> std::fmt::Debug for GatewayService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayService").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<Request<B>> for GatewayService<S>
where
    S: Service<Request<ForwardBody<B>>, Response = Response<ResB>>,
    S: Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody<ResB>>;
    type Error = std::convert::Infallible;
    type Future = <Stack<S> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.inner.call(request)
    }
}

/// Adapts the upstream: its body becomes the gateway's response body, its errors gateway errors.
#[derive(Debug, Clone)]
pub struct Forward<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<ForwardBody<B>>> for Forward<S>
where
    S: Service<Request<ForwardBody<B>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Either<Full<Bytes>, ResB>>;
    type Error = GatewayError;
    type Future = future::MapUpstream<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| GatewayError::from_boxed(e.into()))
    }

    fn call(&mut self, request: Request<ForwardBody<B>>) -> Self::Future {
        future::MapUpstream::new(self.inner.call(request))
    }
}
