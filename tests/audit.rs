//! The audit trail over real HTTP: records per phase, write-ahead refusal on a full disk,
//! `audit verify` on tampered files, no secrets, and a SIGKILL crash under load.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{CONNECTOR, Harness, HttpClient, connector_path};
use connector_gateway::simulator::entra::{DEV_AUDIENCE, DEV_ROLE, Grant};
use connector_gateway::simulator::{Faults, Simulator};
use http::{Method, StatusCode};
use serde_json::Value;

fn phases(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| r["phase"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn an_allowed_change_has_an_intent_then_its_outcome() {
    let h = Harness::start("").await;
    let reply = h
        .client
        .send(
            Method::PATCH,
            &h.url(&connector_path()),
            &[
                ("authorization", &format!("Bearer {}", h.app_token())),
                ("content-type", "application/json"),
                ("client-request-id", "corr-42"),
            ],
            r#"{"status":"inactive"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let records = h.audit().await;
    assert_eq!(phases(&records), ["intent", "outcome"]);
    let (intent, outcome) = (&records[0], &records[1]);
    assert_eq!(intent["seq"], 1);
    assert_eq!(intent["client_request_id"], "corr-42");
    assert_eq!(intent["request_id"], outcome["request_id"]);
    assert_eq!(intent["method"], "PATCH");
    assert_eq!(intent["api_version"], "beta");
    assert_eq!(intent["path"], format!("/onPremisesPublishingProfiles/applicationProxy/connectors/{CONNECTOR}"));
    assert_eq!(intent["connector_id"], CONNECTOR);
    assert_eq!(intent["changes"], serde_json::json!({"status": "inactive"}));
    assert_eq!(intent["principal"]["kind"], "application");
    assert_eq!(intent["principal"]["tenant_id"], connector_gateway::simulator::entra::DEV_TENANT);
    assert!(intent["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(intent["status"], Value::Null);
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["graph_request_id"], reply.header("request-id"));
    assert!(outcome["duration_ms"].is_u64());
    assert_eq!(outcome["prev_hash"], intent["hash"]);
    assert_eq!(outcome["seq"], 2);
}

#[tokio::test]
async fn every_refusal_is_one_denied_record_with_what_was_known() {
    let h = Harness::start("").await;
    let url = h.url(&connector_path());
    let good = format!("Bearer {}", h.app_token());
    let weak =
        format!("Bearer {}", h.simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec!["Other.Role".into()] }));
    let json = ("content-type", "application/json");
    type Case<'a> = (Method, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
    let cases: [Case<'_>; 5] = [
        (Method::PATCH, vec![json], r#"{"status":"active"}"#, 401, "InvalidAuthenticationToken"),
        (
            Method::PATCH,
            vec![json, ("authorization", &weak)],
            r#"{"status":"active"}"#,
            403,
            "Authorization_RequestDenied",
        ),
        (Method::PATCH, vec![json, ("authorization", &good)], r#"{"status":"paused"}"#, 400, "Request_BadRequest"),
        (Method::PATCH, vec![("authorization", &good)], r#"{"status":"active"}"#, 415, "UnsupportedMediaType"),
        (Method::DELETE, vec![("authorization", &good)], "", 405, "Request_BadRequest"),
    ];
    for (method, headers, body, status, _) in &cases {
        let reply = h.client.send(method.clone(), &url, headers, body).await;
        assert_eq!(reply.status.as_u16(), *status);
    }
    let records = h.audit().await;
    assert_eq!(phases(&records), ["denied"; 5]);
    for (record, (_, _, _, status, code)) in records.iter().zip(&cases) {
        assert_eq!(record["status"], *status);
        assert!(record["reason"].as_str().unwrap().starts_with(code), "{record}");
        assert_eq!(record["connector_id"], CONNECTOR);
    }
    assert_eq!(records[0]["principal"], Value::Null, "no token, no principal");
    assert_eq!(records[1]["principal"]["kind"], "application", "the principal is known after authentication");
    assert_eq!(records[2]["principal"]["kind"], "application");
    assert_eq!(records[2]["changes"], Value::Null, "an illegal body has no validated changes");
    assert_eq!(records[4]["method"], "DELETE");
    assert!(h.simulator.received().is_empty());
    // Non-governed traffic is never audited.
    h.client.send(Method::GET, &h.url("/v1.0/users"), &[("authorization", &good)], "").await;
    assert_eq!(h.audit().await.len(), 5);
}

#[tokio::test]
async fn a_failed_upstream_gets_an_outcome_with_its_status() {
    connector_gateway::install_crypto_provider();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = common::config(&simulator, &format!("http://{closed}"), "");
    let gateway = connector_gateway::launch::start(config.clone()).await.unwrap();
    let token = simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] });
    let reply = HttpClient::default()
        .send(
            Method::PATCH,
            &format!("http://{}{}", gateway.addr, connector_path()),
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            r#"{"status":"active"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    gateway.flush_audit().await.unwrap();
    let records = common::audit_lines(&config);
    assert_eq!(phases(&records), ["intent", "outcome"]);
    assert_eq!(records[1]["status"], 502);
    assert!(records[1]["reason"].as_str().unwrap().starts_with("BadGateway"));
}

#[tokio::test]
async fn a_full_disk_makes_governed_writes_503_and_forwards_nothing() {
    let h = Harness::start("\n#rest\n[audit]\npath = \"/dev/full\"\n").await;
    let reply = h.patch(&connector_path(), r#"{"status":"inactive"}"#).await;

    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!reply.header("retry-after").is_empty());
    assert_eq!(reply.json()["error"]["code"], "ServiceUnavailable");
    assert!(h.simulator.received().is_empty(), "nothing forwarded without a durable intent");
    let ready = h.client.send(Method::GET, &h.admin_url("/readyz"), &[], "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.json()["checks"]["audit"].as_str().unwrap().contains("not writable"));
    // Non-governed traffic keeps flowing.
    let auth = format!("Bearer {}", h.app_token());
    assert_eq!(
        h.client.send(Method::GET, &h.url("/v1.0/users"), &[("authorization", &auth)], "").await.status.as_u16(),
        400
    );
    assert_eq!(h.simulator.received().len(), 1);
}

fn verify_cli(files: &[&std::path::Path]) -> (bool, String) {
    let out = Command::new(common::binary()).args(["audit", "verify"]).args(files).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn audit_verify_catches_an_edit_a_removal_and_a_swap() {
    let h = Harness::start("").await;
    for status in ["inactive", "active", "inactive"] {
        h.patch(&connector_path(), &format!("{{\"status\":\"{status}\"}}")).await;
    }
    let path = h.config.audit.path.clone();
    let (ok, text) = verify_cli(&[&path]);
    assert!(ok, "{text}");
    assert!(text.contains("intact: 6 records"), "{text}");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let tampered = [
        (
            "edit",
            {
                let mut l = lines.clone();
                let edited = l[2].replace("\"active\"", "\"inactive\"");
                l[2] = Box::leak(edited.into_boxed_str());
                l
            },
            ":3:",
        ),
        (
            "removal",
            {
                let mut l = lines.clone();
                l.remove(3);
                l
            },
            ":4:",
        ),
        (
            "swap",
            {
                let mut l = lines.clone();
                l.swap(4, 5);
                l
            },
            ":5:",
        ),
    ];
    for (name, content, at) in tampered {
        std::fs::write(&path, content.join("\n") + "\n").unwrap();
        let (ok, text) = verify_cli(&[&path]);
        assert!(!ok, "{name} not caught");
        assert!(text.contains(at), "{name}: {text}");
    }
}

#[tokio::test]
async fn no_token_or_signature_is_ever_recorded() {
    let h = Harness::start("").await;
    let token = h.app_token();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    h.client
        .send(
            Method::PATCH,
            &h.url(&connector_path()),
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            r#"{"status":"active"}"#,
        )
        .await;
    h.client
        .send(
            Method::PATCH,
            &h.url(&connector_path()),
            &[("authorization", &format!("Bearer {token}x")), ("content-type", "application/json")],
            r#"{"status":"active"}"#,
        )
        .await;
    let trail = std::fs::read_to_string(&h.config.audit.path).unwrap();
    assert_eq!(trail.lines().count(), 3);
    for secret in [&token, &signature, &token[..40].to_owned()] {
        assert!(!trail.contains(secret.as_str()), "a token fragment is in the audit trail");
    }
}

/// The real binary under concurrent load, killed with SIGKILL: every request Graph received has
/// an intent record, the chain verifies, and a restart continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_under_load_loses_no_intent_and_the_chain_continues() {
    connector_gateway::install_crypto_provider();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let dir = common::scratch_dir();
    let config_path = dir.join("gateway.toml");
    let unlimited = "\n#rest\n[rate_limit]\nper_principal = { rate = \"100000/s\", burst = 100000 }\nper_connector = { rate = \"100000/s\", burst = 100000 }\n";
    std::fs::write(&config_path, common::config_text(&simulator, simulator.base_url(), unlimited)).unwrap();
    let token = simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] });

    let start = || {
        let mut child = Command::new(common::binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready: Value = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("\"ready: "))
            .map(|l| serde_json::from_str(&l).unwrap())
            .expect("ready");
        let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        (child, ready["listen"].as_str().unwrap().to_owned(), log)
    };
    let (mut child, addr, log) = start();
    let url = format!("http://{addr}{}", connector_path());
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::default();
            for i in 0..2000 {
                let id = format!("load-{worker}-{i}");
                let auth = format!("Bearer {token}");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("client-request-id", id.as_str()),
                ];
                if client.try_send(Method::PATCH, &url, &headers, r#"{"status":"active"}"#).await.is_err() {
                    break; // the gateway is gone
                }
            }
        }));
    }
    // Let the load run, then kill the gateway without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while simulator.received().len() < 200 {
        assert!(std::time::Instant::now() < deadline, "the load never reached Graph");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let log = log.join().unwrap();
    let audit_path = dir.join("audit/connector-changes.jsonl");
    let (ok, text) = verify_cli(&[&audit_path]);
    assert!(ok, "{text}");
    let trail = std::fs::read_to_string(&audit_path).unwrap();
    let intents: std::collections::HashSet<String> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["phase"] == "intent")
        .map(|r| r["client_request_id"].as_str().unwrap().to_owned())
        .collect();
    let received = simulator.received();
    assert!(received.len() >= 200);
    for request in &received {
        let id = request.headers["client-request-id"].to_str().unwrap();
        assert!(intents.contains(id), "Graph received {id} without an intent record");
    }
    assert!(!log.contains(&token) && !trail.contains(&token), "a token reached a log or the trail");

    // Restart: the chain continues (a torn tail, if any, is truncated) and still verifies.
    let (mut child, addr, _log) = start();
    let before = trail.lines().count();
    let reply = HttpClient::default()
        .send(
            Method::PATCH,
            &format!("http://{addr}{}", connector_path()),
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            r#"{"status":"inactive"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();
    let (ok, text) = verify_cli(&[&audit_path]);
    assert!(ok, "{text}");
    assert!(!text.contains("torn"), "{text}");
    let after = std::fs::read_to_string(&audit_path).unwrap().lines().count();
    assert!(after > before, "{before} -> {after}");
}
