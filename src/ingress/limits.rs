//! Rate limits (governor, GCRA), cheapest first: a global cap (load shedding), per
//! credential (or per client IP when there is none), per facility and per patient. A
//! limit of 0 is off. Keyed limiters forget idle keys on a sweep, so memory stays bounded.
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::Settings;

/// Which limit refused a request; each has its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Global,
    Client,
    Facility,
    Patient,
}

impl LimitKind {
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::Global => "RATE_LIMITED_GLOBAL",
            LimitKind::Client => "RATE_LIMITED_CLIENT",
            LimitKind::Facility => "RATE_LIMITED_FACILITY",
            LimitKind::Patient => "RATE_LIMITED_PATIENT",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Global => "global",
            LimitKind::Client => "client",
            LimitKind::Facility => "facility",
            LimitKind::Patient => "patient",
        }
    }
}

/// A refusal, with what the `RateLimit-*` and `Retry-After` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    /// Requests allowed per window (the burst).
    pub limit: u32,
    /// Whole seconds until a request would be allowed again (at least 1).
    pub retry_after_s: u64,
}

/// One limit's shape: `burst` requests per `window`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    burst: NonZeroU32,
    window: Duration,
}

impl Shape {
    fn new(burst: u32, window: Duration) -> Option<Self> {
        NonZeroU32::new(burst).map(|burst| Shape { burst, window })
    }

    fn quota(self) -> Quota {
        Quota::with_period(self.window / self.burst.get()).expect("non-zero period").allow_burst(self.burst)
    }
}

fn refusal<P: Reference>(kind: LimitKind, burst: NonZeroU32, earliest: P, now: P) -> Limited {
    let wait: Duration = earliest.duration_since(now).into();
    Limited { kind, limit: burst.get(), retry_after_s: (wait.as_secs_f64().ceil() as u64).max(1) }
}

/// Shards of each keyed limiter's map. With DashMap's default (4 per core, 8 here) each
/// shard held ~37,000 patients after a minute at 5,100 scans/s, and a shard growing (a full
/// rehash) or being swept held its write lock for milliseconds while every scan hashed to
/// it waited: measured as 50 to 280 ms p99 seconds in a 60 s soak. Smaller shards make each
/// of those pauses 16 times shorter and spread them out; an empty shard allocates nothing.
const SHARDS: usize = 128;

/// A sweep gives memory back (a rehash of every kept key) only once the keys it keeps are
/// at most this share of the most the map held: at a steady rate nearly every key is
/// recent, and shrinking would only make the map grow (rehash) again at once.
const SHRINK_BELOW: usize = 4;

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub kept: usize,
    pub dropped: usize,
    /// The map was shrunk to fit what it kept.
    pub shrunk: bool,
}

/// A patient's key in its limiter: the keyed digest itself. A fixed-size key costs no
/// allocation per scan, and a sweep that drops hundreds of thousands of them frees nothing
/// (as `String`s, dropping 365,000 keys took 67 ms of frees into the workers' arenas).
pub type PatientKey = [u8; 16];

