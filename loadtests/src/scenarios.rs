//! The scenarios: `peak-morning` (the compressed national morning with the full operation
//! mix), `step` (the max sustainable rate: the highest arrival rate whose p99 holds the
//! target with under 0.1% errors, then a measurement at 80% of it), `fixed` (one offered
//! rate below saturation: CPU, context switches and writes per Redis round trip per scan)
//! and `soak` (a whole national day of scans as fast as the server sustains, with memory
//! sampled).
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Engine, Mix, Plan, RunInfo};
use crate::host::{self, Steal};
use crate::profile::Morning;
use crate::recorder::{percentiles, Recorder};
use crate::report::{self, FixedSummary, Lag, Point, RedisForks, Resources, Sample, Step, StepSummary, Summary};
use crate::resources::{self, RedisReading};

/// The processes whose resources a run samples.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub server_pid: Option<u32>,
    pub redis_url: Option<String>,
    /// The server's Prometheus page (the gateway's `/metrics`): writes per Redis round trip.
    pub metrics_url: Option<String>,
}

/// Samples server RSS and Redis memory every `every` until stopped, and takes the CPU and
/// memory readings at both ends that per-scan figures are computed from.
pub struct Sampler {
    watched: Watched,
    started: Instant,
    cpu0: Option<f64>,
    redis0: Option<RedisReading>,
    /// Context switches of the server and of Redis, and the gateway's batch-size totals, at
    /// the start.
    ctx0: Option<u64>,
    redis_ctx0: Option<u64>,
    batches0: Option<(f64, f64)>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How long compacting the AOF before a measurement may take: a search's million tokens
/// rewrite in seconds.
const COMPACT_DEADLINE: Duration = Duration::from_secs(120);

/// Compacts the AOF of the Redis at `url` (see [`resources::compact_aof`]) before a
/// measurement, and says what it did; `None` without a Redis or an AOF. The step search
/// writes up to 1.6 million scans (about 1 KB of AOF each) into its Redis, so whether the
/// rewrite they start falls into the 15 s measurement at 80% is chance, not the rate
/// measured (the README's Redis section says how a deployment keeps rewrites off its peak).
async fn compact_aof(url: &Option<String>) -> Option<String> {
    let url = url.as_ref()?;
    let compacted = async {
        let mut con = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
        resources::compact_aof(&mut con, COMPACT_DEADLINE).await
    };
    match compacted.await {
        Ok(None) => None,
        Ok(Some((took, true))) => {
            Some(format!("started on a compacted AOF (BGREWRITEAOF before it took {:.1} s)", took.as_secs_f64()))
        }
        Ok(Some((took, false))) => Some(format!(
            "the AOF rewrite before it was still running after {:.0} s; measured anyway",
            took.as_secs_f64()
        )),
        Err(e) => Some(format!("could not compact the AOF before it ({e}); measured anyway")),
    }
}

async fn redis_reading(url: &Option<String>) -> Option<RedisReading> {
    let url = url.as_ref()?;
    let mut con = redis::Client::open(url.as_str()).ok()?.get_multiplexed_async_connection().await.ok()?;
    resources::redis_reading(&mut con).await.ok()
}

impl Sampler {
    pub async fn start(watched: Watched, every: Duration) -> Sampler {
        let batches0 = batch_totals(&watched.metrics_url).await;
        let redis0 = redis_reading(&watched.redis_url).await;
        let redis_ctx0 = redis0.and_then(|r| r.pid).and_then(resources::ctx_switches);
        let ctx0 = watched.server_pid.and_then(resources::ctx_switches);
        let cpu0 = watched.server_pid.and_then(resources::cpu_seconds);
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let (w, out) = (watched.clone(), samples.clone());
        tokio::spawn(async move {
            let mut con = match &w.redis_url {
                Some(u) => match redis::Client::open(u.as_str()) {
                    Ok(c) => c.get_multiplexed_async_connection().await.ok(),
                    Err(_) => None,
                },
                None => None,
            };
            loop {
                let redis = match con.as_mut() {
                    Some(c) => resources::redis_reading(c).await.ok(),
                    None => None,
                };
                let server_rss_bytes = w.server_pid.and_then(resources::rss_bytes);
                out.lock().unwrap().push(Sample {
                    t_s: started.elapsed().as_secs_f64(),
                    server_rss_bytes,
                    redis_used_memory: redis.map(|r| r.used_memory),
                    redis_saving: redis.map(|r| r.saving),
                });
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Sampler { watched, started, cpu0, redis0, ctx0, redis_ctx0, batches0, samples, stop: Some(tx) }
    }

    /// Stops sampling; per-scan figures are divided by `scans` (acknowledged new tokens).
    pub async fn finish(mut self, scans: u64) -> Resources {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // In the order of the start's readings, reversed: the server's own figures first,
        // before the readings of Redis and of the metrics page add to them.
        let cpu1 = self.watched.server_pid.and_then(resources::cpu_seconds);
        let ctx1 = self.watched.server_pid.and_then(resources::ctx_switches);
        let redis_ctx1 = self.redis0.and_then(|r| r.pid).and_then(resources::ctx_switches);
        let redis1 = redis_reading(&self.watched.redis_url).await;
        let batches1 = batch_totals(&self.watched.metrics_url).await;
        let mut samples = self.samples.lock().unwrap().clone();
        samples.push(Sample {
            t_s: self.started.elapsed().as_secs_f64(),
            server_rss_bytes: self.watched.server_pid.and_then(resources::rss_bytes),
            redis_used_memory: redis1.map(|r| r.used_memory),
            redis_saving: redis1.map(|r| r.saving),
        });
        let per = |x: f64| if scans > 0 { Some(x / scans as f64) } else { None };
        Resources {
            server_cpu_us_per_scan: match (self.cpu0, cpu1) {
                (Some(a), Some(b)) => per((b - a) * 1e6),
                _ => None,
            },
            server_rss_peak_bytes: samples.iter().filter_map(|s| s.server_rss_bytes).max(),
            server_rss_end_bytes: samples.last().and_then(|s| s.server_rss_bytes),
            redis_bytes_per_token: match (self.redis0, redis1) {
                (Some(a), Some(b)) => per(b.used_memory as f64 - a.used_memory as f64),
                _ => None,
            },
            redis_cpu_us_per_scan: match (self.redis0, redis1) {
                (Some(a), Some(b)) => per((b.cpu_s - a.cpu_s) * 1e6),
                _ => None,
            },
            server_ctx_switches_per_scan: self.ctx0.zip(ctx1).and_then(|(a, b)| per(b.saturating_sub(a) as f64)),
            redis_ctx_switches_per_scan: self
                .redis_ctx0
                .zip(redis_ctx1)
                .and_then(|(a, b)| per(b.saturating_sub(a) as f64)),
            writes_per_redis_round_trip: match (self.batches0, batches1) {
                (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
                _ => None,
            },
            redis_forks: forks_between(self.redis0, redis1),
            samples,
        }
    }
}

/// The gateway's `scangw_redis_batch_size` sum and count, from its metrics page.
async fn batch_totals(url: &Option<String>) -> Option<(f64, f64)> {
    resources::batch_size_totals(&resources::fetch_text(url.as_ref()?).await?)
}

/// Redis's background saves between two readings.
fn forks_between(a: Option<RedisReading>, b: Option<RedisReading>) -> Option<RedisForks> {
    let (a, b) = (a?, b?);
    Some(RedisForks {
        forks: b.forks.saturating_sub(a.forks),
        aof_rewrites: b.aof_rewrites.saturating_sub(a.aof_rewrites),
        rdb_saves: b.rdb_saves.saturating_sub(a.rdb_saves),
    })
}

/// New tokens acknowledged (201) in a recorder: scans that were not repeats.
pub fn new_tokens(engine: &Engine) -> u64 {
    engine.observed.lock().unwrap().seen.len() as u64
}

pub fn summarize(engine: &Engine, scenario: &str, kind: &str, info: &RunInfo) -> Summary {
    let r = engine.recorder.lock().unwrap();
    let mut s = Summary::from_recorder(&r, info.elapsed.as_secs_f64());
    s.scenario = scenario.into();
    s.target_kind = kind.into();
    s.target = engine.target.base.clone();
    s.scans_scheduled = info.scans_scheduled;
    s.dropped_follow_ups = info.dropped_follow_ups;
    let windows = host::between(info.started, info.started + info.elapsed);
    if !windows.is_empty() {
        s.host_steal = Some(host::summarize(&windows));
        attribute_steal(&mut s.timeline, info.started, &windows);
    }
    s
}

/// Gives each run second the worst steal window that ended in it.
fn attribute_steal(timeline: &mut [Point], started: Instant, windows: &[(Instant, f64)]) {
    for (t, pct) in windows {
        let second = t.saturating_duration_since(started).as_secs() as usize;
        if let Some(p) = timeline.get_mut(second) {
            p.steal_max_pct = Some(p.steal_max_pct.unwrap_or(0.0).max(*pct));
        }
    }
}

/// Host CPU steal while a run went.
fn run_steal(info: &RunInfo) -> Steal {
    host::summarize(&host::between(info.started, info.started + info.elapsed))
}

/// Answers that were no answer at all (timeouts, refused connections): overload must be
/// answered with 429/503, never with these.
pub fn transport_failures(r: &Recorder) -> u64 {
    r.errors
        .iter()
        .filter(|((_, code), _)| matches!(code.as_str(), "TIMEOUT" | "CONNECT" | "IO" | "REQUEST"))
        .map(|(_, n)| *n)
        .sum()
}

pub async fn peak_morning(engine: &Arc<Engine>, morning: Morning, mix: Mix, seed: u64, watched: Watched) -> Summary {
    let plan = Plan {
        rate: Box::new(move |s| morning.rate(s)),
        duration: Duration::from_secs_f64(morning.duration_s()),
        max_scans: None,
        mix,
        poisson: true,
        seed,
    };
    let sampler = Sampler::start(watched, Duration::from_secs(1)).await;
    let info = engine.run(&plan).await;
    let resources = sampler.finish(new_tokens(engine)).await;
    let mut s = summarize(engine, "peak-morning", "gateway", &info);
    s.set_resources(resources);
    s.notes.push(format!(
        "07:30-13:00 compressed {}x into {:.0} s; spike {:.0} scans/s at 08:00, plateau {:.0}/s",
        morning.compression,
        morning.duration_s(),
        morning.peak_rate,
        morning.peak_rate / 3.0
    ));
    s
}

/// Step-search settings.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    pub start_rate: f64,
    pub factor: f64,
    pub max_rate: f64,
    pub step: Duration,
    pub refine: u32,
    /// A failed step is run up to this many more times; its rate passes if any attempt does.
    pub retries: u32,
    pub measure: Duration,
    pub p99_target_ms: f64,
    pub max_error_ratio: f64,
    pub seed: u64,
}

/// How long a step waits at most for the machine to go quiet after the one before.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// Answered share of a step's rate below which it fell behind (no retry).
const KEPT_UP: f64 = 0.97;

/// Host CPU busy share (percent) from which a lagging generator counts as sharing a saturated
/// host rather than being the bottleneck itself.
const SATURATED_BUSY_PCT: f64 = 90.0;

/// Below saturation, a host at least this busy (percent) whose busy time was mostly not the
/// generator's ([`CONTENDED_GENERATOR_SHARE`]) counts as contended: on 4 December the warm
/// gateway's failing step ran 87 to 92% busy with the generator at 23 to 27% of the host,
/// so the generator lagged waiting for a core that server and Redis held, not for want of
/// its own capacity.
const CONTENDED_BUSY_PCT: f64 = 75.0;

/// The most of the host's busy time the generator may take for a lag to count as contention
/// rather than the generator's own limit.
const CONTENDED_GENERATOR_SHARE: f64 = 1.0 / 3.0;

/// Why a failed step's generator fell behind, if it did: its send lag p99 over half the p99
/// target, with the host's CPUs saturated, contended by the server and Redis, or with room
/// (unknown counts as the generator).
pub fn lag_of(cfg: &StepConfig, s: &Step) -> Option<Lag> {
    if s.passed || s.send_lag_p99_ms <= cfg.p99_target_ms / 2.0 {
        return None;
    }
    Some(match (s.host_busy_pct, s.generator_cpu_pct) {
        (Some(b), _) if b >= SATURATED_BUSY_PCT => Lag::HostSaturated,
        (Some(b), Some(g)) if b >= CONTENDED_BUSY_PCT && g <= CONTENDED_GENERATOR_SHARE * b => Lag::HostContended,
        _ => Lag::Generator,
    })
}

/// Runs of one rate beyond `cfg.retries` that a step disturbed by host steal may take: the
/// hypervisor's episodes come and go within minutes, and a step run again after one
/// measures the server instead of the host. Bounded, so a host stolen for good still ends
/// the search (and the table then judges no ratio of it).
const DISTURBED_RERUNS: u32 = 3;

/// Runs of one rate beyond `cfg.retries` that a step Redis forked during may take. An AOF
/// rewrite serialises the dataset on one of the two cores for seconds, and where it falls
/// depends on how much the search wrote before, not on the rate measured: on 4 December
/// naive passed 19,822/s in one run and failed 14,416/s twice in the next with the host
/// two-thirds busy. A rewrite is not due again until the AOF has doubled, so one rerun
/// normally measures the server; bounded, so a Redis that forks all the time still ends
/// the search. What rewrites cost is measured where they belong: the peak-morning replay.
pub(crate) const FORKED_RERUNS: u32 = 2;

/// How one rate of the search came out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Pass,
    /// Every attempt failed; why the last one's generator lagged, if it did.
    Fail(Option<Lag>),
    /// Failed under host steal while it kept up with its rate: says nothing about the
    /// server (the climb goes on past it).
    Unjudged,
}

/// One rate of the search: the step, and while it fails but kept up with its rate, up to
/// `cfg.retries` more runs of it (a 100 ms steal episode of the host can fail an 8 s step on
/// its own). A step that fell behind its rate is over capacity, not unlucky: no retry, so
/// the server is not overloaded twice before the measurement at 80%.
///
/// A failed step whose windows had notable steal ([`Steal::disturbed`]) measured the host.
/// While `climbing`, one that kept up with its rate is [`Outcome::Unjudged`] at once: the
/// climb goes on, and only a higher rate that passes or a failure that is the server's
/// decides. A vCPU that halts between requests is what the hypervisor is slow to give back,
/// so on a stolen host low rates fail while busier ones pass: on 3 December `echo` failed
/// 562 scans/s under steal and passed 32,000 with none. Otherwise (bisecting, or it fell
/// behind) it is run again without spending a retry, up to [`DISTURBED_RERUNS`] times.
///
/// A failed step during which Redis forked (an AOF rewrite) is run again without spending a
/// retry too, up to [`FORKED_RERUNS`] times, whether or not it kept up: the rewrite took
/// one of the cores the server was being measured on.
async fn attempt<F, Fut>(cfg: &StepConfig, probe: &mut F, rate: f64, climbing: bool, steps: &mut Vec<Step>) -> Outcome
where
    F: FnMut(f64) -> Fut,
    Fut: std::future::Future<Output = Step>,
{
    let (mut retries, mut reruns, mut fork_reruns) = (0, 0, 0);
    // A run that failed on a quiet host: the server's verdict, which a later stolen retry
    // of the same rate does not undo.
    let mut failed_quietly = false;
    loop {
        let mut s = probe(rate).await;
        let lag = lag_of(cfg, &s);
        let fell_behind = s.achieved_ok_per_s < KEPT_UP * rate;
        let disturbed = s.host_steal.disturbed();
        let forks = s.redis_forks.map_or(0, |f| f.forks);
        if s.passed {
            steps.push(s);
            return Outcome::Pass;
        }
        if disturbed && climbing && !fell_behind && !failed_quietly {
            s.unjudged = true;
            eprintln!("  {}", stolen_text(&s.host_steal, "climbing on"));
            steps.push(s);
            return Outcome::Unjudged;
        }
        let steal = s.host_steal;
        failed_quietly |= !disturbed && forks == 0;
        steps.push(s);
        if disturbed && reruns < DISTURBED_RERUNS {
            reruns += 1;
            eprintln!("  {}", stolen_text(&steal, &format!("running it again ({reruns}/{DISTURBED_RERUNS})")));
        } else if forks > 0 && fork_reruns < FORKED_RERUNS {
            fork_reruns += 1;
            eprintln!(
                "  Redis forked {forks} time(s) during it (an AOF rewrite took a core): running it again \
                 ({fork_reruns}/{FORKED_RERUNS})"
            );
        } else if !fell_behind && retries < cfg.retries {
            retries += 1;
            eprintln!("  kept up with its rate: retrying it ({retries}/{})", cfg.retries);
        } else {
            return Outcome::Fail(lag);
        }
    }
}

/// The live line of a step or of the measurement at 80%.
fn live_line(st: &Step) -> String {
    format!(
        "{:>8.0}/s: ok/s {:>8.0} p99 {:>8.2} ms err {:.3}% steal max {:.0}% {}{} {}",
        st.rate,
        st.achieved_ok_per_s,
        st.latency.p99_ms,
        st.error_ratio * 100.0,
        st.host_steal.max_pct,
        report::busy_text(st),
        report::step_forks_text(st),
        if st.passed { "pass" } else { &st.why },
    )
}

/// The live line under a step or measurement that host steal disturbed: what it was and
/// what the search does next.
fn stolen_text(steal: &Steal, next: &str) -> String {
    format!(
        "host steal in {:.0}% of its 100 ms windows (worst {:.0}%): it measured the host; {next}",
        steal.notable_share() * 100.0,
        steal.max_pct
    )
}

/// Runs `measure` again while host steal disturbed its windows, up to [`DISTURBED_RERUNS`]
/// more times: a measurement taken during one of the hypervisor's episodes says nothing
/// about the server, and they come and go within minutes. Returns the last run and the
/// stolen runs before it (reported, not used).
async fn until_quiet<T, F, Fut>(mut measure: F, steal: impl Fn(&T) -> Steal) -> (T, Vec<T>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut stolen = Vec::new();
    loop {
        let run = measure().await;
        let s = steal(&run);
        if !s.disturbed() || stolen.len() >= DISTURBED_RERUNS as usize {
            return (run, stolen);
        }
        eprintln!("  {}", stolen_text(&s, &format!("measuring again ({}/{DISTURBED_RERUNS})", stolen.len() + 1)));
        stolen.push(run);
    }
}

/// The pure search: `probe(rate)` runs one step. Rates grow by `factor` until a step fails
/// (on every attempt, and not merely under host steal: see [`attempt`]); then the steps
/// climbed past for steal above the last pass are measured again, by bisection over them;
/// then `refine` bisections between the last pass and the lowest failure.
pub async fn search<F, Fut>(cfg: &StepConfig, mut probe: F) -> (Vec<Step>, f64, Option<Lag>)
where
    F: FnMut(f64) -> Fut,
    Fut: std::future::Future<Output = Step>,
{
    let mut steps = Vec::new();
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut lag = None;
    let mut rate = cfg.start_rate;
    while rate <= cfg.max_rate {
        match attempt(cfg, &mut probe, rate, true, &mut steps).await {
            Outcome::Pass => pass = Some(rate),
            Outcome::Unjudged => {}
            Outcome::Fail(why) => {
                fail = Some(rate);
                lag = why;
                break;
            }
        }
        rate *= cfg.factor;
    }
    // Steps climbed past for steal that lie above the last pass bound the max if they stay
    // unmeasured: the server's own limit may be among them. They are measured again, not
    // climbing (so steal reruns one, then it counts), by bisection over them: a host stolen
    // at every rate of the climb costs a few measurements, not one per rate.
    let mut stolen: Vec<f64> = steps
        .iter()
        .filter(|s| s.unjudged && pass.is_none_or(|p| s.rate > p) && fail.is_none_or(|f| s.rate < f))
        .map(|s| s.rate)
        .collect();
    while !stolen.is_empty() {
        let mid = stolen.len() / 2;
        let r = stolen[mid];
        match attempt(cfg, &mut probe, r, false, &mut steps).await {
            Outcome::Pass => {
                pass = Some(r);
                stolen.drain(..=mid);
            }
            outcome => {
                fail = Some(r);
                if let Outcome::Fail(why) = outcome {
                    lag = why;
                }
                stolen.truncate(mid);
            }
        }
    }
    for _ in 0..cfg.refine {
        let (Some(lo), Some(hi)) = (pass.or(Some(0.0)), fail) else { break };
        let mid = ((lo + hi) / 2.0).round();
        if hi - lo < hi * 0.05 || mid <= 0.0 {
            break;
        }
        if attempt(cfg, &mut probe, mid, false, &mut steps).await == Outcome::Pass {
            pass = Some(mid);
        } else {
            fail = Some(mid);
        }
    }
    (steps, pass.unwrap_or(0.0), lag)
}

async fn constant(engine: &Arc<Engine>, rate: f64, dur: Duration, seed: u64) -> (RunInfo, Recorder) {
    *engine.recorder.lock().unwrap() = Recorder::default();
    let plan = Plan {
        rate: Box::new(move |_| rate),
        duration: dur,
        max_scans: None,
        mix: Mix::SCANS_ONLY,
        poisson: true,
        seed,
    };
    let info = engine.run(&plan).await;
    let r = std::mem::take(&mut *engine.recorder.lock().unwrap());
    (info, r)
}

fn judge(cfg: &StepConfig, rate: f64, info: &RunInfo, r: &Recorder) -> Step {
    let lat = percentiles(&r.overall());
    let err = r.error_ratio();
    let ok: u64 = r.ok.values().sum();
    let lag = percentiles(&r.send_lag).p99_ms;
    let mut why = Vec::new();
    if lat.p99_ms > cfg.p99_target_ms {
        why.push(format!("p99 {:.1} ms", lat.p99_ms));
    }
    if err >= cfg.max_error_ratio {
        let mut codes: Vec<_> = r.errors.iter().collect();
        codes.sort_by(|a, b| b.1.cmp(a.1));
        why.push(format!("errors {:.2}% ({})", err * 100.0, codes.first().map(|c| c.0 .1.as_str()).unwrap_or("")));
    }
    if lat.count == 0 {
        why.push("nothing answered".into());
    }
    Step {
        rate,
        achieved_ok_per_s: ok as f64 / info.elapsed.as_secs_f64().max(1e-9),
        latency: lat,
        error_ratio: err,
        send_lag_p99_ms: lag,
        host_steal: run_steal(info),
        passed: why.is_empty(),
        why: why.join(", "),
        settle_s: 0.0,
        settled: false,
        redis_forks: None,
        host_busy_pct: host::busy_between(info.started, info.started + info.elapsed),
        generator_cpu_pct: info.generator_cpu_s.map(|c| {
            c * 100.0
                / info.elapsed.as_secs_f64().max(1e-9)
                / std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
        }),
        unjudged: false,
    }
}

pub async fn step(engine: &Arc<Engine>, kind: &str, cfg: StepConfig, watched: Watched) -> Summary {
    let mut seed = cfg.seed;
    let (steps, max, lag) = search(&cfg, |rate| {
        seed += 1;
        let engine = engine.clone();
        let s = seed;
        let url = watched.redis_url.clone();
        async move {
            let redis0 = redis_reading(&url).await;
            let (info, r) = constant(&engine, rate, cfg.step, s).await;
            let mut st = judge(&cfg, rate, &info, &r);
            st.redis_forks = forks_between(redis0, redis_reading(&url).await);
            engine.fresh_connections();
            // The next step (or the measurement at 80%) starts on a quiet machine: after an
            // overload the server drains its backlog, the applier catches up and Redis may
            // rewrite its AOF for seconds, and a step run into that measures the last one.
            let (waited, settled) = host::settle(SETTLE_DEADLINE).await;
            (st.settle_s, st.settled) = (waited.as_secs_f64(), settled);
            eprintln!("  step {} ({})", live_line(&st), report::settle_text(&st));
            st
        }
    })
    .await;
    let mut at80 = None;
    let mut summary_rec = Recorder::default();
    let mut info80 = RunInfo {
        started: Instant::now(),
        elapsed: Duration::ZERO,
        scans_scheduled: 0,
        dropped_follow_ups: 0,
        generator_cpu_s: None,
    };
    let mut resources = Resources::default();
    let mut stolen80 = Vec::new();
    let mut compacted80 = None;
    if max > 0.0 {
        let m = measure(engine, kind, &cfg, (max * 0.8).round(), &watched, seed, "at 80%").await;
        stolen80 = m.stolen;
        compacted80 = m.compacted;
        resources = m.resources;
        at80 = Some(m.step);
        summary_rec = m.recorder;
        info80 = m.info;
    }
    *engine.recorder.lock().unwrap() = summary_rec;
    let mut s = summarize(engine, "step", kind, &info80);
    s.set_resources(resources);
    s.step = Some(StepSummary {
        p99_target_ms: cfg.p99_target_ms,
        max_error_ratio: cfg.max_error_ratio,
        steps,
        max_sustainable_rate: max,
        generator_bound: lag == Some(Lag::Generator),
        host_contended: lag == Some(Lag::HostContended),
        host_saturated: lag == Some(Lag::HostSaturated),
        at_80_percent: at80,
        at_80_stolen: stolen80,
    });
    s.notes.push("the timeline and latency figures are those of the measurement at 80% of the max".into());
    if let Some(c) = compacted80 {
        s.notes.push(format!("the measurement at 80%: {c}"));
    }
    s
}

/// One measurement at a constant rate, with the resources read around it: what the step
/// search takes at 80% of its max and the fixed-rate comparison at its offered rate.
struct Measurement {
    step: Step,
    info: RunInfo,
    recorder: Recorder,
    resources: Resources,
    /// What compacting the AOF before it did ([`compact_aof`]).
    compacted: Option<String>,
    /// Earlier runs that host steal disturbed (reported, not used).
    stolen: Vec<Step>,
}

/// Measures `rate` for `cfg.measure` on a compacted AOF, again while host steal disturbs it
/// ([`until_quiet`]); `label` names it in the live lines ("at 80%").
async fn measure(
    engine: &Arc<Engine>,
    kind: &str,
    cfg: &StepConfig,
    rate: f64,
    watched: &Watched,
    seed: u64,
    label: &str,
) -> Measurement {
    let mut n = 0;
    let (m, stolen) = until_quiet(
        || {
            n += 1;
            let (engine, watched) = (engine.clone(), watched.clone());
            let again = n > 1;
            async move {
                let compacted = compact_aof(&watched.redis_url).await;
                if let Some(c) = &compacted {
                    eprintln!("  {label}: {c}");
                }
                if again || compacted.is_some() {
                    engine.fresh_connections();
                    host::settle(SETTLE_DEADLINE).await;
                }
                let tokens0 = new_tokens(&engine);
                let sampler = Sampler::start(watched, Duration::from_millis(500)).await;
                let (info, recorder) = constant(&engine, rate, cfg.measure, seed + n).await;
                let ok: u64 = recorder.ok.values().sum();
                let new = if kind == "gateway" { new_tokens(&engine) - tokens0 } else { ok };
                let resources = sampler.finish(new).await;
                let mut step = judge(cfg, rate, &info, &recorder);
                step.redis_forks = resources.redis_forks;
                eprintln!("  {label} {}", live_line(&step));
                Measurement { step, info, recorder, resources, compacted, stolen: Vec::new() }
            }
        },
        |m| m.step.host_steal,
    )
    .await;
    Measurement { stolen: stolen.into_iter().map(|m| m.step).collect(), ..m }
}

/// `fixed`: the servers compared at one offered rate well below saturation, where CPU per
/// scan is stable on a shared host and each thread handoff is a sleep and a wake-up. A
/// warm-up at the rate for `cfg.step` (activations, connection pools, Redis's first keys),
/// then a measurement of `cfg.measure` at it: CPU, context switches and writes per Redis
/// round trip per acknowledged scan. The rate is `cfg.start_rate`.
pub async fn fixed(engine: &Arc<Engine>, kind: &str, cfg: StepConfig, watched: Watched) -> Summary {
    let rate = cfg.start_rate;
    let (info, r) = constant(engine, rate, cfg.step, cfg.seed).await;
    let warmup = judge(&cfg, rate, &info, &r);
    eprintln!("  warm-up {}", live_line(&warmup));
    engine.fresh_connections();
    host::settle(SETTLE_DEADLINE).await;
    let m = measure(engine, kind, &cfg, rate, &watched, cfg.seed + 1, "fixed").await;
    *engine.recorder.lock().unwrap() = m.recorder;
    let mut s = summarize(engine, "fixed", kind, &m.info);
    s.set_resources(m.resources);
    let step = m.step;
    // A CPU figure per scan is only worth its name when the server answered what was
    // offered: errors or a server behind its rate fail the run; a p99 over the target is
    // reported, not judged (this is not a capacity search).
    if step.error_ratio >= cfg.max_error_ratio || step.latency.count == 0 {
        s.passed = false;
        s.notes.push(format!("the measurement at {rate:.0}/s failed: {}", step.why));
    } else if step.achieved_ok_per_s < KEPT_UP * rate {
        s.passed = false;
        s.notes.push(format!(
            "the server answered {:.0}/s of {rate:.0}/s offered: not below saturation, lower --rate",
            step.achieved_ok_per_s
        ));
    } else if !step.passed {
        s.notes.push(format!("the measurement's {} (reported, not judged at a fixed rate)", step.why));
    }
    if let Some(c) = m.compacted {
        s.notes.push(format!("the measurement: {c}"));
    }
    s.fixed = Some(FixedSummary { rate, warmup, measurement: step, stolen: m.stolen });
    s
}

pub async fn soak(
    engine: &Arc<Engine>,
    rate: f64,
    scans: u64,
    mix: Mix,
    seed: u64,
    watched: Watched,
    sample_every: Duration,
) -> Summary {
    let plan = Plan {
        rate: Box::new(move |_| rate),
        // Generous cap: the soak ends when the scans are sent and answered.
        duration: Duration::from_secs_f64(scans as f64 / rate * 2.0 + 60.0),
        max_scans: Some(scans),
        mix,
        poisson: true,
        seed,
    };
    let sampler = Sampler::start(watched, sample_every).await;
    let info = engine.run(&plan).await;
    let resources = sampler.finish(new_tokens(engine)).await;
    let mut s = summarize(engine, "soak", "gateway", &info);
    s.set_resources(resources);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Percentiles;

    /// Rates from 1k doubling, 1 s steps, p99 target 10 ms.
    fn test_config(refine: u32, retries: u32) -> StepConfig {
        StepConfig {
            start_rate: 1_000.0,
            factor: 2.0,
            max_rate: 1e9,
            step: Duration::from_secs(1),
            refine,
            retries,
            measure: Duration::from_secs(1),
            p99_target_ms: 10.0,
            max_error_ratio: 0.001,
            seed: 1,
        }
    }

    /// A search on a server of 11k capacity whose third step meets a stall of the host: it
    /// kept up with its rate and failed its p99.
    async fn search_with_third_step_stalled(cfg: &StepConfig) -> (Vec<Step>, f64) {
        let stall = |r: f64| Step { passed: false, why: "p99 150.0 ms".into(), ..fake_step(r, 11_000.0) };
        let mut runs = 0;
        let (steps, max, _) = search(cfg, |r| {
            runs += 1;
            let stalled = runs == 3;
            async move {
                if stalled {
                    stall(r)
                } else {
                    fake_step(r, 11_000.0)
                }
            }
        })
        .await;
        (steps, max)
    }

    fn fake_step(rate: f64, capacity: f64) -> Step {
        let passed = rate <= capacity;
        Step {
            rate,
            achieved_ok_per_s: rate.min(capacity),
            latency: Percentiles { count: 1, p50_ms: 1.0, p90_ms: 1.0, p99_ms: 1.0, p999_ms: 1.0, max_ms: 1.0 },
            error_ratio: 0.0,
            send_lag_p99_ms: 0.1,
            host_steal: Steal::default(),
            passed,
            why: String::new(),
            settle_s: 0.3,
            settled: true,
            redis_forks: None,
            host_busy_pct: None,
            generator_cpu_pct: None,
            unjudged: false,
        }
    }

    /// A search on a server of 11k capacity whose `n`th run of rate `r` (counted per rate,
    /// from 1) goes through `disturb` where `hit(r, n)`.
    async fn search_disturbed(
        cfg: &StepConfig,
        hit: impl Fn(f64, u32) -> bool,
        disturb: impl Fn(Step) -> Step,
    ) -> (Vec<Step>, f64) {
        let mut runs = std::collections::HashMap::<u64, u32>::new();
        let (steps, max, _) = search(cfg, |r| {
            let n = runs.entry(r.to_bits()).or_default();
            *n += 1;
            let s = fake_step(r, 11_000.0);
            let s = if hit(r, *n) { disturb(s) } else { s };
            async move { s }
        })
        .await;
        (steps, max)
    }

    #[test]
    fn each_second_gets_its_worst_steal_window() {
        let point =
            |t| Point { t, ok: 1, errors: 0, p50_ms: 1.0, p99_ms: 1.0, steal_max_pct: None, redis_saving: false };
        let mut timeline = vec![point(0), point(1), point(2)];
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        attribute_steal(&mut timeline, t0, &[(at(100), 2.0), (at(1100), 26.0), (at(1900), 4.0), (at(9000), 50.0)]);
        let got: Vec<Option<f64>> = timeline.iter().map(|p| p.steal_max_pct).collect();
        assert_eq!(got, [Some(2.0), Some(26.0), None], "a window after the run's last second is dropped");
    }

    #[tokio::test]
    async fn the_search_brackets_the_capacity() {
        let cfg = test_config(4, 0);
        let (steps, max, bound) = search(&cfg, |r| async move { fake_step(r, 11_000.0) }).await;
        // 1k, 2k, 4k, 8k pass; 16k fails; bisection: 12k fail, 10k pass, 11k pass, then close.
        assert_eq!(steps.iter().map(|s| s.rate).collect::<Vec<_>>()[..5], [1e3, 2e3, 4e3, 8e3, 16e3]);
        assert!((10_000.0..=11_000.0).contains(&max), "{max}");
        assert_eq!(bound, None);
        let (_, none, _) = search(&cfg, |r| async move { fake_step(r, 10.0) }).await;
        assert_eq!(none, 0.0, "nothing sustainable when the first step fails");
    }

    #[test]
    fn a_lagging_generator_is_told_apart_from_a_saturated_host() {
        let cfg = test_config(0, 0);
        let failed = |lag: f64, busy: Option<f64>| Step {
            passed: false,
            send_lag_p99_ms: lag,
            host_busy_pct: busy,
            ..fake_step(20_000.0, 11_000.0)
        };
        assert_eq!(lag_of(&cfg, &failed(2.0, Some(99.0))), None, "the generator kept its schedule");
        assert_eq!(lag_of(&cfg, &failed(40.0, Some(99.0))), Some(Lag::HostSaturated));
        assert_eq!(lag_of(&cfg, &failed(40.0, Some(60.0))), Some(Lag::Generator), "CPUs had room");
        assert_eq!(lag_of(&cfg, &failed(40.0, None)), Some(Lag::Generator), "not sampled");
        // Busy but below saturation: whose the busy time was tells contention from the
        // generator's own limit (the warm row of 4 December: 87% busy, generator 25%).
        let busy = |b: f64, g: Option<f64>| Step { generator_cpu_pct: g, ..failed(40.0, Some(b)) };
        assert_eq!(lag_of(&cfg, &busy(87.0, Some(25.0))), Some(Lag::HostContended));
        assert_eq!(lag_of(&cfg, &busy(87.0, Some(28.0))), Some(Lag::HostContended), "under a third of 87%");
        assert_eq!(lag_of(&cfg, &busy(87.0, Some(30.0))), Some(Lag::Generator), "over a third: its own limit");
        assert_eq!(lag_of(&cfg, &busy(74.0, Some(10.0))), Some(Lag::Generator), "CPUs had room");
        assert_eq!(lag_of(&cfg, &busy(87.0, None)), Some(Lag::Generator), "generator not sampled");
        assert_eq!(lag_of(&cfg, &busy(95.0, Some(10.0))), Some(Lag::HostSaturated), "saturation first");
        let passed = Step { send_lag_p99_ms: 40.0, ..fake_step(1_000.0, 11_000.0) };
        assert_eq!(lag_of(&cfg, &passed), None, "a passing step has no failure to explain");
    }

    #[tokio::test]
    async fn a_step_failed_once_is_run_again_and_every_attempt_is_reported() {
        let cfg = test_config(0, 1);
        // The stall hits the first run of the 4k step.
        let (steps, max) = search_with_third_step_stalled(&cfg).await;
        let seen: Vec<(f64, bool)> = steps.iter().map(|s| (s.rate, s.passed)).collect();
        assert_eq!(
            seen,
            [(1e3, true), (2e3, true), (4e3, false), (4e3, true), (8e3, true), (16e3, false)],
            "the stalled step is retried; 16k fell behind (11k answered), so it is not"
        );
        assert_eq!(max, 8e3);
        // Without retries the same stall ends the search at 2k.
        let (_, max) = search_with_third_step_stalled(&StepConfig { retries: 0, ..cfg }).await;
        assert_eq!(max, 2e3);
    }

    /// A step whose windows the hypervisor stole measured the host: it is run again without
    /// spending a retry, even when it fell behind, and only a few times.
    #[tokio::test]
    async fn a_step_disturbed_by_host_steal_is_run_again_a_bounded_number_of_times() {
        let stolen = |s: Step| Step {
            passed: false,
            achieved_ok_per_s: s.rate * 0.5,
            host_steal: Steal { windows: 80, notable_windows: 20, max_pct: 50.0 },
            ..s
        };
        // The first two runs of the 4k step are stolen (and fell behind); the third is quiet.
        let cfg = test_config(0, 0);
        let (steps, max) = search_disturbed(&cfg, |r, n| r == 4e3 && n <= 2, stolen).await;
        let seen: Vec<(f64, bool)> = steps.iter().map(|s| (s.rate, s.passed)).collect();
        assert_eq!(
            seen,
            [(1e3, true), (2e3, true), (4e3, false), (4e3, false), (4e3, true), (8e3, true), (16e3, false)]
        );
        assert_eq!(max, 8e3);

        // A host stolen for good still ends the search: one run and DISTURBED_RERUNS more.
        let (steps, max) = search_disturbed(&cfg, |r, _| r >= 2e3, stolen).await;
        assert_eq!(steps.iter().filter(|s| s.rate == 2e3).count(), 1 + DISTURBED_RERUNS as usize);
        assert_eq!(max, 1e3);

        // A quiet step that fell behind is over capacity: not run again.
        let (steps, _, _) = search(&test_config(0, 1), |r| async move { fake_step(r, 3_000.0) }).await;
        assert_eq!(steps.iter().filter(|s| s.rate == 4e3).count(), 1, "4k fell behind (3k answered)");
    }

    /// A failed step that Redis forked during (an AOF rewrite took a core) is run again
    /// without spending a retry, even when it fell behind, and only a few times; a fork in a
    /// step that passed changes nothing.
    #[tokio::test]
    async fn a_step_redis_forked_during_is_run_again_a_bounded_number_of_times() {
        let rewrite = Some(RedisForks { forks: 1, aof_rewrites: 1, rdb_saves: 0 });
        let forked = |s: Step| Step {
            passed: false,
            why: "p99 110.0 ms".into(),
            achieved_ok_per_s: s.rate * 0.7,
            redis_forks: rewrite,
            ..s
        };
        // A rewrite falls into the first run of the 8k step; no retries are configured.
        let cfg = test_config(0, 0);
        let (steps, max) = search_disturbed(&cfg, |r, n| r == 8e3 && n == 1, forked).await;
        let seen: Vec<(f64, bool)> = steps.iter().map(|s| (s.rate, s.passed)).collect();
        assert_eq!(seen, [(1e3, true), (2e3, true), (4e3, true), (8e3, false), (8e3, true), (16e3, false)]);
        assert_eq!(max, 8e3);

        // Redis forking at every run: one run and FORKED_RERUNS more, then it counts.
        let (steps, max) = search_disturbed(&cfg, |r, _| r >= 4e3, forked).await;
        assert_eq!(steps.iter().filter(|s| s.rate == 4e3).count(), 1 + FORKED_RERUNS as usize);
        assert_eq!(max, 2e3);

        // A pass with a fork in it is a pass: nothing is run again.
        let (steps, max) = search_disturbed(&cfg, |_, _| true, |s| Step { redis_forks: rewrite, ..s }).await;
        assert_eq!(steps.iter().filter(|s| s.rate == 8e3).count(), 1);
        assert_eq!(steps.iter().filter(|s| s.rate == 16e3).count(), 1 + FORKED_RERUNS as usize, "16k fails with forks");
        assert_eq!(max, 8e3);
    }

    /// A measurement at 80% taken during a steal episode is taken again, a bounded number of
    /// times, and the stolen ones are kept for the report.
    #[tokio::test]
    async fn a_measurement_disturbed_by_host_steal_is_taken_again_a_bounded_number_of_times() {
        let stolen = Steal { windows: 150, notable_windows: 30, max_pct: 40.0 };
        let quiet = Steal { windows: 150, notable_windows: 1, max_pct: 12.0 };
        // Stolen twice, then quiet: the third run is used.
        let mut n = 0;
        let (used, discarded) = until_quiet(
            || {
                n += 1;
                let k = n;
                async move { (k, if k <= 2 { stolen } else { quiet }) }
            },
            |m| m.1,
        )
        .await;
        assert_eq!(used.0, 3);
        assert_eq!(discarded.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
        // Quiet at once: one run, nothing discarded.
        let (used, discarded) = until_quiet(|| async { (1, quiet) }, |m| m.1).await;
        assert_eq!((used.0, discarded.len()), (1, 0));
        // Stolen for good: one run and DISTURBED_RERUNS more, the last one used.
        let mut n = 0;
        let (used, discarded) = until_quiet(
            || {
                n += 1;
                let k = n;
                async move { (k, stolen) }
            },
            |m| m.1,
        )
        .await;
        assert_eq!(used.0, 1 + DISTURBED_RERUNS);
        assert_eq!(discarded.len(), DISTURBED_RERUNS as usize);
    }

    /// The steal that decides a search's max, without a measurement at 80%.
    fn deciding(steps: &[Step], max: f64) -> Steal {
        let decided: Vec<(f64, Steal)> = steps.iter().map(|s| (s.rate, s.host_steal)).collect();
        report::deciding_steal(&decided, max, None)
    }

    /// On a stolen host the low rates fail while busier ones pass (a halted vCPU is what the
    /// hypervisor is slow to give back): a stolen step that kept up is climbed past at once,
    /// and the max is the highest rate that passed below the server's own failure.
    #[tokio::test]
    async fn the_climb_goes_past_steps_that_failed_under_host_steal() {
        let stolen = |s: Step| Step {
            passed: false,
            why: "p99 30.0 ms".into(),
            host_steal: Steal { windows: 80, notable_windows: 20, max_pct: 45.0 },
            ..s
        };
        let cfg = test_config(2, 1);
        let (steps, max, _) = search(&cfg, |r| async move {
            let s = fake_step(r, 11_000.0);
            if r == 2e3 || r == 4e3 {
                stolen(s)
            } else {
                s
            }
        })
        .await;
        let seen: Vec<(f64, bool, bool)> = steps.iter().map(|s| (s.rate, s.passed, s.unjudged)).collect();
        assert_eq!(
            seen,
            [
                (1e3, true, false),
                (2e3, false, true),
                (4e3, false, true),
                (8e3, true, false),
                (16e3, false, false),
                (12e3, false, false),
                (10e3, true, false)
            ],
            "no rerun or retry of a stolen step while climbing; 16k and 12k fell behind (11k answered)"
        );
        assert_eq!(max, 10e3);
        assert!(!deciding(&steps, max).disturbed(), "the stolen steps are below the max");

        // Bisecting, a stolen step is run again (no climb to go on with) and bounds the max.
        let mut runs_at_12k = 0;
        let (steps, max, _) = search(&test_config(1, 0), |r| {
            if r == 12e3 {
                runs_at_12k += 1;
            }
            async move {
                let s = fake_step(r, 13_000.0);
                if r == 12e3 {
                    stolen(s)
                } else {
                    s
                }
            }
        })
        .await;
        assert_eq!(runs_at_12k, 1 + DISTURBED_RERUNS, "{:?}", steps.iter().map(|s| s.rate).collect::<Vec<_>>());
        assert!(steps.iter().all(|s| !s.unjudged));
        assert_eq!(max, 8e3);
        assert!(deciding(&steps, max).disturbed(), "a stolen step bounds this max");

        // Stolen at every rate that kept up: the climb ends where the server fell behind, and
        // the max rests on a stolen step, so it is not judged.
        let (steps, max, _) = search(&test_config(0, 0), |r| async move {
            let s = fake_step(r, 11_000.0);
            if (2e3..=11e3).contains(&r) {
                stolen(s)
            } else {
                s
            }
        })
        .await;
        assert_eq!(max, 1e3);
        let seen: Vec<f64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(
            seen,
            [1e3, 2e3, 4e3, 8e3, 16e3, 4e3, 4e3, 4e3, 4e3, 2e3, 2e3, 2e3, 2e3],
            "16k fell behind; the stolen 2k, 4k and 8k are bisected: 4k, then 2k, each stolen \
             again 1 + DISTURBED_RERUNS times; 2k bounds the max"
        );
        assert!(deciding(&steps, max).disturbed());
    }

    /// A step that failed on a quiet host and then had its retry stolen failed at the server:
    /// the climb ends there instead of going on past it.
    #[tokio::test]
    async fn a_stolen_retry_does_not_undo_a_quiet_failure() {
        let mut runs_at_8k = 0;
        let (steps, max, _) = search(&test_config(0, 1), |r| {
            if r == 8e3 {
                runs_at_8k += 1;
            }
            let n = runs_at_8k;
            async move {
                let s = fake_step(r, 12_000.0);
                if r != 8e3 {
                    return s;
                }
                // The first run fails quietly; the retry and its reruns are stolen.
                let steal =
                    if n == 1 { Steal::default() } else { Steal { windows: 80, notable_windows: 20, max_pct: 45.0 } };
                Step { passed: false, why: "p99 30.0 ms".into(), host_steal: steal, ..s }
            }
        })
        .await;
        let seen: Vec<(f64, bool)> = steps.iter().map(|s| (s.rate, s.unjudged)).collect();
        assert_eq!(
            seen,
            [
                (1e3, false),
                (2e3, false),
                (4e3, false),
                (8e3, false),
                (8e3, false),
                (8e3, false),
                (8e3, false),
                (8e3, false)
            ],
            "the quiet failure stands: the stolen retry is rerun for steal (3 times), never climbed past"
        );
        assert_eq!(max, 4e3);
    }

    /// A step climbed past for steal between the last pass and the server's failure is
    /// measured again before the bisection, so the max is not left resting on it.
    #[tokio::test]
    async fn a_stolen_step_above_the_last_pass_is_measured_again() {
        // 8k is stolen on its first run only; 16k fails at the server (p99, kept up); the
        // server's capacity is 12k, so 8k passes when measured again.
        let mut runs_at_8k = 0;
        let (steps, max, _) = search(&test_config(1, 0), |r| {
            if r == 8e3 {
                runs_at_8k += 1;
            }
            let first = runs_at_8k == 1;
            async move {
                let s = fake_step(r, 12_000.0);
                if r == 8e3 && first {
                    Step {
                        passed: false,
                        why: "p99 30.0 ms".into(),
                        host_steal: Steal { windows: 80, notable_windows: 20, max_pct: 45.0 },
                        ..s
                    }
                } else {
                    s
                }
            }
        })
        .await;
        let seen: Vec<(f64, bool, bool)> = steps.iter().map(|s| (s.rate, s.passed, s.unjudged)).collect();
        assert_eq!(
            seen,
            [
                (1e3, true, false),
                (2e3, true, false),
                (4e3, true, false),
                (8e3, false, true),
                (16e3, false, false),
                (8e3, true, false),
                (12e3, true, false)
            ],
            "8k measured again passes; the bisection then runs between 8k and 16k"
        );
        assert_eq!(max, 12e3);
        assert!(!deciding(&steps, max).disturbed(), "the max rests on quiet runs");

        // Measured again and failed at the server: it becomes the failure the bisection uses.
        // Here the server keeps up to 12k but holds its p99 only up to 7k.
        let mut runs_at_8k = 0;
        let (steps, max, _) = search(&test_config(1, 0), |r| {
            if r == 8e3 {
                runs_at_8k += 1;
            }
            let first = runs_at_8k == 1;
            async move {
                let s = fake_step(r, 12_000.0);
                let slow = Step { passed: false, why: "p99 30.0 ms".into(), ..s.clone() };
                match r {
                    r if r == 8e3 && first => {
                        Step { host_steal: Steal { windows: 80, notable_windows: 20, max_pct: 45.0 }, ..slow }
                    }
                    r if r > 7e3 && r <= 12e3 => slow,
                    _ => s,
                }
            }
        })
        .await;
        let seen: Vec<f64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(seen, [1e3, 2e3, 4e3, 8e3, 16e3, 8e3, 6e3], "16k fell behind; 8k failed quietly");
        assert_eq!(max, 6e3);
        assert!(!deciding(&steps, max).disturbed());

        // Several climbed past: bisected over them, from the middle one up.
        let mut first_runs = std::collections::HashSet::new();
        let (steps, max, _) = search(&test_config(0, 0), |r| {
            let first = first_runs.insert(r as u64);
            async move {
                let s = fake_step(r, 12_000.0);
                if (2e3..=8e3).contains(&r) && first {
                    Step {
                        passed: false,
                        why: "p99 30.0 ms".into(),
                        host_steal: Steal { windows: 80, notable_windows: 20, max_pct: 45.0 },
                        ..s
                    }
                } else {
                    s
                }
            }
        })
        .await;
        let seen: Vec<f64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(seen, [1e3, 2e3, 4e3, 8e3, 16e3, 4e3, 8e3], "4k passes, then 8k; 2k is not needed");
        assert_eq!(max, 8e3);
    }
}
