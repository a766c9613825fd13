//! Facility registry: PUT/GET, bulk import (NDJSON and CSV, all-or-nothing), and the
//! operational endpoints (livez, openapi.json, metrics).
use serde_json::{json, Value};

use crate::helpers::*;

fn counter_ids(v: &Value) -> Vec<(String, String)> {
    v["counters"]
        .as_array()
        .unwrap_or_else(|| panic!("counters array in {v}"))
        .iter()
        .map(|c| (s(c, "id").to_string(), s(c, "kind").to_string()))
        .collect()
}

#[actix_web::test]
async fn put_creates_then_updates_and_get_returns_the_facility() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = "IN0410000183";

    let (st, err) = app.get_facility(f).await;
    assert_error(st, &err, 404, "UNKNOWN_FACILITY");

    let (st, created) = app.put_facility(f, &standard_facility(f)).await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["facility_id"], f);
    assert_eq!(created["name"], format!("District Hospital {f}"));
    assert_eq!(created["state"], "Karnataka");
    assert_eq!(created["district"], "Mysuru");
    assert_eq!(created["timezone"], "Asia/Kolkata", "default timezone");
    assert_eq!(created["token_validity_s"], 1800, "default validity");
    assert_eq!(
        counter_ids(&created),
        [("OPD1", "opd"), ("OPD2", "opd"), ("Pharmacy", "pharmacy")].map(|(a, b)| (a.to_string(), b.to_string()))
    );

    let update = json!({
        "name": "AIIMS New Delhi",
        "state": "Delhi",
        "district": "New Delhi",
        "timezone": "Asia/Kolkata",
        "token_validity_s": 3600,
        "counters": [{"id": "OPD 1", "kind": "opd"}, {"id": "Lab.A_2", "kind": "lab"}, {"id": "Help-desk", "kind": "other"}]
    });
    let (st, updated) = app.put_facility(f, &update).await;
    assert_eq!(st, 200, "second PUT is an update: {updated}");
    let (st, got) = app.get_facility(f).await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["name"], "AIIMS New Delhi");
    assert_eq!(got["token_validity_s"], 3600);
    assert_eq!(
        counter_ids(&got),
        [("OPD 1", "opd"), ("Lab.A_2", "lab"), ("Help-desk", "other")].map(|(a, b)| (a.to_string(), b.to_string()))
    );

    // The update is live for scans: the new counter works, the new validity applies.
    let v = app.scan_new(&scan_body(f, "OPD 1", 1)).await;
    assert_eq!(s(&v, "display"), "OPD 1-001");
    assert_eq!(ts(&v["expires_at"]).duration_since(ts(&v["issued_at"])).as_secs(), 3600);

    // Roles.
    let r = app.req("PUT", &format!("/v1/facilities/{f}"), Some(&app.platform), Some(&update), &[]).await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
    let r = app.req("PUT", &format!("/v1/facilities/{f}"), None, Some(&update), &[]).await;
    assert_error(r.status, &r.body, 401, "UNAUTHORIZED");
    let r = app.req("GET", &format!("/v1/facilities/{f}"), Some(&app.platform), None, &[]).await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
}

