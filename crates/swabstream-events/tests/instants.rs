//! SPEC §3.1: an instant outside years 0001–9999 (of the city's calendar,
//! `Timestamp::MIN..=Timestamp::MAX`) is a malformed field, named in the
//! error, whichever form the event came in: Avro through the hand-written
//! decoder, Avro through schema resolution, or JSON.
//!
//! Issue 10.1: one `SampleScanned` with `occurred_at` in year 10000 was
//! accepted by the decoder, so its day `10000-01-01` reached the view store,
//! which could then not read any view back.

mod common;

use std::borrow::Cow;

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use common::{event, out_of_range_micros, scan, v1_value};
use proptest::prelude::*;
use swabstream_events::avro::{Codec, DecodeError, SCHEMA_V1, V1_FINGERPRINT};
use swabstream_events::{
    Body, Channel, CodeIssued, CodeKind, Event, Identification, Timestamp, json,
};

/// 10000-01-01T00:00:00Z, the instant of the report.
const YEAR_10000: i64 = 253_402_300_800_000_000;

/// Puts an instant into one field of an event.
type SetInstant = fn(&mut Event<'static>, Timestamp);

/// The instant fields of the model, and how to set each on an event.
const FIELDS: &[(&str, SetInstant)] = &[
    ("occurred_at", |e, t| e.occurred_at = t),
    ("expires_at", |e, t| {
        e.body = Body::CodeIssued(CodeIssued {
            code_id: Cow::Borrowed("K1"),
            kind: CodeKind::Paper,
            channel: Channel::Offline,
            expires_at: Some(t),
            verification: None,
        })
    }),
    ("identification.generated_at", |e, t| {
        e.body =
            scan(Identification::Code { code_id: Cow::Borrowed("K1"), generated_at: Some(t) }).body
    }),
];

fn with(field: &str, t: Timestamp) -> Event<'static> {
    let (_, set) = FIELDS.iter().find(|(f, _)| *f == field).unwrap();
    let mut e = scan(Identification::IdDocument);
    set(&mut e, t);
    e
}

/// What every Avro path says of the event: the hand-written decoder on our
/// bytes, schema resolution on them, and both on what apache-avro writes.
fn avro_results(e: &Event<'_>) -> Vec<(&'static str, Result<Event<'static>, DecodeError>)> {
    let c = Codec::shared();
    let mut framed = Vec::new();
    c.encode(e, &mut framed);
    let schema = Schema::parse_str(SCHEMA_V1).unwrap();
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let theirs = writer.write_value_to_vec(v1_value(e)).unwrap();
    vec![
        ("fast", c.decode(&framed).map(Event::into_owned)),
        ("resolving", c.decode_resolving(c.schema(), &framed[10..])),
        (
            "fast, apache-avro's bytes",
            c.decode_datum(V1_FINGERPRINT, &theirs).map(Event::into_owned),
        ),
        ("resolving, apache-avro's bytes", c.decode_resolving(c.schema(), &theirs)),
    ]
}

fn assert_malformed_naming(e: &Event<'_>, field: &str) {
    for (path, got) in avro_results(e) {
        let err = got.expect_err(path);
        assert_eq!(err.field(), Some(field), "{path}: {err}");
        assert_eq!(
            err.to_string(),
            format!("field `{field}` {}", Timestamp::OUT_OF_RANGE),
            "{path}"
        );
    }
}

#[test]
fn a_scan_in_year_10000_is_malformed_naming_occurred_at() {
    // The exact reproduction: a SampleScanned produced straight to the topic in Avro.
    let mut e = scan(Identification::IdDocument);
    e.occurred_at = Timestamp(YEAR_10000);
    assert_malformed_naming(&e, "occurred_at");
}

#[test]
fn every_instant_field_is_checked_at_both_edges() {
    let refused = [
        YEAR_10000,
        Timestamp::MAX.0 + 1,
        Timestamp::MIN.0 - 1,
        i64::MAX,
        i64::MIN,
        // -1 ms and 0 are fine instants; only the range matters.
    ];
    let accepted = [Timestamp::MIN.0, Timestamp::MAX.0, -1_000, 0, 1_649_463_300_000_000];
    for (field, _) in FIELDS {
        for t in refused {
            assert_malformed_naming(&with(field, Timestamp(t)), field);
        }
        for t in accepted {
            let e = with(field, Timestamp(t));
            for (path, got) in avro_results(&e) {
                assert_eq!(got.as_ref(), Ok(&e), "{field} = {t} on the {path} path");
            }
        }
    }
}

