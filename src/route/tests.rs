use super::*;

const ID: &str = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";

fn route(method: &str, path: &str) -> Route {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    classify(&method, &path.parse().unwrap(), &HeaderMap::new())
}

fn profile_target(version: ApiVersion) -> ConnectorTarget {
    ConnectorTarget {
        api_version: version,
        connector_id: ID.into(),
        parent: ConnectorParent::Profile { profile_id: "applicationProxy".into(), group_id: None },
    }
}

#[test]
fn the_two_documented_paths_are_connector_writes() {
    let r = route("PATCH", &format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}"));
    assert_eq!(r.class, RouteClass::ConnectorWrite);
    assert_eq!(r.target, Some(profile_target(ApiVersion::Beta)));
    let r = route("PATCH", &format!("/v1.0/applications/app-1/connectorGroup/members/{ID}"));
    assert_eq!(
        r.target,
        Some(ConnectorTarget {
            api_version: ApiVersion::V1,
            connector_id: ID.into(),
            parent: ConnectorParent::Application { id: "app-1".into() },
        })
    );
}

#[test]
fn reads_and_other_resources_are_other() {
    for (method, path) in [
        ("GET", format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}")),
        ("HEAD", format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}")),
        ("PATCH", "/v1.0/users/someone".to_owned()),
        ("PATCH", "/v2.0/onPremisesPublishingProfiles/p/connectors/c".to_owned()),
        ("POST", "/beta/onPremisesPublishingProfiles/applicationProxy/connectors".to_owned()),
        ("GET", "/healthz".to_owned()),
    ] {
        let r = route(method, &path);
        assert_eq!((r.class, r.rejection), (RouteClass::Other, None), "{method} {path}");
    }
}

#[test]
fn other_write_methods_on_a_connector_are_refused() {
    for method in ["PUT", "DELETE", "POST", "MERGE", "FROB"] {
        let r = route(method, &format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}"));
        assert!(matches!(r.rejection, Some(RouteError::MethodNotAllowed { .. })), "{method}");
    }
}
