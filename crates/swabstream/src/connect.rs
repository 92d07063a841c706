//! Which Kafka a command talks to: the configured cluster, or the embedded
//! broker of the data directory.
//!
//! One embedded broker serves a data directory. The first process that needs
//! it (or `swabstream broker`) takes `<data_dir>/broker.lock`, starts it and
//! writes its address to `<data_dir>/broker.addr`; other processes on the same
//! data directory find the lock taken and connect to that address.

use std::fs::{File, TryLockError};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use swabstream_broker::EmbeddedBroker;
use swabstream_kafka::{Cluster, TopicSpec, ensure_topics};

use crate::config::Config;

/// A connection to Kafka, keeping the embedded broker alive if this process hosts it.
#[derive(Debug)]
pub struct Kafka {
    pub cluster: Cluster,
    broker: Option<EmbeddedBroker>,
    lock: Option<(File, PathBuf)>,
}

impl Kafka {
    pub async fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            b.stop().await;
        }
        if let Some((_, addr_file)) = self.lock.take() {
            let _ = std::fs::remove_file(addr_file);
        }
    }
}

/// Connects as the configuration says, and creates the topics if missing.
pub async fn connect(config: &Config) -> anyhow::Result<Kafka> {
    let kafka = match &config.kafka.brokers {
        Some(brokers) => {
            Kafka { cluster: config.cluster(brokers.clone()), broker: None, lock: None }
        }
        None => embedded(config, false).await?,
    };
    let topics = [&config.kafka.topic, &config.kafka.dlq_topic].map(|name| TopicSpec {
        name: name.clone(),
        partitions: config.kafka.partitions,
        replication_factor: config.kafka.replication_factor,
    });
    ensure_topics(&kafka.cluster, &topics)
        .await
        .with_context(|| format!("creating the topics on {}", kafka.cluster.bootstrap))?;
    Ok(kafka)
}

/// The data directory's embedded broker: started here, or (unless `host`
/// is required) the one another process started.
pub async fn embedded(config: &Config, host: bool) -> anyhow::Result<Kafka> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = dir.join("broker.lock");
    let addr_path = dir.join("broker.addr");
    let lock =
        File::create(&lock_path).with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {
            let engine = config.kafka.embedded_storage.engine();
            let broker = EmbeddedBroker::open(dir, engine, config.kafka.embedded_port).await?;
            let mut f = File::create(&addr_path)?;
            writeln!(f, "{}", broker.bootstrap())?;
            let cluster = config.embedded_cluster(broker.bootstrap());
            Ok(Kafka { cluster, broker: Some(broker), lock: Some((lock, addr_path)) })
        }
        Err(TryLockError::WouldBlock) => {
            // Another process holds the lock; it writes the address right
            // after its broker listens.
            let mut addr = String::new();
            for _ in 0..100 {
                addr = std::fs::read_to_string(&addr_path).unwrap_or_default().trim().to_owned();
                if !addr.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::ensure!(
                !host,
                "the embedded broker of {} already runs (at {addr}) in another process",
                dir.display()
            );
            anyhow::ensure!(
                !addr.is_empty(),
                "another process holds {} but wrote no address to {}",
                lock_path.display(),
                addr_path.display()
            );
            tracing::info!(%addr, "using the embedded broker another process runs");
            Ok(Kafka { cluster: config.embedded_cluster(addr), broker: None, lock: None })
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
    }
}
