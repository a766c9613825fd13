//! Verification of the national switch's bearer JWTs: RS256 only, keys from a JWKS (file, or a
//! body the caller fetched from the JWKS URL), issuer/audience checks, and exp/nbf/iat against
//! the injected clock with a configured leeway, and the switch's own client id (so another
//! participant's token of the same issuer is refused). Owns the JWKS parsing and key rotation.
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest `Authorization` value looked at; a real RS256 token is well under 2 KiB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest RSA modulus accepted from a JWKS.
const MIN_RSA_BITS: usize = 2048;

/// Where the keys come from and what the claims must say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtConfig {
    /// A JWKS document on disk, read by [`Verifier::load`].
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL; the caller fetches it and hands the body to [`Verifier::replace_keys`].
    pub jwks_url: Option<String>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` (a string or an array) must contain it.
    pub audience: Option<String>,
    /// When set, the token must name this client in `clientId`, `client_id` or `azp` (at least
    /// one of them, and every one present must equal it). See [`CLIENT_ID_CLAIMS`].
    pub client_id: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// Accept every request without looking at it (local development only).
    pub disabled: bool,
}

/// Why a bearer token was refused. Messages never carry the token or any claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token")]
    Missing,
    #[error("the bearer token is malformed")]
    Malformed,
    #[error("the token names no known signing key")]
    UnknownKey,
    #[error("the token signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has the wrong issuer")]
    WrongIssuer,
    #[error("the token has the wrong audience")]
    WrongAudience,
    #[error("the token was not issued to the switch's client")]
    WrongClient,
    #[error("the token's signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("signing keys unavailable: {0}")]
    Jwks(String),
}

impl JwtError {
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Missing => "TOKEN_MISSING",
            JwtError::Malformed => "TOKEN_MALFORMED",
            JwtError::UnknownKey => "TOKEN_UNKNOWN_KEY",
            JwtError::BadSignature => "TOKEN_BAD_SIGNATURE",
            JwtError::Expired => "TOKEN_EXPIRED",
            JwtError::NotYetValid => "TOKEN_NOT_YET_VALID",
            JwtError::WrongIssuer => "TOKEN_WRONG_ISSUER",
            JwtError::WrongAudience => "TOKEN_WRONG_AUDIENCE",
            JwtError::WrongClient => "TOKEN_WRONG_CLIENT",
            JwtError::AlgorithmNotAllowed => "TOKEN_ALGORITHM_NOT_ALLOWED",
            JwtError::Jwks(_) => "JWKS_UNAVAILABLE",
        }
    }
}

/// The claims of a verified token. Registered claims are typed; every other claim is in
/// `extra`. In disabled mode all fields are empty (`exp` 0).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Claims {
    pub sub: Option<String>,
    pub iss: Option<String>,
    /// `aud` as a list (a single string becomes one entry).
    pub aud: Vec<String>,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub extra: Map<String, Value>,
}

/// The claims that name the OAuth client a token was issued to. Why these: the switch's
/// identity provider is a Keycloak realm shared by every participant, and all of its access
/// tokens carry `aud: "account"`, so neither `iss` nor `aud` tells the switch's own callback
/// token from the session token of any HIP or HIU (this gateway's included). What differs is
/// the client: the reference gateway (ProjectEKA/gateway, `CentralRegistryTokenVerifier`)
/// requires a `clientId` claim and identifies every caller by it; BahmniIndiaDistro/hip-service
/// (`Startup.IsTokenValid`) accepts a switch call only with a `clientId` claim and the realm
/// role `gateway`; ohcnetwork/care_abdm (`ABDMAuthentication`) checks only `aud == "account"`,
/// the very hole this closes. Keycloak writes the client as `azp` in every access token,
/// `clientId` through the service-account mapper and `client_id` in newer releases.
pub const CLIENT_ID_CLAIMS: [&str; 3] = ["clientId", "client_id", "azp"];

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies `Authorization: Bearer <jwt>` values. Cheap to share (`Arc<Verifier>`); the key
/// set can be swapped while requests are being verified.
pub struct Verifier {
    keys: RwLock<Arc<Vec<Key>>>,
    /// Bumped by every key replacement: a caller that saw an unknown `kid` can tell whether
    /// the keys changed since (then it verifies again instead of fetching once more).
    generation: AtomicU64,
    /// The crate's checks: signature and RS256 only. Time, issuer and audience are checked by
    /// `check_claims` against the injected clock.
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    client_id: Option<String>,
    leeway_s: i64,
    disabled: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.key_count())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("client_id", &self.client_id)
            .field("leeway_s", &self.leeway_s)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl Verifier {
    fn empty(cfg: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Verifier {
            keys: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            client_id: cfg.client_id.clone(),
            leeway_s: i64::try_from(cfg.leeway_s).unwrap_or(i64::MAX),
            disabled: cfg.disabled,
        }
    }

    /// A verifier whose keys are the JWKS document `json`.
    pub fn from_jwks_json(json: &str, cfg: &JwtConfig) -> Result<Self, JwtError> {
        let v = Self::empty(cfg);
        v.replace_keys(json)?;
        Ok(v)
    }

    /// A verifier for `cfg`: in disabled mode, one with no keys; otherwise the keys of
    /// `jwks_file` when set. With only `jwks_url` set it starts with no keys (verify answers
    /// [`JwtError::Jwks`]) until the caller's fetch calls [`Verifier::replace_keys`].
    pub fn load(cfg: &JwtConfig) -> Result<Self, JwtError> {
        if cfg.disabled {
            return Ok(Self::empty(cfg));
        }
        match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(path), _) => {
                let json = std::fs::read_to_string(path)
                    .map_err(|e| JwtError::Jwks(format!("cannot read {}: {e}", path.display())))?;
                Self::from_jwks_json(&json, cfg)
            }
            (None, Some(_)) => Ok(Self::empty(cfg)),
            (None, None) => Err(JwtError::Jwks("neither a JWKS file nor a JWKS URL is configured".into())),
        }
    }

    /// Replaces the whole key set with the usable keys of the JWKS document `jwks_json`
    /// (RSA signing keys of at least 2048 bits; others are skipped). On error the current keys
    /// stay in place.
    pub fn replace_keys(&self, jwks_json: &str) -> Result<(), JwtError> {
        let keys = parse_jwks(jwks_json)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// How many times the key set was replaced; read it before [`Verifier::verify`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many keys are loaded.
    pub fn key_count(&self) -> usize {
        self.current_keys().len()
    }

    /// True when every request is accepted unchecked.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    fn current_keys(&self) -> Arc<Vec<Key>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Verifies the raw `Authorization` header value at the time `now_unix` (seconds).
    pub fn verify(&self, authorization_header: Option<&str>, now_unix: i64) -> Result<Claims, JwtError> {
        self.verify_expired_within(authorization_header, now_unix, 0)
    }

    /// [`Self::verify`], except that a token expired by at most `grace_s` seconds (beyond the
    /// leeway) passes: every other check (signature, key, issuer, audience, client id, `nbf`
    /// / `iat`) is the same. For redeliveries of a request accepted before, which the switch
    /// sends with the first delivery's bearer.
    pub fn verify_expired_within(
        &self,
        authorization_header: Option<&str>,
        now_unix: i64,
        grace_s: i64,
    ) -> Result<Claims, JwtError> {
        if self.disabled {
            return Ok(Claims::default());
        }
        let token = bearer_token(authorization_header)?;
        let kid = check_header(token)?;

        let keys = self.current_keys();
        if keys.is_empty() {
            return Err(JwtError::Jwks("no signing keys loaded yet".into()));
        }
        let key = match kid.as_deref() {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or(JwtError::UnknownKey)?;

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                    JwtError::AlgorithmNotAllowed
                }
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    JwtError::Malformed
                }
                // Anything else (a key the backend refuses, ...) fails closed.
                _ => JwtError::BadSignature,
            }
        })?;

        let claims = claims_from(data.claims)?;
        self.check_claims(&claims, now_unix, grace_s.max(0))?;
        Ok(claims)
    }

    fn check_claims(&self, c: &Claims, now: i64, grace_s: i64) -> Result<(), JwtError> {
        let leeway = self.leeway_s;
        if now >= c.exp.saturating_add(leeway).saturating_add(grace_s) {
            return Err(JwtError::Expired);
        }
        let latest_start = now.saturating_add(leeway);
        if c.nbf.is_some_and(|nbf| nbf > latest_start) || c.iat.is_some_and(|iat| iat > latest_start) {
            return Err(JwtError::NotYetValid);
        }
        if let Some(want) = &self.issuer {
            if c.iss.as_deref() != Some(want.as_str()) {
                return Err(JwtError::WrongIssuer);
            }
        }
        if let Some(want) = &self.audience {
            if !c.aud.iter().any(|a| a == want) {
                return Err(JwtError::WrongAudience);
            }
        }
        if let Some(want) = &self.client_id {
            // Every client claim present must name the switch (a token may not pass on `azp`
            // while its `clientId` names someone else), and at least one must be there.
            let mut named = false;
            for name in CLIENT_ID_CLAIMS {
                match c.extra.get(name) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(v)) if v == want => named = true,
                    Some(_) => return Err(JwtError::WrongClient),
                }
            }
            if !named {
                return Err(JwtError::WrongClient);
            }
        }
        Ok(())
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive).
fn bearer_token(header: Option<&str>) -> Result<&str, JwtError> {
    let value = header.map(str::trim).filter(|v| !v.is_empty()).ok_or(JwtError::Missing)?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(JwtError::Malformed);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    Ok(token)
}

/// Checks the JOSE header before any key is touched: exactly RS256 (so `none`, HS256 and
/// friends never reach a verifier), no `crit` extensions; returns the `kid`.
fn check_header(token: &str) -> Result<Option<String>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(Value::String(_)) => return Err(JwtError::AlgorithmNotAllowed),
        _ => return Err(JwtError::Malformed),
    }
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    match header.get("kid") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(kid)) => Ok(Some(kid.clone())),
        Some(_) => Err(JwtError::Malformed),
    }
}

/// A NumericDate: integer or fractional seconds (fractions cut towards the past).
fn numeric_date(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)).or_else(|| {
            n.as_f64().filter(|f| f.is_finite()).map(|f| f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
        }),
        _ => None,
    }
}

fn claims_from(mut m: Map<String, Value>) -> Result<Claims, JwtError> {
    fn opt_string(v: Option<Value>) -> Result<Option<String>, JwtError> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JwtError::Malformed),
        }
    }
    fn opt_date(v: Option<Value>) -> Result<Option<i64>, JwtError> {
        v.map(|v| numeric_date(&v).ok_or(JwtError::Malformed)).transpose()
    }
    let sub = opt_string(m.remove("sub"))?;
    let iss = opt_string(m.remove("iss"))?;
    let aud = match m.remove("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|a| match a {
                Value::String(s) => Ok(s),
                _ => Err(JwtError::Malformed),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtError::Malformed),
    };
    // `exp` is required: a token without an end is never accepted.
    let exp = opt_date(m.remove("exp"))?.ok_or(JwtError::Malformed)?;
    let nbf = opt_date(m.remove("nbf"))?;
    let iat = opt_date(m.remove("iat"))?;
    Ok(Claims { sub, iss, aud, exp, nbf, iat, extra: m })
}

/// The usable keys of a JWKS document: RSA keys meant for signatures (`use` absent or `sig`,
/// `alg` absent or RS256, `key_ops` absent or containing `verify`) of at least 2048 bits.
fn parse_jwks(json: &str) -> Result<Vec<Key>, JwtError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| JwtError::Jwks(format!("not JSON: {e}")))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err(JwtError::Jwks("not a JWKS: no \"keys\" array".into()));
    };
    let mut keys: Vec<Key> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = |name: &str| entry.get(name).and_then(Value::as_str);
        let kid = field("kid").map(str::to_string);
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        let signing = field("kty") == Some("RSA")
            && field("use").is_none_or(|u| u == "sig")
            && field("alg").is_none_or(|a| a == "RS256")
            && entry.get("key_ops").and_then(Value::as_array).is_none_or(|ops| ops.iter().any(|o| o == "verify"));
        if !signing {
            tracing::debug!(key = %label, "JWKS key skipped: not an RS256 signing key");
            continue;
        }
        let (Some(n), Some(e)) = (field("n"), field("e")) else {
            tracing::warn!(key = %label, "JWKS key skipped: RSA key without n or e");
            continue;
        };
        let modulus_bits = URL_SAFE_NO_PAD.decode(n).ok().map(|b| rsa_bits(&b));
        let exponent_ok = URL_SAFE_NO_PAD.decode(e).is_ok_and(|b| !b.is_empty() && b.len() <= 8);
        if modulus_bits.is_none_or(|bits| bits < MIN_RSA_BITS) || !exponent_ok {
            tracing::warn!(key = %label, "JWKS key skipped: RSA key shorter than 2048 bits or not base64url");
            continue;
        }
        let Ok(key) = DecodingKey::from_rsa_components(n, e) else {
            tracing::warn!(key = %label, "JWKS key skipped: unusable RSA components");
            continue;
        };
        if kid.is_some() && keys.iter().any(|k| k.kid == kid) {
            return Err(JwtError::Jwks(format!("duplicate kid {label:?}")));
        }
        keys.push(Key { kid, key });
    }
    if keys.is_empty() {
        return Err(JwtError::Jwks("the JWKS holds no usable RS256 key".into()));
    }
    Ok(keys)
}

/// Bit length of a big-endian unsigned integer.
fn rsa_bits(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        None => 0,
        Some(i) => (be.len() - i - 1) * 8 + (8 - be[i].leading_zeros() as usize),
    }
}

/// Signs `claims` with RS256 and the given `kid` (none when `kid` is empty). For tests and the
/// HIE-CM double only: the gateway itself never signs. Panics if `private_pem` is not an RSA
/// private key (PKCS#1 or PKCS#8 PEM) or `claims` is not a JSON object.
pub fn sign_rs256_for_tests(private_pem: &str, kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("an RSA private key in PEM");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = (!kid.is_empty()).then(|| kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).expect("RS256 signing")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEY1: &str = include_str!("../../tests/fixtures/protocol/jwt/test-only-key1.pem");
    const KEY1_PUB: &str = include_str!("../../tests/fixtures/protocol/jwt/test-only-key1.pub.pem");
    const KEY2: &str = include_str!("../../tests/fixtures/protocol/jwt/test-only-key2.pem");
    const JWKS: &str = include_str!("../../tests/fixtures/protocol/jwt/jwks.json");
    const JWKS_ROTATED: &str = include_str!("../../tests/fixtures/protocol/jwt/jwks-rotated.json");

    const NOW: i64 = 1_790_000_000;
    const ISS: &str = "https://switch.test/hiecm";

    fn cfg() -> JwtConfig {
        JwtConfig { issuer: Some(ISS.into()), leeway_s: 30, ..JwtConfig::default() }
    }

    fn verifier() -> Verifier {
        Verifier::from_jwks_json(JWKS, &cfg()).unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "hip-1", "iat": NOW - 5, "exp": NOW + 300, "hipId": "IN0410000183"})
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn check(v: &Verifier, token: &str) -> Result<Claims, JwtError> {
        let r = v.verify(Some(&bearer(token)), NOW);
        if let Err(e) = &r {
            // Messages never echo the token or any part of it.
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!e.to_string().contains(part), "{e}");
            }
        }
        r
    }

    fn with(mut base: Value, k: &str, v: Value) -> Value {
        base[k] = v;
        base
    }

    fn without(mut base: Value, k: &str) -> Value {
        base.as_object_mut().unwrap().remove(k);
        base
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn valid_token_passes_with_its_claims() {
        let t = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        let c = check(&verifier(), &t).unwrap();
        assert_eq!(c.sub.as_deref(), Some("hip-1"));
        assert_eq!(c.iss.as_deref(), Some(ISS));
        assert_eq!(c.exp, NOW + 300);
        assert_eq!(c.iat, Some(NOW - 5));
        assert_eq!(c.extra.get("hipId"), Some(&json!("IN0410000183")));
        assert!(!c.extra.contains_key("exp"));
        // The scheme is case-insensitive and surrounding blanks are ignored.
        assert!(verifier().verify(Some(&format!("  bearer   {t} ")), NOW).is_ok());
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let v = verifier();
        let expired = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "exp", json!(NOW - 31)));
        assert_eq!(check(&v, &expired), Err(JwtError::Expired));
        let at_edge = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "exp", json!(NOW - 30)));
        assert_eq!(check(&v, &at_edge), Err(JwtError::Expired));
        let within = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "exp", json!(NOW - 29)));
        assert!(check(&v, &within).is_ok());
        // Only the injected time counts: the same token is fine earlier.
        assert!(v.verify(Some(&bearer(&expired)), NOW - 20).is_ok());
        // Fractional NumericDate.
        let frac = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "exp", json!(NOW as f64 + 10.5)));
        assert_eq!(check(&v, &frac).unwrap().exp, NOW + 10);
    }

    #[test]
    fn a_redelivery_grace_relaxes_only_the_expiry() {
        let v = verifier();
        let t = |c: Value| bearer(&sign_rs256_for_tests(KEY1, "test-key-1", &c));
        // Expired 16 minutes ago (issued 5 minutes before that): within a 1800 s grace.
        let stale = with(with(claims(), "exp", json!(NOW - 960)), "iat", json!(NOW - 1260));
        assert_eq!(v.verify(Some(&t(stale.clone())), NOW), Err(JwtError::Expired));
        assert!(v.verify_expired_within(Some(&t(stale.clone())), NOW, 1800).is_ok());
        // Beyond grace + leeway: still expired.
        let old = with(claims(), "exp", json!(NOW - 1800 - 30));
        assert_eq!(v.verify_expired_within(Some(&t(old)), NOW, 1800), Err(JwtError::Expired));
        // Every other check still holds.
        let wrong_iss = with(stale.clone(), "iss", json!("someone-else"));
        assert_eq!(v.verify_expired_within(Some(&t(wrong_iss)), NOW, 1800), Err(JwtError::WrongIssuer));
        let forged = sign_rs256_for_tests(KEY2, "test-key-1", &stale);
        assert_eq!(v.verify_expired_within(Some(&bearer(&forged)), NOW, 1800), Err(JwtError::BadSignature));
    }

    #[test]
    fn not_before_and_issued_at_in_the_future_fail() {
        let v = verifier();
        let nbf = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "nbf", json!(NOW + 31)));
        assert_eq!(check(&v, &nbf), Err(JwtError::NotYetValid));
        let nbf_skew = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "nbf", json!(NOW + 30)));
        assert_eq!(check(&v, &nbf_skew).unwrap().nbf, Some(NOW + 30));
        let iat = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "iat", json!(NOW + 120)));
        assert_eq!(check(&v, &iat), Err(JwtError::NotYetValid));
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let v = verifier();
        let wrong = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "iss", json!("https://evil.test")));
        assert_eq!(check(&v, &wrong), Err(JwtError::WrongIssuer));
        let none = sign_rs256_for_tests(KEY1, "test-key-1", &without(claims(), "iss"));
        assert_eq!(check(&v, &none), Err(JwtError::WrongIssuer));
        let any_issuer = Verifier::from_jwks_json(JWKS, &JwtConfig { issuer: None, ..cfg() }).unwrap();
        assert!(check(&any_issuer, &wrong).is_ok());
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let v = Verifier::from_jwks_json(JWKS, &JwtConfig { audience: Some("scan-gateway".into()), ..cfg() }).unwrap();
        let single = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "aud", json!("scan-gateway")));
        assert_eq!(check(&v, &single).unwrap().aud, vec!["scan-gateway".to_string()]);
        let list = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "aud", json!(["x", "scan-gateway"])));
        assert!(check(&v, &list).is_ok());
        let wrong = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "aud", json!(["x"])));
        assert_eq!(check(&v, &wrong), Err(JwtError::WrongAudience));
        let none = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        assert_eq!(check(&v, &none), Err(JwtError::WrongAudience));
        // Without a configured audience any aud is fine.
        assert!(check(&verifier(), &wrong).is_ok());
    }

    #[test]
    fn the_client_id_is_checked_when_configured() {
        let switch = "gateway";
        let v = Verifier::from_jwks_json(
            JWKS,
            &JwtConfig { audience: Some("account".into()), client_id: Some(switch.into()), ..cfg() },
        )
        .unwrap();
        let base = with(claims(), "aud", json!("account"));
        let sign = |c: &Value| sign_rs256_for_tests(KEY1, "test-key-1", c);
        // The switch's own token passes by any of the client claims.
        for name in CLIENT_ID_CLAIMS {
            assert!(check(&v, &sign(&with(base.clone(), name, json!(switch)))).is_ok(), "{name}");
        }
        let both = with(with(base.clone(), "clientId", json!(switch)), "azp", json!(switch));
        assert!(check(&v, &sign(&both)).is_ok());
        // Same issuer, key and audience, another client: refused.
        for name in CLIENT_ID_CLAIMS {
            let other = sign(&with(base.clone(), name, json!("some-hip-client")));
            assert_eq!(check(&v, &other), Err(JwtError::WrongClient), "{name}");
        }
        // Right on one claim, wrong on another; none at all; not a string.
        let mixed = with(with(base.clone(), "clientId", json!(switch)), "azp", json!("some-hip-client"));
        assert_eq!(check(&v, &sign(&mixed)), Err(JwtError::WrongClient));
        assert_eq!(check(&v, &sign(&base)), Err(JwtError::WrongClient));
        assert_eq!(check(&v, &sign(&with(base.clone(), "clientId", json!([switch])))), Err(JwtError::WrongClient));
        // Without a configured client id, any client passes.
        assert!(check(&verifier(), &sign(&with(base, "clientId", json!("some-hip-client")))).is_ok());
    }

    #[test]
    fn exp_is_required_and_claims_must_have_their_types() {
        let v = verifier();
        let no_exp = sign_rs256_for_tests(KEY1, "test-key-1", &without(claims(), "exp"));
        assert_eq!(check(&v, &no_exp), Err(JwtError::Malformed));
        let text_exp = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "exp", json!("soon")));
        assert_eq!(check(&v, &text_exp), Err(JwtError::Malformed));
        let num_iss = sign_rs256_for_tests(KEY1, "test-key-1", &with(claims(), "iss", json!(7)));
        assert_eq!(check(&v, &num_iss), Err(JwtError::Malformed));
    }

    #[test]
    fn alg_none_and_hmac_with_the_public_key_are_refused() {
        let v = verifier();
        let body = b64(&claims());
        let none = format!("{}.{body}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": "test-key-1"})));
        assert_eq!(check(&v, &none), Err(JwtError::AlgorithmNotAllowed));
        let none_upper = format!("{}.{body}.", b64(&json!({"alg": "NONE", "kid": "test-key-1"})));
        assert_eq!(check(&v, &none_upper), Err(JwtError::AlgorithmNotAllowed));

        // Classic key confusion: HS256 keyed with the verifier's public key.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("test-key-1".into());
        for secret in [KEY1_PUB.as_bytes(), KEY1_PUB.trim().as_bytes()] {
            let forged = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(secret)).unwrap();
            assert_eq!(check(&v, &forged), Err(JwtError::AlgorithmNotAllowed));
        }
        // The right key with another RSA algorithm is refused too.
        let mut h = Header::new(Algorithm::RS512);
        h.kid = Some("test-key-1".into());
        let rs512 = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_rsa_pem(KEY1.as_bytes()).unwrap()).unwrap();
        assert_eq!(check(&v, &rs512), Err(JwtError::AlgorithmNotAllowed));
        // A header without alg, or with crit extensions, is malformed.
        let no_alg = format!("{}.{body}.sig", b64(&json!({"kid": "test-key-1"})));
        assert_eq!(check(&v, &no_alg), Err(JwtError::Malformed));
        let good = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        let sig = good.rsplit('.').next().unwrap();
        let crit = format!("{}.{body}.{sig}", b64(&json!({"alg": "RS256", "kid": "test-key-1", "crit": ["x"]})));
        assert_eq!(check(&v, &crit), Err(JwtError::Malformed));
    }

    #[test]
    fn wrong_signer_and_tampering_fail_the_signature() {
        let v = verifier();
        let by_key2 = sign_rs256_for_tests(KEY2, "test-key-1", &claims());
        assert_eq!(check(&v, &by_key2), Err(JwtError::BadSignature));

        let good = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_body = b64(&with(claims(), "sub", json!("someone-else")));
        parts[1] = &forged_body;
        assert_eq!(check(&v, &parts.join(".")), Err(JwtError::BadSignature));
    }

    #[test]
    fn key_selection_by_kid() {
        let v = verifier();
        let unknown = sign_rs256_for_tests(KEY1, "test-key-9", &claims());
        assert_eq!(check(&v, &unknown), Err(JwtError::UnknownKey));
        // No kid and exactly one key: that key is used.
        let no_kid = sign_rs256_for_tests(KEY1, "", &claims());
        assert!(check(&v, &no_kid).is_ok());
        // No kid and several keys: refused.
        let both = merged_jwks();
        let two = Verifier::from_jwks_json(&both, &cfg()).unwrap();
        assert_eq!(two.key_count(), 2);
        assert_eq!(check(&two, &no_kid), Err(JwtError::UnknownKey));
        assert!(check(&two, &sign_rs256_for_tests(KEY2, "test-key-2", &claims())).is_ok());
    }

    fn merged_jwks() -> String {
        let mut a: Value = serde_json::from_str(JWKS).unwrap();
        let b: Value = serde_json::from_str(JWKS_ROTATED).unwrap();
        a["keys"].as_array_mut().unwrap().extend(b["keys"].as_array().unwrap().iter().cloned());
        a.to_string()
    }

    #[test]
    fn header_shapes() {
        let v = verifier();
        assert_eq!(v.verify(None, NOW), Err(JwtError::Missing));
        assert_eq!(v.verify(Some("   "), NOW), Err(JwtError::Missing));
        assert_eq!(v.verify(Some("Bearer"), NOW), Err(JwtError::Missing));
        assert_eq!(v.verify(Some("Bearer   "), NOW), Err(JwtError::Missing));
        assert_eq!(v.verify(Some("Basic dXNlcjpwYXNz"), NOW), Err(JwtError::Malformed));
        assert_eq!(v.verify(Some("Bearer abc"), NOW), Err(JwtError::Malformed));
        assert_eq!(v.verify(Some("Bearer a.b"), NOW), Err(JwtError::Malformed));
        assert_eq!(v.verify(Some("Bearer a.b.c.d"), NOW), Err(JwtError::Malformed));
        assert_eq!(v.verify(Some("Bearer !!!.e30.sig"), NOW), Err(JwtError::Malformed));
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(v.verify(Some(&huge), NOW), Err(JwtError::Malformed));
        // The signature is checked before the payload is read: garbage under a valid header
        // fails the signature; a signed payload that is not a claims object is malformed.
        let good = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        let head = good.split('.').next().unwrap();
        assert_eq!(v.verify(Some(&format!("Bearer {head}.@@@.AAAA")), NOW), Err(JwtError::BadSignature));
        let array = sign_rs256_for_tests(KEY1, "test-key-1", &json!([1, 2]));
        assert_eq!(check(&v, &array), Err(JwtError::Malformed));
    }

    #[test]
    fn replace_keys_rotates_and_keeps_the_old_set_on_error() {
        let v = verifier();
        let t1 = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        let t2 = sign_rs256_for_tests(KEY2, "test-key-2", &claims());
        assert!(check(&v, &t1).is_ok());
        assert_eq!(check(&v, &t2), Err(JwtError::UnknownKey));

        let g = v.generation();
        v.replace_keys(JWKS_ROTATED).unwrap();
        assert_eq!(v.generation(), g + 1, "a replacement is visible to callers that saw an unknown kid");
        assert!(check(&v, &t2).is_ok());
        assert_eq!(check(&v, &t1), Err(JwtError::UnknownKey));
        // Key 1's token relabelled to key 2's kid does not verify either.
        let t1_as_2 = sign_rs256_for_tests(KEY1, "test-key-2", &claims());
        assert_eq!(check(&v, &t1_as_2), Err(JwtError::BadSignature));

        assert!(matches!(v.replace_keys("{not json"), Err(JwtError::Jwks(_))));
        assert!(matches!(v.replace_keys(r#"{"keys":[]}"#), Err(JwtError::Jwks(_))));
        assert!(check(&v, &t2).is_ok(), "a failed refresh keeps the keys");
        assert_eq!(v.generation(), g + 1, "a refused key set is no replacement");
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys_and_refuses_duplicates() {
        let key1: Value = serde_json::from_str::<Value>(JWKS).unwrap()["keys"][0].clone();
        let short = json!({"kty": "RSA", "kid": "short", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"});
        let ec = json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"});
        let enc = with(with(key1.clone(), "kid", json!("enc")), "use", json!("enc"));
        let hs = with(with(key1.clone(), "kid", json!("rs512")), "alg", json!("RS512"));
        let doc = json!({"keys": [short, ec, enc, hs, key1.clone()]}).to_string();
        let v = Verifier::from_jwks_json(&doc, &cfg()).unwrap();
        assert_eq!(v.key_count(), 1);
        assert!(check(&v, &sign_rs256_for_tests(KEY1, "test-key-1", &claims())).is_ok());
        assert_eq!(check(&v, &sign_rs256_for_tests(KEY1, "rs512", &claims())), Err(JwtError::UnknownKey));

        let dup = json!({"keys": [key1.clone(), key1]}).to_string();
        assert!(matches!(Verifier::from_jwks_json(&dup, &cfg()), Err(JwtError::Jwks(_))));
        assert!(matches!(Verifier::from_jwks_json(r#"{"nokeys":1}"#, &cfg()), Err(JwtError::Jwks(_))));
    }

    #[test]
    fn load_from_file_url_or_nothing() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/protocol/jwt/jwks.json");
        let from_file = Verifier::load(&JwtConfig { jwks_file: Some(dir.into()), ..cfg() }).unwrap();
        assert!(check(&from_file, &sign_rs256_for_tests(KEY1, "test-key-1", &claims())).is_ok());

        let missing = JwtConfig { jwks_file: Some("/nonexistent/jwks.json".into()), ..cfg() };
        assert!(matches!(Verifier::load(&missing), Err(JwtError::Jwks(_))));
        assert!(matches!(Verifier::load(&cfg()), Err(JwtError::Jwks(_))));

        let url = Verifier::load(&JwtConfig { jwks_url: Some("https://switch.test/jwks".into()), ..cfg() }).unwrap();
        assert_eq!(url.key_count(), 0);
        let t = sign_rs256_for_tests(KEY1, "test-key-1", &claims());
        let before = check(&url, &t).unwrap_err();
        assert_eq!(before.code(), "JWKS_UNAVAILABLE");
        url.replace_keys(JWKS).unwrap();
        assert!(check(&url, &t).is_ok());
    }

    #[test]
    fn disabled_mode_accepts_anything() {
        let v = Verifier::load(&JwtConfig { disabled: true, ..JwtConfig::default() }).unwrap();
        assert!(v.is_disabled());
        assert_eq!(v.verify(None, NOW), Ok(Claims::default()));
        assert_eq!(v.verify(Some("Basic nonsense"), NOW), Ok(Claims::default()));
        assert!(!verifier().is_disabled());
    }

    #[test]
    fn codes_are_distinct_upper_snake() {
        let all = [
            JwtError::Missing,
            JwtError::Malformed,
            JwtError::UnknownKey,
            JwtError::BadSignature,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::WrongIssuer,
            JwtError::WrongAudience,
            JwtError::WrongClient,
            JwtError::AlgorithmNotAllowed,
            JwtError::Jwks("x".into()),
        ];
        let codes: HashSet<&str> = all.iter().map(JwtError::code).collect();
        assert_eq!(codes.len(), all.len());
        assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')));
    }
}
