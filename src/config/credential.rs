//! `upstream.credential` and `[upstream.entra]`: how the gateway authenticates to Graph.
//!
//! Secrets never live in the file: a client secret is read from the environment variable that
//! `client_secret_env` names, once, at start-up; a certificate credential names PEM files. Both
//! are turned into ready-to-use values here, so a missing variable or an unreadable key fails the
//! start with the key's name instead of failing the first request.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::raw::RawEntra;
use super::{ConfigError, resolve};

/// How the gateway authenticates to the upstream.
#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    /// Forward the caller's `Authorization` header as is.
    Passthrough,
    /// The gateway's own app token (OAuth client credentials grant).
    ClientCredentials(Arc<EntraApp>),
    /// A Graph token for the caller, exchanged from the caller's token (on-behalf-of grant).
    OnBehalfOf(Arc<EntraApp>),
}

impl UpstreamCredential {
    /// The mode's name, as written in the config and the audit trail.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::ClientCredentials(_) => "client_credentials",
            Self::OnBehalfOf(_) => "on_behalf_of",
        }
    }

    /// The app registration the gateway uses, in the modes that have one.
    pub fn app(&self) -> Option<&Arc<EntraApp>> {
        match self {
            Self::Passthrough => None,
            Self::ClientCredentials(app) | Self::OnBehalfOf(app) => Some(app),
        }
    }
}

/// The gateway's own app registration in Entra ID (`[upstream.entra]`).
#[derive(Debug)]
pub struct EntraApp {
    /// `{authority}/{tenant_id}/oauth2/v2.0/token`.
    pub token_url: Uri,
    /// The tenant the gateway's app lives in.
    pub tenant_id: String,
    /// The gateway app's client id.
    pub client_id: String,
    /// How the app proves who it is.
    pub client_auth: ClientAuth,
    /// What the token is for; `https://graph.microsoft.com/.default` by default.
    pub scope: String,
}

/// How the gateway's app authenticates to the token endpoint.
pub enum ClientAuth {
    /// A client secret (read from the environment).
    Secret(String),
    /// A client assertion: a JWT signed with the certificate's private key.
    Certificate {
        /// The private key (RSA; Entra asks for PS256).
        key: jsonwebtoken::EncodingKey,
        /// `x5t#S256`: base64url SHA-256 of the certificate's DER.
        thumbprint_s256: String,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::Certificate { thumbprint_s256, .. } => {
                f.debug_struct("Certificate").field("x5t#S256", thumbprint_s256).finish_non_exhaustive()
            }
        }
    }
}

/// Where the gateway's client secret comes from: the environment, or (for tests and embedding)
/// a function standing in for it.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses `upstream.credential` with its `[upstream.entra]` table.
pub fn upstream_credential(
    mode: Option<&str>,
    entra: Option<RawEntra>,
    base: &Path,
    env: EnvLookup<'_>,
) -> Result<UpstreamCredential, ConfigError> {
    let mode = mode.unwrap_or("passthrough");
    let app = |entra: Option<RawEntra>| -> Result<Arc<EntraApp>, ConfigError> {
        let entra = entra.ok_or_else(|| {
            ConfigError::new(
                "upstream.entra",
                format!("the [upstream.entra] table is required with credential = \"{mode}\""),
            )
        })?;
        entra_app(entra, mode == "client_credentials", base, env).map(Arc::new)
    };
    match mode {
        "passthrough" => match entra {
            None => Ok(UpstreamCredential::Passthrough),
            Some(_) => Err(ConfigError::new(
                "upstream.entra",
                "is only used with credential = \"client_credentials\" or \"on_behalf_of\"",
            )),
        },
        "client_credentials" => Ok(UpstreamCredential::ClientCredentials(app(entra)?)),
        "on_behalf_of" => Ok(UpstreamCredential::OnBehalfOf(app(entra)?)),
        other => Err(ConfigError::new(
            "upstream.credential",
            format!("`{other}` is not one of: passthrough, client_credentials, on_behalf_of"),
        )),
    }
}

fn is_guid(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok() && text.len() == 36
}

