//! The audit trail: write-ahead, tamper-evident, crash-safe.
//!
//! Every governed request yields either one `denied` record, or an `intent` record that is durable
//! (per `audit.fsync`) *before* the upstream sees the request, followed by an `outcome` record.
//! Two stages do this: [`RecordDenialsLayer`] sits outside every stage that can refuse and records
//! each refusal (a policy denial, or a failure before the intent such as keys or the Graph
//! credential being unavailable) with whatever principal and changes were known; [`WriteAheadLayer`] sits just
//! before forwarding and writes intent, then outcome. If the intent cannot be written the request
//! gets 503 and is not forwarded. Records never hold a token, a signature or a secret.

pub mod journal;
pub mod record;
pub mod verify;

pub use journal::{AuditError, AuditJournal};
pub use record::{AuditCredential, AuditPrincipal, AuditRecord, Phase, RecordBody};

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Either, Full, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::auth::Principal;
use crate::batch::{BatchPlan, InnerWrite, inner_statuses};
use crate::body::ConnectorPatch;
use crate::error::{CLIENT_REQUEST_ID, GatewayError, REQUEST_ID};
use crate::route::{Route, RouteClass};
use crate::server::ClientAddr;

/// What later stages learned about a governed request, kept where the denial recorder can read
/// it after the request itself has moved on.
#[derive(Debug, Default)]
pub struct AuditContext {
    principal: OnceLock<AuditPrincipal>,
    changes: OnceLock<serde_json::Value>,
    batch: OnceLock<BatchPlan>,
    /// Set once the intent records are durable: from then on the outcome records tell the story.
    intent_written: OnceLock<()>,
}

/// Notes a batch's inner connector writes for possible later denial records.
pub fn note_batch(extensions: &http::Extensions, plan: &BatchPlan) {
    if let Some(context) = extensions.get::<Arc<AuditContext>>() {
        let _ = context.batch.set(plan.clone());
    }
}

/// The record of one inner write of a batch, from the batch's own record.
fn for_inner(outer: &RecordBody, write: &InnerWrite) -> RecordBody {
    RecordBody {
        method: write.method.to_string(),
        api_version: Some(write.target.api_version.as_str().to_owned()),
        path: write.path.clone(),
        connector_id: Some(write.target.connector_id.clone()),
        changes: write.patch.as_ref().map(ConnectorPatch::changes),
        ..outer.clone()
    }
}

/// Notes the verified principal for a possible later denial record.
pub fn note_principal(extensions: &http::Extensions, principal: &Principal) {
    if let Some(context) = extensions.get::<Arc<AuditContext>>() {
        let _ = context.principal.set(AuditPrincipal::from(principal));
    }
}

