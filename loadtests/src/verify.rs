//! The verify pass after a run against the gateway: every acknowledged token exists in
//! Redis with the same number, per (facility, counter, day) the numbers run 1..n with no
//! gap and no number given to two patients, and the leaderboards equal the tokens issued.
//! It reads Redis through the gateway's own key schema (`scan_gateway::persistence::keys`).
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use jiff::civil::Date;
use redis::aio::MultiplexedConnection;
use scan_gateway::persistence::keys::{self, LbScope};
use serde::Serialize;

use crate::engine::{Observed, Seen};
use crate::registry::Registry;
use crate::switch::OnShare;

/// Per request on the verify connection: a stuck Redis still ends the pass, a busy one does not.
const VERIFY_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Stored tokens of one facility and day: numbers per counter, and the facility's
/// cumulative leaderboard counts of the day per counter kind (`sg:{F}:lbn`).
#[derive(Debug, Default, Clone)]
pub struct Stored {
    pub numbers: BTreeMap<String, Vec<u32>>,
    pub counts: BTreeMap<String, u32>,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    /// Distinct tokens the generator saw acknowledged.
    pub acknowledged: u64,
    /// Tokens Redis holds for the registry's facilities on the run's days.
    pub stored: u64,
    /// Acknowledged but not in Redis (lost).
    pub missing: u64,
    /// A (facility, counter, day, number) acknowledged to two different patients.
    pub duplicates: u64,
    /// Counters whose stored numbers are not exactly 1..n.
    pub gaps: u64,
    /// Counter kinds whose leaderboard count (`sg:{F}:lbn`) disagrees with the tokens stored.
    pub count_mismatches: u64,
    /// Leaderboard entries that disagree with the tokens stored.
    pub leaderboard_mismatches: u64,
    /// Stored but never acknowledged to the generator (answers lost to timeouts): allowed.
    pub unacknowledged_stored: u64,
    /// 2xx answers whose token id disagreed with their number/facility/counter.
    pub inconsistent_answers: u64,
    /// Protocol shares (v3), when the run sent any.
    pub shares: Option<ShareOutcome>,
    /// The first few problems, for the report.
    pub problems: Vec<String>,
}

/// What became of the v3 shares the gateway accepted (202).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct ShareOutcome {
    pub accepted: u64,
    /// On-share SUCCESS: their tokens join the acknowledged set the checks above cover.
    pub success: u64,
    /// On-share FAILURE, by code (a correct answer, e.g. RATE_LIMITED).
    pub failed: BTreeMap<String, u64>,
    /// Accepted but no on-share arrived before the deadline: the run fails.
    pub missing: u64,
    /// An on-share whose context is not the share's counter: the run fails.
    pub mismatched: u64,
}

/// Folds the on-shares into the acknowledged tokens (service day `day`).
pub fn fold_shares(
    observed: &mut Observed,
    registry: &Registry,
    results: &HashMap<String, OnShare>,
    day: Date,
) -> ShareOutcome {
    let mut out = ShareOutcome { accepted: observed.shares.len() as u64, ..ShareOutcome::default() };
    let shares = std::mem::take(&mut observed.shares);
    let d = observed.day_index(day);
    for (rid, facility, counter, patient) in &shares {
        match results.get(rid) {
            None => out.missing += 1,
            Some(OnShare::Failure { code }) => *out.failed.entry(code.clone()).or_default() += 1,
            Some(OnShare::Success { number, context }) => {
                if *context != registry.facilities[*facility as usize].counters[*counter as usize].id {
                    out.mismatched += 1;
                    continue;
                }
                out.success += 1;
                observed.seen.push(Seen {
                    facility: *facility,
                    counter: *counter,
                    day: d,
                    number: *number,
                    patient: *patient,
                });
            }
        }
    }
    observed.shares = shares;
    out
}

