//! Opaque, URL-safe token ids. The id carries the facility, service day, counter and
//! number, so a token lookup goes straight to its facility's actor without a global index.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jiff::civil::Date;

const SEP: char = '\u{1f}';
const MAX_ID_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    pub facility: String,
    pub day: Date,
    pub counter: String,
    pub number: u32,
}

impl TokenRef {
    pub fn encode(&self) -> String {
        let raw = format!("t1{SEP}{}{SEP}{}{SEP}{}{SEP}{}", self.facility, self.day, self.counter, self.number);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything that is not an id this gateway made.
    pub fn decode(id: &str) -> Option<Self> {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(id).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut parts = raw.split(SEP);
        if parts.next()? != "t1" {
            return None;
        }
        let facility = parts.next()?.to_string();
        let day: Date = parts.next()?.parse().ok()?;
        let counter = parts.next()?.to_string();
        let number: u32 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || facility.is_empty() || counter.is_empty() || number == 0 {
            return None;
        }
        Some(Self { facility, day, counter, number })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_url_safe() {
        let r = TokenRef {
            facility: "IN0410000183".into(),
            day: "2026-11-23".parse().unwrap(),
            counter: "Eye OPD".into(),
            number: 17,
        };
        let id = r.encode();
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}");
        assert_eq!(TokenRef::decode(&id), Some(r));
    }

    #[test]
    fn garbage_is_none() {
        for bad in ["", "!!!", "dGVzdA", &"A".repeat(600)] {
            assert_eq!(TokenRef::decode(bad), None, "{bad}");
        }
    }
}
