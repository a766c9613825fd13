//! The Redis side of leaderboard application: single-slot scripts that mark a facility
//! dirty, snapshot its cumulative counts, add what the boards lack (idempotently), and
//! forget or prune what is fully applied. The protocol is in [`crate::leaderboard::applier`].
use std::sync::{Arc, Mutex};

use redis::{RedisWrite, ToRedisArgs, Value};

use super::keys;
use super::store::{classify, decode};
use super::{Store, StoreError};

/// KEYS: dirty hash. ARGV: facility, epoch. Keeps the newest marking epoch: an older
/// activation's mark arriving late must not lower it (see the applier's race analysis).
const MARK: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
";

/// KEYS: fence, leaderboard counts, info (one facility's slot). One atomic read: the
/// epoch, the released epoch, the registry record and every cumulative count. The owner
/// that released recorded its whole fence (`<epoch>:<nonce>`); the released epoch is the
/// current epoch only if that is the current owner's fence, `0` otherwise, so an epoch
/// number that repeated after data loss never passes for a release.
const SNAPSHOT: &str = r"
local f = redis.call('HMGET', KEYS[1], 'e', 'n', 'r')
local info = redis.call('GET', KEYS[3]) or ''
local released = '0'
if f[1] and f[2] and f[3] == f[1] .. ':' .. f[2] then released = f[1] end
return {f[1] or '0', released, info, redis.call('HGETALL', KEYS[2])}
";

/// Items per APPLY call (see `lb_apply`). Larger calls cost Redis less per item (2,000
/// facilities in 200 districts, 1,260 touched per pass, on Redis alone: 55-64 us per item
/// at 4, 48-53 at 16, 50 at 32) but hold it longer per call, which showed in the scans'
/// p99 at 16 (see `lb_apply`); not changed without a latency measurement.
const APPLY_CHUNK: usize = 4;

