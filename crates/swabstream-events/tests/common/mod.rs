//! Shared test helpers: an `Event` strategy covering every body,
//! identification and optional field, and an independent Avro `Value` form
//! of an event (built by hand here, not by the crate) for cross-checks.

#![allow(dead_code)]

use std::borrow::Cow;

use apache_avro::types::Value;
use proptest::prelude::*;
use swabstream_events::{
    Body, Channel, CodeIssued, CodeKind, DISTRICTS, Event, Identification, PersonRef,
    RelativeCodeAudited, SampleScanned, Timestamp, Verification,
};

/// 0001-01-02 to 9999-12-30 (UTC): instants whose UTC+8 RFC 3339 text has a
/// four-digit year, so the JSON form can carry them.
pub const JSON_MIN_MICROS: i64 = -62_135_510_400_000_000;
pub const JSON_MAX_MICROS: i64 = 253_402_041_600_000_000;

/// An identifier of 1–64 characters: mostly plain, sometimes any Unicode.
pub fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_-]{1,64}",
        1 => proptest::collection::vec(any::<char>(), 1..=64).prop_map(String::from_iter),
        1 => proptest::collection::vec(prop_oneof![Just('码'), Just('é'), Just('🧪'), Just('a')], 1..=64)
            .prop_map(String::from_iter),
    ]
}

fn district() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(DISTRICTS.iter().map(|d| d.0).collect::<Vec<_>>())
            .prop_map(str::to_owned),
        1 => id(),
    ]
}

fn symbol<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

fn body(ts: impl Strategy<Value = i64> + Clone + 'static) -> impl Strategy<Value = Body<'static>> {
    let code_issued = (
        id(),
        symbol(CodeKind::ALL),
        symbol(Channel::ALL),
        proptest::option::of(ts.clone()),
        proptest::option::of(symbol(Verification::ALL)),
        ts.clone(),
    )
        .prop_map(|(code_id, kind, channel, expires, verification, fallback)| {
            let expires_at = match kind {
                CodeKind::Paper => Some(Timestamp(expires.unwrap_or(fallback))),
                _ => expires.map(Timestamp),
            };
            let verification = if kind == CodeKind::Relative { verification } else { None };
            Body::CodeIssued(CodeIssued {
                code_id: Cow::Owned(code_id),
                kind,
                channel,
                expires_at,
                verification,
            })
        });
    let audited = (id(), any::<bool>()).prop_map(|(code_id, approved)| {
        Body::RelativeCodeAudited(RelativeCodeAudited { code_id: Cow::Owned(code_id), approved })
    });
    let identification = prop_oneof![
        (id(), proptest::option::of(ts)).prop_map(|(code_id, generated_at)| Identification::Code {
            code_id: Cow::Owned(code_id),
            generated_at: generated_at.map(Timestamp),
        }),
        Just(Identification::IdDocument),
        Just(Identification::DeclaredId),
    ];
    let scanned = (id(), district(), id(), id(), identification).prop_map(
        |(site_id, district, tube_id, scanner_id, identification)| {
            Body::SampleScanned(SampleScanned {
                site_id: Cow::Owned(site_id),
                district: Cow::Owned(district),
                tube_id: Cow::Owned(tube_id),
                scanner_id: Cow::Owned(scanner_id),
                identification,
            })
        },
    );
    prop_oneof![code_issued, audited, scanned]
}

fn event_with(
    ts: impl Strategy<Value = i64> + Clone + 'static,
) -> impl Strategy<Value = Event<'static>> {
    (id(), any::<[u8; 32]>(), ts.clone(), body(ts)).prop_map(|(event_id, p, t, body)| Event {
        event_id: Cow::Owned(event_id),
        person_ref: PersonRef(p),
        occurred_at: Timestamp(t),
        body,
    })
}

