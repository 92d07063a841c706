//! swabstream's Kafka edge, one rdkafka code path for the embedded broker and
//! for a real cluster:
//! - [`Cluster`]: client settings, with librdkafka keys passed through (SASL, TLS, ...);
//! - [`ensure_topics`]: creates missing topics with a configured partition count;
//! - [`Publisher`]: the idempotent, acks=all producer, keyed by `person_ref`;
//! - [`worker`]: the consumer-group worker and the replay, both driving
//!   [`swabstream_pipeline::PartitionRunner`] over polled batches.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

pub mod dlq;
mod producer;
pub mod worker;

pub use producer::{Delivery, Publisher, WaitError};
/// Kafka's default partitioner of keyed records; it lives in the core, which
/// checks every record against it (SPEC §3.1).
pub use swabstream_core::placement::partition_of;

/// Where the cluster is and how to talk to it.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// `host:port,…`.
    pub bootstrap: String,
    /// librdkafka settings for every client, applied after swabstream's own
    /// so they win (SASL, TLS, ...).
    pub client: BTreeMap<String, String>,
    /// Settings for consumers only (librdkafka warns about consumer settings
    /// given to a producer, and the other way round).
    pub consumer: BTreeMap<String, String>,
    /// Settings for producers only.
    pub producer: BTreeMap<String, String>,
    /// Whether this is the embedded broker (tansu), whose fetches want
    /// different defaults from a Kafka cluster's ([`EMBEDDED_FETCH_WAIT_MS`]).
    pub embedded: bool,
}

/// `fetch.wait.max.ms` for consumers of the embedded broker. tansu's fetch
/// handler sleeps after every fetch, even one that found records: half the
/// remaining wait when that is 250 ms or more, else all of it. At
/// librdkafka's default of 500 ms each fetch so took 250 ms and capped a
/// consumer at a few fetches a second whatever the engine; at 10 ms a fetch
/// costs ~10 ms. The price is an idle consumer's ~100 fetches a second
/// (measured in ARCHITECTURE.md). A Kafka cluster answers a fetch as soon as
/// it has data, so its consumers keep librdkafka's default.
pub const EMBEDDED_FETCH_WAIT_MS: &str = "10";

/// Which kind of client a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Consumer,
    Producer,
}

impl Cluster {
    pub fn new(bootstrap: impl Into<String>) -> Cluster {
        Cluster { bootstrap: bootstrap.into(), ..Cluster::default() }
    }

    /// The embedded broker at `bootstrap`.
    pub fn embedded(bootstrap: impl Into<String>) -> Cluster {
        Cluster { bootstrap: bootstrap.into(), embedded: true, ..Cluster::default() }
    }

    /// A client configuration: the bootstrap servers, `defaults`, then the
    /// pass-through settings for every client and for the `role`.
    pub fn config(&self, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        // librdkafka logs through `log`; keep its chatter about an absent
        // broker from flooding the terminal while it reconnects.
        c.set("log.connection.close", "false");
        if role == Role::Consumer && self.embedded {
            c.set("fetch.wait.max.ms", EMBEDDED_FETCH_WAIT_MS);
        }
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        let own = match role {
            Role::Admin => None,
            Role::Consumer => Some(&self.consumer),
            Role::Producer => Some(&self.producer),
        };
        for (k, v) in self.client.iter().chain(own.into_iter().flatten()) {
            c.set(k, v);
        }
        c
    }
}

/// What every swabstream producer is: idempotent with acks=all (Kafka keeps
/// each acknowledged record once per partition, in order, across retries),
/// with the Java client's keyed partitioner, so that a person's events land
/// in one partition whichever client published them.
pub const PRODUCER_GUARANTEES: [(&str, &str); 3] =
    [("enable.idempotence", "true"), ("acks", "all"), ("partitioner", "murmur2_random")];

impl Cluster {
    /// A producer configuration: [`PRODUCER_GUARANTEES`], then `tuning`,
    /// then the pass-through settings.
    pub fn producer_config(&self, tuning: &[(&str, &str)]) -> ClientConfig {
        let all: Vec<(&str, &str)> = PRODUCER_GUARANTEES.iter().chain(tuning).copied().collect();
        self.config(Role::Producer, &all)
    }
}

/// A topic swabstream needs.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
}

/// Creates the topics that do not exist yet; existing ones are left as they
/// are (their partition count is theirs).
pub async fn ensure_topics(cluster: &Cluster, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<Quiet> = cluster.config(Role::Admin, &[]).create_with_context(Quiet)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => anyhow::bail!("cannot create topic `{name}`: {e}"),
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, asking the cluster.
pub fn partition_count(cluster: &Cluster, topic: &str) -> anyhow::Result<i32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer<Quiet> = cluster
        .config(Role::Consumer, &[("group.id", "swabstream-metadata")])
        .create_with_context(Quiet)?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow::anyhow!("topic `{topic}` does not exist"))?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic `{topic}`: {:?}", RDKafkaErrorCode::from(e));
    }
    drop_in_background(c);
    Ok(t.partitions().len() as i32)
}

/// Drops an rdkafka client on a thread of its own and waits at most 10 s for
/// it: a consumer's drop polls until it has left its group and has no upper
/// bound when the broker is gone.
pub(crate) fn drop_in_background<T: Send + 'static>(client: T) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(client);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(10));
}

/// librdkafka's own log lines. It reports every failed connection while a
/// broker is away (and retries on its own), so its errors are warnings here,
/// at most one every few seconds for the same facility.
pub(crate) fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
            if throttled(fac) {
                tracing::warn!(target: "librdkafka", "{fac}: {msg}");
            }
        }
        L::Notice | L::Info => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
        L::Debug => tracing::trace!(target: "librdkafka", "{fac}: {msg}"),
    }
}

/// Errors a client reports outside any call (connections, the group).
/// Reaching the end of a partition is news, not an error: the poll loop reads it.
pub(crate) fn log_client_error(error: rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::error::KafkaError;
    let eof = match &error {
        KafkaError::PartitionEOF(_) => true,
        KafkaError::Global(code) => *code == RDKafkaErrorCode::PartitionEOF,
        _ => false,
    };
    if !eof && throttled("client-error") {
        tracing::warn!("kafka: {error}: {reason}");
    }
}

/// A client context that logs like the others (used where no callbacks are needed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// True at most once per 5 s per `key`: for log lines that every request,
/// poll or reconnection would otherwise repeat while a broker is away.
pub fn throttled(key: &str) -> bool {
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());
    let Ok(mut last) = LAST.lock() else { return true };
    let now = Instant::now();
    match last.get(key) {
        Some(t) if now.duration_since(*t) < Duration::from_secs(5) => false,
        _ => {
            last.insert(key.to_owned(), now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_throttled_line_is_due_once_per_window_and_key() {
        assert!(super::throttled("test-a"));
        assert!(!super::throttled("test-a"));
        assert!(!super::throttled("test-a"));
        assert!(super::throttled("test-b"), "another key has its own window");
    }
}
