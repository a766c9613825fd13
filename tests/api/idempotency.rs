//! Retries and redeliveries (issue 34): an Idempotency-Key or share request id answered as a
//! repeat is kept (across passivation and a restart too), replays and repeats do not spend
//! the patient limit, and the priority streak survives a passivation as it really was.
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::protocol::{for_request, jwt, protocol_settings, v3_body, Hiecm, ISSUER, KEY1};

fn with_idle_timeout(redis: &RedisServer, idle_s: u64) -> scan_gateway::config::Settings {
    let mut s = scan_gateway::config::Settings::for_tests(&redis.url());
    s.idle_timeout_s = idle_s;
    s
}

async fn passivated(app: &TestApp) {
    let active = &app.active_facilities;
    eventually(Duration::from_secs(10), "the idle facility actor is passivated", || {
        let n = active();
        async move { n == 0 }
    })
    .await;
}

/// Calls the patient's token at OPD1 and completes it.
async fn call_and_complete(app: &TestApp, f: &str, staff: &str, token: &Value) {
    let (st, called) = app.call_next(f, "OPD1", staff).await;
    assert_eq!((st, &called["token_id"]), (200, &token["token_id"]), "{called}");
    let (st, done) = app.token_op(s(token, "token_id"), "complete", staff).await;
    assert_eq!((st, s(&done, "status")), (200, "completed"), "{done}");
}

/// A resend of `key` answers the first token again, now completed, as the repeat it was.
async fn assert_repeat_key_replays(app: &TestApp, body: &Value, key: &str, first: &Value, when: &str) {
    let (st, again) = app.scan_with_idem(body, key).await;
    assert_eq!(st, 200, "{when}: a key first answered as a repeat answers as that repeat again: {again}");
    assert_scan_reply(st, &again);
    assert_eq!(again["token_id"], first["token_id"], "{when}: {again}");
    assert_eq!(again["status"], "completed", "{when}: {again}");
}

#[actix_web::test]
async fn a_key_answered_as_a_repeat_answers_that_token_again_after_it_completes() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(340);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let body = scan_body(&f, "OPD1", 1);

    let (st, first) = app.scan_with_idem(&body, "k1").await;
    assert_eq!((st, num(&first, "token_number")), (201, 1), "{first}");
    let (st, repeat) = app.scan_with_idem(&body, "k2").await;
    assert_eq!((st, &repeat["token_id"], &repeat["repeat"]), (200, &first["token_id"], &Value::Bool(true)), "{repeat}");
    // The repeat key replays while the token is live too.
    let (st, live) = app.scan_with_idem(&body, "k2").await;
    assert_eq!((st, &live["token_id"]), (200, &first["token_id"]), "{live}");

    call_and_complete(&app, &f, &staff, &first).await;
    assert_repeat_key_replays(&app, &body, "k2", &first, "after completion").await;
    let (st, replay) = app.scan_with_idem(&body, "k1").await;
    assert_eq!((st, &replay["token_id"]), (201, &first["token_id"]), "the first key still replays: {replay}");

    // The repeat key is still bound to its request: another patient with it is refused.
    let (st, err) = app.scan_with_idem(&scan_body(&f, "OPD1", 2), "k2").await;
    assert_error(st, &err, 422, "IDEMPOTENCY_KEY_REUSED");
    // Nothing above issued a token: a new scan of the patient is number 2.
    let (st, next) = app.scan_with_idem(&body, "k3").await;
    assert_eq!((st, num(&next, "token_number")), (201, 2), "{next}");
}

