//! The checkpoint protocol under crashes, against a real store file: workers
//! that die at any point of a batch — after applying, after the DLQ was
//! acknowledged, after the commit — and are replaced by new ones that claim
//! the partition, end with views equal to the truth, no DLQ record lost, and
//! views that never step back while a successor rebuilds its state.

use std::collections::BTreeSet;
use std::path::PathBuf;

use proptest::prelude::*;
use swabstream_core::placement::partition_of;
use swabstream_core::{CoreConfig, Outcome, PartitionState, Placement, Record};
use swabstream_events::Timestamp;
use swabstream_events::avro::Codec;
use swabstream_pipeline::{CommitJob, Committed, PartitionRunner, Resume};
use swabstream_sim::{SimConfig, simulate};
use swabstream_store::faulty::Faulty;
use swabstream_store::{StoreError, Version, ViewStore};
use swabstream_store_sqlite::SqliteStore;
use swabstream_views::ViewSet;

/// The version a new store starts with, live.
fn v1() -> Version {
    Version { name: "v1".into(), id: 1 }
}

const PARTITIONS: usize = 2;

struct Day {
    /// Each partition's records: key (the hex `person_ref`) and value.
    logs: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    truth: ViewSet,
    ts: Timestamp,
    /// (partition, offset) of every record the rules reject.
    rejected: BTreeSet<(i32, i64)>,
}

fn day(people: u64, seed: u64) -> Day {
    let cfg = SimConfig { people, seed, ..SimConfig::default() };
    let sim = simulate(&cfg);
    let mut logs = vec![Vec::new(); PARTITIONS];
    for e in &sim.events {
        let mut b = Vec::new();
        Codec::shared().encode(e, &mut b);
        let key = e.person_ref.to_hex().into_bytes();
        logs[partition_of(&key, PARTITIONS as u32) as usize].push((key, b));
    }
    let ts = cfg.day.start().plus_secs(2 * 86_400);
    let mut rejected = BTreeSet::new();
    for (p, log) in logs.iter().enumerate() {
        let mut s = PartitionState::new(CoreConfig::default());
        s.set_placement(Placement::new(p as i32, PARTITIONS as i32));
        for (o, (k, b)) in log.iter().enumerate() {
            let r = Record { offset: o as i64, timestamp: ts, key: Some(k), payload: Some(b) };
            if let Outcome::Rejected(_) = s.apply(r, &mut Vec::new()) {
                rejected.insert((p as i32, o as i64));
            }
        }
    }
    Day { logs, truth: sim.truth, ts, rejected }
}

fn temp_db(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("swabstream-pipeline-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("views.db")
}

/// Where in a batch a worker dies.
#[derive(Clone, Copy, Debug)]
enum DiesAfter {
    Apply,
    DlqAck,
    Commit,
}

/// How a worker commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commits {
    /// Each batch's commit before the next batch is applied.
    AtOnce,
    /// As the worker's committer thread does: batch n's commit is taken once
    /// its DLQ records are acknowledged and written after batch n+1 was
    /// applied. A death after applying loses the commit in flight; a death
    /// after the acknowledgement comes once it was written; a death after
    /// the commit loses the one just taken.
    ABatchLate,
}

