//! Actor lifecycle and store hygiene: passivation then rehydration, bounded mailboxes
//! shedding with 503, and the TTL policy of day keys vs. counts.
use std::time::Duration;

use futures_util::future::join_all;
use redis::Commands;
use serde_json::json;

use crate::helpers::*;

fn fence_epoch(redis: &RedisServer, f: &str) -> i64 {
    let e: Option<i64> = redis.conn().hget(format!("sg:{{{f}}}:fence"), "e").expect("HGET fence");
    e.unwrap_or(0)
}

#[actix_web::test]
async fn idle_facility_is_passivated_and_rehydrates_on_next_use() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.idle_timeout_s = 1;
    let mut app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(900);
    app.register(&f).await;
    let first = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    app.scan_new(&scan_body(&f, "OPD1", 2)).await;
    assert_eq!((app.active_facilities)(), 1);
    assert_eq!(fence_epoch(&redis, &f), 1);

    let active = &app.active_facilities;
    eventually(Duration::from_secs(10), "the idle facility actor is passivated", || {
        let n = active();
        async move { n == 0 }
    })
    .await;

    // Next use activates afresh (a new epoch) with the day's state intact.
    let (st, again) = app.scan(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["repeat"], true);
    assert_eq!(again["token_id"], first["token_id"]);
    assert_eq!(fence_epoch(&redis, &f), 2, "rehydration takes a new fencing epoch");
    let third = app.scan_new(&scan_body(&f, "OPD1", 3)).await;
    assert_eq!(num(&third, "token_number"), 3, "numbering continues after passivation");
    assert_eq!(num(&third, "ahead"), 2);
    app.stop().await;
}

fn dirty_mark(redis: &RedisServer, f: &str) -> Option<i64> {
    redis.conn().hget("lb:{lb}:dirty", f).expect("HGET dirty")
}

#[actix_web::test]
async fn activation_marks_the_facility_for_the_boards_and_restores_its_own_local_day() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.idle_timeout_s = 1;
    // 18:31 UTC on the 23rd: already the 24th in IST (the default timezone, which an
    // activation guesses before it reads the facility's record), still the 23rd in UTC.
    let mut app = TestApp::spawn_with(settings, TestApp::clock_at("2026-11-23T18:31:00Z")).await;
    let f = fid(920);
    let mut body = standard_facility(&f);
    body["timezone"] = json!("UTC");
    let (st, fac) = app.put_facility(&f, &body).await;
    assert_eq!(st, 201, "{fac}");
    for i in 0..3 {
        let v = app.scan_new(&scan_body(&f, "OPD1", 1 + i)).await;
        assert_eq!(num(&v, "token_number"), i as u64 + 1);
        assert_eq!(s(&v, "service_date"), "2026-11-23");
    }
    // On a single Redis the activation marked the facility dirty with its own epoch, in
    // the same script that took the epoch.
    assert_eq!(fence_epoch(&redis, &f), 1);
    assert_eq!(dirty_mark(&redis, &f), Some(1), "the first activation marks the facility for the boards");

    let active = &app.active_facilities;
    eventually(Duration::from_secs(10), "the idle facility actor is passivated", || {
        let n = active();
        async move { n == 0 }
    })
    .await;

    // The next activation guesses the 24th, finds the record on UTC, and reads the 23rd.
    let v = app.scan_new(&scan_body(&f, "OPD1", 4)).await;
    assert_eq!(num(&v, "token_number"), 4, "numbering continues in the facility's own day: {v}");
    assert_eq!(s(&v, "service_date"), "2026-11-23");
    let (st, again) = app.scan(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(st, 200, "the first patient's token was restored: {again}");
    assert_eq!(again["repeat"], true);
    assert_eq!(num(&again, "token_number"), 1);
    assert_eq!(fence_epoch(&redis, &f), 2);
    assert_eq!(dirty_mark(&redis, &f), Some(2), "a new activation raises the mark to its epoch");
    app.stop().await;
}