#[actix_web::test]
async fn a_repeat_key_survives_passivation_and_a_restart() {
    let redis = RedisServer::start();
    let mut app = TestApp::spawn_with(with_idle_timeout(&redis, 1), TestApp::clock_at(START)).await;
    let f = fid(341);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let body = scan_body(&f, "OPD1", 1);

    let (st, first) = app.scan_with_idem(&body, "k1").await;
    assert_eq!(st, 201, "{first}");
    let (st, repeat) = app.scan_with_idem(&body, "k2").await;
    assert_eq!((st, &repeat["token_id"]), (200, &first["token_id"]), "{repeat}");
    // Passivated while the token is live: the next activation must know k2 from Redis.
    passivated(&app).await;
    call_and_complete(&app, &f, &staff, &first).await;
    // And again once it is finished (a finished token is known only by its record).
    passivated(&app).await;
    assert_repeat_key_replays(&app, &body, "k2", &first, "after passivation").await;

    // A takeover: another instance on the same Redis.
    app.stop().await;
    let mut app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    assert_repeat_key_replays(&app, &body, "k2", &first, "after a restart").await;
    let next = app.scan_new(&body).await;
    assert_eq!(num(&next, "token_number"), 2, "{next}");
    app.stop().await;
}

fn token_number(cb: &crate::protocol::Callback) -> &str {
    cb.body["acknowledgement"]["profile"]["tokenNumber"].as_str().unwrap_or_else(|| panic!("a token: {}", cb.body))
}

#[actix_web::test]
async fn a_share_redelivered_after_it_was_answered_as_a_repeat_gets_the_same_token() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.idle_timeout_s = 1;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(342);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 3600, ISSUER);
    let share = v3_body(&f, "OPD1", 1);

    let (st, _, rid1) = app.share_v3(&bearer, &share, None).await;
    assert_eq!(st, 202);
    hiecm.wait_for(1, "the first on-share").await;
    let (st, _, rid2) = app.share_v3(&bearer, &share, None).await;
    assert_eq!(st, 202);
    let cbs = hiecm.wait_for(2, "the repeat's on-share").await;
    assert_eq!(token_number(for_request(&cbs, &rid1)[0]), "1");
    assert_eq!(token_number(for_request(&cbs, &rid2)[0]), "1");

    let (_, first) = app.scan(&scan_body(&f, "OPD1", 1)).await;
    call_and_complete(&app, &f, &staff, &first).await;
    // The switch redelivers the second share: the same token, not a new one.
    app.share_v3(&bearer, &share, Some(&rid2)).await;
    let cbs = hiecm.wait_for(3, "the redelivery's on-share").await;
    assert_eq!(for_request(&cbs, &rid2).iter().map(|c| token_number(c)).collect::<Vec<_>>(), ["1", "1"]);
    // And after the facility passivated.
    passivated(&app).await;
    app.share_v3(&bearer, &share, Some(&rid2)).await;
    let cbs = hiecm.wait_for(4, "the redelivery's on-share after passivation").await;
    assert_eq!(for_request(&cbs, &rid2).iter().map(|c| token_number(c)).collect::<Vec<_>>(), ["1", "1", "1"]);
    let stored: u64 = redis::Commands::hlen(&mut redis.conn(), format!("sg:{{{f}}}:d:{START_DATE}:t")).unwrap();
    assert_eq!(stored, 1, "one token, however often the shares came");
}

fn patient_limited(redis: &RedisServer, per_min: u32) -> scan_gateway::config::Settings {
    let mut s = scan_gateway::config::Settings::for_tests(&redis.url());
    s.limit_patient_per_min = per_min;
    s
}

