//! The shared limiter: one GCRA decision per write, made atomically in Redis by one Lua script
//! over both keys (per principal and per connector), with Redis's own clock, so every gateway
//! sharing the Redis enforces one quota. Never a GET followed by a SET.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{QuotaName, Verdict};
use crate::config::Quota;

/// GCRA over two keys. KEYS: principal, connector. ARGV: principal interval and burst,
/// connector interval and burst (microseconds / count). Returns {1, p_remaining, c_remaining}
/// when both pass (and only then stores both new TATs), or {0, which, retry_after_us}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function decide(key, interval, burst)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then return false, allow_at - now end
  return true, new_tat
end
local pi, pb = tonumber(ARGV[1]), tonumber(ARGV[2])
local ci, cb = tonumber(ARGV[3]), tonumber(ARGV[4])
local p_ok, p = decide(KEYS[1], pi, pb)
if not p_ok then return {0, 1, p} end
local c_ok, c = decide(KEYS[2], ci, cb)
if not c_ok then return {0, 2, c} end
redis.call('SET', KEYS[1], p, 'PX', math.ceil((p - now) / 1000) + 1)
redis.call('SET', KEYS[2], c, 'PX', math.ceil((c - now) / 1000) + 1)
return {1, math.floor((now + pb * pi - p) / pi), math.floor((now + cb * ci - c) / ci)}
"#;

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    /// No answer within `rate_limit.redis_timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection or protocol failure.
    #[error("redis failed: {0}")]
    Failed(String),
}

/// A shared limiter on one Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    connection: ConnectionManager,
    script: redis::Script,
    principal: (u64, u32),
    connector: (u64, u32),
    timeout: Duration,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

fn micros(quota: &Quota) -> (u64, u32) {
    (u64::try_from(quota.rate.emission_interval().as_micros()).unwrap_or(u64::MAX).max(1), quota.burst.get())
}

impl RedisLimiter {
    /// A limiter on `url`; connects lazily and reconnects by itself (the connection manager).
    pub fn new(
        url: &str,
        per_principal: &Quota,
        per_connector: &Quota,
        timeout: Duration,
    ) -> Result<Self, RedisLimitError> {
        let client = redis::Client::open(url).map_err(|e| RedisLimitError::Failed(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisLimitError::Failed(e.to_string()))?;
        Ok(Self {
            connection,
            script: redis::Script::new(GCRA),
            principal: micros(per_principal),
            connector: micros(per_connector),
            timeout,
        })
    }

    /// Decides one write within the timeout.
    pub async fn decide(&self, principal: &str, connector: &str) -> Result<Verdict, RedisLimitError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(format!("cgw:rl:p:{principal}"));
        invocation
            .key(format!("cgw:rl:c:{connector}"))
            .arg(self.principal.0)
            .arg(self.principal.1)
            .arg(self.connector.0)
            .arg(self.connector.1);
        let call = invocation.invoke_async::<Vec<i64>>(&mut connection);
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| RedisLimitError::Timeout(self.timeout))?
            .map_err(|e| RedisLimitError::Failed(e.to_string()))?;
        let count = |v: Option<&i64>| u32::try_from(v.copied().unwrap_or(0).max(0)).unwrap_or(u32::MAX);
        Ok(match answer.as_slice() {
            [1, p, c] => Verdict::Allowed { principal_remaining: count(Some(p)), connector_remaining: count(Some(c)) },
            [0, which, retry] => Verdict::Limited {
                quota: if *which == 1 { QuotaName::PerPrincipal } else { QuotaName::PerConnector },
                retry_after: Duration::from_micros(u64::try_from(*retry).unwrap_or(0)),
            },
            other => return Err(RedisLimitError::Failed(format!("unexpected script answer {other:?}"))),
        })
    }
}
