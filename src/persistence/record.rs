//! The stored form of a token: one compact line per token (fields split by the ASCII unit
//! separator), about 100 bytes, so Redis holds a token in well under 200 bytes. Names and
//! ids never contain control characters (refused at the edge), so the separators are safe.
use crate::facility::queue::{CounterName, Event, PriorityClass, Profile, Status, Token, Transition, MAX_REPEAT_KEYS};

/// Version 2 writes times (epoch ms, validity and history offsets) in base 36: 13 digits of
/// epoch milliseconds become 8 characters, which keeps more records under the listpack value
/// limit of the shipped redis.conf. Version 1 records (decimal) are still read.
const VERSION: &str = "2";
const V1: &str = "1";
/// Version 3 is version 2 plus a 16th field: the hashes of the Idempotency-Keys answered as
/// repeats of the token (base 36, comma-separated). Only a token with such keys is written
/// as version 3, so every other record stays byte for byte what version 2 wrote (and what a
/// previous release reads during a rolling upgrade).
const V3: &str = "3";
const FS: char = '\u{1f}';
const RS: char = '\u{1e}';

#[derive(Debug, thiserror::Error)]
#[error("corrupt token record: {0}")]
pub struct CorruptRecord(&'static str);

fn status_code(s: Status) -> &'static str {
    match s {
        Status::Waiting => "w",
        Status::Called => "c",
        Status::Completed => "d",
        Status::NoShow => "n",
        Status::Expired => "x",
    }
}

fn status_from(c: &str) -> Option<Status> {
    Some(match c {
        "w" => Status::Waiting,
        "c" => Status::Called,
        "d" => Status::Completed,
        "n" => Status::NoShow,
        "x" => Status::Expired,
        _ => return None,
    })
}

fn event_code(e: Event) -> char {
    match e {
        Event::Issued => 'i',
        Event::Called => 'c',
        Event::Recalled => 'r',
        Event::Transferred => 't',
        Event::Completed => 'd',
        Event::NoShow => 'n',
        Event::Expired => 'x',
    }
}

fn event_from(c: char) -> Option<Event> {
    Some(match c {
        'i' => Event::Issued,
        'c' => Event::Called,
        'r' => Event::Recalled,
        't' => Event::Transferred,
        'd' => Event::Completed,
        'n' => Event::NoShow,
        'x' => Event::Expired,
        _ => return None,
    })
}

fn priority_code(p: Option<PriorityClass>) -> &'static str {
    match p {
        None => "",
        Some(PriorityClass::Elderly) => "e",
        Some(PriorityClass::Disabled) => "d",
        Some(PriorityClass::Pregnant) => "p",
    }
}

fn priority_from(c: &str) -> Option<Option<PriorityClass>> {
    Some(match c {
        "" => None,
        "e" => Some(PriorityClass::Elderly),
        "d" => Some(PriorityClass::Disabled),
        "p" => Some(PriorityClass::Pregnant),
        _ => return None,
    })
}

/// Encodes a token (its counter and number live in the hash field, not here).
pub fn encode(t: &Token) -> String {
    use std::fmt::Write;
    let mut history = String::with_capacity(t.history.len() * 12);
    for (i, h) in t.history.iter().enumerate() {
        if i > 0 {
            history.push(RS);
        }
        history.push(event_code(h.event));
        push_base36(&mut history, h.at - t.issued_at);
        if h.counter != t.counter {
            let _ = write!(history, ",{}", h.counter);
        }
    }
    let at_counter = if t.at_counter == t.counter { "" } else { &t.at_counter };
    let p = &t.profile;
    let fields: [&str; 15] = [
        if t.repeat_keys.is_empty() { VERSION } else { V3 },
        at_counter,
        status_code(t.status),
        priority_code(t.priority),
        if t.lane_priority { "1" } else { "" },
        &base36(t.issued_at),
        &base36(t.expires_at - t.issued_at),
        t.idempotency_key.as_deref().unwrap_or(""),
        &history,
        &p.name,
        &p.gender,
        &p.year_of_birth.to_string(),
        p.phone.as_deref().unwrap_or(""),
        &p.abha_address,
        p.abha_number.as_deref().unwrap_or(""),
    ];
    let mut out = fields.join(&FS.to_string());
    for (i, &h) in t.repeat_keys.iter().enumerate() {
        out.push(if i == 0 { FS } else { ',' });
        push_base36_u64(&mut out, h);
    }
    out
}

/// Appends `n` in base 36 (digits, then lower-case letters), with a `-` when negative.
fn push_base36(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_base36_u64(out, n.unsigned_abs());
}

fn push_base36_u64(out: &mut String, mut v: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13]; // u64::MAX has 13 base-36 digits
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v % 36) as usize];
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|&b| b as char));
}

