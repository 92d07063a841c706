//! `swabstream views`: the views in the view store, summed over partitions.

use std::process::ExitCode;

use swabstream_store::ViewStore;

use crate::config::Config;
use crate::output::ViewOutput;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    output: ViewOutput,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let store = ViewStore::open_existing(&config.store_path(), &config.kafka.topic)?;
    args.output.print(&store.views()?)?;
    Ok(ExitCode::SUCCESS)
}
