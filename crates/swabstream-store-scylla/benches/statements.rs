//! What the Scylla store sends per commit, counted without a server: the
//! core runs a simulated day (100,000 people, seed 1, Avro-encoded) in
//! batches of 4,096 records per Kafka partition, and each batch's changed
//! rows go through the store's own statement builder (`cql::commit_plan`),
//! whose statements, requests (single statements and unlogged batches) and
//! bound-value bytes are counted. A snapshot commit is counted apart.
//!
//! `cargo bench -p swabstream-store-scylla --bench statements`
//! (`SWABSTREAM_BENCH_PEOPLE`, `SWABSTREAM_BENCH_PARTITIONS` to change the day.)

use std::time::Instant;

use swabstream_core::{CoreConfig, PartitionState, Record};
use swabstream_events::avro::Codec;
use swabstream_sim::{SimConfig, simulate};
use swabstream_store_scylla::cql::{self, Stmt};

const BATCH: usize = 4096;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    commits: u64,
    records: u64,
    rows: u64,
    statements: u64,
    requests: u64,
    batches: u64,
    bytes: u64,
    max_statements: u64,
    max_bytes: u64,
}

fn main() {
    let people = env("SWABSTREAM_BENCH_PEOPLE", 100_000);
    let partitions = env("SWABSTREAM_BENCH_PARTITIONS", 12) as usize;
    let cfg = SimConfig { people, ..SimConfig::default() };
    let sim = simulate(&cfg);
    let ts = cfg.day.start().plus_secs(2 * 86_400);
    // A stand-in for murmur2 that keeps a person's events in one partition.
    let mut by_partition: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions];
    for e in &sim.events {
        let mut b = Vec::new();
        Codec::shared().encode(e, &mut b);
        by_partition[usize::from(e.person_ref.0[1]) % partitions].push(b);
    }

    let started = Instant::now();
    let mut t = Tally::default();
    let mut by_stmt = std::collections::BTreeMap::<String, u64>::new();
    let mut snapshot_plans = Vec::new();
    for (p, payloads) in by_partition.iter().enumerate() {
        let mut state = PartitionState::new(CoreConfig::default());
        let records: Vec<Record<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, b)| Record { offset: i as i64, timestamp: ts, key: None, payload: Some(b) })
            .collect();
        for batch in records.chunks(BATCH) {
            state.apply_batch(batch, &mut Vec::new());
            let rows = state.take_changes();
            let next = state.next_offset().unwrap();
            let plan = cql::commit_plan(1, p as i32, 1, &rows, next, None, 0).unwrap();
            let statements = plan.statements().count() as u64;
            let bytes = plan.wire_bytes() as u64;
            t.commits += 1;
            t.records += batch.len() as u64;
            t.rows += rows.len() as u64;
            t.statements += statements;
            t.requests += plan.requests() as u64;
            t.batches += plan.steps.iter().flatten().filter(|r| r.len() > 1).count() as u64;
            t.bytes += bytes;
            t.max_statements = t.max_statements.max(statements);
            t.max_bytes = t.max_bytes.max(bytes);
            for b in plan.statements() {
                *by_stmt.entry(format!("{:?}", b.stmt)).or_default() += 1;
            }
        }
        // The snapshot the partition would write at the end of the day.
        let snapshot = state.snapshot();
        let next = state.next_offset().unwrap();
        snapshot_plans
            .push(cql::commit_plan(1, p as i32, 1, &[], next, Some(&snapshot), 0).unwrap());
    }
    let elapsed = started.elapsed();

    let c = t.commits as f64;
    println!(
        "simulated day: {people} people, {} events, {partitions} partitions, batches of {BATCH} records",
        sim.events.len()
    );
    println!(
        "commits: {} ({} records, {:.0} per commit)",
        t.commits,
        t.records,
        t.records as f64 / c
    );
    println!("rows per commit:        {:.1}", t.rows as f64 / c);
    println!(
        "statements per commit:  {:.1} (max {}); plus 2 reads (epoch, checkpoint) before any write",
        t.statements as f64 / c,
        t.max_statements
    );
    println!(
        "requests per commit:    {:.1} ({:.1} of them unlogged batches of one Scylla partition), at most 64 in flight",
        t.requests as f64 / c,
        t.batches as f64 / c
    );
    println!(
        "bound bytes per commit: {:.0} (max {}), {:.1} per record",
        t.bytes as f64 / c,
        t.max_bytes,
        t.bytes as f64 / t.records as f64
    );
    println!("statements by kind over the day:");
    for (k, n) in &by_stmt {
        println!("  {k:<24} {n}");
    }
    let chunks: usize = snapshot_plans
        .iter()
        .flat_map(|p| p.statements())
        .filter(|b| b.stmt == Stmt::InsertChunk)
        .count();
    let snap_bytes: usize = snapshot_plans.iter().map(|p| p.wire_bytes()).sum();
    println!(
        "end-of-day snapshot commit, per partition: {:.1} chunk inserts, {:.0} bound bytes ({} KiB chunks), then checkpoint and one range delete",
        chunks as f64 / partitions as f64,
        snap_bytes as f64 / partitions as f64,
        cql::CHUNK_BYTES >> 10
    );
    println!("(core + statement building took {elapsed:.2?})");
}
