//! A double of the national switch (HIE-CM) for tests of the real binary: the session
//! endpoint, the certs endpoint as the real one behaves (401 without the session bearer,
//! observed in sandbox traffic; it can be switched down), and the on-share endpoints, which
//! record every callback with its headers, and the running-token on-status endpoint
//! (recorded the same way).
#![allow(dead_code)] // each test binary uses its own subset
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

pub const KEY1: &str = include_str!("../fixtures/protocol/jwt/test-only-key1.pem");
pub const JWKS: &str = include_str!("../fixtures/protocol/jwt/jwks.json");
pub const ISSUER: &str = "test-hiecm";
/// The switch's own OAuth client, as its JWTs name it.
pub const SWITCH_CLIENT: &str = "test-switch";
pub const CLIENT_ID: &str = "gateway-client";
pub const CLIENT_SECRET: &str = "gateway-secret-0123456789";
pub const SESSION_TOKEN: &str = "cm-session-token-0123456789";
pub const CERTS_PATH: &str = "/api/hiecm/gateway/v3/certs";
pub const ON_STATUS_PATH: &str = "/api/hiecm/patient-share/v3/running-token/on-status";

/// One request the double received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
pub struct SwitchState {
    pub callbacks: Mutex<Vec<Seen>>,
    /// The certs endpoint answers 503 while this is set.
    pub certs_down: AtomicBool,
    /// The on-share endpoints answer 503 while this is set (the share stays in the outbox).
    pub on_share_down: AtomicBool,
    /// Certs requests, and how many of them carried the session bearer and got the keys.
    pub certs_requests: AtomicUsize,
    pub certs_served: AtomicUsize,
    pub sessions: AtomicUsize,
}

pub struct Switch {
    pub base: String,
    pub state: Arc<SwitchState>,
}

fn headers(req: &HttpRequest) -> BTreeMap<String, String> {
    req.headers().iter().map(|(k, v)| (k.as_str().to_ascii_uppercase(), v.to_str().unwrap_or("").to_string())).collect()
}

fn has_session_bearer(req: &HttpRequest) -> bool {
    req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {SESSION_TOKEN}"))
}

async fn session(body: web::Json<Value>, st: web::Data<SwitchState>) -> HttpResponse {
    st.sessions.fetch_add(1, Ordering::SeqCst);
    if body["clientId"] != CLIENT_ID || body["clientSecret"] != CLIENT_SECRET {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok().json(json!({"accessToken": SESSION_TOKEN, "expiresIn": 600, "tokenType": "bearer"}))
}

async fn certs(req: HttpRequest, st: web::Data<SwitchState>) -> HttpResponse {
    st.certs_requests.fetch_add(1, Ordering::SeqCst);
    if st.certs_down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    if !has_session_bearer(&req) {
        return HttpResponse::Unauthorized().json(json!({"error": {"code": "ABDM-1017", "message": "Unauthorized"}}));
    }
    st.certs_served.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().content_type("application/json").body(JWKS)
}

async fn on_share(req: HttpRequest, body: web::Bytes, st: web::Data<SwitchState>) -> HttpResponse {
    if !has_session_bearer(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    if st.on_share_down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let body: Value = serde_json::from_slice(&body).expect("on-share body is JSON");
    st.callbacks.lock().unwrap().push(Seen { path: req.path().to_string(), headers: headers(&req), body });
    HttpResponse::Accepted().finish()
}

impl Switch {
    /// Starts the double on a free port; it stops with the test's actix system.
    pub fn start() -> Switch {
        let state = Arc::new(SwitchState::default());
        let data = web::Data::from(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/api/hiecm/gateway/v3/sessions", web::post().to(session))
                .route(CERTS_PATH, web::get().to(certs))
                .route("/api/hiecm/patient-share/v3/on-share", web::post().to(on_share))
                .route("/gateway/v1.0/patients/profile/on-share", web::post().to(on_share))
                // NHA's Running Token Status document: the HIP's answer to a status request.
                .route(ON_STATUS_PATH, web::post().to(on_share))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Switch { base: format!("http://127.0.0.1:{port}"), state }
    }

    /// The gateway settings that point the binary at this double (keys from its certs URL).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("SCANGW_HIECM_BASE_URL", self.base.clone()),
            ("SCANGW_HIECM_CLIENT_ID", CLIENT_ID.into()),
            ("SCANGW_HIECM_CLIENT_SECRET", CLIENT_SECRET.into()),
            ("SCANGW_JWKS_URL", format!("{}{CERTS_PATH}", self.base)),
            ("SCANGW_JWT_ISSUER", ISSUER.into()),
            ("SCANGW_JWT_AUDIENCE", "account".into()),
            ("SCANGW_SWITCH_JWT_CLIENT_ID", SWITCH_CLIENT.into()),
            ("SCANGW_JWKS_UNKNOWN_KID_REFETCH_S", "1".into()),
            ("SCANGW_ONSHARE_BACKOFF_MS", "20".into()),
            ("SCANGW_ONSHARE_BACKOFF_MAX_MS", "200".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn callbacks(&self) -> Vec<Seen> {
        self.state.callbacks.lock().unwrap().clone()
    }

    /// The callbacks answering the share `rid` (v3 `response.requestId`, v1.0 `resp.requestId`).
    pub fn callbacks_for(&self, rid: &str) -> Vec<Seen> {
        self.callbacks()
            .into_iter()
            .filter(|c| c.body["response"]["requestId"] == rid || c.body["resp"]["requestId"] == rid)
            .collect()
    }
}

/// A bearer JWT as the switch signs it (Keycloak service-account token of its client), valid
/// for five minutes around the real clock (the binary runs on the system clock).
pub fn switch_jwt(kid: &str) -> String {
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({"iss": ISSUER, "sub": "service-account", "aud": "account", "iat": now - 5,
                        "exp": now + 300, "azp": SWITCH_CLIENT, "clientId": SWITCH_CLIENT});
    scan_gateway::protocol::jwt::sign_rs256_for_tests(KEY1, kid, &claims)
}

/// A bearer as [`switch_jwt`] signs it, but expired `ago_s` seconds ago (issued five minutes
/// before that): what the switch sends again on a redelivery.
pub fn switch_jwt_expired(kid: &str, ago_s: i64) -> String {
    let exp = jiff::Timestamp::now().as_second() - ago_s;
    let claims = json!({"iss": ISSUER, "sub": "service-account", "aud": "account", "iat": exp - 300,
                        "exp": exp, "azp": SWITCH_CLIENT, "clientId": SWITCH_CLIENT});
    scan_gateway::protocol::jwt::sign_rs256_for_tests(KEY1, kid, &claims)
}
