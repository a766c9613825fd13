//! Scans: numbering under concurrency, repeat detection, Idempotency-Key, expiry, rollover.
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn thousand_concurrent_scans_over_fifty_facilities_number_each_counter_contiguously() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    join_all((0..50).map(|f| {
        let app = &app;
        async move { app.register(&fid(f)).await }
    }))
    .await;

    let counters = ["OPD1", "Pharmacy"];
    let replies = join_all((0..1000usize).map(|i| {
        let app = &app;
        async move {
            let facility = fid(i % 50);
            let counter = counters[(i / 50) % 2];
            let (st, v) = app.scan(&scan_body(&facility, counter, i)).await;
            (i, facility, counter, st, v)
        }
    }))
    .await;

    let mut per_counter: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for (i, facility, counter, st, v) in &replies {
        assert_eq!(*st, 201, "scan {i} at {facility}/{counter}: {v}");
        assert_scan_reply(*st, v);
        assert_eq!(s(v, "facility_id"), facility);
        assert_eq!(s(v, "counter_id"), *counter);
        assert_eq!(s(v, "status"), "waiting");
        assert_eq!(s(v, "service_date"), START_DATE);
        let n = num(v, "token_number");
        assert_eq!(s(v, "display"), format!("{counter}-{n:03}"));
        assert!(ids.insert(s(v, "token_id").to_string()), "token_id reused: {v}");
        per_counter.entry((facility.clone(), counter.to_string())).or_default().push(n);
    }
    assert_eq!(per_counter.len(), 100, "50 facilities x 2 counters");
    for ((f, c), mut numbers) in per_counter {
        numbers.sort_unstable();
        let want: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, want, "numbers at {f}/{c} must be exactly 1..n, no gap and no duplicate");
        assert_eq!(want.len(), 10);
    }

    // A sample read back agrees with what the scan acknowledged.
    for (_, _, _, _, v) in replies.iter().step_by(97) {
        let (st, got) = app.get_token(s(v, "token_id"), &app.platform).await;
        assert_eq!(st, 200, "{got}");
        assert_token_view(&got);
        assert_eq!(got["token_number"], v["token_number"]);
        assert_eq!(got["display"], v["display"]);
        assert_eq!(got["status"], "waiting");
    }
}

#[actix_web::test]
async fn repeat_scan_by_abha_address_or_abha_number_returns_the_same_token() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(1);
    app.register(&f).await;

    let first = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(num(&first, "token_number"), 1);
    assert_eq!(first["repeat"], false);

    // Same ABHA address, the rest of the profile changed (and no ABHA number given).
    let mut by_address = scan_body(&f, "OPD1", 1);
    by_address["patient"]["name"] = json!("Ravi Changedname");
    by_address["patient"].as_object_mut().unwrap().remove("abha_number");
    let (st, again) = app.scan(&by_address).await;
    assert_eq!(st, 200, "repeat by abha_address: {again}");
    assert_scan_reply(st, &again);
    assert_eq!(again["repeat"], true);
    assert_eq!(again["token_id"], first["token_id"]);
    assert_eq!(again["token_number"], first["token_number"]);
    assert_eq!(again["display"], first["display"]);

    // Same ABHA number under a different ABHA address.
    let mut by_number = scan_body(&f, "OPD1", 1);
    by_number["patient"]["abha_address"] = json!("otheraddress77@abdm");
    let (st, again) = app.scan(&by_number).await;
    assert_eq!(st, 200, "repeat by abha_number: {again}");
    assert_eq!(again["repeat"], true);
    assert_eq!(again["token_id"], first["token_id"]);

    // ABHA number written without dashes is the same number.
    let mut plain_number = scan_body(&f, "OPD1", 1);
    plain_number["patient"]["abha_address"] = json!("thirdaddress88@abdm");
    plain_number["patient"]["abha_number"] = json!(abha_number(1).replace('-', ""));
    let (st, again) = app.scan(&plain_number).await;
    assert_eq!(st, 200, "repeat by undashed abha_number: {again}");
    assert_eq!(again["token_id"], first["token_id"]);

    // A different patient gets the next number; the repeats consumed none.
    let second = app.scan_new(&scan_body(&f, "OPD1", 2)).await;
    assert_eq!(num(&second, "token_number"), 2);

    // The same patient at another counter is a different queue: a new token there.
    let other_counter = app.scan_new(&scan_body(&f, "Pharmacy", 1)).await;
    assert_eq!(num(&other_counter, "token_number"), 1);
    assert_ne!(other_counter["token_id"], first["token_id"]);

    // The same patient at another facility: also new.
    let g = fid(2);
    app.register(&g).await;
    let elsewhere = app.scan_new(&scan_body(&g, "OPD1", 1)).await;
    assert_eq!(num(&elsewhere, "token_number"), 1);

    // While called the token is still returned; once completed a new scan is a new token.
    let (_, staff) = app.create_staff_key(&f).await;
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 200, "{called}");
    assert_eq!(called["token_id"], first["token_id"]);
    let (st, again) = app.scan(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(st, 200, "repeat while called: {again}");
    assert_eq!(again["token_id"], first["token_id"]);
    assert_eq!(again["status"], "called");
    let (st, done) = app.token_op(s(&first, "token_id"), "complete", &staff).await;
    assert_eq!(st, 200, "{done}");
    let after = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!(num(&after, "token_number"), 3, "a finished token is not repeated: {after}");
}

