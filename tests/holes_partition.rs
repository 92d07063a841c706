//! SPEC §3.1, end to end: a record whose key is not its event's `person_ref`
//! (lowercase hex), or that sits in a partition other than murmur2(key) mod
//! the partition count, goes to the DLQ as `WRONG_PARTITION` and is counted
//! as a rejection — and a correctly routed copy of it still counts.

mod common;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use common::{Broker, Env, assert_views_equal, read_topic};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use swabstream_events::avro::Codec;
use swabstream_events::{Body, Day, Event, district_index, json};
use swabstream_kafka::partition_of;

const PARTITIONS: i32 = 4;

/// A record to produce as it is: key, partition, value.
struct Raw {
    key: Option<Vec<u8>>,
    partition: i32,
    value: Vec<u8>,
}

#[test]
fn misrouted_records_are_wrong_partition_and_the_views_are_the_truth_beside_them() {
    let broker = Broker::start("wrongpart");
    let env = Env::new("wrongpart", &broker.addr, PARTITIONS);
    let (events, truth) = env.simulate(1500, 21);
    let text = std::fs::read_to_string(&events).unwrap();

    // The first event is published on its own, which creates the topics;
    // the misrouted records follow, then the rest of the day.
    let lines: Vec<&str> = text.lines().collect();
    let first = env.dir.join("first.jsonl");
    let rest = env.dir.join("rest.jsonl");
    std::fs::write(&first, format!("{}\n", lines[0])).unwrap();
    std::fs::write(&rest, lines[1..].join("\n") + "\n").unwrap();

    // Scans naming a known district, of five different people, from the rest.
    let mut scans: Vec<Event<'_>> = Vec::new();
    for line in &lines[1..] {
        let e = json::parse_event(line).unwrap();
        if let Body::SampleScanned(s) = &e.body
            && district_index(&s.district).is_some()
            && scans.iter().all(|o| o.person_ref != e.person_ref)
        {
            scans.push(e);
        }
        if scans.len() == 5 {
            break;
        }
    }
    assert_eq!(scans.len(), 5);
    let codec = Codec::shared();
    let encode = |e: &Event<'_>, id: Option<&str>| {
        let mut e = e.clone();
        if let Some(id) = id {
            e.event_id = Cow::Owned(id.to_owned());
        }
        let mut b = Vec::new();
        codec.encode(&e, &mut b);
        b
    };
    let hex = |e: &Event<'_>| e.person_ref.to_hex().into_bytes();
    let home = |k: &[u8]| partition_of(k, PARTITIONS as u32);

    let mut raw = Vec::new();
    // The right key in the wrong partition (another partitioner, or the topic grew).
    let k = hex(&scans[0]);
    raw.push(Raw {
        partition: (home(&k) + 1) % PARTITIONS,
        key: Some(k),
        value: encode(&scans[0], Some("wrong-1")),
    });
    // Keyed by another person, in that person's partition.
    let k = hex(&scans[2]);
    raw.push(Raw { partition: home(&k), key: Some(k), value: encode(&scans[1], Some("wrong-2")) });
    // Uppercase hex, in the person's partition.
    let k = hex(&scans[2]);
    raw.push(Raw {
        partition: home(&k),
        key: Some(k.to_ascii_uppercase()),
        value: encode(&scans[2], Some("wrong-3")),
    });
    // No key at all, in the person's partition.
    raw.push(Raw {
        partition: home(&hex(&scans[3])),
        key: None,
        value: encode(&scans[3], Some("wrong-4")),
    });
    // The very event the day publishes later (same event_id), uppercase-keyed in
    // its partition: it must not enter the dedupe set, so the real one still counts.
    let k = hex(&scans[4]);
    raw.push(Raw {
        partition: home(&k),
        key: Some(k.to_ascii_uppercase()),
        value: encode(&scans[4], None),
    });

    env.publish(&first);
    let producer: BaseProducer = common::client(&broker.addr).create().unwrap();
    for r in &raw {
        let mut rec =
            BaseRecord::<[u8], [u8]>::to(&env.topic).partition(r.partition).payload(&r.value);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        producer.send(rec).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    env.publish(&rest);

    let o = env.run(&["run", "--until-caught-up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Each injected record is in the DLQ as WRONG_PARTITION, value untouched,
    // with a detail naming the failed check and neither the key nor the pseudonym.
    let dlq = read_topic(&broker.addr, &env.dlq, PARTITIONS);
    let header = |d: &common::Read, k: &str| {
        d.headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.clone())
    };
    let wrong: Vec<_> =
        dlq.iter().filter(|d| header(d, "reason").as_deref() == Some("WRONG_PARTITION")).collect();
    assert_eq!(wrong.len(), raw.len(), "every injected record, and nothing else");
    for r in &raw {
        let d = wrong.iter().find(|d| d.payload == r.value).expect("the injected value");
        assert_eq!(header(d, "source_partition"), Some(r.partition.to_string()));
        let detail = header(d, "detail").expect("a detail");
        assert!(!detail.is_empty());
        for s in &scans {
            let h = s.person_ref.to_hex();
            assert!(!detail.to_lowercase().contains(&h), "the detail holds a pseudonym: {detail}");
        }
    }

    // The views: the truth, plus one rejection each where the event's day and
    // district are (SPEC §4).
    let mut got = env.views();
    let mut by_day: BTreeMap<Day, u64> = BTreeMap::new();
    let mut by_district: BTreeMap<(Day, String), u64> = BTreeMap::new();
    for r in &raw {
        let e = codec.decode(&r.value).unwrap();
        let day = e.occurred_at.local_day();
        *by_day.entry(day).or_default() += 1;
        if let Body::SampleScanned(s) = &e.body {
            *by_district.entry((day, s.district.to_string())).or_default() += 1;
        }
    }
    let n: u64 = got
        .rejections_daily
        .iter()
        .filter(|r| r.reason == "WRONG_PARTITION")
        .map(|r| r.count)
        .sum();
    assert_eq!(n, raw.len() as u64);
    got.rejections_daily.retain(|r| r.reason != "WRONG_PARTITION");
    for c in &mut got.city_daily {
        c.rejected -= by_day.get(&c.day).copied().unwrap_or(0);
    }
    for d in &mut got.district_daily {
        d.rejected -= by_district.get(&(d.day, d.district.clone())).copied().unwrap_or(0);
    }
    assert_views_equal(&got, &truth, "views beside the misrouted records");
}
