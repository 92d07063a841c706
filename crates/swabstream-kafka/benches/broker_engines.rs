//! The embedded broker's storage engines, produce and consume, in one run:
//!
//!     cargo bench -p swabstream-kafka --bench broker_engines -- [records] [partitions,…] [engine,…]
//!
//! Defaults: 300,000 records of 140 bytes, 4 and 16 partitions, slatedb and
//! sqlite. For each engine and partition count, on a fresh durable broker:
//! - produce: `publish`'s producer (idempotent, acks=all, linger 5 ms),
//!   from the first send to the last acknowledgement;
//! - consume: a consumer-group member (the worker's fetch settings for the
//!   embedded broker), from subscribe to the last record.
//!
//! Then, on SlateDB with 12 partitions (the topics' default), what an idle
//! consumer costs the process (broker and client, both in it) over 10 s,
//! at the embedded fetch wait and at librdkafka's default.
//!
//! `LONG=10000000` instead produces that many records to one 4-partition
//! SlateDB topic in ten parts, printing each part's produce rate, then reads
//! them all back: whether anything per partition grows with the log
//! (tansu rewrites a per-partition watermark record, with a timestamp entry
//! per batch, on every produce).
//!
//! It prints figures; it asserts nothing about speed.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use swabstream_broker::{EmbeddedBroker, LogEngine};
use swabstream_kafka::{Cluster, Publisher, Role, TopicSpec, ensure_topics};

const VALUE: usize = 140;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let records: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let partitions: Vec<i32> = args
        .get(1)
        .map_or("4,16", String::as_str)
        .split(',')
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?;
    let engines: Vec<LogEngine> = args
        .get(2)
        .map_or("slatedb,sqlite", String::as_str)
        .split(',')
        .map(|e| e.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Runtime::new()?;

    if let Some(long) = std::env::var("LONG").ok().and_then(|v| v.parse::<u64>().ok()) {
        return long_run(&rt, long);
    }

    println!(
        "{records} records of {VALUE} bytes, keyed; produce = idempotent acks=all, linger 5 ms"
    );
    println!("{:<8} {:>10} {:>14} {:>14}", "engine", "partitions", "produce/s", "consume/s");
    for &engine in &engines {
        for &p in &partitions {
            let (dir, broker, cluster) = fresh(&rt, engine, p)?;
            let produce = produce(&cluster, 0, records)?;
            let consume = consume(&cluster, records, "bench")?;
            println!(
                "{:<8} {:>10} {:>14.0} {:>14.0}",
                engine.name(),
                p,
                records as f64 / produce.as_secs_f64(),
                records as f64 / consume.as_secs_f64()
            );
            rt.block_on(broker.stop());
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    // What a worker's DLQ delivery waits for: a small batch sent and every
    // record of it acknowledged, under one key (one partition) and without
    // keys, as DLQ records go (librdkafka spreads them over the partitions).
    println!(
        "acknowledgement of a send of 100 records and of one (median of 30; idempotent, acks=all):"
    );
    for &engine in &engines {
        let (dir, broker, cluster) = fresh(&rt, engine, 4)?;
        let mut producer = Publisher::new(&cluster)?;
        for (spread, key, size) in [
            ("one key", Some(&b"k"[..]), 100),
            ("no key", None, 100),
            ("one key", Some(&b"k"[..]), 1),
        ] {
            let mut took = Vec::new();
            for round in 0..31 {
                let started = Instant::now();
                for _ in 0..size {
                    producer.send("bench", key, &[b'x'; VALUE], None)?;
                }
                producer.wait(Duration::from_secs(60), || false)?;
                if round > 0 {
                    took.push(started.elapsed());
                }
            }
            took.sort();
            println!(
                "  {:<8} {spread:<8} {size:>3} records: {:.1} ms (max {:.1} ms)",
                engine.name(),
                took[took.len() / 2].as_secs_f64() * 1e3,
                took[took.len() - 1].as_secs_f64() * 1e3
            );
        }
        drop(producer);
        rt.block_on(broker.stop());
        let _ = std::fs::remove_dir_all(dir);
    }

    let (dir, broker, mut cluster) = fresh(&rt, LogEngine::Slatedb, 12)?;
    produce(&cluster, 0, 1000)?;
    for wait in [swabstream_kafka::EMBEDDED_FETCH_WAIT_MS, "500"] {
        cluster.consumer.insert("fetch.wait.max.ms".into(), wait.into());
        let consumer = subscribed(&cluster, &format!("idle-{wait}"))?;
        let mut seen = 0;
        while seen < 1000 {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                seen += 1;
            }
        }
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        while t0.elapsed() < Duration::from_secs(10) {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let share = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
        println!(
            "idle consumer, 12 partitions, fetch.wait.max.ms={wait}: {:.1} % of a core (broker and client)",
            share * 100.0
        );
    }
    rt.block_on(broker.stop());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn fresh(
    rt: &tokio::runtime::Runtime,
    engine: LogEngine,
    partitions: i32,
) -> anyhow::Result<(std::path::PathBuf, EmbeddedBroker, Cluster)> {
    let dir = std::env::temp_dir()
        .join(format!("swabstream-bench-engines-{}-{engine}-{partitions}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = rt.block_on(EmbeddedBroker::open(&dir, engine, 0))?;
    let cluster = Cluster::embedded(broker.bootstrap());
    rt.block_on(ensure_topics(
        &cluster,
        &[TopicSpec { name: "bench".into(), partitions, replication_factor: 1 }],
    ))?;
    Ok((dir, broker, cluster))
}

fn produce(cluster: &Cluster, first: u64, n: u64) -> anyhow::Result<Duration> {
    let mut producer = Publisher::new(cluster)?;
    let value = [b'x'; VALUE];
    let started = Instant::now();
    for i in first..first + n {
        let key = format!("{i:016x}");
        producer.send("bench", Some(key.as_bytes()), &value, None)?;
    }
    producer.wait(Duration::from_secs(1800), || false)?;
    Ok(started.elapsed())
}

fn subscribed(cluster: &Cluster, group: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = cluster
        .config(
            Role::Consumer,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("fetch.max.bytes", "1048576"),
            ],
        )
        .create()?;
    consumer.subscribe(&["bench"])?;
    Ok(consumer)
}

fn consume(cluster: &Cluster, n: u64, group: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let consumer = subscribed(cluster, group)?;
    let mut seen = 0u64;
    let mut bytes = 0u64;
    while seen < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                seen += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("consumer: {e}"),
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "consume stalled");
    }
    std::hint::black_box(bytes);
    let took = started.elapsed();
    std::thread::spawn(move || drop(consumer));
    Ok(took)
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks (100 a second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn long_run(rt: &tokio::runtime::Runtime, total: u64) -> anyhow::Result<()> {
    let (dir, broker, cluster) = fresh(rt, LogEngine::Slatedb, 4)?;
    let part = (total / 10).max(1);
    println!("{total} records of {VALUE} bytes to 4 partitions on SlateDB, in parts of {part}");
    let mut done = 0;
    while done < total {
        let n = part.min(total - done);
        let took = produce(&cluster, done, n)?;
        done += n;
        println!(
            "records {:>9}..{:>9}: produce {:>8.0}/s; log on disk {:.0} MB",
            done - n,
            done,
            n as f64 / took.as_secs_f64(),
            dir_bytes(&dir) as f64 / 1e6
        );
    }
    let took = consume(&cluster, total, "long")?;
    println!("consume all {total}: {:.0}/s", total as f64 / took.as_secs_f64());
    rt.block_on(broker.stop());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
