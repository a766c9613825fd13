//! The Redis key schema, in one place. Every key of a facility carries the hash tag
//! `{<facility_id>}`, so one facility's keys live in one Redis Cluster slot and its Lua
//! scripts stay single-slot.
//!
//! | key | type | holds | lifetime |
//! |---|---|---|---|
//! | `sg:{F}:info` | string (JSON) | facility registry record | forever |
//! | `sg:{F}:fence` | hash `e`, `n`, `w`, `r`, `o` | the fence: epoch counter (HINCRBY per activation) and the activation's random nonce, compared together by every write; the write sequence of the current owner; the fence (`<e>:<n>`) of the owner that released (stopped normally); the node id of the owner when leases are on (absent otherwise) | forever |
//! | `sg:node:<node id>` | string: the node's advertised base URL | a node's ownership lease: while it lives, other nodes forward requests for the facilities whose fence names the node instead of taking them over | `SCANGW_NODE_LEASE_MS`, renewed by the node's heartbeat, deleted at graceful shutdown |
//! | `sg:{F}:d:<YYYY-MM-DD>:t` | hash `<counter>#<number>` -> token record | the day's tokens ([`super::record`]), patient profile included | expires at the end of the local service day + retention |
//! | `sg:{F}:lbn` | hash `<YYYY-MM-DD>|<kind>` -> count | tokens issued per counter kind and day, cumulative: what the leaderboards must show | a day's field is pruned once applied and two days old |
//! | `sg:{F}:staff` | hash `<key_id>` -> SHA-256 hex | staff key hashes | until revoked |
//! | `sg:facilities` | set | every registered facility id (admin listing, no hash tag) | forever |
//! | `sg:{outbox}:shares` | stream, consumer group `onshare` | protocol shares waiting for their on-share callback (patient data: deleted once delivered or given up) | until delivered |
//! | `sg:{outbox}:seen:<request id>` | string `1` | a protocol share accepted with this request id: a redelivery with an expired bearer is accepted within the grace only for such an id | the redelivery grace + 1 hour |
//! | `lb:{lb}:<period>:<kind>:<scope>` | sorted set member -> tokens | leaderboards ([`leaderboard`]) | daily: leaderboard retention; `all`: forever |
//! | `lb:{lb}:<YYYY-MM-DD>:ap` | hash `<F>|<kind>` -> count | the part of each `sg:{F}:lbn` count already added to the boards | leaderboard retention + 7 days |
//! | `lb:{lb}:dirty` | hash `<F>` -> epoch | facilities whose counts may be ahead of the boards, with the newest activation epoch that marked them | until applied and released |
//!
//! Leaderboards are national, so they cannot share a facility's slot: their keys share the
//! hash tag `{lb}` instead. `<period>` is a service day (`YYYY-MM-DD`) or `all`; `<kind>`
//! is a counter kind (and `all` for the national facility ranking); `<scope>` is `s`
//! (states), `d` (districts), `f` (facilities), `f:d:<district id>` or `f:s:<state code>`
//! (the last also for `<kind>` `all`; it holds the member [`LB_STATE_TOTAL`] too). No script touches
//! both: the fenced WRITE counts into `sg:{F}:lbn`, and the applier
//! ([`crate::leaderboard::applier`]) moves the difference into the boards in a script of
//! the `{lb}` slot, so everything works on Redis Cluster.
//!
//! Facility ids never contain `{`, `}` or `:` (validated at the edge), so keys are unambiguous.
use jiff::civil::Date;

pub const FACILITY_SET: &str = "sg:facilities";

/// A node's ownership lease (see the schema table). Node ids are 16 hex digits, which the
/// node makes up itself at start.
pub fn node(node_id: &str) -> String {
    format!("sg:node:{node_id}")
}

/// The on-share outbox stream and its consumer group (one slot of its own).
pub const OUTBOX: &str = "sg:{outbox}:shares";
pub const OUTBOX_GROUP: &str = "onshare";

/// Marks a share's request id as accepted (see the schema table). Request ids are UUIDs
/// (validated at the edge), so the key is unambiguous.
pub fn share_seen(request_id: &str) -> String {
    format!("sg:{{outbox}}:seen:{request_id}")
}

/// The keys every fenced write of a facility names, built once per facility actor rather
/// than formatted again for each write; the day's token hash is [`FacilityKeys::day`].
#[derive(Debug)]
pub struct FacilityKeys {
    pub facility: String,
    pub fence: String,
    pub lb_counts: String,
}

impl FacilityKeys {
    pub fn new(facility: &str) -> Self {
        FacilityKeys { facility: facility.to_string(), fence: fence(facility), lb_counts: lb_counts(facility) }
    }

    pub fn day(&self, day: Date) -> String {
        day_tokens(&self.facility, day)
    }
}

pub fn info(facility: &str) -> String {
    format!("sg:{{{facility}}}:info")
}

pub fn fence(facility: &str) -> String {
    format!("sg:{{{facility}}}:fence")
}

pub fn day_tokens(facility: &str, day: Date) -> String {
    format!("sg:{{{facility}}}:d:{day}:t")
}