#[actix_web::test]
async fn replays_and_repeats_do_not_spend_the_patient_limit_but_new_tokens_do() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(patient_limited(&redis, 2), TestApp::clock_at(START)).await;
    let f = fid(343);
    app.register(&f).await;
    let body = scan_body(&f, "OPD1", 1);
    let (st, first) = app.scan_with_idem(&body, "k1").await;
    assert_eq!(st, 201, "{first}");
    for i in 0..5 {
        let (st, v) = app.scan_with_idem(&body, "k1").await;
        assert_eq!((st, &v["token_id"]), (201, &first["token_id"]), "replay {i}: {v}");
        let (st, v) = app.scan(&body).await;
        assert_eq!((st, &v["token_id"]), (200, &first["token_id"]), "repeat {i}: {v}");
        let (st, v) = app.scan_with_idem(&body, &format!("repeat-{i}")).await;
        assert_eq!((st, &v["token_id"]), (200, &first["token_id"]), "keyed repeat {i}: {v}");
    }
    // The limit still holds for new tokens: the second is allowed, the third refused.
    app.scan_new(&scan_body(&f, "OPD2", 1)).await;
    let before = redis.settled_snapshot().await;
    let r = app.scan_resp(&scan_body(&f, "Pharmacy", 1)).await;
    assert_error(r.status, &r.body, 429, "RATE_LIMITED_PATIENT");
    assert_eq!(r.header("ratelimit-limit").as_deref(), Some("2"));
    assert!(r.header("retry-after").is_some());
    assert_same_store(&before, &redis.settled_snapshot().await, "a refused scan stores nothing");
    // Replays and repeats still answer once the patient is over the limit.
    let (st, v) = app.scan_with_idem(&body, "k1").await;
    assert_eq!((st, &v["token_id"]), (201, &first["token_id"]), "{v}");
    let (st, v) = app.scan(&body).await;
    assert_eq!((st, &v["token_id"]), (200, &first["token_id"]), "{v}");
}

fn outcome(cb: &crate::protocol::Callback) -> String {
    let b = &cb.body;
    match b["acknowledgement"]["status"].as_str() {
        Some("SUCCESS") => format!("SUCCESS {}", token_number(cb)),
        // Our code leads the message (error.code is the switch's generic one).
        _ => b["error"]["message"].as_str().and_then(|m| m.split(':').next()).unwrap_or("").to_string(),
    }
}

#[actix_web::test]
async fn redelivered_shares_do_not_spend_the_patient_limit_but_new_shares_do() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.limit_patient_per_min = 2;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(344);
    app.register(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 3600, ISSUER);
    let share = v3_body(&f, "OPD1", 1);

    let (_, _, rid) = app.share_v3(&bearer, &share, None).await;
    hiecm.wait_for(1, "the first on-share").await;
    for n in 2..=6 {
        app.share_v3(&bearer, &share, Some(&rid)).await;
        hiecm.wait_for(n, "a redelivery's on-share").await;
    }
    let cbs = hiecm.rec.delivered();
    let got: Vec<String> = for_request(&cbs, &rid).into_iter().map(outcome).collect();
    assert_eq!(got, vec!["SUCCESS 1"; 6], "every delivery of the request id answers the same token");

    // New tokens are still limited: the second is allowed, the third refused.
    let (_, _, opd2) = app.share_v3(&bearer, &v3_body(&f, "OPD2", 1), None).await;
    hiecm.wait_for(7, "the OPD2 on-share").await;
    let (_, _, pharmacy) = app.share_v3(&bearer, &v3_body(&f, "Pharmacy", 1), None).await;
    hiecm.wait_for(8, "the Pharmacy on-share").await;
    app.share_v3(&bearer, &share, Some(&rid)).await;
    let cbs = hiecm.wait_for(9, "a redelivery over the limit").await;
    assert_eq!(outcome(for_request(&cbs, &opd2)[0]), "SUCCESS 1");
    assert_eq!(outcome(for_request(&cbs, &pharmacy)[0]), "RATE_LIMITED");
    assert_eq!(outcome(for_request(&cbs, &rid)[6]), "SUCCESS 1", "a redelivery over the limit still answers");
}

