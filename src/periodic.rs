//! Background housekeeping threads: a named OS thread that sleeps and runs a job, for work
//! that must go on whatever the async runtimes are doing (heap trims, metrics upkeep).
use std::time::Duration;

/// Starts a thread named `name` that runs `job` every `every`, for the life of the process.
/// `Duration::ZERO` starts nothing (the job is switched off).
pub fn spawn(name: &str, every: Duration, mut job: impl FnMut() + Send + 'static) -> std::io::Result<()> {
    if every.is_zero() {
        return Ok(());
    }
    std::thread::Builder::new().name(name.into()).spawn(move || loop {
        std::thread::sleep(every);
        job();
    })?;
    Ok(())
}

/// Threads of this process named `name` (Linux; 0 elsewhere). A thread takes its name once
/// it runs, so a caller that has just spawned one polls this with a deadline.
pub fn threads_named(name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn the_job_runs_repeatedly_on_its_named_thread_and_never_when_off() {
        spawn("periodic-off", Duration::ZERO, || panic!("a zero interval must not run the job")).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let seen = runs.clone();
        spawn("periodic-test", Duration::from_millis(1), move || {
            assert_eq!(std::thread::current().name(), Some("periodic-test"));
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::Relaxed) < 3 || threads_named("periodic-test") != 1 {
            assert!(Instant::now() < deadline, "ran {} times", runs.load(Ordering::Relaxed));
            std::thread::yield_now();
        }
        assert_eq!(threads_named("periodic-off"), 0);
    }
}
