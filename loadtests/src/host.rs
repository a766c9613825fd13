//! The host's CPU, sampled every 100 ms from `/proc/stat`: steal (time the hypervisor ran
//! someone else on this VM's vCPUs; a 100 ms window of 25% is what a p99 stall looks like), and
//! busy time, which tells the step search when the machine has settled after a step.
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the machine's CPU times are read.
pub const WINDOW: Duration = Duration::from_millis(100);

/// A window with at least this share of steal (percent) is counted as a steal episode.
pub const NOTABLE_PCT: f64 = 10.0;

/// Share of a stretch's windows with notable steal from which it measured the host as much
/// as the server. On a quiet day about 1% of windows have notable steal (the national days
/// in the README: 348 to 505 of 50,000); a step search on a disturbed host had 12 to 59%,
/// and even `echo` then failed its p99 target at 562 scans/s with the host's CPUs 91% idle.
pub const DISTURBED_SHARE: f64 = 0.05;

/// One window: when it ended, and the percentages of CPU time stolen and busy in it.
#[derive(Debug, Clone, Copy)]
struct Window {
    end: Instant,
    steal_pct: f64,
    busy_pct: f64,
}

static WINDOWS: OnceLock<Mutex<Vec<Window>>> = OnceLock::new();

/// The share (percent) of all CPU time between two `/proc/stat` `cpu` lines (their numbers,
/// in order: user nice system idle iowait irq softirq steal ...) spent in `columns`. None
/// without a steal column or without elapsed time.
fn share_pct(prev: &[u64], cur: &[u64], columns: &[usize]) -> Option<f64> {
    if prev.len() < 8 || cur.len() < 8 {
        return None;
    }
    // guest and guest_nice (columns 9 and 10) are already counted in user and nice.
    let total = |v: &[u64]| v.iter().take(8).sum::<u64>();
    let part = |v: &[u64]| columns.iter().map(|&c| v[c]).sum::<u64>();
    let all = total(cur).checked_sub(total(prev))?;
    let p = part(cur).checked_sub(part(prev))?;
    (all > 0).then(|| p as f64 * 100.0 / all as f64)
}

/// Steal as a percentage of all CPU time between two `/proc/stat` `cpu` lines.
pub fn steal_pct(prev: &[u64], cur: &[u64]) -> Option<f64> {
    share_pct(prev, cur, &[7])
}

/// Busy time (user, nice, system, irq, softirq: not idle, iowait or steal) as a percentage of
/// all CPU time between two `/proc/stat` `cpu` lines.
pub fn busy_pct(prev: &[u64], cur: &[u64]) -> Option<f64> {
    share_pct(prev, cur, &[0, 1, 2, 5, 6])
}

fn read_cpu_line() -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    line.split_whitespace().map(|f| f.parse().ok()).collect()
}

/// Starts the sampling thread once per process; false where `/proc/stat` has no steal column.
pub fn start() -> bool {
    if WINDOWS.get().is_some() {
        return true;
    }
    let Some(mut prev) = read_cpu_line().filter(|v| v.len() >= 8) else { return false };
    let _ = WINDOWS.set(Mutex::new(Vec::new()));
    std::thread::Builder::new()
        .name("host-steal".into())
        .spawn(move || loop {
            std::thread::sleep(WINDOW);
            let Some(cur) = read_cpu_line() else { continue };
            if let (Some(steal_pct), Some(busy_pct), Some(w)) =
                (steal_pct(&prev, &cur), busy_pct(&prev, &cur), WINDOWS.get())
            {
                w.lock().unwrap().push(Window { end: Instant::now(), steal_pct, busy_pct });
            }
            prev = cur;
        })
        .is_ok()
}

/// The steal of the windows that ended in `[from, to]`.
pub fn between(from: Instant, to: Instant) -> Vec<(Instant, f64)> {
    let Some(w) = WINDOWS.get() else { return Vec::new() };
    w.lock().unwrap().iter().filter(|x| x.end >= from && x.end <= to).map(|x| (x.end, x.steal_pct)).collect()
}

