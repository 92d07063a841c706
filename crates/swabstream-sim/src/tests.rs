//! Tests that need the simulator's insides: the raw ID numbers.

use std::collections::HashSet;

use swabstream_events::{PersonRef, json};

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

#[test]
fn late_data_holds_codes_past_their_scans_and_the_redrive_counts_them_once() {
    let cfg = SimConfig { people: 20_000, seed: 3, late_data: true, ..SimConfig::default() };
    let sim = generate(&cfg);
    let before = sim.truth_before_redrive().expect("late data has a truth before the redrive");
    let after = sim.truth();
    // Codes issued on the day that arrive after a scan of the same person.
    let mut scanned: HashSet<(PersonRef, String)> = HashSet::new();
    let mut held = 0;
    let mut ids = HashSet::new();
    for e in sim.events() {
        if !ids.insert(e.event_id.to_string()) {
            continue; // a producer's resend
        }
        match &e.body {
            Body::SampleScanned(s) => {
                if let Identification::Code { code_id, .. } = &s.identification {
                    scanned.insert((e.person_ref, code_id.to_string()));
                }
            }
            Body::CodeIssued(c) => {
                if scanned.contains(&(e.person_ref, c.code_id.to_string())) {
                    held += 1;
                    assert_eq!(e.occurred_at.local_day(), cfg.day);
                }
            }
            Body::RelativeCodeAudited(_) => {}
        }
    }
    assert!(held > 50, "{held} codes held past their scans");
    let city = |v: &ViewSet| v.city(cfg.day).cloned().expect("the day");
    let (b, a) = (city(before), city(after));
    assert!(a.people_sampled > b.people_sampled && a.valid_scans > b.valid_scans);
    // The original rejections stay; the ones that were not late are rejected again.
    assert!(a.rejected > b.rejected);
    let unknown = |v: &ViewSet| {
        v.rejections_daily
            .iter()
            .filter(|r| r.reason == "CODE_UNKNOWN")
            .map(|r| r.count)
            .sum::<u64>()
    };
    let relapsed = unknown(after) - unknown(before);
    assert_eq!(
        unknown(before) - relapsed,
        a.valid_scans - b.valid_scans,
        "every CODE_UNKNOWN passes on redrive or is rejected again"
    );
    // Off, the day is the day it always was.
    let plain = generate(&SimConfig { late_data: false, ..cfg.clone() });
    assert!(plain.truth_before_redrive().is_none());
    assert_ne!(plain.truth(), after);
}
