//! Token verification: algorithm allowlist, key type and JWK `alg` match, signature, `exp`, `nbf`,
//! `leeway`, `aud`, `iss` with `{tenantid}`, GUID `tid`, and Graph's nonce transform when enabled.
//! Successful verifications are cached by a hash of the whole token, never past `exp` + leeway,
//! and invalidated when the key set changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::keys::{KeySet, KeyStore};
use super::{AuthError, Principal, PrincipalKind};
use crate::config::AuthConfig;

/// Tokens larger than this are refused without parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Verified tokens remembered at most.
const CACHE_CAPACITY: usize = 65_536;

/// Seconds since the Unix epoch; injectable so tests control time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// What verification settled, or that it needs a key refresh first.
#[derive(Debug)]
pub enum Verdict {
    /// Verified or refused.
    Done(Result<Principal, AuthError>),
    /// The token names a `kid` the current set does not have.
    UnknownKid(String),
}

struct Cached {
    principal: Arc<Principal>,
    valid_until: u64,
    generation: u64,
}

/// Verifies bearer tokens against the configured issuers, audiences and keys.
pub struct Verifier {
    keys: KeyStore,
    issuers: Vec<String>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    graph_token_nonce: bool,
    clock: Clock,
    cache: DashMap<[u8; 32], Cached>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

fn part(text: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(text).map_err(|_| AuthError::Malformed("a part is not base64url"))
}

fn object(bytes: &[u8], what: &'static str) -> Result<serde_json::Map<String, Value>, AuthError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed(what)),
    }
}

fn algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

