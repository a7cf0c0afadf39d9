//! Embedding the gateway in your own hyper service: the same `GatewayLayer` the standalone server
//! uses, wrapped around an in-process upstream instead of the proxy to Graph.
//!
//! Run: `cargo run --example embedded`, then
//! `curl -i -X PUT http://127.0.0.1:3000/beta/onPremisesPublishingProfiles/p/connectors/c` (405, refused
//! by the gateway) or `curl -i http://127.0.0.1:3000/beta/anything` (answered by the handler).

use std::convert::Infallible;

use bytes::Bytes;
use connector_gateway::{Config, ForwardBody, GatewayLayer};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::Layer;

const CONFIG: &str = r#"
[upstream]
url = "http://127.0.0.1:9"      # unused here: the upstream is the handler below
[auth]
jwks_file = "keys.json"
audiences = ["api://connector-gateway"]
[audit]
path = "target/embedded-audit.jsonl"
"#;

/// Your own service: here it answers every request it is handed with what it received.
async fn handler(request: Request<ForwardBody<Incoming>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text = format!("handled {} {} ({} body bytes)\n", parts.method, parts.uri.path(), body.len());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    connector_gateway::install_crypto_provider();
    let config = Config::from_toml(CONFIG, std::path::Path::new("."))?;
    let layer = GatewayLayer::new(&config)?;
    let _background = layer.spawn_background();
    let service = layer.layer(tower::service_fn(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
