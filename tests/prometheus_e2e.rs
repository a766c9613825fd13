//! End to end, issue 5: a real Prometheus (`/usr/bin/prometheus`) scrapes the real gateway
//! binary every second; scans are issued in four states; the national dashboard's state
//! leaderboard query, read from the dashboard JSON with its Grafana variables substituted
//! and run as an instant query against the Prometheus HTTP API, must rank the states in
//! the order of the tokens issued, with the exact counts, and follow when the order
//! changes.
//!
//! Prometheus is a hard requirement (scripts/test installs the Debian package): when it
//! is missing this test fails, it does not skip.
#[path = "support/gateway.rs"]
mod gateway;
#[path = "api/helpers.rs"]
mod helpers;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use gateway::*;
use helpers::*;

/// The dashboard, relative to the repository root.
const DASHBOARD: &str = "grafana/dashboards/National/national-leaderboard.json";
const DASHBOARD_UID: &str = "scangw-national-leaderboard";
/// The gauge the state leaderboard panel is built on.
const METRIC: &str = "scangw_leaderboard_state_tokens";
/// How long Prometheus may take to reflect a change (scrape 1 s, gateway refresh 200 ms).
const CONVERGE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------

fn prometheus_bin() -> PathBuf {
    let debian = Path::new("/usr/bin/prometheus");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("prometheus")).find(|c| c.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        panic!(
            "prometheus is not installed (neither /usr/bin/prometheus nor `prometheus` on PATH). \
             This end-to-end test needs a real Prometheus 2.x: install the Debian package \
             `prometheus` (apt-get install prometheus; scripts/test does this)."
        )
    })
}

/// A real Prometheus scraping one target, with its own config and TSDB in a temp dir;
/// its stdout and stderr go to `prometheus.log` there. Killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let bin = prometheus_bin();
        let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for prometheus");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     scrape_configs:\n  - job_name: scan-gateway\n    metrics_path: /metrics\n    \
                     static_configs:\n      - targets: [\"{target}\"]\n"
                ),
            )
            .expect("write prometheus.yml");
            let log = dir.path().join("prometheus.log");
            let out = File::create(&log).expect("create prometheus.log");
            let err = out.try_clone().expect("dup prometheus.log");
            let port = free_port();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut prom = Prometheus { child, base: format!("http://127.0.0.1:{port}"), log, _dir: dir };
            let started = Instant::now();
            let deadline = started + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = prom.child.try_wait() {
                    // Most likely lost the race for the port: try another one.
                    failures.push(format!("exited with {status}:\n{}", prom.log_tail(30)));
                    break;
                }
                if let Ok(res) = client.get(format!("{}/-/ready", prom.base)).send().await {
                    if res.status().as_u16() == 200 {
                        println!("prometheus ready on {} after {:?}", prom.base, started.elapsed());
                        return prom;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus on {} not ready within 60 s:\n{}",
                    prom.base,
                    prom.log_tail(40)
                );
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("prometheus did not start in 3 attempts:\n{}", failures.join("\n----\n"));
    }

    /// The last `n` lines of Prometheus' output.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {:?}: {e})", self.log));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One instant-query answer: the (state, value) pairs in the order Prometheus returned
/// them, and the raw body for failure messages.
struct Answer {
    rows: Vec<(String, f64)>,
    raw: String,
}

