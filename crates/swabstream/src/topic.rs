//! `swabstream topic offsets | tail`: what operators reach for kcat to do,
//! for swabstream's own topics — each partition's offsets beside the store's
//! checkpoint, and records decoded as events (DLQ records with why and where
//! from). Also the pieces `dlq` and `status` share: times on the command line
//! and a record rendered for people or as JSON.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use swabstream_events::avro::Codec;
use swabstream_events::{Day, Timestamp, json as event_json};
use swabstream_kafka::dlq::{self, DlqEntry, Record, Start};

use crate::config::Config;
use crate::connect;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TopicCommand {
    /// Each partition's oldest offset and log end, for the events topic and
    /// the DLQ, with the view store's checkpoint and the lag behind the end.
    Offsets {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print records decoded: each event as JSON (in the form `publish`
    /// reads), a DLQ record with its reason and origin, undecodable bytes in
    /// hex. Stops at the end the topic had when it started, unless `--follow`.
    Tail(TailArgs),
}

#[derive(Debug, clap::Args)]
struct TailArgs {
    /// Read the DLQ topic instead of the events topic.
    #[arg(long)]
    dlq: bool,
    /// Where to start in each partition: `beginning`, `end`, an offset, `-N`
    /// (the last N records of each partition), or a time (RFC 3339, or a
    /// local date YYYY-MM-DD for its midnight).
    #[arg(long, default_value = "-10", allow_hyphen_values = true, value_parser = parse_start)]
    from: Start,
    /// Only this partition (repeat for more).
    #[arg(long, short)]
    partition: Vec<i32>,
    /// Keep waiting for new records (Ctrl-C stops).
    #[arg(long, short)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// One JSON object per record (JSON lines).
    #[arg(long)]
    json: bool,
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    match args.command {
        TopicCommand::Offsets { json } => offsets(rt, json, config),
        TopicCommand::Tail(args) => tail(rt, args, config),
    }
}

fn offsets(
    rt: &tokio::runtime::Runtime,
    as_json: bool,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let kafka = rt.block_on(connect::connect(config))?;
    let events = dlq::watermarks(&kafka.cluster, &config.kafka.topic);
    let dead = dlq::watermarks(&kafka.cluster, &config.kafka.dlq_topic);
    rt.block_on(kafka.stop());
    let (events, dead) = (events?, dead?);
    // The store may not exist yet (no worker ran): offsets are still worth printing.
    let checkpoints: std::collections::BTreeMap<i32, i64> = crate::store::open_existing(config)
        .and_then(|s| {
            let live = s.live()?;
            Ok(s.offsets(&live)?)
        })
        .map(|o| o.into_iter().collect())
        .unwrap_or_default();
    if as_json {
        let part = |w: &dlq::Watermarks, with_checkpoint: bool| {
            let mut o = json!({"partition": w.partition, "low": w.low, "high": w.high, "records": w.high - w.low});
            if with_checkpoint {
                let c = checkpoints.get(&w.partition);
                o["checkpoint"] = json!(c);
                o["lag"] = json!(c.map_or(w.high - w.low, |c| (w.high - c).max(0)));
            }
            o
        };
        let out = json!({
            "topic": {"name": config.kafka.topic, "partitions": events.iter().map(|w| part(w, true)).collect::<Vec<_>>()},
            "dlq": {"name": config.kafka.dlq_topic, "partitions": dead.iter().map(|w| part(w, false)).collect::<Vec<_>>()},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} (events)", config.kafka.topic);
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>10}",
        "partition", "low", "log end", "checkpoint", "lag"
    );
    for w in &events {
        let c = checkpoints.get(&w.partition);
        println!(
            "{:>9} {:>12} {:>12} {:>12} {:>10}",
            w.partition,
            w.low,
            w.high,
            c.map_or("-".to_owned(), i64::to_string),
            c.map_or(w.high - w.low, |c| (w.high - c).max(0)),
        );
    }
    println!("\n{} (DLQ)", config.kafka.dlq_topic);
    println!("{:>9} {:>12} {:>12}", "partition", "low", "log end");
    for w in &dead {
        println!("{:>9} {:>12} {:>12}", w.partition, w.low, w.high);
    }
    Ok(ExitCode::SUCCESS)
}

fn tail(rt: &tokio::runtime::Runtime, args: TailArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let topic = if args.dlq { &config.kafka.dlq_topic } else { &config.kafka.topic };
    let kafka = rt.block_on(connect::connect(config))?;
    let stop = crate::stop_on_signal(rt, "tail");
    let read = dlq::Read {
        topic,
        partitions: (!args.partition.is_empty()).then(|| args.partition.clone()),
        start: args.from,
        follow: args.follow,
    };
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let result = dlq::read(&kafka.cluster, &read, &stop, &mut |_, _| {}, &mut |r| {
        let line = if args.dlq {
            let e = DlqEntry::from_record(r);
            if args.json { dlq_json(&e).to_string() } else { dlq_line(&e) }
        } else if args.json {
            record_json(&r).to_string()
        } else {
            record_line(&r)
        };
        // A closed pipe (`| head`) ends the tail quietly.
        if writeln!(out, "{line}").is_err() {
            return ControlFlow::Break(());
        }
        printed += 1;
        if args.limit.is_some_and(|l| printed >= l) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    drop(out);
    rt.block_on(kafka.stop());
    result?;
    Ok(ExitCode::SUCCESS)
}

fn parse_start(s: &str) -> Result<Start, String> {
    match s {
        "beginning" | "start" => return Ok(Start::Beginning),
        "end" => return Ok(Start::End),
        _ => {}
    }
    if let Some(n) = s.strip_prefix('-') {
        return n.parse().map(Start::Last).map_err(|_| bad_start(s));
    }
    if let Ok(o) = s.parse::<i64>() {
        return Ok(Start::Offset(o));
    }
    parse_time(s).map(|t| Start::Time(t.millis())).map_err(|_| bad_start(s))
}

fn bad_start(s: &str) -> String {
    format!(
        "`{s}` is not a start: use `beginning`, `end`, an offset, `-N` (the last N), or a time (RFC 3339 or YYYY-MM-DD)"
    )
}

/// A time on the command line: RFC 3339 with an offset, or a local date
/// (YYYY-MM-DD, UTC+8) meaning its midnight.
pub fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Some(day) = Day::parse(s) {
        return Ok(day.start());
    }
    Timestamp::parse_rfc3339(s)
        .map_err(|e| format!("`{s}` is not a time: it {e}, or a local date like 2022-04-09"))
}

/// A record's Kafka time as text.
pub fn record_time(r: &Record) -> String {
    r.timestamp_ms.map_or_else(|| "-".to_owned(), |ms| Timestamp::from_millis(ms).to_rfc3339())
}

/// The record's value as an event in JSON text (the form `publish` reads),
/// or why it is not one.
fn decoded_text(payload: &[u8]) -> Result<String, String> {
    let event = Codec::shared().decode(payload).map_err(|e| e.to_string())?;
    Ok(event_json::to_json(&event))
}

fn decoded(payload: &[u8]) -> Result<Value, String> {
    serde_json::from_str(&decoded_text(payload)?).map_err(|e| e.to_string())
}

fn record_json(r: &Record) -> Value {
    let mut o = json!({
        "partition": r.partition,
        "offset": r.offset,
        "time": r.timestamp_ms.map(|ms| Timestamp::from_millis(ms).to_rfc3339()),
        "key": r.key.as_deref().map(String::from_utf8_lossy),
    });
    match decoded(&r.payload) {
        Ok(e) => o["event"] = e,
        Err(e) => {
            o["decode_error"] = json!(e);
            o["bytes_hex"] = json!(hex(&r.payload));
        }
    }
    o
}

fn record_line(r: &Record) -> String {
    let place = format!("{}@{} {}", r.partition, r.offset, record_time(r));
    match decoded_text(&r.payload) {
        Ok(e) => format!("{place} {e}"),
        Err(e) => format!("{place} undecodable ({e}): {}", hex(&r.payload)),
    }
}

/// A DLQ record as JSON: where it is, why, where from, and the event (or its
/// bytes in hex when they do not decode, as for `MALFORMED`).
pub fn dlq_json(e: &DlqEntry) -> Value {
    let mut o = record_json(&e.record);
    o["reason"] = json!(e.reason);
    o["detail"] = json!(e.detail);
    o["source_partition"] = json!(e.source_partition);
    o["source_offset"] = json!(e.source_offset);
    let known = ["reason", "source_partition", "source_offset", "detail"];
    let others: serde_json::Map<String, Value> = e
        .record
        .headers
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
        .collect();
    if !others.is_empty() {
        o["headers"] = Value::Object(others);
    }
    o
}

/// A DLQ record for people, on one line.
pub fn dlq_line(e: &DlqEntry) -> String {
    let r = &e.record;
    let source = match e.source() {
        Some((p, o)) => format!("{p}@{o}"),
        None => "unknown".to_owned(),
    };
    let mut line = format!(
        "{}@{} {} {} from {source}",
        r.partition,
        r.offset,
        record_time(r),
        if e.reason.is_empty() { "(no reason)" } else { &e.reason }
    );
    if let Some(d) = &e.detail {
        line.push_str(&format!(" ({d})"));
    }
    for (k, v) in &r.headers {
        if !["reason", "source_partition", "source_offset", "detail"].contains(&k.as_str()) {
            line.push_str(&format!(" {k}={}", String::from_utf8_lossy(v)));
        }
    }
    match decoded_text(&r.payload) {
        Ok(ev) => line.push_str(&format!(": {ev}")),
        Err(_) => line.push_str(&format!(": bytes {}", hex(&r.payload))),
    }
    line
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Reads the whole DLQ as it is now (beginning to end), with a progress bar
/// on a terminal, handing each record to `each`.
pub fn read_dlq(
    cluster: &swabstream_kafka::Cluster,
    config: &Config,
    stop: &AtomicBool,
    each: &mut dyn FnMut(DlqEntry),
) -> anyhow::Result<u64> {
    let bar = crate::publish::progress_bar(Some(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "reading the DLQ {bar:40} {pos}/{len} records {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let read = dlq::Read {
        topic: &config.kafka.dlq_topic,
        partitions: None,
        start: Start::Beginning,
        follow: false,
    };
    let result = dlq::read(
        cluster,
        &read,
        stop,
        &mut |done, total| {
            if done % 256 == 0 || done == total {
                bar.set_length(total);
                bar.set_position(done);
            }
        },
        &mut |r| {
            each(DlqEntry::from_record(r));
            ControlFlow::Continue(())
        },
    );
    bar.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_parse_and_a_bad_one_says_what_is_accepted() {
        assert_eq!(parse_start("beginning"), Ok(Start::Beginning));
        assert_eq!(parse_start("-5"), Ok(Start::Last(5)));
        assert_eq!(parse_start("42"), Ok(Start::Offset(42)));
        assert_eq!(
            parse_start("2022-04-09"),
            Ok(Start::Time(Day::from_civil(2022, 4, 9).unwrap().start().millis()))
        );
        assert!(parse_start("yesterday").unwrap_err().contains("`beginning`, `end`"));
    }
}