#[test]
fn a_millisecond_writer_schema_is_held_to_the_same_range() {
    // An older writer that declared `occurred_at` in milliseconds: its values
    // are scaled without overflow, then checked like any other. (It has one
    // more field too: the Parsing Canonical Form drops logical types, so
    // without it the schema would have v1's fingerprint and be read as v1.)
    let text = SCHEMA_V1.replacen(
        r#"{"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-micros"}"#,
        r#"{"name": "note", "type": "string", "default": ""},
           {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}"#,
        1,
    );
    assert_ne!(text, SCHEMA_V1);
    let millis = Schema::parse_str(&text).unwrap();
    let c = Codec::shared();
    let datum = |ms: i64| {
        let Value::Record(mut fields) = v1_value(&scan(Identification::IdDocument)) else {
            unreachable!()
        };
        let at = fields.iter().position(|(n, _)| n == "occurred_at").unwrap();
        fields[at].1 = Value::TimestampMillis(ms);
        fields.insert(at, ("note".into(), Value::String(String::new())));
        let writer = GenericDatumWriter::builder(&millis).build().unwrap();
        writer.write_value_to_vec(Value::Record(fields)).unwrap()
    };
    let fine = datum(1_649_463_300_000);
    let ok = c.decode_with_writer_schema(&millis, &fine).unwrap();
    assert_eq!(ok.occurred_at, Timestamp(1_649_463_300_000_000));
    let err = c.decode_with_writer_schema(&millis, &datum(YEAR_10000 / 1000)).unwrap_err();
    assert_eq!(err.field(), Some("occurred_at"), "{err}");
    // i64::MAX ms does not fit in microseconds at all: refused, naming the field.
    let err = c.decode_with_writer_schema(&millis, &datum(i64::MAX)).unwrap_err();
    assert!(err.to_string().contains("`occurred_at`"), "{err}");
}

#[test]
fn json_instants_outside_the_range_name_their_field() {
    const P: &str = "4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f";
    let scan = |occurred: &str, generated: &str| {
        format!(
            r#"{{"type":"SampleScanned","event_id":"e1","person_ref":"{P}","occurred_at":"{occurred}","site_id":"S1","district":"310104","tube_id":"T1","scanner_id":"D1","identification":{{"method":"CODE","code_id":"K1","generated_at":"{generated}"}}}}"#
        )
    };
    let issued = |occurred: &str, expires: &str| {
        format!(
            r#"{{"type":"CodeIssued","event_id":"c1","person_ref":"{P}","occurred_at":"{occurred}","code_id":"K1","kind":"PAPER","channel":"OFFLINE","expires_at":"{expires}"}}"#
        )
    };
    let fine = "2022-04-09T08:15:00+08:00";
    // (the event, the field it must name, or None when it is accepted)
    let cases = [
        // Year 0000, in UTC and therefore in the city too.
        (scan("0000-06-01T00:00:00Z", fine), Some("occurred_at")),
        // Year 9999 as written, but 10000-01-01T04:00 in the city, whose day a view could not name.
        (scan("9999-12-31T20:00:00Z", fine), Some("occurred_at")),
        (scan(fine, "0000-01-01T00:00:00+08:00"), Some("identification.generated_at")),
        (scan(fine, "9999-12-31T23:59:59-01:00"), Some("identification.generated_at")),
        (issued(fine, "0000-12-31T15:59:59Z"), Some("expires_at")),
        (issued(fine, "9999-12-31T16:00:00Z"), Some("expires_at")),
        // The edges themselves, and texts saying 0000/9999 that the city can name.
        (scan("0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59.999999+08:00"), None),
        (issued("0000-12-31T16:00:00Z", "9999-12-31T15:59:59Z"), None),
    ];
    for (text, field) in cases {
        match (json::parse_event(&text), field) {
            (Ok(e), None) => {
                // Accepted JSON survives Avro, whose decoder applies the same rule.
                let mut buf = Vec::new();
                Codec::shared().encode(&e, &mut buf);
                assert_eq!(Codec::shared().decode(&buf).unwrap(), e);
            }
            (Err(e), Some(field)) => {
                assert_eq!(e.field_name(), Some(field), "{text}");
                assert_eq!(
                    e.to_string(),
                    format!("field `{field}` {}", Timestamp::OUT_OF_RANGE),
                    "{text}"
                );
            }
            (got, want) => panic!("{text}: expected an error naming {want:?}, got {got:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any event with any one instant out of range is malformed on every Avro
    /// path, naming that instant's field; and its JSON text (which spells the
    /// year in five digits or below 0001) is refused naming it too.
    #[test]
    fn any_out_of_range_instant_is_malformed(
        e in event(),
        which in 0..FIELDS.len(),
        t in out_of_range_micros(),
    ) {
        // `event()` draws its instants in range, so this one is the only bad one.
        let (field, set) = FIELDS[which];
        let mut e = e;
        set(&mut e, Timestamp(t));
        for (path, got) in avro_results(&e) {
            let err = got.expect_err(path);
            prop_assert_eq!(err.field(), Some(field), "{}: {}", path, err);
        }
        let json_err = json::parse_event(&json::to_json(&e)).unwrap_err();
        prop_assert_eq!(json_err.field_name(), Some(field));
    }
}
