//! SPEC §3.1: instants outside years 0001–9999, in an event or as the record
//! timestamp, are `MALFORMED`; and whatever the core accepts, the view store
//! can write and read back (issue 10.1: one scan in year 10000 put the day
//! `10000-01-01` into the views, and then no view could be read).
//!
//! The store writes a day as `day.to_string()` and reads it with `Day::parse`
//! (the JSON of the views does the same), so "reads back" is checked here as
//! that round trip, for every day of every view, and as a JSON round trip of
//! the whole view set.

use std::borrow::Cow;

use proptest::prelude::*;
use swabstream_core::{CoreConfig, DlqRecord, Outcome, PartitionState, Record};
use swabstream_events::avro::Codec;
use swabstream_events::{
    Body, Channel, CodeIssued, CodeKind, Day, Event, Identification, PersonRef, Reason,
    SampleScanned, Timestamp,
};
use swabstream_views::ViewSet;

/// 10000-01-01T00:00:00Z, the instant of the report.
const YEAR_10000: Timestamp = Timestamp(253_402_300_800_000_000);
/// 2022-04-09T08:15:00+08:00.
const SCAN_AT: Timestamp = Timestamp(1_649_463_300_000_000);
/// 2022-04-10T12:00:00+08:00: the record timestamp of the ordinary cases.
const RECORD_AT: Timestamp = Timestamp(1_649_563_200_000_000);

fn scan_event(id: &str, occurred_at: Timestamp, ident: Identification<'static>) -> Event<'static> {
    Event {
        event_id: Cow::Owned(id.to_owned()),
        person_ref: PersonRef([0x4f; 32]),
        occurred_at,
        body: Body::SampleScanned(SampleScanned {
            site_id: Cow::Borrowed("S1"),
            district: Cow::Borrowed("310104"),
            tube_id: Cow::Borrowed("T1"),
            scanner_id: Cow::Borrowed("D1"),
            identification: ident,
        }),
    }
}

fn scan(id: &str, occurred_at: Timestamp) -> Event<'static> {
    scan_event(id, occurred_at, Identification::IdDocument)
}

fn paper_code(id: &str, expires_at: Timestamp) -> Event<'static> {
    Event {
        event_id: Cow::Owned(id.to_owned()),
        person_ref: PersonRef([0x4f; 32]),
        occurred_at: SCAN_AT,
        body: Body::CodeIssued(CodeIssued {
            code_id: Cow::Borrowed("K1"),
            kind: CodeKind::Paper,
            channel: Channel::Offline,
            expires_at: Some(expires_at),
            verification: None,
        }),
    }
}

fn avro(e: &Event<'_>) -> Vec<u8> {
    // The encoder writes any 64-bit instant, as a producer straight to the topic may.
    let mut buf = Vec::new();
    Codec::shared().encode(e, &mut buf);
    buf
}

fn day(s: &str) -> Day {
    Day::parse(s).unwrap()
}

/// A record of a case: its Kafka timestamp, its value, and what it must give.
struct Step {
    ts: Timestamp,
    payload: Vec<u8>,
    outcome: Outcome,
    /// For a rejection: text its DLQ detail must contain.
    detail: &'static str,
}

fn ok(ts: Timestamp, e: Event<'_>) -> Step {
    Step { ts, payload: avro(&e), outcome: Outcome::Accepted, detail: "" }
}

