//! The facility registry: facility records (name, state, district, time zone, validity,
//! counters) with their validation rules, bulk import (CSV / NDJSON) and staff keys.
pub mod import;
pub mod staff;
pub mod states;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::facility::queue::{Counter, QueueConfig};

/// A facility as sent by an admin (PUT body, or one import row with `facility_id`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FacilitySpec {
    pub name: String,
    pub state: String,
    pub district: String,
    pub timezone: Option<String>,
    pub token_validity_s: Option<u64>,
    pub counters: Vec<Counter>,
}

/// The stored registry record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FacilityInfo {
    pub facility_id: String,
    pub name: String,
    pub state: String,
    pub district: String,
    pub timezone: String,
    pub token_validity_s: u64,
    pub counters: Vec<Counter>,
}

/// A rule a field broke: the field path and a message that never echoes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: &'static str,
}

pub fn field_error(field: impl Into<String>, message: &'static str) -> FieldError {
    FieldError { field: field.into(), message }
}

pub const MAX_COUNTERS: usize = 200;
pub const MIN_VALIDITY_S: u64 = 60;
pub const MAX_VALIDITY_S: u64 = 24 * 3600;

/// HFR-style facility id: 2-64 chars of letters, digits, `-` and `_`, starting alphanumeric.
pub fn valid_facility_id(id: &str) -> bool {
    let b = id.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Counter id: 1-250 chars of letters, digits and spaces, with `.`, `-`, `_` allowed inside.
pub fn valid_counter_id(id: &str) -> bool {
    let n = id.chars().count();
    if !(1..=250).contains(&n) {
        return false;
    }
    let inner = |c: char| matches!(c, '.' | '-' | '_');
    let ok = |c: char| c.is_alphanumeric() || c == ' ' || inner(c);
    let first = id.chars().next().unwrap_or(' ');
    let last = id.chars().last().unwrap_or(' ');
    id.chars().all(ok) && !inner(first) && !inner(last) && first != ' ' && last != ' '
}

/// Free-text registry names: trimmed, 1-200 chars, no control characters.
fn clean_text(field: &str, v: &str) -> Result<String, FieldError> {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > 200 {
        return Err(field_error(field, "must be 1 to 200 characters"));
    }
    if t.chars().any(char::is_control) {
        return Err(field_error(field, "must not contain control characters"));
    }
    Ok(t.to_string())
}

impl FacilitySpec {
    pub fn validate(
        self,
        facility_id: &str,
        default_tz: &str,
        default_validity_s: u64,
    ) -> Result<FacilityInfo, FieldError> {
        if !valid_facility_id(facility_id) {
            return Err(field_error("facility_id", "must be 2-64 letters, digits, '-' or '_'"));
        }
        let timezone = self.timezone.unwrap_or_else(|| default_tz.to_string());
        if jiff::tz::TimeZone::get(&timezone).is_err() {
            return Err(field_error("timezone", "unknown IANA time zone"));
        }
        let token_validity_s = self.token_validity_s.unwrap_or(default_validity_s);
        if !(MIN_VALIDITY_S..=MAX_VALIDITY_S).contains(&token_validity_s) {
            return Err(field_error("token_validity_s", "must be between 60 and 86400"));
        }
        if self.counters.is_empty() || self.counters.len() > MAX_COUNTERS {
            return Err(field_error("counters", "must list 1 to 200 counters"));
        }
        let mut seen = HashSet::new();
        for (i, c) in self.counters.iter().enumerate() {
            if !valid_counter_id(&c.id) {
                return Err(field_error(
                    format!("counters[{i}].id"),
                    "must be 1-250 letters, digits or spaces, with . - _ inside",
                ));
            }
            if c.id == facility_id {
                return Err(field_error(format!("counters[{i}].id"), "must not be the facility id"));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(field_error(format!("counters[{i}].id"), "is listed twice"));
            }
        }
        Ok(FacilityInfo {
            facility_id: facility_id.to_string(),
            name: clean_text("name", &self.name)?,
            state: states::lookup(&clean_text("state", &self.state)?)
                .ok_or_else(|| {
                    field_error("state", "must be one of the 36 states and union territories (name or code)")
                })?
                .name
                .to_string(),
            district: clean_text("district", &self.district)?,
            timezone,
            token_validity_s,
            counters: self.counters,
        })
    }
}

impl FacilityInfo {
    pub fn queue_config(&self, max_priority_streak: u32, default_service_s: u64) -> QueueConfig {
        QueueConfig {
            tz: jiff::tz::TimeZone::get(&self.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
            token_validity_s: self.token_validity_s,
            max_priority_streak,
            default_service_s,
            counters: self.counters.clone(),
        }
    }

    /// The state's code, or `unknown` for a record stored before states were validated.
    pub fn state_code(&self) -> &'static str {
        // Stored records hold the canonical name: an exact match first keeps this cheap on
        // the scan path; the lenient lookup is for records stored before validation.
        states::STATES
            .iter()
            .find(|s| s.name == self.state)
            .or_else(|| states::lookup(&self.state))
            .map_or("unknown", |s| s.code)
    }

    /// Districts are named within a state: `<state code>/<district>` is unique nationally.
    pub fn district_id(&self) -> String {
        format!("{}/{}", self.state_code(), self.district)
    }

    /// Where this facility's tokens count on the national boards.
    pub fn board_owner(&self) -> crate::persistence::writer::BoardOwner {
        crate::persistence::writer::BoardOwner { state: self.state_code(), district: self.district_id() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facility::queue::CounterKind;

    fn spec() -> FacilitySpec {
        FacilitySpec {
            name: "  AIIMS New Delhi ".into(),
            state: "Delhi".into(),
            district: "New Delhi".into(),
            timezone: None,
            token_validity_s: None,
            counters: vec![Counter { id: "OPD1".into(), kind: CounterKind::Opd }],
        }
    }

    #[test]
    fn defaults_and_trimming() {
        let f = spec().validate("IN0410000183", "Asia/Kolkata", 1800).unwrap();
        assert_eq!(f.name, "AIIMS New Delhi");
        assert_eq!(f.timezone, "Asia/Kolkata");
        assert_eq!(f.token_validity_s, 1800);
    }

    #[test]
    fn counter_id_rules() {
        for ok in ["OPD1", "Eye OPD", "OPD-Paeds", "a", "x.y_z", &"a".repeat(250)] {
            assert!(valid_counter_id(ok), "{ok}");
        }
        for bad in ["", " OPD", "OPD ", "-OPD", "OPD_", "OP#D", "OP\u{7}D", "OP:D", &"a".repeat(251)] {
            assert!(!valid_counter_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn facility_rules() {
        assert!(valid_facility_id("IN0410000183"));
        for bad in ["", "I", "IN{x}", "IN:1", "-IN1", &"A".repeat(65)] {
            assert!(!valid_facility_id(bad), "{bad}");
        }
        let mut s = spec();
        s.counters.push(Counter { id: "OPD1".into(), kind: CounterKind::Lab });
        assert_eq!(s.validate("IN01", "Asia/Kolkata", 1800).unwrap_err().field, "counters[1].id");
        let mut s = spec();
        s.timezone = Some("Mars/Base".into());
        assert_eq!(s.validate("IN01", "Asia/Kolkata", 1800).unwrap_err().field, "timezone");
        let mut s = spec();
        s.token_validity_s = Some(5);
        assert_eq!(s.validate("IN01", "Asia/Kolkata", 1800).unwrap_err().field, "token_validity_s");
        let mut s = spec();
        s.state = "Atlantis".into();
        assert_eq!(s.validate("IN01", "Asia/Kolkata", 1800).unwrap_err().field, "state");
        let mut s = spec();
        s.state = "dl".into();
        let f = s.validate("IN01", "Asia/Kolkata", 1800).unwrap();
        assert_eq!((f.state.as_str(), f.state_code(), f.district_id()), ("Delhi", "DL", "DL/New Delhi".to_string()));
        let mut s = spec();
        s.name = "a\u{0}b".into();
        assert_eq!(s.validate("IN01", "Asia/Kolkata", 1800).unwrap_err().field, "name");
    }
}
