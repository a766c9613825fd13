//! Run output: the JSON summary (machine-readable, what `scripts/bench` tabulates), an HTML
//! report with SVG charts (throughput and p50/p99 over time, the latency distribution,
//! errors by code, the step search), and a one-screen text summary.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::host::{Steal, NOTABLE_PCT, WINDOW};
use crate::recorder::{percentiles, Percentiles, Recorder};
use crate::verify::Verdict;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        Machine { cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), cpu, kernel }
    }
}

/// "cpu 97% (gen 31%)": how busy the host's CPUs were during a step, and the generator's share.
pub fn busy_text(x: &Step) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}%"));
    format!("cpu {:>4} (gen {:>4})", pct(x.host_busy_pct), pct(x.generator_cpu_pct))
}

/// " Redis forked 1x": a step's background saves of Redis, empty when there were none.
pub fn step_forks_text(x: &Step) -> String {
    match x.redis_forks {
        Some(f) if f.forks > 0 => format!(" Redis forked {}x", f.forks),
        _ => String::new(),
    }
}

/// How the machine went quiet after a step: "settled in 0.3 s", or that it had not.
pub fn settle_text(x: &Step) -> String {
    if x.settled {
        format!("settled in {:.1} s", x.settle_s)
    } else {
        format!("still busy after {:.1} s", x.settle_s)
    }
}

/// One line on Redis's background saves in a run, with the seconds they were seen running.
pub fn forks_text(f: &RedisForks, seconds: &[usize]) -> String {
    if f.forks == 0 {
        return "Redis background saves: none".into();
    }
    let mut s = format!(
        "Redis background saves: {} fork(s) (AOF rewrites {}, RDB saves {}): each serialises the whole \
         dataset on one core while the run goes on",
        f.forks, f.aof_rewrites, f.rdb_saves
    );
    if !seconds.is_empty() {
        s.push_str(&format!("; seen running in seconds {}", seconds_text(seconds)));
    }
    s
}

/// "N of M 100 ms windows had >= 10% steal (worst X%)": how much of a run the host took.
pub fn steal_text(h: &Steal) -> String {
    format!(
        "{} of {} {} ms windows had >= {:.0}% (worst {:.0}%)",
        h.notable_windows,
        h.windows,
        WINDOW.as_millis(),
        NOTABLE_PCT,
        h.max_pct
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub ok: u64,
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t: usize,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The worst 100 ms window of host CPU steal in this second, percent (None: not sampled).
    pub steal_max_pct: Option<f64>,
    /// A resource sample in this second found Redis running a background save.
    pub redis_saving: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub server_rss_bytes: Option<u64>,
    pub redis_used_memory: Option<u64>,
    /// Redis was running an AOF rewrite or an RDB save (a forked child) at this sample.
    pub redis_saving: Option<bool>,
}

/// Redis's background saves during a run: each forked a child that serialised the whole
/// dataset on one core while the run went on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RedisForks {
    pub forks: u64,
    pub aof_rewrites: u64,
    pub rdb_saves: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// Server CPU seconds per acknowledged scan, in microseconds.
    pub server_cpu_us_per_scan: Option<f64>,
    pub server_rss_peak_bytes: Option<u64>,
    pub server_rss_end_bytes: Option<u64>,
    /// Growth of Redis `used_memory` divided by new tokens.
    pub redis_bytes_per_token: Option<f64>,
    pub redis_cpu_us_per_scan: Option<f64>,
    /// Context switches (voluntary + involuntary, every thread) per acknowledged scan: of
    /// the server, and of its Redis. Below saturation each thread handoff is a sleep and a
    /// wake-up, so this counts what CPU per scan pays for.
    pub server_ctx_switches_per_scan: Option<f64>,
    pub redis_ctx_switches_per_scan: Option<f64>,
    /// The gateway's writes per Redis round trip over the run (`scangw_redis_batch_size`
    /// sum over count between its two ends; None for a server without that series, or
    /// when no round trip was made).
    pub writes_per_redis_round_trip: Option<f64>,
    pub redis_forks: Option<RedisForks>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: f64,
    pub achieved_ok_per_s: f64,
    pub latency: Percentiles,
    pub error_ratio: f64,
    pub send_lag_p99_ms: f64,
    /// Host CPU steal while the step ran.
    pub host_steal: Steal,
    pub passed: bool,
    pub why: String,
    /// Seconds the machine took after the step to go quiet (the server draining its backlog),
    /// and whether it did before the deadline; the next step starts only then.
    pub settle_s: f64,
    pub settled: bool,
    /// Redis's background saves while the step ran (None where Redis was not read).
    pub redis_forks: Option<RedisForks>,
    /// Mean busy share of all the host's CPUs during the step, and the generator's own share
    /// (percent; None where not sampled).
    pub host_busy_pct: Option<f64>,
    pub generator_cpu_pct: Option<f64>,
    /// The step failed under host steal while it kept up with its rate, and the search climbed
    /// past it: it measured the hypervisor, not a limit of the server.
    pub unjudged: bool,
}

