//! The gateway's way into Kafka: an idempotent, acks=all producer whose
//! every record has its own delivery future, so that a request is answered
//! 202 only once Kafka acknowledged each of its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use swabstream_kafka::{Cluster, Quiet};

/// The producer and what is known about the cluster's reachability.
pub struct Sink {
    producer: FutureProducer<Quiet>,
    topic: String,
    reachable: AtomicBool,
    last_problem: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Sink {
    /// `max_queued` bounds the records librdkafka holds unacknowledged; the
    /// gateway's own admission keeps below it, this is the backstop.
    pub fn new(cluster: &Cluster, topic: &str, max_queued: usize) -> anyhow::Result<Sink> {
        let max_messages = max_queued.clamp(1, 10_000_000).to_string();
        let mut tuning = vec![
            // Small batches: a scanner waits for the answer.
            ("linger.ms", "2"),
            ("queue.buffering.max.messages", &max_messages[..]),
            // Records of a request answered 503 after the ack timeout
            // may still be delivered (the scanner's retry reuses the
            // event ids, so the pipeline dedupes them); after this
            // long they are dropped from the queue.
            ("delivery.timeout.ms", "120000"),
        ];
        if cluster.embedded {
            // The embedded broker serves a connection's requests one at a
            // time, each waiting for its WAL flush: pipelined requests only
            // queue there, each carrying a fifth of what one would, while
            // librdkafka spins on them (measured: 40 µs of its CPU per
            // event at 10 per request, against 3 with one in flight, and
            // 22k events/s against 26k).
            tuning.push(("max.in.flight.requests.per.connection", "1"));
        }
        let producer = cluster.producer_config(&tuning).create_with_context(Quiet)?;
        Ok(Sink {
            producer,
            topic: topic.to_owned(),
            reachable: AtomicBool::new(true),
            last_problem: std::sync::Mutex::new(None),
        })
    }

    /// Queues one record and returns the future of its acknowledgement.
    pub fn send(&self, key: &[u8], payload: &[u8]) -> Result<DeliveryFuture, KafkaError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        self.producer.send_result(record).map_err(|(e, _)| e)
    }

    /// Records handed to librdkafka and not yet acknowledged or failed.
    pub fn queued(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Whether the last metadata request reached the cluster.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn last_problem(&self) -> Option<String> {
        self.last_problem.lock().ok().and_then(|p| p.clone())
    }

    /// Asks the cluster for the topic's metadata (blocking, up to `timeout`).
    pub fn check(&self, timeout: Duration) -> bool {
        let problem = if let Some((code, reason)) = self.producer.client().fatal_error() {
            Some(format!("the producer failed fatally ({code:?}): {reason}"))
        } else {
            match self.producer.client().fetch_metadata(Some(&self.topic), timeout) {
                Ok(m) => match m.topics().first() {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => None,
                    _ => Some(format!("topic `{}` is not available", self.topic)),
                },
                Err(e) => Some(format!("Kafka is not reachable: {e}")),
            }
        };
        let ok = problem.is_none();
        if ok != self.reachable.swap(ok, Ordering::Relaxed) {
            match &problem {
                None => tracing::info!("Kafka is reachable again"),
                Some(p) => tracing::warn!("{p}"),
            }
        }
        if let Ok(mut last) = self.last_problem.lock() {
            *last = problem;
        }
        ok
    }

    /// Waits up to `limit` for everything queued to be acknowledged.
    pub fn flush(&self, limit: Duration) -> usize {
        let _ = self.producer.flush(limit);
        self.queued()
    }
}

/// Re-checks reachability every `every` until the sink is dropped elsewhere
/// (the caller made the first check).
pub fn watch(sink: Arc<Sink>, every: Duration) {
    let weak = Arc::downgrade(&sink);
    drop(sink);
    std::thread::Builder::new()
        .name("gateway-readiness".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(sink) = weak.upgrade() else { break };
                sink.check(Duration::from_secs(2));
            }
        })
        .expect("a thread can be started");
}
