//! The national protocol end to end against an HIE-CM double (an actix-web server on a free
//! port): JWT-signed v3 and v1.0 shares, the on-share callbacks it records, failures,
//! retries, redelivery, a gateway restart with undelivered callbacks, and the delay; deadlines,
//! permanent refusals, the outbox bound, the switch's client id and JWKS key rotation.
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::future::join_all;
use redis::Commands;
use serde_json::{json, Value};

use crate::helpers::*;

pub const KEY1: &str = include_str!("../fixtures/protocol/jwt/test-only-key1.pem");
const KEY2: &str = include_str!("../fixtures/protocol/jwt/test-only-key2.pem");
const JWKS: &str = "tests/fixtures/protocol/jwt/jwks.json";
const JWKS_ROTATED: &str = "tests/fixtures/protocol/jwt/jwks-rotated.json";
pub const ISSUER: &str = "test-hiecm";
/// The switch's own OAuth client, as its JWTs name it (`clientId`, `azp`).
pub const SWITCH_CLIENT: &str = "test-switch";
const SESSION_TOKEN: &str = "cm-session-token-0123456789";

/// One callback the double received.
#[derive(Debug, Clone)]
pub struct Callback {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct Recorder {
    pub callbacks: Mutex<Vec<Callback>>,
    /// Attempts answered with `fail_status` before the next success.
    pub fail_next: AtomicUsize,
    /// The status of a failed attempt (0 = 500).
    pub fail_status: AtomicU16,
    pub attempts: AtomicUsize,
    pub sessions: AtomicUsize,
    /// The JWKS document `/jwks` serves now (the test rotates it), and how often it was fetched.
    pub jwks: Mutex<String>,
    pub jwks_fetches: AtomicUsize,
}

impl Recorder {
    pub fn delivered(&self) -> Vec<Callback> {
        self.callbacks.lock().unwrap().clone()
    }
}

/// The HIE-CM double: session endpoint, on-share endpoints (v3 and v1.0), JWKS.
pub struct Hiecm {
    pub base: String,
    pub rec: Arc<Recorder>,
}

async fn session(body: web::Json<Value>, rec: web::Data<Recorder>) -> HttpResponse {
    rec.sessions.fetch_add(1, Ordering::SeqCst);
    if body["clientId"] != "gateway-client" || body["clientSecret"] != "gateway-secret-0123456789" {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok().json(json!({"accessToken": SESSION_TOKEN, "expiresIn": 600, "tokenType": "bearer"}))
}

async fn on_share(req: HttpRequest, body: web::Bytes, rec: web::Data<Recorder>) -> HttpResponse {
    rec.attempts.fetch_add(1, Ordering::SeqCst);
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Bearer {SESSION_TOKEN}") {
        return HttpResponse::Unauthorized().finish();
    }
    if rec.fail_next.load(Ordering::SeqCst) > 0 {
        rec.fail_next.fetch_sub(1, Ordering::SeqCst);
        let status = match rec.fail_status.load(Ordering::SeqCst) {
            0 => 500,
            s => s,
        };
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish();
    }
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_uppercase(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body: Value = serde_json::from_slice(&body).expect("on-share body is JSON");
    rec.callbacks.lock().unwrap().push(Callback { path: req.path().to_string(), headers, body, at: Instant::now() });
    HttpResponse::Accepted().finish()
}

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn jwks(rec: web::Data<Recorder>) -> HttpResponse {
    rec.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let doc = rec.jwks.lock().unwrap().clone();
    HttpResponse::Ok().content_type("application/json").body(doc)
}

impl Hiecm {
    pub async fn start() -> Hiecm {
        let rec = Arc::new(Recorder { jwks: Mutex::new(fixture(JWKS)), ..Recorder::default() });
        let data = web::Data::from(rec.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/api/hiecm/gateway/v3/sessions", web::post().to(session))
                .route("/api/hiecm/patient-share/v3/on-share", web::post().to(on_share))
                // NHA's v1.0 callbacks live under the gateway prefix (issue 35 item 2); the
                // bare `/v1.0/...` path is deliberately not served.
                .route("/gateway/v1.0/patients/profile/on-share", web::post().to(on_share))
                // Configured callback URLs (SCANGW_HIECM_V*_ON_SHARE_URL).
                .route("/custom/v3-on-share", web::post().to(on_share))
                .route("/custom/v1-on-share", web::post().to(on_share))
                .route("/jwks", web::get().to(jwks))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        // Stops with the test's actix system.
        actix_rt::spawn(server);
        Hiecm { base: format!("http://127.0.0.1:{port}"), rec }
    }

    /// Waits until `n` callbacks were delivered.
    pub async fn wait_for(&self, n: usize, what: &str) -> Vec<Callback> {
        let rec = self.rec.clone();
        eventually(Duration::from_secs(20), what, || {
            let rec = rec.clone();
            async move { rec.delivered().len() >= n }
        })
        .await;
        self.rec.delivered()
    }
}

pub fn protocol_settings(redis: &RedisServer, hiecm: &Hiecm) -> scan_gateway::config::Settings {
    let mut s = scan_gateway::config::Settings::for_tests(&redis.url());
    s.hiecm_base_url = hiecm.base.clone();
    s.hiecm_client_id = "gateway-client".into();
    s.hiecm_client_secret = "gateway-secret-0123456789".into();
    s.jwks_file = format!("{}/{JWKS}", env!("CARGO_MANIFEST_DIR"));
    s.jwt_issuer = ISSUER.into();
    s.jwt_audience = "account".into();
    s.switch_jwt_client_id = SWITCH_CLIENT.into();
    s.onshare_backoff_ms = 20;
    s.onshare_backoff_max_ms = 200;
    s.onshare_claim_idle_ms = 1000;
    s
}

/// A JWT as the switch signs it, valid around the app's clock: a Keycloak service-account
/// token of the switch's client (`aud` is `account` in every token of that realm).
pub fn jwt(app: &TestApp, key: &str, kid: &str, exp_in: i64, iss: &str) -> String {
    jwt_for(app, key, kid, exp_in, iss, SWITCH_CLIENT)
}

/// The same, issued to the OAuth client `client`.
pub fn jwt_for(app: &TestApp, key: &str, kid: &str, exp_in: i64, iss: &str, client: &str) -> String {
    let now = app.clock_now().as_second();
    let claims = json!({"iss": iss, "sub": "service-account", "aud": "account", "iat": now, "exp": now + exp_in,
                        "azp": client, "clientId": client, "realm_access": {"roles": ["offline_access"]}});
    scan_gateway::protocol::jwt::sign_rs256_for_tests(key, kid, &claims)
}

pub fn v3_body(facility: &str, counter: &str, i: usize) -> Value {
    let p = patient(i);
    json!({
        "intent": "PROFILE_SHARE",
        "metaData": {"hipId": facility, "context": counter, "hprId": "71-0000-0000-0001", "latitude": "28.56", "longitude": "77.21"},
        "profile": {"patient": {
            "abhaNumber": p["abha_number"], "abhaAddress": p["abha_address"], "name": p["name"],
            "gender": p["gender"], "dayOfBirth": "15", "monthOfBirth": "1",
            "yearOfBirth": p["year_of_birth"].to_string(), "phoneNumber": p["phone"],
            "address": {"line": "1 MG Road", "district": "Mysuru", "state": "KARNATAKA", "pincode": "570001"}
        }}
    })
}

impl TestApp {
    pub fn clock_now(&self) -> jiff::Timestamp {
        use scan_gateway::clock::Clock;
        self.clock.now()
    }

    /// Sends a v3 share with a fresh request id unless one is given; returns (status, body, request id).
    pub async fn share_v3(&self, bearer: &str, body: &Value, rid: Option<&str>) -> (u16, Value, String) {
        let rid = rid.map_or_else(scan_gateway::protocol::hiecm::new_request_id, str::to_string);
        let ts = scan_gateway::protocol::hiecm::timestamp(self.clock_now());
        let hip = body["metaData"]["hipId"].as_str().unwrap_or("IN0000000000").to_string();
        let r = self
            .req(
                "POST",
                "/api/v3/hip/patient/share",
                Some(bearer),
                Some(body),
                &[("REQUEST-ID", &rid), ("TIMESTAMP", &ts), ("X-HIP-ID", &hip)],
            )
            .await;
        (r.status, r.body, rid)
    }
}

fn outbox_len(redis: &RedisServer) -> u64 {
    redis.conn().xlen("sg:{outbox}:shares").unwrap_or(0)
}

pub fn for_request<'a>(cbs: &'a [Callback], rid: &str) -> Vec<&'a Callback> {
    cbs.iter().filter(|c| c.body["response"]["requestId"] == rid || c.body["resp"]["requestId"] == rid).collect()
}

#[actix_web::test]
async fn a_v3_share_is_answered_202_and_its_token_arrives_by_on_share() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = fid(800);
    app.register(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    let started = Instant::now();
    let (st, body, rid) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "the share is answered at once");
    assert_eq!(body["requestId"], rid.as_str());
    let cbs = hiecm.wait_for(1, "the on-share callback").await;
    let cb = &cbs[0];
    assert_eq!(cb.path, "/api/hiecm/patient-share/v3/on-share");
    assert_eq!(
        cb.body,
        json!({"acknowledgement": {"status": "SUCCESS", "abhaAddress": abha_address(1),
               "profile": {"context": "OPD1", "tokenNumber": "1", "expiry": "1800"}},
               "response": {"requestId": rid}})
    );
    for h in ["REQUEST-ID", "TIMESTAMP", "X-CM-ID"] {
        assert!(cb.headers.contains_key(h), "{h} sent: {:?}", cb.headers);
    }
    assert_ne!(cb.headers["REQUEST-ID"], rid, "the callback carries a new REQUEST-ID");
    assert_eq!(cb.headers["X-CM-ID"], "sbx");
    // The token is a real one: the same patient scanning through the native API gets it back.
    let (st, again) = app.scan(&scan_body(&f, "OPD1", 1)).await;
    assert_eq!((st, again["token_number"].as_u64()), (200, Some(1)), "{again}");
    eventually(Duration::from_secs(5), "outbox emptied", || async { outbox_len(&redis) == 0 }).await;
    assert_eq!(hiecm.rec.sessions.load(Ordering::SeqCst), 1, "the session bearer is cached");
}

