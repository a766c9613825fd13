//! Group commit: facility actors hand their writes to the writer of their arbiter; the
//! writer sends everything that queued up while the previous batch was in flight as one
//! pipelined round trip of fenced script calls (one pipeline per hash slot on a cluster,
//! all in flight at once), then answers each write. Order per facility is kept.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::conn::Conn;
use super::keys::FacilityKeys;
use super::store::{classify, Fence, StoreError, WRITE};
use crate::telemetry::metrics::Metrics;

/// One fenced write of a facility owner.
#[derive(Debug)]
pub struct WriteOp {
    /// The facility and its keys (`lb_counts`: its cumulative leaderboard counts,
    /// `<date>|<kind>`), shared by all writes of its owner.
    pub keys: Arc<FacilityKeys>,
    /// The day's token hash.
    pub day_key: Arc<str>,
    /// The owner's fence (epoch and nonce of its activation).
    pub fence: Fence,
    /// The write sequence this write follows (the owner's previous write).
    pub prev_seq: u64,
    /// Seconds the day hash lives from now (EXPIRE, not EXPIREAT: see the actor); 0 leaves
    /// its expiry as it is (the owner already set it for the day).
    pub expire_in: i64,
    /// One `<date>|<kind>` per token this write issues.
    pub lb_count_fields: Vec<String>,
    /// The owner is stopping: record that this epoch is released (see the applier).
    pub release: bool,
    /// Where the counted tokens go on the boards (set on writes that count tokens).
    pub board: Option<Arc<BoardOwner>>,
    pub fields: Vec<(String, String)>,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

impl WriteOp {
    /// A fenced write of `facility`'s `day` that changes nothing yet (a barrier): the caller
    /// fills in the token fields and counts it carries.
    pub fn barrier(
        facility: &str,
        day: jiff::civil::Date,
        fence: Fence,
        prev_seq: u64,
        expire_in: i64,
        done: oneshot::Sender<Result<(), StoreError>>,
    ) -> WriteOp {
        let keys = Arc::new(FacilityKeys::new(facility));
        let day_key = keys.day(day).into();
        WriteOp::barrier_of(keys, day_key, fence, prev_seq, expire_in, done)
    }

    /// [`WriteOp::barrier`] with keys the owner already holds.
    pub fn barrier_of(
        keys: Arc<FacilityKeys>,
        day_key: Arc<str>,
        fence: Fence,
        prev_seq: u64,
        expire_in: i64,
        done: oneshot::Sender<Result<(), StoreError>>,
    ) -> WriteOp {
        WriteOp {
            keys,
            day_key,
            fence,
            prev_seq,
            expire_in,
            lb_count_fields: Vec::new(),
            release: false,
            board: None,
            fields: Vec::new(),
            done,
        }
    }
}

pub type WriterTx = mpsc::Sender<WriteOp>;

/// Where a facility's tokens count on the national boards: its state code and district id
/// (`<state code>/<district>`), as its owner knows them from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardOwner {
    pub state: &'static str,
    pub district: String,
}

/// What the writers counted for the leaderboard applier since its last pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// Answered writes returned these cumulative counts (`<day>|<kind>` -> count, the
    /// largest seen per field): the applier can apply them without reading anything.
    Known { owner: Arc<BoardOwner>, counts: Vec<(String, u64)> },
    /// The applier reads the facility's counts from Redis (a snapshot): a counting write's
    /// outcome is unknown (timeout, connection lost), or its answer was unreadable.
    Snapshot,
}

impl Counted {
    /// Folds `other` (newer) into `self`: counts only grow, so the larger value of a field
    /// wins; a snapshot of the facility covers every count, so it absorbs the rest.
    fn merge(&mut self, other: Counted) {
        match (&mut *self, other) {
            (Counted::Snapshot, _) => {}
            (_, Counted::Snapshot) => *self = Counted::Snapshot,
            (Counted::Known { owner, counts }, Counted::Known { owner: newer, counts: more }) => {
                *owner = newer;
                for (field, c) in more {
                    raise(counts, field, c);
                }
            }
        }
    }
}

/// Sets `field` to `c` unless it already holds more (counts only grow).
fn raise(counts: &mut Vec<(String, u64)>, field: String, c: u64) {
    match counts.iter_mut().find(|(f, _)| *f == field) {
        Some((_, have)) => *have = (*have).max(c),
        None => counts.push((field, c)),
    }
}