/// Any valid event, instants over the whole range SPEC can name (years
/// 0001–9999 in UTC+8, `Timestamp::MIN..=Timestamp::MAX`), edges included.
pub fn event() -> impl Strategy<Value = Event<'static>> {
    event_with(prop_oneof![
        Timestamp::MIN.0..=Timestamp::MAX.0,
        1_500_000_000_000_000i64..1_800_000_000_000_000,
        Just(Timestamp::MIN.0),
        Just(Timestamp::MAX.0),
        Just(0),
    ])
}

/// An instant the Avro form can carry but SPEC cannot name.
pub fn out_of_range_micros() -> impl Strategy<Value = i64> {
    prop_oneof![
        i64::MIN..Timestamp::MIN.0,
        Timestamp::MAX.0 + 1..=i64::MAX,
        Just(Timestamp::MIN.0 - 1),
        Just(Timestamp::MAX.0 + 1),
        Just(i64::MIN),
        Just(i64::MAX),
    ]
}

/// Any valid event the JSON form can carry (years 0001–9999).
pub fn json_event() -> impl Strategy<Value = Event<'static>> {
    event_with(prop_oneof![
        JSON_MIN_MICROS..JSON_MAX_MICROS,
        1_500_000_000_000_000i64..1_800_000_000_000_000,
    ])
}

fn opt(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn s(x: &str) -> Value {
    Value::String(x.to_owned())
}

/// The event as apache-avro's generic `Value` of the v1 schema, built by hand.
pub fn v1_value(e: &Event<'_>) -> Value {
    let body = match &e.body {
        Body::CodeIssued(c) => Value::Union(
            0,
            Box::new(Value::Record(vec![
                ("code_id".into(), s(&c.code_id)),
                ("kind".into(), Value::Enum(c.kind.index() as u32, c.kind.as_str().into())),
                (
                    "channel".into(),
                    Value::Enum(c.channel.index() as u32, c.channel.as_str().into()),
                ),
                ("expires_at".into(), opt(c.expires_at.map(|t| Value::TimestampMicros(t.0)))),
                (
                    "verification".into(),
                    opt(c.verification.map(|v| Value::Enum(v.index() as u32, v.as_str().into()))),
                ),
            ])),
        ),
        Body::RelativeCodeAudited(a) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("code_id".into(), s(&a.code_id)),
                ("approved".into(), Value::Boolean(a.approved)),
            ])),
        ),
        Body::SampleScanned(sc) => {
            let ident = match &sc.identification {
                Identification::Code { code_id, generated_at } => Value::Union(
                    0,
                    Box::new(Value::Record(vec![
                        ("code_id".into(), s(code_id)),
                        (
                            "generated_at".into(),
                            opt(generated_at.map(|t| Value::TimestampMicros(t.0))),
                        ),
                    ])),
                ),
                Identification::IdDocument => Value::Union(1, Box::new(Value::Record(vec![]))),
                Identification::DeclaredId => Value::Union(2, Box::new(Value::Record(vec![]))),
            };
            Value::Union(
                2,
                Box::new(Value::Record(vec![
                    ("site_id".into(), s(&sc.site_id)),
                    ("district".into(), s(&sc.district)),
                    ("tube_id".into(), s(&sc.tube_id)),
                    ("scanner_id".into(), s(&sc.scanner_id)),
                    ("identification".into(), ident),
                ])),
            )
        }
    };
    Value::Record(vec![
        ("event_id".into(), s(&e.event_id)),
        ("person_ref".into(), Value::Fixed(32, e.person_ref.0.to_vec())),
        ("occurred_at".into(), Value::TimestampMicros(e.occurred_at.0)),
        ("body".into(), body),
    ])
}

/// A plain scan, for the specific cases.
pub fn scan(ident: Identification<'static>) -> Event<'static> {
    Event {
        event_id: Cow::Borrowed("e-1"),
        person_ref: PersonRef([0x4f; 32]),
        occurred_at: Timestamp(1_649_463_300_000_000),
        body: Body::SampleScanned(SampleScanned {
            site_id: Cow::Borrowed("S-0001"),
            district: Cow::Borrowed("310104"),
            tube_id: Cow::Borrowed("T-0001"),
            scanner_id: Cow::Borrowed("D-01"),
            identification: ident,
        }),
    }
}