#[actix_web::test]
async fn shares_are_refused_before_the_outbox_without_a_valid_jwt_or_headers() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = fid(801);
    app.register(&f).await;
    let body = v3_body(&f, "OPD1", 1);
    let good = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    for (bearer, what) in [
        (String::new(), "TOKEN_MISSING"),
        (jwt(&app, KEY1, "test-key-1", -600, ISSUER), "TOKEN_EXPIRED"),
        (jwt(&app, KEY2, "test-key-1", 300, ISSUER), "TOKEN_BAD_SIGNATURE"),
        (jwt(&app, KEY2, "test-key-9", 300, ISSUER), "TOKEN_UNKNOWN_KEY"),
        (jwt(&app, KEY1, "test-key-1", 300, "someone-else"), "TOKEN_WRONG_ISSUER"),
    ] {
        let r = app
            .req(
                "POST",
                "/api/v3/hip/patient/share",
                (!bearer.is_empty()).then_some(bearer.as_str()),
                Some(&body),
                &[
                    ("REQUEST-ID", &scan_gateway::protocol::hiecm::new_request_id()),
                    ("TIMESTAMP", "2026-11-23T04:00:00.000Z"),
                    ("X-HIP-ID", &f),
                ],
            )
            .await;
        assert_error(r.status, &r.body, 401, what);
    }
    let rid = scan_gateway::protocol::hiecm::new_request_id();
    for (headers, field, what) in [
        (vec![("TIMESTAMP", "2026-11-23T04:00:00.000Z"), ("X-HIP-ID", f.as_str())], "REQUEST-ID", "no REQUEST-ID"),
        (
            vec![("REQUEST-ID", "not-a-uuid"), ("TIMESTAMP", "2026-11-23T04:00:00.000Z"), ("X-HIP-ID", f.as_str())],
            "REQUEST-ID",
            "bad REQUEST-ID",
        ),
        (vec![("REQUEST-ID", rid.as_str()), ("X-HIP-ID", f.as_str())], "TIMESTAMP", "no TIMESTAMP"),
        (
            vec![("REQUEST-ID", rid.as_str()), ("TIMESTAMP", "yesterday"), ("X-HIP-ID", f.as_str())],
            "TIMESTAMP",
            "bad TIMESTAMP",
        ),
        (vec![("REQUEST-ID", rid.as_str()), ("TIMESTAMP", "2026-11-23T04:00:00.000Z")], "X-HIP-ID", "no X-HIP-ID"),
        (
            // (One that differs from metaData.hipId is routed on, not refused: issue 35 item 9.)
            vec![("REQUEST-ID", rid.as_str()), ("TIMESTAMP", "2026-11-23T04:00:00.000Z"), ("X-HIP-ID", "IN 999")],
            "X-HIP-ID",
            "X-HIP-ID not a facility id",
        ),
    ] {
        let r = app.req("POST", "/api/v3/hip/patient/share", Some(&good), Some(&body), &headers).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{what}: {}", r.text);
    }
    let r = app
        .raw(
            "POST",
            "/v3/hip/patient/share",
            Some(&good),
            Some("application/json"),
            Some(b"{not json".to_vec()),
            &[("REQUEST-ID", &rid), ("TIMESTAMP", "2026-11-23T04:00:00.000Z"), ("X-HIP-ID", &f)],
        )
        .await;
    assert_error(r.status, &r.body, 400, "MALFORMED_JSON");
    assert_eq!(outbox_len(&redis), 0, "nothing refused reaches the outbox");
    assert!(hiecm.rec.delivered().is_empty());
}