/// Notes the validated changes for a possible later denial record.
pub fn note_changes(extensions: &http::Extensions, patch: &ConnectorPatch) {
    if let Some(context) = extensions.get::<Arc<AuditContext>>() {
        let _ = context.changes.set(patch.changes());
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn header<B>(request: &Request<B>, name: &http::HeaderName) -> String {
    request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// The request's facts, taken before it moves down the stack.
fn draft<B>(request: &Request<B>, phase: Phase) -> RecordBody {
    let target = request.extensions().get::<Route>().and_then(|r| r.target.as_ref());
    let path = request.uri().path();
    // The version is its own field; the path is recorded below it, as DESIGN.md shows.
    let path = match target {
        Some(_) => path.get(1..).and_then(|p| p.find('/').map(|i| &p[i..])).unwrap_or(path),
        None => path,
    };
    RecordBody {
        time: now_rfc3339(),
        phase,
        request_id: header(request, &REQUEST_ID),
        client_request_id: header(request, &CLIENT_REQUEST_ID),
        principal: request.extensions().get::<Principal>().map(AuditPrincipal::from),
        client_addr: request.extensions().get::<ClientAddr>().map(|a| a.0.to_string()),
        method: request.method().to_string(),
        api_version: target.map(|t| t.api_version.as_str().to_owned()),
        path: path.to_owned(),
        connector_id: target.map(|t| t.connector_id.clone()),
        changes: request.extensions().get::<ConnectorPatch>().map(ConnectorPatch::changes),
        reason: None,
        status: None,
        graph_request_id: None,
        duration_ms: None,
        upstream_credential: None,
    }
}

/// Records every refusal of a governed request as a `denied` record. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RecordDenialsLayer {
    journal: AuditJournal,
}

impl RecordDenialsLayer {
    /// Denial records go to `journal`.
    pub fn new(journal: AuditJournal) -> Self {
        Self { journal }
    }
}

impl<S> Layer<S> for RecordDenialsLayer {
    type Service = RecordDenials<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordDenials { inner, journal: self.journal.clone() }
    }
}

/// See [`RecordDenialsLayer`].
#[derive(Debug, Clone)]
pub struct RecordDenials<S> {
    inner: S,
    journal: AuditJournal,
}

impl<S, B, ResB> Service<Request<B>> for RecordDenials<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError>,
{
    type Response = Response<ResB>;
    type Error = GatewayError;
    type Future = DenialFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // A batch is not known to be governed until it is planned further in; its context is
        // prepared anyway and records are written only for the connector writes it carried.
        let maybe_governed = matches!(
            request.extensions().get::<Route>(),
            Some(Route { class: RouteClass::ConnectorWrite | RouteClass::Batch, .. })
        );
        if !maybe_governed {
            return DenialFuture::Inner { inner: self.inner.call(request), pending: None };
        }
        let context = Arc::new(AuditContext::default());
        request.extensions_mut().insert(context.clone());
        let draft = draft(&request, Phase::Denied);
        DenialFuture::Inner { inner: self.inner.call(request), pending: Some((draft, context, self.journal.clone())) }
    }
}

pin_project! {
    /// Response future of [`RecordDenials`].
    #[project = DenialProjection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum DenialFuture<F> {
        /// Waiting on the inner stages.
        Inner { #[pin] inner: F, pending: Option<(RecordBody, Arc<AuditContext>, AuditJournal)> },
        /// Writing the denial records before answering.
        Recording { appends: Vec<journal::Append>, error: Option<GatewayError> },
    }
}

impl<F, T> Future for DenialFuture<F>
where
    F: Future<Output = Result<T, GatewayError>>,
{
    type Output = Result<T, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                DenialProjection::Inner { inner, pending } => {
                    let result = ready!(inner.poll(cx));
                    // Every refusal before the intent was written gets its record: policy denials,
                    // and failures such as keys or the Graph credential being unavailable.
                    let error = match result {
                        Err(error) => error,
                        ok => return Poll::Ready(ok),
                    };
                    let Some((mut body, context, journal)) = pending.take() else { return Poll::Ready(Err(error)) };
                    if context.intent_written.get().is_some() {
                        return Poll::Ready(Err(error));
                    }
                    body.time = now_rfc3339();
                    body.principal = body.principal.or_else(|| context.principal.get().cloned());
                    body.changes = body.changes.or_else(|| context.changes.get().cloned());
                    body.reason = Some(format!("{}: {error}", error.code()));
                    body.status = Some(error.status().as_u16());
                    let bodies = match (body.connector_id.is_some(), context.batch.get()) {
                        (true, _) => vec![body],
                        // One record per inner connector write of a refused batch.
                        (false, Some(plan)) => plan.writes.iter().map(|w| for_inner(&body, w)).collect(),
                        // Refused while planning because of an inner connector request.
                        (false, None) if matches!(error, GatewayError::InBatch { .. }) => vec![body],
                        (false, None) => Vec::new(),
                    };
                    let appends = bodies.into_iter().map(|b| journal.submit(b)).collect();
                    DenialFuture::Recording { appends, error: Some(error) }
                }
                DenialProjection::Recording { appends, error } => {
                    while let Some(append) = appends.last_mut() {
                        if let Err(audit_error) = ready!(Pin::new(append).poll(cx)) {
                            // The denial stands (nothing was forwarded); the missing record is loud.
                            tracing::error!(error = %audit_error, "a denial could not be recorded");
                        }
                        appends.pop();
                    }
                    return Poll::Ready(Err(error.take().unwrap_or(GatewayError::Audit(AuditError::Closed))));
                }
            };
            self.set(next);
        }
    }
}

/// Writes the intent record (durable before forwarding) and the outcome record. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct WriteAheadLayer {
    journal: AuditJournal,
}

