//! `scan-load publish`: puts a bench run on top of `docs/benchmarks.md` (the latest run) and
//! moves the run that was there into the history below it; refreshes the README's few
//! headline lines. Nothing else in either file changes, and publishing a run twice is a no-op.
use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use crate::host::Steal;

/// The markers `docs/benchmarks.md` is rewritten between: the latest run sits between the
/// first two, and each run it replaces goes right after the third, on top of the history.
pub const LATEST_BEGIN: &str = "<!-- latest:begin -->";
pub const LATEST_END: &str = "<!-- latest:end -->";
pub const HISTORY_BEGIN: &str = "<!-- history:begin -->";
/// The README's headline lines sit between these.
pub const HEADLINE_BEGIN: &str = "<!-- bench-headline:begin -->";
pub const HEADLINE_END: &str = "<!-- bench-headline:end -->";

/// The line that opens a run's entry and names it: how a second publish of the same run is
/// recognised.
pub fn run_marker(run_id: &str) -> String {
    format!("<!-- bench-run: {run_id} -->")
}

/// Where `marker` is in `doc`, when it is there exactly once.
fn once(doc: &str, marker: &str) -> anyhow::Result<usize> {
    let at = doc.find(marker).with_context(|| format!("no {marker} line"))?;
    anyhow::ensure!(doc[at + marker.len()..].find(marker).is_none(), "{marker} appears twice");
    Ok(at)
}

/// `doc` with `entry` (run `run_id`'s text, without its marker) as the latest run. The run
/// that was latest goes on top of the history, unchanged; when `run_id` is already the
/// latest, its entry is replaced in place and the history is left alone. A run already in
/// the history is refused rather than listed twice.
pub fn rewrite(doc: &str, run_id: &str, entry: &str) -> anyhow::Result<String> {
    let (lb, le, hb) = (once(doc, LATEST_BEGIN)?, once(doc, LATEST_END)?, once(doc, HISTORY_BEGIN)?);
    anyhow::ensure!(lb < le && le < hb, "expected {LATEST_BEGIN}, {LATEST_END}, then {HISTORY_BEGIN}");
    let marker = run_marker(run_id);
    let inner_start = lb + LATEST_BEGIN.len();
    let previous = doc[inner_start..le].trim_matches('\n');
    anyhow::ensure!(
        !doc[hb..].contains(&marker),
        "run {run_id} is already in the history; publish a newer run instead"
    );
    let latest = format!("\n{marker}\n\n{}\n", entry.trim_matches('\n'));
    let mut out = String::with_capacity(doc.len() + latest.len());
    out.push_str(&doc[..inner_start]);
    out.push_str(&latest);
    if previous.is_empty() || previous.starts_with(&marker) {
        out.push_str(&doc[le..]);
    } else {
        let history_start = hb + HISTORY_BEGIN.len();
        out.push_str(&doc[le..history_start]);
        out.push_str("\n\n");
        out.push_str(previous);
        out.push_str(&doc[history_start..]);
    }
    Ok(out)
}

/// `readme` with `lines` between its headline markers.
pub fn rewrite_headline(readme: &str, lines: &str) -> anyhow::Result<String> {
    let (b, e) = (once(readme, HEADLINE_BEGIN)?, once(readme, HEADLINE_END)?);
    anyhow::ensure!(b < e, "expected {HEADLINE_BEGIN} before {HEADLINE_END}");
    Ok(format!("{}\n{}\n{}", &readme[..b + HEADLINE_BEGIN.len()], lines.trim_matches('\n'), &readme[e..]))
}

/// What a run is, besides its summaries.
pub struct RunInfo {
    pub id: String,
    pub commit: String,
    /// `full` or `smoke` (scripts/bench's mode; smoke figures are a debug build's).
    pub mode: String,
    /// e.g. `7.0.15`.
    pub redis_version: String,
}

