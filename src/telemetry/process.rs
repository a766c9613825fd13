//! Process RSS and CPU time for `/metrics`, read from `/proc/self` at scrape time (Linux;
//! elsewhere the two series are simply absent).
use std::fmt::Write as _;

use super::metrics::{PROCESS_CPU, PROCESS_RSS};

/// Clock ticks per second of `/proc` CPU times: USER_HZ, fixed at 100 in Linux's user ABI.
const USER_HZ: f64 = 100.0;

fn read() -> Option<(u64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses): utime and
    // stime are the 14th and 15th fields, so the 12th and 13th after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((kb * 1024, (utime + stime) as f64 / USER_HZ))
}

/// The two process series in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    if let Some((rss, cpu)) = read() {
        let _ = writeln!(out, "# HELP {PROCESS_RSS} Resident set size");
        let _ = writeln!(out, "# TYPE {PROCESS_RSS} gauge");
        let _ = writeln!(out, "{PROCESS_RSS} {rss}");
        let _ = writeln!(out, "# HELP {PROCESS_CPU} User and system CPU time");
        let _ = writeln!(out, "# TYPE {PROCESS_CPU} counter");
        let _ = writeln!(out, "{PROCESS_CPU} {cpu}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_plausible_values() {
        let (rss, cpu) = super::read().expect("linux /proc");
        assert!(rss > 1024 * 1024, "{rss}");
        // Burn a little CPU so the counter cannot be a constant zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu > 0.0, "{cpu}");
    }
}
