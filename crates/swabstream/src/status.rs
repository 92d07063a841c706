//! `swabstream status`: the screen an operator reads first. Per partition:
//! the view version its worker writes, its owner's epoch and last sign of life, the
//! checkpoint, the log end, the lag, and the ages of the last commit and of
//! the last snapshot; the consumer group's members; DLQ records per reason.
//!
//! Exit status: 0 when every partition has a live owner and none is stalled,
//! 1 when one is not (each problem is named), 2 for usage or configuration
//! errors (including a store or cluster that cannot be read).
//!
//! The rules, from one look (no second sample needed):
//! - an owner is *live* when its last sign of life (a claim, or the touch
//!   every worker makes each second) is younger than `--silent-after`;
//! - the version a partition's worker writes is the one it showed life in
//!   last (the live one, except for the second a worker takes to switch
//!   after a promotion); the line shows that version's checkpoint;
//! - a partition is *stalled* when it has lag and its last commit is older
//!   than `--stalled-after` (or it has lag and was never committed): a worker
//!   that keeps up commits after every batch, so lag whose last commit is old
//!   is lag that has not fallen for that long.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use swabstream_kafka::dlq;
use swabstream_store::PartitionStatus;

use crate::config::Config;
use crate::connect;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A partition with lag whose last commit is older than this is stalled
    /// (e.g. 60s, 5m, 1h).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    stalled_after: Duration,
    /// An owner silent for longer than this is not live (workers touch their
    /// partitions every second).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    silent_after: Duration,
    /// Do not read the DLQ (its counts take a read of the whole topic).
    #[arg(long)]
    no_dlq: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `90`, `90s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration like 60s, 500ms, 5m or 1h");
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    })
}

/// One partition's line.
#[derive(Debug, Serialize, PartialEq)]
pub struct PartitionLine {
    pub partition: i32,
    /// The view version the partition's worker writes (the one with its
    /// latest sign of life); None when never claimed.
    pub version: Option<String>,
    /// The latest claim's epoch; None when never claimed.
    pub epoch: Option<i64>,
    pub owner_live: bool,
    /// Seconds since the owner's last sign of life.
    pub last_sign_of_life_age_s: Option<f64>,
    /// The checkpoint: the next offset to apply.
    pub checkpoint: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    pub lag: i64,
    pub last_commit_age_s: Option<f64>,
    pub snapshot_offset: Option<i64>,
    pub snapshot_bytes: Option<u64>,
    pub last_snapshot_age_s: Option<f64>,
    pub stalled: bool,
    /// What is wrong, in words; empty when nothing is.
    pub problems: Vec<String>,
}

/// The rules of the module's header, for one partition at `now_ms`.
pub fn assess(
    w: &dlq::Watermarks,
    s: Option<&PartitionStatus>,
    now_ms: i64,
    stalled_after: Duration,
    silent_after: Duration,
) -> PartitionLine {
    let age = |t: i64| (now_ms - t).max(0) as f64 / 1000.0;
    let checkpoint = s.and_then(|s| s.next_offset);
    let lag = (w.high - checkpoint.unwrap_or(w.low)).max(0);
    let silent = s.map(|s| age(s.touched_at_ms));
    let owner_live = silent.is_some_and(|a| a <= silent_after.as_secs_f64());
    let commit_age = s.and_then(|s| s.committed_at_ms).map(age);
    let stalled = lag > 0 && commit_age.is_none_or(|a| a > stalled_after.as_secs_f64());
    let mut problems = Vec::new();
    match silent {
        None => problems.push("never claimed by a worker".to_owned()),
        Some(a) if !owner_live => problems.push(format!("no live owner (silent for {a:.0} s)")),
        _ => {}
    }
    if stalled {
        problems.push(match commit_age {
            Some(a) => format!("stalled: lag {lag} and no commit for {a:.0} s"),
            None => format!("stalled: lag {lag} and never committed"),
        });
    }
    PartitionLine {
        partition: w.partition,
        version: None,
        epoch: s.map(|s| s.epoch),
        owner_live,
        last_sign_of_life_age_s: silent,
        checkpoint,
        log_start: w.low,
        log_end: w.high,
        lag,
        last_commit_age_s: commit_age,
        snapshot_offset: s.and_then(|s| s.snapshot_offset),
        snapshot_bytes: s.and_then(|s| s.snapshot_bytes),
        last_snapshot_age_s: s.and_then(|s| s.snapshot_at_ms).map(age),
        stalled,
        problems,
    }
}

#[derive(Debug, Serialize)]
struct Member {
    id: String,
    client_id: String,
    host: String,
}

#[derive(Debug, Serialize)]
struct Group {
    id: String,
    /// The coordinator's word for it (Stable, Empty, ...), or `unknown` when
    /// the cluster does not answer DescribeGroups.
    state: String,
    members: Option<Vec<Member>>,
}

#[derive(Debug, Serialize)]
struct Status {
    ok: bool,
    store: String,
    topic: String,
    /// The live view version: what `views` and `serve` read.
    live_version: String,
    checked_at: String,
    partitions: Vec<PartitionLine>,
    group: Group,
    /// DLQ records per reason, each source record once; None with `--no-dlq`.
    dlq: Option<BTreeMap<String, u64>>,
    problems: Vec<String>,
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::store::open_existing(config)?;
    let kafka = rt.block_on(connect::connect(config))?;
    let result = gather(rt, &args, config, &*store, &kafka.cluster);
    rt.block_on(kafka.stop());
    let status = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    Ok(if status.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn gather(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    config: &Config,
    store: &dyn swabstream_store::ViewStore,
    cluster: &swabstream_kafka::Cluster,
) -> anyhow::Result<Status> {
    let marks = dlq::watermarks(cluster, &config.kafka.topic)?;
    let registry = store.registry()?;
    let live = registry.live()?;
    // Each partition's writer: the version it touched last (the live one
    // wins a tie, and stands for a partition never claimed).
    let mut writes: BTreeMap<i32, (i64, bool, i64)> = BTreeMap::new();
    for l in store.signs_of_life()? {
        let key = (l.touched_at_ms, l.version_id == live.id, l.version_id);
        let e = writes.entry(l.partition).or_insert(key);
        if key > *e {
            *e = key;
        }
    }
    let mut by_version: BTreeMap<i64, BTreeMap<i32, PartitionStatus>> = BTreeMap::new();
    let mut read = |v: &swabstream_store::Version| -> anyhow::Result<()> {
        if let std::collections::btree_map::Entry::Vacant(e) = by_version.entry(v.id) {
            e.insert(store.partitions(v)?.into_iter().map(|s| (s.partition, s)).collect());
        }
        Ok(())
    };
    read(&live)?;
    let version_of = |p: i32| {
        writes.get(&p).and_then(|(_, _, id)| registry.by_id(*id)).unwrap_or_else(|| live.clone())
    };
    for w in &marks {
        read(&version_of(w.partition))?;
    }
    let stored = &by_version[&live.id];
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let partitions: Vec<PartitionLine> = marks
        .iter()
        .map(|w| {
            let v = version_of(w.partition);
            let s = by_version[&v.id].get(&w.partition);
            let mut line = assess(w, s, now_ms, args.stalled_after, args.silent_after);
            line.version = s.map(|_| v.name.clone());
            line
        })
        .collect();
    let mut problems: Vec<String> = partitions
        .iter()
        .flat_map(|p| p.problems.iter().map(move |m| format!("partition {}: {m}", p.partition)))
        .collect();
    for p in stored.keys().filter(|p| **p >= marks.len() as i32) {
        problems.push(format!(
            "the store holds partition {p}, which `{}` does not have",
            config.kafka.topic
        ));
    }
    let group = group(cluster, &config.kafka.group_id);
    let dlq = if args.no_dlq {
        None
    } else {
        let stop = crate::stop_on_signal(rt, "reading the DLQ");
        let mut seen = std::collections::HashSet::new();
        let mut counts = BTreeMap::new();
        crate::topic::read_dlq(cluster, config, &stop, &mut |e| {
            if e.source().is_none_or(|s| seen.insert(s)) {
                *counts.entry(e.reason).or_default() += 1;
            }
        })?;
        Some(counts)
    };
    Ok(Status {
        ok: problems.is_empty(),
        store: store.describe(),
        topic: config.kafka.topic.clone(),
        live_version: live.name.clone(),
        checked_at: swabstream_events::Timestamp::from_millis(now_ms).to_rfc3339(),
        partitions,
        group,
        dlq,
        problems,
    })
}

fn group(cluster: &swabstream_kafka::Cluster, id: &str) -> Group {
    let unknown = |why: String| {
        tracing::debug!("describing group {id}: {why}");
        Group { id: id.to_owned(), state: "unknown".to_owned(), members: None }
    };
    let consumer: BaseConsumer<Silent> = match cluster
        .config(swabstream_kafka::Role::Consumer, &[("group.id", "swabstream-status")])
        .create_with_context(Silent)
    {
        Ok(c) => c,
        Err(e) => return unknown(e.to_string()),
    };
    let list = match consumer.fetch_group_list(Some(id), Duration::from_secs(10)) {
        Ok(l) => l,
        Err(e) => return unknown(e.to_string()),
    };
    let Some(g) = list.groups().iter().find(|g| g.name() == id) else {
        return unknown("not listed".to_owned());
    };
    Group {
        id: id.to_owned(),
        state: if g.state().is_empty() { "unknown".to_owned() } else { g.state().to_owned() },
        members: Some(
            g.members()
                .iter()
                .map(|m| Member {
                    id: m.id().to_owned(),
                    client_id: m.client_id().to_owned(),
                    host: m.client_host().to_owned(),
                })
                .collect(),
        ),
    }
}

/// A client whose complaints are debug lines: asking for the group is
/// best effort (tansu 0.6 drops the connection on DescribeGroups), and its
/// failure is shown as `unknown`, not as warnings.
struct Silent;

impl rdkafka::ClientContext for Silent {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        tracing::debug!(target: "librdkafka", "{fac}: {msg}");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!("describing the group: {error}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Silent {}

fn secs(a: Option<f64>) -> String {
    match a {
        None => "-".to_owned(),
        Some(a) if a < 120.0 => format!("{a:.1}s"),
        Some(a) if a < 7200.0 => format!("{:.0}m", a / 60.0),
        Some(a) => format!("{:.1}h", a / 3600.0),
    }
}

fn print(s: &Status) {
    println!("view store: {}", s.store);
    println!("topic: {}   live version: {}   checked at {}", s.topic, s.live_version, s.checked_at);
    println!(
        "{:>4} {:>10} {:>6} {:>6} {:>8} {:>11} {:>11} {:>9} {:>9} {:>9}  ",
        "part",
        "version",
        "epoch",
        "owner",
        "silent",
        "checkpoint",
        "log end",
        "lag",
        "commit",
        "snapshot"
    );
    for p in &s.partitions {
        println!(
            "{:>4} {:>10} {:>6} {:>6} {:>8} {:>11} {:>11} {:>9} {:>9} {:>9}  {}",
            p.partition,
            p.version.as_deref().unwrap_or("-"),
            p.epoch.map_or("-".to_owned(), |e| e.to_string()),
            if p.owner_live { "live" } else { "NONE" },
            secs(p.last_sign_of_life_age_s),
            p.checkpoint.map_or("-".to_owned(), |c| c.to_string()),
            p.log_end,
            p.lag,
            secs(p.last_commit_age_s),
            secs(p.last_snapshot_age_s),
            if p.stalled { "STALLED" } else { "" },
        );
    }
    match &s.group.members {
        Some(members) => {
            println!("group {} ({}): {} members", s.group.id, s.group.state, members.len());
            for m in members {
                println!("  {} {} {}", m.client_id, m.host, m.id);
            }
        }
        None => println!("group {}: members unknown (the cluster did not describe it)", s.group.id),
    }
    match &s.dlq {
        None => println!("DLQ: not read (--no-dlq)"),
        Some(c) if c.is_empty() => println!("DLQ: empty"),
        Some(c) => {
            let total: u64 = c.values().sum();
            let parts: Vec<String> = c.iter().map(|(r, n)| format!("{r} {n}")).collect();
            println!("DLQ: {total} records: {}", parts.join(", "));
        }
    }
    if s.ok {
        println!("ok");
    } else {
        for p in &s.problems {
            println!("PROBLEM {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(touched: i64, committed: Option<i64>, next: Option<i64>) -> PartitionStatus {
        PartitionStatus {
            partition: 0,
            epoch: 2,
            next_offset: next,
            snapshot_offset: None,
            snapshot_bytes: None,
            touched_at_ms: touched,
            committed_at_ms: committed,
            snapshot_at_ms: None,
        }
    }

    const W: dlq::Watermarks = dlq::Watermarks { partition: 0, low: 0, high: 100 };
    const MIN: Duration = Duration::from_secs(60);
    const SILENT: Duration = Duration::from_secs(15);

    #[test]
    fn a_live_owner_that_keeps_committing_is_fine_even_with_lag() {
        let now = 1_000_000;
        let p = assess(&W, Some(&stored(now - 500, Some(now - 2000), Some(90))), now, MIN, SILENT);
        assert_eq!((p.lag, p.owner_live, p.stalled), (10, true, false));
        assert!(p.problems.is_empty());
    }

    #[test]
    fn lag_with_an_old_commit_is_stalled_and_no_lag_never_is() {
        let now = 1_000_000;
        let p =
            assess(&W, Some(&stored(now - 500, Some(now - 61_000), Some(90))), now, MIN, SILENT);
        assert!(p.stalled && p.owner_live, "{p:?}");
        let p =
            assess(&W, Some(&stored(now - 500, Some(now - 600_000), Some(100))), now, MIN, SILENT);
        assert!(!p.stalled && p.problems.is_empty(), "{p:?}");
        let p = assess(&W, Some(&stored(now, None, None)), now, MIN, SILENT);
        assert!(p.stalled, "lag and never committed");
    }

    #[test]
    fn a_silent_or_missing_owner_is_not_live() {
        let now = 1_000_000;
        let p = assess(&W, Some(&stored(now - 16_000, Some(now), Some(100))), now, MIN, SILENT);
        assert!(!p.owner_live && p.problems[0].starts_with("no live owner"));
        let p = assess(&W, None, now, MIN, SILENT);
        assert!(!p.owner_live && p.problems[0].contains("never claimed"));
        assert_eq!(p.lag, 100);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