#[actix_web::test]
async fn idempotency_key_replays_the_first_response_and_refuses_reuse_with_another_body() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(3);
    app.register(&f).await;

    let body = scan_body(&f, "OPD1", 10);
    let (st, first) = app.scan_with_idem(&body, "req-7f3a9c").await;
    assert_eq!(st, 201, "{first}");
    assert_scan_reply(st, &first);

    for _ in 0..2 {
        let (st, replay) = app.scan_with_idem(&body, "req-7f3a9c").await;
        assert_eq!(st, 201, "a replay returns the original status: {replay}");
        assert_eq!(replay["repeat"], false, "a replay is the first response again: {replay}");
        assert_eq!(replay["token_id"], first["token_id"]);
        assert_eq!(replay["token_number"], first["token_number"]);
        assert_eq!(replay["issued_at"], first["issued_at"]);
    }

    // Same key, different patient.
    let (st, err) = app.scan_with_idem(&scan_body(&f, "OPD1", 11), "req-7f3a9c").await;
    assert_error(st, &err, 422, "IDEMPOTENCY_KEY_REUSED");
    assert!(!err.to_string().contains(&abha_address(11)), "error echoes patient data: {err}");
    // Same key, same patient, different counter.
    let (st, err) = app.scan_with_idem(&scan_body(&f, "OPD2", 10), "req-7f3a9c").await;
    assert_error(st, &err, 422, "IDEMPOTENCY_KEY_REUSED");

    // Neither refused request consumed a number or created a token.
    let next = app.scan_new(&scan_body(&f, "OPD1", 12)).await;
    assert_eq!(num(&next, "token_number"), 2, "{next}");
    let opd2 = app.scan_new(&scan_body(&f, "OPD2", 13)).await;
    assert_eq!(num(&opd2, "token_number"), 1, "{opd2}");

    // Keys are per facility: the same key at another facility is a different request.
    let g = fid(30);
    app.register(&g).await;
    let (st, elsewhere) = app.scan_with_idem(&scan_body(&g, "OPD1", 15), "req-7f3a9c").await;
    assert_eq!(st, 201, "same key at another facility: {elsewhere}");
    assert_eq!(s(&elsewhere, "facility_id"), g);
    assert_ne!(elsewhere["token_id"], first["token_id"]);

    // A new key with a new patient is an ordinary new scan.
    let (st, other) = app.scan_with_idem(&scan_body(&f, "OPD1", 14), "req-other").await;
    assert_eq!(st, 201, "{other}");
    assert_eq!(num(&other, "token_number"), 3);
}

