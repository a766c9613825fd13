//! The facility actor: a thin shell around [`FacilityQueue`]. It activates by taking the
//! facility's fencing epoch and rehydrating the day from Redis, applies commands in order,
//! hands each change to its arbiter's group-commit writer, and answers only once Redis
//! holds every change the answer reflects. Any failed write poisons the actor: it leaves
//! the directory and the next request rehydrates from Redis, the source of truth.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use jiff::civil::Date;
use jiff::Timestamp;
use tokio::sync::oneshot;

use super::lease::{Node, Ownership};
use super::patient_keys::PatientHasher;
use super::queue::{CounterKind, FacilityQueue, Lookup, QueueError, ReplayCheck, ScanInput, ScanKind, Token, TokenKey};
use super::token_id::TokenRef;
use super::view::{CounterQueueView, QueueView, TokenView};
use crate::clock::SharedClock;
use crate::ingress::limits::Limited;
use crate::persistence::keys::{self, FacilityKeys};
use crate::persistence::store::{Activated, Activation, Claim, Fence};
use crate::persistence::writer::{BoardOwner, WriteOp, WriterTx};
use crate::persistence::{record, Store, StoreError};
use crate::registry::FacilityInfo;
use crate::telemetry::metrics::{Metrics, ScanOutcome};

/// Everything an actor needs, shared by all actors.
pub struct Deps {
    pub store: Store,
    pub clock: SharedClock,
    pub hasher: PatientHasher,
    pub metrics: Metrics,
    pub max_priority_streak: u32,
    pub default_service_s: u64,
    pub idle_timeout: Duration,
    /// Soft cap on this node's actors (0 = none): above it, see [`Deps::idle_limit`].
    pub max_active: usize,
    pub pressure_idle: Duration,
    /// Actors alive on this node (started, not yet stopped).
    pub active: AtomicUsize,
    pub mailbox_capacity: usize,
    /// How long a finished day's tokens stay in Redis after local midnight.
    pub day_retention_s: i64,
    /// `SCANGW_DEFAULT_TIMEZONE`: an activation's guess of the facility's timezone.
    pub default_tz: jiff::tz::TimeZone,
    /// This node when ownership leases are on (`SCANGW_ADVERTISE_URL`), else `None`.
    pub node: Option<Arc<Node>>,
}

impl Deps {
    /// How long an actor may sit idle before it passivates. Over the cap, the shorter
    /// pressure limit applies to every actor, so the quietest facilities leave first and
    /// busy ones (never idle that long) stay: a soft cap, exceeded only while the node
    /// really has more busy facilities than it. Passivating loses nothing (Redis holds
    /// the day); the price is one activation when the facility is next used.
    pub fn idle_limit(&self) -> Duration {
        if self.max_active > 0 && self.active.load(Ordering::Relaxed) > self.max_active {
            self.pressure_idle.min(self.idle_timeout)
        } else {
            self.idle_timeout
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilityError {
    #[error("unknown facility")]
    UnknownFacility,
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the facility is overloaded")]
    Overloaded,
    /// The scan would have issued a new token past the patient's rate limit.
    #[error("rate limited")]
    RateLimited(Limited),
    /// The scan would have issued a new token after its request's deadline (a protocol
    /// share whose on-share could no longer be sent).
    #[error("the request's deadline passed before a token was issued")]
    Expired,
    /// Another node holds the facility under a live lease: forward to it at `url`. Only
    /// [`Ownership::Forward`] activations answer this.
    #[error("the facility is owned by another node")]
    OwnedElsewhere { url: String, owner: String },
}

pub type Reply<T> = oneshot::Sender<Result<T, FacilityError>>;

#[derive(Debug, Clone)]
pub struct ScanReply {
    pub view: TokenView,
    pub kind: ScanKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Recall,
    Complete,
    NoShow,
    Transfer(String),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Recall => "recall",
            Action::Complete => "complete",
            Action::NoShow => "no_show",
            Action::Transfer(_) => "transfer",
        }
    }
}

/// Admits a scan's new token: charges the rate limits, and for a share checks its deadline.
/// The actor asks only when the scan would issue a new token (it alone knows), right before
/// issuing it: a replay of an Idempotency-Key or a share, and a repeat, answer what was
/// already issued and spend nothing.
pub type Admission = Box<dyn FnOnce() -> Result<(), Refusal> + Send>;

/// Why an [`Admission`] refused a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Limited(Limited),
    /// The request's deadline passed (see [`before_deadline`]).
    Expired,
}