#[actix_web::test]
async fn bad_profiles_and_unknown_places_get_failure_on_shares_never_silence() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.limit_patient_per_min = 1;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(802);
    app.register(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    let mut bad_profile = v3_body(&f, "OPD1", 3);
    bad_profile["profile"]["patient"]["abhaAddress"] = json!("not-an-address");
    let cases = [
        (v3_body(&fid(899), "OPD1", 1), "UNKNOWN_FACILITY"),
        (v3_body(&f, "Radiology", 2), "UNKNOWN_COUNTER"),
        (bad_profile, "INVALID_PROFILE"),
    ];
    let mut rids = Vec::new();
    for (body, code) in &cases {
        let (st, v, rid) = app.share_v3(&bearer, body, None).await;
        assert_eq!(st, 202, "{code}: {v}");
        rids.push((rid, *code));
    }
    // The same patient twice within the patient limit's minute: the second is rate limited.
    let (_, _, first) = app.share_v3(&bearer, &v3_body(&f, "OPD2", 4), None).await;
    let (_, _, second) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 4), None).await;
    let cbs = hiecm.wait_for(5, "five on-shares").await;
    for (rid, code) in &rids {
        let got = for_request(&cbs, rid);
        assert_eq!(got.len(), 1, "{code}");
        // The switch's documented v3 code; ours leads the message.
        assert_eq!(got[0].body["error"]["code"], "ABDM-9999", "{}", got[0].body);
        let message = got[0].body["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with(&format!("{code}: ")), "{}", got[0].body);
        let text = got[0].body.to_string();
        for i in 1..=3 {
            for v in [abha_address(i), abha_number(i)] {
                assert!(!text.contains(&v), "no patient data in a failure: {text}");
            }
        }
        assert!(!text.contains("not-an-address"), "the refused value is not echoed: {text}");
    }
    // Exactly one of the two went through (their order inside the worker is not fixed).
    let outcome = |rid: &str| {
        let b = &for_request(&cbs, rid)[0].body;
        let ours = b["error"]["message"].as_str().and_then(|m| m.split(':').next());
        b["acknowledgement"]["status"].as_str().or(ours).unwrap_or("").to_string()
    };
    let mut got = [outcome(&first), outcome(&second)];
    got.sort();
    assert_eq!(got, ["RATE_LIMITED".to_string(), "SUCCESS".to_string()]);
}

#[actix_web::test]
async fn callbacks_that_fail_are_retried_and_redelivered_shares_never_get_a_second_token() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = fid(803);
    app.register(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    hiecm.rec.fail_next.store(2, Ordering::SeqCst);
    let (st, _, rid) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202);
    let cbs = hiecm.wait_for(1, "the callback after two failures").await;
    assert_eq!(hiecm.rec.attempts.load(Ordering::SeqCst), 3, "two failed attempts, then one that landed");
    assert_eq!(for_request(&cbs, &rid)[0].body["acknowledgement"]["profile"]["tokenNumber"], "1");

    // The switch redelivers the same share (same REQUEST-ID): same token, a repeated on-share.
    let (st, _, _) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), Some(&rid)).await;
    assert_eq!(st, 202);
    // A second share of the same patient at the same counter, new REQUEST-ID: the same token.
    let (_, _, rid2) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), None).await;
    let cbs = hiecm.wait_for(3, "the repeated on-shares").await;
    assert_eq!(for_request(&cbs, &rid).len(), 2);
    for cb in for_request(&cbs, &rid).into_iter().chain(for_request(&cbs, &rid2)) {
        assert_eq!(cb.body["acknowledgement"]["profile"]["tokenNumber"], "1", "{}", cb.body);
    }
    let stored: u64 = redis.conn().hlen(format!("sg:{{{f}}}:d:{START_DATE}:t")).unwrap();
    assert_eq!(stored, 1, "one token for the patient, however often the share came");
    eventually(Duration::from_secs(5), "outbox emptied", || async { outbox_len(&redis) == 0 }).await;
}

