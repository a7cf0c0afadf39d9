//! `connector-gateway demo`: the simulator and the gateway (config/local.toml, embedded) on
//! loopback, and a scripted tour of what the gateway does, step by step, with copy-paste commands.
//! `--once` exits after the tour: status 0 only when every step behaved as expected.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;
use crate::launch::{self, RunningGateway};
use crate::simulator::{Faults, Simulator, entra, token};

/// The demo configuration, embedded so `demo` runs from any directory.
pub const LOCAL_CONFIG: &str = include_str!("../config/local.toml");

const CONNECTOR: &str = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";

/// One answer, as the tour prints it.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Body text.
    pub body: String,
}

/// A plain HTTP/1.1 client for the tour.
pub struct TourClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for TourClient {
    fn default() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl TourClient {
    /// Sends one request.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Answer, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer { status, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

async fn start_simulator(preferred: SocketAddr) -> Result<Simulator, String> {
    match Simulator::start(preferred, Faults::default()).await {
        Ok(simulator) => Ok(simulator),
        Err(_) => {
            println!("  (port {} is busy; the simulator takes a free port instead)", preferred.port());
            Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Faults::default()).await.map_err(|e| e.to_string())
        }
    }
}

/// The demo's audit trail: a fresh file per run, so every tour starts a new chain.
fn audit_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("connector-gateway-demo-{}", std::process::id())).join("audit.jsonl")
}

/// Points the embedded config at the running simulator and at free ports where the usual ones
/// are busy.
fn demo_config(simulator: &Simulator, ephemeral: bool) -> Result<Config, String> {
    // The embedded config names the simulator's usual address and the dev credential's files
    // beside it; the demo writes those files into its own directory and points every URL at
    // wherever the simulator really listens.
    let dir = audit_path().parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    for (name, text) in
        [("simulator-client.crt", token::DEV_CERTIFICATE_PEM), ("simulator-client.key", token::DEV_PRIVATE_KEY_PEM)]
    {
        std::fs::write(dev.join(name), text).map_err(|e| format!("{}: {e}", dev.join(name).display()))?;
    }
    let text = LOCAL_CONFIG.replace("http://127.0.0.1:8081", simulator.base_url());
    let mut config = Config::from_toml(&text, &dir).map_err(|e| e.to_string())?;
    config.audit.path = audit_path();
    if ephemeral {
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    }
    Ok(config)
}

async fn start_gateway(simulator: &Simulator) -> Result<RunningGateway, String> {
    match launch::start(demo_config(simulator, false)?).await {
        Ok(gateway) => Ok(gateway),
        Err(error) => {
            println!("  ({error}; the gateway takes free ports instead)");
            launch::start(demo_config(simulator, true)?).await.map_err(|e| e.to_string())
        }
    }
}

struct Tour {
    client: TourClient,
    failures: usize,
    step: usize,
}

impl Tour {
    async fn step(
        &mut self,
        title: &str,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
        expected: StatusCode,
    ) -> Option<Answer> {
        self.step += 1;
        println!(
            "\n{}. {title}\n   {method} {url}{}",
            self.step,
            if body.is_empty() { String::new() } else { format!("\n   {body}") }
        );
        match self.client.send(method, url, headers, body).await {
            Ok(answer) => {
                let verdict = if answer.status == expected { "as expected" } else { "UNEXPECTED" };
                println!("   -> {} ({verdict})\n   {}", answer.status, shorten(&answer.body));
                if answer.status != expected {
                    self.failures += 1;
                }
                Some(answer)
            }
            Err(error) => {
                println!("   -> failed: {error}");
                self.failures += 1;
                None
            }
        }
    }
}