impl Verdict {
    /// The verdict's lines of the one-screen summary.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "verify: {}  acknowledged {}  stored {}  missing {}  duplicates {}  gaps {}  count/leaderboard mismatches {}/{}",
            if self.passed { "PASS" } else { "FAIL" },
            self.acknowledged,
            self.stored,
            self.missing,
            self.duplicates,
            self.gaps,
            self.count_mismatches,
            self.leaderboard_mismatches
        );
        if let Some(sh) = &self.shares {
            let _ = writeln!(
                s,
                "v3 shares: accepted {}  on-share SUCCESS {}  FAILURE {:?}  missing {}  wrong counter {}",
                sh.accepted, sh.success, sh.failed, sh.missing, sh.mismatched
            );
        }
        for p in self.problems.iter().take(5) {
            let _ = writeln!(s, "  {p}");
        }
        s
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }
}

/// The checks that need no Redis: duplicates among acknowledgements, then each facility's
/// stored numbers against what was acknowledged. `stored` is keyed by (facility, day).
pub fn check(
    registry: &Registry,
    observed: &Observed,
    stored: &HashMap<(u32, u16), Stored>,
) -> (Verdict, HashMap<(u32, u16), u64>) {
    let mut v = Verdict { inconsistent_answers: observed.inconsistent, ..Verdict::default() };
    if observed.inconsistent > 0 {
        v.problem(format!("{} answers with a token id that disagrees with the body", observed.inconsistent));
    }
    let mut seen: Vec<Seen> = observed.seen.clone();
    seen.sort_by_key(|s| (s.facility, s.counter, s.day, s.number, s.patient));
    seen.dedup();
    let mut acked: Vec<Seen> = Vec::with_capacity(seen.len());
    for s in seen {
        match acked.last() {
            Some(p) if (p.facility, p.counter, p.day, p.number) == (s.facility, s.counter, s.day, s.number) => {
                v.duplicates += 1;
                let f = &registry.facilities[s.facility as usize];
                v.problem(format!(
                    "{} {} {} number {} acknowledged to two patients",
                    f.id, f.counters[s.counter as usize].id, observed.days[s.day as usize], s.number
                ));
            }
            _ => acked.push(s),
        }
    }
    v.acknowledged = acked.len() as u64;

    let mut totals: HashMap<(u32, u16), u64> = HashMap::new();
    for ((fi, day), st) in stored {
        let f = &registry.facilities[*fi as usize];
        let mut per_kind: BTreeMap<&str, u32> = BTreeMap::new();
        for (counter, numbers) in &st.numbers {
            let kind = f.counters.iter().find(|c| &c.id == counter).map_or("other", |c| c.kind.as_str());
            *per_kind.entry(kind).or_default() += numbers.len() as u32;
            let mut ns = numbers.clone();
            ns.sort_unstable();
            let n = ns.len() as u32;
            *totals.entry((*fi, *day)).or_default() += n as u64;
            v.stored += n as u64;
            if ns.iter().enumerate().any(|(i, x)| *x != i as u32 + 1) {
                v.gaps += 1;
                v.problem(format!("{} {counter}: numbers are not 1..{n}", f.id));
            }
        }
        // A count the applier pruned (applied, and its day two days past) is not checked.
        for (kind, n) in &per_kind {
            if st.counts.get(*kind).is_some_and(|c| c != n) {
                v.count_mismatches += 1;
                v.problem(format!("{} {kind}: count {:?} but {n} tokens", f.id, st.counts.get(*kind)));
            }
        }
        for (kind, c) in &st.counts {
            if !per_kind.contains_key(kind.as_str()) && *c != 0 {
                v.count_mismatches += 1;
                v.problem(format!("{} {kind}: count {c} but no tokens", f.id));
            }
        }
    }
    for s in &acked {
        let f = &registry.facilities[s.facility as usize];
        let counter = &f.counters[s.counter as usize].id;
        let present = stored
            .get(&(s.facility, s.day))
            .and_then(|st| st.numbers.get(counter))
            .is_some_and(|ns| ns.contains(&s.number));
        if !present {
            v.missing += 1;
            v.problem(format!("{} {counter} number {} acknowledged but not stored", f.id, s.number));
        }
    }
    v.unacknowledged_stored = v.stored.saturating_sub(v.acknowledged - v.missing);
    (v, totals)
}

