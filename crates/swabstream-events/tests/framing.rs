//! Framing: single-object and Confluent, through an in-memory registry.

mod common;

use std::borrow::Cow;
use std::sync::Arc;

use common::{event, scan};
use proptest::prelude::*;
use swabstream_events::avro::{Codec, DecodeError, SCHEMA_V1, V1_FINGERPRINT};
use swabstream_events::framing::{
    EncodeError, Framing, InMemoryRegistry, RegistryError, SchemaRegistry, WireFormat,
};
use swabstream_events::{Body, Identification};

const SUBJECT: &str = "sampling-events-value";

fn confluent(registry: &Arc<InMemoryRegistry>) -> WireFormat {
    WireFormat::new(
        Codec::new(),
        Framing::Confluent { registry: registry.clone(), subject: SUBJECT.to_owned() },
    )
}

#[test]
fn wire_formats_are_shareable_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<WireFormat>();
    check::<Codec>();
    check::<InMemoryRegistry>();
}

#[test]
fn in_memory_registry_ids() {
    let r = InMemoryRegistry::new();
    assert_eq!(r.register("a-value", SCHEMA_V1).unwrap(), 1);
    assert_eq!(r.register("a-value", SCHEMA_V1).unwrap(), 1);
    assert_eq!(r.register("b-value", SCHEMA_V1).unwrap(), 1);
    assert_eq!(r.register("a-value", r#""string""#).unwrap(), 2);
    assert_eq!(r.subject_ids("a-value"), [1, 2]);
    assert_eq!(r.subject_ids("b-value"), [1]);
    assert_eq!(r.schema_by_id(2).unwrap(), r#""string""#);
    assert_eq!(r.schema_by_id(0), Err(RegistryError::UnknownId(0)));
    assert_eq!(r.schema_by_id(3), Err(RegistryError::UnknownId(3)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn confluent_round_trip(e in event()) {
        let registry = Arc::new(InMemoryRegistry::new());
        let writer = confluent(&registry);
        let mut buf = Vec::new();
        writer.encode(&e, &mut buf).unwrap();
        prop_assert_eq!(&buf[..5], &[0, 0, 0, 0, 1]);
        prop_assert_eq!(writer.decode(&buf).unwrap(), e.clone());
        // Another process: a reader that has only the registry.
        let reader = WireFormat::single_object().with_registry(registry.clone());
        let back = reader.decode(&buf).unwrap();
        prop_assert!(matches!(back.event_id, Cow::Borrowed(_)), "v1 by id takes the fast path");
        prop_assert_eq!(back, e.clone());
        prop_assert_eq!(reader.known_ids(), vec![(1, V1_FINGERPRINT)]);
        // The same event single-object framed decodes with either.
        let mut so = Vec::new();
        WireFormat::single_object().encode(&e, &mut so).unwrap();
        prop_assert_eq!(writer.decode(&so).unwrap(), e.clone());
        prop_assert_eq!(&so[10..], &buf[5..], "the same datum under either framing");
    }
}

#[test]
fn the_schema_is_registered_once() {
    let registry = Arc::new(InMemoryRegistry::new());
    let w = confluent(&registry);
    let mut buf = Vec::new();
    for _ in 0..3 {
        w.encode(&scan(Identification::IdDocument), &mut buf).unwrap();
    }
    assert_eq!(registry.subject_ids(SUBJECT), [1]);
    assert_eq!(registry.schema_by_id(1).unwrap(), SCHEMA_V1);
}

#[test]
fn confluent_without_a_registry_is_a_clear_error() {
    let registry = Arc::new(InMemoryRegistry::new());
    let mut buf = Vec::new();
    confluent(&registry).encode(&scan(Identification::DeclaredId), &mut buf).unwrap();
    let err = WireFormat::single_object().decode(&buf).unwrap_err();
    assert_eq!(err, DecodeError::NoRegistry { id: 1 });
    assert_eq!(
        err.to_string(),
        "Confluent-framed record (schema id 1) but no schema registry is configured; \
         configure the registry URL, or have producers use single-object framing"
    );
}

#[test]
fn an_unknown_id_or_a_bad_registry_schema_is_named() {
    let registry = Arc::new(InMemoryRegistry::new());
    registry.register("junk", "not json").unwrap();
    let w = WireFormat::single_object().with_registry(registry.clone());
    let err = w.decode(&[0, 0, 0, 0, 7, 1, 2]).unwrap_err();
    assert_eq!(err, DecodeError::Registry { id: 7, source: RegistryError::UnknownId(7) });
    assert_eq!(
        err.to_string(),
        "fetching schema id 7 from the schema registry: the registry has no schema with id 7"
    );
    let err = w.decode(&[0, 0, 0, 0, 1, 1, 2]).unwrap_err();
    assert!(matches!(err, DecodeError::RegistrySchema { id: 1, .. }), "{err}");
    // A valid schema that is not an event schema: read through resolution, refused.
    registry.register("junk", r#"{"type":"array","items":"long"}"#).unwrap();
    let err = w.decode(&[0, 0, 0, 0, 2, 0x02, 0x02, 0x00]).unwrap_err();
    assert!(matches!(err, DecodeError::Resolution(_)), "{err}");
}

#[test]
fn framing_is_told_by_the_first_bytes() {
    let w = WireFormat::single_object();
    assert_eq!(
        w.decode(&[]).unwrap_err(),
        DecodeError::Truncated { field: "framing header".into() }
    );
    assert_eq!(
        w.decode(&[0, 0, 1]).unwrap_err(),
        DecodeError::Truncated { field: "schema id".into() }
    );
    let err = w.decode(br#"{"type":"CodeIssued"}"#).unwrap_err();
    assert_eq!(err, DecodeError::UnknownFraming(b'{'));
    assert!(err.to_string().ends_with("(it looks like JSON)"), "{err}");
    assert_eq!(w.decode(&[0xC3, 0x02]).unwrap_err(), DecodeError::NotSingleObject);
    let mut buf = Vec::new();
    w.encode(&scan(Identification::IdDocument), &mut buf).unwrap();
    assert!(matches!(w.decode(&buf).unwrap().body, Body::SampleScanned(_)));
}

#[derive(Debug)]
struct Refusing;

impl SchemaRegistry for Refusing {
    fn register(&self, subject: &str, _: &str) -> Result<u32, RegistryError> {
        Err(RegistryError::Rejected { subject: subject.to_owned(), reason: "incompatible".into() })
    }
    fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        Err(RegistryError::UnknownId(id))
    }
}

#[test]
fn a_failed_registration_is_an_encode_error() {
    let w = WireFormat::new(
        Codec::new(),
        Framing::Confluent { registry: Arc::new(Refusing), subject: SUBJECT.into() },
    );
    let mut buf = Vec::new();
    let err = w.encode(&scan(Identification::IdDocument), &mut buf).unwrap_err();
    assert!(matches!(err, EncodeError::Register { .. }));
    assert_eq!(
        err.to_string(),
        "registering the writer's schema under subject `sampling-events-value`: \
         the registry refused the schema for subject `sampling-events-value`: incompatible"
    );
    assert!(buf.is_empty(), "nothing is written when registration fails");
}

#[test]
fn several_writer_schemas_on_one_topic() {
    // An older producer (v1) and a newer one (v1 plus a field) share a topic.
    let v2_text = SCHEMA_V1.replacen(
        r#"{"name": "scanner_id", "type": "string"},"#,
        r#"{"name": "scanner_id", "type": "string"}, {"name": "batch_size", "type": "int", "default": 10},"#,
        1,
    );
    let registry = Arc::new(InMemoryRegistry::new());
    let old = confluent(&registry);
    let new = WireFormat::new(
        Codec::with_schemas(&v2_text, &[SCHEMA_V1]).unwrap(),
        Framing::Confluent { registry: registry.clone(), subject: SUBJECT.to_owned() },
    );
    let reader = WireFormat::single_object().with_registry(registry.clone());
    for (i, ident) in
        [Identification::IdDocument, Identification::DeclaredId].into_iter().enumerate()
    {
        let e = scan(ident);
        for w in [&old, &new, &old] {
            let mut buf = Vec::new();
            w.encode(&e, &mut buf).unwrap();
            assert_eq!(reader.decode(&buf).unwrap(), e, "round {i}");
        }
    }
    assert_eq!(registry.subject_ids(SUBJECT), [1, 2]);
    let ids = reader.known_ids();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], (1, V1_FINGERPRINT));
    assert_eq!(ids[1], (2, new.codec().fingerprint()));
}
