//! `scan-load`: replays a national OPD morning (or a step search, or a soak) against a
//! gateway with an open-model generator, verifies afterwards that no token was lost or
//! duplicated, and serves the `echo` and `naive` reference designs. Wiring only.
mod engine;
mod host;
mod profile;
mod publish;
mod recorder;
mod reference;
mod registry;
mod report;
mod resources;
mod scenarios;
mod switch;
mod table;
#[cfg(test)]
mod test_redis;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use engine::{Engine, Mix, Target};
use profile::Morning;
use registry::Registry;
use report::Summary;
use scenarios::{StepConfig, Watched};

#[derive(Parser)]
#[command(name = "scan-load", about = "Open-model load tests for scan-gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario against a server.
    Run(Box<RunArgs>),
    /// Serve a reference design: `echo` or `naive`.
    Serve {
        #[arg(value_parser = ["echo", "naive"])]
        kind: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, env = "SCANGW_REDIS_URL")]
        redis_url: Option<String>,
    },
    /// Print the comparison table of step summaries (`summary.json` files), with ratios.
    Table {
        /// `name=path/to/summary.json`, e.g. `gateway=var/bench/gateway-step/summary.json`.
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Put a bench run on top of docs/benchmarks.md as the latest (the run that was latest
    /// moves to the top of its history; nothing else changes; publishing the same run again
    /// rewrites it in place), and refresh the README's headline lines with --readme.
    Publish {
        #[arg(long, default_value = "docs/benchmarks.md")]
        doc: PathBuf,
        /// A README with `<!-- bench-headline:begin -->` and `<!-- bench-headline:end -->`.
        #[arg(long)]
        readme: Option<PathBuf>,
        /// The run's name (scripts/bench: its UTC stamp, e.g. 20261208T003100Z).
        #[arg(long)]
        run_id: String,
        #[arg(long)]
        commit: String,
        /// `full` or `smoke`.
        #[arg(long, default_value = "full")]
        mode: String,
        #[arg(long, default_value = "unknown")]
        redis_version: String,
        /// A summary of another scenario (peak-morning, soak), `name=path`: one line each.
        #[arg(long = "also")]
        also: Vec<String>,
        /// The comparison's summaries, `name=path` as for `table`.
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Verify a stored day without a run: numbers 1..n per counter, counts and leaderboards
    /// of the synthetic registry's facilities (the same --facilities and --seed as the run).
    /// Exits 1 when the day fails the checks.
    Verify {
        #[arg(long, env = "SCANGW_REDIS_URL")]
        redis_url: String,
        #[arg(long, default_value_t = 300_000)]
        facilities: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Service day(s) to check, e.g. 2026-11-24 (IST dates, as the gateway keys them).
        #[arg(long = "day", required = true)]
        days: Vec<jiff::civil::Date>,
        /// How long to wait for leaderboards to catch up with the tokens.
        #[arg(long, default_value_t = 30)]
        verify_wait_s: u64,
    },
    /// Print the synthetic registry as NDJSON (what `run` imports).
    Registry {
        #[arg(long, default_value_t = 300_000)]
        facilities: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Scenario {
    PeakMorning,
    Step,
    /// One offered rate (`--rate`) below saturation: a warm-up of `--step-s`, then a
    /// measurement of `--measure-s` (CPU, context switches, writes per Redis round trip).
    Fixed,
    Soak,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Kind {
    Gateway,
    Echo,
    Naive,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Echo => "echo",
            Kind::Naive => "naive",
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Base URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// What the target is: the gateway (registry import and verify apply) or a reference.
    #[arg(long, value_enum, default_value = "gateway")]
    kind: Kind,
    #[arg(long, env = "SCANGW_PLATFORM_TOKEN", hide_env_values = true, default_value = "")]
    platform_token: String,
    #[arg(long, env = "SCANGW_ADMIN_TOKEN", hide_env_values = true, default_value = "")]
    admin_token: String,
    /// The Redis behind the target: verify pass and Redis memory/CPU readings.
    #[arg(long, env = "SCANGW_REDIS_URL")]
    redis_url: Option<String>,
    /// The server's pid, for CPU per scan and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Facilities in the synthetic registry (at most 300,000 make sense nationally).
    #[arg(long, default_value_t = 300_000)]
    facilities: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not import the registry first (it is already registered).
    #[arg(long)]
    no_import: bool,
    /// Skip the verify pass (it runs by default against the gateway).
    #[arg(long)]
    no_verify: bool,
    /// How long the verify pass waits for leaderboards to catch up.
    #[arg(long, default_value_t = 30)]
    verify_wait_s: u64,
    /// Directory for summary.json, report.html and summary.txt.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 4_096)]
    max_in_flight: usize,
    /// Generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,

    // peak-morning
    /// Scans per second at the 08:00 spike (3x the plateau).
    #[arg(long, default_value_t = 3_000.0)]
    peak_rate: f64,
    /// Simulated seconds per real second (60: 07:30-13:00 in 5.5 minutes).
    #[arg(long, default_value_t = 60.0)]
    compression: f64,
    /// Share of patients who scan again while their token waits.
    #[arg(long, default_value_t = 0.05)]
    repeat: f64,
    /// Share of tokens whose patient polls its status.
    #[arg(long, default_value_t = 0.5)]
    poll: f64,
    /// Share of tokens a counter calls with call-next.
    #[arg(long, default_value_t = 0.9)]
    served: f64,
    /// Mean real seconds from a token's issue to its counter calling next.
    #[arg(long, default_value_t = 5.0)]
    wait_mean_s: f64,
    /// Mean real seconds from a call to the counter completing the token (0: never).
    #[arg(long, default_value_t = 2.0)]
    service_mean_s: f64,
    /// Validity of a waiting token at every facility of the registry (60 to 86,400 s);
    /// an unserved token expires after it and leaves the queue.
    #[arg(long, default_value_t = 7200)]
    token_validity_s: u64,
    /// Play the national switch on this address (the gateway's SCANGW_HIECM_BASE_URL, with
    /// SCANGW_JWKS_FILE=tests/fixtures/protocol/jwt/jwks.json, SCANGW_JWT_ISSUER=scan-load-switch and
    /// optionally SCANGW_JWT_AUDIENCE=account, SCANGW_SWITCH_JWT_CLIENT_ID=scan-load-switch-client):
    /// a `--share` part of the scans then arrive as v3 shares, their tokens by on-share.
    #[arg(long)]
    switch_listen: Option<String>,
    /// Share of new scans sent as v3 shares (with --switch-listen).
    #[arg(long, default_value_t = 0.02)]
    share: f64,

    // step
    #[arg(long, default_value_t = 1_000.0)]
    start_rate: f64,
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    #[arg(long, default_value_t = 1_000_000.0)]
    max_rate: f64,
    #[arg(long, default_value_t = 10)]
    step_s: u64,
    #[arg(long, default_value_t = 3)]
    refine: u32,
    /// Times a failed step is run again before its rate counts as failed (every attempt is
    /// reported). One stall of the host, not of the server, should not end a search.
    #[arg(long, default_value_t = 1)]
    retries: u32,
    #[arg(long, default_value_t = 20)]
    measure_s: u64,
    #[arg(long, default_value_t = 10.0)]
    p99_target_ms: f64,
    #[arg(long, default_value_t = 0.001)]
    max_error_ratio: f64,

    // soak
    /// Scans in the soak (a national day: 10,000,000).
    #[arg(long, default_value_t = 10_000_000)]
    scans: u64,
    /// Soak arrival rate, scans per second (use ~80% of the step's max); `fixed`'s offered
    /// rate (well below saturation).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 5)]
    sample_s: u64,
    /// The soak fails if the server's RSS goes above this.
    #[arg(long, default_value_t = 512)]
    max_rss_mib: u64,
    /// The soak fails if Redis grows by more than this per token.
    #[arg(long, default_value_t = 200.0)]
    max_redis_bytes_per_token: f64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { kind, listen, workers, redis_url } => actix_web::rt::System::new()
            .block_on(reference::serve(&kind, &listen, workers, redis_url.as_deref()))
            .map(|_| true),
        Cmd::Table { runs } => table::print(&runs).map(|_| true),
        Cmd::Publish { doc, readme, run_id, commit, mode, redis_version, also, runs } => {
            let info = publish::RunInfo { id: run_id, commit, mode, redis_version };
            publish::publish(&doc, readme.as_deref(), &info, &runs, &also).map(|_| true)
        }
        Cmd::Registry { facilities, seed } => print_registry(facilities, seed).map(|_| true),
        Cmd::Verify { redis_url, facilities, seed, days, verify_wait_s } => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(verify_stored(&redis_url, facilities, seed, days, verify_wait_s)))
        }
        Cmd::Run(args) => {
            // Without a steal column (not Linux) runs simply report no steal.
            host::start();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(*args)))
        }
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("scan-load: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn print_registry(facilities: usize, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let r = Registry::synthetic(facilities, seed);
    let mut out = std::io::stdout().lock();
    for chunk in r.ndjson_chunks(10_000) {
        out.write_all(chunk.as_bytes())?;
    }
    Ok(())
}

async fn verify_stored(
    redis_url: &str,
    facilities: usize,
    seed: u64,
    days: Vec<jiff::civil::Date>,
    wait_s: u64,
) -> anyhow::Result<bool> {
    let registry = Registry::synthetic(facilities, seed);
    let t = Instant::now();
    let v = verify::verify_stored(redis_url, &registry, days, Duration::from_secs(wait_s)).await?;
    print!("{}", v.text());
    println!("stored day only: answers the generator saw are not compared (that needs a run)");
    eprintln!("verify pass in {:.1} s", t.elapsed().as_secs_f64());
    Ok(v.passed)
}

async fn run(a: RunArgs) -> anyhow::Result<bool> {
    let gateway = a.kind == Kind::Gateway;
    anyhow::ensure!(a.facilities >= 36, "--facilities must be at least 36 (one per state/UT)");
    let t = Instant::now();
    let mut registry = Registry::synthetic(a.facilities, a.seed);
    registry.token_validity_s = a.token_validity_s;
    let registry = Arc::new(registry);
    eprintln!("registry: {} facilities (seed {}) in {:.1} s", a.facilities, a.seed, t.elapsed().as_secs_f64());
    let patient_base = (jiff::Timestamp::now().as_second() as u64 % 100_000) * 10_000_000;
    let engine = Engine::new(
        Target {
            base: a.target.trim_end_matches('/').to_string(),
            platform_token: a.platform_token.clone(),
            admin_token: a.admin_token.clone(),
        },
        registry.clone(),
        a.max_in_flight,
        Duration::from_millis(a.timeout_ms),
        patient_base,
    );
    if gateway && !a.no_import {
        let t = Instant::now();
        engine.import_registry(20_000).await.context("registry import")?;
        eprintln!("imported the registry in {:.1} s", t.elapsed().as_secs_f64());
    }
    let watched = Watched {
        server_pid: a.server_pid,
        redis_url: a.redis_url.clone(),
        // Writes per Redis round trip: the gateway's group-commit histogram.
        metrics_url: gateway.then(|| format!("{}/metrics", engine.target.base)),
    };
    let switch = match &a.switch_listen {
        Some(listen) if gateway => {
            let (sw, addr) = switch::start(listen).await.with_context(|| format!("switch on {listen}"))?;
            *engine.share_bearer.lock().unwrap() = Some(switch::bearer(24 * 3600));
            eprintln!("playing the national switch on http://{addr}");
            Some(sw)
        }
        _ => None,
    };
    let share = if switch.is_some() { a.share } else { 0.0 };
    let mix = Mix {
        repeat: a.repeat,
        poll: a.poll,
        served: a.served,
        wait_mean_s: a.wait_mean_s,
        service_mean_s: a.service_mean_s,
        share,
    };
    let mut summary: Summary = match a.scenario {
        Scenario::PeakMorning => {
            anyhow::ensure!(gateway, "peak-morning needs the gateway (call-next, polls)");
            let morning = Morning { peak_rate: a.peak_rate, compression: a.compression };
            eprintln!("peak-morning: {:.0} s, spike {:.0}/s", morning.duration_s(), a.peak_rate);
            scenarios::peak_morning(&engine, morning, mix, a.seed, watched).await
        }
        Scenario::Step | Scenario::Fixed => {
            let fixed = a.scenario == Scenario::Fixed;
            let cfg = StepConfig {
                start_rate: if fixed { a.rate } else { a.start_rate },
                factor: a.factor,
                max_rate: a.max_rate,
                step: Duration::from_secs(a.step_s),
                refine: a.refine,
                retries: a.retries,
                measure: Duration::from_secs(a.measure_s),
                p99_target_ms: a.p99_target_ms,
                max_error_ratio: a.max_error_ratio,
                seed: a.seed,
            };
            if fixed {
                eprintln!("fixed rate against {}: {}/s", a.kind.as_str(), a.rate);
                scenarios::fixed(&engine, a.kind.as_str(), cfg, watched).await
            } else {
                eprintln!("step search against {}: from {}/s x{}", a.kind.as_str(), a.start_rate, a.factor);
                scenarios::step(&engine, a.kind.as_str(), cfg, watched).await
            }
        }
        Scenario::Soak => {
            anyhow::ensure!(gateway, "soak needs the gateway");
            eprintln!("soak: {} scans at {}/s", a.scans, a.rate);
            // A day's queue turns over: the served part is called and completed, the rest
            // expires after the registry's validity. Polls and shares are peak-morning's.
            let mix = Mix { poll: 0.0, share: 0.0, ..mix };
            scenarios::soak(&engine, a.rate, a.scans, mix, a.seed, watched, Duration::from_secs(a.sample_s)).await
        }
    };
    summary.target_kind = a.kind.as_str().into();

    let transport = scenarios::transport_failures(&engine.recorder.lock().unwrap());
    if transport > 0 {
        summary.passed = false;
        summary.notes.push(format!("{transport} requests got no answer (timeout or connection error)"));
    }
    if let Some(st) = &summary.step {
        if st.max_sustainable_rate <= 0.0 {
            summary.passed = false;
            summary.notes.push("no step held the target".into());
        }
    }
    if a.scenario == Scenario::Soak {
        let r = &summary.resources;
        if let Some(peak) = r.server_rss_peak_bytes {
            if peak > a.max_rss_mib * 1024 * 1024 {
                summary.passed = false;
                summary.notes.push(format!("server RSS peaked at {} MiB (limit {})", peak / 1048576, a.max_rss_mib));
            }
        }
        if let Some(b) = r.redis_bytes_per_token {
            if b > a.max_redis_bytes_per_token {
                summary.passed = false;
                summary
                    .notes
                    .push(format!("Redis grew {b:.0} bytes per token (limit {})", a.max_redis_bytes_per_token));
            }
        }
    }
    if gateway && !a.no_verify {
        let url = a.redis_url.as_deref().context("the verify pass needs --redis-url (or --no-verify)")?;
        let t = Instant::now();
        let mut observed = std::mem::take(&mut *engine.observed.lock().unwrap());
        let shares = match &switch {
            Some(sw) => {
                // On-shares arrive after the 202: wait for every accepted share's callback.
                let deadline = Instant::now() + Duration::from_secs(a.verify_wait_s);
                while Instant::now() < deadline {
                    let all_in = {
                        let results = sw.results.lock().unwrap();
                        observed.shares.iter().all(|(rid, ..)| results.contains_key(rid))
                    };
                    if all_in {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let results = sw.results.lock().unwrap().clone();
                let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::get("Asia/Kolkata")?).date();
                Some(verify::fold_shares(&mut observed, &registry, &results, today))
            }
            None => None,
        };
        match verify::verify(url, &registry, &observed, Duration::from_secs(a.verify_wait_s), shares).await {
            Ok(v) => {
                eprintln!("verify pass in {:.1} s", t.elapsed().as_secs_f64());
                if !v.passed {
                    summary.passed = false;
                }
                summary.verify = Some(v);
            }
            // The run's own figures (latency, memory, errors) still get written: a long soak
            // must not lose them because the pass after it could not finish. No verdict is a
            // failed run.
            Err(e) => {
                eprintln!("verify pass failed after {:.1} s: {e:#}", t.elapsed().as_secs_f64());
                summary.passed = false;
                summary.notes.push(format!("verify could not run to the end: {e:#}"));
            }
        }
    }

    let text = summary.text();
    print!("{text}");
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        std::fs::write(dir.join("report.html"), summary.html())?;
        std::fs::write(dir.join("summary.txt"), &text)?;
        eprintln!("wrote {}/{{summary.json,report.html,summary.txt}}", dir.display());
    }
    Ok(summary.passed)
}