async fn instant_query(client: &awc::Client, prom: &Prometheus, expr: &str) -> Result<Answer, String> {
    let url = format!("{}/api/v1/query?query={}", prom.base, url_encode(expr));
    let r = http(client, "GET", &url, None, None, None, &[]).await.map_err(|e| format!("GET {url}: {e}"))?;
    if r.status != 200 || r.body["status"] != "success" {
        return Err(format!("query failed with {}: {}", r.status, r.text));
    }
    let data = &r.body["data"];
    if data["resultType"] != "vector" {
        return Err(format!("expected an instant vector, got {}", r.text));
    }
    let mut rows = Vec::new();
    for sample in data["result"].as_array().into_iter().flatten() {
        let state = sample["metric"]["state"]
            .as_str()
            .ok_or_else(|| format!("a result series has no `state` label: {sample}"))?;
        let value = sample["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("unparseable sample value: {sample}"))?;
        rows.push((state.to_string(), value));
    }
    Ok(Answer { rows, raw: r.text })
}

/// Prometheus' view of its scrape targets, in one line each.
async fn targets(client: &awc::Client, prom: &Prometheus) -> String {
    match http(client, "GET", &format!("{}/api/v1/targets", prom.base), None, None, None, &[]).await {
        Ok(r) => r.body["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{} health={} lastScrape={} lastError={:?}",
                            t["scrapeUrl"], t["health"], t["lastScrape"], t["lastError"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or(r.text),
        Err(e) => format!("(targets unavailable: {e})"),
    }
}

// ---------------------------------------------------------------------------------------
// The dashboard
// ---------------------------------------------------------------------------------------

/// Every panel, rows' nested panels included, as (title, panel).
fn all_panels(panels: &Value, out: &mut Vec<(String, Value)>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push((p["title"].as_str().unwrap_or("").to_string(), p.clone()));
        all_panels(&p["panels"], out);
    }
}

/// The state leaderboard panel's title and query: the target whose expression reads
/// the state gauge (preferring a sorted one when several panels use the gauge).
fn leaderboard_query(dashboard: &Value) -> (String, String) {
    let mut panels = Vec::new();
    all_panels(&dashboard["panels"], &mut panels);
    let mut candidates: Vec<(String, String)> = Vec::new();
    for (title, p) in &panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["hide"] == true {
                continue;
            }
            if let Some(expr) = t["expr"].as_str() {
                if expr.contains(METRIC) {
                    candidates.push((title.clone(), expr.to_string()));
                }
            }
        }
    }
    assert!(!candidates.is_empty(), "no panel of {DASHBOARD} has a target whose expr reads {METRIC}");
    if candidates.len() > 1 {
        let sorted: Vec<_> = candidates.iter().filter(|(_, e)| e.contains("sort_desc")).cloned().collect();
        if !sorted.is_empty() {
            candidates = sorted;
        }
    }
    if candidates.len() > 1 {
        let named: Vec<_> = candidates.iter().filter(|(t, _)| t.to_lowercase().contains("state")).cloned().collect();
        if !named.is_empty() {
            candidates = named;
        }
    }
    assert_eq!(candidates.len(), 1, "cannot tell which panel of {DASHBOARD} is the state leaderboard: {candidates:#?}");
    candidates.remove(0)
}

/// The value a dashboard variable (`templating.list`) stands for.
fn variable_value(dashboard: &Value, name: &str) -> Option<String> {
    let var = dashboard["templating"]["list"].as_array()?.iter().find(|v| v["name"] == name)?;
    let all = || var["allValue"].as_str().filter(|s| !s.is_empty()).unwrap_or(".*").to_string();
    match &var["current"]["value"] {
        Value::String(s) if s == "$__all" => Some(all()),
        Value::String(s) => Some(s.clone()),
        Value::Array(vs) if vs.iter().any(|v| v == "$__all") => Some(all()),
        Value::Array(vs) => {
            let vs: Vec<&str> = vs.iter().filter_map(Value::as_str).collect();
            Some(if vs.len() == 1 { vs[0].to_string() } else { format!("({})", vs.join("|")) })
        }
        _ => var["query"].as_str().filter(|_| var["type"] == "constant").map(str::to_string),
    }
}

/// Substitutes Grafana's variables (`$x`, `${x}`, `${x:format}`, `[[x]]`) as Grafana would
/// for a one-hour dashboard range with every state selected.
fn expand_grafana(expr: &str, dashboard: &Value) -> String {
    let resolve = |name: &str| -> String {
        match name {
            "state" => ".*".to_string(),
            "__range" => "1h".to_string(),
            "__range_s" => "3600".to_string(),
            "__range_ms" => "3600000".to_string(),
            "__rate_interval" => "1m".to_string(),
            "__interval" => "15s".to_string(),
            "__interval_ms" => "15000".to_string(),
            other => variable_value(dashboard, other).unwrap_or_else(|| {
                panic!("the leaderboard query uses Grafana variable `{other}`, unknown to this test: {expr}")
            }),
        }
    };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(inner) = rest.strip_prefix("${") {
            let end = inner.find('}').unwrap_or_else(|| panic!("unterminated ${{ in {expr}"));
            let name = inner[..end].split(':').next().unwrap();
            out.push_str(&resolve(name));
            rest = &inner[end + 1..];
        } else if let Some(inner) = rest.strip_prefix("[[") {
            match inner.find("]]") {
                Some(end) if !inner[..end].is_empty() && inner[..end].chars().all(|c| ident(c) || c == ':') => {
                    out.push_str(&resolve(inner[..end].split(':').next().unwrap()));
                    rest = &inner[end + 2..];
                }
                _ => {
                    out.push('[');
                    rest = &rest[1..];
                }
            }
        } else if rest.starts_with('$') {
            let len = rest[1..].find(|c: char| !ident(c)).unwrap_or(rest.len() - 1);
            if len == 0 {
                out.push('$'); // a regex anchor, not a variable
            } else {
                out.push_str(&resolve(&rest[1..1 + len]));
            }
            rest = &rest[1 + len..];
        } else {
            out.push('[');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn load_dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read the dashboard {path:?}: {e}"));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"));
    assert_eq!(dashboard["uid"], DASHBOARD_UID, "uid of {path:?}");
    dashboard
}

