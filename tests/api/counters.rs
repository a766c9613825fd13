//! Counter operations: call order with the priority starvation guard, every transition and
//! its illegal variants, transfer, people-ahead, queue view, staff key scoping.
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Calls next until 204 and returns the called token ids in order.
async fn drain(app: &TestApp, f: &str, c: &str, staff: &str) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..100 {
        let (st, v) = app.call_next(f, c, staff).await;
        if st == 204 {
            return order;
        }
        assert_eq!(st, 200, "call-next: {v}");
        assert_token_view(&v);
        assert_eq!(v["status"], "called", "{v}");
        assert_eq!(s(&v, "counter_id"), c);
        assert!(v["called_at"].is_string(), "called_at set on a called token: {v}");
        order.push(s(&v, "token_id").to_string());
    }
    panic!("queue never drained");
}

fn ids(tokens: &[&Value]) -> Vec<String> {
    tokens.iter().map(|t| s(t, "token_id").to_string()).collect()
}

#[actix_web::test]
async fn priority_tokens_go_first_but_at_most_three_in_a_row_while_normal_tokens_wait() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(100);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let mut n = Vec::new();
    for i in 0..3 {
        n.push(app.scan_new(&scan_body(&f, "OPD1", 100 + i)).await);
    }
    let kinds = ["elderly", "disabled", "pregnant", "elderly", "disabled"];
    let mut p = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let v = app.scan_new(&scan_body_prio(&f, "OPD1", 200 + i, kind)).await;
        assert_eq!(v["priority"], *kind, "{v}");
        p.push(v);
    }
    // Numbers are issued in scan order regardless of priority.
    let numbers: Vec<u64> = n.iter().chain(p.iter()).map(|v| num(v, "token_number")).collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<u64>>());

    let want = ids(&[&p[0], &p[1], &p[2], &n[0], &p[3], &p[4], &n[1], &n[2]]);
    let got = drain(&app, &f, "OPD1", &staff).await;
    assert_eq!(got, want, "expected P1,P2,P3,N1,P4,P5,N2,N3");
    let (st, body) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 204, "empty queue: {body}");
}

#[actix_web::test]
async fn priority_streak_is_configurable_and_priorities_continue_when_no_normal_waits() {
    let redis = RedisServer::start();
    let mut settings = scan_gateway::config::Settings::for_tests(&redis.url());
    settings.max_priority_streak = 1;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(101);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let n1 = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    let n2 = app.scan_new(&scan_body(&f, "OPD1", 2)).await;
    let p1 = app.scan_new(&scan_body_prio(&f, "OPD1", 3, "pregnant")).await;
    let p2 = app.scan_new(&scan_body_prio(&f, "OPD1", 4, "elderly")).await;
    let p3 = app.scan_new(&scan_body_prio(&f, "OPD1", 5, "disabled")).await;
    let p4 = app.scan_new(&scan_body_prio(&f, "OPD1", 6, "elderly")).await;
    let got = drain(&app, &f, "OPD1", &staff).await;
    assert_eq!(
        got,
        ids(&[&p1, &n1, &p2, &n2, &p3, &p4]),
        "streak 1 alternates while normals wait, then priorities run on"
    );
}