/// The deadline part of an admission: refuses once `clock` reaches `deadline_ms`. Checked by
/// the actor right before it issues, so a request that waited in the facility's mailbox (or
/// behind its activation) past its deadline gets no token.
pub fn before_deadline(clock: &SharedClock, deadline_ms: i64) -> Result<(), Refusal> {
    if clock.now().as_millisecond() >= deadline_ms {
        return Err(Refusal::Expired);
    }
    Ok(())
}

pub enum Command {
    Scan {
        input: ScanInput,
        admit: Admission,
        reply: Reply<ScanReply>,
    },
    /// `patient`: whether the asker may see the patient profile (staff of the facility).
    Get {
        token: TokenRef,
        patient: bool,
        reply: Reply<TokenView>,
    },
    CallNext {
        counter: String,
        reply: Reply<Option<TokenView>>,
    },
    Act {
        token: TokenRef,
        action: Action,
        reply: Reply<TokenView>,
    },
    Queue {
        counter: Option<String>,
        reply: Reply<QueueView>,
    },
    Reconfigure(Box<FacilityInfo>),
}

impl Command {
    fn fail(self, e: FacilityError) {
        match self {
            Command::Scan { reply, .. } => drop(reply.send(Err(e))),
            Command::Get { reply, .. } => drop(reply.send(Err(e))),
            Command::CallNext { reply, .. } => drop(reply.send(Err(e))),
            Command::Act { reply, .. } => drop(reply.send(Err(e))),
            Command::Queue { reply, .. } => drop(reply.send(Err(e))),
            Command::Reconfigure(_) => {}
        }
    }
}

/// The actor's only message: commands carry their own reply channel, so callers can use
/// `try_send` on the bounded mailbox and shed load instead of queueing without bound.
pub struct Envelope(pub Command);

impl Message for Envelope {
    type Result = ();
}

/// What the writer has confirmed. Writes of one actor are applied in order (the Lua
/// sequence check refuses any write behind a missing one), so a success at `n` means every
/// earlier write landed, and a failure at `n` means every later one fails too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Durable {
    /// Highest write known applied.
    upto: u64,
    /// Lowest write known refused or lost, and why.
    failed: Option<(u64, StoreError)>,
    /// Writes answered by the writer so far (either way).
    resolved: u64,
}

impl Durable {
    /// The fate of an answer that reflects writes up to `target`, once known.
    fn outcome(&self, target: u64) -> Option<Result<(), StoreError>> {
        if self.upto >= target {
            return Some(Ok(()));
        }
        match self.failed {
            Some((at, e)) if at <= target => Some(Err(e)),
            _ => None,
        }
    }
}

/// An answer held back until the writes it reflects are durable.
struct Waiting {
    target: u64,
    answer: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// Only what the scan path needs from the registry record: the queue's config holds the
/// counters, and the state code labels metrics. Names and addresses stay in Redis.
struct Ready {
    fence: Fence,
    /// Where this facility's tokens count on the boards (its state code labels the scan
    /// metrics; the whole travels with each counting write).
    board: Arc<BoardOwner>,
    queue: FacilityQueue,
    /// The service day whose token hash this activation has given its expiry. One write per
    /// day carries the EXPIRE, not every write: writes are applied in sequence (the GAP
    /// check), so any later write that succeeds proves that one was applied too.
    expiry_set: Option<Date>,
    /// The day's token hash key, kept while the day lasts (every write names it).
    day_key: Option<(Date, Arc<str>)>,
}

impl Ready {
    fn day_key(&mut self, keys: &FacilityKeys) -> Arc<str> {
        let day = self.queue.day();
        match &self.day_key {
            Some((d, k)) if *d == day => k.clone(),
            _ => {
                let k: Arc<str> = keys.day(day).into();
                self.day_key = Some((day, k.clone()));
                k
            }
        }
    }
}

enum Phase {
    Loading,
    Ready(Box<Ready>),
    Failed(FacilityError),
}

/// A live actor as the directory knows it. `queued` counts messages sent but not yet
/// handled: actix lets every fresh `Addr` clone past a full mailbox, so the bound on the
/// mailbox is enforced here.
#[derive(Clone)]
pub struct Slot {
    pub gen: u64,
    pub addr: Addr<FacilityActor>,
    pub queued: Arc<AtomicUsize>,
    /// The thread the actor lives on (its home).
    pub thread: std::thread::ThreadId,
}

pub type ActorMap = DashMap<String, Slot>;

pub struct FacilityActor {
    id: String,
    keys: Arc<FacilityKeys>,
    gen: u64,
    /// How this actor's activation treats a facility another node holds.
    ownership: Ownership,
    deps: Arc<Deps>,
    actors: Arc<ActorMap>,
    queued: Arc<AtomicUsize>,
    writer: WriterTx,
    /// Its thread's Redis handle (activation and reads), so their replies land here too.
    store: Store,
    phase: Phase,
    last_active: Instant,
    /// Count of writes (barriers included) handed to the writer; answers wait on it.
    submitted: u64,
    /// The facility's write sequence in Redis (`w`), which only non-empty writes advance.
    wseq: u64,
    durable: Durable,
    /// Answers waiting for their writes, in submission order (so targets never decrease).
    waiting: VecDeque<Waiting>,
    /// Live tokens this actor last added to the node's gauge.
    reported_live: usize,
}

impl FacilityActor {
    pub fn new(
        id: String,
        gen: u64,
        ownership: Ownership,
        deps: Arc<Deps>,
        actors: Arc<ActorMap>,
        queued: Arc<AtomicUsize>,
        home: &super::directory::Home,
    ) -> Self {
        Self {
            keys: Arc::new(FacilityKeys::new(&id)),
            id,
            gen,
            ownership,
            deps,
            actors,
            queued,
            writer: home.writer.clone(),
            store: home.store.clone(),
            phase: Phase::Loading,
            last_active: Instant::now(),
            submitted: 0,
            wseq: 0,
            durable: Durable::default(),
            waiting: VecDeque::new(),
            reported_live: 0,
        }
    }

