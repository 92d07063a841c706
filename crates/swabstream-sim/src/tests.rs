//! Tests that need the simulator's insides: the raw ID numbers.

use std::collections::HashSet;

use swabstream_events::json;

use super::*;

#[test]
fn no_raw_id_number_reaches_the_events() {
    let cfg = SimConfig { people: 5_000, seed: 11, ..SimConfig::default() };
    let generated =
        Generator::new(cfg.seed, cfg.people, cfg.day, &cfg.key).keep_raw_ids().run(cfg.people);
    let raw: HashSet<String> = generated.raw_ids.clone().expect("kept").into_iter().collect();
    assert_eq!(raw.len(), 5_000, "every person has their own number");
    assert!(raw.iter().all(|id| idnum::is_id_number(id)));
    let sim = Simulation::new(&cfg, generated);
    let mut text = String::new();
    for e in sim.events() {
        text.push_str(&json::to_json(&e));
        text.push('\n');
    }
    text.push_str(&serde_json::to_string(sim.truth()).unwrap());
    // Every run of 18 ID-number characters, wherever it is.
    let b = text.as_bytes();
    let id_char = |c: u8| c.is_ascii_digit() || c == b'X';
    for i in 0..b.len().saturating_sub(17) {
        if b[i..i + 18].iter().all(|&c| id_char(c)) {
            assert!(!raw.contains(&text[i..i + 18]), "raw ID number at byte {i}");
        }
    }
    assert_eq!(idnum::find_id_number(&text), None);
}

#[test]
fn uuids_are_version_4() {
    let u = uuid(u128::MAX);
    assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    let u = uuid(0);
    assert_eq!(u, "00000000-0000-4000-8000-000000000000");
}