/// Facilities whose leaderboard counts may have moved since the applier last looked: filled
/// by the writers once a counting write is answered (or its outcome is unknown), drained
/// by the applier, so idle facilities cost it nothing.
#[derive(Debug, Clone, Default)]
pub struct Touched(Arc<Mutex<HashMap<String, Counted>>>);

impl Touched {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Counted>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what writes counted, in the order they were answered (newer last), each
    /// merged with what is already pending for its facility.
    pub fn add(&self, entries: impl IntoIterator<Item = (String, Counted)>) {
        let mut t = self.lock();
        for (facility, counted) in entries {
            match t.get_mut(&facility) {
                Some(have) => have.merge(counted),
                None => {
                    t.insert(facility, counted);
                }
            }
        }
    }

    /// Takes everything pending (the applier's pass).
    pub fn drain(&self) -> Vec<(String, Counted)> {
        self.lock().drain().collect()
    }

    /// Puts back what a failed pass did not apply, under anything counted meanwhile.
    pub fn restore(&self, entries: Vec<(String, Counted)>) {
        let mut t = self.lock();
        for (facility, mut older) in entries {
            if let Some(newer) = t.remove(&facility) {
                older.merge(newer);
            }
            t.insert(facility, older);
        }
    }
}

const KEEPALIVE: Duration = Duration::from_millis(250);

/// Writes per WRITE call at most: a script holds the whole Redis while it runs, so a burst
/// of a full batch (up to `SCANGW_BATCH_MAX` writes) goes as several calls of one pipeline,
/// between which Redis serves other clients.
///
/// What the batch depth buys, measured on Redis alone (2,000 facilities, one ~100-byte token
/// and one count per write, Redis CPU from /proc, 40,000 writes, no AOF): 89-120 us per
/// write at 1 write per round trip, 57-65 at 2, 27-28 at 8, with one call per write or one
/// per batch alike (one call per batch: 59.5/60/65.2 at 2, 28.5/27.5 at 8; one per write:
/// 58.5/57/60.5 and 27.2/28.2). The round trip, not the script call, is what Redis pays per
/// batch: writes per round trip are what to raise.
const WRITES_PER_CALL: usize = 64;

struct Batch {
    sha: String,
    wait_replicas: u32,
    cluster: bool,
}

/// One WRITE call: the ops it carries (indexes into the batch) and its command.
struct Call {
    ops: Vec<usize>,
    route: String,
    cmd: redis::Cmd,
}

impl Batch {
    /// The WRITE calls of `ops` (indexes into `all`): one per hash slot on a cluster (a
    /// facility's keys share its slot), one on a single Redis, each cut after
    /// [`WRITES_PER_CALL`] writes. Order is kept, so a facility's writes stay in order.
    fn calls(&self, all: &[WriteOp], ops: &[usize]) -> Vec<Call> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if self.cluster {
            let mut by_slot: HashMap<redis::cluster_routing::Slot, usize> = HashMap::new();
            for &i in ops {
                let slot = redis::cluster_routing::Slot::for_key(all[i].keys.fence.as_bytes());
                let g = *by_slot.entry(slot).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
        } else {
            groups.push(ops.to_vec());
        }
        groups
            .iter()
            .flat_map(|g| g.chunks(WRITES_PER_CALL))
            .map(|chunk| Call {
                ops: chunk.to_vec(),
                route: all[chunk[0]].keys.fence.clone(),
                cmd: self.command(chunk.iter().map(|&i| &all[i])),
            })
            .collect()
    }

    /// One EVALSHA of WRITE over `ops` (see `store::WRITE` for the layout).
    fn command<'a>(&self, ops: impl Iterator<Item = &'a WriteOp> + Clone) -> redis::Cmd {
        // Sized up front: the command's buffers otherwise grow several times per write.
        let (mut args, mut bytes, mut n) = (3, 16 + self.sha.len(), 0);
        for op in ops.clone() {
            let k = &op.keys;
            n += 1;
            args += 10 + op.lb_count_fields.len() + 2 * op.fields.len();
            bytes += 64
                + k.fence.len()
                + op.day_key.len()
                + k.lb_counts.len()
                + op.fence.nonce.len()
                + op.lb_count_fields.iter().map(String::len).sum::<usize>()
                + op.fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>();
        }
        let mut cmd = redis::Cmd::with_capacity(args, bytes);
        cmd.arg("EVALSHA").arg(&self.sha).arg(3 * n);
        for op in ops.clone() {
            cmd.arg(&op.keys.fence).arg(&*op.day_key).arg(&op.keys.lb_counts);
        }
        for op in ops {
            cmd.arg(op.fence.epoch)
                .arg(&op.fence.nonce)
                .arg(op.prev_seq)
                .arg(op.expire_in)
                .arg(if op.release { "1" } else { "0" })
                .arg(op.lb_count_fields.len())
                .arg(op.fields.len());
            for f in &op.lb_count_fields {
                cmd.arg(f);
            }
            for (k, v) in &op.fields {
                cmd.arg(k).arg(v);
            }
        }
        cmd
    }
}

