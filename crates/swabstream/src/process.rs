//! `swabstream process`: the pipeline's rules over a JSON-lines file, in memory.
//!
//! Each line is parsed, encoded to the wire form and applied as a record of
//! one partition, exactly as a worker would apply it from Kafka, with the
//! current time (or `--record-time`) as the record timestamp. It needs no
//! broker and no store, which makes it the quickest way to check a file of
//! events or a simulated day against its truth.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use swabstream_core::{CoreConfig, PartitionState, Record};
use swabstream_events::avro::Codec;
use swabstream_events::{Timestamp, json};
use swabstream_views::ViewSet;

use crate::config::Config;
use crate::output::ViewOutput;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON-lines file of events, or `-` for standard input.
    input: PathBuf,
    /// Kafka timestamp to give every record (RFC 3339); default: now.
    #[arg(long, value_parser = parse_ts)]
    record_time: Option<Timestamp>,
    /// Compare the views with this truth.json and fail on any difference.
    #[arg(long)]
    truth: Option<PathBuf>,
    #[command(flatten)]
    output: ViewOutput,
}

fn parse_ts(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s).map_err(|e| format!("`{s}` {e}"))
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("opening {}", args.input.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let record_time = args.record_time.unwrap_or_else(now);
    let codec = Codec::shared();
    let mut state = PartitionState::new(CoreConfig { retention_days: config.core.retention_days });
    let mut dlq = Vec::new();
    let mut payload = Vec::new();
    let mut bad_lines = 0u64;
    let started = Instant::now();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match json::parse_event(&line) {
            Ok(e) => e,
            Err(e) => {
                bad_lines += 1;
                eprintln!("line {}: {e}", i + 1);
                continue;
            }
        };
        payload.clear();
        codec.encode(&event, &mut payload);
        let offset = state.next_offset().unwrap_or(0);
        state.apply(
            Record { offset, timestamp: record_time, key: None, payload: Some(&payload) },
            &mut dlq,
        );
        // The DLQ records would go to Kafka; here their counts in the views are what matters.
        dlq.clear();
    }
    let elapsed = started.elapsed();
    let views = state.views();
    args.output.print(&views)?;
    let c = state.counts();
    eprintln!(
        "{} events in {:.2?}: {} accepted, {} duplicates, {} rejected{}",
        c.applied(),
        elapsed,
        c.accepted,
        c.duplicates,
        c.rejected_total(),
        if bad_lines > 0 {
            format!("; {bad_lines} lines could not be parsed")
        } else {
            String::new()
        }
    );
    let mut ok = bad_lines == 0;
    if let Some(path) = &args.truth {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let truth: ViewSet = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a views JSON document", path.display()))?;
        let diffs = views.differences(&truth);
        if diffs.is_empty() {
            eprintln!("views equal the truth in {}", path.display());
        } else {
            ok = false;
            eprintln!(
                "views differ from the truth in {} ({} rows; left = computed, right = truth):",
                path.display(),
                diffs.len()
            );
            for d in diffs.iter().take(20) {
                eprintln!("  {d}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp(since.as_micros() as i64)
}
