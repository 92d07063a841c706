//! The operators' tools end to end (SPEC §9): `status`, `dlq stats | show |
//! redrive` and `topic offsets | tail`, run as an operator runs them against
//! a broker process, a worker process and the real view store.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Broker, Env, assert_views_equal, end_offsets, read_topic, wait_until};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use swabstream_views::ViewSet;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(env: &Env, args: &[&str]) -> Output {
    let o = env.run(args);
    assert!(o.status.success(), "`{}` failed: {}", args.join(" "), text(&o));
    o
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn rejections_by_reason(v: &ViewSet) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in &v.rejections_daily {
        *m.entry(r.reason.clone()).or_default() += r.count;
    }
    m
}

fn kill(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn status_shows_owners_lag_and_the_dlq_and_fails_without_a_live_owner() {
    let broker = Broker::start("status");
    let env = Env::new("status", &broker.addr, 3);
    let (events, truth) = env.simulate(2000, 21);

    // No store yet: a configuration problem, said as such.
    let o = env.run(&["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    env.publish(&events);
    let mut worker = env
        .cmd(&["run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let end = end_offsets(&broker.addr, &env.topic, 3);
    wait_until(Duration::from_secs(60), "the worker applied everything", || {
        env.stored_offsets() >= end
    });
    let o = env.run(&["status", "--json"]);
    let s = json_of(&o);
    assert_eq!(o.status.code(), Some(0), "{s:#}");
    assert_eq!(s["ok"], json!(true));
    let parts = s["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for p in parts {
        assert_eq!(p["lag"], json!(0), "{p}");
        assert_eq!(p["owner_live"], json!(true), "{p}");
        assert_eq!(p["checkpoint"], p["log_end"], "{p}");
        assert!(p["last_commit_age_s"].as_f64().unwrap() < 60.0, "{p}");
    }
    // DLQ per reason, as the views count rejections.
    let dlq: BTreeMap<String, u64> = serde_json::from_value(s["dlq"].clone()).unwrap();
    assert_eq!(dlq, rejections_by_reason(&truth));
    assert!(s["store"].as_str().unwrap().contains("views.db"), "{s}");
    // The group is described, or said to be unknown (tansu 0.6 cannot).
    assert!(s["group"]["state"].is_string(), "{s}");

    // The table for people says the same.
    let o = env.run(&["status", "--no-dlq"]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && t.contains("live") && t.ends_with("ok\n"), "{t}");

    // The worker dies; more events arrive: no live owner, lag, stalled.
    kill(&mut worker);
    let (more, _) = env.simulate(300, 22);
    env.publish(&more);
    std::thread::sleep(Duration::from_secs(3));
    let o = env.run(&["status", "--json", "--silent-after", "2s", "--stalled-after", "2s"]);
    let s = json_of(&o);
    assert_eq!(o.status.code(), Some(1), "{s:#}");
    assert_eq!(s["ok"], json!(false));
    let parts = s["partitions"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["owner_live"] == json!(false)), "{s:#}");
    assert!(parts.iter().any(|p| p["lag"].as_i64().unwrap() > 0 && p["stalled"] == json!(true)));
    let problems = s["problems"].to_string();
    assert!(problems.contains("no live owner") && problems.contains("stalled"), "{problems}");

    // A bad argument names what is wrong: usage, exit 2.
    let o = env.run(&["status", "--stalled-after", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("`soon` is not a duration"), "{}", text(&o));
}

/// A producer on the test's broker.
fn producer(broker: &str) -> BaseProducer {
    common::client(broker).create().unwrap()
}

#[test]
fn dlq_stats_and_show_count_each_source_record_once() {
    let broker = Broker::start("dlqstats");
    let env = Env::new("dlqstats", &broker.addr, 2);
    let (events, truth) = env.simulate(1500, 23);
    env.publish(&events);
    // A record that is no event: MALFORMED, shown in hex with its detail.
    let p = producer(&broker.addr);
    p.send(BaseRecord::to(&env.topic).key("k").payload(&b"\xc3\x01not avro"[..])).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    ok(&env, &["run", "--until-caught-up"]);

    let mut want = rejections_by_reason(&truth);
    *want.entry("MALFORMED".into()).or_default() += 1;
    let stats = |env: &Env| -> Value { json_of(&ok(env, &["dlq", "stats", "--json"])) };
    let s = stats(&env);
    let by_reason: BTreeMap<String, u64> = serde_json::from_value(s["by_reason"].clone()).unwrap();
    assert_eq!(by_reason, want);

    // At-least-once: some DLQ records written again, as a worker that died
    // after the DLQ acknowledgement and before its commit writes them.
    let dlq = read_topic(&broker.addr, &env.dlq, 2);
    for d in dlq.iter().take(10) {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in &d.headers {
            h = h.insert(rdkafka::message::Header { key: k, value: Some(v) });
        }
        p.send(BaseRecord::<(), [u8]>::to(&env.dlq).payload(&d.payload[..]).headers(h)).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let s2 = stats(&env);
    assert_eq!(s2["by_reason"], s["by_reason"], "copies are not counted");
    assert_eq!(s2["repeats_skipped"], json!(10));
    assert_eq!(s2["copies_read"].as_u64().unwrap(), dlq.len() as u64 + 10);
    let per_day: u64 =
        s2["by_day"].as_array().unwrap().iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(per_day, s2["records"].as_u64().unwrap());
    // A window after everything holds nothing.
    let o = ok(&env, &["dlq", "stats", "--json", "--since", "2099-01-01"]);
    assert_eq!(json_of(&o)["records"], json!(0));

    // show: decoded, with reason and origin, each source record once.
    let o = ok(&env, &["dlq", "show", "--reason", "CODE_EXPIRED", "--json", "--limit", "1000"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, want["CODE_EXPIRED"]);
    for l in &lines {
        assert_eq!(l["reason"], json!("CODE_EXPIRED"));
        assert_eq!(l["event"]["type"], json!("SampleScanned"), "{l}");
        assert!(l["source_partition"].is_i64() && l["source_offset"].is_i64(), "{l}");
        assert!(l["time"].is_string());
    }
    let o = ok(&env, &["dlq", "show", "--reason", "MALFORMED", "--json"]);
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["bytes_hex"], json!("c3016e6f74206176726f"), "{m}");
    assert!(m["detail"].is_string(), "{m}");
    let o = ok(&env, &["dlq", "show", "--limit", "3"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    assert!(String::from_utf8_lossy(&o.stderr).contains("showed 3 of"));

    // Unknown reasons list the reasons; MALFORMED cannot be redriven.
    let o = env.run(&["dlq", "show", "--reason", "LATE"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("the reasons are MALFORMED"), "{}", text(&o));
    let o = env.run(&["dlq", "redrive", "--reason", "MALFORMED"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("MALFORMED records cannot be redriven"), "{}", text(&o));

    // topic offsets and tail cover what kcat is used for here.
    let o = ok(&env, &["topic", "offsets", "--json"]);
    let t = json_of(&o);
    let ends: i64 = t["topic"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high"].as_i64().unwrap())
        .sum();
    assert_eq!(ends, end_offsets(&broker.addr, &env.topic, 2));
    assert!(t["topic"]["partitions"].as_array().unwrap().iter().all(|p| p["lag"] == json!(0)));
    let o = ok(&env, &["topic", "tail", "--from", "beginning", "--limit", "5", "--json"]);
    let tail: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail.len(), 5);
    assert!(tail.iter().all(|r| r["event"]["event_id"].is_string()), "{tail:?}");
    // A DLQ partition holding at least two records: unkeyed DLQ sends are
    // partitioned stickily (one partition for all sent within 10 ms), so a
    // fast worker may leave one partition empty.
    let dlq_now = read_topic(&broker.addr, &env.dlq, 2);
    let p = (0..2)
        .find(|p| dlq_now.iter().filter(|r| r.partition == *p).count() >= 2)
        .expect("a DLQ partition with two records");
    let o = ok(&env, &["topic", "tail", "--dlq", "--from", "-2", "-p", &p.to_string()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2, "DLQ partition {p}");
    let o = env.run(&["topic", "tail", "--from", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
}

const PERSONS: usize = 40;
const DAY: &str = "2022-04-09";

fn person(i: usize) -> String {
    format!("{:064x}", 0xabc0_0000u64 + i as u64)
}

/// `PERSONS` scans by personal code on `DAY`, and (separately) the codes,
/// issued the day before: the code system's events arrived late.
fn write_late_code_day(dir: &Path) -> (PathBuf, PathBuf) {
    let mut scans = String::new();
    let mut codes = String::new();
    for i in 0..PERSONS {
        let code = format!("PER-{i:08}");
        scans += &json!({
            "type": "SampleScanned", "event_id": format!("scan-{i}"), "person_ref": person(i),
            "occurred_at": format!("{DAY}T{:02}:15:00+08:00", 8 + i % 10),
            "site_id": "310101-S0001", "district": "310101", "tube_id": format!("310101-S0001-T{i:04}"),
            "scanner_id": "310101-S0001-D1",
            "identification": {"method": "CODE", "code_id": code},
        })
        .to_string();
        scans.push('\n');
        codes += &json!({
            "type": "CodeIssued", "event_id": format!("code-{i}"), "person_ref": person(i),
            "occurred_at": "2022-04-08T12:00:00+08:00", "code_id": code, "kind": "PERSONAL",
            "channel": "APP",
        })
        .to_string();
        codes.push('\n');
    }
    let (a, b) = (dir.join("scans.jsonl"), dir.join("codes.jsonl"));
    std::fs::write(&a, scans).unwrap();
    std::fs::write(&b, codes).unwrap();
    (a, b)
}

fn city_on(v: &ViewSet, day: &str) -> (u64, u64, u64) {
    let r = v.city_daily.iter().find(|r| r.day.to_string() == day).expect("a row for the day");
    (r.people_sampled, r.valid_scans, r.rejected)
}

fn code_unknown(v: &ViewSet) -> u64 {
    rejections_by_reason(v).get("CODE_UNKNOWN").copied().unwrap_or(0)
}

fn redrive(env: &Env) -> Value {
    json_of(&ok(env, &["dlq", "redrive", "--reason", "CODE_UNKNOWN", "--json"]))
}

#[test]
fn redriving_twice_counts_once_and_a_rejected_again_event_counts_once_when_it_passes() {
    let broker = Broker::start("redrive");
    let env = Env::new("redrive", &broker.addr, 3);
    let (scans, codes) = write_late_code_day(&env.dir);
    let n = PERSONS as u64;
    env.publish(&scans);
    ok(&env, &["run", "--until-caught-up"]);
    assert_eq!(city_on(&env.views(), DAY), (0, 0, n));
    assert_eq!(code_unknown(&env.views()), n);

    // Redriven too early: every scan is rejected again (counted again: it
    // happened), and is a new DLQ record.
    let o = ok(&env, &["dlq", "redrive", "--reason", "CODE_UNKNOWN", "--dry-run", "--json"]);
    assert_eq!(json_of(&o)["redriven"], json!(n));
    assert_eq!(end_offsets(&broker.addr, &env.topic, 3), n as i64, "a dry run publishes nothing");
    assert_eq!(redrive(&env)["redriven"], json!(n));
    ok(&env, &["run", "--until-caught-up"]);
    assert_eq!(city_on(&env.views(), DAY), (0, 0, 2 * n));

    // The codes arrive; redrive: the first redrive's copies are repeats (the
    // same event ids, dropped), the rejected-again ones pass, once each.
    env.publish(&codes);
    let r = redrive(&env);
    assert_eq!(r["redriven"], json!(2 * n), "{r}");
    ok(&env, &["run", "--until-caught-up"]);
    let after = env.views();
    assert_eq!(city_on(&after, DAY), (n, n, 2 * n), "each scan counts once; rejections stay");
    assert_eq!(code_unknown(&after), 2 * n);

    // The same redrive again counts nothing again.
    let r = redrive(&env);
    assert_eq!(r["redriven"], json!(2 * n), "{r}");
    ok(&env, &["run", "--until-caught-up"]);
    let again = env.views();
    assert_eq!(city_on(&again, DAY), (n, n, 2 * n));
    let dups = |v: &ViewSet| v.city_daily.iter().map(|r| r.duplicates).sum::<u64>();
    assert_eq!(dups(&again), dups(&after) + 2 * n, "all dropped by the dedupe");
    let mut without_dups = again.clone();
    for r in &mut without_dups.city_daily {
        r.duplicates = after.city_daily.iter().find(|a| a.day == r.day).map_or(0, |a| a.duplicates);
    }
    assert_views_equal(&without_dups, &after, "views after a repeated redrive");

    // Every redriven record sits in its person's partition, keyed by person_ref.
    let log = read_topic(&broker.addr, &env.topic, 3);
    let redriven: Vec<_> =
        log.iter().filter(|r| r.headers.iter().any(|(k, _)| k == "redriven_from")).collect();
    assert_eq!(redriven.len() as u64, 5 * n);
    for r in redriven {
        let key = r.key.as_deref().unwrap();
        assert_eq!(r.partition, swabstream_kafka::partition_of(key, 3));
    }
    // And the DLQ's stats say what happened: 2n CODE_UNKNOWN records.
    let s = json_of(&ok(&env, &["dlq", "stats", "--json"]));
    assert_eq!(s["by_reason"]["CODE_UNKNOWN"], json!(2 * n));
}

#[test]
fn a_late_code_day_redriven_equals_the_simulators_truth() {
    let broker = Broker::start("lateday");
    let env = Env::new("lateday", &broker.addr, 3);
    let out = env.dir.join("late");
    let o = Command::new(&*common::BIN)
        .args(["simulate", "--people", "3000", "--seed", "31", "--late-data", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let read = |name: &str| -> ViewSet {
        serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap()
    };
    let (truth, before) = (read("truth.json"), read("truth-before-redrive.json"));
    assert!(code_unknown(&before) > 100, "the outage rejects many scans");

    env.publish(&out.join("events.jsonl"));
    ok(&env, &["run", "--until-caught-up"]);
    assert_views_equal(&env.views(), &before, "the late day before the redrive");

    let r = redrive(&env);
    assert_eq!(r["redriven"], json!(code_unknown(&before)), "{r}");
    ok(&env, &["run", "--until-caught-up"]);
    assert_views_equal(&env.views(), &truth, "the late day after redriving CODE_UNKNOWN");
}
