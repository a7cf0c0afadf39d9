//! Token-signing keys: loaded from exactly one source (a JWKS file, a JWKS URL, or OpenID
//! discovery -> `jwks_uri`), cached by `kid`, refreshed in the background, and refreshed on an
//! unknown `kid` at most once per cooldown with one fetch in flight, shared by every waiting
//! request. A failed refresh keeps the last good set; made-up `kid`s cannot cause a fetch storm.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::config::KeySource;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Bound on one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One verification key.
pub struct VerificationKey {
    /// The key.
    pub key: DecodingKey,
    /// RSA or EC.
    pub family: AlgorithmFamily,
    /// The JWK's own `alg`, when it states one: the token's `alg` must then equal it.
    pub algorithm: Option<Algorithm>,
}

/// A loaded key set, by `kid`.
pub struct KeySet {
    /// Keys by `kid`.
    pub keys: HashMap<String, VerificationKey>,
    /// Changes whenever a new set is installed; verification caches are keyed on it.
    pub generation: u64,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("generation", &self.generation)
            .finish()
    }
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or fetching failed.
    #[error("cannot fetch {what}: {reason}")]
    Fetch {
        /// What was being fetched.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The document is not what it should be.
    #[error("{what} is not a valid document: {reason}")]
    Invalid {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

fn jwk_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        _ => return None,
    })
}

/// Parses a JWKS document, keeping signature keys (RSA and EC) that have a `kid`.
pub fn parse_jwks(bytes: &[u8], generation: u64) -> Result<KeySet, KeyError> {
    let invalid = |reason: String| KeyError::Invalid { what: "JWKS".into(), reason };
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            _ => continue, // symmetric and OKP keys are never trusted for Entra tokens
        };
        let algorithm = match jwk.common.key_algorithm {
            None => None,
            Some(alg) => match jwk_algorithm(alg) {
                Some(alg) => Some(alg),
                None => continue,
            },
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, VerificationKey { key, family, algorithm });
            }
            Err(error) => tracing::warn!(%kid, %error, "skipping an unusable JWK"),
        }
    }
    if keys.is_empty() {
        return Err(invalid("it holds no usable signing key".into()));
    }
    Ok(KeySet { keys, generation })
}

/// Where keys come from, and the client used to fetch them.
struct Fetcher {
    source: KeySource,
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    async fn get(&self, uri: &Uri) -> Result<Bytes, KeyError> {
        let fail = |reason: String| KeyError::Fetch { what: uri.to_string(), reason };
        let request = Request::get(uri.clone())
            .header("accept", "application/json")
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        let body =
            tokio::time::timeout(FETCH_TIMEOUT, Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect())
                .await
                .map_err(|_| fail("timed out".into()))?
                .map_err(|e| fail(e.to_string()))?;
        Ok(body.to_bytes())
    }

    async fn jwks_bytes(&self) -> Result<Bytes, KeyError> {
        match &self.source {
            KeySource::JwksFile(path) => tokio::fs::read(path)
                .await
                .map(Bytes::from)
                .map_err(|e| KeyError::Fetch { what: path.display().to_string(), reason: e.to_string() }),
            KeySource::JwksUrl(uri) => self.get(uri).await,
            KeySource::OpenIdConfiguration(uri) => {
                let document = self.get(uri).await?;
                let invalid = |reason: &str| KeyError::Invalid { what: uri.to_string(), reason: reason.into() };
                let json: serde_json::Value = serde_json::from_slice(&document).map_err(|_| invalid("not JSON"))?;
                let jwks_uri = json["jwks_uri"].as_str().ok_or_else(|| invalid("no jwks_uri"))?;
                let jwks_uri: Uri = jwks_uri.parse().map_err(|_| invalid("jwks_uri is not a URL"))?;
                self.get(&jwks_uri).await
            }
        }
    }
}

/// The shared key store. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    current: ArcSwapOption<KeySet>,
    fetcher: Fetcher,
    cooldown: Duration,
    generation: AtomicU64,
    fetches: AtomicU64,
    /// Held while a fetch is in flight; also guards the time of the last unknown-kid refresh.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("current", &self.inner.current.load()).finish_non_exhaustive()
    }
}

impl KeyStore {
    /// A store for `source`, with nothing loaded yet.
    pub fn new(
        source: KeySource,
        connector: hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        cooldown: Duration,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            inner: Arc::new(StoreInner {
                current: ArcSwapOption::empty(),
                fetcher: Fetcher { source, client },
                cooldown,
                generation: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
                refresh: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A store with a fixed key set (tests, benches, embedding with keys from elsewhere).
    pub fn fixed(set: KeySet) -> Self {
        let store = Self::new(
            KeySource::JwksFile("(fixed)".into()),
            crate::proxy::https_connector(&[], Duration::from_secs(1)),
            Duration::from_secs(3600),
        );
        store.inner.current.store(Some(Arc::new(set)));
        store
    }

    /// The current key set, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.inner.current.load_full()
    }

    /// How many fetches were made (for tests and metrics).
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the key set now and installs it; on failure the last good set stays.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, KeyError> {
        let _in_flight = self.inner.refresh.lock().await;
        self.fetch_and_install().await
    }

    async fn fetch_and_install(&self) -> Result<Arc<KeySet>, KeyError> {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let bytes = self.inner.fetcher.jwks_bytes().await?;
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let set = Arc::new(parse_jwks(&bytes, generation)?);
        tracing::info!(keys = set.keys.len(), generation, "signing keys loaded");
        self.inner.current.store(Some(set.clone()));
        Ok(set)
    }

    /// Called for a token whose `kid` is not in the current set: refreshes at most once per
    /// cooldown. Concurrent callers wait for the one fetch in flight and share its result.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> Option<Arc<KeySet>> {
        let seen = self.current().map(|s| s.generation);
        let mut last = self.inner.refresh.lock().await;
        // Someone else's fetch finished while we waited: use its result.
        if let Some(set) = self.current().filter(|s| Some(s.generation) != seen) {
            return Some(set);
        }
        if last.is_some_and(|at| at.elapsed() < self.inner.cooldown) {
            return self.current();
        }
        *last = Some(Instant::now());
        match self.fetch_and_install().await {
            Ok(set) => Some(set),
            Err(error) => {
                tracing::warn!(%kid, %error, "key refresh for an unknown kid failed; keeping the last good keys");
                self.current()
            }
        }
    }

    /// Keeps keys fresh: retries every few seconds (with backoff) until a first set is loaded,
    /// then refreshes every `interval`. A set already loaded (see [`KeyStore::refresh`]) is kept
    /// until the first interval passes.
    pub fn spawn_refresh(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut retry = Duration::from_millis(500);
            if store.current().is_some() {
                tokio::time::sleep(interval).await;
            }
            loop {
                let wait = match store.refresh().await {
                    Ok(_) => {
                        retry = Duration::from_millis(500);
                        interval
                    }
                    Err(error) => {
                        tracing::warn!(%error, "key refresh failed; keeping the last good keys");
                        retry = (retry * 2).min(Duration::from_secs(30));
                        interval.min(retry)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}