/// What an applied WRITE returned (see [`WRITE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Applied {
    /// The cumulative leaderboard count after each of the write's `lb_count_fields`.
    Raised(Vec<u64>),
    /// Every cumulative count of the facility (`<day>|<kind>` -> count): the answer to an
    /// activation's first write.
    All(Vec<(String, u64)>),
    /// A copy of a write that was applied before (the client sent it again after losing
    /// the reply; see [`WRITE`]): its counts are unknown, the applier reads them itself.
    Again,
    /// A reply of another shape: the applier reads the counts itself.
    Unreadable,
}

/// Reads one write's answer in a WRITE reply: a refusal or `AGAIN` by name, otherwise the
/// counts, whose shape depends on whether the write followed another of its activation.
fn applied(prev_seq: u64, v: Value) -> Result<Applied, StoreError> {
    let named = match &v {
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::BulkString(b) => Some(b.as_slice()),
        _ => None,
    };
    match named {
        Some(b"AGAIN") => return Ok(Applied::Again),
        Some(b"FENCED") => return Err(StoreError::Fenced),
        Some(b"GAP") => return Err(StoreError::Gap),
        // Not an answer WRITE gives: whether the write applied is unknown.
        Some(_) => return Err(StoreError::Unavailable),
        None => {}
    }
    if prev_seq == 0 {
        return Ok(redis::from_redis_value(v).map_or(Applied::Unreadable, Applied::All));
    }
    Ok(match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| if let Value::Int(n) = i { u64::try_from(n).ok() } else { None })
            .collect::<Option<Vec<u64>>>()
            .map_or(Applied::Unreadable, Applied::Raised),
        _ => Applied::Unreadable,
    })
}

/// Counts an answer reported, as the largest count per field.
fn known(owner: &Arc<BoardOwner>, counts: impl IntoIterator<Item = (String, u64)>) -> Counted {
    let mut out = Vec::new();
    for (field, c) in counts {
        raise(&mut out, field, c);
    }
    Counted::Known { owner: owner.clone(), counts: out }
}

/// What one answered write counted, for the applier: the largest count per field.
fn counted(op: &WriteOp, r: &Result<Applied, StoreError>) -> Option<Counted> {
    match (r, &op.board) {
        // Refused writes changed nothing.
        (Err(StoreError::Fenced | StoreError::Gap), _) => None,
        // The first write of an activation answered with every count of the facility: an
        // owner before it (crashed, say) may have counted other days or kinds that no board
        // has yet, and a facility active here is left out of this node's sweeps, so they
        // are applied with this write's own. This holds for a first write that counts
        // nothing too (a call-next after a restart, say).
        (Ok(Applied::All(counts)), Some(owner)) if !counts.is_empty() => Some(known(owner, counts.iter().cloned())),
        // A resent copy of an applied write: whatever the first copy counted (an
        // activation's first write reports every count) was never read back.
        (Ok(Applied::Again), Some(_)) if op.prev_seq == 0 || !op.lb_count_fields.is_empty() => Some(Counted::Snapshot),
        _ if op.lb_count_fields.is_empty() => None,
        (Ok(Applied::Raised(values)), Some(owner)) if values.len() == op.lb_count_fields.len() => {
            Some(known(owner, op.lb_count_fields.iter().cloned().zip(values.iter().copied())))
        }
        // Unknown outcome, or an answer without usable counts: the applier reads them.
        _ => Some(Counted::Snapshot),
    }
}