#[test]
fn grafana_variables_are_substituted() {
    let d = json!({"templating": {"list": [
        {"name": "period", "type": "custom", "current": {"value": "today"}},
        {"name": "kind", "type": "query", "current": {"value": ["$__all"]}, "allValue": ".+"},
    ]}});
    assert_eq!(
        expand_grafana(
            r#"sort_desc(max by (state) (max_over_time(m{state=~"$state",period="${period}",k=~"[[kind]]"}[$__range])))"#,
            &d
        ),
        r#"sort_desc(max by (state) (max_over_time(m{state=~".*",period="today",k=~".+"}[1h])))"#
    );
    assert_eq!(
        expand_grafana(r#"rate(x{a=~"^b$"}[$__rate_interval]) / $__interval_ms"#, &d),
        r#"rate(x{a=~"^b$"}[1m]) / 15000"#
    );
    assert_eq!(url_encode("a b{c=\"d\"}+"), "a%20b%7Bc%3D%22d%22%7D%2B");
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// The gateway's "today" is the service day in Asia/Kolkata: waits out the last minutes
/// before local midnight so the counts cannot reset halfway through the test.
async fn away_from_local_midnight(margin: Duration) {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap());
    let since_midnight = now.hour() as u64 * 3600 + now.minute() as u64 * 60 + now.second() as u64;
    let left = Duration::from_secs(86_400 - since_midnight);
    if left < margin {
        println!("{left:?} before midnight in Asia/Kolkata: waiting for the new service day");
        actix_rt::time::sleep(left + Duration::from_secs(3)).await;
    }
}

/// One facility per state: (state code, state name, district).
const STATES: [(&str, &str, &str); 4] = [
    ("UP", "Uttar Pradesh", "Lucknow"),
    ("AP", "Andhra Pradesh", "Guntur"),
    ("KA", "Karnataka", "Mysuru"),
    ("DL", "Delhi", "New Delhi"),
];

fn facility_of(code: &str) -> String {
    fid(9_100 + STATES.iter().position(|(c, _, _)| *c == code).expect("a test state"))
}

/// Issues `n` scans of new patients at the state's facility; each must issue a new token.
async fn scans(gw: &Gateway, code: &str, n: usize, next_patient: &mut usize) {
    let f = facility_of(code);
    for _ in 0..n {
        *next_patient += 1;
        let r = gw.call("POST", "/v1/scans", PLATFORM, Some(&scan_body(&f, "OPD1", *next_patient))).await;
        assert_eq!(r.status, 201, "scan {} at {f} ({code}): {}", *next_patient, r.text);
    }
}

/// The gateway's own `period="today"` state gauges with a non-zero value.
async fn gateway_gauges(gw: &Gateway) -> BTreeMap<String, f64> {
    let r = http(&gw.client, "GET", &format!("{}/metrics", gw.base), None, None, None, &[]).await.expect("/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text);
    let prefix = format!("{METRIC}{{state=\"");
    r.text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (state, rest) = l.split_once('"')?;
            let value: f64 = rest.strip_prefix(",period=\"today\"}")?.trim().parse().ok()?;
            (value != 0.0).then(|| (state.to_string(), value))
        })
        .collect()
}