#[actix_web::test]
async fn waiting_token_expires_after_its_validity_and_a_rescan_gets_a_new_number() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let app = TestApp::spawn(&redis, clock.clone()).await;
    let f = fid(4);
    app.register(&f).await;

    let first = app.scan_new(&scan_body(&f, "OPD1", 20)).await;
    let validity = ts(&first["expires_at"]).duration_since(ts(&first["issued_at"]));
    assert_eq!(validity.as_secs(), 1800, "default validity is 30 minutes: {first}");
    assert_eq!(ts(&first["issued_at"]), START.parse::<jiff::Timestamp>().unwrap(), "issued_at comes from the clock");

    // 29 minutes: still valid, still the same token.
    clock.advance(Duration::from_secs(29 * 60));
    let (st, again) = app.scan(&scan_body(&f, "OPD1", 20)).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["token_id"], first["token_id"]);

    // 31 minutes: expired, visible on GET.
    clock.advance(Duration::from_secs(2 * 60));
    let (st, view) = app.get_token(s(&first, "token_id"), &app.platform).await;
    assert_eq!(st, 200, "{view}");
    assert_eq!(view["status"], "expired", "{view}");

    // The same patient now gets a new token with the next number.
    let (st, fresh) = app.scan(&scan_body(&f, "OPD1", 20)).await;
    assert_eq!(st, 201, "{fresh}");
    assert_scan_reply(st, &fresh);
    assert_eq!(fresh["repeat"], false);
    assert_ne!(fresh["token_id"], first["token_id"]);
    assert_eq!(num(&fresh, "token_number"), 2);
    assert_eq!(fresh["status"], "waiting");

    // An expired token is not called.
    let (_, staff) = app.create_staff_key(&f).await;
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 200, "{called}");
    assert_eq!(called["token_id"], fresh["token_id"], "call-next must skip the expired token");

    // Facility-specific validity.
    let g = fid(5);
    let mut body = standard_facility(&g);
    body["token_validity_s"] = json!(120);
    let (st, fac) = app.put_facility(&g, &body).await;
    assert_eq!(st, 201, "{fac}");
    let short = app.scan_new(&scan_body(&g, "OPD1", 21)).await;
    assert_eq!(ts(&short["expires_at"]).duration_since(ts(&short["issued_at"])).as_secs(), 120, "{short}");
    clock.advance(Duration::from_secs(121));
    let (_, view) = app.get_token(s(&short, "token_id"), &app.platform).await;
    assert_eq!(view["status"], "expired", "{view}");
    let (st, renewed) = app.scan(&scan_body(&g, "OPD1", 21)).await;
    assert_eq!(st, 201, "{renewed}");
    assert_eq!(num(&renewed, "token_number"), 2);
}

#[actix_web::test]
async fn numbering_restarts_at_one_after_local_midnight() {
    let redis = RedisServer::start();
    // 23:59 IST on 2026-11-23.
    let clock = TestApp::clock_at("2026-11-23T18:29:00Z");
    let app = TestApp::spawn(&redis, clock.clone()).await;
    let f = fid(6);
    app.register(&f).await;
    // The same facility shape on UTC: its day does not end at IST midnight.
    let u = fid(7);
    let mut body = standard_facility(&u);
    body["timezone"] = json!("UTC");
    let (st, fac) = app.put_facility(&u, &body).await;
    assert_eq!(st, 201, "{fac}");
    assert_eq!(fac["timezone"], "UTC");

    let mut yesterday = Vec::new();
    for i in 0..3 {
        let v = app.scan_new(&scan_body(&f, "OPD1", 30 + i)).await;
        yesterday.push(v.clone());
        assert_eq!(num(&v, "token_number"), i as u64 + 1);
        assert_eq!(s(&v, "service_date"), "2026-11-23");
        let w = app.scan_new(&scan_body(&u, "OPD1", 40 + i)).await;
        assert_eq!(num(&w, "token_number"), i as u64 + 1);
        assert_eq!(s(&w, "service_date"), "2026-11-23");
    }

    // 00:01 IST on the 24th (18:31 UTC on the 23rd).
    clock.advance(Duration::from_secs(120));
    let v = app.scan_new(&scan_body(&f, "OPD1", 33)).await;
    assert_eq!(num(&v, "token_number"), 1, "a new local day starts at 1: {v}");
    assert_eq!(s(&v, "service_date"), "2026-11-24");
    assert_eq!(s(&v, "display"), "OPD1-001");
    let v2 = app.scan_new(&scan_body(&f, "OPD1", 34)).await;
    assert_eq!(num(&v2, "token_number"), 2);

    // Tokens of the day before are still readable, unchanged.
    for t in &yesterday {
        let (st, v) = app.get_token(s(t, "token_id"), &app.platform).await;
        assert_eq!(st, 200, "yesterday's token after midnight: {v}");
        assert_eq!(v["token_number"], t["token_number"]);
        assert_eq!(v["service_date"], "2026-11-23");
    }

    let w = app.scan_new(&scan_body(&u, "OPD1", 43)).await;
    assert_eq!(num(&w, "token_number"), 4, "UTC facility is still on the 23rd: {w}");
    assert_eq!(s(&w, "service_date"), "2026-11-23");
}

