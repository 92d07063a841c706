//! The simulated day: determinism, shape, wire forms, and its truth checked
//! against a small reference reading of SPEC §3–4 written here, independently
//! of how the simulator counts (it counts intended outcomes; this runs rules).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use swabstream_events::{
    Body, CodeKind, Day, Event, Identification, PersonRef, Reason, ScanMethod, Timestamp,
    Verification, district_index, json,
};
use swabstream_sim::{SimConfig, SimulatedDay, generate, idnum, simulate, write_files};
use swabstream_views::{Tally, ViewSet};

fn day() -> Day {
    Day::from_civil(2022, 4, 9).unwrap()
}

fn cfg(people: u64, seed: u64) -> SimConfig {
    SimConfig { people, seed, ..SimConfig::default() }
}

/// 20,000 people, seed 42, made once for all tests.
fn big() -> &'static SimulatedDay {
    static DAY: OnceLock<SimulatedDay> = OnceLock::new();
    DAY.get_or_init(|| simulate(&cfg(20_000, 42)))
}

// ---------------------------------------------------------------------------
// A reference reading of the rules, for the tests only.

#[derive(Default)]
struct PersonState {
    seen: HashSet<String>,
    codes: HashMap<String, Code>,
    sampled_days: BTreeSet<Day>,
}

struct Code {
    kind: CodeKind,
    expires_at: Option<Timestamp>,
    verified: bool,
}

fn validate(p: &PersonState, e: &Event<'_>, record_ts: Timestamp) -> Option<Reason> {
    if let Body::SampleScanned(s) = &e.body
        && district_index(&s.district).is_none()
    {
        return Some(Reason::DistrictUnknown);
    }
    if e.occurred_at > record_ts.plus_secs(300) {
        return Some(Reason::InFuture);
    }
    let Body::SampleScanned(s) = &e.body else {
        return None;
    };
    let Identification::Code { code_id, generated_at } = &s.identification else {
        return None;
    };
    let Some(code) = p.codes.get(&**code_id) else {
        return Some(Reason::CodeUnknown);
    };
    if code.expires_at.is_some_and(|x| e.occurred_at > x) {
        return Some(Reason::CodeExpired);
    }
    if matches!(code.kind, CodeKind::Dynamic | CodeKind::Relative) {
        let live = generated_at.is_some_and(|g| {
            g.micros() >= e.occurred_at.micros() - 60_000_000
                && g.micros() <= e.occurred_at.micros() + 5_000_000
        });
        if !live {
            return Some(Reason::CodeNotLive);
        }
    }
    if code.kind == CodeKind::Relative && !code.verified {
        return Some(Reason::RelativeUnverified);
    }
    None
}