#[actix_web::test]
async fn a_v1_share_gets_a_v1_on_share() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = fid(804);
    app.register(&f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    let rid = scan_gateway::protocol::hiecm::new_request_id();
    let p = patient(7);
    let body = json!({
        "requestId": rid, "timestamp": "2026-11-23T04:00:00.000Z",
        "profile": {"hipCode": "OPD2", "patient": {
            "healthId": p["abha_address"], "healthIdNumber": p["abha_number"], "name": p["name"],
            "gender": p["gender"], "yearOfBirth": p["year_of_birth"],
            "identifiers": [{"type": "MOBILE", "value": p["phone"]}]
        }}
    });
    let r = app.req("POST", "/v1.0/patients/profile/share", Some(&bearer), Some(&body), &[("X-HIP-ID", &f)]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cbs = hiecm.wait_for(1, "the v1.0 on-share").await;
    assert_eq!(cbs[0].path, "/gateway/v1.0/patients/profile/on-share", "NHA's v1.0 callback path");
    assert_eq!(cbs[0].body["resp"]["requestId"], rid.as_str());
    assert_eq!(cbs[0].body["acknowledgement"]["status"], "SUCCESS");
    assert_eq!(cbs[0].body["acknowledgement"]["tokenNumber"], "1");
}

#[actix_web::test]
async fn undelivered_callbacks_survive_a_gateway_restart() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let clock = TestApp::clock_at(START);
    let mut a = TestApp::spawn_with(protocol_settings(&redis, &hiecm), clock.clone()).await;
    let f = fid(805);
    a.register(&f).await;
    let bearer = jwt(&a, KEY1, "test-key-1", 300, ISSUER);
    hiecm.rec.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let mut rids = Vec::new();
    for i in 0..3 {
        let (st, _, rid) = a.share_v3(&bearer, &v3_body(&f, "OPD1", i), None).await;
        assert_eq!(st, 202);
        rids.push(rid);
    }
    let rec = hiecm.rec.clone();
    eventually(Duration::from_secs(10), "the first gateway tried and failed", || {
        let rec = rec.clone();
        async move { rec.attempts.load(Ordering::SeqCst) >= 3 }
    })
    .await;
    a.stop().await;
    assert_eq!(outbox_len(&redis), 3, "undelivered callbacks stay in the outbox");
    hiecm.rec.fail_next.store(0, Ordering::SeqCst);
    // A new process (a new consumer) takes the idle entries over and delivers them.
    let b = TestApp::spawn_with(protocol_settings(&redis, &hiecm), clock.clone()).await;
    let cbs = hiecm.wait_for(3, "callbacks delivered by the restarted gateway").await;
    let mut numbers: Vec<String> = rids
        .iter()
        .map(|rid| {
            let got = for_request(&cbs, rid);
            assert_eq!(got.len(), 1, "each callback delivered once");
            got[0].body["acknowledgement"]["profile"]["tokenNumber"].as_str().unwrap().to_string()
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, ["1", "2", "3"], "the tokens issued before the restart, not new ones");
    eventually(Duration::from_secs(5), "outbox emptied", || async { outbox_len(&redis) == 0 }).await;
    drop(b);
}

#[actix_web::test]
async fn share_to_on_share_delay_under_load() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let facilities: Vec<String> = (0..10).map(|i| fid(810 + i)).collect();
    for f in &facilities {
        app.register(f).await;
    }
    let bearer = jwt(&app, KEY1, "test-key-1", 600, ISSUER);
    let n = 300;
    let sent: Vec<(String, Instant)> = join_all((0..n).map(|i| {
        let (app, bearer, f) = (&app, &bearer, &facilities[i % 10]);
        async move {
            let t = Instant::now();
            let (st, v, rid) = app.share_v3(bearer, &v3_body(f, "OPD1", 10_000 + i), None).await;
            assert_eq!(st, 202, "{v}");
            (rid, t)
        }
    }))
    .await;
    let cbs = hiecm.wait_for(n, "every on-share").await;
    let at: BTreeMap<String, Instant> =
        cbs.iter().map(|c| (c.body["response"]["requestId"].as_str().unwrap().to_string(), c.at)).collect();
    let mut delays: Vec<Duration> = sent.iter().map(|(rid, t)| at[rid].duration_since(*t)).collect();
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).min(delays.len()) - 1];
    println!("share -> on-share over {n} concurrent shares (debug build): p50 {:?}, p99 {:?}", pct(0.5), pct(0.99));
    assert!(cbs.iter().all(|c| c.body["acknowledgement"]["status"] == "SUCCESS"));
    assert_eq!(cbs.len(), n, "one callback per share");
}

