//! The national switch (HIE-CM) as the load test plays it: signs the v3 share JWTs with the
//! repository's test-only key, and serves the session and on-share endpoints the gateway
//! calls back, recording every on-share by the REQUEST-ID of its share.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Test-only key pair 1 of `tests/fixtures/protocol/jwt` (kid `test-key-1` in `jwks.json`).
const KEY: &str = include_str!("../../tests/fixtures/protocol/jwt/test-only-key1.pem");
pub const KID: &str = "test-key-1";
pub const ISSUER: &str = "scan-load-switch";
/// The switch's own OAuth client, as its tokens name it (the gateway checks it).
pub const CLIENT_ID: &str = "scan-load-switch-client";
pub const SESSION_PATH: &str = "/api/hiecm/gateway/v3/sessions";
pub const ON_SHARE_PATH: &str = "/api/hiecm/patient-share/v3/on-share";

/// What an on-share said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnShare {
    Success { number: u32, context: String },
    Failure { code: String },
}

#[derive(Default)]
pub struct Switch {
    /// On-shares by the request id of the share they answer (the latest wins).
    pub results: Mutex<HashMap<String, OnShare>>,
    pub callbacks: AtomicU64,
    pub sessions: AtomicU64,
}

/// A bearer JWT as the switch signs it, valid for `valid_s` seconds.
pub fn bearer(valid_s: i64) -> String {
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({"iss": ISSUER, "sub": "hiecm", "aud": "account", "azp": CLIENT_ID, "clientId": CLIENT_ID,
                        "iat": now, "exp": now + valid_s});
    scan_gateway::protocol::jwt::sign_rs256_for_tests(KEY, KID, &claims)
}

/// Parses an on-share body: `(request id, outcome)`.
pub fn parse_on_share(body: &[u8]) -> Option<(String, OnShare)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let rid = v["response"]["requestId"].as_str()?.to_string();
    let ack = &v["acknowledgement"];
    let outcome = if ack["status"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("SUCCESS")) {
        let p = &ack["profile"];
        let number = match &p["tokenNumber"] {
            Value::String(s) => s.parse().ok()?,
            Value::Number(n) => n.as_u64()? as u32,
            _ => return None,
        };
        OnShare::Success { number, context: p["context"].as_str()?.to_string() }
    } else {
        let code = v["error"]["code"].as_str().or(ack["error"]["code"].as_str()).unwrap_or("UNKNOWN").to_string();
        OnShare::Failure { code }
    };
    Some((rid, outcome))
}

async fn handle(sw: Arc<Switch>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let reply = |status: StatusCode, body: Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
        Ok(r)
    };
    match path.as_str() {
        SESSION_PATH => {
            sw.sessions.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, json!({"accessToken": "scan-load-session", "expiresIn": 3600, "tokenType": "bearer"}))
        }
        ON_SHARE_PATH => match parse_on_share(&body) {
            Some((rid, outcome)) => {
                sw.callbacks.fetch_add(1, Ordering::Relaxed);
                sw.results.lock().unwrap().insert(rid, outcome);
                reply(StatusCode::ACCEPTED, json!({}))
            }
            None => reply(StatusCode::BAD_REQUEST, json!({"error": {"code": "BAD_ON_SHARE"}})),
        },
        _ => reply(StatusCode::NOT_FOUND, json!({"error": {"code": "NOT_FOUND"}})),
    }
}

/// Listens on `listen` and serves until the process ends.
pub async fn start(listen: &str) -> anyhow::Result<(Arc<Switch>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let sw = Arc::new(Switch::default());
    let shared = sw.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let sw = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(sw.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok((sw, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_shares_of_both_shapes_are_read() {
        let ok = br#"{"acknowledgement":{"status":"SUCCESS","abhaAddress":"x@sbx","profile":{"context":"OPD1","tokenNumber":"17","expiry":"1800"}},"response":{"requestId":"r1"}}"#;
        assert_eq!(parse_on_share(ok), Some(("r1".into(), OnShare::Success { number: 17, context: "OPD1".into() })));
        let fail = br#"{"error":{"code":"UNKNOWN_COUNTER","message":"m"},"response":{"requestId":"r2"}}"#;
        assert_eq!(parse_on_share(fail), Some(("r2".into(), OnShare::Failure { code: "UNKNOWN_COUNTER".into() })));
        let peer = br#"{"acknowledgement":{"status":"FAILURE","error":{"code":"RATE_LIMITED"}},"response":{"requestId":"r3"}}"#;
        assert_eq!(parse_on_share(peer), Some(("r3".into(), OnShare::Failure { code: "RATE_LIMITED".into() })));
        assert_eq!(parse_on_share(b"{}"), None);
    }

    #[test]
    fn the_bearer_verifies_against_the_checked_in_jwks() {
        use scan_gateway::protocol::jwt::{JwtConfig, Verifier};
        let jwks = include_str!("../../tests/fixtures/protocol/jwt/jwks.json");
        let cfg = JwtConfig {
            issuer: Some(ISSUER.into()),
            audience: Some("account".into()),
            client_id: Some(CLIENT_ID.into()),
            leeway_s: 5,
            ..JwtConfig::default()
        };
        let v = Verifier::from_jwks_json(jwks, &cfg).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let claims = v.verify(Some(&format!("Bearer {}", bearer(60))), now);
        assert!(claims.is_ok(), "{claims:?}");
        assert!(v.verify(Some(&format!("Bearer {}", bearer(-600))), now).is_err(), "an expired bearer is refused");
    }
}