#[actix_web::test]
async fn every_counter_operation_and_its_illegal_transitions() {
    let redis = RedisServer::start();
    let clock = TestApp::clock_at(START);
    let app = TestApp::spawn(&redis, clock.clone()).await;
    let f = fid(102);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let t1 = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    let t2 = app.scan_new(&scan_body(&f, "OPD1", 2)).await;
    let t3 = app.scan_new(&scan_body(&f, "OPD1", 3)).await;
    let (id1, id2, id3) = (s(&t1, "token_id"), s(&t2, "token_id"), s(&t3, "token_id"));

    // Illegal from waiting.
    for op in ["recall", "complete", "no-show"] {
        let (st, err) = app.token_op(id3, op, &staff).await;
        assert_error(st, &err, 409, "ILLEGAL_TRANSITION");
    }

    // call-next -> called.
    clock.advance(Duration::from_secs(60));
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 200, "{called}");
    assert_eq!(called["token_id"], t1["token_id"]);
    assert_eq!(called["status"], "called");
    let called_at = ts(&called["called_at"]);
    assert_eq!(called_at, ts(&t1["issued_at"]) + jiff::SignedDuration::from_secs(60), "called_at from the clock");

    // recall: called -> called, another history entry.
    clock.advance(Duration::from_secs(30));
    let (st, before) = app.get_token(id1, &staff).await;
    assert_eq!(st, 200);
    let h_before = before["history"].as_array().expect("history array").len();
    let (st, recalled) = app.token_op(id1, "recall", &staff).await;
    assert_eq!(st, 200, "{recalled}");
    assert_eq!(recalled["status"], "called");
    let (_, after) = app.get_token(id1, &staff).await;
    let hist = after["history"].as_array().unwrap();
    assert_eq!(hist.len(), h_before + 1, "recall is recorded in history: {after}");
    assert_eq!(hist.last().unwrap()["status"], "called");

    // complete: called -> completed, with its timestamp.
    clock.advance(Duration::from_secs(90));
    let (st, done) = app.token_op(id1, "complete", &staff).await;
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(ts(&done["completed_at"]), called_at + jiff::SignedDuration::from_secs(120), "{done}");

    // History: waiting, called, called (recall), completed; times non-decreasing; counter set.
    let (_, view) = app.get_token(id1, &app.platform).await;
    let hist = view["history"].as_array().expect("history");
    let statuses: Vec<&str> = hist.iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["waiting", "called", "called", "completed"], "{view}");
    let times: Vec<jiff::Timestamp> = hist.iter().map(|h| ts(&h["at"])).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "history in time order: {view}");
    assert_eq!(times[0], ts(&t1["issued_at"]));
    assert_eq!(*times.last().unwrap(), ts(&done["completed_at"]));
    assert!(hist.iter().all(|h| h["counter_id"] == "OPD1"), "{view}");

    // Illegal from completed.
    for op in ["recall", "complete", "no-show"] {
        let (st, err) = app.token_op(id1, op, &staff).await;
        assert_error(st, &err, 409, "ILLEGAL_TRANSITION");
    }
    let (st, err) = app.transfer(id1, "OPD2", &staff).await;
    assert_error(st, &err, 409, "ILLEGAL_TRANSITION");

    // no-show: called -> no_show.
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 200);
    assert_eq!(called["token_id"], t2["token_id"]);
    let (st, ns) = app.token_op(id2, "no-show", &staff).await;
    assert_eq!(st, 200, "{ns}");
    assert_eq!(ns["status"], "no_show");
    for op in ["recall", "complete", "no-show"] {
        let (st, err) = app.token_op(id2, op, &staff).await;
        assert_error(st, &err, 409, "ILLEGAL_TRANSITION");
    }
    let (st, err) = app.transfer(id2, "OPD2", &staff).await;
    assert_error(st, &err, 409, "ILLEGAL_TRANSITION");

    // Transfer to the same counter, to an unknown counter; unknown token.
    let (st, err) = app.transfer(id3, "OPD1", &staff).await;
    assert_error(st, &err, 409, "ILLEGAL_TRANSITION");
    let (unknown_counter_status, unknown_counter_body) = app.transfer(id3, "Radiology", &staff).await;
    let (st, err) = app.token_op("no-such-token", "complete", &staff).await;
    assert_error(st, &err, 404, "UNKNOWN_TOKEN");

    // The refused operations changed nothing.
    let (_, v3) = app.get_token(id3, &staff).await;
    assert_eq!(v3["status"], "waiting");
    assert_eq!(v3["counter_id"], "OPD1");
    let (_, v1) = app.get_token(id1, &staff).await;
    assert_eq!(v1["status"], "completed");
    assert_eq!(v1["history"].as_array().unwrap().len(), 4);

    // Expired tokens cannot be called back to life.
    clock.advance(Duration::from_secs(3600));
    let (_, v3) = app.get_token(id3, &staff).await;
    assert_eq!(v3["status"], "expired", "{v3}");
    let (st, err) = app.token_op(id3, "complete", &staff).await;
    assert_error(st, &err, 409, "ILLEGAL_TRANSITION");
    let (st, _) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 204, "an expired token is not called");

    // Checked last so the rest of the lifecycle is exercised even when this is wrong.
    assert_error(unknown_counter_status, &unknown_counter_body, 404, "UNKNOWN_COUNTER");
}

