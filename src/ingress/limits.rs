//! Rate limits (governor, GCRA), cheapest first: a global cap (load shedding), per
//! credential (or per client IP when there is none), per facility, per patient, and per
//! client address on the public pages. A limit of 0 is off. Keyed limiters forget idle keys
//! on a sweep, so memory stays bounded. Also which address a request comes from.
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// The public pages and their event streams, per client address.
    Page,
}

impl LimitKind {
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::Global => "RATE_LIMITED_GLOBAL",
            LimitKind::Client => "RATE_LIMITED_CLIENT",
            LimitKind::Facility => "RATE_LIMITED_FACILITY",
            LimitKind::Patient => "RATE_LIMITED_PATIENT",
            LimitKind::Page => "RATE_LIMITED_PAGE",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Global => "global",
            LimitKind::Client => "client",
            LimitKind::Facility => "facility",
            LimitKind::Patient => "patient",
            LimitKind::Page => "page",
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
    page: Option<KeyedLimit<ClientAddr>>,
    trusted_proxies: TrustedProxies,
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
            page: Shape::new(s.limit_page_per_min, minute)
                .map(|sh| KeyedLimit::with_clock(LimitKind::Page, sh, clock.clone())),
            trusted_proxies: TrustedProxies::from_settings(s),
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

    /// A public page or stream from `client` (see [`Self::client_addr`]).
    pub fn page(&self, client: ClientAddr) -> Result<(), Limited> {
        self.page.as_ref().map_or(Ok(()), |l| l.check(&client))
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
        if let Some(l) = &self.page {
            l.sweep_logged();
        }
    }

    /// Keys held across the keyed limits.
    pub fn keys_held(&self) -> usize {
        self.client.as_ref().map_or(0, KeyedLimit::len)
            + self.facility.as_ref().map_or(0, KeyedLimit::len)
            + self.patient.as_ref().map_or(0, KeyedLimit::len)
            + self.page.as_ref().map_or(0, KeyedLimit::len)
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the
    /// rightmost `X-Forwarded-For` address that is not a trusted proxy. Each proxy appends
    /// the address it was reached from, so walking from the right over trusted hops stops at
    /// the first address a trusted proxy saw directly; anything left of it was sent by the
    /// client and proves nothing. The leftmost address, which this used to take, is exactly
    /// the one a client chooses. `forwarded_for` holds the header's lines in arrival order.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Option<IpAddr> {
        let peer = canonical(peer?);
        if !self.trusted_proxies.contains(peer) {
            return Some(peer);
        }
        // The nearest hop so far: a trusted proxy, whose word about the next hop is believed.
        let mut hop = peer;
        for entry in forwarded_for.iter().rev().flat_map(|line| line.rsplit(',')) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(addr) = parse_forwarded(entry) else {
                // A trusted proxy passed on something that is no address ("unknown", a
                // typo): what lies left of it cannot be checked, so the request counts
                // against the hop that sent it. Stricter, never chosen by the client.
                return Some(hop);
            };
            if !self.trusted_proxies.contains(addr) {
                return Some(addr);
            }
            hop = addr;
        }
        // Every hop is a trusted proxy (a health check from a proxy itself).
        Some(hop)
    }

    /// The limiter key of a client address: IPv4 as is, IPv6 by its /64, the block one
    /// subscriber is given; keyed per address, one client would have 2^64 keys to rotate
    /// through (and as many limiter entries to fill memory with).
    pub fn client_addr(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> ClientAddr {
        match self.client_ip(peer, forwarded_for) {
            None => ClientAddr::Unknown,
            Some(IpAddr::V4(a)) => ClientAddr::V4(a),
            Some(IpAddr::V6(a)) => ClientAddr::V6Net((u128::from(a) >> 64) as u64),
        }
    }
}

/// Who a client is, to the per-address limits: small and fixed-size, so keying costs no
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Net(u64),
    /// No peer address (a Unix socket, a test request): all such share one key.
    Unknown,
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::V4(a) => write!(f, "{a}"),
            ClientAddr::V6Net(n) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*n) << 64)),
            ClientAddr::Unknown => f.write_str("unknown"),
        }
    }
}

