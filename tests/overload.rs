//! A 10x overload burst against the real binary: far more scans arrive than the gateway
//! can serve for 30 s. It must shed the excess at once (503 OVERLOADED / 429), keep serving
//! what it accepted with bounded latency and bounded memory, make every 2xx token durable,
//! and serve at full rate again right after. Figures are printed; only loose bounds are
//! asserted (performance targets live in the benchmarks).
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::Commands;

use gateway::*;
use helpers::*;

fn vm_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    accepted: Vec<(usize, u64, Duration)>, // (facility index, token number, latency)
    by_status: BTreeMap<u16, usize>,
    other: Vec<String>,
}

/// `clients` loops sending scans back to back for `secs`, patients numbered from `first`.
async fn drive(gw: &Gateway, facilities: &[String], clients: usize, secs: u64, first: usize) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    join_all((0..clients).map(|c| {
        let tally = tally.clone();
        async move {
            let mut k = 0;
            while Instant::now() < until {
                let i = first + c * 1_000_000 + k;
                k += 1;
                let fi = i % facilities.len();
                let body = scan_body(&facilities[fi], "OPD1", i);
                let sent = Instant::now();
                let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&body)).await;
                let took = sent.elapsed();
                let mut t = tally.borrow_mut();
                *t.by_status.entry(r.status).or_default() += 1;
                match r.status {
                    201 => t.accepted.push((fi, num(&r.body, "token_number"), took)),
                    503 if r.body["error"]["code"] == "OVERLOADED" => {}
                    429 if r.body["error"]["code"].as_str().is_some_and(|c| c.starts_with("RATE_LIMITED")) => {}
                    _ => t.other.push(format!("{} {}", r.status, r.text)),
                }
            }
        }
    }))
    .await;
    Rc::try_unwrap(tally).ok().unwrap().into_inner()
}

fn p99(t: &Tally) -> Duration {
    let mut l: Vec<Duration> = t.accepted.iter().map(|a| a.2).collect();
    l.sort_unstable();
    l.get(l.len().saturating_sub(1) * 99 / 100).copied().unwrap_or_default()
}

#[actix_web::test]
async fn ten_x_overload_burst_sheds_cleanly_and_recovers() {
    let redis = RedisServer::start();
    let gw = Gateway::start(
        &redis,
        &[("SCANGW_MAX_IN_FLIGHT", "32"), ("SCANGW_LIMIT_FACILITY_PER_MIN", "0"), ("SCANGW_LOG", "warn")],
    );
    let facilities: Vec<String> = (0..200).map(|i| fid(20_000 + i)).collect();
    let ndjson: String = facilities
        .iter()
        .map(|f| {
            let mut v = standard_facility(f);
            v["facility_id"] = serde_json::json!(f);
            format!("{v}\n")
        })
        .collect();
    let r = http(
        &gw.client,
        "POST",
        &format!("{}/v1/facilities:import", gw.base),
        Some(ADMIN),
        Some("application/x-ndjson"),
        Some(ndjson.into_bytes()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);

    // Baseline at a load the gateway can carry (fewer clients than in-flight slots).
    let base = drive(&gw, &facilities, 16, 3, 0).await;
    // The burst: 16x the clients, far more than the 32 in-flight slots, for 30 s.
    let burst = drive(&gw, &facilities, 256, 30, 100_000_000).await;
    let rss_peak = vm_kib(gw.pid(), "VmHWM:");
    // Server time of the shed answers, from the gateway's own latency histogram.
    let scrape = gw.call("GET", "/metrics", PLATFORM, None).await.text;
    let series = |suffix: &str, le: Option<&str>| -> f64 {
        scrape
            .lines()
            .filter(|l| l.starts_with(&format!("scangw_http_request_duration_seconds_{suffix}")))
            .filter(|l| l.contains("route=\"/v1/scans\"") && l.contains("status_class=\"5xx\""))
            .filter(|l| le.is_none_or(|le| l.contains(&format!("le=\"{le}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (shed_fast, shed_all) = (series("bucket", Some("0.001")), series("count", None));
    println!("503 answers within 1 ms of server time: {shed_fast} of {shed_all}");
    assert!(shed_all > 0.0, "the shed answers are measured");
    let rate = |t: &Tally, s: f64| t.accepted.len() as f64 / s;
    // Right after: the same load as the baseline, in 3 s windows until one reaches half the
    // baseline rate (at most three: "recovers within seconds"). Later windows only run if an
    // earlier one fell short, which on a shared 2-core machine can be noise from elsewhere.
    let mut afters = vec![drive(&gw, &facilities, 16, 3, 500_000_000).await];
    while afters.len() < 3 && rate(afters.last().unwrap(), 3.0) < 0.5 * rate(&base, 3.0) {
        afters.push(drive(&gw, &facilities, 16, 3, 500_000_000 + afters.len() * 100_000_000).await);
    }
    let windows: Vec<f64> = afters.iter().map(|t| rate(t, 3.0)).collect();
    println!("recovery windows (accepted/s): {windows:.0?}");
    let after = afters.last().unwrap();
    println!(
        "baseline: {:.0}/s accepted, p99 {:?} | burst: {:.0}/s accepted, p99 {:?}, statuses {:?} | \
         after: {:.0}/s, p99 {:?}, statuses {:?} | peak RSS {} MiB",
        rate(&base, 3.0),
        p99(&base),
        rate(&burst, 30.0),
        p99(&burst),
        burst.by_status,
        rate(after, 3.0),
        p99(after),
        after.by_status,
        rss_peak / 1024
    );
    for t in [&base, &burst].into_iter().chain(&afters) {
        assert!(t.other.is_empty(), "only 201, 503 OVERLOADED or 429 allowed: {:?}", &t.other[..t.other.len().min(5)]);
    }
    assert!(burst.by_status.get(&503).copied().unwrap_or(0) > 0, "the burst must be shed: {:?}", burst.by_status);
    assert!(!burst.accepted.is_empty(), "the gateway kept serving during the burst");
    assert!(p99(&burst) < Duration::from_secs(2), "accepted scans stay bounded: p99 {:?}", p99(&burst));
    assert!(rss_peak < 512 * 1024, "RSS stayed bounded: {} MiB", rss_peak / 1024);
    assert_eq!(after.by_status.get(&503), None, "no shedding once the burst is over: {:?}", after.by_status);
    assert!(
        rate(after, 3.0) >= 0.5 * rate(&base, 3.0),
        "throughput recovers: {:.0}/s after vs {:.0}/s before",
        rate(after, 3.0),
        rate(&base, 3.0)
    );

    // Every 2xx token is durable, and each facility's numbers are exactly 1..n.
    let mut per_facility: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for t in [&base, &burst].into_iter().chain(&afters) {
        for (fi, n, _) in &t.accepted {
            per_facility.entry(*fi).or_default().push(*n);
        }
    }
    let mut con = redis.conn();
    let day = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap()).date();
    for (fi, numbers) in &mut per_facility {
        numbers.sort_unstable();
        let n = numbers.len() as u64;
        assert_eq!(*numbers, (1..=n).collect::<Vec<_>>(), "facility {fi}: acknowledged numbers 1..{n}");
        let stored: u64 = con.hlen(format!("sg:{{{}}}:d:{day}:t", facilities[*fi])).unwrap();
        assert_eq!(stored, n, "facility {fi}: every acknowledged token stored, nothing shed stored");
    }
}
