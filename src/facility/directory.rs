//! Finds a facility's actor, activating it on first use on the arbiter chosen by hashing
//! the facility id (so a facility always lives on one thread, next to that thread's
//! writer), and retries once on a fresh activation when the owner was fenced or retired
//! and the command cannot have been applied. With ownership leases it also remembers, for a
//! short while, which facilities another node owns, so requests for them are forwarded
//! without an activation attempt each.
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use super::actor::{ActorMap, Command, Deps, Envelope, FacilityActor, FacilityError, Reply, Slot};
use super::lease::Ownership;
use crate::persistence::writer::WriterTx;
use crate::persistence::StoreError;

pub struct Directory {
    actors: Arc<ActorMap>,
    arbiters: Vec<ArbiterHandle>,
    writers: Vec<WriterTx>,
    deps: Arc<Deps>,
    next_gen: AtomicU64,
    /// Facilities another node owned under a live lease when last looked, with that node
    /// and until when to believe it (a third of the lease, at most a second: a dead owner is
    /// noticed when the forward fails, a moved one at the next look, which reads only the
    /// fence's owner and that owner's lease).
    owners: DashMap<String, Owner>,
}

#[derive(Clone)]
struct Owner {
    node: Arc<str>,
    url: Arc<str>,
    until: Instant,
}

impl Owner {
    fn elsewhere(&self) -> FacilityError {
        FacilityError::OwnedElsewhere { url: self.url.to_string(), owner: self.node.to_string() }
    }
}

/// How long an owner entry past its time is kept for a cheap second look (see `owners`).
const OWNER_KEPT: Duration = Duration::from_secs(60);

fn shard(id: &str, n: usize) -> usize {
    // SipHash with fixed keys: stable for the life of the process, which is all we need.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    (h.finish() % n as u64) as usize
}

impl Directory {
    /// `arbiters[i]` runs `writers[i]`; both lists have the same length.
    pub fn new(deps: Arc<Deps>, arbiters: Vec<ArbiterHandle>, writers: Vec<WriterTx>) -> Self {
        assert_eq!(arbiters.len(), writers.len());
        assert!(!arbiters.is_empty());
        Self {
            actors: Arc::new(ActorMap::default()),
            arbiters,
            writers,
            deps,
            next_gen: AtomicU64::new(1),
            owners: DashMap::new(),
        }
    }

    pub fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// Live facility actors on this node.
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    /// Commands waiting in all facility mailboxes on this node.
    pub fn mailbox_depth(&self) -> usize {
        self.actors.iter().map(|e| e.value().queued.load(Ordering::Relaxed)).sum()
    }

    /// Facilities with an actor on this node (the leaderboard applier's active set).
    pub fn active_ids(&self) -> Vec<String> {
        self.actors.iter().map(|e| e.key().clone()).collect()
    }