/// Mean busy share of all CPUs (percent) over the windows that ended in `[from, to]`.
pub fn busy_between(from: Instant, to: Instant) -> Option<f64> {
    let w = WINDOWS.get()?;
    let busy: Vec<f64> =
        w.lock().unwrap().iter().filter(|x| x.end >= from && x.end <= to).map(|x| x.busy_pct).collect();
    (!busy.is_empty()).then(|| busy.iter().sum::<f64>() / busy.len() as f64)
}

/// The machine counts as settled when this many windows in a row were under [`QUIET_BUSY_PCT`].
pub const QUIET_WINDOWS: usize = 3;

/// Busy share of all CPUs under which a window is quiet: the generator's and servers' idle
/// timers stay well under it; a draining backlog, an applier catching up or an AOF rewrite
/// (one core of two: 50%) are well over.
pub const QUIET_BUSY_PCT: f64 = 10.0;

/// Whether the last `quiet` windows of `busy` (oldest first) were all under `below`.
pub fn settled(busy: &[f64], quiet: usize, below: f64) -> bool {
    busy.len() >= quiet && busy[busy.len() - quiet..].iter().all(|b| *b < below)
}

/// Waits until the machine has settled (see [`settled`]) on windows that ended after now, or
/// until `deadline` passes. Returns how long it waited and whether it settled; without
/// sampling (no `/proc/stat`) it returns at once, unsettled.
pub async fn settle(deadline: Duration) -> (Duration, bool) {
    let Some(w) = WINDOWS.get() else { return (Duration::ZERO, false) };
    settle_on(deadline, |from| w.lock().unwrap().iter().filter(|x| x.end > from).map(|x| x.busy_pct).collect()).await
}

/// The loop of [`settle`], over `busy_since(from)`: the busy shares (oldest first) of the
/// windows that ended after `from`. Apart so that a test can feed it windows.
async fn settle_on(deadline: Duration, busy_since: impl Fn(Instant) -> Vec<f64>) -> (Duration, bool) {
    let from = Instant::now();
    loop {
        if settled(&busy_since(from), QUIET_WINDOWS, QUIET_BUSY_PCT) {
            return (from.elapsed(), true);
        }
        if from.elapsed() >= deadline {
            return (from.elapsed(), false);
        }
        tokio::time::sleep(WINDOW / 2).await;
    }
}

/// Steal over a stretch of a run: episodes (windows at or over [`NOTABLE_PCT`]) and the worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Steal {
    pub windows: usize,
    pub notable_windows: usize,
    pub max_pct: f64,
}

impl Steal {
    /// Adds another stretch's windows (a search is many steps).
    pub fn merge(self, o: Steal) -> Steal {
        Steal {
            windows: self.windows + o.windows,
            notable_windows: self.notable_windows + o.notable_windows,
            max_pct: self.max_pct.max(o.max_pct),
        }
    }

    /// Share of windows with notable steal (0 without windows).
    pub fn notable_share(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.notable_windows as f64 / self.windows as f64
        }
    }

    /// Whether the stretch measured the host's steal as much as the server (see
    /// [`DISTURBED_SHARE`]).
    pub fn disturbed(&self) -> bool {
        self.notable_share() >= DISTURBED_SHARE
    }
}