/// The views of events processed in order; `record_ts` gives each its Kafka timestamp.
fn reference_views<'e>(
    events: impl IntoIterator<Item = (Timestamp, &'e Event<'static>)>,
) -> ViewSet {
    let mut t = Tally::default();
    let mut people: HashMap<PersonRef, PersonState> = HashMap::new();
    for (record_ts, e) in events {
        let p = people.entry(e.person_ref).or_default();
        let day = e.occurred_at.local_day();
        if !p.seen.insert(e.event_id.to_string()) {
            t.city(day).duplicates += 1;
            continue;
        }
        if let Some(reason) = validate(p, e, record_ts) {
            t.city(day).rejected += 1;
            t.rejections(day, reason.as_str()).count += 1;
            if let Body::SampleScanned(s) = &e.body
                && district_index(&s.district).is_some()
            {
                t.district(day, &s.district).rejected += 1;
            }
            continue;
        }
        match &e.body {
            Body::CodeIssued(c) => {
                t.codes(day, c.kind.as_str(), c.channel.as_str()).count += 1;
                let verified = matches!(
                    c.verification,
                    Some(Verification::AutoHousehold | Verification::BirthCertificate)
                );
                let code = Code { kind: c.kind, expires_at: c.expires_at, verified };
                p.codes.insert(c.code_id.to_string(), code);
            }
            Body::RelativeCodeAudited(a) => {
                if let Some(c) = p.codes.get_mut(&*a.code_id)
                    && c.kind == CodeKind::Relative
                {
                    c.verified = a.approved;
                }
            }
            Body::SampleScanned(s) => {
                let hour = e.occurred_at.local_hour();
                t.city(day).valid_scans += 1;
                t.district(day, &s.district).valid_scans += 1;
                t.site(day, &s.site_id, hour).valid_scans += 1;
                if !p.sampled_days.insert(day) {
                    t.city(day).rescans += 1;
                    continue;
                }
                let method = match &s.identification {
                    Identification::Code { code_id, .. } => {
                        ScanMethod::of_code(p.codes[&**code_id].kind)
                    }
                    Identification::IdDocument => ScanMethod::IdDocument,
                    Identification::DeclaredId => ScanMethod::DeclaredId,
                };
                let code = u64::from(method.is_code());
                let c = t.city(day);
                c.people_sampled += 1;
                c.using_code += code;
                let d = t.district(day, &s.district);
                d.people_sampled += 1;
                d.using_code += code;
                t.site(day, &s.site_id, hour).people_sampled += 1;
                t.method(day, method.as_str()).people_sampled += 1;
            }
        }
    }
    t.into_view_set()
}

fn assert_same(truth: &ViewSet, reference: &ViewSet) {
    let diff = truth.differences(reference);
    assert!(diff.is_empty(), "truth ≠ reference rules:\n{}", diff[..diff.len().min(20)].join("\n"));
}

// ---------------------------------------------------------------------------

