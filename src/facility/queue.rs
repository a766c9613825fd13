//! The live queue of one facility for one service day, as a plain struct: numbering,
//! repeat detection, idempotency, priority lanes with a starvation guard, transitions,
//! expiry and people-ahead. No actix, no Redis: the actor owns one and persists its changes.
//!
//! Memory follows the queue, not the day: a token that finishes (completed, no-show,
//! expired) leaves memory once its change is handed to the writer, and only a status byte
//! per number and, for each Idempotency-Key the day answered (a new token's, or a repeat's),
//! a 16-byte index entry stay. Reads of finished tokens go to Redis (see [`Lookup`]).
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Unix time in milliseconds.
pub type Millis = i64;

/// A counter's id as the queue holds it: interned per queue (see [`FacilityQueue`]), so one
/// allocation per counter is shared by every token, key, lane entry and history entry of it.
pub type CounterName = Arc<str>;

/// A packed token reference: counter index in the high half, number in the low half.
fn packed_ref(index: impl Into<u64>, number: u32) -> u64 {
    index.into() << 32 | u64::from(number)
}

pub fn millis(t: Timestamp) -> Millis {
    t.as_millisecond()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Waiting,
    Called,
    Completed,
    NoShow,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Called => "called",
            Status::Completed => "completed",
            Status::NoShow => "no_show",
            Status::Expired => "expired",
        }
    }
}

/// What happened to a token; every transition is kept with its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Issued,
    Called,
    Recalled,
    Transferred,
    Completed,
    NoShow,
    Expired,
}

