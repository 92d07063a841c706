//! The embedded store against a real SQLite file per test: the shared
//! behaviour suite every view store runs, then what is SQLite's own.

use std::path::PathBuf;

use swabstream_events::Day;
use swabstream_store::suite::Opener;
use swabstream_store::{StoreError, Version, ViewStore};
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

fn v1() -> Version {
    Version { name: "v1".into(), id: 1 }
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
fn the_sum_is_what_an_sql_shell_sees() {
    let path = temp_db("sum");
    let mut s = SqliteStore::open(&path, "sampling-events").unwrap();
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
    let old = s.claim(&v1(), 0).unwrap();
    let snapshot: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    s.commit(&v1(), 0, old.epoch, &[city(3, 1)], 40, Some(&snapshot)).unwrap();
    let mut other = SqliteStore::open_existing(path, "t").unwrap();
    let new = other.claim(&v1(), 0).unwrap();
    let cp = new.checkpoint.unwrap();
    assert_eq!(cp.next_offset, 40);
    assert!(cp.snapshot.unwrap().bytes == snapshot, "the snapshot reads back as written");
    let err = s.commit(&v1(), 0, old.epoch, &[city(9, 9)], 41, None).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    other.commit(&v1(), 0, new.epoch, &[city(4, 2)], 41, None).unwrap();
    assert_eq!(s.views().unwrap().city(day()).unwrap().people_sampled, 4);
    assert_eq!(s.offsets(&v1()).unwrap(), vec![(0, 41)]);
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
    // A newer build's file is refused, and left as it is.
    sql(&path, "UPDATE meta SET value = '4' WHERE key = 'schema_version'");
    let err = SqliteStore::open(&path, "t").unwrap_err();
    assert!(matches!(err, StoreError::SchemaVersion { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("schema version 4") && text.contains("writes 3"), "{text}");
    assert!(text.contains("replay"), "{text}");
    sql(&path, "UPDATE meta SET value = '1' WHERE key = 'schema_version'");
    assert!(matches!(SqliteStore::open(&path, "t"), Err(StoreError::SchemaVersion { .. })));
}

/// A file written by the build before versions (schema 2): its rows,
/// checkpoints, epochs and snapshots become version `v1`, live, and a
/// worker resumes where it was.
#[test]
fn a_schema_2_store_is_migrated_into_v1_live() {
    let path = temp_db("migrate");
    sql(&path, include_str!("schema-v2.sql"));
    let snapshot: Vec<u8> = (0..(5 << 20)).map(|i: u32| (i % 13) as u8).collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let conn = libsql::Builder::new_local(&path).build().await.unwrap().connect().unwrap();
        conn.execute_batch(
            "INSERT INTO meta VALUES ('schema_version', '2'), ('topic', 't'), ('partitions', '2');
             INSERT INTO checkpoint VALUES (0, 120, 3, 1000, 1000, 100, 2, 5242880, NULL, 1000);
             INSERT INTO checkpoint VALUES (1, 7, 1, 1000, 1000, NULL, NULL, NULL, NULL, NULL);
             INSERT INTO city_daily_part VALUES (0, '2022-04-09', 4, 3, 5, 1, 2, 1);
             INSERT INTO city_daily_part VALUES (1, '2022-04-09', 1, 0, 1, 0, 0, 0);
             INSERT INTO site_hourly_part VALUES (1, '2022-04-09', 'S1', 8, 1, 1);
             INSERT INTO rejections_daily_part VALUES (0, '2022-04-09', 'CODE_UNKNOWN', 2);",
        )
        .await
        .unwrap();
        let crc = i64::from(swabstream_store::chunks::Manifest::of(100, &snapshot, 4 << 20).crc32);
        conn.execute("UPDATE checkpoint SET snapshot_crc = ?1 WHERE partition = 0", [crc])
            .await
            .unwrap();
        for (seq, chunk) in snapshot.chunks(4 << 20).enumerate() {
            conn.execute(
                "INSERT INTO snapshot_chunk VALUES (0, 100, ?1, ?2)",
                libsql::params![seq as i64, chunk.to_vec()],
            )
            .await
            .unwrap();
        }
    });
    let before_views = {
        let mut s = SqliteStore::open(&path, "t").unwrap();
        assert_eq!(s.live().unwrap(), v1());
        let v = s.views().unwrap();
        assert_eq!(v.city(day()).unwrap().people_sampled, 5);
        assert_eq!(v.site_hourly.len(), 1);
        assert_eq!(v.rejections_daily[0].count, 2);
        assert_eq!(s.offsets(&v1()).unwrap(), vec![(0, 120), (1, 7)]);
        // The partition count and topic came along.
        s.check_partition_count(2).unwrap();
        assert!(s.check_partition_count(3).is_err());
        // A worker resumes: the epoch goes on from 3, the snapshot reads back.
        let c = s.claim(&v1(), 0).unwrap();
        assert_eq!(c.epoch, 4);
        let cp = c.checkpoint.unwrap();
        assert_eq!(cp.next_offset, 120);
        let snap = cp.snapshot.unwrap();
        assert!(snap.next_offset == 100 && snap.bytes == snapshot);
        s.commit(&v1(), 0, c.epoch, &[city(6, 3)], 130, None).unwrap();
        s.views().unwrap()
    };
    assert_eq!(before_views.city(day()).unwrap().people_sampled, 7);
    // Opened again: migrated once, not twice; the shell's views read v1.
    let s = SqliteStore::open(&path, "t").unwrap();
    assert_eq!(s.views().unwrap(), before_views);
    assert_eq!(s.registry().unwrap().names(), ["v1"]);
    if let Ok(out) = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT value FROM meta WHERE key = 'schema_version'; SELECT people_sampled FROM city_daily")
        .output()
    {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3\n7");
    }
}

/// Two processes opening the same schema-2 file at once: one migrates, the
/// other waits and finds it done.
#[test]
fn a_schema_2_store_opened_by_several_at_once_is_migrated_once() {
    let path = temp_db("migrate-race");
    sql(&path, include_str!("schema-v2.sql"));
    sql(
        &path,
        "INSERT INTO meta VALUES ('schema_version', '2'), ('topic', 't');
         INSERT INTO checkpoint VALUES (0, 9, 2, 1000, 1000, NULL, NULL, NULL, NULL, NULL);
         INSERT INTO city_daily_part VALUES (0, '2022-04-09', 4, 3, 5, 1, 2, 1);",
    );
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = SqliteStore::open(&path, "t").unwrap();
                (s.views().unwrap(), s.offsets(&v1()).unwrap())
            })
        })
        .collect();
    for o in openers {
        let (views, offsets) = o.join().unwrap();
        assert_eq!(views.city(day()).unwrap().people_sampled, 4);
        assert_eq!(offsets, vec![(0, 9)]);
    }
}

#[test]
fn a_damaged_snapshot_is_refused_not_restored() {
    let path = temp_db("damaged");
    let mut s = SqliteStore::open(&path, "t").unwrap();
    let c = s.claim(&v1(), 0).unwrap();
    let snapshot: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 7) as u8).collect();
    s.commit(&v1(), 0, c.epoch, &[city(1, 1)], 5, Some(&snapshot)).unwrap();
    sql(&path, "DELETE FROM snapshot_chunk WHERE seq = 1");
    let err = s.checkpoint(&v1(), 0).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("snapshot at offset 5"), "{err}");
    // The rows and the offset are still there for readers.
    assert_eq!(s.offsets(&v1()).unwrap(), vec![(0, 5)]);
}