pub fn summarize(windows: &[(Instant, f64)]) -> Steal {
    Steal {
        windows: windows.len(),
        notable_windows: windows.iter().filter(|(_, p)| *p >= NOTABLE_PCT).count(),
        max_pct: windows.iter().map(|(_, p)| *p).fold(0.0, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_share_of_all_cpu_time_in_the_window() {
        let prev = [100, 0, 50, 800, 10, 0, 5, 35, 0, 0];
        // 100 ticks pass: 40 user, 30 idle, 25 steal, 5 system.
        let cur = [140, 0, 55, 830, 10, 0, 5, 60, 0, 0];
        assert_eq!(steal_pct(&prev, &cur), Some(25.0));
        assert_eq!(busy_pct(&prev, &cur), Some(45.0), "user and system, not idle or steal");
        assert_eq!(steal_pct(&prev, &prev), None, "no time passed");
        assert_eq!(steal_pct(&prev[..7], &cur[..7]), None, "a kernel without a steal column");
        let s = summarize(&[(Instant::now(), 3.0), (Instant::now(), 25.0), (Instant::now(), 12.5)]);
        assert_eq!(s, Steal { windows: 3, notable_windows: 2, max_pct: 25.0 });
        let quiet = Steal { windows: 100, notable_windows: 4, max_pct: 12.0 };
        assert!(!quiet.disturbed(), "4% of windows");
        let merged = quiet.merge(Steal { windows: 100, notable_windows: 6, max_pct: 40.0 });
        assert_eq!(merged, Steal { windows: 200, notable_windows: 10, max_pct: 40.0 });
        assert!(merged.disturbed(), "5% of windows");
        assert!(!Steal::default().disturbed(), "no windows: nothing known");
    }

    #[test]
    fn the_sampler_records_windows_of_this_machine() {
        assert!(start(), "Linux has a steal column in /proc/stat");
        let from = Instant::now();
        let deadline = from + Duration::from_secs(5);
        while between(from, Instant::now()).len() < 3 {
            assert!(Instant::now() < deadline, "no windows recorded");
            std::thread::sleep(WINDOW);
        }
        assert!(between(from, Instant::now()).iter().all(|(_, p)| (0.0..=100.0).contains(p)));
        let busy = busy_between(from, Instant::now()).expect("windows were recorded");
        assert!((0.0..=100.0).contains(&busy), "{busy}");
        assert_eq!(busy_between(from, from - Duration::from_secs(1)), None, "an empty stretch");
    }

    #[test]
    fn the_machine_is_settled_only_after_enough_quiet_windows_in_a_row() {
        assert!(!settled(&[], 3, 10.0), "nothing sampled yet");
        assert!(!settled(&[2.0, 3.0], 3, 10.0), "too few windows");
        assert!(settled(&[80.0, 2.0, 3.0, 9.9], 3, 10.0), "the busy window is older than the last three");
        assert!(!settled(&[2.0, 3.0, 55.0, 2.0], 3, 10.0), "a rewrite's busy window is among the last three");
        assert!(!settled(&[2.0, 10.0, 2.0], 3, 10.0), "the threshold itself is not quiet");
    }

    #[tokio::test]
    async fn settling_on_this_machine_waits_for_busy_cpus_and_gives_up_at_its_deadline() {
        assert!(start());
        // Both cores spin until the end: the machine cannot settle in a 300 ms deadline. (That
        // it settles once idle is not asserted here: other test processes may keep it busy.)
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let (waited, ok) = settle(Duration::from_millis(300)).await;
        assert!(!ok, "settled while both cores spun");
        assert!(waited >= Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinners.into_iter().for_each(|t| t.join().unwrap());
    }

    #[tokio::test]
    async fn settling_needs_quiet_windows_after_it_starts_and_waits_for_them() {
        // One window a poll: four busy ones (a backlog draining), then quiet ones.
        let polls = std::cell::Cell::new(0usize);
        let draining = |_from: Instant| {
            polls.set(polls.get() + 1);
            (0..polls.get()).map(|i| if i < 4 { 80.0 } else { 2.0 }).collect::<Vec<f64>>()
        };
        // The deadline is far: only a loop that never settles could reach it.
        let (waited, ok) = settle_on(Duration::from_secs(60), draining).await;
        assert!(ok, "quiet windows followed the busy ones");
        assert_eq!(polls.get(), 4 + QUIET_WINDOWS, "settled on the first poll with {QUIET_WINDOWS} quiet windows");
        assert!(waited < Duration::from_secs(60));
        // A machine that stays busy: it gives up at its deadline, unsettled.
        let (waited, ok) = settle_on(Duration::from_millis(200), |_| vec![80.0; 10]).await;
        assert!(!ok);
        assert!(waited >= Duration::from_millis(200));
    }
}