#[actix_web::test]
async fn transfer_keeps_the_number_and_enters_the_priority_lane_at_the_target() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(103);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let a = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    let b = app.scan_new(&scan_body(&f, "OPD1", 2)).await;
    let c = app.scan_new(&scan_body(&f, "OPD1", 3)).await;
    let x = app.scan_new(&scan_body(&f, "OPD2", 4)).await;
    let y = app.scan_new(&scan_body(&f, "OPD2", 5)).await;

    // A called token moves to OPD2.
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(st, 200);
    assert_eq!(called["token_id"], a["token_id"]);
    let (st, moved) = app.transfer(s(&a, "token_id"), "OPD2", &staff).await;
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["status"], "waiting", "{moved}");
    assert_eq!(moved["counter_id"], "OPD2");
    assert_eq!(moved["token_id"], a["token_id"]);
    assert_eq!(moved["token_number"], a["token_number"]);
    assert_eq!(moved["display"], a["display"], "display keeps the original number");
    assert_eq!(num(&moved, "ahead"), 0, "transferred-in token is next at OPD2: {moved}");

    // A waiting token moves too.
    let (st, moved_b) = app.transfer(s(&b, "token_id"), "OPD2", &staff).await;
    assert_eq!(st, 200, "{moved_b}");
    assert_eq!(moved_b["counter_id"], "OPD2");
    assert_eq!(moved_b["display"], b["display"]);

    let (_, view) = app.get_token(s(&a, "token_id"), &staff).await;
    assert_eq!(view["counter_id"], "OPD2");
    let hist = view["history"].as_array().expect("history");
    assert_eq!(hist.last().unwrap()["status"], "waiting");
    assert_eq!(hist.last().unwrap()["counter_id"], "OPD2");
    assert!(hist.iter().any(|h| h["counter_id"] == "OPD1"), "history keeps the first counter: {view}");

    // OPD2 calls transferred-in tokens first, then its own FIFO.
    let got = drain(&app, &f, "OPD2", &staff).await;
    assert_eq!(got, ids(&[&a, &b, &x, &y]));
    // OPD1 no longer has b.
    let got = drain(&app, &f, "OPD1", &staff).await;
    assert_eq!(got, ids(&[&c]));

    // OPD1 numbering is unaffected: the next OPD1 token is 4; OPD2's is 3.
    let next1 = app.scan_new(&scan_body(&f, "OPD1", 6)).await;
    assert_eq!(num(&next1, "token_number"), 4);
    let next2 = app.scan_new(&scan_body(&f, "OPD2", 7)).await;
    assert_eq!(num(&next2, "token_number"), 3);
}