/// Waits until Prometheus answers the leaderboard query with exactly `expected` as the
/// non-zero states, then checks that they come first, in `expected`'s order, with any
/// other (zero) states after them.
async fn assert_leaderboard(
    client: &awc::Client,
    prom: &Prometheus,
    gw: &Gateway,
    expr: &str,
    expected: &[(&str, f64)],
) -> Duration {
    let started = Instant::now();
    let want: BTreeMap<String, f64> = expected.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    let answer = loop {
        let last = match instant_query(client, prom, expr).await {
            Ok(a) => {
                let nonzero: BTreeMap<String, f64> =
                    a.rows.iter().filter(|(_, v)| *v != 0.0).map(|(s, v)| (s.clone(), *v)).collect();
                if nonzero == want {
                    break a;
                }
                format!("non-zero states {nonzero:?}; raw answer: {}", a.raw)
            }
            Err(e) => e,
        };
        if Instant::now() > started + CONVERGE {
            panic!(
                "Prometheus did not answer the leaderboard query with {expected:?} within {CONVERGE:?}.\n\
                 query: {expr}\nlast answer: {last}\n\
                 gateway's own non-zero today gauges: {:?}\nscrape targets:\n{}\n\
                 prometheus output (tail):\n{}\ngateway output (tail):\n{}",
                gateway_gauges(gw).await,
                targets(client, prom).await,
                prom.log_tail(30),
                tail(&gw.output(), 30),
            );
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = started.elapsed();
    let order: Vec<(&str, f64)> = answer.rows.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    assert!(
        order.len() >= expected.len() && order[..expected.len()] == *expected,
        "the leaderboard query ranks the states wrongly: want {expected:?} first, got {order:?}\n\
         query: {expr}\nraw answer: {}",
        answer.raw
    );
    assert!(order[expected.len()..].iter().all(|(_, v)| *v == 0.0), "states without tokens must come last: {order:?}");
    let mut states: Vec<&str> = order.iter().map(|(s, _)| *s).collect();
    states.sort_unstable();
    states.dedup();
    assert_eq!(states.len(), order.len(), "a state appears twice in the leaderboard: {order:?}");
    assert_eq!(order.len(), 36, "every state and union territory is exported, with or without tokens: {order:?}");
    println!("  {} states in the answer: {order:?}", order.len());
    waited
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[actix_web::test]
async fn prometheus_ranks_states_with_the_dashboards_leaderboard_query() {
    let t0 = Instant::now();
    // Fail early and clearly when Prometheus or the dashboard is missing.
    prometheus_bin();
    let dashboard = load_dashboard();
    let (title, raw_expr) = leaderboard_query(&dashboard);
    let expr = expand_grafana(&raw_expr, &dashboard);
    println!("panel {title:?}: {raw_expr}\n  expanded: {expr}");

    let redis = RedisServer::start();
    let gw = Gateway::start(&redis, &[("SCANGW_LEADERBOARD_REFRESH_MS", "200")]);
    let target = gw.base.strip_prefix("http://").expect("gateway base URL").to_string();
    let prom = Prometheus::start(&target).await;
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    println!("gateway and prometheus up after {:?}", t0.elapsed());

    for (code, name, district) in STATES {
        let f = facility_of(code);
        let body = json!({
            "name": format!("District Hospital {district}"),
            "state": name,
            "district": district,
            "counters": [{"id": "OPD1", "kind": "opd"}]
        });
        let r = gw.call("PUT", &format!("/v1/facilities/{f}"), ADMIN, Some(&body)).await;
        assert_eq!(r.status, 201, "register {f} in {name}: {}", r.text);
    }

    away_from_local_midnight(Duration::from_secs(180)).await;
    let mut patient = 0;
    for (code, n) in [("UP", 7), ("AP", 5), ("KA", 3), ("DL", 1)] {
        scans(&gw, code, n, &mut patient).await;
    }
    let waited =
        assert_leaderboard(&client, &prom, &gw, &expr, &[("UP", 7.0), ("AP", 5.0), ("KA", 3.0), ("DL", 1.0)]).await;
    println!("first ranking UP 7 > AP 5 > KA 3 > DL 1 seen after {waited:?} (t+{:?})", t0.elapsed());

    // A new order: Delhi passes Andhra Pradesh and Karnataka passes everyone.
    scans(&gw, "DL", 5, &mut patient).await;
    scans(&gw, "KA", 5, &mut patient).await;
    let waited =
        assert_leaderboard(&client, &prom, &gw, &expr, &[("KA", 8.0), ("UP", 7.0), ("DL", 6.0), ("AP", 5.0)]).await;
    println!("second ranking KA 8 > UP 7 > DL 6 > AP 5 seen after {waited:?} (t+{:?})", t0.elapsed());
}
