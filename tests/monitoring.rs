//! Monitoring as code (`grafana/`) checked against the metric catalog in
//! `scan_gateway::telemetry::metrics::CATALOG`:
//!
//! - every `scangw_*` / `process_*` series named by a dashboard query, a template variable, a
//!   recording or alerting rule, or a promtool unit-test input series is in the catalog
//!   (histograms only through `_bucket`, `_sum` or `_count`), and every label matched on it
//!   is one of its labels (or `job` / `instance`, and `le` on buckets);
//! - every recording rule a dashboard or rule uses (`level:metric:operation`) is defined in
//!   `grafana/prometheus/rules/recording.yml`, and is only filtered on its level label;
//! - dashboards have unique, stable uids (`scangw-<file name>`), unique panel ids and the
//!   multi-value `state` variable; no range query uses `topk` / `bottomk`;
//! - every catalog metric is shown on some dashboard.
//!
//! PromQL is not parsed here (scripts/check-monitoring has promtool parse every expression);
//! a small tokenizer finds the series selectors, and has its own test below.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use scan_gateway::telemetry::metrics::{MetricDef, MetricKind, CATALOG};
use serde_json::Value;

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose name ends with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string()
}

fn assert_no_errors(what: &str, errors: &[String]) {
    assert!(errors.is_empty(), "{what}: {} problem(s):\n  {}", errors.len(), errors.join("\n  "));
}

// ---------------------------------------------------------------------------------------
// A PromQL tokenizer that finds series selectors: enough to name metrics and label matchers.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "start",
    "end",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Index just past the string literal opening at `i`.