/// Runs workers over every partition, each dying at the given (batch, point)
/// of its life, until one reaches the end. Returns the acknowledged DLQ
/// records (partition, offset), in order, duplicates kept.
fn run_with_crashes(
    d: &Day,
    db: &std::path::Path,
    batch: usize,
    every: usize,
    crashes: &[(usize, DiesAfter)],
    commits: Commits,
) -> Vec<(i32, i64)> {
    let mut store = SqliteStore::open(db, "sampling-events").unwrap();
    let mut dlq_acked = Vec::new();
    for (p, log) in d.logs.iter().enumerate() {
        let p = p as i32;
        let mut lives = crashes.iter().copied().map(Some).chain(std::iter::once(None));
        'lives: for crash in &mut lives {
            let (mut runner, resume) = PartitionRunner::claim(
                &mut store,
                &v1(),
                p,
                PARTITIONS as i32,
                CoreConfig::default(),
            )
            .unwrap();
            let mut pos = match resume {
                Resume::Beginning => 0,
                Resume::At(o) => o as usize,
            };
            let mut n = 0;
            let mut seen_people =
                store.views().unwrap().city_daily.iter().map(|r| r.people_sampled).sum::<u64>();
            let mut in_flight = None;
            let mut written = |store: &SqliteStore, committed: Committed| {
                if let Committed::Written { .. } = committed {
                    // While a successor rebuilds, the views never step back.
                    let now = store
                        .views()
                        .unwrap()
                        .city_daily
                        .iter()
                        .map(|r| r.people_sampled)
                        .sum::<u64>();
                    assert!(now >= seen_people, "views stepped back: {now} < {seen_people}");
                    seen_people = now;
                }
            };
            while pos < log.len() {
                let end = (pos + batch).min(log.len());
                let records: Vec<Record<'_>> = (pos..end)
                    .map(|o| Record {
                        offset: o as i64,
                        timestamp: d.ts,
                        key: Some(&log[o].0),
                        payload: Some(&log[o].1),
                    })
                    .collect();
                let (dlq, _) = runner.apply(&records);
                if matches!(crash, Some((b, DiesAfter::Apply)) if b == n) {
                    continue 'lives;
                }
                if let Some(job) = in_flight.take().filter(|_| commits == Commits::ABatchLate) {
                    let job: CommitJob = job;
                    let committed = job.write(&mut store).unwrap();
                    written(&store, committed);
                }
                dlq_acked.extend(dlq.iter().map(|r| (p, r.offset)));
                if matches!(crash, Some((b, DiesAfter::DlqAck)) if b == n) {
                    continue 'lives;
                }
                match commits {
                    Commits::AtOnce => {
                        let committed = runner.commit(&mut store, n % every == 0).unwrap();
                        written(&store, committed);
                    }
                    Commits::ABatchLate => in_flight = runner.take_commit(n % every == 0).ok(),
                }
                if matches!(crash, Some((b, DiesAfter::Commit)) if b == n) {
                    continue 'lives;
                }
                pos = end;
                n += 1;
            }
            if let Some(job) = in_flight {
                let committed = job.write(&mut store).unwrap();
                written(&store, committed);
            }
            break;
        }
    }
    dlq_acked
}

fn check(d: &Day, db: &std::path::Path, acked: &[(i32, i64)]) {
    let store = SqliteStore::open(db, "sampling-events").unwrap();
    let diffs = store.views().unwrap().differences(&d.truth);
    assert!(diffs.is_empty(), "views differ from the truth:\n{}", diffs.join("\n"));
    let distinct: BTreeSet<(i32, i64)> = acked.iter().copied().collect();
    assert_eq!(distinct, d.rejected, "every rejected record reached the DLQ, and nothing else");
}

#[test]
fn without_crashes_views_equal_truth_and_every_rejection_is_dead_lettered_once() {
    let d = day(2_000, 3);
    for commits in [Commits::AtOnce, Commits::ABatchLate] {
        let db = temp_db(&format!("clean-{commits:?}"));
        let acked = run_with_crashes(&d, &db, 128, 4, &[], commits);
        check(&d, &db, &acked);
        assert_eq!(acked.len(), d.rejected.len(), "no crash, no DLQ duplicates");
    }
}

