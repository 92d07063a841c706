//! `swabstream demo`: the main job, end to end on one machine.
//!
//! It starts an embedded broker and view store in a fresh directory,
//! simulates a sampling day, publishes it to the topic (Avro, keyed by
//! `person_ref`, idempotent acks=all), runs the worker to the end of the
//! log, prints the city and district views with the percentage of people
//! identified with codes, and checks them against the simulator's ground
//! truth, exiting non-zero on any difference.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use swabstream_broker::EmbeddedBroker;
use swabstream_events::avro::Codec;
use swabstream_kafka::{Publisher, TopicSpec, ensure_topics, worker};
use swabstream_sim::{SimConfig, simulate};
use swabstream_views::render_table;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// People living in the simulated city (2040000 reproduces the scale of 2022-04-09).
    #[arg(long, default_value_t = 100_000)]
    people: u64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions of the demo's topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Directory for the demo's broker log and view store (default: a fresh
    /// temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// After the check, keep `serve` (API and dashboard, `serve.listen`) running on the
    /// demo's views until Ctrl-C, and print the dashboard's address.
    #[arg(long)]
    serve: bool,
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let d = std::env::temp_dir()
                .join(format!("swabstream-demo-{}-{nanos}", std::process::id()));
            (d, true)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = demo(rt, &args, config, &dir);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the demo's broker log and view store are in {}", dir.display());
    }
    result
}

fn demo(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    config: &Config,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let topic = &config.kafka.topic;
    let broker =
        rt.block_on(EmbeddedBroker::open(dir, config.kafka.embedded_storage.engine(), 0))?;
    let cluster = config.embedded_cluster(broker.bootstrap());
    let topics = [topic, &config.kafka.dlq_topic].map(|name| TopicSpec {
        name: name.clone(),
        partitions: args.partitions,
        replication_factor: 1,
    });
    rt.block_on(ensure_topics(&cluster, &topics))?;
    eprintln!("embedded broker on {} storing to {}", broker.bootstrap(), broker.storage());

    let cfg = SimConfig { people: args.people, seed: args.seed, ..SimConfig::default() };
    let started = Instant::now();
    let sim = simulate(&cfg);
    eprintln!(
        "simulated {} people: {} events in {:.1?}",
        args.people,
        sim.events.len(),
        started.elapsed()
    );

    let started = Instant::now();
    let mut producer = Publisher::new(&cluster)?;
    let codec = Codec::shared();
    let mut buf = Vec::with_capacity(256);
    for e in &sim.events {
        buf.clear();
        codec.encode(e, &mut buf);
        producer.send(topic, Some(e.person_ref.to_hex().as_bytes()), &buf, None)?;
    }
    producer.wait(Duration::from_secs(600), || false).context("publishing the day")?;
    let published = started.elapsed();
    eprintln!(
        "published {} events in {:.2?} ({:.0} events/s, idempotent, acks=all)",
        producer.delivery().acked(),
        published,
        producer.delivery().acked() as f64 / published.as_secs_f64()
    );
    drop(producer);

    let mut opts = crate::run::options(config, true);
    opts.group_id = "swabstream-demo".to_owned();
    let store = crate::store::open_sqlite(&dir.join("views.db"), topic)?;
    let report = worker::run(&cluster, &opts, store, Arc::new(AtomicBool::new(false)))?;
    eprintln!("worker: {}", crate::run::summary(&report));
    rt.block_on(broker.stop());

    let views = crate::store::open_sqlite(&dir.join("views.db"), topic)?.views()?;
    print!(
        "{}",
        render_table(&views, &["city_daily", "district_daily", "method_daily", "rejections_daily"])
    );
    if let Some(city) = views.city(cfg.day) {
        println!(
            "{}: {} people sampled, {} of them identified with a code: {:.2} %",
            cfg.day,
            city.people_sampled,
            city.using_code,
            city.percent_using_code.unwrap_or(0.0)
        );
    }
    let diffs = views.differences(&sim.truth);
    let code = if diffs.is_empty() {
        println!("check: the views equal the simulator's ground truth");
        ExitCode::SUCCESS
    } else {
        println!(
            "check FAILED: {} rows differ from the ground truth (left = pipeline, right = truth):",
            diffs.len()
        );
        for d in diffs.iter().take(30) {
            println!("  {d}");
        }
        ExitCode::FAILURE
    };
    if args.serve {
        crate::serve::demo(rt, config, dir)?;
    }
    Ok(code)
}
