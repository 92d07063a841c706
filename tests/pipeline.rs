//! The pipeline end to end, as operators run it: `swabstream broker`,
//! `publish` and `run` as child processes on loopback, against the real
//! embedded broker and the real view store, each test with its own broker,
//! topics and store.

mod common;

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Broker, Env, assert_views_equal, end_offsets, line_count, read_topic, split, wait_until,
};
use rand::Rng;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use swabstream_events::Timestamp;
use swabstream_store::ViewStore as _;
use swabstream_views::ViewSet;

fn stop(child: &mut std::process::Child) {
    // SIGTERM: the worker commits what it applied and leaves its group.
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "the worker stopped with {status}");
}

#[test]
fn publish_run_views_equal_truth_and_replay_equals_live() {
    let broker = Broker::start("basic");
    let env = Env::new("basic", &broker.addr, 3);
    let (events, truth) = env.simulate(3000, 11);
    let o = env.publish(&events);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("published {} events", line_count(&events))), "{err}");

    let o = env.run(&["run", "--until-caught-up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_views_equal(&env.views(), &truth, "views after one run");

    // Keyed by person_ref with Kafka's own partitioner: one person, one partition.
    for r in read_topic(&broker.addr, &env.topic, 3) {
        let key = r.key.expect("every event is keyed");
        assert_eq!(r.partition, swabstream_kafka::partition_of(&key, 3));
    }

    // Every rejected record is in the DLQ once, with its reason and origin.
    let dlq = read_topic(&broker.addr, &env.dlq, 3);
    let rejected: u64 = truth.rejections_daily.iter().map(|r| r.count).sum();
    assert_eq!(dlq.len() as u64, rejected);
    for d in &dlq {
        let h = |k: &str| d.headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.clone());
        assert!(h("reason").is_some() && h("source_partition").is_some());
        assert!(h("source_offset").unwrap().parse::<i64>().is_ok());
    }

    // The live views again, rebuilt from the log into a fresh store.
    let out = env.dir.join("replayed.db");
    let o = env.run(&["replay", "--out", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("the rebuilt views equal the live views"), "{text}");
    let replayed = swabstream_store_sqlite::SqliteStore::open_existing(&out, &env.topic)
        .unwrap()
        .views()
        .unwrap();
    assert_eq!(replayed, env.views());

    // A replay from an offset covers less of the log, and says so.
    let out = env.dir.join("partial.db");
    let o = env.run(&["replay", "--from-offset", "100", "--out", out.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("did not start at the beginning"));
}

/// A GET on loopback, returning the body.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

#[test]
fn a_running_worker_serves_prometheus_metrics_and_logs_json() {
    let broker = Broker::start("metrics");
    let env = Env::new("metrics", &broker.addr, 2);
    let (events, truth) = env.simulate(1500, 16);
    env.publish(&events);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = env
        .cmd(&["run", "--log-json"])
        .env("SWABSTREAM_METRICS__LISTEN", &addr)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let end = end_offsets(&broker.addr, &env.topic, 2);
    wait_until(Duration::from_secs(60), "the worker applied everything", || {
        env.stored_offsets() >= end
    });
    let rejected: u64 = truth.rejections_daily.iter().map(|r| r.count).sum();
    let mut body = String::new();
    wait_until(Duration::from_secs(20), "the metrics show every record", || {
        body = http_get(&addr, "/metrics").unwrap_or_default();
        body.contains(&format!("swabstream_events_total{{outcome=\"rejected\"}} {rejected}"))
            && body.contains("swabstream_partition_lag{partition=\"1\"} 0")
    });
    assert!(body.contains("swabstream_events_total{outcome=\"accepted\"}"), "{body}");
    assert!(body.contains("swabstream_dlq_records_total{reason="), "{body}");
    assert!(body.contains("swabstream_batch_seconds"), "{body}");
    stop(&mut worker);
    // Every log line is a JSON object.
    let log = env.log("worker");
    assert!(log.lines().count() > 2, "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
}

#[test]
fn garbage_bytes_reach_the_dlq_as_malformed_and_the_partition_keeps_flowing() {
    let broker = Broker::start("garbage");
    let env = Env::new("garbage", &broker.addr, 2);
    let (events, truth) = env.simulate(1000, 12);
    let (first, second) = split(&events, line_count(&events) / 2);
    env.publish(&first);
    let producer: BaseProducer = common::client(&broker.addr).create().unwrap();
    let garbage: [&[u8]; 3] = [b"\xff\x00garbage", b"{\"json\": \"is not the wire form\"}", b""];
    for g in garbage {
        for p in 0..2 {
            producer
                .send(BaseRecord::<[u8], [u8]>::to(&env.topic).partition(p).payload(g))
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    env.publish(&second);

    let o = env.run(&["run", "--until-caught-up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dlq = read_topic(&broker.addr, &env.dlq, 2);
    let malformed: Vec<_> = dlq
        .iter()
        .filter(|d| d.headers.iter().any(|(k, v)| k == "reason" && v == "MALFORMED"))
        .collect();
    assert_eq!(malformed.len(), 6, "three garbage records in each of two partitions");
    for g in garbage {
        assert_eq!(malformed.iter().filter(|d| d.payload == g).count(), 2, "value kept as it was");
    }

    // Malformed records count on the local day of their record timestamp
    // (today); everything else equals the truth, so the events after the
    // garbage were all applied.
    let today = Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64)
        .local_day();
    let mut got = env.views();
    let city_today: u64 =
        got.city_daily.iter().filter(|c| c.day == today).map(|c| c.rejected).sum();
    let malformed_today: u64 = got
        .rejections_daily
        .iter()
        .filter(|r| r.day == today && r.reason == "MALFORMED")
        .map(|r| r.count)
        .sum();
    assert_eq!((city_today, malformed_today), (6, 6));
    got.city_daily.retain(|c| c.day != today);
    got.rejections_daily.retain(|r| r.day != today);
    assert_views_equal(&got, &truth, "views beside the garbage");
}

#[test]
fn exactly_once_when_the_worker_is_killed_at_random_moments() {
    let broker = Broker::start("crash");
    let env = Env::new("crash", &broker.addr, 4);
    // About 1.9 events per person: over 200,000 events.
    let (events, truth) = env.simulate(106_000, 13);
    let total = line_count(&events) as i64;
    assert!(total >= 200_000, "{total} events");
    // Published while the worker runs and dies, a part a round: a worker
    // catches up with a whole day within a few rounds on the embedded
    // broker, and a kill after that proves nothing.
    let mut parts = common::chunks(&events, 10).into_iter();
    let mut publish: Option<std::process::Child> = None;

    let mut rng = common::crash_rng();
    let mut kills_mid_stream = 0;
    let mut rounds = 0;
    while kills_mid_stream < 5 {
        rounds += 1;
        assert!(rounds < 40, "the worker made no progress between kills");
        if let Some(mut p) = publish.take() {
            assert!(p.wait().unwrap().success(), "publish: {}", env.log("publish"));
        }
        publish = parts.next().map(|part| env.spawn_publish(&part));
        let name = format!("worker-{rounds}");
        let mut worker = env.spawn_worker(&name, &[]);
        // A restarted worker gets partitions once the group has given up on
        // the killed one (session.timeout.ms); kill it at a random moment after.
        wait_until(Duration::from_secs(60), "the restarted worker holds partitions", || {
            env.log(&name).contains("claimed partition")
        });
        let before = env.stored_offsets();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..6000)));
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
        let after = env.stored_offsets();
        eprintln!("killed the worker with {after} of {total} records committed (was {before})");
        if after > before && after < total {
            kills_mid_stream += 1;
        }
    }
    if let Some(mut p) = publish.take() {
        assert!(p.wait().unwrap().success(), "publish: {}", env.log("publish"));
    }
    for part in parts {
        env.publish(&part);
    }
    let o = env.run(&["run", "--until-caught-up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.stored_offsets(), end_offsets(&broker.addr, &env.topic, 4));
    assert_views_equal(&env.views(), &truth, "views after the kills (lost or counted twice)");
}

#[test]
fn two_workers_split_the_partitions_and_one_takes_over_when_the_other_dies() {
    let broker = Broker::start("pair");
    let env = Env::new("pair", &broker.addr, 4);
    let (events, truth) = env.simulate(6000, 14);
    let (first, second) = split(&events, line_count(&events) / 2);
    env.publish(&first);
    let mut a = env.spawn_worker("a", &[]);
    let mut b = env.spawn_worker("b", &[]);
    let claimed = |log: &str| -> Vec<i32> {
        log.lines()
            .filter(|l| l.contains("claimed partition"))
            .filter_map(|l| l.split("partition=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    // Eager rebalancing: the first member may hold all four for a moment;
    // both hold some once the group settled.
    wait_until(Duration::from_secs(60), "both workers hold partitions", || {
        !claimed(&env.log("a")).is_empty() && !claimed(&env.log("b")).is_empty()
    });
    let first_end = end_offsets(&broker.addr, &env.topic, 4);
    wait_until(Duration::from_secs(120), "the first half is applied", || {
        env.stored_offsets() >= first_end
    });
    a.kill().unwrap();
    a.wait().unwrap();
    let b_claims_before = claimed(&env.log("b")).len();
    env.publish(&second);
    let end = end_offsets(&broker.addr, &env.topic, 4);
    wait_until(Duration::from_secs(120), "the survivor applied everything", || {
        env.stored_offsets() >= end
    });
    let b_claims: Vec<i32> = claimed(&env.log("b"))[b_claims_before..].to_vec();
    let mut taken: Vec<i32> = b_claims.clone();
    taken.sort_unstable();
    taken.dedup();
    assert_eq!(taken, vec![0, 1, 2, 3], "after the kill, b claimed all partitions: {b_claims:?}");
    stop(&mut b);
    assert_views_equal(&env.views(), &truth, "views after the takeover");
}

#[test]
fn the_worker_waits_out_a_broker_restart() {
    let mut broker = Broker::start("restart");
    let env = Env::new("restart", &broker.addr, 2);
    let (events, truth) = env.simulate(4000, 15);
    let (first, second) = split(&events, line_count(&events) / 2);
    env.publish(&first);
    let mut worker = env.spawn_worker("worker", &[]);
    wait_until(Duration::from_secs(60), "the worker committed something", || {
        env.stored_offsets() > 0
    });
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(worker.try_wait().unwrap().is_none(), "the worker must wait for the broker");
    broker.restart();
    env.publish(&second);
    let end = end_offsets(&broker.addr, &env.topic, 2);
    wait_until(Duration::from_secs(120), "the worker applied everything", || {
        env.stored_offsets() >= end
    });
    stop(&mut worker);
    let views: ViewSet = env.views();
    assert_views_equal(&views, &truth, "views across the broker restart");
}