/// `20261208T003100Z` as `2026-12-08 00:31 UTC` (the id itself when it is not such a stamp).
fn stamp_date(id: &str) -> String {
    let b = id.as_bytes();
    if id.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && id[..8].bytes().chain(id[9..15].bytes()).all(|c| c.is_ascii_digit())
    {
        format!("{}-{}-{} {}:{} UTC", &id[..4], &id[4..6], &id[6..8], &id[9..11], &id[11..13])
    } else {
        id.to_string()
    }
}

/// Host steal over every measured stretch of the runs: each step of a search, each
/// measurement (at 80% or at a fixed rate), each whole run of another scenario.
fn total_steal(runs: &[(String, Value)]) -> Steal {
    let of = |h: &Value| Steal {
        windows: h["windows"].as_u64().unwrap_or(0) as usize,
        notable_windows: h["notable_windows"].as_u64().unwrap_or(0) as usize,
        max_pct: h["max_pct"].as_f64().unwrap_or(0.0),
    };
    let mut total = Steal::default();
    for (_, v) in runs {
        total = total.merge(of(&v["host_steal"]));
        for s in v["step"]["steps"].as_array().into_iter().flatten() {
            total = total.merge(of(&s["host_steal"]));
        }
    }
    total
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One line for a summary that is not in the comparison table (peak-morning, soak).
fn other_line(name: &str, v: &Value) -> String {
    let verify = match v["verify"]["passed"].as_bool() {
        Some(true) => format!(", verify PASS ({} tokens)", thousands(v["verify"]["stored"].as_f64().unwrap_or(0.0))),
        Some(false) => ", verify FAILED".into(),
        None => String::new(),
    };
    let scan_p99 =
        v["ops"]["scan"]["latency"]["p99_ms"].as_f64().map_or(String::new(), |p| format!(", scan p99 {p:.2} ms"));
    format!(
        "- {name}: {} requests, {} errors{scan_p99}{verify}{}",
        thousands(v["requests"].as_f64().unwrap_or(0.0)),
        thousands(v["errors"].as_f64().unwrap_or(0.0)),
        if v["passed"].as_bool() == Some(false) { "; **the run failed** (see its summary.txt)" } else { "" }
    )
}

/// The entry of a run in `docs/benchmarks.md`: when, which commit, the machine and how much
/// the host stole, the comparison table, and a line for each other scenario.
pub fn entry(info: &RunInfo, table: &[(String, Value)], others: &[(String, Value)]) -> anyhow::Result<String> {
    let mut s = String::new();
    let _ = writeln!(s, "### {}: run `{}`, commit `{}`\n", stamp_date(&info.id), info.id, info.commit);
    let machine = table.iter().chain(others).map(|(_, v)| &v["machine"]).find(|m| m.is_object());
    let (cores, cpu, kernel) = match machine {
        Some(m) => (
            m["cores"].as_u64().unwrap_or(0),
            m["cpu"].as_str().unwrap_or("unknown").to_string(),
            m["kernel"].as_str().unwrap_or("unknown").to_string(),
        ),
        None => (0, "unknown".into(), "unknown".into()),
    };
    let how = match info.mode.as_str() {
        "smoke" => "`scripts/bench --smoke` (debug build, seconds per scenario)".to_string(),
        "full" => "`scripts/bench` (release build)".to_string(),
        other => format!("`scripts/bench` ({other})"),
    };
    let _ = writeln!(
        s,
        "{how} on {cores} cores: {cpu} (kernel {kernel}); Redis {} with the shipped `redis.conf` \
         (AOF everysec); generator, Redis and server share the machine.",
        info.redis_version
    );
    let all: Vec<(String, Value)> = table.iter().chain(others).cloned().collect();
    let steal = total_steal(&all);
    let verdict = if steal.windows == 0 {
        "not sampled".to_string()
    } else if steal.disturbed() {
        "a disturbed host: the table marks what it does not judge".to_string()
    } else {
        "a quiet host".to_string()
    };
    let _ = writeln!(
        s,
        "Host steal: {} of {} 100 ms windows of the measured stretches had >= {:.0}% stolen (worst {:.0}%): {verdict}.\n",
        thousands(steal.notable_windows as f64),
        thousands(steal.windows as f64),
        crate::host::NOTABLE_PCT,
        steal.max_pct
    );
    s.push_str(crate::table::render(table)?.trim_end());
    s.push('\n');
    if !others.is_empty() {
        s.push('\n');
        for (name, v) in others {
            let _ = writeln!(s, "{}", other_line(name, v));
        }
    }
    let _ = writeln!(s, "\nReports: `var/bench/{}/*/report.html` on the machine that ran it.", info.id);
    Ok(s)
}

/// The README's headline: 3 to 5 lines from the comparison's summaries.
pub fn headline(info: &RunInfo, table: &[(String, Value)]) -> String {
    let mut lines = Vec::new();
    let machine = table.iter().map(|(_, v)| &v["machine"]).find(|m| m.is_object());
    let host = machine.map_or(String::new(), |m| {
        format!(", {} cores: {}", m["cores"].as_u64().unwrap_or(0), m["cpu"].as_str().unwrap_or("unknown"))
    });
    lines.push(format!(
        "- Latest: run `{}` (commit `{}`{host}, {}); every figure and the history in [docs/benchmarks.md](docs/benchmarks.md).",
        info.id, info.commit, if info.mode == "smoke" { "smoke, debug build" } else { "release build" }
    ));
    let steps: Vec<String> = table
        .iter()
        .filter_map(|(n, v)| Some(format!("{n} {}", thousands(v["step"]["max_sustainable_rate"].as_f64()?))))
        .collect();
    if !steps.is_empty() {
        lines.push(format!("- Max sustainable scans/s at the p99 target: {}.", steps.join(", ")));
    }
    let fixed: Vec<&(String, Value)> = table.iter().filter(|(_, v)| v["fixed"].is_object()).collect();
    let num = |v: &Value, k: &str| v["resources"][k].as_f64();
    let cpu = |v: &Value| Some(num(v, "server_cpu_us_per_scan")? + num(v, "redis_cpu_us_per_scan").unwrap_or(0.0));
    let kind = |v: &Value, k: &str| v["target_kind"].as_str() == Some(k);
    if let Some(rate) = fixed.first().and_then(|(_, v)| v["fixed"]["rate"].as_f64()) {
        let costs: Vec<String> =
            fixed.iter().filter_map(|(n, v)| Some(format!("{n} {}", thousands(cpu(v)?)))).collect();
        let g = fixed.iter().find(|(_, v)| kind(v, "gateway")).and_then(|(_, v)| cpu(v));
        let n = fixed.iter().find(|(_, v)| kind(v, "naive")).and_then(|(_, v)| cpu(v));
        let ratio = match (g, n) {
            (Some(g), Some(n)) if n > 0.0 => {
                format!(": gateway/naive {:.2} (target <= {})", g / n, crate::table::CPU_VS_NAIVE_TARGET)
            }
            _ => String::new(),
        };
        lines.push(format!(
            "- At a fixed {} scans/s, CPU µs per scan (server + Redis): {}{ratio}.",
            thousands(rate),
            costs.join(", ")
        ));
        let switches: Vec<String> = fixed
            .iter()
            .filter_map(|(n, v)| {
                let server = num(v, "server_ctx_switches_per_scan")?;
                Some(format!("{n} {:.2}", server + num(v, "redis_ctx_switches_per_scan").unwrap_or(0.0)))
            })
            .collect();
        let writes = fixed
            .iter()
            .find(|(_, v)| kind(v, "gateway"))
            .and_then(|(_, v)| num(v, "writes_per_redis_round_trip"))
            .map_or(String::new(), |w| format!("; the gateway's writes per Redis round trip {w:.2}"));
        if !switches.is_empty() {
            lines.push(format!("- Context switches per scan there (server + Redis): {}{writes}.", switches.join(", ")));
        }
    }
    lines.join("\n")
}

/// `name=path` arguments read as summaries.
pub fn read_runs(args: &[String]) -> anyhow::Result<Vec<(String, Value)>> {
    args.iter()
        .map(|a| {
            let (name, path) = a.split_once('=').with_context(|| format!("{a}: expected name=path"))?;
            let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
            Ok((name.to_string(), serde_json::from_str::<Value>(&text).with_context(|| format!("parse {path}"))?))
        })
        .collect()
}

/// Rewrites `doc` (and the headline of `readme`, if given) in place with run `info`.
pub fn publish(
    doc: &std::path::Path,
    readme: Option<&std::path::Path>,
    info: &RunInfo,
    table: &[String],
    others: &[String],
) -> anyhow::Result<()> {
    let (table, others) = (read_runs(table)?, read_runs(others)?);
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let new = rewrite(&text, &info.id, &entry(info, &table, &others)?).with_context(|| doc.display().to_string())?;
    std::fs::write(doc, new).with_context(|| format!("write {}", doc.display()))?;
    if let Some(readme) = readme {
        let text = std::fs::read_to_string(readme).with_context(|| format!("read {}", readme.display()))?;
        let new = rewrite_headline(&text, &headline(info, &table)).with_context(|| readme.display().to_string())?;
        std::fs::write(readme, new).with_context(|| format!("write {}", readme.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DOC: &str = "# Benchmarks\n\nHow to refresh: `scripts/bench`.\n\n## Latest run\n\n<!-- latest:begin -->\n\
        <!-- bench-run: 20261205T080601Z -->\n\n### run 5 December\n\n| old | table |\n<!-- latest:end -->\n\n\
        ## History\n\nOlder runs, newest first.\n\n<!-- history:begin -->\n\n### 24 November to 4 December\n\n\
        The README's record, kept as it was.\n";

    fn lines(s: &str) -> Vec<&str> {
        s.lines().filter(|l| !l.trim().is_empty()).collect()
    }

    #[test]
    fn a_new_run_replaces_the_latest_and_the_latest_moves_on_top_of_the_history() {
        let out = rewrite(DOC, "20261208T003100Z", "### run 8 December\n\n| new | table |\n").unwrap();
        let latest = &out[out.find(LATEST_BEGIN).unwrap()..out.find(LATEST_END).unwrap()];
        assert!(
            latest.contains("<!-- bench-run: 20261208T003100Z -->\n\n### run 8 December\n\n| new | table |"),
            "{out}"
        );
        assert!(!latest.contains("20261205T080601Z") && !latest.contains("| old | table |"), "{out}");
        let history = &out[out.find(HISTORY_BEGIN).unwrap()..];
        let moved =
            history.find("<!-- bench-run: 20261205T080601Z -->\n\n### run 5 December\n\n| old | table |").unwrap();
        assert!(moved < history.find("### 24 November to 4 December").unwrap(), "newest first: {out}");
        // Nothing else lost: every line of the old file outside its latest entry is still
        // there, in its order (the entry itself moved, as checked above), and the only new
        // lines are the new run's.
        let (old, new) = (lines(DOC), lines(&out));
        let moved_lines = ["<!-- bench-run: 20261205T080601Z -->", "### run 5 December", "| old | table |"];
        let mut at = 0;
        for l in old.iter().filter(|l| !moved_lines.contains(l)) {
            at += new[at..].iter().position(|n| n == l).unwrap_or_else(|| panic!("lost {l:?}: {out}")) + 1;
        }
        let added: Vec<&&str> = new.iter().filter(|l| !old.contains(l)).collect();
        assert_eq!(added, [&"<!-- bench-run: 20261208T003100Z -->", &"### run 8 December", &"| new | table |"]);
        // The old run is in the file once: in the history.
        assert_eq!(out.matches("20261205T080601Z").count(), 1, "{out}");

        // And the next run moves this one down in turn, above the one before it.
        let next = rewrite(&out, "20261209T010000Z", "### run 9 December\n").unwrap();
        let h = &next[next.find(HISTORY_BEGIN).unwrap()..];
        let (a, b) = (h.find("20261208T003100Z").unwrap(), h.find("20261205T080601Z").unwrap());
        assert!(a < b, "{next}");
    }

    #[test]
    fn publishing_the_same_run_again_changes_nothing_or_only_its_own_entry() {
        let once = rewrite(DOC, "20261208T003100Z", "### run 8 December\n\n| new | table |\n").unwrap();
        assert_eq!(rewrite(&once, "20261208T003100Z", "### run 8 December\n\n| new | table |\n").unwrap(), once);
        // Published again with other figures (a fix of the table): replaced in place, and
        // the run is not pushed into its own history.
        let again = rewrite(&once, "20261208T003100Z", "### run 8 December\n\n| fixed | table |\n").unwrap();
        assert_eq!(again, once.replace("| new | table |", "| fixed | table |"));
        // A run already in the history is not published a second time.
        let err = rewrite(&once, "20261205T080601Z", "### again\n").unwrap_err();
        assert!(err.to_string().contains("already in the history"), "{err}");
    }

    #[test]
    fn an_empty_latest_is_filled_and_a_file_without_its_markers_is_refused() {
        let empty = "# B\n<!-- latest:begin -->\n<!-- latest:end -->\n## History\n<!-- history:begin -->\n";
        let out = rewrite(empty, "r1", "### one\n").unwrap();
        assert_eq!(out, "# B\n<!-- latest:begin -->\n<!-- bench-run: r1 -->\n\n### one\n<!-- latest:end -->\n## History\n<!-- history:begin -->\n");
        let out2 = rewrite(&out, "r2", "### two\n").unwrap();
        assert!(out2.ends_with("<!-- history:begin -->\n\n<!-- bench-run: r1 -->\n\n### one\n"), "{out2}");
        assert!(rewrite("# B\n", "r1", "x").is_err());
        let twice = format!("{empty}{LATEST_BEGIN}\n");
        assert!(rewrite(&twice, "r1", "x").unwrap_err().to_string().contains("twice"));
        let swapped = "<!-- history:begin -->\n<!-- latest:begin -->\n<!-- latest:end -->\n";
        assert!(rewrite(swapped, "r1", "x").is_err());
    }

    #[test]
    fn the_readme_headline_is_replaced_and_the_rest_kept() {
        let readme = "# G\n\n## Load tests\n\ntext\n\n<!-- bench-headline:begin -->\n- old line\n<!-- bench-headline:end -->\n\nmore\n";
        let out = rewrite_headline(readme, "- new 1\n- new 2\n").unwrap();
        assert_eq!(out, readme.replace("- old line", "- new 1\n- new 2"));
        assert_eq!(rewrite_headline(&out, "- new 1\n- new 2").unwrap(), out, "idempotent");
        assert!(rewrite_headline("# G\n", "- x").is_err());
    }

    fn step(max: f64) -> Value {
        json!({"target_kind": "gateway", "machine": {"cores": 2, "cpu": "AMD EPYC 7B13", "kernel": "6.1.0"},
            "host_steal": {"windows": 150, "notable_windows": 1, "max_pct": 33.0},
            "step": {"max_sustainable_rate": max, "generator_bound": false,
                "steps": [{"rate": max, "host_steal": {"windows": 80, "notable_windows": 0, "max_pct": 2.0}}],
                "at_80_percent": {"rate": max * 0.8, "error_ratio": 0.0, "latency": {"p50_ms": 1.0, "p99_ms": 4.0, "p999_ms": 9.0}}},
            "resources": {"server_cpu_us_per_scan": 50.0}})
    }

    fn fixed(kind: &str, cpu: f64, redis: Option<f64>) -> Value {
        json!({"target_kind": kind, "machine": {"cores": 2, "cpu": "AMD EPYC 7B13", "kernel": "6.1.0"},
            "host_steal": {"windows": 200, "notable_windows": 0, "max_pct": 4.0},
            "fixed": {"rate": 2000.0, "measurement": {"achieved_ok_per_s": 2001.0, "latency": {"p50_ms": 1.0, "p99_ms": 3.0}}},
            "resources": {"server_cpu_us_per_scan": cpu, "redis_cpu_us_per_scan": redis,
                "server_ctx_switches_per_scan": 4.0, "redis_ctx_switches_per_scan": redis.map(|_| 1.0),
                "writes_per_redis_round_trip": if kind == "gateway" { json!(2.5) } else { Value::Null }}})
    }

    #[test]
    fn an_entry_names_the_run_machine_and_steal_and_carries_the_table_and_the_other_runs() {
        let info = RunInfo {
            id: "20261208T003100Z".into(),
            commit: "abc1234".into(),
            mode: "full".into(),
            redis_version: "7.0.15".into(),
        };
        let table = vec![
            ("gateway".to_string(), step(6_000.0)),
            ("naive".to_string(), step(10_000.0)),
            ("gateway".to_string(), fixed("gateway", 60.0, Some(30.0))),
            ("naive".to_string(), fixed("naive", 70.0, Some(50.0))),
            ("echo".to_string(), fixed("echo", 20.0, None)),
        ];
        let others = vec![(
            "peak-morning".to_string(),
            json!({"requests": 1718523, "errors": 0, "passed": true, "ops": {"scan": {"latency": {"p99_ms": 7.5}}},
                "verify": {"passed": true, "stored": 521775}}),
        )];
        let e = entry(&info, &table, &others).unwrap();
        assert!(e.starts_with("### 2026-12-08 00:31 UTC: run `20261208T003100Z`, commit `abc1234`\n"), "{e}");
        assert!(
            e.contains("\n`scripts/bench` (release build) on 2 cores: AMD EPYC 7B13 (kernel 6.1.0); Redis 7.0.15"),
            "{e}"
        );
        assert!(e.contains("Host steal: 2 of 1,060 100 ms windows of the measured stretches had >= 10% stolen (worst 33%): a quiet host."), "{e}");
        assert!(e.contains("| gateway | 6000 | 4800 |"), "the step table: {e}");
        assert!(e.contains("gateway/naive = 0.75 (target <= 0.6, stretch 0.4): MISSED"), "the fixed-rate ratio: {e}");
        assert!(
            e.contains(
                "- peak-morning: 1,718,523 requests, 0 errors, scan p99 7.50 ms, verify PASS (521,775 tokens)\n"
            ),
            "{e}"
        );
        assert_eq!(entry(&info, &table, &others).unwrap(), e, "the same run gives the same entry");

        let mut debug = table.clone();
        debug[2].1["resources"]["server_cpu_us_per_scan"] = json!(1237.6);
        assert!(
            headline(&info, &debug).contains("(server + Redis): gateway 1,268, naive 120"),
            "{}",
            headline(&info, &debug)
        );
        let smoke = RunInfo { mode: "smoke".into(), ..info };
        assert!(entry(&smoke, &table, &others)
            .unwrap()
            .contains("\n`scripts/bench --smoke` (debug build, seconds per scenario) on 2 cores"));
        let h = headline(&smoke, &table);
        assert!(h.contains(", smoke, debug build)"), "{h}");
        let info = RunInfo { mode: "full".into(), ..smoke };
        let h = headline(&info, &table);
        assert_eq!(h.lines().count(), 4, "{h}");
        assert!(
            h.contains("- Latest: run `20261208T003100Z` (commit `abc1234`, 2 cores: AMD EPYC 7B13, release build)"),
            "{h}"
        );
        assert!(h.contains("- Max sustainable scans/s at the p99 target: gateway 6,000, naive 10,000."), "{h}");
        assert!(h.contains("- At a fixed 2,000 scans/s, CPU µs per scan (server + Redis): gateway 90, naive 120, echo 20: gateway/naive 0.75 (target <= 0.6)."), "{h}");
        assert!(h.contains("- Context switches per scan there (server + Redis): gateway 5.00, naive 5.00, echo 4.00; the gateway's writes per Redis round trip 2.50."), "{h}");
    }
}