/// The ops a refused call carried did not run: NOSCRIPT (the node lost its script cache).
fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// Sends the WRITE calls of `ops` (indexes into `all`) as one batch and fills in their
/// answers; returns the ops whose call was refused with NOSCRIPT (left unanswered).
async fn send(
    conn: &mut Conn,
    batch: &Batch,
    all: &[WriteOp],
    ops: &[usize],
    timeout: Duration,
    out: &mut [Result<Applied, StoreError>],
) -> Vec<usize> {
    let calls = batch.calls(all, ops);
    let (idx, cmds): (Vec<Vec<usize>>, Vec<(String, redis::Cmd)>) =
        calls.into_iter().map(|c| (c.ops, (c.route, c.cmd))).unzip();
    let replies = conn.batch(cmds, timeout, batch.wait_replicas).await;
    let mut noscript = Vec::new();
    for (ops, reply) in idx.into_iter().zip(replies) {
        match reply {
            Ok(Value::Array(answers)) if answers.len() == ops.len() => {
                for (i, v) in ops.into_iter().zip(answers) {
                    out[i] = applied(all[i].prev_seq, v);
                }
            }
            // A reply of another shape: whether the writes applied is unknown.
            Ok(_) => ops.into_iter().for_each(|i| out[i] = Err(StoreError::Unavailable)),
            Err(e) if is_noscript(&e) => noscript.extend(ops),
            Err(e) => {
                let err = classify(&e);
                ops.into_iter().for_each(|i| out[i] = Err(err));
            }
        }
    }
    noscript
}

/// Writes one batch; returns one result per op, in order.
async fn write_batch(
    conn: &mut Conn,
    batch: &Batch,
    ops: &[WriteOp],
    timeout: Duration,
) -> Vec<Result<Applied, StoreError>> {
    let mut out = vec![Err(StoreError::Unavailable); ops.len()];
    let all: Vec<usize> = (0..ops.len()).collect();
    let noscript = send(conn, batch, ops, &all, timeout, &mut out).await;
    if noscript.is_empty() {
        return out;
    }
    // Redis (or, on a cluster, one of its masters) lost its script cache (restart,
    // failover). A refused call wrote nothing, so its writes, and every write refused for
    // a gap behind one of them, are safe to send again. SCRIPT LOAD goes to every master.
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(WRITE);
    if !matches!(tokio::time::timeout(timeout, load.query_async::<Value>(conn)).await, Ok(Ok(_))) {
        // The refused writes stay unanswered (Unavailable); the others keep their answers.
        return out;
    }
    let mut retry = noscript;
    retry.extend((0..ops.len()).filter(|&i| out[i] == Err(StoreError::Gap)));
    retry.sort_unstable();
    send(conn, batch, ops, &retry, timeout, &mut out).await;
    out
}

/// How often a writer that woke for a write lets the other tasks of its arbiter run before
/// it flushes. The write that woke it is often the first of several: the facility actors that
/// the same wake-up readied hand theirs over only when they run, after the writer. Yielding
/// gathers them into the same round trip. Warm at 3,000 scans/s (2,000 facilities, A/B
/// twice): 1.53 -> 1.93 writes per flush, server CPU -9%, Redis CPU -9%, scan p99 4.8 ->
/// 4.2 ms; 4, 8 or 16 yields gathered no more. A timed linger (0.5 ms, which tokio rounds
/// up to its 1 ms tick) gathered more but added 1.6 ms to the median.
const GATHER_YIELDS: usize = 2;

/// After the first writes of a batch are in `buf`, takes whatever the arbiter's other ready
/// tasks add after [`GATHER_YIELDS`] yields, up to `max`. Not cancel-safe in the sense that
/// matters here: dropped between its yields, it leaves writes in `buf` that nobody flushes
/// until another write arrives. So it must run to completion, never as a `select!` branch
/// (the first version did, and a keepalive tick that won the race left scans unanswered).
async fn gather_more<T>(rx: &mut mpsc::Receiver<T>, buf: &mut Vec<T>, max: usize) {
    if buf.is_empty() || buf.len() >= max {
        return;
    }
    for _ in 0..GATHER_YIELDS {
        tokio::task::yield_now().await;
    }
    while buf.len() < max {
        match rx.try_recv() {
            Ok(op) => buf.push(op),
            Err(_) => break,
        }
    }
}

/// Writes below which a batch lingers for more ([`linger_more`]): a batch this deep already
/// shares its round trip well, and waiting longer would only add latency.
const LINGER_BELOW: usize = 8;

