//! The national protocol through the real binary against a double of the switch
//! ([`hiecm_double`]): the certs endpoint behind the session bearer and down at startup,
//! FAILURE on-share bodies per version, and the tolerance of what the real switch sends.
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "support/hiecm_double.rs"]
mod hiecm_double;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use gateway::*;
use helpers::*;
use hiecm_double::*;

/// The v3 share of NHA's Scan & Share sandbox document (tests/fixtures/protocol/v3_share.json)
/// aimed at `facility` / `counter`, for patient `i`.
fn v3_share(facility: &str, counter: &str, i: usize) -> Value {
    let mut v: Value = serde_json::from_str(include_str!("fixtures/protocol/v3_share.json")).expect("v3 share fixture");
    v["metaData"]["hipId"] = json!(facility);
    v["metaData"]["context"] = json!(counter);
    v["profile"]["patient"]["abhaAddress"] = json!(format!("patient.{}@sbx", alpha(i).to_ascii_lowercase()));
    v["profile"]["patient"]["abhaNumber"] = json!(format!("91-1000-2000-{:04}", i % 10_000));
    v
}

/// Posts a v3 share to the binary; returns the answer and the share's request id.
async fn share_v3(gw: &Gateway, bearer: &str, body: &Value, extra: &[(&str, &str)]) -> (Resp, String) {
    let rid = scan_gateway::protocol::hiecm::new_request_id();
    let ts = scan_gateway::protocol::hiecm::timestamp(jiff::Timestamp::now());
    let hip = body["metaData"]["hipId"].as_str().unwrap_or("").to_string();
    let mut headers: Vec<(&str, &str)> = vec![("REQUEST-ID", &rid), ("TIMESTAMP", &ts), ("X-HIP-ID", &hip)];
    for (k, v) in extra {
        headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
        headers.push((k, v));
    }
    let bytes = serde_json::to_vec(body).unwrap();
    let url = format!("{}/api/v3/hip/patient/share", gw.base);
    let r = http(&gw.client, "POST", &url, Some(bearer), Some("application/json"), Some(bytes), &headers)
        .await
        .unwrap_or_else(|e| panic!("share: {e}"));
    (r, rid)
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
async fn until(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Issue 35 item 5. The real certs endpoint (`/api/hiecm/gateway/v3/certs`) answers 401
/// without the session bearer (care-abdm's findings on sandbox traffic), and may be down when
/// the gateway starts: the binary must still start and serve native scans, answer shares with
/// a precise 503 until the keys arrive, then accept them, and keep the last good keys when a
/// later fetch fails.
#[actix_web::test]
async fn certs_behind_the_session_bearer_and_down_at_startup_do_not_stop_the_gateway() {
    let redis = RedisServer::start();
    let switch = Switch::start();
    switch.state.certs_down.store(true, Ordering::SeqCst);
    let env = switch.env();
    let gw = Gateway::start(&redis, &env_refs(&env));
    let f = fid(900);
    gw.register(&f).await;

    // The native API serves and is ready while the switch's keys are missing.
    let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", 1))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = gw.call("GET", "/readyz", PLATFORM, None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A share meanwhile: 503 JWKS_UNAVAILABLE (the switch retries), never a 401 that blames
    // its token, and nothing stored.
    let good = switch_jwt("test-key-1");
    let (r, _) = share_v3(&gw, &good, &v3_share(&f, "OPD1", 2), &[]).await;
    assert_error(r.status, &r.body, 503, "JWKS_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    assert!(switch.state.certs_requests.load(Ordering::SeqCst) >= 1, "the gateway tried the certs endpoint");

    // The certs endpoint comes back: shares are accepted, the keys came with the bearer.
    switch.state.certs_down.store(false, Ordering::SeqCst);
    let mut accepted = None;
    until(Duration::from_secs(20), "a share accepted once the certs endpoint answers", async || {
        let (r, rid) = share_v3(&gw, &good, &v3_share(&f, "OPD1", 3), &[]).await;
        if r.status == 202 {
            accepted = Some(rid);
            return true;
        }
        assert_error(r.status, &r.body, 503, "JWKS_UNAVAILABLE");
        false
    })
    .await;
    assert!(switch.state.certs_served.load(Ordering::SeqCst) >= 1, "served only with the session bearer");
    let rid = accepted.unwrap();
    until(Duration::from_secs(20), "the on-share", async || !switch.callbacks_for(&rid).is_empty()).await;
    assert_eq!(switch.callbacks_for(&rid)[0].body["acknowledgement"]["status"], "SUCCESS");

    // The certs endpoint fails again; a token with an unknown kid makes the gateway fetch
    // (and fail): the last good keys stay, and the switch's tokens still pass.
    switch.state.certs_down.store(true, Ordering::SeqCst);
    let before = switch.state.certs_requests.load(Ordering::SeqCst);
    actix_rt::time::sleep(Duration::from_millis(1100)).await; // past the 1 s refetch interval
    let (r, _) = share_v3(&gw, &switch_jwt("rotated-away"), &v3_share(&f, "OPD1", 4), &[]).await;
    assert_error(r.status, &r.body, 401, "TOKEN_UNKNOWN_KEY");
    assert!(switch.state.certs_requests.load(Ordering::SeqCst) > before, "the unknown kid caused a fetch");
    let (r, _) = share_v3(&gw, &good, &v3_share(&f, "OPD1", 5), &[]).await;
    assert_eq!(r.status, 202, "the last good keys stay after a failed fetch: {}", r.text);
    assert!(gw.output().contains("keeping the last good keys"), "a failed fetch is logged:\n{}", gw.output());
}
