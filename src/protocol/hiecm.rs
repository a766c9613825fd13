//! The outbound side of the protocol: a client for the national switch (HIE-CM) that keeps
//! a client-credentials session bearer until it expires and posts on-share callbacks with
//! the protocol's headers (`Authorization`, a new `REQUEST-ID`, `TIMESTAMP`, `X-CM-ID`, `X-HIP-ID`).
use std::time::Duration;

use jiff::Timestamp;
use rand::RngCore;
use serde_json::{json, Value};

/// Which protocol version a share came in on (and its callback goes out on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V1,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V3 => "3",
            Version::V1 => "1",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "3" => Some(Version::V3),
            "1" => Some(Version::V1),
            _ => None,
        }
    }

    /// Where this version's on-share goes when no URL is configured for it, on the switch's
    /// `base` URL (`SCANGW_HIECM_BASE_URL`, the host without `/gateway`). NHA's documents put
    /// the v3 callbacks at `/api/hiecm/patient-share/v3/on-share` on that host, and every
    /// v0.5/v1.0 callback under the gateway prefix (`https://dev.abdm.gov.in/gateway/v1.0/...`):
    /// so v1.0 goes to `{base}/gateway/v1.0/patients/profile/on-share`, or to
    /// `{base}/v1.0/...` when `base` already ends with `/gateway`.
    pub fn default_on_share_url(self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        match self {
            Version::V3 => format!("{base}/api/hiecm/patient-share/v3/on-share"),
            Version::V1 if base.ends_with("/gateway") => format!("{base}/v1.0/patients/profile/on-share"),
            Version::V1 => format!("{base}/gateway/v1.0/patients/profile/on-share"),
        }
    }
}

/// Why a callback attempt did not land. Retried until the deadline unless
/// [`SendError::is_permanent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the switch could not be reached or timed out")]
    Unreachable,
    #[error("the session endpoint refused the client credentials (status {0})")]
    Session(u16),
    #[error("the switch answered {0}")]
    Status(u16),
}

impl SendError {
    /// The switch read the callback and refused it for good (a 4xx): sending the same body
    /// again cannot land it. Not permanent: 5xx, no answer or a timeout, a refused session
    /// (the credentials may be fixed before the deadline), 401 (the session bearer is renewed
    /// on the next attempt), 408 and 429 (the switch asks to come back later).
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Status(s) if (400..500).contains(s) && !matches!(s, 401 | 408 | 429))
    }
}

