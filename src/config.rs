//! Settings: an optional TOML file (named by `SCANGW_CONFIG`) overridden key by key by
//! `SCANGW_*` environment variables. Every error names the offending key.
use std::collections::HashMap;

use serde::Deserialize;

/// Exit code for a bad or missing setting (EX_CONFIG-style, as sysexits' EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("setting {key} is missing: {hint}")]
    Missing { key: &'static str, hint: &'static str },
    #[error("setting {key} is invalid: {reason}")]
    Invalid { key: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Everything the gateway can be told. Field names match the TOML keys; the env var is
/// `SCANGW_` + the upper-cased field name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub listen: String,
    /// One Redis URL, or several comma-separated seed nodes of a Redis Cluster.
    pub redis_url: String,
    /// Talk Redis Cluster even when `redis_url` names one node.
    pub redis_cluster: bool,
    /// After each group-commit batch, wait for this many replicas to acknowledge (WAIT)
    /// before answering; 0 = off.
    pub redis_wait_replicas: u32,
    pub admin_token: String,
    pub platform_token: String,
    /// Bearer for the monitoring role (leaderboard API); empty = only admin reads them.
    pub monitor_token: String,
    /// HMAC key for patient digests used in repeat detection (raw ids never reach Redis keys).
    pub patient_key_secret: String,
    pub log: String,
    pub shutdown_grace_s: u64,
    pub idle_timeout_s: u64,
    /// Soft cap on facility actors per node; 0 = none. Above it, actors idle for
    /// `pressure_idle_s` are passivated too, so memory follows the busy facilities.
    pub max_active_facilities: usize,
    pub pressure_idle_s: u64,
    /// Seconds between releases of freed heap to the kernel (glibc `malloc_trim`); 0 = never.
    pub heap_trim_s: u64,
    pub mailbox_capacity: usize,
    pub max_in_flight: usize,
    pub max_priority_streak: u32,
    pub default_timezone: String,
    pub default_token_validity_s: u64,
    pub redis_timeout_ms: u64,
    pub batch_max: usize,
    /// How long a shallow group-commit batch waits for more writes (µs; 0: never).
    pub write_linger_us: u64,
    pub max_body_bytes: usize,
    /// Body limit of the protocol's share routes only: a share may carry a `kycPhoto`
    /// (base64 image), which is dropped before the share is stored.
    pub protocol_max_body_bytes: usize,
    pub max_import_bytes: usize,
    /// Service time assumed per token before a counter has completed any (estimated wait).
    pub default_service_s: u64,
    pub workers: usize,
    /// Requests per second for the whole process (load shedding); 0 = off.
    pub limit_global_per_s: u32,
    /// Requests per second per credential (or per client IP without one); 0 = off.
    pub limit_client_per_s: u32,
    /// Requests per minute per facility; 0 = off.
    pub limit_facility_per_min: u32,
    /// Scans per minute per patient (ABHA address or number); 0 = off.
    pub limit_patient_per_min: u32,
    /// Requests per minute per client address to the public pages (display board, live
    /// leaderboard) and their event streams; 0 = off.
    pub limit_page_per_min: u32,
    /// Comma-separated proxy addresses or CIDR blocks whose `X-Forwarded-For` is believed.
    pub trusted_proxies: String,
    /// How often idle keys are swept out of the keyed limiters.
    pub limits_sweep_s: u64,
    /// How long a finished day's tokens (and patient profiles) stay after local midnight.
    pub day_retention_s: u64,
    /// Days a daily leaderboard stays in Redis (all-time boards stay).
    pub leaderboard_retention_days: u64,
    /// How often each node moves facilities' token counts into the leaderboards.
    pub leaderboard_apply_ms: u64,
    /// How often the live leaderboard feed (page, SSE, Prometheus gauges) re-reads Redis.
    pub leaderboard_refresh_ms: u64,
    /// Rows in the live feed and in the top-N Prometheus gauges.
    pub leaderboard_top_n: usize,
    /// How often a facility display board re-reads its queue.
    pub board_refresh_ms: u64,
    /// Open server-sent-event streams (pages) allowed at once.
    pub max_sse_clients: usize,
    /// The national switch (HIE-CM) the on-share callbacks go to; empty = protocol off.
    pub hiecm_base_url: String,
    /// `X-CM-ID` sent with every callback (e.g. `sbx`, `abdm`).
    pub hiecm_cm_id: String,
    /// Client credentials for the HIE-CM session endpoint (bearer for callbacks).
    pub hiecm_client_id: String,
    pub hiecm_client_secret: String,
    /// Path of the session endpoint under `hiecm_base_url`.
    pub hiecm_session_path: String,
    /// Full URL of the v3 on-share callback; empty = `{hiecm_base_url}/api/hiecm/patient-share/v3/on-share`.
    pub hiecm_v3_on_share_url: String,
    /// Full URL of the v1.0 on-share callback; empty = `{hiecm_base_url}/gateway/v1.0/patients/profile/on-share`
    /// (see [`crate::protocol::hiecm::Version::default_on_share_url`]).
    pub hiecm_v1_on_share_url: String,
    /// Full URL of the running-token on-status callback; empty =
    /// `{hiecm_base_url}/api/hiecm/patient-share/v3/running-token/on-status` (NHA's Running
    /// Token Status document).
    pub hiecm_v3_running_token_on_status_url: String,
    /// JWKS to verify the switch's bearer JWTs: a file, or a URL refreshed periodically.
    pub jwks_file: String,
    pub jwks_url: String,
    /// Expected `iss` of the switch's JWTs (empty = not checked).
    pub jwt_issuer: String,
    /// Required entry of `aud` in the switch's JWTs (empty = not checked).
    pub jwt_audience: String,
    /// The switch's own OAuth client: its JWTs must name it in `clientId` / `client_id` /
    /// `azp` (empty = not checked, and any participant's token of the issuer passes).
    pub switch_jwt_client_id: String,
    /// A token with a `kid` not in the keys refetches the JWKS URL, at most once per this
    /// many seconds (one fetch however many such requests arrive at once).
    pub jwks_unknown_kid_refetch_s: u64,
    /// Allowed clock skew for `exp` / `nbf`.
    pub jwt_leeway_s: u64,
    /// A share redelivered with its first delivery's bearer, expired by up to this many
    /// seconds, is accepted when its request id was accepted before (0 = never).
    pub jwt_redelivery_grace_s: u64,
    /// `on` (default) or `off`: turning verification off must be explicit and is logged.
    pub jwt_verification: String,
    /// How long a callback is retried after the share arrived before it is given up.
    pub onshare_deadline_s: u64,
    /// First retry delay; doubles per attempt up to `onshare_backoff_max_ms`, with jitter.
    pub onshare_backoff_ms: u64,
    pub onshare_backoff_max_ms: u64,
    /// An outbox entry idle this long under a consumer that stopped is taken over.
    pub onshare_claim_idle_ms: u64,
    /// Callbacks in flight per gateway process.
    pub onshare_concurrency: usize,
    /// Most shares the outbox holds (all nodes); beyond it a share is refused with 503
    /// `OUTBOX_FULL` rather than stored, so a long switch outage cannot fill Redis.
    pub onshare_outbox_max: u64,
    /// The base URL other nodes reach this one at (`http://10.0.3.7:8080`), or `auto` for
    /// `http://<listen host>:<bound port>`; empty = no ownership leases (a node takes over
    /// any facility it is asked for, as a single node does).
    pub advertise_url: String,
    /// How long a node's ownership lease lives without a heartbeat (renewed every third).
    pub node_lease_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            redis_wait_replicas: 0,
            admin_token: String::new(),
            platform_token: String::new(),
            monitor_token: String::new(),
            patient_key_secret: String::new(),
            log: "info".into(),
            shutdown_grace_s: 20,
            idle_timeout_s: 600,
            max_active_facilities: 50_000,
            pressure_idle_s: 30,
            heap_trim_s: 10,
            mailbox_capacity: 1024,
            max_in_flight: 20_000,
            max_priority_streak: 3,
            default_timezone: "Asia/Kolkata".into(),
            default_token_validity_s: 1800,
            redis_timeout_ms: 2000,
            batch_max: 512,
            write_linger_us: 1000,
            max_body_bytes: 16 * 1024,
            protocol_max_body_bytes: 1024 * 1024,
            max_import_bytes: 256 * 1024 * 1024,
            default_service_s: 180,
            workers: 0,
            limit_global_per_s: 20_000,
            limit_client_per_s: 10_000,
            limit_facility_per_min: 1_200,
            limit_patient_per_min: 5,
            limit_page_per_min: 120,
            trusted_proxies: String::new(),
            limits_sweep_s: 60,
            day_retention_s: 0,
            leaderboard_retention_days: 90,
            leaderboard_apply_ms: 1000,
            leaderboard_refresh_ms: 2000,
            leaderboard_top_n: 25,
            board_refresh_ms: 1000,
            max_sse_clients: 1000,
            hiecm_base_url: String::new(),
            hiecm_cm_id: "sbx".into(),
            hiecm_client_id: String::new(),
            hiecm_client_secret: String::new(),
            hiecm_session_path: "/api/hiecm/gateway/v3/sessions".into(),
            hiecm_v3_on_share_url: String::new(),
            hiecm_v1_on_share_url: String::new(),
            hiecm_v3_running_token_on_status_url: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            switch_jwt_client_id: String::new(),
            jwks_unknown_kid_refetch_s: 5,
            jwt_leeway_s: 60,
            jwt_redelivery_grace_s: 1800,
            jwt_verification: "on".into(),
            onshare_deadline_s: 1800,
            onshare_backoff_ms: 500,
            onshare_backoff_max_ms: 30_000,
            onshare_claim_idle_ms: 60_000,
            onshare_concurrency: 256,
            onshare_outbox_max: 100_000,
            advertise_url: String::new(),
            node_lease_ms: 3000,
        }
    }
}

