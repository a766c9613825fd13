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

/// The sorted-set increments for the tokens one write issues: for the day and all-time,
/// for all kinds and the counter's kind, the state, district and facility rankings.
pub fn increments(info: &FacilityInfo, day: Date, issued_kinds: &[CounterKind]) -> Vec<LbIncr> {
    let mut per_kind: BTreeMap<&'static str, u32> = BTreeMap::new();
    for k in issued_kinds {
        *per_kind.entry(k.as_str()).or_default() += 1;
        *per_kind.entry("all").or_default() += 1;
    }
    let state = info.state_code();
    let district = info.district_id();
    let day = day.to_string();
    let mut out = Vec::with_capacity(per_kind.len() * 12);
    for (period, daily) in [(day.as_str(), true), ("all", false)] {
        for (kind, by) in &per_kind {
            let by = *by;
            let mut add = |scope: LbScope<'_>, member: &str| {
                out.push(LbIncr { key: keys::leaderboard(period, kind, scope), member: member.to_string(), by, daily })
            };
            add(LbScope::States, state);
            add(LbScope::Districts, &district);
            add(LbScope::DistrictsIn(state), &district);
            add(LbScope::Facilities, &info.facility_id);
            add(LbScope::FacilitiesInState(state), &info.facility_id);
            add(LbScope::FacilitiesInDistrict(&district), &info.facility_id);
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

async fn sum(store: &Store, key: &str) -> Result<u64, StoreError> {
    Ok(store.top(key, 0).await?.iter().map(|(_, s)| count(*s)).sum())
}

/// Reads one ranking from Redis.
pub async fn read(store: &Store, q: &Query) -> Result<Ranking, StoreError> {
    let period = q.period.key_part();
    let kind = q.kind.map_or("all", |k| k.as_str());
    let key = |scope| keys::leaderboard(&period, kind, scope);
    let states_key = key(LbScope::States);
    let district_id = match (q.state, &q.district) {
        (Some(s), Some(d)) => Some(format!("{}/{}", s.code, d)),
        _ => None,
    };
    let national = || async { sum(store, &states_key).await };
    let in_state = |code: &'static str| {
        let k = states_key.clone();
        async move { Ok::<_, StoreError>(store.score(&k, code).await?.map_or(0, count)) }
    };
    let mut rows: Vec<Row> = match q.board {
        Board::States => {
            let found: BTreeMap<String, u64> =
                store.top(&states_key, 0).await?.into_iter().map(|(m, s)| (m, count(s))).collect();
            // Every state is listed, those without tokens last: who lags matters too.
            states::STATES.iter().map(|s| state_row(s, found.get(s.code).copied().unwrap_or(0))).collect()
        }
        Board::Districts => {
            let scope = q.state.map_or(LbScope::Districts, |s| LbScope::DistrictsIn(s.code));
            store.top(&key(scope), q.limit).await?.into_iter().map(|(m, s)| district_row(&m, count(s))).collect()
        }
        Board::Facilities => {
            let scope = match (&district_id, q.state) {
                (Some(d), _) => LbScope::FacilitiesInDistrict(d),
                (None, Some(s)) => LbScope::FacilitiesInState(s.code),
                (None, None) => LbScope::Facilities,
            };
            let top = store.top(&key(scope), q.limit).await?;
            let ids: Vec<String> = top.iter().map(|(m, _)| m.clone()).collect();
            let infos = store.get_infos(&ids).await?;
            top.into_iter()
                .zip(infos)
                .map(|((id, s), info)| {
                    let info = info.and_then(|j| serde_json::from_str::<FacilityInfo>(&j).ok());
                    Row {
                        rank: 0,
                        name: info.as_ref().map_or_else(|| id.clone(), |i| i.name.clone()),
                        state: info.as_ref().map_or("unknown", |i| i.state_code()).to_string(),
                        district: info.as_ref().map(|i| i.district.clone()),
                        id,
                        tokens: count(s),
                        share: 0.0,
                    }
                })
                .collect()
        }
    };
    let total = match (q.board, &district_id, q.state) {
        (Board::Facilities, Some(d), _) => store.score(&key(LbScope::Districts), d).await?.map_or(0, count),
        (Board::States, _, _) | (_, _, None) => national().await?,
        (_, _, Some(s)) => in_state(s.code).await?,
    };
    sort(&mut rows);
    rows.truncate(q.limit);
    rank(&mut rows, total);
    Ok(Ranking {
        board: q.board,
        date: period,
        counter_kind: kind.to_string(),
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
        // 2 periods x 3 kinds (all, opd, lab) x 6 rankings.
        assert_eq!(incs.len(), 36);
        let get = |k: &str| incs.iter().find(|i| i.key == k).unwrap();
        let all = get("lb:{lb}:2026-11-23:all:s");
        assert_eq!((all.member.as_str(), all.by, all.daily), ("KA", 3, true));
        assert_eq!(get("lb:{lb}:all:opd:f:d:KA/Mysuru").by, 2);
        assert!(!get("lb:{lb}:all:opd:f:d:KA/Mysuru").daily);
        assert_eq!(get("lb:{lb}:2026-11-23:lab:d:KA").member, "KA/Mysuru");
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
