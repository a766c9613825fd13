//! Durability: rehydration after restart, two instances on one Redis (fencing), Redis
//! outage and recovery, Redis memory per token.
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::helpers::*;

#[actix_web::test]
async fn a_restarted_app_rehydrates_numbering_states_repeats_and_keys_from_redis() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let mut app = TestApp::spawn(&redis, clock.clone()).await;
    let f = fid(300);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let mut t = Vec::new();
    for i in 0..5 {
        t.push(app.scan_new(&scan_body(&f, "OPD1", i)).await);
    }
    let prio = app.scan_new(&scan_body_prio(&f, "OPD1", 5, "elderly")).await;
    let ph1 = app.scan_new(&scan_body(&f, "Pharmacy", 6)).await;
    let (st, idem) = app.scan_with_idem(&scan_body(&f, "Pharmacy", 7), "idem-restart-1").await;
    assert_eq!(st, 201, "{idem}");
    let (_, c1) = app.call_next(&f, "OPD1", &staff).await; // prio
    let (_, c2) = app.call_next(&f, "OPD1", &staff).await; // t0
    let (_, c3) = app.call_next(&f, "OPD1", &staff).await; // t1
    assert_eq!(c1["token_id"], prio["token_id"]);
    assert_eq!(c2["token_id"], t[0]["token_id"]);
    assert_eq!(c3["token_id"], t[1]["token_id"]);
    let (st, _) = app.token_op(s(&prio, "token_id"), "complete", &staff).await;
    assert_eq!(st, 200);
    let (st, _) = app.transfer(s(&t[4], "token_id"), "OPD2", &staff).await;
    assert_eq!(st, 200);

    app.stop().await;
    clock.advance(Duration::from_secs(60));
    let app = TestApp::spawn(&redis, clock.clone()).await;

    // Every state survived.
    let expect = [
        (&prio, "completed", "OPD1"),
        (&t[0], "called", "OPD1"),
        (&t[1], "called", "OPD1"),
        (&t[2], "waiting", "OPD1"),
        (&t[3], "waiting", "OPD1"),
        (&t[4], "waiting", "OPD2"),
        (&ph1, "waiting", "Pharmacy"),
        (&idem, "waiting", "Pharmacy"),
    ];
    for (tok, status, counter) in expect {
        let (st, v) = app.get_token(s(tok, "token_id"), &staff).await;
        assert_eq!(st, 200, "token lost across restart: {tok}");
        assert_token_view(&v);
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["counter_id"], counter, "{v}");
        assert_eq!(v["token_number"], tok["token_number"]);
        assert_eq!(v["display"], tok["display"]);
        assert_eq!(v["issued_at"], tok["issued_at"]);
    }
    let (_, v) = app.get_token(s(&prio, "token_id"), &staff).await;
    let statuses: Vec<&str> =
        v["history"].as_array().expect("history").iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["waiting", "called", "completed"], "history survives: {v}");
    let (_, v) = app.get_token(s(&t[2], "token_id"), &app.platform).await;
    assert_eq!(num(&v, "ahead"), 0, "{v}");
    let (_, v) = app.get_token(s(&t[3], "token_id"), &app.platform).await;
    assert_eq!(num(&v, "ahead"), 1, "{v}");

    // Repeat detection and idempotency survive.
    let (st, again) = app.scan(&scan_body(&f, "OPD1", 2)).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["token_id"], t[2]["token_id"]);
    let (st, replay) = app.scan_with_idem(&scan_body(&f, "Pharmacy", 7), "idem-restart-1").await;
    assert_eq!(st, 201, "{replay}");
    assert_eq!(replay["token_id"], idem["token_id"]);

    // Numbering continues per counter.
    let n = app.scan_new(&scan_body(&f, "OPD1", 8)).await;
    assert_eq!(num(&n, "token_number"), 7, "{n}");
    let n = app.scan_new(&scan_body(&f, "Pharmacy", 9)).await;
    assert_eq!(num(&n, "token_number"), 3, "{n}");
    let n = app.scan_new(&scan_body(&f, "OPD2", 10)).await;
    assert_eq!(num(&n, "token_number"), 1, "{n}");

    // The staff key and the queue order survive: the transferred token first at OPD2.
    let (st, q) = app.queue(&f, Some("OPD1"), &staff).await;
    assert_eq!(st, 200, "{q}");
    let waiting: Vec<&str> = q["counters"][0]["waiting"].as_array().unwrap().iter().map(|t| s(t, "token_id")).collect();
    assert_eq!(waiting[..2], [s(&t[2], "token_id"), s(&t[3], "token_id")], "{q}");
    assert_eq!(q["counters"][0]["called"].as_array().unwrap().len(), 2, "{q}");
    let (st, next) = app.call_next(&f, "OPD2", &staff).await;
    assert_eq!(st, 200);
    assert_eq!(next["token_id"], t[4]["token_id"], "transferred token keeps its priority lane");
    let (st, next) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 200);
    assert_eq!(next["token_id"], t[2]["token_id"]);
}

