//! Schema evolution (SPEC §2.2): added fields with defaults, old records
//! readable forever, union branches and enum symbols by name.

mod common;

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use common::{event, scan, v1_value};
use proptest::prelude::*;
use swabstream_events::avro::{Codec, DecodeError, SCHEMA_V1, V1_FINGERPRINT, fingerprint_of};
use swabstream_events::{Body, Identification};

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the v1 schema no longer contains {from}");
    text.replacen(from, to, 1)
}

/// v1 plus three fields with defaults: one in the envelope, one in
/// `SampleScanned`, and one in `CodeIssued` that refers to a named type.
fn v2_text() -> String {
    let t = replace(
        SCHEMA_V1,
        r#"{"name": "scanner_id", "type": "string"},"#,
        r#"{"name": "scanner_id", "type": "string"}, {"name": "batch_size", "type": "int", "default": 10},"#,
    );
    let t = replace(
        &t,
        r#""doc": "RELATIVE codes only."}"#,
        r#""doc": "RELATIVE codes only."},
          {"name": "renewal_channel", "type": ["null", "Channel"], "default": null}"#,
    );
    // The last field of the envelope is the body; add one after it.
    let end = t.rfind(']').unwrap();
    let body_end = t[..end].rfind('}').unwrap();
    format!(
        "{}}}, {{\"name\": \"producer\", \"type\": [\"null\", \"string\"], \"default\": null}}{}",
        &t[..body_end],
        &t[body_end + 1..]
    )
}

fn v2() -> Schema {
    Schema::parse_str(&v2_text()).unwrap()
}

fn v2_codec() -> Codec {
    Codec::with_schemas(&v2_text(), &[SCHEMA_V1]).unwrap()
}

#[test]
fn the_v2_schema_is_what_the_tests_think() {
    let s = v2();
    let c = v2_codec();
    assert_ne!(c.fingerprint(), V1_FINGERPRINT);
    assert_eq!(c.readable_fingerprints().collect::<Vec<_>>(), [fingerprint_of(&s), V1_FINGERPRINT]);
    let text = v2_text();
    for f in ["batch_size", "renewal_channel", "producer"] {
        assert!(text.contains(f));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A record written by this build (v1) reads the same with a v2 codec,
    /// both on the fast path and through resolution against v2.
    #[test]
    fn v1_records_read_with_a_v2_codec(e in event()) {
        let mut buf = Vec::new();
        Codec::new().encode(&e, &mut buf);
        let c = v2_codec();
        prop_assert_eq!(c.decode(&buf).unwrap(), e.clone());
        let v1 = Schema::parse_str(SCHEMA_V1).unwrap();
        prop_assert_eq!(c.decode_resolving(&v1, &buf[10..]).unwrap(), e);
    }

    /// A v2 codec writes v2 and reads it back (general path both ways); a v1
    /// reader given the v2 schema (as from a registry) reads it too.
    #[test]
    fn v2_records_round_trip_and_read_with_v1(e in event()) {
        let c = v2_codec();
        let mut buf = Vec::new();
        c.encode(&e, &mut buf);
        prop_assert_eq!(&buf[2..10], &c.fingerprint().to_le_bytes());
        prop_assert_eq!(c.decode(&buf).unwrap(), e.clone());
        prop_assert_eq!(Codec::new().decode_with_writer_schema(&v2(), &buf[10..]).unwrap(), e);
    }
}

#[test]
fn a_v1_codec_cannot_read_v2_single_objects_and_says_what_to_do() {
    let c = v2_codec();
    let mut buf = Vec::new();
    c.encode(&scan(Identification::IdDocument), &mut buf);
    let err = Codec::new().decode(&buf).unwrap_err();
    assert_eq!(err, DecodeError::UnknownSchema(format!("{:016x}", c.fingerprint())));
    assert_eq!(
        err.to_string(),
        format!(
            "written with a schema this build does not know (fingerprint {:016x}); \
             add its .avsc to schemas/ and list it in avro::SCHEMAS",
            c.fingerprint()
        )
    );
}

#[test]
fn v2_fields_the_model_does_not_know_are_ignored() {
    let e = scan(Identification::IdDocument);
    // The v2 value: v1's, plus batch_size 99 and producer "gw-3".
    let Value::Record(mut fields) = v1_value(&e) else { unreachable!() };
    let Value::Union(2, body) = &mut fields[3].1 else { unreachable!() };
    let Value::Record(scan_fields) = body.as_mut() else { unreachable!() };
    scan_fields.insert(4, ("batch_size".into(), Value::Int(99)));
    fields.push(("producer".into(), Value::Union(1, Box::new(Value::String("gw-3".into())))));
    let s = v2();
    let datum = GenericDatumWriter::builder(&s)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(fields))
        .unwrap();
    assert_eq!(Codec::new().decode_with_writer_schema(&s, &datum).unwrap(), e);
    assert_eq!(v2_codec().decode_datum(fingerprint_of(&s), &datum).unwrap(), e);
}

