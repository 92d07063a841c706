//! Simulated days equal their ground truth. The simulator computes its truth
//! from what it injected, without this crate (it does not depend on it), so
//! these tests compare two independent derivations of the same views.

use swabstream_core::placement::partition_of;
use swabstream_core::{CoreConfig, PartitionState, Placement, Record};
use swabstream_events::Day;
use swabstream_events::avro::Codec;
use swabstream_sim::{SimConfig, simulate};
use swabstream_views::ViewSet;

fn check(people: u64, seed: u64, day: &str, partitions: usize) {
    let cfg = SimConfig { people, seed, day: Day::parse(day).unwrap(), ..SimConfig::default() };
    let sim = simulate(&cfg);
    let codec = Codec::shared();
    let ts = cfg.day.start().plus_secs(2 * 86_400);
    // Keyed and routed as a producer does, with each partition checking it.
    let mut states: Vec<PartitionState> = (0..partitions)
        .map(|p| {
            let mut s = PartitionState::new(CoreConfig::default());
            s.set_placement(Placement::new(p as i32, partitions as i32));
            s
        })
        .collect();
    let mut dlq = Vec::new();
    let mut payload = Vec::new();
    for e in &sim.events {
        payload.clear();
        codec.encode(e, &mut payload);
        let key = e.person_ref.to_hex();
        let p = partition_of(key.as_bytes(), partitions as u32) as usize;
        let offset = states[p].next_offset().unwrap_or(0);
        states[p].apply(
            Record { offset, timestamp: ts, key: Some(key.as_bytes()), payload: Some(&payload) },
            &mut dlq,
        );
    }
    use swabstream_events::Reason::{Malformed, WrongPartition};
    assert!(dlq.iter().all(|d| !matches!(d.reason, Malformed | WrongPartition)));
    let views = ViewSet::sum(states.iter().map(PartitionState::views));
    let diffs = views.differences(&sim.truth);
    assert!(
        diffs.is_empty(),
        "{people} people, seed {seed}, {partitions} partitions: {} rows differ (left = core, right = truth):\n{}",
        diffs.len(),
        diffs.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    // And the day was not empty: the comparison compared something.
    let city = views.city(cfg.day).expect("the sampling day has a city row");
    assert!(city.people_sampled > people / 2, "{city:?}");
}

#[test]
fn small_days_equal_their_truth() {
    for seed in 1..=6 {
        check(300, seed, "2022-04-09", 1);
    }
}

#[test]
fn medium_days_equal_their_truth_across_partitions() {
    check(5_000, 11, "2022-04-09", 3);
    check(5_000, 12, "2022-04-10", 8);
}

#[test]
fn a_large_day_equals_its_truth() {
    check(40_000, 2022, "2022-04-09", 4);
}
