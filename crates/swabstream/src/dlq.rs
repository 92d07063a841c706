//! `swabstream dlq stats | show | redrive`: the DLQ as a tool (SPEC §9).
//!
//! DLQ records are written at least once (a worker that dies between the DLQ
//! acknowledgement and its store commit writes that batch's records again), so
//! a DLQ record is identified by where its source record sits — the
//! `source_partition` and `source_offset` headers — and every command here
//! counts or redrives each source record once, whatever the copies.
//!
//! A redriven event is the DLQ record's event with a new `event_id`, derived
//! from the events topic's name and the source partition and offset
//! ([`redriven_event_id`]), published keyed by its `person_ref` (so it lands in
//! its person's partition, also when it came from a `WRONG_PARTITION` record).
//! It is a new record at the end of its person's log. Redriving the same DLQ
//! record again gives the same `event_id`, which the pipeline's dedupe drops;
//! a redriven event rejected again is a new DLQ record with a new source, so
//! it can be redriven again, and counts once when it finally passes.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::json;
use sha2::{Digest, Sha256};
use swabstream_events::avro::Codec;
use swabstream_events::{Day, Reason, Timestamp};
use swabstream_kafka::Publisher;
use swabstream_kafka::dlq::DlqEntry;

use crate::config::Config;
use crate::connect;
use crate::topic::{dlq_json, dlq_line, parse_time, read_dlq};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// DLQ records per reason and local day (UTC+8) of the DLQ record's time,
    /// each source record counted once however many copies were written.
    Stats {
        #[command(flatten)]
        window: Window,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// DLQ records, each with its reason, detail, source partition and
    /// offset, time, and its event decoded (its bytes in hex when they do not
    /// decode, as for MALFORMED). Repeated copies are shown once.
    Show {
        /// Only records rejected for this reason.
        #[arg(long, value_parser = parse_reason)]
        reason: Option<Reason>,
        #[command(flatten)]
        window: Window,
        /// At most this many records (the oldest first).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// One JSON object per record (JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Publish the events of the DLQ records rejected for a reason to the
    /// events topic again, so the rules see them again (SPEC §9), e.g. the
    /// CODE_UNKNOWN scans once late CodeIssued events have arrived. Running it
    /// twice counts nothing twice; the original rejections stay counted.
    Redrive {
        /// The reason of the records to redrive (MALFORMED records have no
        /// event to redrive).
        #[arg(long, value_parser = parse_reason)]
        reason: Reason,
        #[command(flatten)]
        window: Window,
        /// Count what would be redriven; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the closing counts as one JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
}

/// Which DLQ records, by the time each was written to the DLQ.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Window {
    /// Only records written at or after this time (RFC 3339, or a local date
    /// YYYY-MM-DD for its midnight).
    #[arg(long, value_parser = parse_time)]
    since: Option<Timestamp>,
    /// Only records written before this time (RFC 3339, or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    until: Option<Timestamp>,
}

impl Window {
    fn contains(&self, e: &DlqEntry) -> bool {
        let Some(ms) = e.record.timestamp_ms else {
            return self.since.is_none() && self.until.is_none();
        };
        self.since.is_none_or(|s| ms >= s.millis()) && self.until.is_none_or(|u| ms < u.millis())
    }
}

fn parse_reason(s: &str) -> Result<Reason, String> {
    Reason::from_str(s).ok_or_else(|| {
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        format!("no reason `{s}`; the reasons are {}", all.join(", "))
    })
}

/// The `event_id` of the event redriven from the DLQ record of the record at
/// `source_partition`/`source_offset` of `topic`: `rd-` and 32 hex digits of
/// a SHA-256 of the three, so the same DLQ record always gives the same id.
pub fn redriven_event_id(topic: &str, source_partition: i32, source_offset: i64) -> String {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0]);
    h.update(source_partition.to_be_bytes());
    h.update(source_offset.to_be_bytes());
    format!("rd-{}", crate::topic::hex(&h.finalize()[..16]))
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::Stats { window, json } => stats(rt, window, json, config),
        DlqCommand::Show { reason, window, limit, json } => {
            show(rt, reason, window, limit, json, config)
        }
        DlqCommand::Redrive { reason, window, dry_run, json } => {
            if reason == Reason::Malformed {
                eprintln!(
                    "error: MALFORMED records cannot be redriven: their bytes are no event to publish again \
                     (`swabstream dlq show --reason MALFORMED` shows them in hex, with what is wrong)"
                );
                return Ok(ExitCode::from(2));
            }
            redrive(rt, reason, window, dry_run, json, config)
        }
    }
}

