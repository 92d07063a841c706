//! The worker: a consumer-group member that applies its partitions' records
//! and keeps their views in the view store exactly once; and the replay,
//! which rebuilds views from the log into a fresh store.
//!
//! One loop, on a thread of its own (rdkafka's `BaseConsumer` is polled, and
//! its rebalance callbacks run inside that poll):
//! 1. poll records into per-partition pending batches, until `batch_max_records`,
//!    or until the fetched queue runs dry, or `batch_max_wait`;
//! 2. apply each partition's batch ([`PartitionRunner::apply`]);
//! 3. produce the DLQ records and wait until Kafka acknowledged all of them;
//! 4. write each partition's changed rows with the offset they reflect, and a
//!    state snapshot when one is due, in one store transaction;
//! 5. commit the offsets to Kafka, for lag tools only: on assignment the
//!    worker seeks to the store's checkpoint, never to Kafka's.
//!
//! Revocation applies and commits what is pending for the revoked partitions
//! (with a snapshot) before they are given up; assignment claims the
//! partitions in the store (fencing off their previous owner), restores their
//! snapshots and seeks to them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use swabstream_core::{CoreConfig, DlqRecord, OutcomeCounts, Record};
use swabstream_events::{Reason, Timestamp};
use swabstream_pipeline::{Committed, PartitionRunner, Resume};
use swabstream_store::ViewStore;

use crate::{Cluster, Publisher, Quiet, Role, drop_in_background};

/// What a worker needs to know.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub topic: String,
    pub dlq_topic: String,
    pub group_id: String,
    pub store_path: PathBuf,
    pub core: CoreConfig,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
    pub snapshot_interval: Duration,
    /// Stop once every assigned partition reached the end of the log.
    pub until_caught_up: bool,
    /// A partition nobody has claimed, committed or touched for this long
    /// is orphaned: the worker leaves and rejoins its group to force a
    /// rebalance (see [`run`]).
    pub orphan_after: Duration,
}

/// What a worker did, for its closing line and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub counts: OutcomeCounts,
    pub dlq_records: u64,
    pub batches: u64,
    /// Store commits without a snapshot: how many, and their total time.
    pub commits: u64,
    pub commit_time: Duration,
    /// Store commits with a snapshot: how many, their total time and bytes.
    pub snapshots: u64,
    pub snapshot_time: Duration,
    pub snapshot_bytes: u64,
    /// Claims (store read + snapshot restore): how many and their total time.
    pub claims: u64,
    pub claim_time: Duration,
    pub elapsed: Duration,
}

/// Records of one partition waiting to be applied, copied out of librdkafka's
/// buffers into one arena.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Offset, timestamp, and where the key and the value are in `bytes`.
    items: Vec<(i64, Timestamp, Span, Span)>,
}

/// Where a record's key or value is in [`Pending::bytes`]; `None` if it has none.
type Span = Option<Range<usize>>;

impl Pending {
    fn push(&mut self, offset: i64, ts: Timestamp, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut copy = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        };
        let key = key.map(&mut copy);
        let range = payload.map(&mut copy);
        self.items.push((offset, ts, key, range));
    }

    fn records(&self) -> Vec<Record<'_>> {
        self.items
            .iter()
            .map(|(offset, timestamp, key, range)| Record {
                offset: *offset,
                timestamp: *timestamp,
                key: key.clone().map(|r| &self.bytes[r]),
                payload: range.clone().map(|r| &self.bytes[r]),
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }
}

#[derive(Debug)]
struct Part {
    runner: PartitionRunner,
    pending: Pending,
    last_snapshot: Instant,
    snapshot_at: Option<i64>,
    /// The consumer reported the end of the partition since its last record.
    at_end: bool,
    /// Replay only: stop at this offset.
    until: Option<i64>,
}

impl Part {
    fn done(&self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        match self.until {
            Some(u) => self.runner.next_offset().unwrap_or(0) >= u || self.at_end,
            None => self.at_end,
        }
    }
}

/// The state the poll loop and the rebalance callbacks share.
#[derive(Debug)]
struct Engine {
    store: ViewStore,
    parts: BTreeMap<i32, Part>,
    /// None when replaying: the DLQ records were produced when the log was live.
    dlq: Option<Publisher>,
    dlq_topic: String,
    core: CoreConfig,
    /// The topic's partition count, set before the first claim: the core
    /// checks each record's partition against it (SPEC §3.1).
    partitions: i32,
    snapshot_interval: Duration,
    report: Report,
    stop: Arc<AtomicBool>,
    /// An error raised inside a rebalance callback, for the loop to return.
    fatal: Option<anyhow::Error>,
}

