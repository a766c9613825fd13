//! State rebuilt at activation (issue 34): the priority streak survives a passivation as it
//! really was.
use std::time::Duration;

use crate::helpers::*;

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
