//! Resource readings of the processes under test: CPU time, RSS and context switches from
//! `/proc/<pid>`, Redis memory and CPU from `INFO`, and the gateway's writes per Redis round
//! trip from its `/metrics`.
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

/// Context switches (voluntary and involuntary) in one `/proc/<pid>/task/<tid>/status`.
pub fn parse_ctx_switches(status: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|r| r.trim().parse().ok())
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// Context switches of every live thread of a process, summed: `/proc/<pid>/status` counts
/// only the main thread's, and the servers' work runs on their other threads. A thread that
/// exited takes its count with it (the servers measured keep theirs for their lifetime).
pub fn ctx_switches(pid: u32) -> Option<u64> {
    ctx_switches_in(std::path::Path::new(&format!("/proc/{pid}/task")))
}

/// The sum over `tasks/<tid>/status` (a process's `/proc/<pid>/task`).
fn ctx_switches_in(tasks: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(tasks).ok()?.flatten() {
        // A thread may exit between the listing and the read: it simply is not counted.
        if let Ok(status) = std::fs::read_to_string(t.path().join("status")) {
            total += parse_ctx_switches(&status).unwrap_or(0);
        }
    }
    Some(total)
}

/// `scangw_redis_batch_size` (writes per group-commit round trip) from a Prometheus text
/// page: its `_sum` and `_count`, each summed over its label sets. `None` when the page has
/// no such series (a server that is not the gateway).
pub fn batch_size_totals(page: &str) -> Option<(f64, f64)> {
    let total = |name: &str| -> Option<f64> {
        let mut found = None;
        for l in page.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = l.strip_prefix(name) else { continue };
            // The series itself, with or without labels; not a longer name sharing the prefix.
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())?;
            *found.get_or_insert(0.0) += value;
        }
        found
    };
    const NAME: &str = scan_gateway::telemetry::metrics::REDIS_BATCH_SIZE;
    Some((total(&format!("{NAME}_sum"))?, total(&format!("{NAME}_count"))?))
}

/// The text of `GET url` (a server's `/metrics`), or `None` when it does not answer 200.
pub async fn fetch_text(url: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let get = async {
        let resp = client.get(url.parse().ok()?).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), get).await.ok().flatten()
}

/// What one `INFO` says about Redis: memory, CPU, and its background saves. Each AOF
/// rewrite or RDB save forks a child that serialises the whole dataset on a core, which on a
/// shared machine shows as seconds of higher latency: a run reports the ones it overlapped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RedisReading {
    pub used_memory: u64,
    /// `used_cpu_user + used_cpu_sys`, seconds.
    pub cpu_s: f64,
    /// `total_forks`, `aof_rewrites` and `rdb_saves` since Redis started.
    pub forks: u64,
    pub aof_rewrites: u64,
    pub rdb_saves: u64,
    /// An AOF rewrite or an RDB save is running now.
    pub saving: bool,
    /// Redis keeps an AOF (`aof_enabled`).
    pub aof: bool,
    /// An AOF rewrite is running or scheduled (it waits for a running RDB save).
    pub aof_rewriting: bool,
    /// `process_id`: where its threads' context switches are read (Redis on this host).
    pub pid: Option<u32>,
}

/// Reads a [`RedisReading`] from the text of `INFO server memory cpu stats persistence`; fields
/// it lacks (an older Redis) read as zero.
pub fn parse_info(info: &str) -> RedisReading {
    let field = |name: &str| -> Option<&str> {
        info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
    };
    let int = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    RedisReading {
        used_memory: int("used_memory"),
        cpu_s: ["used_cpu_user", "used_cpu_sys"].iter().filter_map(|k| field(k)?.parse::<f64>().ok()).sum(),
        forks: int("total_forks"),
        aof_rewrites: int("aof_rewrites"),
        rdb_saves: int("rdb_saves"),
        saving: int("aof_rewrite_in_progress") == 1 || int("rdb_bgsave_in_progress") == 1,
        aof: int("aof_enabled") == 1,
        aof_rewriting: int("aof_rewrite_in_progress") == 1 || int("aof_rewrite_scheduled") == 1,
        pid: field("process_id").and_then(|v| v.parse().ok()),
    }
}

