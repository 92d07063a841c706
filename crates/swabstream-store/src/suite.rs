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

use crate::{StoreError, ViewStore};

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
    let e0 = s.claim(0).unwrap();
    let e1 = s.claim(1).unwrap();
    assert_eq!(e0.checkpoint, None);
    s.commit(0, e0.epoch, &[city(3, 2)], 10, None).unwrap();
    // An absolute rewrite replaces the partition's row; it does not add to it.
    s.commit(0, e0.epoch, &[city(4, 3)], 12, None).unwrap();
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
    s.commit(1, e1.epoch, &[city(1, 0), site, district], 5, None).unwrap();
    let v = s.views().unwrap();
    let c = v.city(day()).unwrap();
    assert_eq!((c.people_sampled, c.using_code, c.valid_scans), (5, 3, 7));
    assert_eq!(c.percent_using_code, Some(60.0));
    assert_eq!(v.site_hourly.len(), 1);
    assert_eq!(v.district_daily.len(), 1);
    assert_eq!(s.partition_views(0).unwrap().city(day()).unwrap().people_sampled, 4);
    assert_eq!(s.offsets().unwrap(), vec![(0, 12), (1, 5)]);
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
    let a = s.claim(0).unwrap();
    let b = s.claim(5).unwrap();
    s.commit(0, a.epoch, &rows(1), 3, None).unwrap();
    s.commit(5, b.epoch, &rows(10), 4, None).unwrap();
    assert_eq!(s.views().unwrap(), ViewSet::from_rows(rows(11)));
    assert_eq!(s.partition_views(5).unwrap(), ViewSet::from_rows(rows(10)));
    assert_eq!(s.partition_views(1).unwrap(), ViewSet::default());
}

pub fn a_worker_that_lost_its_partition_cannot_write(open: &Opener) {
    let mut s = open();
    let old = s.claim(3).unwrap();
    s.commit(3, old.epoch, &[city(1, 1)], 7, Some(b"state at 7")).unwrap();
    // Another worker (another handle on the same store) takes the partition over.
    let mut other = open();
    let new = other.claim(3).unwrap();
    assert!(new.epoch > old.epoch);
    let cp = new.checkpoint.unwrap();
    assert_eq!(cp.next_offset, 7);
    assert_eq!(cp.snapshot.unwrap().bytes, b"state at 7");
    let err = s.commit(3, old.epoch, &[city(9, 9)], 8, Some(b"stale")).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { partition: 3, .. }), "{err}");
    // The refused commit left nothing behind: rows, offset, snapshot.
    assert_eq!(other.views().unwrap().city(day()).unwrap().people_sampled, 1);
    let cp = other.checkpoint(3).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().bytes), (7, b"state at 7".to_vec()));
    other.commit(3, new.epoch, &[city(2, 1)], 9, None).unwrap();
    // A commit without a snapshot keeps the last snapshot.
    let cp = other.checkpoint(3).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().next_offset), (9, 7));
    // Still refused after the new owner wrote.
    assert!(s.commit(3, old.epoch, &[city(9, 9)], 20, None).unwrap_err().is_fenced());
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 2);
}

pub fn checkpoints_never_move_backwards(open: &Opener) {
    let mut s = open();
    let c = s.claim(0).unwrap();
    s.commit(0, c.epoch, &[], 100, None).unwrap();
    let err = s.commit(0, c.epoch, &[city(1, 1)], 99, None).unwrap_err();
    assert!(matches!(err, StoreError::Regress { stored: 100, offered: 99, .. }), "{err}");
    assert_eq!(s.views().unwrap(), ViewSet::default());
    // The same offset again is a repeat, not a regress (a retried commit).
    s.commit(0, c.epoch, &[city(1, 1)], 100, None).unwrap();
    assert_eq!(s.offsets().unwrap(), vec![(0, 100)]);
}

