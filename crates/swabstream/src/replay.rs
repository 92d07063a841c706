//! `swabstream replay`: rebuilds the views from the log (from the start, an
//! offset or a timestamp) into a fresh store file and reports whether they
//! equal the live views; or, with `--into NAME`, into a new version of the
//! configured store, beside the live one, while workers keep running (then
//! `views diff` and `promote`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use swabstream_events::Timestamp;
use swabstream_kafka::worker::{self, ReplayFrom};

use crate::config::Config;
use crate::connect;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start at this offset in every partition (default: the beginning).
    #[arg(long, conflicts_with = "from_time")]
    from_offset: Option<i64>,
    /// Start at the first record published at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_ts)]
    from_time: Option<Timestamp>,
    /// The fresh store to build (default: `<data_dir>/replay-<unix time>.db`).
    #[arg(long, conflicts_with = "into")]
    out: Option<PathBuf>,
    /// Rebuild into a new version of the configured view store, named NAME
    /// (refused if it exists: drop it first), while the live version keeps
    /// serving and workers keep running. `promote NAME` makes it live.
    #[arg(long, value_name = "NAME")]
    into: Option<String>,
}

fn parse_ts(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s).map_err(|e| format!("`{s}` {e}"))
}

fn from_of(args: &Args) -> ReplayFrom {
    match (args.from_offset, args.from_time) {
        (Some(o), _) => ReplayFrom::Offset(o),
        (_, Some(t)) => ReplayFrom::Time(t),
        _ => ReplayFrom::Beginning,
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = crate::publish::progress_bar(Some(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub fn run(rt: &tokio::runtime::Runtime, args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.into {
        return into_version(rt, &args, name, config);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        config.data_dir.join(format!("replay-{secs}.db"))
    });
    anyhow::ensure!(
        !out.exists(),
        "{} exists; a replay builds a fresh store (choose another --out)",
        out.display()
    );
    let from = from_of(&args);
    let kafka = rt.block_on(connect::connect(config))?;
    let stop = crate::stop_on_signal(rt, "the replay is interrupted");
    let opts = crate::run::options(config, true);
    let store = crate::store::open_sqlite(&out, &config.kafka.topic)?;
    let version = store.live()?;
    let bar = progress_bar();
    let result =
        worker::replay(&kafka.cluster, &opts, store, &version, from, stop, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
    bar.finish_and_clear();
    rt.block_on(kafka.stop());
    let (report, offsets) = result?;
    eprintln!("replay into {}: {}", out.display(), crate::run::summary(&report));

    let live = match crate::store::open_existing(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("no live views to compare with ({e})");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let live_offsets: std::collections::BTreeMap<i32, i64> =
        live.offsets(&live.live()?)?.into_iter().collect();
    let rebuilt = crate::store::open_sqlite(&out, &config.kafka.topic)?.views()?;
    let live_where = live.describe();
    let diffs = rebuilt.differences(&live.views().context("reading the live views")?);
    if diffs.is_empty() {
        println!("replay: the rebuilt views equal the live views in {}", live_where);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "replay: {} rows differ from the live views in {} (left = rebuilt, right = live):",
        diffs.len(),
        live_where
    );
    for d in diffs.iter().take(20) {
        println!("  {d}");
    }
    if from != ReplayFrom::Beginning {
        println!("(expected: the replay did not start at the beginning of the log)");
        return Ok(ExitCode::SUCCESS);
    }
    if offsets != live_offsets {
        println!(
            "(the live store is at offsets {live_offsets:?}, the replay at {offsets:?}: the live worker has not caught up or moved on)"
        );
    }
    Ok(ExitCode::FAILURE)
}

/// `replay --into NAME`: a new version of the configured store, rebuilt from
/// the log beside the live one. Exit 0 when rebuilt (however it compares:
/// a rule change is expected to differ), 1 when a worker took the version
/// over (it was promoted while replaying), 2 for anything else.
fn into_version(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    name: &str,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let from = from_of(args);
    // Kafka first: a cluster that cannot be reached leaves no empty version behind.
    let kafka = rt.block_on(connect::connect(config))?;
    let mut store = crate::store::open(config)?;
    let made = store
        .create_version(name)
        .with_context(|| format!("making version `{name}` in {}", store.describe()));
    let version = match made {
        Ok(v) => v,
        Err(e) => {
            rt.block_on(kafka.stop());
            return Err(e);
        }
    };
    let live = store.live()?;
    let stop = crate::stop_on_signal(rt, "the replay is interrupted");
    let opts = crate::run::options(config, true);
    let bar = progress_bar();
    let result =
        worker::replay(&kafka.cluster, &opts, store, &version, from, stop, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
    bar.finish_and_clear();
    rt.block_on(kafka.stop());
    let (report, offsets) = match result {
        Ok(r) => r,
        Err(e) if e.downcast_ref::<worker::ReplayFenced>().is_some() => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            return Err(e.context(format!(
                "version `{name}` holds what was replayed so far; drop it (`swabstream versions drop {name}`) before rebuilding it again"
            )));
        }
    };
    crate::report(&format!(
        "replay into version `{name}`: {}; checkpoints {offsets:?}",
        crate::run::summary(&report)
    ));
    let store = crate::store::open_existing(config)?;
    let differing = store.version_views(&version)?.differences(&store.version_views(&live)?).len();
    if differing == 0 {
        println!("version `{name}` holds the same views as the live version `{live}`");
    } else {
        println!(
            "version `{name}`: {differing} rows differ from the live version `{live}` (`swabstream views diff {live} {name}` lists them)"
        );
    }
    println!(
        "make it live with `swabstream promote {name}`: running workers continue it from these checkpoints"
    );
    Ok(ExitCode::SUCCESS)
}
