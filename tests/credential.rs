//! The gateway's own Graph credential against the simulator: client credentials (certificate
//! assertion or secret) and on-behalf-of. The caller's token never reaches Graph in these modes.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{CONNECTOR, HttpClient, Reply, connector_path};
use connector_gateway::Config;
use connector_gateway::launch::{self, RunningGateway};
use connector_gateway::simulator::entra::{
    DEV_AUDIENCE, DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_ROLE, DEV_TENANT, Grant,
};
use connector_gateway::simulator::token::{DEV_CERTIFICATE_PEM, DEV_PRIVATE_KEY_PEM, OBO_SCOPE};
use connector_gateway::simulator::{Faults, Simulator};
use http::{Method, StatusCode};
use serde_json::Value;

const GRAPH: &str = "https://graph.microsoft.com";
const CHANGE: &str = r#"{"status":"inactive"}"#;

struct Setup {
    simulator: Simulator,
    gateway: RunningGateway,
    config: Config,
    client: HttpClient,
}

/// The simulator's dev certificate credential, written where the config can name it.
fn certificate_files(dir: &std::path::Path, cert: &str, key: &str) -> String {
    std::fs::write(dir.join("client.crt"), cert).unwrap();
    std::fs::write(dir.join("client.key"), key).unwrap();
    "certificate_file = \"client.crt\"\nprivate_key_file = \"client.key\"\n".to_owned()
}

/// A gateway in `mode` in front of `simulator`; `client_auth` are the `[upstream.entra]` lines that
/// prove the app's identity (made by `client_auth(dir)`).
async fn start_with(simulator: Simulator, mode: &str, client_auth: impl FnOnce(&std::path::Path) -> String) -> Setup {
    let dir = common::scratch_dir();
    let rest = "\n#rest\n[rate_limit]\nper_principal = { rate = \"100000/s\", burst = 100000 }\nper_connector = { rate = \"100000/s\", burst = 100000 }\n";
    let text = common::config_text(&simulator, simulator.base_url(), rest)
        .replace("[upstream]\n", &format!("[upstream]\ncredential = \"{mode}\"\n"))
        + &format!(
            "[upstream.entra]\nauthority = \"{}\"\ntenant_id = \"{DEV_TENANT}\"\nclient_id = \"{DEV_CLIENT_ID}\"\n{}",
            simulator.base_url(),
            client_auth(&dir)
        );
    let env = |name: &str| (name == "TEST_GATEWAY_SECRET").then(|| DEV_CLIENT_SECRET.to_owned());
    let config = Config::from_toml_with_env(&text, &dir, &env).expect("valid credential config");
    let gateway = launch::start(config.clone()).await.unwrap();
    Setup { simulator, gateway, config, client: HttpClient::default() }
}

async fn simulator() -> Simulator {
    connector_gateway::install_crypto_provider();
    Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap()
}

async fn dev_certificate(mode: &str) -> Setup {
    start_with(simulator().await, mode, |dir| certificate_files(dir, DEV_CERTIFICATE_PEM, DEV_PRIVATE_KEY_PEM)).await
}

fn app_token(simulator: &Simulator) -> String {
    simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] })
}

fn user_token(simulator: &Simulator, user: &str) -> String {
    simulator.mint(DEV_AUDIENCE, &Grant::Delegated { scopes: vec![OBO_SCOPE.into()], user: user.into() })
}

impl Setup {
    async fn patch(&self, token: &str) -> Reply {
        let url = format!("http://{}{}", self.gateway.addr, connector_path());
        let auth = format!("Bearer {token}");
        self.client
            .send(Method::PATCH, &url, &[("authorization", &auth), ("content-type", "application/json")], CHANGE)
            .await
    }

    /// The `Authorization` of every request Graph received.
    fn upstream_authorizations(&self) -> Vec<String> {
        self.simulator
            .received()
            .iter()
            .map(|r| r.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned())
            .collect()
    }

    async fn audit(&self) -> Vec<Value> {
        self.gateway.flush_audit().await.unwrap();
        common::audit_lines(&self.config)
    }
}

