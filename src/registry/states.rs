//! The 36 states and union territories of India: the only values a facility's `state` may
//! take, so that state labels (metrics, leaderboards) stay a bounded, canonical set.
//! Codes follow ISO 3166-2:IN as revised in 2023 (CG, OD, TS, UK).

/// One state or union territory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub code: &'static str,
    pub name: &'static str,
    /// Older or common spellings accepted on input.
    pub aliases: &'static [&'static str],
}

const fn s(code: &'static str, name: &'static str, aliases: &'static [&'static str]) -> State {
    State { code, name, aliases }
}

pub const STATES: [State; 36] = [
    s("AN", "Andaman and Nicobar Islands", &["Andaman & Nicobar Islands", "Andaman and Nicobar"]),
    s("AP", "Andhra Pradesh", &[]),
    s("AR", "Arunachal Pradesh", &[]),
    s("AS", "Assam", &[]),
    s("BR", "Bihar", &[]),
    s("CH", "Chandigarh", &[]),
    s("CG", "Chhattisgarh", &["CT", "Chattisgarh"]),
    s("DH", "Dadra and Nagar Haveli and Daman and Diu", &["DN", "DD", "Dadra & Nagar Haveli and Daman & Diu"]),
    s("DL", "Delhi", &["NCT of Delhi", "New Delhi"]),
    s("GA", "Goa", &[]),
    s("GJ", "Gujarat", &[]),
    s("HR", "Haryana", &[]),
    s("HP", "Himachal Pradesh", &[]),
    s("JK", "Jammu and Kashmir", &["Jammu & Kashmir"]),
    s("JH", "Jharkhand", &[]),
    s("KA", "Karnataka", &[]),
    s("KL", "Kerala", &[]),
    s("LA", "Ladakh", &[]),
    s("LD", "Lakshadweep", &[]),
    s("MP", "Madhya Pradesh", &[]),
    s("MH", "Maharashtra", &[]),
    s("MN", "Manipur", &[]),
    s("ML", "Meghalaya", &[]),
    s("MZ", "Mizoram", &[]),
    s("NL", "Nagaland", &[]),
    s("OD", "Odisha", &["OR", "Orissa"]),
    s("PY", "Puducherry", &["Pondicherry"]),
    s("PB", "Punjab", &[]),
    s("RJ", "Rajasthan", &[]),
    s("SK", "Sikkim", &[]),
    s("TN", "Tamil Nadu", &[]),
    s("TS", "Telangana", &["TG"]),
    s("TR", "Tripura", &[]),
    s("UP", "Uttar Pradesh", &[]),
    s("UK", "Uttarakhand", &["UT", "Uttaranchal"]),
    s("WB", "West Bengal", &[]),
];

/// Finds a state by code, name or alias, ignoring case and surrounding spaces.
pub fn lookup(input: &str) -> Option<&'static State> {
    let t = input.trim();
    STATES.iter().find(|s| {
        s.code.eq_ignore_ascii_case(t)
            || s.name.eq_ignore_ascii_case(t)
            || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(t))
    })
}

/// Index of a state code in [`STATES`] (for fixed-size metric tables).
pub fn index_of_code(code: &str) -> Option<usize> {
    STATES.iter().position(|s| s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_names_and_aliases_are_unique() {
        let mut seen = HashSet::new();
        for s in STATES {
            assert_eq!(s.code.len(), 2);
            for k in std::iter::once(s.code).chain([s.name]).chain(s.aliases.iter().copied()) {
                assert!(seen.insert(k.to_ascii_lowercase()), "{k} twice");
            }
        }
    }

    #[test]
    fn lookup_accepts_codes_names_and_old_spellings() {
        assert_eq!(lookup("up").unwrap().name, "Uttar Pradesh");
        assert_eq!(lookup(" uttar pradesh ").unwrap().code, "UP");
        assert_eq!(lookup("Orissa").unwrap().code, "OD");
        assert_eq!(lookup("Jammu & Kashmir").unwrap().code, "JK");
        assert!(lookup("Atlantis").is_none());
        assert!(lookup("").is_none());
    }
}
