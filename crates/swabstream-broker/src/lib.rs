//! swabstream's embedded Kafka-API broker: the `tansu-broker` library run
//! in-process on loopback, storing durably to one SQLite file under the data
//! directory. With no brokers configured, every swabstream command talks to
//! this broker through the same rdkafka code path it uses for a real cluster.
//!
//! Two things the library does not do on its own, and this crate does:
//! - it indexes tansu's `header` table. Without an index every fetched record
//!   scans all headers (tansu 0.6 `header_fetch.sql`), and since storage
//!   requests are served one at a time, group heartbeats queue behind those
//!   scans and consumers time out. DLQ records carry headers, so this matters.
//! - it stops without touching signal handlers: `Broker::main` installs
//!   SIGINT/SIGTERM handlers, which a library inside our binary must not do;
//!   we run `serve` on a task and abort it instead. SQLite's transactions
//!   keep the file consistent across an abort.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tansu_broker::{broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;
use tokio::task::JoinHandle;
use url::Url;

/// Index that makes tansu's per-record header lookup a seek instead of a scan.
const HEADER_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS swabstream_header_topition_offset ON header (topition, offset_id)";

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
    #[error("embedded broker: cannot index its SQLite file {path}: {source}")]
    Index { path: PathBuf, source: libsql::Error },
    #[error("embedded broker did not accept connections on port {0} within 10 s")]
    NotListening(u16),
}

/// A running embedded broker. Dropping it stops the broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    file: Option<PathBuf>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a broker storing to `file` (created if missing) and listening
    /// on `127.0.0.1:port`; port 0 picks a free port. Returns once the broker
    /// accepts connections.
    pub async fn start(file: &Path, port: u16) -> Result<Self, BrokerError> {
        let file = std::path::absolute(file)
            .map_err(|source| BrokerError::Path { path: file.to_path_buf(), source })?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| BrokerError::Path { path: dir.to_path_buf(), source })?;
        }
        // tansu joins the URL's path onto the working directory after
        // stripping one leading slash: four slashes keep the path absolute.
        let storage = Url::parse(&format!("sqlite:///{}", file.display())).map_err(tansu)?;
        Self::start_with(storage, Some(file), port).await
    }

    /// Starts a broker that keeps everything in memory and loses it at stop.
    /// For benchmarks of what is not the broker's durability (they say so),
    /// never for users' data.
    pub async fn start_in_memory(port: u16) -> Result<Self, BrokerError> {
        let storage = Url::parse("memory://tansu/").map_err(tansu)?;
        Self::start_with(storage, None, port).await
    }

    async fn start_with(
        storage: Url,
        file: Option<PathBuf>,
        port: u16,
    ) -> Result<Self, BrokerError> {
        // The advertised listener must name the real port, so a free one is
        // found before tansu binds it. Another process could take it in
        // between; then `serve` fails and we report that below.
        let port = if port == 0 { free_port()? } else { port };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = Url::parse(&format!("tcp://{addr}")).map_err(tansu)?;
        let mut broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
            .node_id(tansu_broker::NODE_ID)
            .cluster_id("swabstream")
            .incarnation_id(uuid::Uuid::new_v4())
            .advertised_listener(listener.clone())
            .otlp_endpoint_url(None)
            .schema_registry(None)
            .storage(storage)
            .listener(listener)
            .authentication(false)
            .tls_server_config(None)
            .silent(true)
            .build()
            .await
            .map_err(tansu)?;
        // `build` has created tansu's tables; index them before serving.
        if let Some(file) = &file {
            create_header_index(file).await?;
        }
        let task = tokio::spawn(async move {
            if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        });
        for _ in 0..1000 {
            if task.is_finished() {
                return Err(BrokerError::Bind {
                    port,
                    source: std::io::Error::other("the broker stopped while starting"),
                });
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                tracing::info!(%addr, storage = %storage_name(file.as_deref()), "embedded broker listening");
                return Ok(Self { addr, file, task: Some(task) });
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

    /// The SQLite file the broker stores to (none when it keeps all in memory).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Where the broker keeps the log, for people: the file, or "memory".
    pub fn storage(&self) -> String {
        storage_name(self.file.as_deref())
    }

    /// Stops the broker and waits until its task has ended.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        // The storage task ends when its last handle drops, just after.
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

fn storage_name(file: Option<&Path>) -> String {
    match file {
        Some(f) => f.display().to_string(),
        None => "memory (not durable)".to_owned(),
    }
}

fn tansu(e: impl std::fmt::Display) -> BrokerError {
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
