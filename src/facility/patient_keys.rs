//! Keyed digests of patient identifiers (HMAC-SHA256 with the configured secret), used for
//! repeat detection so raw ABHA ids are never used as lookup keys or leave the profile.
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::queue::{PatientDigest, PatientKeys, Profile};

#[derive(Clone)]
pub struct PatientHasher {
    mac: Hmac<Sha256>,
}

impl PatientHasher {
    pub fn new(secret: &str) -> Self {
        Self { mac: Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length") }
    }

    /// The first 16 bytes of the HMAC, kept as bytes: a fixed-size key costs no allocation.
    fn digest(&self, kind: &str, value: &str) -> PatientDigest {
        let mut mac = self.mac.clone();
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        PatientDigest(mac.finalize().into_bytes()[..16].try_into().expect("HMAC-SHA256 gives 32 bytes"))
    }

    /// Digests of a (validated, normalised) profile's identifiers.
    pub fn keys(&self, p: &Profile) -> PatientKeys {
        PatientKeys {
            by_address: self.digest("addr", &p.abha_address.to_ascii_lowercase()),
            by_number: p.abha_number.as_deref().map(|n| self.digest("num", n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_and_hide_the_id() {
        let p = Profile {
            abha_address: "Ravi@abdm".into(),
            abha_number: Some("91123456789012".into()),
            ..Profile::default()
        };
        let a = PatientHasher::new("secret-one-0123456789").keys(&p);
        let b = PatientHasher::new("secret-two-0123456789").keys(&p);
        assert_ne!(a, b);
        assert!(!a.by_address.0.windows(4).any(|w| w == b"ravi"));
        let lower = Profile { abha_address: "ravi@abdm".into(), ..p.clone() };
        assert_eq!(PatientHasher::new("secret-one-0123456789").keys(&lower), a);
    }
}
