//! The embedded store against a real SQLite file per test.

use std::path::PathBuf;

use swabstream_events::Day;
use swabstream_store::{StoreError, ViewStore};
use swabstream_views::{CityDaily, DistrictDaily, SiteHourly, ViewRow, ViewSet};

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("swabstream-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("views.db")
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

#[test]
fn partial_rows_of_partitions_sum_into_views() {
    let path = temp_db("sum");
    let mut s = ViewStore::open(&path, "sampling-events").unwrap();
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

    // Anyone with an SQL shell sees the same numbers.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (people, pct) = rt.block_on(async {
        let conn = libsql::Builder::new_local(&path).build().await.unwrap().connect().unwrap();
        let mut rows = conn
            .query("SELECT people_sampled, percent_using_code FROM city_daily", ())
            .await
            .unwrap();
        let r = rows.next().await.unwrap().unwrap();
        (r.get::<i64>(0).unwrap(), r.get::<f64>(1).unwrap())
    });
    assert_eq!((people, pct), (5, 60.0));
    // Including the sqlite3 shell itself, where it is installed.
    if let Ok(out) = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT people_sampled, percent_using_code FROM city_daily")
        .output()
    {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5|60.0");
    }
}

#[test]
fn a_worker_that_lost_its_partition_cannot_write() {
    let path = temp_db("fence");
    let mut s = ViewStore::open(&path, "t").unwrap();
    let old = s.claim(3).unwrap();
    s.commit(3, old.epoch, &[city(1, 1)], 7, Some(b"state at 7")).unwrap();
    // Another worker (another connection to the same file) takes the partition over.
    let mut other = ViewStore::open(&path, "t").unwrap();
    let new = other.claim(3).unwrap();
    assert!(new.epoch > old.epoch);
    let cp = new.checkpoint.unwrap();
    assert_eq!(cp.next_offset, 7);
    assert_eq!(cp.snapshot.unwrap().bytes, b"state at 7");
    let err = s.commit(3, old.epoch, &[city(9, 9)], 8, None).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { partition: 3, .. }), "{err}");
    // The refused commit left nothing behind.
    assert_eq!(other.views().unwrap().city(day()).unwrap().people_sampled, 1);
    other.commit(3, new.epoch, &[city(2, 1)], 9, None).unwrap();
    // A commit without a snapshot keeps the last snapshot.
    let cp = other.checkpoint(3).unwrap().unwrap();
    assert_eq!((cp.next_offset, cp.snapshot.unwrap().next_offset), (9, 7));
}

#[test]
fn checkpoints_never_move_backwards() {
    let path = temp_db("regress");
    let mut s = ViewStore::open(&path, "t").unwrap();
    let c = s.claim(0).unwrap();
    s.commit(0, c.epoch, &[], 100, None).unwrap();
    let err = s.commit(0, c.epoch, &[city(1, 1)], 99, None).unwrap_err();
    assert!(matches!(err, StoreError::Regress { stored: 100, offered: 99, .. }), "{err}");
    assert_eq!(s.views().unwrap(), ViewSet::default());
}

#[test]
fn reading_a_missing_store_says_so_and_creates_nothing() {
    let path = temp_db("missing");
    let err = ViewStore::open_existing(&path, "t").unwrap_err();
    assert!(err.to_string().starts_with("no view store at "), "{err}");
    assert!(!path.exists());
}

#[test]
fn a_store_belongs_to_one_topic() {
    let path = temp_db("topic");
    drop(ViewStore::open(&path, "sampling-events").unwrap());
    let err = ViewStore::open(&path, "other-topic").unwrap_err();
    assert!(err.to_string().contains("holds views of topic `sampling-events`"), "{err}");
}

#[test]
fn a_simulated_day_committed_batch_by_batch_reads_back_as_its_truth() {
    use swabstream_core::{CoreConfig, PartitionState, Record};
    use swabstream_events::avro::Codec;
    use swabstream_sim::{SimConfig, simulate};

    let cfg = SimConfig { people: 3_000, seed: 5, ..SimConfig::default() };
    let sim = simulate(&cfg);
    let ts = cfg.day.start().plus_secs(2 * 86_400);
    let mut partitions: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    for e in &sim.events {
        let mut b = Vec::new();
        Codec::shared().encode(e, &mut b);
        partitions[usize::from(e.person_ref.0[1]) % 3].push(b);
    }
    let path = temp_db("simday");
    let mut store = ViewStore::open(&path, "sampling-events").unwrap();
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

/// What a worker does, end to end: claim, commit rows and a large snapshot,
/// lose the partition to another store on the same file, read views.
fn claim_commit_fence_read(path: &std::path::Path) {
    let mut s = ViewStore::open(path, "t").unwrap();
    let old = s.claim(0).unwrap();
    let snapshot: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    s.commit(0, old.epoch, &[city(3, 1)], 40, Some(&snapshot)).unwrap();
    let mut other = ViewStore::open_existing(path, "t").unwrap();
    let new = other.claim(0).unwrap();
    let cp = new.checkpoint.unwrap();
    assert_eq!(cp.next_offset, 40);
    assert!(cp.snapshot.unwrap().bytes == snapshot, "the snapshot reads back as written");
    let err = s.commit(0, old.epoch, &[city(9, 9)], 41, None).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    other.commit(0, new.epoch, &[city(4, 2)], 41, None).unwrap();
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 4);
    assert_eq!(s.offsets().unwrap(), vec![(0, 41)]);
}

// The store's API is synchronous and needs no runtime, but it may be called
// from inside one (`swabstream views` under a tokio main, say): it then
// blocks the calling thread for each SQLite call, like any blocking I/O.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_inside_a_multi_thread_tokio_runtime() {
    claim_commit_fence_read(&temp_db("tokio-mt"));
}

#[tokio::test(flavor = "current_thread")]
async fn works_from_inside_a_current_thread_tokio_runtime() {
    claim_commit_fence_read(&temp_db("tokio-ct"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_tokio_blocking_threads() {
    let path = temp_db("tokio-blocking");
    tokio::task::spawn_blocking(move || claim_commit_fence_read(&path)).await.unwrap();
}

#[test]
fn concurrent_writers_wait_for_each_other() {
    let path = temp_db("concurrent");
    drop(ViewStore::open(&path, "t").unwrap());
    let workers: Vec<_> = (0..4)
        .map(|p| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = ViewStore::open(&path, "t").unwrap();
                let c = s.claim(p).unwrap();
                for n in 1..=50 {
                    let snapshot = vec![p as u8; 64 << 10];
                    s.commit(p, c.epoch, &[city(n, 0)], n as i64, Some(&snapshot)).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s = ViewStore::open_existing(&path, "t").unwrap();
    assert_eq!(s.offsets().unwrap(), vec![(0, 50), (1, 50), (2, 50), (3, 50)]);
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 200);
}
