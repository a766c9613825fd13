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
}

/// Builds the JWT verifier from the settings: the JWKS file is read now; a JWKS URL is
/// fetched now (startup fails if it cannot be) and refreshed every `refresh` afterwards.
pub async fn build(settings: &Settings, refresh: Duration) -> anyhow::Result<ProtocolState> {
    use anyhow::Context as _;
    let cfg = jwt::JwtConfig {
        jwks_file: (!settings.jwks_file.is_empty()).then(|| settings.jwks_file.clone().into()),
        jwks_url: (!settings.jwks_url.is_empty()).then(|| settings.jwks_url.clone()),
        issuer: (!settings.jwt_issuer.is_empty()).then(|| settings.jwt_issuer.clone()),
        audience: None,
        leeway_s: settings.jwt_leeway_s,
        disabled: settings.jwt_verification == "off",
    };
    let verifier = if cfg.disabled {
        tracing::warn!("JWT verification of the national switch's calls is OFF (SCANGW_JWT_VERIFICATION=off)");
        jwt::Verifier::load(&cfg).context("SCANGW_JWT_VERIFICATION")?
    } else if let Some(url) = cfg.jwks_url.clone() {
        let json = fetch_jwks(&url).await.context("SCANGW_JWKS_URL: cannot fetch the JWKS")?;
        let v = Arc::new(jwt::Verifier::from_jwks_json(&json, &cfg).context("SCANGW_JWKS_URL")?);
        spawn_jwks_refresh(v.clone(), url, refresh);
        return Ok(ProtocolState { verifier: v });
    } else {
        jwt::Verifier::load(&cfg).context("SCANGW_JWKS_FILE")?
    };
    Ok(ProtocolState { verifier: Arc::new(verifier) })
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
