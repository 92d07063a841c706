//! Core processing speed (SPEC §6): decode → dedupe → validate → project over a
//! simulated day, on one core, with decoding and the rest measured apart.
//!
//! `cargo bench -p swabstream-core --bench pipeline` (set SWABSTREAM_BENCH_PEOPLE
//! to change the day's size; default 200,000 people).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use swabstream_core::{CoreConfig, PartitionState, Placement, Record};
use swabstream_events::avro::Codec;
use swabstream_events::{Event, Timestamp};
use swabstream_sim::{SimConfig, simulate};

/// The day's records (key: the hex `person_ref`, value: Avro) and their timestamp.
#[allow(clippy::type_complexity)]
fn day() -> (Vec<(Vec<u8>, Vec<u8>)>, Timestamp) {
    let people = std::env::var("SWABSTREAM_BENCH_PEOPLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let cfg = SimConfig { people, seed: 7, ..SimConfig::default() };
    let sim = simulate(&cfg);
    let codec = Codec::shared();
    let payloads = sim
        .events
        .iter()
        .map(|e| {
            let mut buf = Vec::with_capacity(160);
            codec.encode(e, &mut buf);
            (e.person_ref.to_hex().into_bytes(), buf)
        })
        .collect();
    // Published the day after the simulated one, as the simulator's truth assumes.
    (payloads, cfg.day.start().plus_secs(2 * 86_400))
}

/// A state for the one partition of a one-partition topic: every record's
/// key and partition are checked (SPEC §3.1), and all of them belong.
fn state() -> PartitionState {
    let mut s = PartitionState::new(CoreConfig::default());
    s.set_placement(Placement::new(0, 1));
    s
}

fn pipeline(c: &mut Criterion) {
    let (keyed, ts) = day();
    let (keys, payloads): (Vec<_>, Vec<_>) = keyed.into_iter().unzip();
    let codec = Codec::shared();
    let n = payloads.len() as u64;
    let mut g = c.benchmark_group("simulated_day");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);

    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for p in &payloads {
                ok += usize::from(codec.decode(p).is_ok());
            }
            ok
        })
    });

    let decoded: Vec<Event<'_>> =
        payloads.iter().map(|p| codec.decode(p).expect("simulated events decode")).collect();
    // SPEC §3.1's key and partition check alone (part of every path below).
    g.bench_function("placement_check", |b| {
        // One partition: every record passes, as nearly all do in a healthy topic.
        let placement = Placement::new(0, 1).expect("partition 0 of 1");
        assert!(
            decoded
                .iter()
                .zip(&keys)
                .all(|(e, k)| placement.misplaced(Some(k), &e.person_ref.0).is_none())
        );
        b.iter(|| {
            let mut misplaced = 0usize;
            for (e, k) in decoded.iter().zip(&keys) {
                misplaced += usize::from(placement.misplaced(Some(k), &e.person_ref.0).is_some());
            }
            misplaced
        })
    });
    g.bench_function("dedupe_validate_project", |b| {
        b.iter_batched_ref(
            state,
            |state| {
                let mut dlq = Vec::new();
                for (i, ((e, p), k)) in decoded.iter().zip(&payloads).zip(&keys).enumerate() {
                    state.apply_event(i as i64, ts, Some(k), e, p, &mut dlq);
                }
                state.take_changes().len()
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("decode_dedupe_validate_project", |b| {
        b.iter_batched_ref(
            state,
            |state| {
                let mut dlq = Vec::new();
                for (i, (p, k)) in payloads.iter().zip(&keys).enumerate() {
                    let key = Some(k.as_slice());
                    state.apply(
                        Record { offset: i as i64, timestamp: ts, key, payload: Some(p) },
                        &mut dlq,
                    );
                }
                state.take_changes().len()
            },
            BatchSize::LargeInput,
        )
    });
    // What a worker does: batches of consumed records, with prefetching.
    let records: Vec<Record<'_>> = payloads
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (p, k))| Record {
            offset: i as i64,
            timestamp: ts,
            key: Some(k),
            payload: Some(p),
        })
        .collect();
    g.bench_function("decode_dedupe_validate_project_batched", |b| {
        b.iter_batched_ref(
            state,
            |state| {
                let mut dlq = Vec::new();
                for batch in records.chunks(1024) {
                    state.apply_batch(batch, &mut dlq);
                }
                state.take_changes().len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
