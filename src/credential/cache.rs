//! Where Graph tokens are kept between requests.
//!
//! [`AppTokenSource`] holds the one client-credentials token: requests read it without locking;
//! a background task renews it ahead of expiry; a request that finds none starts (or joins) the
//! single fetch in flight. After a failed fetch, requests are refused at once until the backoff
//! passes, so an Entra outage costs no more than one call per backoff step.
//!
//! [`OboCache`] holds on-behalf-of tokens by the SHA-256 of the caller's token (never the token
//! itself), each until shortly before it expires, with one exchange in flight per caller token,
//! and at most `capacity` entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use http::HeaderValue;
use tokio::time::Instant;

use super::CredentialError;
use super::entra::{Grant, IssuedToken, TokenClient};

/// First wait after a failed fetch; doubled on each further failure.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How far ahead of expiry a token is renewed, at most.
const RENEW_AHEAD: Duration = Duration::from_secs(5 * 60);
/// How long before expiry a token stops being sent, at most (clock skew, time in flight).
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// A token and its schedule.
#[derive(Debug)]
pub struct CachedToken {
    authorization: HeaderValue,
    /// Not sent past this instant.
    pub usable_until: Instant,
    /// Renewed in the background from this instant.
    pub refresh_at: Instant,
}

impl CachedToken {
    /// Schedules a token issued at `now`: sent until shortly before expiry (a tenth of its life,
    /// at most 30 s), renewed five minutes ahead of expiry or at half its life, whichever is later.
    pub fn new(issued: IssuedToken, now: Instant) -> Self {
        let lifetime = issued.lifetime;
        let margin = EXPIRY_MARGIN.min(lifetime / 10);
        let renew_after = lifetime.saturating_sub(RENEW_AHEAD).max(lifetime / 2);
        Self {
            authorization: issued.authorization,
            usable_until: now + lifetime - margin,
            refresh_at: now + renew_after,
        }
    }

    fn usable(&self, now: Instant) -> Option<HeaderValue> {
        (now < self.usable_until).then(|| self.authorization.clone())
    }
}

/// The last failure and how long to wait before trying again.
#[derive(Debug)]
struct FetchState {
    failed: Option<(Instant, CredentialError)>,
    backoff: Duration,
}

impl FetchState {
    fn new() -> Self {
        Self { failed: None, backoff: INITIAL_BACKOFF }
    }

    fn cooling_down(&self, now: Instant) -> Option<CredentialError> {
        self.failed.as_ref().filter(|(at, _)| now < *at + self.backoff).map(|(_, error)| error.clone())
    }