async fn read_stored(
    con: &mut MultiplexedConnection,
    registry: &Registry,
    days: &[Date],
) -> redis::RedisResult<HashMap<(u32, u16), Stored>> {
    let mut out = HashMap::new();
    let ids: Vec<u32> = (0..registry.facilities.len() as u32).collect();
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for fi in chunk {
            let f = &registry.facilities[*fi as usize];
            pipe.hgetall(keys::lb_counts(&f.id));
            for d in days {
                pipe.hkeys(keys::day_tokens(&f.id, *d));
            }
        }
        let replies: Vec<redis::Value> = pipe.query_async(con).await?;
        let mut it = replies.into_iter();
        for fi in chunk {
            let counts: HashMap<String, u32> = redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
            for (di, d) in days.iter().enumerate() {
                let fields: Vec<String> = redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
                let prefix = format!("{d}|");
                let mut st = Stored::default();
                for (k, c) in &counts {
                    if let Some(counter) = k.strip_prefix(&prefix) {
                        st.counts.insert(counter.to_string(), *c);
                    }
                }
                for field in &fields {
                    if let Some((counter, n)) = keys::parse_token_field(field) {
                        st.numbers.entry(counter.to_string()).or_default().push(n);
                    }
                }
                if !st.numbers.is_empty() || !st.counts.is_empty() {
                    out.insert((*fi, di as u16), st);
                }
            }
        }
    }
    Ok(out)
}

/// Compares the day's leaderboards with the stored tokens; returns the mismatches.
async fn leaderboard_mismatches(
    con: &mut MultiplexedConnection,
    registry: &Registry,
    days: &[Date],
    stored: &HashMap<(u32, u16), Stored>,
    totals: &HashMap<(u32, u16), u64>,
) -> redis::RedisResult<Vec<String>> {
    let mut problems = Vec::new();
    for (di, d) in days.iter().enumerate() {
        let period = d.to_string();
        let board: HashMap<String, f64> = redis::cmd("ZRANGE")
            .arg(keys::leaderboard(&period, "all", LbScope::Facilities))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(con)
            .await?;
        let mut expected_states: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for ((fi, day), n) in totals {
            if *day as usize != di {
                continue;
            }
            let f = &registry.facilities[*fi as usize];
            let got = board.get(&f.id).copied().unwrap_or(0.0) as u64;
            if got != *n {
                problems.push(format!("{d} facility board: {} has {got}, stored {n}", f.id));
            }
            for (counter, ns) in &stored[&(*fi, *day)].numbers {
                let kind = f.counters.iter().find(|c| &c.id == counter).map(|c| c.kind.as_str()).unwrap_or("opd");
                *expected_states.entry((f.state_code(), kind)).or_default() += ns.len() as u64;
            }
        }
        // Board members that this run stored nothing for (only this registry's facilities).
        let expected: std::collections::HashSet<&str> = totals
            .keys()
            .filter(|(_, day)| *day as usize == di)
            .map(|(fi, _)| registry.facilities[*fi as usize].id.as_str())
            .collect();
        for (member, score) in &board {
            if *score > 0.0 && !expected.contains(member.as_str()) {
                problems.push(format!("{d} facility board: {member} has {score} but no stored tokens"));
            }
        }
        for kind in ["opd", "pharmacy", "lab"] {
            let states: HashMap<String, f64> = redis::cmd("ZRANGE")
                .arg(keys::leaderboard(&period, kind, LbScope::States))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(con)
                .await?;
            let mut codes: Vec<&str> = states.keys().map(String::as_str).collect();
            codes.extend(expected_states.keys().filter(|(_, k)| *k == kind).map(|(s, _)| *s));
            codes.sort_unstable();
            codes.dedup();
            for code in codes {
                let want = expected_states.get(&(code, kind)).copied().unwrap_or(0);
                let got = states.get(code).copied().unwrap_or(0.0) as u64;
                if want != got {
                    problems.push(format!("{d} state board {kind}: {code} has {got}, stored {want}"));
                }
            }
        }
    }
    Ok(problems)
}

