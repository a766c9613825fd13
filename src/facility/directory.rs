//! Finds a facility's actor, activating it on first use on the home chosen by hashing the
//! facility id. Homes are the HTTP worker threads themselves, each with its own writer and
//! Redis connections, so a request that arrives on its facility's thread never leaves it
//! (thread per core); retries once on a fresh activation when the owner was fenced or retired
//! and the command cannot have been applied. With ownership leases it also remembers, for a
//! short while, which facilities another node owns, so requests for them are forwarded
//! without an activation attempt each.
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::{oneshot, Notify};

use super::actor::{ActorMap, Command, Deps, Envelope, FacilityActor, FacilityError, Reply, Slot};
use super::lease::Ownership;
use crate::persistence::writer::WriterTx;
use crate::persistence::{Store, StoreError};

/// A thread facility actors live on: its arbiter, its group-commit writer and its own Redis
/// handle (activations and reads). Everything an actor waits for then wakes its own thread.
#[derive(Clone)]
pub struct Home {
    pub thread: ThreadId,
    pub arbiter: ArbiterHandle,
    pub writer: WriterTx,
    pub store: Store,
}

impl Home {
    /// A home on the calling thread (an arbiter): `writer` must have been spawned here.
    pub fn here(writer: WriterTx, store: Store) -> Home {
        Home { thread: std::thread::current().id(), arbiter: Arbiter::current(), writer, store }
    }

    /// A home whose thread stopped (its writer went with its runtime).
    fn is_gone(&self) -> bool {
        self.writer.is_closed()
    }
}

/// Builds a [`Home`] on the calling thread (spawns its writer there).
pub type MakeHome = Box<dyn Fn() -> Home + Send + Sync>;

/// How long a request waits for the home of its facility to start (the HTTP workers start
/// with the server; a worker that died is replaced by a new one).
const HOME_WAIT: Duration = Duration::from_secs(5);

pub struct Directory {
    actors: Arc<ActorMap>,
    homes: RwLock<Vec<Option<Home>>>,
    settled: Notify,
    make_home: MakeHome,
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
    /// A directory of `homes` homes, each built by `make_home` on the thread that adopts it
    /// ([`Self::adopt_current_thread`]).
    pub fn new(deps: Arc<Deps>, homes: usize, make_home: MakeHome) -> Self {
        assert!(homes > 0);
        Self {
            actors: Arc::new(ActorMap::default()),
            homes: RwLock::new(vec![None; homes]),
            settled: Notify::new(),
            make_home,
            deps,
            next_gen: AtomicU64::new(1),
            owners: DashMap::new(),
        }
    }

    /// Makes the calling thread (an HTTP worker, as it builds its app) a home of facility
    /// actors: it takes a free place, or the place of a thread that stopped (a worker the
    /// server restarted). Calling it again on the same thread changes nothing; a thread
    /// beyond the number of homes only serves HTTP.
    pub fn adopt_current_thread(&self) {
        let me = std::thread::current().id();
        let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
        if homes.iter().flatten().any(|h| h.thread == me && !h.is_gone()) {
            return;
        }
        let Some(free) = homes.iter().position(|h| h.as_ref().is_none_or(Home::is_gone)) else {
            return;
        };
        homes[free] = Some((self.make_home)());
        drop(homes);
        self.settled.notify_waiters();
    }

