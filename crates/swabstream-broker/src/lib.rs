//! swabstream's embedded Kafka-API broker: the `tansu` broker library run
//! in-process on loopback, storing durably under the data directory. With no
//! brokers configured, every swabstream command talks to this broker through
//! the same rdkafka code path it uses for a real cluster.
//!
//! Two storage engines, both tansu's (ARCHITECTURE.md compares them):
//! - **SlateDB** (the default): an LSM key-value store on the local file
//!   system, holding whole record batches. It writes each produce to a
//!   write-ahead log flushed every 10 ms, and acknowledges once that flush
//!   is done, so an acknowledged record survives a process kill. The local
//!   object store does not fsync: a power loss can lose the last moments.
//!   Fetches from inside a stored batch are mended by [`log`].
//! - **SQLite** (`kafka.embedded_storage = "sqlite"`): a row per record in
//!   one file, each commit a SQLite transaction. Slower by an order of
//!   magnitude; kept for data directories made with it.
//!
//! What this crate does beyond starting tansu:
//! - it runs tansu's Kafka services on an accept loop of its own instead of
//!   `Broker::main`/`serve`: those install SIGINT/SIGTERM handlers, which a
//!   library inside our binary must not do, and a broker built around a
//!   storage of our own (needed for the fetch mend) prints a banner to
//!   stdout, which would corrupt the output of commands such as
//!   `views --json`;
//! - it indexes tansu's SQLite `header` table. Without an index every
//!   fetched record scans all headers (tansu 0.6 `header_fetch.sql`), and
//!   group heartbeats queue behind those scans until consumers time out.
//! - it refuses a data directory whose log another engine made, naming both.

mod log;

pub use log::conflict_retries;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rama::{Context, Service as _};
use slatedb::config::{GarbageCollectorDirectoryOptions, GarbageCollectorOptions, Settings};
use slatedb::object_store::ObjectStore;
use slatedb::object_store::local::LocalFileSystem;
use slatedb::object_store::memory::InMemory;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::{BrokerRegistrationRequest, Storage as _, StorageContainer};
use tokio::task::{JoinHandle, JoinSet};
use url::Url;

use crate::log::Log;

/// Index that makes tansu's per-record header lookup a seek instead of a scan.
const HEADER_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS swabstream_header_topition_offset ON header (topition, offset_id)";

/// The SQLite engine's file, under the data directory.
pub const SQLITE_FILE: &str = "broker.db";
/// The SlateDB engine's directory, under the data directory.
pub const SLATEDB_DIR: &str = "broker-log";

/// How often SlateDB flushes its write-ahead log, which is also how long a
/// produce waits for its acknowledgement at most. SlateDB's default (100 ms,
/// chosen for S3's per-request price) held an acks=all producer to 40k
/// records/s; a local disk has no such price. tansu serves a connection's
/// requests one at a time, each waiting for a flush, so this bounds what a
/// producer waiting on each answer (the gateway) gets through: 2 ms took
/// the gateway at 10 events a request from 7k to 22k events/s, against
/// 10 ms, with no more CPU when idle; 1 ms did no better.
const SLATEDB_FLUSH: Duration = Duration::from_millis(2);

/// Which of tansu's storage engines holds the embedded broker's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogEngine {
    /// Whole batches in SlateDB on the local file system (the default).
    #[default]
    Slatedb,
    /// A row per record in one SQLite file.
    Sqlite,
}

impl LogEngine {
    pub const ALL: [LogEngine; 2] = [LogEngine::Slatedb, LogEngine::Sqlite];

    pub fn name(self) -> &'static str {
        match self {
            LogEngine::Slatedb => "slatedb",
            LogEngine::Sqlite => "sqlite",
        }
    }

    /// Where this engine keeps its log under `data_dir`.
    pub fn location(self, data_dir: &Path) -> PathBuf {
        match self {
            LogEngine::Slatedb => data_dir.join(SLATEDB_DIR),
            LogEngine::Sqlite => data_dir.join(SQLITE_FILE),
        }
    }

    /// The engine an environment variable names (benchmarks' `ENGINE`):
    /// the default when it is unset, an error naming the value when it is
    /// neither engine.
    pub fn from_env(var: &str) -> Result<LogEngine, String> {
        match std::env::var(var) {
            Ok(v) => v.parse().map_err(|e| format!("{var}: {e}")),
            Err(_) => Ok(LogEngine::default()),
        }
    }
}

impl fmt::Display for LogEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LogEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogEngine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown embedded storage {s:?}: expected slatedb or sqlite"))
    }
}