/// An IPv4 address arriving as IPv4-mapped IPv6 (`::ffff:a.b.c.d`, a dual-stack socket) is
/// the IPv4 address: the trusted list and the limiter keys must see one form.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, also in the forms proxies write with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or brackets (`[2001:db8::1]`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(a) = entry.parse::<IpAddr>() {
        return Some(canonical(a));
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok.then(|| inner.parse::<Ipv6Addr>().ok()).flatten().map(|a| canonical(IpAddr::V6(a)));
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// One trusted proxy entry: an address or a CIDR block (`10.0.0.0/8`, `fd00::/8`), so a
/// Kubernetes pod network or a load balancer's subnet is one entry. A few lines of masking
/// do this; a crate would add nothing they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl ProxyNet {
    /// `None` for anything but an address or `address/prefix` with a prefix in range and
    /// no bits set below it (`10.0.0.1/8` is refused: likely a typo for a host).
    pub fn parse(s: &str) -> Option<ProxyNet> {
        let (addr, prefix) = match s.split_once('/') {
            None => {
                let a = canonical(s.parse().ok()?);
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
            Some((a, p)) => {
                if !p.bytes().all(|b| b.is_ascii_digit()) || p.is_empty() || p.len() > 3 {
                    return None;
                }
                let a: IpAddr = a.parse().ok()?;
                let p: u8 = p.parse().ok()?;
                // An IPv4-mapped block is the IPv4 block.
                match a {
                    IpAddr::V6(v6) if p >= 96 && v6.to_ipv4_mapped().is_some() => {
                        (IpAddr::V4(v6.to_ipv4_mapped()?), p - 96)
                    }
                    _ => (a, p),
                }
            }
        };
        let net = ProxyNet { addr, prefix };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max && net.masked(addr) == Some(addr)).then_some(net)
    }

    /// `a` with the bits below the prefix cleared, if it is of this block's family.
    fn masked(&self, a: IpAddr) -> Option<IpAddr> {
        match (self.addr, a) {
            (IpAddr::V4(_), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)))
            }
            (IpAddr::V6(_), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)))
            }
            _ => None,
        }
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        self.masked(a) == Some(self.addr)
    }
}

/// The configured trusted proxies (`SCANGW_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ProxyNet>);

impl TrustedProxies {
    /// Entries that do not parse are left out; the settings check refused them at start.
    pub fn from_settings(s: &Settings) -> Self {
        TrustedProxies(s.trusted_proxies.split(',').filter_map(|p| ProxyNet::parse(p.trim())).collect())
    }

    /// `a` is canonical (see [`canonical`]).
    fn contains(&self, a: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(a))
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
    fn zero_means_off() {
        let s = Settings {
            limit_global_per_s: 0,
            limit_client_per_s: 0,
            limit_facility_per_min: 0,
            limit_patient_per_min: 0,
            limit_page_per_min: 0,
            ..Settings::default()
        };
        let l = Limits::from_settings(&s);
        for _ in 0..10_000 {
            l.global().unwrap();
            l.patient(&[7; 16]).unwrap();
            l.page(ClientAddr::Unknown).unwrap();
        }
        assert_eq!(l.keys_held(), 0);
    }

