//! Typed, validated configuration. The TOML file (layout in DESIGN.md, keys in the README) is read
//! once at start-up and turned into these types (`Config::build`); a bad value fails the start with
//! the key's name, and nothing is parsed per request.
//!
//! Relative paths (TLS files, `ca_file`, `jwks_file`, the audit path) are resolved against the
//! directory of the configuration file, so a config works whatever directory the gateway starts in.

mod credential;
mod raw;
mod values;

pub use credential::{ClientAuth, EntraApp, EnvLookup, UpstreamCredential, thumbprint_s256};
pub use values::{Rate, parse_duration, parse_rate};

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use raw::{RawAudit, RawAuth, RawConfig, RawPolicy, RawQuota, RawRateLimit, RawServer, RawUpstream};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A configuration error, always naming the key (`server.listen`) it is about.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The dotted key, e.g. `rate_limit.per_principal.rate`.
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: the public listener.
    pub server: ServerConfig,
    /// `[admin]`: health, readiness and metrics.
    pub admin: AdminConfig,
    /// `[upstream]`: where governed and other traffic goes.
    pub upstream: UpstreamConfig,
    /// `[auth]`: how callers' tokens are verified.
    pub auth: AuthConfig,
    /// `[policy]`: what a verified caller may do.
    pub policy: PolicyConfig,
    /// `[rate_limit]`: quotas per principal and per connector.
    pub rate_limit: RateLimitConfig,
    /// `[audit]`: the tamper-evident trail of connector changes.
    pub audit: AuditConfig,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the public listener.
    pub listen: SocketAddr,
    /// TLS settings built from `tls_cert` / `tls_key`; `None` means plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bound on a whole request, body read and upstream answer included.
    pub request_timeout: Duration,
    /// Largest governed body accepted.
    pub max_body_bytes: usize,
    /// Time a client has to send its request head (slow-loris guard).
    pub header_read_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `scheme://host[:port]` of Graph (or the simulator).
    pub url: Uri,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for the upstream's response head.
    pub timeout: Duration,
    /// Extra trust anchors, in addition to the webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The credential mode.
    pub credential: UpstreamCredential,
}

/// Exactly one source of token-signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document on disk.
    JwksFile(PathBuf),
    /// A JWKS document over HTTP(S).
    JwksUrl(Uri),
    /// An OpenID configuration whose `jwks_uri` names the JWKS.
    OpenIdConfiguration(Uri),
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Where keys come from.
    pub key_source: KeySource,
    /// Accepted issuers; `{tenantid}` is replaced by the token's `tid`.
    pub issuers: Vec<String>,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Accepted tenants; empty means any tenant whose issuer matches.
    pub allowed_tenants: Vec<String>,
    /// Accepted signature algorithms (never `none`, never HMAC).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Background key refresh interval.
    pub refresh_interval: Duration,
    /// At most one refresh per this interval for tokens with an unknown `kid`.
    pub unknown_kid_cooldown: Duration,
    /// Verify Graph's nonce-signed tokens with the (unofficial) header transform.
    pub graph_token_nonce: bool,
}

/// A property of the connector resource that a PATCH may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WritableProperty {
    /// `externalIp`.
    ExternalIp,
    /// `machineName`.
    MachineName,
    /// `status`.
    Status,
}

impl WritableProperty {
    /// The property's name in Graph's JSON.
    pub fn json_name(self) -> &'static str {
        match self {
            Self::ExternalIp => "externalIp",
            Self::MachineName => "machineName",
            Self::Status => "status",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::ExternalIp, Self::MachineName, Self::Status].into_iter().find(|p| p.json_name() == name)
    }
}

/// What happens to requests that are not connector writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherRequests {
    /// Forward them untouched.
    Forward,
    /// Refuse them with 403.
    Deny,
}

/// `[policy]`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Any one of these in `scp` lets a delegated token write.
    pub delegated_scopes: Vec<String>,
    /// Any one of these in `roles` lets an application token write.
    pub application_roles: Vec<String>,
    /// Properties a PATCH may change.
    pub writable_properties: Vec<WritableProperty>,
    /// Fate of requests that are not connector writes.
    pub other_requests: OtherRequests,
}

/// One quota: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained rate.
    pub rate: Rate,
    /// Requests allowed at once after idling.
    pub burst: NonZeroU32,
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    /// In this process.
    Memory,
    /// In Redis, shared by every gateway using the same URL.
    Redis {
        /// `redis://host:port[/db]`.
        url: String,
    },
}

/// What to do when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Decide with the in-process limiter.
    Local,
    /// Refuse the request (429).
    Deny,
}

