//! Routing by facility without reading the body: `X-Facility-Id` on `POST /v1/scans`, the
//! alias `POST /v1/facilities/{id}/scans`, token ids with a readable facility prefix, and
//! ids of the first (fully opaque) format still accepted.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::helpers::*;

/// The id a token had before ids carried their facility in clear.
fn first_format_id(v: &Value) -> String {
    let raw = format!(
        "t1\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        s(v, "facility_id"),
        s(v, "service_date"),
        s(v, "counter_id"),
        num(v, "token_number")
    );
    URL_SAFE_NO_PAD.encode(raw)
}

#[actix_web::test]
async fn header_and_path_alias_name_the_facility_and_must_match_the_body() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let (f, g) = (fid(500), fid(501));
    app.register(&f).await;
    app.register(&g).await;

    let r = app
        .req("POST", "/v1/scans", Some(&app.platform), Some(&scan_body(&f, "OPD1", 1)), &[("X-Facility-Id", &f)])
        .await;
    assert_scan_reply(r.status, &r.body);
    assert_eq!(num(&r.body, "token_number"), 1);
    assert!(s(&r.body, "token_id").starts_with(&format!("{f}.")), "{}", r.body);
    let path = format!("/v1/facilities/{f}/scans");
    let r = app.req("POST", &path, Some(&app.platform), Some(&scan_body(&f, "OPD1", 2)), &[]).await;
    assert_scan_reply(r.status, &r.body);
    assert_eq!(num(&r.body, "token_number"), 2);
    let r =
        app.req("POST", &path, Some(&app.platform), Some(&scan_body(&f, "OPD1", 3)), &[("X-Facility-Id", &f)]).await;
    assert_eq!((r.status, num(&r.body, "token_number")), (201, 3), "{}", r.body);
    // The alias is the same scan: a repeat is recognised across both forms.
    let r = app.req("POST", "/v1/scans", Some(&app.platform), Some(&scan_body(&f, "OPD1", 2)), &[]).await;
    assert_eq!((r.status, num(&r.body, "token_number")), (200, 2), "{}", r.body);

    let before = redis.settled_snapshot().await;
    let r = app
        .req("POST", "/v1/scans", Some(&app.platform), Some(&scan_body(&f, "OPD1", 4)), &[("X-Facility-Id", &g)])
        .await;
    assert_error(r.status, &r.body, 422, "FACILITY_MISMATCH");
    assert_eq!(r.body["error"]["field"], "X-Facility-Id");
    let r = app
        .req("POST", &format!("/v1/facilities/{g}/scans"), Some(&app.platform), Some(&scan_body(&f, "OPD1", 4)), &[])
        .await;
    assert_error(r.status, &r.body, 422, "FACILITY_MISMATCH");
    assert_eq!(r.body["error"]["field"], "facility_id");
    // Path and body agree, the header does not.
    let r =
        app.req("POST", &path, Some(&app.platform), Some(&scan_body(&f, "OPD1", 4)), &[("X-Facility-Id", &g)]).await;
    assert_error(r.status, &r.body, 422, "FACILITY_MISMATCH");
    // A header that cannot be a facility id is refused before the body is read.
    let r = app
        .req("POST", "/v1/scans", Some(&app.platform), Some(&scan_body(&f, "OPD1", 4)), &[("X-Facility-Id", "IN{x}")])
        .await;
    assert_error(r.status, &r.body, 400, "INVALID_HEADER");
    assert_eq!(r.body["error"]["field"], "X-Facility-Id");
    assert!(!r.text.contains("IN{x}") && !r.text.contains(&abha_address(4)), "{}", r.text);
    // The alias takes the same roles as /v1/scans.
    let r = app.req("POST", &path, Some(&app.admin), Some(&scan_body(&f, "OPD1", 4)), &[]).await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
    let after = redis.settled_snapshot().await;
    assert_same_store(&before, &after, "mismatched or refused scans store nothing");

    // Nothing was numbered in between.
    let v = app.scan_new(&scan_body(&f, "OPD1", 4)).await;
    assert_eq!(num(&v, "token_number"), 4);

    let r = app.req("GET", "/openapi.json", None, None, &[]).await;
    let doc: Value = serde_json::from_str(&r.text).expect("openapi.json");
    assert!(doc["paths"]["/v1/facilities/{facility_id}/scans"]["post"].is_object(), "alias documented");
    let params = doc["paths"]["/v1/scans"]["post"]["parameters"].to_string();
    assert!(params.contains("X-Facility-Id"), "header documented: {params}");
}

