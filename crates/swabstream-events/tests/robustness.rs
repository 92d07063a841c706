//! Decoding never panics, whatever the bytes: arbitrary input, and valid
//! records with bytes flipped, cut or spliced, on the fast and general paths
//! and through both framings.

mod common;

use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use common::event;
use proptest::prelude::*;
use swabstream_events::avro::{Codec, SCHEMA_V1, V1_FINGERPRINT};
use swabstream_events::framing::{InMemoryRegistry, SchemaRegistry, WireFormat};

/// A v1 superset with an array, a map and a recursive type, so the general
/// path's scan meets every kind of schema.
fn rich_text() -> String {
    let extra = r#"{"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
      {"name": "attrs", "type": {"type": "map", "values": ["null", "long", "double", "bytes"]}, "default": {}},
      {"name": "chain", "type": ["null", {"type": "record", "name": "Link", "fields": [
        {"name": "at", "type": "float"},
        {"name": "next", "type": ["null", "Link"]}]}], "default": null},
      {"name": "body""#;
    assert!(SCHEMA_V1.contains(r#"{"name": "body""#));
    SCHEMA_V1.replacen(r#"{"name": "body""#, extra, 1)
}

struct Fixture {
    v1: Codec,
    rich: Codec,
    rich_schema: Schema,
    wire: WireFormat,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rich_text = rich_text();
        let rich = Codec::with_schemas(&rich_text, &[SCHEMA_V1]).unwrap();
        let registry = Arc::new(InMemoryRegistry::new());
        registry.register("sampling-events-value", SCHEMA_V1).unwrap();
        registry.register("sampling-events-value", &rich_text).unwrap();
        registry.register("other", r#"{"type":"array","items":"long"}"#).unwrap();
        Fixture {
            v1: Codec::new(),
            rich,
            rich_schema: Schema::parse_str(&rich_text).unwrap(),
            wire: WireFormat::single_object().with_registry(registry),
        }
    })
}

/// Every way in: must return, Ok or Err, and never panic.
fn decode_everywhere(bytes: &[u8]) {
    let f = fixture();
    let _ = f.v1.decode(bytes);
    let _ = f.v1.decode_datum(V1_FINGERPRINT, bytes);
    let _ = f.v1.decode_resolving(f.v1.schema(), bytes);
    let _ = f.rich.decode(bytes);
    let _ = f.rich.decode_datum(f.rich.fingerprint(), bytes);
    let _ = f.v1.decode_with_writer_schema(&f.rich_schema, bytes);
    let _ = f.wire.decode(bytes);
    for id in 1..=3u32 {
        let mut c = vec![0];
        c.extend_from_slice(&id.to_be_bytes());
        c.extend_from_slice(bytes);
        let _ = f.wire.decode(&c);
    }
}

#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    proptest::collection::vec(
        prop_oneof![
            4 => (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Damage::Flip(i, x)),
            1 => any::<usize>().prop_map(Damage::Cut),
            1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..12))
                .prop_map(|(i, b)| Damage::Insert(i, b)),
            1 => (any::<usize>(), 1..8usize).prop_map(|(i, n)| Damage::Remove(i, n)),
        ],
        1..4,
    )
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let len = bytes.len().max(1);
        match d {
            Damage::Flip(i, x) => {
                if !bytes.is_empty() {
                    bytes[i % len] ^= x;
                }
            }
            Damage::Cut(i) => bytes.truncate(i % len),
            Damage::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Damage::Remove(i, n) => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

proptest! {
    // 2048 cases, or more with PROPTEST_CASES=n for a longer soak.
    #![proptest_config(ProptestConfig::with_cases(2048.max(ProptestConfig::default().cases)))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_everywhere(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        rich in any::<bool>(),
    ) {
        let f = fixture();
        let fp = if rich { f.rich.fingerprint() } else { V1_FINGERPRINT };
        let mut buf = vec![0xC3, 0x01];
        buf.extend_from_slice(&fp.to_le_bytes());
        buf.extend_from_slice(&bytes);
        decode_everywhere(&buf);
    }

    #[test]
    fn damaged_records_never_panic(e in event(), damage in damage(), rich in any::<bool>()) {
        let f = fixture();
        let mut buf = Vec::new();
        if rich { f.rich.encode(&e, &mut buf) } else { f.v1.encode(&e, &mut buf) }
        let damaged = apply(buf.clone(), &damage);
        decode_everywhere(&damaged);
        decode_everywhere(&damaged[damaged.len().min(10)..]);
        // Undamaged, it decodes on every path that knows its schema.
        if !rich {
            prop_assert_eq!(f.wire.decode(&buf).unwrap(), e.clone());
        }
        prop_assert_eq!(f.rich.decode(&buf).unwrap(), e);
    }
}

#[test]
fn deep_recursion_and_huge_counts_are_refused_not_followed() {
    let f = fixture();
    // By hand: the rich schema's event_id, person_ref, occurred_at, then its extras.
    let mut d = vec![0xC3, 0x01];
    d.extend_from_slice(&f.rich.fingerprint().to_le_bytes());
    d.extend_from_slice(&[0x02, b'e']);
    d.extend_from_slice(&[0; 32]);
    d.push(0x00);
    // tags: a block claiming 2^62 items.
    let mut huge = d.clone();
    huge.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    let err = f.rich.decode(&huge).unwrap_err().to_string();
    assert!(err.contains("more items than the record has bytes"), "{err}");
    // chain: a linked list 10 000 deep.
    let mut deep = d.clone();
    deep.extend_from_slice(&[0x00, 0x00]); // no tags, no attrs
    for _ in 0..10_000 {
        deep.extend_from_slice(&[0x02, 0, 0, 0, 0]); // Some(Link { at: 0.0, next: ...
    }
    deep.push(0x00);
    let err = f.rich.decode(&deep).unwrap_err().to_string();
    assert!(err.contains("nests deeper than"), "{err}");
}
