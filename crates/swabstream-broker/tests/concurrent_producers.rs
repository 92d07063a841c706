//! Several idempotent producers writing one partition at once, as a
//! gateway's producers, two gateways, or several workers' DLQ producers do:
//! every acknowledged record is in the log once, at the offset it was
//! acknowledged at, and a reader from the start sees all of them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use swabstream_broker::LogEngine;

mod common;
use common::TestBroker;

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 400;

fn concurrent_producers(engine: Option<LogEngine>) {
    let broker = TestBroker::start("concurrent", engine);
    let bootstrap = broker.bootstrap();
    // value -> the offset it was acknowledged at
    let acked: BTreeMap<String, i64> = broker.block_on(async {
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let bootstrap = bootstrap.clone();
                tokio::spawn(async move {
                    let producer: FutureProducer = ClientConfig::new()
                        .set("bootstrap.servers", &bootstrap)
                        .set("enable.idempotence", "true")
                        .set("linger.ms", "1")
                        .create()
                        .unwrap();
                    let mut acked = Vec::new();
                    // Small batches, each awaited, so that the producers'
                    // requests interleave on the partition.
                    for chunk in 0..PER_PRODUCER / 10 {
                        let sends: Vec<_> = (0..10)
                            .map(|i| {
                                let value = format!("p{p}-{:04}", chunk * 10 + i);
                                let f = producer
                                    .send_result(FutureRecord::<(), _>::to("t").payload(&value))
                                    .unwrap();
                                (value, f)
                            })
                            .collect();
                        for (value, f) in sends {
                            let delivery = f.await.unwrap().unwrap_or_else(|(e, _)| {
                                panic!("producer {p}: {value} not acknowledged: {e}")
                            });
                            acked.push((value, delivery.offset));
                        }
                    }
                    acked
                })
            })
            .collect();
        let mut all = BTreeMap::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let total = PRODUCERS * PER_PRODUCER;
    assert_eq!(acked.len(), total);
    let mut at: BTreeMap<i64, &str> = BTreeMap::new();
    for (value, offset) in &acked {
        if let Some(other) = at.insert(*offset, value) {
            panic!("{engine:?}: {other} and {value} were both acknowledged at offset {offset}");
        }
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let (low, high) = consumer.fetch_watermarks("t", 0, Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut times: BTreeMap<i64, i64> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Until the last record: a log missing some ends the wait there.
    while seen.len() < total
        && !seen.contains_key(&(high - 1))
        && std::time::Instant::now() < deadline
    {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            assert!(seen.insert(m.offset(), value).is_none(), "offset {} read twice", m.offset());
            times.insert(m.offset(), m.timestamp().to_millis().unwrap());
        }
    }
    let missing: Vec<_> = at.iter().filter(|(o, _)| !seen.contains_key(o)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{engine:?}: log [{low}, {high}), read {} of {total} acknowledged records; not read (first 10): {missing:?}",
        seen.len()
    );
    for (offset, value) in &at {
        assert_eq!(seen[offset], *value, "{engine:?}: the record at offset {offset}");
    }
    assert_eq!(
        (low, high),
        (0, total as i64),
        "{engine:?}: the log holds exactly what was acknowledged"
    );

    // The first offset at or after a time, for times before, inside and
    // after the log (timestamps need not rise with offsets here).
    let first = *times.values().min().unwrap();
    let last = *times.values().max().unwrap();
    for t in [first - 1000, first, (first + last) / 2, last, last + 1] {
        let expected = times
            .iter()
            .filter(|(_, ts)| **ts >= t)
            .map(|(o, _)| *o)
            .min()
            .map_or(Offset::End, Offset::Offset);
        let mut asked = TopicPartitionList::new();
        asked.add_partition_offset("t", 0, Offset::Offset(t)).unwrap();
        let answer = consumer.offsets_for_times(asked, Duration::from_secs(10)).unwrap();
        let got = answer.find_partition("t", 0).unwrap().offset();
        assert_eq!(
            got, expected,
            "{engine:?}: the first offset at or after {t} (log {first}..={last})"
        );
    }
    drop(consumer);
    broker.stop();
}

#[test]
fn concurrent_producers_on_one_partition_lose_nothing_on_slatedb() {
    concurrent_producers(Some(LogEngine::Slatedb));
}

#[test]
fn concurrent_producers_on_one_partition_lose_nothing_on_sqlite() {
    concurrent_producers(Some(LogEngine::Sqlite));
}

#[test]
fn concurrent_producers_on_one_partition_lose_nothing_in_memory() {
    concurrent_producers(None);
}
