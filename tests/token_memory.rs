//! Heap per live token of a facility queue, counted by this binary's global allocator: a
//! node's memory follows its live tokens, so their size is a budget with a test. Its own
//! test binary (process), so the counting allocator wraps nothing else.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use scan_gateway::facility::queue::{
    Counter, CounterKind, FacilityQueue, PatientDigest, PatientKeys, Profile, QueueConfig, ScanInput,
};

/// Counts the bytes and allocations live on the current thread (requested sizes; glibc
/// adds its chunk header and rounding on top, about 8 to 16 bytes per allocation).
struct Counting;

thread_local! {
    static BYTES: Cell<i64> = const { Cell::new(0) };
    static ALLOCS: Cell<i64> = const { Cell::new(0) };
}

fn add(bytes: i64, allocs: i64) {
    // `try_with`: a thread being torn down has no counters left; its frees do not matter.
    let _ = BYTES.try_with(|b| b.set(b.get() + bytes));
    let _ = ALLOCS.try_with(|a| a.set(a.get() + allocs));
}

// SAFETY: every call is passed to `System` unchanged; the counters are plain thread-local
// cells with const initialisers (no allocation, no destructor), so counting cannot recurse.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size() as i64, 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(-(layout.size() as i64), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64, 0);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> (i64, i64) {
    (BYTES.with(Cell::get), ALLOCS.with(Cell::get))
}

fn config() -> QueueConfig {
    let counter = |id: &str, kind| Counter { id: id.into(), kind };
    QueueConfig {
        tz: TimeZone::get("Asia/Kolkata").expect("tz database"),
        token_validity_s: 7200,
        max_priority_streak: 3,
        default_service_s: 120,
        counters: vec![
            counter("OPD1", CounterKind::Opd),
            counter("OPD2", CounterKind::Opd),
            counter("Pharmacy", CounterKind::Pharmacy),
            counter("Lab", CounterKind::Lab),
        ],
    }
}

fn digest(tag: u8, i: u32) -> PatientDigest {
    let mut d = [tag; 16];
    d[..4].copy_from_slice(&i.to_le_bytes());
    PatientDigest(d)
}

/// A scan as the platform sends it: full profile (the load generator's shapes and sizes)
/// and an Idempotency-Key.
fn scan(i: u32) -> ScanInput {
    let number = 91_597_080_000_000u64 + u64::from(i);
    ScanInput {
        counter: ["OPD1", "OPD2", "Pharmacy", "Lab"][i as usize % 4].to_string(),
        priority: None,
        patient: PatientKeys { by_address: digest(1, i), by_number: Some(digest(2, i)) },
        profile: Profile {
            abha_address: format!("lt{}@sbx", number % 1_000_000_000_000),
            abha_number: Some(number.to_string()),
            name: "Load Test Patient".into(),
            gender: "M".into(),
            year_of_birth: 1983,
            phone: Some(format!("{}", 9_080_000_000u64 + u64::from(i))),
        },
        idempotency_key: Some(format!("0f8fad5b-d9cb-469f-a165-{:012x}", i)),
    }
}

/// Live heap per waiting token after `n` scans, once the changes went to the writer.
fn per_token(n: u32) -> (f64, f64) {
    let now: Timestamp = "2026-11-23T03:00:00Z".parse().expect("timestamp");
    let cfg = config();
    let day = now.to_zoned(cfg.tz.clone()).date();
    let mut q = FacilityQueue::new(cfg, day);
    // The first scan of each counter makes its lane: per-counter, not per-token, memory.
    for i in 0..4 {
        q.scan(scan(u32::MAX - i), now).expect("scan");
    }
    q.take_changes(|_| {});
    let (b0, a0) = live();
    for i in 0..n {
        q.scan(scan(i), now).expect("scan");
        if i % 16 == 15 {
            q.take_changes(|_| {});
        }
    }
    q.take_changes(|_| {});
    let (b1, a1) = live();
    assert_eq!(q.len(), n as usize + 4, "every scan issued a token");
    ((b1 - b0) as f64 / f64::from(n), (a1 - a0) as f64 / f64::from(n))
}

/// The budget, in requested bytes per waiting token, at several queue lengths (a
/// power-of-two table is between under half and seven-eighths full). Measured 594 to 659
/// (570 to 635 before a token could keep its repeats' Idempotency-Keys, a 24-byte vector
/// that allocates only when used; 844 before the repeat index was packed and the patient
/// digests moved into the token).
/// RSS adds the allocator's overhead per allocation on top.
const BYTES_PER_TOKEN: f64 = 680.0;
/// The token's box, five profile strings, its Idempotency-Key and its history.
const ALLOCS_PER_TOKEN: f64 = 8.0;

#[test]
fn a_waiting_token_stays_within_its_heap_budget() {
    let mut worst = (0.0f64, 0.0f64);
    for n in [3_000, 5_000, 7_000, 10_000] {
        let (bytes, allocs) = per_token(n);
        println!("{n} tokens: {bytes:.0} bytes and {allocs:.2} allocations per token");
        worst = (worst.0.max(bytes), worst.1.max(allocs));
    }
    assert!(worst.0 <= BYTES_PER_TOKEN, "{:.0} bytes per waiting token (budget {BYTES_PER_TOKEN})", worst.0);
    assert!(worst.1 <= ALLOCS_PER_TOKEN, "{:.2} allocations per waiting token (budget {ALLOCS_PER_TOKEN})", worst.1);
}