#[actix_web::test]
async fn keys_can_come_from_a_jwks_url_and_verification_off_must_be_explicit() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.jwks_file = String::new();
    settings.jwks_url = format!("{}/jwks", hiecm.base);
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(830);
    app.register(&f).await;
    let (st, v, _) = app.share_v3(&jwt(&app, KEY1, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202, "a key fetched from the JWKS URL verifies: {v}");
    let (st, _, _) = app.share_v3(&jwt(&app, KEY2, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 2), None).await;
    assert_eq!(st, 401);
    hiecm.wait_for(1, "the on-share").await;

    // Neither a JWKS nor an explicit off: the gateway refuses to start.
    let mut bad = protocol_settings(&redis, &hiecm);
    bad.jwks_file = String::new();
    assert!(bad.validate().unwrap_err().to_string().contains("SCANGW_JWKS_FILE"));
    // Explicitly off: shares need no bearer.
    let mut off = protocol_settings(&redis, &hiecm);
    off.jwks_file = String::new();
    off.jwt_verification = "off".into();
    off.validate().unwrap();
    let app = TestApp::spawn_with(off, TestApp::clock_at(START)).await;
    let rid = scan_gateway::protocol::hiecm::new_request_id();
    let r = app
        .req(
            "POST",
            "/api/v3/hip/patient/share",
            None,
            Some(&v3_body(&f, "OPD1", 3)),
            &[("REQUEST-ID", &rid), ("TIMESTAMP", "2026-11-23T04:00:00.000Z"), ("X-HIP-ID", &f)],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
}

#[actix_web::test]
async fn a_callback_that_never_lands_is_given_up_at_its_deadline() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.onshare_deadline_s = 60;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(831);
    app.register(&f).await;
    hiecm.rec.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let (st, _, _) = app.share_v3(&jwt(&app, KEY1, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202);
    let rec = hiecm.rec.clone();
    eventually(Duration::from_secs(10), "a few failed attempts", || {
        let rec = rec.clone();
        async move { rec.attempts.load(Ordering::SeqCst) >= 3 }
    })
    .await;
    assert_eq!(outbox_len(&redis), 1, "still retrying before the deadline");
    let before = metric(&app, &given_up("expired_undelivered")).await;
    app.clock.advance(Duration::from_secs(61));
    eventually(Duration::from_secs(10), "the entry is given up and deleted", || async { outbox_len(&redis) == 0 })
        .await;
    assert!(hiecm.rec.delivered().is_empty());
    assert!(metric(&app, &given_up("expired_undelivered")).await > before, "the give-up is counted by its reason");
}

#[actix_web::test]
async fn the_golden_share_and_its_drifted_twin_get_the_same_token_over_http() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    // The fixtures name facility IN3410000260, counter OPD1 and patient john@abdm.
    let f = "IN3410000260";
    app.register(f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    let golden: Value = serde_json::from_str(include_str!("../fixtures/protocol/v3_share.json")).unwrap();
    let drift: Value = serde_json::from_str(include_str!("../fixtures/protocol/v3_share_drift.json")).unwrap();
    let (_, _, a) = app.share_v3(&bearer, &golden, None).await;
    let (_, _, b) = app.share_v3(&bearer, &drift, None).await;
    let v1: Value = serde_json::from_str(include_str!("../fixtures/protocol/v1_share_drift.json")).unwrap();
    let r = app.req("POST", "/v1.0/patients/profile/share", Some(&bearer), Some(&v1), &[("X-HIP-ID", f)]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let c = v1["requestId"].as_str().unwrap().to_string();
    let cbs = hiecm.wait_for(3, "three on-shares").await;
    let token = |rid: &str| {
        let b = &for_request(&cbs, rid)[0].body;
        (b["acknowledgement"]["status"].clone(), b["acknowledgement"]["profile"]["tokenNumber"].clone())
    };
    assert_eq!(token(&a), (json!("SUCCESS"), json!("1")));
    assert_eq!(token(&b), token(&a), "the drifted share is the same patient: the same token");
    let v1cb = &for_request(&cbs, &c)[0].body;
    assert_eq!(v1cb["acknowledgement"]["tokenNumber"], "1", "and so is the v1.0 share: {v1cb}");
}

/// The value of one series on the app's `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.req("GET", "/metrics", None, None, &[]).await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn given_up(reason: &str) -> String {
    format!("scangw_onshare_given_up_total{{reason=\"{reason}\"}}")
}

fn stored_tokens(redis: &RedisServer, facility: &str) -> u64 {
    redis.conn().hlen(format!("sg:{{{facility}}}:d:{START_DATE}:t")).unwrap()
}

/// Today's tokens of `facility` on the facilities leaderboard.
async fn board_tokens(app: &TestApp, facility: &str) -> u64 {
    let path = format!("/v1/leaderboards/facilities?date={START_DATE}&limit=1000");
    let r = app.req("GET", &path, Some(&app.monitor), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["rows"].as_array().unwrap().iter().find(|row| row["id"] == facility).map_or(0, |row| num(row, "tokens"))
}

#[actix_web::test]
async fn a_share_whose_deadline_passed_while_it_waited_gets_no_token() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    // One slot: the second share waits behind the first, whose callbacks keep failing.
    settings.onshare_concurrency = 1;
    settings.onshare_deadline_s = 60;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(840);
    app.register(&f).await;
    hiecm.rec.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let bearer = jwt(&app, KEY1, "test-key-1", 600, ISSUER);
    let (st, _, _) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202);
    let rec = hiecm.rec.clone();
    eventually(Duration::from_secs(10), "the first share holds the slot, retrying", || {
        let rec = rec.clone();
        async move { rec.attempts.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    let (st, _, _) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 2), None).await;
    assert_eq!(st, 202);
    assert_eq!(outbox_len(&redis), 2);
    assert_eq!(stored_tokens(&redis, &f), 1, "the second share is still waiting");
    let before = metric(&app, &given_up("expired_before_token")).await;
    let undelivered_before = metric(&app, &given_up("expired_undelivered")).await;

    // Both deadlines pass: the first is given up undelivered, which frees the slot; the
    // second only then reaches the worker, already late.
    app.clock.advance(Duration::from_secs(61));
    eventually(Duration::from_secs(10), "both entries given up", || async { outbox_len(&redis) == 0 }).await;
    assert_eq!(stored_tokens(&redis, &f), 1, "no token for the share whose deadline passed before it was issued");
    assert!(metric(&app, &given_up("expired_before_token")).await > before, "the give-up is counted by its reason");
    assert!(metric(&app, &given_up("expired_undelivered")).await > undelivered_before);
    // The leaderboard counts the one real token only.
    let (app_ref, f_ref) = (&app, &f);
    eventually(Duration::from_secs(10), "the leaderboard has the first token", || async move {
        board_tokens(app_ref, f_ref).await >= 1
    })
    .await;
    assert_eq!(stored_tokens(&redis, &f), 1);
    assert_eq!(board_tokens(&app, &f).await, 1, "no ghost token on the leaderboard");
    assert!(hiecm.rec.delivered().is_empty());
}

#[actix_web::test]
async fn a_permanent_4xx_from_the_switch_is_not_retried() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = fid(841);
    app.register(&f).await;
    hiecm.rec.fail_status.store(400, Ordering::SeqCst);
    hiecm.rec.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let before = metric(&app, &given_up("switch_rejected")).await;
    let (st, _, _) = app.share_v3(&jwt(&app, KEY1, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202);
    // The deadline is 30 minutes of a clock that stands still: only giving up at once empties it.
    eventually(Duration::from_secs(10), "the refused entry is given up", || async { outbox_len(&redis) == 0 }).await;
    assert_eq!(hiecm.rec.attempts.load(Ordering::SeqCst), 1, "a 400 is sent once, never again");
    assert!(metric(&app, &given_up("switch_rejected")).await > before);
    assert!(hiecm.rec.delivered().is_empty());
}

#[actix_web::test]
async fn the_outbox_stays_bounded_during_a_switch_outage() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.onshare_outbox_max = 5;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(842);
    app.register(&f).await;
    hiecm.rec.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let bearer = jwt(&app, KEY1, "test-key-1", 600, ISSUER);
    let mut accepted = 0;
    // A request id is marked accepted (for a redelivery with an expired bearer) with its
    // outbox entry, in one script: a refused share leaves no mark.
    let seen = |rid: &str| redis.conn().exists::<_, bool>(format!("sg:{{outbox}}:seen:{rid}")).unwrap();
    for i in 0..15 {
        let (st, v, rid) = app.share_v3(&bearer, &v3_body(&f, "OPD1", i), None).await;
        match st {
            202 => {
                accepted += 1;
                assert!(seen(&rid), "an accepted share is marked");
            }
            _ => {
                assert_error(st, &v, 503, "OUTBOX_FULL");
                assert!(!v.to_string().contains(&rid), "{v}");
                assert!(!seen(&rid), "a refused share is not marked");
            }
        }
        assert!(outbox_len(&redis) <= 5, "the outbox never exceeds its bound");
    }
    assert_eq!(accepted, 5, "the first five are stored; every other one is refused, none is dropped later");
    assert_eq!(outbox_len(&redis), 5);
    // The switch comes back: the stored ones are delivered, and shares are taken again.
    hiecm.rec.fail_next.store(0, Ordering::SeqCst);
    hiecm.wait_for(5, "the five stored shares").await;
    eventually(Duration::from_secs(10), "outbox drained", || async { outbox_len(&redis) == 0 }).await;
    let (st, v, _) = app.share_v3(&bearer, &v3_body(&f, "OPD1", 99), None).await;
    assert_eq!(st, 202, "{v}");
}

