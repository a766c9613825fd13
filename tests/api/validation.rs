//! Malformed and invalid input: the right status and code, the offending field named, no
//! patient data echoed, and nothing stored.
use serde_json::{json, Value};

use crate::helpers::*;

/// Distinctive patient values: none may ever appear in an error body.
const ADDR: &str = "zorawar.leakcheck@abdm";
const NUMBER: &str = "91-7777-8888-9999";
const NAME: &str = "Zorawar Leakcheck";
const PHONE: &str = "9876501234";

fn base(f: &str) -> Value {
    json!({
        "facility_id": f,
        "counter_id": "OPD1",
        "patient": {
            "abha_address": ADDR,
            "abha_number": NUMBER,
            "name": NAME,
            "gender": "M",
            "year_of_birth": 1984,
            "phone": PHONE
        }
    })
}

fn with(f: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = base(f);
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

struct Case {
    name: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
    /// Submitted values that must not come back.
    secrets: Vec<String>,
}

fn case(name: &'static str, body: Vec<u8>, status: u16, code: &'static str, field: Option<&'static str>) -> Case {
    Case { name, content_type: "application/json", body, status, code, field, secrets: vec![] }
}

#[actix_web::test]
async fn invalid_scans_get_the_right_error_echo_no_patient_data_and_store_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(200);
    app.register(&f).await;
    // Activate the facility (one valid scan elsewhere), then freeze the store.
    let warm = app.scan_new(&scan_body(&f, "Pharmacy", 1)).await;
    assert_eq!(num(&warm, "token_number"), 1);
    let before = redis.settled_snapshot().await;

    let long_name: String = "Leakcheckname".repeat(40); // 520 letters
    let huge_name: String = "Hugeleakname".repeat(2000); // 24 KB
    let mut cases = vec![
        case("syntax error", br#"{"facility_id": "IN01", "counter_id": "#.to_vec(), 400, "MALFORMED_JSON", None),
        case("empty body", Vec::new(), 400, "MALFORMED_JSON", None),
        case(
            "trailing garbage",
            {
                let mut b = with(&f, |_| {});
                b.extend_from_slice(b" }}");
                b
            },
            400,
            "MALFORMED_JSON",
            None,
        ),
        case(
            "missing patient",
            with(&f, |v| {
                v.as_object_mut().unwrap().remove("patient");
            }),
            400,
            "MISSING_FIELD",
            Some("patient"),
        ),
        case(
            "missing counter_id",
            with(&f, |v| {
                v.as_object_mut().unwrap().remove("counter_id");
            }),
            400,
            "MISSING_FIELD",
            Some("counter_id"),
        ),
        case(
            "missing year_of_birth",
            with(&f, |v| {
                v["patient"].as_object_mut().unwrap().remove("year_of_birth");
            }),
            400,
            "MISSING_FIELD",
            Some("patient.year_of_birth"),
        ),
        case(
            "missing abha_address",
            with(&f, |v| {
                v["patient"].as_object_mut().unwrap().remove("abha_address");
            }),
            400,
            "MISSING_FIELD",
            Some("patient.abha_address"),
        ),
        case(
            "unknown top-level field",
            with(&f, |v| {
                v["loyalty_card"] = json!("x");
            }),
            400,
            "UNKNOWN_FIELD",
            Some("loyalty_card"),
        ),
        case(
            "unknown patient field",
            with(&f, |v| {
                v["patient"]["email"] = json!("zorawar@example.com");
            }),
            400,
            "UNKNOWN_FIELD",
            Some("patient.email"),
        ),
        case(
            "year_of_birth as string",
            with(&f, |v| {
                v["patient"]["year_of_birth"] = json!("1984");
            }),
            400,
            "INVALID_TYPE",
            Some("patient.year_of_birth"),
        ),
        case(
            "year_of_birth fractional",
            with(&f, |v| {
                v["patient"]["year_of_birth"] = json!(1984.5);
            }),
            400,
            "INVALID_TYPE",
            Some("patient.year_of_birth"),
        ),
        case(
            "facility_id as number",
            with(&f, |v| {
                v["facility_id"] = json!(1234);
            }),
            400,
            "INVALID_TYPE",
            Some("facility_id"),
        ),
        case(
            "patient as array",
            with(&f, |v| {
                v["patient"] = json!([NAME]);
            }),
            400,
            "INVALID_TYPE",
            Some("patient"),
        ),
        case(
            "abha address not an address",
            with(&f, |v| {
                v["patient"]["abha_address"] = json!("zorawarleakcheck");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.abha_address"),
        ),
        case(
            "abha address wrong domain",
            with(&f, |v| {
                v["patient"]["abha_address"] = json!("zorawar.leakcheck@gmail.com");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.abha_address"),
        ),
        case(
            "abha address empty local part",
            with(&f, |v| {
                v["patient"]["abha_address"] = json!("@abdm");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.abha_address"),
        ),
        case(
            "gender not in M F O D T U",
            with(&f, |v| {
                v["patient"]["gender"] = json!("X");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.gender"),
        ),
        case(
            "year_of_birth in the future",
            with(&f, |v| {
                v["patient"]["year_of_birth"] = json!(2031);
            }),
            422,
            "INVALID_FIELD",
            Some("patient.year_of_birth"),
        ),
        case(
            "year_of_birth before 1900",
            with(&f, |v| {
                v["patient"]["year_of_birth"] = json!(1850);
            }),
            422,
            "INVALID_FIELD",
            Some("patient.year_of_birth"),
        ),
        case(
            "abha_address beginning with -",
            with(&f, |v| {
                v["patient"]["abha_address"] = json!("-zorawar.leakcheck@abdm");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.abha_address"),
        ),
        case(
            "abha_address ending with !",
            with(&f, |v| {
                v["patient"]["abha_address"] = json!("zorawar.leakcheck!@abdm");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.abha_address"),
        ),
        case(
            "name with a control character",
            with(&f, |v| {
                v["patient"]["name"] = json!("Zorawar\u{0007}Leakcheck");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.name"),
        ),
        case(
            "empty name",
            with(&f, |v| {
                v["patient"]["name"] = json!("");
            }),
            422,
            "INVALID_FIELD",
            Some("patient.name"),
        ),
        case(
            "name too long",
            with(&f, |v| {
                v["patient"]["name"] = json!(long_name.clone());
            }),
            422,
            "INVALID_FIELD",
            Some("patient.name"),
        ),
        case(
            "counter id with a bad character",
            with(&f, |v| {
                v["counter_id"] = json!("OPD/1");
            }),
            422,
            "INVALID_FIELD",
            Some("counter_id"),
        ),
        case(
            "counter id starting with a dot",
            with(&f, |v| {
                v["counter_id"] = json!(".OPD1");
            }),
            422,
            "INVALID_FIELD",
            Some("counter_id"),
        ),
        case(
            "counter id too long",
            with(&f, |v| {
                v["counter_id"] = json!("C".repeat(251));
            }),
            422,
            "INVALID_FIELD",
            Some("counter_id"),
        ),
        case(
            "body over 16 KiB",
            with(&f, |v| {
                v["patient"]["name"] = json!(huge_name.clone());
            }),
            413,
            "PAYLOAD_TOO_LARGE",
            None,
        ),
    ];
    let mut text_plain = case("text/plain body", with(&f, |_| {}), 415, "UNSUPPORTED_MEDIA_TYPE", None);
    text_plain.content_type = "text/plain";
    cases.push(text_plain);
    let mut form = case("form body", b"facility_id=x&counter_id=OPD1".to_vec(), 415, "UNSUPPORTED_MEDIA_TYPE", None);
    form.content_type = "application/x-www-form-urlencoded";
    cases.push(form);
    for c in cases.iter_mut() {
        c.secrets.extend([
            ADDR.to_string(),
            "zorawar".to_string(),
            "Zorawar".to_string(),
            "Leakcheck".to_string(),
            "7777-8888".to_string(),
            "77778888".to_string(),
            "98765".to_string(),
            "Hugeleakname".to_string(),
        ]);
    }
    assert!(cases.len() >= 30, "{}", cases.len());

    let mut failures = Vec::new();
    for c in &cases {
        let r =
            app.raw("POST", "/v1/scans", Some(&app.platform), Some(c.content_type), Some(c.body.clone()), &[]).await;
        let mut problems = Vec::new();
        if r.status != c.status {
            problems.push(format!("status {} (want {})", r.status, c.status));
        }
        if r.body["error"]["code"].as_str() != Some(c.code) {
            problems.push(format!("code {} (want {})", r.body["error"]["code"], c.code));
        }
        if !r.body["error"]["message"].is_string() {
            problems.push("no error.message".into());
        }
        if let Some(field) = c.field {
            if r.body["error"]["field"].as_str() != Some(field) {
                problems.push(format!("field {} (want {field})", r.body["error"]["field"]));
            }
        }
        for secret in &c.secrets {
            if r.text.contains(secret.as_str()) {
                problems.push(format!("body echoes patient data {secret:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} — body: {}",
                c.name,
                problems.join("; "),
                r.text.chars().take(300).collect::<String>()
            ));
        }
    }

    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let after = redis.settled_snapshot().await;
    assert_same_store(&before, &after, "invalid scans must store nothing");

    // No number was consumed: the same patient, now valid, is OPD1's first token.
    let ok =
        app.raw("POST", "/v1/scans", Some(&app.platform), Some("application/json"), Some(with(&f, |_| {})), &[]).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(num(&ok.body, "token_number"), 1, "{}", ok.text);
}

#[actix_web::test]
async fn content_type_with_charset_and_valid_edge_values_are_accepted() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(201);
    app.register(&f).await;
    let ok = |edit: fn(&mut Value)| {
        let mut v = base(&f);
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let accepted: Vec<(&str, Vec<u8>)> = vec![
        ("charset parameter", ok(|_| {})),
        (
            "no optional fields",
            ok(|v| {
                let p = v["patient"].as_object_mut().unwrap();
                p.remove("abha_number");
                p.remove("phone");
                v["patient"]["abha_address"] = json!("edge.one@abdm");
            }),
        ),
        (
            "sandbox address, undashed number",
            ok(|v| {
                v["patient"]["abha_address"] = json!("edge_two@sbx");
                v["patient"]["abha_number"] = json!("12345678901234");
            }),
        ),
        (
            "phone with a country code (NHA's pattern), dashes",
            ok(|v| {
                v["patient"]["abha_address"] = json!("edge4four@abdm");
                v["patient"]["abha_number"] = json!("91-4444-5555-6666");
                v["patient"]["phone"] = json!("+91-98765-01234");
            }),
        ),
        (
            // Optional fields never cost the token: dropped and counted, not 422.
            "phone with 9 digits, abha_number with letters",
            ok(|v| {
                v["patient"]["abha_address"] = json!("edge5five@abdm");
                v["patient"]["phone"] = json!("987650123");
                v["patient"]["abha_number"] = json!("91-7777-8888-99A9");
            }),
        ),
        (
            "year 1900, gender U",
            ok(|v| {
                v["patient"]["abha_address"] = json!("edge3three@abdm");
                v["patient"]["abha_number"] = json!("91-1111-2222-3333");
                v["patient"]["year_of_birth"] = json!(1900);
                v["patient"]["gender"] = json!("U");
            }),
        ),
    ];
    for (i, (what, body)) in accepted.into_iter().enumerate() {
        let ct = if i == 0 { "application/json; charset=utf-8" } else { "application/json" };
        let r = app.raw("POST", "/v1/scans", Some(&app.platform), Some(ct), Some(body), &[]).await;
        assert_eq!(r.status, 201, "{what}: {}", r.text);
        assert_eq!(num(&r.body, "token_number"), i as u64 + 1, "{what}");
    }
}

#[actix_web::test]
async fn invalid_facility_and_transfer_bodies_are_refused_and_store_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis, TestApp::clock_at(START)).await;
    let f = fid(202);
    app.register(&f).await;
    let (_, staff) = app.create_staff_key(&f).await;
    let t = app.scan_new(&scan_body(&f, "OPD1", 1)).await;
    let before = redis.settled_snapshot().await;

    let good = |id: &str| standard_facility(id);
    type BadPut<'a> = (&'a str, String, Value, u16, &'a str, Option<&'a str>);
    let mut bad: Vec<BadPut> = Vec::new();
    let g = fid(203);
    bad.push(("facility id with a space", "IN04 BAD".into(), good("x"), 422, "INVALID_FIELD", None));
    bad.push(("facility id too short", "I".into(), good("x"), 422, "INVALID_FIELD", None));
    bad.push(("facility id with a colon", "IN04:1".into(), good("x"), 422, "INVALID_FIELD", None));
    bad.push(("facility id with a brace", "IN04{1}".into(), good("x"), 422, "INVALID_FIELD", None));
    let mut dup = good(&g);
    dup["counters"] = json!([{"id": "OPD1", "kind": "opd"}, {"id": "OPD1", "kind": "lab"}]);
    bad.push(("duplicate counter ids", g.clone(), dup, 422, "INVALID_FIELD", None));
    let mut bad_cid = good(&g);
    bad_cid["counters"] = json!([{"id": "OPD1-", "kind": "opd"}]);
    bad.push(("counter id ending with a dash", g.clone(), bad_cid, 422, "INVALID_FIELD", None));
    let mut tz = good(&g);
    tz["timezone"] = json!("Mars/Olympus");
    bad.push(("unknown timezone", g.clone(), tz, 422, "INVALID_FIELD", Some("timezone")));
    let mut no_name = good(&g);
    no_name.as_object_mut().unwrap().remove("name");
    bad.push(("missing name", g.clone(), no_name, 400, "MISSING_FIELD", Some("name")));
    let mut validity = good(&g);
    validity["token_validity_s"] = json!("long");
    bad.push(("validity as string", g.clone(), validity, 400, "INVALID_TYPE", Some("token_validity_s")));
    let mut zero_validity = good(&g);
    zero_validity["token_validity_s"] = json!(0);
    bad.push(("validity zero", g.clone(), zero_validity, 422, "INVALID_FIELD", Some("token_validity_s")));

    let mut failures = Vec::new();
    for (what, id, body, status, code, field) in &bad {
        let path = format!("/v1/facilities/{}", id.replace(' ', "%20").replace('{', "%7B").replace('}', "%7D"));
        let r = app.req("PUT", &path, Some(&app.admin), Some(body), &[]).await;
        if r.status != *status || r.body["error"]["code"].as_str() != Some(code) {
            failures.push(format!("{what}: got {} {} (want {status} {code})", r.status, r.text));
        } else if let Some(field) = field {
            if r.body["error"]["field"].as_str() != Some(field) {
                failures.push(format!("{what}: field {} (want {field})", r.body["error"]["field"]));
            }
        }
    }

    // Transfer bodies.
    let tid = s(&t, "token_id");
    for (what, body, status, code) in [
        ("transfer without counter_id", json!({}), 400, "MISSING_FIELD"),
        ("transfer counter_id as number", json!({"counter_id": 2}), 400, "INVALID_TYPE"),
        ("transfer unknown field", json!({"counter_id": "OPD2", "why": "x"}), 400, "UNKNOWN_FIELD"),
    ] {
        let r = app.req("POST", &format!("/v1/tokens/{tid}/transfer"), Some(&staff), Some(&body), &[]).await;
        if r.status != status || r.body["error"]["code"].as_str() != Some(code) {
            failures.push(format!("{what}: got {} {} (want {status} {code})", r.status, r.text));
        }
    }
    let r = app
        .raw(
            "POST",
            &format!("/v1/tokens/{tid}/transfer"),
            Some(&staff),
            Some("application/json"),
            Some(b"{\"counter_id\":".to_vec()),
            &[],
        )
        .await;
    if r.status != 400 || r.body["error"]["code"] != "MALFORMED_JSON" {
        failures.push(format!("transfer malformed: got {} {}", r.status, r.text));
    }

    assert!(failures.is_empty(), "{} wrong:\n{}", failures.len(), failures.join("\n"));
    let after = redis.settled_snapshot().await;
    assert_same_store(&before, &after, "invalid registry/transfer requests must store nothing");
    let (_, v) = app.get_token(tid, &staff).await;
    assert_eq!(v["status"], "waiting");
    assert_eq!(v["counter_id"], "OPD1");
}
