//! Every error the API can answer, mapped to its HTTP status and JSON body in one place:
//! `{"error":{"code":"UPPER_SNAKE_CASE","message":"...","field":"..."}}`. Messages never
//! carry submitted values, so patient data cannot leak through them.
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::limits::Limited;
use crate::facility::queue::QueueError;
use crate::facility::FacilityError;
use crate::persistence::StoreError;
use crate::registry::import::LineError;
use crate::registry::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("this credential may not do that")]
    Forbidden,
    #[error("unknown facility")]
    UnknownFacility,
    #[error("unknown counter")]
    UnknownCounter,
    #[error("unknown token")]
    UnknownToken,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    IllegalTransition(String),
    #[error("the Idempotency-Key was already used for a different scan")]
    IdempotencyKeyReused,
    /// The routing facility (`X-Facility-Id` header or the path) and the body's
    /// `facility_id` differ: the request was routed for one facility and would count for
    /// another. The field names the routing side.
    #[error("the facility routed to (X-Facility-Id header or path) differs from the body's facility_id")]
    FacilityMismatch(&'static str),
    #[error("{0}")]
    MalformedJson(String),
    #[error("the query string cannot be decoded")]
    MalformedQuery,
    #[error("header {0} is required")]
    MissingHeader(&'static str),
    #[error("header {0} {1}")]
    InvalidHeader(&'static str, &'static str),
    /// The switch's bearer JWT was refused; the code says why (expired, unknown key, ...).
    #[error("the bearer token was refused")]
    InvalidToken(&'static str),
    #[error("missing field")]
    MissingField(String),
    #[error("unknown field")]
    UnknownField(String),
    #[error("wrong type")]
    InvalidType(String),
    #[error("{0}")]
    InvalidField(FieldError),
    #[error("the import has invalid lines; nothing was imported")]
    InvalidImport(Vec<LineError>),
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("the token store is unavailable; retry shortly")]
    StoreUnavailable,
    /// The switch's signing keys have not arrived yet (its certs endpoint has not answered
    /// since startup): no share can be verified, and it is no fault of the caller.
    #[error("the switch's signing keys are not loaded yet; retry shortly")]
    KeysUnavailable,
    #[error("the gateway is overloaded; retry shortly")]
    Overloaded,
    #[error("the facility changed owner; retry")]
    OwnerChanged,
    /// The on-share outbox is at `SCANGW_ONSHARE_OUTBOX_MAX` (the switch's callbacks are not
    /// landing): the share was not stored and gets no callback; the switch may resend it.
    #[error("too many shares are waiting for their on-share; resend later")]
    OutboxFull,
    #[error("rate limit exceeded; retry after the time in Retry-After")]
    RateLimited(Limited),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::Forbidden => "FORBIDDEN",
            ApiError::UnknownFacility => "UNKNOWN_FACILITY",
            ApiError::UnknownCounter => "UNKNOWN_COUNTER",
            ApiError::UnknownToken => "UNKNOWN_TOKEN",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::IllegalTransition(_) => "ILLEGAL_TRANSITION",
            ApiError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ApiError::FacilityMismatch(_) => "FACILITY_MISMATCH",
            ApiError::MalformedJson(_) => "MALFORMED_JSON",
            ApiError::MalformedQuery => "MALFORMED_QUERY",
            ApiError::MissingHeader(_) => "MISSING_HEADER",
            ApiError::InvalidHeader(..) => "INVALID_HEADER",
            ApiError::InvalidToken(code) => code,
            ApiError::MissingField(_) => "MISSING_FIELD",
            ApiError::UnknownField(_) => "UNKNOWN_FIELD",
            ApiError::InvalidType(_) => "INVALID_TYPE",
            ApiError::InvalidField(_) => "INVALID_FIELD",
            ApiError::InvalidImport(_) => "INVALID_IMPORT",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::StoreUnavailable => "STORE_UNAVAILABLE",
            ApiError::KeysUnavailable => "JWKS_UNAVAILABLE",
            ApiError::Overloaded => "OVERLOADED",
            ApiError::OwnerChanged => "OWNER_CHANGED",
            ApiError::OutboxFull => "OUTBOX_FULL",
            ApiError::RateLimited(l) => l.kind.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::MissingField(f) | ApiError::UnknownField(f) | ApiError::InvalidType(f) => Some(f),
            ApiError::InvalidField(e) => Some(&e.field),
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h, _) | ApiError::FacilityMismatch(h) => Some(h),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::MissingField(f) => format!("field `{f}` is required"),
            ApiError::UnknownField(f) => format!("field `{f}` is not allowed"),
            ApiError::InvalidType(f) => format!("field `{f}` has the wrong type"),
            other => other.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::UnknownFacility | ApiError::UnknownCounter | ApiError::UnknownToken | ApiError::NotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IllegalTransition(_) => StatusCode::CONFLICT,
            ApiError::MalformedJson(_)
            | ApiError::MalformedQuery
            | ApiError::MissingHeader(_)
            | ApiError::InvalidHeader(..)
            | ApiError::MissingField(_)
            | ApiError::UnknownField(_)
            | ApiError::InvalidType(_) => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyKeyReused
            | ApiError::FacilityMismatch(_)
            | ApiError::InvalidField(_)
            | ApiError::InvalidImport(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::StoreUnavailable
            | ApiError::KeysUnavailable
            | ApiError::Overloaded
            | ApiError::OwnerChanged
            | ApiError::OutboxFull => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "code": self.code(), "message": self.message() });
        if let Some(f) = self.field() {
            body["field"] = json!(f);
        }
        if let ApiError::InvalidImport(lines) = self {
            body["lines"] = json!(lines);
        }
        let mut resp = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            resp.insert_header((header::RETRY_AFTER, "1"));
        }
        if let ApiError::RateLimited(l) = self {
            let wait = l.retry_after_s.to_string();
            resp.insert_header((header::RETRY_AFTER, wait.clone()))
                .insert_header(("RateLimit-Limit", l.limit.to_string()))
                .insert_header(("RateLimit-Remaining", "0"))
                .insert_header(("RateLimit-Reset", wait));
        }
        if self.status_code() == StatusCode::UNAUTHORIZED {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        resp.json(json!({ "error": body }))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable => ApiError::StoreUnavailable,
            StoreError::Fenced | StoreError::Gap => ApiError::OwnerChanged,
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidField(e)
    }
}

impl From<FacilityError> for ApiError {
    fn from(e: FacilityError) -> Self {
        match e {
            FacilityError::UnknownFacility => ApiError::UnknownFacility,
            FacilityError::Overloaded => ApiError::Overloaded,
            // Already counted by its limit where it was charged (see `auth::patient_admission`).
            FacilityError::RateLimited(l) => ApiError::RateLimited(l),
            // Only a protocol share's admission has a deadline (the worker gives it up); a
            // native scan never meets it.
            FacilityError::Expired => ApiError::Overloaded,
            FacilityError::Store(s) => s.into(),
            // Only routed asks answer it, and their callers forward; should one reach the
            // client, it is what a request that met a moving owner gets: retry.
            FacilityError::OwnedElsewhere { .. } => ApiError::OwnerChanged,
            FacilityError::Queue(q) => match q {
                QueueError::UnknownCounter => ApiError::UnknownCounter,
                QueueError::UnknownToken => ApiError::UnknownToken,
                QueueError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
                e @ QueueError::IllegalTransition { .. } => ApiError::IllegalTransition(e.to_string()),
            },
        }
    }
}
