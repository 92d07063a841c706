//! The worker against a view store that is away now and then, as Scylla is
//! while its replicas are down: the worker's committer thread retries the
//! same commit until the store takes it, the views end equal to the truth,
//! and the offsets the worker commits to Kafka never lead the store's.
//! The worker runs in this process (`worker::run`, what `swabstream run`
//! calls) so that its store can be wrapped; the broker is a real one, a
//! child process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use swabstream_kafka::Cluster;
use swabstream_kafka::worker::{self, WorkerOptions};
use swabstream_store::faulty::Faulty;
use swabstream_store::{StoreError, ViewStore};
use swabstream_store_sqlite::SqliteStore;

/// The real store, refusing every third commit with a transient error and
/// taking its time over the others (so that commits overlap the polling).
/// Counts the commits refused in `refused`.
fn away_at_times(store: SqliteStore, refused: Arc<AtomicU64>) -> Faulty<SqliteStore> {
    let mut calls = 0u64;
    Faulty::new(store).on_commit(move |store, c| {
        calls += 1;
        if calls % 3 == 2 {
            refused.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Backend {
                store: "test",
                transient: true,
                error: "no replica answered in time (as Scylla's Unavailable)".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        c.send(store)
    })
}

/// The offsets the group committed to Kafka, per partition (absent: none).
fn kafka_offsets(c: &BaseConsumer, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(got) = c.committed_offsets(tpl, Duration::from_secs(5)) else {
        return vec![None; partitions as usize];
    };
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

#[test]
fn a_store_away_now_and_then_is_waited_for_and_kafka_never_leads_it() {
    let broker = Broker::start("away");
    let env = Env::new("away", &broker.addr, 3);
    let (events, truth) = env.simulate(4000, 23);
    env.publish(&events);

    let group = format!("away-{}", std::process::id());
    let opts = WorkerOptions {
        topic: env.topic.clone(),
        dlq_topic: env.dlq.clone(),
        group_id: group.clone(),
        core: swabstream_core::CoreConfig::default(),
        batch_max_records: 500,
        batch_max_wait: Duration::from_millis(100),
        // Every batch, so that the store is called often.
        commit_interval: Duration::ZERO,
        snapshot_interval: Duration::from_millis(300),
        orphan_after: Duration::from_secs(60),
        until_caught_up: true,
    };
    let refused = Arc::new(AtomicU64::new(0));
    let store =
        away_at_times(SqliteStore::open(&env.store_path(), &env.topic).unwrap(), refused.clone());
    let cluster = Cluster::embedded(broker.addr.clone());
    let running = Arc::new(AtomicBool::new(true));

    // While the worker runs: Kafka's committed offsets, read before the
    // store's checkpoints, never exceed them.
    let watcher = {
        let (running, addr, topic, path) =
            (running.clone(), broker.addr.clone(), env.topic.clone(), env.store_path());
        std::thread::spawn(move || {
            let c: BaseConsumer = client(&addr).set("group.id", &group).create().unwrap();
            let mut looks = 0;
            while running.load(Ordering::Relaxed) {
                let kafka = kafka_offsets(&c, &topic, 3);
                if let Ok(store) = SqliteStore::open_existing(&path, &topic)
                    && let Ok(live) = store.live()
                    && let Ok(stored) = store.offsets(&live)
                {
                    for (p, k) in kafka.iter().enumerate() {
                        let s = stored.iter().find(|(sp, _)| *sp == p as i32).map(|(_, o)| *o);
                        if let Some(k) = k {
                            assert!(
                                s.is_some_and(|s| s >= *k),
                                "partition {p}: Kafka holds offset {k}, the store {s:?}"
                            );
                        }
                    }
                    looks += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            looks
        })
    };
    let report = worker::run(&cluster, &opts, Box::new(store), Arc::new(AtomicBool::new(false)));
    running.store(false, Ordering::Relaxed);
    let looks = watcher.join().expect("Kafka's offsets never led the store's");
    let report = report.unwrap();

    assert!(refused.load(Ordering::Relaxed) > 0, "the store refused some commits");
    assert!(looks > 0, "the offsets were compared while the worker ran");
    assert!(report.commits + report.snapshots > 0);
    assert_views_equal(&env.views(), &truth, "views after a run against a store away at times");
    // Once the worker returned, the store holds the end of every partition:
    // nothing was left with the committer thread.
    assert_eq!(env.stored_offsets(), end_offsets(&broker.addr, &env.topic, 3));
}