/// KEYS: per item 15 keys: the day's applied hash, then 7 daily and 7 all-time boards
/// (kind states, kind districts, kind facilities, kind facilities of the district,
/// all-kinds facilities, kind facilities of the state, all-kinds facilities of the state).
/// ARGV: board ttl, applied ttl, then per item: applied field, cumulative count, state
/// member, district member, facility member, then (once) the state total member.
/// The state rankings also count their own total (member ARGV[#ARGV], summed per call like
/// the state and district members), which tells a reader the ranking is complete.
/// Adds `count - applied` when positive, so running it twice, late or concurrently with
/// another node never counts a token twice. Returns per item {applied before, after}.
/// The state and district rankings are shared by the call's items: their deltas are summed
/// per (board, member) first, so a call over several facilities of one district bumps its
/// rankings once (ZINCRBY is the expensive part). The facility boards are bumped directly:
/// each item has its own member there, so summing them in Lua tables only cost time (on
/// an idle Redis with boards of 40,000 facilities, three rounds: 4 items of 4 districts
/// 455/448/454 µs per call against 474/472/474 with every board summed; of one district
/// 308/303/297 against 318/309/307; the same ZINCRBY calls).
/// The applied hashes are read once per call (HMGET per day) and written once (HSET), and
/// an expiry is set only where a key may have just been created: a daily board when a
/// ZINCRBY created its member (its score is then the delta: scores only grow from 0), an
/// applied hash when one of its fields was absent. A key is created with its first member
/// or field, so each gets its expiry exactly as with an EXPIRE NX after every change,
/// which cost an EXPIRE per board and item (1.45 per scan).
const APPLY: &str = r"
local out = {}
local sums, order, daily = {}, {}, {}
local total = ARGV[#ARGV]
-- The applied hashes: fields per key, read once.
local ap, apkeys = {}, {}
local a = 3
for k = 1, #KEYS, 15 do
  local t = ap[KEYS[k]]
  if not t then
    t = {fields = {}, set = {}, new = false}
    ap[KEYS[k]] = t
    apkeys[#apkeys + 1] = KEYS[k]
  end
  t.fields[#t.fields + 1] = ARGV[a]
  a = a + 5
end
for _, key in ipairs(apkeys) do
  local t = ap[key]
  local v = redis.call('HMGET', key, unpack(t.fields))
  t.cur = {}
  for i, f in ipairs(t.fields) do
    if v[i] then t.cur[f] = tonumber(v[i]) else t.new = true end
  end
end
local function add(key, m, d, isdaily)
  local t = sums[key]
  if not t then
    t = {}
    sums[key] = t
    order[#order + 1] = key
    daily[key] = isdaily
  end
  t[m] = (t[m] or 0) + d
end
local function bump(key, d, m, isdaily)
  local score = redis.call('ZINCRBY', key, d, m)
  if isdaily and tonumber(score) == d then redis.call('EXPIRE', key, ARGV[1], 'NX') end
end
a = 3
for k = 1, #KEYS, 15 do
  local t = ap[KEYS[k]]
  local c = tonumber(ARGV[a + 1])
  local before = t.cur[ARGV[a]] or 0
  local after = before
  if c > before then
    local d = c - before
    local f = ARGV[a + 4]
    for p = k, k + 7, 7 do
      local isdaily = p == k
      for i = 1, 2 do add(KEYS[p + i], ARGV[a + 1 + i], d, isdaily) end
      for i = 3, 7 do bump(KEYS[p + i], d, f, isdaily) end
      for i = 6, 7 do add(KEYS[p + i], total, d, isdaily) end
    end
    t.cur[ARGV[a]] = c
    t.set[#t.set + 1] = ARGV[a]
    t.set[#t.set + 1] = c
    after = c
  end
  out[#out + 1] = {before, after}
  a = a + 5
end
for _, key in ipairs(order) do
  for m, d in pairs(sums[key]) do bump(key, d, m, daily[key]) end
end
for _, key in ipairs(apkeys) do
  local t = ap[key]
  if #t.set > 0 then
    redis.call('HSET', key, unpack(t.set))
    -- Days' applied hashes expire after the retention and a grace.
    if t.new then redis.call('EXPIRE', key, ARGV[2], 'NX') end
  end
end
return out
";

/// KEYS: dirty hash. ARGV: (facility, epoch) pairs. Forgets a facility only if no newer
/// activation marked it since the snapshot that proved it applied and released.
const UNMARK: &str = r"
local n = 0
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and tonumber(cur) <= tonumber(ARGV[i + 1]) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
";

/// KEYS: leaderboard counts. ARGV: (field, count) pairs. Drops a finished day's count only
/// if it still has the value that was applied.
const PRUNE: &str = r"
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
";

/// One facility's state as [`SNAPSHOT`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub epoch: u64,
    pub released: u64,
    /// Registry record JSON (empty when the facility is unknown).
    pub info: String,
    /// `<date>|<kind>` -> cumulative tokens.
    pub counts: Vec<(String, u64)>,
}

/// One (facility, day, kind) to bring up to `count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyItem {
    /// [`keys::lb_applied`] of the day, then the 14 board keys: the same for every item of
    /// a (district, day, kind), so the applier builds them once per pass and items share them.
    pub keys: Arc<[String]>,
    pub applied_field: String,
    pub count: u64,
    pub state: &'static str,
    pub district: String,
    pub facility: String,
}

/// An argument of a script call, borrowed from what it is built of (numbers are written as
/// Redis reads them): a pass's calls copy nothing before their commands do.
enum Arg<'a> {
    Str(&'a str),
    Int(i64),
    Count(u64),
}

impl ToRedisArgs for Arg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        match self {
            Arg::Str(s) => s.write_redis_args(out),
            Arg::Int(n) => n.write_redis_args(out),
            Arg::Count(n) => n.write_redis_args(out),
        }
    }
}

/// Indexes of `items` with those that share a ranking member next to each other: by day and
/// kind (`keys[1]`), state, then district. Stable, so one facility's items keep their order.
fn coalescing_order(items: &[ApplyItem]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (items[i].keys.get(1), &items[i].state, &items[i].district));
    order
}

/// The SHA1 of a script, hashed once per script and process rather than on every call
/// (the applier calls its scripts several times a second).
fn sha_of(src: &'static str) -> Arc<str> {
    /// (address, length) of a script's text -> its SHA1.
    type Shas = Vec<((usize, usize), Arc<str>)>;
    static SHAS: Mutex<Shas> = Mutex::new(Vec::new());
    // Scripts are `&'static str` constants: their address and length name them (a
    // constant used in several places may have several addresses: an entry each).
    let at = (src.as_ptr() as usize, src.len());
    let mut shas = SHAS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, sha)) = shas.iter().find(|(p, _)| *p == at) {
        return sha.clone();
    }
    let sha: Arc<str> = redis::Script::new(src).get_hash().into();
    shas.push((at, sha.clone()));
    sha
}