impl WriteAheadLayer {
    /// Intent and outcome records go to `journal`.
    pub fn new(journal: AuditJournal) -> Self {
        Self { journal }
    }
}

impl<S> Layer<S> for WriteAheadLayer {
    type Service = WriteAhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WriteAhead { inner, journal: self.journal.clone() }
    }
}

/// See [`WriteAheadLayer`].
#[derive(Debug, Clone)]
pub struct WriteAhead<S> {
    inner: S,
    journal: AuditJournal,
}

impl<S, B, ResB> Service<Request<B>> for WriteAhead<S>
where
    S: Service<Request<B>, Response = Response<Either<Full<Bytes>, ResB>>, Error = GatewayError> + Clone,
    ResB: http_body::Body<Data = Bytes>,
    ResB::Error: Into<crate::proxy::BoxError>,
{
    type Response = Response<Either<Full<Bytes>, ResB>>;
    type Error = GatewayError;
    type Future = WriteAheadFuture<S, B, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !crate::route::is_governed(request.extensions()) {
            return WriteAheadFuture::Forwarding { inner: self.inner.call(request), owed: None };
        }
        let draft = draft(&request, Phase::Intent);
        let intents: Vec<(Option<String>, RecordBody)> = match request.extensions().get::<BatchPlan>() {
            Some(plan) => plan.writes.iter().map(|w| (Some(w.id.clone()), for_inner(&draft, w))).collect(),
            None => vec![(None, draft)],
        };
        let started = Instant::now();
        let guards = intents
            .iter()
            .map(|(id, intent)| OutcomeGuard {
                batch_id: id.clone(),
                body: Some(RecordBody { phase: Phase::Outcome, ..intent.clone() }),
                journal: self.journal.clone(),
                started,
            })
            .collect();
        let appends = intents.into_iter().map(|(_, intent)| self.journal.submit(intent)).collect();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        WriteAheadFuture::Intent { appends, state: Some((request, inner, guards)) }
    }
}

/// The outcome record still owed for a forwarded request. If the request is dropped before the
/// upstream answers (request timeout, client gone), the record is written from `Drop`, so every
/// intent gets its outcome.
#[derive(Debug)]
pub struct OutcomeGuard {
    batch_id: Option<String>,
    body: Option<RecordBody>,
    journal: AuditJournal,
    started: Instant,
}