/// `[rate_limit]`.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Memory or Redis.
    pub backend: RateLimitBackend,
    /// Quota keyed by tenant + object id (or app id for application tokens).
    pub per_principal: Quota,
    /// Quota keyed by connector id.
    pub per_connector: Quota,
    /// Bound on one Redis decision.
    pub redis_timeout: Duration,
    /// Fallback when Redis fails.
    pub on_redis_error: OnRedisError,
}

/// When the audit writer syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// After every record.
    Always,
    /// Once per batch of queued records (group commit).
    Batch,
    /// Never (the OS decides).
    Off,
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The JSON Lines file.
    pub path: PathBuf,
    /// Durability mode.
    pub fsync: FsyncMode,
    /// Rotate past this many bytes; `None` never rotates.
    pub rotate_bytes: Option<u64>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("(file)", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &base)
    }

    /// Parses configuration text; relative paths resolve against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, base_dir, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_toml`], with `env` standing in for the process environment (where
    /// `upstream.entra.client_secret_env` is looked up).
    pub fn from_toml_with_env(text: &str, base_dir: &Path, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let key = unknown_key_context(&e, text);
            ConfigError::new(key, message)
        })?;
        Config::build(raw, base_dir, env)
    }
}

/// Names the table a TOML error happened in (toml reports the span, not the dotted path).
fn unknown_key_context(error: &toml::de::Error, text: &str) -> String {
    let Some(span) = error.span() else {
        return "(file)".into();
    };
    let spanned = text.get(span.clone()).unwrap_or_default().trim();
    let before = text.get(..span.start).unwrap_or_default();
    if spanned.starts_with('[') || before.trim_end().ends_with('[') {
        return spanned.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
    }
    let table = before
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        .unwrap_or("(top level)");
    let key = spanned.split('=').next().unwrap_or_default().trim();
    if key.is_empty() || key.contains('\n') { table.to_owned() } else { format!("{table}.{key}") }
}

impl Config {
    fn build(raw: RawConfig, base: &Path, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            server: server(raw.server, base)?,
            admin: AdminConfig {
                listen: socket_addr("admin.listen", raw.admin.listen.as_deref().unwrap_or("127.0.0.1:9464"))?,
            },
            upstream: upstream(
                raw.upstream.ok_or_else(|| ConfigError::new("upstream", "the [upstream] table is required"))?,
                base,
                env,
            )?,
            auth: auth(raw.auth.ok_or_else(|| ConfigError::new("auth", "the [auth] table is required"))?, base)?,
            policy: policy(raw.policy)?,
            rate_limit: rate_limit(raw.rate_limit)?,
            audit: audit(raw.audit, base)?,
        })
    }
}

fn duration(key: &str, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    parse_duration(value.unwrap_or(default)).map_err(|m| ConfigError::new(key, m))
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::new(key, format!("`{value}` is not an address like 127.0.0.1:8443")))
}

fn positive(key: &str, value: Option<u64>, default: u64) -> Result<usize, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(ConfigError::new(key, "must be greater than zero")),
        n => usize::try_from(n).map_err(|_| ConfigError::new(key, "is too large")),
    }
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}

fn server(raw: RawServer, base: &Path) -> Result<ServerConfig, ConfigError> {
    let tls = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(Arc::new(tls_server_config(&resolve(base, &cert), &resolve(base, &key))?)),
        (Some(_), None) => {
            return Err(ConfigError::new("server.tls_key", "is required when server.tls_cert is set"));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new("server.tls_cert", "is required when server.tls_key is set"));
        }
    };
    Ok(ServerConfig {
        listen: socket_addr("server.listen", raw.listen.as_deref().unwrap_or("127.0.0.1:8443"))?,
        tls,
        request_timeout: duration("server.request_timeout", raw.request_timeout.as_deref(), "30s")?,
        max_body_bytes: positive("server.max_body_bytes", raw.max_body_bytes, 65536)?,
        header_read_timeout: duration("server.header_read_timeout", raw.header_read_timeout.as_deref(), "10s")?,
        max_header_bytes: positive("server.max_header_bytes", raw.max_header_bytes, 32 * 1024)?,
        max_connections: positive("server.max_connections", raw.max_connections, 4096)?,
        drain_timeout: duration("server.drain_timeout", raw.drain_timeout.as_deref(), "30s")?,
    })
}