/// The claims of a bearer header value, read without verification.
fn claims(authorization: &str) -> Value {
    let payload = authorization.trim_start_matches("Bearer ").split('.').nth(1).unwrap_or_default();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// Waits (bounded) for `condition`, polling: for background work the test cannot step itself.
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_hundred_writes_cost_one_token_request_and_graph_never_sees_the_callers_token() {
    let setup = dev_certificate("client_credentials").await;
    let caller = app_token(&setup.simulator);
    let replies = concurrent_patches(&setup, &caller, 100).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK), "{:?}", replies.iter().find(|r| r.status != 200));
    // One call to the token endpoint, with a client assertion the simulator verified against
    // the dev certificate (it answers invalid_client otherwise).
    assert_eq!(setup.simulator.token_requests(), 1);
    let upstream = setup.upstream_authorizations();
    assert_eq!(upstream.len(), 100);
    assert!(upstream.iter().all(|a| a == &upstream[0]));
    assert!(upstream.iter().all(|a| !a.contains(&caller)));
    let graph_token = claims(&upstream[0]);
    assert_eq!(graph_token["aud"], GRAPH);
    assert_eq!(graph_token["roles"][0], DEV_ROLE);
    let metrics =
        setup.client.send(Method::GET, &format!("http://{}/metrics", setup.gateway.admin_addr), &[], "").await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("gateway_upstream_token_requests_total 1\n"));
    let records = setup.audit().await;
    assert_eq!(records.len(), 200);
    for record in &records {
        assert_eq!(
            record["upstream_credential"],
            serde_json::json!({"mode": "client_credentials", "app_id": DEV_CLIENT_ID})
        );
        assert!(!record.to_string().contains(&caller));
    }
}

