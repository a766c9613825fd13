//! Rate limits (governor, GCRA), cheapest first: a global cap (load shedding), per
//! credential (or per client IP when there is none), per facility and per patient. A
//! limit of 0 is off. Keyed limiters forget idle keys on a sweep, so memory stays bounded.
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

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

/// A keyed limiter that can be swept of idle keys.
pub struct KeyedLimit<C: Clock = DefaultClock> {
    kind: LimitKind,
    burst: NonZeroU32,
    limiter: RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock + Clone> KeyedLimit<C> {
    fn with_clock(kind: LimitKind, shape: Shape, clock: C) -> Self {
        KeyedLimit {
            kind,
            burst: shape.burst,
            limiter: RateLimiter::new(shape.quota(), DashMapStateStore::default(), clock.clone()),
            clock,
        }
    }

    pub fn check(&self, key: &str) -> Result<(), Limited> {
        self.limiter
            .check_key(&key.to_string())
            .map_err(|not_until| refusal(self.kind, self.burst, not_until.earliest_possible(), self.clock.now()))
    }

    /// Forgets keys whose state has fully replenished (they behave exactly like new keys)
    /// and gives the memory back.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
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
    patient: Option<KeyedLimit>,
    trusted_proxies: Vec<IpAddr>,
    clock: DefaultClock,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        let clock = DefaultClock::default();
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let keyed =
            |kind, burst, window| Shape::new(burst, window).map(|sh| KeyedLimit::with_clock(kind, sh, clock.clone()));
        Limits {
            global: Shape::new(s.limit_global_per_s, second)
                .map(|sh| (RateLimiter::direct_with_clock(sh.quota(), clock.clone()), sh.burst)),
            client: keyed(LimitKind::Client, s.limit_client_per_s, second),
            facility: keyed(LimitKind::Facility, s.limit_facility_per_min, minute),
            patient: keyed(LimitKind::Patient, s.limit_patient_per_min, minute),
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
        self.client.as_ref().map_or(Ok(()), |l| l.check(key))
    }

    pub fn facility(&self, facility: &str) -> Result<(), Limited> {
        self.facility.as_ref().map_or(Ok(()), |l| l.check(facility))
    }

    /// `digest` is the patient's keyed digest, never a raw identifier.
    pub fn patient(&self, digest: &str) -> Result<(), Limited> {
        self.patient.as_ref().map_or(Ok(()), |l| l.check(digest))
    }

    /// Forgets idle keys of every keyed limit.
    pub fn sweep(&self) {
        for l in [&self.client, &self.facility, &self.patient].into_iter().flatten() {
            l.sweep();
        }
    }

    /// Keys held across the keyed limits.
    pub fn keys_held(&self) -> usize {
        [&self.client, &self.facility, &self.patient].into_iter().flatten().map(KeyedLimit::len).sum()
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

    fn fake(kind: LimitKind, burst: u32, window: Duration) -> (KeyedLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (KeyedLimit::with_clock(kind, Shape::new(burst, window).unwrap(), clock.clone()), clock)
    }

    #[test]
    fn five_per_minute_per_patient_then_retry_after() {
        let (l, clock) = fake(LimitKind::Patient, 5, Duration::from_secs(60));
        for _ in 0..5 {
            l.check("digest-a").unwrap();
        }
        let refused = l.check("digest-a").unwrap_err();
        assert_eq!(refused.kind.code(), "RATE_LIMITED_PATIENT");
        assert_eq!(refused.limit, 5);
        assert_eq!(refused.retry_after_s, 12, "one scan comes back every 60/5 s");
        l.check("digest-b").expect("another patient is not limited");
        clock.advance(Duration::from_secs(12));
        l.check("digest-a").expect("replenished after the wait it was told");
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
        l.check("still-busy").unwrap();
        l.sweep();
        assert_eq!(l.len(), 1, "only the key seen within its window is kept");
        assert!(l.limiter.len() <= 1);
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
            l.patient("p").unwrap();
        }
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let xff = Some("203.0.113.9, 10.0.0.1");
        assert_eq!(l.client_ip(Some(proxy), xff), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(l.client_ip(Some(other), xff), Some(other), "a forged header is ignored");
        assert_eq!(l.client_ip(Some(proxy), Some("garbage")), Some(proxy));
    }
}