#[actix_web::test]
async fn two_instances_on_one_redis_never_issue_the_same_number_twice() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let a = TestApp::spawn(&redis, clock.clone()).await;
    let b = TestApp::spawn(&redis, clock.clone()).await;
    let facilities: Vec<String> = (0..5).map(|i| fid(310 + i)).collect();
    for f in &facilities {
        a.register(f).await;
    }
    let counters = ["OPD1", "OPD2"];

    let results = join_all((0..400usize).map(|i| {
        // Alternate so that every (facility, counter) gets scans from both instances.
        let app = if (i / 10) % 2 == 0 { &a } else { &b };
        let f = facilities[i % 5].clone();
        let c = counters[(i / 5) % 2];
        async move {
            let (st, v) = app.scan(&scan_body(&f, c, 1000 + i)).await;
            (i, f, c, st, v)
        }
    }))
    .await;

    let mut acked: BTreeMap<(String, String), Vec<(u64, String)>> = BTreeMap::new();
    let (mut ok, mut busy) = (0, 0);
    // Every patient scans once: 200 `repeat:true` for a first scan is wrong, but its token
    // still counts as acknowledged for the numbering checks below.
    let mut wrong_status = Vec::new();
    for (i, f, c, st, v) in &results {
        match st {
            201 | 200 => {
                ok += 1;
                assert_token_view(v);
                assert_eq!(s(v, "facility_id"), f);
                assert_eq!(s(v, "counter_id"), *c);
                if *st == 200 {
                    wrong_status.push(format!(
                        "scan {i} (first scan of its patient) answered 200 repeat={}: {} #{}",
                        v["repeat"],
                        s(v, "display"),
                        v["token_number"]
                    ));
                }
                acked
                    .entry((f.clone(), c.to_string()))
                    .or_default()
                    .push((num(v, "token_number"), s(v, "token_id").into()));
            }
            503 => {
                busy += 1;
                assert!(v["error"]["code"].is_string(), "503 carries an error code: {v}");
            }
            _ => wrong_status.push(format!("scan {i}: unexpected {st}: {v}")),
        }
    }
    println!("two instances: {ok} acknowledged, {busy} refused with 503, {} wrong statuses", wrong_status.len());
    assert!(ok >= 100, "at least a quarter of the scans should succeed, got {ok} of 400");

    // No duplicate (facility, counter, number) among acknowledged tokens.
    for ((f, c), list) in &acked {
        let mut seen = HashSet::new();
        for (n, _) in list {
            assert!(seen.insert(*n), "number {n} issued twice at {f}/{c}: {list:?}");
        }
    }

    // Every acknowledged token is readable from both instances with the same number.
    let mut read_failures = Vec::new();
    for ((f, c), list) in &acked {
        for (n, id) in list {
            for (name, app) in [("A", &a), ("B", &b)] {
                let (st, v) = app.get_token(id, &app.platform).await;
                if st != 200 || v["token_number"].as_u64() != Some(*n) || v["counter_id"] != c.as_str() {
                    read_failures.push(format!("{f}/{c} #{n} on instance {name}: {st} {v}"));
                }
            }
        }
    }

    // Make instance A the owner everywhere (a fenced write), then the stored numbers on each
    // counter are exactly 1..n and include every acknowledged one.
    for (k, f) in facilities.iter().enumerate() {
        let (_, staff) = a.create_staff_key(f).await;
        for (j, c) in counters.into_iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(20);
            let last = loop {
                let (st, v) = a.scan(&scan_body(f, c, 5000 + k * 2 + j)).await;
                if st == 201 || st == 200 {
                    break v;
                }
                assert_eq!(st, 503, "{v}");
                assert!(Instant::now() < deadline, "instance A never got {f} back");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            };
            let (st, q) = a.queue(f, Some(c), &staff).await;
            assert_eq!(st, 200, "{q}");
            let mut numbers: Vec<u64> =
                q["counters"][0]["waiting"].as_array().unwrap().iter().map(|t| num(t, "token_number")).collect();
            numbers.sort_unstable();
            let max = num(&last, "token_number");
            assert_eq!(numbers, (1..=max).collect::<Vec<u64>>(), "stored numbers at {f}/{c} must be 1..{max}");
            for (n, _) in acked.get(&(f.clone(), c.to_string())).into_iter().flatten() {
                assert!(numbers.contains(n), "acknowledged #{n} missing at {f}/{c}");
            }
        }
    }
    assert!(wrong_status.is_empty(), "{} scans got a wrong status:\n{}", wrong_status.len(), wrong_status.join("\n"));
    assert!(
        read_failures.is_empty(),
        "{} reads of acknowledged tokens failed (of {}):\n{}",
        read_failures.len(),
        ok * 2,
        read_failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[actix_web::test]
async fn redis_down_means_503_and_not_ready_then_service_resumes_by_itself() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(320);
    app.register(&f).await;
    let first = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(num(&first, "token_number"), 1);
    let r = app.req("GET", "/readyz", None, None, &[]).await;
    assert_eq!(r.status, 200, "ready with redis up: {}", r.text);

    redis.stop();

    let body = scan_body(&f, "OPD1", 2);
    let r = app.scan_resp(&body).await;
    assert_error(r.status, &r.body, 503, "STORE_UNAVAILABLE");
    let retry = r.header("retry-after").expect("Retry-After on 503");
    assert!(retry.trim().parse::<u64>().is_ok(), "Retry-After is seconds: {retry:?}");
    // A new facility cannot be activated either.
    let r = app.scan_resp(&scan_body(&fid(999), "OPD1", 3)).await;
    assert_eq!(r.status, 503, "{}", r.text);

    let c = app.client.clone();
    let ready = format!("{}/readyz", app.base);
    eventually(Duration::from_secs(15), "/readyz reports 503 while redis is down", || {
        let (c, u) = (c.clone(), ready.clone());
        async move { matches!(http(&c, "GET", &u, None, None, None, &[]).await, Ok(r) if r.status == 503) }
    })
    .await;
    let r = app.scan_resp(&body).await;
    assert_error(r.status, &r.body, 503, "STORE_UNAVAILABLE");

    redis.restart();

    eventually(Duration::from_secs(30), "/readyz back to 200 after redis returns", || {
        let (c, u) = (c.clone(), ready.clone());
        async move { matches!(http(&c, "GET", &u, None, None, None, &[]).await, Ok(r) if r.status == 200) }
    })
    .await;
    // Same patient retried until it works: nothing half-written during the outage, so it is
    // number 2 (a 200 repeat would mean an earlier 503 had in fact stored it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let ok = loop {
        let r = app.scan_resp(&body).await;
        if r.status == 201 || r.status == 200 {
            break r;
        }
        assert_error(r.status, &r.body, 503, "STORE_UNAVAILABLE");
        assert!(Instant::now() < deadline, "scans never resumed after redis came back");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ok.status, 201, "a 503 during the outage must not have stored the token: {}", ok.text);
    assert_eq!(num(&ok.body, "token_number"), 2, "{}", ok.text);
    let next = app.scan_new(&scan_body(&f, "OPD1", 4)).await;
    assert_eq!(num(&next, "token_number"), 3);
    let (st, v) = app.get_token(s(&first, "token_id"), &app.platform).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(num(&v, "token_number"), 1);
}