/// What can go wrong starting the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("embedded broker: cannot use {path}: {source}")]
    Path { path: PathBuf, source: std::io::Error },
    #[error("embedded broker: cannot bind 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("embedded broker: {0}")]
    Tansu(String),
    #[error("embedded broker: cannot open its SlateDB log in {path}: {error}")]
    Slatedb { path: PathBuf, error: String },
    #[error("embedded broker: cannot index its SQLite file {path}: {source}")]
    Index { path: PathBuf, source: libsql::Error },
    #[error("embedded broker did not accept connections on port {0} within 10 s")]
    NotListening(u16),
    #[error(
        "embedded broker: {data_dir} holds a log made by the {found} engine ({found_at}), \
         but kafka.embedded_storage is {configured:?}. Set kafka.embedded_storage = \"{found}\" \
         to keep using that log, or use a fresh data directory: a log is not converted \
         between engines in place (replay it through a cluster if it must move)."
    )]
    OtherEngine { data_dir: PathBuf, found: LogEngine, found_at: PathBuf, configured: &'static str },
}

/// Where a running broker keeps its log.
#[derive(Debug, Clone)]
enum Place {
    Durable { engine: LogEngine, path: PathBuf },
    Memory,
}

/// A running embedded broker. Dropping it stops the broker.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    place: Place,
    task: Option<JoinHandle<()>>,
    slate: Option<Arc<slatedb::Db>>,
}

