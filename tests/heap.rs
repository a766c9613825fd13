//! The heap trimmer gives freed heap back to the kernel. Its own test binary (process), so
//! no other test allocates while RSS is compared.
use std::time::Duration;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).expect("resident field").parse().expect("a number");
    pages * 4096
}

const BLOCKS: usize = 200_000;
const BLOCK: usize = 512;

#[test]
fn freed_heap_below_a_live_allocation_is_released_by_a_trim() {
    // Small blocks come from the arena, not from mmap; a live block allocated after them
    // keeps the arena's top in use, so `free` alone cannot hand the pages back: the
    // fragmentation that facility-actor churn leaves behind.
    let mut blocks: Vec<Box<[u8; BLOCK]>> = (0..BLOCKS).map(|i| Box::new([i as u8; BLOCK])).collect();
    let pin = Box::new([7u8; BLOCK]);
    let freed = (BLOCKS * BLOCK) as u64;
    blocks.clear();
    blocks.shrink_to_fit();
    let before = rss_bytes();
    assert!(scan_gateway::heap::trim(), "malloc_trim reported nothing released");
    let after = rss_bytes();
    assert!(
        before.saturating_sub(after) >= freed / 2,
        "trim released {} of {} freed bytes (RSS {} -> {})",
        before.saturating_sub(after),
        freed,
        before,
        after
    );
    assert_eq!(pin[BLOCK - 1], 7);
}

#[test]
fn the_trimmer_runs_as_a_named_thread_and_not_when_switched_off() {
    let count = || scan_gateway::periodic::threads_named(scan_gateway::heap::TRIM_THREAD);
    scan_gateway::heap::spawn_trimmer(Duration::ZERO).expect("nothing to spawn");
    assert_eq!(count(), 0, "a zero interval must not start a trimmer");
    scan_gateway::heap::spawn_trimmer(Duration::from_secs(3600)).expect("spawns");
    // A new thread names itself once it runs: poll with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count() != 1 {
        assert!(std::time::Instant::now() < deadline, "no {} thread", scan_gateway::heap::TRIM_THREAD);
        std::thread::yield_now();
    }
}
