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

mod spellings {
    use super::*;
    use proptest::prelude::*;

    /// Flips the case of letters and percent-encodes some characters, as a client could.
    fn respell(text: &str, case_flips: &[bool], encode: &[bool]) -> String {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                let c = if case_flips.get(i % case_flips.len().max(1)).copied().unwrap_or(false) {
                    if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }
                } else {
                    c
                };
                if encode.get(i % encode.len().max(1)).copied().unwrap_or(false) && c.is_ascii_alphanumeric() {
                    format!("%{:02X}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    fn keyed(name: &str, key: &str, style: u8) -> String {
        match style {
            0 => format!("{name}/{key}"),
            1 => format!("{name}('{key}')"),
            _ => format!("{name}({key})"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn every_respelling_classifies_to_the_same_target(
            flips in prop::collection::vec(any::<bool>(), 1..16),
            encode in prop::collection::vec(prop::bool::weighted(0.15), 1..16),
            profile_style in 0u8..3,
            connector_style in 0u8..3,
            navigation in 0u8..3,
            trailing_slash in any::<bool>(),
            query in any::<bool>(),
            version in prop::sample::select(vec!["v1.0", "beta"]),
            upper_id in any::<bool>(),
        ) {
            let id = if upper_id { ID.to_uppercase() } else { ID.to_owned() };
            let names = |s: &str| respell(s, &flips, &encode);
            let (plain, variant) = match navigation {
                0 => (
                    format!("/{version}/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}"),
                    format!("/{}/{}/{}", names(version), keyed(&names("onPremisesPublishingProfiles"), "applicationProxy", profile_style), keyed(&names("connectors"), &id, connector_style)),
                ),
                1 => (
                    format!("/{version}/applications/app-1/connectorGroup/members/{ID}"),
                    format!("/{}/{}/{}/{}", names(version), keyed(&names("applications"), "app-1", profile_style), names("connectorGroup"), keyed(&names("members"), &id, connector_style)),
                ),
                _ => (
                    format!("/{version}/onPremisesPublishingProfiles/applicationProxy/connectorGroups/g-1/members/{ID}"),
                    format!("/{}/{}/{}/{}", names(version), keyed(&names("onPremisesPublishingProfiles"), "applicationProxy", profile_style), keyed(&names("connectorGroups"), "g-1", 0), keyed(&names("members"), &id, connector_style)),
                ),
            };
            let variant = format!("{variant}{}{}", if trailing_slash { "/" } else { "" }, if query { "?$select=id" } else { "" });
            let expected = route("PATCH", &plain);
            let got = route("PATCH", &variant);
            prop_assert_eq!(expected.class, RouteClass::ConnectorWrite);
            prop_assert_eq!(got.rejection, None, "{}", variant);
            prop_assert_eq!(got.target, expected.target, "{}", variant);
        }
    }
}