impl fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Starts a broker keeping its log under `data_dir` with `engine`
    /// (created if missing) and listening on `127.0.0.1:port`; port 0 picks
    /// a free port. Returns once the broker accepts connections. A data
    /// directory whose log the other engine made is refused, naming both.
    pub async fn open(data_dir: &Path, engine: LogEngine, port: u16) -> Result<Self, BrokerError> {
        let data_dir = std::path::absolute(data_dir)
            .map_err(|source| BrokerError::Path { path: data_dir.to_path_buf(), source })?;
        std::fs::create_dir_all(&data_dir)
            .map_err(|source| BrokerError::Path { path: data_dir.clone(), source })?;
        for other in LogEngine::ALL.into_iter().filter(|&e| e != engine) {
            let at = other.location(&data_dir);
            let ours = engine.location(&data_dir);
            if at.exists() && !ours.exists() {
                return Err(BrokerError::OtherEngine {
                    data_dir,
                    found: other,
                    found_at: at,
                    configured: engine.name(),
                });
            }
        }
        let path = engine.location(&data_dir);
        let (storage, slate) = match engine {
            LogEngine::Slatedb => {
                std::fs::create_dir_all(&path)
                    .map_err(|source| BrokerError::Path { path: path.clone(), source })?;
                let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| {
                    BrokerError::Slatedb { path: path.clone(), error: e.to_string() }
                })?;
                let db = open_slatedb(Arc::new(store), &path).await?;
                (Storage::Slate(db.clone()), Some(db))
            }
            LogEngine::Sqlite => {
                // tansu joins the URL's path onto the working directory after
                // stripping one leading slash: four slashes keep it absolute.
                let url = Url::parse(&format!("sqlite:///{}", path.display())).map_err(tansu)?;
                (Storage::Sqlite(url, path.clone()), None)
            }
        };
        Self::start(storage, Place::Durable { engine, path }, slate, port).await
    }

    /// Starts a broker that keeps everything in memory (SlateDB on an
    /// in-memory object store: the default engine's code path) and loses it
    /// at stop. For tests and benchmarks of what is not the broker's
    /// durability (they say so), never for users' data.
    pub async fn start_in_memory(port: u16) -> Result<Self, BrokerError> {
        let db = open_slatedb(Arc::new(InMemory::new()), Path::new("memory")).await?;
        Self::start(Storage::Slate(db.clone()), Place::Memory, Some(db), port).await
    }

    async fn start(
        storage: Storage,
        place: Place,
        slate: Option<Arc<slatedb::Db>>,
        port: u16,
    ) -> Result<Self, BrokerError> {
        // The advertised listener must name the real port, so a free one is
        // found before we bind it. Another process could take it in between;
        // then the bind below fails and says so.
        let port = if port == 0 { free_port()? } else { port };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let advertised = Url::parse(&format!("tcp://{addr}")).map_err(tansu)?;
        let (log, sqlite_file) = match storage {
            Storage::Slate(db) => {
                let engine = tansu_storage::slate::Engine::new(
                    CLUSTER_ID,
                    tansu_broker::NODE_ID,
                    advertised.clone(),
                    db,
                );
                (Log::new(StorageContainer::Slate(engine), true), None)
            }
            Storage::Sqlite(url, file) => {
                let container = StorageContainer::builder()
                    .cluster_id(CLUSTER_ID)
                    .node_id(tansu_broker::NODE_ID)
                    .advertised_listener(advertised.clone())
                    .storage(url)
                    .silent(true)
                    .build()
                    .await
                    .map_err(tansu)?;
                (Log::new(container, false), Some(file))
            }
        };
        // Building the engine has created tansu's tables; index them.
        if let Some(file) = &sqlite_file {
            create_header_index(file).await?;
        }
        log.register_broker(BrokerRegistrationRequest {
            broker_id: tansu_broker::NODE_ID,
            cluster_id: CLUSTER_ID.to_owned(),
            incarnation_id: uuid::Uuid::new_v4(),
            rack: None,
        })
        .await
        .map_err(tansu)?;
        let groups = Controller::with_storage(log.clone()).map_err(tansu)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { port, source })?;
        let task = tokio::spawn(accept(listener, groups, log));
        for _ in 0..1000 {
            if task.is_finished() {
                return Err(BrokerError::Bind {
                    port,
                    source: std::io::Error::other("the broker stopped while starting"),
                });
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let me = Self { addr, place, task: Some(task), slate };
                tracing::info!(%addr, storage = %me.storage(), "embedded broker listening");
                return Ok(me);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        Err(BrokerError::NotListening(port))
    }

    /// The address clients bootstrap from, as `host:port`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine and the file or directory holding the log (none in memory).
    pub fn location(&self) -> Option<(LogEngine, &Path)> {
        match &self.place {
            Place::Durable { engine, path } => Some((*engine, path)),
            Place::Memory => None,
        }
    }

    /// Where the broker keeps the log, for people.
    pub fn storage(&self) -> String {
        match &self.place {
            Place::Durable { engine, path } => format!("{} ({engine})", path.display()),
            Place::Memory => "memory (not durable)".to_owned(),
        }
    }

    /// Stops the broker: no more connections, and SlateDB's memtable and
    /// write-ahead log flushed and closed. (What was acknowledged is durable
    /// before this; closing only saves the next start a WAL replay.)
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(db) = self.slate.take()
            && let Err(e) = db.close().await
        {
            tracing::warn!(error = %e, "closing the embedded broker's SlateDB log");
        }
        // SQLite's storage task ends when its last handle drops, just after.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Runs until the broker task ends (it does not on its own) or `stop`
    /// resolves.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) {
        if let Some(task) = self.task.as_mut() {
            tokio::select! {
                _ = task => {}
                () = stop => {}
            }
        }
        self.stop().await;
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

const CLUSTER_ID: &str = "swabstream";

enum Storage {
    Slate(Arc<slatedb::Db>),
    Sqlite(Url, PathBuf),
}

/// tansu's Kafka services on every accepted connection, until aborted
/// (which aborts every connection with it).
async fn accept(listener: tokio::net::TcpListener, groups: Controller<Log>, log: Log) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "embedded broker: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = match tansu_broker::service::services(CLUSTER_ID, groups.clone(), log.clone(), None) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "embedded broker: cannot build its services");
                        continue;
                    }
                };
                connections.spawn(async move {
                    match service.serve(Context::default(), stream).await {
                        Ok(_) => {}
                        Err(tansu_broker::Error::Io(io)) if matches!(
                            io.kind(),
                            std::io::ErrorKind::UnexpectedEof
                                | std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::ConnectionReset
                        ) => {}
                        Err(e) => tracing::debug!(%peer, error = %e, "embedded broker: connection ended"),
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Opens (or creates) the SlateDB database tansu's engine stores to.
async fn open_slatedb(
    store: Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Arc<slatedb::Db>, BrokerError> {
    let gc = GarbageCollectorDirectoryOptions {
        interval: Some(Duration::from_secs(60)),
        // Old enough that nothing still reads them: the broker is the only
        // reader, and compaction swaps files in under a manifest update.
        min_age: Duration::from_secs(600),
    };
    let settings = Settings {
        flush_interval: Some(SLATEDB_FLUSH),
        // SlateDB's default leaves garbage collection off, and then every
        // WAL file (one per flush) and compacted-away table stays on disk.
        garbage_collector_options: Some(GarbageCollectorOptions {
            manifest_options: Some(gc),
            wal_options: Some(GarbageCollectorDirectoryOptions {
                min_age: Duration::from_secs(60),
                ..gc
            }),
            compacted_options: Some(gc),
            compactions_options: Some(gc),
        }),
        ..Settings::default()
    };
    slatedb::Db::builder("log", store)
        .with_settings(settings)
        .build()
        .await
        .map(Arc::new)
        .map_err(|e| BrokerError::Slatedb { path: path.to_path_buf(), error: e.to_string() })
}

fn tansu(e: impl fmt::Display) -> BrokerError {
    BrokerError::Tansu(e.to_string())
}

fn free_port() -> Result<u16, BrokerError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| BrokerError::Bind { port: 0, source })
}

async fn create_header_index(file: &Path) -> Result<(), BrokerError> {
    let index = |source| BrokerError::Index { path: file.to_path_buf(), source };
    let db = libsql::Builder::new_local(file).build().await.map_err(index)?;
    let conn = db.connect().map_err(index)?;
    conn.execute(HEADER_INDEX, ()).await.map_err(index)?;
    Ok(())
}
