//! Times the simulator: `cargo run --release -p swabstream-sim --example simulate -- PEOPLE [SEED] [OUT_DIR]`.
//!
//! Without `OUT_DIR`, runs `simulate` (every event in memory); with it, runs
//! `write_files` (events streamed to `OUT_DIR/events.jsonl`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use swabstream_sim::{SimConfig, simulate, write_files};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let people = args.first().and_then(|s| s.parse().ok());
    let seed = args.get(1).map(|s| s.parse());
    let (Some(people), Ok(seed)) = (people, seed.unwrap_or(Ok(1))) else {
        eprintln!("usage: simulate PEOPLE [SEED] [OUT_DIR]");
        return ExitCode::from(2);
    };
    let cfg = SimConfig { people, seed, ..SimConfig::default() };
    let start = Instant::now();
    match args.get(2) {
        None => {
            let day = simulate(&cfg);
            let city = day.truth.city(cfg.day).cloned();
            println!(
                "simulate: {} events, {} truth rows, in {:.2?}",
                day.events.len(),
                day.truth.city_daily.len()
                    + day.truth.district_daily.len()
                    + day.truth.site_hourly.len()
                    + day.truth.method_daily.len()
                    + day.truth.rejections_daily.len()
                    + day.truth.codes_issued_daily.len(),
                start.elapsed()
            );
            println!("{city:?}");
        }
        Some(dir) => match write_files(&cfg, &PathBuf::from(dir)) {
            Ok(summary) => println!("write_files in {:.2?}: {summary}", start.elapsed()),
            Err(e) => {
                eprintln!("cannot write {dir}: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}
