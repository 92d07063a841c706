//! The embedded store against a real SQLite file per test: the shared
//! behaviour suite every view store runs, then what is SQLite's own.

use std::path::PathBuf;

use swabstream_events::Day;
use swabstream_store::suite::Opener;
use swabstream_store::{StoreError, ViewStore};
use swabstream_store_sqlite::SqliteStore;
use swabstream_views::{CityDaily, DistrictDaily, SiteHourly, ViewRow};

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("swabstream-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("views.db")
}

/// A fresh store file per case; each call of the opener is another
/// connection to it, as another worker's would be.
fn fresh(name: &str) -> Opener {
    let path = temp_db(&format!("suite-{name}"));
    Box::new(move || Box::new(SqliteStore::open(&path, "sampling-events").unwrap()))
}

swabstream_store::behaviour_suite!(fresh);

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
fn the_sum_is_what_an_sql_shell_sees() {
    let path = temp_db("sum");
    let mut s = SqliteStore::open(&path, "sampling-events").unwrap();
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
fn reading_a_missing_store_says_so_and_creates_nothing() {
    let path = temp_db("missing");
    let err = SqliteStore::open_existing(&path, "t").unwrap_err();
    assert!(err.to_string().starts_with("no view store at "), "{err}");
    assert!(!path.exists());
}

#[test]
fn a_store_belongs_to_one_topic() {
    let path = temp_db("topic");
    drop(SqliteStore::open(&path, "sampling-events").unwrap());
    let err = SqliteStore::open(&path, "other-topic").unwrap_err();
    assert!(err.to_string().contains("holds views of topic `sampling-events`"), "{err}");
}

/// What a worker does, end to end: claim, commit rows and a large snapshot,
/// lose the partition to another store on the same file, read views.
fn claim_commit_fence_read(path: &std::path::Path) {
    let mut s = SqliteStore::open(path, "t").unwrap();
    let old = s.claim(0).unwrap();
    let snapshot: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    s.commit(0, old.epoch, &[city(3, 1)], 40, Some(&snapshot)).unwrap();
    let mut other = SqliteStore::open_existing(path, "t").unwrap();
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

fn sql(path: &std::path::Path, statement: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let conn = libsql::Builder::new_local(path).build().await.unwrap().connect().unwrap();
        conn.execute_batch(statement).await.unwrap();
    });
}

#[test]
fn a_store_of_another_schema_version_is_refused_by_name() {
    let path = temp_db("version");
    drop(SqliteStore::open(&path, "t").unwrap());
    sql(&path, "UPDATE meta SET value = '1' WHERE key = 'schema_version'");
    let err = SqliteStore::open(&path, "t").unwrap_err();
    assert!(matches!(err, StoreError::SchemaVersion { .. }), "{err}");
    assert!(err.to_string().contains("schema version 1") && err.to_string().contains("replay"));
}

#[test]
fn a_damaged_snapshot_is_refused_not_restored() {
    let path = temp_db("damaged");
    let mut s = SqliteStore::open(&path, "t").unwrap();
    let c = s.claim(0).unwrap();
    let snapshot: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 7) as u8).collect();
    s.commit(0, c.epoch, &[city(1, 1)], 5, Some(&snapshot)).unwrap();
    sql(&path, "DELETE FROM snapshot_chunk WHERE seq = 1");
    let err = s.checkpoint(0).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("snapshot at offset 5"), "{err}");
    // The rows and the offset are still there for readers.
    assert_eq!(s.offsets().unwrap(), vec![(0, 5)]);
}
