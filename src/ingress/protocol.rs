//! The national protocol's inbound calls: `POST /api/v3/hip/patient/share` (also without
//! `/api`) and `POST /v1.0/patients/profile/share`. A share is checked (bearer JWT,
//! headers, JSON), stored in the outbox and answered 202 at once; the token and its
//! on-share callback follow from the outbox worker ([`crate::protocol::worker`]).
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::{body, AppState};
use crate::facility::Command;
use crate::protocol::hiecm::Version;
use crate::protocol::worker::{ShareScan, ShareTicket, F_AT, F_BODY, F_HIP, F_REQUEST_ID, F_VERSION};
use crate::registry::valid_facility_id;
use crate::telemetry::metrics::Metrics;

fn header<'a>(req: &'a HttpRequest, name: &'static str) -> Result<&'a str, ApiError> {
    let v = req.headers().get(name).ok_or(ApiError::MissingHeader(name))?;
    v.to_str().map(str::trim).map_err(|_| ApiError::InvalidHeader(name, "must be visible ASCII"))
}

/// A request id: a UUID as peers send it (36 characters of hex digits and dashes).
pub fn valid_request_id(v: &str) -> bool {
    v.len() == 36
        && v.char_indices().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// How the switch's credential passed [`authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Valid,
    /// Valid in every respect but expired, by no more than `SCANGW_JWT_REDELIVERY_GRACE_S`:
    /// accepted only for a share whose request id was accepted before ([`redelivery`]).
    ExpiredInGrace,
}

/// Checks the switch's credential (before anything else is read) and the per-client limit.
async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Credential, ApiError> {
    let p = state.protocol.as_ref().ok_or(ApiError::NotFound)?;
    state.limits.global().map_err(super::auth::limited)?;
    let auth = req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let now = state.directory.deps().clock.now();
    let grace = i64::try_from(state.settings.jwt_redelivery_grace_s).unwrap_or(i64::MAX);
    let credential = match p.verify(auth, now).await {
        Ok(_) => Credential::Valid,
        // No key set yet (the certs endpoint has not answered since startup): 503, so the
        // switch retries, rather than a 401 that blames its token.
        Err(crate::protocol::jwt::JwtError::Jwks(_)) => return Err(ApiError::KeysUnavailable),
        // The switch redelivers a refused callback about 16 minutes later with the first
        // delivery's bearer, expired by then (care-abdm's findings on sandbox traffic).
        Err(crate::protocol::jwt::JwtError::Expired)
            if grace > 0 && p.verifier.verify_expired_within(auth, now.as_second(), grace).is_ok() =>
        {
            Credential::ExpiredInGrace
        }
        Err(e) => {
            state.limits.client(&super::auth::anonymous_key(req, state)).map_err(super::auth::limited)?;
            return Err(ApiError::InvalidToken(e.code()));
        }
    };
    state.limits.client("hiecm").map_err(super::auth::limited)?;
    Ok(credential)
}

/// A credential expired within the grace passes only for a redelivery: a share whose request
/// id this gateway accepted before (marked in Redis when it was accepted). Anything else with
/// it is refused `TOKEN_EXPIRED`, as without the grace. Safe: such a request can only get the
/// answer the first delivery got (the share's request id is its idempotency key).
async fn redelivery(state: &AppState, credential: Credential, request_id: &str) -> Result<(), ApiError> {
    if credential == Credential::Valid {
        return Ok(());
    }
    if state.store.share_seen(request_id).await? {
        state.directory.deps().metrics.share_redelivery_expired_bearer.increment(1);
        tracing::info!(request_id = %request_id, "share redelivered with an expired bearer within the grace: accepted");
        return Ok(());
    }
    Err(ApiError::InvalidToken(crate::protocol::jwt::JwtError::Expired.code()))
}

/// A share's `TIMESTAMP`: UTC ISO-8601 with `Z` or an offset, or without any zone (read as
/// UTC): NHA's ABDM-wrapper writes it without `Z` (`Utils.getCurrentTimeStamp`, a UTC
/// `LocalDateTime`), and so may the switch.
pub fn valid_timestamp(v: &str) -> bool {
    v.parse::<jiff::Timestamp>().is_ok() || v.parse::<jiff::civil::DateTime>().is_ok()
}

