//! Opening the configured view store (`store.kind`), and `swabstream store
//! init`, which creates it (the SQLite file, or the Scylla keyspace and
//! tables) ahead of the first worker.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use swabstream_store::ViewStore;
use swabstream_store_sqlite::SqliteStore;

use crate::config::{Config, StoreKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StoreCommand {
    /// Create the configured view store if it does not exist (the SQLite
    /// file; or the Scylla keyspace and tables, from the CQL under
    /// `schemas/`); idempotent.
    Init,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    match args.command {
        StoreCommand::Init => {
            let store = open(config)?;
            println!("view store ready: {}", store.describe());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens the configured store for a worker, creating it if needed.
pub fn open(config: &Config) -> anyhow::Result<Box<dyn ViewStore>> {
    match config.store.kind {
        StoreKind::Sqlite => open_sqlite(&config.store_path(), &config.kafka.topic),
        StoreKind::Scylla => anyhow::bail!("store.kind = \"scylla\": not wired yet"),
    }
}

/// Opens the configured store for reading; refuses to create one.
pub fn open_existing(config: &Config) -> anyhow::Result<Box<dyn ViewStore>> {
    match config.store.kind {
        StoreKind::Sqlite => {
            let path = config.store_path();
            Ok(Box::new(SqliteStore::open_existing(&path, &config.kafka.topic)?))
        }
        StoreKind::Scylla => open(config),
    }
}

/// Opens (creating) an SQLite store file, and the directory it is in.
pub fn open_sqlite(path: &Path, topic: &str) -> anyhow::Result<Box<dyn ViewStore>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = SqliteStore::open(path, topic)
        .with_context(|| format!("opening the view store {}", path.display()))?;
    Ok(Box::new(store))
}
