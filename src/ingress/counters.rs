//! Counter work and token reads: call next, recall, complete, no-show, transfer, the
//! queue view for staff, and `GET /v1/tokens/{id}` for the platform and staff.
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::{authenticate, Principal};
use super::error::ApiError;
use super::forward::{self, Rerun, Served};
use super::{body, AppState};
use crate::facility::token_id::TokenRef;
use crate::facility::view::{QueueView, TokenView};
use crate::facility::{Action, Command};
use crate::registry::valid_counter_id;

fn token_ref(id: &str) -> Result<TokenRef, ApiError> {
    TokenRef::decode(id).ok_or(ApiError::UnknownToken)
}

#[utoipa::path(get, path = "/v1/tokens/{token_id}", tag = "tokens",
    params(("token_id" = String, Path, description = "Opaque token id")),
    responses((status = 200, description = "The token now; `patient` only for staff of its facility", body = TokenView),
        (status = 404, description = "Unknown token")),
    security(("bearer" = [])))]
pub async fn get_token(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&req, &state).await?;
    let token = token_ref(&path)?;
    let staff = who.is_staff_of(&token.facility);
    if who != Principal::Platform && !staff {
        return Err(ApiError::Forbidden);
    }
    let facility = token.facility.clone();
    let get = |reply| Command::Get { token: token.clone(), patient: staff, reply };
    let mut view = match forward::ask(&state, &req, Bytes::new(), &facility, Rerun::Harmless, get).await {
        Ok(Served::Here(view)) => view,
        Ok(Served::There(answer)) => return Ok(answer),
        Err(e) => return Err(not_found_as_token(e)),
    };
    // The actor leaves the profile out for anyone but staff; clear it here too, so the
    // answer never depends on that alone.
    if !staff {
        view.patient = None;
    }
    Ok(HttpResponse::Ok().json(view))
}

/// A token id naming a facility that no longer exists is an unknown token.
fn not_found_as_token(e: crate::facility::FacilityError) -> ApiError {
    match ApiError::from(e) {
        ApiError::UnknownFacility => ApiError::UnknownToken,
        other => other,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub counter_id: String,
}

#[utoipa::path(post, path = "/v1/tokens/{token_id}/{action}", tag = "counters",
    params(("token_id" = String, Path), ("action" = String, Path, description = "recall | complete | no-show | transfer")),
    request_body(content = Option<TransferRequest>, description = "Only for transfer"),
    responses((status = 200, description = "The token after the transition", body = TokenView),
        (status = 404, description = "Unknown token or counter"),
        (status = 409, description = "Illegal transition")),
    security(("bearer" = [])))]
pub async fn act(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, action) = path.into_inner();
    let who = authenticate(&req, &state).await?;
    let mut raw = Bytes::new();
    let action = match action.as_str() {
        "recall" => Action::Recall,
        "complete" => Action::Complete,
        "no-show" => Action::NoShow,
        "transfer" => {
            let t = token_ref(&id);
            // Check the caller before reading a body on their behalf.
            if let Ok(t) = &t {
                who.require_staff_of(&t.facility)?;
            }
            body::require_json(&req)?;
            // Kept raw too, for the facility's owner if that is another node.
            raw = body::read(&req, payload, state.settings.max_body_bytes).await?;
            let body: TransferRequest = body::decode(&raw)?;
            if !valid_counter_id(&body.counter_id) {
                return Err(crate::registry::field_error(
                    "counter_id",
                    "must be 1-250 letters, digits or spaces, with . - _ inside",
                )
                .into());
            }
            Action::Transfer(body.counter_id)
        }
        _ => return Err(ApiError::NotFound),
    };
    let token = token_ref(&id)?;
    who.require_staff_of(&token.facility)?;
    let facility = token.facility.clone();
    let act = |reply| Command::Act { token: token.clone(), action: action.clone(), reply };
    match forward::ask(&state, &req, raw, &facility, Rerun::Harmful, act).await {
        Ok(Served::Here(view)) => Ok(HttpResponse::Ok().json(view)),
        Ok(Served::There(answer)) => Ok(answer),
        Err(e) => Err(not_found_as_token(e)),
    }
}

#[utoipa::path(post, path = "/v1/facilities/{facility_id}/counters/{counter_id}/call-next", tag = "counters",
    params(("facility_id" = String, Path), ("counter_id" = String, Path)),
    responses((status = 200, description = "The called token", body = TokenView),
        (status = 204, description = "Nobody is waiting"),
        (status = 404, description = "Unknown facility or counter")),
    security(("bearer" = [])))]
pub async fn call_next(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (facility, counter) = path.into_inner();
    authenticate(&req, &state).await?.require_staff_of(&facility)?;
    let call = |reply| Command::CallNext { counter: counter.clone(), reply };
    let called = match forward::ask(&state, &req, Bytes::new(), &facility, Rerun::Harmful, call).await? {
        Served::Here(called) => called,
        Served::There(answer) => return Ok(answer),
    };
    Ok(match called {
        Some(view) => HttpResponse::Ok().json(view),
        None => HttpResponse::NoContent().finish(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    /// Only this counter.
    pub counter_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/facilities/{facility_id}/queue", tag = "counters",
    params(("facility_id" = String, Path), QueueQuery),
    responses((status = 200, description = "Called and waiting tokens per counter, in call order", body = QueueView),
        (status = 404, description = "Unknown facility or counter")),
    security(("bearer" = [])))]
pub async fn queue(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let facility = path.into_inner();
    authenticate(&req, &state).await?.require_staff_of(&facility)?;
    let q =
        web::Query::<QueueQuery>::from_query(req.query_string()).map_err(|_| ApiError::UnknownField("query".into()))?;
    let counter = q.into_inner().counter_id;
    let read = |reply| Command::Queue { counter: counter.clone(), reply };
    match forward::ask(&state, &req, Bytes::new(), &facility, Rerun::Harmless, read).await? {
        Served::Here(view) => Ok(HttpResponse::Ok().json(view)),
        Served::There(answer) => Ok(answer),
    }
}