fn base36(n: i64) -> String {
    let mut s = String::with_capacity(9);
    push_base36(&mut s, n);
    s
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Decodes a stored token.
pub fn decode(counter: &str, number: u32, raw: &str) -> Result<Token, CorruptRecord> {
    let f: Vec<&str> = raw.split(FS).collect();
    let (radix, fields) = match f[0] {
        VERSION => (36, 15),
        V3 => (36, 16),
        V1 => (10, 15),
        _ => return Err(CorruptRecord("unknown version")),
    };
    if f.len() != fields {
        return Err(CorruptRecord("unexpected field count"));
    }
    // from_str_radix takes a leading '+', which encode never writes: refuse it.
    let num = |s: &str, what| {
        if s.starts_with('+') {
            return Err(CorruptRecord(what));
        }
        i64::from_str_radix(s, radix).map_err(|_| CorruptRecord(what))
    };
    let issued_at = num(f[5], "issued_at")?;
    let validity = num(f[6], "expires_at")?;
    // One allocation per distinct counter name, shared by the token's fields and history.
    let counter: CounterName = counter.into();
    let at_counter: CounterName = if f[1].is_empty() { counter.clone() } else { f[1].into() };
    let mut history = Vec::new();
    if !f[8].is_empty() {
        for h in f[8].split(RS) {
            let mut chars = h.chars();
            let event = chars.next().and_then(event_from).ok_or(CorruptRecord("history event"))?;
            let rest = chars.as_str();
            let (offset, h_counter) = match rest.split_once(',') {
                Some((o, c)) if c == &*at_counter => (o, at_counter.clone()),
                Some((o, c)) => (o, c.into()),
                None => (rest, counter.clone()),
            };
            let offset = num(offset, "history time")?;
            history.push(Transition { event, at: issued_at + offset, counter: h_counter });
        }
    }
    let mut repeat_keys = Vec::new();
    if let Some(keys) = f.get(15) {
        for h in keys.split(',') {
            if h.starts_with('+') {
                return Err(CorruptRecord("repeat key"));
            }
            repeat_keys.push(u64::from_str_radix(h, 36).map_err(|_| CorruptRecord("repeat key"))?);
        }
        // More than a token keeps is not written; keep the latest, as the queue would.
        let extra = repeat_keys.len().saturating_sub(MAX_REPEAT_KEYS);
        repeat_keys.drain(..extra);
    }
    Ok(Token {
        counter,
        number,
        at_counter,
        status: status_from(f[2]).ok_or(CorruptRecord("status"))?,
        priority: priority_from(f[3]).ok_or(CorruptRecord("priority"))?,
        lane_priority: f[4] == "1",
        idempotency_key: opt(f[7]),
        repeat_keys,
        issued_at,
        expires_at: issued_at + validity,
        history,
        profile: Profile {
            name: f[9].to_string(),
            gender: f[10].to_string(),
            year_of_birth: f[11].parse().map_err(|_| CorruptRecord("year_of_birth"))?,
            phone: opt(f[12]),
            abha_address: f[13].to_string(),
            abha_number: opt(f[14]),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Token {
        Token {
            counter: "OPD 1".into(),
            number: 17,
            at_counter: "OPD2".into(),
            status: Status::Called,
            priority: Some(PriorityClass::Pregnant),
            lane_priority: true,
            profile: Profile {
                abha_address: "ravi.kumar@abdm".into(),
                abha_number: Some("91123456789012".into()),
                name: "Ravi Kumar".into(),
                gender: "M".into(),
                year_of_birth: 1990,
                phone: Some("9876543210".into()),
            },
            idempotency_key: Some("4f9c-key".into()),
            repeat_keys: Vec::new(),
            issued_at: 1_763_874_000_123,
            expires_at: 1_763_875_800_123,
            history: vec![
                Transition { event: Event::Issued, at: 1_763_874_000_123, counter: "OPD 1".into() },
                Transition { event: Event::Transferred, at: 1_763_874_100_000, counter: "OPD2".into() },
                Transition { event: Event::Called, at: 1_763_874_200_000, counter: "OPD2".into() },
            ],
        }
    }

    #[test]
    fn round_trip_keeps_everything() {
        let t = sample();
        let raw = encode(&t);
        assert_eq!(decode("OPD 1", 17, &raw).unwrap(), t);
    }

    #[test]
    fn minimal_token_round_trips_and_is_compact() {
        let mut t = sample();
        t.at_counter = t.counter.clone();
        t.priority = None;
        t.lane_priority = false;
        t.idempotency_key = None;
        t.status = Status::Waiting;
        t.history.truncate(1);
        let raw = encode(&t);
        assert!(raw.len() < 100, "{} bytes", raw.len());
        assert_eq!(decode("OPD 1", 17, &raw).unwrap(), t);
    }

    #[test]
    fn times_are_base_36_and_round_trip_at_the_edges() {
        let mut t = sample();
        let raw = encode(&t);
        let f: Vec<&str> = raw.split(FS).collect();
        assert_eq!(f[0], "2");
        assert_eq!(f[5], "mib91czf");
        assert_eq!(i64::from_str_radix(f[5], 36).unwrap(), t.issued_at);
        assert_eq!(f[6], "12kw0", "30 minutes of validity");
        // Zero, negative offsets (a clock stepped back) and the largest times survive.
        for (issued, offset) in [(0, 0), (1_763_874_000_123, -5_000), (i64::MAX / 2, i64::MAX / 2)] {
            t.issued_at = issued;
            t.expires_at = issued + offset.max(0);
            t.history[1].at = issued + offset;
            assert_eq!(decode("OPD 1", 17, &encode(&t)).unwrap(), t, "{issued} {offset}");
        }
    }

    #[test]
    fn version_1_records_still_decode() {
        // Written by the previous release: decimal times.
        let v1 = [
            "1",
            "OPD2",
            "c",
            "p",
            "1",
            "1763874000123",
            "1800000",
            "4f9c-key",
            "i0\u{1e}t99877,OPD2\u{1e}c199877,OPD2",
            "Ravi Kumar",
            "M",
            "1990",
            "9876543210",
            "ravi.kumar@abdm",
            "91123456789012",
        ]
        .join("\u{1f}");
        assert_eq!(decode("OPD 1", 17, &v1).unwrap(), sample());
        // The same text labelled version 2 reads as base 36, so it is a different token:
        // the version decides the radix.
        let as_v2 = v1.replacen('1', "2", 1);
        assert_ne!(decode("OPD 1", 17, &as_v2).map(|t| t.issued_at).ok(), Some(sample().issued_at));
    }

    #[test]
    fn repeat_keys_round_trip_as_version_3_and_other_records_stay_version_2() {
        let mut t = sample();
        let v2 = encode(&t);
        assert!(v2.starts_with("2\u{1f}") && v2.split(FS).count() == 15, "{v2}");
        t.repeat_keys = vec![0, 1, u64::MAX, 0x0123_4567_89ab_cdef];
        let v3 = encode(&t);
        assert!(v3.starts_with("3\u{1f}"), "{v3}");
        assert_eq!(v3.split(FS).nth(15), Some("0,1,3w5e11264sgsf,mf9g063v08f"));
        assert_eq!(decode("OPD 1", 17, &v3).unwrap(), t);
        // Each key costs 14 bytes at most (13 base-36 digits and a separator).
        assert!(v3.len() - v2.len() <= 14 * MAX_REPEAT_KEYS, "{} bytes more", v3.len() - v2.len());
        // Versions and field counts go together.
        assert!(decode("OPD 1", 17, &v3.replacen('3', "2", 1)).is_err(), "a 16th field in version 2");
        assert!(decode("OPD 1", 17, &v2.replacen('2', "3", 1)).is_err(), "version 3 without its field");
        for bad in ["", "1,,2", "+1", "zzzzzzzzzzzzzz", "x!"] {
            let raw = format!("{}{FS}{bad}", v2.replacen('2', "3", 1));
            assert!(decode("OPD 1", 17, &raw).is_err(), "{bad:?}");
        }
        // Too many keys (never written): the latest are kept.
        let many: Vec<String> = (1..=MAX_REPEAT_KEYS as u64 + 2).map(|n| n.to_string()).collect();
        let raw = format!("{}{FS}{}", v2.replacen('2', "3", 1), many.join(","));
        let kept = decode("OPD 1", 17, &raw).unwrap().repeat_keys;
        assert_eq!(kept, (3..=MAX_REPEAT_KEYS as u64 + 2).collect::<Vec<_>>());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode("OPD1", 1, "").is_err());
        assert!(decode("OPD1", 1, "2\u{1f}x").is_err());
        let good = encode(&sample());
        assert!(decode("OPD 1", 17, &good.replacen('2', "3", 1)).is_err(), "unknown version");
        let f5 = good.split(FS).nth(5).unwrap().to_string();
        for bad in ["+".to_string() + &f5, f5.to_uppercase() + "!", String::new()] {
            assert!(decode("OPD 1", 17, &good.replacen(&f5, &bad, 1)).is_err(), "{bad}");
        }
        let raw = encode(&sample()).replacen("\u{1f}c\u{1f}", "\u{1f}?\u{1f}", 1);
        assert!(decode("OPD 1", 17, &raw).is_err());
    }
}