#[actix_web::test]
async fn people_ahead_follows_call_order_and_queue_view_lists_it() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(104);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let mut n = Vec::new();
    for i in 0..3 {
        let v = app.scan_new(&scan_body(&f, "OPD1", 10 + i)).await;
        assert_eq!(num(&v, "ahead"), i as u64, "FIFO ahead at scan time: {v}");
        n.push(v);
    }
    let mut p = Vec::new();
    for i in 0..5 {
        p.push(app.scan_new(&scan_body_prio(&f, "OPD1", 20 + i, "elderly")).await);
    }
    assert_eq!(num(&p[0], "ahead"), 0, "first priority token goes first: {}", p[0]);
    let pharmacy = app.scan_new(&scan_body(&f, "Pharmacy", 30)).await;
    assert_eq!(num(&pharmacy, "ahead"), 0, "counters are separate queues");

    // Call order P1,P2,P3,N1,P4,P5,N2,N3: ahead is the position in it.
    let order = [&p[0], &p[1], &p[2], &n[0], &p[3], &p[4], &n[1], &n[2]];
    let mut last_wait = 0;
    for (pos, t) in order.iter().enumerate() {
        let (st, v) = app.get_token(s(t, "token_id"), &app.platform).await;
        assert_eq!(st, 200);
        assert_eq!(num(&v, "ahead"), pos as u64, "ahead of {} ({})", s(t, "display"), v);
        let wait = num(&v, "estimated_wait_s");
        assert!(wait >= last_wait, "estimated wait grows with position: {v}");
        last_wait = wait;
    }
    assert!(last_wait > 0, "seven people ahead cannot mean zero wait");

    // Queue view for one counter: waiting in call order.
    let (st, q) = app.queue(&f, Some("OPD1"), &staff).await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["facility_id"], f.as_str());
    assert_eq!(q["service_date"], START_DATE);
    let counters = q["counters"].as_array().expect("counters");
    assert_eq!(counters.len(), 1, "{q}");
    assert_eq!(counters[0]["counter_id"], "OPD1");
    assert_eq!(counters[0]["kind"], "opd");
    let waiting: Vec<String> =
        counters[0]["waiting"].as_array().unwrap().iter().map(|t| s(t, "token_id").to_string()).collect();
    assert_eq!(waiting, ids(&order), "queue lists waiting tokens in call order");
    assert!(counters[0]["called"].as_array().unwrap().is_empty());

    // Two calls: they move to `called`, ahead shrinks for everyone else.
    let (_, c1) = app.call_next(&f, "OPD1", &staff).await;
    let (_, c2) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!(ids(&[&c1, &c2]), ids(&order[..2]));
    let (_, v) = app.get_token(s(&n[0], "token_id"), &app.platform).await;
    assert_eq!(num(&v, "ahead"), 1, "{v}");
    let (_, q) = app.queue(&f, Some("OPD1"), &staff).await;
    let c = &q["counters"][0];
    let called: Vec<String> = c["called"].as_array().unwrap().iter().map(|t| s(t, "token_id").to_string()).collect();
    let mut called_sorted = called.clone();
    called_sorted.sort();
    let mut want_called = ids(&order[..2]);
    want_called.sort();
    assert_eq!(called_sorted, want_called, "{q}");
    let waiting: Vec<String> = c["waiting"].as_array().unwrap().iter().map(|t| s(t, "token_id").to_string()).collect();
    assert_eq!(waiting, ids(&order[2..]));
    for (i, t) in c["waiting"].as_array().unwrap().iter().enumerate() {
        assert_eq!(num(t, "ahead"), i as u64, "queue view ahead: {t}");
    }

    // Whole facility: all three counters.
    let (st, q) = app.queue(&f, None, &staff).await;
    assert_eq!(st, 200, "{q}");
    let mut names: Vec<&str> = q["counters"].as_array().unwrap().iter().map(|c| s(c, "counter_id")).collect();
    names.sort();
    assert_eq!(names, ["OPD1", "OPD2", "Pharmacy"]);
    let ph = q["counters"].as_array().unwrap().iter().find(|c| c["counter_id"] == "Pharmacy").unwrap();
    assert_eq!(ph["kind"], "pharmacy");
    assert_eq!(ph["waiting"][0]["token_id"], pharmacy["token_id"]);

    let (st, err) = app.queue(&f, Some("Radiology"), &staff).await;
    assert_error(st, &err, 404, "UNKNOWN_COUNTER");
}

#[actix_web::test]
async fn staff_keys_are_scoped_to_their_facility_and_revocable() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let (fa, fb) = (fid(105), fid(106));
    app.register(&fa).await;
    app.register(&fb).await;
    let (key_a_id, key_a) = app.create_staff_key(&fa).await;
    let (_, key_a2) = app.create_staff_key(&fa).await;
    let (_, key_b) = app.create_staff_key(&fb).await;
    assert_ne!(key_a, key_a2, "each staff key is new");
    let ta = app.scan_new(&scan_body(&fa, "OPD1", 1)).await;
    let tb = app.scan_new(&scan_body(&fb, "OPD1", 2)).await;

    // A's key on B's facility and token.
    let (st, err) = app.call_next(&fb, "OPD1", &key_a).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.queue(&fb, None, &key_a).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.get_token(s(&tb, "token_id"), &key_a).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.transfer(s(&tb, "token_id"), "OPD2", &key_a).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    // Staff key on admin routes; platform and admin on staff routes.
    let r = app.req("POST", &format!("/v1/facilities/{fa}/staff-keys"), Some(&key_a), None, &[]).await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
    let (st, err) = app.call_next(&fa, "OPD1", &app.platform).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.queue(&fa, None, &app.platform).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.token_op(s(&ta, "token_id"), "complete", &app.platform).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.call_next(&fa, "OPD1", &app.admin).await;
    assert_error(st, &err, 403, "FORBIDDEN");
    let (st, err) = app.call_next(&fa, "OPD1", "garbage-key-0123456789").await;
    assert_error(st, &err, 401, "UNAUTHORIZED");
    let r = app.req("POST", &format!("/v1/facilities/{fa}/counters/OPD1/call-next"), None, None, &[]).await;
    assert_error(r.status, &r.body, 401, "UNAUTHORIZED");

    // B's token is untouched; B's own key calls it.
    let (st, v) = app.call_next(&fb, "OPD1", &key_b).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_id"], tb["token_id"]);
    assert_eq!(v["patient"]["abha_address"], abha_address(2), "staff of the facility see the patient: {v}");

    // Revoke A's first key: 401 from then on; the second key keeps working.
    assert_eq!(app.revoke_staff_key(&fa, &key_a_id).await, 204);
    let (st, err) = app.call_next(&fa, "OPD1", &key_a).await;
    assert_error(st, &err, 401, "UNAUTHORIZED");
    let (st, err) = app.get_token(s(&ta, "token_id"), &key_a).await;
    assert_error(st, &err, 401, "UNAUTHORIZED");
    let (st, v) = app.call_next(&fa, "OPD1", &key_a2).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_id"], ta["token_id"]);
}