    /// Moves the node's live-token gauge by this actor's change since the last report.
    fn report_live(&mut self) {
        let now = match &self.phase {
            Phase::Ready(r) => r.queue.len(),
            _ => 0,
        };
        if now != self.reported_live {
            self.deps.metrics.live_tokens.increment(now as f64 - self.reported_live as f64);
            self.reported_live = now;
        }
    }

    fn leave_directory(&self) {
        self.actors.remove_if(&self.id, |_, slot| slot.gen == self.gen);
    }

    /// Records the writer's answer for write `seq`. A failure retires the actor: it leaves
    /// the directory at once (new requests rehydrate elsewhere) and stops once every
    /// earlier write has been answered, so answers that did land are still delivered.
    fn resolved(&mut self, seq: u64, res: Result<(), StoreError>, ctx: &mut Context<Self>) {
        let d = &mut self.durable;
        d.resolved += 1;
        match res {
            Ok(()) => d.upto = d.upto.max(seq),
            Err(e) => {
                if d.failed.is_none_or(|(at, _)| seq < at) {
                    d.failed = Some((seq, e));
                }
            }
        }
        // Answer in order: an answer whose fate is known behind one still unknown waits
        // for it (it is never long: writes of one actor are answered in order).
        while let Some(fate) = self.waiting.front().and_then(|w| self.durable.outcome(w.target)) {
            let w = self.waiting.pop_front().expect("front exists");
            (w.answer)(fate);
        }
        if let Err(e) = res {
            if !matches!(self.phase, Phase::Failed(_)) {
                tracing::warn!(facility = %self.id, error = %e, "facility write refused; dropping actor to rehydrate");
                self.phase = Phase::Failed(FacilityError::Store(e));
                self.leave_directory();
            }
        }
        if matches!(self.phase, Phase::Failed(_)) && self.durable.resolved == self.submitted {
            ctx.stop();
        }
    }

    /// Takes the facility's fence for this node. With leases, a [`Ownership::Forward`]
    /// activation leaves a facility alone while the node its fence names holds a live lease
    /// (one round trip more, to read that lease: on a cluster it lives in another slot), and
    /// takes it from that node only once the lease has expired.
    async fn take(
        deps: &Deps,
        store: &Store,
        id: &str,
        day: Date,
        ownership: Ownership,
    ) -> Result<Activation, FacilityError> {
        let mut from: Option<String> = None;
        // Twice is enough unless ownership keeps moving while we look; then give up (503).
        for _ in 0..3 {
            let claim = match (&deps.node, ownership) {
                (None, _) => Claim::Anonymous,
                (Some(n), Ownership::TakeOver) => Claim::TakeOver { me: &n.id },
                (Some(n), Ownership::Forward) => Claim::IfFree { me: &n.id, from: from.as_deref() },
            };
            match store.activate(id, day, claim).await? {
                Activated::Taken(act) => return Ok(act),
                Activated::Unknown => return Err(FacilityError::UnknownFacility),
                Activated::OwnedBy(owner) => match store.node_url(&owner).await? {
                    Some(url) => return Err(FacilityError::OwnedElsewhere { url, owner }),
                    None => from = Some(owner),
                },
            }
        }
        Err(FacilityError::Store(StoreError::Unavailable))
    }

