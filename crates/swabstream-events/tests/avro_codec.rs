//! The Avro codec: round trips, cross-checks against apache-avro, and the
//! errors of specific broken records.

mod common;

use std::borrow::Cow;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::writer::single_object::GenericSingleObjectWriter;
use common::{event, json_event, scan, v1_value};
use proptest::prelude::*;
use swabstream_events::avro::{
    Codec, DecodeError, SCHEMA_V1, V1_FINGERPRINT, crc64_avro, parsing_canonical_form,
};
use swabstream_events::{Body, Event, Identification, json};

fn encoded(e: &Event<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    Codec::shared().encode(e, &mut buf);
    buf
}

fn v1() -> Schema {
    Schema::parse_str(SCHEMA_V1).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fast_round_trip(e in event()) {
        let buf = encoded(&e);
        prop_assert_eq!(&buf[..2], &[0xC3, 0x01]);
        prop_assert_eq!(&buf[2..10], &V1_FINGERPRINT.to_le_bytes());
        let back = Codec::shared().decode(&buf).unwrap();
        prop_assert!(matches!(back.event_id, Cow::Borrowed(_)), "strings are lent, not copied");
        prop_assert_eq!(back, e);
    }

    #[test]
    fn json_to_avro_to_json(e in json_event()) {
        let text = json::to_json(&e);
        let parsed = json::parse_event(&text).unwrap();
        prop_assert_eq!(&parsed, &e);
        let buf = encoded(&parsed);
        let back = Codec::shared().decode(&buf).unwrap();
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(json::to_json(&back), text);
    }

    #[test]
    fn hand_coded_and_apache_avro_paths_agree(e in event()) {
        let c = Codec::shared();
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        c.encode_datum(&e, &mut fast);
        c.encode_datum_resolving(&e, &mut general);
        prop_assert_eq!(&fast, &general);
        prop_assert_eq!(c.decode_resolving(c.schema(), &fast).unwrap(), e);
    }

    /// Bytes from the hand-written encoder read with apache-avro's generic
    /// reader give the value built by hand from the event.
    #[test]
    fn apache_avro_reads_what_we_write(e in event()) {
        let schema = v1();
        let mut datum = Vec::new();
        Codec::shared().encode_datum(&e, &mut datum);
        let reader = GenericDatumReader::builder(&schema).build().unwrap();
        let mut rest = datum.as_slice();
        let value = reader.read_value(&mut rest).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(value, v1_value(&e));
    }

    /// A datum apache-avro writes from a hand-built value decodes with the
    /// hand-written decoder to the event.
    #[test]
    fn we_read_what_apache_avro_writes(e in event()) {
        let schema = v1();
        let writer = GenericDatumWriter::builder(&schema).build().unwrap();
        let datum = writer.write_value_to_vec(v1_value(&e)).unwrap();
        prop_assert_eq!(Codec::shared().decode_datum(V1_FINGERPRINT, &datum).unwrap(), e);
    }
}

#[test]
fn apache_avro_single_object_records_decode_too() {
    // apache-avro 0.22 computes a different (non-standard) fingerprint for schemas
    // with logical types; records from its single-object writer are still read.
    let e = scan(Identification::IdDocument);
    let schema = v1();
    let mut w = GenericSingleObjectWriter::new_with_capacity(&schema, 256).unwrap();
    let mut buf = Vec::new();
    w.write_value(v1_value(&e), &mut buf).unwrap();
    assert_ne!(&buf[2..10], &V1_FINGERPRINT.to_le_bytes());
    assert_eq!(Codec::new().decode(&buf).unwrap(), e);
}

