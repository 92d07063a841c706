//! `swabstream`: the one binary (SPEC §5). Each subcommand lives in its own
//! module; this file only parses the command line and dispatches.

mod demo;
mod output;
mod process;
mod simulate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swabstream",
    version,
    about = "Event-sourced counting of mass nucleic-acid sampling"
)]
struct Cli {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Process(args) => process::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