/// Reads the DLQ, handing each source record's first copy inside the window
/// to `each`; returns (records read, repeated copies skipped).
fn distinct(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    window: Window,
    each: &mut dyn FnMut(DlqEntry),
) -> anyhow::Result<(u64, u64)> {
    let kafka = rt.block_on(connect::connect(config))?;
    let stop = crate::stop_on_signal(rt, "reading the DLQ");
    let mut seen = HashSet::new();
    let mut repeats = 0u64;
    let result = read_dlq(&kafka.cluster, config, &stop, &mut |e| {
        if !window.contains(&e) {
            return;
        }
        // A record without its origin cannot be matched with its copies:
        // each is shown and counted.
        if let Some(src) = e.source()
            && !seen.insert(src)
        {
            repeats += 1;
            return;
        }
        each(e);
    });
    rt.block_on(kafka.stop());
    anyhow::ensure!(!stop.load(std::sync::atomic::Ordering::Relaxed), "interrupted");
    Ok((result.with_context(|| format!("reading `{}`", config.kafka.dlq_topic))?, repeats))
}

fn stats(
    rt: &tokio::runtime::Runtime,
    window: Window,
    as_json: bool,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut counts: BTreeMap<(Option<Day>, String), u64> = BTreeMap::new();
    let (read, repeats) = distinct(rt, config, window, &mut |e| {
        let day = e.record.timestamp_ms.map(|ms| Timestamp::from_millis(ms).local_day());
        *counts.entry((day, e.reason.clone())).or_default() += 1;
    })?;
    let distinct: u64 = counts.values().sum();
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for ((_, reason), n) in &counts {
        *by_reason.entry(reason.as_str()).or_default() += n;
    }
    if as_json {
        let rows: Vec<_> = counts
            .iter()
            .map(|((day, reason), n)| {
                json!({"day": day.map(|d| d.to_string()), "reason": reason, "count": n})
            })
            .collect();
        let out = json!({
            "topic": config.kafka.dlq_topic,
            "records": distinct,
            "copies_read": read,
            "repeats_skipped": repeats,
            "by_reason": by_reason,
            "by_day": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{:<10}  {:<20}  {:>10}", "day", "reason", "records");
        for ((day, reason), n) in &counts {
            let day = day.map_or_else(|| "-".to_owned(), |d| d.to_string());
            println!("{day:<10}  {reason:<20}  {n:>10}");
        }
        println!();
        for (reason, n) in &by_reason {
            println!("{:<10}  {reason:<20}  {n:>10}", "all days");
        }
    }
    crate::report(&format!(
        "dlq stats: {distinct} records in `{}` ({read} read, {repeats} repeated copies not counted) in {:.2?}",
        config.kafka.dlq_topic,
        started.elapsed()
    ));
    Ok(ExitCode::SUCCESS)
}

fn show(
    rt: &tokio::runtime::Runtime,
    reason: Option<Reason>,
    window: Window,
    limit: u64,
    as_json: bool,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let mut shown = 0u64;
    let mut matching = 0u64;
    distinct(rt, config, window, &mut |e| {
        if reason.is_some_and(|r| r.as_str() != e.reason) {
            return;
        }
        matching += 1;
        if shown >= limit {
            return;
        }
        shown += 1;
        if as_json {
            println!("{}", dlq_json(&e));
        } else {
            println!("{}", dlq_line(&e));
        }
    })?;
    if matching > shown {
        crate::report(&format!("showed {shown} of {matching} records (--limit {limit})"));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a redrive did.
#[derive(Debug, Default, serde::Serialize)]
struct Redriven {
    /// Events published (or, on a dry run, that would be).
    redriven: u64,
    /// DLQ records without their origin headers: no deterministic id.
    skipped_no_source: u64,
    /// DLQ records whose bytes do not decode as an event.
    skipped_undecodable: u64,
    /// Repeated copies of a DLQ record (at-least-once), redriven once.
    repeats: u64,
    dry_run: bool,
}

fn redrive(
    rt: &tokio::runtime::Runtime,
    reason: Reason,
    window: Window,
    dry_run: bool,
    as_json: bool,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Collected first: the DLQ is read to its end before anything is
    // published, so a redrive never chases records it causes.
    let mut entries = Vec::new();
    let (_, repeats) = distinct(rt, config, window, &mut |e| {
        if e.reason == reason.as_str() {
            entries.push(e);
        }
    })?;
    // In source order: a person's redriven events reach the end of their
    // log in the order the rules first saw them, so which one is the day's
    // first valid scan does not depend on how the DLQ was partitioned.
    entries.sort_by_key(|e| e.source().unwrap_or((i32::MAX, i64::MAX)));
    let mut r = Redriven { repeats, dry_run, ..Redriven::default() };
    let codec = Codec::shared();
    let mut payloads = Vec::with_capacity(entries.len());
    for e in &entries {
        let Some((sp, so)) = e.source() else {
            r.skipped_no_source += 1;
            continue;
        };
        let Ok(mut event) = codec.decode(&e.record.payload) else {
            r.skipped_undecodable += 1;
            continue;
        };
        event.event_id = redriven_event_id(&config.kafka.topic, sp, so).into();
        let mut payload = Vec::with_capacity(e.record.payload.len() + 16);
        codec.encode(&event, &mut payload);
        payloads.push((event.person_ref.to_hex(), payload, format!("{sp}/{so}")));
    }
    if !dry_run && !payloads.is_empty() {
        let kafka = rt.block_on(connect::connect(config))?;
        let result = publish(&kafka.cluster, &config.kafka.topic, &payloads);
        rt.block_on(kafka.stop());
        result?;
    }
    r.redriven = payloads.len() as u64;
    if as_json {
        println!("{}", serde_json::to_string(&r)?);
    }
    crate::report(&format!(
        "{} {} {reason} events from `{}` to `{}` in {:.2?}{}{}{}",
        if dry_run { "dry run: would redrive" } else { "redrove" },
        r.redriven,
        config.kafka.dlq_topic,
        config.kafka.topic,
        started.elapsed(),
        if repeats > 0 {
            format!("; {repeats} repeated DLQ copies redriven once")
        } else {
            String::new()
        },
        if r.skipped_no_source > 0 {
            format!("; {} records without source headers skipped", r.skipped_no_source)
        } else {
            String::new()
        },
        if r.skipped_undecodable > 0 {
            format!("; {} undecodable records skipped", r.skipped_undecodable)
        } else {
            String::new()
        },
    ));
    Ok(ExitCode::SUCCESS)
}

fn publish(
    cluster: &swabstream_kafka::Cluster,
    topic: &str,
    payloads: &[(String, Vec<u8>, String)],
) -> anyhow::Result<()> {
    let bar = crate::publish::progress_bar(Some(payloads.len() as u64));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "redriving {bar:40} {pos}/{len} events {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut producer = Publisher::new(cluster)?;
    for (i, (key, payload, from)) in payloads.iter().enumerate() {
        // Where it came from, for whoever reads the topic later.
        let headers =
            OwnedHeaders::new().insert(Header { key: "redriven_from", value: Some(from) });
        producer.send(topic, Some(key.as_bytes()), payload, Some(headers))?;
        if i % 256 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.set_message("waiting for acknowledgements");
    producer
        .wait(Duration::from_secs(600), || false)
        .context("redriving: not every event was acknowledged")?;
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redriven_id_is_a_function_of_the_dlq_records_origin() {
        let a = redriven_event_id("sampling-events", 2, 41);
        assert_eq!(a, redriven_event_id("sampling-events", 2, 41));
        assert_ne!(a, redriven_event_id("sampling-events", 2, 42));
        assert_ne!(a, redriven_event_id("sampling-events", 3, 41));
        assert_ne!(a, redriven_event_id("other", 2, 41));
        assert!(a.starts_with("rd-") && a.len() == 35 && a.len() <= 64);
    }

    #[test]
    fn an_unknown_reason_lists_the_reasons() {
        let e = parse_reason("CODE_LOST").unwrap_err();
        assert!(e.contains("CODE_UNKNOWN") && e.contains("MALFORMED"), "{e}");
        assert_eq!(parse_reason("CODE_UNKNOWN"), Ok(Reason::CodeUnknown));
    }
}