    pub fn is_active(&self, id: &str) -> bool {
        self.actors.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    /// Forgets what was seen of the facility's owner (it did not answer).
    pub fn forget_owner(&self, id: &str) {
        self.owners.remove(id);
    }

    /// Drops owner entries long past their time (the lease heartbeat calls this), so a node
    /// that forwards for many facilities holds only the recent ones.
    pub fn prune_owners(&self) {
        let now = Instant::now();
        self.owners.retain(|_, o| o.until + OWNER_KEPT > now);
    }

    fn remember_owner(&self, id: &str, node: &str, url: &str) {
        // Long enough to spare a look per request, short enough that a moved owner is found
        // again soon (a long lease must not mean a long detour).
        let believe = self.deps.node.as_ref().map_or(Duration::ZERO, |n| n.renew_every().min(Duration::from_secs(1)));
        self.owners
            .insert(id.to_string(), Owner { node: node.into(), url: url.into(), until: Instant::now() + believe });
    }

    /// Another node that owns the facility while it is not active here, from what was seen
    /// of it: believed for a moment, then looked at again with two small reads (the fence's
    /// owner, that owner's lease) rather than an activation attempt, which reads the whole
    /// day. `None`: not known to be owned elsewhere (any more); activate to find out.
    async fn owned_elsewhere(&self, id: &str) -> Option<FacilityError> {
        if self.actors.contains_key(id) {
            return None;
        }
        let seen = self.owners.get(id)?.clone();
        if seen.until > Instant::now() {
            return Some(seen.elsewhere());
        }
        let store = &self.deps.store;
        let still = match store.fence_owner(id).await {
            Ok(Some(o)) if *o == *seen.node => store.node_url(&o).await.ok().flatten(),
            _ => None,
        };
        match still {
            Some(url) => {
                self.remember_owner(id, &seen.node, &url);
                Some(FacilityError::OwnedElsewhere { url, owner: seen.node.to_string() })
            }
            None => {
                self.owners.remove(id);
                None
            }
        }
    }

    fn get(&self, id: &str, ownership: Ownership) -> Slot {
        if let Some(e) = self.actors.get(id) {
            return e.value().clone();
        }
        self.actors
            .entry(id.to_string())
            .or_insert_with(|| {
                let i = shard(id, self.arbiters.len());
                let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
                let queued = Arc::new(AtomicUsize::new(0));
                let actor = FacilityActor::new(
                    id.to_string(),
                    gen,
                    ownership,
                    self.deps.clone(),
                    self.actors.clone(),
                    queued.clone(),
                    self.writers[i].clone(),
                );
                Slot { gen, addr: FacilityActor::start_in_arbiter(&self.arbiters[i], move |_| actor), queued }
            })
            .value()
            .clone()
    }

    fn forget(&self, id: &str, gen: u64) {
        self.actors.remove_if(id, |_, slot| slot.gen == gen);
    }

    /// Sends a command to the facility and awaits its answer, taking the facility over from
    /// any other node if it must (today's behaviour of a single node; with leases, what a
    /// request forwarded here and background work that cannot forward do).
    pub async fn ask<T>(&self, id: &str, make: impl Fn(Reply<T>) -> Command) -> Result<T, FacilityError> {
        self.ask_as(id, Ownership::TakeOver, make).await
    }

    /// [`Self::ask`] that answers [`FacilityError::OwnedElsewhere`] instead of taking the
    /// facility from a node whose lease lives: the caller forwards the request there.
    pub async fn ask_routed<T>(&self, id: &str, make: impl Fn(Reply<T>) -> Command) -> Result<T, FacilityError> {
        self.ask_as(id, Ownership::Forward, make).await
    }

    async fn ask_as<T>(
        &self,
        id: &str,
        ownership: Ownership,
        make: impl Fn(Reply<T>) -> Command,
    ) -> Result<T, FacilityError> {
        let mut refenced = false;
        for _ in 0..3 {
            if ownership == Ownership::Forward {
                if let Some(e) = self.owned_elsewhere(id).await {
                    return Err(e);
                }
            }
            let slot = self.get(id, ownership);
            let gen = slot.gen;
            if slot.queued.fetch_add(1, Ordering::Relaxed) >= self.deps.mailbox_capacity {
                slot.queued.fetch_sub(1, Ordering::Relaxed);
                self.deps.metrics.overloaded_mailbox.increment(1);
                return Err(FacilityError::Overloaded);
            }
            let (tx, rx) = oneshot::channel();
            let cmd = make(tx);
            let counter_op = matches!(cmd, Command::CallNext { .. } | Command::Act { .. });
            match slot.addr.try_send(Envelope(cmd)) {
                Ok(()) => {}
                Err(SendError::Full(_)) => {
                    slot.queued.fetch_sub(1, Ordering::Relaxed);
                    self.deps.metrics.overloaded_mailbox.increment(1);
                    return Err(FacilityError::Overloaded);
                }
                Err(SendError::Closed(_)) => {
                    slot.queued.fetch_sub(1, Ordering::Relaxed);
                    self.forget(id, gen);
                    continue;
                }
            }
            match rx.await {
                // A counter operation refused by the fence may still have been applied: on
                // a cluster the client resends a pipeline whose reply it lost, and a copy
                // that arrives after another activation took over is refused although the
                // first copy landed. Run again, call-next would call a second patient and
                // complete would answer 409 for its own work: the outcome is unknown, the
                // caller is told so (503) and looks before it acts again. (A scan run again
                // finds its patient's token; reads change nothing.)
                Ok(Err(FacilityError::Store(StoreError::Fenced))) if counter_op && self.deps.store.resends_writes() => {
                    self.forget(id, gen);
                    return Err(FacilityError::Store(StoreError::Unavailable));
                }
                Ok(Err(FacilityError::OwnedElsewhere { url, owner })) => {
                    self.remember_owner(id, &owner, &url);
                    if ownership == Ownership::Forward {
                        return Err(FacilityError::OwnedElsewhere { url, owner });
                    }
                    // A routed request's activation found the owner; this caller takes over.
                    self.forget(id, gen);
                }
                Ok(Err(FacilityError::Store(StoreError::Fenced | StoreError::Gap))) if !refenced => {
                    refenced = true;
                    // Another activation took over before this request's write was sent (a
                    // single Redis never resends), or an earlier write is missing (GAP: this
                    // one was not applied, see `store::WRITE`): nothing of this request was
                    // written, so it is safe to run it once more afresh.
                    self.forget(id, gen);
                }
                Ok(r) => return r,
                // The actor went away before answering (passivated or poisoned).
                Err(_) => self.forget(id, gen),
            }
        }
        Err(FacilityError::Store(StoreError::Unavailable))
    }

    /// Tells a live actor about new registry data; no-op when not active here.
    pub fn reconfigure(&self, info: crate::registry::FacilityInfo) {
        if let Some(e) = self.actors.get(&info.facility_id) {
            let slot = e.value();
            slot.queued.fetch_add(1, Ordering::Relaxed);
            if slot.addr.try_send(Envelope(Command::Reconfigure(Box::new(info)))).is_err() {
                slot.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn shard_is_stable_and_spreads() {
        assert_eq!(shard("IN0410000183", 4), shard("IN0410000183", 4));
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[shard(&format!("IN{i:010}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }
}
