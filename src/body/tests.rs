use super::*;
use crate::config::WritableProperty::{ExternalIp, MachineName, Status};

const ID: &str = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";
const ALL: &[WritableProperty] = &[ExternalIp, MachineName, Status];

/// What a body should come to: accepted with these changes, or refused with this error.
enum Expect {
    Changes(&'static str),
    Error(BodyError),
}
use Expect::*;

fn invalid(name: &str, reason: &'static str) -> Expect {
    Error(BodyError::InvalidProperty { name: name.into(), reason })
}

const STATUS: &str = "must be \"active\" or \"inactive\"";
const IP: &str = "must be an IPv4 or IPv6 address";
const STRING: &str = "must be a string";
const NULL: &str = "must not be null";

fn corpus() -> Vec<(String, Expect)> {
    let long_name = "a".repeat(254);
    let max_name = format!("{{\"machineName\":\"{}\"}}", "a".repeat(253));
    vec![
        // Accepted shapes.
        (r#"{"status":"active"}"#.into(), Changes(r#"{"status":"active"}"#)),
        (r#"{"status":"inactive"}"#.into(), Changes(r#"{"status":"inactive"}"#)),
        (r#"{"externalIp":"203.0.113.7"}"#.into(), Changes(r#"{"externalIp":"203.0.113.7"}"#)),
        (r#"{"externalIp":"2001:db8::1"}"#.into(), Changes(r#"{"externalIp":"2001:db8::1"}"#)),
        (r#"{"externalIp":"::ffff:192.0.2.1"}"#.into(), Changes(r#"{"externalIp":"::ffff:192.0.2.1"}"#)),
        (r#"{"machineName":"edge-1.contoso.local"}"#.into(), Changes(r#"{"machineName":"edge-1.contoso.local"}"#)),
        (r#"{"machineName":"EDGE_01"}"#.into(), Changes(r#"{"machineName":"EDGE_01"}"#)),
        (max_name, Changes("")),
        (
            r#"{"status":"active","externalIp":"10.0.0.1","machineName":"m"}"#.into(),
            Changes(r#"{"externalIp":"10.0.0.1","machineName":"m","status":"active"}"#),
        ),
        (
            r##"{"@odata.type":"#microsoft.graph.connector","status":"active"}"##.into(),
            Changes(r#"{"status":"active"}"#),
        ),
        (format!(r#"{{"id":"{ID}","status":"inactive"}}"#), Changes(r#"{"status":"inactive"}"#)),
        (format!(r#"{{"id":"{}","status":"inactive"}}"#, ID.to_uppercase()), Changes(r#"{"status":"inactive"}"#)),
        (" \n\t{ \"status\" : \"active\" } \r\n".into(), Changes(r#"{"status":"active"}"#)),
        (r#"{"st\u0061tus":"active"}"#.into(), Changes(r#"{"status":"active"}"#)),
        // status.
        (r#"{"status":"Active"}"#.into(), invalid("status", STATUS)),
        (r#"{"status":"paused"}"#.into(), invalid("status", STATUS)),
        (r#"{"status":""}"#.into(), invalid("status", STATUS)),
        (r#"{"status":true}"#.into(), invalid("status", STRING)),
        (r#"{"status":["active"]}"#.into(), invalid("status", STRING)),
        (r#"{"status":{"value":"active"}}"#.into(), invalid("status", STRING)),
        (r#"{"status":null}"#.into(), invalid("status", NULL)),
        // externalIp.
        (r#"{"externalIp":"203.0.113"}"#.into(), invalid("externalIp", IP)),
        (r#"{"externalIp":"203.0.113.7/24"}"#.into(), invalid("externalIp", IP)),
        (r#"{"externalIp":"example.com"}"#.into(), invalid("externalIp", IP)),
        (r#"{"externalIp":" 203.0.113.7"}"#.into(), invalid("externalIp", IP)),
        (r#"{"externalIp":"fe80::1%eth0"}"#.into(), invalid("externalIp", IP)),
        (r#"{"externalIp":"256.1.1.1"}"#.into(), invalid("externalIp", IP)),
        (r#"{"externalIp":3405803783}"#.into(), invalid("externalIp", STRING)),
        (r#"{"externalIp":null}"#.into(), invalid("externalIp", NULL)),
        // machineName.
        (r#"{"machineName":""}"#.into(), invalid("machineName", "must be 1 to 253 characters long")),
        (format!(r#"{{"machineName":"{long_name}"}}"#), invalid("machineName", "must be 1 to 253 characters long")),
        (
            r#"{"machineName":"edge 1"}"#.into(),
            invalid("machineName", "must not contain whitespace or control characters"),
        ),
        (
            r#"{"machineName":"edge\u0000"}"#.into(),
            invalid("machineName", "must not contain whitespace or control characters"),
        ),
        (
            r#"{"machineName":"edge\n1"}"#.into(),
            invalid("machineName", "must not contain whitespace or control characters"),
        ),
        (r#"{"machineName":7}"#.into(), invalid("machineName", STRING)),
        // Read-only and unknown properties.
        (r#"{"version":"1.5.3437.0"}"#.into(), invalid("version", "is read-only")),
        (
            r#"{"id":"other","status":"active"}"#.into(),
            invalid("id", "is read-only and must equal the connector id in the path"),
        ),
        (
            r##"{"@odata.type":"#microsoft.graph.user","status":"active"}"##.into(),
            invalid("@odata.type", "must be \"#microsoft.graph.connector\""),
        ),
        (r#"{"Status":"active"}"#.into(), Error(BodyError::UnknownProperty("Status".into()))),
        (r#"{"connectorGroup":{"id":"g"}}"#.into(), Error(BodyError::UnknownProperty("connectorGroup".into()))),
        (r#"{"memberOf@odata.bind":["x"]}"#.into(), Error(BodyError::UnknownProperty("memberOf@odata.bind".into()))),
        // Nothing to change.
        ("{}".into(), Error(BodyError::Empty)),
        (format!(r#"{{"id":"{ID}"}}"#), Error(BodyError::Empty)),
        (r##"{"@odata.type":"#microsoft.graph.connector"}"##.into(), Error(BodyError::Empty)),
        // Not an object.
        ("[]".into(), Error(BodyError::NotAnObject)),
        (r#""status""#.into(), Error(BodyError::NotAnObject)),
        ("null".into(), Error(BodyError::NotAnObject)),
        ("42".into(), Error(BodyError::NotAnObject)),
        // Duplicates: Graph and the gateway could read different values.
        (r#"{"status":"active","status":"inactive"}"#.into(), Error(BodyError::DuplicateProperty("status".into()))),
        (
            r#"{"status":"active","st\u0061tus":"inactive"}"#.into(),
            Error(BodyError::DuplicateProperty("status".into())),
        ),
    ]
}

fn malformed() -> Vec<&'static [u8]> {
    vec![
        b"",
        b"{",
        b"{\"status\":",
        b"{\"status\":\"active\"",
        b"{\"status\":\"active\"}}",
        b"{\"status\":\"active\"} {}",
        b"{\"status\":\"active\"}x",
        b"{'status':'active'}",
        b"{status:\"active\"}",
        b"{\"status\":\"active\",}",
        b"{\"machineName\":\"\\ud800\"}",
        b"{\"machineName\":\"\\udc00x\"}",
        b"{\"status\":\"act\x01ive\"}",
    ]
}

#[test]
fn the_corpus_comes_out_as_expected() {
    let corpus = corpus();
    assert!(corpus.len() + malformed().len() >= 40);
    for (body, expected) in corpus {
        let result = parse_patch(body.as_bytes(), ID, ALL);
        match (expected, result) {
            (Changes(changes), Ok(patch)) => {
                if !changes.is_empty() {
                    let want: serde_json::Value = serde_json::from_str(changes).unwrap();
                    assert_eq!(patch.changes(), want, "for {body}");
                }
            }
            (Error(want), Err(got)) => assert_eq!(got, want, "for {body}"),
            (Changes(_), Err(got)) => panic!("{body} refused: {got}"),
            (Error(want), Ok(patch)) => panic!("{body} accepted as {patch:?}, wanted {want}"),
        }
    }
}

#[test]
fn malformed_documents_are_refused_as_malformed() {
    for body in malformed() {
        let result = parse_patch(body, ID, ALL);
        assert!(matches!(result, Err(BodyError::Malformed(_))), "{:?} -> {result:?}", String::from_utf8_lossy(body));
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    for depth in [3, 200, 100_000] {
        let deep = format!("{{\"status\":{}\"x\"{}}}", "[".repeat(depth), "]".repeat(depth));
        let result = parse_patch(deep.as_bytes(), ID, ALL);
        assert!(
            matches!(result, Err(BodyError::Malformed(_) | BodyError::InvalidProperty { .. })),
            "depth {depth}: {result:?}"
        );
    }
}

#[test]
fn bytes_that_are_not_utf8_are_refused() {
    assert_eq!(parse_patch(b"{\"machineName\":\"\xff\"}", ID, ALL), Err(BodyError::NotUtf8));
    assert!(parse_patch(b"\xef\xbb\xbf{\"status\":\"active\"}", ID, ALL).is_err(), "a byte-order mark is not JSON");
}

#[test]
fn writable_properties_narrow_what_may_change() {
    let only_status = &[Status];
    assert!(parse_patch(br#"{"status":"active"}"#, ID, only_status).is_ok());
    assert_eq!(
        parse_patch(br#"{"status":"active","externalIp":"10.0.0.1"}"#, ID, only_status),
        Err(BodyError::NotWritable("externalIp"))
    );
    // A malformed value is still a 400, whatever the policy.
    assert!(matches!(parse_patch(br#"{"externalIp":"x"}"#, ID, only_status), Err(BodyError::InvalidProperty { .. })));
}

#[test]
fn errors_name_the_property_and_reason() {
    let error = parse_patch(br#"{"status":"paused"}"#, ID, ALL).unwrap_err();
    assert_eq!(error.to_string(), "status must be \"active\" or \"inactive\"");
    let error = parse_patch(br#"{"version":"2"}"#, ID, ALL).unwrap_err();
    assert_eq!(error.to_string(), "version is read-only");
}

#[test]
fn content_types() {
    let headers = |value: &str| {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, value.parse().unwrap());
        map
    };
    assert!(is_json(&headers("application/json")));
    assert!(is_json(&headers("Application/JSON; charset=utf-8")));
    assert!(!is_json(&headers("text/plain")));
    assert!(!is_json(&headers("application/jsonp")));
    assert!(!is_json(&headers("application/x-www-form-urlencoded")));
    assert!(!is_json(&HeaderMap::new()));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            prop_oneof![
                Just("active".to_owned()),
                Just("inactive".to_owned()),
                Just("10.1.2.3".to_owned()),
                Just("2001:db8::7".to_owned()),
                "[a-z0-9.-]{0,20}",
                any::<String>(),
            ]
            .prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("status".to_owned()),
                            Just("externalIp".to_owned()),
                            Just("machineName".to_owned()),
                            Just("id".to_owned()),
                            "[a-zA-Z@.]{1,12}"
                        ],
                        inner
                    ),
                    0..4
                )
                .prop_map(|entries| serde_json::Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Any JSON value: the validator answers, never panics, and what it accepts is exactly the
        /// documented shape.
        #[test]
        fn random_json_never_panics_and_accepted_patches_match_the_shape(value in json_value()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(patch) = parse_patch(&bytes, ID, ALL) {
                let object = value.as_object().expect("only objects are accepted");
                prop_assert!(!object.is_empty());
                for (key, v) in object {
                    prop_assert!(["status", "externalIp", "machineName", "id", "@odata.type"].contains(&key.as_str()), "{key}");
                    prop_assert!(v.is_string());
                }
                prop_assert_eq!(patch.changes().as_object().unwrap().len(), patch.properties().count());
            }
        }

        /// Arbitrary bytes never panic the validator.
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_patch(&bytes, ID, ALL);
        }

        /// Mutations of a valid body (a byte changed, dropped or duplicated) never panic, and a
        /// mutated body is accepted only if it still parses as the same shape.
        #[test]
        fn mutated_valid_bodies_never_panic(index in 0usize..64, byte in any::<u8>(), op in 0u8..3) {
            let mut body = br#"{"status":"inactive","externalIp":"203.0.113.9","machineName":"m-1"}"#.to_vec();
            let i = index % body.len();
            match op {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                _ => body.insert(i, body[i]),
            }
            if let Ok(patch) = parse_patch(&body, ID, ALL) {
                let reparsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
                prop_assert!(reparsed.is_object());
                prop_assert!(patch.properties().count() >= 1);
            }
        }
    }
}