#[actix_web::test]
async fn a_token_the_switch_issued_to_another_client_is_refused() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = fid(843);
    app.register(&f).await;
    // Same issuer, same signing key, `aud: account`: only the client differs. This gateway's
    // own client-credentials token is exactly such a token.
    for client in ["gateway-client", "some-hip"] {
        let other = jwt_for(&app, KEY1, "test-key-1", 300, ISSUER, client);
        let (st, v, _) = app.share_v3(&other, &v3_body(&f, "OPD1", 1), None).await;
        assert_error(st, &v, 401, "TOKEN_WRONG_CLIENT");
    }
    let now = app.clock_now().as_second();
    let no_client = scan_gateway::protocol::jwt::sign_rs256_for_tests(
        KEY1,
        "test-key-1",
        &json!({"iss": ISSUER, "aud": "account", "iat": now, "exp": now + 300}),
    );
    let (st, v, _) = app.share_v3(&no_client, &v3_body(&f, "OPD1", 1), None).await;
    assert_error(st, &v, 401, "TOKEN_WRONG_CLIENT");
    let wrong_aud = scan_gateway::protocol::jwt::sign_rs256_for_tests(
        KEY1,
        "test-key-1",
        &json!({"iss": ISSUER, "aud": "other", "clientId": SWITCH_CLIENT, "iat": now, "exp": now + 300}),
    );
    let (st, v, _) = app.share_v3(&wrong_aud, &v3_body(&f, "OPD1", 1), None).await;
    assert_error(st, &v, 401, "TOKEN_WRONG_AUDIENCE");
    assert_eq!(outbox_len(&redis), 0, "nothing refused reaches the outbox");
    // The switch's own token passes.
    let (st, v, _) = app.share_v3(&jwt(&app, KEY1, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202, "{v}");
    hiecm.wait_for(1, "the on-share").await;
}

