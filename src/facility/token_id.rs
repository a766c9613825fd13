//! URL-safe token ids: `<facility_id>.<base64url(version, day, counter, number)>`. The id
//! carries everything a lookup needs (no global index), and its facility prefix is readable
//! so a load balancer can route token polls and counter calls to the facility's node.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jiff::civil::Date;

use crate::registry::{valid_counter_id, valid_facility_id};

const SEP: char = '\u{1f}';
const MAX_ID_LEN: usize = 512;
/// Separates the readable facility prefix from the encoded rest. Neither facility ids nor
/// the base64url alphabet contain it, and it needs no escaping in a URL path.
const PREFIX_SEP: char = '.';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    pub facility: String,
    pub day: Date,
    pub counter: String,
    pub number: u32,
}

impl TokenRef {
    /// The current format (`t2`): the facility in clear, the rest encoded.
    pub fn encode(&self) -> String {
        Self::encode_parts(&self.facility, self.day, &self.counter, self.number)
    }

    /// [`Self::encode`] from borrowed parts, in one allocation: every scan's answer carries
    /// an id, so it is built without owned copies of the facility and counter.
    pub fn encode_parts(facility: &str, day: Date, counter: &str, number: u32) -> String {
        use std::fmt::Write;
        let mut rest = String::with_capacity(24 + counter.len());
        write!(rest, "t2{SEP}{day}{SEP}{counter}{SEP}{number}").expect("writing to a String cannot fail");
        let mut id = String::with_capacity(facility.len() + 1 + rest.len().div_ceil(3) * 4);
        id.push_str(facility);
        id.push(PREFIX_SEP);
        URL_SAFE_NO_PAD.encode_string(rest, &mut id);
        id
    }

    /// `None` for anything that is not an id this gateway made. Ids of the first format
    /// (`t1`: everything, facility included, inside one base64url string) still decode, so
    /// tokens handed out before the routable format keep working.
    pub fn decode(id: &str) -> Option<Self> {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return None;
        }
        let (facility, fields) = match id.split_once(PREFIX_SEP) {
            Some((facility, rest)) => (facility.to_string(), unpack(rest, "t2")?),
            None => {
                let mut fields = unpack(id, "t1")?;
                (fields.remove(0), fields)
            }
        };
        let [day, counter, number] = <[String; 3]>::try_from(fields).ok()?;
        let day: Date = day.parse().ok()?;
        let number: u32 = number.parse().ok()?;
        // The facility names Redis keys and the counter a token field: only ids that could
        // have been registered get that far.
        if !valid_facility_id(&facility) || !valid_counter_id(&counter) || number == 0 {
            return None;
        }
        Some(Self { facility, day, counter, number })
    }
}

