//! Bearer credentials and roles: admin (registry, keys), platform (scans, token reads),
//! monitor (leaderboards), staff (counter work for one facility). Configured tokens are compared as SHA-256
//! digests in constant time; staff keys are looked up by id and checked against a hash.
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::facility::actor::{before_deadline, Admission, Refusal};
use crate::facility::queue::PatientKeys;
use crate::registry::staff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Platform,
    Monitor,
    Staff { facility: String },
}

pub fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty() && t.len() <= 512)
}

/// A refusal by a rate limit, counted by limit.
pub fn limited(e: super::limits::Limited) -> ApiError {
    crate::telemetry::metrics::Metrics::rate_limited(e.kind.label());
    ApiError::RateLimited(e)
}

/// The address a request comes from, as the per-address limits key it: the peer, or what
/// trusted proxies say in `X-Forwarded-For` (see [`super::limits::Limits::client_ip`]).
pub fn client_addr(req: &HttpRequest, state: &AppState) -> super::limits::ClientAddr {
    let xff: Vec<&str> = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).collect();
    state.limits.client_addr(req.peer_addr().map(|a| a.ip()), &xff)
}

/// The client-limit key of a caller without a credential: its address (the forwarded one
/// only through trusted proxies).
pub fn anonymous_key(req: &HttpRequest, state: &AppState) -> String {
    format!("ip:{}", client_addr(req, state))
}

/// Refuses an unauthenticated caller, counting the attempt against its client address.
fn unauthorized(req: &HttpRequest, state: &AppState) -> ApiError {
    match state.limits.client(&anonymous_key(req, state)) {
        Err(e) => limited(e),
        Ok(()) => ApiError::Unauthorized,
    }
}

/// Global limit, then the credential (and its own limit), before any Redis work but the
/// staff key lookup.
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Principal, ApiError> {
    state.limits.global().map_err(limited)?;
    let Some(token) = bearer(req) else { return Err(unauthorized(req, state)) };
    let d = digest(token);
    if bool::from(d.ct_eq(&state.admin_digest)) {
        state.limits.client("admin").map_err(limited)?;
        return Ok(Principal::Admin);
    }
    if bool::from(d.ct_eq(&state.platform_digest)) {
        state.limits.client("platform").map_err(limited)?;
        return Ok(Principal::Platform);
    }
    if state.monitor_digest.is_some_and(|m| bool::from(d.ct_eq(&m))) {
        state.limits.client("monitor").map_err(limited)?;
        return Ok(Principal::Monitor);
    }
    let Some((facility, key_id, secret)) = staff::parse(token) else { return Err(unauthorized(req, state)) };
    state.limits.client(&format!("staff:{key_id}")).map_err(limited)?;
    match state.store.staff_key_hash(facility, key_id).await? {
        Some(hash) if staff::matches(secret, &hash) => Ok(Principal::Staff { facility: facility.to_string() }),
        _ => Err(unauthorized(req, state)),
    }
}

/// The per-facility limit of a scan, before any actor work: it bounds the work a facility's
/// actor is given, which a replay or a repeat costs as well.
pub fn limit_scan(state: &AppState, facility: &str) -> Result<(), ApiError> {
    state.limits.facility(facility).map_err(limited)
}

/// The per-patient limit of a scan (patient keys are digests), for the facility actor to
/// charge only if the scan issues a new token: a retried Idempotency-Key, a redelivered
/// share or a repeat scan answers the token already issued and must not be refused for it.
/// A refusal is counted here, where it happens.
pub fn patient_admission(state: &web::Data<AppState>, patient: PatientKeys) -> Admission {
    let state = state.clone();
    Box::new(move || {
        let charge = |d: &[u8; 16]| {
            state
                .limits
                .patient(d)
                .inspect_err(|e| crate::telemetry::metrics::Metrics::rate_limited(e.kind.label()))
                .map_err(Refusal::Limited)
        };
        charge(&patient.by_address.0)?;
        patient.by_number.map_or(Ok(()), |n| charge(&n.0))
    })
}

/// The admission of a protocol share's scan: its deadline, then the facility limit, then the
/// patient limit, all checked only if the scan issues a new token. The share was accepted
/// (202) before the worker runs it, so a redelivery of a share that already has its token
/// must answer that token; a facility limit charged before the actor would turn a
/// redelivery at a busy facility into a RATE_LIMITED on-share after an earlier SUCCESS. The
/// deadline is checked here too, right before issuing, and not only by the worker before it
/// asks: the share may wait in the facility's mailbox meanwhile.
pub fn share_admission(
    state: &web::Data<AppState>,
    facility: &str,
    patient: PatientKeys,
    deadline_ms: i64,
) -> Admission {
    let (state, facility) = (state.clone(), facility.to_string());
    let patient = patient_admission(&state, patient);
    Box::new(move || {
        before_deadline(&state.directory.deps().clock, deadline_ms)?;
        state
            .limits
            .facility(&facility)
            .inspect_err(|e| crate::telemetry::metrics::Metrics::rate_limited(e.kind.label()))
            .map_err(Refusal::Limited)?;
        patient()
    })
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        (*self == Principal::Admin).then_some(()).ok_or(ApiError::Forbidden)
    }

    pub fn require_platform(&self) -> Result<(), ApiError> {
        (*self == Principal::Platform).then_some(()).ok_or(ApiError::Forbidden)
    }

    /// Leaderboards: the monitoring role, and admins.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        matches!(self, Principal::Monitor | Principal::Admin).then_some(()).ok_or(ApiError::Forbidden)
    }

    pub fn require_staff_of(&self, facility: &str) -> Result<(), ApiError> {
        match self {
            Principal::Staff { facility: f } if f == facility => Ok(()),
            _ => Err(ApiError::Forbidden),
        }
    }

    pub fn is_staff_of(&self, facility: &str) -> bool {
        matches!(self, Principal::Staff { facility: f } if f == facility)
    }
}