#[actix_web::test]
async fn an_unknown_kid_refetches_the_jwks_once_per_interval() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.jwks_file = String::new();
    settings.jwks_url = format!("{}/jwks", hiecm.base);
    settings.jwks_unknown_kid_refetch_s = 5;
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = fid(844);
    app.register(&f).await;
    let fetches = || hiecm.rec.jwks_fetches.load(Ordering::SeqCst);
    // Fetched once in the background from startup (startup does not wait for it).
    eventually(Duration::from_secs(10), "the startup fetch", || async { fetches() == 1 }).await;
    let (st, v, _) = app.share_v3(&jwt(&app, KEY1, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 1), None).await;
    assert_eq!(st, 202, "{v}");

    // The switch rotates its key: a token signed with the new key passes at once, without
    // waiting for the periodic refresh.
    *hiecm.rec.jwks.lock().unwrap() = fixture(JWKS_ROTATED);
    let (st, v, _) = app.share_v3(&jwt(&app, KEY2, "test-key-2", 300, ISSUER), &v3_body(&f, "OPD1", 2), None).await;
    assert_eq!(st, 202, "the rotated key is fetched on its first token: {v}");
    assert_eq!(fetches(), 2);

    // A flood of made-up kids: no fetch within the interval of the last one, then exactly
    // one for any number of concurrent requests.
    let flood = |round: usize| {
        let app = &app;
        let f = &f;
        join_all((0..40).map(move |i| async move {
            let bogus = jwt(app, KEY2, &format!("bogus-{round}-{i}"), 300, ISSUER);
            let (st, v, _) = app.share_v3(&bogus, &v3_body(f, "OPD1", 100 + i), None).await;
            assert_error(st, &v, 401, "TOKEN_UNKNOWN_KEY");
        }))
    };
    flood(1).await;
    assert_eq!(fetches(), 2, "no fetch within the interval");
    app.clock.advance(Duration::from_secs(6));
    flood(2).await;
    assert_eq!(fetches(), 3, "one fetch for 40 concurrent unknown kids");
    flood(3).await;
    assert_eq!(fetches(), 3);
    // The old key is gone from the switch's set: its tokens are refused.
    let (st, v, _) = app.share_v3(&jwt(&app, KEY1, "test-key-1", 300, ISSUER), &v3_body(&f, "OPD1", 3), None).await;
    assert_error(st, &v, 401, "TOKEN_UNKNOWN_KEY");
    hiecm.wait_for(2, "the two good shares' on-shares").await;
    eventually(Duration::from_secs(5), "outbox emptied", || async { outbox_len(&redis) == 0 }).await;
    assert_eq!(hiecm.rec.delivered().len(), 2, "only the two good shares got through");
}

/// The stored profile of the live token of `abha_address` at facility `f`, counter OPD1
/// (found by scanning the same patient again natively: the repeat rule answers its token).
async fn stored_profile(app: &TestApp, f: &str, abha_address: &str) -> Value {
    let mut again = scan_body(f, "OPD1", 999);
    again["patient"]["abha_address"] = json!(abha_address);
    again["patient"].as_object_mut().unwrap().remove("abha_number");
    let (st, body) = app.scan(&again).await;
    assert_eq!(st, 200, "the same patient again is a repeat: {body}");
    let (_, staff) = app.create_staff_key(f).await;
    let (st, token) = app.get_token(s(&body, "token_id"), &staff).await;
    assert_eq!(st, 200, "{token}");
    token["patient"].clone()
}

fn dropped(field: &str) -> String {
    format!("scangw_profile_fields_dropped_total{{field=\"{field}\"}}")
}

/// Issue 35 item 3: a phone with a country code (`+919800083232`, the v1.0 schema's own
/// example; `+91-…`) no longer costs the patient the token, in shares and native scans; an
/// invalid optional field is dropped and counted instead of refusing.
#[actix_web::test]
async fn a_phone_with_a_country_code_gets_the_token_and_a_bad_optional_field_is_dropped() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = "IN3410000260";
    app.register(f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);

    let v3: Value =
        serde_json::from_str(include_str!("../fixtures/protocol/v3_share_phone_country_code.json")).unwrap();
    let (st, _, rid) = app.share_v3(&bearer, &v3, None).await;
    assert_eq!(st, 202);
    let cbs = hiecm.wait_for(1, "the v3 on-share").await;
    let cb = &for_request(&cbs, &rid)[0].body;
    assert_eq!(cb["acknowledgement"]["status"], "SUCCESS", "{cb}");
    assert_eq!(stored_profile(&app, f, "john@abdm").await["phone"], "9800083232", "stored as its 10 digits");

    let mut v1: Value =
        serde_json::from_str(include_str!("../fixtures/protocol/v1_share_phone_country_code.json")).unwrap();
    v1["profile"]["patient"]["healthId"] = json!("jane@abdm");
    v1["profile"]["patient"].as_object_mut().unwrap().remove("healthIdNumber");
    let r = app.req("POST", "/v1.0/patients/profile/share", Some(&bearer), Some(&v1), &[("X-HIP-ID", f)]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cbs = hiecm.wait_for(2, "the v1.0 on-share").await;
    let cb = &for_request(&cbs, v1["requestId"].as_str().unwrap())[0].body;
    assert_eq!(cb["acknowledgement"]["status"], "SUCCESS", "{cb}");
    assert_eq!(cb["acknowledgement"]["tokenNumber"], "2", "{cb}");
    assert_eq!(stored_profile(&app, f, "jane@abdm").await["phone"], "9800083232");

    // Native scans: the same rule.
    let mut native = scan_body(f, "OPD1", 3);
    native["patient"]["phone"] = json!("+919800083232");
    let (st, body) = app.scan(&native).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(stored_profile(&app, f, s(&native["patient"], "abha_address")).await["phone"], "9800083232");

    // An invalid optional field is dropped and counted; the patient still gets the token.
    let (phones, numbers) = (metric(&app, &dropped("phone")).await, metric(&app, &dropped("abha_number")).await);
    let mut native = scan_body(f, "OPD1", 4);
    native["patient"]["phone"] = json!("12345");
    native["patient"]["abha_number"] = json!("91-7777-8888-99A9");
    let (st, body) = app.scan(&native).await;
    assert_eq!(st, 201, "{body}");
    let p = stored_profile(&app, f, s(&native["patient"], "abha_address")).await;
    assert_eq!((&p["phone"], &p["abha_number"]), (&Value::Null, &Value::Null), "{p}");
    let mut bad = v3_body(f, "OPD1", 5);
    bad["profile"]["patient"]["phoneNumber"] = json!("98000");
    let (st, _, rid) = app.share_v3(&bearer, &bad, None).await;
    assert_eq!(st, 202);
    let cbs = hiecm.wait_for(3, "the on-share of the share with a bad phone").await;
    let cb = &for_request(&cbs, &rid)[0].body;
    assert_eq!(cb["acknowledgement"]["status"], "SUCCESS", "{cb}");
    assert!(metric(&app, &dropped("phone")).await >= phones + 2.0, "both dropped phones are counted");
    assert!(metric(&app, &dropped("abha_number")).await > numbers, "the dropped number is counted");
}