/// The windows that decide where a search's max is: the measurement at 80% of it, and the
/// last run of the lowest failed rate above it (what bounds it; none when the search ran out
/// of rates). Steal anywhere else cannot have moved the max: a stolen step below it was
/// passed by a higher rate, and a pass under steal is a pass. `steps` are (rate, steal) in
/// the order they ran.
pub fn deciding_steal(steps: &[(f64, Steal)], max: f64, at80: Option<Steal>) -> Steal {
    let bounding = bounding_run(steps, |(r, _)| *r, max).map(|(_, s)| *s);
    bounding.unwrap_or_default().merge(at80.unwrap_or_default())
}

/// The last run of the lowest rate above `max` among `steps` (in the order they ran): the
/// step that bounds a search's max, or none when the search ran out of rates.
pub fn bounding_run<T>(steps: &[T], rate: impl Fn(&T) -> f64, max: f64) -> Option<&T> {
    let bound = steps.iter().map(&rate).filter(|r| *r > max).min_by(f64::total_cmp)?;
    steps.iter().rev().find(|s| rate(s) == bound)
}

/// Why a step search's maximum is where it is, when the run can tell; the text report and
/// the bench table say it in their own words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxBound {
    /// Notable steal in this share of the windows that decide the max ([`deciding_steal`])
    /// ([`Steal::disturbed`]): the host was measured as much as the server. It comes first,
    /// because a stolen vCPU is also what makes the generator lag.
    HostSteal(f64),
    Generator,
    HostContended,
    HostSaturated,
}

/// `steal`: over the windows that decide the max ([`deciding_steal`]); `lag`: why the
/// generator fell behind at the first failing rate.
pub fn max_bound(steal: &Steal, lag: Option<Lag>) -> Option<MaxBound> {
    if steal.disturbed() {
        return Some(MaxBound::HostSteal(steal.notable_share()));
    }
    lag.map(|l| match l {
        Lag::Generator => MaxBound::Generator,
        Lag::HostContended => MaxBound::HostContended,
        Lag::HostSaturated => MaxBound::HostSaturated,
    })
}

/// Why the generator fell behind its schedule at the first failing rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lag {
    /// The host's CPUs had room: the generator itself could not send faster.
    Generator,
    /// The CPUs were mostly busy, and mostly not with the generator: server and Redis kept
    /// both cores nearly full and the generator waited for one. Not the generator's own
    /// capacity, and not a full host either; the server on a host of its own may do more.
    HostContended,
    /// Every CPU was busy: generator, Redis and server together saturated the host, so the
    /// server on a machine of its own may do more, but by how much this run cannot say.
    HostSaturated,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub p99_target_ms: f64,
    pub max_error_ratio: f64,
    pub steps: Vec<Step>,
    /// The highest arrival rate that held the p99 target with under the error ratio.
    pub max_sustainable_rate: f64,
    /// True when the search stopped because the generator, not the server, fell behind.
    /// The first failing rate's send lag was large (see [`Lag`]).
    pub generator_bound: bool,
    /// The generator fell behind on a host mostly busy with server and Redis ([`Lag`]).
    pub host_contended: bool,
    pub host_saturated: bool,
    /// The measurement at 80% of the max sustainable rate.
    pub at_80_percent: Option<Step>,
    /// Earlier measurements at 80% that host steal disturbed, so they were taken again
    /// (reported, not used).
    pub at_80_stolen: Vec<Step>,
}

