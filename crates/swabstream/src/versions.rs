//! The view versions of the configured store (SPEC §9): `promote NAME`
//! (or `--back`) makes one live, `versions list` shows them, `versions drop
//! NAME` deletes one that is not live. `replay --into NAME` makes them and
//! `views --version` / `views diff` read them.

use std::process::ExitCode;

use serde_json::json;
use swabstream_events::Timestamp;
use swabstream_store::{PartitionStatus, Version, ViewStore};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The version to make live (`swabstream versions list` lists them).
    #[arg(required_unless_present = "back", conflicts_with = "back", value_name = "NAME")]
    name: Option<String>,
    /// Make the version that was live before the last promotion live again.
    #[arg(long)]
    back: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Every version: its name, whether it is live, when it was made, and its
    /// partitions' checkpoints.
    List {
        /// Print one JSON array, with every partition's checkpoint.
        #[arg(long)]
        json: bool,
    },
    /// Delete a version that is not live: its rows, checkpoints and snapshots.
    Drop {
        /// The version to delete.
        name: String,
    },
}

pub fn promote(args: PromoteArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let mut store = crate::store::open_existing(config)?;
    let p = match &args.name {
        Some(name) => store.promote(name)?,
        None => store.promote_back()?,
    };
    let parts = store.partitions(&p.to)?;
    if args.json {
        let out = json!({
            "live": p.to.name,
            "was": p.from.name,
            "changed": p.from != p.to,
            "checkpoints": checkpoints_json(&parts),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if p.from == p.to {
        println!("`{}` is live already: nothing changed", p.to);
        return Ok(ExitCode::SUCCESS);
    }
    println!("`{}` is live now (was `{}`), at {}", p.to, p.from, summary(&parts));
    println!(
        "running workers switch to it within a few seconds and continue it from its checkpoints; `swabstream promote --back` (or `promote {}`) undoes it",
        p.from
    );
    if parts.iter().all(|s| s.next_offset.is_none()) {
        println!(
            "(`{}` holds no checkpoint yet: the workers rebuild it from the start of the log)",
            p.to
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::List { json } => list(&*crate::store::open_existing(config)?, json),
        Command::Drop { name } => {
            let mut store = crate::store::open_existing(config)?;
            let v = store.drop_version(&name)?;
            println!("version `{v}` dropped: its rows, checkpoints and snapshots are deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(store: &dyn ViewStore, as_json: bool) -> anyhow::Result<ExitCode> {
    let registry = store.registry()?;
    let mut versions: Vec<(Version, i64, Vec<PartitionStatus>)> = Vec::new();
    for (name, meta) in &registry.versions {
        let v = Version { name: name.clone(), id: meta.id };
        let parts = store.partitions(&v)?;
        versions.push((v, meta.created_at_ms, parts));
    }
    // Oldest first: the order they were made in.
    versions.sort_by_key(|(v, _, _)| v.id);
    let created = |ms: i64| Timestamp::from_millis(ms).to_rfc3339();
    if as_json {
        let out: Vec<serde_json::Value> = versions
            .iter()
            .map(|(v, at, parts)| {
                json!({
                    "name": v.name,
                    "live": v.name == registry.live,
                    "previous": registry.previous.as_deref() == Some(v.name.as_str()),
                    "created_at": created(*at),
                    "records_counted": parts.iter().filter_map(|p| p.next_offset).sum::<i64>(),
                    "checkpoints": checkpoints_json(parts),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<8} {:<32} checkpoints", "version", "live", "created");
    for (v, at, parts) in &versions {
        let live = if v.name == registry.live {
            "LIVE"
        } else if registry.previous.as_deref() == Some(v.name.as_str()) {
            "previous"
        } else {
            ""
        };
        println!("{:<20} {:<8} {:<32} {}", v.name, live, created(*at), summary(parts));
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoints_json(parts: &[PartitionStatus]) -> Vec<serde_json::Value> {
    parts
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "checkpoint": p.next_offset,
                "epoch": p.epoch,
                "snapshot_offset": p.snapshot_offset,
            })
        })
        .collect()
}

/// "3 partitions, offsets 0:120 1:98 2:133 (351 records)", or "no checkpoint".
fn summary(parts: &[PartitionStatus]) -> String {
    let committed: Vec<(i32, i64)> =
        parts.iter().filter_map(|p| p.next_offset.map(|o| (p.partition, o))).collect();
    if committed.is_empty() {
        return "no checkpoint".to_owned();
    }
    let total: i64 = committed.iter().map(|(_, o)| o).sum();
    let offsets: Vec<String> = committed.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    format!("{} partitions, offsets {} ({total} records)", committed.len(), offsets.join(" "))
}