const MIN_SECRET_LEN: usize = 16;

impl Settings {
    /// Settings for tests: port 0, fixed credentials, the given Redis.
    pub fn for_tests(redis_url: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            redis_url: redis_url.into(),
            admin_token: "test-admin-token-0123456789".into(),
            platform_token: "test-platform-token-0123456789".into(),
            monitor_token: "test-monitor-token-0123456789".into(),
            leaderboard_refresh_ms: 200,
            leaderboard_apply_ms: 50,
            board_refresh_ms: 200,
            patient_key_secret: "test-patient-secret-0123456789".into(),
            shutdown_grace_s: 5,
            workers: 2,
            // Tests re-scan the same patients and facilities far faster than any counter;
            // the limits have their own tests, which switch them on.
            limit_facility_per_min: 0,
            limit_patient_per_min: 0,
            limit_page_per_min: 0,
            ..Self::default()
        }
    }

    /// Reads `SCANGW_CONFIG` (if set) and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("SCANGW_")).collect();
        let file = match env.get("SCANGW_CONFIG") {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?,
            ),
            None => None,
        };
        Self::from_sources(file.as_deref(), &env)
    }

    /// Layered load from explicit sources, so tests never touch the process environment.
    pub fn from_sources(file: Option<&str>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut s: Settings = match file {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::File {
                path: env.get("SCANGW_CONFIG").cloned().unwrap_or_default(),
                reason: e.message().to_string(),
            })?,
            None => Settings::default(),
        };
        let get = |k: &str| env.get(&format!("SCANGW_{}", k.to_ascii_uppercase())).cloned();
        macro_rules! string {
            ($($f:ident),*) => {$( if let Some(v) = get(stringify!($f)) { s.$f = v; } )*};
        }
        macro_rules! number {
            ($($f:ident),*) => {$( if let Some(v) = get(stringify!($f)) {
                s.$f = v.trim().parse().map_err(|_| ConfigError::Invalid {
                    key: format!("SCANGW_{}", stringify!($f).to_ascii_uppercase()),
                    reason: "expected a non-negative integer".into(),
                })?;
            } )*};
        }
        string!(
            listen,
            redis_url,
            admin_token,
            platform_token,
            monitor_token,
            patient_key_secret,
            log,
            default_timezone,
            trusted_proxies,
            hiecm_base_url,
            hiecm_cm_id,
            hiecm_client_id,
            hiecm_client_secret,
            hiecm_session_path,
            hiecm_v3_on_share_url,
            hiecm_v1_on_share_url,
            hiecm_v3_running_token_on_status_url,
            jwks_file,
            jwks_url,
            jwt_issuer,
            jwt_audience,
            switch_jwt_client_id,
            jwt_verification,
            advertise_url
        );
        number!(
            shutdown_grace_s,
            idle_timeout_s,
            max_active_facilities,
            pressure_idle_s,
            heap_trim_s,
            mailbox_capacity,
            max_in_flight,
            max_priority_streak,
            default_token_validity_s,
            redis_timeout_ms,
            batch_max,
            write_linger_us,
            max_body_bytes,
            protocol_max_body_bytes,
            max_import_bytes,
            default_service_s,
            workers,
            limit_global_per_s,
            limit_client_per_s,
            limit_facility_per_min,
            limit_patient_per_min,
            limit_page_per_min,
            limits_sweep_s,
            day_retention_s,
            leaderboard_retention_days,
            leaderboard_apply_ms,
            leaderboard_refresh_ms,
            redis_wait_replicas,
            leaderboard_top_n,
            board_refresh_ms,
            max_sse_clients,
            jwt_leeway_s,
            jwt_redelivery_grace_s,
            onshare_deadline_s,
            onshare_backoff_ms,
            onshare_backoff_max_ms,
            onshare_claim_idle_ms,
            onshare_concurrency,
            onshare_outbox_max,
            jwks_unknown_kid_refetch_s,
            node_lease_ms
        );
        if let Some(v) = get("redis_cluster") {
            s.redis_cluster = match v.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" | "" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "SCANGW_REDIS_CLUSTER".into(),
                        reason: "expected true or false".into(),
                    })
                }
            };
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let secret = |key: &'static str, v: &str| -> Result<(), ConfigError> {
            if v.is_empty() {
                return Err(ConfigError::Missing {
                    key,
                    hint: "set it in the environment or the config file (at least 16 characters)",
                });
            }
            if v.len() < MIN_SECRET_LEN || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: "must be at least 16 characters with no whitespace".into(),
                });
            }
            Ok(())
        };
        secret("SCANGW_ADMIN_TOKEN", &self.admin_token)?;
        secret("SCANGW_PLATFORM_TOKEN", &self.platform_token)?;
        secret("SCANGW_PATIENT_KEY_SECRET", &self.patient_key_secret)?;
        if self.admin_token == self.platform_token {
            return Err(ConfigError::Invalid {
                key: "SCANGW_PLATFORM_TOKEN".into(),
                reason: "must differ from SCANGW_ADMIN_TOKEN".into(),
            });
        }
        if !self.monitor_token.is_empty() {
            secret("SCANGW_MONITOR_TOKEN", &self.monitor_token)?;
            if self.monitor_token == self.admin_token || self.monitor_token == self.platform_token {
                return Err(ConfigError::Invalid {
                    key: "SCANGW_MONITOR_TOKEN".into(),
                    reason: "must differ from the admin and platform tokens".into(),
                });
            }
        }
        if !(1..=100).contains(&self.leaderboard_top_n) {
            return Err(ConfigError::Invalid {
                key: "SCANGW_LEADERBOARD_TOP_N".into(),
                reason: "must be between 1 and 100 (it bounds Prometheus series)".into(),
            });
        }
        if !self.hiecm_base_url.is_empty() {
            self.validate_protocol()?;
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "SCANGW_LISTEN".into(),
                reason: "expected host:port, e.g. 127.0.0.1:8080".into(),
            });
        }
        let target = self.redis_target();
        if target.as_ref().is_none_or(|t| t.urls.iter().any(|u| redis::parse_redis_url(u).is_none())) {
            return Err(ConfigError::Invalid {
                key: "SCANGW_REDIS_URL".into(),
                reason: "expected redis://host:port[/db], or several comma-separated for a cluster".into(),
            });
        }
        if jiff::tz::TimeZone::get(&self.default_timezone).is_err() {
            return Err(ConfigError::Invalid {
                key: "SCANGW_DEFAULT_TIMEZONE".into(),
                reason: "unknown IANA time zone".into(),
            });
        }
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid { key: key.into(), reason: "must be greater than 0".into() })
            } else {
                Ok(())
            }
        };
        positive("SCANGW_DEFAULT_TOKEN_VALIDITY_S", self.default_token_validity_s)?;
        positive("SCANGW_MAX_PRIORITY_STREAK", self.max_priority_streak.into())?;
        positive("SCANGW_MAILBOX_CAPACITY", self.mailbox_capacity as u64)?;
        positive("SCANGW_MAX_IN_FLIGHT", self.max_in_flight as u64)?;
        positive("SCANGW_REDIS_TIMEOUT_MS", self.redis_timeout_ms)?;
        positive("SCANGW_BATCH_MAX", self.batch_max as u64)?;
        positive("SCANGW_IDLE_TIMEOUT_S", self.idle_timeout_s)?;
        positive("SCANGW_PRESSURE_IDLE_S", self.pressure_idle_s)?;
        positive("SCANGW_MAX_BODY_BYTES", self.max_body_bytes as u64)?;
        positive("SCANGW_PROTOCOL_MAX_BODY_BYTES", self.protocol_max_body_bytes as u64)?;
        positive("SCANGW_LIMITS_SWEEP_S", self.limits_sweep_s)?;
        positive("SCANGW_LEADERBOARD_RETENTION_DAYS", self.leaderboard_retention_days)?;
        positive("SCANGW_LEADERBOARD_REFRESH_MS", self.leaderboard_refresh_ms)?;
        positive("SCANGW_LEADERBOARD_APPLY_MS", self.leaderboard_apply_ms)?;
        positive("SCANGW_BOARD_REFRESH_MS", self.board_refresh_ms)?;
        if self.node_lease_ms < 300 {
            return Err(ConfigError::Invalid {
                key: "SCANGW_NODE_LEASE_MS".into(),
                reason: "must be at least 300 (the heartbeat renews it every third)".into(),
            });
        }
        let url = self.advertise_url.trim_end_matches('/');
        if !url.is_empty()
            && url != "auto"
            && (!url.starts_with("http://") || url.len() <= "http://".len() || url.contains(char::is_whitespace))
        {
            return Err(ConfigError::Invalid {
                key: "SCANGW_ADVERTISE_URL".into(),
                reason: "expected http://host:port (what the other nodes reach this one at) or auto".into(),
            });
        }
        if url == "auto" && self.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified()) {
            return Err(ConfigError::Invalid {
                key: "SCANGW_ADVERTISE_URL".into(),
                reason: "auto needs SCANGW_LISTEN on a real address, not 0.0.0.0 or [::]; name the URL".into(),
            });
        }
        for p in self.trusted_proxies.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if crate::ingress::limits::ProxyNet::parse(p).is_none() {
                return Err(ConfigError::Invalid {
                    key: "SCANGW_TRUSTED_PROXIES".into(),
                    reason: "expected comma-separated IP addresses or CIDR blocks (10.0.0.0/8)".into(),
                });
            }
        }
        Ok(())
    }

    /// The base URL this node advertises to the others once it listens on `port`; `None`
    /// when leases are off. `auto` uses the listen host, which must then be a real address.
    pub fn advertised_url(&self, port: u16) -> Option<String> {
        match self.advertise_url.trim_end_matches('/') {
            "" => None,
            "auto" => {
                let ip = self.listen.parse::<std::net::SocketAddr>().ok()?.ip();
                Some(match ip {
                    std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
                    v4 => format!("http://{v4}:{port}"),
                })
            }
            url => Some(url.to_string()),
        }
    }

    /// The protocol settings, checked only when the protocol is on (`hiecm_base_url` set).
    fn validate_protocol(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError::Invalid { key: key.into(), reason: reason.into() };
        let url = self.hiecm_base_url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
            return Err(bad("SCANGW_HIECM_BASE_URL", "expected an http(s):// URL"));
        }
        for (key, v) in [
            ("SCANGW_HIECM_V3_ON_SHARE_URL", &self.hiecm_v3_on_share_url),
            ("SCANGW_HIECM_V1_ON_SHARE_URL", &self.hiecm_v1_on_share_url),
            ("SCANGW_HIECM_V3_RUNNING_TOKEN_ON_STATUS_URL", &self.hiecm_v3_running_token_on_status_url),
        ] {
            if !v.is_empty()
                && (!(v.starts_with("https://") || v.starts_with("http://")) || v.contains(char::is_whitespace))
            {
                return Err(bad(key, "expected an http(s):// URL (or empty for the default)"));
            }
        }
        if self.hiecm_client_id.is_empty() || self.hiecm_client_secret.is_empty() {
            return Err(ConfigError::Missing {
                key: "SCANGW_HIECM_CLIENT_ID",
                hint: "the HIE-CM client id and secret (SCANGW_HIECM_CLIENT_SECRET) are needed for callbacks",
            });
        }
        match self.jwt_verification.as_str() {
            "on" => {
                if self.jwks_file.is_empty() == self.jwks_url.is_empty() {
                    return Err(bad("SCANGW_JWKS_FILE", "set exactly one of SCANGW_JWKS_FILE and SCANGW_JWKS_URL"));
                }
            }
            "off" => {}
            _ => return Err(bad("SCANGW_JWT_VERIFICATION", "expected on or off")),
        }
        if self.onshare_backoff_ms == 0 || self.onshare_backoff_max_ms < self.onshare_backoff_ms {
            return Err(bad("SCANGW_ONSHARE_BACKOFF_MS", "must be > 0 and at most SCANGW_ONSHARE_BACKOFF_MAX_MS"));
        }
        if self.onshare_claim_idle_ms < 1000 || self.onshare_concurrency == 0 {
            return Err(bad("SCANGW_ONSHARE_CLAIM_IDLE_MS", "must be at least 1000 (and concurrency above 0)"));
        }
        if self.onshare_outbox_max == 0 {
            return Err(bad("SCANGW_ONSHARE_OUTBOX_MAX", "must be greater than 0"));
        }
        if self.jwks_unknown_kid_refetch_s == 0 {
            return Err(bad("SCANGW_JWKS_UNKNOWN_KID_REFETCH_S", "must be greater than 0 (it bounds JWKS fetches)"));
        }
        Ok(())
    }

    /// The Redis deployment `redis_url` and `redis_cluster` name (`None` if malformed).
    pub fn redis_target(&self) -> Option<crate::persistence::conn::Target> {
        crate::persistence::conn::Target::parse(&self.redis_url, self.redis_cluster)
    }

    /// The full URL running-token on-status callbacks are posted to: its setting, or NHA's
    /// documented path on `hiecm_base_url`.
    pub fn running_token_on_status_url(&self) -> String {
        if self.hiecm_v3_running_token_on_status_url.is_empty() {
            format!("{}/api/hiecm/patient-share/v3/running-token/on-status", self.hiecm_base_url.trim_end_matches('/'))
        } else {
            self.hiecm_v3_running_token_on_status_url.clone()
        }
    }

    /// The full URL the on-shares of `version` are posted to: its setting, or the default
    /// on `hiecm_base_url` that NHA's documents give.
    pub fn on_share_url(&self, version: crate::protocol::hiecm::Version) -> String {
        let set = match version {
            crate::protocol::hiecm::Version::V3 => &self.hiecm_v3_on_share_url,
            crate::protocol::hiecm::Version::V1 => &self.hiecm_v1_on_share_url,
        };
        if set.is_empty() {
            version.default_on_share_url(&self.hiecm_base_url)
        } else {
            set.clone()
        }
    }

    pub fn protocol_enabled(&self) -> bool {
        !self.hiecm_base_url.is_empty()
    }

    /// HTTP worker and facility arbiter count: the configured value or the core count.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SCANGW_ADMIN_TOKEN", "admin-token-0123456789"),
            ("SCANGW_PLATFORM_TOKEN", "platform-token-0123456789"),
            ("SCANGW_PATIENT_KEY_SECRET", "patient-secret-0123456789"),
        ]
    }

    #[test]
    fn env_overrides_file_and_defaults_apply() {
        let mut e = good();
        e.push(("SCANGW_LISTEN", "127.0.0.1:9999"));
        let s = Settings::from_sources(Some("listen = \"127.0.0.1:1\"\nidle_timeout_s = 5\n"), &env(&e)).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9999");
        assert_eq!(s.idle_timeout_s, 5);
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(s.default_token_validity_s, 1800);
    }

    #[test]
    fn the_advertised_url_is_named_derived_from_the_bound_port_or_off() {
        let load = |pairs: &[(&'static str, &'static str)]| {
            let mut e = good();
            e.extend_from_slice(pairs);
            Settings::from_sources(None, &env(&e))
        };
        let off = load(&[]).unwrap();
        assert_eq!((off.advertised_url(8080), off.node_lease_ms), (None, 3000), "leases are off by default");
        let auto = load(&[("SCANGW_LISTEN", "10.0.3.7:0"), ("SCANGW_ADVERTISE_URL", "auto")]).unwrap();
        assert_eq!(auto.advertised_url(41_234).as_deref(), Some("http://10.0.3.7:41234"));
        let named = load(&[("SCANGW_ADVERTISE_URL", "http://gw-2.internal:8080/"), ("SCANGW_NODE_LEASE_MS", "900")]);
        let named = named.unwrap();
        assert_eq!((named.advertised_url(1).as_deref(), named.node_lease_ms), (Some("http://gw-2.internal:8080"), 900));
        for (pairs, key) in [
            (&[("SCANGW_ADVERTISE_URL", "gw-2:8080")][..], "SCANGW_ADVERTISE_URL"),
            (&[("SCANGW_ADVERTISE_URL", "https://gw-2:8080")][..], "SCANGW_ADVERTISE_URL"),
            (&[("SCANGW_LISTEN", "0.0.0.0:8080"), ("SCANGW_ADVERTISE_URL", "auto")][..], "SCANGW_ADVERTISE_URL"),
            (&[("SCANGW_NODE_LEASE_MS", "100")][..], "SCANGW_NODE_LEASE_MS"),
        ] {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn missing_token_names_the_key() {
        let e: Vec<_> = good().into_iter().filter(|(k, _)| *k != "SCANGW_ADMIN_TOKEN").collect();
        let err = Settings::from_sources(None, &env(&e)).unwrap_err().to_string();
        assert!(err.contains("SCANGW_ADMIN_TOKEN"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, value) in [
            ("SCANGW_LISTEN", "nonsense"),
            ("SCANGW_REDIS_URL", "http://x"),
            ("SCANGW_REDIS_URL", "redis://a:7000,,redis://b:7001"),
            ("SCANGW_REDIS_URL", "redis://a:7000,http://b:7001"),
            ("SCANGW_REDIS_CLUSTER", "maybe"),
            ("SCANGW_LEADERBOARD_APPLY_MS", "0"),
            ("SCANGW_REDIS_WAIT_REPLICAS", "-1"),
            ("SCANGW_IDLE_TIMEOUT_S", "ten"),
            ("SCANGW_DEFAULT_TIMEZONE", "Mars/Olympus"),
            ("SCANGW_PLATFORM_TOKEN", "short"),
            ("SCANGW_MAX_PRIORITY_STREAK", "0"),
            ("SCANGW_MONITOR_TOKEN", "admin-token-0123456789"),
            ("SCANGW_LEADERBOARD_TOP_N", "1000"),
            ("SCANGW_HIECM_BASE_URL", "ftp://switch"),
        ] {
            let mut e = good();
            e.retain(|(k, _)| *k != key);
            e.push((key, value));
            let err = Settings::from_sources(None, &env(&e)).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_url_list_or_the_cluster_flag_selects_redis_cluster() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut e = good();
            e.extend_from_slice(pairs);
            Settings::from_sources(None, &env(&e)).unwrap().redis_target().unwrap()
        };
        assert!(!with(&[]).cluster);
        let t = with(&[("SCANGW_REDIS_URL", "redis://127.0.0.1:7000, redis://127.0.0.1:7001")]);
        assert!(t.cluster);
        assert_eq!(t.urls.len(), 2);
        assert!(with(&[("SCANGW_REDIS_CLUSTER", "true")]).cluster);
    }

    #[test]
    fn the_outbox_bound_and_the_jwks_refetch_interval_must_be_positive() {
        for key in ["SCANGW_ONSHARE_OUTBOX_MAX", "SCANGW_JWKS_UNKNOWN_KID_REFETCH_S"] {
            let mut e = good();
            e.extend_from_slice(&[
                ("SCANGW_HIECM_BASE_URL", "http://switch.test"),
                ("SCANGW_HIECM_CLIENT_ID", "gateway-client"),
                ("SCANGW_HIECM_CLIENT_SECRET", "gateway-secret-0123456789"),
                ("SCANGW_JWKS_FILE", "/etc/scan-gateway/jwks.json"),
            ]);
            assert!(Settings::from_sources(None, &env(&e)).is_ok());
            e.push((key, "0"));
            let err = Settings::from_sources(None, &env(&e)).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let err = Settings::from_sources(Some("lisen = \"x\""), &env(&good())).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
