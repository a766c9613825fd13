//! Field rules for scans (ABHA address and number, gender, year of birth, phone, names,
//! Idempotency-Key), turning a request into a normalised queue input.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::facility::patient_keys::PatientHasher;
use crate::facility::queue::{PriorityClass, Profile, ScanInput};
use crate::registry::{field_error, valid_counter_id, valid_facility_id, FieldError};

// Serialize: a protocol share's scan goes to the facility's owner node as it was read.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientIn {
    /// ABHA address, `name@abdm` (or `@sbx` in the sandbox).
    pub abha_address: String,
    /// 14 digits, with or without dashes (`91-1234-5678-9012`). Optional: an invalid one is
    /// dropped (and counted), never a reason to refuse the scan.
    pub abha_number: Option<String>,
    pub name: String,
    /// One of M F O D T U.
    pub gender: String,
    pub year_of_birth: u16,
    /// 10 digits, or `+<country code>` and 10 digits (`+919800083232`, `+91-98000 83232`);
    /// stored as 10 digits for India. Optional: an invalid one is dropped (and counted), never
    /// a reason to refuse the scan.
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    pub facility_id: String,
    pub counter_id: String,
    pub priority: Option<PriorityClass>,
    pub patient: PatientIn,
}

pub const MAX_NAME_CHARS: usize = 99;

// The validators take the decoded string and normalise it in place: every scan passes
// five of them, and a copy each was a tenth of a scan's allocations.

/// `v` without leading and trailing whitespace, in its own buffer.
fn trimmed(mut v: String) -> String {
    let end = v.trim_end().len();
    v.truncate(end);
    let start = v.len() - v.trim_start().len();
    v.drain(..start);
    v
}

/// An ABHA address, stored lower-case: `<local>@abdm` (or `@sbx`, the sandbox). NHA's
/// protocol documentation gives the local part as `^[a-zA-Z0-9][a-zA-Z0-9_.\-!]+[a-zA-Z0-9]`
/// (tests/fixtures/protocol/README.md cites it), so `-` and `!` are allowed inside it; this
/// rule also keeps what the gateway accepted before (`_` at either end), since a switch
/// may still carry older addresses: 3-64 letters, digits, `_ . - !`, beginning and ending
/// with a letter, digit or `_`.
pub fn abha_address(v: String) -> Result<String, FieldError> {
    let mut v = trimmed(v);
    v.make_ascii_lowercase();
    let bad = || field_error("patient.abha_address", "must look like name@abdm (or @sbx)");
    let (local, domain) = v.rsplit_once('@').ok_or_else(bad)?;
    if !matches!(domain, "abdm" | "sbx") {
        return Err(bad());
    }
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '!');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !(3..=64).contains(&local.len())
        || !local.chars().all(inner)
        || !edge(local.chars().next())
        || !edge(local.chars().last())
    {
        return Err(bad());
    }
    Ok(v)
}

pub fn abha_number(mut v: String) -> Result<String, FieldError> {
    v.retain(|c| c != '-' && c != ' ');
    if v.len() != 14 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field_error("patient.abha_number", "must be 14 digits, with or without dashes"));
    }
    Ok(v)
}

pub fn name(v: String) -> Result<String, FieldError> {
    let t = trimmed(v);
    if t.chars().any(char::is_control) {
        return Err(field_error("patient.name", "must not contain control characters"));
    }
    let n = t.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(field_error("patient.name", "must be 1 to 99 characters"));
    }
    Ok(t)
}

pub fn gender(v: String) -> Result<String, FieldError> {
    let mut g = trimmed(v);
    g.make_ascii_uppercase();
    if matches!(g.as_str(), "M" | "F" | "O" | "D" | "T" | "U") {
        Ok(g)
    } else {
        Err(field_error("patient.gender", "must be one of M F O D T U"))
    }
}

pub fn year_of_birth(y: u16, current_year: i16) -> Result<u16, FieldError> {
    if y < 1900 || i32::from(y) > i32::from(current_year) {
        return Err(field_error("patient.year_of_birth", "must be between 1900 and the current year"));
    }
    Ok(y)
}

