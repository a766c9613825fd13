//! `POST /v1/scans` and its routable alias `POST /v1/facilities/{facility_id}/scans`: a
//! patient scanned a counter's QR code; answer with their token. The facility may also be
//! named in `X-Facility-Id`, so a load balancer can route by it without reading the body.
use std::sync::atomic::Ordering;

use actix_web::http::header::HeaderName;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{authenticate, limit_scan, patient_admission};
use super::error::ApiError;
use super::forward::{self, Rerun, Served};
use super::validate::ScanRequest;
use super::{body, AppState};
use crate::facility::queue::ScanKind;
use crate::facility::view::TokenView;
use crate::facility::Command;
use crate::registry::valid_facility_id;

/// Releases an in-flight slot when the request ends, however it ends.
struct InFlight<'a>(&'a AppState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The facility a load balancer routes on, from `X-Facility-Id` (checked before the body
/// is read; compared with the body's `facility_id` after).
fn routing_header(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(v) = req.headers().get(FACILITY_HEADER_NAME) else { return Ok(None) };
    match v.to_str() {
        Ok(id) if valid_facility_id(id) => Ok(Some(id)),
        _ => Err(ApiError::InvalidHeader(FACILITY_HEADER, "must be a facility id")),
    }
}

pub const FACILITY_HEADER: &str = "X-Facility-Id";
// Lookups by a `&str` name parse it into an owned header name first (an allocation per
// lookup for names the `http` crate does not know); these are parsed once.
const FACILITY_HEADER_NAME: HeaderName = HeaderName::from_static("x-facility-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[utoipa::path(post, path = "/v1/scans", tag = "scans",
    request_body = ScanRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key"),
        ("X-Facility-Id" = Option<String>, Header,
            description = "The body's facility_id again, for routing by facility at the load balancer")),
    responses(
        (status = 201, description = "New token", body = TokenView),
        (status = 200, description = "Repeat scan: the patient's live token", body = TokenView),
        (status = 400, description = "Malformed JSON, missing/unknown field, wrong type; INVALID_HEADER X-Facility-Id"),
        (status = 404, description = "Unknown facility or counter"),
        (status = 422, description = "Invalid field value, Idempotency-Key reused, or FACILITY_MISMATCH (X-Facility-Id is not the body's facility_id)"),
        (status = 503, description = "Store unavailable or overloaded (Retry-After)")),
    security(("bearer" = [])))]
pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    scan(req, payload, state, None).await
}

#[utoipa::path(post, path = "/v1/facilities/{facility_id}/scans", tag = "scans",
    request_body = ScanRequest,
    params(("facility_id" = String, Path, description = "Must equal the body's facility_id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key"),
        ("X-Facility-Id" = Option<String>, Header, description = "Optional; must equal the body's facility_id too")),
    responses(
        (status = 201, description = "New token", body = TokenView),
        (status = 200, description = "Repeat scan: the patient's live token", body = TokenView),
        (status = 400, description = "Malformed JSON, missing/unknown field, wrong type; INVALID_HEADER X-Facility-Id"),
        (status = 404, description = "Unknown facility or counter"),
        (status = 422, description = "Invalid field value, Idempotency-Key reused, or FACILITY_MISMATCH (path or header is not the body's facility_id)"),
        (status = 503, description = "Store unavailable or overloaded (Retry-After)")),
    security(("bearer" = [])))]
pub async fn create_for_facility(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    scan(req, payload, state, Some(path.into_inner())).await
}

async fn scan(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    path_facility: Option<String>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_platform()?;
    let header_facility = routing_header(&req)?;
    body::require_json(&req)?;
    // Kept raw too: the facility's owner may be another node, which gets it as it came.
    let raw = body::read(&req, payload, state.settings.max_body_bytes).await?;
    let scan: ScanRequest = body::decode(&raw)?;
    let idem = match req.headers().get(IDEMPOTENCY_KEY) {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::InvalidField(crate::registry::field_error(
                "Idempotency-Key",
                "must be 1-128 visible ASCII characters",
            ))
        })?),
        None => None,
    };
    let deps = state.directory.deps();
    let year = deps.clock.now().to_zoned(jiff::tz::TimeZone::UTC).year();
    let (facility, input) = scan.into_input(&deps.hasher, year, idem)?;
    // A request routed for one facility must not be counted for another (nothing is
    // stored, no limit is spent).
    if header_facility.is_some_and(|h| h != facility) {
        return Err(ApiError::FacilityMismatch(FACILITY_HEADER));
    }
    if path_facility.is_some_and(|p| p != facility) {
        return Err(ApiError::FacilityMismatch("facility_id"));
    }
    limit_scan(&state, &facility)?;
    if !state.redis_up.load(Ordering::Relaxed) {
        deps.metrics.store_errors.increment(1);
        return Err(ApiError::StoreUnavailable);
    }
    if state.in_flight.fetch_add(1, Ordering::Relaxed) >= state.settings.max_in_flight {
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        deps.metrics.overloaded_in_flight.increment(1);
        return Err(ApiError::Overloaded);
    }
    let _slot = InFlight(&state);
    // The patient limit is the actor's to charge: only a new token spends it.
    let scan = |reply| Command::Scan { input: input.clone(), admit: patient_admission(&state, input.patient), reply };
    let served = forward::ask(&state, &req, raw, &facility, Rerun::Harmless, scan).await.map_err(|e| {
        let e = ApiError::from(e);
        if matches!(e, ApiError::StoreUnavailable) {
            deps.metrics.store_errors.increment(1);
        }
        e
    })?;
    let reply = match served {
        Served::Here(reply) => reply,
        Served::There(answer) => return Ok(answer),
    };
    let status = match reply.kind {
        ScanKind::New | ScanKind::Replay => StatusCode::CREATED,
        ScanKind::Repeat | ScanKind::RepeatReplay => StatusCode::OK,
    };
    let mut view = reply.view;
    view.patient = None;
    Ok(HttpResponse::build(status).json(view))
}
