//! The Entra side of the simulator: a dev RSA key generated at start, its JWKS, OpenID discovery,
//! and realistic v2.0 access tokens (the token endpoint itself is in [`super::token`]).

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The simulator's tenant id.
pub const DEV_TENANT: &str = "6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de";
/// The dev application's client id, accepted by the token endpoint.
pub const DEV_CLIENT_ID: &str = "c0ffee00-0000-4000-8000-000000000001";
/// The dev application's client secret. A development value, never a real secret.
pub const DEV_CLIENT_SECRET: &str = "dev-secret-not-for-production";
/// The audience the gateway's own app registration uses in the demo.
pub const DEV_AUDIENCE: &str = "api://connector-gateway";
/// The application role the token endpoint grants by default.
pub const DEV_ROLE: &str = "OnPremisesPublishingProfiles.ReadWrite.All";

/// An RSA signing key with a `kid`, generated at start.
pub struct DevKey {
    pair: KeyPair,
    kid: String,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl DevKey {
    /// Generates a 2048-bit RSA key.
    pub fn generate(kid: &str) -> std::io::Result<Self> {
        let pair =
            KeyPair::generate(KeySize::Rsa2048).map_err(|_| std::io::Error::other("cannot generate an RSA key"))?;
        Ok(Self { pair, kid: kid.to_owned() })
    }

    /// The key id published in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        use aws_lc_rs::signature::KeyPair as _;
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// Signs `header` (completed with `alg` and `kid` unless present) and `claims` as an RS256 JWT.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let mut header = header.clone();
        if let Some(map) = header.as_object_mut() {
            map.entry("alg").or_insert_with(|| json!("RS256"));
            map.entry("typ").or_insert_with(|| json!("JWT"));
            map.entry("kid").or_insert_with(|| json!(self.kid));
        }
        self.sign_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    /// Signs exactly the given header and payload bytes (for tests that need unusual headers).
    pub fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        if self.pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature).is_err() {
            signature.clear();
        }
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The issuer of v2.0 tokens for the dev tenant at `base` (`http://127.0.0.1:port`).
pub fn issuer(base: &str, tenant: &str) -> String {
    format!("{base}/{tenant}/v2.0")
}

/// Claims of a realistic v2.0 access token for `audience`, valid for an hour.
pub fn access_token_claims(base: &str, audience: &str, client_id: &str, grant: &Grant) -> Value {
    access_token_claims_for(base, audience, client_id, grant, 3599)
}

/// Like [`access_token_claims`], valid for `lifetime` seconds.
pub fn access_token_claims_for(base: &str, audience: &str, client_id: &str, grant: &Grant, lifetime: u64) -> Value {
    let now = now();
    let mut claims = json!({
        "aud": audience,
        "iss": issuer(base, DEV_TENANT),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "tid": DEV_TENANT,
        "azp": client_id,
        "ver": "2.0",
        "uti": uuid::Uuid::new_v4().simple().to_string(),
    });
    if let Some(map) = claims.as_object_mut() {
        match grant {
            Grant::Application { roles } => {
                map.insert("oid".into(), json!("0a1b2c3d-0000-4000-8000-0000000000a1"));
                map.insert("roles".into(), json!(roles));
            }
            Grant::Delegated { scopes, user } => {
                map.insert("oid".into(), json!("5e7a1c00-0000-4000-8000-0000000000b2"));
                map.insert("scp".into(), json!(scopes.join(" ")));
                map.insert("preferred_username".into(), json!(user));
            }
        }
    }
    claims
}

/// What the token carries: application roles, or delegated scopes for a user.
#[derive(Debug, Clone)]
pub enum Grant {
    /// An app-only token with `roles`.
    Application {
        /// Granted application permissions.
        roles: Vec<String>,
    },
    /// A user token with `scp`.
    Delegated {
        /// Granted delegated permissions.
        scopes: Vec<String>,
        /// The user's UPN.
        user: String,
    },
}

/// The OpenID configuration document for the dev tenant.
pub fn openid_configuration(base: &str, tenant: &str) -> Value {
    json!({
        "issuer": issuer(base, tenant),
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "tenant_region_scope": "EU",
    })
}
