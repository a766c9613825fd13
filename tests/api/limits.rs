//! Rate limits end to end (429 with the limit's code and the RateLimit headers), the
//! X-Forwarded-For trust rule, and the authorisation matrix over every route.
use serde_json::{json, Value};

use crate::helpers::*;

fn settings(
    redis: &RedisServer,
    f: impl FnOnce(&mut scan_gateway::config::Settings),
) -> scan_gateway::config::Settings {
    let mut s = scan_gateway::config::Settings::for_tests(&redis.url());
    f(&mut s);
    s
}

fn assert_limited(r: &Resp, code: &str, limit: u32) {
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["error"]["code"], code, "{}", r.text);
    let h = |n: &str| r.header(n).unwrap_or_else(|| panic!("missing header {n}"));
    let retry: u64 = h("retry-after").parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(h("ratelimit-limit"), limit.to_string());
    assert_eq!(h("ratelimit-remaining"), "0");
    assert_eq!(h("ratelimit-reset"), retry.to_string());
}

#[actix_web::test]
async fn a_patient_gets_five_new_tokens_a_minute_then_429_and_nothing_is_stored() {
    let redis = RedisServer::start();
    let mut app =
        TestApp::spawn_with(settings(&redis, |s| s.limit_patient_per_min = 5), TestApp::clock_at(START)).await;
    let (f, g, h) = (fid(950), fid(954), fid(955));
    for x in [&f, &g, &h] {
        app.register(x).await;
    }
    // Five new tokens (three counters here, two there), each scanned again: repeats answer
    // the token already issued and spend nothing.
    for (facility, counter) in [(&f, "OPD1"), (&f, "OPD2"), (&f, "Pharmacy"), (&g, "OPD1"), (&g, "OPD2")] {
        let first = app.scan_new(&scan_body(facility, counter, 1)).await;
        let (st, v) = app.scan(&scan_body(facility, counter, 1)).await;
        assert_eq!((st, &v["token_id"]), (200, &first["token_id"]));
    }
    let before = redis.settled_snapshot().await;
    let r = app.scan_resp(&scan_body(&g, "Pharmacy", 1)).await;
    assert_limited(&r, "RATE_LIMITED_PATIENT", 5);
    assert_eq!(r.header("retry-after").as_deref(), Some("12"), "one scan returns every 60/5 s");
    assert!(!r.text.contains("abdm"), "no patient data in the refusal");
    assert_same_store(&before, &redis.settled_snapshot().await, "a refused scan stores nothing");
    // The same person by ABHA number with another address is the same patient.
    let mut other = scan_body(&h, "OPD1", 2);
    other["patient"]["abha_number"] = json!(abha_number(1));
    assert_limited(&app.scan_resp(&other).await, "RATE_LIMITED_PATIENT", 5);
    // Everyone else is unaffected.
    app.scan_new(&scan_body(&h, "OPD2", 3)).await;
    app.stop().await;
}

#[actix_web::test]
async fn facility_limit_is_per_facility() {
    let redis = RedisServer::start();
    let mut app =
        TestApp::spawn_with(settings(&redis, |s| s.limit_facility_per_min = 3), TestApp::clock_at(START)).await;
    let (a, b) = (fid(951), fid(952));
    app.register(&a).await;
    app.register(&b).await;
    for i in 0..3 {
        app.scan_new(&scan_body(&a, "OPD1", 100 + i)).await;
    }
    assert_limited(&app.scan_resp(&scan_body(&a, "OPD1", 200)).await, "RATE_LIMITED_FACILITY", 3);
    app.scan_new(&scan_body(&b, "OPD1", 201)).await;
    app.stop().await;
}

#[actix_web::test]
async fn global_and_client_limits_answer_429_with_their_codes() {
    let redis = RedisServer::start();
    let mut app = TestApp::spawn_with(settings(&redis, |s| s.limit_client_per_s = 2), TestApp::clock_at(START)).await;
    let f = fid(953);
    // Per credential: the platform key runs out, the admin key is another bucket.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = app.req("GET", "/v1/tokens/nonsense", Some(&app.platform), None, &[]).await;
        if r.status == 429 {
            assert_limited(&r, "RATE_LIMITED_CLIENT", 2);
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 404);
    let r = app.req("PUT", &format!("/v1/facilities/{f}"), Some(&app.admin), Some(&standard_facility(&f)), &[]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.stop().await;

    let mut app = TestApp::spawn_with(settings(&redis, |s| s.limit_global_per_s = 2), TestApp::clock_at(START)).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = app.req("GET", &format!("/v1/facilities/{f}"), Some(&app.admin), None, &[]).await;
        if r.status == 429 {
            assert_limited(&r, "RATE_LIMITED_GLOBAL", 2);
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Health and metrics are never limited.
    assert_eq!(app.req("GET", "/livez", None, None, &[]).await.status, 200);
    app.stop().await;
}

#[actix_web::test]
async fn x_forwarded_for_counts_only_behind_a_trusted_proxy() {
    let redis = RedisServer::start();
    let unauth = |app: &TestApp, ip: &'static str| {
        let base = app.base.clone();
        let client = app.client.clone();
        async move {
            http(&client, "GET", &format!("{base}/v1/tokens/x"), None, None, None, &[("X-Forwarded-For", ip)])
                .await
                .unwrap()
                .status
        }
    };
    // Behind a trusted proxy (the test client is 127.0.0.1): each forwarded client has its
    // own bucket of one request per second.
    let mut app = TestApp::spawn_with(
        settings(&redis, |s| {
            s.limit_client_per_s = 1;
            s.trusted_proxies = "127.0.0.1".into();
        }),
        TestApp::clock_at(START),
    )
    .await;
    assert_eq!(unauth(&app, "203.0.113.1").await, 401);
    assert_eq!(unauth(&app, "203.0.113.2").await, 401);
    assert_eq!(unauth(&app, "203.0.113.3").await, 401);
    app.stop().await;
    // Not trusted: the header is ignored and every request is the peer's.
    let mut app = TestApp::spawn_with(settings(&redis, |s| s.limit_client_per_s = 1), TestApp::clock_at(START)).await;
    let mut statuses = Vec::new();
    for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"] {
        statuses.push(unauth(&app, ip).await);
    }
    assert_eq!(statuses[0], 401);
    assert!(statuses.contains(&429), "forged X-Forwarded-For must not buy new buckets: {statuses:?}");
    app.stop().await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Nobody,
    Garbage,
    Admin,
    Platform,
    StaffOwn,
    StaffOther,
}

