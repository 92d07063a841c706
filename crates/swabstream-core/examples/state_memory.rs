//! State memory of one partition holding a whole simulated day.
//!
//! `cargo run --release -p swabstream-core --example state_memory -- 2040000`
//!
//! Prints bytes per person-day, per retained event id and per code, from the
//! tables' capacities, and checks the total against what the allocator
//! actually handed out while the state was built.

// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to
// the system allocator and adds up sizes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use swabstream_core::{CoreConfig, PartitionState, Record};
use swabstream_events::avro::Codec;
use swabstream_sim::{SimConfig, simulate};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let people: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_040_000);
    let cfg = SimConfig { people, seed: 1, ..SimConfig::default() };
    let sim = simulate(&cfg);
    let codec = Codec::shared();
    let payloads: Vec<Vec<u8>> = sim
        .events
        .iter()
        .map(|e| {
            let mut b = Vec::new();
            codec.encode(e, &mut b);
            b
        })
        .collect();
    drop(sim);
    let ts = cfg.day.start().plus_secs(2 * 86_400);

    let before = LIVE.load(Ordering::Relaxed);
    let mut state = PartitionState::new(CoreConfig::default());
    let mut dlq = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        state.apply(
            Record { offset: i as i64, timestamp: ts, key: None, payload: Some(p) },
            &mut dlq,
        );
        dlq.clear();
    }
    drop(dlq);
    let _ = state.take_changes();
    let measured = LIVE.load(Ordering::Relaxed) - before;
    let m = state.memory();
    let per = |bytes: usize, n: usize| if n == 0 { 0.0 } else { bytes as f64 / n as f64 };
    println!("people in the city:   {people}");
    println!("events applied:       {}", payloads.len());
    println!(
        "person-days:          {:>10}  {:>12} B  {:>6.1} B each",
        m.person_days,
        m.person_day_bytes,
        per(m.person_day_bytes, m.person_days)
    );
    println!(
        "retained event ids:   {:>10}  {:>12} B  {:>6.1} B each",
        m.event_ids,
        m.event_id_bytes,
        per(m.event_id_bytes, m.event_ids)
    );
    println!(
        "codes:                {:>10}  {:>12} B  {:>6.1} B each",
        m.codes,
        m.code_bytes,
        per(m.code_bytes, m.codes)
    );
    println!("view rows:                        {:>12} B", m.view_bytes);
    println!(
        "total (tables):                   {:>12} B  {:>6.1} B per person-day",
        m.total(),
        per(m.total(), m.person_days)
    );
    println!("total (allocator):                {:>12} B", measured);
    // What a checkpoint with a snapshot costs for this partition, and what
    // restoring it costs a worker that takes the partition over.
    let started = std::time::Instant::now();
    let snapshot = state.snapshot();
    let took = started.elapsed();
    let started = std::time::Instant::now();
    let restored = PartitionState::restore(&snapshot, CoreConfig::default());
    let restore_took = started.elapsed();
    assert!(restored.is_ok(), "the snapshot restores");
    println!(
        "snapshot:                         {:>12} B  taken in {took:.2?}, restored in {restore_took:.2?}; {} chunks of 4 MiB (SQLite), {} of 512 KiB (Scylla)",
        snapshot.len(),
        snapshot.len().div_ceil(4 << 20),
        snapshot.len().div_ceil(512 << 10),
    );
}
