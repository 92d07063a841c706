//! A real Kafka client (librdkafka, CRC checks on) reading the embedded
//! broker from offsets inside a stored batch: every record from there on,
//! once, in order. This is what a worker does after seeking to its
//! checkpoint; on tansu's SlateDB engine alone it skipped the rest of the
//! batch (see `src/log.rs`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use swabstream_broker::LogEngine;

mod common;
use common::TestBroker;

/// Produces `n` records, values their offsets, lingering so that the client
/// sends them as one batch, and waits for every acknowledgement.
async fn produce(producer: &FutureProducer, first: i64, n: i64) {
    let sends: Vec<_> = (first..first + n)
        .map(|i| {
            let value = i.to_string();
            let key = format!("k{i}");
            producer.send_result(FutureRecord::to("t").key(&key).payload(&value)).unwrap()
        })
        .collect();
    for (i, s) in (first..).zip(sends) {
        let offset = s.await.unwrap().unwrap().offset;
        assert_eq!(offset, i, "acknowledged at the offset expected");
    }
}

fn read_from(bootstrap: &str, start: i64, end: i64) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{start}"))
        .set("enable.auto.commit", "false")
        .set("check.crcs", "true")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("t", 0, Offset::Offset(start)).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.last().is_none_or(|&last| last + 1 < end) && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let value: i64 = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
            assert_eq!(
                value,
                m.offset(),
                "the record at offset {} is the one produced there",
                m.offset()
            );
            seen.push(m.offset());
        }
    }
    seen
}

fn read_inside_batches(engine: Option<LogEngine>) {
    let broker = TestBroker::start("mid", engine);
    let bootstrap = broker.bootstrap();
    let end = broker.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "200")
            .create()
            .unwrap();
        // A large batch, then small ones: reading from inside the large one
        // must not overshoot the small ones after it.
        let mut at = 0;
        for n in [500, 3, 1, 40, 1] {
            produce(&producer, at, n).await;
            at += n;
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        at
    });
    for start in [0, 7, 250, 499, 500, 501, 502, 503, 504, 530, 543] {
        let seen = read_from(&bootstrap, start, end);
        assert_eq!(
            seen,
            (start..end).collect::<Vec<_>>(),
            "{engine:?}: reading from offset {start}"
        );
    }
    broker.stop();
}

#[test]
fn a_consumer_reads_every_record_from_inside_a_batch_on_slatedb() {
    read_inside_batches(Some(LogEngine::Slatedb));
}

#[test]
fn a_consumer_reads_every_record_from_inside_a_batch_on_sqlite() {
    read_inside_batches(Some(LogEngine::Sqlite));
}

#[test]
fn a_consumer_reads_every_record_from_inside_a_batch_in_memory() {
    read_inside_batches(None);
}
