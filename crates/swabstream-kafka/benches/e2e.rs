//! End-to-end throughput through the embedded broker, against the raw
//! consume rate of the same topic by a bare rdkafka consumer, in one run.
//!
//!     cargo bench -p swabstream-kafka --bench e2e -- [people] [partitions]
//!
//! 1. starts the embedded broker on its default, durable storage (SlateDB;
//!    `ENGINE=sqlite` for the other engine);
//! 2. simulates a day of `people` (default 200,000) and publishes it
//!    (idempotent, acks=all, keyed by person_ref);
//! 3. a bare consumer-group member reads the whole topic, touching every
//!    payload (the raw rate);
//! 4. a worker (`swabstream run --until-caught-up`'s code) applies it into a
//!    fresh view store: decode, dedupe, validate, project, DLQ produce and
//!    acknowledgement, atomic commits of rows and offsets, snapshots;
//! 5. a second worker claims the partitions again: the recovery cost.
//!
//! Both consumers start from a group join, measured from subscribe to the
//! last record. It prints figures; it asserts nothing about speed.
//!
//! `RAW_WITH_DLQ=1` reads the topic twice more with a bare consumer, the
//! second time while a producer sends what the worker's DLQ producer sends
//! beside it: bursts
//! of 370 records (a batch's rejected records at the default batch size),
//! each acknowledged before the next, 20 ms apart, up to the day's DLQ share
//! (2.3 % of its events): the cost to the consumer of that produce on the
//! same embedded broker.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use swabstream_broker::{EmbeddedBroker, LogEngine};
use swabstream_core::CoreConfig;
use swabstream_events::avro::Codec;
use swabstream_kafka::worker::{self, WorkerOptions};
use swabstream_kafka::{Cluster, Publisher, Role, TopicSpec, ensure_topics};
use swabstream_sim::{SimConfig, simulate};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let people: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let partitions: i32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = std::env::temp_dir().join(format!("swabstream-bench-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    // ENGINE=sqlite measures the embedded broker's other engine.
    let engine = LogEngine::from_env("ENGINE").map_err(anyhow::Error::msg)?;
    let broker = rt.block_on(EmbeddedBroker::open(&dir, engine, 0))?;
    let mut cluster = Cluster::embedded(broker.bootstrap());
    // Both consumers read with the worker's fetch size unless told otherwise.
    let fetch_max_bytes = std::env::var("FETCH_MAX_BYTES").unwrap_or_else(|_| "1048576".into());
    cluster.consumer.insert("fetch.max.bytes".into(), fetch_max_bytes.clone());
    let topic = "bench-events";
    let dlq = "bench-dlq";
    rt.block_on(ensure_topics(
        &cluster,
        &[topic, dlq].map(|name| TopicSpec {
            name: name.to_owned(),
            partitions,
            replication_factor: 1,
        }),
    ))?;

    let sim = simulate(&SimConfig { people, ..SimConfig::default() });
    let n = sim.events.len() as u64;
    let started = Instant::now();
    let mut producer = Publisher::new(&cluster)?;
    let codec = Codec::shared();
    let mut buf = Vec::new();
    let mut bytes = 0usize;
    for e in &sim.events {
        buf.clear();
        codec.encode(e, &mut buf);
        bytes += buf.len();
        producer.send(topic, Some(e.person_ref.to_hex().as_bytes()), &buf, None)?;
    }
    producer.wait(Duration::from_secs(900), || false)?;
    let publish = started.elapsed();
    drop(producer);
    println!(
        "embedded broker ({engine}, durable), {partitions} partitions, {people} people: {n} events, {:.0} bytes each on average",
        bytes as f64 / n as f64
    );
    println!("publish (idempotent, acks=all): {:>10.0} events/s", n as f64 / publish.as_secs_f64());

    println!("consumers' fetch.max.bytes: {fetch_max_bytes}");
    let cpu_before = process_cpu();
    let raw = raw_consume(&cluster, topic, "bench-raw", n, &fetch_max_bytes, None)?;
    println!(
        "raw consumer (group member):    {:>10.0} events/s; the process used {:.2} cores meanwhile",
        n as f64 / raw.as_secs_f64(),
        (process_cpu() - cpu_before) / raw.as_secs_f64()
    );

    if std::env::var_os("RAW_WITH_DLQ").is_some() {
        // Read again bare first: a second read finds the log warmer than the
        // first did, so the bursts are compared with a second read too.
        let again = raw_consume(&cluster, topic, "bench-raw-2", n, &fetch_max_bytes, None)?;
        let bursts = Some((dlq, n * 23 / 1000));
        let took = raw_consume(&cluster, topic, "bench-raw-dlq", n, &fetch_max_bytes, bursts)?;
        println!(
            "raw consumer, read again: {:>6.0} events/s; beside DLQ-like produce bursts: {:>6.0} events/s ({:.2} of it)",
            n as f64 / again.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            again.as_secs_f64() / took.as_secs_f64()
        );
    }

    let opts = WorkerOptions {
        topic: topic.to_owned(),
        dlq_topic: dlq.to_owned(),
        group_id: "bench-worker".to_owned(),
        core: CoreConfig::default(),
        // BATCH=N tries another batch size (the worker's default is 16,384).
        batch_max_records: std::env::var("BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(16384),
        batch_max_wait: Duration::from_millis(200),
        // COMMIT_INTERVAL=ms tries another commit interval (the worker's
        // default is 250 ms; 0 commits every batch).
        commit_interval: Duration::from_millis(
            std::env::var("COMMIT_INTERVAL").ok().and_then(|b| b.parse().ok()).unwrap_or(250),
        ),
        snapshot_interval: Duration::from_secs(30),
        orphan_after: Duration::from_secs(60),
        until_caught_up: true,
    };
    let store = swabstream_store_sqlite::SqliteStore::open(&dir.join("views.db"), topic)?;
    let cpu_before = process_cpu();
    let conflicts_before = swabstream_broker::conflict_retries();
    let r = worker::run(&cluster, &opts, Box::new(store), Arc::new(AtomicBool::new(false)))?;
    let worker_cores = (process_cpu() - cpu_before) / r.elapsed.as_secs_f64();
    let applied = r.counts.applied();
    assert_eq!(applied, n, "the worker applied every event once");
    let e2e = applied as f64 / r.elapsed.as_secs_f64();
    println!(
        "end to end (worker):            {e2e:>10.0} events/s; the process used {worker_cores:.2} cores meanwhile; {} broker storage calls run again after a conflict",
        swabstream_broker::conflict_retries() - conflicts_before
    );
    println!("ratio end-to-end / raw:         {:>10.2}", e2e / (n as f64 / raw.as_secs_f64()));
    // The raw consumer's time runs from its subscription: the worker's
    // setup before it (metadata, the DLQ producer) is printed apart.
    let subscribed = r.elapsed.saturating_sub(r.setup);
    println!(
        "worker's setup before subscribing {:.0} ms; from its subscription {:.0} events/s, {:.2} of raw",
        ms(r.setup),
        applied as f64 / subscribed.as_secs_f64(),
        raw.as_secs_f64() / subscribed.as_secs_f64()
    );
    println!(
        "worker: {} rounds of store commits; a partition's commit without snapshot {:.2} ms on average ({} commits, {:.0} rows each on average); with snapshot {:.1} ms on average ({} snapshots, {:.1} MB in all)",
        r.rounds,
        ms(r.commit_time) / r.commits.max(1) as f64,
        r.commits,
        r.rows as f64 / (r.commits + r.snapshots).max(1) as f64,
        ms(r.snapshot_time) / r.snapshots.max(1) as f64,
        r.snapshots,
        r.snapshot_bytes as f64 / 1e6,
    );
    println!(
        "worker's {:.2} s: poll {:.2} s, apply {:.2} s, DLQ wait {:.2} s ({} records), waiting for the store {:.2} s, claims {:.2} s; the store's commits took {:.2} s on their thread",
        r.elapsed.as_secs_f64(),
        r.poll_time.as_secs_f64(),
        r.apply_time.as_secs_f64(),
        r.dlq_time.as_secs_f64(),
        r.dlq_records,
        r.store_wait.as_secs_f64(),
        r.claim_time.as_secs_f64(),
        (r.commit_time + r.snapshot_time).as_secs_f64(),
    );

    // Recovery: a new worker claims every partition (reads its checkpoint,
    // restores its snapshot) and finds nothing left to replay.
    let mut opts2 = opts.clone();
    opts2.group_id = "bench-worker-2".to_owned();
    let store = swabstream_store_sqlite::SqliteStore::open(&dir.join("views.db"), topic)?;
    let r2 = worker::run(&cluster, &opts2, Box::new(store), Arc::new(AtomicBool::new(false)))?;
    println!(
        "recovery: {} claims restored in {:.1} ms in all ({:.1} ms per partition); state rebuilt from a snapshot replays at the end-to-end rate above",
        r2.claims,
        ms(r2.claim_time),
        ms(r2.claim_time) / r2.claims.max(1) as f64
    );
    rt.block_on(broker.stop());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU seconds this process used so far (broker, clients and all), from
/// /proc (0 where there is none).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised name: utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A bare consumer-group member with the worker's fetch settings, reading
/// `n` records and touching each payload; with `bursts` (topic, records),
/// while a producer sends DLQ-like bursts there (see the file's comment).
fn raw_consume(
    cluster: &Cluster,
    topic: &str,
    group: &str,
    n: u64,
    fetch_max_bytes: &str,
    bursts: Option<(&str, u64)>,
) -> anyhow::Result<Duration> {
    // The worker's client settings for the embedded broker (its fetch wait
    // above all), so that the two rates compare like with like.
    let consumer: BaseConsumer = cluster
        .config(
            Role::Consumer,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("fetch.max.bytes", fetch_max_bytes),
            ],
        )
        .create()?;
    let done = Arc::new(AtomicBool::new(false));
    let producer = bursts.map(|(dlq, total)| {
        let (cluster, dlq, done) = (cluster.clone(), dlq.to_owned(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut p = Publisher::new(&cluster)?;
            let payload = [7u8; 300];
            let mut sent = 0u64;
            while sent < total && !done.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..370 {
                    p.send(&dlq, None, &payload, None)?;
                }
                p.wait(Duration::from_secs(60), || false)?;
                sent += 370;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(sent)
        })
    });
    let started = Instant::now();
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    let mut checksum = 0u64;
    while seen < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                seen += 1;
                checksum = checksum.wrapping_add(m.payload().map_or(0, |p| p.len() as u64));
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(900), "raw consume stalled");
    }
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = producer {
        let sent = p.join().map_err(|_| anyhow::anyhow!("the burst producer panicked"))??;
        println!("  ({sent} records produced in bursts while it read)");
    }
    std::hint::black_box(checksum);
    std::thread::spawn(move || drop(consumer));
    Ok(took)
}
