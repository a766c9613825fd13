//! The HTTP surface: routes, authentication, body limits and validation, and the mapping
//! of every error to a status and JSON body ([`error`]). Handlers stay thin: they check
//! the caller, validate, and hand the work to the facility directory.
pub mod auth;
pub mod body;
pub mod counters;
pub mod error;
pub mod facilities;
pub mod forward;
pub mod health;
pub mod leaderboards;
pub mod limits;
pub mod openapi;
pub mod pages;
pub mod protocol;
pub mod scans;
pub mod validate;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Settings;
use crate::facility::Directory;
use crate::persistence::Store;
use crate::telemetry::metrics::Metrics;
use error::ApiError;

/// Shared by all HTTP workers.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub directory: Arc<Directory>,
    pub store: Store,
    pub admin_digest: [u8; 32],
    pub platform_digest: [u8; 32],
    /// Absent when no monitor token is configured.
    pub monitor_digest: Option<[u8; 32]>,
    pub prometheus: PrometheusHandle,
    /// Redis answered the last health ping.
    pub redis_up: Arc<AtomicBool>,
    pub shutting_down: Arc<AtomicBool>,
    pub in_flight: AtomicUsize,
    pub limits: limits::Limits,
    pub feed: Arc<crate::leaderboard::feed::Feed>,
    pub boards: Arc<pages::Boards>,
    /// Open server-sent-event streams.
    pub sse_clients: Arc<AtomicUsize>,
    /// The national protocol; `None` when no switch is configured (its routes answer 404).
    pub protocol: Option<crate::protocol::ProtocolState>,
}

/// Mounts every route. Static paths come first and the dynamic ones sit under scopes with
/// a static prefix: actix matches each dynamic pattern with a regex in registration order,
/// which was the single biggest routing cost when every id route stood at the top level.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(health::livez))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(openapi::spec))
        .route("/v1/scans", web::post().to(scans::create))
        .route("/v1/facilities:import", web::post().to(facilities::import))
        .route("/api/v3/hip/patient/share", web::post().to(protocol::share_v3))
        .route("/v3/hip/patient/share", web::post().to(protocol::share_v3))
        .route("/api/v3/hip/patient/running-token/status", web::post().to(protocol::running_token_status))
        .route("/v3/hip/patient/running-token/status", web::post().to(protocol::running_token_status))
        .route("/v1.0/patients/profile/share", web::post().to(protocol::share_v1))
        .route("/leaderboard", web::get().to(pages::leaderboard_page))
        .route("/leaderboard/events", web::get().to(pages::leaderboard_events))
        .service(
            web::scope("/v1/tokens")
                .route("/{token_id}", web::get().to(counters::get_token))
                .route("/{token_id}/{action}", web::post().to(counters::act)),
        )
        .service(
            web::scope("/v1/facilities/{facility_id}")
                .service(
                    web::resource("")
                        .route(web::put().to(facilities::put))
                        .route(web::get().to(facilities::get))
                        .default_service(web::to(method_not_allowed)),
                )
                .route("/scans", web::post().to(scans::create_for_facility))
                .route("/counters/{counter_id}/call-next", web::post().to(counters::call_next))
                .route("/queue", web::get().to(counters::queue))
                .route("/staff-keys", web::post().to(facilities::create_staff_key))
                .route("/staff-keys/{key_id}", web::delete().to(facilities::revoke_staff_key)),
        )
        .route("/v1/leaderboards/{board}", web::get().to(leaderboards::get))
        .route("/internal/v1/boards/{facility_id}", web::get().to(pages::board_for_node))
        .route("/internal/v1/shares/scan", web::post().to(protocol::share_scan_for_node))
        .route("/internal/v1/running-token", web::post().to(protocol::running_token_for_node))
        .service(
            web::scope("/facilities/{facility_id}")
                .route("/board", web::get().to(pages::board_page))
                .route("/board/events", web::get().to(pages::board_events)),
        );
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Records HTTP latency by route pattern (bounded label set) and status class.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let res = next.call(req).await?;
    Metrics::http(&route, res.status().as_u16(), started.elapsed());
    Ok(res)
}
