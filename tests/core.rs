//! The gateway core against the simulator and in-process upstreams, over real loopback HTTP.

mod common;

use std::time::Duration;

use common::{CONNECTOR, Harness, connector_path};
use connector_gateway::simulator::Faults;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_connector_patch_is_forwarded_byte_for_byte_and_graphs_answer_relayed() {
    let h = Harness::start("").await;
    // Unusual but valid spacing and key order: the upstream must see exactly these bytes.
    let body = "{ \"status\" :\"inactive\",\n  \"machineName\":\"edge-7.contoso.local\" }";
    let reply = h.patch(&connector_path(), body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "inactive");
    let received = h.simulator.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, body.as_bytes());
    assert_eq!(received[0].method, Method::PATCH);
    assert_eq!(received[0].path_and_query, connector_path());
    // Graph's request-id is relayed; the caller's client-request-id went upstream and came back.
    let graph_request_id = reply.header("request-id");
    assert!(!graph_request_id.is_empty());
    assert_eq!(reply.header("client-request-id"), received[0].headers["client-request-id"].to_str().unwrap());
    assert_eq!(h.simulator.connector(CONNECTOR).unwrap().machine_name, "edge-7.contoso.local");
}

#[tokio::test]
async fn graph_errors_are_relayed_untouched() {
    let h = Harness::start("").await;
    let reply = h
        .patch(
            "/beta/onPremisesPublishingProfiles/applicationProxy/connectors/00000000-0000-0000-0000-000000000000",
            r#"{"status":"active"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "ResourceNotFound");
    let graph_id = reply.json()["error"]["innerError"]["request-id"].as_str().unwrap().to_owned();
    assert_eq!(reply.header("request-id"), graph_id, "Graph's own request-id, not the gateway's");
}

#[tokio::test]
async fn graph_429s_keep_their_retry_after() {
    let h = Harness::with_faults("", Faults { throttle: 1.0, ..Faults::default() }).await;
    let reply = h.patch(&connector_path(), r#"{"status":"active"}"#).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), "1");
    assert_eq!(reply.json()["error"]["code"], "TooManyRequests");
}

#[tokio::test]
async fn client_request_id_is_echoed_or_assigned_and_inbound_request_ids_are_replaced() {
    let h = Harness::start("").await;
    let url = h.url("/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors");
    let auth = format!("Bearer {}", h.app_token());
    let reply = h
        .client
        .send(
            Method::GET,
            &url,
            &[("authorization", &auth), ("client-request-id", "my-corr-1"), ("request-id", "spoofed")],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("client-request-id"), "my-corr-1");
    let received = h.simulator.received();
    assert_eq!(received[0].headers["client-request-id"], "my-corr-1");
    assert_ne!(received[0].headers.get("request-id").map(|v| v.to_str().unwrap()), Some("spoofed"));

    let reply = h.client.send(Method::GET, &url, &[("authorization", &auth)], "").await;
    let assigned = reply.header("client-request-id");
    assert_eq!(assigned.len(), 36, "a GUID was assigned: {assigned}");
    assert_eq!(h.simulator.received()[1].headers["client-request-id"], assigned);
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_upstream_but_end_to_end_ones_do() {
    let h = Harness::start("").await;
    let url = h.url("/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors");
    let auth = format!("Bearer {}", h.app_token());
    let headers = [
        ("authorization", auth.as_str()),
        ("connection", "keep-alive, x-hop-secret"),
        ("x-hop-secret", "must-not-pass"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("te", "trailers"),
        ("x-end-to-end", "passes"),
        ("consistencylevel", "eventual"),
    ];
    let reply = h.client.send(Method::GET, &url, &headers, "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let got = &h.simulator.received()[0].headers;
    for gone in ["x-hop-secret", "keep-alive", "proxy-authorization", "te"] {
        assert!(!got.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(got["x-end-to-end"], "passes");
    assert_eq!(got["consistencylevel"], "eventual");
    assert_eq!(got["authorization"], auth.as_str(), "passthrough keeps Authorization");
    assert_eq!(got["host"], h.simulator.addr().to_string());
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_graph_style_502() {
    connector_gateway::install_crypto_provider();
    let simulator = connector_gateway::simulator::Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default())
        .await
        .unwrap();
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = common::config(&simulator, &format!("http://{closed}"), "");
    let gateway = connector_gateway::launch::start(config).await.unwrap();
    let client = common::HttpClient::default();
    let reply = client.send(Method::GET, &format!("http://{}/v1.0/users", gateway.addr), &[], "").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.header("content-type"), "application/json");
    let json = reply.json();
    assert_eq!(json["error"]["code"], "BadGateway");
    assert_eq!(json["error"]["innerError"]["request-id"], reply.header("request-id"));
    assert!(
        !json["error"]["message"].as_str().unwrap().contains(&closed.port().to_string()),
        "no upstream details leak"
    );
    let metrics = client.send(Method::GET, &format!("http://{}/metrics", gateway.admin_addr), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("gateway_upstream_errors_total{kind=\"connect\"} 1"), "{text}");
    assert!(text.contains("gateway_requests_total{class=\"other\",decision=\"failed\",status=\"502\"} 1"), "{text}");
}

#[tokio::test]
async fn a_slow_upstream_is_a_graph_style_504() {
    let h = Harness::with_faults("", Faults { latency: Duration::from_secs(30), ..Faults::default() }).await;
    // upstream.timeout is 5s in the harness config.
    let reply = h.patch(&connector_path(), r#"{"status":"active"}"#).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["error"]["code"], "UpstreamTimeout");
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let h = Harness::with_faults("", Faults { latency: Duration::from_millis(700), ..Faults::default() }).await;
    let url = h.url("/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors");
    let auth = format!("Bearer {}", h.app_token());
    let addr = h.gateway.addr;
    let in_flight = tokio::spawn(async move {
        common::HttpClient::default().send(Method::GET, &url, &[("authorization", &auth)], "").await
    });
    // Wait until the request has reached the (slow) upstream, then stop the gateway.
    while h.simulator.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Harness { simulator, gateway, .. } = h;
    gateway.shutdown().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the in-flight request completed");
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    simulator.shutdown().await;
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let h = Harness::start("max_header_bytes = 8192").await;
    let big = "x".repeat(20_000);
    let reply = h.client.send(Method::GET, &h.url("/v1.0/users"), &[("x-big", &big)], "").await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn a_slow_loris_connection_is_closed_after_the_header_read_timeout() {
    let h = Harness::start("header_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream.write_all(b"GET /v1.0/users HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (after an optional 408); a gateway without the timeout
    // would keep it open and this read would hit the outer bound.
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open");
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let h = Harness::start("max_connections = 1").await;
    let mut first = TcpStream::connect(h.gateway.addr).await.unwrap();
    first.write_all(b"GET /v1.0/users HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(n > 0, "first connection served");

    let mut second = TcpStream::connect(h.gateway.addr).await.unwrap();
    second.write_all(b"GET /v1.0/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(waited.is_err(), "second connection was served while the first held the only slot");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1"), "served once the slot was free");
}

#[tokio::test]
async fn other_requests_deny_refuses_non_connector_traffic() {
    let h = Harness::start("\n#rest\n[policy]\nother_requests = \"deny\"\n").await;
    let reply = h.client.send(Method::GET, &h.url("/v1.0/users"), &[], "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"]["code"], "Authorization_RequestDenied");
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn healthz_readyz_and_metrics_answer_on_the_admin_listener() {
    let h = Harness::start("").await;
    h.patch(&connector_path(), r#"{"status":"active"}"#).await;
    h.gateway.flush_audit().await.unwrap();
    assert_eq!(h.client.send(Method::GET, &h.admin_url("/healthz"), &[], "").await.status, StatusCode::OK);
    assert_eq!(h.client.send(Method::GET, &h.admin_url("/readyz"), &[], "").await.status, StatusCode::OK);
    let metrics = h.client.send(Method::GET, &h.admin_url("/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("gateway_requests_total{class=\"connector_write\",decision=\"forwarded\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_request_duration_seconds_count{class=\"connector_write\"} 1"), "{text}");
    // The write's intent and outcome, and at least one sync (fsync = batch).
    assert!(text.contains("gateway_audit_records_total 2\n"), "{text}");
    let syncs =
        text.lines().find_map(|l| l.strip_prefix("gateway_audit_syncs_total ")).and_then(|v| v.parse::<u64>().ok());
    assert!(syncs.is_some_and(|s| (1..=2).contains(&s)), "{text}");
    assert!(!text.contains("gateway_upstream_token_requests_total"), "passthrough has no credential of its own");
    // The public listener does not expose the admin endpoints.
    let public = h.client.send(Method::GET, &h.url("/metrics"), &[], "").await;
    assert!(!String::from_utf8_lossy(&public.body).contains("gateway_requests_total"));
}
