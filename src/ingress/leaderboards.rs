//! `GET /v1/leaderboards/{states|districts|facilities}`: exact national rankings for the
//! monitoring role, filtered by service day (or all-time), state, district and counter kind.
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::authenticate;
use super::error::ApiError;
use super::AppState;
use crate::facility::queue::CounterKind;
use crate::leaderboard::{self, Board, Period, Query, Ranking};
use crate::registry::{field_error, states};

pub const MAX_LIMIT: usize = 1000;

/// Parses and checks the query string; every refusal names the parameter.
pub fn parse_query(board: Board, qs: &str, today: jiff::civil::Date) -> Result<Query, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(qs).map_err(|_| ApiError::MalformedQuery)?;
    let mut q = Query { board, period: Period::Day(today), state: None, district: None, kind: None, limit: 25 };
    let mut seen = Vec::new();
    for (k, v) in pairs.into_inner() {
        if seen.contains(&k) {
            return Err(field_error(k, "is given more than once").into());
        }
        match k.as_str() {
            "date" => {
                q.period = match v.as_str() {
                    "all" => Period::All,
                    d if d.len() == 10 => {
                        Period::Day(d.parse().map_err(|_| field_error("date", "must be YYYY-MM-DD or all"))?)
                    }
                    _ => return Err(field_error("date", "must be YYYY-MM-DD or all").into()),
                }
            }
            "state" => {
                if board == Board::States {
                    return Err(field_error("state", "does not apply to the states board").into());
                }
                q.state =
                    Some(states::lookup(&v).ok_or_else(|| field_error("state", "must be a state or union territory"))?);
            }
            "district" => {
                let d = v.trim();
                if board != Board::Facilities {
                    return Err(field_error("district", "applies to the facilities board only").into());
                }
                if d.is_empty() || d.chars().count() > 200 || d.chars().any(char::is_control) {
                    return Err(field_error("district", "must be 1 to 200 characters").into());
                }
                q.district = Some(d.to_string());
            }
            "counter_kind" => {
                q.kind = match v.as_str() {
                    "all" => None,
                    k => Some(
                        CounterKind::parse(k)
                            .ok_or_else(|| field_error("counter_kind", "must be all, opd, pharmacy, lab or other"))?,
                    ),
                }
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| field_error("limit", "must be between 1 and 1000"))?;
            }
            _ => return Err(ApiError::UnknownField(k)),
        }
        seen.push(k);
    }
    if q.district.is_some() && q.state.is_none() {
        return Err(field_error("district", "needs a state: district names repeat across states").into());
    }
    Ok(q)
}

#[utoipa::path(get, path = "/v1/leaderboards/{board}", tag = "leaderboards",
    params(
        ("board" = String, Path, description = "states, districts or facilities"),
        ("date" = Option<String>, Query, description = "Service day YYYY-MM-DD (default today) or all"),
        ("state" = Option<String>, Query, description = "State code or name (districts, facilities)"),
        ("district" = Option<String>, Query, description = "District name within state (facilities)"),
        ("counter_kind" = Option<String>, Query, description = "all (default), opd, pharmacy, lab, other"),
        ("limit" = Option<usize>, Query, description = "Rows, 1-1000 (default 25)")),
    responses(
        (status = 200, description = "Ranked rows", body = Ranking),
        (status = 400, description = "Unknown or undecodable parameter"),
        (status = 403, description = "Not a monitor or admin credential"),
        (status = 422, description = "Invalid parameter value")),
    security(("bearer" = [])))]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_monitor()?;
    let board = Board::parse(&path).ok_or(ApiError::NotFound)?;
    let tz = jiff::tz::TimeZone::get(&state.settings.default_timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let today = state.directory.deps().clock.now().to_zoned(tz).date();
    let q = parse_query(board, req.query_string(), today)?;
    let ranking = leaderboard::read(&state.store, &q).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(ranking))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> jiff::civil::Date {
        "2026-11-23".parse().unwrap()
    }

    fn field(r: Result<Query, ApiError>) -> String {
        match r.unwrap_err() {
            ApiError::InvalidField(e) => e.field,
            ApiError::UnknownField(f) => format!("unknown:{f}"),
            e => format!("{e:?}"),
        }
    }

    #[test]
    fn defaults_and_filters() {
        let q = parse_query(Board::Facilities, "", today()).unwrap();
        assert_eq!((q.period, q.limit, q.kind), (Period::Day(today()), 25, None));
        let q = parse_query(
            Board::Facilities,
            "date=all&state=karnataka&district=Mysuru&counter_kind=lab&limit=5",
            today(),
        )
        .unwrap();
        assert_eq!(q.period, Period::All);
        assert_eq!(q.state.unwrap().code, "KA");
        assert_eq!((q.district.as_deref(), q.kind, q.limit), (Some("Mysuru"), Some(CounterKind::Lab), 5));
    }

    #[test]
    fn every_refusal_names_its_parameter() {
        for (board, qs, want) in [
            (Board::States, "date=23-11-2026", "date"),
            (Board::States, "date=2026-13-01", "date"),
            (Board::States, "state=UP", "state"),
            (Board::Districts, "state=Atlantis", "state"),
            (Board::Districts, "state=UP&district=Lucknow", "district"),
            (Board::Facilities, "district=Lucknow", "district"),
            (Board::Facilities, "counter_kind=xray", "counter_kind"),
            (Board::Facilities, "limit=0", "limit"),
            (Board::Facilities, "limit=1001", "limit"),
            (Board::Facilities, "limit=ten", "limit"),
            (Board::Facilities, "limit=5&limit=6", "limit"),
            (Board::Facilities, "sort=asc", "unknown:sort"),
        ] {
            assert_eq!(field(parse_query(board, qs, today())), want, "{qs}");
        }
        assert_eq!(field(parse_query(Board::States, "date=%ZZ", today())), "date");
    }
}