#[actix_web::test]
async fn transferred_in_tokens_count_toward_the_priority_streak() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(107);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;

    let n1 = app.scan_new(&scan_body(&f, "OPD2", 1)).await;
    let n2 = app.scan_new(&scan_body(&f, "OPD2", 2)).await;
    let mut moved = Vec::new();
    for i in 0..4 {
        let t = app.scan_new(&scan_body(&f, "OPD1", 10 + i)).await;
        let (st, v) = app.transfer(s(&t, "token_id"), "OPD2", &staff).await;
        assert_eq!(st, 200, "{v}");
        moved.push(t);
    }
    let got = drain(&app, &f, "OPD2", &staff).await;
    assert_eq!(got, ids(&[&moved[0], &moved[1], &moved[2], &n1, &moved[3], &n2]), "T1,T2,T3,N1,T4,N2");
}

/// Random interleavings of scans (normal, priority, repeats), call-next, complete and
/// transfer on two counters, checked against a model of the rules that does not depend on
/// how the streak is counted while no normal token waits:
/// numbering is contiguous per counter; a live patient gets their token back; each lane is
/// FIFO; a normal token is called while a priority one waits only after `max_priority_streak`
/// priority calls in a row; no more than that many priority calls in a row while normal
/// tokens wait; 204 exactly when nothing waits; the queue view lists what the model holds,
/// with `ahead` equal to the position.
#[actix_web::test]
async fn random_counter_workloads_keep_the_queue_rules() {
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, VecDeque};

    const STREAK: usize = 3;
    #[derive(Default)]
    struct Lane {
        prio: VecDeque<String>,
        normal: VecDeque<String>,
        next_number: u64,
        /// Lane of each call at this counter, oldest first (true = priority lane).
        calls: Vec<bool>,
        /// Consecutive priority calls made while a normal token waited.
        prio_run_with_normal_waiting: usize,
        called: Vec<String>,
    }

    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let counters = ["OPD1", "OPD2"];
    for seed in 0..6u64 {
        let f = fid(150 + seed as usize);
        app.register(&f).await;
        let (_, staff) = app.create_staff_key(&f).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut lanes: HashMap<&str, Lane> = counters.iter().map(|c| (*c, Lane::default())).collect();
        // patient -> (counter, token id) while their token is live and not transferred.
        let mut live: HashMap<usize, (&str, String)> = HashMap::new();
        let mut patient_of: HashMap<String, usize> = HashMap::new();
        let mut next_patient = seed as usize * 1000;
        for step in 0..70 {
            let ctx = format!("seed {seed} step {step}");
            let c = counters[rng.random_range(0..2)];
            let roll = rng.random_range(0..100);
            if roll < 50 {
                // New patient.
                next_patient += 1;
                let prio = rng.random_range(0..4) == 0;
                let body =
                    if prio { scan_body_prio(&f, c, next_patient, "disabled") } else { scan_body(&f, c, next_patient) };
                let (st, v) = app.scan(&body).await;
                assert_eq!(st, 201, "{ctx}: {v}");
                let lane = lanes.get_mut(c).unwrap();
                lane.next_number += 1;
                assert_eq!(num(&v, "token_number"), lane.next_number, "{ctx}: contiguous numbering");
                let id = s(&v, "token_id").to_string();
                if prio {
                    lane.prio.push_back(id.clone());
                } else {
                    lane.normal.push_back(id.clone());
                }
                live.insert(next_patient, (c, id.clone()));
                patient_of.insert(id, next_patient);
            } else if roll < 60 && !live.is_empty() {
                // A live patient scans again at their counter.
                let mut ps: Vec<usize> = live.keys().copied().collect();
                ps.sort_unstable();
                let p = ps[rng.random_range(0..ps.len())];
                let (pc, id) = live[&p].clone();
                let (st, v) = app.scan(&scan_body(&f, pc, p)).await;
                assert_eq!(st, 200, "{ctx}: repeat: {v}");
                assert_eq!(s(&v, "token_id"), id, "{ctx}");
            } else if roll < 88 {
                let (st, v) = app.call_next(&f, c, &staff).await;
                let lane = lanes.get_mut(c).unwrap();
                if lane.prio.is_empty() && lane.normal.is_empty() {
                    assert_eq!(st, 204, "{ctx}: nothing waits at {c}: {v}");
                    continue;
                }
                assert_eq!(st, 200, "{ctx}: {v}");
                let id = s(&v, "token_id").to_string();
                let normal_waiting = !lane.normal.is_empty();
                if lane.prio.front() == Some(&id) {
                    if normal_waiting {
                        assert!(
                            lane.prio_run_with_normal_waiting < STREAK,
                            "{ctx}: more than {STREAK} priority calls in a row while normal tokens wait"
                        );
                        lane.prio_run_with_normal_waiting += 1;
                    }
                    lane.prio.pop_front();
                    lane.calls.push(true);
                } else if lane.normal.front() == Some(&id) {
                    if !lane.prio.is_empty() {
                        let recent = &lane.calls[lane.calls.len().saturating_sub(STREAK)..];
                        assert!(
                            recent.len() == STREAK && recent.iter().all(|p| *p),
                            "{ctx}: normal token called ahead of a waiting priority token without a full streak"
                        );
                    }
                    lane.prio_run_with_normal_waiting = 0;
                    lane.normal.pop_front();
                    lane.calls.push(false);
                } else {
                    panic!("{ctx}: call-next at {c} returned {id}, not the head of either lane");
                }
                lane.called.push(id);
            } else if roll < 94 {
                // Complete one called token at c.
                let lane = lanes.get_mut(c).unwrap();
                if lane.called.is_empty() {
                    continue;
                }
                let id = lane.called.remove(rng.random_range(0..lane.called.len()));
                let (st, v) = app.token_op(&id, "complete", &staff).await;
                assert_eq!(st, 200, "{ctx}: {v}");
                assert_eq!(v["status"], "completed");
                live.retain(|_, (_, t)| *t != id);
            } else {
                // Transfer one waiting token from c to the other counter.
                let other = if c == "OPD1" { "OPD2" } else { "OPD1" };
                let lane = lanes.get_mut(c).unwrap();
                let waiting: Vec<String> = lane.prio.iter().chain(lane.normal.iter()).cloned().collect();
                if waiting.is_empty() {
                    continue;
                }
                let id = waiting[rng.random_range(0..waiting.len())].clone();
                lane.prio.retain(|t| *t != id);
                lane.normal.retain(|t| *t != id);
                let (st, v) = app.transfer(&id, other, &staff).await;
                assert_eq!(st, 200, "{ctx}: {v}");
                assert_eq!(v["counter_id"], other);
                lanes.get_mut(other).unwrap().prio.push_back(id.clone());
                if let Some(p) = patient_of.get(&id) {
                    live.remove(p);
                }
            }
        }

        // The queue view agrees with the model.
        for c in counters {
            let (st, q) = app.queue(&f, Some(c), &staff).await;
            assert_eq!(st, 200, "{q}");
            let view = &q["counters"][0];
            let lane = &lanes[c];
            let waiting: Vec<String> =
                view["waiting"].as_array().unwrap().iter().map(|t| s(t, "token_id").to_string()).collect();
            for (i, t) in view["waiting"].as_array().unwrap().iter().enumerate() {
                assert_eq!(num(t, "ahead"), i as u64, "seed {seed} {c}: ahead is the position: {t}");
            }
            let prio_in_view: Vec<&String> = waiting.iter().filter(|t| lane.prio.contains(t)).collect();
            let normal_in_view: Vec<&String> = waiting.iter().filter(|t| lane.normal.contains(t)).collect();
            assert_eq!(waiting.len(), lane.prio.len() + lane.normal.len(), "seed {seed} {c}: waiting set");
            assert_eq!(prio_in_view, lane.prio.iter().collect::<Vec<_>>(), "seed {seed} {c}: priority lane order");
            assert_eq!(normal_in_view, lane.normal.iter().collect::<Vec<_>>(), "seed {seed} {c}: normal lane order");
            let mut called: Vec<String> =
                view["called"].as_array().unwrap().iter().map(|t| s(t, "token_id").to_string()).collect();
            called.sort();
            let mut want = lane.called.clone();
            want.sort();
            assert_eq!(called, want, "seed {seed} {c}: called tokens");
        }
    }
}
