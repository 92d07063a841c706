//! The Scylla store against a real ScyllaDB, a fresh keyspace per test: the
//! shared behaviour suite every view store runs, then what is Scylla's own
//! (the sync API from a plain thread and from inside a tokio runtime, a
//! stale owner's late commit arriving after the new owner's).
//!
//! These need a server: set `SWABSTREAM_TEST_SCYLLA=host:9042` and run with
//! `cargo nextest run -p swabstream-store-scylla --run-ignored all`. Run
//! without the variable, each says it was skipped and tests nothing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use swabstream_events::Day;
use swabstream_store::suite::Opener;
use swabstream_store::{StoreError, Version, ViewStore};
use swabstream_store_scylla::{ScyllaSettings, ScyllaStore};
use swabstream_views::{CityDaily, ViewRow};

const VAR: &str = "SWABSTREAM_TEST_SCYLLA";

/// The server's address; a test run without one fails saying so.
fn server(test: &str) -> String {
    match std::env::var(VAR) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            // Ignored by default for this reason; run on purpose without a
            // server, it fails rather than passing with nothing tested.
            panic!("{test} needs a ScyllaDB: set {VAR}=host:9042 (this machine has none)")
        }
    }
}

/// A keyspace name no other test (or run) uses, as scylla-rust-driver's
/// `unique_keyspace_name()`: a valid identifier of at most 48 characters.
fn unique_keyspace() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    format!("swab_{secs}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn settings(nodes: &str) -> ScyllaSettings {
    ScyllaSettings::new(nodes, &unique_keyspace())
}

fn open(s: &ScyllaSettings) -> ScyllaStore {
    ScyllaStore::open(s, "sampling-events").unwrap()
}

/// A fresh keyspace per case; each call of the opener is another session
/// (another runtime and connection pool), as another worker's would be.
fn fresh(case: &str) -> Opener {
    let s = settings(&server(case));
    Box::new(move || Box::new(open(&s)))
}

swabstream_store::behaviour_suite!(
    #[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
    fresh
);

fn day() -> Day {
    Day::parse("2022-04-09").unwrap()
}

/// The version a new keyspace starts with, live.
fn v1() -> Version {
    Version { name: "v1".into(), id: 1 }
}

fn city(people: u64) -> ViewRow {
    ViewRow::CityDaily(CityDaily { day: day(), people_sampled: people, ..CityDaily::default() })
}

#[test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
fn the_sync_api_works_from_a_plain_thread() {
    let nodes = server("the_sync_api_works_from_a_plain_thread");
    let s = settings(&nodes);
    std::thread::spawn(move || {
        let mut store = open(&s);
        let c = store.claim(&v1(), 0).unwrap();
        store.commit(&v1(), 0, c.epoch, &[city(2)], 5, None).unwrap();
        assert_eq!(store.views().unwrap().city(day()).unwrap().people_sampled, 2);
    })
    .join()
    .unwrap();
}

#[tokio::test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
async fn the_sync_api_works_inside_a_tokio_runtime() {
    let nodes = server("the_sync_api_works_inside_a_tokio_runtime");
    // Opened, used and dropped on a current-thread runtime's only thread.
    let mut store = open(&settings(&nodes));
    let c = store.claim(&v1(), 1).unwrap();
    store.commit(&v1(), 1, c.epoch, &[city(3)], 7, Some(b"state")).unwrap();
    let cp = store.checkpoint(&v1(), 1).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().bytes), (7, b"state".to_vec()));
    drop(store);
}