    async fn load(deps: Arc<Deps>, store: Store, id: String, ownership: Ownership) -> Result<Ready, FacilityError> {
        let started = Instant::now();
        // The day is needed before the registry record names the facility's timezone: guess
        // it in the default one (every facility of a national registry is on IST) and read
        // again only if the record says otherwise.
        let guess = deps.clock.now().to_zoned(deps.default_tz.clone()).date();
        let act = Self::take(&deps, &store, &id, guess, ownership).await?;
        let fence = act.fence;
        let epoch = fence.epoch;
        let info: FacilityInfo = serde_json::from_str(&act.info).map_err(|_| {
            tracing::error!(facility = %id, "corrupt registry record");
            FacilityError::Store(StoreError::Unavailable)
        })?;
        let cfg = info.queue_config(deps.max_priority_streak, deps.default_service_s);
        // The day as of now, after the activation: the clock may have crossed midnight while
        // it ran. (A day the clock reaches later is read from Redis by the day roll.)
        let day = deps.clock.now().to_zoned(cfg.tz.clone()).date();
        // The leaderboard mark must land before the first write (a crash from here on leaves
        // the facility findable by every node's applier, see crate::leaderboard::applier).
        // On a single Redis the activation script made it; on a cluster it is one more
        // round trip, which the first write waits for.
        let mark = async {
            if act.marked {
                Ok(())
            } else {
                store.lb_mark(&id, epoch).await
            }
        };
        let read = async {
            if day == guess {
                Ok(act.day)
            } else {
                store.load_day(&id, day).await
            }
        };
        let (marked, rows) = tokio::join!(mark, read);
        marked?;
        let queue = Self::rebuild(&deps, &id, cfg, day, &rows?);
        tracing::debug!(facility = %id, epoch, tokens = queue.len(), "facility activated");
        deps.metrics.activation.record(started.elapsed().as_secs_f64());
        Ok(Ready { fence, board: Arc::new(info.board_owner()), queue, expiry_set: None, day_key: None })
    }

