//! `swabstream simulate`: a realistic sampling day and its ground truth.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use swabstream_events::Day;
use swabstream_sim::{SimConfig, write_files};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// People living in the simulated city (2040000 reproduces the scale of 2022-04-09).
    #[arg(long, default_value_t = 20_000)]
    people: u64,
    /// Seed of the simulation: the same seed gives the same day, byte for byte.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The sampling day (local date).
    #[arg(long, default_value = "2022-04-09", value_parser = parse_day)]
    day: Day,
    /// Directory to write events.jsonl and truth.json into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Late and out-of-order data: the code system down 07:00–10:00 (its
    /// CodeIssued sent after the scans that use them: CODE_UNKNOWN), a scanner
    /// backlog sent hours late. truth.json is then the day after
    /// `dlq redrive --reason CODE_UNKNOWN`; truth-before-redrive.json before it.
    #[arg(long)]
    late_data: bool,
}

pub fn parse_day(s: &str) -> Result<Day, String> {
    Day::parse(s).ok_or_else(|| format!("`{s}` is not a date like 2022-04-09"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = SimConfig {
        people: args.people,
        seed: args.seed,
        day: args.day,
        late_data: args.late_data,
        ..SimConfig::default()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();
    let summary = write_files(&cfg, &args.out)
        .with_context(|| format!("writing the simulated day into {}", args.out.display()))?;
    eprintln!(
        "simulated {} in {:.1?}: {} → {}, {}",
        args.day,
        started.elapsed(),
        summary,
        args.out.join("events.jsonl").display(),
        args.out.join("truth.json").display(),
    );
    Ok(ExitCode::SUCCESS)
}
