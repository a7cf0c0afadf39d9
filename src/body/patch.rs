//! The connector's writable shape, and the strict parse of a PATCH body into a [`ConnectorPatch`].
//!
//! Strictness is the point: Graph's own parser and the gateway's must not be able to read two
//! different changes out of the same bytes, so duplicate keys, trailing data, non-UTF-8 and
//! anything outside the documented shape are refused instead of being interpreted.

use std::fmt;
use std::net::IpAddr;

use serde::Deserializer as _;
use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::WritableProperty;

/// `active` or `inactive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorStatus {
    /// The connector serves traffic.
    Active,
    /// The connector is taken out of rotation.
    Inactive,
}

impl ConnectorStatus {
    /// As written in Graph's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

/// A validated connector change: what the audit trail records as `changes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorPatch {
    /// New `externalIp`.
    pub external_ip: Option<IpAddr>,
    /// New `machineName`.
    pub machine_name: Option<String>,
    /// New `status`.
    pub status: Option<ConnectorStatus>,
}

impl ConnectorPatch {
    /// The changes as a JSON object, with Graph's property names.
    pub fn changes(&self) -> Value {
        let mut map = Map::new();
        if let Some(ip) = self.external_ip {
            map.insert("externalIp".into(), Value::String(ip.to_string()));
        }
        if let Some(name) = &self.machine_name {
            map.insert("machineName".into(), Value::String(name.clone()));
        }
        if let Some(status) = self.status {
            map.insert("status".into(), Value::String(status.as_str().into()));
        }
        Value::Object(map)
    }

    /// The writable properties this patch changes.
    pub fn properties(&self) -> impl Iterator<Item = WritableProperty> + '_ {
        [
            self.external_ip.map(|_| WritableProperty::ExternalIp),
            self.machine_name.as_ref().map(|_| WritableProperty::MachineName),
            self.status.map(|_| WritableProperty::Status),
        ]
        .into_iter()
        .flatten()
    }
}

/// Why a body is not a legal connector change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than `server.max_body_bytes`.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Content-Type is missing or not JSON.
    #[error("a connector update must be sent as application/json")]
    UnsupportedMediaType,
    /// The body could not be read from the connection.
    #[error("the request body could not be read")]
    Unreadable,
    /// The bytes are not UTF-8.
    #[error("the request body is not valid UTF-8")]
    NotUtf8,
    /// The bytes are not one well-formed JSON document.
    #[error("the request body is not valid JSON: {0}")]
    Malformed(String),
    /// The document is not a JSON object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// The object changes nothing.
    #[error("the request body changes nothing: send at least one of externalIp, machineName, status")]
    Empty,
    /// The same property appears twice.
    #[error("property '{0}' appears more than once")]
    DuplicateProperty(String),
    /// A property with an illegal value.
    #[error("{name} {reason}")]
    InvalidProperty {
        /// The property.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A property that is not part of the connector's writable shape.
    #[error("property '{0}' does not exist on a connector or is read-only")]
    UnknownProperty(String),
    /// A valid property that `policy.writable_properties` does not allow.
    #[error("property '{0}' may not be changed through this gateway")]
    NotWritable(&'static str),
}

/// Reads the top-level object as ordered entries, keeping duplicates so they can be refused.
struct Entries;

impl<'de> Visitor<'de> for Entries {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(8));
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            entries.push((key, value));
        }
        Ok(entries)
    }
}

fn invalid(name: &str, reason: &'static str) -> BodyError {
    BodyError::InvalidProperty { name: name.to_owned(), reason }
}

fn text<'v>(name: &str, value: &'v Value) -> Result<&'v str, BodyError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Null => Err(invalid(name, "must not be null")),
        _ => Err(invalid(name, "must be a string")),
    }
}

/// Host names: 1-253 characters, no whitespace or control characters.
fn machine_name(value: &str) -> Result<String, BodyError> {
    let length = value.chars().count();
    if !(1..=253).contains(&length) {
        return Err(invalid("machineName", "must be 1 to 253 characters long"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("machineName", "must not contain whitespace or control characters"));
    }
    Ok(value.to_owned())
}

/// Parses and validates a connector PATCH body for the connector `connector_id`, allowing only
/// `writable` properties to change.
pub fn parse_patch(
    bytes: &[u8],
    connector_id: &str,
    writable: &[WritableProperty],
) -> Result<ConnectorPatch, BodyError> {
    let text_body = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?;
    let mut deserializer = serde_json::Deserializer::from_str(text_body);
    let entries = match deserializer.deserialize_map(Entries) {
        Ok(entries) => entries,
        Err(e) if e.is_data() => return Err(BodyError::NotAnObject),
        Err(e) => return Err(BodyError::Malformed(e.to_string())),
    };
    deserializer.end().map_err(|e| BodyError::Malformed(e.to_string()))?;
    if entries.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut patch = ConnectorPatch::default();
    for (i, (name, value)) in entries.iter().enumerate() {
        if entries.iter().take(i).any(|(earlier, _)| earlier == name) {
            return Err(BodyError::DuplicateProperty(name.clone()));
        }
        match name.as_str() {
            "externalIp" => {
                let ip = text(name, value)?.parse().map_err(|_| invalid(name, "must be an IPv4 or IPv6 address"))?;
                patch.external_ip = Some(ip);
            }
            "machineName" => patch.machine_name = Some(machine_name(text(name, value)?)?),
            "status" => {
                patch.status = Some(match text(name, value)? {
                    "active" => ConnectorStatus::Active,
                    "inactive" => ConnectorStatus::Inactive,
                    _ => return Err(invalid(name, "must be \"active\" or \"inactive\"")),
                });
            }
            "@odata.type" => {
                if text(name, value)? != "#microsoft.graph.connector" {
                    return Err(invalid(name, "must be \"#microsoft.graph.connector\""));
                }
            }
            "id" => {
                if !text(name, value)?.eq_ignore_ascii_case(connector_id) {
                    return Err(invalid(name, "is read-only and must equal the connector id in the path"));
                }
            }
            "version" => return Err(invalid(name, "is read-only")),
            _ => return Err(BodyError::UnknownProperty(name.clone())),
        }
    }
    if patch.properties().next().is_none() {
        return Err(BodyError::Empty);
    }
    if let Some(property) = patch.properties().find(|p| !writable.contains(p)) {
        return Err(BodyError::NotWritable(property.json_name()));
    }
    Ok(patch)
}
