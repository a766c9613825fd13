//! The stored form of a token: one compact line per token (fields split by the ASCII unit
//! separator), about 100 bytes, so Redis holds a token in well under 200 bytes. Names and
//! ids never contain control characters (refused at the edge), so the separators are safe.
use crate::facility::queue::{CounterName, Event, PriorityClass, Profile, Status, Token, Transition};

const VERSION: &str = "1";
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
        let _ = write!(history, "{}{}", event_code(h.event), h.at - t.issued_at);
        if h.counter != t.counter {
            let _ = write!(history, ",{}", h.counter);
        }
    }
    let at_counter = if t.at_counter == t.counter { "" } else { &t.at_counter };
    let p = &t.profile;
    let fields: [&str; 15] = [
        VERSION,
        at_counter,
        status_code(t.status),
        priority_code(t.priority),
        if t.lane_priority { "1" } else { "" },
        &t.issued_at.to_string(),
        &(t.expires_at - t.issued_at).to_string(),
        t.idempotency_key.as_deref().unwrap_or(""),
        &history,
        &p.name,
        &p.gender,
        &p.year_of_birth.to_string(),
        p.phone.as_deref().unwrap_or(""),
        &p.abha_address,
        p.abha_number.as_deref().unwrap_or(""),
    ];
    fields.join(&FS.to_string())
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Decodes a stored token.
pub fn decode(counter: &str, number: u32, raw: &str) -> Result<Token, CorruptRecord> {
    let f: Vec<&str> = raw.split(FS).collect();
    if f.len() != 15 || f[0] != VERSION {
        return Err(CorruptRecord("unexpected field count or version"));
    }
    let issued_at: i64 = f[5].parse().map_err(|_| CorruptRecord("issued_at"))?;
    let validity: i64 = f[6].parse().map_err(|_| CorruptRecord("expires_at"))?;
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
            let offset: i64 = offset.parse().map_err(|_| CorruptRecord("history time"))?;
            history.push(Transition { event, at: issued_at + offset, counter: h_counter });
        }
    }
    Ok(Token {
        counter,
        number,
        at_counter,
        status: status_from(f[2]).ok_or(CorruptRecord("status"))?,
        priority: priority_from(f[3]).ok_or(CorruptRecord("priority"))?,
        lane_priority: f[4] == "1",
        idempotency_key: opt(f[7]),
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
        assert!(raw.len() < 110, "{} bytes", raw.len());
        assert_eq!(decode("OPD 1", 17, &raw).unwrap(), t);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode("OPD1", 1, "").is_err());
        assert!(decode("OPD1", 1, "2\u{1f}x").is_err());
        let raw = encode(&sample()).replacen("\u{1f}c\u{1f}", "\u{1f}?\u{1f}", 1);
        assert!(decode("OPD 1", 17, &raw).is_err());
    }
}