#[actix_web::test]
async fn import_ndjson_and_csv_over_http() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;

    let ndjson = (0..3)
        .map(|i| {
            let id = fid(400 + i);
            let mut v = standard_facility(&id);
            v["facility_id"] = json!(id);
            if i == 1 {
                v["token_validity_s"] = json!(900);
            }
            v.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let r = app
        .raw(
            "POST",
            "/v1/facilities:import",
            Some(&app.admin),
            Some("application/x-ndjson"),
            Some(ndjson.into_bytes()),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["imported"], 3, "{}", r.text);
    for i in 0..3 {
        let (st, v) = app.get_facility(&fid(400 + i)).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["token_validity_s"], if i == 1 { 900 } else { 1800 });
        assert_eq!(counter_ids(&v).len(), 3);
    }

    let csv = format!(
        "facility_id,name,state,district,timezone,token_validity_s,counters\n\
         {a},PHC Gandhinagar,Jammu and Kashmir,Jammu,,,OPD1:opd;Pharmacy:pharmacy\n\
         {b},\"CHC Bishnah, Block B\",Jammu and Kashmir,Jammu,Asia/Kolkata,600,OPD 1:opd;Lab 2:lab\n\
         {c},SDH Sopore,Jammu and Kashmir,Baramulla,UTC,,Help desk:other\n",
        a = fid(410),
        b = fid(411),
        c = fid(412)
    );
    let r =
        app.raw("POST", "/v1/facilities:import", Some(&app.admin), Some("text/csv"), Some(csv.into_bytes()), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["imported"], 3, "{}", r.text);
    let (st, a) = app.get_facility(&fid(410)).await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["timezone"], "Asia/Kolkata", "empty timezone means the default");
    assert_eq!(a["token_validity_s"], 1800, "empty validity means the default");
    assert_eq!(
        counter_ids(&a),
        [("OPD1", "opd"), ("Pharmacy", "pharmacy")].map(|(x, y)| (x.to_string(), y.to_string()))
    );
    let (_, b) = app.get_facility(&fid(411)).await;
    assert_eq!(b["name"], "CHC Bishnah, Block B", "quoted CSV field");
    assert_eq!(b["token_validity_s"], 600);
    assert_eq!(counter_ids(&b), [("OPD 1", "opd"), ("Lab 2", "lab")].map(|(x, y)| (x.to_string(), y.to_string())));
    let (_, c) = app.get_facility(&fid(412)).await;
    assert_eq!(c["timezone"], "UTC");

    // Imported facilities take scans.
    let v = app.scan_new(&scan_body(&fid(411), "Lab 2", 1)).await;
    assert_eq!(num(&v, "token_number"), 1);

    // Re-importing is an update, not an error.
    let again = format!(
        "{}\n",
        json!({"facility_id": fid(400), "name": "Renamed", "state": "Goa", "district": "North Goa",
               "counters": [{"id": "OPD1", "kind": "opd"}]})
    );
    let r = app
        .raw(
            "POST",
            "/v1/facilities:import",
            Some(&app.admin),
            Some("application/x-ndjson"),
            Some(again.into_bytes()),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, v) = app.get_facility(&fid(400)).await;
    assert_eq!(v["name"], "Renamed");

    // Only admin imports.
    let r = app
        .raw(
            "POST",
            "/v1/facilities:import",
            Some(&app.platform),
            Some("application/x-ndjson"),
            Some(b"{}\n".to_vec()),
            &[],
        )
        .await;
    assert_error(r.status, &r.body, 403, "FORBIDDEN");
}

#[actix_web::test]
async fn import_with_one_bad_line_imports_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    app.register(&fid(420)).await;
    let before = redis.settled_snapshot().await;

    let line = |id: String| {
        let mut v = standard_facility(&id);
        v["facility_id"] = json!(id);
        v.to_string()
    };
    let mut bad_counter = standard_facility("x");
    bad_counter["facility_id"] = json!(fid(423));
    bad_counter["counters"] = json!([{"id": "OPD1", "kind": "opd"}, {"id": "OPD1", "kind": "opd"}]);
    // Line 3 has an invalid facility id, line 4 a duplicate counter.
    let ndjson =
        [line(fid(421)), line(fid(422)), line("bad id!".into()), bad_counter.to_string(), line(fid(424))].join("\n");
    let r = app
        .raw(
            "POST",
            "/v1/facilities:import",
            Some(&app.admin),
            Some("application/x-ndjson"),
            Some(ndjson.into_bytes()),
            &[],
        )
        .await;
    assert_error(r.status, &r.body, 422, "INVALID_IMPORT");
    let lines = r.body["error"]["lines"].as_array().unwrap_or_else(|| panic!("error.lines in {}", r.text));
    let numbers: Vec<u64> = lines.iter().map(|l| num(l, "line")).collect();
    assert_eq!(numbers, [3, 4], "the bad lines are reported by 1-based number: {}", r.text);
    for l in lines {
        assert!(l["code"].is_string() && l["message"].is_string(), "{l}");
    }

    // A CSV with one unknown counter kind.
    let csv = format!(
        "facility_id,name,state,district,timezone,token_validity_s,counters\n\
         {a},PHC One,Goa,North Goa,,,OPD1:opd\n\
         {b},PHC Two,Goa,North Goa,,,OPD1:surgery\n\
         {c},PHC Three,Goa,North Goa,,,OPD1:opd\n",
        a = fid(425),
        b = fid(426),
        c = fid(427)
    );
    let r =
        app.raw("POST", "/v1/facilities:import", Some(&app.admin), Some("text/csv"), Some(csv.into_bytes()), &[]).await;
    assert_error(r.status, &r.body, 422, "INVALID_IMPORT");
    let lines = r.body["error"]["lines"].as_array().unwrap_or_else(|| panic!("error.lines in {}", r.text));
    assert_eq!(lines.len(), 1, "{}", r.text);
    // The file's third line (header = line 1).
    assert_eq!(num(&lines[0], "line"), 3, "{}", r.text);

    // A CSV with the wrong header.
    let r = app
        .raw(
            "POST",
            "/v1/facilities:import",
            Some(&app.admin),
            Some("text/csv"),
            Some(b"id,name\nIN0410000999,X\n".to_vec()),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);

    for i in [421, 422, 424, 425, 427] {
        let (st, v) = app.get_facility(&fid(i)).await;
        assert_error(st, &v, 404, "UNKNOWN_FACILITY");
    }
    let after = redis.settled_snapshot().await;
    assert_same_store(&before, &after, "a refused import stores nothing");
}