    fn record(&mut self, result: &Result<IssuedToken, CredentialError>, now: Instant) {
        match result {
            Ok(_) => *self = Self::new(),
            Err(error) => {
                if self.failed.is_some() {
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                self.failed = Some((now, error.clone()));
            }
        }
    }
}

/// The gateway's own app token (client credentials). See the [module docs](self).
#[derive(Debug)]
pub struct AppTokenSource {
    client: Arc<TokenClient>,
    current: ArcSwapOption<CachedToken>,
    /// Held while a fetch is in flight: the single flight.
    fetch: tokio::sync::Mutex<FetchState>,
    requests: AtomicU64,
}

impl AppTokenSource {
    /// A source with no token yet.
    pub fn new(client: Arc<TokenClient>) -> Self {
        Self {
            client,
            current: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(FetchState::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// The token, when one is held and still usable: no lock, no wait.
    pub fn now(&self) -> Option<HeaderValue> {
        self.current.load().as_ref().and_then(|t| t.usable(Instant::now()))
    }

    /// Calls made to the token endpoint.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The token, fetching it when none is usable (one fetch in flight, shared by every waiter;
    /// refused at once while a failure's backoff runs).
    pub async fn token(&self) -> Result<HeaderValue, CredentialError> {
        if let Some(token) = self.now() {
            return Ok(token);
        }
        let mut state = self.fetch.lock().await;
        if let Some(token) = self.now() {
            return Ok(token); // fetched while this request waited
        }
        if let Some(error) = state.cooling_down(Instant::now()) {
            return Err(error);
        }
        self.fetch_locked(&mut state).await
    }

    async fn fetch_locked(&self, state: &mut FetchState) -> Result<HeaderValue, CredentialError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.client.request(Grant::ClientCredentials).await;
        let now = Instant::now();
        state.record(&result, now);
        let token = CachedToken::new(result?, now);
        let authorization = token.authorization.clone();
        tracing::info!(valid_for_s = (token.usable_until - now).as_secs(), "Graph app token obtained");
        self.current.store(Some(Arc::new(token)));
        Ok(authorization)
    }

    /// Fetches now unless a usable token is held that is not due for renewal yet.
    pub async fn renew(&self) -> Result<(), CredentialError> {
        let mut state = self.fetch.lock().await;
        let due = self.current.load().as_ref().is_none_or(|t| Instant::now() >= t.refresh_at);
        if due {
            self.fetch_locked(&mut state).await?;
        }
        Ok(())
    }

    /// Why there is no usable token, if there is none (for `/readyz`).
    pub fn health(&self) -> Result<(), String> {
        match self.now() {
            Some(_) => Ok(()),
            None => Err("no Graph token held (the token endpoint has not answered yet)".into()),
        }
    }

    async fn next_renewal(&self) -> Instant {
        let state = self.fetch.lock().await;
        let due = self.current.load().as_ref().map_or_else(Instant::now, |t| t.refresh_at);
        // A failure happens only when a renewal was due, so after one the backoff decides.
        match &state.failed {
            Some((at, _)) => *at + state.backoff,
            None => due,
        }
    }

    /// Keeps the token fresh: renews it ahead of expiry, retrying failures with backoff.
    pub fn spawn_renewal(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let source = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep_until(source.next_renewal().await).await;
                if let Err(error) = source.renew().await {
                    tracing::warn!(%error, "renewing the Graph app token failed; retrying with backoff");
                }
            }
        })
    }
}

/// On-behalf-of tokens by caller-token hash. See the [module docs](self).
#[derive(Debug)]
pub struct OboCache {
    client: Arc<TokenClient>,
    entries: DashMap<[u8; 32], Arc<OboEntry>>,
    capacity: usize,
    requests: AtomicU64,
}

#[derive(Debug, Default)]
struct OboEntry {
    token: ArcSwapOption<CachedToken>,
    exchange: tokio::sync::Mutex<()>,
}

/// The cache key of a caller's token: the same fingerprint the verifier caches it by.
pub use crate::auth::verify::token_fingerprint as token_key;

impl OboCache {
    /// An empty cache holding at most `capacity` caller tokens.
    pub fn new(client: Arc<TokenClient>, capacity: usize) -> Self {
        Self { client, entries: DashMap::new(), capacity: capacity.max(1), requests: AtomicU64::new(0) }
    }

    /// Calls made to the token endpoint.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached Graph token for this caller token, if still usable.
    pub fn now(&self, key: &[u8; 32]) -> Option<HeaderValue> {
        self.entries.get(key).and_then(|entry| entry.token.load().as_ref().and_then(|t| t.usable(Instant::now())))
    }

