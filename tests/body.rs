//! Body validation over real HTTP: limits, media types, shape errors, policy, slow bodies.

mod common;

use std::time::Duration;

use common::{Harness, connector_path};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw_exchange(h: &Harness, head_and_body: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream.write_all(head_and_body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, stream.read(&mut buf)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn patch_head(h: &Harness, extra: &str) -> String {
    format!(
        "PATCH {} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{extra}\r\n",
        connector_path(),
        h.app_token()
    )
}

#[tokio::test]
async fn a_declared_oversized_body_is_413_and_not_forwarded() {
    let h = Harness::start("max_body_bytes = 1024").await;
    let body = format!("{{\"machineName\":\"{}\"}}", "a".repeat(2000));
    let reply = h.patch(&connector_path(), &body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["code"], "Request_EntityTooLarge");
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn an_endless_chunked_body_is_cut_off_at_the_limit() {
    let h = Harness::start("max_body_bytes = 1024").await;
    let mut request = patch_head(&h, "Transfer-Encoding: chunked\r\n").into_bytes();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b' '; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    // No terminating chunk: the gateway must answer once the limit is passed, not wait for the end.
    let answer = raw_exchange(&h, &request, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn a_body_at_the_limit_passes() {
    let h = Harness::start("max_body_bytes = 64").await;
    let body = format!("{{\"status\":\"active\"{}}}", " ".repeat(64 - 19));
    assert_eq!(body.len(), 64);
    assert_eq!(h.patch(&connector_path(), &body).await.status, StatusCode::OK);
}

#[tokio::test]
async fn connector_writes_must_be_json() {
    let h = Harness::start("").await;
    let auth = format!("Bearer {}", h.app_token());
    for content_type in
        [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/json-patch+json")]
    {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        let reply = h.client.send(Method::PATCH, &h.url(&connector_path()), &headers, r#"{"status":"active"}"#).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
    }
    let reply = h
        .client
        .send(
            Method::PATCH,
            &h.url(&connector_path()),
            &[("authorization", &auth), ("content-type", "application/json; charset=utf-8")],
            r#"{"status":"active"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.simulator.received().len(), 1);
}

#[tokio::test]
async fn an_illegal_change_is_a_400_naming_the_property() {
    let h = Harness::start("").await;
    for (body, message) in [
        (r#"{"status":"paused"}"#, "status must be \"active\" or \"inactive\""),
        (r#"{"version":"9"}"#, "version is read-only"),
        (r#"{"status":"active","status":"inactive"}"#, "property 'status' appears more than once"),
        (r#"{"externalIp":"not-an-ip"}"#, "externalIp must be an IPv4 or IPv6 address"),
        ("{}", "the request body changes nothing: send at least one of externalIp, machineName, status"),
    ] {
        let reply = h.patch(&connector_path(), body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let json = reply.json();
        assert_eq!(json["error"]["code"], "Request_BadRequest");
        assert_eq!(json["error"]["message"], message);
    }
    assert!(h.simulator.received().is_empty(), "nothing illegal was forwarded");
}

#[tokio::test]
async fn a_property_outside_writable_properties_is_403() {
    let h = Harness::start("\n#rest\n[policy]\nwritable_properties = [\"status\"]\n").await;
    let reply = h.patch(&connector_path(), r#"{"externalIp":"203.0.113.99"}"#).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"]["code"], "Authorization_RequestDenied");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("externalIp"));
    assert!(h.simulator.received().is_empty());
    assert_eq!(h.patch(&connector_path(), r#"{"status":"inactive"}"#).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_slower_than_the_request_timeout_is_504_and_not_forwarded() {
    let h = Harness::start("request_timeout = \"1s\"").await;
    let mut request = patch_head(&h, "Content-Length: 40\r\n").into_bytes();
    request.extend_from_slice(b"{\"status\":");
    let answer = raw_exchange(&h, &request, Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("RequestTimeout"));
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn reads_of_connectors_are_not_buffered_or_validated() {
    let h = Harness::start("max_body_bytes = 16").await;
    let auth = format!("Bearer {}", h.app_token());
    let reply = h.client.send(Method::GET, &h.url(&connector_path()), &[("authorization", &auth)], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    // A large non-governed body streams through to the upstream whatever max_body_bytes says.
    let big = "x".repeat(10_000);
    h.client
        .send(Method::POST, &h.url("/v1.0/users"), &[("authorization", &auth), ("content-type", "text/plain")], &big)
        .await;
    assert_eq!(h.simulator.received().last().unwrap().body.len(), 10_000);
}