#[actix_web::test]
async fn unknown_facility_counter_and_token_are_404_and_store_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(8);
    app.register(&f).await;
    // Activate the facility with a scan at another counter, then freeze the store.
    let pharmacy = app.scan_new(&scan_body(&f, "Pharmacy", 49)).await;
    assert_eq!(num(&pharmacy, "token_number"), 1);
    let before = redis.settled_snapshot().await;

    let (st, err) = app.scan(&scan_body("IN0499999999", "OPD1", 50)).await;
    assert_error(st, &err, 404, "UNKNOWN_FACILITY");
    assert!(!err.to_string().contains(&abha_address(50)), "{err}");
    let (st, err) = app.scan(&scan_body(&f, "Radiology", 50)).await;
    assert_error(st, &err, 404, "UNKNOWN_COUNTER");
    assert!(!err.to_string().contains(&abha_address(50)), "{err}");
    let (st, err) = app.get_token("no-such-token", &app.platform).await;
    assert_error(st, &err, 404, "UNKNOWN_TOKEN");
    let (st, err) = app.get_token("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &app.platform).await;
    assert_error(st, &err, 404, "UNKNOWN_TOKEN");
    let (st, err) = app.get_facility("IN0499999999").await;
    assert_error(st, &err, 404, "UNKNOWN_FACILITY");

    let after = redis.settled_snapshot().await;
    assert_same_store(&before, &after, "404 requests must store nothing");

    // The valid counter still starts at 1.
    let v = app.scan_new(&scan_body(&f, "OPD1", 50)).await;
    assert_eq!(num(&v, "token_number"), 1);
}

#[actix_web::test]
async fn scan_and_token_routes_enforce_roles() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(9);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let body = scan_body(&f, "OPD1", 60);

    let r = app.req("POST", "/v1/scans", None, Some(&body), &[]).await;
    assert_error(r.status, &r.body, 401, "UNAUTHORIZED");
    let r = app.req("POST", "/v1/scans", Some("not-a-real-token-at-all"), Some(&body), &[]).await;
    assert_error(r.status, &r.body, 401, "UNAUTHORIZED");
    let r = app.req("POST", "/v1/scans", Some(&app.admin), Some(&body), &[]).await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
    let r = app.req("POST", "/v1/scans", Some(&staff), Some(&body), &[]).await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
    let r = app
        .raw(
            "POST",
            "/v1/scans",
            None,
            Some("application/json"),
            Some(serde_json::to_vec(&body).unwrap()),
            &[("Authorization", &format!("Basic {}", app.platform))],
        )
        .await;
    assert_error(r.status, &r.body, 401, "UNAUTHORIZED");

    // None of the refused scans took a number.
    let v = app.scan_new(&body).await;
    assert_eq!(num(&v, "token_number"), 1);
    let id = s(&v, "token_id");

    // Token reads: platform without patient, staff of the facility with patient.
    let (st, pv) = app.get_token(id, &app.platform).await;
    assert_eq!(st, 200, "{pv}");
    assert!(pv.get("patient").is_none(), "platform must not see patient data: {pv}");
    let (st, sv) = app.get_token(id, &staff).await;
    assert_eq!(st, 200, "{sv}");
    assert_eq!(sv["patient"]["abha_address"], abha_address(60), "{sv}");
    let r = app.req("GET", &format!("/v1/tokens/{id}"), None, None, &[]).await;
    assert_error(r.status, &r.body, 401, "UNAUTHORIZED");
    let (st, err) = app.get_token(id, &app.admin).await;
    assert_error(st, &err, 403, "FORBIDDEN");
}

