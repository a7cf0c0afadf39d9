//! The audit record (one JSON object per line, fields as in DESIGN.md) and its hash chain:
//! `hash` = SHA-256 over the previous record's hash and this record's canonical bytes (the record
//! serialised without its `hash` field), so an edited, removed, inserted or reordered record
//! breaks the chain from that point on.

use aws_lc_rs::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `prev_hash` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written and durable before the request goes upstream.
    Intent,
    /// The upstream's answer (or failure) for an earlier intent.
    Outcome,
    /// A governed request refused by the gateway; nothing was forwarded.
    Denied,
}

/// Who asked, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPrincipal {
    /// `tid`.
    pub tenant_id: String,
    /// `oid`.
    pub object_id: Option<String>,
    /// `appid` / `azp`.
    pub app_id: Option<String>,
    /// `delegated` or `application`.
    pub kind: String,
    /// `preferred_username`, `upn` or `name`.
    pub name: Option<String>,
}

impl From<&crate::auth::Principal> for AuditPrincipal {
    fn from(p: &crate::auth::Principal) -> Self {
        let kind = match p.kind {
            crate::auth::PrincipalKind::Delegated => "delegated",
            crate::auth::PrincipalKind::Application => "application",
        };
        Self {
            tenant_id: p.tenant_id.clone(),
            object_id: p.object_id.clone(),
            app_id: p.app_id.clone(),
            kind: kind.into(),
            name: p.name.clone(),
        }
    }
}

/// How the gateway authenticated to Graph for this request: `upstream.credential` and the app
/// registration it used (`null` in passthrough mode, where the caller's own token went upstream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCredential {
    /// `passthrough`, `client_credentials` or `on_behalf_of`.
    pub mode: String,
    /// The gateway app's client id.
    pub app_id: Option<String>,
}

impl From<&crate::config::UpstreamCredential> for AuditCredential {
    fn from(credential: &crate::config::UpstreamCredential) -> Self {
        Self { mode: credential.mode().to_owned(), app_id: credential.app().map(|app| app.client_id.clone()) }
    }
}

/// The content of a record, before the journal gives it its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordBody {
    /// When the event happened (RFC 3339, milliseconds, UTC).
    pub time: String,
    /// Intent, outcome or denied.
    pub phase: Phase,
    /// The gateway's request id.
    pub request_id: String,
    /// The caller's correlation id.
    pub client_request_id: String,
    /// Who asked, when known.
    pub principal: Option<AuditPrincipal>,
    /// The caller's socket address.
    pub client_addr: Option<String>,
    /// HTTP method.
    pub method: String,
    /// `v1.0` or `beta`, when known.
    pub api_version: Option<String>,
    /// The request path (no query string).
    pub path: String,
    /// The connector, when known.
    pub connector_id: Option<String>,
    /// The validated changes, when known.
    pub changes: Option<Value>,
    /// Why it was denied or failed: Graph error code and message.
    pub reason: Option<String>,
    /// The status answered (outcome, denied).
    pub status: Option<u16>,
    /// Graph's `request-id` (outcome).
    pub graph_request_id: Option<String>,
    /// Time from intent to the upstream's answer (outcome).
    pub duration_ms: Option<u64>,
    /// The credential the gateway used (or would have used) upstream; the journal stamps it.
    pub upstream_credential: Option<AuditCredential>,
}

/// A record as stored: `seq`, the body's fields, `prev_hash`, `hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The content.
    #[serde(flatten)]
    pub body: RecordBody,
    /// The previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    #[serde(flatten)]
    body: &'a RecordBody,
    prev_hash: &'a str,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The hash a record with this content must carry.
pub fn chain_hash(seq: u64, body: &RecordBody, prev_hash: &str) -> String {
    let canonical = serde_json::to_vec(&Canonical { seq, body, prev_hash }).unwrap_or_default();
    let mut context = Context::new(&SHA256);
    context.update(prev_hash.as_bytes());
    context.update(&canonical);
    hex(context.finish().as_ref())
}

