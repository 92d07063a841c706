//! Invariants of the state machine, over random logs from a small world
//! (few persons, codes, sites and days, so events interact often):
//! - any split of the log into batches gives the same views, and the rows
//!   taken after each batch, written over each other, sum to them;
//! - a snapshot at any offset, restored and continued, gives the same views
//!   and counts as one uninterrupted run, also over logs that span more days
//!   than the retention, so that the restored state crosses eviction sweeps;
//! - duplicating any subset of events changes only `duplicates`;
//! - outcomes and views are a pure function of the log;
//! - records keyed by their hex `person_ref` and routed by murmur2 are never
//!   `WRONG_PARTITION`, and judged exactly as without the check; moved to any
//!   other partition, a decodable one always is.

use std::collections::BTreeMap;

use proptest::prelude::*;
use swabstream_core::placement::partition_of;
use swabstream_core::{CoreConfig, Outcome, PartitionState, Placement, Record};
use swabstream_events::avro::Codec;
use swabstream_events::{
    Body, Channel, CodeIssued, CodeKind, Day, Event, Identification, PersonRef, Reason,
    RelativeCodeAudited, SampleScanned, Timestamp, Verification,
};
use swabstream_views::{ViewRow, ViewSet};

const DAY0: i64 = 1_649_433_600; // 2022-04-09T00:00:00+08:00
const RECORD_TS: i64 = DAY0 + 2 * 86_400;

/// One record of a generated log: its Kafka timestamp and value.
#[derive(Clone, Debug)]
struct Rec {
    ts: Timestamp,
    payload: Vec<u8>,
    event: Option<Event<'static>>,
}

fn person(i: u8) -> PersonRef {
    PersonRef([i + 1; 32])
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Three local days, with extra weight on the minutes around midnight, and
    // now and then an instant far in the future.
    prop_oneof![
        8 => (-86_400i64..2 * 86_400).prop_map(|s| Timestamp::from_secs(DAY0 + s)),
        2 => (-120i64..120).prop_map(|s| Timestamp::from_secs(DAY0 + 86_400 + s)),
        1 => Just(Timestamp::from_secs(RECORD_TS + 3_600)),
    ]
}

fn event() -> impl Strategy<Value = Event<'static>> {
    let code_id = prop::sample::select(vec!["K0", "K1", "K2"]);
    let issued = (
        code_id.clone(),
        prop::sample::select(CodeKind::ALL.to_vec()),
        prop::sample::select(Channel::ALL.to_vec()),
        prop::option::of(timestamp()),
        prop::option::of(prop::sample::select(Verification::ALL.to_vec())),
    )
        .prop_map(|(code_id, kind, channel, expires, verification)| {
            Body::CodeIssued(CodeIssued {
                code_id: code_id.into(),
                kind,
                channel,
                // Keep the generated events well-formed: PAPER needs an expiry,
                // only RELATIVE takes a verification.
                expires_at: if kind == CodeKind::Paper {
                    Some(expires.unwrap_or(Timestamp::from_secs(DAY0 + 43_200)))
                } else {
                    expires
                },
                verification: if kind == CodeKind::Relative { verification } else { None },
            })
        });
    let audited = (code_id.clone(), any::<bool>()).prop_map(|(code_id, approved)| {
        Body::RelativeCodeAudited(RelativeCodeAudited { code_id: code_id.into(), approved })
    });
    let ident = prop_oneof![
        3 => (code_id, prop::option::of(-90i64..10)).prop_map(|(c, g)| {
            Identification::Code { code_id: c.into(), generated_at: g.map(Timestamp) }
        }),
        1 => Just(Identification::IdDocument),
        1 => Just(Identification::DeclaredId),
    ];
    let scanned = (
        prop::sample::select(vec!["S0", "S1"]),
        prop::sample::select(vec!["310101", "310115", "310199"]),
        ident,
    )
        .prop_map(|(site, district, identification)| {
            Body::SampleScanned(SampleScanned {
                site_id: site.into(),
                district: district.into(),
                tube_id: "T".into(),
                scanner_id: "D".into(),
                identification,
            })
        });
    (0u8..40, 0u8..4, timestamp(), prop_oneof![2 => issued, 1 => audited, 5 => scanned]).prop_map(
        |(id, p, occurred_at, mut body)| {
            // generated_at was drawn as an offset in seconds from occurred_at.
            if let Body::SampleScanned(s) = &mut body
                && let Identification::Code { generated_at: Some(g), .. } = &mut s.identification
            {
                *g = occurred_at.plus_secs(g.0);
            }
            Event { event_id: format!("e{id}").into(), person_ref: person(p), occurred_at, body }
        },
    )
}

