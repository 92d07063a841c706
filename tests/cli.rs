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

/// The embedded broker's two engines keep different files; a data directory
/// made by one is refused by the other with a message naming both and the
/// setting that opens it, and nothing in it is touched.
#[test]
fn a_data_directory_of_the_other_broker_engine_is_refused_by_name() {
    for (made_by, then) in [("sqlite", "slatedb"), ("slatedb", "sqlite")] {
        let dir = temp_dir(&format!("engine-{made_by}"));
        let out = dir.join("sim");
        let o = swabstream(
            &["simulate", "--people", "200", "--seed", "3", "--out", out.to_str().unwrap()],
            &[],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let events = out.join("events.jsonl");
        let with = |engine: &str| {
            vec![
                ("SWABSTREAM_DATA_DIR", dir.to_str().unwrap().to_owned()),
                ("SWABSTREAM_KAFKA__EMBEDDED_STORAGE", engine.to_owned()),
            ]
        };
        let run = |args: &[&str], engine: &str| {
            let env = with(engine);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            swabstream(args, &env)
        };
        let o = run(&["publish", events.to_str().unwrap()], made_by);
        assert!(o.status.success(), "{made_by}: {}", String::from_utf8_lossy(&o.stderr));
        let offsets = run(&["topic", "offsets", "--json"], made_by);
        assert!(offsets.status.success(), "{}", String::from_utf8_lossy(&offsets.stderr));

        let o = run(&["topic", "offsets"], then);
        assert!(!o.status.success(), "{then} opened a {made_by} data directory");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("made by the {made_by} engine")), "{err}");
        assert!(err.contains(&format!("kafka.embedded_storage = \"{made_by}\"")), "{err}");
        assert!(!err.contains("panicked"), "{err}");

        // The log is as it was.
        let again = run(&["topic", "offsets", "--json"], made_by);
        assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
        assert_eq!(again.stdout, offsets.stdout, "{made_by}: the log after the refusal");
    }
}

/// The version commands on a store file, without a broker: names checked,
/// unknown ones listed, the live one never dropped, exit statuses as said.
#[test]
fn version_commands_name_what_is_wrong() {
    let dir = temp_dir("versions");
    let db = dir.join("views.db");
    let mut store = SqliteStore::open(&db, "sampling-events").unwrap();
    let v2 = store.create_version("v2").unwrap();
    let claim = store.claim(&v2, 0).unwrap();
    let day = Day::parse("2022-04-09").unwrap();
    let row = ViewRow::CityDaily(CityDaily { day, people_sampled: 4, ..CityDaily::default() });
    store.commit(&v2, 0, claim.epoch, &[row], 10, None).unwrap();
    drop(store);
    let env = [("SWABSTREAM_STORE__PATH", db.to_str().unwrap())];
    let run = |args: &[&str]| {
        let o = swabstream(args, &env);
        let text =
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        (o.status.code(), text)
    };
    let (code, text) = run(&["views", "diff", "v1", "v2"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("city_daily: 1 rows") && text.contains("only on the right"), "{text}");
    assert_eq!(run(&["views", "diff", "v2", "v2"]).0, Some(0));
    let (code, text) = run(&["views", "diff", "v1", "nope"]);
    assert_eq!(code, Some(2));
    assert!(text.contains("no version named `nope`; the versions are v1, v2"), "{text}");
    let (code, text) = run(&["views", "--version", "Not/Valid"]);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("`Not/Valid` is not a version name") && text.contains("lowercase"),
        "{text}"
    );
    let (code, text) = run(&["promote"]);
    assert_eq!(code, Some(2), "a name or --back: {text}");
    let (code, text) = run(&["promote", "--back"]);
    assert_eq!(code, Some(2));
    assert!(text.contains("nothing to go back to"), "{text}");
    let (code, text) = run(&["promote", "v2", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let p: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!((p["live"].as_str(), p["was"].as_str()), (Some("v2"), Some("v1")));
    let (_, text) = run(&["views", "--json"]);
    let v: ViewSet = serde_json::from_str(&text).unwrap();
    assert_eq!(v.city(day).unwrap().people_sampled, 4, "the live views are v2's");
    let (code, text) = run(&["versions", "drop", "v2"]);
    assert_eq!(code, Some(2));
    assert!(text.contains("version `v2` is live"), "{text}");
    let (code, text) = run(&["versions", "list"]);
    assert_eq!(code, Some(0));
    assert!(text.lines().any(|l| l.starts_with("v2 ") && l.contains("LIVE")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("v1 ") && l.contains("previous")), "{text}");
    assert!(text.contains("1 partitions, offsets 0:10 (10 records)"), "{text}");
    assert_eq!(run(&["versions", "drop", "v1"]).0, Some(0));
    let (code, text) = run(&["promote", "--back"]);
    assert_eq!(code, Some(2));
    assert!(text.contains("`v1`, which has been dropped"), "{text}");
}