/// Seals `body` as record `seq` and appends its line to `out` with one serialisation: the
/// canonical bytes are hashed, then closed with the `hash` field (the last one) and a newline,
/// which is exactly [`AuditRecord::to_line`]. Returns the record's hash.
pub fn seal_line(seq: u64, body: &RecordBody, prev_hash: &str, out: &mut Vec<u8>) -> String {
    let start = out.len();
    if serde_json::to_writer(&mut *out, &Canonical { seq, body, prev_hash }).is_err() || out.last() != Some(&b'}') {
        // Unreachable for these types; fall back to the two-pass form rather than write a bad line.
        out.truncate(start);
        let record = AuditRecord::seal(seq, body.clone(), prev_hash.to_owned());
        out.extend_from_slice(&record.to_line());
        return record.hash;
    }
    let mut context = Context::new(&SHA256);
    context.update(prev_hash.as_bytes());
    context.update(out.get(start..).unwrap_or_default());
    let hash = hex(context.finish().as_ref());
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

impl AuditRecord {
    /// Seals `body` as record `seq` after the record whose hash is `prev_hash`.
    pub fn seal(seq: u64, body: RecordBody, prev_hash: String) -> Self {
        let hash = chain_hash(seq, &body, &prev_hash);
        Self { seq, body, prev_hash, hash }
    }

    /// Whether `hash` matches the content.
    pub fn is_sealed_correctly(&self) -> bool {
        chain_hash(self.seq, &self.body, &self.prev_hash) == self.hash
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn body(phase: Phase) -> RecordBody {
        RecordBody {
            time: "2026-12-03T18:04:05.123Z".into(),
            phase,
            request_id: "r".into(),
            client_request_id: "c".into(),
            principal: None,
            client_addr: Some("127.0.0.1:50123".into()),
            method: "PATCH".into(),
            api_version: Some("beta".into()),
            path: "/onPremisesPublishingProfiles/applicationProxy/connectors/abc".into(),
            connector_id: Some("abc".into()),
            changes: Some(serde_json::json!({"status": "inactive"})),
            reason: None,
            status: None,
            graph_request_id: None,
            duration_ms: None,
            upstream_credential: Some(AuditCredential {
                mode: "client_credentials".into(),
                app_id: Some("app".into()),
            }),
        }
    }

    #[test]
    fn the_line_has_the_documented_field_order_and_round_trips() {
        let record = AuditRecord::seal(12, body(Phase::Intent), GENESIS.into());
        let line = String::from_utf8(record.to_line()).unwrap();
        let order = [
            "\"seq\":12",
            "\"time\"",
            "\"phase\":\"intent\"",
            "\"request_id\"",
            "\"client_request_id\"",
            "\"principal\"",
            "\"client_addr\"",
            "\"method\"",
            "\"api_version\"",
            "\"path\"",
            "\"connector_id\"",
            "\"changes\"",
            "\"reason\"",
            "\"status\":null",
            "\"graph_request_id\"",
            "\"duration_ms\"",
            "\"upstream_credential\":{\"mode\":\"client_credentials\",\"app_id\":\"app\"}",
            "\"prev_hash\"",
            "\"hash\"",
        ];
        let positions: Vec<usize> =
            order.iter().map(|f| line.find(f).unwrap_or_else(|| panic!("{f} missing in {line}"))).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        let parsed: AuditRecord = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(parsed, record);
        assert!(parsed.is_sealed_correctly());
    }

    #[test]
    fn sealing_in_one_pass_writes_exactly_the_line_of_the_record() {
        let mut out = b"earlier line\n".to_vec();
        let hash = seal_line(7, &body(Phase::Outcome), GENESIS, &mut out);
        let record = AuditRecord::seal(7, body(Phase::Outcome), GENESIS.into());
        assert_eq!(hash, record.hash);
        assert_eq!(out.get(13..).unwrap(), record.to_line().as_slice());
    }

    #[test]
    fn any_edit_breaks_the_seal() {
        let mut record = AuditRecord::seal(1, body(Phase::Intent), GENESIS.into());
        record.body.changes = Some(serde_json::json!({"status": "active"}));
        assert!(!record.is_sealed_correctly());
        let mut record = AuditRecord::seal(1, body(Phase::Intent), GENESIS.into());
        record.seq = 2;
        assert!(!record.is_sealed_correctly());
    }
}
