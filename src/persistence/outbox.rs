//! The on-share outbox: a Redis stream of accepted protocol shares read through one
//! consumer group, so each entry is worked on by one gateway process at a time, survives a
//! restart (its pending entry is claimed by another consumer once idle) and is deleted
//! when its callback is delivered or given up. It is bounded: at its limit a new share is
//! refused (never an older one trimmed: each entry was acknowledged 202 to the switch).
use std::collections::HashMap;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use super::keys::{self, OUTBOX, OUTBOX_GROUP};
use super::{Store, StoreError};

/// One accepted share, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stream id (`<ms>-<seq>`): its time part is when the share was accepted.
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl Entry {
    pub fn get(&self, k: &str) -> &str {
        self.fields.get(k).map_or("", String::as_str)
    }

    /// Milliseconds since the epoch at which the share was accepted (Redis' clock).
    pub fn accepted_ms(&self) -> i64 {
        self.id.split('-').next().and_then(|t| t.parse().ok()).unwrap_or(0)
    }

    fn of(s: StreamId) -> Entry {
        let fields = s
            .map
            .iter()
            .filter_map(|(k, v)| redis::from_redis_value::<String>(v.clone()).ok().map(|v| (k.clone(), v)))
            .collect();
        Entry { id: s.id, fields }
    }
}

/// KEYS: stream. ARGV: group, id, consumer.
const TOUCH: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
";

/// KEYS: stream, the share's seen mark. ARGV: limit, mark ttl seconds (0: no mark), then
/// field, value, ... Appends unless the stream already holds `limit` entries (given-up and
/// delivered entries are deleted, so XLEN counts live ones); nil when full. One script, so
/// concurrent shares on many nodes cannot overshoot the bound, and the seen mark (see
/// [`keys::share_seen`]) lands with the entry or not at all, in the same round trip.
const ADD_BOUNDED: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
if ARGV[2] ~= '0' then redis.call('SET', KEYS[2], '1', 'EX', ARGV[2]) end
return id
";

impl Store {
    /// Creates the consumer group (from the stream's start, so nothing accepted before the
    /// first gateway started is skipped). Idempotent.
    pub async fn outbox_init(&self) -> Result<(), StoreError> {
        let mut c = self.connection();
        let r: redis::RedisResult<()> = c.xgroup_create_mkstream(OUTBOX, OUTBOX_GROUP, "0").await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(super::store::classify(&e)),
        }
    }

    /// Appends an accepted share; durable (AOF) before the share is answered 202. `None`
    /// when the outbox already holds `limit` entries: nothing was written. With `seen_for`,
    /// the share's request id is also marked accepted for that long ([`Self::share_seen`]).
    pub async fn outbox_add(
        &self,
        request_id: &str,
        fields: &[(&str, &str)],
        limit: u64,
        seen_for: Option<Duration>,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.connection();
        let script = redis::Script::new(ADD_BOUNDED);
        let seen = keys::share_seen(request_id);
        let fut = async move {
            let mut inv = script.key(OUTBOX);
            inv.key(seen).arg(limit).arg(seen_for.map_or(0, |d| d.as_secs().max(1)));
            for (k, v) in fields {
                inv.arg(*k).arg(*v);
            }
            inv.invoke_async::<Option<String>>(&mut c).await
        };
        self.call_pub(fut).await
    }

    /// Whether a share with `request_id` was accepted (within the mark's lifetime).
    pub async fn share_seen(&self, request_id: &str) -> Result<bool, StoreError> {
        let mut c = self.connection();
        let key = keys::share_seen(request_id);
        let fut = async move { c.exists::<_, bool>(key).await };
        self.call_pub(fut).await
    }

    /// New entries for this consumer, waiting up to `block` for one.
    pub async fn outbox_read(&self, consumer: &str, count: usize, block: Duration) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.connection();
        let opts =
            StreamReadOptions::default().group(OUTBOX_GROUP, consumer).count(count).block(block.as_millis() as usize);
        let fut = async move { c.xread_options::<_, _, Option<StreamReadReply>>(&[OUTBOX], &[">"], &opts).await };
        let reply = tokio::time::timeout(block + self.timeout(), fut).await.map_err(|_| StoreError::Unavailable)?;
        let reply = reply.map_err(|e| super::store::classify(&e))?;
        Ok(reply.map_or_else(Vec::new, |r| r.keys.into_iter().flat_map(|k| k.ids).map(Entry::of).collect()))
    }

    /// Takes over entries another consumer left pending for longer than `idle` (it died or
    /// stalled), up to `count`.
    pub async fn outbox_claim_idle(
        &self,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.connection();
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(OUTBOX).arg(OUTBOX_GROUP).arg(consumer).arg(idle.as_millis() as u64).arg("0").arg("COUNT").arg(count);
        let reply: StreamAutoClaimReply = self.call_pub(async move { cmd.query_async(&mut c).await }).await?;
        Ok(reply.claimed.into_iter().map(Entry::of).collect())
    }

    /// Resets an entry's idle time if it is still pending under this consumer (atomically):
    /// called before each delivery attempt, so no other process claims an entry this one is
    /// still working on. False when another consumer took it over (or it is gone): this
    /// process must then stop working on it.
    pub async fn outbox_touch(&self, consumer: &str, id: &str) -> Result<bool, StoreError> {
        let mut c = self.connection();
        let script = redis::Script::new(TOUCH);
        let fut = async move {
            let mut inv = script.key(OUTBOX);
            inv.arg(OUTBOX_GROUP).arg(id).arg(consumer);
            inv.invoke_async::<i64>(&mut c).await
        };
        let r = self.call_pub(fut).await?;
        Ok(r == 1)
    }

    /// Done with an entry: acknowledged and deleted (it holds patient data).
    pub async fn outbox_done(&self, id: &str) -> Result<(), StoreError> {
        let mut c = self.connection();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(OUTBOX).arg(OUTBOX_GROUP).arg(id).ignore();
        pipe.cmd("XDEL").arg(OUTBOX).arg(id).ignore();
        self.call_pub(async move { pipe.query_async::<()>(&mut c).await }).await
    }

    /// Entries accepted and not yet done (all consumers).
    pub async fn outbox_len(&self) -> Result<u64, StoreError> {
        let mut c = self.connection();
        self.call_pub(async move { c.xlen::<_, u64>(OUTBOX).await }).await
    }
}
