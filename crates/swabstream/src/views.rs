//! `swabstream views`: the views in the configured view store, summed over partitions.

use std::process::ExitCode;

use crate::config::Config;
use crate::output::ViewOutput;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    output: ViewOutput,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::store::open_existing(config)?;
    args.output.print(&store.views()?)?;
    Ok(ExitCode::SUCCESS)
}