/// Builds the listener's TLS configuration: ALPN h2 then http/1.1.
fn tls_server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ConfigError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::new("server.tls_cert", format!("cannot read {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(ConfigError::new("server.tls_cert", format!("{} holds no certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ConfigError::new("server.tls_key", format!("cannot read a private key from {}: {e}", key.display()))
    })?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
            .map_err(|e| ConfigError::new("server.tls_key", format!("does not match server.tls_cert: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn upstream(raw: RawUpstream, base: &Path, env: EnvLookup<'_>) -> Result<UpstreamConfig, ConfigError> {
    let text = raw.url.as_deref().unwrap_or("https://graph.microsoft.com");
    let url: Uri = text.parse().map_err(|_| ConfigError::new("upstream.url", format!("`{text}` is not a URL")))?;
    match (url.scheme_str(), url.authority()) {
        (Some("http" | "https"), Some(_)) if url.path() == "/" || url.path().is_empty() => {}
        _ => {
            return Err(ConfigError::new(
                "upstream.url",
                format!("`{text}` must be scheme://host[:port] with scheme http or https and no path"),
            ));
        }
    }
    let extra_roots = match raw.ca_file {
        None => Vec::new(),
        Some(file) => {
            let path = resolve(base, &file);
            let roots = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ConfigError::new("upstream.ca_file", format!("cannot read {}: {e}", path.display())))?;
            if roots.is_empty() {
                return Err(ConfigError::new("upstream.ca_file", format!("{} holds no certificate", path.display())));
            }
            roots
        }
    };
    let credential = credential::upstream_credential(raw.credential.as_deref(), raw.entra, base, env)?;
    Ok(UpstreamConfig {
        url,
        connect_timeout: duration("upstream.connect_timeout", raw.connect_timeout.as_deref(), "3s")?,
        timeout: duration("upstream.timeout", raw.timeout.as_deref(), "30s")?,
        extra_roots,
        credential,
    })
}

fn uri(key: &str, text: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = text.parse().map_err(|_| ConfigError::new(key, format!("`{text}` is not a URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(ConfigError::new(key, format!("`{text}` must be an absolute http(s) URL"))),
    }
}

fn auth(raw: RawAuth, base: &Path) -> Result<AuthConfig, ConfigError> {
    let key_source = match (raw.jwks_file, raw.jwks_url, raw.openid_configuration_url) {
        (Some(file), None, None) => KeySource::JwksFile(resolve(base, &file)),
        (None, Some(url), None) => KeySource::JwksUrl(uri("auth.jwks_url", &url)?),
        (None, None, Some(url)) => KeySource::OpenIdConfiguration(uri("auth.openid_configuration_url", &url)?),
        (None, None, None) => {
            return Err(ConfigError::new(
                "auth",
                "exactly one of jwks_file, jwks_url, openid_configuration_url is required (none is set)",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                "auth",
                "exactly one of jwks_file, jwks_url, openid_configuration_url is allowed (several are set)",
            ));
        }
    };
    let issuers = raw.issuers.unwrap_or_else(|| {
        vec!["https://login.microsoftonline.com/{tenantid}/v2.0".into(), "https://sts.windows.net/{tenantid}/".into()]
    });
    if issuers.is_empty() {
        return Err(ConfigError::new("auth.issuers", "must name at least one issuer"));
    }
    let audiences = raw.audiences.unwrap_or_default();
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            "auth.audiences",
            "must name at least one audience (the gateway's own app id URI or client id)",
        ));
    }
    let algorithms = raw
        .algorithms
        .unwrap_or_else(|| vec!["RS256".into()])
        .iter()
        .map(|name| algorithm(name))
        .collect::<Result<Vec<_>, _>>()?;
    if algorithms.is_empty() {
        return Err(ConfigError::new("auth.algorithms", "must name at least one algorithm"));
    }
    Ok(AuthConfig {
        key_source,
        issuers,
        audiences,
        allowed_tenants: raw.allowed_tenants.unwrap_or_default(),
        algorithms,
        leeway: raw.leeway.as_deref().map_or(Ok(Duration::from_secs(60)), |v| {
            humantime::parse_duration(v)
                .map_err(|e| ConfigError::new("auth.leeway", format!("`{v}` is not a duration ({e})")))
        })?,
        refresh_interval: duration("auth.refresh_interval", raw.refresh_interval.as_deref(), "1h")?,
        unknown_kid_cooldown: duration("auth.unknown_kid_cooldown", raw.unknown_kid_cooldown.as_deref(), "5m")?,
        graph_token_nonce: raw.graph_token_nonce.unwrap_or(false),
    })
}

