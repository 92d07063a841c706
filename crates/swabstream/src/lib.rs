//! `swabstream`: the one binary (SPEC §5), as a library so that the
//! end-to-end suite under the workspace's `tests/` can build the same
//! program as a binary of its own. Each subcommand lives in its own module;
//! this file only parses the command line and dispatches.

mod broker;
mod config;
mod connect;
mod demo;
mod dlq;
mod gateway;
mod output;
mod process;
mod publish;
mod replay;
mod run;
mod serve;
mod simulate;
mod status;
mod store;
mod topic;
mod versions;
mod views;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swabstream",
    version,
    about = "Event-sourced counting of mass nucleic-acid sampling"
)]
struct Cli {
    /// Configuration file (TOML); default: ./swabstream.toml if present. `SWABSTREAM_*`
    /// environment variables override it (nested keys joined by `__`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Log as JSON lines (for log collectors) instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: simulate a sampling day, run it through the pipeline, print the views and check them against the truth.
    Demo(demo::Args),
    /// Publish JSON-lines events (a file, or `-` for standard input) to the topic.
    Publish(publish::Args),
    /// The pipeline worker: a consumer-group member keeping the views of its partitions.
    Run(run::Args),
    /// Rebuild the views from the log: into a new version beside the live one (`--into NAME`), or into a fresh store file compared with the live views.
    Replay(replay::Args),
    /// The HTTP ingest gateway for scanners and code systems (POST /v1/events).
    Gateway,
    /// The analysts' read-only service: views over HTTP (JSON, CSV, events), the dashboard, SQL.
    Serve,
    /// Make a device credential for the gateway: the file entry on stdout, the token on stderr.
    Credential(gateway::CredentialArgs),
    /// Run the embedded Kafka-API broker alone (for local development and tests).
    Broker,
    /// Write a realistic sampling day as JSON lines (events.jsonl) plus its ground truth (truth.json).
    Simulate(simulate::Args),
    /// Run the pipeline's rules over a JSON-lines file in memory (no Kafka, no store) and print the views.
    Process(process::Args),
    /// Print the views held in the view store (`store.kind`; the embedded one is `store.path`, default `<data_dir>/views.db`): the live version, `--version NAME`, or `views diff A B`.
    Views(views::Args),
    /// Make a view version live, atomically (`--back`: the one live before); running workers switch to it.
    Promote(versions::PromoteArgs),
    /// The view versions: `versions list`, `versions drop NAME`.
    Versions(versions::Args),
    /// The view store itself: `store init` creates it (SQLite file, or Scylla keyspace and tables).
    Store(store::Args),
    /// Print the effective configuration (defaults, file and environment merged) as JSON.
    Config,
    /// One screen per partition: owner, checkpoint, log end, lag, commit and snapshot ages; the group; the DLQ. Exit 1 when a partition has no live owner or is stalled.
    Status(status::Args),
    /// The dead-letter queue: `dlq stats`, `dlq show`, `dlq redrive`.
    Dlq(dlq::Args),
    /// The topics as Kafka holds them: `topic offsets`, `topic tail` (records decoded).
    Topic(topic::Args),
}

/// The program: parses the command line, runs the subcommand, and returns
/// its exit status (2 for usage and configuration errors).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Config => print_config(&config),
        Command::Demo(args) => demo::run(&rt, args, &config),
        Command::Publish(args) => publish::run(&rt, args, &config),
        Command::Run(args) => run::run(&rt, args, &config),
        Command::Replay(args) => replay::run(&rt, args, &config),
        Command::Broker => broker::run(&rt, &config),
        Command::Gateway => gateway::run(&rt, &config),
        Command::Serve => serve::run(&rt, &config),
        Command::Credential(args) => gateway::credential(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Process(args) => process::run(args, &config),
        Command::Views(args) => views::run(args, &config),
        Command::Promote(args) => versions::promote(args, &config),
        Command::Versions(args) => versions::run(args, &config),
        Command::Store(args) => store::run(args, &config),
        Command::Status(args) => status::run(&rt, args, &config),
        Command::Dlq(args) => dlq::run(&rt, args, &config),
        Command::Topic(args) => topic::run(&rt, args, &config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to standard error; `RUST_LOG` overrides the default level (info
/// for swabstream, warnings for its libraries).
fn init_logging(json: bool) {
    LOG_JSON.store(json, Ordering::Relaxed);
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,swabstream=info,swabstream_kafka=info,swabstream_broker=info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

static LOG_JSON: AtomicBool = AtomicBool::new(false);

/// A command's closing line: on standard error for people, or as a log
/// record when logs are JSON (so a log collector sees only JSON).
pub fn report(line: &str) {
    if LOG_JSON.load(Ordering::Relaxed) {
        tracing::info!("{line}");
    } else {
        eprintln!("{line}");
    }
}

/// A flag set on Ctrl-C or SIGTERM, for the synchronous loops to poll.
pub fn stop_on_signal(rt: &tokio::runtime::Runtime, what: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    rt.spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("stopping: {what}");
            stop.store(true, Ordering::Relaxed);
        }
    });
    stop
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn print_config(config: &config::Config) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(config)?);
    eprintln!("embedded view store file: {}", config.store_path().display());
    Ok(ExitCode::SUCCESS)
}
