//! "No spelling of a connector write reaches Graph without the policy": a table of spellings
//! over real HTTP, both directions, plus JSON batching.

mod common;

use common::{CONNECTOR, Harness};
use connector_gateway::simulator::entra::{DEV_AUDIENCE, Grant};
use http::{Method, StatusCode};
use serde_json::json;

const C: &str = CONNECTOR;
const UPPER: &str = "B4AD1E2C-5C8F-4F1A-9F3E-4A6F2A6C7A01";

fn governed_spellings() -> Vec<String> {
    vec![
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("/BETA/ONPREMISESPUBLISHINGPROFILES/applicationProxy/CONNECTORS/{C}"),
        format!("/V1.0/onpremisespublishingprofiles/applicationProxy/connectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{UPPER}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}/"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}?$select=id"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/%63onnectors/{C}"),
        format!("/beta/%6FnPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("/%62eta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/%62{}", &C[1..]),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors('{C}')"),
        format!("/beta/onPremisesPublishingProfiles('applicationProxy')/connectors('{C}')"),
        format!("/beta/onPremisesPublishingProfiles(applicationProxy)/connectors({C})"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors%28%27{C}%27%29"),
        format!("/beta/applications/8f2c1d00-0000-4000-8000-00000000a001/connectorGroup/members/{C}"),
        format!("/v1.0/applications('8f2c1d00-0000-4000-8000-00000000a001')/connectorGroup/members('{C}')"),
        format!("/beta/applications(appId='c0ffee00-0000-4000-8000-000000000001')/connectorGroup/members/{C}"),
        format!("/beta/applications(APPID='c0ffee00-0000-4000-8000-000000000001')/CONNECTORGROUP/MEMBERS/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectorGroups/g-1/members/{C}"),
        format!("/v1.0/onPremisesPublishingProfiles/applicationProxy/connectorGroups('g-1')/members('{C}')"),
        format!("/beta/onPremisesPublishingProfiles/provisioning/connectors/{C}"),
    ]
}