/// The whole pass. Leaderboards may trail the tokens by the gateway's apply interval, so
/// they are re-read until they agree or `lb_wait` passes.
pub async fn verify(
    redis_url: &str,
    registry: &Registry,
    observed: &Observed,
    lb_wait: Duration,
    shares: Option<ShareOutcome>,
) -> anyhow::Result<Verdict> {
    let client = redis::Client::open(redis_url)?;
    // The client's default response timeout (half a second) is for serving, not for reading
    // a national day back: one pipeline of 500 facilities' day hashes, a few AIIMS-sized
    // among them, took longer at 10 M tokens and ended a 10 M soak without its verdict.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(VERIFY_RESPONSE_TIMEOUT));
    let mut con = client.get_multiplexed_async_connection_with_config(&config).await?;
    let stored = read_stored(&mut con, registry, &observed.days).await.context("reading the stored tokens")?;
    let (mut v, totals) = check(registry, observed, &stored);
    if let Some(sh) = &shares {
        if sh.missing > 0 || sh.mismatched > 0 {
            v.problem(format!(
                "{} accepted shares got no on-share, {} named another counter",
                sh.missing, sh.mismatched
            ));
        }
    }
    let shares_ok = shares.as_ref().is_none_or(|s| s.missing == 0 && s.mismatched == 0);
    v.shares = shares;
    let deadline = Instant::now() + lb_wait;
    loop {
        let problems = leaderboard_mismatches(&mut con, registry, &observed.days, &stored, &totals)
            .await
            .context("reading the leaderboards")?;
        if problems.is_empty() || Instant::now() >= deadline {
            v.leaderboard_mismatches = problems.len() as u64;
            for p in problems {
                v.problem(p);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    v.passed = v.missing == 0
        && v.duplicates == 0
        && v.gaps == 0
        && v.count_mismatches == 0
        && v.leaderboard_mismatches == 0
        && v.inconsistent_answers == 0
        && shares_ok;
    Ok(v)
}

/// The pass over a stored day alone, without a run's acknowledgements (a day replayed by
/// an earlier `scan-load`, or a gateway restarted mid-run): numbers 1..n per counter,
/// counts and leaderboards. What it cannot check is that each answer a client saw is
/// stored: that needs the run's acknowledgements.
pub async fn verify_stored(
    redis_url: &str,
    registry: &Registry,
    days: Vec<Date>,
    lb_wait: Duration,
) -> anyhow::Result<Verdict> {
    let observed = Observed { days, ..Observed::default() };
    verify(redis_url, registry, &observed, lb_wait, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_redis::Redis;

    fn setup() -> (Registry, Observed) {
        let r = Registry::synthetic(40, 1);
        let obs = Observed {
            seen: vec![
                Seen { facility: 0, counter: 0, day: 0, number: 1, patient: 10 },
                Seen { facility: 0, counter: 0, day: 0, number: 2, patient: 11 },
                // A repeat scan: same patient, same token.
                Seen { facility: 0, counter: 0, day: 0, number: 2, patient: 11 },
                Seen { facility: 1, counter: 1, day: 0, number: 1, patient: 12 },
            ],
            days: vec![Date::constant(2026, 11, 23)],
            inconsistent: 0,
            shares: Vec::new(),
        };
        (r, obs)
    }

    fn stored_of(r: &Registry, rows: &[(u32, u16, &[u32], u32)]) -> HashMap<(u32, u16), Stored> {
        let mut m: HashMap<(u32, u16), Stored> = HashMap::new();
        for (fi, ci, ns, count) in rows {
            let c = &r.facilities[*fi as usize].counters[*ci as usize];
            let st = m.entry((*fi, 0)).or_default();
            st.numbers.insert(c.id.clone(), ns.to_vec());
            st.counts.insert(c.kind.as_str().to_string(), *count);
        }
        m
    }

    #[test]
    fn a_consistent_run_passes_the_offline_checks() {
        let (r, obs) = setup();
        let stored = stored_of(&r, &[(0, 0, &[2, 1, 3], 3), (1, 1, &[1], 1)]);
        let (v, totals) = check(&r, &obs, &stored);
        assert_eq!((v.acknowledged, v.stored, v.missing, v.duplicates, v.gaps, v.count_mismatches), (3, 4, 0, 0, 0, 0));
        assert_eq!(v.unacknowledged_stored, 1, "number 3 was stored but its answer never arrived");
        assert_eq!(totals[&(0, 0)], 3);
    }

    #[test]
    fn every_kind_of_damage_is_caught() {
        let (r, mut obs) = setup();
        // Number 2 also acknowledged to another patient.
        obs.seen.push(Seen { facility: 0, counter: 0, day: 0, number: 2, patient: 99 });
        // Facility 1's token was lost; facility 0 has a gap and a wrong count.
        let stored = stored_of(&r, &[(0, 0, &[1, 2, 4], 4)]);
        let (v, _) = check(&r, &obs, &stored);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.missing, 1);
        assert_eq!(v.gaps, 1);
        assert_eq!(v.count_mismatches, 1, "{:?}", v.problems);
        assert!(v.problems.iter().any(|p| p.contains("acknowledged to two patients")));
    }

    #[test]
    fn on_shares_become_acknowledged_tokens_and_silence_is_counted() {
        let (r, mut obs) = setup();
        let opd1 = r.facilities[2].counters[0].id.clone();
        obs.shares =
            vec![("a".into(), 2, 0, 50), ("b".into(), 2, 0, 51), ("c".into(), 2, 0, 52), ("d".into(), 2, 0, 53)];
        let results: HashMap<String, OnShare> = [
            ("a".to_string(), OnShare::Success { number: 1, context: opd1 }),
            ("b".to_string(), OnShare::Failure { code: "RATE_LIMITED".into() }),
            ("c".to_string(), OnShare::Success { number: 2, context: "Lab".into() }),
        ]
        .into_iter()
        .collect();
        let before = obs.seen.len();
        let out = fold_shares(&mut obs, &r, &results, Date::constant(2026, 11, 23));
        assert_eq!((out.accepted, out.success, out.missing, out.mismatched), (4, 1, 1, 1));
        assert_eq!(out.failed["RATE_LIMITED"], 1);
        assert_eq!(obs.seen.len(), before + 1);
        assert_eq!(obs.seen.last().unwrap().facility, 2);
    }

    /// A private Redis holding what the gateway would have written for setup()'s tokens.
    async fn stored_setup_day() -> (Redis, String, MultiplexedConnection, Registry, Observed) {
        let redis = Redis::start();
        let url = redis.url();
        let (r, obs) = setup();
        let mut con = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        store_setup_day(&mut con, &r, obs.days[0]).await;
        (redis, url, con, r, obs)
    }

    /// Writes what the gateway would have written for the acknowledged tokens of setup().
    async fn store_setup_day(con: &mut MultiplexedConnection, r: &Registry, day: Date) {
        let (f0, f1) = (&r.facilities[0], &r.facilities[1]);
        let (c0, c1) = (&f0.counters[0], &f1.counters[1]);
        let mut p = redis::pipe();
        p.hset(keys::day_tokens(&f0.id, day), keys::token_field(&c0.id, 1), "r")
            .hset(keys::day_tokens(&f0.id, day), keys::token_field(&c0.id, 2), "r")
            .hset(keys::lb_counts(&f0.id), keys::lb_count_field(day, c0.kind.as_str()), 2)
            .hset(keys::day_tokens(&f1.id, day), keys::token_field(&c1.id, 1), "r")
            .hset(keys::lb_counts(&f1.id), keys::lb_count_field(day, c1.kind.as_str()), 1)
            .zincr(keys::leaderboard(&day.to_string(), "all", LbScope::Facilities), &f0.id, 2)
            .zincr(keys::leaderboard(&day.to_string(), "all", LbScope::Facilities), &f1.id, 1)
            .zincr(keys::leaderboard(&day.to_string(), c0.kind.as_str(), LbScope::States), f0.state_code(), 2)
            .zincr(keys::leaderboard(&day.to_string(), c1.kind.as_str(), LbScope::States), f1.state_code(), 1);
        let _: () = p.query_async(con).await.unwrap();
    }

    /// The stored-only pass checks what Redis alone can show: a consistent day passes with
    /// nothing acknowledged, and a hole in a counter's numbers fails it.
    #[tokio::test]
    async fn a_stored_day_is_verified_without_a_run() {
        let (_redis, url, mut con, r, obs) = stored_setup_day().await;
        let day = obs.days[0];
        let v = verify_stored(&url, &r, vec![day], Duration::ZERO).await.unwrap();
        assert!(v.passed, "{v:?}");
        assert_eq!((v.acknowledged, v.stored, v.missing), (0, 3, 0));
        assert!(v.text().starts_with("verify: PASS  acknowledged 0  stored 3"), "{}", v.text());

        let (f0, c0) = (&r.facilities[0], &r.facilities[0].counters[0]);
        let _: () = redis::cmd("HDEL")
            .arg(keys::day_tokens(&f0.id, day))
            .arg(keys::token_field(&c0.id, 1))
            .query_async(&mut con)
            .await
            .unwrap();
        let v = verify_stored(&url, &r, vec![day], Duration::ZERO).await.unwrap();
        assert!(!v.passed);
        assert_eq!(v.gaps, 1, "{:?}", v.problems);
    }

    /// A national day's read-back can take Redis longer than the client's default response
    /// timeout (half a second) per reply. `CLIENT PAUSE` holds every reply for 1.5 s: the
    /// pass must wait it out and pass, not end the run with "timed out".
    #[tokio::test]
    async fn a_slow_redis_still_gets_a_verdict() {
        let (_redis, url, mut con, r, obs) = stored_setup_day().await;
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL").query_async(&mut con).await.unwrap();
        let started = Instant::now();
        let v = verify(&url, &r, &obs, Duration::ZERO, None).await.expect("the pass waits for a slow Redis");
        assert!(v.passed, "{v:?}");
        assert!(started.elapsed() >= Duration::from_secs(1), "the pause was in force during the pass");
    }

    #[tokio::test]
    async fn the_whole_pass_reads_the_gateway_schema_and_catches_a_wrong_leaderboard() {
        let (_redis, url, mut con, r, obs) = stored_setup_day().await;
        let day = obs.days[0];
        let (f0, c0) = (&r.facilities[0], &r.facilities[0].counters[0]);
        let v = verify(&url, &r, &obs, Duration::ZERO, None).await.unwrap();
        assert!(v.passed, "{v:?}");
        assert_eq!((v.acknowledged, v.stored), (3, 3));

        // One token counted twice on the state board: the pass must fail.
        let _: () = redis::cmd("ZINCRBY")
            .arg(keys::leaderboard(&day.to_string(), c0.kind.as_str(), LbScope::States))
            .arg(1)
            .arg(f0.state_code())
            .query_async(&mut con)
            .await
            .unwrap();
        let v = verify(&url, &r, &obs, Duration::from_millis(300), None).await.unwrap();
        assert!(!v.passed);
        assert_eq!(v.leaderboard_mismatches, 1, "{:?}", v.problems);

        // A share whose on-share never came fails the pass as well.
        let shares = ShareOutcome { accepted: 1, missing: 1, ..ShareOutcome::default() };
        let _: () = redis::cmd("ZINCRBY")
            .arg(keys::leaderboard(&day.to_string(), c0.kind.as_str(), LbScope::States))
            .arg(-1)
            .arg(f0.state_code())
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(verify(&url, &r, &obs, Duration::ZERO, None).await.unwrap().passed);
        assert!(!verify(&url, &r, &obs, Duration::ZERO, Some(shares)).await.unwrap().passed);
    }
}
