//! One Redis connection type for both deployments: a single Redis (a self-reconnecting
//! multiplexed connection) or Redis Cluster (redis-rs `cluster-async`), so the rest of the
//! code never asks which one it talks to. Batches are split per hash slot on a cluster.
use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// Where the gateway's state lives, as configured (`SCANGW_REDIS_URL`, `SCANGW_REDIS_CLUSTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub urls: Vec<String>,
    pub cluster: bool,
}

impl Target {
    /// Several comma-separated URLs mean a cluster (any of them is a seed node); one URL is
    /// a single Redis unless `cluster` says otherwise. `None` for an empty entry.
    pub fn parse(list: &str, cluster: bool) -> Option<Target> {
        let urls: Vec<String> = list.split(',').map(|u| u.trim().to_string()).collect();
        if urls.iter().any(String::is_empty) {
            return None;
        }
        let cluster = cluster || urls.len() > 1;
        Some(Target { urls, cluster })
    }
}

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects lazily in both modes: the gateway starts (not ready) while Redis is down
    /// and recovers by itself when it returns. `timeout` bounds each response.
    pub fn open(target: &Target, timeout: Duration) -> RedisResult<Conn> {
        let connect = timeout.min(Duration::from_secs(1));
        if target.cluster {
            // Few retries: a caller waits at most `timeout` anyway. A write the client sends
            // again after losing its reply is answered `AGAIN` by the script and applies
            // once (see `store::WRITE`); a copy refused by a newer fence is why counter
            // operations are not rerun on FENCED here (see `Directory::ask`).
            let client = ClusterClient::builder(target.urls.clone()).retries(2).build()?;
            let cfg =
                redis::cluster::ClusterConfig::new().set_connection_timeout(connect).set_response_timeout(timeout);
            return Ok(Conn::Cluster(client.get_pending_async_connection_with_config(cfg)));
        }
        let client = redis::Client::open(target.urls[0].as_str())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(Conn::Single(ConnectionManager::new_lazy_with_config(client, cfg)?))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Sends `cmds` as pipelines and returns one reply per command, in order. On a single
    /// Redis that is one pipeline (one round trip). A cluster client refuses a pipeline
    /// whose keys span hash slots (redis-rs routes a pipeline by its first keyed command and
    /// fails with `CrossSlot` if another command names a different slot), so there the
    /// commands are grouped by the slot of their routing key, order kept within a slot, and
    /// every group is in flight at once: still one round trip per node, in parallel.
    /// `wait_replicas` > 0 appends `WAIT n timeout` to every group and fails the group's
    /// commands when fewer replicas acknowledged (the writes may exist; they are not
    /// reported as durable).
    pub async fn batch(
        &self,
        cmds: Vec<(String, Cmd)>,
        timeout: Duration,
        wait_replicas: u32,
    ) -> Vec<RedisResult<Value>> {
        let n = cmds.len();
        let mut groups: Vec<(Vec<usize>, Pipeline)> = Vec::new();
        if self.is_cluster() {
            let mut by_slot: HashMap<Slot, usize> = HashMap::new();
            for (i, (key, cmd)) in cmds.into_iter().enumerate() {
                let g = *by_slot.entry(Slot::for_key(key.as_bytes())).or_insert_with(|| {
                    groups.push((Vec::new(), new_pipe()));
                    groups.len() - 1
                });
                groups[g].0.push(i);
                groups[g].1.add_command(cmd);
            }
        } else {
            let mut pipe = new_pipe();
            let idx = (0..n).collect();
            for (_, cmd) in cmds {
                pipe.add_command(cmd);
            }
            groups.push((idx, pipe));
        }
        let sends = groups.into_iter().map(|(idx, mut pipe)| {
            let mut conn = self.clone();
            async move {
                if wait_replicas > 0 {
                    pipe.cmd("WAIT").arg(wait_replicas).arg(timeout.as_millis() as u64 / 2);
                }
                let r = tokio::time::timeout(timeout, pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn)).await;
                let mut replies = match r {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => {
                        tracing::warn!(kind = ?e.kind(), "redis batch failed");
                        return (idx, Err(e));
                    }
                    Err(_) => {
                        tracing::warn!("redis batch timed out");
                        return (idx, Err(unavailable("timed out")));
                    }
                };
                if wait_replicas > 0 {
                    let acked = match replies.pop() {
                        Some(Ok(Value::Int(k))) => k,
                        _ => 0,
                    };
                    if acked < i64::from(wait_replicas) {
                        tracing::warn!(acked, wanted = wait_replicas, "writes not acknowledged by enough replicas");
                        return (idx, Err(unavailable("not replicated")));
                    }
                }
                (idx, Ok(replies))
            }
        });
        let mut out: Vec<Option<RedisResult<Value>>> = (0..n).map(|_| None).collect();
        for (idx, r) in futures_util::future::join_all(sends).await {
            match r {
                Ok(replies) => {
                    for (i, v) in idx.into_iter().zip(replies) {
                        out[i] = Some(v);
                    }
                }
                Err(e) => {
                    for i in idx {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(unavailable("no reply")))).collect()
    }
}

fn new_pipe() -> Pipeline {
    let mut p = redis::pipe();
    p.ignore_errors();
    p
}

/// An error classified as "store unavailable" (it carries no server code).
pub fn unavailable(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::other(what))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_mean_a_cluster_and_empty_entries_are_refused() {
        assert_eq!(
            Target::parse("redis://a:1", false),
            Some(Target { urls: vec!["redis://a:1".into()], cluster: false })
        );
        assert!(Target::parse("redis://a:1", true).unwrap().cluster);
        let t = Target::parse("redis://a:1, redis://b:2", false).unwrap();
        assert!(t.cluster);
        assert_eq!(t.urls, vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(Target::parse("redis://a:1,", false), None);
        assert_eq!(Target::parse("", false), None);
    }
}
