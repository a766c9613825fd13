//! National leaderboards: which sorted sets a facility's token counts feed (moved there by
//! the [`applier`], exactly), how a ranking is read back with names and shares, and the live
//! feed ([`feed`]) behind the page, the SSE stream and the Prometheus top-N gauges.
pub mod applier;
pub mod feed;

use std::collections::BTreeMap;

use jiff::civil::Date;
use serde::Serialize;
use utoipa::ToSchema;

use crate::facility::queue::CounterKind;
use crate::persistence::keys::{self, LbScope};
use crate::persistence::{Store, StoreError};
use crate::registry::states::{self, State};
use crate::registry::FacilityInfo;

/// The boards one (facility, day, counter kind) count feeds, in the order the apply script
/// expects: per period (the service day, then all-time) the kind's state, district, facility
/// and facility-in-district rankings, the all-kinds national facility ranking, then the
/// kind's and the all-kinds facility rankings of the state (the facility rankings are too
/// big to merge per read: a state's is thousands of facilities over dozens of districts).
/// The other views (all kinds of the small rankings, a state's districts) are merged from
/// these at read time. `district` is a district id, `<state code>/<name>`.
pub fn board_keys(district: &str, day: Date, kind: &str) -> Vec<String> {
    let day = day.to_string();
    let state = district.split_once('/').map_or(district, |(s, _)| s);
    let mut out = Vec::with_capacity(2 * BOARDS_PER_PERIOD);
    for period in [day.as_str(), "all"] {
        out.push(keys::leaderboard(period, kind, LbScope::States));
        out.push(keys::leaderboard(period, kind, LbScope::Districts));
        out.push(keys::leaderboard(period, kind, LbScope::Facilities));
        out.push(keys::leaderboard(period, kind, LbScope::FacilitiesInDistrict(district)));
        out.push(keys::leaderboard(period, "all", LbScope::Facilities));
        out.push(keys::leaderboard(period, kind, LbScope::FacilitiesInState(state)));
        out.push(keys::leaderboard(period, "all", LbScope::FacilitiesInState(state)));
    }
    out
}

/// Rankings one count feeds per period (see [`board_keys`]).
pub const BOARDS_PER_PERIOD: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Board {
    States,
    Districts,
    Facilities,
}

impl Board {
    pub fn parse(s: &str) -> Option<Board> {
        match s {
            "states" => Some(Board::States),
            "districts" => Some(Board::Districts),
            "facilities" => Some(Board::Facilities),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day(Date),
    All,
}

impl Period {
    pub fn key_part(&self) -> String {
        match self {
            Period::Day(d) => d.to_string(),
            Period::All => "all".into(),
        }
    }
}

/// A validated leaderboard question.
#[derive(Debug, Clone)]
pub struct Query {
    pub board: Board,
    pub period: Period,
    pub state: Option<&'static State>,
    /// District name within `state`.
    pub district: Option<String>,
    pub kind: Option<CounterKind>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Row {
    /// 1-based; equal counts share a rank (1, 2, 2, 4).
    pub rank: u32,
    /// State code, district id (`<state>/<district>`) or facility id.
    pub id: String,
    pub name: String,
    pub state: String,
    pub district: Option<String>,
    pub tokens: u64,
    /// Fraction of the scope's tokens (the filter's state, district or the nation).
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Ranking {
    pub board: Board,
    /// `YYYY-MM-DD` (service day) or `all`.
    pub date: String,
    pub counter_kind: String,
    pub state: Option<String>,
    pub district: Option<String>,
    /// Tokens in the scope the shares are taken of.
    pub total: u64,
    pub rows: Vec<Row>,
}

fn count(score: f64) -> u64 {
    score.max(0.0).round() as u64
}

/// Competition ranks over rows already sorted by tokens, highest first.
fn rank(rows: &mut [Row], total: u64) {
    let mut prev: Option<(u64, u32)> = None;
    for (i, r) in rows.iter_mut().enumerate() {
        r.rank = match prev {
            Some((t, rank)) if t == r.tokens => rank,
            _ => i as u32 + 1,
        };
        prev = Some((r.tokens, r.rank));
        r.share = if total == 0 { 0.0 } else { (r.tokens as f64 / total as f64 * 1e6).round() / 1e6 };
    }
}

/// Sorts by tokens (highest first), then id, so ties read the same every time.
fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.id.cmp(&b.id)));
}

fn state_row(s: &State, tokens: u64) -> Row {
    Row { rank: 0, id: s.code.into(), name: s.name.into(), state: s.code.into(), district: None, tokens, share: 0.0 }
}

fn district_row(id: &str, tokens: u64) -> Row {
    let (state, name) = id.split_once('/').unwrap_or(("unknown", id));
    Row {
        rank: 0,
        id: id.into(),
        name: name.into(),
        state: state.into(),
        district: Some(name.into()),
        tokens,
        share: 0.0,
    }
}

/// Counter kinds a query covers: one, or all four (merged).
fn kinds(q: &Query) -> Vec<&'static str> {
    match q.kind {
        Some(k) => vec![k.as_str()],
        None => CounterKind::ALL.iter().map(|k| k.as_str()).collect(),
    }
}