#[actix_web::test]
async fn redis_memory_per_issued_token_is_at_most_200_bytes() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let facilities: Vec<String> = (0..10).map(|i| fid(330 + i)).collect();
    for f in &facilities {
        app.register(f).await;
    }
    let counters = ["OPD1", "OPD2", "Pharmacy"];
    // Warm up: every facility active, every counter's day structures created.
    for (k, f) in facilities.iter().enumerate() {
        for (j, c) in counters.iter().enumerate() {
            app.scan_new(&scan_body(f, c, 900_000 + k * 10 + j)).await;
        }
    }
    let before = redis.stored_memory();
    const N: usize = 5000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
        let replies = join_all(chunk.iter().map(|&i| {
            let app = &app;
            let f = &facilities[i % facilities.len()];
            let c = counters[(i / facilities.len()) % counters.len()];
            async move { app.scan(&scan_body(f, c, i)).await }
        }))
        .await;
        for (st, v) in replies {
            assert_eq!(st, 201, "{v}");
        }
    }
    let after = redis.stored_memory();
    let per_token = (after - before) as f64 / N as f64;
    println!(
        "redis memory without buffers in flight: before {before} B, after {after} B, {per_token:.1} bytes per token \
         (used_memory {}, clients {}, AOF buffer {})",
        redis.used_memory(),
        redis.memory_field("mem_clients_normal"),
        redis.memory_field("mem_aof_buffer")
    );
    assert!(per_token <= 200.0, "Redis memory per token {per_token:.1} B exceeds the 200 B budget");
}

