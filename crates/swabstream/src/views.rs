//! `swabstream views`: the views in the configured view store, summed over
//! partitions — the live version's, or `--version NAME`'s — and `views diff
//! A B`, the rows that differ between two versions.

use std::process::ExitCode;

use serde_json::json;
use swabstream_views::VIEW_NAMES;

use crate::config::Config;
use crate::output::ViewOutput;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ViewsCommand>,
    /// The version to print (default: the live one; `swabstream versions list` lists them).
    #[arg(long, value_name = "NAME")]
    version: Option<String>,
    #[command(flatten)]
    output: ViewOutput,
}

#[derive(Debug, clap::Subcommand)]
enum ViewsCommand {
    /// Print the rows that differ between versions A and B, view by view;
    /// exit 1 when any do, 0 when the versions are equal.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
struct DiffArgs {
    /// The first version (the left side).
    a: String,
    /// The second version (the right side).
    b: String,
    /// Print one JSON object: both names, `equal`, and the differences per view.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::store::open_existing(config)?;
    if let Some(ViewsCommand::Diff(d)) = args.command {
        return diff(&*store, &d);
    }
    let views = match &args.version {
        Some(name) => store.version_views(&store.version(name)?)?,
        None => store.views()?,
    };
    args.output.print(&views)?;
    Ok(ExitCode::SUCCESS)
}

fn diff(store: &dyn swabstream_store::ViewStore, d: &DiffArgs) -> anyhow::Result<ExitCode> {
    let (a, b) = (store.version(&d.a)?, store.version(&d.b)?);
    let differences = store.version_views(&a)?.differences(&store.version_views(&b)?);
    // `differences` names the view first ("city_daily 2022-04-09: …").
    let of_view = |view: &str| -> Vec<&String> {
        differences.iter().filter(|l| l.split(' ').next() == Some(view)).collect()
    };
    if d.json {
        let per_view: serde_json::Map<String, serde_json::Value> = VIEW_NAMES
            .iter()
            .map(|v| ((*v).to_owned(), json!(of_view(v))))
            .filter(|(_, rows)| rows.as_array().is_some_and(|r| !r.is_empty()))
            .collect();
        let out = json!({
            "a": a.name,
            "b": b.name,
            "equal": differences.is_empty(),
            "rows_differing": differences.len(),
            "differences": per_view,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if differences.is_empty() {
        println!("versions `{a}` and `{b}` hold the same views");
    } else {
        println!("{} rows differ between `{a}` (left) and `{b}` (right):", differences.len());
        for view in VIEW_NAMES {
            let rows = of_view(view);
            if rows.is_empty() {
                continue;
            }
            println!("{view}: {} rows", rows.len());
            for r in rows {
                println!("  {}", r.strip_prefix(view).unwrap_or(r).trim_start());
            }
        }
    }
    Ok(if differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
