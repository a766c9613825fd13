//! The host's CPU steal (time the hypervisor ran someone else on this VM's vCPUs), sampled
//! every 100 ms from `/proc/stat`. A one-second average hides it; a 100 ms window of 25%
//! steal is what a p99 stall looks like, so runs report it beside their latency.
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the machine's CPU times are read.
pub const WINDOW: Duration = Duration::from_millis(100);

/// A window with at least this share of steal (percent) is counted as a steal episode.
pub const NOTABLE_PCT: f64 = 10.0;

/// End of each window and the percentage of CPU time stolen in it.
static WINDOWS: OnceLock<Mutex<Vec<(Instant, f64)>>> = OnceLock::new();

/// Steal as a percentage of all CPU time between two `/proc/stat` `cpu` lines (their numbers,
/// in order: user nice system idle iowait irq softirq steal ...). None without a steal column
/// or without elapsed time.
pub fn steal_pct(prev: &[u64], cur: &[u64]) -> Option<f64> {
    if prev.len() < 8 || cur.len() < 8 {
        return None;
    }
    // guest and guest_nice (columns 9 and 10) are already counted in user and nice.
    let total = |v: &[u64]| v.iter().take(8).sum::<u64>();
    let all = total(cur).checked_sub(total(prev))?;
    let steal = cur[7].checked_sub(prev[7])?;
    (all > 0).then(|| steal as f64 * 100.0 / all as f64)
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
            if let (Some(p), Some(w)) = (steal_pct(&prev, &cur), WINDOWS.get()) {
                w.lock().unwrap().push((Instant::now(), p));
            }
            prev = cur;
        })
        .is_ok()
}

/// The windows that ended in `[from, to]`.
pub fn between(from: Instant, to: Instant) -> Vec<(Instant, f64)> {
    let Some(w) = WINDOWS.get() else { return Vec::new() };
    w.lock().unwrap().iter().filter(|(t, _)| *t >= from && *t <= to).copied().collect()
}

/// Steal over a stretch of a run: episodes (windows at or over [`NOTABLE_PCT`]) and the worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Steal {
    pub windows: usize,
    pub notable_windows: usize,
    pub max_pct: f64,
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
        assert_eq!(steal_pct(&prev, &prev), None, "no time passed");
        assert_eq!(steal_pct(&prev[..7], &cur[..7]), None, "a kernel without a steal column");
        let s = summarize(&[(Instant::now(), 3.0), (Instant::now(), 25.0), (Instant::now(), 12.5)]);
        assert_eq!(s, Steal { windows: 3, notable_windows: 2, max_pct: 25.0 });
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
    }
}
