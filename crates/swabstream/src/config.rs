//! Configuration: built-in defaults, then a TOML file, then `SWABSTREAM_*`
//! environment variables (nested keys joined by `__`, e.g.
//! `SWABSTREAM_KAFKA__BROKERS=host:9092`). The embedded default needs none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything a swabstream process can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded broker keeps its log and the embedded view store its file.
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub core: CoreSettings,
    pub worker: WorkerConfig,
    pub metrics: MetricsConfig,
    pub pseudonym: PseudonymConfig,
    pub gateway: GatewayConfig,
    pub serve: ServeConfig,
}

/// The Kafka cluster and topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,…` of a Kafka cluster; unset starts the embedded broker.
    pub brokers: Option<String>,
    /// Port of the embedded broker on 127.0.0.1 (0: any free port).
    pub embedded_port: u16,
    /// The embedded broker's storage engine: `slatedb` (the default) or
    /// `sqlite` (data directories made before SlateDB was the default).
    pub embedded_storage: EmbeddedStorage,
    /// The events topic.
    pub topic: String,
    /// Where invalid and undecodable records go.
    pub dlq_topic: String,
    /// Partitions of topics created by swabstream.
    pub partitions: i32,
    /// Replication factor of topics created by swabstream.
    pub replication_factor: i32,
    /// The workers' consumer group.
    pub group_id: String,
    /// librdkafka settings passed through as they are (SASL, TLS, ...), e.g.
    /// `"security.protocol" = "SASL_SSL"`.
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for consumers only (e.g. `"session.timeout.ms"`).
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for producers only (e.g. `"linger.ms"`).
    pub producer: BTreeMap<String, String>,
}

/// The embedded broker's storage engine (ARCHITECTURE.md compares them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedStorage {
    #[default]
    Slatedb,
    Sqlite,
}

impl EmbeddedStorage {
    pub fn engine(self) -> swabstream_broker::LogEngine {
        match self {
            EmbeddedStorage::Slatedb => swabstream_broker::LogEngine::Slatedb,
            EmbeddedStorage::Sqlite => swabstream_broker::LogEngine::Sqlite,
        }
    }
}

/// Which view store, and where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (the embedded default, one file) or `scylla` (a ScyllaDB cluster).
    pub kind: StoreKind,
    /// The embedded store's file (default: `<data_dir>/views.db`).
    pub path: Option<PathBuf>,
    /// The ScyllaDB cluster, when `kind = "scylla"`.
    pub scylla: ScyllaConfig,
}

/// The view store's kind (SPEC §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sqlite,
    Scylla,
}

/// A ScyllaDB cluster as a view store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaConfig {
    /// `host:port,…` of some of the cluster's nodes (the driver finds the rest).
    pub nodes: String,
    /// The keyspace holding the views; created with `replication` if missing.
    pub keyspace: String,
    /// `SimpleStrategy` with this replication factor, when `datacenters` is empty.
    pub replication_factor: u32,
    /// `NetworkTopologyStrategy`: replicas per datacenter, e.g. `{ dc1 = 3, dc2 = 3 }`.
    pub datacenters: BTreeMap<String, u32>,
    /// Consistency of every read and write (`LOCAL_QUORUM`, `QUORUM`, `ONE`, ...).
    pub consistency: String,
    /// Credentials, when the cluster asks for them (the password better given
    /// as `SWABSTREAM_STORE__SCYLLA__PASSWORD`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Longest wait for one request before it counts as a timeout (and is retried).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: "127.0.0.1:9042".to_owned(),
            keyspace: "swabstream".to_owned(),
            replication_factor: 1,
            datacenters: BTreeMap::new(),
            consistency: "LOCAL_QUORUM".to_owned(),
            username: None,
            password: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Settings of the rules (all workers of a topic must agree).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreSettings {
    /// Days of event time that dedupe and sampling state are kept (SPEC §3.2).
    pub retention_days: u16,
}

/// How a worker batches and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Most records applied per batch.
    pub batch_max_records: usize,
    /// Longest wait to fill a batch.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// How often the applied batches' rows and offsets are committed to the
    /// view store (at most; a revocation, a shutdown or reaching the end of
    /// the log commits at once). The analysts' views lag the log by about
    /// this much; a longer interval writes a row changed by many batches once.
    /// A worker commits at least once a second whatever it says (with its
    /// touch of the store); a replay follows it.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often a partition's state snapshot is written with its checkpoint.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// A partition whose owner showed no life in the view store for this
    /// long makes workers rejoin their group, to have it reassigned.
    #[serde(with = "humantime_serde")]
    pub orphan_after: Duration,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on (unset: no endpoint).
    pub listen: Option<SocketAddr>,
}

/// The secret key of `person_ref` pseudonyms (SPEC §2), for whoever accepts raw ID numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PseudonymConfig {
    /// The key itself (at least 16 bytes); better given as `SWABSTREAM_PSEUDONYM__KEY`.
    pub key: Option<Secret>,
    /// A file holding the key (a trailing newline is not part of it).
    pub key_file: Option<PathBuf>,
}

