//! The Redis handle: a self-reconnecting connection (single Redis or cluster, see [`super::conn`])
//! with a deadline on every call, the activation script that takes a facility's fencing
//! epoch, and registry reads.
use std::future::Future;
use std::time::Duration;

use jiff::civil::Date;
use redis::{AsyncCommands, Script};

use super::conn::{Conn, Target};
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

/// What a facility's owner proves it still owns the facility with: the activation's epoch
/// (the fence hash's counter `e`) and a random nonce of that activation (`n`). WRITE
/// compares both, as a whole. The counter alone can step back (an AOF that lost its last
/// second, an asynchronous failover) and hand a new activation the epoch a stale owner still
/// holds; the nonce never repeats (64 random bits per activation), so such an owner stays
/// fenced off. The epoch stays a number for the leaderboard marks, which keep the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub epoch: u64,
    /// 16 hex digits.
    pub nonce: String,
}

impl Fence {
    /// A fresh nonce for an activation that is about to take the next epoch.
    fn nonce() -> String {
        format!("{:016x}", rand::random::<u64>())
    }
}

/// Takes ownership of a facility: refuses unknown facilities without writing anything,
/// otherwise bumps the epoch, records the activation's nonce and owner node, resets the write
/// sequence and returns the epoch and the registry record.
/// KEYS: info, fence, and on a single Redis the leaderboard dirty hash.
/// ARGV: facility, nonce, owner node id (`''` when leases are off: the field is removed),
/// the owner it may take the facility from (`*`: any; otherwise only from itself, from no
/// owner, or from this node id, which the caller found without a live lease).
/// A facility owned by another node is left alone: the answer is `{0, <that node id>}`
/// (epochs start at 1), and the caller checks that node's lease (another slot on a
/// cluster) before it asks again naming it. A race between the check and the second call
/// is harmless: fencing still keeps two owners from both writing.
/// With the dirty hash it also marks the facility there with the new epoch, keeping the
/// newest (the rule of `lbcounts::MARK`), in the same atomic step: the mark then always
/// lands before the owner's first write, without a round trip of its own. On a cluster the
/// dirty hash lives in another slot, so the caller marks it separately.
const ACTIVATE: &str = r"
local info = redis.call('GET', KEYS[1])
if not info then return false end
if ARGV[4] ~= '*' then
  local o = redis.call('HGET', KEYS[2], 'o')
  if o and o ~= ARGV[3] and o ~= ARGV[4] then return {0, o} end
end
local epoch = redis.call('HINCRBY', KEYS[2], 'e', 1)
if ARGV[3] == '' then
  redis.call('HSET', KEYS[2], 'n', ARGV[2], 'w', 0)
  redis.call('HDEL', KEYS[2], 'o')
else
  redis.call('HSET', KEYS[2], 'n', ARGV[2], 'w', 0, 'o', ARGV[3])
end
if KEYS[3] then
  local cur = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if epoch > cur then redis.call('HSET', KEYS[3], ARGV[1], epoch) end
end
return {epoch, info}
";