/// A GUID in its 8-4-4-4-12 hex form.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Replaces the header's nonce value by base64url(SHA-256(nonce)) in the decoded header text,
/// leaving every other byte as sent (Graph signs over this transformed header).
fn nonce_transformed_header(header_text: &str, nonce: &str) -> Option<String> {
    let key_at = header_text.find("\"nonce\"")?;
    let after_key = header_text.get(key_at + 7..)?;
    let open = key_at + 7 + after_key.find('"')?;
    let value_start = open + 1;
    let value_end = value_start + header_text.get(value_start..)?.find('"')?;
    if header_text.get(value_start..value_end)? != nonce {
        return None;
    }
    let hashed = URL_SAFE_NO_PAD.encode(digest(&SHA256, nonce.as_bytes()));
    Some(format!("{}{hashed}{}", header_text.get(..value_start)?, header_text.get(value_end..)?))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn text(claims: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

impl Verifier {
    /// A verifier for `config`, with keys from `keys`.
    pub fn new(config: &AuthConfig, keys: KeyStore) -> Self {
        Self::with_clock(config, keys, system_clock())
    }

    /// The same with an injected clock.
    pub fn with_clock(config: &AuthConfig, keys: KeyStore, clock: Clock) -> Self {
        Self {
            keys,
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            algorithms: config.algorithms.clone(),
            leeway: config.leeway.as_secs(),
            graph_token_nonce: config.graph_token_nonce,
            clock,
            cache: DashMap::new(),
        }
    }

    /// The key store behind this verifier.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Verifies with the keys at hand; asks for a refresh when the `kid` is unknown.
    pub fn verify_now(&self, token: &str) -> Verdict {
        if token.len() > MAX_TOKEN_BYTES {
            return Verdict::Done(Err(AuthError::TooLarge));
        }
        let Some(keys) = self.keys.current() else { return Verdict::Done(Err(AuthError::KeysUnavailable)) };
        let now = (self.clock)();
        let fingerprint = token_fingerprint(token);
        if let Some(hit) = self.cache.get(&fingerprint) {
            if hit.generation == keys.generation && now <= hit.valid_until {
                return Verdict::Done(Ok(Principal::clone(&hit.principal)));
            }
        }
        match self.verify_with(token, &keys, now) {
            Ok((principal, valid_until)) => {
                self.remember(fingerprint, &principal, valid_until, keys.generation, now);
                Verdict::Done(Ok(principal))
            }
            Err(AuthError::UnknownKey) => match self.kid_of(token) {
                Some(kid) => Verdict::UnknownKid(kid),
                None => Verdict::Done(Err(AuthError::UnknownKey)),
            },
            Err(error) => Verdict::Done(Err(error)),
        }
    }

    /// Verifies, refreshing keys once (per cooldown) when the `kid` is unknown.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match self.verify_now(token) {
            Verdict::Done(result) => result,
            Verdict::UnknownKid(kid) => {
                self.keys.refresh_for_unknown_kid(&kid).await;
                match self.verify_now(token) {
                    Verdict::Done(result) => result,
                    Verdict::UnknownKid(_) => Err(AuthError::UnknownKey),
                }
            }
        }
    }

    fn kid_of(&self, token: &str) -> Option<String> {
        let header = part(token.split('.').next()?).ok()?;
        object(&header, "").ok()?.get("kid")?.as_str().map(str::to_owned)
    }

    fn remember(&self, fingerprint: [u8; 32], principal: &Principal, valid_until: u64, generation: u64, now: u64) {
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.retain(|_, cached| cached.valid_until >= now && cached.generation == generation);
            if self.cache.len() >= CACHE_CAPACITY {
                self.cache.clear();
            }
        }
        self.cache.insert(fingerprint, Cached { principal: Arc::new(principal.clone()), valid_until, generation });
    }

    /// Full verification against `keys`; returns the principal and until when it may be cached.
    fn verify_with(&self, token: &str, keys: &KeySet, now: u64) -> Result<(Principal, u64), AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
        };
        let header_bytes = part(header_b64)?;
        let header = object(&header_bytes, "the header is not a JSON object")?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        let alg = algorithm(alg_name)
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| AuthError::UnsupportedAlgorithm(alg_name.chars().take(16).collect()))?;
        // jku, x5u and jwk header parameters are never used as key sources: keys come only from config.
        let kid = header.get("kid").and_then(Value::as_str).ok_or(AuthError::Malformed("the header has no kid"))?;
        let key = keys.keys.get(kid).ok_or(AuthError::UnknownKey)?;
        if key.family != alg.family() || key.algorithm.is_some_and(|a| a != alg) {
            return Err(AuthError::KeyMismatch);
        }
        let transformed;
        let signed_header = match header.get("nonce") {
            None => header_b64,
            Some(_) if !self.graph_token_nonce => return Err(AuthError::GraphToken),
            Some(nonce) => {
                let nonce = nonce.as_str().ok_or(AuthError::Malformed("nonce is not a string"))?;
                let text =
                    std::str::from_utf8(&header_bytes).map_err(|_| AuthError::Malformed("the header is not UTF-8"))?;
                let rewritten =
                    nonce_transformed_header(text, nonce).ok_or(AuthError::Malformed("the nonce cannot be located"))?;
                transformed = URL_SAFE_NO_PAD.encode(rewritten);
                transformed.as_str()
            }
        };
        let message = format!("{signed_header}.{payload_b64}");
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, alg) {
            Ok(true) => {}
            _ => return Err(AuthError::BadSignature),
        }
        let claims = object(&part(payload_b64)?, "the payload is not a JSON object")?;
        self.principal(&claims, now)
    }

    fn principal(&self, claims: &serde_json::Map<String, Value>, now: u64) -> Result<(Principal, u64), AuthError> {
        let seconds = |name: &str| claims.get(name).and_then(|v| v.as_f64().map(|f| f.max(0.0) as u64));
        let exp = seconds("exp").ok_or(AuthError::MissingExpiry)?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if claims.contains_key("nbf") {
            let nbf = seconds("nbf").ok_or(AuthError::Malformed("nbf is not a number"))?;
            if now.saturating_add(self.leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => self.audiences.contains(aud),
            Some(Value::Array(auds)) => {
                auds.iter().filter_map(Value::as_str).any(|a| self.audiences.iter().any(|x| x == a))
            }
            _ => false,
        };
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        let tenant_id = text(claims, "tid").filter(|t| is_guid(t)).ok_or(AuthError::BadTenantId)?;
        let issuer = text(claims, "iss").unwrap_or_default();
        if !self.issuers.iter().any(|pattern| pattern.replace("{tenantid}", &tenant_id) == issuer) {
            return Err(AuthError::WrongIssuer);
        }
        let scp = text(claims, "scp");
        let principal = Principal {
            kind: if scp.is_some() { PrincipalKind::Delegated } else { PrincipalKind::Application },
            scopes: scp
                .as_deref()
                .unwrap_or_default()
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            roles: strings(claims.get("roles")),
            object_id: text(claims, "oid"),
            app_id: text(claims, "appid").or_else(|| text(claims, "azp")),
            name: text(claims, "preferred_username").or_else(|| text(claims, "upn")).or_else(|| text(claims, "name")),
            tenant_id,
        };
        Ok((principal, exp.saturating_add(self.leeway)))
    }

    /// How long a cached verification may be used at most (for documentation and tests).
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway)
    }
}

