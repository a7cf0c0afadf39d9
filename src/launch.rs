//! Starting a configured gateway: binds the public and admin listeners, builds the stack from the
//! library's public [`GatewayLayer`] around the [`Proxy`], and stops with a graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::Config;
use crate::gateway::{ForwardBody, GatewayLayer};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::{self, ListenerLimits};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The gateway stack could not be built (audit trail, rate-limit backend).
    #[error(transparent)]
    Build(#[from] crate::gateway::BuildError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A gateway serving in this process.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where the public listener accepts connections.
    pub addr: SocketAddr,
    /// Where the admin listener accepts connections.
    pub admin_addr: SocketAddr,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    journal: crate::audit::AuditJournal,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Stops accepting, drains in-flight requests (bounded by `server.drain_timeout`), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in &self.background {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        // Outcome records are queued without waiting; make sure the last ones are on disk.
        if let Err(error) = self.journal.flush().await {
            tracing::error!(%error, "the audit trail could not be flushed at shutdown");
        }
    }

    /// Waits until every audit record handed over so far is written (and synced).
    pub async fn flush_audit(&self) -> Result<u64, crate::audit::AuditError> {
        self.journal.flush().await
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { key, addr, source })
}

/// Starts the gateway described by `config`.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let listener = bind("server.listen", config.server.listen).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        key: "server.listen",
        addr: config.server.listen,
        source,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
        key: "admin.listen",
        addr: config.admin.listen,
        source,
    })?;

    let layer = GatewayLayer::new(&config)?;
    let metrics = layer.metrics();
    let readiness = layer.readiness();
    // Serve with keys from the start when the source answers; otherwise /readyz says so and the
    // background task keeps trying.
    if let Err(error) = layer.verifier().keys().refresh().await {
        tracing::warn!(%error, "signing keys could not be loaded at start; retrying in the background");
    }
    if let Some(crate::credential::CredentialProvider::ClientCredentials(source)) = layer.credential().as_deref() {
        if let Err(error) = source.renew().await {
            tracing::warn!(%error, "no Graph app token at start; retrying in the background");
        }
    }
    let background = layer.spawn_background();
    let service = tower::Layer::layer(&layer, Proxy::<ForwardBody<Incoming>>::new(&config.upstream));

    let limits = ListenerLimits {
        header_read_timeout: config.server.header_read_timeout,
        max_header_bytes: config.server.max_header_bytes,
        max_connections: config.server.max_connections,
        drain_timeout: config.server.drain_timeout,
    };
    let (stop, stopped) = watch::channel(false);
    let when_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tls = config.server.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let public = tokio::spawn(server::serve(listener, tls, service, limits.clone(), when_stopped(stopped.clone())));
    let admin_service = admin::service(metrics.clone(), readiness);
    let admin = tokio::spawn(server::serve(admin_listener, None, admin_service, limits, when_stopped(stopped)));

    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %addr, admin = %admin_addr, upstream = %config.upstream.url, "ready: serving {scheme}://{addr}");
    let journal = layer.journal();
    Ok(RunningGateway { addr, admin_addr, metrics, journal, stop, tasks: vec![public, admin], background })
}