impl Engine {
    fn new(
        store: ViewStore,
        opts: &WorkerOptions,
        dlq: Option<Publisher>,
        stop: Arc<AtomicBool>,
    ) -> Engine {
        Engine {
            store,
            parts: BTreeMap::new(),
            dlq,
            dlq_topic: opts.dlq_topic.clone(),
            core: opts.core,
            partitions: 0,
            snapshot_interval: opts.snapshot_interval,
            report: Report::default(),
            stop,
            fatal: None,
        }
    }

    fn claim(&mut self, partition: i32) -> anyhow::Result<Resume> {
        let started = Instant::now();
        let (runner, resume) =
            PartitionRunner::claim(&mut self.store, partition, self.partitions, self.core)
                .with_context(|| format!("claiming partition {partition}"))?;
        let took = started.elapsed();
        self.report.claims += 1;
        self.report.claim_time += took;
        tracing::info!(partition, ?resume, took_ms = took.as_millis() as u64, "claimed partition");
        let snapshot_at = match resume {
            Resume::At(o) => Some(o),
            Resume::Beginning => None,
        };
        self.parts.insert(
            partition,
            Part {
                runner,
                pending: Pending::default(),
                last_snapshot: Instant::now(),
                snapshot_at,
                at_end: false,
                until: None,
            },
        );
        Ok(resume)
    }

    fn push(
        &mut self,
        partition: i32,
        offset: i64,
        ts: Timestamp,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        // Records of a partition no longer ours (revoked, or fenced off) are
        // left to the partition's new owner.
        if let Some(part) = self.parts.get_mut(&partition) {
            if part.until.is_some_and(|u| offset >= u) {
                part.at_end = true;
                return;
            }
            part.pending.push(offset, ts, key, payload);
            part.at_end = false;
        }
    }

    fn pending(&self) -> usize {
        self.parts.values().map(|p| p.pending.items.len()).sum()
    }

    /// Applies and commits the pending records of the partitions `which`
    /// selects, with a snapshot if `final_snapshot` (revocation, shutdown)
    /// or when one is due. Returns the offsets committed, for Kafka.
    fn flush(
        &mut self,
        which: impl Fn(i32) -> bool,
        final_snapshot: bool,
    ) -> anyhow::Result<Vec<(i32, i64)>> {
        let started = Instant::now();
        let mut touched = Vec::new();
        let mut dlq_sent = 0u64;
        for (&p, part) in self.parts.iter_mut().filter(|(p, _)| which(**p)) {
            if part.pending.is_empty() && !final_snapshot {
                continue;
            }
            let records = part.pending.records();
            let (dlq, counts) = part.runner.apply(&records);
            drop(records);
            part.pending.clear();
            record_metrics(&counts, &dlq);
            self.report.counts.add(&counts);
            if let Some(producer) = self.dlq.as_mut() {
                for d in &dlq {
                    producer.send(&self.dlq_topic, None, &d.payload, Some(dlq_headers(p, d)))?;
                    dlq_sent += 1;
                }
            }
            touched.push(p);
        }
        if dlq_sent > 0
            && let Some(producer) = self.dlq.as_ref()
        {
            // Step 3: nothing is committed before the DLQ holds the batch's
            // rejected records. A broker outage waits here; a stop request
            // leaves without committing (the next owner redoes the batch).
            let stop = self.stop.clone();
            producer
                .wait(Duration::from_secs(900), || stop.load(Ordering::Relaxed))
                .context("waiting for the DLQ's acknowledgements")?;
            self.report.dlq_records += dlq_sent;
        }
        let mut committed = Vec::new();
        for p in touched {
            let Some(part) = self.parts.get_mut(&p) else { continue };
            let next = part.runner.next_offset();
            let due = part.last_snapshot.elapsed() >= self.snapshot_interval || final_snapshot;
            let snapshot = due && next.is_some() && next != part.snapshot_at;
            let t = Instant::now();
            match part.runner.commit(&mut self.store, snapshot) {
                Ok(Committed::Written { next_offset, snapshot, snapshot_bytes }) => {
                    let took = t.elapsed();
                    if snapshot {
                        self.report.snapshots += 1;
                        self.report.snapshot_bytes += snapshot_bytes as u64;
                        self.report.snapshot_time += took;
                        part.last_snapshot = Instant::now();
                        part.snapshot_at = Some(next_offset);
                        metrics::histogram!("swabstream_snapshot_seconds")
                            .record(took.as_secs_f64());
                    } else {
                        self.report.commits += 1;
                        self.report.commit_time += took;
                    }
                    committed.push((p, next_offset));
                }
                Ok(Committed::Replaying { .. } | Committed::Idle) => {}
                Err(e) if e.is_fenced() => {
                    tracing::warn!(partition = p, "another worker owns the partition now: {e}");
                    self.parts.remove(&p);
                }
                Err(e) => return Err(e).context(format!("committing partition {p}")),
            }
        }
        if !committed.is_empty() {
            self.report.batches += 1;
            metrics::histogram!("swabstream_batch_seconds").record(started.elapsed().as_secs_f64());
        }
        Ok(committed)
    }