    /// The queue of `day` from its stored token records (field, record). An unreadable
    /// record is skipped, but its number stays taken.
    fn rebuild(
        deps: &Deps,
        id: &str,
        cfg: super::queue::QueueConfig,
        day: Date,
        rows: &[(String, String)],
    ) -> FacilityQueue {
        let mut tokens = Vec::with_capacity(rows.len());
        let mut reserved = Vec::new();
        for (field, raw) in rows {
            let Some((counter, number)) = keys::parse_token_field(field) else { continue };
            match record::decode(counter, number, raw) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    tracing::error!(facility = %id, %e, "skipping unreadable token record");
                    reserved.push((counter.to_string(), number));
                }
            }
        }
        let hasher = deps.hasher.clone();
        let mut queue = FacilityQueue::restore(cfg, day, tokens, |p| hasher.keys(p));
        for (c, n) in reserved {
            queue.reserve_number(&c, n);
        }
        queue
    }

    /// Seconds the day's token hash should live from now: until the end of the local
    /// service day plus the retention. Relative, because "now" is the injected clock and
    /// Redis expires by its own clock: an absolute time would be wrong under a test clock.
    fn expire_in(day: Date, tz: &jiff::tz::TimeZone, now: Timestamp, retention_s: i64) -> i64 {
        let end = day
            .tomorrow()
            .ok()
            .and_then(|d| d.to_zoned(tz.clone()).ok())
            .map(|z| z.timestamp().as_second())
            .unwrap_or_else(|| now.as_second() + 86_400);
        (end - now.as_second() + retention_s).max(1)
    }

    /// Hands the queue's pending changes to the writer as one fenced write. With no changes
    /// it is an empty write: a barrier that still checks the epoch, so even a read or an
    /// unchanged answer from an actor that lost ownership is refused, not served stale.
    fn commit(&mut self, ctx: &mut Context<Self>, permit: tokio::sync::mpsc::OwnedPermit<WriteOp>) {
        let Phase::Ready(r) = &mut self.phase else { return };
        let day = r.queue.day();
        let mut fields: Vec<(String, String)> = Vec::new();
        let issued =
            r.queue.take_changes(|t| fields.push((keys::token_field(&t.counter, t.number), record::encode(t))));
        let expire_in = if fields.is_empty() || r.expiry_set == Some(day) {
            0
        } else {
            r.expiry_set = Some(day);
            Self::expire_in(day, &r.queue.config().tz, self.deps.clock.now(), self.deps.day_retention_s)
        };
        let lb_count_fields: Vec<String> = issued
            .iter()
            .map(|c| keys::lb_count_field(day, r.queue.counter(c).map_or(CounterKind::Other, |c| c.kind).as_str()))
            .collect();
        let (done, done_rx) = oneshot::channel();
        let prev_seq = self.wseq;
        // Only a write that changes something advances the sequence in Redis (see WRITE).
        if !fields.is_empty() || !lb_count_fields.is_empty() {
            self.wseq += 1;
        }
        self.submitted += 1;
        let seq = self.submitted;
        permit.send(WriteOp {
            lb_count_fields,
            fields,
            board: Some(r.board.clone()),
            ..WriteOp::barrier_of(self.keys.clone(), r.day_key(&self.keys), r.fence.clone(), prev_seq, expire_in, done)
        });
        self.report_live();
        ctx.spawn(
            async move { done_rx.await.unwrap_or(Err(StoreError::Unavailable)) }
                .into_actor(self)
                .map(move |res, act, ctx| act.resolved(seq, res, ctx)),
        );
    }

    /// Tells Redis, through the fenced writer (so after every write of this owner), that
    /// this epoch's owner stopped: the leaderboard applier may then forget the facility once
    /// its counts are applied. Best effort: without it the facility just stays swept.
    fn release(&mut self) {
        let Phase::Ready(r) = &mut self.phase else { return };
        let (done, _) = oneshot::channel();
        let op = WriteOp::barrier_of(self.keys.clone(), r.day_key(&self.keys), r.fence.clone(), self.wseq, 0, done);
        let _ = self.writer.try_send(WriteOp { release: true, ..op });
    }

    /// Answers once every write submitted so far is durable. Errors wait too: "unknown
    /// token" or "illegal transition" from an actor that lost ownership must become a
    /// fencing error (and a retry on a fresh activation), not a wrong answer.
    fn reply_when_durable<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        value: Result<T, FacilityError>,
        started: Option<Instant>,
    ) {
        let metrics = self.deps.metrics.clone();
        let finish = move |fate: Result<(), StoreError>, value: Result<T, FacilityError>, reply: Reply<T>| {
            let r = fate.map_err(FacilityError::Store).and(value);
            if let (Some(t), Ok(_)) = (started, &r) {
                metrics.token_issue.record(t.elapsed().as_secs_f64());
            }
            let _ = reply.send(r);
        };
        self.when_durable(move |fate| finish(fate, value, reply));
    }

    /// Runs `answer` with the fate of every write submitted so far: now when it is known,
    /// otherwise from [`Self::resolved`] once it is (or with `Unavailable` if the actor
    /// stops first).
    fn when_durable(&mut self, answer: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        let target = self.submitted;
        match self.durable.outcome(target) {
            Some(fate) if self.waiting.is_empty() => answer(fate),
            _ => self.waiting.push_back(Waiting { target, answer: Box::new(answer) }),
        }
    }

    /// Resolves once every write submitted so far has an answer (see [`Durable`]).
    fn wait_durable(&mut self) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let (tx, rx) = oneshot::channel();
        self.when_durable(move |fate| {
            let _ = tx.send(fate);
        });
        async move { rx.await.unwrap_or(Err(StoreError::Unavailable)) }
    }

    /// Answers from a finished token's stored record, read once every write submitted so
    /// far is durable (its last change may still be on its way to Redis). The mailbox keeps
    /// going meanwhile: a finished token never changes again.
    fn finish_from_store<T: Send + 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        permit: Option<tokio::sync::mpsc::OwnedPermit<WriteOp>>,
        reply: Reply<T>,
        day: Date,
        key: TokenKey,
        build: impl FnOnce(Token) -> Result<T, FacilityError> + 'static,
    ) {
        if let Some(p) = permit {
            self.commit(ctx, p);
        }
        let durable = self.wait_durable();
        let store = self.store.clone();
        let id = self.id.clone();
        actix::spawn(async move {
            let result = match durable.await {
                Err(e) => Err(FacilityError::Store(e)),
                Ok(()) => read_token(&store, &id, day, &key).await.and_then(build),
            };
            let _ = reply.send(result);
        });
    }

    /// Rolls into the next service day once the clock has crossed local midnight. The new
    /// day may already hold tokens in Redis: a previous owner whose clock ran a little
    /// ahead (or whose activation this one overtook) issued them. So the day is read from
    /// Redis before anything is issued in it: the actor waits for the read (`ctx.wait`:
    /// commands queue in the mailbox meanwhile, ticks pause) and then runs `then`, the
    /// command that found the day stale, before them. The read is exact: our fence was
    /// taken before it, so no older owner can write any more (and if a newer one took
    /// over, our next write is fenced off anyway). Returns whether a roll started (it then
    /// took `then`).
    fn roll_day(&mut self, now: Timestamp, ctx: &mut Context<Self>, then: &mut Option<Command>) -> bool {
        let Phase::Ready(r) = &mut self.phase else { return false };
        if !r.queue.is_stale(now) {
            self.report_live();
            return false;
        }
        let cfg = r.queue.config().clone();
        let day = r.queue.service_day_at(now);
        tracing::info!(facility = %self.id, %day, "new service day");
        let then = then.take();
        let (store, id) = (self.store.clone(), self.id.clone());
        let read = async move { store.load_day(&id, day).await };
        ctx.wait(read.into_actor(self).map(move |rows, act, ctx| match rows {
            Ok(rows) => {
                if let Phase::Ready(r) = &mut act.phase {
                    r.queue = Self::rebuild(&act.deps, &act.id, cfg, day, &rows);
                }
                act.report_live();
                if let Some(cmd) = then {
                    act.dispatch(cmd, ctx);
                }
            }
            Err(e) => {
                if let Some(cmd) = then {
                    cmd.fail(FacilityError::Store(e));
                }
                act.retire(e, ctx);
            }
        }));
        true
    }

    /// Leaves the directory for good after a failed store call (the next request
    /// rehydrates elsewhere); stops once every submitted write has been answered.
    fn retire(&mut self, e: StoreError, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Failed(_)) {
            tracing::warn!(facility = %self.id, error = %e, "facility store call failed; dropping actor to rehydrate");
            self.phase = Phase::Failed(FacilityError::Store(e));
            self.leave_directory();
        }
        if self.durable.resolved == self.submitted {
            ctx.stop();
        }
    }

    fn dispatch(&mut self, cmd: Command, ctx: &mut Context<Self>) {
        match &self.phase {
            Phase::Failed(e) => cmd.fail(e.clone()),
            Phase::Loading => cmd.fail(FacilityError::Store(StoreError::Unavailable)),
            Phase::Ready(_) => self.apply(cmd, ctx),
        }
    }

    fn apply(&mut self, cmd: Command, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let now = self.deps.clock.now();
        let mut cmd = Some(cmd);
        if self.roll_day(now, ctx, &mut cmd) {
            return;
        }
        let Some(cmd) = cmd else { return };
        // Reserve room at the writer before changing anything: a change that cannot be
        // persisted must not happen in memory either.
        let permit = match self.writer.clone().try_reserve_owned() {
            Ok(p) => Some(p),
            Err(_) if matches!(cmd, Command::Reconfigure(_)) => None,
            Err(_) => {
                self.deps.metrics.overloaded_writer.increment(1);
                cmd.fail(FacilityError::Overloaded);
                return;
            }
        };
        let id = self.id.clone();
        let Phase::Ready(r) = &mut self.phase else {
            cmd.fail(FacilityError::Store(StoreError::Unavailable));
            return;
        };
        match cmd {
            Command::Scan { input, admit, reply } => {
                let (state, kind) = (r.board.state, r.queue.counter(&input.counter).map(|c| c.kind));
                // Kept only for a replay of a finished token, confirmed against its record.
                let replay_check = ReplayCheck::of(&input);
                let mut refused = None;
                let admit = || admit().map_err(|l| refused = Some(l)).is_ok();
                let result = match r.queue.scan_admitted(input, now, admit) {
                    Ok(Some(out)) => Ok(out),
                    Ok(None) => Err(match refused.expect("a refusal says why") {
                        Refusal::Limited(l) => FacilityError::RateLimited(l),
                        Refusal::Expired => FacilityError::Expired,
                    }),
                    Err(e) => Err(FacilityError::from(e)),
                };
                let outcome = match &result {
                    Ok(out) => Some(match out.kind {
                        ScanKind::New => ScanOutcome::New,
                        ScanKind::Repeat => ScanOutcome::Repeat,
                        ScanKind::Replay | ScanKind::RepeatReplay => ScanOutcome::Replay,
                    }),
                    // Counted by its limit, as when the edge refused it (an expired share by
                    // the worker's give-up).
                    Err(FacilityError::RateLimited(_) | FacilityError::Expired) => None,
                    Err(_) => Some(ScanOutcome::Rejected),
                };
                if let Some(outcome) = outcome {
                    self.deps.metrics.scan(state, kind, outcome);
                }
                match result {
                    Ok(out) if r.queue.get(&out.key).is_none() => {
                        let (day, check) = (r.queue.day(), replay_check.expect("a replay has an Idempotency-Key"));
                        let hasher = self.deps.hasher.clone();
                        self.finish_from_store(ctx, permit, reply, day, out.key, move |t| {
                            // Also refuses the (2^-64) case of two keys with the same hash.
                            let kind = check
                                .matches(&t, &hasher.keys(&t.profile))
                                .ok_or(FacilityError::Queue(QueueError::IdempotencyKeyReused))?;
                            let mut view = TokenView::build_public(&id, day, &t, None);
                            view.repeat = kind == ScanKind::RepeatReplay;
                            Ok(ScanReply { view, kind })
                        });
                    }
                    result => {
                        let result = result.map(|out| {
                            let mut view = TokenView::of_public(&r.queue, &id, &out.key).expect("scanned token exists");
                            view.repeat = matches!(out.kind, ScanKind::Repeat | ScanKind::RepeatReplay);
                            ScanReply { view, kind: out.kind }
                        });
                        self.finish(ctx, permit, reply, result, Some(started));
                    }
                }
            }
            Command::CallNext { counter, reply } => {
                let result = r
                    .queue
                    .call_next(&counter, now)
                    .map(|k| k.and_then(|k| TokenView::of(&r.queue, &id, &k)))
                    .map_err(FacilityError::from);
                if matches!(result, Ok(Some(_))) {
                    Metrics::counter_op("call_next");
                }
                self.finish(ctx, permit, reply, result, None);
            }
            Command::Act { token, action, reply } => {
                if token.day != r.queue.day() {
                    let from = if token.day < r.queue.day() { "from a finished day" } else { "unknown" };
                    let e = if from == "unknown" {
                        FacilityError::Queue(QueueError::UnknownToken)
                    } else {
                        FacilityError::Queue(QueueError::IllegalTransition { action: action.name(), from })
                    };
                    let _ = reply.send(Err(e));
                    return;
                }
                let key = TokenKey { counter: token.counter.into(), number: token.number };
                let q = &mut r.queue;
                let result = match &action {
                    Action::Recall => q.recall(&key, now),
                    Action::Complete => q.complete(&key, now),
                    Action::NoShow => q.no_show(&key, now),
                    Action::Transfer(to) => q.transfer(&key, to, now),
                };
                if result.is_ok() {
                    Metrics::counter_op(action.name());
                }
                let result =
                    result.map(|()| TokenView::of(q, &id, &key).expect("token exists")).map_err(FacilityError::from);
                self.finish(ctx, permit, reply, result, None);
            }
            Command::Get { token, patient, reply } => {
                let view = if patient { TokenView::build } else { TokenView::build_public };
                if token.day == r.queue.day() {
                    let key = TokenKey { counter: token.counter.into(), number: token.number };
                    r.queue.expire_if_due(&key, now.as_millisecond());
                    match r.queue.lookup(&key) {
                        Lookup::Live(_) => {
                            let t = r.queue.get(&key);
                            let result = t.map(|t| view(&id, r.queue.day(), t, Some(&r.queue)));
                            let result = result.ok_or(QueueError::UnknownToken.into());
                            self.finish(ctx, permit, reply, result, None);
                        }
                        Lookup::Finished(_) => {
                            let day = token.day;
                            self.finish_from_store(ctx, permit, reply, day, key, move |t| Ok(view(&id, day, &t, None)));
                        }
                        Lookup::Unknown => self.finish(ctx, permit, reply, Err(QueueError::UnknownToken.into()), None),
                    }
                } else {
                    // An earlier (or unknown) day: read the stored record as it is.
                    let store = self.store.clone();
                    actix::spawn(async move {
                        let key = TokenKey { counter: token.counter.into(), number: token.number };
                        let result =
                            read_token(&store, &id, token.day, &key).await.map(|t| view(&id, token.day, &t, None));
                        let _ = reply.send(result);
                    });
                }
            }
            Command::Queue { counter, reply } => {
                let result = queue_view(&r.queue, &id, counter.as_deref());
                self.finish(ctx, permit, reply, result, None);
            }
            Command::Reconfigure(info) => {
                r.queue.reconfigure(info.queue_config(self.deps.max_priority_streak, self.deps.default_service_s));
                r.board = Arc::new(info.board_owner());
            }
        }
    }

    fn finish<T: Send + 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        permit: Option<tokio::sync::mpsc::OwnedPermit<WriteOp>>,
        reply: Reply<T>,
        result: Result<T, FacilityError>,
        started: Option<Instant>,
    ) {
        if let Some(p) = permit {
            self.commit(ctx, p);
        }
        self.reply_when_durable(reply, result, started);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.deps.clock.now();
        if self.roll_day(now, ctx, &mut None) {
            return;
        }
        if let Phase::Ready(r) = &mut self.phase {
            if r.queue.expire_due(now) > 0 {
                if let Ok(p) = self.writer.clone().try_reserve_owned() {
                    self.commit(ctx, p);
                }
            }
        }
        let idle_for = self.last_active.elapsed();
        let settled = self.durable.resolved == self.submitted;
        if idle_for >= self.deps.idle_limit() && settled {
            tracing::debug!(facility = %self.id, "passivating idle facility");
            if idle_for >= self.deps.idle_timeout {
                self.deps.metrics.passivated_idle.increment(1);
            } else {
                self.deps.metrics.passivated_pressure.increment(1);
            }
            self.leave_directory();
            ctx.stop();
        }
    }
}