impl Store {
    /// Runs `src` once per call (keys, args) in one batch, split per slot on a cluster.
    /// A node that does not know the script (restart, failover, new master) gets it loaded
    /// (SCRIPT LOAD goes to every master) and the batch is sent again: these scripts are
    /// idempotent, so a second run of a call that did apply changes nothing.
    pub async fn eval_batch<K: AsRef<str> + ToRedisArgs, A: ToRedisArgs>(
        &self,
        src: &'static str,
        calls: &[(Vec<K>, Vec<A>)],
    ) -> Result<Vec<Value>, StoreError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let sha = sha_of(src);
        let replies = self
            .batch_loading(src, || {
                calls
                    .iter()
                    .map(|(keys, args)| {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(&*sha).arg(keys.len()).arg(keys).arg(args);
                        (keys[0].as_ref().to_string(), cmd)
                    })
                    .collect()
            })
            .await?;
        replies.into_iter().map(|r| r.map_err(|e| classify(&e))).collect()
    }

    /// Marks a facility as possibly ahead of the boards, before its owner's first write.
    pub async fn lb_mark(&self, facility: &str, epoch: u64) -> Result<(), StoreError> {
        self.eval_batch(MARK, &[(vec![keys::LB_DIRTY], vec![facility.to_string(), epoch.to_string()])]).await?;
        Ok(())
    }

    /// Facilities marked dirty, with their marking epoch (HSCAN, so a big set is read in pages).
    pub async fn lb_dirty(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut cmd = redis::cmd("HSCAN");
            cmd.arg(keys::LB_DIRTY).arg(cursor).arg("COUNT").arg(1000);
            let mut c = self.connection();
            let (next, page): (u64, Vec<(String, String)>) =
                self.call_pub(async move { cmd.query_async(&mut c).await }).await?;
            out.extend(page.into_iter().map(|(f, _)| f));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Atomic snapshots of several facilities (one batch).
    pub async fn lb_snapshots(&self, ids: &[String]) -> Result<Vec<Snapshot>, StoreError> {
        let calls: Vec<_> = ids
            .iter()
            .map(|id| (vec![keys::fence(id), keys::lb_counts(id), keys::info(id)], Vec::<String>::new()))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for v in self.eval_batch(SNAPSHOT, &calls).await? {
            let (epoch, released, info, counts): (String, String, String, Vec<(String, u64)>) = decode(v)?;
            out.push(Snapshot {
                epoch: epoch.parse().unwrap_or(0),
                released: released.parse().unwrap_or(0),
                info,
                counts,
            });
        }
        Ok(out)
    }

    /// Brings every item's boards up to its count; returns (applied before, after) per item.
    /// One script call on the `{lb}` slot for the whole list.
    pub async fn lb_apply(
        &self,
        items: &[ApplyItem],
        board_ttl_s: i64,
        applied_ttl_s: i64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Several short scripts in one pipeline, not one long one: a script holds the whole
        // Redis, and a pass over a thousand facilities in one call blocked every scan for
        // ~10 ms (seen in SLOWLOG). APPLY_CHUNK items keep each call near 0.1 ms (about 25
        // ZINCRBY): with 16 items, 0.4 ms calls showed in the scans' p99 (5.3 ms against 4.9
        // at 2,500 scans/s on 2,000 busy facilities).
        // Items that share a ranking member go into the same call, where APPLY adds their
        // deltas up and bumps the member once: the day and kind (keys[1], the kind's state
        // ranking), then the state, then the district.
        let order = coalescing_order(items);
        let calls: Vec<(Vec<&str>, Vec<Arg>)> = order
            .chunks(APPLY_CHUNK)
            .map(|chunk| {
                let chunk: Vec<&ApplyItem> = chunk.iter().map(|&i| &items[i]).collect();
                let keys: Vec<&str> = chunk.iter().flat_map(|i| i.keys.iter().map(String::as_str)).collect();
                let mut args = Vec::with_capacity(3 + 5 * chunk.len());
                args.extend([Arg::Int(board_ttl_s), Arg::Int(applied_ttl_s)]);
                for i in chunk {
                    args.extend([
                        Arg::Str(&i.applied_field),
                        Arg::Count(i.count),
                        Arg::Str(i.state),
                        Arg::Str(&i.district),
                        Arg::Str(&i.facility),
                    ]);
                }
                args.push(Arg::Str(keys::LB_STATE_TOTAL));
                (keys, args)
            })
            .collect();
        let mut out = vec![(0, 0); items.len()];
        let mut at = order.iter();
        for v in self.eval_batch(APPLY, &calls).await? {
            for r in decode::<Vec<(u64, u64)>>(v)? {
                let Some(&i) = at.next() else { return Err(StoreError::Unavailable) };
                out[i] = r;
            }
        }
        if at.next().is_some() {
            // Fewer results than items: a reply of the wrong shape.
            return Err(StoreError::Unavailable);
        }
        Ok(out)
    }

    /// Forgets facilities proven applied and released at the given epochs.
    pub async fn lb_unmark(&self, done: &[(String, u64)]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = done.iter().flat_map(|(f, e)| [f.clone(), e.to_string()]).collect();
        self.eval_batch(UNMARK, &[(vec![keys::LB_DIRTY], args)]).await?;
        Ok(())
    }

    /// Drops finished days' counts of several facilities: (facility, [(field, count)]).
    pub async fn lb_prune(&self, prune: &[(String, Vec<(String, u64)>)]) -> Result<(), StoreError> {
        let calls: Vec<_> = prune
            .iter()
            .map(|(f, fields)| {
                (vec![keys::lb_counts(f)], fields.iter().flat_map(|(k, c)| [k.clone(), c.to_string()]).collect())
            })
            .collect();
        self.eval_batch(PRUNE, &calls).await?;
        Ok(())
    }
}