pub fn snapshots_read_back_whole_and_the_newest_wins(open: &Opener) {
    let mut s = open();
    let c = s.claim(0).unwrap();
    // Larger than any one chunk of either store, and not a multiple of one.
    let big: Vec<u8> = (0..(9 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    s.commit(0, c.epoch, &[city(3, 1)], 40, Some(&big)).unwrap();
    let cp = open().claim(0).unwrap().checkpoint.unwrap();
    let snap = cp.snapshot.unwrap();
    assert_eq!(snap.next_offset, 40);
    assert!(snap.bytes == big, "the snapshot reads back as written");
    // That claim fenced `s`; claim again and write a smaller, newer one.
    let c = s.claim(0).unwrap();
    s.commit(0, c.epoch, &[], 41, Some(b"small")).unwrap();
    let snap = s.checkpoint(0).unwrap().unwrap().snapshot.unwrap();
    assert_eq!((snap.next_offset, snap.bytes.as_slice()), (41, &b"small"[..]));
    let status = s.partitions().unwrap();
    assert_eq!(status[0].snapshot_offset, Some(41));
    assert_eq!(status[0].snapshot_bytes, Some(5));
}

pub fn a_commit_without_rows_moves_the_checkpoint(open: &Opener) {
    let mut s = open();
    let c = s.claim(2).unwrap();
    s.commit(2, c.epoch, &[city(1, 0)], 10, None).unwrap();
    s.commit(2, c.epoch, &[], 15, None).unwrap();
    assert_eq!(s.offsets().unwrap(), vec![(2, 15)]);
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 1);
    let claim = open().claim(2).unwrap();
    assert_eq!(claim.checkpoint, Some(crate::Checkpoint { next_offset: 15, snapshot: None }));
}

pub fn claims_touches_and_partition_status(open: &Opener) {
    let mut a = open();
    let mut b = open();
    let ca = a.claim(0).unwrap();
    let cb = b.claim(1).unwrap();
    let status = a.partitions().unwrap();
    assert_eq!(status.iter().map(|p| p.partition).collect::<Vec<_>>(), [0, 1]);
    assert!(status.iter().all(|p| p.next_offset.is_none() && p.committed_at_ms.is_none()));
    let before = status[0].touched_at_ms;
    a.commit(0, ca.epoch, &[city(1, 1)], 3, Some(b"s")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    a.touch(&[(0, ca.epoch)]).unwrap();
    // A touch with a stale epoch changes nothing.
    let stale_b = b.partitions().unwrap()[1].touched_at_ms;
    a.touch(&[(1, cb.epoch - 1)]).unwrap();
    let status = b.partitions().unwrap();
    let p0 = &status[0];
    assert_eq!((p0.epoch, p0.next_offset, p0.snapshot_offset), (ca.epoch, Some(3), Some(3)));
    assert!(p0.touched_at_ms > before, "touch moved the sign of life");
    assert!(p0.committed_at_ms.is_some() && p0.snapshot_at_ms.is_some());
    assert_eq!(status[1].touched_at_ms, stale_b);
    // Claims are strictly increasing, whoever makes them.
    let again = b.claim(0).unwrap();
    assert!(again.epoch > ca.epoch);
    assert_eq!(b.partitions().unwrap()[0].epoch, again.epoch);
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
                let c = s.claim(p).unwrap();
                for n in 1..=30u64 {
                    let snapshot = (n % 10 == 0).then(|| vec![p as u8; 64 << 10]);
                    s.commit(p, c.epoch, &[city(n, 0)], n as i64, snapshot.as_deref()).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s = open();
    assert_eq!(s.offsets().unwrap(), vec![(0, 30), (1, 30), (2, 30), (3, 30)]);
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 120);
    let snap = s.checkpoint(2).unwrap().unwrap().snapshot.unwrap();
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
        let claim = store.claim(p).unwrap();
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
            store.commit(p, claim.epoch, &state.take_changes(), next, snapshot.as_deref()).unwrap();
        }
    }
    let diffs = store.views().unwrap().differences(&sim.truth);
    assert!(diffs.is_empty(), "{diffs:#?}");
}