/// Issue 35 item 4: ABHA addresses with `-` (and `!`), as the protocol documentation's
/// pattern `^[a-zA-Z0-9][a-zA-Z0-9_.\-!]+[a-zA-Z0-9]@(abdm|sbx)$` allows, get their token
/// natively and in v3 and v1.0 shares.
#[actix_web::test]
async fn abha_addresses_with_a_hyphen_get_their_token_natively_and_in_shares() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = "IN3410000260";
    app.register(f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);

    let v3: Value = serde_json::from_str(include_str!("../fixtures/protocol/v3_share_hyphen_address.json")).unwrap();
    let (st, _, rid) = app.share_v3(&bearer, &v3, None).await;
    assert_eq!(st, 202);
    let cbs = hiecm.wait_for(1, "the v3 on-share").await;
    let ack = &for_request(&cbs, &rid)[0].body["acknowledgement"];
    assert_eq!((&ack["status"], &ack["abhaAddress"]), (&json!("SUCCESS"), &json!("ravi-kumar_1990@sbx")), "{ack}");

    let v1: Value = serde_json::from_str(include_str!("../fixtures/protocol/v1_share_hyphen_address.json")).unwrap();
    let r = app.req("POST", "/v1.0/patients/profile/share", Some(&bearer), Some(&v1), &[("X-HIP-ID", f)]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cbs = hiecm.wait_for(2, "the v1.0 on-share").await;
    let ack = &for_request(&cbs, v1["requestId"].as_str().unwrap())[0].body["acknowledgement"];
    assert_eq!((&ack["status"], &ack["healthId"]), (&json!("SUCCESS"), &json!("asha-devi!1@sbx")), "{ack}");
    assert_eq!(ack["tokenNumber"], "2", "{ack}");

    let mut native = scan_body(f, "OPD1", 3);
    native["patient"]["abha_address"] = json!("Meera-Nair.85@abdm");
    let (st, body) = app.scan(&native).await;
    assert_eq!((st, num(&body, "token_number")), (201, 3), "{body}");
    assert_eq!(stored_profile(&app, f, "meera-nair.85@abdm").await["abha_address"], "meera-nair.85@abdm");
}

/// Issue 35 item 1: a v1.0 share whose `intent` is the schema's object `{"type": ...}`
/// (NHA's published v1.0 body) gets its token; so does a v3 share written that way.
#[actix_web::test]
async fn a_share_with_an_intent_object_gets_its_token() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let app = TestApp::spawn_with(protocol_settings(&redis, &hiecm), TestApp::clock_at(START)).await;
    let f = "IN3410000260";
    app.register(f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    let v1: Value = serde_json::from_str(include_str!("../fixtures/protocol/v1_share_intent_object.json")).unwrap();
    let r = app.req("POST", "/v1.0/patients/profile/share", Some(&bearer), Some(&v1), &[("X-HIP-ID", f)]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cbs = hiecm.wait_for(1, "the v1.0 on-share").await;
    let ack = &for_request(&cbs, v1["requestId"].as_str().unwrap())[0].body["acknowledgement"];
    assert_eq!(
        (&ack["status"], &ack["healthId"], &ack["tokenNumber"]),
        (&json!("SUCCESS"), &json!("kavya@sbx"), &json!("1"))
    );
    let v3: Value = serde_json::from_str(include_str!("../fixtures/protocol/v3_share_intent_object.json")).unwrap();
    let (st, _, rid) = app.share_v3(&bearer, &v3, None).await;
    assert_eq!(st, 202);
    let cbs = hiecm.wait_for(2, "the v3 on-share").await;
    let ack = &for_request(&cbs, &rid)[0].body["acknowledgement"];
    assert_eq!((&ack["status"], &ack["profile"]["tokenNumber"]), (&json!("SUCCESS"), &json!("2")), "{ack}");
}

/// Issue 35 item 2: each version's on-share URL can be configured in full, for a switch whose
/// v1.0 gateway lives elsewhere than its v3 API.
#[actix_web::test]
async fn on_share_urls_are_configurable_per_version() {
    let redis = RedisServer::start();
    let hiecm = Hiecm::start().await;
    let mut settings = protocol_settings(&redis, &hiecm);
    settings.hiecm_v3_on_share_url = format!("{}/custom/v3-on-share", hiecm.base);
    settings.hiecm_v1_on_share_url = format!("{}/custom/v1-on-share", hiecm.base);
    let app = TestApp::spawn_with(settings, TestApp::clock_at(START)).await;
    let f = "IN3410000260";
    app.register(f).await;
    let bearer = jwt(&app, KEY1, "test-key-1", 300, ISSUER);
    let (st, _, rid) = app.share_v3(&bearer, &v3_body(f, "OPD1", 1), None).await;
    assert_eq!(st, 202);
    let v1: Value = serde_json::from_str(include_str!("../fixtures/protocol/v1_share_intent_object.json")).unwrap();
    let r = app.req("POST", "/v1.0/patients/profile/share", Some(&bearer), Some(&v1), &[("X-HIP-ID", f)]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cbs = hiecm.wait_for(2, "both on-shares").await;
    assert_eq!(for_request(&cbs, &rid)[0].path, "/custom/v3-on-share");
    assert_eq!(for_request(&cbs, v1["requestId"].as_str().unwrap())[0].path, "/custom/v1-on-share");
}
