//! Bulk import of facility records from NDJSON (one PUT body plus `facility_id` per line)
//! or CSV (`facility_id,name,state,district,timezone,token_validity_s,counters` with
//! counters as `OPD1:opd;Pharmacy:pharmacy`). All rows are validated before any is stored.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FacilityInfo, FacilitySpec};
use crate::facility::queue::{Counter, CounterKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LineError {
    pub line: usize,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// From a file name.
    pub fn from_path(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            Some(Format::Ndjson)
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdjsonRow {
    facility_id: String,
    name: String,
    state: String,
    district: String,
    timezone: Option<String>,
    token_validity_s: Option<u64>,
    counters: Vec<Counter>,
}

impl NdjsonRow {
    fn split(self) -> (String, FacilitySpec) {
        (
            self.facility_id,
            FacilitySpec {
                name: self.name,
                state: self.state,
                district: self.district,
                timezone: self.timezone,
                token_validity_s: self.token_validity_s,
                counters: self.counters,
            },
        )
    }
}

fn parse_kind(s: &str) -> Option<CounterKind> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "opd" => CounterKind::Opd,
        "pharmacy" => CounterKind::Pharmacy,
        "lab" => CounterKind::Lab,
        "other" => CounterKind::Other,
        _ => return None,
    })
}

fn parse_counters(s: &str) -> Option<Vec<Counter>> {
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (id, kind) = p.rsplit_once(':')?;
            Some(Counter { id: id.trim().to_string(), kind: parse_kind(kind)? })
        })
        .collect()
}

/// One input row: the facility id and its spec, or why it could not be read.
type ParsedRow = Result<(String, FacilitySpec), LineError>;

const CSV_HEADER: [&str; 7] = ["facility_id", "name", "state", "district", "timezone", "token_validity_s", "counters"];

/// Parses and validates every row; returns all records or every line's error.
pub fn parse(
    format: Format,
    data: &[u8],
    default_tz: &str,
    default_validity_s: u64,
) -> Result<Vec<FacilityInfo>, Vec<LineError>> {
    let mut rows: Vec<(usize, ParsedRow)> = Vec::new();
    match format {
        Format::Ndjson => {
            let text = match std::str::from_utf8(data) {
                Ok(t) => t,
                Err(_) => return Err(vec![err(0, "MALFORMED_IMPORT", "body is not UTF-8")]),
            };
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row = serde_json::from_str::<NdjsonRow>(line)
                    .map(NdjsonRow::split)
                    .map_err(|e| err(i + 1, "MALFORMED_JSON", &format!("invalid JSON row at column {}", e.column())));
                rows.push((i + 1, row));
            }
        }
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(data);
            match rdr.headers() {
                Ok(h) if h.iter().map(str::trim).eq(CSV_HEADER.iter().copied()) => {}
                _ => return Err(vec![err(1, "MALFORMED_CSV", &format!("header must be {}", CSV_HEADER.join(",")))]),
            }
            for (i, rec) in rdr.records().enumerate() {
                let line = i + 2;
                let row = match rec {
                    Err(_) => Err(err(line, "MALFORMED_CSV", "unreadable row or wrong column count")),
                    Ok(r) => csv_row(line, &r),
                };
                rows.push((line, row));
            }
        }
    }
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashSet::new();
    for (line, row) in rows {
        match row {
            Err(e) => errors.push(e),
            Ok((id, spec)) => match spec.validate(&id, default_tz, default_validity_s) {
                Err(fe) => errors.push(err(line, "INVALID_FIELD", &fe.to_string())),
                Ok(info) => {
                    if !seen.insert(info.facility_id.clone()) {
                        errors.push(err(line, "DUPLICATE_FACILITY", "facility_id appears twice"));
                    } else {
                        out.push(info);
                    }
                }
            },
        }
        if errors.len() >= 100 {
            break;
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn err(line: usize, code: &'static str, message: &str) -> LineError {
    LineError { line, code, message: message.to_string() }
}

fn csv_row(line: usize, r: &csv::StringRecord) -> Result<(String, FacilitySpec), LineError> {
    let get = |i: usize| r.get(i).unwrap_or("").trim();
    let validity = match get(5) {
        "" => None,
        v => Some(v.parse().map_err(|_| err(line, "INVALID_FIELD", "token_validity_s: must be a number"))?),
    };
    let counters =
        parse_counters(get(6)).ok_or_else(|| err(line, "INVALID_FIELD", "counters: expected id:kind;id:kind"))?;
    Ok((
        get(0).to_string(),
        FacilitySpec {
            name: get(1).to_string(),
            state: get(2).to_string(),
            district: get(3).to_string(),
            timezone: (!get(4).is_empty()).then(|| get(4).to_string()),
            token_validity_s: validity,
            counters,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_ndjson_parse_to_the_same_record() {
        let csv = "facility_id,name,state,district,timezone,token_validity_s,counters\nIN01,Dist Hosp,Delhi,New Delhi,,900,OPD1:opd;Pharmacy:pharmacy\n";
        let nd = r#"{"facility_id":"IN01","name":"Dist Hosp","state":"Delhi","district":"New Delhi","token_validity_s":900,"counters":[{"id":"OPD1","kind":"opd"},{"id":"Pharmacy","kind":"pharmacy"}]}"#;
        let a = parse(Format::Csv, csv.as_bytes(), "Asia/Kolkata", 1800).unwrap();
        let b = parse(Format::Ndjson, nd.as_bytes(), "Asia/Kolkata", 1800).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].token_validity_s, 900);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let nd = "{\"facility_id\":\"IN01\",\"name\":\"A\",\"state\":\"GA\",\"district\":\"D\",\"counters\":[{\"id\":\"OPD1\",\"kind\":\"opd\"}]}\n{nope\n{\"facility_id\":\"IN01\",\"name\":\"A\",\"state\":\"GA\",\"district\":\"D\",\"counters\":[{\"id\":\"OPD1\",\"kind\":\"opd\"}]}\n";
        let errs = parse(Format::Ndjson, nd.as_bytes(), "Asia/Kolkata", 1800).unwrap_err();
        let lines: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.code)).collect();
        assert_eq!(lines, vec![(2, "MALFORMED_JSON"), (3, "DUPLICATE_FACILITY")]);
        let bad_csv = "facility_id,name\nIN01,x\n";
        assert_eq!(parse(Format::Csv, bad_csv.as_bytes(), "Asia/Kolkata", 1800).unwrap_err()[0].code, "MALFORMED_CSV");
    }
}
