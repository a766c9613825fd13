//! Liveness, readiness (Redis reachable and not draining) and the Prometheus scrape.
use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let redis = state.redis_up.load(Ordering::Relaxed);
    let draining = state.shutting_down.load(Ordering::Relaxed);
    if redis && !draining {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        let mut reasons = Vec::new();
        if !redis {
            reasons.push("redis_unreachable");
        }
        if draining {
            reasons.push("shutting_down");
        }
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({ "status": "not_ready", "reasons": reasons }))
    }
}

/// The exporter's series, then process RSS/CPU and the leaderboard gauges (both rendered
/// here: their label sets change with the top N, and stale ranks must not linger).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let deps = state.directory.deps();
    deps.metrics.mailbox_depth.set(state.directory.mailbox_depth() as f64);
    let mut body = state.prometheus.render();
    body.push_str(&crate::telemetry::process::render());
    body.push_str(&crate::leaderboard::feed::render_prometheus(&state.feed.latest()));
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}
