//! Staff keys: `stf.<facility>.<key_id>.<secret>`, shown once; only a SHA-256 of the secret
//! is stored, and it is compared in constant time.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct NewStaffKey {
    pub key_id: String,
    pub key: String,
    pub hash: String,
}

pub fn hash_secret(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn generate(facility: &str) -> NewStaffKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewStaffKey { key: format!("stf.{facility}.{key_id}.{secret}"), hash: hash_secret(&secret), key_id }
}

/// A presented staff key, split: (facility, key_id, secret).
pub fn parse(token: &str) -> Option<(&str, &str, &str)> {
    let rest = token.strip_prefix("stf.")?;
    let mut parts = rest.splitn(3, '.');
    let (f, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (super::valid_facility_id(f) && hex(id) && !secret.is_empty() && secret.len() <= 64).then_some((f, id, secret))
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_parses_and_matches_only_its_hash() {
        let k = generate("IN0410000183");
        let (f, id, secret) = parse(&k.key).unwrap();
        assert_eq!((f, id), ("IN0410000183", k.key_id.as_str()));
        assert!(matches(secret, &k.hash));
        assert!(!matches("other", &k.hash));
        assert!(!k.hash.contains(secret));
        assert!(parse("stf.IN01.zz.x").is_none());
        assert!(parse("Bearer nonsense").is_none());
    }
}
