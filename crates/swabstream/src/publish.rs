//! `swabstream publish`: JSON-lines events (a file or standard input) to the
//! topic as Avro, keyed by `person_ref`, through the idempotent producer with
//! acks=all. With a pseudonym key configured, a line may carry `id_number`
//! instead of `person_ref`; it is pseudonymised here. A malformed line is reported by number with what is wrong, the
//! others are published, and the exit status is then non-zero (SPEC §5).

use std::io::{BufRead, BufReader, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use swabstream_events::avro::Codec;
use swabstream_events::{PseudonymKey, json};
use swabstream_kafka::Publisher;

use crate::config::Config;
use crate::connect;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON-lines file of events, or `-` for standard input.
    input: PathBuf,
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let (reader, size): (Box<dyn BufRead>, Option<u64>) = if args.input.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("opening {}", args.input.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 20, file)), size)
    };
    let key = config.pseudonym_key()?;
    let kafka = rt.block_on(connect::connect(config))?;
    let result = publish(reader, size, &kafka.cluster, &config.kafka.topic, key.as_ref());
    rt.block_on(kafka.stop());
    let s = result?;
    crate::report(&format!(
        "published {} events to `{}` in {:.2?} ({:.0} events/s, acknowledged by Kafka){}",
        s.published,
        config.kafka.topic,
        s.elapsed,
        s.published as f64 / s.elapsed.as_secs_f64().max(1e-9),
        if s.bad_lines > 0 {
            format!("; {} lines were not published", s.bad_lines)
        } else {
            String::new()
        }
    ));
    Ok(if s.bad_lines == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    pub published: u64,
    pub bad_lines: u64,
    pub elapsed: Duration,
}

fn publish(
    reader: Box<dyn BufRead>,
    size: Option<u64>,
    cluster: &swabstream_kafka::Cluster,
    topic: &str,
    key: Option<&PseudonymKey>,
) -> anyhow::Result<Published> {
    let started = Instant::now();
    let bar = progress_bar(size);
    let mut producer = Publisher::new(cluster)?;
    let codec = Codec::shared();
    let mut payload = Vec::with_capacity(256);
    let mut bad_lines = 0u64;
    let mut read = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        read += line.len() as u64 + 1;
        if i % 4096 == 0 {
            bar.set_position(read);
            bar.set_message(format!("{} acknowledged", producer.delivery().acked()));
        }
        if line.trim().is_empty() {
            continue;
        }
        let event = match json::parse_event_with(&line, key) {
            Ok(e) => e,
            Err(e) => {
                bad_lines += 1;
                bar.suspend(|| eprintln!("line {}: {e}", i + 1));
                continue;
            }
        };
        payload.clear();
        codec.encode(&event, &mut payload);
        let key = event.person_ref.to_hex();
        producer.send(topic, Some(key.as_bytes()), &payload, None)?;
    }
    bar.set_message("waiting for acknowledgements");
    producer
        .wait(Duration::from_secs(600), || false)
        .context("publishing: not every event was acknowledged")?;
    bar.finish_and_clear();
    Ok(Published { published: producer.delivery().acked(), bad_lines, elapsed: started.elapsed() })
}

/// A progress bar on a terminal (by bytes read when the size is known);
/// nothing when standard error is not a terminal.
pub fn progress_bar(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    }
}