/// After gathering, a batch of fewer than [`LINGER_BELOW`] writes waits up to `linger` for
/// more, and goes as soon as it has that many (then with whatever else is ready, up to
/// `max`). Below saturation most batches are shallow (1.7 writes per round trip at 2,000
/// scans/s), and Redis's cost per write falls with depth (a round trip costs it about as
/// much as a write: 89-120 µs per write at depth 1, 27-28 at 8, Redis alone). Fixed 2,000
/// scans/s, 2,000 facilities, same run: a 1 ms linger took 1.72 -> 3.13 writes per round
/// trip, server CPU 180 -> 168 and Redis 148 -> 129 µs per scan (-10% in all), the scan's
/// p50 1.85 -> 4.0 ms and p99 5.3 -> 7.8 ms (tokio's timer rounds up to its 1 ms tick).
/// Near saturation batches are deep and never wait. `recv` is cancel-safe, but like
/// [`gather_more`] this must run to completion (never as a `select!` branch).
async fn linger_more<T>(rx: &mut mpsc::Receiver<T>, buf: &mut Vec<T>, max: usize, linger: Duration) {
    let enough = LINGER_BELOW.min(max);
    if linger.is_zero() || buf.is_empty() || buf.len() >= enough {
        return;
    }
    let until = tokio::time::Instant::now() + linger;
    while buf.len() < enough {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(op)) => buf.push(op),
            // The linger ran out, or every sender is gone (the loop's next `recv` ends it).
            _ => break,
        }
    }
    while buf.len() < max {
        match rx.try_recv() {
            Ok(op) => buf.push(op),
            Err(_) => break,
        }
    }
}

/// How a writer forms its batches.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Most writes in one batch (`SCANGW_BATCH_MAX`).
    pub batch_max: usize,
    /// How long a shallow batch waits for more (`SCANGW_WRITE_LINGER_US`; zero: never).
    pub linger: Duration,
    /// `WAIT` for this many replicas after each batch (`SCANGW_REDIS_WAIT_REPLICAS`).
    pub wait_replicas: u32,
}