/// A token's stored record; a missing or unreadable one is an unknown token.
async fn read_token(store: &Store, id: &str, day: Date, key: &TokenKey) -> Result<Token, FacilityError> {
    let field = keys::token_field(&key.counter, key.number);
    match store.load_token(id, day, &field).await {
        Err(e) => Err(FacilityError::Store(e)),
        Ok(None) => Err(FacilityError::Queue(QueueError::UnknownToken)),
        Ok(Some(raw)) => {
            record::decode(&key.counter, key.number, &raw).map_err(|_| FacilityError::Queue(QueueError::UnknownToken))
        }
    }
}

fn queue_view(q: &FacilityQueue, id: &str, counter: Option<&str>) -> Result<QueueView, FacilityError> {
    if let Some(c) = counter {
        if q.counter(c).is_none() {
            return Err(FacilityError::Queue(QueueError::UnknownCounter));
        }
    }
    let counters = q
        .config()
        .counters
        .iter()
        .filter(|c| counter.is_none_or(|want| want == c.id))
        .map(|c| {
            let (waiting, called) = q.counter_view(&c.id);
            CounterQueueView {
                counter_id: c.id.clone(),
                kind: c.kind,
                called: called.into_iter().map(|t| TokenView::build(id, q.day(), t, Some(q))).collect(),
                waiting: waiting.into_iter().map(|t| TokenView::build(id, q.day(), t, Some(q))).collect(),
            }
        })
        .collect();
    Ok(QueueView { facility_id: id.to_string(), service_date: q.day().to_string(), counters })
}