fn record() -> impl Strategy<Value = Rec> {
    prop_oneof![
        20 => event().prop_map(|e| {
            let mut payload = Vec::new();
            Codec::shared().encode(&e, &mut payload);
            Rec { ts: Timestamp::from_secs(RECORD_TS), payload, event: Some(e) }
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|payload| Rec { ts: Timestamp::from_secs(RECORD_TS), payload, event: None }),
    ]
}

fn log() -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec(record(), 0..120)
}

fn run(log: &[Rec]) -> (PartitionState, Vec<Outcome>) {
    let mut s = PartitionState::new(CoreConfig::default());
    let mut dlq = Vec::new();
    let outcomes = log
        .iter()
        .enumerate()
        .map(|(i, r)| {
            s.apply(
                Record { offset: i as i64, timestamp: r.ts, key: None, payload: Some(&r.payload) },
                &mut dlq,
            )
        })
        .collect();
    (s, outcomes)
}

fn city_without_duplicates(v: &ViewSet) -> Vec<(Day, [u64; 5])> {
    v.city_daily
        .iter()
        .map(|r| (r.day, [r.people_sampled, r.using_code, r.valid_scans, r.rescans, r.rejected]))
        .filter(|(_, c)| c.iter().any(|x| *x > 0))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_batch_split_gives_the_same_views(log in log(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let (whole, _) = run(&log);
        let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(log.len() + 1)).collect();
        cut_at.push(log.len());
        cut_at.sort_unstable();
        let mut s = PartitionState::new(CoreConfig::default());
        let mut store: BTreeMap<String, ViewRow> = BTreeMap::new();
        let mut start = 0;
        for end in cut_at {
            let batch: Vec<Record<'_>> = (start..end)
                .map(|i| Record { offset: i as i64, timestamp: log[i].ts, key: None, payload: Some(&log[i].payload) })
                .collect();
            s.apply_batch(&batch, &mut Vec::new());
            for row in s.take_changes() {
                store.insert(key_of(&row), row);
            }
            start = end;
        }
        prop_assert_eq!(s.views(), whole.views());
        prop_assert_eq!(ViewSet::from_rows(store.into_values()), whole.views());
        prop_assert_eq!(s.counts(), whole.counts());
    }

    #[test]
    fn snapshot_restore_continue_equals_one_run(log in log(), at in any::<prop::sample::Index>()) {
        let (whole, outcomes) = run(&log);
        let k = at.index(log.len() + 1);
        let (first, _) = run(&log[..k]);
        let mut s = PartitionState::restore(&first.snapshot(), CoreConfig::default()).unwrap();
        let mut dlq = Vec::new();
        for (i, r) in log.iter().enumerate() {
            // Records up to the snapshot are redelivered, as after a crash; they must be skipped.
            let o = s.apply(Record { offset: i as i64, timestamp: r.ts, key: None, payload: Some(&r.payload) }, &mut dlq);
            if i < k {
                prop_assert_eq!(o, Outcome::Skipped);
            } else {
                prop_assert_eq!(o, outcomes[i]);
            }
        }
        prop_assert_eq!(s.views(), whole.views());
        prop_assert_eq!(s.counts().applied(), whole.counts().applied());
        prop_assert_eq!(s.next_offset(), whole.next_offset());
    }

    /// The same over a log spread across twice the retention (a retention of
    /// two days, events over up to six): the days move, the watermark sweeps
    /// state away, and a snapshot taken before, between or after sweeps must
    /// restore to the state an uninterrupted run has at that point.
    #[test]
    fn snapshot_restore_continue_across_eviction_sweeps(log in log(), at in any::<prop::sample::Index>(), days in 3i64..6) {
        let config = CoreConfig { retention_days: 2 };
        let n = log.len().max(1) as i64;
        // Event i is moved forward by (i * days / n) days, record timestamp too,
        // so the log walks through `days` days in order, with the small world's
        // own disorder inside each.
        let spread: Vec<Rec> = log
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let shift = (i as i64 * days / n) * 86_400;
                match &r.event {
                    Some(e) => {
                        let mut e = e.clone();
                        e.occurred_at = e.occurred_at.plus_secs(shift);
                        let mut payload = Vec::new();
                        Codec::shared().encode(&e, &mut payload);
                        Rec { ts: r.ts.plus_secs(shift), payload, event: Some(e) }
                    }
                    None => Rec { ts: r.ts.plus_secs(shift), ..r.clone() },
                }
            })
            .collect();
        let apply_all = |s: &mut PartitionState, from: usize| {
            let mut dlq = Vec::new();
            spread[from..]
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let record = Record { offset: (from + j) as i64, timestamp: r.ts, key: None, payload: Some(&r.payload) };
                    s.apply(record, &mut dlq)
                })
                .collect::<Vec<_>>()
        };
        let mut whole = PartitionState::new(config);
        let outcomes = apply_all(&mut whole, 0);
        let k = at.index(spread.len() + 1);
        let mut first = PartitionState::new(config);
        let mut dlq = Vec::new();
        for (i, r) in spread[..k].iter().enumerate() {
            first.apply(Record { offset: i as i64, timestamp: r.ts, key: None, payload: Some(&r.payload) }, &mut dlq);
        }
        let mut s = PartitionState::restore(&first.snapshot(), config).unwrap();
        prop_assert_eq!(s.watermark(), first.watermark());
        let rest = apply_all(&mut s, k);
        prop_assert_eq!(&rest[..], &outcomes[k..]);
        prop_assert_eq!(s.views(), whole.views());
        prop_assert_eq!(s.counts().applied(), whole.counts().applied());
        prop_assert_eq!(s.watermark(), whole.watermark());
    }

    #[test]
    fn duplicating_events_changes_only_duplicates(log in log(), picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..20)) {
        let (original, _) = run(&log);
        // Insert copies of decodable records somewhere after their original.
        let decodable: Vec<usize> = (0..log.len()).filter(|&i| log[i].event.is_some()).collect();
        prop_assume!(!decodable.is_empty());
        let mut inserts: Vec<(usize, usize)> = picks
            .iter()
            .map(|(which, wher)| {
                let src = decodable[which.index(decodable.len())];
                (src + 1 + wher.index(log.len() - src), src)
            })
            .collect();
        inserts.sort_unstable();
        let mut with_dups = Vec::new();
        let mut expected_per_day: BTreeMap<Day, u64> = BTreeMap::new();
        let mut next = inserts.iter().peekable();
        for i in 0..=log.len() {
            while let Some(&&(pos, src)) = next.peek() {
                if pos != i { break; }
                with_dups.push(log[src].clone());
                *expected_per_day.entry(log[src].event.as_ref().unwrap().occurred_at.local_day()).or_default() += 1;
                next.next();
            }
            if i < log.len() {
                with_dups.push(log[i].clone());
            }
        }
        let (dup, _) = run(&with_dups);
        let (a, b) = (original.views(), dup.views());
        prop_assert_eq!(&a.district_daily, &b.district_daily);
        prop_assert_eq!(&a.site_hourly, &b.site_hourly);
        prop_assert_eq!(&a.method_daily, &b.method_daily);
        prop_assert_eq!(&a.rejections_daily, &b.rejections_daily);
        prop_assert_eq!(&a.codes_issued_daily, &b.codes_issued_daily);
        prop_assert_eq!(city_without_duplicates(&a), city_without_duplicates(&b));
        for row in &b.city_daily {
            let before = a.city(row.day).map_or(0, |r| r.duplicates);
            prop_assert_eq!(row.duplicates - before, expected_per_day.get(&row.day).copied().unwrap_or(0));
        }
        prop_assert_eq!(dup.counts().duplicates - original.counts().duplicates, inserts.len() as u64);
    }

    #[test]
    fn records_routed_by_murmur2_are_never_wrong_partition(
        log in log(),
        people in prop::collection::vec(any::<[u8; 32]>(), 4),
        partitions in 1i32..12,
        shift in 1i32..12,
    ) {
        // The small world's four persons, given random pseudonyms so that
        // they spread over the partitions.
        let log: Vec<Rec> = log
            .into_iter()
            .map(|mut r| {
                if let Some(e) = &mut r.event {
                    e.person_ref = PersonRef(people[usize::from(e.person_ref.0[0] - 1)]);
                    r.payload.clear();
                    Codec::shared().encode(e, &mut r.payload);
                }
                r
            })
            .collect();
        let key = |r: &Rec| r.event.as_ref().map(|e| e.person_ref.to_hex().into_bytes());
        let home = |r: &Rec| key(r).map_or(0, |k| partition_of(&k, partitions as u32));
        for p in 0..partitions {
            let part: Vec<&Rec> = log.iter().filter(|r| home(r) == p).collect();
            let mut checked = PartitionState::new(CoreConfig::default());
            checked.set_placement(Placement::new(p, partitions));
            let mut unchecked = PartitionState::new(CoreConfig::default());
            for (i, r) in part.iter().enumerate() {
                let k = key(r);
                let rec = Record { offset: i as i64, timestamp: r.ts, key: k.as_deref(), payload: Some(&r.payload) };
                let got = checked.apply(rec, &mut Vec::new());
                prop_assert_ne!(got, Outcome::Rejected(Reason::WrongPartition));
                prop_assert_eq!(got, unchecked.apply(Record { key: None, ..rec }, &mut Vec::new()));
            }
            prop_assert_eq!(checked.views(), unchecked.views());
        }
        // The same records, each in another partition: every decodable one is misrouted.
        if partitions > 1 {
            for (i, r) in log.iter().filter(|r| r.event.is_some()).enumerate() {
                let wrong = (home(r) + 1 + shift % (partitions - 1)) % partitions;
                let mut s = PartitionState::new(CoreConfig::default());
                s.set_placement(Placement::new(wrong, partitions));
                let k = key(r);
                let rec = Record { offset: i as i64, timestamp: r.ts, key: k.as_deref(), payload: Some(&r.payload) };
                prop_assert_eq!(s.apply(rec, &mut Vec::new()), Outcome::Rejected(Reason::WrongPartition));
            }
        }
    }

    #[test]
    fn the_same_log_gives_the_same_outcomes_and_snapshot(log in log()) {
        let (a, oa) = run(&log);
        let (b, ob) = run(&log);
        prop_assert_eq!(oa, ob);
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn damaged_snapshots_are_refused_never_misread(log in log(), flip in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let (s, _) = run(&log);
        let mut bytes = s.snapshot();
        let i = flip.index(bytes.len());
        bytes[i] ^= 0x5a;
        prop_assert!(PartitionState::restore(&bytes, CoreConfig::default()).is_err());
        let good = s.snapshot();
        let n = cut.index(good.len());
        prop_assert!(PartitionState::restore(&good[..n], CoreConfig::default()).is_err());
    }
}

fn key_of(row: &ViewRow) -> String {
    let mut v = serde_json::to_value(row).unwrap();
    let obj = v.as_object_mut().unwrap();
    for counter in [
        "people_sampled",
        "using_code",
        "percent_using_code",
        "valid_scans",
        "rescans",
        "rejected",
        "duplicates",
        "count",
    ] {
        obj.remove(counter);
    }
    serde_json::to_string(obj).unwrap()
}

#[test]
fn a_snapshot_taken_with_another_retention_is_refused() {
    let s = PartitionState::new(CoreConfig { retention_days: 9 });
    let err = PartitionState::restore(&s.snapshot(), CoreConfig::default()).unwrap_err();
    assert!(err.to_string().contains("retention of 9 days"), "{err}");
}