impl StepSummary {
    /// Why the generator fell behind at the first failing rate, from the summary's flags.
    pub fn lag(&self) -> Option<Lag> {
        Lag::from_flags(self.generator_bound, self.host_contended, self.host_saturated)
    }
}

impl Lag {
    /// The lag a summary's three flags name (at most one is set; none when none is).
    pub fn from_flags(generator: bool, contended: bool, saturated: bool) -> Option<Lag> {
        match (generator, contended, saturated) {
            (true, _, _) => Some(Lag::Generator),
            (_, true, _) => Some(Lag::HostContended),
            (_, _, true) => Some(Lag::HostSaturated),
            _ => None,
        }
    }
}

/// The `fixed` scenario: one offered rate, a warm-up and the measurement (whose figures are
/// the summary's latency, timeline and resources).
#[derive(Debug, Clone, Serialize)]
pub struct FixedSummary {
    pub rate: f64,
    pub warmup: Step,
    pub measurement: Step,
    /// Earlier measurements that host steal disturbed, so they were taken again.
    pub stolen: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub target_kind: String,
    pub target: String,
    pub machine: Machine,
    pub started_at: String,
    pub duration_s: f64,
    pub scans_scheduled: u64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_ratio: f64,
    pub ok_per_s: f64,
    pub latency: Percentiles,
    pub ops: BTreeMap<String, OpSummary>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub send_lag: Percentiles,
    pub dropped_follow_ups: u64,
    /// Host CPU steal over the run (of the measurement at 80% for `step`).
    pub host_steal: Option<Steal>,
    pub timeline: Vec<Point>,
    pub resources: Resources,
    pub step: Option<StepSummary>,
    pub fixed: Option<FixedSummary>,
    pub verify: Option<Verdict>,
    pub passed: bool,
    pub notes: Vec<String>,
}