#[test]
fn fields_an_old_writer_lacks_take_the_current_schema_default() {
    // A "v0" without generated_at: the current (v1) schema defaults it to null.
    let v0 = replace(
        SCHEMA_V1,
        r#",
                {"name": "generated_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null, "doc": "When the live code was rendered on screen."}"#,
        "",
    );
    let v0s = Schema::parse_str(&v0).unwrap();
    let c = Codec::with_schemas(SCHEMA_V1, &[&v0]).unwrap();
    let e = scan(Identification::Code { code_id: "K-1".into(), generated_at: None });
    let Value::Record(mut fields) = v1_value(&e) else { unreachable!() };
    let Value::Union(2, body) = &mut fields[3].1 else { unreachable!() };
    let Value::Record(scan_fields) = body.as_mut() else { unreachable!() };
    let Value::Union(0, ident) = &mut scan_fields[4].1 else { unreachable!() };
    let Value::Record(ident_fields) = ident.as_mut() else { unreachable!() };
    ident_fields.pop();
    let datum = GenericDatumWriter::builder(&v0s)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(fields))
        .unwrap();
    assert_eq!(c.decode_datum(fingerprint_of(&v0s), &datum).unwrap(), e);
    // Without v0 among the readable schemas, its fingerprint is unknown.
    assert!(matches!(
        Codec::new().decode_datum(fingerprint_of(&v0s), &datum),
        Err(DecodeError::UnknownSchema(_))
    ));
}

#[test]
fn a_field_missing_without_a_default_is_a_resolution_error_naming_it() {
    let v0 = replace(SCHEMA_V1, r#"{"name": "scanner_id", "type": "string"},"#, "");
    let v0s = Schema::parse_str(&v0).unwrap();
    let datum = [
        &[0x02, b'e'][..],
        &[1; 32],
        &[0x00, 0x04, 0x02, b'S', 0x02, b'D', 0x02, b'T', 0x02], // site, district, tube, ID_DOCUMENT
    ]
    .concat();
    let err = Codec::new().decode_with_writer_schema(&v0s, &datum).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read the writer's schema as this build's events: field `scanner_id` is not in \
         the writer's schema, and the current schema gives it no default"
    );
}

#[test]
fn union_branches_resolve_by_name_not_position() {
    // The identification branches reordered: DeclaredId, IdDocument, CodeIdentification.
    // (Both empty records look alike to apache-avro's own Value resolution.)
    let code = r#"{
              "type": "record",
              "name": "CodeIdentification",
              "fields": [
                {"name": "code_id", "type": "string"},
                {"name": "generated_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null, "doc": "When the live code was rendered on screen."}
              ]
            },"#;
    let t = replace(SCHEMA_V1, code, "");
    let t = replace(
        &t,
        r#"{"type": "record", "name": "IdDocument", "fields": []},
            {"type": "record", "name": "DeclaredId", "fields": []}"#,
        &format!(
            r#"{{"type": "record", "name": "DeclaredId", "fields": []}},
            {{"type": "record", "name": "IdDocument", "fields": []}},
            {}"#,
            code.trim_end_matches(',')
        ),
    );
    let reordered = Schema::parse_str(&t).unwrap();
    let writer = Codec::with_schemas(&t, &[]).unwrap();
    for ident in [
        Identification::DeclaredId,
        Identification::IdDocument,
        Identification::Code {
            code_id: "K-2".into(),
            generated_at: Some(swabstream_events::Timestamp(9)),
        },
    ] {
        let e = scan(ident);
        let mut datum = Vec::new();
        writer.encode_datum(&e, &mut datum);
        assert_eq!(Codec::new().decode_with_writer_schema(&reordered, &datum).unwrap(), e);
    }
}

#[test]
fn an_enum_symbol_this_build_does_not_know_is_named() {
    let t = replace(
        SCHEMA_V1,
        r#""symbols": ["APP", "WECHAT", "ALIPAY", "OFFLINE"]"#,
        r#""symbols": ["APP", "WECHAT", "ALIPAY", "OFFLINE", "MINI_PROGRAM"]"#,
    );
    let s = Schema::parse_str(&t).unwrap();
    let e = scan(Identification::IdDocument);
    let Value::Record(mut fields) = v1_value(&e) else { unreachable!() };
    fields[3].1 = Value::Union(
        0,
        Box::new(Value::Record(vec![
            ("code_id".into(), Value::String("K".into())),
            ("kind".into(), Value::Enum(0, "PERSONAL".into())),
            ("channel".into(), Value::Enum(4, "MINI_PROGRAM".into())),
            ("expires_at".into(), Value::Union(0, Box::new(Value::Null))),
            ("verification".into(), Value::Union(0, Box::new(Value::Null))),
        ])),
    );
    let datum = GenericDatumWriter::builder(&s)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(fields))
        .unwrap();
    let err = Codec::new().decode_with_writer_schema(&s, &datum).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read the writer's schema as this build's events: field `channel` has the symbol \
         `MINI_PROGRAM`, which this build does not know"
    );
    // A known symbol of the same writer reads fine.
    let mut ok = datum.clone();
    let at = ok.len() - 3; // channel, expires_at, verification
    ok[at] = 0x02; // WECHAT
    let back = Codec::new().decode_with_writer_schema(&s, &ok).unwrap();
    assert!(
        matches!(back.body, Body::CodeIssued(c) if c.channel == swabstream_events::Channel::Wechat)
    );
}
