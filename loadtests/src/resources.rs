//! Resource readings of the processes under test: CPU time and RSS from `/proc/<pid>`, and
//! Redis memory and CPU from `INFO`.
use redis::aio::MultiplexedConnection;

/// User plus system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let tck = clock_ticks();
    Some((utime + stime) / tck)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; it reads a system constant (100 on Linux).
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Redis `used_memory` (bytes) and `used_cpu_user + used_cpu_sys` (seconds).
pub async fn redis_memory_cpu(con: &mut MultiplexedConnection) -> redis::RedisResult<(u64, f64)> {
    let info: String = redis::cmd("INFO").arg("memory").arg("cpu").query_async(con).await?;
    let field = |name: &str| -> Option<&str> {
        info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
    };
    let mem = field("used_memory").and_then(|v| v.parse().ok()).unwrap_or(0);
    let cpu = ["used_cpu_user", "used_cpu_sys"].iter().filter_map(|k| field(k)?.parse::<f64>().ok()).sum();
    Ok((mem, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let rss = rss_bytes(pid).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        let before = cpu_seconds(pid).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let after = cpu_seconds(pid).unwrap();
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