impl Actor for FacilityActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.deps.mailbox_capacity);
        self.deps.metrics.active_actors.increment(1.0);
        self.deps.active.fetch_add(1, Ordering::Relaxed);
        let fut = Self::load(self.deps.clone(), self.store.clone(), self.id.clone(), self.ownership);
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(ready) => {
                act.phase = Phase::Ready(Box::new(ready));
                act.report_live();
            }
            Err(e) => {
                // Answer what already queued, then go; later callers activate afresh.
                act.phase = Phase::Failed(e);
                act.leave_directory();
                ctx.run_later(Duration::from_millis(100), |_, ctx| ctx.stop());
            }
        }));
        let shortest = self.deps.idle_timeout.min(self.deps.pressure_idle);
        let every = (shortest / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.deps.metrics.active_actors.decrement(1.0);
        self.deps.active.fetch_sub(1, Ordering::Relaxed);
        self.deps.metrics.live_tokens.decrement(self.reported_live as f64);
        self.reported_live = 0;
        // Answers still waiting lose their writes' fate with the actor (arbiter shutdown).
        for w in self.waiting.drain(..) {
            (w.answer)(Err(StoreError::Unavailable));
        }
        self.leave_directory();
        self.release();
    }
}

impl Handler<Envelope> for FacilityActor {
    type Result = ();

