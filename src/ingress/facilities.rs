//! Registry administration: put/get a facility, bulk import, staff keys (admin only).
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::auth::authenticate;
use super::error::ApiError;
use super::{body, AppState};
use crate::registry::import::{self, Format};
use crate::registry::{staff, valid_facility_id, FacilityInfo, FacilitySpec};

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_facility_id(id) {
        Ok(())
    } else {
        Err(ApiError::UnknownFacility)
    }
}

#[utoipa::path(put, path = "/v1/facilities/{facility_id}", tag = "registry",
    params(("facility_id" = String, Path, description = "HFR facility id")),
    request_body = FacilitySpec,
    responses((status = 201, description = "Created", body = FacilityInfo), (status = 200, description = "Updated", body = FacilityInfo),
        (status = 422, description = "Invalid field")),
    security(("bearer" = [])))]
pub async fn put(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_admin()?;
    let id = path.into_inner();
    let spec: FacilitySpec = body::json(&req, payload, state.settings.max_body_bytes).await?;
    let s = &state.settings;
    let info = spec.validate(&id, &s.default_timezone, s.default_token_validity_s)?;
    let created = store_all(&state, std::slice::from_ref(&info)).await?;
    Ok(if created > 0 { HttpResponse::Created().json(info) } else { HttpResponse::Ok().json(info) })
}

#[utoipa::path(get, path = "/v1/facilities/{facility_id}", tag = "registry",
    params(("facility_id" = String, Path)),
    responses((status = 200, body = FacilityInfo), (status = 404, description = "Unknown facility")),
    security(("bearer" = [])))]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_admin()?;
    let id = path.into_inner();
    check_id(&id)?;
    let raw = state.store.get_info(&id).await?.ok_or(ApiError::UnknownFacility)?;
    let info: FacilityInfo = serde_json::from_str(&raw).map_err(|_| ApiError::StoreUnavailable)?;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    pub imported: usize,
    pub created: usize,
}

#[utoipa::path(post, path = "/v1/facilities:import", tag = "registry",
    request_body(content = String, description = "NDJSON (application/x-ndjson) or CSV (text/csv); all rows or none", content_type = "application/x-ndjson"),
    responses((status = 200, body = ImportResult), (status = 422, description = "INVALID_IMPORT with every bad line")),
    security(("bearer" = [])))]
pub async fn import(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_admin()?;
    let format = match body::media_type(&req).as_deref() {
        Some("application/x-ndjson") | Some("application/ndjson") | Some("application/jsonl") => Format::Ndjson,
        Some("text/csv") => Format::Csv,
        _ => return Err(ApiError::UnsupportedMediaType("expected application/x-ndjson or text/csv")),
    };
    let data = body::read(&req, payload, state.settings.max_import_bytes).await?;
    let s = &state.settings;
    let infos = import::parse(format, &data, &s.default_timezone, s.default_token_validity_s)
        .map_err(ApiError::InvalidImport)?;
    let created = store_all(&state, &infos).await?;
    Ok(HttpResponse::Ok().json(ImportResult { imported: infos.len(), created }))
}

async fn store_all(state: &AppState, infos: &[FacilityInfo]) -> Result<usize, ApiError> {
    let items: Vec<(String, String)> =
        infos.iter().map(|i| (i.facility_id.clone(), serde_json::to_string(i).expect("facility serialises"))).collect();
    let created = state.store.put_infos(&items).await?;
    for i in infos {
        state.directory.reconfigure(i.clone());
    }
    Ok(created)
}

#[utoipa::path(post, path = "/v1/facilities/{facility_id}/staff-keys", tag = "registry",
    params(("facility_id" = String, Path)),
    responses((status = 201, description = "`{key_id, key}`: the key is shown only now"), (status = 404, description = "Unknown facility")),
    security(("bearer" = [])))]
pub async fn create_staff_key(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_admin()?;
    let id = path.into_inner();
    check_id(&id)?;
    state.store.get_info(&id).await?.ok_or(ApiError::UnknownFacility)?;
    let k = staff::generate(&id);
    state.store.put_staff_key(&id, &k.key_id, &k.hash).await?;
    tracing::info!(facility = %id, key_id = %k.key_id, "staff key created");
    Ok(HttpResponse::Created().json(json!({ "key_id": k.key_id, "key": k.key })))
}

#[utoipa::path(delete, path = "/v1/facilities/{facility_id}/staff-keys/{key_id}", tag = "registry",
    params(("facility_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such key")),
    security(("bearer" = [])))]
pub async fn revoke_staff_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_admin()?;
    let (id, key_id) = path.into_inner();
    check_id(&id)?;
    if state.store.revoke_staff_key(&id, &key_id).await? {
        tracing::info!(facility = %id, key_id = %key_id, "staff key revoked");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}
