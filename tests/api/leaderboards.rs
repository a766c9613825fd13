//! Leaderboards: exact counts after concurrent load (and under fencing conflicts between
//! two gateways), filters, day rollover and retention, the monitor role, the live feed
//! (SSE) and the Prometheus series it feeds.
use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Commands;
use serde_json::{json, Value};

use crate::helpers::*;

/// (facility id, state name, state code, district, counters as (id, kind))
type Fixture = (String, &'static str, &'static str, &'static str, Vec<(&'static str, &'static str)>);

fn facilities() -> Vec<Fixture> {
    vec![
        (fid(700), "Uttar Pradesh", "UP", "Lucknow", vec![("OPD1", "opd"), ("Lab", "lab")]),
        (fid(701), "Uttar Pradesh", "UP", "Lucknow", vec![("OPD1", "opd"), ("Pharmacy", "pharmacy")]),
        (fid(702), "UP", "UP", "Varanasi", vec![("OPD1", "opd")]),
        (fid(703), "Andhra Pradesh", "AP", "Guntur", vec![("OPD1", "opd"), ("Lab", "lab")]),
        (fid(704), "karnataka", "KA", "Mysuru", vec![("OPD1", "opd"), ("Pharmacy", "pharmacy")]),
        (fid(705), "Delhi", "DL", "New Delhi", vec![("OPD1", "opd")]),
    ]
}

async fn register_all(app: &TestApp) {
    for (id, state, _, district, counters) in facilities() {
        let counters: Vec<Value> = counters.iter().map(|(c, k)| json!({"id": c, "kind": k})).collect();
        let body =
            json!({"name": format!("Hospital {id}"), "state": state, "district": district, "counters": counters});
        let (st, v) = app.put_facility(&id, &body).await;
        assert_eq!(st, 201, "{v}");
    }
}

async fn board(app: &TestApp, path: &str) -> Value {
    let r = app.req("GET", path, Some(&app.monitor), None, &[]).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    r.body
}

/// (id -> tokens) of a ranking, checking ranks, order and shares on the way.
fn rows(v: &Value) -> BTreeMap<String, u64> {
    let rows = v["rows"].as_array().expect("rows");
    let total = num(v, "total");
    let mut prev = u64::MAX;
    for (i, r) in rows.iter().enumerate() {
        let t = num(r, "tokens");
        assert!(t <= prev, "rows sorted by tokens: {v}");
        if t < prev {
            assert_eq!(num(r, "rank"), i as u64 + 1, "competition rank: {v}");
        }
        prev = t;
        let share = r["share"].as_f64().unwrap();
        let want = if total == 0 { 0.0 } else { t as f64 / total as f64 };
        assert!((share - want).abs() < 1e-5, "share of {r} in total {total}");
    }
    rows.iter().filter(|r| num(r, "tokens") > 0).map(|r| (s(r, "id").to_string(), num(r, "tokens"))).collect()
}

#[derive(Default)]
struct Expected {
    states: BTreeMap<String, u64>,
    districts: BTreeMap<String, u64>,
    facilities: BTreeMap<String, u64>,
    lab_facilities: BTreeMap<String, u64>,
    up_facilities: BTreeMap<String, u64>,
    lucknow_facilities: BTreeMap<String, u64>,
}

impl Expected {
    fn add(&mut self, facility: &str, counter: &str) {
        let (_, _, code, district, counters) = facilities().into_iter().find(|f| f.0 == facility).unwrap();
        let kind = counters.iter().find(|c| c.0 == counter).unwrap().1;
        *self.states.entry(code.into()).or_default() += 1;
        *self.districts.entry(format!("{code}/{district}")).or_default() += 1;
        *self.facilities.entry(facility.into()).or_default() += 1;
        if kind == "lab" {
            *self.lab_facilities.entry(facility.into()).or_default() += 1;
        }
        if code == "UP" {
            *self.up_facilities.entry(facility.into()).or_default() += 1;
            if district == "Lucknow" {
                *self.lucknow_facilities.entry(facility.into()).or_default() += 1;
            }
        }
    }

    /// The first difference between the boards and what was issued, if any.
    async fn mismatch(&self, app: &TestApp, date: &str) -> Option<String> {
        fn diff<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Option<String> {
            (got != want).then(|| format!("{what}: got {got:?}, want {want:?}"))
        }
        let q = |b: &str, extra: &str| format!("/v1/leaderboards/{b}?date={date}&limit=1000{extra}");
        let states = board(app, &q("states", "")).await;
        assert_eq!(states["rows"].as_array().unwrap().len(), 36, "every state is listed");
        let up = board(app, &q("facilities", "&state=Uttar%20Pradesh")).await;
        let lko = board(app, &q("facilities", "&state=UP&district=Lucknow")).await;
        let up_districts = board(app, &q("districts", "&state=up")).await;
        let want_up_districts: BTreeMap<String, u64> =
            self.districts.iter().filter(|(k, _)| k.starts_with("UP/")).map(|(k, v)| (k.clone(), *v)).collect();
        diff("states", rows(&states), self.states.clone())
            .or_else(|| diff("national total", num(&states, "total"), self.facilities.values().sum::<u64>()))
            .or(diff("districts", rows(&board(app, &q("districts", "")).await), self.districts.clone()))
            .or(diff("facilities", rows(&board(app, &q("facilities", "")).await), self.facilities.clone()))
            .or(diff(
                "labs",
                rows(&board(app, &q("facilities", "&counter_kind=lab")).await),
                self.lab_facilities.clone(),
            ))
            .or_else(|| diff("facilities in UP", rows(&up), self.up_facilities.clone()))
            // Shares within a state are of the state's total.
            .or_else(|| diff("UP total", num(&up, "total"), self.states["UP"]))
            .or_else(|| diff("facilities in Lucknow", rows(&lko), self.lucknow_facilities.clone()))
            .or_else(|| diff("Lucknow total", num(&lko, "total"), self.districts["UP/Lucknow"]))
            .or_else(|| diff("districts in UP", rows(&up_districts), want_up_districts))
    }

    /// The boards reach exactly the tokens issued: the applier moves counts in the
    /// background, so this polls with a deadline; any count still off at the end fails.
    async fn check(&self, app: &TestApp, date: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let Some(m) = self.mismatch(app, date).await else { return };
            assert!(std::time::Instant::now() < deadline, "{date}: leaderboards never became exact: {m}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Tokens each facility holds in Redis for the day: the ground truth.
fn stored_tokens(redis: &RedisServer, facility: &str) -> u64 {
    let n: u64 = redis.conn().hlen(format!("sg:{{{facility}}}:d:{START_DATE}:t")).unwrap();
    n
}

#[actix_web::test]
async fn leaderboards_equal_the_tokens_issued_after_a_concurrent_load() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    register_all(&app).await;
    let fs = facilities();
    // 600 scans over every (facility, counter), one patient in ten scanning twice.
    let plan: Vec<(String, &str, usize)> = (0..600usize)
        .map(|i| {
            let f = &fs[i % fs.len()];
            let c = f.4[(i / fs.len()) % f.4.len()].0;
            // Same facility and counter 60 scans back: 60 is a multiple of 6 facilities x 2 counters.
            let patient = if i % 10 == 9 && i >= 60 { i - 60 } else { i };
            (f.0.clone(), c, patient)
        })
        .collect();
    let results = join_all(plan.iter().map(|(f, c, p)| {
        let app = &app;
        async move { (f.clone(), *c, app.scan(&scan_body(f, c, *p)).await) }
    }))
    .await;
    let mut want = Expected::default();
    let mut repeats = 0;
    for (f, c, (st, v)) in &results {
        match st {
            201 => want.add(f, c),
            200 => repeats += 1,
            _ => panic!("unexpected {st}: {v}"),
        }
    }
    assert!(repeats > 0, "the plan re-scans some patients");
    for (f, n) in &want.facilities {
        assert_eq!(stored_tokens(&redis, f), *n, "tokens of {f} in Redis");
    }
    want.check(&app, START_DATE).await;
    want.check(&app, "all").await;
    // Counter operations and repeats move no leaderboard.
    let (key_id, key) = app.create_staff_key(&fs[0].0).await;
    let _ = key_id;
    let r =
        app.req("POST", &format!("/v1/facilities/{}/counters/OPD1/call-next", fs[0].0), Some(&key), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    want.check(&app, START_DATE).await;
}

#[actix_web::test]
async fn a_write_refused_by_the_fence_moves_no_leaderboard() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let a = TestApp::spawn(&redis, clock.clone()).await;
    let b = TestApp::spawn(&redis, clock.clone()).await;
    register_all(&a).await;
    let fs = facilities();
    let conflicts = || async {
        let m = a.req("GET", "/metrics", None, None, &[]).await.text;
        m.lines()
            .find_map(|l| l.strip_prefix("scangw_fencing_conflicts_total "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let conflicts_before = conflicts().await;
    let results = join_all((0..300usize).map(|i| {
        // Alternate gateways so ownership keeps moving and some writes are fenced off.
        let app = if (i / 7) % 2 == 0 { &a } else { &b };
        let f = fs[i % 3].0.clone();
        async move { (f.clone(), app.scan(&scan_body(&f, "OPD1", 5000 + i)).await) }
    }))
    .await;
    let mut want = Expected::default();
    let mut refused = 0;
    for (f, (st, v)) in &results {
        match st {
            201 => want.add(f, "OPD1"),
            503 => refused += 1,
            _ => panic!("unexpected {st}: {v}"),
        }
    }
    let fenced = conflicts().await - conflicts_before;
    println!(
        "fenced ping-pong: {} tokens, {refused} refused, {fenced} writes fenced off",
        want.facilities.values().sum::<u64>()
    );
    assert!(fenced > 0.0, "the test must provoke writes the fence refuses");
    for (f, n) in &want.facilities {
        assert_eq!(stored_tokens(&redis, f), *n, "tokens of {f} in Redis");
    }
    want.check(&a, START_DATE).await;
}

#[actix_web::test]
async fn daily_boards_follow_the_service_day_and_expire_after_the_retention() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.leaderboard_retention_days = 3;
    // 04:00 UTC is 09:30 IST on 2026-11-23.
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    register_all(&app).await;
    let f = fid(705);
    for i in 0..3 {
        app.scan_new(&scan_body(&f, "OPD1", i)).await;
    }
    // 18:31 UTC is 00:01 IST the next day: a new service day.
    app.clock.set("2026-11-23T18:31:00Z".parse().unwrap());
    for i in 10..12 {
        app.scan_new(&scan_body(&f, "OPD1", i)).await;
    }
    let boards = || async {
        let day1 = board(&app, "/v1/leaderboards/states?date=2026-11-23").await;
        let day2 = board(&app, "/v1/leaderboards/states").await;
        let all = board(&app, "/v1/leaderboards/states?date=all").await;
        (day1, day2, all)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (day1, day2, all) = loop {
        let (day1, day2, all) = boards().await;
        let totals = (num(&day1, "total"), num(&day2, "total"), num(&all, "total"));
        if totals == (3, 2, 5) {
            break (day1, day2, all);
        }
        assert!(std::time::Instant::now() < deadline, "boards never reached (3, 2, 5): {totals:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s(&day2, "date"), "2026-11-24", "the default date is today's service day in IST");
    assert_eq!(s(&all, "date"), "all");
    assert_eq!(day1["rows"][0]["id"], "DL");
    let mut c = redis.conn();
    // The daily boards, and apart from them what the applier already applied that day.
    let (applied, daily): (Vec<String>, Vec<String>) =
        redis.keys("lb:{lb}:2026-11-2*").into_iter().partition(|k| k.ends_with(":ap"));
    assert!(daily.len() >= 5, "{daily:?}");
    for k in &daily {
        let ttl: i64 = c.ttl(k).unwrap();
        assert!((3 * 86_400 - 60..=3 * 86_400).contains(&ttl), "{k} expires after the retention: {ttl}");
    }
    assert_eq!(applied.len(), 2, "one applied record per day: {applied:?}");
    for k in &applied {
        let ttl: i64 = c.ttl(k).unwrap();
        assert!((10 * 86_400 - 60..=10 * 86_400).contains(&ttl), "{k} outlives its boards by 7 days: {ttl}");
    }
    for k in redis.keys("lb:{lb}:all:*") {
        let ttl: i64 = c.ttl(&k).unwrap();
        assert_eq!(ttl, -1, "all-time board {k} stays");
    }
    let empty = board(&app, "/v1/leaderboards/facilities?date=2020-01-01").await;
    assert_eq!((num(&empty, "total"), empty["rows"].as_array().unwrap().len()), (0, 0));
}

#[actix_web::test]
async fn the_leaderboard_api_is_for_monitors_and_names_every_bad_parameter() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    register_all(&app).await;
    let (_, staff) = app.create_staff_key(&fid(700)).await;
    let path = "/v1/leaderboards/states";
    let status = |r: Resp| (r.status, r.body["error"]["code"].as_str().unwrap_or("").to_string());
    assert_eq!(status(app.req("GET", path, None, None, &[]).await), (401, "UNAUTHORIZED".into()));
    assert_eq!(status(app.req("GET", path, Some(&app.platform), None, &[]).await), (403, "FORBIDDEN".into()));
    assert_eq!(status(app.req("GET", path, Some(&staff), None, &[]).await), (403, "FORBIDDEN".into()));
    assert_eq!(app.req("GET", path, Some(&app.monitor), None, &[]).await.status, 200);
    assert_eq!(app.req("GET", path, Some(&app.admin), None, &[]).await.status, 200);
    // The monitor credential reads leaderboards only.
    let r = app.req("POST", "/v1/scans", Some(&app.monitor), Some(&scan_body(&fid(700), "OPD1", 1)), &[]).await;
    assert_eq!(r.status, 403);
    let r = app.req("GET", &format!("/v1/facilities/{}", fid(700)), Some(&app.monitor), None, &[]).await;
    assert_eq!(r.status, 403);
    for (q, st, code, field) in [
        ("/v1/leaderboards/cities", 404, "NOT_FOUND", None),
        ("/v1/leaderboards/states?date=yesterday", 422, "INVALID_FIELD", Some("date")),
        ("/v1/leaderboards/facilities?state=Atlantis", 422, "INVALID_FIELD", Some("state")),
        ("/v1/leaderboards/facilities?district=Lucknow", 422, "INVALID_FIELD", Some("district")),
        ("/v1/leaderboards/facilities?counter_kind=xray", 422, "INVALID_FIELD", Some("counter_kind")),
        ("/v1/leaderboards/facilities?limit=5000", 422, "INVALID_FIELD", Some("limit")),
        ("/v1/leaderboards/facilities?order=asc", 400, "UNKNOWN_FIELD", Some("order")),
    ] {
        let r = app.req("GET", q, Some(&app.monitor), None, &[]).await;
        assert_error(r.status, &r.body, st, code);
        if let Some(f) = field {
            assert_eq!(r.body["error"]["field"], f, "{q}: {}", r.text);
        }
    }
}

#[actix_web::test]
async fn pages_stream_live_updates_and_metrics_export_the_leaderboard() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.max_sse_clients = 2;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    register_all(&app).await;
    let page = app.req("GET", "/leaderboard", None, None, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    assert!(page.text.contains("/leaderboard/events"));
    let unknown = app.req("GET", "/facilities/IN9999999999/board", None, None, &[]).await;
    assert_error(unknown.status, &unknown.body, 404, "UNKNOWN_FACILITY");

    let sse = client();
    let mut national = sse.get(format!("{}/leaderboard/events", app.base)).send().await.unwrap();
    assert_eq!(national.status().as_u16(), 200);
    assert_eq!(national.headers().get("content-type").unwrap(), "text/event-stream");
    let f = fid(703);
    let mut hall = sse.get(format!("{}/facilities/{f}/board/events", app.base)).send().await.unwrap();
    assert_eq!(hall.status().as_u16(), 200);
    let third = app.req("GET", "/leaderboard/events", None, None, &[]).await;
    assert_error(third.status, &third.body, 503, "OVERLOADED");

    let first = wait_for_event(&mut hall, "the board's first state", |_| true).await;
    assert_eq!(first["counters"][0]["waiting"], 0);
    for i in 0..4 {
        app.scan_new(&scan_body(&f, "OPD1", 100 + i)).await;
    }
    app.scan_new(&scan_body(&fid(700), "OPD1", 200)).await;
    let snap = wait_for_event(&mut national, "5 tokens on the national feed", |v| v["total_today"] == 5).await;
    assert_eq!(snap["states"][0]["id"], "AP");
    assert_eq!(snap["states"][0]["tokens"], 4);
    assert_eq!(snap["facilities"][0]["id"], f.as_str());
    assert_eq!(snap["counter_kinds"][0], json!({"counter_kind": "opd", "tokens": 5}));
    let shown = wait_for_event(&mut hall, "four waiting on the board", |v| v["counters"][0]["waiting"] == 4).await;
    assert_eq!(shown["counters"][0]["next"][0], "OPD1-001");
    let (_, key) = app.create_staff_key(&f).await;
    let r = app.req("POST", &format!("/v1/facilities/{f}/counters/OPD1/call-next"), Some(&key), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let called =
        wait_for_event(&mut hall, "token 1 called", |v| v["counters"][0]["now_serving"][0] == "OPD1-001").await;
    assert_eq!(called["counters"][0]["waiting"], 3);
    assert!(!called.to_string().contains("abha"), "the board shows numbers only: {called}");

    let metrics = app.req("GET", "/metrics", None, None, &[]).await.text;
    for line in [
        r#"scangw_leaderboard_state_tokens{state="AP",period="today"} 4"#,
        r#"scangw_leaderboard_state_tokens{state="UP",period="all"} 1"#,
        r#"scangw_leaderboard_state_tokens{state="GA",period="today"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in /metrics");
    }
    for period in ["today", "all"] {
        let n = metrics
            .lines()
            .filter(|l| {
                l.starts_with("scangw_leaderboard_state_tokens{") && l.contains(&format!("period=\"{period}\""))
            })
            .count();
        assert_eq!(n, 36, "every state has a {period} series, with or without tokens");
    }
    let top: Vec<&str> = metrics.lines().filter(|l| l.starts_with("scangw_leaderboard_top_facility_tokens{")).collect();
    assert_eq!(top.len(), 2, "{top:?}");
    assert!(top[0].contains(&format!(r#"rank="1",facility_id="{f}",facility_name="Hospital {f}",state="AP"}} 4"#)));
    assert!(metrics.lines().any(|l| l.starts_with("process_resident_memory_bytes ")));
    assert!(metrics
        .lines()
        .any(|l| l.starts_with(r#"scangw_scans_total{state="AP",counter_kind="opd",outcome="new"}"#)));
    assert!(metrics.contains("scangw_redis_up 1"));
    assert!(!metrics.contains("@sbx") && !metrics.contains("@abdm"), "no patient data in metrics");
    drop(national);
    drop(hall);
    // Closed streams give their slots back.
    eventually(Duration::from_secs(10), "SSE slots released", || {
        let app = &app;
        async move {
            app.req("GET", "/leaderboard", None, None, &[]).await.status == 200 && {
                let r = client().get(format!("{}/leaderboard/events", app.base)).send().await;
                matches!(r, Ok(r) if r.status().as_u16() == 200)
            }
        }
    })
    .await;
}

/// Calls of `cmd` Redis has run so far (`INFO commandstats`).
fn command_calls(redis: &RedisServer, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// An "opd" apply item of facility `IN29<i>` of a Karnataka `district`, up to `count`.
fn opd_item(
    day: jiff::civil::Date,
    i: usize,
    district: &str,
    count: u64,
) -> scan_gateway::persistence::lbcounts::ApplyItem {
    let facility = format!("IN29{i:08}");
    let mut keys = vec![scan_gateway::persistence::keys::lb_applied(day)];
    keys.extend(scan_gateway::leaderboard::board_keys(district, day, "opd"));
    scan_gateway::persistence::lbcounts::ApplyItem {
        keys: keys.into(),
        applied_field: scan_gateway::persistence::keys::lb_applied_field(&facility, "opd"),
        count,
        state: "KA",
        district: district.into(),
        facility,
    }
}

/// One pass over facilities of two districts, listed alternately: the items of one district
/// go into the same APPLY call, so each call bumps its district's rankings once, and every
/// item still gets its own (before, after) in the order it was given.
#[actix_web::test]
async fn a_pass_applies_one_districts_facilities_together_and_answers_in_the_callers_order() {
    use scan_gateway::persistence::conn::Target;
    use scan_gateway::persistence::keys;
    use scan_gateway::persistence::lbcounts::ApplyItem;
    use scan_gateway::persistence::Store;

    let redis = RedisServer::start();
    let store = Store::open(&Target::parse(&redis.url(), false).unwrap(), Duration::from_secs(5)).unwrap();
    let day = jiff::civil::date(2026, 11, 23);
    // KA/Mysuru, KA/Mandya, KA/Mysuru, ... : 8 facilities, counts 1..=8.
    let items: Vec<ApplyItem> =
        (0..8).map(|i| opd_item(day, i, if i % 2 == 0 { "KA/Mysuru" } else { "KA/Mandya" }, i as u64 + 1)).collect();
    let before = command_calls(&redis, "zincrby");
    let results = store.lb_apply(&items, 86_400, 86_400).await.unwrap();
    assert_eq!(results, (1..=8).map(|c| (0, c)).collect::<Vec<_>>(), "each item's own (before, after), in order");
    // Two calls of four, one district each. Per call and period (day, all-time): the state
    // once, the district once, each facility in five rankings (national kind and all kinds,
    // district, state kind and all kinds) and the two state rankings' totals once each:
    // 2 x (1 + 1 + 20 + 2) = 48. Listed alternately, each call would hold both districts:
    // 2 x (1 + 2 + 20 + 2) = 50.
    assert_eq!(command_calls(&redis, "zincrby") - before, 96);
    let mut c = redis.conn();
    let districts: Vec<(String, u64)> =
        c.zrange_withscores(keys::leaderboard("all", "opd", keys::LbScope::Districts), 0, -1).unwrap();
    assert_eq!(districts, vec![("KA/Mysuru".to_string(), 1 + 3 + 5 + 7), ("KA/Mandya".to_string(), 2 + 4 + 6 + 8)]);
    let states: Vec<(String, u64)> =
        c.zrange_withscores(keys::leaderboard(&day.to_string(), "opd", keys::LbScope::States), 0, -1).unwrap();
    assert_eq!(states, vec![("KA".to_string(), 36)]);
    // A second run adds nothing: the applied counts already match.
    let again = store.lb_apply(&items, 86_400, 86_400).await.unwrap();
    assert_eq!(again, (1..=8).map(|c| (c, c)).collect::<Vec<_>>());
    assert_eq!(command_calls(&redis, "zincrby") - before, 96);
}

/// The expiries of daily boards and applied hashes are set where a key may have just
/// been created (a new member, a new applied field), not on every application: raising
/// counts already on the boards runs no EXPIRE, and a board lost (data loss, say) and
/// created again by a later application still gets its expiry.
#[actix_web::test]
async fn an_application_sets_expiries_only_where_a_key_may_be_new_and_every_daily_key_has_one() {
    use scan_gateway::persistence::conn::Target;
    use scan_gateway::persistence::keys;
    use scan_gateway::persistence::lbcounts::ApplyItem;
    use scan_gateway::persistence::Store;

    let redis = RedisServer::start();
    let store = Store::open(&Target::parse(&redis.url(), false).unwrap(), Duration::from_secs(5)).unwrap();
    let day = jiff::civil::date(2026, 11, 23);
    let items = |count: u64| -> Vec<ApplyItem> {
        (0..3).map(|i| opd_item(day, i as usize, if i == 0 { "KA/Mysuru" } else { "KA/Mandya" }, count + i)).collect()
    };
    let daily_keys = || -> Vec<String> { redis.keys("lb:{lb}:2026-11-23:*").into_iter().collect() };
    let ttls_set = |what: &str| {
        let mut c = redis.conn();
        for k in daily_keys() {
            let ttl: i64 = c.ttl(&k).unwrap();
            let want = if k.ends_with(":ap") { 2 * 86_400 } else { 86_400 };
            assert!((want - 60..=want).contains(&ttl), "{what}: {k} expires after its retention: {ttl}");
        }
    };
    assert_eq!(store.lb_apply(&items(1), 86_400, 2 * 86_400).await.unwrap(), vec![(0, 1), (0, 2), (0, 3)]);
    assert_eq!(daily_keys().len(), 9, "the premise: 8 daily boards of two districts and the applied hash");
    ttls_set("first application");

    // Every member and applied field exists: raising them sets no expiry.
    let expires = command_calls(&redis, "expire");
    assert_eq!(store.lb_apply(&items(5), 86_400, 2 * 86_400).await.unwrap(), vec![(1, 5), (2, 6), (3, 7)]);
    assert_eq!(command_calls(&redis, "expire"), expires, "no EXPIRE for keys that existed");
    let mut c = redis.conn();
    let district: Vec<(String, u64)> =
        c.zrange_withscores(keys::leaderboard("2026-11-23", "opd", keys::LbScope::Districts), 0, -1).unwrap();
    assert_eq!(district, vec![("KA/Mysuru".to_string(), 5), ("KA/Mandya".to_string(), 13)], "still exact");

    // Boards and the applied hash lost, then applied again: each key comes back with its
    // expiry (the applied counts are gone, so the boards get the whole counts again).
    for k in daily_keys() {
        let _: () = c.del(&k).unwrap();
    }
    assert_eq!(store.lb_apply(&items(6), 86_400, 2 * 86_400).await.unwrap(), vec![(0, 6), (0, 7), (0, 8)]);
    assert_eq!(daily_keys().len(), 9);
    ttls_set("keys created again");
}

/// Every EVALSHA in Redis's SLOWLOG (logging everything), as its key arguments.
fn scripts_run(redis: &RedisServer) -> Vec<Vec<String>> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(&mut redis.conn()).unwrap();
    entries
        .into_iter()
        .filter_map(|e| {
            let redis::Value::Array(fields) = e else { return None };
            let args: Vec<String> = redis::from_redis_value(fields.get(3)?.clone()).ok()?;
            let (cmd, rest) = args.split_first()?;
            let n: usize = rest.get(1)?.parse().ok()?;
            cmd.eq_ignore_ascii_case("evalsha").then(|| rest.iter().skip(2).take(n).cloned().collect())
        })
        .collect()
}

/// An owner before this one counted pharmacy tokens that no board has yet (it stopped before
/// its applier ran) and the facility is not in the dirty set, so no sweep will look: only the
/// new owner can bring them to the boards, and a facility active here is left out of this
/// node's sweeps. Its activation's first write answers with every count of the facility,
/// so they are applied with the write's own, without a snapshot read of the facility.
#[actix_web::test]
async fn an_activation_applies_what_an_earlier_owner_counted_without_reading_it_again() {
    use scan_gateway::persistence::keys;

    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    register_all(&app).await;
    let f = fid(701); // OPD1 and Pharmacy, UP/Lucknow
    let day = jiff::civil::date(2026, 11, 23);
    let mut c = redis.conn();
    let _: () = c.hset(keys::lb_counts(&f), keys::lb_count_field(day, "pharmacy"), 3).unwrap();
    redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(0).exec(&mut c).unwrap();
    redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(100_000).exec(&mut c).unwrap();

    let (st, v) = app.scan(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(st, 201, "{v}");
    let q = |extra: &str| format!("/v1/leaderboards/facilities?date={START_DATE}&limit=10{extra}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pharmacy = rows(&board(&app, &q("&counter_kind=pharmacy")).await);
        let opd = rows(&board(&app, &q("&counter_kind=opd")).await);
        let all = rows(&board(&app, &q("")).await);
        let want = |n: u64| BTreeMap::from([(f.clone(), n)]);
        if pharmacy == want(3) && opd == want(1) && all == want(4) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the earlier owner's count never reached the boards: pharmacy {pharmacy:?}, opd {opd:?}, all {all:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot_keys = vec![keys::fence(&f), keys::lb_counts(&f), keys::info(&f)];
    let scripts = scripts_run(&redis);
    assert!(scripts.iter().any(|k| k.first() == Some(&keys::fence(&f))), "SLOWLOG saw the writes: {scripts:?}");
    assert!(!scripts.contains(&snapshot_keys), "no snapshot read of {f}: {scripts:?}");
}

/// (facility, tokens) the exact top `n` of `counts`: most tokens first, ties by id.
fn brute_top(counts: &BTreeMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = counts.iter().filter(|(_, t)| **t > 0).map(|(f, t)| (f.clone(), *t)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

fn ranked(v: &Value) -> Vec<(String, u64)> {
    v["rows"].as_array().unwrap().iter().map(|r| (s(r, "id").to_string(), num(r, "tokens"))).collect()
}

/// Rebuilds of a state ranking so far (nothing else merges into a stored set).
fn merges(redis: &RedisServer) -> u64 {
    command_calls(redis, "zunionstore")
}

/// Every command in Redis's SLOWLOG (logging everything), as its arguments.
fn commands_logged(redis: &RedisServer) -> Vec<Vec<String>> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(&mut redis.conn()).unwrap();
    entries
        .into_iter()
        .filter_map(|e| {
            let redis::Value::Array(fields) = e else { return None };
            redis::from_redis_value(fields.get(3)?.clone()).ok()
        })
        .collect()
}

/// A state's facility ranking is read from the state's own sorted set, top rows only, and
/// equals the brute-force top N (ties at the cut included), for one kind and all kinds,
/// for the day and all-time; boards applied without it (older data, an older node) are
/// merged into it once, and reads after that merge nothing.
#[actix_web::test]
async fn a_states_facility_ranking_is_the_exact_top_n_read_from_the_states_own_set() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    // 16 facilities in UP over 4 districts, 2 in Bihar; tokens chosen so that ties straddle
    // the cuts (5, 5, 5, 4, 4, 4, 4, 3, ...).
    let plan: Vec<(String, &str, &str, u64, u64)> = (0..18usize)
        .map(|i| {
            let (state, district) =
                if i < 16 { ("UP", ["Lucknow", "Agra", "Varanasi", "Kanpur"][i % 4]) } else { ("BR", "Patna") };
            let opd = [5u64, 5, 5, 4, 4, 4, 4, 3, 3, 2, 2, 2, 1, 1, 0, 1, 9, 9][i];
            let lab = [0u64, 1, 0, 2, 0, 1, 0, 3, 0, 0, 2, 1, 4, 0, 2, 0, 9, 0][i];
            (fid(800 + (i * 7) % 18), state, district, opd, lab)
        })
        .collect();
    let mut opd: BTreeMap<String, u64> = BTreeMap::new();
    let mut lab: BTreeMap<String, u64> = BTreeMap::new();
    let mut national: [BTreeMap<String, u64>; 3] = Default::default();
    let mut patient = 0;
    for (f, state, district, n_opd, n_lab) in &plan {
        let body = json!({"name": format!("Hospital {f}"), "state": state, "district": district,
            "counters": [{"id": "OPD1", "kind": "opd"}, {"id": "Lab", "kind": "lab"}]});
        let (st, v) = app.put_facility(f, &body).await;
        assert_eq!(st, 201, "{v}");
        for (counter, n) in [("OPD1", *n_opd), ("Lab", *n_lab)] {
            for _ in 0..n {
                patient += 1;
                app.scan_new(&scan_body(f, counter, patient)).await;
            }
        }
        national[0].insert(f.clone(), n_opd + n_lab);
        national[1].insert(f.clone(), *n_opd);
        national[2].insert(f.clone(), *n_lab);
        if *state == "UP" {
            opd.insert(f.clone(), *n_opd);
            lab.insert(f.clone(), *n_lab);
        }
    }
    let all: BTreeMap<String, u64> = opd.iter().map(|(f, n)| (f.clone(), n + lab[f])).collect();
    redis.settled_snapshot().await;
    // Log every command from here: no state query may name a district's facility ranking.
    let mut c = redis.conn();
    redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(0).exec(&mut c).unwrap();
    redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(100_000).exec(&mut c).unwrap();
    redis::cmd("SLOWLOG").arg("RESET").exec(&mut c).unwrap();

    let check = |date: &'static str| {
        let (app, opd, lab, all) = (&app, &opd, &lab, &all);
        async move {
            for (kind, counts) in [("all", all), ("opd", opd), ("lab", lab)] {
                for n in [1, 2, 3, 4, 5, 7, 8, 12, 1000] {
                    let v = board(
                        app,
                        &format!("/v1/leaderboards/facilities?state=UP&date={date}&counter_kind={kind}&limit={n}"),
                    )
                    .await;
                    assert_eq!(ranked(&v), brute_top(counts, n), "{date} {kind} top {n}");
                    assert_eq!(num(&v, "total"), counts.values().sum::<u64>(), "{date} {kind} total");
                    rows(&v);
                }
            }
        }
    };
    check(START_DATE).await;
    check("all").await;
    // The national facility rankings are exact at the cut as well.
    for (kind, counts) in ["all", "opd", "lab"].into_iter().zip(&national) {
        for n in [1, 2, 3, 4, 5, 7, 8, 12, 1000] {
            let v = board(&app, &format!("/v1/leaderboards/facilities?counter_kind={kind}&limit={n}")).await;
            assert_eq!(ranked(&v), brute_top(counts, n), "national {kind} top {n}");
        }
    }
    // The state's own rankings exist (fed by the applier) and were complete: no read merged,
    // and no command read a district's facilities (what every state query used to merge).
    let logged = commands_logged(&redis);
    assert!(logged.len() > 100, "SLOWLOG saw the reads: {logged:?}");
    // (The applier's scripts name them too, but it has nothing left to apply here.)
    let merged: Vec<&Vec<String>> = logged
        .iter()
        .filter(|args| !args[0].eq_ignore_ascii_case("evalsha") && args.iter().any(|a| a.contains(":f:d:UP/")))
        .collect();
    assert!(merged.is_empty(), "state queries read district rankings: {merged:?}");
    let day_set = format!("lb:{{lb}}:{START_DATE}:all:f:s:UP");
    let score: Option<f64> = c.zscore(&day_set, fid(800)).unwrap();
    assert_eq!(score.map(|s| s as u64), Some(all[&fid(800)]));
    assert_eq!(merges(&redis), 0, "a state query merged district rankings");

    // Boards applied before the state rankings existed: they are merged in, once.
    let state_sets: Vec<String> = redis.keys("lb:{lb}:*:f:s:UP").into_iter().collect();
    assert_eq!(state_sets.len(), 3 * 2, "opd, lab and all kinds, per day and all-time: {state_sets:?}");
    let _: () = c.del(&state_sets).unwrap();
    check(START_DATE).await;
    check("all").await;
    assert_eq!(merges(&redis), 6, "each missing state ranking is rebuilt once");
    check("all").await;
    assert_eq!(merges(&redis), 6, "and read without merging afterwards");

    // An older node applies a count the way it did: district, facility and state rankings
    // but not the state's own. The next read sees the state's tokens disagree and rebuilds.
    let f = fid(800 + (13 * 7) % 18);
    for key in
        [format!("lb:{{lb}}:all:lab:f:d:UP/{}", plan.iter().find(|p| p.0 == f).unwrap().2), "lb:{lb}:all:all:f".into()]
    {
        let _: f64 = c.zincr(&key, &f, 10).unwrap();
    }
    let _: f64 = c.zincr("lb:{lb}:all:lab:s", "UP", 10).unwrap();
    let (mut lab, mut all) = (lab.clone(), all.clone());
    *lab.get_mut(&f).unwrap() += 10;
    *all.get_mut(&f).unwrap() += 10;
    for (kind, counts) in [("lab", &lab), ("all", &all)] {
        let v =
            board(&app, &format!("/v1/leaderboards/facilities?state=UP&date=all&counter_kind={kind}&limit=3")).await;
        assert_eq!(ranked(&v), brute_top(counts, 3), "{kind} after an older node's apply");
        assert_eq!(num(&v, "total"), counts.values().sum::<u64>());
    }
    assert_eq!(merges(&redis), 8, "the lab and all-kinds state rankings were rebuilt");
}