impl Event {
    /// The status a token has right after this event.
    pub fn status(self) -> Status {
        match self {
            Event::Issued | Event::Transferred => Status::Waiting,
            Event::Called | Event::Recalled => Status::Called,
            Event::Completed => Status::Completed,
            Event::NoShow => Status::NoShow,
            Event::Expired => Status::Expired,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorityClass {
    Elderly,
    Disabled,
    Pregnant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CounterKind {
    Opd,
    Pharmacy,
    Lab,
    Other,
}

impl CounterKind {
    pub const ALL: [CounterKind; 4] = [CounterKind::Opd, CounterKind::Pharmacy, CounterKind::Lab, CounterKind::Other];

    /// The wire name, also used in metric labels and leaderboard keys.
    pub fn as_str(self) -> &'static str {
        match self {
            CounterKind::Opd => "opd",
            CounterKind::Pharmacy => "pharmacy",
            CounterKind::Lab => "lab",
            CounterKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<CounterKind> {
        CounterKind::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Counter {
    pub id: String,
    pub kind: CounterKind,
}

/// Patient data the counter needs. Held only for the service day.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub abha_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abha_number: Option<String>,
    pub name: String,
    pub gender: String,
    pub year_of_birth: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// A keyed digest of one patient identifier: the first 16 bytes of its HMAC (see
/// `patient_keys`). Fixed bytes, so indexing a patient allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatientDigest(pub [u8; 16]);

#[cfg(test)]
impl PatientDigest {
    /// A stand-in for tests: distinct strings give distinct digests.
    pub fn for_test(s: &str) -> Self {
        use sha2::Digest;
        let h = sha2::Sha256::digest(s.as_bytes());
        PatientDigest(h[..16].try_into().expect("32-byte hash"))
    }
}

/// Keyed digests of the patient's identifiers (HMAC, computed at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatientKeys {
    pub by_address: PatientDigest,
    pub by_number: Option<PatientDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub event: Event,
    pub at: Millis,
    pub counter: CounterName,
}

/// One token of the day. `counter` + `number` identify it; `at_counter` is where it
/// waits now (differs after a transfer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub counter: CounterName,
    pub number: u32,
    pub at_counter: CounterName,
    pub status: Status,
    pub priority: Option<PriorityClass>,
    /// Waits in the priority lane (a priority class, or transferred in).
    pub lane_priority: bool,
    pub profile: Profile,
    pub idempotency_key: Option<String>,
    /// Idempotency-Keys of later scans answered as a repeat of this token, as their
    /// [`idempotency_hash`], oldest first, at most [`MAX_REPEAT_KEYS`]: a resend of one of
    /// them answers this token again, also once it has finished or after a restart.
    pub repeat_keys: Vec<u64>,
    pub issued_at: Millis,
    pub expires_at: Millis,
    pub history: Vec<Transition>,
}

impl Token {
    pub fn key(&self) -> TokenKey {
        TokenKey { counter: self.counter.clone(), number: self.number }
    }

    pub fn display(&self) -> String {
        format!("{}-{:03}", self.counter, self.number)
    }

    pub fn last_at(&self, event: Event) -> Option<Millis> {
        self.history.iter().rev().find(|t| t.event == event).map(|t| t.at)
    }

    fn push(&mut self, event: Event, at: Millis) {
        self.status = event.status();
        self.history.push(Transition { event, at, counter: self.at_counter.clone() });
    }

    fn is_active(&self, now: Millis) -> bool {
        match self.status {
            Status::Waiting => now < self.expires_at,
            Status::Called => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey {
    pub counter: CounterName,
    pub number: u32,
}

/// How many repeat scans' Idempotency-Keys one token keeps (the latest): a retry follows its
/// request within seconds, and each key costs the token's record 14 bytes in Redis.
pub const MAX_REPEAT_KEYS: usize = 4;

/// An Idempotency-Key as the day's index and a token's record hold it: the first 8 bytes of
/// its SHA-256. Stable across processes (a record written by one node is read by the next
/// owner), unlike a randomly keyed hash; every hit is still confirmed against the token.
pub fn idempotency_hash(key: &str) -> u64 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_bytes());
    u64::from_le_bytes(h[..8].try_into().expect("32-byte hash"))
}

/// The same patient by either identifier, as repeat detection finds them.
fn same_patient(a: &PatientKeys, b: &PatientKeys) -> bool {
    a.by_address == b.by_address || (a.by_number.is_some() && a.by_number == b.by_number)
}

/// An Idempotency-Key replay must repeat the same request: same counter, same patient.
pub fn is_same_scan(t: &Token, input: &ScanInput) -> bool {
    same_counter_and_patient(t, &input.counter, &input.profile.abha_address)
}

/// The one comparison both a repeat scan and a replay rest on.
fn same_counter_and_patient(t: &Token, counter: &str, abha_address: &str) -> bool {
    *t.counter == *counter && t.profile.abha_address == abha_address
}

/// What confirms a replay of a finished token against its stored record: the new request's
/// key, counter and patient, and nothing else of the scan (no Debug: it holds an address).
pub struct ReplayCheck {
    key: String,
    counter: String,
    abha_address: String,
    patient: PatientKeys,
}

impl ReplayCheck {
    /// `None` for a scan without an Idempotency-Key: it can never be a replay.
    pub fn of(input: &ScanInput) -> Option<Self> {
        Some(Self {
            key: input.idempotency_key.clone()?,
            counter: input.counter.clone(),
            abha_address: input.profile.abha_address.clone(),
            patient: input.patient,
        })
    }

    /// How the stored token answered this same request, if it did: as the scan that issued
    /// it (the same key, not merely the same 64-bit hash, counter and patient), or as a
    /// repeat (a key of its repeats, the same counter, and the same patient by either
    /// identifier, as the repeat was found). `stored` are the token's patient digests.
    pub fn matches(&self, t: &Token, stored: &PatientKeys) -> Option<ScanKind> {
        if t.idempotency_key.as_deref() == Some(self.key.as_str()) {
            return same_counter_and_patient(t, &self.counter, &self.abha_address).then_some(ScanKind::Replay);
        }
        let repeat = t.repeat_keys.contains(&idempotency_hash(&self.key))
            && *t.counter == *self.counter
            && same_patient(stored, &self.patient);
        repeat.then_some(ScanKind::RepeatReplay)
    }
}

/// Per-facility settings the queue needs.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub tz: TimeZone,
    pub token_validity_s: u64,
    pub max_priority_streak: u32,
    pub default_service_s: u64,
    pub counters: Vec<Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("unknown counter")]
    UnknownCounter,
    #[error("unknown token")]
    UnknownToken,
    #[error("cannot {action} a token that is {from}")]
    IllegalTransition { action: &'static str, from: &'static str },
    #[error("the Idempotency-Key was already used for a different scan")]
    IdempotencyKeyReused,
}

/// What a scan asks for.
#[derive(Debug, Clone)]
pub struct ScanInput {
    pub counter: String,
    pub priority: Option<PriorityClass>,
    pub patient: PatientKeys,
    pub profile: Profile,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKind {
    New,
    Repeat,
    /// Same Idempotency-Key as an earlier scan: answer as that scan was answered.
    Replay,
    /// Same Idempotency-Key as an earlier scan that was answered as a repeat: a repeat again.
    RepeatReplay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    pub key: TokenKey,
    pub kind: ScanKind,
}

/// Position of a token in its counter's call order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub ahead: u32,
    pub estimated_wait_s: u64,
}

const RECENT_SERVICE_SAMPLES: usize = 20;

#[derive(Debug, Default)]
struct Lane {
    last_number: u32,
    /// Status of each finished number of this (issuing) counter, at `number - 1`; `None`
    /// while the token is live (or when its record could not be read).
    finished: Vec<Option<Status>>,
    priority: VecDeque<TokenKey>,
    normal: VecDeque<TokenKey>,
    called: Vec<TokenKey>,
    /// Priority calls in a row since the last normal call.
    streak: u32,
    recent_service_ms: VecDeque<Millis>,
}

impl Lane {
    fn remove_waiting(&mut self, key: &TokenKey) {
        self.priority.retain(|k| k != key);
        self.normal.retain(|k| k != key);
    }

    fn service_s(&self, default_s: u64) -> u64 {
        if self.recent_service_ms.is_empty() {
            return default_s;
        }
        let sum: i64 = self.recent_service_ms.iter().sum();
        (sum / self.recent_service_ms.len() as i64 / 1000).max(0) as u64
    }

    fn finished_status(&self, number: u32) -> Option<Status> {
        self.finished.get((number as usize).checked_sub(1)?).copied().flatten()
    }

    fn mark_finished(&mut self, number: u32, status: Status) {
        let i = number as usize - 1;
        if self.finished.len() <= i {
            self.finished.resize(i + 1, None);
        }
        self.finished[i] = Some(status);
    }

    fn record_service(&mut self, ms: Millis) {
        if self.recent_service_ms.len() == RECENT_SERVICE_SAMPLES {
            self.recent_service_ms.pop_front();
        }
        self.recent_service_ms.push_back(ms.max(0));
    }
}

/// What the queue knows of a token of its day.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Waiting or called (or finished with its change not yet handed to the writer).
    Live(&'a Token),
    /// Finished and out of memory: the stored record has the rest.
    Finished(Status),
    /// No such number today (or its record was unreadable at restore).
    Unknown,
}

/// A live token and the digests it is indexed under (to unindex it when it finishes), in
/// the token's one allocation rather than in a map of their own.
#[derive(Debug)]
struct Live {
    token: Token,
    patient: PatientKeys,
}

impl std::ops::Deref for Live {
    type Target = Token;
    fn deref(&self) -> &Token {
        &self.token
    }
}

impl std::ops::DerefMut for Live {
    fn deref_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// The facility's queue for one service day.
///
/// Counter names are interned: the queue holds one [`CounterName`] per counter (in
/// `counter_names`, and as its lane's key) and hands out clones of it, so a token costs no
/// allocation for its counter, its keys or its history.
#[derive(Debug)]
pub struct FacilityQueue {
    cfg: QueueConfig,
    day: Date,
    /// Live tokens only (see the module doc), each with the digests it is indexed under.
    /// Boxed: an empty slot of a map costs its value's size, and most maps are small.
    tokens: HashMap<TokenKey, Box<Live>>,
    /// Created on first use, so a facility pays only for the counters it uses. Keyed by the
    /// interned name.
    lanes: HashMap<CounterName, Box<Lane>>,
    /// Repeat detection: (issuing counter's index, patient digest) of live tokens, to the
    /// packed token reference (see `by_idempotency`): 32 bytes a slot, no name to share.
    by_patient: HashMap<(u32, PatientDigest), u64>,
    /// Every Idempotency-Key of the day (of new tokens and of repeats), by its
    /// [`idempotency_hash`], to a packed token reference (`counter_names` index << 32 |
    /// number). A hit is confirmed against the token itself.
    by_idempotency: HashMap<u64, u64>,
    /// The interned counter names (see [`FacilityQueue::intern`]), by index, also for the
    /// packed references (append-only; bounded by the counters the day has seen).
    counter_names: Vec<CounterName>,
    dirty: HashSet<TokenKey>,
    issued_since_take: Vec<CounterName>,
    /// No waiting token expires before this (a lower bound: it may be early, never late),
    /// so the actor's periodic tick skips the scan over the day's tokens until then.
    next_expiry: Millis,
}

impl FacilityQueue {
    pub fn new(cfg: QueueConfig, day: Date) -> Self {
        Self {
            cfg,
            day,
            tokens: HashMap::new(),
            lanes: HashMap::new(),
            by_patient: HashMap::new(),
            by_idempotency: HashMap::new(),
            counter_names: Vec::new(),
            dirty: HashSet::new(),
            issued_since_take: Vec::new(),
            next_expiry: Millis::MAX,
        }
    }

    /// Rebuilds the live state from the day's stored tokens (rehydration). Finished tokens
    /// leave only their status and Idempotency-Keys (their own and their repeats'); the guard
    /// and service-time samples are rebuilt from every token's history.
    pub fn restore(
        cfg: QueueConfig,
        day: Date,
        stored: Vec<Token>,
        patient_keys: impl Fn(&Profile) -> PatientKeys,
    ) -> Self {
        let mut q = Self::new(cfg, day);
        // The first expiry tick after a restore scans the tokens and sets the real bound.
        q.next_expiry = Millis::MIN;
        let mut waiting: Vec<(Millis, TokenKey, bool, CounterName)> = Vec::new();
        let mut called: Vec<(Millis, TokenKey, bool, CounterName)> = Vec::new();
        let mut calls: Vec<(Millis, CounterName, bool)> = Vec::new();
        let mut services: Vec<(Millis, CounterName, Millis)> = Vec::new();
        for mut t in stored {
            // Decoded records carry their own names: share the queue's instead.
            t.counter = q.intern(&t.counter);
            t.at_counter = q.intern(&t.at_counter);
            for h in &mut t.history {
                h.counter = q.intern(&h.counter);
            }
            let key = t.key();
            let packed = q.pack(&key);
            if let Some(k) = &t.idempotency_key {
                q.by_idempotency.insert(idempotency_hash(k), packed);
            }
            for &h in &t.repeat_keys {
                q.by_idempotency.insert(h, packed);
            }
            let lane = q.lane_mut(&t.counter);
            lane.last_number = lane.last_number.max(t.number);
            let entered = t.history.last().map(|h| h.at).unwrap_or(t.issued_at);
            let mut called_at: Option<Millis> = None;
            // The lane each call took the token from, as it was then: a token enters the
            // priority lane by its class at issue or by a transfer, never leaves it, and
            // `lane_priority` is only where it waits now (a normal call, later transferred,
            // was still a normal call for the guard).
            let mut in_priority_lane = t.priority.is_some();
            for h in &t.history {
                match h.event {
                    Event::Transferred => in_priority_lane = true,
                    Event::Called => {
                        calls.push((h.at, h.counter.clone(), in_priority_lane));
                        called_at = Some(h.at);
                    }
                    Event::Completed | Event::NoShow => {
                        if let Some(c) = called_at {
                            services.push((h.at, h.counter.clone(), h.at - c));
                        }
                    }
                    _ => {}
                }
            }
            match t.status {
                Status::Waiting => waiting.push((entered, key.clone(), t.lane_priority, t.at_counter.clone())),
                Status::Called => called.push((entered, key.clone(), t.lane_priority, t.at_counter.clone())),
                finished => {
                    lane.mark_finished(t.number, finished);
                    continue;
                }
            }
            let patient = patient_keys(&t.profile);
            q.index_patient(patient, packed);
            q.tokens.insert(key, Box::new(Live { token: t, patient }));
        }
        waiting.sort();
        for (_, key, prio, at) in waiting {
            let lane = q.lane_mut(&at);
            if prio {
                lane.priority.push_back(key);
            } else {
                lane.normal.push_back(key);
            }
        }
        called.sort();
        for (_, key, _, at) in called {
            q.lane_mut(&at).called.push(key);
        }
        calls.sort();
        for (_, counter, prio) in calls {
            let lane = q.lane_mut(&counter);
            lane.streak = if prio { lane.streak + 1 } else { 0 };
        }
        services.sort();
        for (_, counter, ms) in services {
            q.lane_mut(&counter).record_service(ms);
        }
        q
    }

    /// Never reuse a number seen in storage, even if its record could not be read.
    pub fn reserve_number(&mut self, counter: &str, number: u32) {
        let lane = self.lane_mut(counter);
        lane.last_number = lane.last_number.max(number);
    }

    /// The queue's one name for a counter: a clone of the interned [`CounterName`] (made on
    /// first sight), so every token, key and history entry of a counter shares one allocation.
    fn intern(&mut self, counter: &str) -> CounterName {
        // Every lane is keyed by its interned name: one hash lookup in the common case.
        if let Some((name, _)) = self.lanes.get_key_value(counter) {
            return name.clone();
        }
        let i = self.counter_index(counter);
        self.counter_names[i as usize].clone()
    }

    /// A counter's lane, made on first use under the interned name.
    fn lane_mut(&mut self, counter: &str) -> &mut Lane {
        if !self.lanes.contains_key(counter) {
            let name = self.intern(counter);
            self.lanes.insert(name, Box::default());
        }
        self.lanes.get_mut(counter).expect("lane exists")
    }

    fn index_patient(&mut self, pk: PatientKeys, packed: u64) {
        for digest in std::iter::once(pk.by_address).chain(pk.by_number) {
            self.by_patient.insert(((packed >> 32) as u32, digest), packed);
        }
    }

    fn unindex_patient(&mut self, key: &TokenKey, pk: PatientKeys) {
        let packed = self.pack(key);
        for digest in std::iter::once(pk.by_address).chain(pk.by_number) {
            let k = ((packed >> 32) as u32, digest);
            // A later token of the same patient may own the entry already.
            if self.by_patient.get(&k) == Some(&packed) {
                self.by_patient.remove(&k);
            }
        }
    }

    /// A token reference in 8 bytes: the counter's index in `counter_names` and the number.
    fn pack(&mut self, key: &TokenKey) -> u64 {
        let index = self.counter_index(&key.counter);
        packed_ref(index, key.number)
    }

    fn unpack(&self, packed: u64) -> Option<TokenKey> {
        let counter = self.counter_names.get((packed >> 32) as usize)?.clone();
        Some(TokenKey { counter, number: packed as u32 })
    }

    /// Gives back what a queue that grew and then emptied no longer needs: maps never
    /// shrink by themselves, and an idle facility's actor should cost little.
    fn shrink(&mut self) {
        // An empty map or deque gives back all of it: most facilities are idle most of the
        // day, and even 16 empty slots of these maps cost kilobytes per facility.
        fn fit<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.is_empty() {
                *m = HashMap::new();
            } else if m.capacity() > 16 && m.len() * 4 < m.capacity() {
                m.shrink_to(m.len() * 2);
            }
        }
        fit(&mut self.tokens);
        fit(&mut self.by_patient);
        if self.dirty.is_empty() {
            self.dirty = HashSet::new();
        }
        for lane in self.lanes.values_mut() {
            for q in [&mut lane.priority, &mut lane.normal] {
                if q.is_empty() {
                    *q = VecDeque::new();
                } else if q.capacity() > 16 && q.len() * 4 < q.capacity() {
                    q.shrink_to(q.len() * 2);
                }
            }
            if lane.called.is_empty() {
                lane.called = Vec::new();
            }
        }
    }

    fn counter_index(&mut self, counter: &str) -> u64 {
        match self.counter_names.iter().position(|c| **c == *counter) {
            Some(i) => i as u64,
            None => {
                self.counter_names.push(counter.into());
                (self.counter_names.len() - 1) as u64
            }
        }
    }

    fn idempotency_hit(&self, hash: u64) -> Option<TokenKey> {
        self.unpack(*self.by_idempotency.get(&hash)?)
    }

    /// Binds the Idempotency-Key of a scan answered as a repeat to the live token, so that a
    /// resend answers the same token even once it has finished (the change is persisted
    /// with the token's record before the repeat is answered). The oldest key goes when the
    /// token holds [`MAX_REPEAT_KEYS`]; a hash already in the index (the 2^-64 case of two
    /// keys with one hash) is left to its first owner.
    fn bind_repeat_key(&mut self, key: &TokenKey, hash: u64) {
        if self.by_idempotency.contains_key(&hash) {
            return;
        }
        let packed = self.pack(key);
        let Some(t) = self.tokens.get_mut(key) else { return };
        if t.repeat_keys.len() >= MAX_REPEAT_KEYS {
            let old = t.repeat_keys.remove(0);
            if self.by_idempotency.get(&old) == Some(&packed) {
                self.by_idempotency.remove(&old);
            }
        }
        t.repeat_keys.push(hash);
        self.by_idempotency.insert(hash, packed);
        self.dirty.insert(key.clone());
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// New registry data (counters, validity) for a live queue.
    pub fn reconfigure(&mut self, cfg: QueueConfig) {
        self.cfg = cfg;
    }

    pub fn day(&self) -> Date {
        self.day
    }

    pub fn service_day_at(&self, now: Timestamp) -> Date {
        now.to_zoned(self.cfg.tz.clone()).date()
    }

    /// True when `now` falls on a later local day than the queue's: the caller starts a
    /// fresh queue (numbering from 1); the old day stays in Redis until its TTL.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        self.service_day_at(now) > self.day
    }

    pub fn counter(&self, id: &str) -> Option<&Counter> {
        self.cfg.counters.iter().find(|c| c.id == id)
    }

    /// A token in memory (live, or finished with its change not yet taken).
    pub fn get(&self, key: &TokenKey) -> Option<&Token> {
        self.tokens.get(key).map(|t| &t.token)
    }

    pub fn lookup(&self, key: &TokenKey) -> Lookup<'_> {
        if let Some(t) = self.tokens.get(key) {
            return Lookup::Live(&t.token);
        }
        match self.lanes.get(&key.counter).and_then(|l| l.finished_status(key.number)) {
            Some(s) => Lookup::Finished(s),
            None => Lookup::Unknown,
        }
    }

    /// Tokens held in memory (the live queue).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Hands every token changed since the last call to `each` (to persist), then lets the
    /// finished ones go from memory. Returns the counters that issued new tokens.
    pub fn take_changes(&mut self, mut each: impl FnMut(&Token)) -> Vec<CounterName> {
        let dirty: Vec<TokenKey> = self.dirty.drain().collect();
        for key in &dirty {
            let Some(t) = self.tokens.get(key) else { continue };
            each(&t.token);
            if !matches!(t.status, Status::Waiting | Status::Called) {
                let status = t.status;
                if let Some(gone) = self.tokens.remove(key) {
                    self.unindex_patient(key, gone.patient);
                }
                self.lane_mut(&key.counter).mark_finished(key.number, status);
            }
        }
        if !dirty.is_empty() {
            self.shrink();
        }
        std::mem::take(&mut self.issued_since_take)
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Issues a token, or returns the patient's live one.
    pub fn scan(&mut self, input: ScanInput, now: Timestamp) -> Result<ScanOutcome, QueueError> {
        Ok(self.scan_admitted(input, now, || true)?.expect("every new token admitted"))
    }

    /// [`Self::scan`], asking `admit` first when (and only when) the scan would issue a new
    /// token: a replay or a repeat answers without it. A refusal changes nothing and
    /// answers `None`.
    pub fn scan_admitted(
        &mut self,
        input: ScanInput,
        now: Timestamp,
        admit: impl FnOnce() -> bool,
    ) -> Result<Option<ScanOutcome>, QueueError> {
        let now_ms = millis(now);
        if self.counter(&input.counter).is_none() {
            return Err(QueueError::UnknownCounter);
        }
        let idem_hash = input.idempotency_key.as_deref().map(idempotency_hash);
        if let (Some(idem), Some(hash)) = (&input.idempotency_key, idem_hash) {
            if let Some(key) = self.idempotency_hit(hash) {
                let kind = match self.tokens.get(&key) {
                    // A finished token: the caller confirms the replay against its record.
                    None => return Ok(Some(ScanOutcome { key, kind: ScanKind::Replay })),
                    Some(t) if t.idempotency_key.as_deref() == Some(idem.as_str()) => {
                        if !is_same_scan(t, &input) {
                            return Err(QueueError::IdempotencyKeyReused);
                        }
                        Some(ScanKind::Replay)
                    }
                    Some(t) if t.repeat_keys.contains(&hash) => {
                        if *t.counter != *input.counter || !same_patient(&t.patient, &input.patient) {
                            return Err(QueueError::IdempotencyKeyReused);
                        }
                        Some(ScanKind::RepeatReplay)
                    }
                    // Equal 64-bit hashes of different keys: not a replay.
                    Some(_) => None,
                };
                if let Some(kind) = kind {
                    self.expire_if_due(&key, now_ms);
                    return Ok(Some(ScanOutcome { key, kind }));
                }
            }
        }
        let counter = self.intern(&input.counter);
        // Looked up once: the repeat check and both indexes below use it.
        let index = self.counter_index(&counter) as u32;
        let candidates = std::iter::once(input.patient.by_address).chain(input.patient.by_number);
        for digest in candidates {
            if let Some(key) = self.by_patient.get(&(index, digest)).and_then(|&p| self.unpack(p)) {
                self.expire_if_due(&key, now_ms);
                if self.tokens[&key].is_active(now_ms) {
                    if let Some(hash) = idem_hash {
                        self.bind_repeat_key(&key, hash);
                    }
                    return Ok(Some(ScanOutcome { key, kind: ScanKind::Repeat }));
                }
            }
        }
        if !admit() {
            return Ok(None);
        }
        let lane = self.lane_mut(&counter);
        lane.last_number += 1;
        let key = TokenKey { counter: counter.clone(), number: lane.last_number };
        let lane_priority = input.priority.is_some();
        if lane_priority {
            lane.priority.push_back(key.clone());
        } else {
            lane.normal.push_back(key.clone());
        }
        let validity_ms = (self.cfg.token_validity_s as i64).saturating_mul(1000);
        let mut token = Token {
            counter: counter.clone(),
            number: key.number,
            at_counter: counter.clone(),
            status: Status::Waiting,
            priority: input.priority,
            lane_priority,
            profile: input.profile,
            idempotency_key: input.idempotency_key.clone(),
            repeat_keys: Vec::new(),
            issued_at: now_ms,
            expires_at: now_ms.saturating_add(validity_ms),
            // Most live tokens wait, with their one event: room for more comes with a call.
            history: Vec::with_capacity(1),
        };
        token.push(Event::Issued, now_ms);
        self.next_expiry = self.next_expiry.min(token.expires_at);
        let packed = packed_ref(index, key.number);
        if let Some(hash) = idem_hash {
            self.by_idempotency.insert(hash, packed);
        }
        self.index_patient(input.patient, packed);
        self.tokens.insert(key.clone(), Box::new(Live { token, patient: input.patient }));
        self.dirty.insert(key.clone());
        self.issued_since_take.push(counter);
        Ok(Some(ScanOutcome { key, kind: ScanKind::New }))
    }

    /// Marks a waiting token expired when its validity has passed. Returns true if it did.
    pub fn expire_if_due(&mut self, key: &TokenKey, now_ms: Millis) -> bool {
        let Some(t) = self.tokens.get_mut(key) else { return false };
        if t.status != Status::Waiting || now_ms < t.expires_at {
            return false;
        }
        let at = t.expires_at;
        t.push(Event::Expired, at);
        let counter = t.at_counter.clone();
        if let Some(lane) = self.lanes.get_mut(&counter) {
            lane.remove_waiting(key);
        }
        self.dirty.insert(key.clone());
        true
    }

    /// Expires every due waiting token; returns how many.
    pub fn expire_due(&mut self, now: Timestamp) -> usize {
        let now_ms = millis(now);
        if now_ms < self.next_expiry {
            return 0;
        }
        let due: Vec<TokenKey> = self
            .tokens
            .values()
            .filter(|t| t.status == Status::Waiting && now_ms >= t.expires_at)
            .map(|t| t.key())
            .collect();
        let expired = due.iter().filter(|k| self.expire_if_due(k, now_ms)).count();
        self.next_expiry = self
            .tokens
            .values()
            .filter(|t| t.status == Status::Waiting)
            .map(|t| t.expires_at)
            .min()
            .unwrap_or(Millis::MAX);
        expired
    }

    /// Calls the next token at a counter: priority lane first, but never more than
    /// `max_priority_streak` priority calls in a row while normal tokens wait.
    pub fn call_next(&mut self, counter: &str, now: Timestamp) -> Result<Option<TokenKey>, QueueError> {
        let now_ms = millis(now);
        if self.counter(counter).is_none() {
            return Err(QueueError::UnknownCounter);
        }
        let max_streak = self.cfg.max_priority_streak;
        loop {
            let lane = self.lane_mut(counter);
            let take_priority = !lane.priority.is_empty() && (lane.streak < max_streak || lane.normal.is_empty());
            let next = if take_priority { lane.priority.pop_front() } else { lane.normal.pop_front() };
            let Some(key) = next else { return Ok(None) };
            let t = self.tokens.get_mut(&key).expect("lane keys refer to tokens");
            if now_ms >= t.expires_at {
                // Skipped while waiting past validity: record that, look further.
                let at = t.expires_at;
                t.push(Event::Expired, at);
                self.dirty.insert(key);
                continue;
            }
            t.push(Event::Called, now_ms);
            let lane = self.lanes.get_mut(counter).expect("lane exists");
            lane.streak = if take_priority { lane.streak + 1 } else { 0 };
            lane.called.push(key.clone());
            self.dirty.insert(key.clone());
            return Ok(Some(key));
        }
    }

    /// The live token `action` applies to; a finished one is an illegal transition.
    fn token_mut(&mut self, key: &TokenKey, action: &'static str) -> Result<&mut Token, QueueError> {
        if let Lookup::Finished(s) = self.lookup(key) {
            return Err(QueueError::IllegalTransition { action, from: s.as_str() });
        }
        self.tokens.get_mut(key).map(|t| &mut t.token).ok_or(QueueError::UnknownToken)
    }

    fn finish(&mut self, key: &TokenKey, event: Event, action: &'static str, now: Timestamp) -> Result<(), QueueError> {
        let now_ms = millis(now);
        self.expire_if_due(key, now_ms);
        let t = self.token_mut(key, action)?;
        if t.status != Status::Called {
            return Err(QueueError::IllegalTransition { action, from: t.status.as_str() });
        }
        let called_at = t.last_at(Event::Called).unwrap_or(t.issued_at);
        t.push(event, now_ms);
        let at = t.at_counter.clone();
        let lane = self.lane_mut(&at);
        lane.called.retain(|k| k != key);
        lane.record_service(now_ms - called_at);
        self.dirty.insert(key.clone());
        Ok(())
    }

    pub fn complete(&mut self, key: &TokenKey, now: Timestamp) -> Result<(), QueueError> {
        self.finish(key, Event::Completed, "complete", now)
    }

    pub fn no_show(&mut self, key: &TokenKey, now: Timestamp) -> Result<(), QueueError> {
        self.finish(key, Event::NoShow, "mark as no-show", now)
    }

    pub fn recall(&mut self, key: &TokenKey, now: Timestamp) -> Result<(), QueueError> {
        let now_ms = millis(now);
        self.expire_if_due(key, now_ms);
        let t = self.token_mut(key, "recall")?;
        if t.status != Status::Called {
            return Err(QueueError::IllegalTransition { action: "recall", from: t.status.as_str() });
        }
        t.push(Event::Recalled, now_ms);
        self.dirty.insert(key.clone());
        Ok(())
    }

    /// Moves a waiting or called token to another counter's priority lane (it has already
    /// queued once); it keeps its number and display.
    pub fn transfer(&mut self, key: &TokenKey, to: &str, now: Timestamp) -> Result<(), QueueError> {
        let now_ms = millis(now);
        if self.counter(to).is_none() {
            return Err(QueueError::UnknownCounter);
        }
        self.expire_if_due(key, now_ms);
        let validity_ms = (self.cfg.token_validity_s as i64).saturating_mul(1000);
        let to = self.intern(to);
        let t = self.token_mut(key, "transfer")?;
        if !matches!(t.status, Status::Waiting | Status::Called) {
            return Err(QueueError::IllegalTransition { action: "transfer", from: t.status.as_str() });
        }
        if t.at_counter == to {
            return Err(QueueError::IllegalTransition {
                action: "transfer to its own counter",
                from: t.status.as_str(),
            });
        }
        let from = std::mem::replace(&mut t.at_counter, to.clone());
        t.lane_priority = true;
        // A transferred token gets a fresh validity window at its new counter.
        t.expires_at = now_ms.saturating_add(validity_ms);
        let expires_at = t.expires_at;
        t.push(Event::Transferred, now_ms);
        if let Some(lane) = self.lanes.get_mut(&from) {
            lane.remove_waiting(key);
            lane.called.retain(|k| k != key);
        }
        self.lane_mut(&to).priority.push_back(key.clone());
        self.dirty.insert(key.clone());
        self.next_expiry = self.next_expiry.min(expires_at);
        Ok(())
    }

    /// How many tokens will be called before this one, and the estimated wait.
    pub fn position(&self, key: &TokenKey) -> Position {
        let Some(t) = self.tokens.get(key) else {
            return Position { ahead: 0, estimated_wait_s: 0 };
        };
        if t.status != Status::Waiting {
            return Position { ahead: 0, estimated_wait_s: 0 };
        }
        let Some(lane) = self.lanes.get(&t.at_counter) else {
            return Position { ahead: 0, estimated_wait_s: 0 };
        };
        let n = self.cfg.max_priority_streak as usize;
        let p = lane.priority.len();
        let w = lane.normal.len();
        let s = (lane.streak as usize).min(n);
        let ahead = if let Some(j) = lane.priority.iter().position(|k| k == key) {
            // Normal calls forced in before the (j+1)-th priority call by the guard.
            let forced = if j < n - s { 0 } else { 1 + (j - (n - s)) / n };
            j + forced.min(w)
        } else if let Some(k) = lane.normal.iter().position(|x| x == key) {
            // Priority calls that happen before the (k+1)-th normal call.
            k + p.min((n - s) + k * n)
        } else {
            0
        };
        let ahead = ahead as u32;
        Position { ahead, estimated_wait_s: u64::from(ahead) * lane.service_s(self.cfg.default_service_s) }
    }

    /// Waiting tokens of a counter in call order (simulating the guard), and called ones.
    pub fn counter_view(&self, counter: &str) -> (Vec<&Token>, Vec<&Token>) {
        let Some(lane) = self.lanes.get(counter) else {
            return (Vec::new(), Vec::new());
        };
        let n = self.cfg.max_priority_streak;
        let (mut pi, mut ni, mut streak) = (0usize, 0usize, lane.streak);
        let mut order = Vec::with_capacity(lane.priority.len() + lane.normal.len());
        while pi < lane.priority.len() || ni < lane.normal.len() {
            let prio = pi < lane.priority.len() && (streak < n || ni >= lane.normal.len());
            if prio {
                order.push(&lane.priority[pi]);
                pi += 1;
                streak += 1;
            } else {
                order.push(&lane.normal[ni]);
                ni += 1;
                streak = 0;
            }
        }
        let waiting = order.into_iter().filter_map(|k| self.get(k)).collect();
        let called = lane.called.iter().filter_map(|k| self.get(k)).collect();
        (waiting, called)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facility::view::{ApiTime, TokenView};
    use std::time::Duration;

    fn cfg() -> QueueConfig {
        QueueConfig {
            tz: TimeZone::get("Asia/Kolkata").unwrap(),
            token_validity_s: 1800,
            max_priority_streak: 3,
            default_service_s: 120,
            counters: vec![
                Counter { id: "OPD1".into(), kind: CounterKind::Opd },
                Counter { id: "OPD2".into(), kind: CounterKind::Opd },
            ],
        }
    }

    fn t0() -> Timestamp {
        "2026-11-23T03:00:00Z".parse().unwrap()
    }

    fn later(s: u64) -> Timestamp {
        t0() + Duration::from_secs(s)
    }

    fn input(counter: &str, patient: &str, priority: Option<PriorityClass>) -> ScanInput {
        ScanInput {
            counter: counter.into(),
            priority,
            patient: keys_of(patient),
            profile: Profile {
                abha_address: format!("{patient}@abdm"),
                name: patient.into(),
                gender: "F".into(),
                year_of_birth: 1980,
                ..Profile::default()
            },
            idempotency_key: None,
        }
    }

    /// Test digests: distinct patients, distinct digests.
    fn keys_of(patient: &str) -> PatientKeys {
        PatientKeys { by_address: PatientDigest::for_test(&format!("d-{patient}")), by_number: None }
    }

    fn queue() -> FacilityQueue {
        FacilityQueue::new(cfg(), t0().to_zoned(cfg().tz).date())
    }

    fn issue(q: &mut FacilityQueue, counter: &str, patient: &str, p: Option<PriorityClass>) -> TokenKey {
        q.scan(input(counter, patient, p), t0()).unwrap().key
    }

    #[test]
    fn a_scan_view_leaves_the_patient_out_and_shows_the_rest_as_the_staff_view_does() {
        let mut q = queue();
        issue(&mut q, "OPD1", "a", None);
        let k = issue(&mut q, "OPD1", "b", None);
        let staff = TokenView::of(&q, "IN01", &k).unwrap();
        let scan = TokenView::of_public(&q, "IN01", &k).unwrap();
        assert_eq!(staff.patient.as_ref().map(|p| p.name.as_str()), Some("b"));
        assert!(scan.patient.is_none());
        let json = serde_json::to_value(&scan).unwrap();
        assert!(json.get("patient").is_none() && !json.to_string().contains("b@abdm"), "{json}");
        let mut staff = serde_json::to_value(&staff).unwrap();
        staff.as_object_mut().unwrap().remove("patient");
        assert_eq!(staff, json);
        assert_eq!(json["ahead"], 1);
    }

    /// The view keeps times, dates and counter names unformatted until it is written; the
    /// JSON must read exactly as the API documents it (RFC 3339 UTC, ISO date, names).
    #[test]
    fn a_view_writes_times_dates_and_counters_as_the_api_shows_them() {
        let mut q = queue();
        let k = q.scan(input("OPD1", "a", None), t0() + Duration::from_millis(1_250)).unwrap().key;
        q.call_next("OPD1", later(60)).unwrap();
        q.transfer(&k, "OPD2", later(90)).unwrap();
        let json = serde_json::to_value(TokenView::of(&q, "IN01", &k).unwrap()).unwrap();
        assert_eq!(json["service_date"], "2026-11-23");
        assert_eq!(json["issued_at"], "2026-11-23T03:00:01.25Z");
        assert_eq!(json["expires_at"], "2026-11-23T03:31:30Z", "a fresh window from the transfer");
        assert_eq!(json["called_at"], "2026-11-23T03:01:00Z");
        assert!(json.get("completed_at").is_none());
        assert_eq!((json["counter_id"].as_str(), json["issued_counter_id"].as_str()), (Some("OPD2"), Some("OPD1")));
        let history: Vec<(String, String)> = json["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["at"].as_str().unwrap().to_string(), h["counter_id"].as_str().unwrap().to_string()))
            .collect();
        let at = |s: &str, c: &str| (s.to_string(), c.to_string());
        assert_eq!(
            history,
            [
                at("2026-11-23T03:00:01.25Z", "OPD1"),
                at("2026-11-23T03:01:00Z", "OPD1"),
                at("2026-11-23T03:01:30Z", "OPD2")
            ]
        );
        assert_eq!(serde_json::to_value(ApiTime(Millis::MAX)).unwrap(), "", "out of range: empty, as before");
    }

    #[test]
    fn numbers_are_per_counter_and_contiguous() {
        let mut q = queue();
        let a: Vec<u32> = (0..5).map(|i| issue(&mut q, "OPD1", &format!("a{i}"), None).number).collect();
        let b: Vec<u32> = (0..3).map(|i| issue(&mut q, "OPD2", &format!("b{i}"), None).number).collect();
        assert_eq!(a, vec![1, 2, 3, 4, 5]);
        assert_eq!(b, vec![1, 2, 3]);
        assert_eq!(q.get(&a_key("OPD1", 5)).unwrap().display(), "OPD1-005");
    }

    fn a_key(c: &str, n: u32) -> TokenKey {
        TokenKey { counter: c.into(), number: n }
    }

    /// Every counter name the queue holds (tokens, keys, lanes, indexes, history) is the
    /// queue's one name for that counter: a per-token copy would be an allocation per token.
    fn assert_names_interned(q: &FacilityQueue) {
        let names = &q.counter_names;
        assert!(names.iter().enumerate().all(|(i, n)| !names[..i].contains(n)), "one name per counter");
        let one = |n: &CounterName| names.iter().any(|c| Arc::ptr_eq(c, n));
        let keys = q.tokens.keys().chain(&q.dirty);
        let lane_keys = q.lanes.values().flat_map(|l| l.priority.iter().chain(&l.normal).chain(&l.called));
        assert!(keys.chain(lane_keys).all(|k| one(&k.counter)), "keys");
        for t in q.tokens.values() {
            let history = t.history.iter().map(|h| &h.counter);
            assert!([&t.counter, &t.at_counter].into_iter().chain(history).all(one), "{}", t.display());
        }
        assert!(q.lanes.keys().all(one), "lanes");
        let refs = q.by_patient.values().chain(q.by_idempotency.values());
        assert!(refs.map(|&p| q.unpack(p).expect("a known counter")).all(|k| one(&k.counter)), "indexes");
        assert!(q.issued_since_take.iter().all(one));
    }

    #[test]
    fn a_counter_name_is_one_allocation_shared_by_its_tokens() {
        let mut q = queue();
        let keys: Vec<TokenKey> = (0..6).map(|i| issue(&mut q, "OPD1", &format!("p{i}"), None)).collect();
        issue(&mut q, "OPD2", "x", None);
        let mut keyed = input("OPD1", "k", Some(PriorityClass::Elderly));
        keyed.idempotency_key = Some("req-k".into());
        let k = q.scan(keyed.clone(), later(1)).unwrap().key;
        let replay = q.scan(keyed, later(2)).unwrap();
        assert_eq!(replay, ScanOutcome { key: k.clone(), kind: ScanKind::Replay });
        assert!(Arc::ptr_eq(&replay.key.counter, &k.counter), "the packed reference resolves to the one name");
        for key in &keys[1..] {
            assert!(Arc::ptr_eq(&key.counter, &keys[0].counter), "keys of one counter share its name");
            let t = q.get(key).unwrap();
            assert!(Arc::ptr_eq(&t.counter, &keys[0].counter) && Arc::ptr_eq(&t.at_counter, &t.counter));
        }
        assert!(Arc::ptr_eq(&k.counter, &keys[0].counter));
        assert!(!Arc::ptr_eq(&keys[0].counter, &q.get(&a_key("OPD2", 1)).unwrap().counter));
        q.call_next("OPD1", later(3)).unwrap();
        q.transfer(&keys[1], "OPD2", later(4)).unwrap();
        assert_names_interned(&q);
        // A key built from a request path finds the token, and a restore interns again.
        assert_eq!(q.get(&a_key("OPD1", 3)).unwrap().number, 3);
        use crate::persistence::record;
        let stored = q.tokens.values().map(|t| record::decode(&t.counter, t.number, &record::encode(t)).unwrap());
        let r = FacilityQueue::restore(cfg(), q.day(), stored.collect(), |p| keys_of(&p.name));
        assert_names_interned(&r);
    }

    #[test]
    fn repeat_scan_returns_same_token_until_expired() {
        let mut q = queue();
        let first = q.scan(input("OPD1", "p", None), t0()).unwrap();
        let again = q.scan(input("OPD1", "p", None), later(60)).unwrap();
        assert_eq!(again.kind, ScanKind::Repeat);
        assert_eq!(again.key, first.key);
        // Another counter is another queue.
        assert_eq!(q.scan(input("OPD2", "p", None), later(60)).unwrap().kind, ScanKind::New);
        let after = q.scan(input("OPD1", "p", None), later(1801)).unwrap();
        assert_eq!(after.kind, ScanKind::New);
        assert_eq!(after.key.number, 2);
        assert_eq!(q.get(&first.key).unwrap().status, Status::Expired);
        assert_eq!(q.get(&first.key).unwrap().last_at(Event::Expired), Some(millis(later(1800))));
    }

    #[test]
    fn repeat_matches_by_abha_number_too() {
        let mut q = queue();
        let mut a = input("OPD1", "p", None);
        a.patient.by_number = Some(PatientDigest::for_test("num"));
        let first = q.scan(a, t0()).unwrap();
        let mut b = input("OPD1", "other-address", None);
        b.patient.by_number = Some(PatientDigest::for_test("num"));
        let again = q.scan(b, later(5)).unwrap();
        assert_eq!((again.kind, again.key), (ScanKind::Repeat, first.key));
    }

    #[test]
    fn a_finished_token_leaves_the_repeat_index_but_not_its_successors_entries() {
        let mut q = queue();
        let with_number = |counter: &str| {
            let mut s = input(counter, "p", None);
            s.patient.by_number = Some(PatientDigest::for_test("num"));
            s
        };
        let first = q.scan(with_number("OPD1"), t0()).unwrap().key;
        let other_counter = q.scan(with_number("OPD2"), later(1000)).unwrap().key;
        assert_eq!(q.by_patient.len(), 4, "address and number, per issuing counter");
        // Expired by the patient's next scan, which issues the successor while the first
        // token's change is still to be taken.
        let second = q.scan(with_number("OPD1"), later(1800)).unwrap();
        assert_eq!((second.kind, second.key.number), (ScanKind::New, 2));
        take(&mut q);
        assert!(q.get(&first).is_none(), "the expired token left memory");
        assert_eq!(q.by_patient.len(), 4, "the successor kept both its entries");
        let mut by_number_only = with_number("OPD1");
        by_number_only.patient.by_address = PatientDigest::for_test("a new address");
        assert_eq!(
            q.scan(by_number_only, later(1801)).unwrap(),
            ScanOutcome { key: second.key.clone(), kind: ScanKind::Repeat }
        );
        q.call_next("OPD1", later(1802)).unwrap();
        q.complete(&second.key, later(1803)).unwrap();
        take(&mut q);
        assert_eq!(q.by_patient.len(), 2, "only the other counter's token is indexed");
        assert_eq!(q.scan(with_number("OPD2"), later(1804)).unwrap().key, other_counter);
    }

    #[test]
    fn called_token_is_still_a_repeat_but_completed_is_not() {
        let mut q = queue();
        let k = issue(&mut q, "OPD1", "p", None);
        q.call_next("OPD1", later(10)).unwrap();
        assert_eq!(q.scan(input("OPD1", "p", None), later(2000)).unwrap().kind, ScanKind::Repeat);
        q.complete(&k, later(2001)).unwrap();
        assert_eq!(q.scan(input("OPD1", "p", None), later(2002)).unwrap().kind, ScanKind::New);
    }

    #[test]
    fn idempotency_key_replays_and_refuses_reuse() {
        let mut q = queue();
        let mut a = input("OPD1", "p", None);
        a.idempotency_key = Some("k1".into());
        let first = q.scan(a.clone(), t0()).unwrap();
        let again = q.scan(a, later(1)).unwrap();
        assert_eq!((again.kind, again.key), (ScanKind::Replay, first.key));
        let mut b = input("OPD1", "someone-else", None);
        b.idempotency_key = Some("k1".into());
        assert_eq!(q.scan(b, later(2)), Err(QueueError::IdempotencyKeyReused));
    }

    #[test]
    fn priority_first_with_starvation_guard() {
        let mut q = queue();
        for i in 1..=3 {
            issue(&mut q, "OPD1", &format!("n{i}"), None);
        }
        for i in 1..=5 {
            issue(&mut q, "OPD1", &format!("p{i}"), Some(PriorityClass::Elderly));
        }
        // Predicted order before calling matches the actual call order.
        let predicted: Vec<u32> = q.counter_view("OPD1").0.iter().map(|t| t.number).collect();
        let aheads: Vec<u32> = predicted.iter().map(|n| q.position(&a_key("OPD1", *n)).ahead).collect();
        assert_eq!(aheads, (0..8).collect::<Vec<u32>>());
        let mut order = Vec::new();
        while let Some(k) = q.call_next("OPD1", later(10)).unwrap() {
            order.push(k.number);
        }
        // n1..n3 = 1..3, p1..p5 = 4..8
        assert_eq!(order, vec![4, 5, 6, 1, 7, 8, 2, 3]);
        assert_eq!(order, predicted);
    }

    #[test]
    fn priority_keeps_going_when_no_normal_waits() {
        let mut q = queue();
        for i in 1..=5 {
            issue(&mut q, "OPD1", &format!("p{i}"), Some(PriorityClass::Pregnant));
        }
        let mut order = Vec::new();
        while let Some(k) = q.call_next("OPD1", later(10)).unwrap() {
            order.push(k.number);
        }
        assert_eq!(order, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn transitions_and_illegal_ones() {
        let mut q = queue();
        let k = issue(&mut q, "OPD1", "p", None);
        assert!(matches!(q.complete(&k, later(1)), Err(QueueError::IllegalTransition { .. })));
        assert!(matches!(q.recall(&k, later(1)), Err(QueueError::IllegalTransition { .. })));
        assert!(matches!(q.no_show(&k, later(1)), Err(QueueError::IllegalTransition { .. })));
        assert_eq!(q.call_next("OPD1", later(2)).unwrap(), Some(k.clone()));
        q.recall(&k, later(3)).unwrap();
        q.no_show(&k, later(4)).unwrap();
        assert!(matches!(q.transfer(&k, "OPD2", later(5)), Err(QueueError::IllegalTransition { .. })));
        let events: Vec<Event> = q.get(&k).unwrap().history.iter().map(|h| h.event).collect();
        assert_eq!(events, vec![Event::Issued, Event::Called, Event::Recalled, Event::NoShow]);
        assert_eq!(q.call_next("OPD1", later(6)).unwrap(), None);
        assert_eq!(q.call_next("NOPE", later(6)), Err(QueueError::UnknownCounter));
    }

    #[test]
    fn transfer_keeps_number_and_jumps_the_lane() {
        let mut q = queue();
        issue(&mut q, "OPD2", "x1", None);
        issue(&mut q, "OPD2", "x2", None);
        let k = issue(&mut q, "OPD1", "p", None);
        assert!(matches!(q.transfer(&k, "OPD1", later(1)), Err(QueueError::IllegalTransition { .. })));
        assert_eq!(q.transfer(&k, "NOPE", later(1)), Err(QueueError::UnknownCounter));
        q.transfer(&k, "OPD2", later(1)).unwrap();
        assert_eq!(q.position(&k).ahead, 0);
        assert_eq!(q.position(&a_key("OPD2", 1)).ahead, 1);
        let called = q.call_next("OPD2", later(2)).unwrap().unwrap();
        assert_eq!(called, k);
        assert_eq!(q.get(&k).unwrap().display(), "OPD1-001");
        assert_eq!(&*q.get(&k).unwrap().at_counter, "OPD2");
        assert_eq!(q.call_next("OPD1", later(3)).unwrap(), None);
    }

    #[test]
    fn estimated_wait_uses_recent_service_times() {
        let mut q = queue();
        let a = issue(&mut q, "OPD1", "a", None);
        issue(&mut q, "OPD1", "b", None);
        let c = issue(&mut q, "OPD1", "c", None);
        assert_eq!(q.position(&c), Position { ahead: 2, estimated_wait_s: 240 });
        q.call_next("OPD1", later(0)).unwrap();
        q.complete(&a, later(60)).unwrap();
        assert_eq!(q.position(&c), Position { ahead: 1, estimated_wait_s: 60 });
    }

    #[test]
    fn call_next_skips_expired_tokens() {
        let mut q = queue();
        let a = issue(&mut q, "OPD1", "a", None);
        let b = q.scan(input("OPD1", "b", None), later(1000)).unwrap().key;
        assert_eq!(q.call_next("OPD1", later(1850)).unwrap(), Some(b));
        assert_eq!(q.get(&a).unwrap().status, Status::Expired);
    }

    #[test]
    fn expire_due_marks_only_waiting_past_validity() {
        let mut q = queue();
        issue(&mut q, "OPD1", "a", None);
        issue(&mut q, "OPD1", "b", None);
        q.call_next("OPD1", later(1)).unwrap();
        take(&mut q);
        assert_eq!(q.expire_due(later(1799)), 0);
        assert_eq!(q.expire_due(later(1800)), 1);
        assert_eq!(take(&mut q).len(), 1);
    }

    #[test]
    fn the_expiry_bound_skips_early_ticks_but_never_misses_a_due_token() {
        let mut q = queue();
        issue(&mut q, "OPD1", "a", None);
        let b = q.scan(input("OPD1", "b", None), later(100)).unwrap().key;
        let c = q.scan(input("OPD1", "c", None), later(200)).unwrap().key;
        // Transferred at 300 s: a fresh window, due at 2100 s.
        q.transfer(&c, "OPD2", later(300)).unwrap();
        assert_eq!(q.expire_due(later(1799)), 0);
        assert_eq!(q.expire_due(later(1800)), 1, "a");
        assert_eq!(q.expire_due(later(1850)), 0);
        assert_eq!(q.expire_due(later(1900)), 1, "b");
        assert_eq!(q.get(&b).unwrap().status, Status::Expired);
        assert_eq!(q.expire_due(later(2099)), 0);
        assert_eq!(q.expire_due(later(2100)), 1, "c at its new counter");
        // A restored queue scans on its first tick.
        let stored: Vec<Token> = q.tokens.values().map(|t| t.token.clone()).collect();
        let keys = |p: &Profile| keys_of(&p.name);
        let mut r = FacilityQueue::restore(cfg(), q.day(), stored, keys);
        assert_eq!(r.expire_due(later(5000)), 0, "already expired before the restore");
        let d = r.scan(input("OPD1", "d", None), later(5000)).unwrap().key;
        assert_eq!(r.expire_due(later(6800)), 1);
        assert_eq!(r.get(&d).unwrap().status, Status::Expired);
    }

    #[test]
    fn local_day_and_staleness() {
        let q = queue();
        // 23:59 IST on the 23rd is 18:29Z; 00:01 IST on the 24th is 18:31Z.
        let before: Timestamp = "2026-11-23T18:29:00Z".parse().unwrap();
        let after: Timestamp = "2026-11-23T18:31:00Z".parse().unwrap();
        assert!(!q.is_stale(before));
        assert!(q.is_stale(after));
        assert_eq!(q.service_day_at(after).to_string(), "2026-11-24");
    }

    #[test]
    fn restore_rebuilds_lanes_numbers_and_repeat_index() {
        let mut q = queue();
        for i in 1..=3 {
            issue(&mut q, "OPD1", &format!("n{i}"), None);
        }
        let p = issue(&mut q, "OPD1", "p1", Some(PriorityClass::Disabled));
        let first = q.call_next("OPD1", later(5)).unwrap().unwrap();
        assert_eq!(first, p);
        let stored: Vec<Token> = q.tokens.values().map(|t| t.token.clone()).collect();
        let keys = |p: &Profile| keys_of(&p.name);
        let mut r = FacilityQueue::restore(cfg(), q.day(), stored, keys);
        assert_eq!(r.lanes["OPD1"].streak, 1);
        assert_eq!(r.scan(input("OPD1", "n2", None), later(6)).unwrap().kind, ScanKind::Repeat);
        assert_eq!(r.scan(input("OPD1", "new", None), later(6)).unwrap().key.number, 5);
        assert_eq!(r.counter_view("OPD1").1.len(), 1);
        let order: Vec<u32> = std::iter::from_fn(|| r.call_next("OPD1", later(7)).unwrap()).map(|k| k.number).collect();
        assert_eq!(order, vec![1, 2, 3, 5]);
    }

    fn take(q: &mut FacilityQueue) -> Vec<(TokenKey, Status)> {
        let mut seen = Vec::new();
        q.take_changes(|t| seen.push((t.key(), t.status)));
        seen.sort_by_key(|(k, _)| k.clone());
        seen
    }

    #[test]
    fn finished_tokens_leave_memory_once_taken_and_stay_known_by_status() {
        let mut q = queue();
        let mut with_key = input("OPD1", "a", None);
        with_key.idempotency_key = Some("req-a".into());
        let a = q.scan(with_key.clone(), t0()).unwrap().key;
        let b = issue(&mut q, "OPD1", "b", None);
        let c = issue(&mut q, "OPD1", "c", None);
        assert_eq!(q.call_next("OPD1", later(1)).unwrap(), Some(a.clone()));
        q.complete(&a, later(2)).unwrap();
        assert_eq!(q.call_next("OPD1", later(3)).unwrap(), Some(b.clone()));
        q.no_show(&b, later(4)).unwrap();
        // Not yet handed to the writer: still in memory, so its change can be persisted.
        assert_eq!(q.get(&a).unwrap().status, Status::Completed);
        let taken = take(&mut q);
        assert_eq!(taken.len(), 3, "every change is handed over once: {taken:?}");
        assert_eq!(q.len(), 1, "only the waiting token stays");
        assert_eq!(q.lookup(&a), Lookup::Finished(Status::Completed));
        assert_eq!(q.lookup(&b), Lookup::Finished(Status::NoShow));
        assert!(matches!(q.lookup(&c), Lookup::Live(t) if t.status == Status::Waiting));
        assert_eq!(q.lookup(&a_key("OPD1", 9)), Lookup::Unknown);
        assert_eq!(q.by_patient.len(), 1, "finished patients are unindexed");
        assert!(take(&mut q).is_empty(), "nothing changed since");

        // Actions on a finished token are refused with its real status, not "unknown".
        assert_eq!(q.recall(&a, later(5)), Err(QueueError::IllegalTransition { action: "recall", from: "completed" }));
        assert_eq!(
            q.transfer(&b, "OPD2", later(5)),
            Err(QueueError::IllegalTransition { action: "transfer", from: "no_show" })
        );
        assert_eq!(q.complete(&a_key("OPD1", 9), later(5)), Err(QueueError::UnknownToken));

        // A finished patient scanning again is new; the Idempotency-Key still replays.
        assert_eq!(q.scan(input("OPD1", "a", None), later(6)).unwrap().key.number, 4);
        let replay = q.scan(with_key, later(7)).unwrap();
        assert_eq!(replay, ScanOutcome { key: a.clone(), kind: ScanKind::Replay });
        assert!(q.get(&a).is_none(), "the caller confirms the replay against the stored record");
    }

    #[test]
    fn expired_tokens_leave_memory_too() {
        let mut q = queue();
        let a = issue(&mut q, "OPD1", "a", None);
        take(&mut q);
        assert_eq!(q.expire_due(later(1800)), 1);
        assert_eq!(take(&mut q), vec![(a.clone(), Status::Expired)]);
        assert_eq!(q.lookup(&a), Lookup::Finished(Status::Expired));
        assert!(q.is_empty());
        assert_eq!(q.expire_due(later(3600)), 0);
    }

    #[test]
    fn memory_follows_the_queue_not_the_day() {
        let mut q = queue();
        for i in 0..5_000u64 {
            let mut inp = input(if i % 2 == 0 { "OPD1" } else { "OPD2" }, &format!("p{i}"), None);
            inp.idempotency_key = Some(format!("k{i}"));
            q.scan(inp, later(i)).unwrap();
            if i >= 10 {
                let counter = if i % 2 == 0 { "OPD1" } else { "OPD2" };
                let k = q.call_next(counter, later(i)).unwrap().expect("someone waits");
                q.complete(&k, later(i)).unwrap();
            }
            take(&mut q);
        }
        assert_eq!(q.len(), 10, "ten waiting tokens stay, 4,990 finished left");
        assert_eq!(q.by_patient.len(), 10);
        assert_eq!(q.by_idempotency.len(), 5_000, "one compact entry per keyed scan");
        assert_eq!(q.lanes["OPD1"].last_number, 2_500);
        assert_eq!(q.lanes["OPD1"].finished.iter().filter(|s| s.is_some()).count(), 2_495);
        // Numbering goes on from the day's count, not from what is in memory.
        assert_eq!(issue(&mut q, "OPD1", "late", None).number, 2_501);
    }

    #[test]
    fn a_queue_that_empties_gives_its_memory_back() {
        let mut q = queue();
        let keys: Vec<TokenKey> = (0..1_000).map(|i| issue(&mut q, "OPD1", &format!("p{i}"), None)).collect();
        take(&mut q);
        let grown = q.tokens.capacity();
        assert!(grown >= 1_000);
        for _ in &keys[2..] {
            let k = q.call_next("OPD1", later(1)).unwrap().unwrap();
            q.complete(&k, later(2)).unwrap();
        }
        take(&mut q);
        assert_eq!(q.len(), 2);
        assert!(q.tokens.capacity() <= 16, "{} slots kept of {grown}", q.tokens.capacity());
        assert!(q.by_patient.capacity() <= 16);
        assert!(q.lanes["OPD1"].normal.capacity() <= 16);

        // Once nothing is live, the maps and deques hold no allocation at all.
        for _ in 0..2 {
            let k = q.call_next("OPD1", later(3)).unwrap().unwrap();
            q.complete(&k, later(4)).unwrap();
        }
        take(&mut q);
        assert_eq!(q.len(), 0);
        assert_eq!((q.tokens.capacity(), q.by_patient.capacity(), q.dirty.capacity()), (0, 0, 0));
        let lane = &q.lanes["OPD1"];
        assert_eq!((lane.normal.capacity(), lane.priority.capacity(), lane.called.capacity()), (0, 0, 0));
        // And the next scan still gets the next number.
        assert_eq!(issue(&mut q, "OPD1", "next", None).number, 1_001);
    }

    #[test]
    fn a_replay_check_needs_the_same_key_counter_and_patient() {
        let mut q = queue();
        let mut scan = input("OPD1", "a", None);
        assert!(ReplayCheck::of(&scan).is_none(), "no key, no replay");
        scan.idempotency_key = Some("req-1".into());
        let check = ReplayCheck::of(&scan).expect("keyed");
        let key = q.scan(scan.clone(), later(0)).unwrap().key;
        let t = q.get(&key).unwrap().clone();
        let stored = keys_of("a");
        assert_eq!(check.matches(&t, &stored), Some(ScanKind::Replay));
        let other = |f: &dyn Fn(&mut ScanInput)| {
            let mut s = scan.clone();
            f(&mut s);
            ReplayCheck::of(&s).expect("keyed").matches(&t, &stored)
        };
        assert_eq!(other(&|s| s.idempotency_key = Some("req-2".into())), None, "another key");
        assert_eq!(other(&|s| s.counter = "OPD2".into()), None, "another counter");
        assert_eq!(other(&|s| s.profile.abha_address = "someone.else@abdm".into()), None, "another patient");
    }

    #[test]
    fn a_replay_check_of_a_repeat_key_needs_the_counter_and_the_patient_by_either_identifier() {
        let mut q = queue();
        let mut a = input("OPD1", "a", None);
        a.patient.by_number = Some(PatientDigest::for_test("n-a"));
        q.scan(a.clone(), later(0)).unwrap();
        // The same person by ABHA number under another address: a repeat, with its key.
        let mut repeat = input("OPD1", "a2", None);
        repeat.patient.by_number = a.patient.by_number;
        repeat.idempotency_key = Some("req-2".into());
        let out = q.scan(repeat.clone(), later(1)).unwrap();
        assert_eq!(out.kind, ScanKind::Repeat);
        let t = q.get(&out.key).unwrap().clone();
        assert_eq!(t.repeat_keys, vec![idempotency_hash("req-2")]);
        let check = |s: &ScanInput| ReplayCheck::of(s).expect("keyed").matches(&t, &a.patient);
        assert_eq!(check(&repeat), Some(ScanKind::RepeatReplay));
        let mut other = repeat.clone();
        other.counter = "OPD2".into();
        assert_eq!(check(&other), None, "another counter");
        let mut other = repeat.clone();
        other.patient = keys_of("someone else");
        assert_eq!(check(&other), None, "another patient");
        let mut other = repeat.clone();
        other.idempotency_key = Some("req-3".into());
        assert_eq!(check(&other), None, "another key");
    }

    #[test]
    fn a_key_answered_as_a_repeat_answers_the_same_token_again_live_finished_and_restored() {
        let mut q = queue();
        let keyed = |k: &str| {
            let mut s = input("OPD1", "a", None);
            s.idempotency_key = Some(k.into());
            s
        };
        let first = q.scan(keyed("k1"), later(0)).unwrap().key;
        take(&mut q);
        assert_eq!(q.scan(keyed("k2"), later(1)).unwrap(), ScanOutcome { key: first.clone(), kind: ScanKind::Repeat });
        assert_eq!(take(&mut q), vec![(first.clone(), Status::Waiting)], "the key is persisted with the token");
        assert_eq!(q.get(&first).unwrap().repeat_keys, vec![idempotency_hash("k2")]);
        let again = q.scan(keyed("k2"), later(2)).unwrap();
        assert_eq!(again, ScanOutcome { key: first.clone(), kind: ScanKind::RepeatReplay });
        assert!(take(&mut q).is_empty(), "a replay changes nothing");
        // The repeat key is bound to its patient and counter.
        let mut other = input("OPD1", "b", None);
        other.idempotency_key = Some("k2".into());
        assert_eq!(q.scan(other, later(2)), Err(QueueError::IdempotencyKeyReused));

        // Restored while live, then finished: the key still finds the token.
        let stored: Vec<Token> = q.tokens.values().map(|t| t.token.clone()).collect();
        let mut r = FacilityQueue::restore(cfg(), q.day(), stored, |p: &Profile| keys_of(&p.name));
        assert_eq!(r.scan(keyed("k2"), later(3)).unwrap().kind, ScanKind::RepeatReplay);
        assert_eq!(r.call_next("OPD1", later(4)).unwrap(), Some(first.clone()));
        r.complete(&first, later(5)).unwrap();
        let mut finished = Vec::new();
        r.take_changes(|t| finished.push(t.clone()));
        let replay = r.scan(keyed("k2"), later(6)).unwrap();
        assert_eq!(replay, ScanOutcome { key: first.clone(), kind: ScanKind::Replay }, "confirmed by the caller");
        let check = ReplayCheck::of(&keyed("k2")).unwrap();
        assert_eq!(check.matches(&finished[0], &keys_of("a")), Some(ScanKind::RepeatReplay));
        let mut r2 = FacilityQueue::restore(cfg(), q.day(), finished, |p: &Profile| keys_of(&p.name));
        assert_eq!(r2.scan(keyed("k2"), later(7)).unwrap(), replay, "and after a restore of the finished token");
        // Nothing above took a number.
        assert_eq!(r2.scan(keyed("k3"), later(8)).unwrap().key.number, 2);
    }

    #[test]
    fn a_token_keeps_only_its_latest_repeat_keys() {
        let mut q = queue();
        let keyed = |k: String| {
            let mut s = input("OPD1", "a", None);
            s.idempotency_key = Some(k);
            s
        };
        let first = q.scan(keyed("k0".into()), later(0)).unwrap().key;
        for i in 1..=MAX_REPEAT_KEYS + 2 {
            assert_eq!(q.scan(keyed(format!("k{i}")), later(1)).unwrap().kind, ScanKind::Repeat);
        }
        let kept: Vec<u64> = (3..=MAX_REPEAT_KEYS + 2).map(|i| idempotency_hash(&format!("k{i}"))).collect();
        assert_eq!(q.get(&first).unwrap().repeat_keys, kept);
        assert_eq!(q.by_idempotency.len(), 1 + MAX_REPEAT_KEYS, "the dropped keys leave the index too");
        assert_eq!(q.scan(keyed("k1".into()), later(2)).unwrap().kind, ScanKind::Repeat, "a dropped key: a repeat");
        assert_eq!(q.scan(keyed("k0".into()), later(2)).unwrap().kind, ScanKind::Replay);
    }

    #[test]
    fn only_a_new_token_asks_for_admission_and_a_refusal_changes_nothing() {
        let mut q = queue();
        let mut a = input("OPD1", "a", None);
        a.idempotency_key = Some("k1".into());
        let mut asked = 0;
        let first = q.scan_admitted(a.clone(), later(0), || {
            asked += 1;
            true
        });
        let first = first.unwrap().expect("admitted").key;
        take(&mut q);
        let repeat = input("OPD1", "a", None);
        let keyed_repeat = ScanInput { idempotency_key: Some("k2".into()), ..repeat.clone() };
        for s in [a.clone(), repeat, keyed_repeat] {
            let out = q.scan_admitted(s, later(1), || panic!("a replay or a repeat is not charged")).unwrap();
            assert_eq!(out.map(|o| o.key), Some(first.clone()));
        }
        take(&mut q);
        let refused = q.scan_admitted(input("OPD1", "b", None), later(2), || {
            asked += 1;
            false
        });
        assert_eq!(refused, Ok(None));
        assert_eq!(asked, 2);
        let mut changed = 0;
        let issued = q.take_changes(|_| changed += 1);
        assert_eq!((changed, issued.len()), (0, 0), "nothing to persist, nothing issued");
        assert_eq!(issue(&mut q, "OPD1", "b", None).number, 2, "no number taken");
    }

    #[test]
    fn restore_counts_each_call_in_the_lane_it_was_made_from() {
        // OPD1: P1-P3 priority, N1 and N2 normal. The guard (3) calls P1, P2, P3, N1; N1
        // is then transferred (into OPD2's priority lane) and P4-P7 arrive.
        let mut q = queue();
        let p = |q: &mut FacilityQueue, i: u32| issue(q, "OPD1", &format!("p{i}"), Some(PriorityClass::Elderly));
        for i in 1..=3 {
            p(&mut q, i);
        }
        let n1 = issue(&mut q, "OPD1", "n1", None);
        issue(&mut q, "OPD1", "n2", None);
        for s in 1..=4 {
            q.call_next("OPD1", later(s)).unwrap();
        }
        q.transfer(&n1, "OPD2", later(5)).unwrap();
        for i in 4..=7 {
            p(&mut q, i);
        }
        let mut stored = Vec::new();
        q.take_changes(|t| stored.push(t.clone()));
        let mut r = FacilityQueue::restore(cfg(), q.day(), stored, |p: &Profile| keys_of(&p.name));
        assert_eq!(r.lanes["OPD1"].streak, 0, "N1's call was a normal one");
        let order = |q: &mut FacilityQueue| -> Vec<u32> {
            std::iter::from_fn(|| q.call_next("OPD1", later(10)).unwrap()).map(|k| k.number).collect()
        };
        let live = order(&mut q);
        assert_eq!(live, vec![6, 7, 8, 5, 9], "P4, P5, P6, then N2 by the guard, then P7");
        assert_eq!(order(&mut r), live, "the restored queue calls as the live one would");
    }

    #[test]
    fn a_hash_hit_for_another_key_is_not_a_replay() {
        let mut q = queue();
        let mut first = input("OPD1", "a", None);
        first.idempotency_key = Some("req-1".into());
        let a = q.scan(first, t0()).unwrap().key;
        // Force the second key's hash onto the first key's entry.
        let packed = q.by_idempotency[&idempotency_hash("req-1")];
        q.by_idempotency.insert(idempotency_hash("req-2"), packed);
        let mut second = input("OPD1", "b", None);
        second.idempotency_key = Some("req-2".into());
        let out = q.scan(second, later(1)).unwrap();
        assert_eq!(out.kind, ScanKind::New);
        assert_ne!(out.key, a);
    }

    #[test]
    fn restore_keeps_only_live_tokens_and_knows_the_finished_ones() {
        let mut q = queue();
        let mut keyed = input("OPD1", "a", None);
        keyed.idempotency_key = Some("req-a".into());
        let a = q.scan(keyed.clone(), t0()).unwrap().key;
        let b = issue(&mut q, "OPD1", "b", None);
        let c = issue(&mut q, "OPD1", "c", Some(PriorityClass::Elderly));
        q.call_next("OPD1", later(10)).unwrap();
        q.complete(&c, later(70)).unwrap();
        let mut stored = Vec::new();
        q.take_changes(|t| stored.push(t.clone()));
        stored.extend(q.tokens.values().map(|t| t.token.clone()));
        stored.sort_by_key(|t| t.number);
        stored.dedup_by_key(|t| t.number);
        assert_eq!(stored.len(), 3);
        let keys = |p: &Profile| keys_of(&p.name);
        let mut r = FacilityQueue::restore(cfg(), q.day(), stored, keys);
        assert_eq!(r.len(), 2);
        assert_eq!(r.lookup(&c), Lookup::Finished(Status::Completed));
        assert_eq!(r.lanes["OPD1"].streak, 1, "the priority call counts toward the guard");
        assert_eq!(r.lanes["OPD1"].recent_service_ms, VecDeque::from([60_000]));
        assert_eq!(r.scan(keyed, later(80)).unwrap(), ScanOutcome { key: a, kind: ScanKind::Replay });
        assert_eq!(r.scan(input("OPD1", "b", None), later(80)).unwrap().key, b);
        assert_eq!(r.scan(input("OPD1", "c", None), later(80)).unwrap().key.number, 4);
    }
}
