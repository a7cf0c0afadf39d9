//! Shared harness for the integration tests: a simulator, a gateway on ephemeral loopback ports
//! configured against it, and a small HTTP client.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use connector_gateway::Config;
use connector_gateway::launch::{self, RunningGateway};
use connector_gateway::simulator::{Faults, Simulator, entra};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const CONNECTOR: &str = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";

pub fn connector_path() -> String {
    format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{CONNECTOR}")
}

/// Config text for a gateway in front of `upstream`, keys and issuer from `simulator`.
pub fn config_text(simulator: &Simulator, upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "{upstream}"
connect_timeout = "2s"
timeout = "5s"
[auth]
jwks_url = "{jwks}"
issuers = ["{base}/{{tenantid}}/v2.0"]
audiences = ["{aud}"]
{rest}
"#,
        server_extra = extra.split("\n#rest\n").next().unwrap_or_default(),
        rest = extra.split("\n#rest\n").nth(1).unwrap_or_default(),
        jwks = simulator.jwks_url(),
        base = simulator.base_url(),
        aud = entra::DEV_AUDIENCE,
    )
}

/// A fresh directory for one test's relative paths (its audit trail above all).
pub fn scratch_dir() -> std::path::PathBuf {
    tempfile::Builder::new().prefix("connector-gateway-test-").tempdir().expect("a temp dir").keep()
}

pub fn config(simulator: &Simulator, upstream: &str, extra: &str) -> Config {
    Config::from_toml(&config_text(simulator, upstream, extra), &scratch_dir()).expect("test config is valid")
}

/// The audit trail of a config made by [`config`].
pub fn audit_lines(config: &Config) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&config.audit.path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

pub struct Harness {
    pub simulator: Simulator,
    pub gateway: RunningGateway,
    pub client: HttpClient,
    pub config: Config,
}

impl Harness {
    /// A simulator and a gateway in front of it; `extra` is added to `[server]`, and whatever
    /// follows a `#rest` line after `[auth]`.
    pub async fn start(extra: &str) -> Self {
        Self::with_faults(extra, Faults::default()).await
    }

    pub async fn with_faults(extra: &str, faults: Faults) -> Self {
        connector_gateway::install_crypto_provider();
        let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), faults).await.unwrap();
        let config = config(&simulator, simulator.base_url(), extra);
        let gateway = launch::start(config.clone()).await.unwrap();
        Self { simulator, gateway, client: HttpClient::default(), config }
    }

    /// Every audit record handed to the journal so far (outcome records are written after the
    /// answer, so this waits for the journal first).
    pub async fn audit(&self) -> Vec<serde_json::Value> {
        let _ = self.gateway.flush_audit().await; // a broken trail (/dev/full) has nothing to flush
        audit_lines(&self.config)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.admin_addr)
    }

    /// An application token with the default write role.
    pub fn app_token(&self) -> String {
        self.simulator.mint(entra::DEV_AUDIENCE, &entra::Grant::Application { roles: vec![entra::DEV_ROLE.into()] })
    }

    pub async fn patch(&self, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {}", self.app_token());
        self.client
            .send(
                Method::PATCH,
                &self.url(path),
                &[("authorization", &auth), ("content-type", "application/json")],
                body,
            )
            .await
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl HttpClient {
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.send_bytes(method, url, headers, Bytes::from(body.to_owned())).await
    }

    /// Like `send`, but a connection failure is an error instead of a panic.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    pub async fn send_bytes(&self, method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(Full::new(body)).unwrap()).await.expect("gateway answers");
        let (parts, body) = response.into_parts();
        Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    }
}

/// The path of the built binary (cargo builds it for integration tests).
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_connector-gateway"))
}