#[test]
fn fingerprints_follow_the_avro_specification() {
    // Test vectors of the Avro specification (share/test/data/schema-tests.txt).
    assert_eq!(crc64_avro(br#""null""#), 7_195_948_357_588_979_594);
    assert_eq!(crc64_avro(br#""int""#), 8_247_732_601_305_521_295);
    assert_eq!(crc64_avro(br#""boolean""#) as i64, -6_970_731_678_124_411_036);
    // Logical types reduce to their underlying primitive, as in Java's SchemaNormalization.
    let ts = Schema::parse_str(r#"{"type":"long","logicalType":"timestamp-micros"}"#).unwrap();
    assert_eq!(parsing_canonical_form(&ts), r#""long""#);
    // Without logical types, ours and apache-avro's canonical forms agree.
    let plain =
        SCHEMA_V1.replace(r#"{"type": "long", "logicalType": "timestamp-micros"}"#, r#""long""#);
    assert_ne!(plain, SCHEMA_V1);
    let plain = Schema::parse_str(&plain).unwrap();
    assert_eq!(parsing_canonical_form(&plain), plain.canonical_form());
    assert_eq!(parsing_canonical_form(&v1()), parsing_canonical_form(&plain));
    // Named types met again are referred to by full name; arrays and maps.
    let text = r#"{"type":"record","name":"R","namespace":"n","doc":"x","fields":[
        {"name":"a","type":{"type":"enum","name":"E","symbols":["X","Y"]},"default":"X"},
        {"name":"b","type":["null","E"],"default":null},
        {"name":"c","type":{"type":"array","items":{"type":"map","values":"E"}}},
        {"name":"d","type":{"type":"fixed","name":"F","size":16,"logicalType":"uuid"}}]}"#;
    let s = Schema::parse_str(text).unwrap();
    assert_eq!(
        parsing_canonical_form(&s),
        r#"{"name":"n.R","type":"record","fields":[{"name":"a","type":{"name":"n.E","type":"enum","symbols":["X","Y"]}},{"name":"b","type":["null","n.E"]},{"name":"c","type":{"type":"array","items":{"type":"map","values":"n.E"}}},{"name":"d","type":{"name":"n.F","type":"fixed","size":16}}]}"#
    );
}

// ---- specific broken records -------------------------------------------------------------

fn err(bytes: &[u8]) -> DecodeError {
    Codec::shared().decode(bytes).unwrap_err()
}

/// The single-object header of v1 followed by a datum.
fn framed(datum: &[u8]) -> Vec<u8> {
    let mut buf = vec![0xC3, 0x01];
    buf.extend_from_slice(&V1_FINGERPRINT.to_le_bytes());
    buf.extend_from_slice(datum);
    buf
}

/// A hand-written v1 datum of a scan, with the identification branch given.
fn scan_datum(tube_id: &[u8], ident_branch: u8) -> Vec<u8> {
    let mut d = Vec::new();
    let s = |d: &mut Vec<u8>, b: &[u8]| {
        d.push((b.len() * 2) as u8);
        d.extend_from_slice(b);
    };
    s(&mut d, b"e-1");
    d.extend_from_slice(&[0x4f; 32]);
    d.push(0x02); // occurred_at = 1
    d.push(0x04); // body: SampleScanned
    s(&mut d, b"S-1");
    s(&mut d, b"310104");
    s(&mut d, tube_id);
    s(&mut d, b"D-1");
    d.push(ident_branch * 2);
    d
}

#[test]
fn a_hand_written_datum_decodes() {
    let buf = framed(&scan_datum(b"T-1", 1));
    let e = Codec::shared().decode(&buf).unwrap();
    assert_eq!(e.occurred_at.0, 1);
    assert!(matches!(&e.body, Body::SampleScanned(s) if s.tube_id == "T-1"));
}

#[test]
fn every_truncation_is_an_error_naming_a_field() {
    let buf = encoded(&scan(Identification::Code {
        code_id: Cow::Borrowed("K-1"),
        generated_at: Some(swabstream_events::Timestamp(7)),
    }));
    for n in 0..buf.len() {
        let e = err(&buf[..n]);
        match n {
            0 | 1 => assert_eq!(e, DecodeError::NotSingleObject),
            _ => assert!(matches!(e, DecodeError::Truncated { .. }), "{n}: {e}"),
        }
    }
    assert_eq!(
        err(&buf[..5]).to_string(),
        "truncated: the input ends inside field `schema fingerprint`"
    );
    assert_eq!(err(&buf[..10]).field(), Some("event_id"));
    assert_eq!(err(&buf[..20]).field(), Some("person_ref"));
    assert_eq!(err(&buf[..buf.len() - 1]).field(), Some("identification.generated_at"));
}

#[test]
fn bad_marker() {
    let mut buf = encoded(&scan(Identification::IdDocument));
    buf[1] = 0x02;
    assert_eq!(err(&buf), DecodeError::NotSingleObject);
    assert_eq!(
        err(br#"{"type":"SampleScanned"}"#).to_string(),
        "not Avro single-object encoding: the record does not start with the marker C3 01"
    );
}

#[test]
fn unknown_fingerprint() {
    let mut buf = encoded(&scan(Identification::IdDocument));
    buf[2] ^= 0xff;
    let e = err(&buf);
    assert!(matches!(e, DecodeError::UnknownSchema(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("{:016x}", V1_FINGERPRINT ^ 0xff)), "{msg}");
    assert!(msg.contains("add its .avsc to schemas/"), "{msg}");
}

#[test]
fn bad_union_and_enum_indices() {
    let mut d = scan_datum(b"T-1", 3);
    assert_eq!(
        err(&framed(&d)),
        DecodeError::BadUnionIndex { field: "identification".into(), index: 3 }
    );
    // body branch 3
    d[3 + 1 + 32 + 1] = 0x06;
    let e = err(&framed(&d));
    assert_eq!(e, DecodeError::BadUnionIndex { field: "body".into(), index: 3 });
    assert_eq!(
        e.to_string(),
        "field `body` selects union branch 3, which the writer's schema does not have"
    );
    // A negative branch.
    let mut d = scan_datum(b"T-1", 0);
    *d.last_mut().unwrap() = 0x01;
    assert_eq!(
        err(&framed(&d)),
        DecodeError::BadUnionIndex { field: "identification".into(), index: -1 }
    );
    // CodeIssued with kind 4.
    let mut c = Vec::new();
    c.extend_from_slice(&[0x02, b'c']);
    c.extend_from_slice(&[1; 32]);
    c.extend_from_slice(&[0x00, 0x00, 0x02, b'K', 0x08, 0x00, 0x00, 0x00]);
    assert_eq!(err(&framed(&c)), DecodeError::BadEnumSymbol { field: "kind".into(), index: 4 });
    c[2 + 32 + 4] = 0x06; // kind RELATIVE
    c[2 + 32 + 5] = 0x08; // channel 4
    assert_eq!(err(&framed(&c)), DecodeError::BadEnumSymbol { field: "channel".into(), index: 4 });
    c[2 + 32 + 5] = 0x00;
    assert!(Codec::shared().decode(&framed(&c)).is_ok());
}

#[test]
fn invalid_utf8_names_the_field() {
    let e = err(&framed(&scan_datum(&[b'T', 0xff, 0xfe], 1)));
    assert_eq!(e, DecodeError::InvalidUtf8 { field: "tube_id".into() });
    assert_eq!(e.to_string(), "field `tube_id` is not valid UTF-8");
}

#[test]
fn trailing_bytes() {
    let mut buf = encoded(&scan(Identification::DeclaredId));
    buf.extend_from_slice(&[0, 0, 0]);
    assert_eq!(err(&buf), DecodeError::TrailingBytes(3));
}

#[test]
fn a_length_past_the_end_never_allocates() {
    // tube_id claims 2^62 bytes.
    let mut d = scan_datum(b"T-1", 1);
    let at = d.iter().rposition(|&b| b == b'T').unwrap() - 1;
    d.splice(at..at + 1, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    assert_eq!(err(&framed(&d)), DecodeError::Truncated { field: "tube_id".into() });
    let mut d = scan_datum(b"T-1", 1);
    d[0] = 0x05; // event_id length -3
    assert_eq!(
        err(&framed(&d)),
        DecodeError::NegativeLength { field: "event_id".into(), length: -3 }
    );
}

#[test]
fn a_bad_boolean() {
    let mut d = vec![0x02, b'a'];
    d.extend_from_slice(&[1; 32]);
    d.extend_from_slice(&[0x00, 0x02, 0x02, b'K', 0x02]);
    assert_eq!(err(&framed(&d)), DecodeError::BadBoolean { field: "approved".into(), byte: 2 });
}

#[test]
fn shape_rules_apply_after_decoding() {
    let mut e = scan(Identification::IdDocument);
    e.event_id = Cow::Owned("x".repeat(65));
    let err_ = err(&encoded(&e));
    assert_eq!(err_.field(), Some("event_id"));
    assert_eq!(err_.to_string(), "field `event_id` must be at most 64 characters");
    // 64 characters of 4 bytes each are fine.
    e.event_id = Cow::Owned("🧪".repeat(64));
    assert_eq!(Codec::shared().decode(&encoded(&e)).unwrap(), e);
    // An empty code id, through the general path as well.
    let e = scan(Identification::Code { code_id: Cow::Borrowed(""), generated_at: None });
    let buf = encoded(&e);
    assert_eq!(err(&buf).to_string(), "field `identification.code_id` must not be empty");
    let c = Codec::shared();
    assert_eq!(
        c.decode_resolving(c.schema(), &buf[10..]).unwrap_err().field(),
        Some("identification.code_id")
    );
}