/// A secret string: never printed, in `Debug` or by `swabstream config`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<secret>")
    }
}

/// The ingest gateway (`swabstream gateway`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to serve HTTP on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// The devices' credentials file (TOML `[[device]]` entries; see README).
    pub credentials: Option<PathBuf>,
    /// Largest request body, in bytes.
    pub max_request_bytes: usize,
    /// Most events in one request.
    pub max_events_per_request: usize,
    /// Request body bytes held at once; beyond, requests get 429.
    pub max_in_flight_bytes: usize,
    /// Events waiting for Kafka's acknowledgement; beyond, requests get 429 (503 if Kafka is away).
    pub max_queued_events: usize,
    /// Longest time to receive a request's body (408 beyond).
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest wait for Kafka's acknowledgements before answering 503.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// `Retry-After` when saturated.
    #[serde(with = "humantime_serde")]
    pub retry_after_saturated: Duration,
    /// `Retry-After` when Kafka is unreachable or slow to acknowledge.
    #[serde(with = "humantime_serde")]
    pub retry_after_unavailable: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let o = swabstream_gateway::Options::default();
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            credentials: None,
            max_request_bytes: o.max_request_bytes,
            max_events_per_request: o.max_events_per_request,
            max_in_flight_bytes: o.max_in_flight_bytes,
            max_queued_events: o.max_queued_events,
            read_timeout: o.read_timeout,
            ack_timeout: o.ack_timeout,
            retry_after_saturated: o.retry_after_saturated,
            retry_after_unavailable: o.retry_after_unavailable,
        }
    }
}

/// The analysts' service (`swabstream serve`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to serve HTTP (API and dashboard) on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// Address of the read-only PostgreSQL-protocol SQL endpoint (unset: none).
    pub sql_listen: Option<SocketAddr>,
    /// The analysts' credentials file (TOML `[[device]]` entries, made by
    /// `swabstream credential --device NAME`).
    pub credentials: Option<PathBuf>,
    /// How often the view store is read (answers come from that copy).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            sql_listen: None,
            credentials: None,
            refresh_interval: Duration::from_secs(1),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("swabstream-data"),
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            core: CoreSettings::default(),
            worker: WorkerConfig::default(),
            metrics: MetricsConfig::default(),
            pseudonym: PseudonymConfig::default(),
            gateway: GatewayConfig::default(),
            serve: ServeConfig::default(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            embedded_port: 0,
            embedded_storage: EmbeddedStorage::default(),
            topic: "sampling-events".to_owned(),
            dlq_topic: "sampling-events-dlq".to_owned(),
            // Room to grow: partitions are the unit of parallelism, and a
            // topic's count cannot change under its views (README: scaling out).
            partitions: 12,
            replication_factor: 1,
            group_id: "swabstream-views".to_owned(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl Default for CoreSettings {
    fn default() -> Self {
        CoreSettings { retention_days: 7 }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_max_records: 16384,
            batch_max_wait: Duration::from_millis(200),
            commit_interval: Duration::from_millis(250),
            snapshot_interval: Duration::from_secs(30),
            orphan_after: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Defaults, then `file` (or `swabstream.toml` in the working directory,
    /// if present), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                anyhow::ensure!(f.exists(), "configuration file {} does not exist", f.display());
                fig = fig.merge(Toml::file(f));
            }
            None if Path::new("swabstream.toml").exists() => {
                fig = fig.merge(Toml::file("swabstream.toml"))
            }
            None => {}
        }
        fig = fig.merge(Env::prefixed("SWABSTREAM_").split("__"));
        let cfg: Config = fig.extract().context("reading the configuration")?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.kafka.partitions > 0, "kafka.partitions must be at least 1");
        anyhow::ensure!(
            self.core.retention_days >= 7,
            "core.retention_days must be at least 7 (SPEC §3.2)"
        );
        anyhow::ensure!(
            self.worker.batch_max_records > 0,
            "worker.batch_max_records must be at least 1"
        );
        anyhow::ensure!(
            self.kafka.topic != self.kafka.dlq_topic,
            "kafka.topic and kafka.dlq_topic must differ"
        );
        self.gateway_options().check().context("in [gateway]")?;
        Ok(())
    }

    /// The cluster as clients see it, at `bootstrap`.
    /// The embedded broker at `bootstrap`, with the pass-through settings.
    pub fn embedded_cluster(&self, bootstrap: String) -> swabstream_kafka::Cluster {
        swabstream_kafka::Cluster { embedded: true, ..self.cluster(bootstrap) }
    }

    pub fn cluster(&self, bootstrap: String) -> swabstream_kafka::Cluster {
        swabstream_kafka::Cluster {
            bootstrap,
            client: self.kafka.client.clone(),
            consumer: self.kafka.consumer.clone(),
            producer: self.kafka.producer.clone(),
            embedded: false,
        }
    }

    /// The pseudonym key, if one is configured.
    pub fn pseudonym_key(&self) -> anyhow::Result<Option<swabstream_events::PseudonymKey>> {
        let bytes = match (&self.pseudonym.key, &self.pseudonym.key_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set pseudonym.key or pseudonym.key_file, not both")
            }
            (Some(k), None) => k.expose().as_bytes().to_vec(),
            (None, Some(f)) => {
                let mut b = std::fs::read(f)
                    .with_context(|| format!("reading pseudonym.key_file {}", f.display()))?;
                while matches!(b.last(), Some(b'\n' | b'\r')) {
                    b.pop();
                }
                b
            }
            (None, None) => return Ok(None),
        };
        swabstream_events::PseudonymKey::new(bytes)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("pseudonym key: {e}"))
    }

    /// The gateway's options.
    pub fn gateway_options(&self) -> swabstream_gateway::Options {
        let g = &self.gateway;
        swabstream_gateway::Options {
            topic: self.kafka.topic.clone(),
            max_request_bytes: g.max_request_bytes,
            max_events_per_request: g.max_events_per_request,
            max_in_flight_bytes: g.max_in_flight_bytes,
            max_queued_events: g.max_queued_events,
            read_timeout: g.read_timeout,
            ack_timeout: g.ack_timeout,
            retry_after_saturated: g.retry_after_saturated,
            retry_after_unavailable: g.retry_after_unavailable,
        }
    }

    /// The embedded store's file.
    pub fn store_path(&self) -> PathBuf {
        self.store.path.clone().unwrap_or_else(|| self.data_dir.join("views.db"))
    }
}

