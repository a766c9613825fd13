//! Group commit: facility actors hand their writes to the writer of their arbiter; the
//! writer sends everything that queued up while the previous batch was in flight as one
//! pipelined round trip of fenced script calls (one pipeline per hash slot on a cluster,
//! all in flight at once), then answers each write. Order per facility is kept.
use std::time::{Duration, Instant};

use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use super::conn::Conn;
use super::keys;
use super::store::{classify, StoreError, WRITE};
use crate::telemetry::metrics::Metrics;

/// One fenced write of a facility owner.
#[derive(Debug)]
pub struct WriteOp {
    pub facility: String,
    pub fence_key: String,
    pub day_key: String,
    pub counts_key: String,
    /// The facility's cumulative leaderboard counts (`<date>|<kind>`).
    pub lb_counts_key: String,
    pub epoch: u64,
    /// The write sequence this write follows (the owner's previous write).
    pub prev_seq: u64,
    /// Seconds the day hash lives from now (EXPIRE, not EXPIREAT: see the actor).
    pub expire_in: i64,
    pub count_fields: Vec<String>,
    /// One `<date>|<kind>` per token this write issues.
    pub lb_count_fields: Vec<String>,
    /// The owner is stopping: record that this epoch is released (see the applier).
    pub release: bool,
    pub fields: Vec<(String, String)>,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

impl WriteOp {
    /// A fenced write of `facility`'s `day` that changes nothing yet (a barrier): the caller
    /// fills in the token fields and counts it carries.
    pub fn barrier(
        facility: &str,
        day: jiff::civil::Date,
        epoch: u64,
        prev_seq: u64,
        expire_in: i64,
        done: oneshot::Sender<Result<(), StoreError>>,
    ) -> WriteOp {
        WriteOp {
            facility: facility.to_string(),
            fence_key: keys::fence(facility),
            day_key: keys::day_tokens(facility, day),
            counts_key: keys::counts(facility),
            lb_counts_key: keys::lb_counts(facility),
            epoch,
            prev_seq,
            expire_in,
            count_fields: Vec::new(),
            lb_count_fields: Vec::new(),
            release: false,
            fields: Vec::new(),
            done,
        }
    }
}

pub type WriterTx = mpsc::Sender<WriteOp>;

/// Facilities whose leaderboard counts may have moved since the applier last looked: filled
/// by the writers once a counting write is answered (or its outcome is unknown), drained
/// by the applier, so idle facilities cost it nothing.
pub type Touched = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

const KEEPALIVE: Duration = Duration::from_millis(250);

struct Batch {
    sha: String,
    wait_replicas: u32,
}

impl Batch {
    /// One EVALSHA per op, each routed by its facility's fence key (its hash slot).
    fn commands(&self, ops: &[&WriteOp]) -> Vec<(String, redis::Cmd)> {
        ops.iter()
            .map(|op| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&self.sha)
                    .arg(4)
                    .arg(&op.fence_key)
                    .arg(&op.day_key)
                    .arg(&op.counts_key)
                    .arg(&op.lb_counts_key)
                    .arg(op.epoch)
                    .arg(op.prev_seq)
                    .arg(op.expire_in)
                    .arg(if op.release { "1" } else { "0" })
                    .arg(op.count_fields.len());
                for f in &op.count_fields {
                    cmd.arg(f);
                }
                cmd.arg(op.lb_count_fields.len());
                for f in &op.lb_count_fields {
                    cmd.arg(f);
                }
                for (k, v) in &op.fields {
                    cmd.arg(k).arg(v);
                }
                (op.fence_key.clone(), cmd)
            })
            .collect()
    }
}

fn is_noscript(r: &RedisResult<Value>) -> bool {
    matches!(r, Err(e) if e.code() == Some("NOSCRIPT"))
}

/// Writes one batch; returns one result per op, in order.
async fn write_batch(
    conn: &mut Conn,
    batch: &Batch,
    ops: &[WriteOp],
    timeout: Duration,
) -> Vec<Result<(), StoreError>> {
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let mut replies = conn.batch(batch.commands(&refs), timeout, batch.wait_replicas).await;
    if replies.iter().any(is_noscript) {
        // Redis (or, on a cluster, one of its masters) lost its script cache (restart,
        // failover). A refused call wrote nothing, so every call refused for NOSCRIPT, or
        // for a gap behind one, is safe to send again. SCRIPT LOAD goes to every master.
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(WRITE);
        if !matches!(tokio::time::timeout(timeout, load.query_async::<Value>(conn)).await, Ok(Ok(_))) {
            return vec![Err(StoreError::Unavailable); ops.len()];
        }
        let retry: Vec<usize> = (0..ops.len())
            .filter(|i| is_noscript(&replies[*i]) || matches!(&replies[*i], Err(e) if e.code() == Some("GAP")))
            .collect();
        let again: Vec<&WriteOp> = retry.iter().map(|i| &ops[*i]).collect();
        let second = conn.batch(batch.commands(&again), timeout, batch.wait_replicas).await;
        for (i, r) in retry.into_iter().zip(second) {
            replies[i] = r;
        }
    }
    replies
        .into_iter()
        .map(|r| match r {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e)),
        })
        .collect()
}

/// Runs a writer until every sender is gone. Spawn one per facility arbiter.
pub async fn run(
    mut rx: mpsc::Receiver<WriteOp>,
    mut conn: Conn,
    timeout: Duration,
    batch_max: usize,
    wait_replicas: u32,
    touched: Touched,
    metrics: Metrics,
) {
    let batch = Batch { sha: redis::Script::new(WRITE).get_hash().to_string(), wait_replicas };
    let mut buf = Vec::with_capacity(batch_max);
    // An idle connection to a Redis that restarted is only found dead by the next write,
    // which would then fail a scan. A light keepalive finds it first and reconnects.
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, batch_max) => if n == 0 { return },
            _ = keepalive.tick() => {
                let ping = redis::cmd("PING");
                let _ = tokio::time::timeout(timeout, ping.query_async::<Value>(&mut conn)).await;
                continue;
            }
        }
        keepalive.reset();
        let ops = std::mem::take(&mut buf);
        let started = Instant::now();
        let results = write_batch(&mut conn, &batch, &ops, timeout).await;
        metrics.redis_batch(ops.len(), started.elapsed());
        {
            let mut t = touched.lock().unwrap_or_else(|e| e.into_inner());
            for (op, r) in ops.iter().zip(&results) {
                // Refused writes changed nothing; anything else may have counted tokens.
                if !op.lb_count_fields.is_empty() && !matches!(r, Err(StoreError::Fenced | StoreError::Gap)) {
                    t.insert(op.facility.clone());
                }
            }
        }
        for (op, r) in ops.into_iter().zip(results) {
            if r == Err(StoreError::Fenced) {
                metrics.fencing_conflict();
            }
            let _ = op.done.send(r);
        }
    }
}
