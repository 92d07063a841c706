//! The idempotent, acks=all producer that publishes events and DLQ records.
//!
//! It is a `BaseProducer` polled by its caller: the callers (publish, the
//! worker) are synchronous loops that must know when *everything* they sent
//! was acknowledged, which `wait` answers by counting deliveries in the
//! producer's context.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::Cluster;

/// Counts acknowledgements and failures as librdkafka reports them.
#[derive(Debug, Default)]
pub struct Delivery {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<(Option<RDKafkaErrorCode>, String)>>,
}

impl Delivery {
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The first delivery error seen, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().map(|e| e.as_ref().map(|(_, m)| m.clone())).unwrap_or(None)
    }

    /// The error code of the first delivery error seen, if it had one.
    pub fn first_error_code(&self) -> Option<RDKafkaErrorCode> {
        self.first_error.lock().map(|e| e.as_ref().and_then(|(c, _)| *c)).unwrap_or(None)
    }

    /// Starts counting afresh (before sending a batch again).
    pub fn reset(&self) {
        self.acked.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            *first = None;
        }
    }
}

impl ClientContext for Delivery {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::log_client_error(error, reason);
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| (e.rdkafka_error_code(), e.to_string()));
                }
            }
        }
    }
}

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Why waiting for acknowledgements ended without all of them.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{failed} records were not acknowledged by Kafka: {first}")]
    Failed { failed: u64, first: String },
    #[error("{0} records still unacknowledged when told to stop")]
    Interrupted(i32),
    #[error("{0} records still unacknowledged after the time allowed")]
    TimedOut(i32),
}

/// An idempotent producer with acks=all: Kafka keeps every acknowledged
/// record exactly once per partition, in order, even when sends are retried.
pub struct Publisher {
    producer: BaseProducer<Delivery>,
    sent: u64,
    cluster: Cluster,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("sent", &self.sent).finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(cluster: &Cluster) -> anyhow::Result<Publisher> {
        let producer = Self::create(cluster)?;
        let configured = cluster
            .producer
            .get("message.max.bytes")
            .or_else(|| cluster.client.get("message.max.bytes"))
            .and_then(|v| v.trim().parse().ok());
        Ok(Publisher {
            producer,
            sent: 0,
            cluster: cluster.clone(),
            max_message_bytes: configured.unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
        })
    }

    fn create(cluster: &Cluster) -> anyhow::Result<BaseProducer<Delivery>> {
        let producer = cluster
            .producer_config(&[
                ("linger.ms", "5"),
                ("queue.buffering.max.messages", "200000"),
                // Retried for up to 10 minutes: a broker restart must not
                // fail a publish or a worker's DLQ.
                ("delivery.timeout.ms", "600000"),
            ])
            .create_with_context(Delivery::default())?;
        Ok(producer)
    }

    /// Asks the cluster for `topic`'s metadata now, so that the producer's
    /// connection is up and the topic known before its first record: the
    /// worker's first DLQ acknowledgement took 0.87 s from a producer made
    /// just before, the whole of a short run's DLQ wait. Asked twice:
    /// librdkafka requests the idempotent producer's id when a metadata
    /// answer comes, from a broker whose connection is up, and else retries
    /// on a 500 ms timer; the first answer (over the bootstrap connection)
    /// often came before the connection to the broker it names was up, and
    /// the first acknowledgement then took 505–517 ms (five runs in five
    /// on the embedded broker), against 7–14 ms after a second answer.
    /// Errors are left to the sends.
    pub fn prepare(&self, topic: &str, timeout: Duration) {
        let started = Instant::now();
        let client = self.producer.client();
        if client.fetch_metadata(Some(topic), timeout).is_ok() {
            let _ = client.fetch_metadata(Some(topic), timeout.saturating_sub(started.elapsed()));
        }
    }

    /// The largest record this producer sends (its `message.max.bytes`:
    /// the configured one, or librdkafka's default), key and headers included.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The error that made the idempotent producer unusable, if one did
    /// (librdkafka then fails every record; only a new producer helps).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer.client().fatal_error().map(|(code, msg)| format!("{code:?}: {msg}"))
    }

    /// Replaces the producer with a new one (after a fatal error); what the
    /// old one had not delivered is dropped with it, for the caller to send again.
    pub fn renew(&mut self) -> anyhow::Result<()> {
        let old = std::mem::replace(&mut self.producer, Self::create(&self.cluster)?);
        crate::drop_in_background(old);
        Ok(())
    }

    /// Serves deliveries until nothing is in flight, for at most `limit`.
    pub fn settle(&self, limit: Duration) {
        let started = Instant::now();
        while self.producer.in_flight_count() > 0 && started.elapsed() < limit {
            self.serve();
        }
    }

    /// Queues one record; when librdkafka's queue is full, serves
    /// acknowledgements until there is room.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        self.try_send(topic, key, payload, headers)
            .map_err(|e| anyhow::anyhow!("cannot queue a record for `{topic}`: {e}"))
    }

    /// Like [`Self::send`], with librdkafka's error as it is.
    pub fn try_send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Records queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Serves acknowledgements without waiting.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Sends what lingers now and serves the acknowledgements that arrive
    /// within a millisecond. Not `flush(timeout)`: rdkafka 0.38's
    /// `BaseProducer::flush` polls in slices of 100 ms that each run to
    /// their end, however early the acknowledgements came, so every wait
    /// for a small batch (a worker's DLQ records) took 100 ms.
    fn serve(&self) {
        // With a zero timeout this only asks librdkafka to send now rather
        // than after `linger.ms`; it cannot wait, as delivery reports come
        // as events that only `poll` serves.
        let _ = self.producer.flush(Duration::ZERO);
        self.producer.poll(Duration::from_millis(1));
    }

    /// Serves the acknowledgements that have arrived, without waiting, and
    /// says whether [`Self::wait`] would now return at once: nothing queued
    /// is unacknowledged, or a failure is known.
    pub fn ready(&self) -> bool {
        let _ = self.producer.flush(Duration::ZERO);
        self.producer.poll(Duration::ZERO);
        self.producer.in_flight_count() == 0 || self.delivery().failed() > 0
    }

    pub fn delivery(&self) -> &Delivery {
        self.producer.context()
    }

    /// Waits until every queued record was acknowledged (or failed, which is
    /// an error), until `stop` says so, or until `limit` passed.
    pub fn wait(&self, limit: Duration, stop: impl Fn() -> bool) -> Result<(), WaitError> {
        let started = Instant::now();
        loop {
            self.serve();
            let pending = self.producer.in_flight_count();
            let d = self.delivery();
            if d.failed() > 0 {
                return Err(WaitError::Failed {
                    failed: d.failed(),
                    first: d.first_error().unwrap_or_default(),
                });
            }
            if pending == 0 {
                return Ok(());
            }
            if stop() {
                return Err(WaitError::Interrupted(pending));
            }
            if started.elapsed() >= limit {
                return Err(WaitError::TimedOut(pending));
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Anything unacknowledged here is reported by `wait`'s callers; do
        // not block a drop on a broker that may be gone.
        let _ = self.producer.flush(Duration::from_millis(100));
    }
}
