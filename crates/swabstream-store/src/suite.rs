//! The behaviour every view store must show, as one suite that each store's
//! tests run against a real instance of it (a fresh SQLite file, a fresh
//! Scylla keyspace): `behaviour_suite!(open_fresh)` expands to one test per
//! case, where `open_fresh(name)` makes a fresh, empty store and returns a
//! function that opens another handle (another connection, as another worker
//! would) on that same store.

use swabstream_core::{CoreConfig, PartitionState, Record};
use swabstream_events::Day;
use swabstream_events::avro::Codec;
use swabstream_sim::{SimConfig, simulate};
use swabstream_views::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
    ViewSet,
};

use crate::{StoreError, Version, ViewStore};

/// Opens another handle on one store.
pub type Opener = Box<dyn Fn() -> Box<dyn ViewStore>>;

/// Expands to one `#[test]` per case of the suite. `$fresh` is a function
/// `fn(&str) -> Opener`; attributes given first (`#[ignore = "…"]`) go on
/// every test.
#[macro_export]
macro_rules! behaviour_suite {
    ($(#[$attr:meta])* $fresh:path) => {
        $crate::behaviour_suite!(@cases [$(#[$attr])*] $fresh;
            partial_rows_of_partitions_sum_into_views,
            every_view_round_trips,
            a_worker_that_lost_its_partition_cannot_write,
            checkpoints_never_move_backwards,
            snapshots_read_back_whole_and_the_newest_wins,
            a_commit_without_rows_moves_the_checkpoint,
            claims_touches_and_partition_status,
            the_partition_count_is_recorded_and_kept,
            concurrent_writers_of_different_partitions,
            a_simulated_day_committed_batch_by_batch_reads_back_as_its_truth,
            a_new_store_has_v1_live_and_versions_are_isolated,
            promotion_switches_every_reader_at_once_and_back_undoes_it,
            version_names_are_checked_and_unknown_ones_listed,
            a_claim_in_a_version_fences_only_that_versions_writers,
            the_live_version_is_never_dropped_and_a_dropped_name_comes_back_empty,
        );
    };
    (@cases $attrs:tt $fresh:path; $($case:ident),* $(,)?) => {
        $( $crate::behaviour_suite!(@one $attrs $fresh; $case); )*
    };
    (@one [$(#[$attr:meta])*] $fresh:path; $case:ident) => {
        #[test]
        $(#[$attr])*
        fn $case() {
            $crate::suite::$case(&$fresh(stringify!($case)));
        }
    };
}

/// The version every new store starts with, live.
fn v1() -> Version {
    Version { name: crate::versions::FIRST_VERSION.to_owned(), id: 1 }
}

fn day() -> Day {
    Day::parse("2022-04-09").unwrap()
}

fn city(people: u64, code: u64) -> ViewRow {
    ViewRow::CityDaily(CityDaily {
        day: day(),
        people_sampled: people,
        using_code: code,
        valid_scans: people + 1,
        ..CityDaily::default()
    })
}

pub fn partial_rows_of_partitions_sum_into_views(open: &Opener) {
    let mut s = open();
    let e0 = s.claim(&v1(), 0).unwrap();
    let e1 = s.claim(&v1(), 1).unwrap();
    assert_eq!(e0.checkpoint, None);
    s.commit(&v1(), 0, e0.epoch, &[city(3, 2)], 10, None).unwrap();
    // An absolute rewrite replaces the partition's row; it does not add to it.
    s.commit(&v1(), 0, e0.epoch, &[city(4, 3)], 12, None).unwrap();
    let site = ViewRow::SiteHourly(SiteHourly {
        day: day(),
        site_id: "S1".into(),
        hour: 8,
        people_sampled: 1,
        valid_scans: 2,
    });
    let district = ViewRow::DistrictDaily(DistrictDaily {
        day: day(),
        district: "310115".into(),
        people_sampled: 1,
        using_code: 0,
        valid_scans: 2,
        rejected: 0,
    });
    s.commit(&v1(), 1, e1.epoch, &[city(1, 0), site, district], 5, None).unwrap();
    let v = s.views().unwrap();
    let c = v.city(day()).unwrap();
    assert_eq!((c.people_sampled, c.using_code, c.valid_scans), (5, 3, 7));
    assert_eq!(c.percent_using_code, Some(60.0));
    assert_eq!(v.site_hourly.len(), 1);
    assert_eq!(v.district_daily.len(), 1);
    assert_eq!(s.partition_views(&v1(), 0).unwrap().city(day()).unwrap().people_sampled, 4);
    assert_eq!(s.offsets(&v1()).unwrap(), vec![(0, 12), (1, 5)]);
    // Another handle (another process) reads the same.
    assert_eq!(open().views().unwrap(), v);
}

/// Rows of all six views, with every key and value column distinct, read
/// back as written: summed over two partitions, and per partition.
pub fn every_view_round_trips(open: &Opener) {
    let d2 = Day::parse("2022-04-10").unwrap();
    let rows = |k: u64| {
        vec![
            ViewRow::CityDaily(CityDaily {
                day: d2,
                people_sampled: 7 * k,
                using_code: 5 * k,
                percent_using_code: None,
                valid_scans: 9 * k,
                rescans: 2 * k,
                rejected: 3 * k,
                duplicates: k,
            }),
            ViewRow::DistrictDaily(DistrictDaily {
                day: d2,
                district: "310104".into(),
                people_sampled: 4 * k,
                using_code: 3 * k,
                valid_scans: 6 * k,
                rejected: k,
            }),
            ViewRow::SiteHourly(SiteHourly {
                day: d2,
                site_id: "XH-0042 站点".into(),
                hour: 23,
                people_sampled: 2 * k,
                valid_scans: 3 * k,
            }),
            ViewRow::MethodDaily(MethodDaily {
                day: d2,
                method: "CODE_RELATIVE".into(),
                people_sampled: 11 * k,
            }),
            ViewRow::RejectionsDaily(RejectionsDaily {
                day: d2,
                reason: "CODE_NOT_LIVE".into(),
                count: 13 * k,
            }),
            ViewRow::CodesIssuedDaily(CodesIssuedDaily {
                day: d2,
                kind: "PAPER".into(),
                channel: "OFFLINE".into(),
                count: 17 * k,
            }),
        ]
    };
    let mut s = open();
    let a = s.claim(&v1(), 0).unwrap();
    let b = s.claim(&v1(), 5).unwrap();
    s.commit(&v1(), 0, a.epoch, &rows(1), 3, None).unwrap();
    s.commit(&v1(), 5, b.epoch, &rows(10), 4, None).unwrap();
    assert_eq!(s.views().unwrap(), ViewSet::from_rows(rows(11)));
    assert_eq!(s.partition_views(&v1(), 5).unwrap(), ViewSet::from_rows(rows(10)));
    assert_eq!(s.partition_views(&v1(), 1).unwrap(), ViewSet::default());
}

pub fn a_worker_that_lost_its_partition_cannot_write(open: &Opener) {
    let mut s = open();
    let old = s.claim(&v1(), 3).unwrap();
    s.commit(&v1(), 3, old.epoch, &[city(1, 1)], 7, Some(b"state at 7")).unwrap();
    // Another worker (another handle on the same store) takes the partition over.
    let mut other = open();
    let new = other.claim(&v1(), 3).unwrap();
    assert!(new.epoch > old.epoch);
    let cp = new.checkpoint.unwrap();
    assert_eq!(cp.next_offset, 7);
    assert_eq!(cp.snapshot.unwrap().bytes, b"state at 7");
    let err = s.commit(&v1(), 3, old.epoch, &[city(9, 9)], 8, Some(b"stale")).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { partition: 3, .. }), "{err}");
    // The refused commit left nothing behind: rows, offset, snapshot.
    assert_eq!(other.views().unwrap().city(day()).unwrap().people_sampled, 1);
    let cp = other.checkpoint(&v1(), 3).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().bytes), (7, b"state at 7".to_vec()));
    other.commit(&v1(), 3, new.epoch, &[city(2, 1)], 9, None).unwrap();
    // A commit without a snapshot keeps the last snapshot.
    let cp = other.checkpoint(&v1(), 3).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().next_offset), (9, 7));
    // Still refused after the new owner wrote.
    assert!(s.commit(&v1(), 3, old.epoch, &[city(9, 9)], 20, None).unwrap_err().is_fenced());
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 2);
}

