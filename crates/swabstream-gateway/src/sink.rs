//! The gateway's way into Kafka: an idempotent, acks=all producer whose
//! every record has its own delivery future, so that a request is answered
//! 202 only once Kafka acknowledged each of its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use swabstream_kafka::{Cluster, Quiet};

/// The producers and what is known about the cluster's reachability.
pub struct Sink {
    /// One or more producers, each its own connection; a record goes to the
    /// one its key picks, so one person's events keep their order.
    producers: Vec<FutureProducer<Quiet>>,
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
    /// `producers`: how many producers (connections) share the records; None
    /// chooses ([`default_producers`]).
    pub fn new(
        cluster: &Cluster,
        topic: &str,
        max_queued: usize,
        producers: Option<usize>,
    ) -> anyhow::Result<Sink> {
        let count = producers.unwrap_or_else(|| default_producers(cluster));
        anyhow::ensure!(
            (1..=64).contains(&count),
            "producers must be between 1 and 64, not {count}"
        );
        let max_messages = (max_queued / count).clamp(1, 10_000_000).to_string();
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
        let producers = (0..count)
            .map(|_| cluster.producer_config(&tuning).create_with_context(Quiet))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sink {
            producers,
            topic: topic.to_owned(),
            reachable: AtomicBool::new(true),
            last_problem: std::sync::Mutex::new(None),
        })
    }

    /// Queues one record and returns the future of its acknowledgement.
    pub fn send(&self, key: &[u8], payload: &[u8]) -> Result<DeliveryFuture, KafkaError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        self.producer_for(key).send_result(record).map_err(|(e, _)| e)
    }

    /// The producer a key's records go through: always the same one for a
    /// key, so that one person's events reach their partition in order.
    fn producer_for(&self, key: &[u8]) -> &FutureProducer<Quiet> {
        &self.producers[producer_index(key, self.producers.len())]
    }

    /// How many producers share the records.
    pub fn producers(&self) -> usize {
        self.producers.len()
    }

    /// Records handed to librdkafka and not yet acknowledged or failed.
    pub fn queued(&self) -> usize {
        self.producers.iter().map(|p| usize::try_from(p.in_flight_count()).unwrap_or(0)).sum()
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
        let fatal = self.producers.iter().find_map(|p| p.client().fatal_error());
        let problem = if let Some((code, reason)) = fatal {
            Some(format!("the producer failed fatally ({code:?}): {reason}"))
        } else {
            match self.producers[0].client().fetch_metadata(Some(&self.topic), timeout) {
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
        let deadline = std::time::Instant::now() + limit;
        for p in &self.producers {
            let _ = p.flush(deadline.saturating_duration_since(std::time::Instant::now()));
        }
        self.queued()
    }
}

/// Producers per gateway when not configured: several on the embedded
/// broker, which serves each connection's requests one at a time (each
/// waiting for its WAL flush) but flushes the requests of several
/// connections together; one on Kafka, which pipelines a connection's
/// requests.
pub fn default_producers(cluster: &Cluster) -> usize {
    if cluster.embedded { EMBEDDED_PRODUCERS } else { 1 }
}

/// See [`default_producers`]; chosen by the gateway's load bench.
const EMBEDDED_PRODUCERS: usize = 4;

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

/// Which of `n` producers a key's records go through.
fn producer_index(key: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    // FNV-1a: keys are pseudonyms (uniform hex), any cheap mix spreads them.
    let h = key
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    (h % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::producer_index;

    #[test]
    fn a_key_always_goes_through_the_same_producer_and_keys_spread_over_all() {
        for n in [1, 2, 3, 4, 7] {
            let mut used = vec![0usize; n];
            for i in 0..4000u32 {
                let key = format!("{:064x}", u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let first = producer_index(key.as_bytes(), n);
                assert_eq!(first, producer_index(key.as_bytes(), n), "key {key}, {n} producers");
                used[first] += 1;
            }
            // Each producer takes its share, give or take a fifth.
            for (i, k) in used.iter().enumerate() {
                assert!(
                    (*k as f64) > 4000.0 / n as f64 * 0.8,
                    "producer {i} of {n} took {k} of 4000 keys: {used:?}"
                );
            }
        }
    }
}