pub async fn redis_reading(con: &mut MultiplexedConnection) -> redis::RedisResult<RedisReading> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .arg("memory")
        .arg("cpu")
        .arg("stats")
        .arg("persistence")
        .query_async(con)
        .await?;
    Ok(parse_info(&info))
}

/// Compacts Redis's AOF now (BGREWRITEAOF) and waits until no rewrite runs or waits to run,
/// up to `deadline`. A measurement run after it does not meet the rewrite that the writes
/// before it (a whole step search) would otherwise start at a moment of chance. `None` when
/// Redis keeps no AOF; else how long it took and whether it finished by the deadline.
pub async fn compact_aof(
    con: &mut MultiplexedConnection,
    deadline: std::time::Duration,
) -> redis::RedisResult<Option<(std::time::Duration, bool)>> {
    let from = std::time::Instant::now();
    let r = redis_reading(con).await?;
    if !r.aof {
        return Ok(None);
    }
    // A rewrite already running compacts the AOF too: wait for it instead.
    if !r.aof_rewriting {
        let _: redis::Value = redis::cmd("BGREWRITEAOF").query_async(con).await?;
    }
    loop {
        if !redis_reading(con).await?.aof_rewriting {
            return Ok(Some((from.elapsed(), true)));
        }
        if from.elapsed() >= deadline {
            return Ok(Some((from.elapsed(), false)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_cpu_and_background_saves_from_info() {
        let info =
            "# Server\r\nprocess_id:4242\r\n# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n# CPU\r\n\
                    used_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9.0\r\n# Stats\r\n\
                    total_forks:3\r\nlatest_fork_usec:812\r\n# Persistence\r\nrdb_bgsave_in_progress:0\r\n\
                    rdb_saves:1\r\naof_enabled:1\r\naof_rewrite_in_progress:1\r\n\
                    aof_rewrite_scheduled:0\r\naof_rewrites:2\r\naof_rewrites_consecutive_failures:0\r\n";
        let r = parse_info(info);
        assert_eq!(
            r,
            RedisReading {
                used_memory: 1048576,
                cpu_s: 3.75,
                forks: 3,
                aof_rewrites: 2,
                rdb_saves: 1,
                saving: true,
                aof: true,
                aof_rewriting: true,
                pid: Some(4242),
            },
            "children's CPU is the fork's, not Redis's"
        );
        let idle_text = info.replace("aof_rewrite_in_progress:1", "aof_rewrite_in_progress:0");
        let idle = parse_info(&idle_text);
        assert!(!idle.saving && !idle.aof_rewriting);
        let scheduled = parse_info(&idle_text.replace("aof_rewrite_scheduled:0", "aof_rewrite_scheduled:1"));
        assert!(scheduled.aof_rewriting && !scheduled.saving, "a scheduled rewrite has not forked yet");
        assert!(!parse_info(&info.replace("aof_enabled:1", "aof_enabled:0")).aof);
        let bgsave = parse_info(&info.replace("rdb_bgsave_in_progress:0", "rdb_bgsave_in_progress:1"));
        assert!(bgsave.saving && bgsave.aof_rewrites == 2);
        assert_eq!(parse_info(""), RedisReading::default(), "an older Redis without the fields");
    }

    #[tokio::test]
    async fn compacting_rewrites_the_aof_once_and_returns_when_the_rewrite_is_done() {
        use std::time::{Duration, Instant};
        let redis = crate::test_redis::Redis::start_with(&["--save", "", "--appendonly", "yes"]);
        let mut con = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        for i in 0..2_000 {
            let _: i64 = redis::cmd("INCR").arg(format!("k{}", i % 20)).query_async(&mut con).await.unwrap();
        }
        // Whatever Redis rewrites on its own at start is over before the count is taken.
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis_reading(&mut con).await.unwrap().aof_rewriting {
            assert!(Instant::now() < deadline, "a start-up rewrite never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = redis_reading(&mut con).await.unwrap();
        let (_, done) = compact_aof(&mut con, Duration::from_secs(60)).await.unwrap().expect("Redis keeps an AOF");
        assert!(done);
        // Redis notices its child's exit only on its next cron tick (100 ms): a call that
        // returned right after BGREWRITEAOF would still see the rewrite running here.
        let after = redis_reading(&mut con).await.unwrap();
        assert_eq!(after.aof_rewrites, before.aof_rewrites + 1, "one rewrite");
        assert!(!after.aof_rewriting && !after.saving);
        let v: i64 = redis::cmd("GET").arg("k7").query_async(&mut con).await.unwrap();
        assert_eq!(v, 100);

        // Without an AOF there is nothing to compact, and nothing forks.
        let plain = crate::test_redis::Redis::start();
        let mut con = redis::Client::open(plain.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        assert_eq!(compact_aof(&mut con, Duration::from_secs(60)).await.unwrap(), None);
        assert_eq!(redis_reading(&mut con).await.unwrap().forks, 0);
    }

    #[test]
    fn context_switches_are_voluntary_plus_involuntary() {
        let status = "Name:\tactix-rt|system\nvoluntary_ctxt_switches:\t1200\nnonvoluntary_ctxt_switches:\t34\n";
        assert_eq!(parse_ctx_switches(status), Some(1234));
        assert_eq!(parse_ctx_switches("Name:\tx\n"), None, "a kernel without the fields");
    }

    /// Every thread of a process is counted, not only the main one that `/proc/<pid>/status`
    /// describes. (Read from a directory laid out as `/proc/<pid>/task`: a live process's
    /// threads come and go under a parallel test harness, and an exited one's count leaves
    /// with it.)
    #[test]
    fn context_switches_are_summed_over_the_threads() {
        let dir = std::env::temp_dir().join(format!("scan-load-tasks-{}", std::process::id()));
        for (tid, status) in [
            ("100", "voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t1\n"),
            ("101", "voluntary_ctxt_switches:\t200\nnonvoluntary_ctxt_switches:\t20\n"),
            ("102", "Name:\tgone\n"),
        ] {
            std::fs::create_dir_all(dir.join(tid)).unwrap();
            std::fs::write(dir.join(tid).join("status"), status).unwrap();
        }
        std::fs::create_dir_all(dir.join("103")).unwrap(); // exited before its status was read
        let total = ctx_switches_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(total, Some(231));
        // The live reading works on this process, and a process that is not there has none.
        assert!(ctx_switches(std::process::id()).is_some_and(|n| n > 0));
        assert!(ctx_switches(u32::MAX).is_none());
    }

    #[test]
    fn writes_per_round_trip_come_from_the_batch_size_sum_and_count() {
        let page = "# TYPE scangw_redis_batch_size summary\n\
                    scangw_redis_batch_size{quantile=\"0.5\"} 2\n\
                    scangw_redis_batch_size_sum{writer=\"0\"} 300\n\
                    scangw_redis_batch_size_count{writer=\"0\"} 100\n\
                    scangw_redis_batch_size_sum{writer=\"1\"} 100\n\
                    scangw_redis_batch_size_count{writer=\"1\"} 100\n\
                    scangw_redis_batch_size_sum_other 7\n";
        assert_eq!(batch_size_totals(page), Some((400.0, 200.0)), "summed over writers");
        assert_eq!(
            batch_size_totals("scangw_redis_batch_size_sum 5\nscangw_redis_batch_size_count 2\n"),
            Some((5.0, 2.0))
        );
        assert_eq!(batch_size_totals("echo_requests_total 5\n"), None, "not the gateway");
    }

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
