//! The binary's commands, run as a user runs them: as a child process.

use std::path::PathBuf;

use swabstream_events::Day;
use swabstream_store::ViewStore;
use swabstream_store_sqlite::SqliteStore;
use swabstream_views::{CityDaily, ViewRow, ViewSet};

mod common;

use common::swabstream;

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("cli", name)
}

#[test]
fn simulate_then_process_equals_the_truth() {
    let dir = temp_dir("sim");
    let out = dir.to_str().unwrap();
    let o = swabstream(&["simulate", "--people", "2000", "--seed", "9", "--out", out], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = dir.join("events.jsonl");
    let truth = dir.join("truth.json");
    let o = swabstream(
        &["process", events.to_str().unwrap(), "--truth", truth.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: ViewSet = serde_json::from_slice(&o.stdout).unwrap();
    let expected: ViewSet =
        serde_json::from_str(&std::fs::read_to_string(&truth).unwrap()).unwrap();
    assert_eq!(printed, expected);
}

#[test]
fn process_reports_bad_lines_by_number_keeps_the_rest_and_fails() {
    let dir = temp_dir("bad");
    let file = dir.join("events.jsonl");
    let p = "ab".repeat(32);
    let good = format!(
        r#"{{"type":"SampleScanned","event_id":"e1","person_ref":"{p}","occurred_at":"2022-04-09T08:00:00+08:00","site_id":"S","district":"310104","tube_id":"T","scanner_id":"D","identification":{{"method":"ID_DOCUMENT"}}}}"#
    );
    let bad = good.replace(r#""district":"310104","#, "");
    std::fs::write(&file, format!("{good}\n{bad}\nnot json\n")).unwrap();
    let o = swabstream(&["process", file.to_str().unwrap(), "--csv", "city_daily"], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2: field `district` is missing"), "{err}");
    assert!(err.contains("line 3: not a JSON object"), "{err}");
    let csv = String::from_utf8_lossy(&o.stdout);
    assert!(csv.contains("2022-04-09,1,0,0,1,0,0,0"), "the good line was counted: {csv}");
}

#[test]
fn views_reads_the_store_named_by_the_configuration() {
    let dir = temp_dir("views");
    let db = dir.join("views.db");
    let mut store = SqliteStore::open(&db, "sampling-events").unwrap();
    let live = store.live().unwrap();
    let claim = store.claim(&live, 0).unwrap();
    let day = Day::parse("2022-04-09").unwrap();
    let row = ViewRow::CityDaily(CityDaily {
        day,
        people_sampled: 4,
        using_code: 3,
        valid_scans: 5,
        ..CityDaily::default()
    });
    store.commit(&live, 0, claim.epoch, &[row], 10, None).unwrap();
    drop(store);
    let o = swabstream(&["views", "--json"], &[("SWABSTREAM_STORE__PATH", db.to_str().unwrap())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: ViewSet = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.city(day).unwrap().percent_using_code, Some(75.0));
    let o = swabstream(
        &["views", "--view", "city_daily"],
        &[("SWABSTREAM_STORE__PATH", db.to_str().unwrap())],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("75.00"));
    // A missing store is an error that says what to do, not an empty answer.
    let o =
        swabstream(&["views"], &[("SWABSTREAM_DATA_DIR", dir.join("nowhere").to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no view store at"));
}