/// The SHA-256 of a token's bytes: how verified tokens (and exchanged Graph tokens) are
/// remembered without keeping the token itself.
pub fn token_fingerprint(token: &str) -> [u8; 32] {
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    fingerprint
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::simulator::entra::DevKey;
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, Ordering};

    const TENANT: &str = "6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de";

    fn config(leeway: u64, algorithms: Vec<Algorithm>) -> AuthConfig {
        AuthConfig {
            key_source: crate::config::KeySource::JwksFile("(fixed)".into()),
            issuers: vec!["https://issuer.test/{tenantid}/v2.0".into()],
            audiences: vec!["api://gw".into()],
            allowed_tenants: vec![],
            algorithms,
            leeway: Duration::from_secs(leeway),
            refresh_interval: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(300),
            graph_token_nonce: false,
        }
    }

    fn claims(exp: u64) -> Value {
        json!({"aud": "api://gw", "iss": format!("https://issuer.test/{TENANT}/v2.0"), "tid": TENANT, "exp": exp, "roles": ["R"], "oid": "o", "azp": "a"})
    }

    fn verifier(jwk: Value, leeway: u64, now: Arc<AtomicU64>) -> Verifier {
        crate::install_crypto_provider();
        let set = super::super::keys::parse_jwks(json!({"keys": [jwk]}).to_string().as_bytes(), 1).unwrap();
        let clock: Clock = Arc::new(move || now.load(Ordering::SeqCst));
        Verifier::with_clock(&config(leeway, vec![Algorithm::RS256, Algorithm::PS256]), KeyStore::fixed(set), clock)
    }

    #[test]
    fn a_cached_verification_never_outlives_the_token() {
        let key = DevKey::generate("k").unwrap();
        let now = Arc::new(AtomicU64::new(1_000_000));
        let v = verifier(key.jwk(), 5, now.clone());
        let token = key.sign(&json!({}), &claims(1_000_010));
        assert!(matches!(v.verify_now(&token), Verdict::Done(Ok(_))));
        now.store(1_000_015, Ordering::SeqCst); // exp + leeway: still valid, from the cache
        assert!(matches!(v.verify_now(&token), Verdict::Done(Ok(_))));
        now.store(1_000_016, Ordering::SeqCst);
        assert!(matches!(v.verify_now(&token), Verdict::Done(Err(AuthError::Expired))));
    }

    #[test]
    fn the_principal_carries_the_token_identity() {
        let key = DevKey::generate("k").unwrap();
        let v = verifier(key.jwk(), 0, Arc::new(AtomicU64::new(10)));
        let mut c = claims(100);
        c["scp"] = json!("A  B");
        c["upn"] = json!("adele@contoso.example");
        let Verdict::Done(Ok(p)) = v.verify_now(&key.sign(&json!({}), &c)) else { panic!("refused") };
        assert_eq!(p.kind, PrincipalKind::Delegated);
        assert_eq!(p.scopes, ["A", "B"]);
        assert_eq!(p.roles, ["R"]);
        assert_eq!((p.tenant_id.as_str(), p.object_id.as_deref(), p.app_id.as_deref()), (TENANT, Some("o"), Some("a")));
        assert_eq!(p.name.as_deref(), Some("adele@contoso.example"));
    }

    #[test]
    fn the_token_alg_must_match_the_jwk_alg() {
        let key = DevKey::generate("k").unwrap();
        let mut jwk = key.jwk();
        jwk["alg"] = json!("PS256");
        let v = verifier(jwk, 0, Arc::new(AtomicU64::new(10)));
        // An RS256 signature, the JWK says PS256 only: refused before the signature is checked.
        let token = key.sign(&json!({}), &claims(100));
        assert!(matches!(v.verify_now(&token), Verdict::Done(Err(AuthError::KeyMismatch))));
    }

    #[test]
    fn jwks_parsing_keeps_only_signature_keys_with_a_kid() {
        let key = DevKey::generate("k").unwrap();
        let mut enc = key.jwk();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut no_kid = key.jwk();
        no_kid.as_object_mut().unwrap().remove("kid");
        let oct = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let doc = json!({"keys": [key.jwk(), enc, no_kid, oct]}).to_string();
        let set = super::super::keys::parse_jwks(doc.as_bytes(), 1).unwrap();
        assert_eq!(set.keys.keys().collect::<Vec<_>>(), ["k"]);
        assert!(super::super::keys::parse_jwks(br#"{"keys":[]}"#, 1).is_err());
        assert!(super::super::keys::parse_jwks(b"[]", 1).is_err());
    }

    #[test]
    fn guids() {
        assert!(is_guid("6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de"));
        assert!(!is_guid("6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0d"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
        assert!(!is_guid("6b1d9e62x3c1a-4f7e-9a52-0c0ffee0c0de"));
    }

    #[test]
    fn the_nonce_transform_touches_only_the_nonce_value() {
        let header = r#"{"typ":"JWT","nonce":"abc123","alg":"RS256","kid":"k1"}"#;
        let hashed = URL_SAFE_NO_PAD.encode(digest(&SHA256, b"abc123"));
        let out = nonce_transformed_header(header, "abc123").unwrap();
        assert_eq!(out, format!(r#"{{"typ":"JWT","nonce":"{hashed}","alg":"RS256","kid":"k1"}}"#));
        let spaced = r#"{"nonce" : "abc123", "alg":"RS256"}"#;
        assert_eq!(
            nonce_transformed_header(spaced, "abc123").unwrap(),
            format!(r#"{{"nonce" : "{hashed}", "alg":"RS256"}}"#)
        );
    }
}