#[actix_web::test]
async fn token_ids_carry_their_facility_and_first_format_ids_still_work() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let (f, g) = (fid(510), fid(511));
    app.register(&f).await;
    app.register(&g).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let a = app.scan_new(&scan_body(&f, "OPD1", 10)).await;
    let b = app.scan_new(&scan_body(&f, "OPD1", 11)).await;
    let id_a = s(&a, "token_id");
    let (prefix, rest) = id_a.split_once('.').expect("a facility prefix");
    assert_eq!(prefix, f);

    // Same token through both id formats, for the platform and for staff.
    for id in [id_a.to_string(), first_format_id(&a)] {
        let (st, v) = app.get_token(&id, &app.platform).await;
        assert_eq!(st, 200, "{id}: {v}");
        assert_eq!(
            (v["token_number"].clone(), v["token_id"].clone()),
            (a["token_number"].clone(), a["token_id"].clone())
        );
        let (st, v) = app.get_token(&id, &staff).await;
        assert_eq!(st, 200, "{id}: {v}");
    }
    let (st, called) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!((st, &called["token_id"]), (200, &a["token_id"]));
    let (st, v) = app.token_op(&first_format_id(&a), "complete", &staff).await;
    assert_eq!((st, s(&v, "status")), (200, "completed"), "{v}");
    let (st, v) = app.call_next(&f, "OPD1", &staff).await;
    assert_eq!((st, &v["token_id"]), (200, &b["token_id"]));
    let (st, v) = app.token_op(s(&b, "token_id"), "no-show", &staff).await;
    assert_eq!((st, s(&v, "status")), (200, "no_show"), "{v}");

    // Another facility's prefix on this token's rest is that facility's (absent) token,
    // and staff of this facility may not act on it.
    let (st, v) = app.get_token(&format!("{g}.{rest}"), &app.platform).await;
    assert_error(st, &v, 404, "UNKNOWN_TOKEN");
    let (st, v) = app.token_op(&format!("{g}.{rest}"), "recall", &staff).await;
    assert_error(st, &v, 403, "FORBIDDEN");
    for bad in [format!("{f}."), format!(".{rest}"), format!("{f}.{rest}.{rest}"), format!("IN-x_.{rest}x")] {
        let (st, v) = app.get_token(&bad, &app.platform).await;
        assert_error(st, &v, 404, "UNKNOWN_TOKEN");
    }
}

async fn facility_requests(app: &TestApp, thread: &str) -> f64 {
    let m = app.req("GET", "/metrics", None, None, &[]).await.text;
    let prefix = format!("scangw_facility_requests_total{{thread=\"{thread}\"}} ");
    m.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Facility actors live on the HTTP workers themselves (thread per core): a request that
/// arrives on the worker of its facility is served there without a handoff, one that
/// arrives on the other worker is handed over. Two connections land on the two workers
/// (the server hands connections out in turn) and each scans every facility once. The
/// metrics are the process's (other tests may add to them), so the check is on the sum
/// and on `home` moving at all: with actors on threads of their own, nothing is ever
/// served at home.
#[actix_web::test]
async fn facility_actors_live_on_the_http_workers_and_requests_on_their_thread_stay_there() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let ids: Vec<String> = (0..16).map(|i| fid(700 + i)).collect();
    for f in &ids {
        app.register(f).await;
    }
    let (home0, other0) = (facility_requests(&app, "home").await, facility_requests(&app, "other").await);
    for c in 0..2 {
        // One connection per client: two clients, two connections, two workers.
        let client = awc::Client::builder().connector(awc::Connector::new().limit(1)).finish();
        for (i, f) in ids.iter().enumerate() {
            let url = format!("{}/v1/facilities/{f}/scans", app.base);
            let body = serde_json::to_vec(&scan_body(f, "OPD1", c * 100 + i)).unwrap();
            let r = http(&client, "POST", &url, Some(&app.platform), Some("application/json"), Some(body), &[])
                .await
                .expect("scan");
            assert_scan_reply(r.status, &r.body);
        }
    }
    let (home, other) =
        (facility_requests(&app, "home").await - home0, facility_requests(&app, "other").await - other0);
    assert!(home + other >= 32.0, "every scan asked its facility: home {home}, other {other}");
    assert!(home >= 1.0, "some scans were served on the thread they arrived on: home {home}, other {other}");
    assert!(other >= 1.0, "the other worker's scans were handed over: home {home}, other {other}");
}