#[test]
fn a_fenced_worker_cannot_commit() {
    let d = day(300, 4);
    let db = temp_db("fenced");
    let mut store = SqliteStore::open(&db, "sampling-events").unwrap();
    let (mut old, _) =
        PartitionRunner::claim(&mut store, &v1(), 0, PARTITIONS as i32, CoreConfig::default())
            .unwrap();
    let mut other = SqliteStore::open(&db, "sampling-events").unwrap();
    let (_new, _) =
        PartitionRunner::claim(&mut other, &v1(), 0, PARTITIONS as i32, CoreConfig::default())
            .unwrap();
    let records: Vec<Record<'_>> = d.logs[0]
        .iter()
        .enumerate()
        .map(|(o, (k, b))| Record {
            offset: o as i64,
            timestamp: d.ts,
            key: Some(k),
            payload: Some(b),
        })
        .collect();
    old.apply(&records);
    let err = old.commit(&mut store, false).unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(store.views().unwrap().city_daily.is_empty(), "the fenced worker wrote nothing");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn crashes_anywhere_lose_nothing_and_count_nothing_twice(
        batch in 16usize..200,
        every in 1usize..6,
        crashes in prop::collection::vec((0usize..12, prop_oneof![Just(DiesAfter::Apply), Just(DiesAfter::DlqAck), Just(DiesAfter::Commit)]), 1..6),
        seed in 1u64..1000,
        late in any::<bool>(),
    ) {
        let d = day(1_500, seed);
        let db = temp_db(&format!("crash-{seed}-{batch}-{late}"));
        let commits = if late { Commits::ABatchLate } else { Commits::AtOnce };
        let acked = run_with_crashes(&d, &db, batch, every, &crashes, commits);
        check(&d, &db, &acked);
        // Duplicates in the DLQ come only from deaths between the
        // acknowledgement and the commit (a batch late, every death can fall there).
        if !late && !crashes.iter().any(|(_, c)| matches!(c, DiesAfter::DlqAck)) {
            prop_assert_eq!(acked.len(), d.rejected.len());
        }
    }
}

/// The real store with one fault: it refuses every commit carrying a
/// snapshot, as a store does whose snapshot is past its value limit or whose
/// disk cannot take it.
fn refuses_snapshots(store: SqliteStore) -> Faulty<SqliteStore> {
    Faulty::new(store).on_commit(|store, c| {
        if c.snapshot.is_some() {
            return Err(StoreError::Backend {
                store: "test",
                transient: false,
                error: "string or blob too big".into(),
            });
        }
        c.send(store)
    })
}

#[test]
fn a_snapshot_the_store_cannot_take_does_not_stop_the_partition() {
    let d = day(800, 9);
    let db = temp_db("snapshot-refused");
    let mut store = refuses_snapshots(SqliteStore::open(&db, "sampling-events").unwrap());
    let log = &d.logs[0];
    let (mut runner, _) =
        PartitionRunner::claim(&mut store, &v1(), 0, PARTITIONS as i32, CoreConfig::default())
            .unwrap();
    for (n, chunk) in (0..log.len()).collect::<Vec<_>>().chunks(100).enumerate() {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .map(|&o| Record {
                offset: o as i64,
                timestamp: d.ts,
                key: Some(&log[o].0),
                payload: Some(&log[o].1),
            })
            .collect();
        runner.apply(&records);
        match runner.commit(&mut store, n % 2 == 0).unwrap() {
            Committed::SnapshotFailed { next_offset, error, .. } => {
                assert_eq!(next_offset, chunk[chunk.len() - 1] as i64 + 1);
                assert!(error.contains("too big"), "{error}");
                assert_eq!(n % 2, 0);
            }
            Committed::Written { snapshot, .. } => assert!(!snapshot),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Rows and offsets went on; the partition never got a snapshot, so a
    // successor rebuilds from the beginning — and still gets the truth.
    assert_eq!(store.offsets(&v1()).unwrap(), vec![(0, log.len() as i64)]);
    assert_eq!(store.checkpoint(&v1(), 0).unwrap().unwrap().snapshot, None);
    let mut plain = SqliteStore::open(&db, "sampling-events").unwrap();
    let (mut next, resume) =
        PartitionRunner::claim(&mut plain, &v1(), 0, PARTITIONS as i32, CoreConfig::default())
            .unwrap();
    assert_eq!(resume, Resume::Beginning);
    let records: Vec<Record<'_>> = (0..log.len())
        .map(|o| Record {
            offset: o as i64,
            timestamp: d.ts,
            key: Some(&log[o].0),
            payload: Some(&log[o].1),
        })
        .collect();
    next.apply(&records);
    assert!(matches!(
        next.commit(&mut plain, true).unwrap(),
        Committed::Replaying { .. } | Committed::Written { .. }
    ));
    let mut one = SqliteStore::open(&temp_db("snapshot-refused-ref"), "sampling-events").unwrap();
    let (mut reference, _) =
        PartitionRunner::claim(&mut one, &v1(), 0, PARTITIONS as i32, CoreConfig::default())
            .unwrap();
    reference.apply(&records);
    reference.commit(&mut one, false).unwrap();
    assert_eq!(plain.views().unwrap(), one.views().unwrap());
}