/// Members and counts of several sorted sets, summed per member.
async fn merged(store: &Store, keys: &[String]) -> Result<BTreeMap<String, u64>, StoreError> {
    Ok(store.union(keys).await?.into_iter().map(|(m, s)| (m, count(s))).collect())
}

/// National tokens of a period over the given kinds.
async fn national(store: &Store, period: &str, kinds: &[&str]) -> Result<u64, StoreError> {
    let keys: Vec<String> = kinds.iter().map(|k| keys::leaderboard(period, k, LbScope::States)).collect();
    Ok(merged(store, &keys).await?.values().sum())
}

/// Reads one ranking from Redis.
pub async fn read(store: &Store, q: &Query) -> Result<Ranking, StoreError> {
    let period = q.period.key_part();
    let kinds = kinds(q);
    let per_kind =
        |scope: LbScope<'_>| -> Vec<String> { kinds.iter().map(|k| keys::leaderboard(&period, k, scope)).collect() };
    let district_id = match (q.state, &q.district) {
        (Some(s), Some(d)) => Some(format!("{}/{}", s.code, d)),
        _ => None,
    };
    let prefix = q.state.map(|s| format!("{}/", s.code));
    let (mut rows, total): (Vec<Row>, u64) = match q.board {
        Board::States => {
            let found = merged(store, &per_kind(LbScope::States)).await?;
            // Every state is listed, those without tokens last: who lags matters too.
            let rows = states::STATES.iter().map(|s| state_row(s, found.get(s.code).copied().unwrap_or(0))).collect();
            (rows, found.values().sum())
        }
        Board::Districts => {
            let found = merged(store, &per_kind(LbScope::Districts)).await?;
            let rows: Vec<Row> = found
                .iter()
                .filter(|(id, _)| prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str())))
                .map(|(id, n)| district_row(id, *n))
                .collect();
            let total = match q.state {
                Some(_) => rows.iter().map(|r| r.tokens).sum(),
                None => found.values().sum(),
            };
            (rows, total)
        }
        Board::Facilities => {
            let (ranked, total): (Vec<(String, u64)>, u64) = match (&district_id, &prefix) {
                (Some(d), _) => {
                    let found = merged(store, &per_kind(LbScope::FacilitiesInDistrict(d))).await?;
                    let total = found.values().sum();
                    (found.into_iter().collect(), total)
                }
                (None, Some(_)) => {
                    // A state's facilities: the state's own ranking, top rows only (merging
                    // its districts per read cost every facility of the state).
                    let state = q.state.map_or("", |s| s.code);
                    let top = store.state_top(&period, &kinds, state, q.limit).await?;
                    (top.rows, top.total)
                }
                (None, None) => {
                    let kind = q.kind.map_or("all", |k| k.as_str());
                    // Exact at the cut too: tied rows in id order, as `sort` orders them.
                    let top = store.top_exact(&keys::leaderboard(&period, kind, LbScope::Facilities), q.limit).await?;
                    let total = national(store, &period, &kinds).await?;
                    (top, total)
                }
            };
            let mut ranked = ranked;
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            ranked.truncate(q.limit);
            let ids: Vec<String> = ranked.iter().map(|(m, _)| m.clone()).collect();
            let infos = store.get_infos(&ids).await?;
            let rows = ranked
                .into_iter()
                .zip(infos)
                .map(|((id, tokens), info)| {
                    let info = info.and_then(|j| serde_json::from_str::<FacilityInfo>(&j).ok());
                    Row {
                        rank: 0,
                        name: info.as_ref().map_or_else(|| id.clone(), |i| i.name.clone()),
                        state: info.as_ref().map_or("unknown", |i| i.state_code()).to_string(),
                        district: info.as_ref().map(|i| i.district.clone()),
                        id,
                        tokens,
                        share: 0.0,
                    }
                })
                .collect();
            (rows, total)
        }
    };
    sort(&mut rows);
    rows.truncate(q.limit);
    rank(&mut rows, total);
    Ok(Ranking {
        board: q.board,
        date: period,
        counter_kind: q.kind.map_or("all", |k| k.as_str()).to_string(),
        state: q.state.map(|s| s.code.to_string()),
        district: q.district.clone(),
        total,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facility::queue::Counter;

    fn info() -> FacilityInfo {
        FacilityInfo {
            facility_id: "IN2910005582".into(),
            name: "Vanivilas".into(),
            state: "Karnataka".into(),
            district: "Mysuru".into(),
            timezone: "Asia/Kolkata".into(),
            token_validity_s: 1800,
            counters: vec![Counter { id: "OPD1".into(), kind: CounterKind::Opd }],
        }
    }

    #[test]
    fn a_count_feeds_every_ranking_it_belongs_to_once() {
        let day: Date = "2026-11-23".parse().unwrap();
        let k = board_keys(&info().district_id(), day, "lab");
        assert_eq!(
            k,
            vec![
                "lb:{lb}:2026-11-23:lab:s",
                "lb:{lb}:2026-11-23:lab:d",
                "lb:{lb}:2026-11-23:lab:f",
                "lb:{lb}:2026-11-23:lab:f:d:KA/Mysuru",
                "lb:{lb}:2026-11-23:all:f",
                "lb:{lb}:2026-11-23:lab:f:s:KA",
                "lb:{lb}:2026-11-23:all:f:s:KA",
                "lb:{lb}:all:lab:s",
                "lb:{lb}:all:lab:d",
                "lb:{lb}:all:lab:f",
                "lb:{lb}:all:lab:f:d:KA/Mysuru",
                "lb:{lb}:all:all:f",
                "lb:{lb}:all:lab:f:s:KA",
                "lb:{lb}:all:all:f:s:KA",
            ]
        );
    }

    #[test]
    fn ties_share_a_rank_and_shares_add_up() {
        let mut rows: Vec<Row> = [("b", 5), ("a", 5), ("c", 2), ("d", 0)]
            .into_iter()
            .map(|(id, t)| Row {
                rank: 0,
                id: id.into(),
                name: id.into(),
                state: "KA".into(),
                district: None,
                tokens: t,
                share: 0.0,
            })
            .collect();
        sort(&mut rows);
        rank(&mut rows, 12);
        let got: Vec<(&str, u32)> = rows.iter().map(|r| (r.id.as_str(), r.rank)).collect();
        assert_eq!(got, vec![("a", 1), ("b", 1), ("c", 3), ("d", 4)]);
        assert!((rows.iter().map(|r| r.share).sum::<f64>() - 1.0).abs() < 1e-5);
        rank(&mut rows, 0);
        assert_eq!(rows[0].share, 0.0);
    }
}
