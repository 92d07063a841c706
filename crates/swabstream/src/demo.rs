//! `swabstream demo`: the main job, end to end on one machine.
//!
//! It simulates a sampling day, encodes every event to its wire form, routes
//! it to a partition by `person_ref` as Kafka's keyed producer would, applies
//! each partition's records with its own `PartitionState`, sums the partial
//! views, prints the city and district views with the percentage of people
//! identified with codes, and checks them against the simulator's ground
//! truth, exiting non-zero on any difference.
//!
//! The records stay in memory here; the Kafka transport and the view store
//! are the pipeline issue's work (see ARCHITECTURE.md), and will slot in
//! between the encoding and the partition states without changing either.

use std::process::ExitCode;
use std::time::Instant;

use swabstream_core::{CoreConfig, OutcomeCounts, PartitionState, Record};
use swabstream_events::avro::Codec;
use swabstream_sim::{SimConfig, simulate};
use swabstream_views::{ViewSet, render_table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// People living in the simulated city (2040000 reproduces the scale of 2022-04-09).
    #[arg(long, default_value_t = 200_000)]
    people: u64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions to spread persons over, as the topic would.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    let cfg = SimConfig { people: args.people, seed: args.seed, ..SimConfig::default() };
    let started = Instant::now();
    let sim = simulate(&cfg);
    eprintln!(
        "simulated {} people: {} events in {:.1?}",
        args.people,
        sim.events.len(),
        started.elapsed()
    );

    let codec = Codec::shared();
    let mut partitions: Vec<Vec<Vec<u8>>> = vec![Vec::new(); args.partitions as usize];
    for e in &sim.events {
        let mut buf = Vec::with_capacity(160);
        codec.encode(e, &mut buf);
        // The Kafka key is the pseudonym's text form.
        partitions[partition_of(e.person_ref.to_hex().as_bytes(), args.partitions)].push(buf);
    }
    // Published after the simulated day, as the simulator's truth assumes.
    let record_time = cfg.day.start().plus_secs(2 * 86_400);

    let started = Instant::now();
    let mut parts = Vec::new();
    let mut counts = OutcomeCounts::default();
    for records in &partitions {
        let mut state = PartitionState::new(CoreConfig::default());
        let mut dlq = Vec::new();
        let records: Vec<Record<'_>> = records
            .iter()
            .enumerate()
            .map(|(offset, p)| Record {
                offset: offset as i64,
                timestamp: record_time,
                payload: Some(p),
            })
            .collect();
        // In consumer-sized batches, as a worker applies what it polled.
        for batch in records.chunks(1024) {
            state.apply_batch(batch, &mut dlq);
        }
        let c = state.counts();
        counts.accepted += c.accepted;
        counts.duplicates += c.duplicates;
        for (t, r) in counts.rejected.iter_mut().zip(c.rejected) {
            *t += r;
        }
        parts.push(state.views());
    }
    let elapsed = started.elapsed();
    let views = ViewSet::sum(parts);

    print!(
        "{}",
        render_table(&views, &["city_daily", "district_daily", "method_daily", "rejections_daily"])
    );
    if let Some(city) = views.city(cfg.day) {
        println!(
            "{}: {} people sampled, {} of them identified with a code: {:.2} %",
            cfg.day,
            city.people_sampled,
            city.using_code,
            city.percent_using_code.unwrap_or(0.0)
        );
    }
    eprintln!(
        "processed {} records over {} partitions in {:.2?} ({:.0} events/s): {} accepted, {} duplicates, {} rejected",
        counts.applied(),
        args.partitions,
        elapsed,
        counts.applied() as f64 / elapsed.as_secs_f64(),
        counts.accepted,
        counts.duplicates,
        counts.rejected_total()
    );
    let diffs = views.differences(&sim.truth);
    if diffs.is_empty() {
        println!("check: the views equal the simulator's ground truth");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "check FAILED: {} rows differ from the ground truth (left = pipeline, right = truth):",
            diffs.len()
        );
        for d in diffs.iter().take(30) {
            println!("  {d}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The partition of a key, as Kafka's default partitioner chooses it for the
/// key bytes: murmur2, positive part, modulo the partition count.
pub fn partition_of(key: &[u8], partitions: u32) -> usize {
    ((murmur2(key) & 0x7fff_ffff) % partitions) as usize
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