/// `n` PATCHes with `token`, all in flight at once.
async fn concurrent_patches(setup: &Setup, token: &str, n: usize) -> Vec<Reply> {
    let url = format!("http://{}{}", setup.gateway.addr, connector_path());
    let auth = format!("Bearer {token}");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (url, auth) = (url.clone(), auth.clone());
        tasks.spawn(async move {
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            HttpClient::default().send(Method::PATCH, &url, &headers, CHANGE).await
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn the_app_token_is_renewed_before_it_expires() {
    let simulator = simulator().await;
    simulator.set_token_lifetime(Duration::from_secs(4));
    let setup = start_with(simulator, "client_credentials", |dir| {
        certificate_files(dir, DEV_CERTIFICATE_PEM, DEV_PRIVATE_KEY_PEM)
    })
    .await;
    let caller = app_token(&setup.simulator);
    assert_eq!(setup.patch(&caller).await.status, StatusCode::OK);
    let first = setup.upstream_authorizations().remove(0);
    let issued = setup.simulator.tokens_issued();
    // The renewal runs in the background at half the token's life; no request waits for it.
    eventually("a renewed token", async || setup.simulator.tokens_issued() > issued).await;
    assert_eq!(setup.patch(&caller).await.status, StatusCode::OK);
    let second = setup.upstream_authorizations().pop().unwrap();
    assert_ne!(first, second);
    let (first, second) = (claims(&first), claims(&second));
    assert!(
        second["iat"].as_u64() < first["exp"].as_u64(),
        "renewed at {} after the first token expired at {}",
        second["iat"],
        first["exp"]
    );
}

#[tokio::test]
async fn no_token_means_503_nothing_forwarded_and_a_backed_off_retry() {
    let simulator = simulator().await;
    simulator.set_token_endpoint_down(true);
    let setup =
        start_with(simulator, "client_credentials", |_| "client_secret_env = \"TEST_GATEWAY_SECRET\"\n".into()).await;
    let caller = app_token(&setup.simulator);
    for _ in 0..20 {
        let reply = setup.patch(&caller).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1));
        assert_eq!(reply.json()["error"]["code"], "ServiceUnavailable");
        assert!(!String::from_utf8_lossy(&reply.body).contains(&caller));
    }
    assert!(setup.simulator.received().is_empty(), "nothing reaches Graph without the gateway's token");
    // Twenty refused requests did not cause twenty calls: the failure's backoff answers them.
    assert!(setup.simulator.token_requests() <= 5, "{} token requests", setup.simulator.token_requests());
    let records = setup.audit().await;
    assert_eq!(records.len(), 20);
    assert!(records.iter().all(|r| r["phase"] == "denied" && r["status"] == 503));
    let readyz = setup.client.send(Method::GET, &format!("http://{}/readyz", setup.gateway.admin_addr), &[], "").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(readyz.json()["checks"]["upstream_credential"].is_string(), "{}", readyz.json());

    setup.simulator.set_token_endpoint_down(false);
    eventually("a write after Entra is back", async || setup.patch(&caller).await.status == StatusCode::OK).await;
    assert_eq!(setup.simulator.received().len(), 1);
    let graph_token = claims(&setup.upstream_authorizations()[0]);
    assert_eq!(graph_token["aud"], GRAPH);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_until_the_tenant_trusts_it() {
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gateway.test".into()]).unwrap().self_signed(&other).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), other.serialize_pem());
    let setup =
        start_with(simulator().await, "client_credentials", |dir| certificate_files(dir, &cert_pem, &key_pem)).await;
    let caller = app_token(&setup.simulator);
    let reply = setup.patch(&caller).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("invalid_client") && message.contains("AADSTS700027"), "{message}");
    assert!(setup.simulator.received().is_empty());

    assert!(setup.simulator.trust_certificate(&cert_pem));
    eventually("a write once the certificate is registered", async || {
        setup.patch(&caller).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn on_behalf_of_exchanges_once_per_distinct_caller_token() {
    let setup =
        start_with(simulator().await, "on_behalf_of", |_| "client_secret_env = \"TEST_GATEWAY_SECRET\"\n".into()).await;
    let adele = user_token(&setup.simulator, "adele@contoso.example");
    let bruno = user_token(&setup.simulator, "bruno@contoso.example");
    for token in [&adele, &adele, &bruno, &adele, &bruno] {
        assert_eq!(setup.patch(token).await.status, StatusCode::OK);
    }
    assert_eq!(setup.simulator.token_requests(), 2);
    let upstream = setup.upstream_authorizations();
    assert_eq!(upstream.len(), 5);
    for (authorization, user) in upstream.iter().zip(["adele", "adele", "bruno", "adele", "bruno"]) {
        assert!(!authorization.contains(&adele) && !authorization.contains(&bruno));
        let graph_token = claims(authorization);
        assert_eq!(graph_token["aud"], GRAPH);
        assert_eq!(graph_token["scp"], OBO_SCOPE);
        assert!(graph_token["preferred_username"].as_str().unwrap().starts_with(user));
    }
    let records = setup.audit().await;
    assert!(records.iter().all(|r| r["upstream_credential"]["mode"] == "on_behalf_of"));
}

#[tokio::test]
async fn refused_exchanges_become_401_or_403_naming_the_entra_error() {
    let setup =
        start_with(simulator().await, "on_behalf_of", |_| "client_secret_env = \"TEST_GATEWAY_SECRET\"\n".into()).await;
    let mfa = user_token(&setup.simulator, "mfa-carla@contoso.example");
    let reply = setup.patch(&mfa).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("interaction_required") && message.contains("AADSTS50076"), "{message}");
    // An app-only token cannot be exchanged for a user's Graph token.
    let reply = setup.patch(&app_token(&setup.simulator)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.header("www-authenticate").contains("invalid_token"));
    assert!(reply.json()["error"]["message"].as_str().unwrap_or_default().contains("invalid_grant"));
    assert!(setup.simulator.received().is_empty());
    let records = setup.audit().await;
    assert_eq!(
        records.iter().map(|r| (r["phase"].as_str().unwrap(), r["status"].as_u64().unwrap())).collect::<Vec<_>>(),
        [("denied", 403), ("denied", 401)]
    );
    assert_eq!(records[0]["connector_id"], CONNECTOR);
}

#[tokio::test]
async fn other_traffic_needs_a_verified_caller_before_it_gets_the_gateways_credential() {
    let setup = dev_certificate("client_credentials").await;
    let url = format!("http://{}/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors", setup.gateway.addr);
    let anonymous = setup.client.send(Method::GET, &url, &[], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let forged = setup.client.send(Method::GET, &url, &[("authorization", "Bearer not.a.token")], "").await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert!(setup.simulator.received().is_empty());
    let caller = app_token(&setup.simulator);
    let reply = setup.client.send(Method::GET, &url, &[("authorization", &format!("Bearer {caller}"))], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let upstream = setup.upstream_authorizations();
    assert_eq!(upstream.len(), 1);
    assert_eq!(claims(&upstream[0])["aud"], GRAPH);
    assert!(setup.audit().await.is_empty(), "reads are not connector changes");
}

#[tokio::test]
async fn fifty_concurrent_requests_without_a_token_share_one_fetch() {
    use connector_gateway::credential::{AppTokenSource, TokenClient};
    let simulator = simulator().await;
    let setup_dir = common::scratch_dir();
    let text = format!(
        "[upstream]\nurl = \"{base}\"\ncredential = \"client_credentials\"\n[upstream.entra]\nauthority = \"{base}\"\ntenant_id = \"{DEV_TENANT}\"\nclient_id = \"{DEV_CLIENT_ID}\"\nclient_secret_env = \"S\"\n[auth]\njwks_file = \"k\"\naudiences = [\"{DEV_AUDIENCE}\"]\n",
        base = simulator.base_url()
    );
    let config = Config::from_toml_with_env(&text, &setup_dir, &|_| Some(DEV_CLIENT_SECRET.to_owned())).unwrap();
    let app = config.upstream.credential.app().unwrap().clone();
    let connector = connector_gateway::proxy::https_connector(&[], Duration::from_secs(2));
    let source = std::sync::Arc::new(AppTokenSource::new(std::sync::Arc::new(TokenClient::new(app, connector))));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let source = source.clone();
        tasks.spawn(async move { source.token().await });
    }
    let tokens = tasks.join_all().await;
    assert!(tokens.iter().all(|t| t.as_ref().is_ok_and(|t| t == tokens[0].as_ref().unwrap())));
    assert_eq!(simulator.token_requests(), 1);
    assert_eq!(source.requests(), 1);
}
