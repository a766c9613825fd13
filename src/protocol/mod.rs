//! The national Scan & Share protocol (HIE-CM): v3 profile-share and v1.0 share bodies with
//! their field drift ([`shapes`]), bearer JWT verification against a JWKS ([`jwt`]), and the
//! reliable on-share callback path (Redis outbox, retries) built on the same facility actors.
pub mod hiecm;
pub mod jwt;
pub mod shapes;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;

/// What the inbound handlers need when the protocol is on.
pub struct ProtocolState {
    pub verifier: Arc<jwt::Verifier>,
    /// With a JWKS URL: fetches the keys again when a token names a `kid` not loaded yet.
    refetch: Option<Refetch>,
}

impl ProtocolState {
    /// Verifies the switch's `Authorization` value at `now`. A token whose `kid` is unknown
    /// (the switch rotated its keys since the last fetch) refetches the JWKS URL and is
    /// verified again, so a rotation does not turn shares away until the periodic refresh.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        now: jiff::Timestamp,
    ) -> Result<jwt::Claims, jwt::JwtError> {
        // Read before verifying: a replacement that lands in between is then noticed.
        let seen = self.verifier.generation();
        match self.verifier.verify(authorization, now.as_second()) {
            Err(jwt::JwtError::UnknownKey) => {}
            other => return other,
        }
        match &self.refetch {
            Some(r) if r.refresh(&self.verifier, seen, now.as_millisecond()).await => {
                self.verifier.verify(authorization, now.as_second())
            }
            _ => Err(jwt::JwtError::UnknownKey),
        }
    }
}

/// JWKS fetches caused by unknown `kid`s: one at a time (requests that arrive during a fetch
/// wait for its result instead of starting their own), and at most one per `min_interval_ms`
/// of the injected clock, so a flood of tokens with made-up `kid`s costs the switch one
/// fetch per interval, not one per request.
struct Refetch {
    url: String,
    min_interval_ms: i64,
    /// When the last fetch for an unknown `kid` started (injected-clock milliseconds).
    last_ms: std::sync::Mutex<Option<i64>>,
    /// Held for the whole fetch: the single flight.
    flight: tokio::sync::Mutex<()>,
}

impl Refetch {
    /// True when the keys changed since the caller's `seen` generation (by this fetch or by
    /// one the caller waited for): worth verifying again.
    async fn refresh(&self, v: &jwt::Verifier, seen: u64, now_ms: i64) -> bool {
        let _flight = self.flight.lock().await;
        if v.generation() != seen {
            return true;
        }
        {
            let mut last = self.last_ms.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now_ms.saturating_sub(t) < self.min_interval_ms) {
                return false;
            }
            *last = Some(now_ms);
        }
        match fetch_jwks(&self.url).await {
            Ok(json) => match v.replace_keys(&json) {
                Ok(()) => {
                    tracing::info!(keys = v.key_count(), "JWKS refetched for a token with an unknown kid");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refetched for an unknown kid refused; keeping the old keys");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed; keeping the old keys");
                false
            }
        }
    }
}

/// Builds the JWT verifier from the settings: the JWKS file is read now; a JWKS URL is
/// fetched now (startup fails if it cannot be), refreshed every `refresh` afterwards and
/// refetched when a token names an unknown `kid` ([`ProtocolState::verify`]).
pub async fn build(settings: &Settings, refresh: Duration) -> anyhow::Result<ProtocolState> {
    use anyhow::Context as _;
    let cfg = jwt::JwtConfig {
        jwks_file: (!settings.jwks_file.is_empty()).then(|| settings.jwks_file.clone().into()),
        jwks_url: (!settings.jwks_url.is_empty()).then(|| settings.jwks_url.clone()),
        issuer: (!settings.jwt_issuer.is_empty()).then(|| settings.jwt_issuer.clone()),
        audience: (!settings.jwt_audience.is_empty()).then(|| settings.jwt_audience.clone()),
        client_id: (!settings.switch_jwt_client_id.is_empty()).then(|| settings.switch_jwt_client_id.clone()),
        leeway_s: settings.jwt_leeway_s,
        disabled: settings.jwt_verification == "off",
    };
    if !cfg.disabled && (cfg.issuer.is_none() || cfg.client_id.is_none()) {
        tracing::warn!(
            "SCANGW_JWT_ISSUER or SCANGW_SWITCH_JWT_CLIENT_ID is not set: a token the switch's identity \
             provider issued to any participant (not only the switch) is accepted on the share routes"
        );
    }
    let verifier = if cfg.disabled {
        tracing::warn!("JWT verification of the national switch's calls is OFF (SCANGW_JWT_VERIFICATION=off)");
        jwt::Verifier::load(&cfg).context("SCANGW_JWT_VERIFICATION")?
    } else if let Some(url) = cfg.jwks_url.clone() {
        let json = fetch_jwks(&url).await.context("SCANGW_JWKS_URL: cannot fetch the JWKS")?;
        let v = Arc::new(jwt::Verifier::from_jwks_json(&json, &cfg).context("SCANGW_JWKS_URL")?);
        spawn_jwks_refresh(v.clone(), url.clone(), refresh);
        let min_interval_ms =
            i64::try_from(settings.jwks_unknown_kid_refetch_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let refetch = Refetch { url, min_interval_ms, last_ms: Default::default(), flight: Default::default() };
        return Ok(ProtocolState { verifier: v, refetch: Some(refetch) });
    } else {
        jwt::Verifier::load(&cfg).context("SCANGW_JWKS_FILE")?
    };
    Ok(ProtocolState { verifier: Arc::new(verifier), refetch: None })
}

async fn fetch_jwks(url: &str) -> anyhow::Result<String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut res = client.get(url).send().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(res.status().is_success(), "status {}", res.status());
    let body = res.body().limit(1024 * 1024).await?;
    Ok(String::from_utf8(body.to_vec())?)
}

/// Keeps the keys current when the switch rotates them; a failed fetch keeps the old keys.
fn spawn_jwks_refresh(v: Arc<jwt::Verifier>, url: String, every: Duration) {
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match fetch_jwks(&url).await {
                Ok(json) => {
                    if let Err(e) = v.replace_keys(&json) {
                        tracing::warn!(error = %e, "refreshed JWKS refused; keeping the old keys");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the old keys"),
            }
            if Arc::strong_count(&v) == 1 {
                return;
            }
        }
    });
}
