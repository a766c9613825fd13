//! The national Scan & Share protocol (HIE-CM): v3 profile-share and v1.0 share bodies with
//! their field drift ([`shapes`]), bearer JWT verification against a JWKS ([`jwt`]), and the
//! reliable on-share callback path (Redis outbox, retries) built on the same facility actors.
pub mod hiecm;
pub mod jwt;
pub mod running_token;
pub mod shapes;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;

/// What the inbound handlers need when the protocol is on.
pub struct ProtocolState {
    pub verifier: Arc<jwt::Verifier>,
    /// The switch's session bearer, one per process: the on-share worker and the JWKS fetch
    /// share it.
    pub session: Arc<hiecm::Session>,
    /// With a JWKS URL: fetches the keys again when a token names a `kid` not loaded yet, or
    /// when no key set has arrived yet.
    refetch: Option<Arc<Jwks>>,
}

impl ProtocolState {
    /// Verifies the switch's `Authorization` value at `now`. A token whose `kid` is unknown
    /// (the switch rotated its keys since the last fetch), or any token while no key set has
    /// arrived yet (the certs endpoint was down at startup), refetches the JWKS URL and is
    /// verified again, so neither waits for the periodic refresh.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        now: jiff::Timestamp,
    ) -> Result<jwt::Claims, jwt::JwtError> {
        // Read before verifying: a replacement that lands in between is then noticed.
        let seen = self.verifier.generation();
        let first = self.verifier.verify(authorization, now.as_second());
        match &first {
            Err(jwt::JwtError::UnknownKey) | Err(jwt::JwtError::Jwks(_)) => {}
            _ => return first,
        }
        match &self.refetch {
            Some(r) if r.refresh_for_token(&self.verifier, seen, now).await => {
                self.verifier.verify(authorization, now.as_second())
            }
            _ => first,
        }
    }
}

/// The switch's key set behind `SCANGW_JWKS_URL`: fetched with the session bearer, in the
/// background from startup (retried until it lands, then refreshed every `refresh`), and on
/// demand for tokens with an unknown `kid`. Fetches go one at a time (requests that arrive
/// during a fetch wait for its result instead of starting their own); on-demand ones at most
/// once per `min_interval_ms` of the injected clock, so a flood of tokens with made-up
/// `kid`s costs the switch one fetch per interval, not one per request. A failed or refused
/// fetch keeps the last good key set.
struct Jwks {
    url: String,
    /// `Some` when the URL is on the switch's own origin (`SCANGW_HIECM_BASE_URL`): the
    /// session bearer is never sent to another host.
    session: Option<Arc<hiecm::Session>>,
    clock: Arc<dyn crate::clock::Clock>,
    min_interval_ms: i64,
    /// When the last fetch for an unknown `kid` started (injected-clock milliseconds).
    last_ms: std::sync::Mutex<Option<i64>>,
    /// Held for the whole fetch: the single flight.
    flight: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// True when the keys changed since the caller's `seen` generation (by this fetch or by
    /// one the caller waited for): worth verifying again.
    async fn refresh_for_token(&self, v: &jwt::Verifier, seen: u64, now: jiff::Timestamp) -> bool {
        let _flight = self.flight.lock().await;
        if v.generation() != seen {
            return true;
        }
        {
            let now_ms = now.as_millisecond();
            let mut last = self.last_ms.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now_ms.saturating_sub(t) < self.min_interval_ms) {
                return false;
            }
            *last = Some(now_ms);
        }
        self.fetch_into(v, "for a token with an unknown kid").await
    }

    /// One fetch under the single flight; true when it replaced the keys.
    async fn fetch_locked(&self, v: &jwt::Verifier, why: &str) -> bool {
        let _flight = self.flight.lock().await;
        self.fetch_into(v, why).await
    }

    async fn fetch_into(&self, v: &jwt::Verifier, why: &str) -> bool {
        match fetch_jwks(&self.url, self.session.as_deref(), self.clock.now()).await {
            Ok(json) => match v.replace_keys(&json) {
                Ok(()) => {
                    tracing::info!(keys = v.key_count(), "JWKS fetched {why}");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS fetched {why} refused; keeping the last good keys");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, keys = v.key_count(), "JWKS fetch {why} failed; keeping the last good keys");
                false
            }
        }
    }
}

/// True when `url` is on the same scheme, host and port as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    let origin = |u: &str| -> Option<String> {
        let (scheme, rest) = u.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        Some(format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
    };
    origin(url).is_some() && origin(url) == origin(base)
}

