//! The Redis handle: a self-reconnecting multiplexed connection with a deadline on every
//! call, the activation script that takes a facility's fencing epoch, and registry reads.
use std::future::Future;
use std::time::Duration;

use jiff::civil::Date;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time or refused the connection.
    #[error("the token store is unavailable")]
    Unavailable,
    /// Another activation owns the facility now (its epoch is newer).
    #[error("the facility is owned by a newer activation")]
    Fenced,
    /// An earlier write of this activation was not applied: the owner's view is stale.
    #[error("an earlier write of this activation was not applied")]
    Gap,
}

/// Takes ownership of a facility: refuses unknown facilities without writing anything,
/// otherwise bumps the epoch, resets the write sequence and returns the registry record.
const ACTIVATE: &str = r"
local info = redis.call('GET', KEYS[1])
if not info then return false end
local epoch = redis.call('HINCRBY', KEYS[2], 'e', 1)
redis.call('HSET', KEYS[2], 'w', 0)
return {epoch, info}
";

/// Applies one write of a facility's owner, all or nothing: the epoch must still be ours
/// and the previous write of this activation must have been applied (no gaps).
/// KEYS: fence, day tokens, counts, then one leaderboard key per leaderboard increment.
/// ARGV: epoch, prev seq, ttl seconds, n counts, count fields..., leaderboard ttl, then per
/// leaderboard key (member, increment, daily 0/1), then token field/value pairs.
/// Leaderboards move in the same atomic step as the tokens they count, so they are exact.
/// An empty write only checks (a read barrier).
pub const WRITE: &str = r"
local f = redis.call('HMGET', KEYS[1], 'e', 'w')
if f[1] ~= ARGV[1] then return redis.error_reply('FENCED epoch moved') end
if f[2] ~= ARGV[2] then return redis.error_reply('GAP write sequence') end
local nc = tonumber(ARGV[4])
for i = 1, nc do redis.call('HINCRBY', KEYS[3], ARGV[4 + i], 1) end
local p = 5 + nc
local lbttl = ARGV[p]
p = p + 1
for i = 4, #KEYS do
  local score = redis.call('ZINCRBY', KEYS[i], ARGV[p + 1], ARGV[p])
  -- Daily boards expire after the retention. A key is born with its first member, so
  -- setting the deadline when a member is new (score == increment) is enough.
  if ARGV[p + 2] == '1' and tonumber(score) == tonumber(ARGV[p + 1]) then
    redis.call('EXPIRE', KEYS[i], lbttl, 'NX')
  end
  p = p + 3
end
if p <= #ARGV then
  redis.call('HSET', KEYS[2], unpack(ARGV, p, #ARGV))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
-- A write with nothing in it is a read barrier: checked, but it changes nothing.
if nc > 0 or p <= #ARGV then
  redis.call('HSET', KEYS[1], 'w', tostring(tonumber(ARGV[2]) + 1))
end
return 1
";

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    timeout: Duration,
    activate: Script,
}

pub(crate) fn classify(e: &redis::RedisError) -> StoreError {
    match e.code() {
        Some("FENCED") => StoreError::Fenced,
        Some("GAP") => StoreError::Gap,
        _ => {
            tracing::warn!(kind = ?e.kind(), "redis call failed");
            StoreError::Unavailable
        }
    }
}

impl Store {
    /// Creates the handle without connecting: the gateway starts (not ready) while Redis
    /// is down and recovers by itself when it returns.
    pub fn open(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.min(Duration::from_secs(1))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(Self { conn, timeout, activate: Script::new(ACTIVATE) })
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// [`Self::call`] for the other persistence modules.
    pub(crate) async fn call_pub<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        self.call(fut).await
    }

    async fn call<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(StoreError::Unavailable),
        }
    }

    pub async fn ping(&self) -> bool {
        let mut c = self.conn.clone();
        self.call(async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await.is_ok()
    }

    /// Takes a new fencing epoch for the facility. `None` when it is not registered.
    pub async fn activate(&self, facility: &str) -> Result<Option<(u64, String)>, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.activate.key(keys::info(facility));
        inv.key(keys::fence(facility));
        self.call(async move { inv.invoke_async::<Option<(u64, String)>>(&mut c).await }).await
    }

    /// All stored tokens of a facility's day, as (field, record).
    pub async fn load_day(&self, facility: &str, day: Date) -> Result<Vec<(String, String)>, StoreError> {
        let mut c = self.conn.clone();
        let key = keys::day_tokens(facility, day);
        self.call(async move { c.hgetall::<_, Vec<(String, String)>>(key).await }).await
    }

    pub async fn load_token(&self, facility: &str, day: Date, field: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        let key = keys::day_tokens(facility, day);
        self.call(async move { c.hget::<_, _, Option<String>>(key, field).await }).await
    }

    pub async fn get_info(&self, facility: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { c.get::<_, Option<String>>(keys::info(facility)).await }).await
    }

    /// Stores registry records in pipelined chunks; returns how many were new.
    pub async fn put_infos(&self, items: &[(String, String)]) -> Result<usize, StoreError> {
        let mut created = 0;
        for chunk in items.chunks(1000) {
            let mut pipe = redis::pipe();
            for (id, json) in chunk {
                pipe.cmd("SET").arg(keys::info(id)).arg(json).ignore();
                pipe.cmd("SADD").arg(keys::FACILITY_SET).arg(id);
            }
            let mut c = self.conn.clone();
            let added: Vec<i64> = self.call(async move { pipe.query_async(&mut c).await }).await?;
            created += added.iter().filter(|a| **a == 1).count();
        }
        Ok(created)
    }

    pub async fn put_staff_key(&self, facility: &str, key_id: &str, hash: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { c.hset::<_, _, _, ()>(keys::staff_keys(facility), key_id, hash).await }).await
    }

    pub async fn staff_key_hash(&self, facility: &str, key_id: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { c.hget::<_, _, Option<String>>(keys::staff_keys(facility), key_id).await }).await
    }

    pub async fn revoke_staff_key(&self, facility: &str, key_id: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: i64 = self.call(async move { c.hdel(keys::staff_keys(facility), key_id).await }).await?;
        Ok(n > 0)
    }

    /// The top `n` members of a sorted set, highest first (all of them when `n` is 0).
    pub async fn top(&self, key: &str, n: usize) -> Result<Vec<(String, f64)>, StoreError> {
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key).arg(0).arg(n as i64 - 1).arg("REV").arg("WITHSCORES");
        self.call(async move { cmd.query_async::<Vec<(String, f64)>>(&mut c).await }).await
    }

    /// Members of several sorted sets with their scores summed (ZUNION), unordered.
    pub async fn union(&self, keys: &[String]) -> Result<Vec<(String, f64)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd("ZUNION");
        cmd.arg(keys.len()).arg(keys).arg("WITHSCORES");
        self.call(async move { cmd.query_async::<Vec<(String, f64)>>(&mut c).await }).await
    }

    /// Registry records of several facilities, in order (`None` for unknown ids).
    pub async fn get_infos(&self, ids: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("GET").arg(keys::info(id));
        }
        let mut c = self.conn.clone();
        self.call(async move { pipe.query_async::<Vec<Option<String>>>(&mut c).await }).await
    }
}
