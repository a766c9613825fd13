//! National leaderboards: which sorted sets a new token bumps (inside the fenced write, so
//! counts are exact), how a ranking is read back with names and shares, and the live feed
//! ([`feed`]) behind the page, the SSE stream and the Prometheus top-N gauges.
pub mod feed;

use std::collections::BTreeMap;

use jiff::civil::Date;
use serde::Serialize;
use utoipa::ToSchema;

use crate::facility::queue::CounterKind;
use crate::persistence::keys::{self, LbScope};
use crate::persistence::writer::LbIncr;
use crate::persistence::{Store, StoreError};
use crate::registry::states::{self, State};
use crate::registry::FacilityInfo;

/// The sorted-set increments for the tokens one write issues. Per period (the service day
/// and all-time) and counter kind: the state, district, facility and facility-in-district
/// rankings, plus the all-kinds national facility ranking (too big to merge per read).
/// Every other view (all kinds, a state's districts or facilities) is merged from these at
/// read time, which keeps a token's cost inside the fenced script to ~10 increments.
pub fn increments(info: &FacilityInfo, day: Date, issued_kinds: &[CounterKind]) -> Vec<LbIncr> {
    let mut per_kind: BTreeMap<&'static str, u32> = BTreeMap::new();
    for k in issued_kinds {
        *per_kind.entry(k.as_str()).or_default() += 1;
    }
    let total = issued_kinds.len() as u32;
    let state = info.state_code();
    let district = info.district_id();
    let day = day.to_string();
    let mut out = Vec::with_capacity(per_kind.len() * 8 + 2);
    for (period, daily) in [(day.as_str(), true), ("all", false)] {
        let mut add = |kind: &str, scope: LbScope<'_>, member: &str, by: u32| {
            out.push(LbIncr { key: keys::leaderboard(period, kind, scope), member: member.to_string(), by, daily })
        };
        for (kind, by) in &per_kind {
            add(kind, LbScope::States, state, *by);
            add(kind, LbScope::Districts, &district, *by);
            add(kind, LbScope::Facilities, &info.facility_id, *by);
            add(kind, LbScope::FacilitiesInDistrict(&district), &info.facility_id, *by);
        }
        if total > 0 {
            add("all", LbScope::Facilities, &info.facility_id, total);
        }
    }
    out
}

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
                (None, Some(p)) => {
                    // A state's facilities: merge the rankings of its districts.
                    let districts = merged(store, &per_kind(LbScope::Districts)).await?;
                    let mine: Vec<&String> = districts.keys().filter(|d| d.starts_with(p.as_str())).collect();
                    let keys: Vec<String> =
                        mine.iter().flat_map(|d| per_kind(LbScope::FacilitiesInDistrict(d.as_str()))).collect();
                    let found = merged(store, &keys).await?;
                    let total = found.values().sum();
                    (found.into_iter().collect(), total)
                }
                (None, None) => {
                    let kind = q.kind.map_or("all", |k| k.as_str());
                    let top = store.top(&keys::leaderboard(&period, kind, LbScope::Facilities), q.limit).await?;
                    let total = national(store, &period, &kinds).await?;
                    (top.into_iter().map(|(m, s)| (m, count(s))).collect(), total)
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
    fn a_token_bumps_every_ranking_it_belongs_to_once() {
        let day: Date = "2026-11-23".parse().unwrap();
        let incs = increments(&info(), day, &[CounterKind::Opd, CounterKind::Opd, CounterKind::Lab]);
        // 2 periods x (2 kinds x 4 rankings + the all-kinds facility ranking).
        assert_eq!(incs.len(), 18);
        let get = |k: &str| incs.iter().find(|i| i.key == k).unwrap();
        let all = get("lb:{lb}:2026-11-23:all:f");
        assert_eq!((all.member.as_str(), all.by, all.daily), ("IN2910005582", 3, true));
        assert_eq!(get("lb:{lb}:all:opd:f:d:KA/Mysuru").by, 2);
        assert!(!get("lb:{lb}:all:opd:f:d:KA/Mysuru").daily);
        assert_eq!(get("lb:{lb}:2026-11-23:lab:d").member, "KA/Mysuru");
        assert_eq!(get("lb:{lb}:2026-11-23:lab:s").member, "KA");
        assert!(increments(&info(), day, &[]).is_empty());
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