impl OutcomeGuard {
    /// Hands the outcome record to the journal (once). The change already happened upstream, so
    /// the answer does not wait for it: the record is queued behind the intent and written in
    /// order with the next group commit (a failure is logged and fails readyz), and shutdown
    /// flushes the queue. Only a crash in that window leaves an intent without an outcome.
    fn finish(&mut self, status: u16, graph_request_id: Option<String>, reason: Option<String>) {
        let Some(mut body) = self.body.take() else { return };
        body.time = now_rfc3339();
        body.status = Some(status);
        body.graph_request_id = graph_request_id;
        body.reason = reason;
        body.duration_ms = Some(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        self.journal.submit(body).detach();
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        self.finish(504, None, Some("Cancelled: the request ended before the upstream answered".into()));
    }
}

/// Batch responses larger than this are relayed without per-request outcomes.
const MAX_BATCH_RESPONSE: usize = 8 * 1024 * 1024;

type ResponseCollect<ResB> = Collect<Limited<Either<Full<Bytes>, ResB>>>;

/// Polls queued intents until every one is acknowledged (they were queued in order, so the
/// order of waiting does not matter); the first failure ends the wait and is returned.
fn poll_intents(appends: &mut Vec<journal::Append>, cx: &mut Context<'_>) -> Poll<Result<(), AuditError>> {
    while let Some(append) = appends.last_mut() {
        let result = ready!(Pin::new(append).poll(cx));
        appends.pop();
        if let Err(error) = result {
            tracing::error!(%error, "an intent could not be recorded");
            appends.clear();
            return Poll::Ready(Err(error));
        }
    }
    Poll::Ready(Ok(()))
}

pin_project! {
    /// Response future of [`WriteAhead`].
    #[project = WriteAheadProjection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum WriteAheadFuture<S, B, ResB>
    where
        S: Service<Request<B>>,
        ResB: http_body::Body<Data = Bytes>,
        ResB::Error: Into<crate::proxy::BoxError>,
    {
        /// Waiting for the intent records to be durable.
        Intent { appends: Vec<journal::Append>, state: Option<(Request<B>, S, Vec<OutcomeGuard>)> },
        /// Forwarded; waiting for the upstream.
        Forwarding { #[pin] inner: S::Future, owed: Option<Vec<OutcomeGuard>> },
        /// A batch answered: reading its body to learn each inner status.
        ReadingBatch { #[pin] collect: ResponseCollect<ResB>, state: Option<(http::response::Parts, Vec<OutcomeGuard>)> },
    }
}

impl<S, B, ResB> Future for WriteAheadFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<Either<Full<Bytes>, ResB>>, Error = GatewayError>,
    ResB: http_body::Body<Data = Bytes>,
    ResB::Error: Into<crate::proxy::BoxError>,
{
    type Output = Result<Response<Either<Full<Bytes>, ResB>>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                WriteAheadProjection::Intent { appends, state } => {
                    let written = ready!(poll_intents(appends, cx));
                    let Some((request, mut inner, mut guards)) = state.take() else {
                        return Poll::Ready(Err(GatewayError::Audit(AuditError::Closed)));
                    };
                    if let Err(error) = written {
                        guards.iter_mut().for_each(|g| g.body = None); // nothing forwarded, no outcome owed
                        return Poll::Ready(Err(GatewayError::Audit(error)));
                    }
                    if let Some(context) = request.extensions().get::<Arc<AuditContext>>() {
                        let _ = context.intent_written.set(());
                    }
                    WriteAheadFuture::Forwarding { inner: inner.call(request), owed: Some(guards) }
                }
                WriteAheadProjection::Forwarding { inner, owed } => {
                    let result = ready!(inner.poll(cx));
                    let mut guards = owed.take().unwrap_or_default();
                    match result {
                        Ok(response) if guards.iter().any(|g| g.batch_id.is_some()) => {
                            let (parts, body) = response.into_parts();
                            WriteAheadFuture::ReadingBatch {
                                collect: Limited::new(body, MAX_BATCH_RESPONSE).collect(),
                                state: Some((parts, guards)),
                            }
                        }
                        Ok(response) => {
                            let graph_id = graph_request_id(response.headers());
                            let status = response.status().as_u16();
                            guards.iter_mut().for_each(|g| g.finish(status, graph_id.clone(), None));
                            return Poll::Ready(Ok(response));
                        }
                        Err(error) => {
                            let reason = format!("{}: {error}", error.code());
                            let status = error.status().as_u16();
                            guards.iter_mut().for_each(|g| g.finish(status, None, Some(reason.clone())));
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                WriteAheadProjection::ReadingBatch { collect, state } => {
                    let collected = ready!(collect.poll(cx));
                    let Some((parts, mut guards)) = state.take() else {
                        return Poll::Ready(Err(GatewayError::Audit(AuditError::Closed)));
                    };
                    let graph_id = graph_request_id(&parts.headers);
                    match collected {
                        Ok(collected) => {
                            let bytes = collected.to_bytes();
                            let statuses = inner_statuses(&bytes);
                            for guard in &mut guards {
                                let inner = statuses
                                    .iter()
                                    .find(|(id, _)| Some(id) == guard.batch_id.as_ref())
                                    .map(|(_, s)| *s);
                                let reason = inner.is_none().then(|| "no inner response for this request".to_owned());
                                guard.finish(inner.unwrap_or(parts.status.as_u16()), graph_id.clone(), reason);
                            }
                            return Poll::Ready(Ok(Response::from_parts(parts, Either::Left(Full::new(bytes)))));
                        }
                        Err(error) => {
                            let error = GatewayError::Upstream(crate::proxy::UpstreamError::Broken(error.to_string()));
                            let reason = format!("{}: {error}", error.code());
                            guards.iter_mut().for_each(|g| g.finish(502, graph_id.clone(), Some(reason.clone())));
                            return Poll::Ready(Err(error));
                        }
                    }
                }
            };
            self.set(next);
        }
    }
}

fn graph_request_id(headers: &http::HeaderMap) -> Option<String> {
    headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests;