/// Only asymmetric algorithms: a shared HMAC secret has no place in an Entra deployment, and
/// allowing one next to RSA keys is the classic key-confusion hole.
fn algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, ConfigError> {
    use jsonwebtoken::Algorithm::*;
    let alg = match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        _ => {
            return Err(ConfigError::new(
                "auth.algorithms",
                format!("`{name}` is not allowed (use RS256, RS384, RS512, PS256, PS384, PS512, ES256 or ES384)"),
            ));
        }
    };
    Ok(alg)
}

fn non_empty_list(key: &str, value: Option<Vec<String>>, default: &[&str]) -> Result<Vec<String>, ConfigError> {
    let list = value.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect());
    if list.iter().any(|s| s.trim().is_empty() || s.contains(' ')) {
        return Err(ConfigError::new(key, "entries must be non-empty and contain no spaces"));
    }
    Ok(list)
}

fn policy(raw: RawPolicy) -> Result<PolicyConfig, ConfigError> {
    const PERMISSIONS: &[&str] = &["OnPremisesPublishingProfiles.ReadWrite.All", "Directory.ReadWrite.All"];
    let writable_properties = raw
        .writable_properties
        .unwrap_or_else(|| vec!["externalIp".into(), "machineName".into(), "status".into()])
        .iter()
        .map(|name| {
            WritableProperty::parse(name).ok_or_else(|| {
                ConfigError::new(
                    "policy.writable_properties",
                    format!("`{name}` is not one of: externalIp, machineName, status"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let other_requests = match raw.other_requests.as_deref().unwrap_or("forward") {
        "forward" => OtherRequests::Forward,
        "deny" => OtherRequests::Deny,
        other => {
            return Err(ConfigError::new("policy.other_requests", format!("`{other}` is not one of: forward, deny")));
        }
    };
    Ok(PolicyConfig {
        delegated_scopes: non_empty_list("policy.delegated_scopes", raw.delegated_scopes, PERMISSIONS)?,
        application_roles: non_empty_list("policy.application_roles", raw.application_roles, PERMISSIONS)?,
        writable_properties,
        other_requests,
    })
}

fn quota(key: &str, raw: Option<RawQuota>, default_rate: &str, default_burst: u32) -> Result<Quota, ConfigError> {
    let (rate, burst) = match raw {
        Some(q) => (q.rate, q.burst),
        None => (default_rate.to_owned(), u64::from(default_burst)),
    };
    let rate = parse_rate(&rate).map_err(|m| ConfigError::new(format!("{key}.rate"), m))?;
    let burst = u32::try_from(burst)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| ConfigError::new(format!("{key}.burst"), "must be a whole number from 1 to 4294967295"))?;
    Ok(Quota { rate, burst })
}

fn rate_limit(raw: RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
    let backend = match raw.backend.as_deref().unwrap_or("memory") {
        "memory" => RateLimitBackend::Memory,
        "redis" => {
            let url = raw.redis_url.unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::new(
                    "rate_limit.redis_url",
                    format!("`{url}` must start with redis:// or rediss://"),
                ));
            }
            RateLimitBackend::Redis { url }
        }
        other => {
            return Err(ConfigError::new("rate_limit.backend", format!("`{other}` is not one of: memory, redis")));
        }
    };
    let on_redis_error = match raw.on_redis_error.as_deref().unwrap_or("local") {
        "local" => OnRedisError::Local,
        "deny" => OnRedisError::Deny,
        other => {
            return Err(ConfigError::new("rate_limit.on_redis_error", format!("`{other}` is not one of: local, deny")));
        }
    };
    Ok(RateLimitConfig {
        backend,
        per_principal: quota("rate_limit.per_principal", raw.per_principal, "60/min", 10)?,
        per_connector: quota("rate_limit.per_connector", raw.per_connector, "30/min", 5)?,
        redis_timeout: duration("rate_limit.redis_timeout", raw.redis_timeout.as_deref(), "50ms")?,
        on_redis_error,
    })
}

fn audit(raw: RawAudit, base: &Path) -> Result<AuditConfig, ConfigError> {
    let fsync = match raw.fsync.as_deref().unwrap_or("batch") {
        "always" => FsyncMode::Always,
        "batch" => FsyncMode::Batch,
        "off" => FsyncMode::Off,
        other => {
            return Err(ConfigError::new("audit.fsync", format!("`{other}` is not one of: always, batch, off")));
        }
    };
    let path = raw.path.unwrap_or_else(|| "audit/connector-changes.jsonl".into());
    if path.trim().is_empty() {
        return Err(ConfigError::new("audit.path", "must not be empty"));
    }
    Ok(AuditConfig { path: resolve(base, &path), fsync, rotate_bytes: raw.rotate_bytes.filter(|&b| b > 0) })
}

#[cfg(test)]
mod tests;