fn malformed(ts: Timestamp, payload: Vec<u8>, detail: &'static str) -> Step {
    Step { ts, payload, outcome: Outcome::Rejected(Reason::Malformed), detail }
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// (day, count) of every `rejections_daily` row, all `MALFORMED`.
    rejected_on: Vec<(&'static str, u64)>,
}

fn cases() -> Vec<Case> {
    let garbage = || b"not avro".to_vec();
    vec![
        Case {
            name: "the report: a scan in year 10000 is malformed, on its record timestamp's day",
            steps: vec![malformed(RECORD_AT, avro(&scan("e1", YEAR_10000)), "field `occurred_at`")],
            rejected_on: vec![("2022-04-10", 1)],
        },
        Case {
            name: "expires_at in year 10000 is malformed",
            steps: vec![malformed(
                RECORD_AT,
                avro(&paper_code("c1", YEAR_10000)),
                "field `expires_at`",
            )],
            rejected_on: vec![("2022-04-10", 1)],
        },
        Case {
            name: "generated_at before year 0001 is malformed",
            steps: vec![malformed(
                RECORD_AT,
                avro(&scan_event(
                    "e1",
                    SCAN_AT,
                    Identification::Code {
                        code_id: Cow::Borrowed("K1"),
                        generated_at: Some(Timestamp(Timestamp::MIN.0 - 1)),
                    },
                )),
                "field `identification.generated_at`",
            )],
            rejected_on: vec![("2022-04-10", 1)],
        },
        Case {
            name: "a record without a timestamp counts on its event's day, and a retry is no duplicate",
            steps: vec![
                malformed(
                    Record::NO_TIMESTAMP,
                    avro(&scan("e1", SCAN_AT)),
                    "record timestamp is missing",
                ),
                ok(RECORD_AT, scan("e1", SCAN_AT)),
            ],
            rejected_on: vec![("2022-04-09", 1)],
        },
        Case {
            name: "a record timestamp out of range is malformed, on its event's day",
            steps: vec![
                malformed(
                    Timestamp::from_millis(i64::MAX),
                    avro(&scan("e1", SCAN_AT)),
                    "record timestamp",
                ),
                malformed(
                    Timestamp(Timestamp::MAX.0 + 1),
                    avro(&scan("e2", SCAN_AT)),
                    "record timestamp",
                ),
                malformed(
                    Timestamp(Timestamp::MIN.0 - 1),
                    avro(&scan("e3", SCAN_AT)),
                    "record timestamp",
                ),
                malformed(YEAR_10000, avro(&scan("e4", SCAN_AT)), "253402300800000 ms"),
            ],
            rejected_on: vec![("2022-04-09", 4)],
        },
        Case {
            name: "garbage without a timestamp counts on 1970-01-01 before any accepted event, then on the watermark's day",
            steps: vec![
                malformed(Record::NO_TIMESTAMP, garbage(), "not Avro"),
                ok(RECORD_AT, scan("e1", SCAN_AT)),
                malformed(Record::NO_TIMESTAMP, garbage(), "not Avro"),
                malformed(YEAR_10000, avro(&scan("e2", YEAR_10000)), "field `occurred_at`"),
            ],
            rejected_on: vec![("1970-01-01", 1), ("2022-04-09", 2)],
        },
        Case {
            name: "the edges of the range are accepted, on days the store can name",
            steps: vec![
                ok(Timestamp::MIN, scan("e1", Timestamp::MIN)),
                ok(Timestamp::MAX, scan("e2", Timestamp::MAX)),
            ],
            rejected_on: vec![],
        },
    ]
}

fn days_of(views: &ViewSet) -> Vec<Day> {
    views
        .city_daily
        .iter()
        .map(|r| r.day)
        .chain(views.district_daily.iter().map(|r| r.day))
        .chain(views.site_hourly.iter().map(|r| r.day))
        .chain(views.method_daily.iter().map(|r| r.day))
        .chain(views.rejections_daily.iter().map(|r| r.day))
        .chain(views.codes_issued_daily.iter().map(|r| r.day))
        .collect()
}

fn assert_views_read_back(views: &ViewSet) {
    for d in days_of(views) {
        assert_eq!(Day::parse(&d.to_string()), Some(d), "day {d} does not read back");
    }
    for r in &views.site_hourly {
        assert!(r.hour < 24, "hour {}", r.hour);
    }
    // The views' JSON (as `views --json` and `serve` give it) reads back too.
    let json = serde_json::to_string(views).unwrap();
    let back: ViewSet = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(days_of(&back), days_of(views));
}

#[test]
fn instants_out_of_range_are_malformed_and_counted_on_a_day_that_reads_back() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut state = PartitionState::new(CoreConfig::default());
        for (i, step) in case.steps.iter().enumerate() {
            let mut dlq: Vec<DlqRecord> = Vec::new();
            let record = Record {
                offset: i as i64,
                timestamp: step.ts,
                key: None,
                payload: Some(&step.payload),
            };
            let got = state.apply(record, &mut dlq);
            if got != step.outcome {
                failures.push(format!(
                    "{}, record {i}: expected {:?}, got {got:?}",
                    case.name, step.outcome
                ));
            } else if let Outcome::Rejected(_) = got
                && !dlq[0].detail.contains(step.detail)
            {
                failures.push(format!(
                    "{}, record {i}: the detail `{}` does not say `{}`",
                    case.name, dlq[0].detail, step.detail
                ));
            }
        }
        let views = state.views();
        let mut rejected: Vec<(Day, u64)> = views
            .rejections_daily
            .iter()
            .inspect(|r| assert_eq!(r.reason, Reason::Malformed.as_str(), "{}", case.name))
            .map(|r| (r.day, r.count))
            .collect();
        rejected.sort();
        let expected: Vec<(Day, u64)> =
            case.rejected_on.iter().map(|&(d, n)| (day(d), n)).collect();
        if rejected != expected {
            failures
                .push(format!("{}: rejections on {rejected:?}, expected {expected:?}", case.name));
        }
        assert_views_read_back(&views);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_edges_give_their_own_days_and_hours() {
    let mut state = PartitionState::new(CoreConfig::default());
    for (i, t) in [Timestamp::MIN, Timestamp::MAX].into_iter().enumerate() {
        let payload = avro(&scan(&format!("e{i}"), t));
        let r = Record { offset: i as i64, timestamp: t, key: None, payload: Some(&payload) };
        assert_eq!(state.apply(r, &mut Vec::new()), Outcome::Accepted);
    }
    let hours: Vec<(String, u8)> =
        state.views().site_hourly.iter().map(|r| (r.day.to_string(), r.hour)).collect();
    assert_eq!(hours, [("0001-01-01".to_owned(), 0), ("9999-12-31".to_owned(), 23)]);
}

#[test]
fn an_event_built_out_of_range_is_malformed_through_apply_event_too() {
    // apply_event takes an event decoded elsewhere; it holds it to the same range.
    let mut state = PartitionState::new(CoreConfig::default());
    let e = scan("e1", YEAR_10000);
    let mut dlq = Vec::new();
    let got = state.apply_event(0, YEAR_10000, None, &e, &avro(&e), &mut dlq);
    assert_eq!(got, Outcome::Rejected(Reason::Malformed));
    assert!(dlq[0].detail.contains("field `occurred_at`"), "{}", dlq[0].detail);
    // Neither the record timestamp nor occurred_at can name a day: 1970-01-01.
    let days: Vec<String> =
        state.views().rejections_daily.iter().map(|r| r.day.to_string()).collect();
    assert_eq!(days, ["1970-01-01"]);
    let e = scan("e2", SCAN_AT);
    let got = state.apply_event(1, Record::NO_TIMESTAMP, None, &e, &avro(&e), &mut dlq);
    assert_eq!(got, Outcome::Rejected(Reason::Malformed));
    assert!(dlq[1].detail.contains("record timestamp is missing"), "{}", dlq[1].detail);
    assert_views_read_back(&state.views());
}

// ---- the property: whatever the core accepts reads back ------------------------------------

/// Any 64-bit instant, weighted towards the edges of the range and a normal day.
fn instant() -> impl Strategy<Value = i64> {
    let edge = prop::sample::select(vec![
        Timestamp::MIN.0,
        Timestamp::MAX.0,
        Timestamp::MIN.0 - 1,
        Timestamp::MAX.0 + 1,
        YEAR_10000.0,
        i64::MIN,
        i64::MAX,
        Record::NO_TIMESTAMP.0,
    ]);
    prop_oneof![
        3 => any::<i64>(),
        3 => (edge, -90_000_000_000i64..90_000_000_000).prop_map(|(e, d)| e.saturating_add(d)),
        2 => (-86_400_000_000i64..86_400_000_000).prop_map(|d| SCAN_AT.0 + d),
    ]
}

/// How a record's Kafka timestamp relates to its event: most often just after
/// it (so that events at any instant get past IN_FUTURE), else anything.
#[derive(Clone, Debug)]
enum RecordTs {
    After(i64),
    Any(i64),
    None,
}

#[derive(Clone, Debug)]
struct Rec {
    event: Event<'static>,
    ts: RecordTs,
    /// Applied with `apply_event` instead of `apply`.
    direct: bool,
}

fn rec() -> impl Strategy<Value = Rec> {
    let ident = prop_oneof![
        (0u8..2, prop::option::of(instant())).prop_map(|(c, g)| Identification::Code {
            code_id: Cow::Owned(format!("K{c}")),
            generated_at: g.map(Timestamp),
        }),
        Just(Identification::IdDocument),
    ];
    let body = prop_oneof![
        (0u8..2, prop::sample::select(CodeKind::ALL.to_vec()), prop::option::of(instant()))
            .prop_map(|(c, kind, expires)| Body::CodeIssued(CodeIssued {
                code_id: Cow::Owned(format!("K{c}")),
                kind,
                channel: Channel::App,
                expires_at: expires.map(Timestamp).or((kind == CodeKind::Paper).then_some(SCAN_AT)),
                verification: None,
            })),
        ident.prop_map(|identification| Body::SampleScanned(SampleScanned {
            site_id: Cow::Borrowed("S1"),
            district: Cow::Borrowed("310104"),
            tube_id: Cow::Borrowed("T1"),
            scanner_id: Cow::Borrowed("D1"),
            identification,
        })),
    ];
    let ts = prop_oneof![
        4 => (0i64..600_000_000).prop_map(RecordTs::After),
        2 => instant().prop_map(RecordTs::Any),
        1 => Just(RecordTs::None),
    ];
    (0u8..30, 0u8..3, instant(), body, ts, prop::bool::weighted(0.2)).prop_map(
        |(id, p, occurred, mut body, ts, direct)| {
            // A live code is rendered seconds before the scan; keep some of those valid.
            if let Body::SampleScanned(s) = &mut body
                && let Identification::Code { generated_at: Some(g), .. } = &mut s.identification
                && g.0 % 2 == 0
            {
                *g = Timestamp(occurred.saturating_sub(3_000_000));
            }
            Rec {
                event: Event {
                    event_id: Cow::Owned(format!("e{id}")),
                    person_ref: PersonRef([p + 1; 32]),
                    occurred_at: Timestamp(occurred),
                    body,
                },
                ts,
                direct,
            }
        },
    )
}

fn record_ts(r: &Rec) -> Timestamp {
    match r.ts {
        RecordTs::After(d) => Timestamp(r.event.occurred_at.0.saturating_add(d)),
        RecordTs::Any(t) => Timestamp(t),
        RecordTs::None => Record::NO_TIMESTAMP,
    }
}

fn instants_of(e: &Event<'_>) -> Vec<Timestamp> {
    let mut out = vec![e.occurred_at];
    match &e.body {
        Body::CodeIssued(c) => out.extend(c.expires_at),
        Body::SampleScanned(s) => {
            if let Identification::Code { generated_at, .. } = &s.identification {
                out.extend(*generated_at);
            }
        }
        Body::RelativeCodeAudited(_) => {}
    }
    out
}

fn apply(state: &mut PartitionState, i: usize, r: &Rec, payload: &[u8]) -> Outcome {
    let mut dlq = Vec::new();
    let ts = record_ts(r);
    if r.direct {
        state.apply_event(i as i64, ts, None, &r.event, payload, &mut dlq)
    } else {
        state.apply(
            Record { offset: i as i64, timestamp: ts, key: None, payload: Some(payload) },
            &mut dlq,
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Over arbitrary instants in events and arbitrary record timestamps:
    /// every accepted record has all its instants and its record timestamp
    /// in range; every day of every view reads back through its string form;
    /// and a snapshot taken anywhere and continued gives the same views (the
    /// stand-in days of records without a usable timestamp are a function of
    /// the log, not of the moment).
    #[test]
    fn whatever_the_core_accepts_reads_back(
        log in prop::collection::vec(rec(), 1..60),
        at in any::<prop::sample::Index>(),
    ) {
        let payloads: Vec<Vec<u8>> = log.iter().map(|r| avro(&r.event)).collect();
        let mut whole = PartitionState::new(CoreConfig::default());
        let mut outcomes = Vec::new();
        for (i, r) in log.iter().enumerate() {
            let o = apply(&mut whole, i, r, &payloads[i]);
            if o == Outcome::Accepted {
                prop_assert!(record_ts(r).is_in_range(), "accepted with record timestamp {:?}", r.ts);
                for t in instants_of(&r.event) {
                    prop_assert!(t.is_in_range(), "accepted with instant {}", t.0);
                }
            }
            outcomes.push(o);
        }
        let views = whole.views();
        assert_views_read_back(&views);

        let k = at.index(log.len() + 1);
        let mut first = PartitionState::new(CoreConfig::default());
        for (i, r) in log[..k].iter().enumerate() {
            apply(&mut first, i, r, &payloads[i]);
        }
        let mut resumed = PartitionState::restore(&first.snapshot(), CoreConfig::default()).unwrap();
        for (i, r) in log.iter().enumerate().skip(k) {
            prop_assert_eq!(apply(&mut resumed, i, r, &payloads[i]), outcomes[i]);
        }
        prop_assert_eq!(resumed.views(), views);
    }
}