/// A keyed limiter that can be swept of idle keys.
pub struct KeyedLimit<K: Hash + Eq + Clone = String, C: Clock = DefaultClock> {
    kind: LimitKind,
    burst: NonZeroU32,
    limiter: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    /// The most keys seen at a sweep since the map was last shrunk.
    peak: AtomicUsize,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimit<K, C> {
    fn with_clock(kind: LimitKind, shape: Shape, clock: C) -> Self {
        let store: DashMapStateStore<K> = DashMap::with_shard_amount(SHARDS);
        KeyedLimit {
            kind,
            burst: shape.burst,
            limiter: RateLimiter::new(shape.quota(), store, clock.clone()),
            clock,
            peak: AtomicUsize::new(0),
        }
    }

    pub fn check(&self, key: &K) -> Result<(), Limited> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| refusal(self.kind, self.burst, not_until.earliest_possible(), self.clock.now()))
    }

    /// Forgets keys whose state has fully replenished (they behave exactly like new keys),
    /// and gives the memory back once most of it is idle (see [`SHRINK_BELOW`]).
    pub fn sweep(&self) -> Swept {
        let before = self.limiter.len();
        self.limiter.retain_recent();
        let kept = self.limiter.len();
        let peak = self.peak.fetch_max(before, Ordering::Relaxed).max(before);
        let shrunk = peak > 0 && kept.saturating_mul(SHRINK_BELOW) <= peak;
        if shrunk {
            self.limiter.shrink_to_fit();
            self.peak.store(kept, Ordering::Relaxed);
        }
        Swept { kept, dropped: before.saturating_sub(kept), shrunk }
    }

    /// [`Self::sweep`], with what it did and how long it took at debug level: a sweep
    /// holds each shard's lock while it walks it.
    fn sweep_logged(&self) {
        let started = std::time::Instant::now();
        let swept = self.sweep();
        tracing::debug!(
            limit = self.kind.label(),
            kept = swept.kept,
            dropped = swept.dropped,
            shrunk = swept.shrunk,
            took_us = started.elapsed().as_micros() as u64,
            "rate limit keys swept"
        );
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

pub struct Limits {
    global: Option<(Direct, NonZeroU32)>,
    client: Option<KeyedLimit>,
    facility: Option<KeyedLimit>,
    patient: Option<KeyedLimit<PatientKey>>,
    trusted_proxies: Vec<IpAddr>,
    clock: DefaultClock,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        let clock = DefaultClock::default();
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let string_keyed =
            |kind, burst, window| Shape::new(burst, window).map(|sh| KeyedLimit::with_clock(kind, sh, clock.clone()));
        Limits {
            global: Shape::new(s.limit_global_per_s, second)
                .map(|sh| (RateLimiter::direct_with_clock(sh.quota(), clock.clone()), sh.burst)),
            client: string_keyed(LimitKind::Client, s.limit_client_per_s, second),
            facility: string_keyed(LimitKind::Facility, s.limit_facility_per_min, minute),
            patient: Shape::new(s.limit_patient_per_min, minute)
                .map(|sh| KeyedLimit::with_clock(LimitKind::Patient, sh, clock.clone())),
            trusted_proxies: s.trusted_proxy_list(),
            clock,
        }
    }

    pub fn global(&self) -> Result<(), Limited> {
        match &self.global {
            None => Ok(()),
            Some((l, burst)) => {
                l.check().map_err(|n| refusal(LimitKind::Global, *burst, n.earliest_possible(), self.clock.now()))
            }
        }
    }

    pub fn client(&self, key: &str) -> Result<(), Limited> {
        self.client.as_ref().map_or(Ok(()), |l| l.check(&key.to_string()))
    }

    pub fn facility(&self, facility: &str) -> Result<(), Limited> {
        self.facility.as_ref().map_or(Ok(()), |l| l.check(&facility.to_string()))
    }

    /// `digest` is the patient's keyed digest, never a raw identifier.
    pub fn patient(&self, digest: &PatientKey) -> Result<(), Limited> {
        self.patient.as_ref().map_or(Ok(()), |l| l.check(digest))
    }

    /// Forgets idle keys of every keyed limit.
    pub fn sweep(&self) {
        if let Some(l) = &self.client {
            l.sweep_logged();
        }
        if let Some(l) = &self.facility {
            l.sweep_logged();
        }
        if let Some(l) = &self.patient {
            l.sweep_logged();
        }
    }

    /// Keys held across the keyed limits.
    pub fn keys_held(&self) -> usize {
        self.client.as_ref().map_or(0, KeyedLimit::len)
            + self.facility.as_ref().map_or(0, KeyedLimit::len)
            + self.patient.as_ref().map_or(0, KeyedLimit::len)
    }

    /// The client's address: the peer, or the first address in `X-Forwarded-For` when the
    /// peer is a configured trusted proxy (anyone else could forge the header).
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        match (peer, forwarded_for) {
            (Some(p), Some(xff)) if self.trusted_proxies.contains(&p) => {
                xff.split(',').next().and_then(|a| a.trim().parse().ok()).or(Some(p))
            }
            (p, _) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const DIGEST_A: PatientKey = [1; 16];
    const DIGEST_B: PatientKey = [2; 16];

    /// The `i`th patient of a group (`tag`): distinct digests.
    fn patient(tag: u8, i: u32) -> PatientKey {
        let mut d = [tag; 16];
        d[..4].copy_from_slice(&i.to_le_bytes());
        d
    }

    fn fake<K: Hash + Eq + Clone>(
        kind: LimitKind,
        burst: u32,
        window: Duration,
    ) -> (KeyedLimit<K, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (KeyedLimit::with_clock(kind, Shape::new(burst, window).unwrap(), clock.clone()), clock)
    }

    #[test]
    fn five_per_minute_per_patient_then_retry_after() {
        let (l, clock) = fake(LimitKind::Patient, 5, Duration::from_secs(60));
        for _ in 0..5 {
            l.check(&DIGEST_A).unwrap();
        }
        let refused = l.check(&DIGEST_A).unwrap_err();
        assert_eq!(refused.kind.code(), "RATE_LIMITED_PATIENT");
        assert_eq!(refused.limit, 5);
        assert_eq!(refused.retry_after_s, 12, "one scan comes back every 60/5 s");
        l.check(&DIGEST_B).expect("another patient is not limited");
        clock.advance(Duration::from_secs(12));
        l.check(&DIGEST_A).expect("replenished after the wait it was told");
    }

    #[test]
    fn a_million_distinct_keys_are_forgotten_by_the_sweep() {
        let (l, clock) = fake(LimitKind::Client, 10, Duration::from_secs(1));
        for i in 0..1_000_000u32 {
            l.check(&format!("k{i}")).unwrap();
        }
        assert_eq!(l.len(), 1_000_000);
        // A key whose bucket has refilled is indistinguishable from a new one: droppable.
        clock.advance(Duration::from_secs(2));
        l.check(&"still-busy".to_string()).unwrap();
        let swept = l.sweep();
        assert_eq!(l.len(), 1, "only the key seen within its window is kept");
        assert_eq!(swept, Swept { kept: 1, dropped: 1_000_000, shrunk: true });
    }

    #[test]
    fn a_sweep_that_keeps_most_keys_does_not_shrink_the_map() {
        let (l, clock) = fake(LimitKind::Patient, 5, Duration::from_secs(60));
        for i in 0..10_000u32 {
            l.check(&patient(b'p', i)).unwrap();
        }
        // Every key is within its window: nothing to drop, and shrinking would only make
        // the map grow again with the next scans.
        assert_eq!(l.sweep(), Swept { kept: 10_000, dropped: 0, shrunk: false });
        clock.advance(Duration::from_secs(61));
        for i in 0..5_000u32 {
            l.check(&patient(b'q', i)).unwrap();
        }
        // Half the keys idle: more than a quarter of the peak is still kept.
        assert_eq!(l.sweep(), Swept { kept: 5_000, dropped: 10_000, shrunk: false });
        clock.advance(Duration::from_secs(61));
        for i in 0..1_000u32 {
            l.check(&patient(b'r', i)).unwrap();
        }
        // The morning is over: a tenth of the peak is kept, so the memory goes back, and
        // the peak starts again from what was kept.
        assert_eq!(l.sweep(), Swept { kept: 1_000, dropped: 5_000, shrunk: true });
        assert_eq!(l.sweep(), Swept { kept: 1_000, dropped: 0, shrunk: false });
    }

    #[test]
    fn zero_means_off_and_xff_is_trusted_only_from_proxies() {
        let s = Settings {
            limit_global_per_s: 0,
            limit_client_per_s: 0,
            limit_facility_per_min: 0,
            limit_patient_per_min: 0,
            trusted_proxies: "10.0.0.1".into(),
            ..Settings::default()
        };
        let l = Limits::from_settings(&s);
        for _ in 0..10_000 {
            l.global().unwrap();
            l.patient(&[7; 16]).unwrap();
        }
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let xff = Some("203.0.113.9, 10.0.0.1");
        assert_eq!(l.client_ip(Some(proxy), xff), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(l.client_ip(Some(other), xff), Some(other), "a forged header is ignored");
        assert_eq!(l.client_ip(Some(proxy), Some("garbage")), Some(proxy));
    }
}
