//! `swabstream run`: the pipeline worker, a consumer-group member. Many may
//! run against one cluster; each keeps the views of the partitions it is
//! assigned in the view store, exactly once (see swabstream-kafka's worker).

use std::process::ExitCode;

use swabstream_core::CoreConfig;
use swabstream_kafka::worker::{self, Report, WorkerOptions};

use crate::config::Config;
use crate::connect;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exit once every assigned partition reached the end of the log (for scripts and tests).
    #[arg(long)]
    until_caught_up: bool,
}

pub fn options(config: &Config, until_caught_up: bool) -> WorkerOptions {
    WorkerOptions {
        topic: config.kafka.topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        group_id: config.kafka.group_id.clone(),
        core: CoreConfig { retention_days: config.core.retention_days },
        batch_max_records: config.worker.batch_max_records,
        batch_max_wait: config.worker.batch_max_wait,
        commit_interval: config.worker.commit_interval,
        snapshot_interval: config.worker.snapshot_interval,
        orphan_after: config.worker.orphan_after,
        until_caught_up,
    }
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let _guard = rt.enter();
    if let Some(addr) = config.metrics.listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
        describe_metrics();
        tracing::info!(%addr, "Prometheus metrics at /metrics");
    }
    let kafka = rt.block_on(connect::connect(config))?;
    let stop = crate::stop_on_signal(rt, "committing what is applied");
    let opts = options(config, args.until_caught_up);
    let store = crate::store::open(config)?;
    let result = worker::run(&kafka.cluster, &opts, store, stop);
    rt.block_on(kafka.stop());
    let report = result?;
    crate::report(&summary(&report));
    Ok(ExitCode::SUCCESS)
}

/// The closing line of a worker.
pub fn summary(r: &Report) -> String {
    let c = &r.counts;
    format!(
        "applied {} records in {:.2?} ({:.0} events/s): {} accepted, {} duplicates, {} rejected ({} to the DLQ); {} rounds of store commits, {} snapshots{}",
        c.applied(),
        r.elapsed,
        c.applied() as f64 / r.elapsed.as_secs_f64().max(1e-9),
        c.accepted,
        c.duplicates,
        c.rejected_total(),
        r.dlq_records,
        r.rounds,
        r.snapshots,
        if r.snapshot_failures > 0 {
            format!(" ({} snapshots the store did not take)", r.snapshot_failures)
        } else {
            String::new()
        },
    )
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("swabstream_events_total", "Records applied, by outcome");
    describe_counter!("swabstream_dlq_records_total", "Records sent to the DLQ, by reason");
    describe_histogram!(
        "swabstream_batch_seconds",
        "Time to apply a batch, have its DLQ records acknowledged and commit it"
    );
    describe_histogram!(
        "swabstream_snapshot_seconds",
        "Time of a store commit with a state snapshot"
    );
    describe_counter!(
        "swabstream_snapshot_failures_total",
        "Snapshots the view store did not take (rows and offset were committed without them)"
    );
    describe_gauge!("swabstream_partition_lag", "Records between a partition's end and the worker");
}