/// Runs a writer until every sender is gone. Spawn one per home (HTTP worker).
pub async fn run(
    mut rx: mpsc::Receiver<WriteOp>,
    mut conn: Conn,
    timeout: Duration,
    shape: Shape,
    touched: Touched,
    metrics: Metrics,
) {
    let Shape { batch_max, linger, wait_replicas } = shape;
    let batch =
        Batch { sha: redis::Script::new(WRITE).get_hash().to_string(), wait_replicas, cluster: conn.is_cluster() };
    let mut buf = Vec::with_capacity(batch_max);
    // An idle connection to a Redis that restarted is only found dead by the next write,
    // which would then fail a scan. A light keepalive finds it first and reconnects.
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Both branches are cancel-safe: `recv_many` takes nothing when the tick wins.
        tokio::select! {
            n = rx.recv_many(&mut buf, batch_max) => if n == 0 { return },
            _ = keepalive.tick() => {
                let ping = redis::cmd("PING");
                let _ = tokio::time::timeout(timeout, ping.query_async::<Value>(&mut conn)).await;
                continue;
            }
        }
        keepalive.reset();
        gather_more(&mut rx, &mut buf, batch_max).await;
        linger_more(&mut rx, &mut buf, batch_max, linger).await;
        let ops = std::mem::take(&mut buf);
        let started = Instant::now();
        let results = write_batch(&mut conn, &batch, &ops, timeout).await;
        metrics.redis_batch(ops.len(), started.elapsed());
        touched.add(ops.iter().zip(&results).filter_map(|(op, r)| Some((op.keys.facility.clone(), counted(op, r)?))));
        for (op, r) in ops.into_iter().zip(results) {
            match &r {
                Err(StoreError::Fenced) => metrics.fencing_conflict(),
                Ok(Applied::Again) => metrics.write_resends.increment(1),
                _ => {}
            }
            let _ = op.done.send(r.map(|_| ()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(district: &str) -> Arc<BoardOwner> {
        Arc::new(BoardOwner { state: "KA", district: district.into() })
    }

    fn known(district: &str, counts: &[(&str, u64)]) -> Counted {
        Counted::Known { owner: owner(district), counts: counts.iter().map(|(f, c)| (f.to_string(), *c)).collect() }
    }

    fn fence() -> Fence {
        Fence { epoch: 3, nonce: "00000000000000ab".into() }
    }

    fn op(prev_seq: u64, fields: &[&str]) -> WriteOp {
        let (done, _) = oneshot::channel();
        let day = jiff::civil::date(2026, 11, 24);
        WriteOp {
            lb_count_fields: fields.iter().map(|f| f.to_string()).collect(),
            board: Some(owner("KA/Mysuru")),
            ..WriteOp::barrier("F1", day, fence(), prev_seq, 60, done)
        }
    }

    /// The WRITE call, argument by argument, as the script reads it (see `store::WRITE`):
    /// every write's keys, then every write's arguments; the pre-sized command must pack to
    /// the same bytes.
    #[test]
    fn a_batch_is_one_evalsha_with_each_writes_keys_then_each_writes_arguments() {
        let mut w = op(7, &["2026-11-24|opd"]);
        w.fields = vec![("OPD 1#5".into(), "rec5".into()), ("OPD 1#4".into(), "rec4".into())];
        let released = WriteOp { release: true, ..op(0, &[]) };
        let batch = Batch { sha: "abc123".into(), wait_replicas: 0, cluster: false };
        let all = [w, released];
        let calls = batch.calls(&all, &[0, 1]);
        assert_eq!(calls.len(), 1, "one call for the batch");
        assert_eq!(calls[0].route, "sg:{F1}:fence", "routed by the fence key");
        assert_eq!(calls[0].ops, vec![0, 1]);
        let mut expected = redis::cmd("EVALSHA");
        expected.arg("abc123").arg(6);
        for _ in 0..2 {
            expected.arg("sg:{F1}:fence").arg("sg:{F1}:d:2026-11-24:t").arg("sg:{F1}:lbn");
        }
        expected
            .arg(3)
            .arg("00000000000000ab")
            .arg(7)
            .arg(60)
            .arg("0")
            .arg(1)
            .arg(2)
            .arg("2026-11-24|opd")
            .arg("OPD 1#5")
            .arg("rec5")
            .arg("OPD 1#4")
            .arg("rec4");
        expected.arg(3).arg("00000000000000ab").arg(0).arg(60).arg("1").arg(0).arg(0);
        assert_eq!(calls[0].cmd.get_packed_command(), expected.get_packed_command());
    }

    /// On a cluster a call names one slot's keys only (Redis refuses a script over several
    /// slots); a long batch is cut into calls of at most `WRITES_PER_CALL` writes. A
    /// facility's writes keep their order either way.
    #[test]
    fn calls_split_per_hash_slot_on_a_cluster_and_after_the_per_call_limit() {
        let day = jiff::civil::date(2026, 11, 24);
        let of = |f: &str| {
            let (done, _) = oneshot::channel();
            WriteOp::barrier(f, day, fence(), 1, 0, done)
        };
        let all = [of("F1"), of("F2"), of("F1"), of("F3")];
        let idx = [0, 1, 2, 3];
        let single = Batch { sha: "abc".into(), wait_replicas: 0, cluster: false };
        assert_eq!(single.calls(&all, &idx).iter().map(|c| c.ops.clone()).collect::<Vec<_>>(), vec![vec![0, 1, 2, 3]]);
        let cluster = Batch { cluster: true, ..single };
        let calls = cluster.calls(&all, &idx);
        let slot = |k: &str| redis::cluster_routing::Slot::for_key(k.as_bytes());
        for c in &calls {
            assert!(c.ops.iter().all(|&i| slot(&all[i].keys.fence) == slot(&c.route)), "one slot per call");
        }
        let f1: Vec<&Vec<usize>> = calls.iter().map(|c| &c.ops).filter(|o| o.contains(&0)).collect();
        assert_eq!(f1, vec![&vec![0, 2]], "F1's writes in one call, in order");
        assert_eq!(calls.iter().map(|c| c.ops.len()).sum::<usize>(), 4);
        let many: Vec<WriteOp> = (0..WRITES_PER_CALL + 1).map(|_| of("F1")).collect();
        let idx: Vec<usize> = (0..many.len()).collect();
        let sizes: Vec<usize> = cluster.calls(&many, &idx).iter().map(|c| c.ops.len()).collect();
        assert_eq!(sizes, vec![WRITES_PER_CALL, 1]);
    }

    /// The writer parks; a task that is itself parked (as a facility actor waits for its
    /// mailbox) is readied by the same wake-up that hands the writer its first write. Its
    /// write joins the same flush: `recv_many` alone would flush the first write by itself.
    #[actix_rt::test]
    async fn a_flush_gathers_the_writes_of_tasks_readied_in_the_same_wake_up() {
        let (tx, mut rx) = mpsc::channel::<u32>(16);
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let writer = tokio::task::spawn_local(async move {
            let mut buf = Vec::new();
            rx.recv_many(&mut buf, 8).await;
            gather_more(&mut rx, &mut buf, 8).await;
            buf
        });
        let late = tx.clone();
        let actor = tokio::task::spawn_local(async move {
            ready_rx.await.unwrap();
            late.send(2).await.unwrap();
        });
        // Let the writer and the actor park first.
        tokio::task::yield_now().await;
        tx.send(1).await.unwrap();
        ready_tx.send(()).unwrap();
        assert_eq!(writer.await.unwrap(), vec![1, 2]);
        actor.await.unwrap();
    }

    /// A shallow batch waits for writes that come within the linger, and goes once it is
    /// deep enough; a deep batch, or a zero linger, never waits. The margins are wide (a
    /// write 1 ms into a 200 ms linger joins, one 2 s later does not; "never waits" is
    /// checked against a 10 s linger), so the machine's speed cannot decide the outcome.
    #[actix_rt::test]
    async fn a_shallow_batch_lingers_for_more_writes_and_a_deep_one_goes_at_once() {
        let (tx, mut rx) = mpsc::channel::<u32>(64);
        let late = tx.clone();
        let sender = tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(2).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = late.send(3).await;
        });
        let started = Instant::now();
        let mut buf = vec![1];
        linger_more(&mut rx, &mut buf, 512, Duration::from_millis(200)).await;
        assert_eq!(buf, vec![1, 2], "the write 1 ms later joined; the one 2 s later did not");
        assert!(started.elapsed() >= Duration::from_millis(200), "a shallow batch waits out its linger");
        sender.abort();

        let long = Duration::from_secs(10);
        for i in 10..20 {
            tx.send(i).await.unwrap();
        }
        let started = Instant::now();
        let mut deep: Vec<u32> = (100..108).collect();
        linger_more(&mut rx, &mut deep, 512, long).await;
        assert_eq!(deep.len(), 8, "a deep batch does not even look");
        // A shallow one that fills up while it lingers goes without waiting out the linger,
        // with whatever else is ready.
        let mut shallow = vec![3];
        linger_more(&mut rx, &mut shallow, 512, long).await;
        assert_eq!(shallow, vec![3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
        let mut off = vec![1];
        tx.send(4).await.unwrap();
        linger_more(&mut rx, &mut off, 512, Duration::ZERO).await;
        assert_eq!(off, vec![1], "a zero linger never waits nor looks");
        assert!(started.elapsed() < Duration::from_secs(5), "none of these waited a linger");
    }

    #[actix_rt::test]
    async fn gathering_stops_at_the_batch_limit_and_takes_all_that_is_ready() {
        let (tx, mut rx) = mpsc::channel::<u32>(16);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let mut buf = vec![rx.recv().await.unwrap()];
        gather_more(&mut rx, &mut buf, 3).await;
        assert_eq!(buf, vec![0, 1, 2]);
        let mut rest = vec![rx.recv().await.unwrap()];
        gather_more(&mut rx, &mut rest, 8).await;
        assert_eq!(rest, vec![3, 4]);
    }

    #[test]
    fn merging_keeps_the_largest_count_per_field_and_a_snapshot_absorbs_the_rest() {
        let mut c = known("KA/Mysuru", &[("d|opd", 5)]);
        c.merge(known("KA/Mysuru", &[("d|opd", 7), ("d|lab", 1)]));
        c.merge(known("KA/Mysuru", &[("d|opd", 6)]));
        assert_eq!(c, known("KA/Mysuru", &[("d|opd", 7), ("d|lab", 1)]));
        // A newer owner record (a reconfigured district) wins.
        c.merge(known("KA/Mandya", &[]));
        assert_eq!(c, known("KA/Mandya", &[("d|opd", 7), ("d|lab", 1)]));
        c.merge(Counted::Snapshot);
        assert_eq!(c, Counted::Snapshot);
        c.merge(known("KA/Mandya", &[("d|opd", 9)]));
        assert_eq!(c, Counted::Snapshot);
    }

    #[test]
    fn an_answered_write_counts_its_returned_totals_and_anything_else_asks_for_a_snapshot() {
        use Applied::{Raised, Unreadable};
        // Two tokens of one kind in one write: the later (larger) total is what counts.
        let two = op(4, &["d|opd", "d|opd", "d|lab"]);
        assert_eq!(
            counted(&two, &Ok(Raised(vec![11, 12, 3]))),
            Some(known("KA/Mysuru", &[("d|opd", 12), ("d|lab", 3)]))
        );
        // Refused writes changed nothing; writes that count nothing are not the applier's.
        assert_eq!(counted(&two, &Err(StoreError::Fenced)), None);
        assert_eq!(counted(&two, &Err(StoreError::Gap)), None);
        assert_eq!(counted(&op(4, &[]), &Ok(Raised(vec![]))), None);
        // Unknown outcome, or an answer of the wrong shape.
        assert_eq!(counted(&two, &Err(StoreError::Unavailable)), Some(Counted::Snapshot));
        assert_eq!(counted(&two, &Ok(Raised(vec![11]))), Some(Counted::Snapshot));
        assert_eq!(counted(&two, &Ok(Unreadable)), Some(Counted::Snapshot));
        assert_eq!(counted(&op(0, &["d|opd"]), &Ok(Unreadable)), Some(Counted::Snapshot));
        assert_eq!(counted(&op(0, &["d|opd"]), &Err(StoreError::Unavailable)), Some(Counted::Snapshot));
    }

    /// An activation's first write is answered with every count of the facility, those of
    /// other days and kinds (an earlier owner's) included: they are applied without a read,
    /// whether or not the write itself counted anything.
    #[test]
    fn an_activations_first_write_counts_every_count_of_the_facility() {
        let all = |c: &[(&str, u64)]| Ok(Applied::All(c.iter().map(|(f, n)| (f.to_string(), *n)).collect()));
        let earlier = [("d|opd", 7), ("d|pharmacy", 2), ("c|lab", 4)];
        let want = Some(known("KA/Mysuru", &earlier));
        assert_eq!(counted(&op(0, &["d|opd"]), &all(&earlier)), want);
        assert_eq!(counted(&op(0, &[]), &all(&earlier)), want, "a first write that counts nothing");
        assert_eq!(counted(&op(0, &[]), &all(&[])), None, "nothing counted yet, by anyone");
        // The release of an owner that never wrote carries no board: the sweep takes it.
        let release = WriteOp { board: None, ..op(0, &[]) };
        assert_eq!(counted(&release, &all(&earlier)), None);
    }

    #[test]
    fn a_failed_pass_is_restored_under_what_was_counted_meanwhile() {
        let t = Touched::default();
        t.add([("F1".to_string(), known("KA/Mysuru", &[("d|opd", 5)]))]);
        let taken = t.drain();
        assert!(t.drain().is_empty(), "drain takes everything");
        t.add([("F1".to_string(), known("KA/Mandya", &[("d|opd", 8)])), ("F2".into(), Counted::Snapshot)]);
        t.restore(taken);
        let mut back = t.drain();
        back.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            back,
            vec![("F1".to_string(), known("KA/Mandya", &[("d|opd", 8)])), ("F2".into(), Counted::Snapshot)]
        );
    }

    #[test]
    fn the_write_script_answers_each_increment_total_or_after_no_write_every_count_or_a_refusal() {
        use Applied::{All, Raised, Unreadable};
        assert_eq!(applied(4, Value::Array(vec![Value::Int(3), Value::Int(4)])), Ok(Raised(vec![3, 4])));
        assert_eq!(applied(4, Value::Array(vec![])), Ok(Raised(vec![])));
        assert_eq!(applied(4, Value::Int(1)), Ok(Unreadable));
        assert_eq!(applied(4, Value::Array(vec![Value::Int(-1)])), Ok(Unreadable));
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let pairs = Value::Array(vec![bulk("d|opd"), bulk("12"), bulk("d|lab"), bulk("3")]);
        assert_eq!(applied(0, pairs.clone()), Ok(All(vec![("d|opd".into(), 12), ("d|lab".into(), 3)])));
        assert_eq!(applied(0, Value::Array(vec![])), Ok(All(vec![])));
        assert_eq!(applied(4, pairs), Ok(Unreadable), "pairs answer only a first write");
        assert_eq!(applied(0, Value::Array(vec![bulk("d|opd"), bulk("many")])), Ok(Unreadable));
        assert_eq!(applied(0, Value::Array(vec![Value::Int(3)])), Ok(Unreadable));
        for prev in [0, 4] {
            assert_eq!(applied(prev, bulk("AGAIN")), Ok(Applied::Again));
            assert_eq!(applied(prev, Value::SimpleString("AGAIN".into())), Ok(Applied::Again));
            assert_eq!(applied(prev, bulk("FENCED")), Err(StoreError::Fenced));
            assert_eq!(applied(prev, bulk("GAP")), Err(StoreError::Gap));
            assert_eq!(applied(prev, bulk("OOPS")), Err(StoreError::Unavailable), "unknown outcome");
        }
    }

    /// A resent copy of an applied write is answered without its counts: the applier reads
    /// them, unless the write counted nothing (and, not being first, reported nothing).
    #[test]
    fn a_resent_copy_of_an_applied_write_asks_for_a_snapshot_of_what_it_counted() {
        assert_eq!(counted(&op(4, &["d|opd"]), &Ok(Applied::Again)), Some(Counted::Snapshot));
        assert_eq!(counted(&op(0, &[]), &Ok(Applied::Again)), Some(Counted::Snapshot), "a first write");
        assert_eq!(counted(&op(4, &[]), &Ok(Applied::Again)), None);
    }
}
