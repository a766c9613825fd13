//! `POST /v1/scans`: a patient scanned a counter's QR code; answer with their token.
use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{authenticate, limit_scan};
use super::error::ApiError;
use super::validate::ScanRequest;
use super::{body, AppState};
use crate::facility::queue::ScanKind;
use crate::facility::view::TokenView;
use crate::facility::Command;

/// Releases an in-flight slot when the request ends, however it ends.
struct InFlight<'a>(&'a AppState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[utoipa::path(post, path = "/v1/scans", tag = "scans",
    request_body = ScanRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key")),
    responses(
        (status = 201, description = "New token", body = TokenView),
        (status = 200, description = "Repeat scan: the patient's live token", body = TokenView),
        (status = 400, description = "Malformed JSON, missing/unknown field, wrong type"),
        (status = 404, description = "Unknown facility or counter"),
        (status = 422, description = "Invalid field value, or Idempotency-Key reused"),
        (status = 503, description = "Store unavailable or overloaded (Retry-After)")),
    security(("bearer" = [])))]
pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_platform()?;
    let scan: ScanRequest = body::json(&req, payload, state.settings.max_body_bytes).await?;
    let idem = match req.headers().get("Idempotency-Key") {
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
    limit_scan(&state, &facility, &input.patient)?;
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
    let reply =
        state.directory.ask(&facility, |reply| Command::Scan { input: input.clone(), reply }).await.map_err(|e| {
            let e = ApiError::from(e);
            if matches!(e, ApiError::StoreUnavailable) {
                deps.metrics.store_errors.increment(1);
            }
            e
        })?;
    let status = match reply.kind {
        ScanKind::New | ScanKind::Replay => StatusCode::CREATED,
        ScanKind::Repeat => StatusCode::OK,
    };
    let mut view = reply.view;
    view.patient = None;
    Ok(HttpResponse::build(status).json(view))
}