    fn handle(&mut self, Envelope(cmd): Envelope, ctx: &mut Context<Self>) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.last_active = Instant::now();
        self.dispatch(cmd, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_admits_until_it_is_reached() {
        let clock = crate::clock::ManualClock::new("2026-11-23T04:00:00Z".parse().unwrap());
        let shared: SharedClock = Arc::new(clock.clone());
        let deadline = shared.now().as_millisecond() + 1_000;
        assert_eq!(before_deadline(&shared, deadline), Ok(()));
        clock.advance(Duration::from_millis(999));
        assert_eq!(before_deadline(&shared, deadline), Ok(()));
        clock.advance(Duration::from_millis(1));
        assert_eq!(before_deadline(&shared, deadline), Err(Refusal::Expired), "refused at the deadline itself");
    }

    #[test]
    fn an_answer_waits_for_its_own_writes_and_an_earlier_failure() {
        let mut d = Durable::default();
        assert_eq!(d.outcome(0), Some(Ok(())), "nothing to wait for");
        assert_eq!(d.outcome(2), None);
        d.upto = 2;
        assert_eq!(d.outcome(2), Some(Ok(())));
        // Write 4 refused: answers up to 3 still wait for their writes, later ones fail.
        d.failed = Some((4, StoreError::Fenced));
        assert_eq!(d.outcome(3), None);
        assert_eq!(d.outcome(4), Some(Err(StoreError::Fenced)));
        assert_eq!(d.outcome(9), Some(Err(StoreError::Fenced)));
        d.upto = 3;
        assert_eq!(d.outcome(3), Some(Ok(())));
    }
}