/// Builds the JWT verifier and the session from the settings. A JWKS file is read now
/// (startup fails if it cannot be). A JWKS URL never holds startup up: the verifier starts
/// with no keys (shares are answered 503 `JWKS_UNAVAILABLE` meanwhile, the native API is not
/// affected) and a background task fetches the keys, retrying until they arrive, then every
/// `refresh`; a token with an unknown `kid` refetches at once ([`ProtocolState::verify`]).
pub async fn build(
    settings: &Settings,
    clock: Arc<dyn crate::clock::Clock>,
    refresh: Duration,
) -> anyhow::Result<ProtocolState> {
    use anyhow::Context as _;
    let session = Arc::new(hiecm::Session::new(hiecm::HiecmConfig {
        base_url: settings.hiecm_base_url.clone(),
        cm_id: settings.hiecm_cm_id.clone(),
        client_id: settings.hiecm_client_id.clone(),
        client_secret: settings.hiecm_client_secret.clone(),
        session_path: settings.hiecm_session_path.clone(),
        v3_on_share_url: settings.on_share_url(hiecm::Version::V3),
        v1_on_share_url: settings.on_share_url(hiecm::Version::V1),
        v3_on_status_url: settings.running_token_on_status_url(),
        timeout: Duration::from_secs(10),
    }));
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
        // No keys yet: `load` with only a URL gives an empty verifier.
        let v = Arc::new(jwt::Verifier::load(&cfg).context("SCANGW_JWKS_URL")?);
        let min_interval_ms =
            i64::try_from(settings.jwks_unknown_kid_refetch_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let bearer = same_origin(&url, &settings.hiecm_base_url).then(|| session.clone());
        if bearer.is_none() {
            tracing::warn!(
                "SCANGW_JWKS_URL is not on SCANGW_HIECM_BASE_URL's host: it is fetched without the session bearer"
            );
        }
        let jwks = Arc::new(Jwks {
            url,
            session: bearer,
            clock,
            min_interval_ms,
            last_ms: Default::default(),
            flight: Default::default(),
        });
        spawn_jwks_refresh(v.clone(), jwks.clone(), refresh);
        return Ok(ProtocolState { verifier: v, session, refetch: Some(jwks) });
    } else {
        jwt::Verifier::load(&cfg).context("SCANGW_JWKS_FILE")?
    };
    Ok(ProtocolState { verifier: Arc::new(verifier), session, refetch: None })
}

/// GETs the JWKS, with the session bearer when given (the switch's certs endpoint answers 401
/// without it). A 401 renews the bearer once: the cached one may have been revoked.
async fn fetch_jwks(url: &str, session: Option<&hiecm::Session>, now: jiff::Timestamp) -> anyhow::Result<String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).disable_redirects().finish();
    for attempt in 0..2 {
        let mut req = client.get(url);
        if let Some(s) = session {
            let bearer = s.bearer(&client, now).await.map_err(|e| anyhow::anyhow!("session bearer: {e}"))?;
            req = req
                .insert_header(("Authorization", format!("Bearer {bearer}")))
                .insert_header(("REQUEST-ID", hiecm::new_request_id()))
                .insert_header(("TIMESTAMP", hiecm::timestamp(now)))
                .insert_header(("X-CM-ID", s.config().cm_id.as_str()));
        }
        let mut res = req.send().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if res.status() == awc::http::StatusCode::UNAUTHORIZED && attempt == 0 {
            if let Some(s) = session {
                s.forget().await;
                continue;
            }
        }
        anyhow::ensure!(res.status().is_success(), "status {}", res.status());
        let body = res.body().limit(1024 * 1024).await?;
        return Ok(String::from_utf8(body.to_vec())?);
    }
    anyhow::bail!("status 401 with a renewed session bearer")
}

/// Fetches the keys until the first set arrives (backoff from 1 s, capped at 60 s), then
/// every `every`; a failed fetch keeps the last good keys and retries on the short schedule.
/// Ends when the gateway dropped its verifier.
fn spawn_jwks_refresh(v: Arc<jwt::Verifier>, jwks: Arc<Jwks>, every: Duration) {
    actix_rt::spawn(async move {
        let mut retry = Duration::from_secs(1);
        loop {
            let wait = if jwks.fetch_locked(&v, "from SCANGW_JWKS_URL").await {
                retry = Duration::from_secs(1);
                every
            } else {
                let w = retry.min(every);
                retry = (retry * 2).min(Duration::from_secs(60));
                w
            };
            tokio::time::sleep(wait).await;
            if Arc::strong_count(&v) == 1 {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_goes_only_to_the_switch_origin() {
        let base = "https://switch.example";
        assert!(super::same_origin("https://switch.example/api/hiecm/gateway/v3/certs", base));
        assert!(super::same_origin("HTTPS://Switch.Example/certs", "https://switch.example/"));
        assert!(!super::same_origin("https://switch.example.evil.test/certs", base));
        assert!(!super::same_origin("http://switch.example/certs", base));
        assert!(!super::same_origin("https://switch.example:8443/certs", base));
        assert!(!super::same_origin("not a url", "not a url"));
    }
}
