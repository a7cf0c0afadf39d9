use super::*;
use serde_json::json;

const C: &str = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";

fn plan_of(requests: serde_json::Value) -> Result<BatchPlan, GatewayError> {
    plan(json!({ "requests": requests }).to_string().as_bytes(), ApiVersion::Beta)
}

#[test]
fn inner_connector_writes_are_found_in_every_url_form() {
    let urls = [
        format!("/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("https://graph.microsoft.com/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors/{C}"),
        format!("/applications(appId='x')/connectorGroup/members('{C}')"),
    ];
    for url in &urls {
        let plan = plan_of(
            json!([{"id": "1", "method": "patch", "url": url, "body": {}}, {"id": "2", "method": "GET", "url": url}]),
        )
        .unwrap();
        assert_eq!(plan.writes.len(), 1, "{url}");
        assert_eq!(plan.writes[0].target.connector_id, C);
        assert_eq!(plan.writes[0].method, Method::PATCH);
    }
    let absolute = plan_of(json!([{"id": "1", "method": "PATCH", "url": urls[2]}])).unwrap();
    assert_eq!(absolute.writes[0].target.api_version, ApiVersion::V1, "an absolute URL keeps its own version");
}

#[test]
fn malformed_batches_are_refused() {
    for bad in [
        json!({}),
        json!({"requests": {}}),
        json!({"requests": [{"method": "GET", "url": "/me"}]}),
        json!({"requests": [{"id": 1, "method": "GET", "url": "/me"}]}),
    ] {
        assert!(matches!(plan(bad.to_string().as_bytes(), ApiVersion::V1), Err(GatewayError::Batch(_))), "{bad}");
    }
    let many: Vec<_> = (0..21).map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/me"})).collect();
    assert!(matches!(plan_of(json!(many)), Err(GatewayError::Batch(BatchError::TooMany))));
    let twice = json!([{"id": "1", "method": "GET", "url": "/me"}, {"id": "1", "method": "GET", "url": "/me"}]);
    assert!(matches!(plan_of(twice), Err(GatewayError::Batch(BatchError::DuplicateId(_)))));
    let duplicate_key = br#"{"requests":[{"id":"1","method":"GET","url":"/me","url":"/x"}]}"#;
    assert!(matches!(plan(duplicate_key, ApiVersion::V1), Err(GatewayError::Batch(BatchError::Malformed(_)))));
}

#[test]
fn inner_statuses_are_read_by_id() {
    let body = json!({"responses": [{"id": "2", "status": 404}, {"id": "1", "status": 200, "body": {}}]}).to_string();
    assert_eq!(inner_statuses(body.as_bytes()), [("2".to_owned(), 404), ("1".to_owned(), 200)]);
    assert!(inner_statuses(b"not json").is_empty());
}