/// Each acknowledged (patient, token) is readable with its number and its own patient, and
/// the counter's stored numbers are exactly 1..max.
async fn check_acked(app: &TestApp, when: &str, f: &str, staff: &str, acked: &[(usize, serde_json::Value)]) {
    let mut numbers = HashSet::new();
    for (patient, tok) in acked {
        let n = num(tok, "token_number");
        assert!(numbers.insert(n), "{when}: number {n} acknowledged to two patients");
        let (st, v) = app.get_token(s(tok, "token_id"), staff).await;
        assert_eq!(st, 200, "{when}: {v}");
        assert_eq!(num(&v, "token_number"), n, "{when}: {v}");
        assert_eq!(
            v["patient"]["abha_address"],
            abha_address(*patient),
            "{when}: token #{n} belongs to another patient: {v}"
        );
    }
    let (st, q) = app.queue(f, Some("OPD1"), staff).await;
    assert_eq!(st, 200, "{q}");
    let mut all: Vec<u64> =
        q["counters"][0]["waiting"].as_array().unwrap().iter().map(|t| num(t, "token_number")).collect();
    all.sort_unstable();
    let max = *numbers.iter().max().unwrap();
    assert_eq!(all, (1..=max).collect::<Vec<u64>>(), "{when}: stored numbers 1..{max}: {q}");
}

/// A Redis write that times out (503) may still land later; whatever happens, no
/// acknowledged token may be overwritten or renumbered, and a retry must not duplicate.
#[actix_web::test]
async fn a_timed_out_write_never_corrupts_acknowledged_tokens() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.redis_timeout_ms = 300;
    let mut app = TestApp::spawn_with(settings.clone(), clock.clone()).await;
    let f = fid(340);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let first = app.scan_new(&scan_body(&f, "OPD1", 1)).await;

    // Hold writes longer than the gateway waits for them.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE").query(&mut redis.conn()).unwrap();
    let r = app.scan_resp(&scan_body(&f, "OPD1", 2)).await;
    assert_error(r.status, &r.body, 503, "STORE_UNAVAILABLE");
    assert!(r.header("retry-after").is_some(), "Retry-After on 503");

    // Keep retrying two patients until both are acknowledged.
    let mut acked = vec![(1usize, first)];
    for patient in [3usize, 2] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = app.scan_resp(&scan_body(&f, "OPD1", patient)).await;
            if r.status == 201 || r.status == 200 {
                assert_token_view(&r.body);
                acked.push((patient, r.body));
                break;
            }
            assert_error(r.status, &r.body, 503, "STORE_UNAVAILABLE");
            assert!(Instant::now() < deadline, "scans never resumed after the pause");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
    check_acked(&app, "live", &f, &staff, &acked).await;
    app.stop().await;
    let app = TestApp::spawn_with(settings, clock).await;
    check_acked(&app, "after restart", &f, &staff, &acked).await;
}