/// Run seconds as ranges: [3, 4, 5, 9] -> "3-5, 9".
pub fn seconds_text(seconds: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seconds.len() {
        let mut j = i;
        while j + 1 < seconds.len() && seconds[j + 1] == seconds[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", seconds[i], seconds[j]) } else { seconds[i].to_string() });
        i = j + 1;
    }
    parts.join(", ")
}

impl Summary {
    /// Takes the run's resource readings and marks the seconds in which Redis was found
    /// running a background save (the sampler starts with the run, so its clock is the
    /// timeline's to within milliseconds).
    pub fn set_resources(&mut self, resources: Resources) {
        for p in &mut self.timeline {
            p.redis_saving = false;
        }
        for sample in resources.samples.iter().filter(|x| x.redis_saving == Some(true)) {
            if let Some(p) = self.timeline.get_mut(sample.t_s as usize) {
                p.redis_saving = true;
            }
        }
        self.resources = resources;
    }

    /// The run seconds with a Redis background save running.
    pub fn redis_saving_seconds(&self) -> Vec<usize> {
        self.timeline.iter().filter(|p| p.redis_saving).map(|p| p.t).collect()
    }

    pub fn from_recorder(r: &Recorder, duration_s: f64) -> Summary {
        let ops = r
            .ops
            .iter()
            .map(|(k, h)| {
                (k.as_str().to_string(), OpSummary { ok: r.ok.get(k).copied().unwrap_or(0), latency: percentiles(h) })
            })
            .collect();
        let errors_by_code = r.errors.iter().map(|((k, c), n)| (format!("{} {c}", k.as_str()), *n)).collect();
        let timeline = r
            .timeline
            .iter()
            .enumerate()
            .map(|(t, s)| {
                let p = percentiles(&s.latency);
                Point {
                    t,
                    ok: s.ok,
                    errors: s.errors,
                    p50_ms: p.p50_ms,
                    p99_ms: p.p99_ms,
                    steal_max_pct: None,
                    redis_saving: false,
                }
            })
            .collect();
        let ok: u64 = r.ok.values().sum();
        Summary {
            scenario: String::new(),
            target_kind: String::new(),
            target: String::new(),
            machine: Machine::read(),
            started_at: jiff::Timestamp::now().to_string(),
            duration_s,
            scans_scheduled: 0,
            requests: r.total(),
            ok,
            errors: r.total_errors(),
            error_ratio: r.error_ratio(),
            ok_per_s: if duration_s > 0.0 { ok as f64 / duration_s } else { 0.0 },
            latency: percentiles(&r.overall()),
            ops,
            errors_by_code,
            send_lag: percentiles(&r.send_lag),
            dropped_follow_ups: 0,
            host_steal: None,
            timeline,
            resources: Resources::default(),
            step: None,
            fixed: None,
            verify: None,
            passed: true,
            notes: Vec::new(),
        }
    }

    /// The one-screen text summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scan-load {} against {} ({}) on {} cores, {:.1} s",
            self.scenario, self.target_kind, self.target, self.machine.cores, self.duration_s
        );
        let _ = writeln!(
            s,
            "requests {}  ok {}  errors {} ({:.3}%)  ok/s {:.0}",
            self.requests,
            self.ok,
            self.errors,
            self.error_ratio * 100.0,
            self.ok_per_s
        );
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "ok", "p50 ms", "p90", "p99", "p99.9", "max"
        );
        for (k, o) in &self.ops {
            let l = &o.latency;
            let _ = writeln!(
                s,
                "{:<10} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
                k, o.ok, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        for (code, n) in &self.errors_by_code {
            let _ = writeln!(s, "  error {code}: {n}");
        }
        let _ =
            writeln!(s, "generator send lag p99 {:.2} ms, max {:.1} ms", self.send_lag.p99_ms, self.send_lag.max_ms);
        if let Some(h) = &self.host_steal {
            let _ = writeln!(s, "host CPU steal: {}", steal_text(h));
        }
        let r = &self.resources;
        let mib = |b: u64| b as f64 / 1048576.0;
        if let Some(c) = r.server_cpu_us_per_scan {
            let _ = writeln!(s, "server CPU {c:.1} us/scan");
        }
        if let Some(p) = r.server_rss_peak_bytes {
            let _ = writeln!(s, "server RSS peak {:.1} MiB", mib(p));
        }
        if let Some(b) = r.redis_bytes_per_token {
            let _ = writeln!(s, "Redis memory {b:.0} bytes/token");
        }
        if let Some(c) = r.redis_cpu_us_per_scan {
            let _ = writeln!(s, "Redis CPU {c:.1} us/scan");
        }
        if let Some(c) = r.server_ctx_switches_per_scan {
            let _ = writeln!(s, "server context switches {c:.2}/scan");
        }
        if let Some(c) = r.redis_ctx_switches_per_scan {
            let _ = writeln!(s, "Redis context switches {c:.2}/scan");
        }
        if let Some(w) = r.writes_per_redis_round_trip {
            let _ = writeln!(s, "writes per Redis round trip {w:.2}");
        }
        if let Some(f) = r.redis_forks {
            let _ = writeln!(s, "{}", forks_text(&f, &self.redis_saving_seconds()));
        }
        if let Some(fx) = &self.fixed {
            let w = &fx.warmup;
            let _ = writeln!(
                s,
                "fixed rate {:.0}/s: warm-up {:.0} ok/s p99 {:.2} ms; measurement {:.0} ok/s p99 {:.2} ms {}",
                fx.rate,
                w.achieved_ok_per_s,
                w.latency.p99_ms,
                fx.measurement.achieved_ok_per_s,
                fx.measurement.latency.p99_ms,
                busy_text(&fx.measurement)
            );
            for m in &fx.stolen {
                let _ = writeln!(
                    s,
                    "  discarded: host steal in {:.0}% of its windows (worst {:.0}%); measured again",
                    m.host_steal.notable_share() * 100.0,
                    m.host_steal.max_pct
                );
            }
        }
        if let Some(st) = &self.step {
            let _ =
                writeln!(s, "step search (p99 <= {} ms, errors < {}%):", st.p99_target_ms, st.max_error_ratio * 100.0);
            for x in &st.steps {
                let _ = writeln!(
                    s,
                    "  {:>8.0}/s -> {:>8.0} ok/s  p99 {:>8.2} ms  err {:.3}%  steal max {:>4.0}%  {}{}  {:<24} {}",
                    x.rate,
                    x.achieved_ok_per_s,
                    x.latency.p99_ms,
                    x.error_ratio * 100.0,
                    x.host_steal.max_pct,
                    busy_text(x),
                    step_forks_text(x),
                    match (x.passed, x.unjudged) {
                        (true, _) => "pass".into(),
                        (false, true) => format!("STOLEN ({}), climbed on", x.why),
                        (false, false) => format!("FAIL ({})", x.why),
                    },
                    settle_text(x)
                );
            }
            let steps: Vec<(f64, Steal)> = st.steps.iter().map(|x| (x.rate, x.host_steal)).collect();
            let steal = deciding_steal(&steps, st.max_sustainable_rate, self.host_steal);
            let why = match max_bound(&steal, st.lag()) {
                Some(MaxBound::HostSteal(share)) => format!(
                    " (host steal in {:.0}% of the windows that decide it, the step that bounds it and the measurement at 80%: they measured the host as much as the server)",
                    share * 100.0
                ),
                Some(MaxBound::Generator) => " (generator-bound: the server may do more)".into(),
                Some(MaxBound::HostContended) => {
                    " (host contended above it: server and Redis kept the cores busy and the generator waited for one; the server may do more)".into()
                }
                Some(MaxBound::HostSaturated) => {
                    " (host saturated above it: generator, Redis and server share its CPUs)".into()
                }
                None => String::new(),
            };
            let _ = writeln!(s, "max sustainable rate {:.0}/s{why}", st.max_sustainable_rate);
            for m in &st.at_80_stolen {
                let _ = writeln!(
                    s,
                    "at 80% ({:.0}/s), discarded: host steal in {:.0}% of its windows (worst {:.0}%), p99 {:.2} ms; measured again",
                    m.rate,
                    m.host_steal.notable_share() * 100.0,
                    m.host_steal.max_pct,
                    m.latency.p99_ms
                );
            }
            if let Some(m) = &st.at_80_percent {
                let _ = writeln!(
                    s,
                    "at 80% ({:.0}/s): p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  err {:.3}%",
                    m.rate,
                    m.latency.p50_ms,
                    m.latency.p99_ms,
                    m.latency.p999_ms,
                    m.error_ratio * 100.0
                );
            }
        }
        if let Some(v) = &self.verify {
            s.push_str(&v.text());
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(s, "result: {}", if self.passed { "PASS" } else { "FAIL" });
        s
    }

    /// The HTML report: self-contained, charts as inline SVG.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>scan-load {} {}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}}\
             pre{{background:#f4f4f4;padding:1em;overflow:auto}}svg{{background:#fff;border:1px solid #ddd}}\
             h2{{margin-top:1.5em}}</style></head><body>",
            esc(&self.scenario),
            esc(&self.target_kind)
        );
        let _ = write!(h, "<h1>scan-load: {} against {}</h1>", esc(&self.scenario), esc(&self.target_kind));
        let _ = write!(h, "<pre>{}</pre>", esc(&self.text()));
        let ok: Vec<(f64, f64)> = self.timeline.iter().map(|p| (p.t as f64, p.ok as f64)).collect();
        let err: Vec<(f64, f64)> = self.timeline.iter().map(|p| (p.t as f64, p.errors as f64)).collect();
        h.push_str("<h2>Throughput over time</h2>");
        h.push_str(&line_chart(&[("ok/s", "#2a7", &ok), ("errors/s", "#d33", &err)], "run second", "requests/s"));
        let p50: Vec<(f64, f64)> = self.timeline.iter().map(|p| (p.t as f64, p.p50_ms)).collect();
        let p99: Vec<(f64, f64)> = self.timeline.iter().map(|p| (p.t as f64, p.p99_ms)).collect();
        h.push_str("<h2>Latency over time (from the scheduled send time)</h2>");
        h.push_str(&line_chart(&[("p50 ms", "#27c", &p50), ("p99 ms", "#c72", &p99)], "run second", "ms"));
        let saving = self.redis_saving_seconds();
        if !saving.is_empty() {
            let _ = write!(
                h,
                "<p>Redis was running a background save (AOF rewrite or RDB save) in seconds {}.</p>",
                seconds_text(&saving)
            );
        }
        let steal: Vec<(f64, f64)> =
            self.timeline.iter().filter_map(|p| Some((p.t as f64, p.steal_max_pct?))).collect();
        if let Some(hs) = &self.host_steal {
            h.push_str("<h2>Host CPU steal (worst 100 ms window of each second)</h2>");
            let _ = write!(
                h,
                "<p>{}. A stall in a second with steal is the hypervisor's, not the server's.</p>",
                steal_text(hs)
            );
            h.push_str(&line_chart(&[("steal %", "#939", &steal)], "run second", "% of CPU time"));
        }
        h.push_str("<h2>Latency distribution</h2>");
        let spectrum: Vec<(f64, f64)> = [
            (0.5, self.latency.p50_ms),
            (0.9, self.latency.p90_ms),
            (0.99, self.latency.p99_ms),
            (0.999, self.latency.p999_ms),
            (0.9999, self.latency.max_ms),
        ]
        .iter()
        .map(|(q, v)| (-(1.0f64 - q).log10(), *v))
        .collect();
        h.push_str(&line_chart(
            &[("latency ms", "#27c", &spectrum)],
            "percentile (1 = p90, 2 = p99, 3 = p99.9, 4 = max)",
            "ms",
        ));
        h.push_str("<h2>Errors by code</h2>");
        if self.errors_by_code.is_empty() {
            h.push_str("<p>No errors.</p>");
        } else {
            h.push_str(&bar_chart(&self.errors_by_code));
        }
        if let Some(st) = &self.step {
            h.push_str("<h2>Step search: p99 by arrival rate</h2>");
            let pts: Vec<(f64, f64)> = st.steps.iter().map(|s| (s.rate, s.latency.p99_ms)).collect();
            let target: Vec<(f64, f64)> = st.steps.iter().map(|s| (s.rate, st.p99_target_ms)).collect();
            h.push_str(&line_chart(&[("p99 ms", "#c72", &pts), ("target", "#999", &target)], "arrival rate /s", "ms"));
        }
        if !self.resources.samples.is_empty() {
            h.push_str("<h2>Memory</h2>");
            let mib = |b: Option<u64>| b.unwrap_or(0) as f64 / 1048576.0;
            let rss: Vec<(f64, f64)> =
                self.resources.samples.iter().map(|s| (s.t_s, mib(s.server_rss_bytes))).collect();
            let redis: Vec<(f64, f64)> =
                self.resources.samples.iter().map(|s| (s.t_s, mib(s.redis_used_memory))).collect();
            h.push_str(&line_chart(
                &[("server RSS MiB", "#27c", &rss), ("Redis used MiB", "#c33", &redis)],
                "s",
                "MiB",
            ));
        }
        h.push_str("</body></html>\n");
        h
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const W: f64 = 900.0;
const H: f64 = 280.0;
const PAD: f64 = 50.0;

/// A line chart of a few series sharing axes, with min/max tick labels.
/// A named, coloured series of (x, y) points.
type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

fn line_chart(series: &[Series<'_>], x_label: &str, y_label: &str) -> String {
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return "<p>No data.</p>".into();
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.05 };
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD + -(y / y1) * (H - 2.0 * PAD);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-size=\"12\">");
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#333\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#333\"/>",
        b = H - PAD,
        r = W - PAD
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><line x1=\"{PAD}\" x2=\"{}\" y1=\"{y2}\" y2=\"{y2}\" stroke=\"#eee\"/>",
            PAD - 4.0,
            sy(y) + 4.0,
            fmt_num(y),
            W - PAD,
            y2 = sy(y)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{PAD}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        H - PAD + 16.0,
        fmt_num(x0),
        W - PAD,
        H - PAD + 16.0,
        fmt_num(x1)
    );
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", W / 2.0, H - 10.0, esc(x_label));
    let _ = write!(
        s,
        "<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>",
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (i, (name, color, data)) in series.iter().enumerate() {
        let path: Vec<String> = data.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ =
            write!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"12\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"21\">{}</text>",
            PAD + 10.0 + i as f64 * 160.0,
            PAD + 24.0 + i as f64 * 160.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn bar_chart(items: &BTreeMap<String, u64>) -> String {
    let max = items.values().copied().max().unwrap_or(1).max(1) as f64;
    let row = 22.0;
    let h = row * items.len() as f64 + 10.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-size=\"12\">");
    for (i, (code, n)) in items.iter().enumerate() {
        let y = 5.0 + i as f64 * row;
        let w = (*n as f64 / max) * (W - 420.0);
        let _ = write!(
            s,
            "<text x=\"300\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"310\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"#d33\"/><text x=\"{}\" y=\"{}\">{n}</text>",
            y + 12.0,
            esc(code),
            315.0 + w,
            y + 12.0
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{OpKind, Outcome};
    use std::time::Duration;

    #[test]
    fn reports_carry_the_numbers_and_escape_text() {
        let mut r = Recorder::default();
        for i in 0..100u64 {
            r.record(OpKind::Scan, (i / 50) as usize, Duration::from_millis(1 + i % 5), Duration::ZERO, &Outcome::Ok);
        }
        r.record(OpKind::Scan, 1, Duration::from_millis(1), Duration::ZERO, &Outcome::Status(503, "OVERLOADED".into()));
        let mut s = Summary::from_recorder(&r, 2.0);
        s.scenario = "step<x>".into();
        s.target_kind = "gateway".into();
        assert_eq!((s.requests, s.ok, s.errors), (101, 100, 1));
        assert_eq!(s.ok_per_s, 50.0);
        assert_eq!(s.errors_by_code["scan 503 OVERLOADED"], 1);
        let text = s.text();
        assert!(text.contains("errors 1"), "{text}");
        let html = s.html();
        assert!(html.contains("step&lt;x&gt;") && !html.contains("step<x>"));
        assert_eq!(html.matches("<svg").count(), 4, "throughput, latency, distribution, errors");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["timeline"].as_array().unwrap().len(), 2);
        assert!(!text.contains("steal"), "no steal line when steal was not sampled: {text}");

        // With steal sampled, the text says how much and the HTML charts it per second.
        s.host_steal = Some(Steal { windows: 20, notable_windows: 2, max_pct: 26.0 });
        s.timeline[1].steal_max_pct = Some(26.0);
        let text = s.text();
        assert!(text.contains("host CPU steal: 2 of 20 100 ms windows had >= 10% (worst 26%)"), "{text}");
        assert_eq!(s.html().matches("<svg").count(), 5, "and host steal");

        // Each step of a search says how long the machine took to go quiet after it. (The
        // measurement had a steal episode or two, as on a quiet day: not a disturbed run.)
        s.host_steal = Some(Steal { windows: 150, notable_windows: 2, max_pct: 26.0 });
        let step = |settle_s, settled| Step {
            rate: 1000.0,
            achieved_ok_per_s: 990.0,
            latency: s.latency.clone(),
            error_ratio: 0.0,
            send_lag_p99_ms: 0.1,
            host_steal: Steal::default(),
            passed: true,
            why: String::new(),
            settle_s,
            settled,
            redis_forks: Some(RedisForks::default()),
            host_busy_pct: Some(97.4),
            generator_cpu_pct: None,
            unjudged: false,
        };
        s.step = Some(StepSummary {
            p99_target_ms: 10.0,
            max_error_ratio: 0.001,
            steps: vec![
                step(0.3, true),
                Step { redis_forks: Some(RedisForks { forks: 1, aof_rewrites: 1, rdb_saves: 0 }), ..step(60.0, false) },
            ],
            max_sustainable_rate: 1000.0,
            generator_bound: false,
            host_contended: false,
            host_saturated: true,
            at_80_percent: None,
            at_80_stolen: Vec::new(),
        });
        let text = s.text();
        assert!(text.contains("pass") && text.contains("settled in 0.3 s"), "{text}");
        assert!(text.contains("still busy after 60.0 s"), "{text}");
        // The step Redis forked during says so; the one without a fork says nothing of it.
        assert_eq!(text.matches("Redis forked 1x").count(), 1, "{text}");
        assert!(text.contains("cpu  97% (gen    -)"), "{text}");
        assert!(text.contains("(host saturated above it"), "{text}");
        let st = s.step.as_mut().unwrap();
        (st.host_saturated, st.host_contended) = (false, true);
        let text = s.text();
        assert!(text.contains("(host contended above it: server and Redis kept the cores busy"), "{text}");
        assert!(!text.contains("saturated"), "{text}");
        let st = s.step.as_mut().unwrap();
        (st.host_saturated, st.host_contended) = (true, false);

        // A search whose steps lost their CPUs to the hypervisor says so instead of blaming
        // the generator or the server.
        // A stolen step below the max was passed by a higher rate: it decides nothing.
        let stolen = Step {
            host_steal: Steal { windows: 80, notable_windows: 40, max_pct: 45.0 },
            rate: 500.0,
            passed: false,
            why: "p99 30.0 ms".into(),
            unjudged: true,
            ..step(0.3, true)
        };
        let st = s.step.as_mut().unwrap();
        st.steps = vec![stolen.clone(), step(0.3, true)];
        st.host_saturated = false;
        let text = s.text();
        assert!(text.contains("max sustainable rate 1000/s\n"), "{text}");
        assert!(text.contains("STOLEN (p99 30.0 ms), climbed on"), "{text}");
        // The step that bounds the max was stolen: the max may be higher.
        let stolen = Step { rate: 1500.0, unjudged: false, ..stolen };
        let steps = vec![step(0.3, true), stolen];
        let st = s.step.as_mut().unwrap();
        st.steps = steps;
        st.generator_bound = true;
        st.host_saturated = false;
        let text = s.text();
        assert!(
            text.contains("max sustainable rate 1000/s (host steal in 18% of the windows that decide it, the step that bounds it and the measurement at 80%: they measured the host as much as the server)"),
            "{text}"
        );

        // A measurement at 80% taken again for steal shows the discarded run and the one used.
        let st = s.step.as_mut().unwrap();
        let quiet80 = Step { rate: 800.0, ..step(0.3, true) };
        st.at_80_stolen = vec![Step { rate: 800.0, ..st.steps[1].clone() }];
        st.at_80_percent = Some(quiet80);
        let text = s.text();
        assert!(
            text.contains("at 80% (800/s), discarded: host steal in 50% of its windows (worst 45%), p99"),
            "{text}"
        );
        assert!(text.contains("at 80% (800/s): p50"), "{text}");
    }

    #[test]
    fn redis_background_saves_are_reported_with_the_seconds_they_ran() {
        let mut r = Recorder::default();
        for i in 0..6u64 {
            r.record(OpKind::Scan, i as usize, Duration::from_millis(2), Duration::ZERO, &Outcome::Ok);
        }
        let mut s = Summary::from_recorder(&r, 6.0);
        let sample = |t_s, saving| Sample {
            t_s,
            server_rss_bytes: None,
            redis_used_memory: Some(1),
            redis_saving: Some(saving),
        };
        s.set_resources(Resources {
            redis_forks: Some(RedisForks { forks: 1, aof_rewrites: 1, rdb_saves: 0 }),
            samples: vec![
                sample(0.2, false),
                sample(2.1, true),
                sample(2.6, true),
                sample(3.4, true),
                sample(5.5, false),
            ],
            ..Resources::default()
        });
        assert_eq!(s.redis_saving_seconds(), vec![2, 3]);
        let text = s.text();
        assert!(
            text.contains("Redis background saves: 1 fork(s) (AOF rewrites 1, RDB saves 0)")
                && text.contains("seen running in seconds 2-3"),
            "{text}"
        );
        assert!(s.html().contains("background save (AOF rewrite or RDB save) in seconds 2-3"));
        assert_eq!(serde_json::to_value(&s).unwrap()["timeline"][2]["redis_saving"], true);

        s.set_resources(Resources { redis_forks: Some(RedisForks::default()), ..Resources::default() });
        assert!(s.text().contains("Redis background saves: none"), "{}", s.text());
        assert!(s.redis_saving_seconds().is_empty(), "new readings replace the old marks");
        assert_eq!(seconds_text(&[3, 4, 5, 9, 11, 12]), "3-5, 9, 11-12");
    }
}
