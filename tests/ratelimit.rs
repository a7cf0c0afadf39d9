//! Rate limiting over real HTTP: Graph-style 429s, headers, audit, and one quota shared by two
//! gateways through a real redis-server started here on an ephemeral port (and killed mid-test).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{CONNECTOR, Harness, HttpClient, connector_path};
use connector_gateway::launch::{self, RunningGateway};
use connector_gateway::simulator::entra::{DEV_AUDIENCE, DEV_ROLE, Grant};
use connector_gateway::simulator::{Faults, Simulator};
use http::{Method, StatusCode};

#[tokio::test]
async fn a_spent_quota_is_a_graph_style_429_and_never_reaches_graph() {
    let h = Harness::start("\n#rest\n[rate_limit]\nper_principal = { rate = \"1/h\", burst = 2 }\nper_connector = { rate = \"100/s\", burst = 100 }\n").await;
    for expected_remaining in [1, 0] {
        let reply = h.patch(&connector_path(), r#"{"status":"active"}"#).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("ratelimit-policy"), "\"per-principal\";q=2;w=7200, \"per-connector\";q=100;w=1");
        assert!(
            reply.header("ratelimit").starts_with(&format!("\"per-principal\";r={expected_remaining}")),
            "{}",
            reply.header("ratelimit")
        );
    }
    let reply = h.patch(&connector_path(), r#"{"status":"active"}"#).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = reply.header("retry-after").parse().expect("Retry-After is whole seconds");
    assert!((3590..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.json()["error"]["code"], "TooManyRequests");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("per-principal quota (1/h, burst 2)"));
    assert!(reply.header("ratelimit").starts_with("\"per-principal\";r=0;t="));
    assert_eq!(h.simulator.received().len(), 2, "the throttled write was not forwarded");
    let denied: Vec<_> = h.audit().await.into_iter().filter(|r| r["phase"] == "denied").collect();
    assert_eq!(denied.len(), 1);
    assert!(denied[0]["reason"].as_str().unwrap().starts_with("TooManyRequests"));
    assert_eq!(denied[0]["changes"], serde_json::json!({"status": "active"}));
    // Another principal still has its own quota; reads are not limited.
    let other = format!(
        "Bearer {}",
        h.simulator.mint(DEV_AUDIENCE, &Grant::Delegated { scopes: vec![DEV_ROLE.into()], user: "u@x".into() })
    );
    let reply = h
        .client
        .send(
            Method::PATCH,
            &h.url(&connector_path()),
            &[("authorization", &other), ("content-type", "application/json")],
            r#"{"status":"active"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let auth = format!("Bearer {}", h.app_token());
    for _ in 0..5 {
        assert_eq!(
            h.client.send(Method::GET, &h.url(&connector_path()), &[("authorization", &auth)], "").await.status,
            StatusCode::OK
        );
    }
}

/// A redis-server on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn shared_gateway(simulator: &Simulator, redis: &str, on_error: &str) -> RunningGateway {
    let rest = format!(
        "\n#rest\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nredis_timeout = \"100ms\"\non_redis_error = \"{on_error}\"\nper_principal = {{ rate = \"1000/s\", burst = 1000 }}\nper_connector = {{ rate = \"1/h\", burst = 4 }}\n"
    );
    launch::start(common::config(simulator, simulator.base_url(), &rest)).await.unwrap()
}

async fn patch(client: &HttpClient, gateway: &RunningGateway, token: &str, connector: &str) -> StatusCode {
    let url =
        format!("http://{}/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{connector}", gateway.addr);
    client
        .send(
            Method::PATCH,
            &url,
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            r#"{"status":"active"}"#,
        )
        .await
        .status
}

#[tokio::test]
async fn two_gateways_share_one_quota_through_redis_and_survive_its_death() {
    connector_gateway::install_crypto_provider();
    let redis = RedisServer::start();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let a = shared_gateway(&simulator, &redis.url(), "local").await;
    let b = shared_gateway(&simulator, &redis.url(), "local").await;
    let client = HttpClient::default();
    let token = simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] });
    // The same scenario, repeated on fresh connectors: burst 4 means exactly 4 of 8 alternating
    // requests pass, whichever gateway they hit.
    for round in 0..5 {
        let connector = format!("5e1ec7ed-0000-4000-8000-{round:012}");
        let mut passed = 0;
        for i in 0..8 {
            let gateway = if i % 2 == 0 { &a } else { &b };
            match patch(&client, gateway, &token, &connector).await {
                StatusCode::NOT_FOUND => passed += 1, // forwarded: the simulator has no such connector
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("round {round}: unexpected {other}"),
            }
        }
        assert_eq!(passed, 4, "round {round}");
    }
    let ready = client.send(Method::GET, &format!("http://{}/readyz", a.admin_addr), &[], "").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", String::from_utf8_lossy(&ready.body));

    // Redis dies: decisions fall back to each gateway's own memory limiter, quickly.
    drop(redis);
    let started = std::time::Instant::now();
    assert_eq!(patch(&client, &a, &token, CONNECTOR).await, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5), "no hang while redis is down");
    let metrics = client.send(Method::GET, &format!("http://{}/metrics", a.admin_addr), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let fallbacks: u64 =
        text.lines().find_map(|l| l.strip_prefix("gateway_ratelimit_redis_fallbacks_total ")).unwrap().parse().unwrap();
    assert!(fallbacks >= 1, "{text}");
    let ready = client.send(Method::GET, &format!("http://{}/readyz", a.admin_addr), &[], "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["checks"]["rate_limit"], "redis is not reachable");
    // The local fallback still limits: burst 4 per connector in this gateway alone.
    let statuses: Vec<u16> = {
        let mut all = Vec::new();
        for _ in 0..5 {
            all.push(patch(&client, &a, &token, "5e1ec7ed-0000-4000-8000-0000000000ff").await.as_u16());
        }
        all
    };
    assert_eq!(statuses, [404, 404, 404, 404, 429]);
}

#[tokio::test]
async fn with_on_redis_error_deny_an_unreachable_redis_refuses() {
    connector_gateway::install_crypto_provider();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = shared_gateway(&simulator, &format!("redis://{closed}"), "deny").await;
    let token = simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] });
    let reply_status = patch(&HttpClient::default(), &gateway, &token, CONNECTOR).await;
    assert_eq!(reply_status, StatusCode::TOO_MANY_REQUESTS);
    assert!(simulator.received().is_empty());
}
