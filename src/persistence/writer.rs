//! Group commit: facility actors hand their writes to the writer of their arbiter; the
//! writer sends everything that queued up while the previous batch was in flight as one
//! pipelined round trip of fenced script calls, then answers each write. Order per
//! facility is the order of submission.
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use super::store::{classify, StoreError, WRITE};
use crate::telemetry::metrics::Metrics;

/// One fenced write of a facility owner.
#[derive(Debug)]
pub struct WriteOp {
    pub fence_key: String,
    pub day_key: String,
    pub counts_key: String,
    pub epoch: u64,
    /// The write sequence this write follows (the owner's previous write).
    pub prev_seq: u64,
    /// Seconds the day hash lives from now (EXPIRE, not EXPIREAT: see the actor).
    pub expire_in: i64,
    pub count_fields: Vec<String>,
    /// Leaderboard increments for the tokens this write issues.
    pub leaderboard: Vec<LbIncr>,
    /// Seconds a daily leaderboard lives after its first increment.
    pub leaderboard_ttl: i64,
    pub fields: Vec<(String, String)>,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

/// One sorted-set increment: `member` of `key` goes up by `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbIncr {
    pub key: String,
    pub member: String,
    pub by: u32,
    /// A daily board (expires), not an all-time one.
    pub daily: bool,
}

pub type WriterTx = mpsc::Sender<WriteOp>;

const KEEPALIVE: Duration = Duration::from_millis(250);

struct Batch {
    sha: String,
}

impl Batch {
    fn pipeline(&self, ops: &[&WriteOp]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in ops {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&self.sha)
                .arg(3 + op.leaderboard.len())
                .arg(&op.fence_key)
                .arg(&op.day_key)
                .arg(&op.counts_key);
            for lb in &op.leaderboard {
                cmd.arg(&lb.key);
            }
            cmd.arg(op.epoch).arg(op.prev_seq).arg(op.expire_in).arg(op.count_fields.len());
            for f in &op.count_fields {
                cmd.arg(f);
            }
            cmd.arg(op.leaderboard_ttl);
            for lb in &op.leaderboard {
                cmd.arg(&lb.member).arg(lb.by).arg(if lb.daily { "1" } else { "0" });
            }
            for (k, v) in &op.fields {
                cmd.arg(k).arg(v);
            }
        }
        pipe
    }
}

async fn send(
    conn: &mut ConnectionManager,
    pipe: &redis::Pipeline,
    timeout: Duration,
) -> Option<Vec<RedisResult<Value>>> {
    match tokio::time::timeout(timeout, pipe.query_async::<Vec<RedisResult<Value>>>(conn)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(kind = ?e.kind(), "write batch failed");
            None
        }
        Err(_) => {
            tracing::warn!("write batch timed out");
            None
        }
    }
}

fn is_noscript(r: &RedisResult<Value>) -> bool {
    matches!(r, Err(e) if e.code() == Some("NOSCRIPT"))
}

/// Writes one batch; returns one result per op, in order.
async fn write_batch(
    conn: &mut ConnectionManager,
    batch: &Batch,
    ops: &[WriteOp],
    timeout: Duration,
) -> Vec<Result<(), StoreError>> {
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let Some(mut replies) = send(conn, &batch.pipeline(&refs), timeout).await else {
        return vec![Err(StoreError::Unavailable); ops.len()];
    };
    if replies.iter().any(is_noscript) {
        // Redis lost its script cache (restart). A refused call wrote nothing, so every
        // call refused for NOSCRIPT, or for a gap behind one, is safe to send again.
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(WRITE);
        if !matches!(tokio::time::timeout(timeout, load.query_async::<String>(conn)).await, Ok(Ok(_))) {
            return vec![Err(StoreError::Unavailable); ops.len()];
        }
        let retry: Vec<usize> = (0..ops.len())
            .filter(|i| is_noscript(&replies[*i]) || matches!(&replies[*i], Err(e) if e.code() == Some("GAP")))
            .collect();
        let again: Vec<&WriteOp> = retry.iter().map(|i| &ops[*i]).collect();
        match send(conn, &batch.pipeline(&again), timeout).await {
            Some(second) => {
                for (i, r) in retry.into_iter().zip(second) {
                    replies[i] = r;
                }
            }
            None => return vec![Err(StoreError::Unavailable); ops.len()],
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
    mut conn: ConnectionManager,
    timeout: Duration,
    batch_max: usize,
    metrics: Metrics,
) {
    let batch = Batch { sha: redis::Script::new(WRITE).get_hash().to_string() };
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
                let _ = tokio::time::timeout(timeout, ping.query_async::<String>(&mut conn)).await;
                continue;
            }
        }
        keepalive.reset();
        let ops = std::mem::take(&mut buf);
        let started = Instant::now();
        let results = write_batch(&mut conn, &batch, &ops, timeout).await;
        metrics.redis_batch(ops.len(), started.elapsed());
        for (op, r) in ops.into_iter().zip(results) {
            if r == Err(StoreError::Fenced) {
                metrics.fencing_conflict();
            }
            let _ = op.done.send(r);
        }
    }
}