/// Applies a batch of writes of facility owners, each all or nothing: a write's fence
/// (epoch and nonce) must still be its facility's and the previous write of its activation
/// must have been applied (no gaps). One call carries several writes (of one hash slot on
/// a cluster), so Redis pays the script call once per batch instead of once per write.
/// KEYS: per write, its facility's fence, day tokens and leaderboard counts (one slot).
/// ARGV: per write, in the order of its keys: epoch, nonce, prev seq, ttl seconds (0: keep
/// the day hash's expiry), release 0/1, n kind counts, n token fields, the kind count
/// fields, then the token field/value pairs.
/// The leaderboard counts (`<date>|<kind>`, cumulative) move in the same atomic step as the
/// tokens they count; the applier ([`crate::leaderboard::applier`]) carries them into the
/// national boards, so this script never leaves the slot.
/// An empty write only checks (a read barrier); with `release` it also records that this
/// owner has stopped (`r` = `<epoch>:<nonce>`), which lets the applier forget the facility.
///
/// Returns one answer per write, in order: a refused write is answered by value (`FENCED`:
/// the fence moved; `GAP`: an earlier write of its activation is missing) and changes
/// nothing, and the other writes of the call still apply. The fence hash is read once per
/// facility of the call and its write sequence `w` written once at the end: nothing else
/// runs inside a script, so the writes after the first see what the earlier ones did.
///
/// Exactly once under resend: every write that changes something advances `w` from its
/// prev seq, and no two such writes of an activation share a prev seq. So under our fence
/// a write whose prev seq is behind `w` was applied already: it is a copy the client sent
/// again after losing the reply (the cluster client resends a dropped pipeline). It is
/// answered `AGAIN` and changes nothing; GAP means only that an earlier write is missing
/// (this one was not applied). A barrier behind `w` is a resent copy too (writes of one
/// owner reach Redis in order), and checks nothing new.
///
/// An applied write is answered with the cumulative count after each of its kind-count
/// increments, so the applier can apply its counts without reading them back. A write that
/// follows no write of its activation (prev seq 0) is answered with every cumulative count
/// of the facility instead, as (field, count) pairs: an owner before it (crashed, say) may
/// have counted other days or kinds that no board has yet, and the fence makes this read
/// exact (no older owner can write any more).
pub const WRITE: &str = r"
local fences, order, out = {}, {}, {}
local a, k = 1, 0
while a <= #ARGV do
  local fk, dk, ck = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  k = k + 3
  local prev, nk, nf = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local c = a + 7
  local p = c + nk
  local e, n, ttl, rel = ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[a + 4]
  a = p + 2 * nf
  local f = fences[fk]
  if not f then
    local v = redis.call('HMGET', fk, 'e', 'n', 'w')
    local w = tonumber(v[3]) or 0
    f = {e = v[1], n = v[2], w = w, w0 = w}
    fences[fk] = f
    order[#order + 1] = fk
  end
  if f.e ~= e or f.n ~= n then
    out[#out + 1] = 'FENCED'
  elseif prev < f.w then
    out[#out + 1] = 'AGAIN'
  elseif prev > f.w then
    out[#out + 1] = 'GAP'
  else
    local counted = {}
    for i = 1, nk do counted[i] = redis.call('HINCRBY', ck, ARGV[c + i - 1], 1) end
    if nf > 0 then
      redis.call('HSET', dk, unpack(ARGV, p, a - 1))
      if ttl ~= '0' then redis.call('EXPIRE', dk, ttl) end
    end
    -- A write with nothing in it is a read barrier: checked, but it changes nothing.
    if nk > 0 or nf > 0 then f.w = prev + 1 end
    if rel == '1' then redis.call('HSET', fk, 'r', e .. ':' .. n) end
    if prev == 0 then out[#out + 1] = redis.call('HGETALL', ck) else out[#out + 1] = counted end
  end
end
for _, fk in ipairs(order) do
  local f = fences[fk]
  if f.w ~= f.w0 then redis.call('HSET', fk, 'w', f.w) end
end
return out
";

#[derive(Clone)]
pub struct Store {
    conn: Conn,
    timeout: Duration,
}

/// Who an activation claims the facility for, and from whom it may take it.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// No leases (a single node, or leases off): take it whoever had it; no owner recorded.
    Anonymous,
    /// Take it for node `me` from whoever had it.
    TakeOver { me: &'a str },
    /// Take it for node `me` only if no other node owns it, or `from` (a node found without
    /// a live lease) does.
    IfFree { me: &'a str, from: Option<&'a str> },
}

/// How an activation ended.
#[derive(Debug)]
pub enum Activated {
    Taken(Activation),
    /// The facility is not registered (nothing was written).
    Unknown,
    /// Node `.0` owns the facility (nothing was written); see [`Claim::IfFree`].
    OwnedBy(String),
}

/// What an activation read: the new fence, the registry record, and the stored tokens of
/// the day it was asked for.
#[derive(Debug)]
pub struct Activation {
    pub fence: Fence,
    pub info: String,
    /// (field, record) of every stored token of the requested day.
    pub day: Vec<(String, String)>,
    /// Whether the leaderboard dirty mark went with it (single Redis); if not, the caller
    /// marks before the first write ([`Store::lb_mark`]).
    pub marked: bool,
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

/// One reply as `T`; a reply of another shape counts as a failed call.
pub(crate) fn decode<T: redis::FromRedisValue>(v: redis::Value) -> Result<T, StoreError> {
    redis::from_redis_value(v).map_err(|e| classify(&e.into()))
}

/// [`decode`] of one command's own result (see [`Store::batch_each`]).
fn parse<T: redis::FromRedisValue>(r: redis::RedisResult<redis::Value>) -> Result<T, StoreError> {
    r.map_err(|e| classify(&e)).and_then(decode)
}

impl Store {
    /// Creates the handle without connecting: the gateway starts (not ready) while Redis
    /// is down and recovers by itself when it returns.
    pub fn open(target: &Target, timeout: Duration) -> Result<Self, redis::RedisError> {
        let conn = Conn::open(target, timeout)?;
        Ok(Self { conn, timeout })
    }

    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the client may send a write again by itself after losing its reply (the
    /// cluster client resends a dropped pipeline; see [`WRITE`] for what that means).
    pub fn resends_writes(&self) -> bool {
        self.conn.is_cluster()
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
        self.call(async move { redis::cmd("PING").query_async::<redis::Value>(&mut c).await }).await.is_ok()
    }

    /// Redis's `slowlog-log-slower-than` (microseconds; negative means SLOWLOG is off).
    /// `None` when Redis does not say (CONFIG renamed away, as managed services do).
    pub async fn slowlog_threshold(&self) -> Option<i64> {
        let mut c = self.conn.clone();
        let reply = self
            .call(async move {
                redis::cmd("CONFIG").arg("GET").arg("slowlog-log-slower-than").query_async::<Vec<String>>(&mut c).await
            })
            .await
            .ok()?;
        reply.get(1)?.parse().ok()
    }

    /// Takes a new fencing epoch for the facility and reads the tokens of `day` (the caller's
    /// guess of its service day, before the registry record tells the timezone), in one
    /// round trip: the script and the HGETALL go in one pipeline, so Redis runs the read
    /// right after the epoch moved, when no older owner can write any more. `claim` says
    /// whose it becomes and from whom it may be taken (see [`ACTIVATE`]).
    pub async fn activate(&self, facility: &str, day: Date, claim: Claim<'_>) -> Result<Activated, StoreError> {
        let marked = !self.conn.is_cluster();
        static SHA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| Script::new(ACTIVATE).get_hash().into());
        let sha = &*SHA;
        let nonce = Fence::nonce();
        let (me, from) = match claim {
            Claim::Anonymous => ("", "*"),
            Claim::TakeOver { me } => (me, "*"),
            Claim::IfFree { me, from } => (me, from.unwrap_or("")),
        };
        let build = || {
            let mut script = redis::cmd("EVALSHA");
            script.arg(sha).arg(if marked { 3 } else { 2 }).arg(keys::info(facility)).arg(keys::fence(facility));
            if marked {
                script.arg(keys::LB_DIRTY);
            }
            script.arg(facility).arg(&nonce).arg(me).arg(from);
            let mut read = redis::cmd("HGETALL");
            read.arg(keys::day_tokens(facility, day));
            // Both keys carry the facility's hash tag: one pipeline on a cluster too.
            vec![(keys::info(facility), script), (keys::day_tokens(facility, day), read)]
        };
        let replies = self.batch_loading(ACTIVATE, build).await?;
        let mut replies = replies.into_iter();
        let (Some(taken), Some(read)) = (replies.next(), replies.next()) else {
            return Err(StoreError::Unavailable);
        };
        let taken: Option<(u64, String)> = parse(taken)?;
        let day: Vec<(String, String)> = parse(read)?;
        Ok(match taken {
            None => Activated::Unknown,
            Some((0, owner)) => Activated::OwnedBy(owner),
            Some((epoch, info)) => Activated::Taken(Activation { fence: Fence { epoch, nonce }, info, day, marked }),
        })
    }

    /// The node the facility's fence names as its owner (with leases on).
    pub async fn fence_owner(&self, facility: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { c.hget::<_, _, Option<String>>(keys::fence(facility), "o").await }).await
    }

    /// The advertised URL of a node whose lease is alive, `None` once it has expired.
    pub async fn node_url(&self, node_id: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { c.get::<_, Option<String>>(keys::node(node_id)).await }).await
    }

    /// Renews this node's lease: `url` for `lease` from now.
    pub async fn renew_lease(&self, node_id: &str, url: &str, lease: Duration) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let ms = lease.as_millis() as u64;
        self.call(async move { c.pset_ex::<_, _, ()>(keys::node(node_id), url, ms).await }).await
    }

    /// Gives this node's lease up (graceful shutdown): the others take its facilities over
    /// at once instead of after the lease.
    pub async fn drop_lease(&self, node_id: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.call(async move { c.del::<_, ()>(keys::node(node_id)).await }).await
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
            let mut cmds = Vec::with_capacity(chunk.len() * 2);
            for (id, json) in chunk {
                let mut set = redis::cmd("SET");
                set.arg(keys::info(id)).arg(json);
                cmds.push((keys::info(id), set));
                let mut add = redis::cmd("SADD");
                add.arg(keys::FACILITY_SET).arg(id);
                cmds.push((keys::FACILITY_SET.to_string(), add));
            }
            for (i, r) in self.batch(cmds).await?.into_iter().enumerate() {
                if i % 2 == 1 && decode::<i64>(r)? == 1 {
                    created += 1;
                }
            }
        }
        Ok(created)
    }

    /// Sends commands as one batch ([`Conn::batch`]: split per slot on a cluster); any
    /// failed command fails the whole call.
    pub async fn batch(&self, cmds: Vec<(String, redis::Cmd)>) -> Result<Vec<redis::Value>, StoreError> {
        let replies = self.conn.batch(cmds, self.timeout, 0).await;
        replies.into_iter().map(|r| r.map_err(|e| classify(&e))).collect()
    }

    /// [`Self::batch_each`] of commands that call the script `src` by its hash: a node that
    /// does not know it (restart, failover, new master) gets it loaded (SCRIPT LOAD goes to
    /// every master) and the batch is built and sent again. Only for batches whose second
    /// sending is harmless: a call refused with NOSCRIPT ran nothing, and every other
    /// command must be a read or idempotent.
    pub(crate) async fn batch_loading(
        &self,
        src: &'static str,
        build: impl Fn() -> Vec<(String, redis::Cmd)>,
    ) -> Result<Vec<redis::RedisResult<redis::Value>>, StoreError> {
        let replies = self.batch_each(build()).await;
        if !replies.iter().any(|r| matches!(r, Err(e) if e.code() == Some("NOSCRIPT"))) {
            return Ok(replies);
        }
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(src);
        let mut c = self.connection();
        self.call(async move { load.query_async::<redis::Value>(&mut c).await }).await?;
        Ok(self.batch_each(build()).await)
    }

    /// [`Self::batch`] keeping each command's own result.
    pub async fn batch_each(&self, cmds: Vec<(String, redis::Cmd)>) -> Vec<redis::RedisResult<redis::Value>> {
        self.conn.batch(cmds, self.timeout, 0).await
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
        let cmds = ids
            .iter()
            .map(|id| {
                let mut get = redis::cmd("GET");
                get.arg(keys::info(id));
                (keys::info(id), get)
            })
            .collect();
        self.batch(cmds).await?.into_iter().map(decode::<Option<String>>).collect()
    }
}
