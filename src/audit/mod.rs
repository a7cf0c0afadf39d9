//! The audit trail: write-ahead, tamper-evident, crash-safe.
//!
//! Every governed request yields either one `denied` record, or an `intent` record that is durable
//! (per `audit.fsync`) *before* the upstream sees the request, followed by an `outcome` record.
//! Two stages do this: [`RecordDenialsLayer`] sits outside every stage that can refuse and records
//! each refusal with whatever principal and changes were known; [`WriteAheadLayer`] sits just
//! before forwarding and writes intent, then outcome. If the intent cannot be written the request
//! gets 503 and is not forwarded. Records never hold a token, a signature or a secret.

pub mod journal;
pub mod record;
pub mod verify;

pub use journal::{AuditError, AuditJournal};
pub use record::{AuditPrincipal, AuditRecord, Phase, RecordBody};

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::auth::Principal;
use crate::body::ConnectorPatch;
use crate::error::{CLIENT_REQUEST_ID, Decision, GatewayError, REQUEST_ID};
use crate::route::{Route, RouteClass};
use crate::server::ClientAddr;

/// What later stages learned about a governed request, kept where the denial recorder can read
/// it after the request itself has moved on.
#[derive(Debug, Default)]
pub struct AuditContext {
    principal: OnceLock<AuditPrincipal>,
    changes: OnceLock<serde_json::Value>,
}

/// Notes the verified principal for a possible later denial record.
pub fn note_principal<B>(request: &Request<B>, principal: &Principal) {
    if let Some(context) = request.extensions().get::<Arc<AuditContext>>() {
        let _ = context.principal.set(AuditPrincipal::from(principal));
    }
}

/// Notes the validated changes for a possible later denial record.
pub fn note_changes<B>(request: &Request<B>, patch: &ConnectorPatch) {
    if let Some(context) = request.extensions().get::<Arc<AuditContext>>() {
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
    }
}

fn governed<B>(request: &Request<B>) -> bool {
    matches!(request.extensions().get::<Route>(), Some(Route { class: RouteClass::ConnectorWrite, .. }))
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
        if !governed(&request) {
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
        /// Writing the denial record before answering.
        Recording { append: journal::Append, error: Option<GatewayError> },
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
                    let error = match result {
                        Err(error) if error.decision() == Decision::Denied => error,
                        other => return Poll::Ready(other),
                    };
                    let Some((mut body, context, journal)) = pending.take() else { return Poll::Ready(Err(error)) };
                    body.time = now_rfc3339();
                    body.principal = body.principal.or_else(|| context.principal.get().cloned());
                    body.changes = body.changes.or_else(|| context.changes.get().cloned());
                    body.reason = Some(format!("{}: {error}", error.code()));
                    body.status = Some(error.status().as_u16());
                    DenialFuture::Recording { append: journal.submit(body), error: Some(error) }
                }
                DenialProjection::Recording { append, error } => {
                    if let Err(audit_error) = ready!(Pin::new(append).poll(cx)) {
                        // The denial stands (nothing was forwarded); the missing record is loud.
                        tracing::error!(error = %audit_error, "a denial could not be recorded");
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
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError> + Clone,
{
    type Response = Response<ResB>;
    type Error = GatewayError;
    type Future = WriteAheadFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !governed(&request) {
            return WriteAheadFuture::Forwarding { inner: self.inner.call(request), outcome: None };
        }
        let intent = draft(&request, Phase::Intent);
        let outcome = OutcomeGuard {
            body: Some(RecordBody { phase: Phase::Outcome, ..intent.clone() }),
            journal: self.journal.clone(),
            started: Instant::now(),
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        WriteAheadFuture::Intent { append: self.journal.submit(intent), state: Some((request, inner, outcome)) }
    }
}

/// The outcome record still owed for a forwarded request. If the request is dropped before the
/// upstream answers (request timeout, client gone), the record is written from `Drop`, so every
/// intent gets its outcome.
#[derive(Debug)]
pub struct OutcomeGuard {
    body: Option<RecordBody>,
    journal: AuditJournal,
    started: Instant,
}

impl OutcomeGuard {
    fn finish(
        &mut self,
        status: u16,
        graph_request_id: Option<String>,
        reason: Option<String>,
    ) -> Option<journal::Append> {
        let mut body = self.body.take()?;
        body.time = now_rfc3339();
        body.status = Some(status);
        body.graph_request_id = graph_request_id;
        body.reason = reason;
        body.duration_ms = Some(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        Some(self.journal.submit(body))
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        if let Some(append) =
            self.finish(504, None, Some("Cancelled: the request ended before the upstream answered".into()))
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(append);
            }
        }
    }
}

pin_project! {
    /// Response future of [`WriteAhead`].
    #[project = WriteAheadProjection]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum WriteAheadFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        /// Waiting for the intent record to be durable.
        Intent { append: journal::Append, state: Option<(Request<B>, S, OutcomeGuard)> },
        /// Forwarded; waiting for the upstream.
        Forwarding { #[pin] inner: S::Future, outcome: Option<OutcomeGuard> },
        /// Writing the outcome record before answering.
        Outcome { append: Option<journal::Append>, result: Option<Result<S::Response, GatewayError>> },
    }
}

impl<S, B, ResB> Future for WriteAheadFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError>,
{
    type Output = Result<Response<ResB>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                WriteAheadProjection::Intent { append, state } => {
                    let written = ready!(Pin::new(append).poll(cx));
                    let Some((request, mut inner, mut outcome)) = state.take() else {
                        return Poll::Ready(Err(GatewayError::Audit(AuditError::Closed)));
                    };
                    if let Err(error) = written {
                        outcome.body = None; // nothing forwarded, so no outcome is owed
                        return Poll::Ready(Err(GatewayError::Audit(error)));
                    }
                    WriteAheadFuture::Forwarding { inner: inner.call(request), outcome: Some(outcome) }
                }
                WriteAheadProjection::Forwarding { inner, outcome } => {
                    let result = ready!(inner.poll(cx));
                    let append = outcome.as_mut().and_then(|guard| match &result {
                        Ok(response) => {
                            let graph_id =
                                response.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
                            guard.finish(response.status().as_u16(), graph_id, None)
                        }
                        Err(error) => {
                            guard.finish(error.status().as_u16(), None, Some(format!("{}: {error}", error.code())))
                        }
                    });
                    WriteAheadFuture::Outcome { append, result: Some(result) }
                }
                WriteAheadProjection::Outcome { append, result } => {
                    if let Some(pending) = append {
                        if let Err(error) = ready!(Pin::new(pending).poll(cx)) {
                            // The change already happened upstream; the answer is relayed and the
                            // failure is loud (readyz fails too).
                            tracing::error!(%error, "an outcome could not be recorded");
                        }
                    }
                    return Poll::Ready(result.take().unwrap_or(Err(GatewayError::Audit(AuditError::Closed))));
                }
            };
            self.set(next);
        }
    }
}

#[cfg(test)]
mod tests;