/// Fields of `profile.patient` the gateway reads; any other one may be dropped when large.
const USED_PATIENT_FIELDS: [&str; 12] = [
    "abhaNumber",
    "abhaAddress",
    "healthId",
    "healthIdNumber",
    "name",
    "gender",
    "yearOfBirth",
    "dob",
    "phoneNumber",
    "mobile",
    "identifiers",
    "address",
];

/// An unused field larger than this (serialized) is dropped before the share is stored.
const LARGE_FIELD_BYTES: usize = 1024;

/// Drops the photo (`kycPhoto`, a base64 image the switch may send) and any other unused,
/// large field of `profile.patient` before the share is stored: the outbox holds each share
/// until its on-share lands, and a photo is patient data the gateway never uses. True when
/// something was dropped.
fn drop_large_optional_fields(v: &mut Value) -> bool {
    let Some(patient) = v.pointer_mut("/profile/patient").and_then(Value::as_object_mut) else {
        return false;
    };
    let before = patient.len();
    patient.retain(|k, field| {
        let unused = !USED_PATIENT_FIELDS.contains(&k.as_str());
        let photo = ["kycPhoto", "profilePhoto", "photo"].iter().any(|p| k.eq_ignore_ascii_case(p));
        !(unused && (photo || field.to_string().len() > LARGE_FIELD_BYTES))
    });
    patient.len() != before
}

/// Reads the JSON body (the protocol routes' own size limit, content type, well-formed JSON).
async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(web::Bytes, Value), ApiError> {
    body::require_json(req)?;
    let bytes = body::read(req, payload, state.settings.protocol_max_body_bytes).await?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| ApiError::MalformedJson("the body is not valid JSON".into()))?;
    if !v.is_object() {
        return Err(ApiError::MalformedJson("the body must be a JSON object".into()));
    }
    let mut v = v;
    if drop_large_optional_fields(&mut v) {
        let slim = serde_json::to_vec(&v).map_err(|_| ApiError::MalformedJson("the body is not valid JSON".into()))?;
        return Ok((web::Bytes::from(slim), v));
    }
    Ok((bytes, v))
}

/// Stores the share and answers 202; the callback carries the outcome.
async fn accept(
    state: &AppState,
    version: Version,
    request_id: &str,
    hip: &str,
    bytes: &[u8],
) -> Result<HttpResponse, ApiError> {
    let body = std::str::from_utf8(bytes).map_err(|_| ApiError::MalformedJson("the body is not UTF-8".into()))?;
    let at = state.directory.deps().clock.now().as_millisecond().to_string();
    let fields = [(F_VERSION, version.as_str()), (F_REQUEST_ID, request_id), (F_HIP, hip), (F_BODY, body), (F_AT, &at)];
    // The seen mark outlives any bearer the first delivery may carry (the grace counts from
    // its expiry): a redelivery with that bearer, expired, is accepted within the grace.
    let grace = state.settings.jwt_redelivery_grace_s;
    let seen_for = (grace > 0).then(|| std::time::Duration::from_secs(grace.saturating_add(3600)));
    let added = state.store.outbox_add(request_id, &fields, state.settings.onshare_outbox_max, seen_for).await?;
    if added.is_none() {
        tracing::warn!(limit = state.settings.onshare_outbox_max, "outbox full: a share was refused with OUTBOX_FULL");
        return Err(ApiError::OutboxFull);
    }
    Ok(HttpResponse::Accepted().json(json!({ "requestId": request_id, "status": "ACCEPTED" })))
}

fn counted(version: &'static str, r: Result<HttpResponse, ApiError>) -> Result<HttpResponse, ApiError> {
    Metrics::share(version, r.is_ok());
    r
}

pub async fn share_v3(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    counted("v3", share_v3_inner(&req, payload, &state).await)
}

