//! Bearer credentials and roles: admin (registry, keys), platform (scans, token reads),
//! staff (counter work for one facility). Configured tokens are compared as SHA-256
//! digests in constant time; staff keys are looked up by id and checked against a hash.
use actix_web::http::header;
use actix_web::HttpRequest;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::registry::staff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Platform,
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

pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Principal, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    let d = digest(token);
    if bool::from(d.ct_eq(&state.admin_digest)) {
        return Ok(Principal::Admin);
    }
    if bool::from(d.ct_eq(&state.platform_digest)) {
        return Ok(Principal::Platform);
    }
    let (facility, key_id, secret) = staff::parse(token).ok_or(ApiError::Unauthorized)?;
    match state.store.staff_key_hash(facility, key_id).await? {
        Some(hash) if staff::matches(secret, &hash) => Ok(Principal::Staff { facility: facility.to_string() }),
        _ => Err(ApiError::Unauthorized),
    }
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        (*self == Principal::Admin).then_some(()).ok_or(ApiError::Forbidden)
    }

    pub fn require_platform(&self) -> Result<(), ApiError> {
        (*self == Principal::Platform).then_some(()).ok_or(ApiError::Forbidden)
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