    /// Marks this worker's partitions alive in the store.
    fn touch(&mut self) -> anyhow::Result<()> {
        let owned: Vec<(i32, i64)> =
            self.parts.iter().map(|(p, part)| (*p, part.runner.epoch())).collect();
        self.store.touch(&owned).context("marking partitions alive")?;
        Ok(())
    }

    /// Why the group looks stuck, if it does: a partition of the topic that
    /// is not ours and whose owner showed no life for `after`, or no
    /// partition at all for `after` since joining.
    fn orphaned(&self, partitions: i32, after: Duration, joined: Instant) -> Option<String> {
        if joined.elapsed() < after {
            return None;
        }
        if self.parts.is_empty() {
            return Some(format!("no partition was assigned in {:.0?}", joined.elapsed()));
        }
        let leases = match self.store.leases() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("reading partition leases: {e}");
                return None;
            }
        };
        let now = now().0 / 1000;
        for p in (0..partitions).filter(|p| !self.parts.contains_key(p)) {
            match leases.iter().find(|l| l.partition == p) {
                None => return Some(format!("partition {p} was never claimed")),
                Some(l) if now - l.touched_at_ms > after.as_millis() as i64 => {
                    return Some(format!(
                        "partition {p} showed no life for {} s",
                        (now - l.touched_at_ms) / 1000
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    fn caught_up(&self) -> bool {
        !self.parts.is_empty() && self.parts.values().all(Part::done)
    }
}

fn record_metrics(c: &OutcomeCounts, dlq: &[DlqRecord]) {
    metrics::counter!("swabstream_events_total", "outcome" => "accepted").increment(c.accepted);
    metrics::counter!("swabstream_events_total", "outcome" => "duplicate").increment(c.duplicates);
    metrics::counter!("swabstream_events_total", "outcome" => "rejected")
        .increment(c.rejected_total());
    metrics::counter!("swabstream_events_total", "outcome" => "skipped").increment(c.skipped);
    for r in Reason::ALL {
        let n = dlq.iter().filter(|d| d.reason == *r).count() as u64;
        if n > 0 {
            metrics::counter!("swabstream_dlq_records_total", "reason" => r.as_str()).increment(n);
        }
    }
}

/// The DLQ record's headers: why, and where the record came from. The value
/// is the original bytes, untouched.
fn dlq_headers(partition: i32, d: &DlqRecord) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = d.offset.to_string();
    let mut h = OwnedHeaders::new()
        .insert(Header { key: "reason", value: Some(d.reason.as_str()) })
        .insert(Header { key: "source_partition", value: Some(&partition) })
        .insert(Header { key: "source_offset", value: Some(&offset) });
    if !d.detail.is_empty() {
        h = h.insert(Header { key: "detail", value: Some(&d.detail) });
    }
    h
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while holding the lock is a bug; the loop stops on it anyway.
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects the consumer's rebalances to the engine.
struct Ctx {
    engine: Arc<Mutex<Engine>>,
    topic: String,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::log_client_error(error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::log_librdkafka(level, fac, log_message);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`) carry each
    /// partition's high watermark; the lag is measured from the worker's own
    /// position, which is ahead of what it committed to Kafka.
    fn stats(&self, stats: rdkafka::Statistics) {
        let engine = lock(&self.engine);
        let Some(topic) = stats.topics.get(&self.topic) else { return };
        for (p, part) in &engine.parts {
            if let Some(s) = topic.partitions.get(p)
                && s.hi_offset >= 0
            {
                let next = part.runner.next_offset().unwrap_or(0);
                metrics::gauge!("swabstream_partition_lag", "partition" => p.to_string())
                    .set((s.hi_offset - next).max(0) as f64);
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut engine = lock(&self.engine);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                for p in partitions {
                    match engine.claim(p) {
                        Ok(resume) => {
                            let offset = match resume {
                                Resume::Beginning => Offset::Beginning,
                                Resume::At(o) => Offset::Offset(o),
                            };
                            let _ = tpl.set_partition_offset(&self.topic, p, offset);
                        }
                        Err(e) => {
                            engine.fatal.get_or_insert(e);
                        }
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    engine.fatal.get_or_insert(anyhow::anyhow!("assigning partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                tracing::info!(?revoked, "partitions revoked: committing what is pending");
                match engine.flush(|p| revoked.contains(&p), true) {
                    Ok(offsets) => commit_to_kafka(consumer, &self.topic, &offsets),
                    // Not fatal: the partitions' next owner redoes what was
                    // not committed.
                    Err(e) => tracing::warn!("could not commit revoked partitions: {e:#}"),
                }
                for p in revoked {
                    engine.parts.remove(&p);
                }
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up all partitions");
                engine.parts.clear();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Offsets for lag tools; the store's checkpoint is the truth, so a failure
/// here is only logged.
fn commit_to_kafka<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    offsets: &[(i32, i64)],
) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in offsets {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!("offset commit to Kafka failed (lag tools only): {e}");
    }
}

/// The record's Kafka timestamp, as the core takes it. Scaling saturates, so
/// an absurd value stays out of range (the core makes the record MALFORMED)
/// rather than overflowing. A record without one (-1, old clients) becomes
/// `Record::NO_TIMESTAMP`, never the clock: arrival time would make a replay
/// judge the record differently from the live run.
fn timestamp_of(m: &impl Message) -> Timestamp {
    m.timestamp().to_millis().map_or(Record::NO_TIMESTAMP, Timestamp::from_millis)
}

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
}

fn consumer_defaults(group: &str) -> Vec<(&str, &str)> {
    vec![
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "true"),
        // Kafka caps a fetch at fetch.max.bytes; a smaller cap keeps the
        // embedded broker's fetches (served one at a time) short, so group
        // heartbeats are not queued behind them.
        ("fetch.max.bytes", "1048576"),
        ("statistics.interval.ms", "5000"),
    ]
}

/// Polls one batch into the engine. Returns when `max` records came, the
/// fetched queue ran dry with something pending, `wait` passed, or `stop`.
fn poll_batch<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    engine: &Mutex<Engine>,
    max: usize,
    wait: Duration,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + wait;
    let mut n = 0usize;
    while n < max && !stop.load(Ordering::Relaxed) {
        let timeout = if n > 0 {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100))
        };
        match consumer.poll(timeout) {
            None => {
                if n > 0 || Instant::now() >= deadline {
                    return;
                }
            }
            Some(Ok(m)) => {
                let ts = timestamp_of(&m);
                lock(engine).push(m.partition(), m.offset(), ts, m.key(), m.payload());
                n += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(part) = lock(engine).parts.get_mut(&p) {
                    part.at_end = true;
                }
            }
            Some(Err(e)) => {
                if crate::throttled("consumer-poll") {
                    tracing::warn!("consumer: {e}");
                }
            }
        }
    }
}

fn open_store(opts: &WorkerOptions) -> anyhow::Result<ViewStore> {
    if let Some(dir) = opts.store_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ViewStore::open(&opts.store_path, &opts.topic)
        .with_context(|| format!("opening the view store {}", opts.store_path.display()))
}

/// Runs a consumer-group worker until `stop` is set (or, with
/// `until_caught_up`, until its partitions reached the end of the log).
pub fn run(
    cluster: &Cluster,
    opts: &WorkerOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let store = open_store(opts)?;
    let engine = Arc::new(Mutex::new(Engine::new(
        store,
        opts,
        Some(Publisher::new(cluster)?),
        stop.clone(),
    )));
    let ctx = Ctx { engine: engine.clone(), topic: opts.topic.clone() };
    let consumer: BaseConsumer<Ctx> = cluster
        .config(Role::Consumer, &consumer_defaults(&opts.group_id))
        .create_with_context(ctx)?;
    let partitions = crate::partition_count(cluster, &opts.topic)?;
    lock(&engine).partitions = partitions;
    consumer.subscribe(&[&opts.topic])?;
    tracing::info!(topic = %opts.topic, group = %opts.group_id, "worker started");
    let mut joined = Instant::now();
    let mut touched = Instant::now();
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        poll_batch(&consumer, &engine, opts.batch_max_records, opts.batch_max_wait, &stop);
        let mut e = lock(&engine);
        if let Some(err) = e.fatal.take() {
            break Err(err);
        }
        match e.flush(|_| true, false) {
            Ok(offsets) => commit_to_kafka(&consumer, &opts.topic, &offsets),
            Err(err) => break Err(err),
        }
        if opts.until_caught_up && e.caught_up() {
            tracing::info!("every assigned partition reached the end of the log");
            break Ok(());
        }
        if touched.elapsed() >= Duration::from_secs(1) {
            touched = Instant::now();
            if let Err(err) = e.touch() {
                break Err(err);
            }
            // A safety net under the group coordinator: every worker marks
            // its partitions alive in the store, so a partition left without
            // a live owner is seen, and a rejoin makes the coordinator expire
            // the dead member and hand it out again. (tansu 0.6 was seen to
            // leave a killed member's partitions unassigned indefinitely.)
            if let Some(why) = e.orphaned(partitions, opts.orphan_after, joined) {
                tracing::warn!("{why}: leaving and rejoining the group to force a rebalance");
                drop(e);
                consumer.unsubscribe();
                if let Err(err) = consumer.subscribe(&[&opts.topic]) {
                    break Err(err.into());
                }
                joined = Instant::now();
            }
        }
    };
    // Leaving: what was applied is committed with a snapshot, so the next
    // owner resumes without replaying.
    let report = {
        let mut e = lock(&engine);
        if result.is_ok()
            && let Ok(offsets) = e.flush(|_| true, true)
        {
            commit_to_kafka(&consumer, &opts.topic, &offsets);
        }
        e.parts.clear();
        let mut r = e.report.clone();
        r.elapsed = started.elapsed();
        r
    };
    consumer.unsubscribe();
    drop_in_background(consumer);
    result.map(|()| report)
}

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    Beginning,
    /// The same offset in every partition.
    Offset(i64),
    /// The first record at or after this time.
    Time(Timestamp),
}

/// Rebuilds views from the log into the store at `opts.store_path` (which
/// should be fresh), from `from` up to the end of each partition as it was
/// when the replay started. Produces nothing: the log's DLQ records were
/// produced when it was live. `progress` is told the records applied so far
/// and the total to apply.
pub fn replay(
    cluster: &Cluster,
    opts: &WorkerOptions,
    from: ReplayFrom,
    stop: Arc<AtomicBool>,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<(Report, BTreeMap<i32, i64>)> {
    let started = Instant::now();
    let store = open_store(opts)?;
    let mut engine = Engine::new(store, opts, None, stop.clone());
    // No group membership: a replay reads every partition by assignment and
    // commits nothing to Kafka; librdkafka still wants a group id.
    let consumer: BaseConsumer<Quiet> = cluster
        .config(Role::Consumer, &consumer_defaults("swabstream-replay"))
        .create_with_context(Quiet)?;
    let partitions = crate::partition_count(cluster, &opts.topic)?;
    engine.partitions = partitions;
    let mut ends = BTreeMap::new();
    let mut start = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(&opts.topic, p, Duration::from_secs(30))
            .with_context(|| format!("reading the end of partition {p}"))?;
        ends.insert(p, high);
        let offset = match from {
            ReplayFrom::Beginning => Offset::Offset(low),
            ReplayFrom::Offset(o) => Offset::Offset(o.clamp(low, high)),
            ReplayFrom::Time(t) => Offset::Offset(t.0 / 1000),
        };
        start.add_partition_offset(&opts.topic, p, offset)?;
    }
    if let ReplayFrom::Time(_) = from {
        start = consumer.offsets_for_times(start, Duration::from_secs(30))?;
    }
    let mut total = 0u64;
    for p in 0..partitions {
        engine.claim(p)?;
        let begin = match start.find_partition(&opts.topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            // No record at or after the time: nothing to replay there.
            _ => ends[&p],
        };
        let _ = start.set_partition_offset(&opts.topic, p, Offset::Offset(begin));
        total += (ends[&p] - begin).max(0) as u64;
        let part = engine.parts.get_mut(&p).expect("just claimed");
        part.until = Some(ends[&p]);
        part.at_end = begin >= ends[&p];
    }
    consumer.assign(&start)?;
    let engine = Mutex::new(engine);
    let mut applied = 0u64;
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Err(anyhow::anyhow!("replay interrupted"));
        }
        poll_batch(&consumer, &engine, opts.batch_max_records, opts.batch_max_wait, &stop);
        let mut e = lock(&engine);
        applied += e.pending() as u64;
        if let Err(err) = e.flush(|_| true, false) {
            break Err(err);
        }
        progress(applied.min(total), total);
        if e.caught_up() {
            break Ok(());
        }
    };
    let mut e = lock(&engine);
    if result.is_ok() {
        e.flush(|_| true, true)?;
    }
    let offsets = e.store.offsets()?.into_iter().collect();
    let mut report = e.report.clone();
    report.elapsed = started.elapsed();
    drop(e);
    drop_in_background(consumer);
    result.map(|()| (report, offsets))
}
