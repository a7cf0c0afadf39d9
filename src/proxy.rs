//! Forwarding: a pooled hyper-util client (rustls with webpki roots plus `upstream.ca_file`,
//! plain http allowed) that sends each request to the upstream origin and relays the answer.
//!
//! Hop-by-hop headers are stripped both ways (RFC 9110 §7.6.1), `Host` is set for the upstream,
//! every end-to-end header is kept, and bodies stream unless an earlier stage buffered them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use crate::config::UpstreamConfig;
use crate::error::GatewayError;

/// A boxed error, as bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the upstream could not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("the upstream could not be reached: {0}")]
    Connect(String),
    /// The connection broke or the upstream spoke bad HTTP.
    #[error("the upstream failed: {0}")]
    Broken(String),
    /// No response head within `upstream.timeout`.
    #[error("the upstream did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

impl UpstreamError {
    /// Label value used in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Broken(_) => "broken",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// The forwarding service: the innermost service of the gateway stack in the standalone server.
pub struct Proxy<B> {
    client: HttpsClient<B>,
    origin: Arc<Origin>,
    timeout: Duration,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), origin: self.origin.clone(), timeout: self.timeout }
    }
}

#[derive(Debug)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
}

impl<B> std::fmt::Debug for Proxy<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("origin", &self.origin).field("timeout", &self.timeout).finish()
    }
}

/// Builds the HTTPS connector used for the upstream and for key fetches: webpki roots plus any
/// extra trust anchors, ALPN h2 and http/1.1, and a connect timeout.
pub fn https_connector(
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
    connect_timeout: Duration,
) -> HttpsConnector<HttpConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        // A malformed anchor was already refused when the config was loaded.
        let _ = roots.add(cert.clone());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| unreachable_tls_config());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http)
}

/// aws-lc-rs supports the default protocol versions; this only satisfies the type checker.
fn unreachable_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
}

impl<B> Proxy<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A proxy to the configured upstream.
    pub fn new(config: &UpstreamConfig) -> Self {
        let connector = https_connector(&config.extra_roots, config.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let authority = config.url.authority().cloned().unwrap_or_else(|| Authority::from_static("localhost"));
        let host = HeaderValue::from_str(authority.as_str()).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let scheme = config.url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        Self { client, origin: Arc::new(Origin { scheme, authority, host }), timeout: config.timeout }
    }
}

impl<B> Service<Request<B>> for Proxy<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = GatewayError;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = Uri::builder().scheme(self.origin.scheme.clone()).authority(self.origin.authority.clone());
        uri = uri.path_and_query(path);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.origin.host.clone());
        parts.uri = uri.build().unwrap_or_default();
        // The client picks the protocol per connection (ALPN); the caller's version is not ours to keep.
        parts.version = http::Version::HTTP_11;
        let upstream = Request::from_parts(parts, body);
        ProxyFuture { inner: tokio::time::timeout(self.timeout, self.client.request(upstream)), timeout: self.timeout }
    }
}

pin_project! {
    /// Response future of [`Proxy`].
    pub struct ProxyFuture {
        #[pin]
        inner: tokio::time::Timeout<hyper_util::client::legacy::ResponseFuture>,
        timeout: Duration,
    }
}

impl Future for ProxyFuture {
    type Output = Result<Response<Incoming>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match std::task::ready!(this.inner.poll(cx)) {
            Err(_) => Err(UpstreamError::Timeout(*this.timeout)),
            Ok(Err(error)) if error.is_connect() => Err(UpstreamError::Connect(source_chain(&error))),
            Ok(Err(error)) => Err(UpstreamError::Broken(source_chain(&error))),
            Ok(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
        };
        if let Err(error) = &result {
            tracing::warn!(kind = error.kind(), error = %error, "upstream error");
        }
        Poll::Ready(result.map_err(GatewayError::from))
    }
}

/// The error and its causes on one line; hyper-util's top-level message alone says little.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer kept"));
        headers.insert("client-request-id", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "client-request-id"]);
    }
}