fn entra_app(raw: RawEntra, app_only: bool, base: &Path, env: EnvLookup<'_>) -> Result<EntraApp, ConfigError> {
    let authority = raw.authority.as_deref().unwrap_or("https://login.microsoftonline.com").trim_end_matches('/');
    let authority_uri: Uri = authority
        .parse()
        .map_err(|_| ConfigError::new("upstream.entra.authority", format!("`{authority}` is not a URL")))?;
    if !matches!(authority_uri.scheme_str(), Some("http" | "https"))
        || authority_uri.authority().is_none()
        || !matches!(authority_uri.path(), "" | "/")
    {
        return Err(ConfigError::new(
            "upstream.entra.authority",
            format!("`{authority}` must be scheme://host[:port] with scheme http or https and no path"),
        ));
    }
    let tenant_id = raw
        .tenant_id
        .ok_or_else(|| ConfigError::new("upstream.entra.tenant_id", "is required (the gateway app's tenant)"))?;
    let tenant_ok = !tenant_id.is_empty()
        && tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !["common", "organizations", "consumers"].contains(&tenant_id.to_ascii_lowercase().as_str());
    if !tenant_ok {
        return Err(ConfigError::new(
            "upstream.entra.tenant_id",
            format!("`{tenant_id}` must be a tenant id or domain (not common, organizations or consumers)"),
        ));
    }
    let client_id = raw.client_id.ok_or_else(|| ConfigError::new("upstream.entra.client_id", "is required"))?;
    if !is_guid(&client_id) {
        return Err(ConfigError::new("upstream.entra.client_id", format!("`{client_id}` is not a GUID")));
    }
    let scope = raw.scope.unwrap_or_else(|| "https://graph.microsoft.com/.default".into());
    if scope.trim().is_empty() || (app_only && !scope.ends_with("/.default")) {
        return Err(ConfigError::new(
            "upstream.entra.scope",
            format!("`{scope}` must be a resource's /.default scope for client_credentials"),
        ));
    }
    let client_auth = match (raw.client_secret_env, raw.certificate_file, raw.private_key_file) {
        (Some(name), None, None) => match env(&name) {
            Some(secret) if !secret.is_empty() => ClientAuth::Secret(secret),
            _ => {
                return Err(ConfigError::new(
                    "upstream.entra.client_secret_env",
                    format!("the environment variable {name} is not set (it must hold the client secret)"),
                ));
            }
        },
        (None, Some(cert), Some(key)) => certificate(&resolve(base, &cert), &resolve(base, &key))?,
        (None, Some(_), None) => {
            return Err(ConfigError::new("upstream.entra.private_key_file", "is required with certificate_file"));
        }
        (None, None, Some(_)) => {
            return Err(ConfigError::new("upstream.entra.certificate_file", "is required with private_key_file"));
        }
        (None, None, None) => {
            return Err(ConfigError::new(
                "upstream.entra",
                "exactly one of client_secret_env or certificate_file + private_key_file is required (none is set)",
            ));
        }
        (Some(_), _, _) => {
            return Err(ConfigError::new(
                "upstream.entra",
                "exactly one of client_secret_env or certificate_file + private_key_file is allowed (both are set)",
            ));
        }
    };
    let token_url = format!("{authority}/{tenant_id}/oauth2/v2.0/token")
        .parse()
        .map_err(|_| ConfigError::new("upstream.entra.tenant_id", "does not make a valid token URL"))?;
    Ok(EntraApp { token_url, tenant_id, client_id, client_auth, scope })
}

/// The `x5t#S256` thumbprint of a DER certificate.
pub fn thumbprint_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, der).as_ref())
}

fn certificate(cert: &Path, key: &Path) -> Result<ClientAuth, ConfigError> {
    let leaf = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            ConfigError::new("upstream.entra.certificate_file", format!("cannot read {}: {e}", cert.display()))
        })?
        .next()
        .ok_or_else(|| {
            ConfigError::new("upstream.entra.certificate_file", format!("{} holds no certificate", cert.display()))
        })?
        .map_err(|e| ConfigError::new("upstream.entra.certificate_file", format!("{}: {e}", cert.display())))?;
    let pem = std::fs::read(key).map_err(|e| {
        ConfigError::new("upstream.entra.private_key_file", format!("cannot read {}: {e}", key.display()))
    })?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
        ConfigError::new(
            "upstream.entra.private_key_file",
            format!("{} is not an RSA private key in PEM (Entra client assertions are PS256): {e}", key.display()),
        )
    })?;
    // Sign once now: a key the crypto library refuses fails the start, not the first request.
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    jsonwebtoken::encode(&header, &serde_json::json!({"probe": true}), &key)
        .map_err(|e| ConfigError::new("upstream.entra.private_key_file", format!("cannot sign with this key: {e}")))?;
    Ok(ClientAuth::Certificate { key, thumbprint_s256: thumbprint_s256(leaf.as_ref()) })
}