/// The facility limit of a share is charged only for a new token too: the share was
/// accepted 202 before its scan ran, so a redelivery must answer its token, never a
/// RATE_LIMITED on-share after an earlier SUCCESS.
#[actix_web::test]
async fn redelivered_shares_do_not_spend_the_facility_limit_but_new_shares_do() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.limit_facility_per_min = 2;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(345);
    app.register(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 3600, ISSUER);

    let (_, _, rid) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), None).await;
    hiecm.wait_for(1, "the first on-share").await;
    for n in 2..=4 {
        app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), Some(&rid)).await;
        hiecm.wait_for(n, "a redelivery's on-share").await;
    }
    // Two new tokens a minute: the second patient's is allowed, the third's refused.
    let (_, _, second) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 2), None).await;
    hiecm.wait_for(5, "the second patient's on-share").await;
    let (_, _, third) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 3), None).await;
    hiecm.wait_for(6, "the third patient's on-share").await;
    app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), Some(&rid)).await;
    let cbs = hiecm.wait_for(7, "a redelivery over the facility limit").await;
    let got: Vec<String> = for_request(&cbs, &rid).into_iter().map(outcome).collect();
    assert_eq!(got, vec!["SUCCESS 1"; 5], "every delivery of the request id answers the same token");
    assert_eq!(outcome(for_request(&cbs, &second)[0]), "SUCCESS 2");
    assert_eq!(outcome(for_request(&cbs, &third)[0]), "RATE_LIMITED", "a new token over the limit is refused");
}

/// P1-P3 priority and N1, N2 normal at OPD1; the guard calls P1, P2, P3, N1; N1 is then
/// transferred away (into OPD2's priority lane) and P4-P7 arrive. Returns the call order of
/// what is left, with a passivation before it when asked.
async fn streak_after_a_transferred_normal_call(app: &TestApp, f: &str, passivate: bool) -> Vec<String> {
    app.register(f).await;
    let (_, staff) = app.create_staff_key(f).await;
    let kinds = ["elderly", "disabled", "pregnant"];
    let prio = |i: usize| scan_body_prio(f, "OPD1", 10 + i, kinds[i % 3]);
    for i in 1..=3 {
        app.scan_new(&prio(i)).await;
    }
    let n1 = app.scan_new(&scan_body(f, "OPD1", 1)).await;
    app.scan_new(&scan_body(f, "OPD1", 2)).await;
    let mut first = Vec::new();
    for _ in 0..4 {
        // Calls a second apart, as staff make them.
        app.clock.advance(Duration::from_secs(1));
        let (st, v) = app.call_next(f, "OPD1", &staff).await;
        assert_eq!(st, 200, "{v}");
        first.push(s(&v, "display").to_string());
    }
    assert_eq!(first, ["OPD1-001", "OPD1-002", "OPD1-003", "OPD1-004"], "P1, P2, P3, then N1 by the guard");
    let (st, v) = app.transfer(s(&n1, "token_id"), "OPD2", &staff).await;
    assert_eq!(st, 200, "{v}");
    for i in 4..=7 {
        app.scan_new(&prio(i)).await;
    }
    if passivate {
        passivated(app).await;
    }
    let mut order = Vec::new();
    loop {
        app.clock.advance(Duration::from_secs(1));
        let (st, v) = app.call_next(f, "OPD1", &staff).await;
        if st == 204 {
            return order;
        }
        assert_eq!(st, 200, "{v}");
        order.push(s(&v, "display").to_string());
    }
}

#[actix_web::test]
async fn the_priority_guard_fires_at_the_same_point_after_a_passivation() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(with_idle_timeout(&redis, 1), TestApp::clock_at(START)).await;
    let live = streak_after_a_transferred_normal_call(&app, &fid(345), false).await;
    // N1's call reset the streak: three priority calls (P4-P6) before the guard calls N2.
    let want = ["OPD1-006", "OPD1-007", "OPD1-008", "OPD1-005", "OPD1-009"];
    assert_eq!(live, want, "without passivation");
    let restored = streak_after_a_transferred_normal_call(&app, &fid(346), true).await;
    assert_eq!(restored, want, "after a passivation the guard fires at the same point");
}