fn skip_string(s: &[u8], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == b'\\' && quote != b'`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Index just past the bracket closing the one opening at `i`.
fn skip_balanced(s: &[u8], i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < s.len() {
        match s[j] {
            b'"' | b'\'' | b'`' => {
                j = skip_string(s, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    s.len()
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Label names of the matcher list opening at `i` (`{a="x", b=~"y"}`), and the index past it.
fn matcher_labels(s: &[u8], i: usize) -> (Vec<String>, usize) {
    let end = skip_balanced(s, i, b'{', b'}');
    let mut labels = Vec::new();
    let mut j = i + 1;
    while j < end {
        let c = s[j];
        if c == b'"' || c == b'\'' || c == b'`' {
            j = skip_string(s, j);
        } else if is_ident_start(c) {
            let start = j;
            while j < end && is_ident(s[j]) {
                j += 1;
            }
            labels.push(String::from_utf8_lossy(&s[start..j]).into_owned());
        } else {
            j += 1;
        }
    }
    (labels, end)
}

/// Whether `by` or `without` starts at `i` (as in `sum by (state) (...)`).
fn aggregation_modifier(s: &[u8], i: usize) -> bool {
    ["by", "without"].iter().any(|m| {
        let end = i + m.len();
        end <= s.len()
            && s[i..end].eq_ignore_ascii_case(m.as_bytes())
            && (end == s.len() || !is_ident(s[end]))
            && skip_ws(s, end) < s.len()
            && s[skip_ws(s, end)] == b'('
    })
}

/// Series selectors of a PromQL expression: every identifier that is not a function,
/// aggregation, keyword, label (in `by (...)`, `on (...)`, ...) or Grafana variable.
fn selectors(expr: &str) -> Vec<Selector> {
    let s = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(s, i),
            b'[' => i = skip_balanced(s, i, b'[', b']'),
            b'{' => {
                // A selector without a name, e.g. {__name__=~"..."}: nothing to check.
                i = matcher_labels(s, i).1;
            }
            b'$' => {
                i += 1;
                if i < s.len() && s[i] == b'{' {
                    i = skip_balanced(s, i, b'{', b'}');
                } else {
                    while i < s.len() && is_ident(s[i]) && s[i] != b':' {
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' | b'.' => {
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'.' || s[i] == b'_') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                let word = String::from_utf8_lossy(&s[start..i]).into_owned();
                let next = skip_ws(s, i);
                let lower = word.to_ascii_lowercase();
                if KEYWORDS.contains(&lower.as_str()) {
                    if next < s.len() && s[next] == b'(' {
                        // by (...), on (...), group_left (...): label names, not series.
                        i = skip_balanced(s, next, b'(', b')');
                    }
                } else if (next < s.len() && s[next] == b'(') || aggregation_modifier(s, next) {
                    // A function or an aggregation (`sum(...)`, `sum by (l) (...)`): its
                    // arguments are scanned as they come.
                } else if next < s.len() && s[next] == b'{' {
                    let (labels, end) = matcher_labels(s, next);
                    out.push(Selector { name: word, labels });
                    i = end;
                } else {
                    out.push(Selector { name: word, labels: Vec::new() });
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// `expr` with string literals emptied, to look for function names safely.
fn without_strings(expr: &str) -> String {
    let s = expr.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < s.len() {
        if matches!(s[i], b'"' | b'\'' | b'`') {
            i = skip_string(s, i);
            out.push_str("\"\"");
        } else {
            out.push(s[i] as char);
            i += 1;
        }
    }
    out
}

fn uses_topk(expr: &str) -> bool {
    let bare = without_strings(expr);
    let b = bare.as_bytes();
    ["topk", "bottomk"].iter().any(|f| {
        bare.match_indices(f).any(|(at, _)| {
            let before_ok = at == 0 || !is_ident(b[at - 1]);
            let after = skip_ws(b, at + f.len());
            before_ok && after < b.len() && b[after] == b'('
        })
    })
}

#[test]
fn the_selector_tokenizer_finds_series_and_their_labels() {
    let sel = |name: &str, labels: &[&str]| Selector {
        name: name.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
    };
    assert_eq!(
        selectors(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(scangw_http_request_duration_seconds_bucket{route="/v1/scans", status_class=~"5.."}[$__rate_interval])))"#
        ),
        vec![sel("scangw_http_request_duration_seconds_bucket", &["route", "status_class"])]
    );
    assert_eq!(
        selectors(
            "(state:scangw_tokens_issued:rate1h{state!=\"unknown\"} offset 1w * 60 > 3)\n and on (state) \
             (sum(increase(scangw_scans_total{outcome=\"new\"}[15m])) by (state) == 0)\n and on () \
             (hour() * 60 + minute() >= 165 AND bool 1)"
        ),
        vec![sel("state:scangw_tokens_issued:rate1h", &["state"]), sel("scangw_scans_total", &["outcome"])]
    );
    assert_eq!(
        selectors(
            r#"topk(25, max by (district, state) (scangw_leaderboard_top_district_tokens{state=~"${state:regex}"}))"#
        ),
        vec![sel("scangw_leaderboard_top_district_tokens", &["state"])]
    );
    assert_eq!(
        selectors("sum(rate(x_total[5m:30s])) / ignoring(code) group_left(foo) up * 1e3 + vector(2) - scalar(y)"),
        vec![sel("x_total", &[]), sel("up", &[]), sel("y", &[])]
    );
    assert_eq!(selectors(r#"label_replace(a, "dst", "$1", "src", "(scangw_fake.*)")"#), vec![sel("a", &[])]);
    assert!(uses_topk("sum(topk (5, x))"));
    assert!(uses_topk("bottomk(1, x)"));
    assert!(!uses_topk(r#"x{name="topk(3)"}"#));
    assert!(!uses_topk("my_topk_total"));
}

// ---------------------------------------------------------------------------------------
// The catalog.

/// How a series name maps onto a catalog metric.
fn catalog_metric(name: &str) -> Result<(&'static MetricDef, Option<&'static str>), String> {
    if let Some(def) = CATALOG.iter().find(|m| m.name == name) {
        if def.kind == MetricKind::Histogram {
            return Err(format!("{name} is a histogram: use {name}_bucket, _sum or _count"));
        }
        return Ok((def, None));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(def) = CATALOG.iter().find(|m| m.name == base) {
                if def.kind != MetricKind::Histogram {
                    return Err(format!("{name}: {base} is a {:?}, not a histogram", def.kind));
                }
                return Ok((def, Some(suffix)));
            }
        }
    }
    Err(format!("{name} is not in scan_gateway::telemetry::metrics::CATALOG"))
}

/// Series that are not the gateway's own but may be queried (added by Prometheus).
const EXTERNAL_SERIES: &[&str] = &["up"];
/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Problems with one selector of `expr` (at `where`); records the catalog metrics used.
fn check_selector(
    where_: &str,
    sel: &Selector,
    records: &BTreeSet<String>,
    used: &mut BTreeSet<&'static str>,
    errors: &mut Vec<String>,
) {
    let name = sel.name.as_str();
    if name.contains(':') {
        if !records.contains(name) {
            errors.push(format!(
                "{where_}: recording rule {name} is not defined in grafana/prometheus/rules/recording.yml"
            ));
            return;
        }
        // level:metric:operations is aggregated down to its level's label.
        let level = name.split(':').next().unwrap_or_default();
        for l in &sel.labels {
            if l != level {
                errors.push(format!("{where_}: {name} only has the label {level:?} (its level), not {l:?}"));
            }
        }
    } else if name.starts_with("scangw_") || name.starts_with("process_") {
        match catalog_metric(name) {
            Err(e) => errors.push(format!("{where_}: {e}")),
            Ok((def, suffix)) => {
                used.insert(def.name);
                for l in &sel.labels {
                    let ok = def.labels.contains(&l.as_str())
                        || TARGET_LABELS.contains(&l.as_str())
                        || (suffix == Some("_bucket") && l == "le");
                    if !ok {
                        errors.push(format!("{where_}: {name} has no label {l:?} (labels: {:?})", def.labels));
                    }
                }
            }
        }
    } else if !EXTERNAL_SERIES.contains(&name) {
        errors.push(format!(
            "{where_}: {name} is neither a catalog metric, a recording rule nor one of {EXTERNAL_SERIES:?}"
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Rule files: just enough YAML for `record:`, `alert:`, `expr:` and `series:` lines.

#[derive(Debug)]
struct RuleExpr {
    file: PathBuf,
    line: usize,
    /// The `record:` or `alert:` name the expression belongs to.
    owner: String,
    expr: String,
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\")
    } else {
        v.to_string()
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `key: value` on `line` (also as a list item `- key: value`): the indentation of the key
/// and the raw value.
fn key_value<'a>(line: &'a str, key: &str) -> Option<(usize, &'a str)> {
    let t = line.trim_start();
    let t2 = t.strip_prefix("- ").unwrap_or(t);
    let rest = t2.strip_prefix(key)?.strip_prefix(':')?;
    Some((line.len() - t2.len(), rest.trim()))
}

/// The values of every `key:` in a YAML file, with block scalars (`|`, `>`) joined;
/// panics on forms this reader does not understand rather than skipping them.
fn yaml_values(path: &Path, key: &str) -> Vec<(usize, String)> {
    let text = read(path);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some((key_indent, raw)) = key_value(line, key) else { continue };
        let following = lines[n + 1..].iter().take_while(|l| l.trim().is_empty() || indent(l) > key_indent);
        if raw.starts_with('|') || raw.starts_with('>') {
            let block: Vec<&str> = following.map(|l| l.trim()).collect();
            out.push((n + 1, block.join("\n").trim().to_string()));
        } else {
            let continued = following.filter(|l| !l.trim().is_empty()).count();
            assert!(
                continued == 0 || raw.is_empty(),
                "{}:{}: a multi-line plain `{key}:` value: use a block scalar (|) instead",
                path.display(),
                n + 1
            );
            out.push((n + 1, unquote(raw)));
        }
    }
    out
}

fn rule_files() -> Vec<PathBuf> {
    let files = files(&grafana_dir().join("prometheus/rules"), ".yml");
    assert!(files.len() >= 2, "rule files: {files:?}");
    files
}

/// Every `expr:` of every rule file with the record/alert it belongs to.
fn rule_exprs() -> Vec<RuleExpr> {
    let mut out = Vec::new();
    for file in rule_files() {
        let mut owners: Vec<(usize, String)> = yaml_values(&file, "record");
        owners.extend(yaml_values(&file, "alert"));
        owners.sort();
        for (line, expr) in yaml_values(&file, "expr") {
            let owner = owners.iter().rev().find(|(l, _)| *l < line).map(|(_, o)| o.clone()).unwrap_or_default();
            out.push(RuleExpr { file: file.clone(), line, owner, expr });
        }
    }
    out
}

fn recording_rules() -> BTreeSet<String> {
    let path = grafana_dir().join("prometheus/rules/recording.yml");
    let names: Vec<String> = yaml_values(&path, "record").into_iter().map(|(_, n)| n).collect();
    let set: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(set.len(), names.len(), "a recording rule is defined twice in {}", path.display());
    assert!(!set.is_empty(), "no recording rules in {}", path.display());
    set
}

// ---------------------------------------------------------------------------------------
// Dashboards.

struct Dashboard {
    file: PathBuf,
    json: Value,
}

impl Dashboard {
    fn title(&self) -> &str {
        self.json["title"].as_str().unwrap_or("?")
    }
}

fn dashboards() -> Vec<Dashboard> {
    let files = files(&grafana_dir().join("dashboards"), ".json");
    assert!(files.len() >= 2, "dashboards: {files:?}");
    files
        .into_iter()
        .map(|file| {
            let json = serde_json::from_str(&read(&file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            Dashboard { file, json }
        })
        .collect()
}

/// Every panel, rows' nested panels (collapsed rows) included.
fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

struct Query {
    where_: String,
    expr: String,
    range: bool,
}

fn queries(d: &Dashboard) -> Vec<Query> {
    let mut all = Vec::new();
    panels(&d.json["panels"], &mut all);
    let mut out = Vec::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        for t in p["targets"].as_array().into_iter().flatten() {
            let Some(expr) = t["expr"].as_str() else { continue };
            // Grafana runs a range query unless the target is instant-only.
            let instant = t["instant"].as_bool().unwrap_or(false);
            let range = t["range"].as_bool().unwrap_or(!instant);
            out.push(Query {
                where_: format!(
                    "{} (\"{}\") panel \"{title}\" query {}",
                    rel(&d.file),
                    d.title(),
                    t["refId"].as_str().unwrap_or("?")
                ),
                expr: expr.to_string(),
                range,
            });
        }
    }
    out
}

#[test]
fn dashboards_have_unique_stable_uids_panel_ids_and_a_state_variable() {
    let mut errors = Vec::new();
    let mut uids = BTreeMap::new();
    for d in dashboards() {
        let file = rel(&d.file);
        let stem = d.file.file_stem().unwrap().to_string_lossy().into_owned();
        match d.json["uid"].as_str() {
            None | Some("") => errors.push(format!("{file}: no uid")),
            Some(uid) => {
                if uid != format!("scangw-{stem}") {
                    errors
                        .push(format!("{file}: uid {uid:?} should be \"scangw-{stem}\" (stable, from the file name)"));
                }
                if uid.len() > 40 {
                    errors.push(format!("{file}: uid {uid:?} longer than Grafana's 40 characters"));
                }
                if let Some(other) = uids.insert(uid.to_string(), file.clone()) {
                    errors.push(format!("{file}: uid {uid:?} also used by {other}"));
                }
            }
        }
        if d.json["id"] != Value::Null {
            errors.push(format!("{file}: \"id\" must be null (Grafana assigns it; the uid identifies)"));
        }
        if d.json["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            errors.push(format!("{file}: schemaVersion {} (expected 36 or later)", d.json["schemaVersion"]));
        }
        let mut all = Vec::new();
        panels(&d.json["panels"], &mut all);
        let mut ids = BTreeSet::new();
        for p in &all {
            if !ids.insert(p["id"].to_string()) {
                errors.push(format!("{file}: panel id {} used twice", p["id"]));
            }
        }
        let vars = d.json["templating"]["list"].as_array().cloned().unwrap_or_default();
        match vars.iter().find(|v| v["name"] == "state") {
            None => errors.push(format!("{file}: no \"state\" template variable")),
            Some(v) => {
                if v["multi"] != true || v["includeAll"] != true {
                    errors.push(format!("{file}: variable state must be multi-value with All"));
                }
            }
        }
    }
    assert_no_errors("dashboards", &errors);
    let expected: BTreeSet<&str> = ["scangw-national-leaderboard", "scangw-gateway-health"].into();
    let got: BTreeSet<&str> = uids.keys().map(String::as_str).collect();
    assert!(got.is_superset(&expected), "dashboard uids {got:?} must include {expected:?}");
}

#[test]
fn no_range_query_uses_topk_or_bottomk() {
    let mut errors = Vec::new();
    let mut instant_topk = 0;
    for d in dashboards() {
        for q in queries(&d) {
            if uses_topk(&q.expr) {
                if q.range {
                    errors.push(format!(
                        "{}: topk/bottomk in a range query: set \"instant\": true, \"range\": false\n    {}",
                        q.where_, q.expr
                    ));
                } else {
                    instant_topk += 1;
                }
            }
        }
    }
    assert_no_errors("range queries", &errors);
    assert!(instant_topk >= 2, "the leaderboard tables use topk in instant queries; found {instant_topk}");
}

#[test]
fn dashboard_queries_use_catalog_metrics_and_defined_recording_rules() {
    let records = recording_rules();
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for d in dashboards() {
        let qs = queries(&d);
        assert!(qs.len() >= 5, "{}: only {} queries found", rel(&d.file), qs.len());
        for q in &qs {
            let sels = selectors(&q.expr);
            if sels.is_empty() {
                errors.push(format!("{}: no series in {:?}", q.where_, q.expr));
            }
            for sel in &sels {
                check_selector(&q.where_, sel, &records, &mut used, &mut errors);
            }
        }
        // Template variables: label_values(metric, label) must name a catalog label.
        for v in d.json["templating"]["list"].as_array().into_iter().flatten() {
            let Some(def) = v["definition"].as_str() else { continue };
            let where_ = format!("{} variable {}", rel(&d.file), v["name"]);
            let Some(args) = def.trim().strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) else {
                continue;
            };
            let Some((metric, label)) = args.rsplit_once(',') else { continue };
            for sel in selectors(metric) {
                check_selector(&where_, &sel, &records, &mut used, &mut errors);
                if let Ok((m, _)) = catalog_metric(&sel.name) {
                    if !m.labels.contains(&label.trim()) {
                        errors.push(format!("{where_}: {} has no label {:?}", m.name, label.trim()));
                    }
                }
            }
        }
    }
    assert_no_errors("dashboard queries", &errors);
}

#[test]
fn rule_expressions_use_catalog_metrics_and_defined_recording_rules() {
    let records = recording_rules();
    let exprs = rule_exprs();
    let alerts = exprs.iter().filter(|e| !records.contains(&e.owner)).count();
    assert!(alerts >= 5, "only {alerts} alert expressions found");
    assert_eq!(exprs.len() - alerts, records.len(), "each recording rule has one expr");
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for e in &exprs {
        let where_ = format!("{}:{} ({})", rel(&e.file), e.line, e.owner);
        let sels = selectors(&e.expr);
        if sels.is_empty() {
            errors.push(format!("{where_}: no series in {:?}", e.expr));
        }
        for sel in &sels {
            check_selector(&where_, sel, &records, &mut used, &mut errors);
            if sel.name == e.owner {
                errors.push(format!("{where_}: {} refers to itself", e.owner));
            }
        }
    }
    assert_no_errors("rule expressions", &errors);
}

#[test]
fn rule_unit_tests_feed_catalog_series_with_catalog_labels() {
    let records = recording_rules();
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    let tests = files(&grafana_dir().join("prometheus/tests"), ".yml");
    assert!(!tests.is_empty(), "no promtool unit tests");
    let mut n = 0;
    for file in tests {
        for (line, series) in yaml_values(&file, "series") {
            n += 1;
            let where_ = format!("{}:{line}", rel(&file));
            let sels = selectors(&series);
            if sels.len() != 1 || sels[0].name.contains(':') {
                errors.push(format!("{where_}: input series {series:?} is not one catalog series"));
            }
            for sel in &sels {
                check_selector(&where_, sel, &records, &mut used, &mut errors);
            }
        }
    }
    assert!(n >= 10, "only {n} input series found");
    assert_no_errors("rule unit tests", &errors);
}

#[test]
fn every_catalog_metric_is_on_a_dashboard() {
    let records = recording_rules();
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for d in dashboards() {
        for q in queries(&d) {
            for sel in selectors(&q.expr) {
                check_selector(&q.where_, &sel, &records, &mut used, &mut errors);
            }
        }
    }
    // A recording rule on a dashboard shows the metrics it is computed from.
    let shown: BTreeSet<String> =
        dashboards().iter().flat_map(queries).flat_map(|q| selectors(&q.expr)).map(|s| s.name).collect();
    for e in rule_exprs().iter().filter(|e| shown.contains(&e.owner)) {
        for sel in selectors(&e.expr) {
            check_selector(&e.owner, &sel, &records, &mut used, &mut errors);
        }
    }
    assert_no_errors("dashboard queries", &errors);
    let missing: Vec<&str> = CATALOG.iter().map(|m| m.name).filter(|n| !used.contains(n)).collect();
    assert!(missing.is_empty(), "catalog metrics on no dashboard under grafana/dashboards: {missing:?}");
}