/// Decodes base64url text into its fields after the `version` tag.
fn unpack(encoded: &str, version: &str) -> Option<Vec<String>> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()?;
    let mut parts = raw.split(SEP);
    if parts.next()? != version {
        return None;
    }
    Some(parts.map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenRef {
        TokenRef {
            facility: "IN0410000183".into(),
            day: "2026-11-23".parse().unwrap(),
            counter: "Eye OPD".into(),
            number: 17,
        }
    }

    /// The first format, as ids handed out before the routable one were made.
    fn encode_t1(r: &TokenRef) -> String {
        URL_SAFE_NO_PAD.encode(format!("t1{SEP}{}{SEP}{}{SEP}{}{SEP}{}", r.facility, r.day, r.counter, r.number))
    }

    #[test]
    fn round_trip_and_url_safe() {
        let r = sample();
        let id = r.encode();
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')), "{id}");
        assert_eq!(TokenRef::decode(&id), Some(r));
        let odd = TokenRef { facility: "a-_9".into(), counter: "OPD 1.a".into(), number: u32::MAX, ..sample() };
        assert_eq!(TokenRef::decode(&odd.encode()), Some(odd));
    }

    /// Ids already handed out must keep their exact form (patients poll with them).
    #[test]
    fn the_second_format_is_unchanged() {
        let r = sample();
        let expected =
            format!("IN0410000183.{}", URL_SAFE_NO_PAD.encode(format!("t2{SEP}2026-11-23{SEP}Eye OPD{SEP}17")));
        assert_eq!(r.encode(), expected);
        assert_eq!(TokenRef::encode_parts(&r.facility, r.day, &r.counter, r.number), expected);
        let long = TokenRef { counter: "C".repeat(64), number: 1_000_000_000, ..sample() };
        assert_eq!(TokenRef::decode(&long.encode()), Some(long));
    }

    #[test]
    fn facility_prefix_is_readable_for_routing() {
        // What deploy/nginx/facility-routing.conf matches: `^/v1/tokens/(<facility>)\.`.
        let id = sample().encode();
        let (prefix, rest) = id.split_once('.').unwrap();
        assert_eq!(prefix, "IN0410000183");
        assert!(!rest.contains('.'), "{id}");
    }

    #[test]
    fn first_format_ids_still_decode() {
        let r = sample();
        let old = encode_t1(&r);
        assert!(!old.contains('.'), "{old}");
        assert_eq!(TokenRef::decode(&old), Some(r));
    }

    #[test]
    fn garbage_is_none() {
        for bad in ["", "!!!", "dGVzdA", &"A".repeat(600)] {
            assert_eq!(TokenRef::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostile_ids_are_rejected() {
        let r = sample();
        let rest = r.encode().split_once('.').unwrap().1.to_string();
        let t1_inside = encode_t1(&r);
        let t2_rest = |day: &str, counter: &str, number: &str| {
            URL_SAFE_NO_PAD.encode(format!("t2{SEP}{day}{SEP}{counter}{SEP}{number}"))
        };
        let cases = [
            format!(".{rest}"),                                                  // no facility
            "IN0410000183.".to_string(),                                         // nothing after the prefix
            format!("IN{{x}}.{rest}"),                                           // a hash tag breaker as facility
            format!("IN:1.{rest}"),                                              // ':' separates key parts
            format!("I.{rest}"),                                                 // facility too short
            format!("{}.{rest}", "A".repeat(65)),                                // facility too long
            format!("IN0410000183.{rest}.{rest}"),                               // two separators
            format!("IN0410000183.{rest}=="),                                    // padding is not URL-safe
            format!("IN0410000183.{t1_inside}"),                                 // old payload behind a prefix
            URL_SAFE_NO_PAD.encode(format!("t2{SEP}2026-11-23{SEP}OPD1{SEP}1")), // new payload alone
            format!("IN0410000183.{}", t2_rest("2026-13-40", "OPD1", "1")),
            format!("IN0410000183.{}", t2_rest("2026-11-23", "OPD1", "0")),
            format!("IN0410000183.{}", t2_rest("2026-11-23", "OPD1", "-1")),
            format!("IN0410000183.{}", t2_rest("2026-11-23", "OPD#1", "1")),
            format!("IN0410000183.{}", t2_rest("2026-11-23", "", "1")),
            format!("IN0410000183.{}{}", t2_rest("2026-11-23", "OPD1", "1"), URL_SAFE_NO_PAD.encode("\u{1f}x")),
            format!("IN0410000183.{}", URL_SAFE_NO_PAD.encode(format!("t2{SEP}2026-11-23{SEP}OPD1{SEP}1{SEP}x"))),
            format!("IN0410000183.{}", URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00])),
            URL_SAFE_NO_PAD.encode(format!("t1{SEP}IN{{x}}{SEP}2026-11-23{SEP}OPD1{SEP}1")),
            format!("IN0410000183.{}", "A".repeat(520)),
        ];
        for bad in &cases {
            assert_eq!(TokenRef::decode(bad), None, "{bad}");
        }
    }
}