#[actix_web::test]
async fn overload_is_refused_with_503_overloaded_and_retry_after() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.max_in_flight = 8;
    settings.mailbox_capacity = 4;
    settings.redis_timeout_ms = 10_000;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(350);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    app.scan_new(&scan_body(&f, "OPD1", 0)).await;

    // Writes are held for a second: the scans pile up in the gateway.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1000).arg("WRITE").query(&mut redis.conn()).unwrap();
    let replies = join_all((1..=60usize).map(|i| {
        let app = &app;
        let f = &f;
        async move { app.scan_resp(&scan_body(f, "OPD1", i)).await }
    }))
    .await;
    let (mut ok, mut overloaded) = (0, 0);
    for r in &replies {
        match r.status {
            201 => ok += 1,
            503 => {
                assert_error(r.status, &r.body, 503, "OVERLOADED");
                let retry = r.header("retry-after").expect("Retry-After on OVERLOADED");
                assert!(retry.trim().parse::<u64>().is_ok(), "{retry:?}");
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    println!("overload: {ok} accepted, {overloaded} refused");
    assert!(ok >= 1, "some scans are served");
    assert!(overloaded >= 1, "with 60 scans against 8 in flight some must be refused");

    // The refused ones took no number: stored numbers are exactly 1..=ok+1.
    let (st, q) = app.queue(&f, Some("OPD1"), &staff).await;
    assert_eq!(st, 200, "{q}");
    let mut all: Vec<u64> =
        q["counters"][0]["waiting"].as_array().unwrap().iter().map(|t| num(t, "token_number")).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=ok as u64 + 1).collect::<Vec<u64>>());
    let next = app.scan_new(&scan_body(&f, "OPD1", 100)).await;
    assert_eq!(num(&next, "token_number"), ok as u64 + 2);
}

/// Patient identifiers never appear in key names, and every key holding a patient's profile
/// expires (finished days go by TTL); the facility record does not.
#[actix_web::test]
async fn patient_data_in_redis_lives_only_in_expiring_values() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(360);
    app.register(&f).await;
    for i in 0..3 {
        app.scan_new(&scan_body(&f, "OPD1", 70 + i)).await;
    }
    let (st, _) = app.scan_with_idem(&scan_body(&f, "OPD2", 73), "idem-ttl-1").await;
    assert_eq!(st, 201);
    let store = redis.settled_snapshot().await;
    let mut con = redis.conn();
    let mut holding = 0;
    for (key, content) in &store {
        for i in 70..74 {
            let digits = abha_number(i).replace('-', "");
            for needle in [abha_address(i), abha_number(i), digits.clone(), format!("9{:09}", i)] {
                assert!(!key.contains(&needle), "key name {key} contains patient data {needle}");
            }
            if content.contains(&abha_address(i)) || content.contains(&digits) {
                holding += 1;
                let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
                assert!(ttl > 0, "{key} holds patient data but never expires (PTTL {ttl})");
            }
        }
    }
    assert!(holding > 0, "patient profiles are stored somewhere (staff see them): {store:?}");
    let info: Vec<&String> =
        store.keys().filter(|k| k.contains(&f) && store[*k].contains("District Hospital")).collect();
    assert!(!info.is_empty(), "the facility record is stored");
    for k in info {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut con).unwrap();
        assert_eq!(ttl, -1, "the facility record {k} must not expire");
    }
}

/// A service day's token hash gets its expiry from the owner's first write of that day and
/// keeps it: later writes do not set it again (one EXPIRE per owner and day instead of one
/// per scan, in Redis CPU and in the AOF). The next day's hash gets its own.
#[actix_web::test]
async fn a_day_hash_gets_its_expiry_once_per_owner_and_day() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(361);
    app.register(&f).await;
    let day1 = scan_gateway::persistence::keys::day_tokens(&f, START_DATE.parse().unwrap());
    let pttl = |key: &str| -> i64 { redis::cmd("PTTL").arg(key).query(&mut redis.conn()).unwrap() };

    app.scan_new(&scan_body(&f, "OPD1", 80)).await;
    let first = pttl(&day1);
    // 09:30 IST: the day ends in 14.5 hours (the test settings keep no extra retention).
    assert!((14 * 3600 * 1000..=(14 * 3600 + 1800) * 1000).contains(&first), "PTTL {first}");

    // An hour later by the gateway's clock: had these writes set the expiry again, it
    // would now be an hour shorter.
    app.clock.advance(Duration::from_secs(3600));
    for i in 81..84 {
        app.scan_new(&scan_body(&f, "OPD1", i)).await;
    }
    let later = pttl(&day1);
    assert!(later > first - 60_000, "the expiry was set again: {first} ms -> {later} ms");

    // The next morning: a new hash, with its own expiry (a day and a bit from now).
    app.clock.advance(Duration::from_secs(24 * 3600));
    let t = app.scan_new(&scan_body(&f, "OPD1", 84)).await;
    assert_eq!(num(&t, "token_number"), 1, "a new day numbers from 1: {t}");
    let day2 = scan_gateway::persistence::keys::day_tokens(&f, "2026-11-24".parse().unwrap());
    let second = pttl(&day2);
    assert!((13 * 3600 * 1000..=(13 * 3600 + 1800) * 1000).contains(&second), "PTTL {second}");
}