    fn limits(trusted: &str) -> Limits {
        Limits::from_settings(&Settings { trusted_proxies: trusted.into(), ..Settings::default() })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rightmost_address_that_is_not_a_trusted_proxy_is_the_client() {
        let l = limits("10.0.0.1, 10.1.0.0/16");
        let proxy = Some(ip("10.0.0.1"));
        // nginx appends the address it saw to what the client sent: the client's own words
        // are on the left, and never taken.
        assert_eq!(l.client_ip(proxy, &["198.51.100.1, 203.0.113.9"]), Some(ip("203.0.113.9")));
        assert_eq!(l.client_ip(proxy, &["203.0.113.9"]), Some(ip("203.0.113.9")));
        // A chain of trusted proxies (a load balancer in the pod network, then nginx).
        assert_eq!(
            l.client_ip(proxy, &["198.51.100.1, 10.0.0.1, 203.0.113.9, 10.1.7.7"]),
            Some(ip("203.0.113.9")),
            "trusted hops are skipped, the first untrusted one from the right is the client"
        );
        // Several header lines are one list, in order.
        assert_eq!(l.client_ip(proxy, &["198.51.100.1", "203.0.113.9, 10.1.0.2"]), Some(ip("203.0.113.9")));
        // A forged trusted address left of the client changes nothing.
        assert_eq!(l.client_ip(proxy, &["10.0.0.1, 203.0.113.9"]), Some(ip("203.0.113.9")));
        // No header, or only trusted hops: the farthest trusted hop.
        assert_eq!(l.client_ip(proxy, &[]), proxy);
        assert_eq!(l.client_ip(proxy, &["10.1.2.3, 10.0.0.1"]), Some(ip("10.1.2.3")));
        // Ports, as some proxies write them.
        assert_eq!(l.client_ip(proxy, &["203.0.113.9:5555"]), Some(ip("203.0.113.9")));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let l = limits("10.0.0.1");
        let other = Some(ip("192.0.2.7"));
        assert_eq!(l.client_ip(other, &["203.0.113.9"]), other);
        assert_eq!(l.client_ip(other, &["203.0.113.9, 10.0.0.1"]), other);
        assert_eq!(l.client_ip(None, &["203.0.113.9"]), None);
        assert_eq!(l.client_addr(None, &["203.0.113.9"]), ClientAddr::Unknown);
        // With no trusted proxy configured nobody's header is believed.
        assert_eq!(limits("").client_ip(Some(ip("10.0.0.1")), &["203.0.113.9"]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_hop_that_passed_it() {
        let l = limits("10.0.0.1, 10.0.0.2");
        let proxy = Some(ip("10.0.0.1"));
        assert_eq!(l.client_ip(proxy, &["garbage"]), proxy);
        assert_eq!(l.client_ip(proxy, &["203.0.113.9, unknown, 10.0.0.2"]), Some(ip("10.0.0.2")));
        for junk in ["203.0.113.9:port", "[2001:db8::1", "[2001:db8::1]x", "1.2.3.4.5", "::ffff:zz", "_"] {
            assert_eq!(l.client_ip(proxy, &[&format!("198.51.100.1, {junk}")]), proxy, "{junk}");
        }
        // Empty entries (a trailing comma) are skipped, not taken as garbage.
        assert_eq!(l.client_ip(proxy, &["203.0.113.9, ,"]), Some(ip("203.0.113.9")));
        assert_eq!(l.client_ip(proxy, &[""]), proxy);
    }

    #[test]
    fn ipv6_clients_and_proxies() {
        let l = limits("fd00::/8, 10.0.0.1");
        let proxy = Some(ip("fd00::1"));
        assert_eq!(l.client_ip(proxy, &["2001:db8::bad, 2001:db8:1:2::5, [fd00::7]:80"]), Some(ip("2001:db8:1:2::5")));
        assert_eq!(l.client_ip(proxy, &["[2001:db8:1:2::6]:443"]), Some(ip("2001:db8:1:2::6")));
        // One subscriber's /64 is one key: rotating addresses inside it gains nothing.
        let a = l.client_addr(proxy, &["2001:db8:1:2::5"]);
        assert_eq!(a, l.client_addr(proxy, &["2001:db8:1:2:ffff::9"]));
        assert_ne!(a, l.client_addr(proxy, &["2001:db8:1:3::5"]));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        // An IPv4 peer on a dual-stack socket arrives IPv4-mapped; it is the IPv4 proxy.
        assert_eq!(l.client_ip(Some(ip("::ffff:10.0.0.1")), &["203.0.113.9"]), Some(ip("203.0.113.9")));
        assert_eq!(l.client_ip(Some(ip("fd00::1")), &["::ffff:203.0.113.9"]), Some(ip("203.0.113.9")));
        assert_eq!(l.client_addr(Some(ip("192.0.2.7")), &[]).to_string(), "192.0.2.7");
    }

    #[test]
    fn proxy_blocks_parse_strictly() {
        for ok in ["10.0.0.1", "10.0.0.0/8", "0.0.0.0/0", "::/0", "fd00::/8", "2001:db8::1/128", "::ffff:10.0.0.0/104"]
        {
            assert!(ProxyNet::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "10.0.0.1/8", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/08x", "proxy"]
        {
            assert!(ProxyNet::parse(bad).is_none(), "{bad}");
        }
        let net = ProxyNet::parse("10.244.0.0/16").unwrap();
        assert!(net.contains(ip("10.244.3.9")) && !net.contains(ip("10.245.0.1")) && !net.contains(ip("::1")));
        assert!(ProxyNet::parse("::ffff:10.0.0.0/104").unwrap().contains(ip("10.1.2.3")));
        assert!(!ProxyNet::parse("::/0").unwrap().contains(ip("10.1.2.3")), "families never mix");
        let bad = Settings { trusted_proxies: "10.0.0.1, 10.0.0.1/8".into(), ..Settings::for_tests("redis://x") };
        assert!(bad.validate().unwrap_err().to_string().contains("SCANGW_TRUSTED_PROXIES"));
    }

    #[test]
    fn the_public_pages_are_limited_per_client_address() {
        let l = Limits::from_settings(&Settings { limit_page_per_min: 3, ..Settings::default() });
        let me = ClientAddr::V4("203.0.113.9".parse().unwrap());
        for _ in 0..3 {
            l.page(me).unwrap();
        }
        let refused = l.page(me).unwrap_err();
        assert_eq!((refused.kind.code(), refused.limit, refused.retry_after_s), ("RATE_LIMITED_PAGE", 3, 20));
        l.page(ClientAddr::V4("203.0.113.10".parse().unwrap())).expect("another address is not limited");
    }
}