#[tokio::test]
async fn every_governed_spelling_needs_a_token_and_the_permission() {
    let h = Harness::start("").await;
    let weak = format!(
        "Bearer {}",
        h.simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec!["User.Read.All".into()] })
    );
    let spellings = governed_spellings();
    for path in &spellings {
        let url = h.url(path);
        let reply = h
            .client
            .send(Method::PATCH, &url, &[("content-type", "application/json")], r#"{"status":"inactive"}"#)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "no token: {path}");
        let reply = h
            .client
            .send(
                Method::PATCH,
                &url,
                &[("content-type", "application/json"), ("authorization", &weak)],
                r#"{"status":"inactive"}"#,
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "weak token: {path}");
        // Lower-case or odd method spellings are the same write.
        let reply = h
            .client
            .send(
                Method::from_bytes(b"PATCH").unwrap(),
                &url,
                &[("content-type", "application/json"), ("authorization", &weak)],
                "{}",
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert!(h.simulator.received().is_empty(), "a governed spelling reached Graph");
    // With the permission, the plain and the odd spellings alike reach Graph, governed and audited.
    let good = format!("Bearer {}", h.app_token());
    for path in spellings.iter().take(3) {
        let reply = h
            .client
            .send(
                Method::PATCH,
                &h.url(path),
                &[("content-type", "application/json"), ("authorization", &good)],
                r#"{"status":"inactive"}"#,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    assert_eq!(h.audit().await.iter().filter(|r| r["phase"] == "intent").count(), 3);
    assert!(spellings.len() >= 20);
}

#[tokio::test]
async fn ambiguous_paths_and_method_overrides_are_400_and_never_forwarded() {
    let h = Harness::start("").await;
    let good = format!("Bearer {}", h.app_token());
    let ambiguous = [
        format!("/beta/onPremisesPublishingProfiles/applicationProxy%2Fconnectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy%2fconnectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy%5Cconnectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/../connectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/./connectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/%2e%2e/connectors/{C}"),
        format!("/beta//onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}%zz"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}%"),
        format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}%ff"),
        "/v1.0/users/%2e%2e/me".to_owned(),
    ];
    for path in &ambiguous {
        for method in [Method::PATCH, Method::GET] {
            let reply = h
                .client
                .send(
                    method.clone(),
                    &h.url(path),
                    &[("authorization", &good), ("content-type", "application/json")],
                    r#"{"status":"active"}"#,
                )
                .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert_eq!(reply.json()["error"]["code"], "BadRequest");
        }
    }
    for header in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"] {
        for method in [Method::POST, Method::GET, Method::PATCH] {
            let url = h.url(&format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"));
            let reply = h
                .client
                .send(
                    method.clone(),
                    &url,
                    &[("authorization", &good), (header, "PATCH"), ("content-type", "application/json")],
                    r#"{"status":"active"}"#,
                )
                .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{header} on {method}");
        }
    }
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn other_write_methods_on_a_connector_are_405_with_allow() {
    let h = Harness::start("").await;
    let good = format!("Bearer {}", h.app_token());
    for method in ["PUT", "DELETE", "POST", "MERGE", "FROBNICATE"] {
        for path in [
            format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
            format!("/v1.0/applications/a/connectorGroup/members('{C}')"),
            format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}/memberOf"),
        ] {
            let reply = h
                .client
                .send(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &h.url(&path),
                    &[("authorization", &good), ("content-type", "application/json")],
                    r#"{"status":"active"}"#,
                )
                .await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(reply.header("allow"), "GET, HEAD, PATCH");
        }
    }
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn ordinary_graph_traffic_is_not_blocked() {
    let h = Harness::start("").await;
    let good = format!("Bearer {}", h.app_token());
    let passes = [
        (Method::GET, format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"), 200),
        (Method::HEAD, format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"), 200),
        (Method::GET, "/beta/onPremisesPublishingProfiles/applicationProxy/connectors".to_owned(), 200),
        (Method::GET, format!("/v1.0/applications/a/connectorGroup/members/{C}"), 200),
        (Method::PATCH, "/v1.0/users/adele@contoso.example".to_owned(), 400),
        (Method::POST, "/v1.0/groups".to_owned(), 400),
        (Method::DELETE, "/v1.0/groups/g-1".to_owned(), 400),
        (Method::PATCH, "/v1.0/applications/a".to_owned(), 400),
        (Method::PATCH, "/beta/onPremisesPublishingProfiles/applicationProxy".to_owned(), 400),
        (Method::GET, "/v2.0/whatever/connectors/x".to_owned(), 400),
    ];
    for (method, path, status) in &passes {
        let reply = h.client.send(method.clone(), &h.url(path), &[("authorization", &good)], "").await;
        assert_eq!(reply.status.as_u16(), *status, "{method} {path}: answered by the simulator, not the gateway");
    }
    assert_eq!(h.simulator.received().len(), passes.len());
    assert!(h.audit().await.is_empty(), "reads and other resources are not audited as changes");
}

fn batch(requests: serde_json::Value) -> String {
    json!({ "requests": requests }).to_string()
}

#[tokio::test]
async fn a_batch_without_connector_writes_passes_untouched() {
    let h = Harness::start("").await;
    let body = batch(json!([
        {"id": "1", "method": "GET", "url": "/me"},
        {"id": "2", "method": "GET", "url": format!("/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"), "dependsOn": ["1"]},
    ]));
    let reply =
        h.client.send(Method::POST, &h.url("/v1.0/$batch"), &[("content-type", "application/json")], &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.simulator.received()[0].body, body.as_bytes());
    assert!(h.audit().await.is_empty());
}

#[tokio::test]
async fn inner_connector_writes_are_governed_like_direct_ones() {
    let h = Harness::start("").await;
    let good = format!("Bearer {}", h.app_token());
    let weak = format!(
        "Bearer {}",
        h.simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec!["User.Read.All".into()] })
    );
    let json_header = json!({"Content-Type": "application/json"});
    let spellings = [
        format!("/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("https://graph.microsoft.com/beta/onPremisesPublishingProfiles/applicationProxy/connectors('{C}')"),
        format!("/applications/a/connectorGroup/members/{C}"),
    ];
    let h = &h;
    let post = |auth: Option<&str>, body: String| {
        let url = h.url("/beta/$batch");
        let auth = auth.map(str::to_owned);
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = auth.as_deref() {
                headers.push(("authorization", auth));
            }
            h.client.send(Method::POST, &url, &headers, &body).await
        }
    };
    for url in &spellings {
        for method in ["PATCH", "patch"] {
            let body = batch(
                json!([{"id": "1", "method": "GET", "url": "/me"}, {"id": "7", "method": method, "url": url, "headers": json_header, "body": {"status": "inactive"}}]),
            );
            assert_eq!(post(None, body.clone()).await.status, StatusCode::UNAUTHORIZED, "{method} {url}");
            assert_eq!(post(Some(&weak), body).await.status, StatusCode::FORBIDDEN, "{method} {url}");
        }
    }
    // An inner write that would be refused refuses the whole batch, naming its id.
    let cases = [
        (
            json!([{"id": "a", "method": "PATCH", "url": spellings[0], "headers": json_header, "body": {"status": "paused"}}]),
            400,
            "a",
        ),
        (json!([{"id": "b", "method": "PATCH", "url": spellings[0], "body": {"status": "active"}}]), 415, "b"),
        (json!([{"id": "c", "method": "DELETE", "url": spellings[0]}]), 405, "c"),
        (
            json!([{"id": "d", "method": "PATCH", "url": format!("/onPremisesPublishingProfiles/applicationProxy%2Fconnectors/{C}"), "body": {}}]),
            400,
            "d",
        ),
        (
            json!([{"id": "e", "method": "PATCH", "url": spellings[0], "headers": {"Content-Type": "application/json", "X-HTTP-Method-Override": "PUT"}, "body": {"status": "active"}}]),
            400,
            "e",
        ),
        (json!([{"id": "f", "method": "POST", "url": "/$batch", "body": {}}]), 400, "f"),
    ];
    for (requests, status, id) in cases {
        let reply = post(Some(&good), batch(requests)).await;
        assert_eq!(reply.status.as_u16(), status, "{id}: {}", String::from_utf8_lossy(&reply.body));
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains(id), "{id}");
    }
    let duplicate_keys = format!(
        r#"{{"requests":[{{"id":"g","method":"PATCH","url":"{}","headers":{{"Content-Type":"application/json"}},"body":{{"status":"active","status":"inactive"}}}}]}}"#,
        spellings[0]
    );
    assert_eq!(post(Some(&good), duplicate_keys).await.status, StatusCode::BAD_REQUEST);
    assert!(h.simulator.received().is_empty(), "nothing of a refused batch was forwarded");

    // Allowed: forwarded as sent, one intent and one outcome per inner write, with inner statuses.
    let body = batch(json!([
        {"id": "1", "method": "PATCH", "url": spellings[0], "headers": json_header, "body": {"status": "inactive"}},
        {"id": "2", "method": "GET", "url": "/me", "dependsOn": ["1"]},
        {"id": "3", "method": "PATCH", "url": "/onPremisesPublishingProfiles/applicationProxy/connectors/00000000-0000-0000-0000-000000000000", "headers": json_header, "body": {"machineName": "m"}},
    ]));
    let reply = post(Some(&good), body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.simulator.received()[0].body, body.as_bytes(), "the batch is forwarded byte for byte");
    let statuses: Vec<u64> =
        reply.json()["responses"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 404]);
    let records = h.audit().await;
    let governed: Vec<_> = records.iter().filter(|r| r["phase"] != "denied").collect();
    let summary: Vec<(String, String, u64)> = governed
        .iter()
        .map(|r| {
            (
                r["phase"].as_str().unwrap().to_owned(),
                r["connector_id"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("intent".into(), C.into(), 0),
            ("intent".into(), "00000000-0000-0000-0000-000000000000".into(), 0),
            ("outcome".into(), C.into(), 200),
            ("outcome".into(), "00000000-0000-0000-0000-000000000000".into(), 404),
        ]
    );
    assert_eq!(governed[0]["changes"], json!({"status": "inactive"}));
    assert!(records.iter().filter(|r| r["phase"] == "denied").count() >= 8, "refused batches left denied records");
}