#[actix_web::test]
async fn finished_tokens_answer_from_redis_for_reads_replays_and_refused_actions() {
    // A finished token leaves the actor's memory once its change is written; every answer
    // about it must still be the stored truth, before and after a re-activation.
    let redis = RedisServer::start();
    let mut app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(4);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let body = scan_body(&f, "OPD1", 40);
    let (st, first) = app.scan_with_idem(&body, "req-done-40").await;
    assert_eq!(st, 201, "{first}");
    let id = s(&first, "token_id").to_string();
    app.scan_new(&scan_body(&f, "OPD1", 41)).await;
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!((st, &called["token_id"]), (200, &first["token_id"]), "{called}");
    let (st, done) = app.token_op(&id, "complete", &staff).await;
    assert_eq!(st, 200, "{done}");

    for round in ["same actor", "after a restart"] {
        let (st, got) = app.get_token(&id, &staff).await;
        assert_eq!(st, 200, "{round}: {got}");
        assert_token_view(&got);
        assert_eq!(s(&got, "status"), "completed", "{round}: {got}");
        let events: Vec<&str> =
            got["history"].as_array().unwrap().iter().map(|h| h["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["issued", "called", "completed"], "{round}");
        assert_eq!(got["completed_at"], done["completed_at"], "{round}");
        assert_eq!(got["patient"]["abha_address"], abha_address(40), "{round}: staff see the patient");

        let (st, replay) = app.scan_with_idem(&body, "req-done-40").await;
        assert_eq!(st, 201, "{round}: a replay of a finished token: {replay}");
        assert_eq!(replay["token_id"], first["token_id"], "{round}");
        assert_eq!(replay["issued_at"], first["issued_at"], "{round}");
        assert_eq!(s(&replay, "status"), "completed", "{round}");
        let (st, err) = app.scan_with_idem(&scan_body(&f, "OPD1", 42), "req-done-40").await;
        assert_error(st, &err, 422, "IDEMPOTENCY_KEY_REUSED");
        assert!(!err.to_string().contains(&abha_address(42)), "error echoes patient data: {err}");

        for op in ["recall", "complete", "no-show"] {
            let (st, err) = app.token_op(&id, op, &staff).await;
            assert_error(st, &err, 409, "ILLEGAL_TRANSITION");
            assert!(err.to_string().contains("completed"), "{round}: {op} names the real status: {err}");
        }
        let (st, err) = app.transfer(&id, "OPD2", &staff).await;
        assert_error(st, &err, 409, "ILLEGAL_TRANSITION");

        if round == "same actor" {
            app.stop().await;
            app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
        }
    }
    // None of it consumed a number: the next patient is 3, after the waiting one.
    let next = app.scan_new(&scan_body(&f, "OPD1", 43)).await;
    assert_eq!(num(&next, "token_number"), 3, "{next}");
    // A number never issued is unknown, not finished.
    let mut never = scan_gateway::facility::token_id::TokenRef::decode(&id).expect("our id");
    never.number = 99;
    let (st, err) = app.get_token(&never.encode(), &staff).await;
    assert_error(st, &err, 404, "UNKNOWN_TOKEN");
}