#[test]
fn the_truth_is_what_the_rules_say_for_several_seeds() {
    // Published long after the day (record timestamps "now").
    let now = Timestamp::parse_rfc3339("2030-01-01T00:00:00+08:00").unwrap();
    for seed in [1, 2, 3, 4] {
        let sim = generate(&cfg(20_000, seed));
        let events: Vec<(Timestamp, Event<'static>)> = sim.timed_events().collect();
        assert_same(sim.truth(), &reference_views(events.iter().map(|(_, e)| (now, e))));
        // Published as they happen (record timestamps at the send times).
        assert_same(sim.truth(), &reference_views(events.iter().map(|(ts, e)| (*ts, e))));
    }
    let late = Timestamp::parse_rfc3339("2099-12-31T23:00:00+08:00").unwrap();
    assert_same(&big().truth, &reference_views(big().events.iter().map(|e| (late, e))));
}

#[test]
fn send_times_never_precede_occurrence_and_never_decrease() {
    let sim = generate(&cfg(5_000, 9));
    let future = Timestamp::parse_rfc3339("2100-01-01T00:00:00+08:00").unwrap();
    let mut last = Timestamp(i64::MIN);
    for (ts, e) in sim.timed_events() {
        assert!(ts >= last, "publish order is send order");
        last = ts;
        if e.occurred_at < future {
            assert!(ts >= e.occurred_at, "{e:?} sent at {ts}");
            assert!(e.occurred_at < Day(day().0 + 2).start(), "{e:?} too late");
        }
    }
}

#[test]
fn duplicates_stay_within_the_retention() {
    // Every event not from a clock in 2122 is an upper bound of the newest accepted one.
    let d = big();
    let future = Timestamp::parse_rfc3339("2100-01-01T00:00:00+08:00").unwrap();
    let newest = d.events.iter().map(|e| e.occurred_at).filter(|&t| t < future).max().unwrap();
    let horizon = newest.plus_secs(-7 * 86_400);
    let mut seen: HashMap<&str, &Event<'static>> = HashMap::new();
    let mut duplicates = 0;
    for e in &d.events {
        if let Some(original) = seen.insert(&e.event_id, e) {
            assert_eq!(original, e, "a duplicate is exact");
            assert!(e.occurred_at > horizon, "a duplicate older than 7 days: {e:?}");
            duplicates += 1;
        }
    }
    assert!(duplicates > 0);
    assert_eq!(duplicates, d.truth.city_daily.iter().map(|r| r.duplicates).sum::<u64>());
}

#[test]
fn same_seed_same_day_other_seed_other_day() {
    let a = simulate(&cfg(3_000, 5));
    let b = simulate(&cfg(3_000, 5));
    assert_eq!(a.events, b.events);
    assert_eq!(a.truth, b.truth);
    let c = simulate(&cfg(3_000, 6));
    assert_ne!(a.events, c.events);
    assert_ne!(a.truth, c.truth);
    // The key changes the pseudonyms, nothing else.
    let other_key =
        swabstream_events::PseudonymKey::new(b"another key, 16 bytes+".to_vec()).unwrap();
    let d = simulate(&SimConfig { key: other_key, ..cfg(3_000, 5) });
    assert_eq!(a.truth, d.truth);
    assert_ne!(a.events[0].person_ref, d.events[0].person_ref);
}

#[test]
fn the_day_has_the_expected_shape() {
    let d = big();
    let t = &d.truth;
    let today = t.city(day()).expect("a row for the day");
    let pct = today.percent_using_code.unwrap();
    assert!((70.0..=80.0).contains(&pct), "{pct} % using a code");
    assert!((19_000..=20_000).contains(&today.people_sampled), "{today:?}");
    assert!(today.rescans > 0 && today.rejected > 0 && today.duplicates > 0, "{today:?}");

    // All 16 districts, the sum of the districts is the city.
    let districts: Vec<_> = t.district_daily.iter().filter(|r| r.day == day()).collect();
    assert_eq!(districts.len(), 16);
    assert_eq!(districts.iter().map(|r| r.people_sampled).sum::<u64>(), today.people_sampled);
    assert_eq!(districts.iter().map(|r| r.using_code).sum::<u64>(), today.using_code);
    assert_eq!(districts.iter().map(|r| r.valid_scans).sum::<u64>(), today.valid_scans);
    let sites = t.site_hourly.iter().filter(|r| r.day == day());
    assert_eq!(sites.map(|r| r.people_sampled).sum::<u64>(), today.people_sampled);
    let methods: Vec<_> = t.method_daily.iter().filter(|r| r.day == day()).collect();
    assert_eq!(methods.len(), 6, "every method is used");
    assert_eq!(methods.iter().map(|r| r.people_sampled).sum::<u64>(), today.people_sampled);

    // Every rejection reason but MALFORMED and WRONG_PARTITION: the simulator
    // makes events, not their bytes on the wire or their routing.
    let reasons: BTreeSet<&str> = t.rejections_daily.iter().map(|r| r.reason.as_str()).collect();
    for r in Reason::ALL.iter().filter(|r| !matches!(r, Reason::Malformed | Reason::WrongPartition))
    {
        assert!(reasons.contains(r.as_str()), "no {r}");
    }
    assert!(!reasons.contains("MALFORMED") && !reasons.contains("WRONG_PARTITION"));

    // Some people sampled on the next day too (midnight), rejections in 2122.
    let next = t.city(Day(day().0 + 1)).expect("a row for the next day");
    assert!(next.people_sampled > 0);
    assert!(t.city_daily.iter().any(|r| r.day.civil().0 == 2122 && r.rejected > 0));

    // Codes issued in the five days before, over kinds and channels.
    let code_days: BTreeSet<Day> = t.codes_issued_daily.iter().map(|r| r.day).collect();
    assert_eq!(code_days, (1..=5).map(|k| Day(day().0 - k)).collect());
    assert!(t.codes_issued_daily.iter().any(|r| r.kind == "PAPER" && r.channel == "OFFLINE"));
    assert!(t.codes_issued_daily.iter().all(|r| (r.kind == "PAPER") == (r.channel == "OFFLINE")));

    // A morning peak: 08:00 busier than 13:00, which is busier than 21:00.
    let hour = |h: u8| -> u64 {
        t.site_hourly
            .iter()
            .filter(|r| r.day == day() && r.hour == h)
            .map(|r| r.people_sampled)
            .sum()
    };
    assert!(
        hour(8) > 2 * hour(13) && hour(13) > 2 * hour(21),
        "{} {} {}",
        hour(8),
        hour(13),
        hour(21)
    );
}

#[test]
fn the_events_are_well_formed_and_round_trip_through_json() {
    let d = big();
    for e in &d.events {
        e.check_shape().unwrap();
        let line = json::to_json(e);
        assert_eq!(&json::parse_event(&line).unwrap(), e, "{line}");
    }
    // Tube ids hold at most ten people (scans) of their site.
    let mut tubes: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in &d.events {
        if let Body::SampleScanned(s) = &e.body {
            assert!(s.tube_id.starts_with(&*s.site_id) && s.scanner_id.starts_with(&*s.site_id));
            tubes.entry(&s.tube_id).or_default().insert(&e.event_id);
        }
    }
    assert!(tubes.values().all(|ids| ids.len() <= 10));
    assert!(tubes.values().filter(|ids| ids.len() == 10).count() > tubes.len() / 2);
}

#[test]
fn write_files_writes_events_and_truth() {
    let dir = temp_dir("write_files");
    let cfg = cfg(4_000, 77);
    let summary = write_files(&cfg, &dir).unwrap();
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let expected = simulate(&cfg);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, summary.events);
    assert_eq!(lines.len(), expected.events.len());
    for (line, e) in lines.iter().zip(&expected.events) {
        assert_eq!(&json::parse_event(line).unwrap(), e);
    }
    let truth: ViewSet =
        serde_json::from_str(&std::fs::read_to_string(dir.join("truth.json")).unwrap()).unwrap();
    assert_eq!(truth, expected.truth);
    assert_eq!(idnum::find_id_number(&text), None, "an ID number in events.jsonl");
    assert!(!text.contains("id_number"));
    assert_eq!(summary.people, 4_000);
    assert_eq!(summary.sampled, expected.truth.city(day()).unwrap().people_sampled);
    assert!(summary.to_string().contains("using a code"), "{summary}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tiny_days_work() {
    for people in [0, 1, 2, 17] {
        let d = simulate(&cfg(people, 1));
        assert_same(
            &d.truth,
            &reference_views(
                d.events
                    .iter()
                    .map(|e| (Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").unwrap(), e)),
            ),
        );
    }
    assert!(simulate(&cfg(0, 1)).events.is_empty());
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("swabstream-sim-{name}-{}-{nanos}", std::process::id()))
}

/// `cargo test --release -p swabstream-sim -- --ignored`: more seeds, other days, a large day.
#[test]
#[ignore = "slow in debug builds"]
fn the_truth_is_what_the_rules_say_for_many_seeds() {
    let now = Timestamp::parse_rfc3339("2030-01-01T00:00:00+08:00").unwrap();
    let days = ["2022-04-09", "2022-04-10", "2020-02-29", "2023-12-31"];
    for seed in 100..130 {
        let day = Day::parse(days[seed as usize % days.len()]).unwrap();
        let sim = generate(&SimConfig { day, ..cfg(20_000, seed) });
        let events: Vec<(Timestamp, Event<'static>)> = sim.timed_events().collect();
        assert_same(sim.truth(), &reference_views(events.iter().map(|(_, e)| (now, e))));
        assert_same(sim.truth(), &reference_views(events.iter().map(|(ts, e)| (*ts, e))));
    }
    let sim = simulate(&cfg(300_000, 2022));
    assert_same(&sim.truth, &reference_views(sim.events.iter().map(|e| (now, e))));
}
