//! The Graph side of the simulator: Application Proxy connectors in memory, reachable through
//! both documented navigations (and the connector-group one), with Graph's update semantics.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// One connector as Graph returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    /// The connector id.
    pub id: String,
    /// The host the connector runs on.
    pub machine_name: String,
    /// The public IP the connector reaches Entra from.
    pub external_ip: String,
    /// `active` or `inactive`.
    pub status: String,
    /// The connector's software version (read-only).
    pub version: String,
}

impl Connector {
    /// The JSON Graph returns for it.
    pub fn to_json(&self, api_version: &str) -> Value {
        json!({
            "@odata.context": format!("https://graph.microsoft.com/{api_version}/$metadata#connectors/$entity"),
            "id": self.id,
            "machineName": self.machine_name,
            "externalIp": self.external_ip,
            "status": self.status,
            "version": self.version,
        })
    }
}

/// The connectors every simulator starts with.
pub fn seed() -> BTreeMap<String, Connector> {
    [
        ("b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01", "connector-01.contoso.local", "203.0.113.10", "active"),
        ("b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a02", "connector-02.contoso.local", "203.0.113.11", "active"),
        ("b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a03", "connector-03.contoso.local", "198.51.100.7", "inactive"),
    ]
    .into_iter()
    .map(|(id, machine, ip, status)| {
        let connector = Connector {
            id: id.into(),
            machine_name: machine.into(),
            external_ip: ip.into(),
            status: status.into(),
            version: "1.5.3437.0".into(),
        };
        (id.to_owned(), connector)
    })
    .collect()
}

/// What a request to the Graph side addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum GraphPath {
    /// A connector collection.
    Connectors {
        /// `v1.0` or `beta`.
        version: String,
    },
    /// One connector.
    Connector {
        /// `v1.0` or `beta`.
        version: String,
        /// Its id.
        id: String,
    },
}

/// Recognises the connector navigations (case-insensitive, `('id')` keys), as Graph does.
pub fn parse_path(path: &str) -> Option<GraphPath> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .flat_map(|s| match s.split_once('(') {
            Some((name, key)) => vec![name.to_owned(), key.trim_end_matches(')').trim_matches('\'').to_owned()],
            None => vec![s.to_owned()],
        })
        .collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let version = lower.first().filter(|v| *v == "v1.0" || *v == "beta")?.clone();
    let names: Vec<&str> = lower.iter().map(String::as_str).collect();
    let key_at = match names.get(1..)? {
        ["applications", _, "connectorgroup", "members", ..] => 5,
        ["onpremisespublishingprofiles", _, "connectors", ..] => 4,
        ["onpremisespublishingprofiles", _, "connectorgroups", _, "members", ..] => 6,
        _ => return None,
    };
    match segments.len() {
        n if n == key_at => Some(GraphPath::Connectors { version }),
        n if n == key_at + 1 => Some(GraphPath::Connector { version, id: segments.get(key_at)?.to_ascii_lowercase() }),
        _ => None,
    }
}

/// Applies a PATCH body; `Err((code, message))` as Graph would answer it with 400.
pub fn apply_patch(connector: &mut Connector, body: &[u8]) -> Result<(), (&'static str, String)> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ("BadRequest", format!("Invalid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(("BadRequest", "The request body must be a JSON object.".into()));
    };
    let mut updated = connector.clone();
    for (name, value) in &fields {
        let text = |value: &Value| {
            value.as_str().map(str::to_owned).ok_or(("BadRequest", format!("Property '{name}' must be a string.")))
        };
        match name.as_str() {
            "externalIp" => updated.external_ip = text(value)?,
            "machineName" => updated.machine_name = text(value)?,
            "status" => match value.as_str() {
                Some(s @ ("active" | "inactive")) => updated.status = s.to_owned(),
                _ => return Err(("BadRequest", "Invalid value for property 'status'.".into())),
            },
            "@odata.type" | "id" => {}
            other => {
                return Err((
                    "BadRequest",
                    format!("Property '{other}' does not exist on type 'microsoft.graph.connector' or is read-only."),
                ));
            }
        }
    }
    *connector = updated;
    Ok(())
}

/// A Graph collection response.
pub fn collection(api_version: &str, connectors: impl Iterator<Item = Value>) -> Value {
    let mut map = Map::new();
    map.insert(
        "@odata.context".into(),
        json!(format!("https://graph.microsoft.com/{api_version}/$metadata#connectors")),
    );
    map.insert("value".into(), Value::Array(connectors.collect()));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_navigations_and_key_syntax_are_recognised() {
        let id = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";
        let one = |version: &str| Some(GraphPath::Connector { version: version.into(), id: id.into() });
        assert_eq!(
            parse_path(&format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{id}")),
            one("beta")
        );
        assert_eq!(parse_path(&format!("/v1.0/applications/app-1/connectorGroup/members/{id}")), one("v1.0"));
        assert_eq!(
            parse_path(&format!("/beta/ONPREMISESPUBLISHINGPROFILES('applicationProxy')/connectors('{id}')")),
            one("beta")
        );
        assert_eq!(
            parse_path("/beta/onPremisesPublishingProfiles/applicationProxy/connectors"),
            Some(GraphPath::Connectors { version: "beta".into() })
        );
        assert_eq!(parse_path("/beta/users/me"), None);
    }

    #[test]
    fn patches_change_writable_fields_and_refuse_others() {
        let mut connector = seed().into_values().next().unwrap();
        apply_patch(&mut connector, br#"{"status":"inactive","machineName":"m2"}"#).unwrap();
        assert_eq!((connector.status.as_str(), connector.machine_name.as_str()), ("inactive", "m2"));
        assert!(apply_patch(&mut connector, br#"{"version":"2"}"#).is_err());
        assert!(apply_patch(&mut connector, br#"{"status":"paused"}"#).is_err());
        assert_eq!(connector.status, "inactive");
    }
}
