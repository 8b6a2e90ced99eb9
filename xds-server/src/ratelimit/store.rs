//! Global counters in Redis: one Lua script charges every descriptor of a request
//! atomically, with the same arithmetic as the filter's local counters
//! (`meshgate_core::quota::arithmetic`).
//!
//! - **Time** is Redis's own (`TIME`, inside the script), so every meshgate sharing one Redis
//!   agrees on window boundaries and refills.
//! - **Units**: microseconds and micro-tokens. Lua numbers are doubles: every intermediate
//!   value stays below 2^53 (the refill `elapsed × rate / period` is split into whole
//!   periods and the rest), so the arithmetic is exact, like the core's integer version. At
//!   microsecond resolution the core's formulas give the same results (refill =
//!   `elapsed_us × per_period / period_secs` micro-tokens; window start = `now − now mod
//!   period`).
//! - **All or nothing**: a request is admitted only if every rule admits it, and then every
//!   rule is charged; when one refuses, none is charged (token buckets still record their
//!   refill, exactly as [`meshgate_core::quota::Limit::take`] does on a refusal).
//! - **Keys**: `meshgate:rl:<rule>:<w|b><period_secs>:<counter key>`, a hash
//!   `{level, at}` that expires once it would read as "unused" anyway (a full bucket, a past
//!   window), so idle keys do not accumulate. The limit's kind and period are part of the
//!   key: editing `60/m` to `100/m` keeps counting, switching `quota` to `rate` starts afresh.

use meshgate_core::quota::Limit;

use super::redis::{RedisError, RedisPool, Reply};

/// The script. `KEYS[i]`: counter keys. `ARGV[1]`: now in µs, or "" for Redis `TIME`.
/// Then five values per key: kind (`w`/`b`), count (window limit / bucket refill per period),
/// period in seconds, burst (bucket) and hits. Returns `{admitted, {ok, remaining, reset}...}`
/// flattened: `admitted` then three integers per key.
pub const SCRIPT: &str = r#"
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local TOKEN = 1000000
local admitted = 1
local results = {}
local charged = {}
local uncharged = {}
local hits_of = {}
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 5
  local kind = ARGV[base + 1]
  local count = tonumber(ARGV[base + 2])
  local period = tonumber(ARGV[base + 3])
  local burst = tonumber(ARGV[base + 4])
  local hits = tonumber(ARGV[base + 5])
  hits_of[i] = hits
  local period_us = period * TOKEN
  local stored = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = tonumber(stored[1])
  local at = tonumber(stored[2])
  if kind == 'w' then
    local start = now - (now % period_us)
    local used = 0
    if level ~= nil and at == start then used = level end
    local reset = math.ceil((start + period_us - now) / TOKEN)
    if reset < 1 then reset = 1 end
    local ttl_ms = math.ceil((start + period_us - now) / 1000) + 1000
    if used + hits <= count then
      results[i] = {1, count - used - hits, reset}
      charged[i] = {used + hits, start, ttl_ms}
    else
      admitted = 0
      results[i] = {0, 0, reset}
    end
  else
    local capacity = burst * TOKEN
    if level == nil or at == nil then
      level = capacity
      at = now
    end
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    -- floor(elapsed * count / period), split so no product reaches 2^53.
    local whole = math.floor(elapsed / period) * count
    if whole >= capacity then
      level = capacity
    else
      level = math.min(capacity, level + whole + math.floor((elapsed % period) * count / period))
    end
    if now > at then at = now end
    local need = hits * TOKEN
    -- Microseconds until `missing` micro-tokens have refilled.
    local function wait_us(missing) return math.ceil(missing * period / count) end
    if level >= need then
      local left = level - need
      local full = wait_us(capacity - left)
      results[i] = {1, math.floor(left / TOKEN), math.max(1, math.ceil(full / TOKEN))}
      charged[i] = {left, at, math.ceil(full / 1000) + 1000}
    else
      admitted = 0
      local retry = math.ceil(wait_us(need - level) / TOKEN)
      if retry < 1 then retry = 1 end
      results[i] = {0, 0, retry}
    end
    uncharged[i] = {level, at, math.ceil(wait_us(capacity - level) / 1000) + 1000}
  end
end
local out = {admitted}
for i = 1, #KEYS do
  local write
  if admitted == 1 then write = charged[i] else write = uncharged[i] end
  if write ~= nil then
    redis.call('HSET', KEYS[i], 'level', write[1], 'at', write[2])
    redis.call('PEXPIRE', KEYS[i], write[3])
  end
  if admitted == 0 and results[i][1] == 1 then
    -- Admitted by this rule but not charged: the request as a whole was refused.
    results[i][2] = results[i][2] + hits_of[i]
  end
  out[#out + 1] = results[i][1]
  out[#out + 1] = results[i][2]
  out[#out + 1] = results[i][3]
end
return out
"#;

/// One counter to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The rule's name (part of the Redis key).
    pub rule: String,
    pub limit: Limit,
    /// The descriptor value (the filter's `counter_key`).
    pub key: String,
    /// Events to charge (≥ 1).
    pub hits: u64,
}

/// What one counter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub admitted: bool,
    /// Events still available (after this request when it was admitted).
    pub remaining: u64,
    /// Refused: seconds until a retry can succeed. Admitted: seconds until the window resets
    /// (window) or the bucket is full again (bucket). Always ≥ 1.
    pub reset_secs: u64,
}

/// The outcome of charging a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// True when every counter admitted (and all were charged).
    pub admitted: bool,
    /// One per [`Charge`], in order.
    pub verdicts: Vec<Verdict>,
}

