//! `swabstream`: the one binary (SPEC §5). Each subcommand lives in its own
//! module; this file only parses the command line and dispatches.

mod config;
mod demo;
mod output;
mod process;
mod simulate;
mod views;

use std::process::ExitCode;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: simulate a sampling day, run it through the pipeline, print the views and check them against the truth.
    Demo(demo::Args),
    /// Write a realistic sampling day as JSON lines (events.jsonl) plus its ground truth (truth.json).
    Simulate(simulate::Args),
    /// Run the pipeline's rules over a JSON-lines file in memory (no Kafka, no store) and print the views.
    Process(process::Args),
    /// Print the views held in the view store (`store.path`, default `<data_dir>/views.db`).
    Views(views::Args),
    /// Print the effective configuration (defaults, file and environment merged) as JSON.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Config => print_config(&config),
        Command::Demo(args) => demo::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Process(args) => process::run(args, &config),
        Command::Views(args) => views::run(args, &config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_config(config: &config::Config) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(config)?);
    eprintln!("embedded view store file: {}", config.store_path().display());
    Ok(ExitCode::SUCCESS)
}