/// A phone number. NHA's pattern is `^(\+\d{1,3}[- ]?)?\d{10}$` (the v1.0 schema's example is
/// `+919800083232`). Spaces and `-` anywhere are ignored. An Indian number is stored as its
/// 10 digits, whether it came bare, as `+91…`, `91…` (12 digits) or `0…` (11 digits); a
/// number with another country code is stored in E.164 form (`+<code><10 digits>`), so it
/// is neither lost nor mistaken for an Indian one.
pub fn phone(mut v: String) -> Result<String, FieldError> {
    v.retain(|c| c != ' ' && c != '-');
    let bad = || field_error("patient.phone", "must be 10 digits, optionally after a +country code");
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = v.strip_prefix('+') {
        if !digits(rest) || !(11..=13).contains(&rest.len()) {
            return Err(bad());
        }
        let (code, national) = rest.split_at(rest.len() - 10);
        return Ok(if code == "91" { national.to_string() } else { v });
    }
    if !digits(&v) {
        return Err(bad());
    }
    match v.len() {
        10 => Ok(v),
        12 if v.starts_with("91") => Ok(v.split_off(2)),
        11 if v.starts_with('0') => Ok(v.split_off(1)),
        _ => Err(bad()),
    }
}

/// An optional field: normalised by `rule`, or, when it breaks the rule, dropped and counted
/// in `scangw_profile_fields_dropped_total{field}`. A field the scan does not need must
/// never cost the patient the token.
fn optional(v: Option<String>, field: &'static str, rule: fn(String) -> Result<String, FieldError>) -> Option<String> {
    let v = v.filter(|s| !s.trim().is_empty())?;
    match rule(v) {
        Ok(v) => Some(v),
        Err(_) => {
            crate::telemetry::metrics::Metrics::profile_field_dropped(field);
            None
        }
    }
}

pub fn idempotency_key(v: &str) -> Result<String, FieldError> {
    if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(field_error("Idempotency-Key", "must be 1-128 visible ASCII characters"));
    }
    Ok(v.to_string())
}