#[actix_web::test]
async fn livez_openapi_and_metrics() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let r = app.req("GET", "/livez", None, None, &[]).await;
    assert_eq!(r.status, 200);
    let r = app.req("GET", "/readyz", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = app.req("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.text).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "OpenAPI 3: {}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/scans",
        "/v1/tokens/{token_id}",
        "/v1/facilities/{facility_id}",
        "/v1/facilities/{facility_id}/counters/{counter_id}/call-next",
    ] {
        assert!(paths.contains_key(p), "openapi.json lists {p}; has {:?}", paths.keys().collect::<Vec<_>>());
    }
    assert!(paths["/v1/scans"]["post"].is_object(), "POST /v1/scans documented");

    let f = fid(430);
    app.register(&f).await;
    app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    let (st, _) = app.get_facility(&f).await;
    assert_eq!(st, 200);
    let r = app.req("GET", "/v1/tokens/not-a-token", None, None, &[]).await;
    assert!(r.status >= 400, "{}", r.status);
    let r = app.req("GET", "/metrics", None, None, &[]).await;
    assert_eq!(r.status, 200);
    // Routes under scopes are labelled with their whole pattern, never with an id.
    for route in ["/v1/scans", "/v1/facilities/{facility_id}", "/v1/tokens/{token_id}"] {
        let label = format!("route=\"{route}\"");
        assert!(
            r.text.lines().any(|l| l.starts_with("scangw_http_request_duration_seconds") && l.contains(&label)),
            "HTTP latency labelled {label}"
        );
    }
    assert!(!r.text.contains(&f), "no facility id in a label");
    assert!(r.text.contains("scangw_"), "metrics expose scangw_ series: {}", &r.text[..r.text.len().min(500)]);
    assert!(r.text.lines().any(|l| l.starts_with("# TYPE scangw_")), "Prometheus text format");
    assert!(!r.text.contains(&abha_address(1)), "metrics carry no patient data");
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let redis = RedisServer::start();
    let mut app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let r = app.req("GET", "/v1/nowhere", Some(&app.admin), None, &[]).await;
    assert_error(r.status, &r.body, 404, "NOT_FOUND");
    let r = app.req("DELETE", "/v1/facilities/IN0410000183", Some(&app.admin), None, &[]).await;
    assert_error(r.status, &r.body, 405, "METHOD_NOT_ALLOWED");
    // Inside a facility's routes too: an unknown path is a 404, a wrong method on a known one a 405.
    let r = app.req("GET", "/v1/facilities/IN0410000183/nowhere", Some(&app.admin), None, &[]).await;
    assert_error(r.status, &r.body, 404, "NOT_FOUND");
    let r = app.req("GET", "/v1/tokens/IN0410000183.AAAA/nowhere/else", Some(&app.admin), None, &[]).await;
    assert_error(r.status, &r.body, 404, "NOT_FOUND");
    app.stop().await;
}