pub fn checkpoints_never_move_backwards(open: &Opener) {
    let mut s = open();
    let c = s.claim(&v1(), 0).unwrap();
    s.commit(&v1(), 0, c.epoch, &[], 100, None).unwrap();
    let err = s.commit(&v1(), 0, c.epoch, &[city(1, 1)], 99, None).unwrap_err();
    assert!(matches!(err, StoreError::Regress { stored: 100, offered: 99, .. }), "{err}");
    assert_eq!(s.views().unwrap(), ViewSet::default());
    // The same offset again is a repeat, not a regress (a retried commit).
    s.commit(&v1(), 0, c.epoch, &[city(1, 1)], 100, None).unwrap();
    assert_eq!(s.offsets(&v1()).unwrap(), vec![(0, 100)]);
}

pub fn snapshots_read_back_whole_and_the_newest_wins(open: &Opener) {
    let mut s = open();
    let c = s.claim(&v1(), 0).unwrap();
    // Larger than any one chunk of either store, and not a multiple of one.
    let big: Vec<u8> = (0..(9 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    s.commit(&v1(), 0, c.epoch, &[city(3, 1)], 40, Some(&big)).unwrap();
    let cp = open().claim(&v1(), 0).unwrap().checkpoint.unwrap();
    let snap = cp.snapshot.unwrap();
    assert_eq!(snap.next_offset, 40);
    assert!(snap.bytes == big, "the snapshot reads back as written");
    // That claim fenced `s`; claim again and write a smaller, newer one.
    let c = s.claim(&v1(), 0).unwrap();
    s.commit(&v1(), 0, c.epoch, &[], 41, Some(b"small")).unwrap();
    let snap = s.checkpoint(&v1(), 0).unwrap().unwrap().snapshot.unwrap();
    assert_eq!((snap.next_offset, snap.bytes.as_slice()), (41, &b"small"[..]));
    let status = s.partitions(&v1()).unwrap();
    assert_eq!(status[0].snapshot_offset, Some(41));
    assert_eq!(status[0].snapshot_bytes, Some(5));
}

pub fn a_commit_without_rows_moves_the_checkpoint(open: &Opener) {
    let mut s = open();
    let c = s.claim(&v1(), 2).unwrap();
    s.commit(&v1(), 2, c.epoch, &[city(1, 0)], 10, None).unwrap();
    s.commit(&v1(), 2, c.epoch, &[], 15, None).unwrap();
    assert_eq!(s.offsets(&v1()).unwrap(), vec![(2, 15)]);
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 1);
    let claim = open().claim(&v1(), 2).unwrap();
    assert_eq!(claim.checkpoint, Some(crate::Checkpoint { next_offset: 15, snapshot: None }));
}

pub fn claims_touches_and_partition_status(open: &Opener) {
    let mut a = open();
    let mut b = open();
    let ca = a.claim(&v1(), 0).unwrap();
    let cb = b.claim(&v1(), 1).unwrap();
    let status = a.partitions(&v1()).unwrap();
    assert_eq!(status.iter().map(|p| p.partition).collect::<Vec<_>>(), [0, 1]);
    assert!(status.iter().all(|p| p.next_offset.is_none() && p.committed_at_ms.is_none()));
    let before = status[0].touched_at_ms;
    a.commit(&v1(), 0, ca.epoch, &[city(1, 1)], 3, Some(b"s")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    a.touch(&v1(), &[(0, ca.epoch)]).unwrap();
    // A touch with a stale epoch changes nothing.
    let stale_b = b.partitions(&v1()).unwrap()[1].touched_at_ms;
    a.touch(&v1(), &[(1, cb.epoch - 1)]).unwrap();
    let status = b.partitions(&v1()).unwrap();
    let p0 = &status[0];
    assert_eq!((p0.epoch, p0.next_offset, p0.snapshot_offset), (ca.epoch, Some(3), Some(3)));
    assert!(p0.touched_at_ms > before, "touch moved the sign of life");
    assert!(p0.committed_at_ms.is_some() && p0.snapshot_at_ms.is_some());
    assert_eq!(status[1].touched_at_ms, stale_b);
    // Claims are strictly increasing, whoever makes them.
    let again = b.claim(&v1(), 0).unwrap();
    assert!(again.epoch > ca.epoch);
    assert_eq!(b.partitions(&v1()).unwrap()[0].epoch, again.epoch);
}

pub fn the_partition_count_is_recorded_and_kept(open: &Opener) {
    let mut s = open();
    s.check_partition_count(12).unwrap();
    s.check_partition_count(12).unwrap();
    let err = open().check_partition_count(16).unwrap_err();
    assert!(matches!(err, StoreError::PartitionCount { recorded: 12, found: 16 }), "{err}");
    let text = err.to_string();
    assert!(text.contains("12") && text.contains("16") && text.contains("new topic"), "{text}");
}

pub fn concurrent_writers_of_different_partitions(open: &Opener) {
    let handles: Vec<Box<dyn ViewStore>> = (0..4).map(|_| open()).collect();
    let workers: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(p, mut s)| {
            std::thread::spawn(move || {
                let p = p as i32;
                let c = s.claim(&v1(), p).unwrap();
                for n in 1..=30u64 {
                    let snapshot = (n % 10 == 0).then(|| vec![p as u8; 64 << 10]);
                    s.commit(&v1(), p, c.epoch, &[city(n, 0)], n as i64, snapshot.as_deref())
                        .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s = open();
    assert_eq!(s.offsets(&v1()).unwrap(), vec![(0, 30), (1, 30), (2, 30), (3, 30)]);
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 120);
    let snap = s.checkpoint(&v1(), 2).unwrap().unwrap().snapshot.unwrap();
    assert_eq!((snap.next_offset, snap.bytes), (30, vec![2u8; 64 << 10]));
}

pub fn a_simulated_day_committed_batch_by_batch_reads_back_as_its_truth(open: &Opener) {
    let cfg = SimConfig { people: 3_000, seed: 5, ..SimConfig::default() };
    let sim = simulate(&cfg);
    let ts = cfg.day.start().plus_secs(2 * 86_400);
    let mut partitions: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    for e in &sim.events {
        let mut b = Vec::new();
        Codec::shared().encode(e, &mut b);
        partitions[usize::from(e.person_ref.0[1]) % 3].push(b);
    }
    let mut store = open();
    for (p, payloads) in partitions.iter().enumerate() {
        let p = p as i32;
        let claim = store.claim(&v1(), p).unwrap();
        let mut state = PartitionState::new(CoreConfig::default());
        let records: Vec<Record<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, b)| Record { offset: i as i64, timestamp: ts, key: None, payload: Some(b) })
            .collect();
        for (n, batch) in records.chunks(97).enumerate() {
            state.apply_batch(batch, &mut Vec::new());
            let snapshot = (n % 5 == 0).then(|| state.snapshot());
            let next = state.next_offset().unwrap();
            store
                .commit(&v1(), p, claim.epoch, &state.take_changes(), next, snapshot.as_deref())
                .unwrap();
        }
    }
    let diffs = store.views().unwrap().differences(&sim.truth);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

pub fn a_new_store_has_v1_live_and_versions_are_isolated(open: &Opener) {
    let mut s = open();
    assert_eq!(s.live().unwrap(), v1());
    let r = s.registry().unwrap();
    assert_eq!((r.names(), r.previous.clone()), (vec!["v1".to_owned()], None));
    let c1 = s.claim(&v1(), 0).unwrap();
    s.commit(&v1(), 0, c1.epoch, &[city(5, 1)], 10, Some(b"v1 at 10")).unwrap();
    let v2 = s.create_version("v2").unwrap();
    assert_ne!(v2.id, v1().id);
    assert_eq!(s.version("v2").unwrap(), v2);
    // The new version has nothing of the old: no checkpoint, fresh epochs.
    let c2 = s.claim(&v2, 0).unwrap();
    assert_eq!((c2.epoch, c2.checkpoint), (1, None));
    s.commit(&v2, 0, c2.epoch, &[city(7, 7)], 4, None).unwrap();
    let c2b = s.claim(&v2, 1).unwrap();
    s.commit(&v2, 1, c2b.epoch, &[city(1, 0)], 2, None).unwrap();
    // Readers of the live version see v1 only.
    let other = open();
    assert_eq!(other.views().unwrap().city(day()).unwrap().people_sampled, 5);
    assert_eq!(other.version_views(&v2).unwrap().city(day()).unwrap().people_sampled, 8);
    assert_eq!(other.partition_views(&v2, 0).unwrap().city(day()).unwrap().people_sampled, 7);
    assert_eq!(other.offsets(&v1()).unwrap(), vec![(0, 10)]);
    assert_eq!(other.offsets(&v2).unwrap(), vec![(0, 4), (1, 2)]);
    let cp = other.checkpoint(&v1(), 0).unwrap().unwrap();
    assert_eq!(cp.snapshot.unwrap().bytes, b"v1 at 10");
    assert_eq!(other.checkpoint(&v2, 0).unwrap().unwrap().snapshot, None);
    // The claim in v2 did not fence v1's owner.
    s.commit(&v1(), 0, c1.epoch, &[city(6, 1)], 11, None).unwrap();
    let mut life = other.signs_of_life().unwrap();
    life.sort_by_key(|l| (l.version_id, l.partition));
    let seen: Vec<(i64, i32, i64)> =
        life.iter().map(|l| (l.version_id, l.partition, l.epoch)).collect();
    assert_eq!(seen, [(1, 0, c1.epoch), (v2.id, 0, 1), (v2.id, 1, 1)]);
}

pub fn promotion_switches_every_reader_at_once_and_back_undoes_it(open: &Opener) {
    let mut s = open();
    let c = s.claim(&v1(), 0).unwrap();
    s.commit(&v1(), 0, c.epoch, &[city(3, 0)], 5, None).unwrap();
    let v2 = s.create_version("rebuild-2").unwrap();
    let c = s.claim(&v2, 0).unwrap();
    s.commit(&v2, 0, c.epoch, &[city(9, 0)], 5, None).unwrap();
    let p = s.promote("rebuild-2").unwrap();
    assert_eq!((p.from, p.to.clone()), (v1(), v2.clone()));
    // Every handle, old or new, reads the new live version.
    let other = open();
    assert_eq!(other.live().unwrap(), v2);
    assert_eq!(other.views().unwrap().city(day()).unwrap().people_sampled, 9);
    assert_eq!(other.registry().unwrap().previous.as_deref(), Some("v1"));
    // Promoting the live one again is no change.
    let same = s.promote("rebuild-2").unwrap();
    assert_eq!(same.from, same.to);
    assert_eq!(open().registry().unwrap().previous.as_deref(), Some("v1"));
    // Back: v1 is live again, and back again returns to the rebuild.
    let back = open().promote_back().unwrap();
    assert_eq!((back.from, back.to), (v2.clone(), v1()));
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 3);
    assert_eq!(s.promote_back().unwrap().to, v2);
    assert_eq!(s.live().unwrap(), v2);
}

pub fn version_names_are_checked_and_unknown_ones_listed(open: &Opener) {
    let mut s = open();
    for bad in ["", "V2", "two words", "-x", "x/y", &"n".repeat(33)] {
        let e = s.create_version(bad).unwrap_err();
        assert!(matches!(e, StoreError::VersionName(_)), "{bad}: {e}");
    }
    s.create_version("v2").unwrap();
    let e = s.create_version("v2").unwrap_err();
    assert!(matches!(e, StoreError::VersionExists(ref n) if n == "v2"), "{e}");
    assert!(e.to_string().contains("versions drop v2"), "{e}");
    for e in [
        s.promote("v9").unwrap_err(),
        s.version("v9").unwrap_err(),
        s.drop_version("v9").unwrap_err(),
    ] {
        let text = e.to_string();
        assert!(matches!(e, StoreError::UnknownVersion { .. }), "{e}");
        assert!(text.contains("`v9`") && text.contains("v1, v2"), "{text}");
    }
    // Nothing to go back to in a store never promoted.
    assert!(matches!(s.promote_back().unwrap_err(), StoreError::NoPreviousVersion { .. }));
    assert_eq!(s.live().unwrap(), v1());
}

/// A replay writing a version is fenced by the worker that claims the same
/// partition there (after a promotion), and by nobody else.
pub fn a_claim_in_a_version_fences_only_that_versions_writers(open: &Opener) {
    let mut replay = open();
    let mut worker = open();
    let v2 = replay.create_version("v2").unwrap();
    let w1 = worker.claim(&v1(), 0).unwrap();
    let r2 = replay.claim(&v2, 0).unwrap();
    replay.commit(&v2, 0, r2.epoch, &[city(4, 4)], 40, Some(b"replay at 40")).unwrap();
    worker.commit(&v1(), 0, w1.epoch, &[city(5, 5)], 50, None).unwrap();
    worker.promote("v2").unwrap();
    let w2 = worker.claim(&v2, 0).unwrap();
    assert!(w2.epoch > r2.epoch);
    let cp = w2.checkpoint.unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().bytes), (40, b"replay at 40".to_vec()));
    let e = replay.commit(&v2, 0, r2.epoch, &[city(9, 9)], 45, None).unwrap_err();
    assert!(e.is_fenced(), "{e}");
    worker.commit(&v2, 0, w2.epoch, &[city(6, 6)], 45, None).unwrap();
    assert_eq!(worker.views().unwrap().city(day()).unwrap().people_sampled, 6);
    // The worker's claim in v1 stands: v1 is still its to write (`--back`).
    worker.commit(&v1(), 0, w1.epoch, &[city(5, 5)], 51, None).unwrap();
    assert_eq!(worker.version_views(&v1()).unwrap().city(day()).unwrap().people_sampled, 5);
}

pub fn the_live_version_is_never_dropped_and_a_dropped_name_comes_back_empty(open: &Opener) {
    let mut s = open();
    let old = s.create_version("v2").unwrap();
    let c = s.claim(&old, 0).unwrap();
    s.commit(&old, 0, c.epoch, &[city(8, 1)], 30, Some(b"old v2")).unwrap();
    s.promote("v2").unwrap();
    let e = s.drop_version("v2").unwrap_err();
    assert!(matches!(e, StoreError::VersionIsLive(ref n) if n == "v2"), "{e}");
    s.promote("v1").unwrap();
    assert_eq!(s.drop_version("v2").unwrap(), old);
    let r = open().registry().unwrap();
    assert_eq!(r.names(), ["v1"]);
    // `--back` has nothing to go back to: the previous version is gone.
    let e = s.promote_back().unwrap_err().to_string();
    assert!(e.contains("v2") && e.contains("dropped"), "{e}");
    // A claim in the dropped version is refused, not made anew.
    assert!(matches!(open().claim(&old, 1), Err(StoreError::UnknownVersion { .. })));
    // The name made again is a new version: empty, its epochs afresh, and
    // the old version's writer (same epoch number) cannot write into it.
    let new = s.create_version("v2").unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(s.version_views(&new).unwrap(), ViewSet::default());
    assert_eq!(s.checkpoint(&new, 0).unwrap(), None);
    let fresh = s.claim(&new, 0).unwrap();
    assert_eq!((fresh.epoch, fresh.checkpoint), (c.epoch, None));
    assert!(s.commit(&old, 0, c.epoch, &[city(9, 9)], 31, None).is_err());
    assert_eq!(s.version_views(&new).unwrap(), ViewSet::default());
    assert_eq!(s.partitions(&new).unwrap()[0].next_offset, None);
}