impl ScanRequest {
    /// Validates and normalises; returns the facility id and the queue input.
    pub fn into_input(
        self,
        hasher: &PatientHasher,
        current_year: i16,
        idem: Option<&str>,
    ) -> Result<(String, ScanInput), FieldError> {
        if !valid_facility_id(&self.facility_id) {
            return Err(field_error("facility_id", "must be 2-64 letters, digits, '-' or '_'"));
        }
        if !valid_counter_id(&self.counter_id) {
            return Err(field_error("counter_id", "must be 1-250 letters, digits or spaces, with . - _ inside"));
        }
        let p = self.patient;
        let profile = Profile {
            abha_address: abha_address(p.abha_address)?,
            abha_number: optional(p.abha_number, "abha_number", abha_number),
            name: name(p.name)?,
            gender: gender(p.gender)?,
            year_of_birth: year_of_birth(p.year_of_birth, current_year)?,
            phone: optional(p.phone, "phone", phone),
        };
        let idempotency_key = idem.map(idempotency_key).transpose()?;
        Ok((
            self.facility_id,
            ScanInput {
                counter: self.counter_id,
                priority: self.priority,
                patient: hasher.keys(&profile),
                profile,
                idempotency_key,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_good_values() {
        let s = |v: &str| v.to_string();
        assert_eq!(abha_address(s(" Ravi.K@ABDM ")).unwrap(), "ravi.k@abdm");
        assert_eq!(abha_address(s("\u{3000}\tRavi_K@Sbx\n")).unwrap(), "ravi_k@sbx");
        assert_eq!(abha_address(s("ravi_k@sbx")).unwrap(), "ravi_k@sbx");
        assert_eq!(abha_number(s("91-1234-5678-9012")).unwrap(), "91123456789012");
        assert_eq!(abha_number(s(" 91 1234-5678 9012 ")).unwrap(), "91123456789012");
        assert_eq!(gender(s(" f\t")).unwrap(), "F");
        assert_eq!(phone(s("98765 43210")).unwrap(), "9876543210");
        assert_eq!(phone(s("-98765-43210-")).unwrap(), "9876543210");
        // NHA's pattern `^(\+\d{1,3}[- ]?)?\d{10}$`; the v1.0 schema's example `+919800083232`.
        assert_eq!(phone(s("+919800083232")).unwrap(), "9800083232");
        assert_eq!(phone(s("+91-9800083232")).unwrap(), "9800083232");
        assert_eq!(phone(s("+91 9800083232")).unwrap(), "9800083232");
        assert_eq!(phone(s("919800083232")).unwrap(), "9800083232");
        assert_eq!(phone(s("09800083232")).unwrap(), "9800083232");
        assert_eq!(phone(s("+1 4155550123")).unwrap(), "+14155550123");
        assert_eq!(phone(s("+880-1712345678")).unwrap(), "+8801712345678");
        // The protocol documentation's pattern `^[a-zA-Z0-9][a-zA-Z0-9_.\-!]+[a-zA-Z0-9]@(abdm|sbx)$`.
        assert_eq!(abha_address(s("Ravi-Kumar@abdm")).unwrap(), "ravi-kumar@abdm");
        assert_eq!(abha_address(s("ravi.k-1990!x@sbx")).unwrap(), "ravi.k-1990!x@sbx");
        assert_eq!(abha_address(s("91123456789012@abdm")).unwrap(), "91123456789012@abdm");
        assert_eq!(abha_address(s("_ravi_@abdm")).unwrap(), "_ravi_@abdm");
        assert_eq!(name(s("  Ravi  Kumar ")).unwrap(), "Ravi  Kumar");
        assert_eq!(name(s("\u{a0}Ravi Kumar\u{2003}")).unwrap(), "Ravi Kumar");
        assert_eq!(name(s("\u{93b}\u{935}\u{93f}")).unwrap(), "\u{93b}\u{935}\u{93f}");
    }

    #[test]
    fn refuses_bad_values_with_the_field_name() {
        let s = |v: &str| v.to_string();
        let cases: Vec<(Result<String, FieldError>, &str)> = vec![
            (abha_address(s("ravi@gmail.com")), "patient.abha_address"),
            (abha_address(s("@abdm")), "patient.abha_address"),
            (abha_address(s("r a@abdm")), "patient.abha_address"),
            (abha_number(s("1234")), "patient.abha_number"),
            (abha_number(s("91-1234-5678-901x")), "patient.abha_number"),
            (name(s("")), "patient.name"),
            (name(s(" \t ")), "patient.name"),
            (name(s("a\u{7}b")), "patient.name"),
            (name("a".repeat(100)), "patient.name"),
            (gender(s("X")), "patient.gender"),
            (gender(s("")), "patient.gender"),
            (phone(s("12345")), "patient.phone"),
            (phone(s("+9198000832")), "patient.phone"),
            (phone(s("+12345678901234")), "patient.phone"),
            (phone(s("+")), "patient.phone"),
            (phone(s("819800083232")), "patient.phone"),
            (phone(s("9800O83232")), "patient.phone"),
            (abha_address(s("-ravi@abdm")), "patient.abha_address"),
            (abha_address(s("ravi-@abdm")), "patient.abha_address"),
            (abha_address(s("ravi!@abdm")), "patient.abha_address"),
            (abha_address(s(".ravi@abdm")), "patient.abha_address"),
            (abha_address(s("ra@abdm")), "patient.abha_address"),
            (abha_address(s("ravi@ndhm")), "patient.abha_address"),
            (abha_address(s("ra#vi@abdm")), "patient.abha_address"),
            (idempotency_key("has space"), "Idempotency-Key"),
        ];
        for (r, field) in cases {
            assert_eq!(r.unwrap_err().field, field);
        }
        assert!(year_of_birth(1899, 2026).is_err());
        assert!(year_of_birth(2027, 2026).is_err());
        assert!(year_of_birth(2026, 2026).is_ok());
    }

    proptest! {
        // Any string either validates to a normalised value that validates again to itself,
        // or is refused; validation never panics.
        #[test]
        fn validation_is_total_and_idempotent(s in "\\PC{0,80}") {
            let idem = |v: String| idempotency_key(&v);
            let validators: [&dyn Fn(String) -> Result<String, FieldError>; 6] =
                [&abha_address, &abha_number, &name, &gender, &phone, &idem];
            for f in validators {
                if let Ok(v) = f(s.clone()) {
                    prop_assert_eq!(f(v.clone()).unwrap(), v);
                }
            }
            // In-place trimming keeps exactly what `str::trim` keeps.
            prop_assert_eq!(trimmed(s.clone()), s.trim());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = crate::ingress::body::decode::<ScanRequest>(&bytes);
        }
    }
}