/// A random (version 4) UUID, as the protocol's `REQUEST-ID`.
pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The protocol's `TIMESTAMP`: UTC, milliseconds, `Z`.
pub fn timestamp(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub struct HiecmConfig {
    pub base_url: String,
    pub cm_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub session_path: String,
    /// Full URLs the on-shares of each version are posted to.
    pub v3_on_share_url: String,
    pub v1_on_share_url: String,
    /// Full URL running-token on-status callbacks are posted to.
    pub v3_on_status_url: String,
    pub timeout: Duration,
}

/// The switch's client-credentials session bearer, cached until shortly before it expires.
/// One per process, shared (`Arc`, `Send + Sync`) by the on-share workers and the JWKS fetch
/// (the switch's certs endpoint answers 401 without it), so the gateway asks the session
/// endpoint once per expiry, not once per user. One caller fetches at a time.
pub struct Session {
    cfg: HiecmConfig,
    /// The session bearer and when to stop using it.
    cached: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl Session {
    pub fn new(cfg: HiecmConfig) -> Self {
        Session { cfg, cached: Default::default() }
    }

    pub fn config(&self) -> &HiecmConfig {
        &self.cfg
    }

    /// A client with the configured timeout and no redirects (awc clients are per thread).
    pub fn client(&self) -> awc::Client {
        awc::Client::builder().timeout(self.cfg.timeout).disable_redirects().finish()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.base_url.trim_end_matches('/'), path)
    }

    /// The cached session bearer, or a fresh one from the session endpoint.
    pub async fn bearer(&self, http: &awc::Client, now: Timestamp) -> Result<String, SendError> {
        let mut session = self.cached.lock().await;
        if let Some((token, until)) = session.as_ref() {
            if std::time::Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let body = json!({
            "clientId": self.cfg.client_id,
            "clientSecret": self.cfg.client_secret,
            "grantType": "client_credentials",
        });
        let mut res = http
            .post(self.url(&self.cfg.session_path))
            .insert_header(("REQUEST-ID", new_request_id()))
            .insert_header(("TIMESTAMP", timestamp(now)))
            .insert_header(("X-CM-ID", self.cfg.cm_id.as_str()))
            .send_json(&body)
            .await
            .map_err(|_| SendError::Unreachable)?;
        let status = res.status().as_u16();
        if !res.status().is_success() {
            return Err(SendError::Session(status));
        }
        let v: Value = res.json().limit(64 * 1024).await.map_err(|_| SendError::Session(status))?;
        let token = v["accessToken"].as_str().filter(|t| !t.is_empty()).ok_or(SendError::Session(status))?;
        let expires_in = v["expiresIn"].as_u64().unwrap_or(300);
        // Renew a little early, so a bearer never expires in flight.
        let until = std::time::Instant::now() + Duration::from_secs(expires_in.saturating_sub(30).max(1));
        *session = Some((token.to_string(), until));
        Ok(token.to_string())
    }

    /// Drops the cached bearer (the switch answered 401): the next caller renews it.
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

/// Shared by the callback tasks of one worker (awc clients live on one thread, so this is
/// `Clone` but not `Send`). The session bearer comes from the process's one [`Session`].
#[derive(Clone)]
pub struct Hiecm {
    session: std::sync::Arc<Session>,
    http: awc::Client,
}

impl Hiecm {
    pub fn new(session: std::sync::Arc<Session>) -> Self {
        let http = session.client();
        Hiecm { session, http }
    }

    /// Posts one on-share body. A 401 drops the cached session so the next attempt renews it.
    /// `hip` is the share's `X-HIP-ID`, sent back on the on-share as NHA's wrapper does
    /// (`ProfileShareV3Service`: `Utils.getCustomHeaders(X_HIP_ID, ...)`).
    pub async fn on_share(&self, version: Version, hip: &str, body: &Value, now: Timestamp) -> Result<(), SendError> {
        let url = match version {
            Version::V3 => &self.session.config().v3_on_share_url,
            Version::V1 => &self.session.config().v1_on_share_url,
        };
        self.post(url, hip, body, now).await
    }

    /// Posts one running-token on-status body (NHA's Running Token Status document: the same
    /// headers as the v3 on-share).
    pub async fn on_status(&self, hip: &str, body: &Value, now: Timestamp) -> Result<(), SendError> {
        self.post(&self.session.config().v3_on_status_url, hip, body, now).await
    }

    async fn post(&self, url: &str, hip: &str, body: &Value, now: Timestamp) -> Result<(), SendError> {
        let bearer = self.session.bearer(&self.http, now).await?;
        let res = self
            .http
            .post(url)
            .insert_header(("Authorization", format!("Bearer {bearer}")))
            .insert_header(("REQUEST-ID", new_request_id()))
            .insert_header(("TIMESTAMP", timestamp(now)))
            .insert_header(("X-CM-ID", self.session.cfg.cm_id.as_str()))
            .insert_header(("X-HIP-ID", hip))
            .send_json(body)
            .await
            .map_err(|_| SendError::Unreachable)?;
        let status = res.status().as_u16();
        if res.status().is_success() {
            return Ok(());
        }
        if status == 401 {
            self.session.forget().await;
        }
        Err(SendError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = new_request_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, new_request_id());
    }

    #[test]
    fn only_a_4xx_other_than_401_408_429_is_permanent() {
        for s in [400, 403, 404, 409, 413, 422] {
            assert!(SendError::Status(s).is_permanent(), "{s}");
        }
        for s in [401, 408, 429, 500, 502, 503, 504] {
            assert!(!SendError::Status(s).is_permanent(), "{s}");
        }
        assert!(!SendError::Unreachable.is_permanent());
        assert!(!SendError::Session(400).is_permanent());
    }

    #[test]
    fn default_on_share_urls_follow_nhas_documents() {
        for base in ["https://dev.abdm.gov.in", "https://dev.abdm.gov.in/"] {
            assert_eq!(
                Version::V3.default_on_share_url(base),
                "https://dev.abdm.gov.in/api/hiecm/patient-share/v3/on-share"
            );
            assert_eq!(
                Version::V1.default_on_share_url(base),
                "https://dev.abdm.gov.in/gateway/v1.0/patients/profile/on-share"
            );
        }
        // A base that already names the gateway prefix is not given a second one.
        assert_eq!(
            Version::V1.default_on_share_url("https://dev.abdm.gov.in/gateway/"),
            "https://dev.abdm.gov.in/gateway/v1.0/patients/profile/on-share"
        );
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let t: Timestamp = "2026-11-23T04:00:00.5Z".parse().unwrap();
        assert_eq!(timestamp(t), "2026-11-23T04:00:00.500Z");
    }
}
