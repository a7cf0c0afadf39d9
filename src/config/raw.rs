//! The configuration file exactly as written: every table and key of DESIGN.md, nothing parsed yet.
//! `deny_unknown_fields` everywhere, so a misspelt key fails the start instead of being ignored.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    pub upstream: Option<RawUpstream>,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub audit: RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub request_timeout: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub max_connections: Option<u64>,
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub ca_file: Option<String>,
    pub credential: Option<String>,
    pub entra: Option<RawEntra>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntra {
    pub authority: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub certificate_file: Option<String>,
    pub private_key_file: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub openid_configuration_url: Option<String>,
    pub issuers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub allowed_tenants: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub refresh_interval: Option<String>,
    pub unknown_kid_cooldown: Option<String>,
    pub graph_token_nonce: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub delegated_scopes: Option<Vec<String>>,
    pub application_roles: Option<Vec<String>>,
    pub writable_properties: Option<Vec<String>>,
    pub other_requests: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub per_principal: Option<RawQuota>,
    pub per_connector: Option<RawQuota>,
    pub redis_timeout: Option<String>,
    pub on_redis_error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub rate: String,
    pub burst: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Option<String>,
    pub fsync: Option<String>,
    pub rotate_bytes: Option<u64>,
}
