//! Opening the configured view store (`store.kind`), and `swabstream store
//! init`, which creates it (the SQLite file, or the Scylla keyspace and
//! tables) ahead of the first worker.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use swabstream_store::ViewStore;
use swabstream_store_scylla::cql::Replication;
use swabstream_store_scylla::{ScyllaSettings, ScyllaStore};
use swabstream_store_sqlite::SqliteStore;

use crate::config::{Config, ScyllaConfig, StoreKind};

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
        StoreKind::Scylla => open_scylla(&config.store.scylla, &config.kafka.topic),
    }
}

/// Opens the configured store for reading; refuses to create one.
pub fn open_existing(config: &Config) -> anyhow::Result<Box<dyn ViewStore>> {
    match config.store.kind {
        StoreKind::Sqlite => {
            let path = config.store_path();
            Ok(Box::new(SqliteStore::open_existing(&path, &config.kafka.topic)?))
        }
        // A reader (views, status) says at once that the cluster is away.
        StoreKind::Scylla => {
            let c = &config.store.scylla;
            let store = ScyllaStore::open(&scylla_settings(c), &config.kafka.topic)
                .with_context(|| format!("opening the ScyllaDB view store at {}", c.nodes))?;
            Ok(Box::new(store))
        }
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

/// Opens (creating the keyspace and tables if missing) the Scylla store.
/// While the cluster cannot be reached (an outage, nodes restarting) it waits
/// and tries again, saying so in the log; a setting that cannot work fails at once.
pub fn open_scylla(config: &ScyllaConfig, topic: &str) -> anyhow::Result<Box<dyn ViewStore>> {
    let settings = scylla_settings(config);
    let mut wait = Duration::from_millis(500);
    loop {
        match ScyllaStore::open(&settings, topic) {
            Ok(store) => return Ok(Box::new(store)),
            Err(e) if e.is_transient() => {
                tracing::warn!(
                    nodes = %config.nodes,
                    keyspace = %config.keyspace,
                    error = %e,
                    "waiting for ScyllaDB; trying again in {wait:?}"
                );
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("opening the ScyllaDB view store (keyspace {})", config.keyspace)
                });
            }
        }
    }
}

fn scylla_settings(config: &ScyllaConfig) -> ScyllaSettings {
    ScyllaSettings {
        nodes: swabstream_store_scylla::split_nodes(&config.nodes),
        keyspace: config.keyspace.clone(),
        replication: if config.datacenters.is_empty() {
            Replication::Simple(config.replication_factor)
        } else {
            Replication::PerDatacenter(config.datacenters.clone())
        },
        consistency: config.consistency.clone(),
        username: config.username.clone(),
        password: config.password.as_ref().map(|p| p.expose().to_owned()),
        request_timeout: config.request_timeout,
    }
}