    /// The Graph token for `assertion`, exchanging it when none is cached (one exchange in
    /// flight per caller token). Refusals are not cached: Entra decides again next time.
    pub async fn token(&self, key: [u8; 32], assertion: &str) -> Result<HeaderValue, CredentialError> {
        let entry = self.entry(key);
        let _in_flight = entry.exchange.lock().await;
        if let Some(token) = entry.token.load().as_ref().and_then(|t| t.usable(Instant::now())) {
            return Ok(token);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let issued = self.client.request(Grant::OnBehalfOf { assertion }).await?;
        let token = CachedToken::new(issued, Instant::now());
        let authorization = token.authorization.clone();
        entry.token.store(Some(Arc::new(token)));
        Ok(authorization)
    }

    fn entry(&self, key: [u8; 32]) -> Arc<OboEntry> {
        if let Some(entry) = self.entries.get(&key) {
            return entry.clone();
        }
        if self.entries.len() >= self.capacity {
            self.evict();
        }
        self.entries.entry(key).or_default().clone()
    }

    /// Drops expired entries; when every entry is still live, drops the one closest to expiry.
    fn evict(&self) {
        let now = Instant::now();
        let live = |entry: &OboEntry| entry.token.load().as_ref().is_some_and(|t| t.usable_until > now);
        self.entries.retain(|_, entry| live(entry) || Arc::strong_count(entry) > 1);
        if self.entries.len() >= self.capacity {
            let soonest = self
                .entries
                .iter()
                .filter(|e| Arc::strong_count(e.value()) == 1)
                .min_by_key(|e| e.value().token.load().as_ref().map(|t| t.usable_until))
                .map(|e| *e.key());
            if let Some(key) = soonest {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: u64) -> IssuedToken {
        IssuedToken { authorization: HeaderValue::from_static("Bearer t"), lifetime: Duration::from_secs(lifetime) }
    }

    #[test]
    fn an_hour_token_is_renewed_five_minutes_ahead_and_sent_until_thirty_seconds_before_expiry() {
        let now = Instant::now();
        let token = CachedToken::new(issued(3600), now);
        assert_eq!(token.refresh_at - now, Duration::from_secs(3300));
        assert_eq!(token.usable_until - now, Duration::from_secs(3570));
    }

    #[test]
    fn a_short_token_is_renewed_at_half_life_before_it_stops_being_sent() {
        let now = Instant::now();
        let token = CachedToken::new(issued(4), now);
        assert_eq!(token.refresh_at - now, Duration::from_secs(2));
        assert_eq!(token.usable_until - now, Duration::from_millis(3600));
        assert!(token.usable(now + Duration::from_millis(3599)).is_some());
        assert!(token.usable(now + Duration::from_millis(3600)).is_none());
    }

    fn obo_cache(capacity: usize) -> OboCache {
        let app = Arc::new(crate::config::EntraApp {
            token_url: http::Uri::from_static("http://127.0.0.1:9/t/oauth2/v2.0/token"),
            tenant_id: "t".into(),
            client_id: "c0ffee00-0000-4000-8000-000000000001".into(),
            client_auth: crate::config::ClientAuth::Secret("s".into()),
            scope: "https://graph.microsoft.com/.default".into(),
        });
        let connector = crate::proxy::https_connector(&[], Duration::from_secs(1));
        OboCache::new(Arc::new(TokenClient::new(app, connector)), capacity)
    }

    fn cache_token(cache: &OboCache, caller: &str, lifetime: u64, now: Instant) {
        cache.entry(token_key(caller)).token.store(Some(Arc::new(CachedToken::new(issued(lifetime), now))));
    }

    #[test]
    fn the_obo_cache_is_keyed_by_hash_and_bounded() {
        let cache = obo_cache(3);
        let now = Instant::now();
        cache_token(&cache, "caller-a", 3600, now);
        cache_token(&cache, "caller-b", 60, now);
        cache_token(&cache, "caller-c", 1800, now);
        assert!(cache.now(&token_key("caller-a")).is_some());
        assert!(cache.now(&token_key("someone-else")).is_none());
        // Full: the entry closest to expiry (b) makes room for d.
        cache_token(&cache, "caller-d", 3600, now);
        assert_eq!(cache.len(), 3);
        assert!(cache.now(&token_key("caller-b")).is_none());
        assert!(cache.now(&token_key("caller-a")).is_some() && cache.now(&token_key("caller-d")).is_some());
    }

    #[test]
    fn expired_obo_tokens_are_evicted_first() {
        let cache = obo_cache(2);
        let long_ago = Instant::now() - Duration::from_secs(120); // machines are up longer than the build takes
        cache_token(&cache, "stale-1", 60, long_ago);
        cache_token(&cache, "stale-2", 60, long_ago);
        cache_token(&cache, "fresh", 3600, Instant::now());
        assert_eq!(cache.len(), 1);
        assert!(cache.now(&token_key("fresh")).is_some());
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_minute_and_success_resets() {
        let now = Instant::now();
        let mut state = FetchState::new();
        let failure = Err(CredentialError::Unavailable("down".into()));
        state.record(&failure, now);
        assert!(state.cooling_down(now + Duration::from_millis(999)).is_some());
        assert!(state.cooling_down(now + INITIAL_BACKOFF).is_none());
        for _ in 0..10 {
            state.record(&failure, now);
        }
        assert_eq!(state.backoff, MAX_BACKOFF);
        state.record(&Ok(issued(60)), now);
        assert!(state.failed.is_none());
        assert_eq!(state.backoff, INITIAL_BACKOFF);
    }
}