#[cfg(test)]
// figment's Jail returns its own large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "swabstream.toml",
                r#"
                data_dir = "/var/lib/swabstream"
                [kafka]
                brokers = "k1:9092,k2:9092"
                partitions = 12
                [kafka.client]
                "security.protocol" = "SASL_SSL"
                [worker]
                batch_max_wait = "50ms"
                commit_interval = "1s"
                "#,
            )?;
            jail.set_env("SWABSTREAM_KAFKA__PARTITIONS", "24");
            jail.set_env("SWABSTREAM_WORKER__SNAPSHOT_INTERVAL", "2m");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("/var/lib/swabstream"));
            assert_eq!(c.kafka.brokers.as_deref(), Some("k1:9092,k2:9092"));
            assert_eq!(c.kafka.partitions, 24, "the environment wins over the file");
            assert_eq!(c.kafka.client["security.protocol"], "SASL_SSL");
            assert_eq!(c.worker.batch_max_wait, Duration::from_millis(50));
            assert_eq!(c.worker.commit_interval, Duration::from_secs(1));
            assert_eq!(c.worker.snapshot_interval, Duration::from_secs(120));
            assert_eq!(c.kafka.topic, "sampling-events", "unset keys keep their defaults");
            assert_eq!(c.store_path(), PathBuf::from("/var/lib/swabstream/views.db"));
            Ok(())
        });
    }

    #[test]
    fn the_pseudonym_key_is_read_but_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("swabstream.toml", "[gateway]\nack_timeout = \"3s\"\n")?;
            jail.set_env("SWABSTREAM_PSEUDONYM__KEY", "a key of sixteen+ bytes");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.pseudonym_key().unwrap().is_some());
            assert_eq!(c.gateway.ack_timeout, Duration::from_secs(3));
            let shown = format!("{} {c:?}", serde_json::to_string(&c).unwrap());
            assert!(!shown.contains("sixteen"), "{shown}");
            assert!(shown.contains("<secret>"));
            jail.set_env("SWABSTREAM_PSEUDONYM__KEY", "short");
            let e = Config::load(None).unwrap().pseudonym_key().unwrap_err().to_string();
            assert!(e.contains("at least 16 bytes"), "{e}");
            jail.create_file("swabstream.toml", "[gateway]\nmax_in_flight_bytes = 10\n")?;
            let e = format!("{:#}", Config::load(None).unwrap_err());
            assert!(e.contains("max_in_flight_bytes"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("swabstream.toml", "[kafka]\nbrokerz = \"x\"\n")?;
            let e = format!("{:#}", Config::load(None).unwrap_err());
            assert!(e.contains("brokerz"), "{e}");
            jail.create_file("swabstream.toml", "[core]\nretention_days = 3\n")?;
            let e = format!("{:#}", Config::load(None).unwrap_err());
            assert!(e.contains("retention_days must be at least 7"), "{e}");
            jail.create_file("swabstream.toml", "")?;
            jail.set_env("SWABSTREAM_WORKER__BATCH_MAX_WAIT", "soon");
            let e = format!("{:#}", Config::load(None).unwrap_err());
            assert!(e.to_lowercase().contains("batch_max_wait"), "{e}");
            Ok(())
        });
    }
}