/// The `aud` of a bearer token, read without verifying (for display only).
pub fn token_audience(authorization: &str) -> String {
    use base64::Engine;
    authorization
        .strip_prefix("Bearer ")
        .and_then(|t| t.split('.').nth(1))
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|claims| claims["aud"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(none)".into())
}

fn shorten(text: &str) -> String {
    if text.len() > 300 { format!("{}...", text.get(..300).unwrap_or(text)) } else { text.to_owned() }
}

/// Runs the demo; returns whether every step behaved as expected.
pub async fn run(once: bool) -> Result<bool, String> {
    println!("connector-gateway demo: starting the simulator (Entra + Graph) and the gateway on loopback");
    let simulator = start_simulator(SocketAddr::from(([127, 0, 0, 1], 8081))).await?;
    let gateway = start_gateway(&simulator).await?;
    let (sim, gw, admin) =
        (simulator.base_url().to_owned(), format!("http://{}", gateway.addr), format!("http://{}", gateway.admin_addr));
    println!("  simulator: {sim}\n  gateway:   {gw}\n  admin:     {admin}");

    let mut tour = Tour { client: TourClient::default(), failures: 0, step: 0 };
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=api://connector-gateway/.default",
        entra::DEV_CLIENT_ID,
        entra::DEV_CLIENT_SECRET
    );
    let token_url = simulator.token_url();
    let token = tour
        .step(
            "Get an app token for the gateway's audience from the simulated Entra",
            Method::POST,
            &token_url,
            &[("content-type", "application/x-www-form-urlencoded")],
            &form,
            StatusCode::OK,
        )
        .await
        .and_then(|answer| serde_json::from_str::<serde_json::Value>(&answer.body).ok())
        .and_then(|json| json["access_token"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let bearer = format!("Bearer {token}");
    let connector_url = format!("{gw}/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{CONNECTOR}");
    let json_headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    tour.step(
        "An allowed change: set a connector inactive through the gateway",
        Method::PATCH,
        &connector_url,
        &json_headers,
        r#"{"status":"inactive"}"#,
        StatusCode::OK,
    )
    .await;
    let changed = simulator.connector(CONNECTOR).is_some_and(|c| c.status == "inactive");
    println!(
        "   Graph (simulated) now has status {:?}",
        simulator.connector(CONNECTOR).map(|c| c.status).unwrap_or_default()
    );
    if !changed {
        tour.failures += 1;
    }
    let upstream_token = simulator
        .received()
        .last()
        .and_then(|r| r.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let audience = crate::demo::token_audience(&upstream_token);
    println!(
        "   Graph received the gateway's own app token (aud {audience}), not the caller's (aud {}): upstream.credential = \"client_credentials\"",
        entra::DEV_AUDIENCE
    );
    if upstream_token == bearer || audience != "https://graph.microsoft.com" {
        tour.failures += 1;
    }
    let json_only = [("content-type", "application/json")];
    let active = r#"{"status":"active"}"#;
    let denied_401 = "Denied: no token (401, never forwarded)";
    tour.step(denied_401, Method::PATCH, &connector_url, &json_only, active, StatusCode::UNAUTHORIZED).await;
    let weak_form = format!("{form}&roles=Application.Read.All");
    let form_headers = [("content-type", "application/x-www-form-urlencoded")];
    let weak = tour
        .step("Get a token without the write role", Method::POST, &token_url, &form_headers, &weak_form, StatusCode::OK)
        .await
        .and_then(|answer| serde_json::from_str::<serde_json::Value>(&answer.body).ok())
        .and_then(|json| json["access_token"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let weak_bearer = format!("Bearer {weak}");
    let weak_headers = [("authorization", weak_bearer.as_str()), ("content-type", "application/json")];
    let denied_403 = "Denied: a valid token without the permission (403 insufficient_scope)";
    tour.step(denied_403, Method::PATCH, &connector_url, &weak_headers, active, StatusCode::FORBIDDEN).await;
    let denied_400 = "Denied: an illegal change (400 naming the property)";
    tour.step(
        denied_400,
        Method::PATCH,
        &connector_url,
        &json_headers,
        r#"{"status":"paused"}"#,
        StatusCode::BAD_REQUEST,
    )
    .await;
    tour.step(
        "A denied change: PUT is not a connector update (405, never forwarded)",
        Method::PUT,
        &connector_url,
        &json_headers,
        r#"{"status":"active"}"#,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    tour.step(
        "Other Graph traffic: the caller is verified, Graph gets the gateway's credential (other_requests = forward)",
        Method::GET,
        &format!("{gw}/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors"),
        &[("authorization", bearer.as_str())],
        "",
        StatusCode::OK,
    )
    .await;
    tour.step("The admin listener's metrics", Method::GET, &format!("{admin}/metrics"), &[], "", StatusCode::OK).await;

    tour.step += 1;
    println!("\n{}. What the audit trail recorded ({})", tour.step, audit_path().display());
    let trail = std::fs::read_to_string(audit_path()).unwrap_or_default();
    for line in trail.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let who = record["principal"]["app_id"].as_str().unwrap_or("(unknown caller)");
        let what =
            record["changes"].as_object().map(|c| serde_json::Value::Object(c.clone()).to_string()).unwrap_or_default();
        let how = record["reason"]
            .as_str()
            .map(|r| r.to_owned())
            .or_else(|| record["status"].as_u64().map(|s| s.to_string()))
            .unwrap_or_default();
        println!(
            "   seq {:>2} {:<7} {} {} {} {what} {how}",
            record["seq"],
            record["phase"].as_str().unwrap_or(""),
            record["method"].as_str().unwrap_or(""),
            record["connector_id"].as_str().unwrap_or(""),
            who
        );
    }
    match crate::audit::verify::verify_file(&audit_path()) {
        Ok(summary) if summary.records > 0 => {
            println!("   -> {}", crate::audit::verify::describe(&summary, &[audit_path()]))
        }
        Ok(_) => {
            println!("   -> the trail is empty (UNEXPECTED)");
            tour.failures += 1;
        }
        Err(broken) => {
            println!("   -> chain broken at {broken} (UNEXPECTED)");
            tour.failures += 1;
        }
    }
    println!("   Check it yourself: cargo run --release -- audit verify {}", audit_path().display());

    println!("\nTry it yourself:");
    println!("  TOKEN=$(curl -s {token_url} -d '{form}' | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')");
    println!(
        "  curl -i -X PATCH {connector_url} \\\n    -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"status\":\"active\"}}'"
    );
    println!("  curl -s {admin}/metrics");
    let ok = tour.failures == 0;
    println!("\n{} of {} steps behaved as expected.", tour.step - tour.failures.min(tour.step), tour.step);
    if !once {
        println!("Serving until Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    gateway.shutdown().await;
    simulator.shutdown().await;
    Ok(ok)
}
