//! Gives freed heap back to the kernel. glibc's allocator returns memory to the OS only from
//! the top of each arena, so the churn of facility actors (activate, passivate, activate
//! elsewhere) leaves freed pages resident; a periodic `malloc_trim(0)` releases them.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// The trimmer thread's name (visible in `/proc/<pid>/task/*/comm` and in `perf`).
pub const TRIM_THREAD: &str = "heap-trim";

/// Releases free heap pages of every arena to the kernel; returns whether any were released.
/// On targets without glibc there is nothing to call and it returns `false`.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain integer, touches only allocator-internal state
        // under the allocator's own locks, and is documented thread-safe (MT-Safe).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Starts a thread that trims every `every`; `Duration::ZERO` starts nothing. The thread
/// lives as long as the process (the gateway binary calls this once).
pub fn spawn_trimmer(every: Duration) -> std::io::Result<()> {
    crate::periodic::spawn(TRIM_THREAD, every, || {
        let started = Instant::now();
        let released = trim();
        // A trim holds each arena's lock while it walks it: its duration is what a
        // worker allocating in that arena could wait, so it is worth seeing under debug.
        tracing::debug!(released, took_us = started.elapsed().as_micros() as u64, "heap trim");
    })
}