/// Why counters could not be charged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("redis answered the rate-limit script with {0}")]
    Script(String),
}

/// The Redis key of one counter.
pub fn redis_key(charge: &Charge) -> String {
    let (kind, period) = match charge.limit {
        Limit::Window { period_secs, .. } => ('w', period_secs),
        Limit::Bucket { period_secs, .. } => ('b', period_secs),
    };
    format!("meshgate:rl:{}:{kind}{period}:{}", charge.rule, charge.key)
}

/// The counters of one Redis, with the script loaded on first use.
#[derive(Debug)]
pub struct Store {
    pool: RedisPool,
    sha: tokio::sync::RwLock<Option<String>>,
}

impl Store {
    pub fn new(pool: RedisPool) -> Store {
        Store { pool, sha: tokio::sync::RwLock::new(None) }
    }

    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// Charges every counter, all or nothing, at Redis's current time.
    pub async fn charge(&self, charges: &[Charge]) -> Result<Outcome, StoreError> {
        self.charge_at(charges, None).await
    }

    /// [`Store::charge`] at an explicit time in µs (tests compare it with the core).
    ///
    /// The whole decision, not just each Redis call, is bounded by the pool's timeout: after
    /// a Redis restart it takes three calls (`EVALSHA` → `NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`),
    /// each on a new connection, and the answer must still come before Envoy's own timeout.
    pub async fn charge_at(&self, charges: &[Charge], now_us: Option<u64>) -> Result<Outcome, StoreError> {
        let timeout = self.pool.timeout();
        tokio::time::timeout(timeout, self.charge_within(charges, now_us)).await.unwrap_or_else(|_| {
            Err(StoreError::Redis(RedisError::Timeout {
                address: self.pool.address().to_string(),
                millis: timeout.as_millis(),
            }))
        })
    }

    async fn charge_within(&self, charges: &[Charge], now_us: Option<u64>) -> Result<Outcome, StoreError> {
        if charges.is_empty() {
            return Ok(Outcome { admitted: true, verdicts: Vec::new() });
        }
        let keys: Vec<String> = charges.iter().map(redis_key).collect();
        let mut argv: Vec<String> = vec![now_us.map(|n| n.to_string()).unwrap_or_default()];
        for charge in charges {
            let (kind, count, period, burst) = match charge.limit {
                Limit::Window { limit, period_secs } => ("w", limit, period_secs, 0),
                Limit::Bucket { per_period, period_secs, burst } => ("b", per_period, period_secs, burst.max(1)),
            };
            argv.extend([
                kind.to_string(),
                count.to_string(),
                period.max(1).to_string(),
                burst.to_string(),
                charge.hits.max(1).to_string(),
            ]);
        }
        let numkeys = keys.len().to_string();
        let reply = self.eval(&numkeys, &keys, &argv).await?;
        parse_outcome(reply, charges.len())
    }

    async fn eval(&self, numkeys: &str, keys: &[String], argv: &[String]) -> Result<Reply, StoreError> {
        for _ in 0..2 {
            // Bound first: a guard in the match scrutinee would be held into `load`.
            let known = self.sha.read().await.clone();
            let sha = match known {
                Some(sha) => sha,
                None => self.load().await?,
            };
            let mut args: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), numkeys.as_bytes()];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            args.extend(argv.iter().map(|a| a.as_bytes()));
            match self.pool.call(&args).await? {
                // Redis restarted (or SCRIPT FLUSH): load it again and retry once.
                Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                    *self.sha.write().await = None;
                }
                Reply::Error(e) => return Err(StoreError::Script(e)),
                reply => return Ok(reply),
            }
        }
        Err(StoreError::Script("NOSCRIPT after loading the script".to_string()))
    }

    async fn load(&self) -> Result<String, StoreError> {
        match self.pool.call(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]).await? {
            Reply::Bulk(Some(sha)) => {
                let sha = String::from_utf8_lossy(&sha).into_owned();
                *self.sha.write().await = Some(sha.clone());
                Ok(sha)
            }
            Reply::Error(e) => Err(StoreError::Script(e)),
            other => Err(StoreError::Script(format!("{other:?}"))),
        }
    }
}

fn parse_outcome(reply: Reply, n: usize) -> Result<Outcome, StoreError> {
    let bad = |what: &str| StoreError::Script(format!("an unexpected reply ({what})"));
    let Reply::Array(Some(items)) = reply else {
        return Err(bad("not an array"));
    };
    let numbers: Vec<i64> = items
        .into_iter()
        .map(|item| match item {
            Reply::Integer(n) => Ok(n),
            _ => Err(bad("not an integer")),
        })
        .collect::<Result<_, _>>()?;
    if numbers.len() != 1 + 3 * n {
        return Err(bad("wrong length"));
    }
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let verdicts = numbers[1..]
        .chunks_exact(3)
        .map(|c| Verdict { admitted: c[0] == 1, remaining: unsigned(c[1]), reset_secs: unsigned(c[2]).max(1) })
        .collect();
    Ok(Outcome { admitted: numbers[0] == 1, verdicts })
}
