//! Ownership across nodes: each node has a random id and an advertised URL, and holds a
//! lease in Redis (renewed by a heartbeat) while it lives. A facility's fence names the node
//! that owns it; another node forwards requests to that owner while its lease lives instead
//! of taking the facility over, and takes over only once the lease has expired.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::persistence::Store;

/// This node, as the others see it.
#[derive(Debug, Clone)]
pub struct Node {
    /// 16 hex digits, new at every start (a restarted node owns nothing until it activates).
    pub id: String,
    /// Base URL the other nodes forward to (`SCANGW_ADVERTISE_URL`).
    pub url: String,
    /// `SCANGW_NODE_LEASE_MS`.
    pub lease: Duration,
}

impl Node {
    pub fn new(url: String, lease: Duration) -> Self {
        Self { id: format!("{:016x}", rand::random::<u64>()), url, lease }
    }

    /// How often the lease is renewed: a third of it, so two renewals may fail in a row
    /// (a Redis blip) before the others take over.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

/// Whether an activation may take a facility from a node whose lease lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Yes (no leases, a request forwarded to us, background work that cannot forward).
    TakeOver,
    /// No: the caller forwards to the owner (see [`crate::facility::FacilityError::OwnedElsewhere`]).
    Forward,
}

/// The heartbeat of this node's lease; [`Heartbeat::stop`] ends it and gives the lease up.
pub struct Heartbeat {
    node: Arc<Node>,
    store: Store,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Renews the lease now and then every [`Node::renew_every`]; `tick` runs after each
    /// renewal (the directory prunes its owner cache there).
    pub fn spawn(store: Store, node: Arc<Node>, tick: impl Fn() + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, n, flag) = (store.clone(), node.clone(), stop.clone());
        let task = actix_rt::spawn(async move {
            let mut every = tokio::time::interval(n.renew_every());
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = s.renew_lease(&n.id, &n.url, n.lease).await {
                    tracing::warn!(error = %e, "node lease not renewed");
                }
                tick();
            }
        });
        Self { node, store, stop, task }
    }

    /// Stops renewing and deletes the lease, so the other nodes take this node's facilities
    /// over at once (after the server stopped: no request of ours is still writing).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        let _ = self.task.await;
        // On the same connection as the renewals: Redis runs the DEL after any renewal
        // already sent.
        match self.store.drop_lease(&self.node.id).await {
            Ok(()) => tracing::info!("node lease given up"),
            Err(e) => tracing::warn!(error = %e, "node lease not given up; the others wait for it to expire"),
        }
    }
}