    /// The home of place `i`, once a live thread holds it.
    async fn home(&self, i: usize) -> Result<Home, FacilityError> {
        let deadline = tokio::time::Instant::now() + HOME_WAIT;
        loop {
            // Created before the check, so an adoption in between still wakes it.
            let adopted = self.settled.notified();
            let home = self.homes.read().unwrap_or_else(|e| e.into_inner())[i].clone();
            if let Some(h) = home.filter(|h| !h.is_gone()) {
                return Ok(h);
            }
            if tokio::time::timeout_at(deadline, adopted).await.is_err() {
                return Err(FacilityError::Store(StoreError::Unavailable));
            }
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

    async fn get(&self, id: &str, ownership: Ownership) -> Result<Slot, FacilityError> {
        if let Some(e) = self.actors.get(id) {
            return Ok(e.value().clone());
        }
        let n = self.homes.read().unwrap_or_else(|e| e.into_inner()).len();
        let home = self.home(shard(id, n)).await?;
        Ok(self
            .actors
            .entry(id.to_string())
            .or_insert_with(|| {
                let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
                let queued = Arc::new(AtomicUsize::new(0));
                let actor = FacilityActor::new(
                    id.to_string(),
                    gen,
                    ownership,
                    self.deps.clone(),
                    self.actors.clone(),
                    queued.clone(),
                    &home,
                );
                Slot {
                    gen,
                    addr: FacilityActor::start_in_arbiter(&home.arbiter, move |_| actor),
                    queued,
                    thread: home.thread,
                }
            })
            .value()
            .clone())
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
            let slot = self.get(id, ownership).await?;
            let gen = slot.gen;
            if slot.thread == std::thread::current().id() {
                self.deps.metrics.facility_requests_home.increment(1);
            } else {
                self.deps.metrics.facility_requests_other.increment(1);
            }
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
    use std::sync::Arc;
    use std::time::Duration;

    use actix::prelude::*;
    use tokio::sync::{mpsc, oneshot};

    use super::{shard, Deps, Directory, Home};
    use crate::persistence::conn::Target;
    use crate::persistence::Store;

    #[test]
    fn shard_is_stable_and_spreads() {
        assert_eq!(shard("IN0410000183", 4), shard("IN0410000183", 4));
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[shard(&format!("IN{i:010}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }

    fn directory(homes: usize) -> Arc<Directory> {
        // Connects lazily: nothing here talks to Redis.
        let target = Target { urls: vec!["redis://127.0.0.1:1".into()], cluster: false };
        let store = Store::open(&target, Duration::from_millis(100)).unwrap();
        let deps = Arc::new(Deps {
            store: store.clone(),
            clock: Arc::new(crate::clock::SystemClock),
            hasher: crate::facility::patient_keys::PatientHasher::new("test-secret-0123456789"),
            metrics: crate::telemetry::metrics::Metrics::new(),
            max_priority_streak: 3,
            default_service_s: 300,
            idle_timeout: Duration::from_secs(60),
            max_active: 0,
            pressure_idle: Duration::from_secs(60),
            active: Default::default(),
            mailbox_capacity: 16,
            day_retention_s: 0,
            default_tz: jiff::tz::TimeZone::UTC,
            node: None,
        });
        Arc::new(Directory::new(
            deps,
            homes,
            Box::new(move || {
                // A writer that takes writes and never answers: only its liveness matters here.
                let (tx, mut rx) = mpsc::channel(4);
                actix_rt::spawn(async move { while rx.recv().await.is_some() {} });
                Home::here(tx, store.clone())
            }),
        ))
    }

    /// Runs `adopt_current_thread` on `arbiter`'s thread and returns that thread's id.
    async fn adopt_on(dir: &Arc<Directory>, arbiter: &Arbiter) -> std::thread::ThreadId {
        let (tx, rx) = oneshot::channel();
        let dir = dir.clone();
        arbiter.spawn(async move {
            dir.adopt_current_thread();
            let _ = tx.send(std::thread::current().id());
        });
        rx.await.unwrap()
    }

    fn threads(dir: &Directory) -> Vec<Option<std::thread::ThreadId>> {
        dir.homes.read().unwrap().iter().map(|h| h.as_ref().map(|h| h.thread)).collect()
    }

    /// Homes are the worker threads: each takes one place, once; a thread beyond the number
    /// of homes serves HTTP only; a worker that stopped leaves its place to the next one.
    #[actix_rt::test]
    async fn each_worker_thread_takes_one_home_and_a_stopped_ones_place_is_taken_again() {
        let dir = directory(2);
        let (a, b, c) = (Arbiter::new(), Arbiter::new(), Arbiter::new());
        let ta = adopt_on(&dir, &a).await;
        assert_eq!(adopt_on(&dir, &a).await, ta);
        assert_eq!(threads(&dir), vec![Some(ta), None], "adopting twice takes one place");
        let tb = adopt_on(&dir, &b).await;
        let tc = adopt_on(&dir, &c).await;
        assert_eq!(threads(&dir), vec![Some(ta), Some(tb)], "a third thread finds no place");
        a.stop();
        a.join().unwrap();
        // The stopped thread's writer went with its runtime.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dir.homes.read().unwrap()[0].as_ref().unwrap().is_gone() {
            assert!(std::time::Instant::now() < deadline, "the stopped home never closed");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(adopt_on(&dir, &c).await, tc);
        assert_eq!(threads(&dir), vec![Some(tc), Some(tb)], "the stopped home's place is taken again");
    }

    /// A request that comes before the home of its facility exists waits for it, then is
    /// answered by an actor on that home's thread.
    #[actix_rt::test]
    async fn a_facility_waits_for_its_home_and_lives_on_that_thread() {
        let dir = directory(1);
        let waiting = {
            let dir = dir.clone();
            actix_rt::spawn(
                async move { dir.get("IN0410000183", super::Ownership::TakeOver).await.map(|slot| slot.thread) },
            )
        };
        actix_rt::task::yield_now().await;
        assert!(!waiting.is_finished(), "no home yet");
        let a = Arbiter::new();
        let ta = adopt_on(&dir, &a).await;
        assert_eq!(waiting.await.unwrap().ok(), Some(ta));
        a.stop();
    }
}