#[actix_web::test]
async fn over_the_actor_cap_quiet_facilities_passivate_and_busy_ones_stay() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.idle_timeout_s = 3600;
    settings.max_active_facilities = 2;
    settings.pressure_idle_s = 1;
    let mut app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let (busy, quiet): (String, Vec<String>) = (fid(910), (911..915).map(fid).collect());
    for f in std::iter::once(&busy).chain(&quiet) {
        app.register(f).await;
        app.scan_new(&scan_body(f, "OPD1", 1)).await;
    }
    assert_eq!((app.active_facilities)(), 5, "over the cap of 2, nothing is idle yet");

    // The busy facility scans every 200 ms; the quiet ones stop. Within the hour-long idle
    // timeout only the pressure limit (1 s) can passivate them.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut i = 2;
    while (app.active_facilities)() > 2 {
        assert!(std::time::Instant::now() < deadline, "quiet facilities still active: {}", (app.active_facilities)());
        app.scan_new(&scan_body(&busy, "OPD1", i)).await;
        i += 1;
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    app.scan_new(&scan_body(&busy, "OPD1", i)).await;
    assert_eq!(fence_epoch(&redis, &busy), 1, "the busy facility kept its actor throughout");
    let metrics = app.req("GET", "/metrics", None, None, &[]).await.text;
    assert!(
        metrics.lines().any(|l| l.starts_with("scangw_passivations_total{reason=\"pressure\"}") && !l.ends_with(" 0")),
        "pressure passivations are counted"
    );

    // A passivated facility continues its day from Redis. Which quiet ones went depends on
    // the order their ticks ran in: at most one of them can still be active (cap 2, busy kept).
    let mut reactivated = 0;
    for q in &quiet {
        let next = app.scan_new(&scan_body(q, "OPD1", 2)).await;
        assert_eq!(num(&next, "token_number"), 2, "numbering continues in {q}");
        if fence_epoch(&redis, q) == 2 {
            reactivated += 1;
        }
    }
    assert!(reactivated >= 3, "only {reactivated} of 4 quiet facilities came back from a passivation");
    app.stop().await;
}

#[actix_web::test]
async fn a_full_mailbox_sheds_with_503_overloaded_and_loses_nothing_acknowledged() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.mailbox_capacity = 2;
    let mut app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(901);
    app.register(&f).await;

    // Many scans at once for one facility whose actor is still activating: its mailbox
    // (2) fills and the rest must be refused at once, not queued.
    let results = join_all((0..300).map(|i| {
        let body = scan_body(&f, "OPD1", 10_000 + i);
        let app = &app;
        async move { app.scan_resp(&body).await }
    }))
    .await;
    let mut acked = Vec::new();
    let mut shed = 0;
    for r in results {
        match r.status {
            201 => acked.push(r.body.clone()),
            503 => {
                assert_eq!(r.body["error"]["code"], "OVERLOADED", "{}", r.body);
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                shed += 1;
            }
            other => panic!("unexpected status {other}: {}", r.body),
        }
    }
    println!("mailbox 2: {} acknowledged, {shed} shed with 503", acked.len());
    assert!(shed > 0, "a mailbox of 2 must shed some of 300 simultaneous scans");
    assert!(!acked.is_empty(), "the facility must still serve what it accepted");
    // Every acknowledged token is durable, and acknowledged numbers are exactly 1..n.
    let mut numbers: Vec<u64> = acked.iter().map(|t| num(t, "token_number")).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=acked.len() as u64).collect::<Vec<_>>());
    let stored: usize = redis.conn().hlen(format!("sg:{{{f}}}:d:{START_DATE}:t")).unwrap();
    assert_eq!(stored, acked.len(), "nothing shed was stored, everything acknowledged was");
    app.stop().await;
}

#[actix_web::test]
async fn day_tokens_expire_after_the_local_day_but_board_counts_stay() {
    let redis = RedisServer::start();
    let mut app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(902);
    app.register(&f).await;
    app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    app.scan_new(&scan_body(&f, "Pharmacy", 2)).await;
    let mut con = redis.conn();
    let day_key = format!("sg:{{{f}}}:d:{START_DATE}:t");
    let ttl: i64 = con.ttl(&day_key).unwrap();
    // Local (IST) midnight after 2026-11-23 is 2026-11-23T18:30Z (no retention by default:
    // patient profiles go with the day), counted from the gateway's (test) clock, whatever
    // the real date is.
    let midnight: jiff::Timestamp = "2026-11-23T18:30:00Z".parse().unwrap();
    let start: jiff::Timestamp = START.parse().unwrap();
    let want = midnight.as_second() - start.as_second();
    assert!((want - 30..=want).contains(&ttl), "TTL {ttl}, want about {want}");
    // The day's counts per counter kind stay for the leaderboards (the applier prunes
    // them once applied); no count per counter is kept (nothing read it).
    let counts: std::collections::BTreeMap<String, i64> = con.hgetall(format!("sg:{{{f}}}:lbn")).unwrap();
    assert_eq!(counts.values().sum::<i64>(), 2, "{counts:?}");
    assert!(counts.keys().all(|k| k.starts_with(START_DATE)), "{counts:?}");
    let per_counter: bool = con.exists(format!("sg:{{{f}}}:n")).unwrap();
    assert!(!per_counter, "no per-counter count hash");
    app.stop().await;
}