#[actix_web::test]
async fn every_route_refuses_the_wrong_role() {
    let redis = RedisServer::start();
    let mut app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let (f, g) = (fid(960), fid(961));
    app.register(&f).await;
    app.register(&g).await;
    let (own_id, own) = app.create_staff_key(&f).await;
    let (_, other) = app.create_staff_key(&g).await;
    let token = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    let tid = s(&token, "token_id").to_string();
    let cred = |w: Who| -> Option<String> {
        match w {
            Who::Nobody => None,
            Who::Garbage => Some("not-a-real-credential-000000".into()),
            Who::Admin => Some(app.admin.clone()),
            Who::Platform => Some(app.platform.clone()),
            Who::StaffOwn => Some(own.clone()),
            Who::StaffOther => Some(other.clone()),
        }
    };
    use Who::*;
    let facility_body = standard_facility(&f);
    let scan = scan_body(&f, "OPD1", 2);
    let transfer = json!({"counter_id": "OPD2"});
    // (method, path, body, roles allowed)
    let routes: Vec<(&str, String, Option<Value>, Vec<Who>)> = vec![
        ("PUT", format!("/v1/facilities/{f}"), Some(facility_body), vec![Admin]),
        ("GET", format!("/v1/facilities/{f}"), None, vec![Admin]),
        ("POST", format!("/v1/facilities/{f}/staff-keys"), None, vec![Admin]),
        ("DELETE", format!("/v1/facilities/{f}/staff-keys/000000000000"), None, vec![Admin]),
        ("POST", "/v1/scans".into(), Some(scan), vec![Platform]),
        ("GET", format!("/v1/tokens/{tid}"), None, vec![Platform, StaffOwn]),
        ("GET", format!("/v1/facilities/{f}/queue"), None, vec![StaffOwn]),
        ("POST", format!("/v1/facilities/{f}/counters/OPD2/call-next"), None, vec![StaffOwn]),
        ("POST", format!("/v1/tokens/{tid}/recall"), None, vec![StaffOwn]),
        ("POST", format!("/v1/tokens/{tid}/complete"), None, vec![StaffOwn]),
        ("POST", format!("/v1/tokens/{tid}/no-show"), None, vec![StaffOwn]),
        ("POST", format!("/v1/tokens/{tid}/transfer"), Some(transfer), vec![StaffOwn]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, allowed) in &routes {
        for who in [Nobody, Garbage, Admin, Platform, StaffOther, StaffOwn] {
            let r = app.req(method, path, cred(who).as_deref(), body.as_ref(), &[]).await;
            let want = if allowed.contains(&who) {
                None
            } else if matches!(who, Nobody | Garbage) {
                Some((401, "UNAUTHORIZED"))
            } else {
                Some((403, "FORBIDDEN"))
            };
            let ok = match want {
                None => r.status != 401 && r.status != 403,
                Some((st, code)) => r.status == st && r.body["error"]["code"] == code,
            };
            if !ok {
                wrong.push(format!("{method} {path} as {who:?}: {} {}", r.status, r.text));
            }
        }
    }
    // The import route reads no body before checking the caller.
    for who in [Nobody, Platform, StaffOwn] {
        let r = app
            .raw("POST", "/v1/facilities:import", cred(who).as_deref(), Some("text/csv"), Some(b"x".to_vec()), &[])
            .await;
        if ![401, 403].contains(&r.status) {
            wrong.push(format!("import as {who:?}: {}", r.status));
        }
    }
    // A revoked key stops working at once.
    let r = app.req("DELETE", &format!("/v1/facilities/{f}/staff-keys/{own_id}"), Some(&app.admin), None, &[]).await;
    assert_eq!(r.status, 204);
    let r = app.req("GET", &format!("/v1/facilities/{f}/queue"), Some(&own), None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    app.stop().await;
}