async fn share_v3_inner(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<HttpResponse, ApiError> {
    let credential = authenticate(req, state).await?;
    let rid = header(req, "REQUEST-ID")?;
    if !valid_request_id(rid) {
        return Err(ApiError::InvalidHeader("REQUEST-ID", "must be a UUID"));
    }
    redelivery(state, credential, rid).await?;
    let ts = header(req, "TIMESTAMP")?;
    if !valid_timestamp(ts) {
        return Err(ApiError::InvalidHeader("TIMESTAMP", "must be a UTC ISO-8601 time, e.g. 2026-11-23T04:00:00.000Z"));
    }
    let hip = header(req, "X-HIP-ID")?;
    if !valid_facility_id(hip) {
        return Err(ApiError::InvalidHeader("X-HIP-ID", "must be a facility id"));
    }
    let (bytes, v) = json_body(req, payload, state).await?;
    // The body names the facility too. The share is routed on X-HIP-ID, as NHA's wrapper
    // does (token, patient and on-share all by the header): the switch sets it to the HIP it
    // delivers to, and the on-share answers for that HIP. A different metaData.hipId is
    // counted, not refused (refusing would lose the patient's token). The worker reads
    // everything else in the body (FAILURE on-share).
    if let Some(meta_hip) = v.pointer("/metaData/hipId").and_then(Value::as_str) {
        if meta_hip.trim() != hip {
            state.directory.deps().metrics.share_hip_mismatch.increment(1);
            tracing::warn!(request_id = %rid, "v3 share: X-HIP-ID differs from metaData.hipId; routed on X-HIP-ID");
        }
    }
    accept(state, Version::V3, rid, hip, &bytes).await
}

pub async fn share_v1(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    counted("v1", share_v1_inner(&req, payload, &state).await)
}

async fn share_v1_inner(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<HttpResponse, ApiError> {
    let credential = authenticate(req, state).await?;
    let hip = header(req, "X-HIP-ID")?;
    if !valid_facility_id(hip) {
        return Err(ApiError::InvalidHeader("X-HIP-ID", "must be a facility id"));
    }
    let (bytes, v) = json_body(req, payload, state).await?;
    // v1.0 carries its correlation id in the body.
    let rid = v.get("requestId").and_then(Value::as_str).ok_or(ApiError::MissingField("requestId".into()))?;
    if !valid_request_id(rid) {
        return Err(ApiError::InvalidField(crate::registry::field_error("requestId", "must be a UUID")));
    }
    let rid = rid.to_string();
    redelivery(state, credential, &rid).await?;
    accept(state, Version::V1, &rid, hip, &bytes).await
}

/// `POST /api/v3/hip/patient/running-token/status` (NHA's Running Token Status document):
/// the switch asks for the ongoing token number of counter `context` at `hipId`. Checked as a
/// share is (the switch's bearer JWT, `REQUEST-ID`, `TIMESTAMP`, `X-HIP-ID`), answered 202 at
/// once; the on-status callback follows from a background task that reads the facility's
/// queue (routed on `X-HIP-ID`, as shares are).
pub async fn running_token_status(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A status request is new each time: an expired bearer gets no grace here.
    if authenticate(&req, &state).await? != Credential::Valid {
        return Err(ApiError::InvalidToken(crate::protocol::jwt::JwtError::Expired.code()));
    }
    let rid = header(&req, "REQUEST-ID")?;
    if !valid_request_id(rid) {
        return Err(ApiError::InvalidHeader("REQUEST-ID", "must be a UUID"));
    }
    let ts = header(&req, "TIMESTAMP")?;
    if !valid_timestamp(ts) {
        return Err(ApiError::InvalidHeader("TIMESTAMP", "must be a UTC ISO-8601 time, e.g. 2026-11-23T04:00:00.000Z"));
    }
    let hip = header(&req, "X-HIP-ID")?;
    if !valid_facility_id(hip) {
        return Err(ApiError::InvalidHeader("X-HIP-ID", "must be a facility id"));
    }
    let (_, v) = json_body(&req, payload, &state).await?;
    // The document's example sends `context` as a string, its field table as a number.
    let context = match v.get("context") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(ApiError::InvalidField(crate::registry::field_error("context", "must be a counter id"))),
        None => return Err(ApiError::MissingField("context".into())),
    };
    crate::protocol::running_token::spawn_answer(state.clone(), rid.to_string(), hip.to_string(), context);
    Ok(HttpResponse::Accepted().json(json!({ "requestId": rid, "status": "ACCEPTED" })))
}

/// `POST /internal/v1/shares/scan`: a protocol share's scan for a facility this node owns,
/// sent by the node whose outbox worker holds the share (platform credential; not part of
/// the public API). Runs with the share's own admission (deadline, facility and patient
/// limits, only for a new token) and Idempotency-Key, so a redelivery answers the same
/// token wherever it runs. Served here whoever owns the facility: the sender chose us.
pub async fn share_scan_for_node(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::auth::authenticate(&req, &state).await?.require_platform()?;
    let share: ShareScan = body::json(&req, payload, state.settings.protocol_max_body_bytes).await?;
    let deps = state.directory.deps();
    let year = deps.clock.now().to_zoned(jiff::tz::TimeZone::UTC).year();
    let (facility, input) = share.scan.into_input(&deps.hasher, year, Some(&share.idempotency_key))?;
    let admit = || super::auth::share_admission(&state, &facility, input.patient, share.deadline_ms);
    let r =
        state.directory.ask(&facility, |reply| Command::Scan { input: input.clone(), admit: admit(), reply }).await?;
    Ok(HttpResponse::Ok().json(ShareTicket::of(&r.view)))
}

/// `POST /internal/v1/running-token`: a counter's running token for another node whose
/// status request names a facility this node owns (platform credential; not part of the
/// public API). Read here whoever owns the facility: the asker chose us.
pub async fn running_token_for_node(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use crate::protocol::running_token::{answer_here, RunningAnswer, RunningAsk};
    super::auth::authenticate(&req, &state).await?.require_platform()?;
    let ask: RunningAsk = body::json(&req, payload, state.settings.max_body_bytes).await?;
    if !valid_facility_id(&ask.hip_id) {
        return Err(ApiError::UnknownFacility);
    }
    let outcome = answer_here(&state, &ask.hip_id, &ask.context).await;
    Ok(HttpResponse::Ok().json(RunningAnswer::of(&outcome)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn timestamps_with_or_without_a_zone() {
        for ok in
            ["2026-11-23T04:00:00.000Z", "2026-11-23T04:00:00.000", "2026-11-23T09:30:00+05:30", "2026-11-23T04:00:00"]
        {
            assert!(super::valid_timestamp(ok), "{ok}");
        }
        for bad in ["", "yesterday", "2026-13-23T04:00:00", "1763870400"] {
            assert!(!super::valid_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn the_photo_and_large_unused_fields_are_dropped_used_ones_kept() {
        let big = "A".repeat(4096);
        let mut v = json!({"profile": {"patient": {"name": "John", "kycPhoto": "/9j/4AAQ", "notes": big.clone(),
            "hint": "small", "address": {"line": big.clone()}}}});
        assert!(super::drop_large_optional_fields(&mut v));
        let p = &v["profile"]["patient"];
        assert!(p.get("kycPhoto").is_none() && p.get("notes").is_none(), "{p}");
        assert_eq!(p["name"], "John");
        assert_eq!(p["hint"], "small");
        assert_eq!(p["address"]["line"], big.as_str(), "a used field is never dropped");
        let mut plain = json!({"profile": {"patient": {"name": "John"}}});
        assert!(!super::drop_large_optional_fields(&mut plain));
    }

    #[test]
    fn request_ids_are_uuids() {
        assert!(super::valid_request_id("5f7a3c2e-1b4d-4e8f-9a6b-0c1d2e3f4a5b"));
        assert!(super::valid_request_id(&crate::protocol::hiecm::new_request_id()));
        for bad in ["", "5f7a3c2e1b4d4e8f9a6b0c1d2e3f4a5b", "5f7a3c2e-1b4d-4e8f-9a6b-0c1d2e3f4a5g", "x"] {
            assert!(!super::valid_request_id(bad), "{bad}");
        }
    }
}
