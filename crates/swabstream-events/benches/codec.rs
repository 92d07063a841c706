//! The Avro codec's hot path: encode and decode of ~10k realistic events with
//! the hand-written v1 codec, against apache-avro's generic decoder.
//!
//! `cargo bench -p swabstream-events --bench codec`

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use swabstream_events::avro::{Codec, SCHEMA_V1};
use swabstream_events::framing::{Framing, InMemoryRegistry, WireFormat};
use swabstream_events::{
    Body, Channel, CodeIssued, CodeKind, DISTRICTS, Event, Identification, PersonRef,
    SampleScanned, Timestamp,
};

const EVENTS: usize = 10_000;

/// A small deterministic generator (xorshift64*), to keep the bench free of dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A day of sampling: 75% scans by code, 8% by ID document, 2% declared, 15% codes issued.
fn events() -> Vec<Event<'static>> {
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let day = 1_649_433_600_000_000i64; // 2022-04-09T00:00:00+08:00
    (0..EVENTS)
        .map(|i| {
            let mut person = [0u8; 32];
            for chunk in person.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
            let t = day + rng.below(86_400_000_000) as i64;
            let code_id = format!("C{:016x}", rng.next());
            let r = rng.below(100);
            let body = if r < 85 {
                let site = rng.below(4000);
                let district = DISTRICTS[rng.below(16) as usize].0;
                let identification = match r {
                    0..75 => Identification::Code {
                        code_id: Cow::Owned(code_id),
                        generated_at: r.is_multiple_of(3).then(|| Timestamp(t - 4_000_000)),
                    },
                    75..83 => Identification::IdDocument,
                    _ => Identification::DeclaredId,
                };
                Body::SampleScanned(SampleScanned {
                    site_id: Cow::Owned(format!("SH-{district}-{site:04}")),
                    district: Cow::Borrowed(district),
                    tube_id: Cow::Owned(format!("T{:010}", rng.below(10_000_000_000))),
                    scanner_id: Cow::Owned(format!("PDA-{site:04}-{}", rng.below(8))),
                    identification,
                })
            } else {
                let kind = CodeKind::ALL[rng.below(4) as usize];
                Body::CodeIssued(CodeIssued {
                    code_id: Cow::Owned(code_id),
                    kind,
                    channel: Channel::ALL[rng.below(4) as usize],
                    expires_at: (kind == CodeKind::Paper)
                        .then(|| Timestamp(t + 14 * 86_400_000_000)),
                    verification: None,
                })
            };
            Event {
                event_id: Cow::Owned(format!("01HZX{i:08}{:08x}", rng.next() as u32)),
                person_ref: PersonRef(person),
                occurred_at: Timestamp(t),
                body,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let codec = Codec::new();
    let events = events();
    let records: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut buf = Vec::new();
            codec.encode(e, &mut buf);
            buf
        })
        .collect();
    let bytes: usize = records.iter().map(Vec::len).sum();
    println!(
        "{EVENTS} events, {bytes} bytes single-object encoded ({} bytes/event)",
        bytes / EVENTS
    );

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(EVENTS as u64));

    g.bench_function("encode/fast", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            for e in &events {
                buf.clear();
                codec.encode(black_box(e), &mut buf);
                black_box(&buf);
            }
        })
    });

    g.bench_function("decode/fast", |b| {
        b.iter(|| {
            for r in &records {
                black_box(codec.decode(black_box(r)).unwrap());
            }
        })
    });

    let schema = Schema::parse_str(SCHEMA_V1).unwrap();
    g.bench_function("decode/apache-avro-generic", |b| {
        let reader = GenericDatumReader::builder(&schema).build().unwrap();
        b.iter(|| {
            for r in &records {
                let mut datum = &r[10..];
                black_box(reader.read_value(black_box(&mut datum)).unwrap());
            }
        })
    });

    // The general path, as a build whose current schema is a v2 (v1 plus a field
    // with a default) reads its own records: scan, apache-avro decode, resolution.
    let v2_text = SCHEMA_V1.replacen(
        r#"{"name": "scanner_id", "type": "string"},"#,
        r#"{"name": "scanner_id", "type": "string"}, {"name": "batch_size", "type": "int", "default": 10},"#,
        1,
    );
    let v2 = Codec::with_schemas(&v2_text, &[SCHEMA_V1]).unwrap();
    let v2_records: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut buf = Vec::new();
            v2.encode(e, &mut buf);
            buf
        })
        .collect();
    g.bench_function("decode/general-path-v2", |b| {
        b.iter(|| {
            for r in &v2_records {
                black_box(v2.decode(black_box(r)).unwrap());
            }
        })
    });

    let registry = Arc::new(InMemoryRegistry::new());
    let confluent = WireFormat::new(
        codec.clone(),
        Framing::Confluent { registry, subject: "sampling-events-value".into() },
    );
    let framed: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut buf = Vec::new();
            confluent.encode(e, &mut buf).unwrap();
            buf
        })
        .collect();
    g.bench_function("decode/fast-confluent", |b| {
        b.iter(|| {
            for r in &framed {
                black_box(confluent.decode(black_box(r)).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