/// The race the timestamps are for: the old owner passed its epoch check,
/// then lost the partition, and its commit (at offset 20) lands after the new
/// owner claimed at 10. The new owner's commits below 20 are not refused as
/// a regress, cannot move the checkpoint back, and cannot overwrite the old
/// owner's newer rows; once past 20, the new owner's rows are the views.
/// (Row values follow one log: people_sampled is 1 at 10, 4 at 15, 5 at 20,
/// 6 at 30, as any owner computes them.)
#[test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
fn a_stale_owners_late_commit_is_neither_lost_nor_a_regress() {
    let nodes = server("a_stale_owners_late_commit_is_neither_lost_nor_a_regress");
    let s = settings(&nodes);
    let mut old = open(&s);
    let a = old.claim(&v1(), 2).unwrap();
    old.commit(&v1(), 2, a.epoch, &[city(1)], 10, Some(b"at 10")).unwrap();
    let mut new = open(&s);
    let b = new.claim(&v1(), 2).unwrap();
    assert_eq!(b.checkpoint.unwrap().next_offset, 10);
    // Checked, the old owner's commit is refused ...
    assert!(old.commit(&v1(), 2, a.epoch, &[city(5)], 20, None).unwrap_err().is_fenced());
    // ... but one that passed its check before the claim still lands.
    old.commit_as_if_checked_before_a_claim(&v1(), 2, a.epoch, &[city(5)], 20, Some(b"at 20"))
        .unwrap();
    new.commit(&v1(), 2, b.epoch, &[city(4)], 15, Some(b"at 15")).unwrap();
    let views = new.views().unwrap();
    assert_eq!(views.city(day()).unwrap().people_sampled, 5, "the newer truth stays");
    let cp = new.checkpoint(&v1(), 2).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().bytes), (20, b"at 20".to_vec()));
    new.commit(&v1(), 2, b.epoch, &[city(5)], 20, None).unwrap();
    new.commit(&v1(), 2, b.epoch, &[city(6)], 30, Some(b"at 30")).unwrap();
    assert_eq!(new.views().unwrap().city(day()).unwrap().people_sampled, 6);
    assert_eq!(new.offsets(&v1()).unwrap(), vec![(2, 30)]);
    // A late write of an old snapshot is shadowed by the newer one's delete.
    old.commit_as_if_checked_before_a_claim(
        &v1(),
        2,
        a.epoch,
        &[city(4)],
        15,
        Some(b"at 15 again"),
    )
    .unwrap();
    let cp = new.checkpoint(&v1(), 2).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().bytes), (30, b"at 30".to_vec()));
    assert_eq!(new.views().unwrap().city(day()).unwrap().people_sampled, 6);
    // A regress by the owner itself is still refused.
    let err = new.commit(&v1(), 2, b.epoch, &[city(9)], 29, None).unwrap_err();
    assert!(matches!(err, StoreError::Regress { stored: 30, offered: 29, .. }), "{err}");
}

/// A second keyspace for another topic is refused, by name.
#[test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
fn a_keyspace_keeps_its_topic() {
    let nodes = server("a_keyspace_keeps_its_topic");
    let s = settings(&nodes);
    drop(open(&s));
    let err = ScyllaStore::open(&s, "other-topic").unwrap_err();
    assert!(matches!(err, StoreError::OtherTopic { .. }), "{err}");
}

/// A dropped version's deletes are stamped above every offset's timestamp:
/// a stale writer's commit into it that lands after the drop (it passed its
/// checks before) stays deleted, and the name made again starts empty.
#[test]
#[ignore = "needs a ScyllaDB: set SWABSTREAM_TEST_SCYLLA=host:9042 and run with --run-ignored all"]
fn a_late_write_to_a_dropped_version_stays_deleted() {
    let nodes = server("a_late_write_to_a_dropped_version_stays_deleted");
    let s = settings(&nodes);
    let mut store = open(&s);
    let old = store.create_version("v2").unwrap();
    let c = store.claim(&old, 0).unwrap();
    store.commit(&old, 0, c.epoch, &[city(3)], 10, Some(b"at 10")).unwrap();
    store.drop_version("v2").unwrap();
    assert_eq!(store.registry().unwrap().dropping.len(), 0, "the drop finished");
    let mut stale = open(&s);
    stale
        .commit_as_if_checked_before_a_claim(&old, 0, c.epoch, &[city(9)], 1_000_000, Some(b"late"))
        .unwrap();
    assert_eq!(store.version_views(&old).unwrap(), swabstream_views::ViewSet::default());
    assert_eq!(store.checkpoint(&old, 0).unwrap(), None);
    let new = store.create_version("v2").unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(store.version_views(&new).unwrap(), swabstream_views::ViewSet::default());
    assert!(store.partitions(&new).unwrap().is_empty());
}