/// The facility's cumulative leaderboard counts (field [`lb_count_field`]).
pub fn lb_counts(facility: &str) -> String {
    format!("sg:{{{facility}}}:lbn")
}

/// Field of a leaderboard count: service day and counter kind.
pub fn lb_count_field(day: Date, kind: &str) -> String {
    format!("{day}|{kind}")
}

/// Splits a leaderboard count field back into (day, kind).
pub fn parse_lb_count_field(field: &str) -> Option<(Date, &str)> {
    let (day, kind) = field.split_once('|')?;
    Some((day.parse().ok()?, kind))
}

/// Facilities whose leaderboard counts may not be applied yet (`{lb}` slot).
pub const LB_DIRTY: &str = "lb:{lb}:dirty";

/// Counts already applied to the boards for one service day (`{lb}` slot), field
/// [`lb_applied_field`].
pub fn lb_applied(day: Date) -> String {
    format!("lb:{{lb}}:{day}:ap")
}

pub fn lb_applied_field(facility: &str, kind: &str) -> String {
    format!("{facility}|{kind}")
}

pub fn staff_keys(facility: &str) -> String {
    format!("sg:{{{facility}}}:staff")
}

/// Field of a token in its day hash.
pub fn token_field(counter: &str, number: u32) -> String {
    format!("{counter}#{number}")
}

/// Splits a token field back into (counter, number).
pub fn parse_token_field(field: &str) -> Option<(&str, u32)> {
    let (counter, number) = field.rsplit_once('#')?;
    Some((counter, number.parse().ok()?))
}

/// Which ranking of a leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbScope<'a> {
    States,
    Districts,
    Facilities,
    /// Facilities of one district (district id `<state code>/<name>`).
    FacilitiesInDistrict(&'a str),
    /// Facilities of one state (state code): what a state's facility ranking reads, instead
    /// of merging every district of the state per query.
    FacilitiesInState(&'a str),
}

/// A member of every `f:s:<state>` ranking that is no facility (ids start with a letter or
/// digit): the tokens the ranking was built from, so a reader can tell it is complete (see
/// [`crate::persistence::lbread`]).
pub const LB_STATE_TOTAL: &str = "*";

/// A leaderboard key: `period` is a service day or `all`, `kind` a counter kind (or `all`,
/// kept for the national facility ranking only; see [`crate::leaderboard`]).
pub fn leaderboard(period: &str, kind: &str, scope: LbScope<'_>) -> String {
    match scope {
        LbScope::States => format!("lb:{{lb}}:{period}:{kind}:s"),
        LbScope::Districts => format!("lb:{{lb}}:{period}:{kind}:d"),
        LbScope::Facilities => format!("lb:{{lb}}:{period}:{kind}:f"),
        LbScope::FacilitiesInDistrict(d) => format!("lb:{{lb}}:{period}:{kind}:f:d:{d}"),
        LbScope::FacilitiesInState(s) => format!("lb:{{lb}}:{period}:{kind}:f:s:{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaderboard_keys_share_one_hash_tag() {
        let k = leaderboard("2026-11-23", "opd", LbScope::FacilitiesInDistrict("KA/Mysuru"));
        assert_eq!(k, "lb:{lb}:2026-11-23:opd:f:d:KA/Mysuru");
        assert_eq!(leaderboard("all", "opd", LbScope::States), "lb:{lb}:all:opd:s");
        assert_eq!(leaderboard("all", "all", LbScope::FacilitiesInState("KA")), "lb:{lb}:all:all:f:s:KA");
        let d: Date = "2026-11-23".parse().unwrap();
        for k in [LB_DIRTY.to_string(), lb_applied(d)] {
            assert!(k.starts_with("lb:{lb}:"), "{k}");
        }
        assert_eq!(parse_lb_count_field(&lb_count_field(d, "opd")), Some((d, "opd")));
        assert_eq!(parse_lb_count_field("junk"), None);
    }

    #[test]
    fn keys_share_the_facility_hash_tag() {
        let d: Date = "2026-11-23".parse().unwrap();
        for k in [info("IN01"), fence("IN01"), day_tokens("IN01", d), lb_counts("IN01"), staff_keys("IN01")] {
            assert!(k.starts_with("sg:{IN01}:"), "{k}");
        }
        assert_eq!(day_tokens("IN01", d), "sg:{IN01}:d:2026-11-23:t");
    }

    #[test]
    fn cached_facility_keys_are_the_schema_keys() {
        let d: Date = "2026-11-23".parse().unwrap();
        let k = FacilityKeys::new("IN01");
        assert_eq!(
            [k.facility.as_str(), &k.fence, &k.lb_counts, &k.day(d)],
            ["IN01", &fence("IN01"), &lb_counts("IN01"), &day_tokens("IN01", d)]
        );
    }

    #[test]
    fn token_field_round_trips_counter_ids_with_spaces() {
        let f = token_field("OPD 1-a", 17);
        assert_eq!(parse_token_field(&f), Some(("OPD 1-a", 17)));
        assert_eq!(parse_token_field("nonsense"), None);
    }
}
