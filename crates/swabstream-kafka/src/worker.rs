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
//! Steps 3 and 4 of a batch with DLQ records wait for the next turn's step
//! 1: its DLQ records are sent, the next batch is polled while they travel
//! (and polling goes on, up to `batch_max_records`, until they are
//! acknowledged or half a second passed), and only then is the wait made and
//! the batch committed, before the next
//! batch is applied (so a commit holds exactly the batches whose DLQ records
//! were acknowledged). A batch without DLQ records is committed at once.
//!
//! Step 4 runs on a committer thread of its own: the batch's commits are
//! taken from the runners and handed over, and the loop goes on polling and
//! applying the next batch while they are written. One batch is written at a
//! time, in order; the next batch's commits, and every other use of the
//! store (claims, touches, version switches, revocation), wait until the one
//! before is written, and step 5 follows the store, never leads it.
//!
//! Revocation applies and commits what is pending for the revoked partitions
//! (with a snapshot) before they are given up; assignment claims the
//! partitions in the store's live view version (fencing off their previous
//! owner), restores their snapshots and seeks to them.
//!
//! A promotion (another version made live) is noticed within about a second
//! (the live pointer is read with the touch): what is pending is applied and
//! committed to the version it was read for, with a snapshot; then each
//! partition is claimed in the new live version and the consumer seeks it to
//! that version's snapshot, so the worker continues the new version from its
//! own checkpoints (ARCHITECTURE.md, "How versions and promotion keep the
//! exactly-once promise").

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use swabstream_core::{CoreConfig, DlqRecord, OutcomeCounts, Record};
use swabstream_events::{Reason, Timestamp};
use swabstream_pipeline::{CommitJob, Committed, PartitionRunner, PipelineError, Resume};
use swabstream_store::{StoreError, Version, ViewStore};

use crate::{Cluster, Publisher, Quiet, Role, WaitError, drop_in_background};

/// What a worker needs to know.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub topic: String,
    pub dlq_topic: String,
    pub group_id: String,
    pub core: CoreConfig,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
    /// Applied batches are committed to the store together, at most this
    /// often (zero: every batch). Their DLQ records are acknowledged first,
    /// as always; a row that several batches changed is written once.
    pub commit_interval: Duration,
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
    /// Rounds of store commits (one commit per partition that changed).
    pub rounds: u64,
    /// Store commits without a snapshot: how many, and their total time.
    pub commits: u64,
    pub commit_time: Duration,
    /// Store commits with a snapshot: how many, their total time and bytes.
    pub snapshots: u64,
    pub snapshot_time: Duration,
    pub snapshot_bytes: u64,
    /// Snapshots the store did not take (rows and offset went without them).
    pub snapshot_failures: u64,
    /// View rows written, over all commits.
    pub rows: u64,
    /// Claims (store read + snapshot restore): how many and their total time.
    pub claims: u64,
    pub claim_time: Duration,
    /// Where the loop's time went besides the store: polling records out of
    /// librdkafka (waits for fetches included), applying them in the core,
    /// and waiting for the DLQ's acknowledgements.
    pub poll_time: Duration,
    pub apply_time: Duration,
    pub dlq_time: Duration,
    /// How long the loop waited for the committer thread to finish writing
    /// the batch before (the store's own time is `commit_time` and
    /// `snapshot_time`, spent beside the loop's).
    pub store_wait: Duration,
    /// From the call to the consumer's subscription: the topic's metadata,
    /// the store's partition check, the DLQ producer.
    pub setup: Duration,
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

/// A partition assigned to this worker that it claimed but does not consume:
/// its log does not hold what the store's checkpoint needs (see
/// [`check_log`]). It is kept alive in the store, so other workers do not
/// take it for orphaned.
#[derive(Debug)]
struct Refused {
    version: Version,
    epoch: i64,
    why: String,
}

/// The state the poll loop and the rebalance callbacks share.
#[derive(Debug)]
struct Engine {
    /// The view store; None while the committer thread has it, writing a
    /// batch (see [`Engine::store`]).
    store: Option<Box<dyn ViewStore>>,
    /// Where the store is, for logs (read once: the store may be away).
    store_name: String,
    committer: Option<Committer>,
    /// A batch the committer is writing: when its batch began.
    in_flight: Option<Instant>,
    /// Offsets the store took and Kafka was not yet told of.
    committed: BTreeMap<i32, i64>,
    parts: BTreeMap<i32, Part>,
    refused: BTreeMap<i32, Refused>,
    /// The last assignment (or join): the group was settled then.
    settled_at: Instant,
    /// A rebalance began (partitions were revoked) and no assignment came yet.
    rebalancing_since: Option<Instant>,
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
    /// The version a replay writes; None for a worker, which claims in the
    /// live version (read at each claim).
    target: Option<Version>,
    /// Partitions a replay lost to another writer of its version (a worker
    /// that took it over after a promotion): partition, and the error.
    fenced: Vec<(i32, String)>,
    /// Applied, not yet committed: see [`Engine::stage`].
    staged: Staged,
}

/// The thread that writes the store's commits, one batch at a time: the
/// store and a batch's jobs are sent to it and come back, with what each
/// commit did, once the batch is written. The loop polls and applies the
/// next batch meanwhile: a commit of 16,384 records' rows (2.5–3 ms each, a
/// partition at a time) otherwise stood still beside the broker's fetches.
/// The store is used by one thread at a time, so it needs no lock, and any
/// other use of it waits for the batch first ([`Engine::store`]).
struct Committer {
    jobs: mpsc::Sender<(Box<dyn ViewStore>, Vec<CommitJob>)>,
    done: mpsc::Receiver<(Box<dyn ViewStore>, Vec<Written>)>,
}

/// What one partition's commit did, and how long the store took.
struct Written {
    partition: i32,
    rows: usize,
    took: Duration,
    result: Result<Committed, PipelineError>,
}

impl Committer {
    fn start(store_name: String, stop: Arc<AtomicBool>) -> anyhow::Result<Committer> {
        let (jobs, inbox) = mpsc::channel::<(Box<dyn ViewStore>, Vec<CommitJob>)>();
        let (outbox, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-commits".into())
            .spawn(move || {
                // Ends when the engine (and with it the sender) is dropped.
                for (mut store, batch) in inbox {
                    let written = batch
                        .iter()
                        .map(|job| {
                            let p = job.partition();
                            let t = Instant::now();
                            // A store that is away (Scylla replicas down, a
                            // busy file) is waited for: the same commit is
                            // retried, nothing is committed to Kafka ahead of
                            // it, and the worker does not exit.
                            let result = retry_transient(
                                &format!("committing partition {p}"),
                                &store_name,
                                &stop,
                                || job.write(&mut *store),
                            );
                            Written { partition: p, rows: job.rows(), took: t.elapsed(), result }
                        })
                        .collect();
                    if outbox.send((store, written)).is_err() {
                        return;
                    }
                }
            })
            .context("starting the view store's committer thread")?;
        Ok(Committer { jobs, done })
    }
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

/// What [`Engine::stage`] applied and [`Engine::commit_staged`] has not yet
/// committed: the partitions (and whether each asked for a snapshot) and
/// their DLQ records, queued to the producer and perhaps not yet
/// acknowledged. Nothing of it is in the store or in Kafka's offsets.
#[derive(Debug, Default)]
struct Staged {
    parts: BTreeMap<i32, bool>,
    dlq: Vec<(i32, DlqRecord)>,
    /// Why queueing the DLQ records failed, if it did: the commit then
    /// sends them all again, as after any failed delivery.
    unqueued: Option<(String, bool)>,
    started: Option<Instant>,
}

impl Engine {
    fn new(
        store: Box<dyn ViewStore>,
        opts: &WorkerOptions,
        dlq: Option<Publisher>,
        stop: Arc<AtomicBool>,
    ) -> Engine {
        Engine {
            store_name: store.describe(),
            store: Some(store),
            committer: None,
            in_flight: None,
            committed: BTreeMap::new(),
            parts: BTreeMap::new(),
            refused: BTreeMap::new(),
            settled_at: Instant::now(),
            rebalancing_since: None,
            dlq,
            dlq_topic: opts.dlq_topic.clone(),
            core: opts.core,
            partitions: 0,
            snapshot_interval: opts.snapshot_interval,
            report: Report::default(),
            stop,
            fatal: None,
            target: None,
            fenced: Vec::new(),
            staged: Staged::default(),
        }
    }

    /// The version a claim goes to: the replay's, or the live one now.
    fn claim_version(&mut self) -> anyhow::Result<Version> {
        if let Some(v) = &self.target {
            return Ok(v.clone());
        }
        let (name, stop) = (self.store_name.clone(), self.stop.clone());
        let store = self.store()?;
        retry_transient("reading the live view version", &name, &stop, || {
            store.live().map_err(PipelineError::from)
        })
        .context("reading the live view version")
    }

    /// Claims `partition` and says where to resume, or None when the
    /// partition is refused: `log` (its low and high watermarks; None for a
    /// replay into a fresh store) does not hold what the store's checkpoint
    /// needs. A snapshot that cannot be read is set aside and the state
    /// rebuilt from the log's start, when the log still holds it.
    fn claim(&mut self, partition: i32, log: Option<(i64, i64)>) -> anyhow::Result<Option<Resume>> {
        let started = Instant::now();
        let stop = self.stop.clone();
        let version = self.claim_version()?;
        let (partitions, core, name) = (self.partitions, self.core, self.store_name.clone());
        let store = self.store()?;
        let (runner, resume, discarded) =
            retry_transient(&format!("claiming partition {partition}"), &name, &stop, || {
                PartitionRunner::claim_or_rebuild(
                    &mut *store,
                    &version,
                    partition,
                    partitions,
                    core,
                )
            })
            .with_context(|| format!("claiming partition {partition} in version `{version}`"))?;
        let took = started.elapsed();
        self.report.claims += 1;
        self.report.claim_time += took;
        let snapshot_at = match resume {
            Resume::At(o) => Some(o),
            Resume::Beginning => None,
        };
        let checkpoint = runner.checkpoint();
        if let Some((low, high)) = log {
            match check_log(low, high, snapshot_at, checkpoint) {
                LogCheck::Consume => {}
                LogCheck::FromLogStart => tracing::warn!(
                    partition,
                    log_start = low,
                    "partition {partition}: the store has nothing of it and its log starts at offset {low}, not 0 (retention or deleted records): its views start with the records the log still holds"
                ),
                LogCheck::Refuse(why) => {
                    let why = match &discarded {
                        Some(d) => format!("{why} (its state must be rebuilt from the log: {d})"),
                        None => why,
                    };
                    tracing::error!(
                        partition,
                        log_start = low,
                        log_end = high,
                        snapshot_offset = snapshot_at,
                        checkpoint,
                        "refusing partition {partition}: {why}"
                    );
                    metrics::gauge!("swabstream_partition_refused", "partition" => partition.to_string())
                        .set(1.0);
                    self.refused.insert(partition, Refused { version, epoch: runner.epoch(), why });
                    return Ok(None);
                }
            }
        }
        if let Some(why) = &discarded {
            tracing::warn!(
                partition,
                checkpoint,
                "partition {partition}: {why}; rebuilding its state from the start of the log (nothing is written until it passes the checkpoint {checkpoint})"
            );
            metrics::counter!("swabstream_snapshots_discarded_total").increment(1);
        }
        self.release(partition);
        tracing::info!(
            partition,
            version = %version,
            ?resume,
            took_ms = took.as_millis() as u64,
            "claimed partition"
        );
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
        Ok(Some(resume))
    }

    /// Forgets a partition (revoked, fenced off, or claimed again).
    fn release(&mut self, partition: i32) {
        self.parts.remove(&partition);
        if self.refused.remove(&partition).is_some() {
            metrics::gauge!("swabstream_partition_refused", "partition" => partition.to_string())
                .set(0.0);
        }
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
    /// or when one is due, and commits whatever was staged before; returns
    /// once the store holds all of it. Returns the offsets committed, for Kafka.
    fn flush(
        &mut self,
        which: impl Fn(i32) -> bool,
        final_snapshot: bool,
    ) -> anyhow::Result<Vec<(i32, i64)>> {
        self.stage(which, final_snapshot);
        self.commit_staged()?;
        self.settle()?;
        Ok(self.committed_offsets())
    }

    /// The offsets the store took since Kafka was last told, for Kafka.
    fn committed_offsets(&mut self) -> Vec<(i32, i64)> {
        std::mem::take(&mut self.committed).into_iter().collect()
    }

    /// The view store, once the committer thread finished the batch it was
    /// writing (if any): every use of the store but the committer's goes
    /// through here, so claims, touches and version switches see every
    /// commit made before them.
    fn store(&mut self) -> anyhow::Result<&mut dyn ViewStore> {
        self.settle()?;
        match self.store.as_deref_mut() {
            Some(store) => Ok(store),
            None => Err(anyhow::anyhow!(
                "the view store ({}) was lost with its committer thread, which ended while writing",
                self.store_name
            )),
        }
    }

    /// Waits for the batch the committer thread is writing, takes the store
    /// back, and records what each partition's commit did. A commit that
    /// failed for good is returned, and also kept in `fatal` (it may surface
    /// where an error is only logged, as a revocation's): the runner whose
    /// rows it held is dropped, since they are no longer marked changed.
    fn settle(&mut self) -> anyhow::Result<()> {
        let Some(started) = self.in_flight.take() else { return Ok(()) };
        let waited = Instant::now();
        let done = self.committer.as_ref().map(|c| c.done.recv());
        self.report.store_wait += waited.elapsed();
        let Some(Ok((store, written))) = done else {
            self.parts.clear();
            let err = anyhow::anyhow!(
                "the view store's committer thread ended while writing (see the panic above); nothing more can be committed"
            );
            self.fatal.get_or_insert(anyhow::anyhow!("{err}"));
            return Err(err);
        };
        self.store = Some(store);
        let mut failed = None;
        let mut any = false;
        for Written { partition: p, rows, took, result } in written {
            if result.is_ok() {
                self.report.rows += rows as u64;
            }
            match result {
                Ok(Committed::SnapshotFailed { next_offset, snapshot_bytes, error }) => {
                    self.report.commits += 1;
                    self.report.commit_time += took;
                    self.report.snapshot_failures += 1;
                    metrics::counter!("swabstream_snapshot_failures_total").increment(1);
                    tracing::warn!(
                        partition = p,
                        snapshot_bytes,
                        "the store did not take the partition's snapshot ({error}); rows and offset {next_offset} were committed without it, and the snapshot is tried again at the next interval"
                    );
                    if let Some(part) = self.parts.get_mut(&p) {
                        part.last_snapshot = Instant::now();
                    }
                    self.committed.insert(p, next_offset);
                    any = true;
                }
                Ok(Committed::Written { next_offset, snapshot, snapshot_bytes }) => {
                    if snapshot {
                        self.report.snapshots += 1;
                        self.report.snapshot_bytes += snapshot_bytes as u64;
                        self.report.snapshot_time += took;
                        if let Some(part) = self.parts.get_mut(&p) {
                            part.last_snapshot = Instant::now();
                            part.snapshot_at = Some(next_offset);
                        }
                        metrics::histogram!("swabstream_snapshot_seconds")
                            .record(took.as_secs_f64());
                    } else {
                        self.report.commits += 1;
                        self.report.commit_time += took;
                    }
                    self.committed.insert(p, next_offset);
                    any = true;
                }
                Ok(Committed::Replaying { .. } | Committed::Idle) => {}
                Err(e) if e.is_fenced() => {
                    if let Some(part) = self.parts.get(&p) {
                        let version = part.runner.version().clone();
                        if self.target.is_some() {
                            self.fenced.push((p, e.to_string()));
                        } else {
                            tracing::warn!(
                                partition = p,
                                version = %version,
                                "another worker owns the partition now: {e}"
                            );
                        }
                    }
                    self.release(p);
                }
                Err(e) => {
                    self.release(p);
                    failed.get_or_insert(
                        anyhow::Error::new(e).context(format!("committing partition {p}")),
                    );
                }
            }
        }
        if any {
            self.report.rounds += 1;
            metrics::histogram!("swabstream_batch_seconds").record(started.elapsed().as_secs_f64());
        }
        match failed {
            Some(err) => {
                self.fatal.get_or_insert(anyhow::anyhow!("{err:#}"));
                Err(err)
            }
            None => Ok(()),
        }
    }

    /// Applies the pending records of the partitions `which` selects and
    /// queues their rejected records to the DLQ without waiting for the
    /// acknowledgements. The poll loop polls the next batch while they
    /// travel (an acks=all produce on the embedded broker waits for its WAL
    /// flush), and only then commits this one: waiting here instead cost
    /// the worker half its time at 4,096 records a batch.
    fn stage(&mut self, which: impl Fn(i32) -> bool, final_snapshot: bool) {
        let started = Instant::now();
        let staged_dlq = self.staged.dlq.len();
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
            if self.dlq.is_some() {
                self.staged.dlq.extend(dlq.into_iter().map(|d| (p, d)));
            }
            *self.staged.parts.entry(p).or_default() |= final_snapshot;
            self.staged.started.get_or_insert(started);
        }
        self.report.apply_time += started.elapsed();
        if let Some(producer) = self.dlq.as_mut()
            && self.staged.dlq.len() > staged_dlq
            && self.staged.unqueued.is_none()
        {
            if staged_dlq == 0 {
                producer.delivery().reset();
            }
            let limit = producer.max_message_bytes();
            self.staged.unqueued =
                queue_dlq(producer, &self.dlq_topic, &self.staged.dlq[staged_dlq..], limit);
        }
    }

    /// Commits what [`Self::stage`] applied: waits until the DLQ holds the
    /// staged rejected records, waits for the batch before to be written,
    /// then hands each staged partition's rows and offset (and snapshot when
    /// due) to the committer thread, which writes them while the loop polls
    /// and applies the next batch. Returns the offsets the store took since
    /// Kafka was last told (the batch before's), for Kafka.
    fn commit_staged(&mut self) -> anyhow::Result<Vec<(i32, i64)>> {
        let Staged { parts: touched, dlq: batch, unqueued, started } =
            std::mem::take(&mut self.staged);
        if !batch.is_empty()
            && let Some(producer) = self.dlq.as_mut()
        {
            let t = Instant::now();
            // Step 3: nothing is committed before the DLQ holds the batch's
            // rejected records. A broker outage or a DLQ that refuses them
            // waits here (retrying); a stop request leaves without
            // committing (the next owner redoes the batch).
            deliver_dlq(producer, &self.dlq_topic, &batch, &self.stop, unqueued)
                .context("waiting for the DLQ's acknowledgements")?;
            self.report.dlq_records += batch.len() as u64;
            self.report.dlq_time += t.elapsed();
        }
        // One batch at a time reaches the store, in order: a partition
        // fenced off in the batch before is let go before its next commit is
        // taken, and a commit never overtakes an earlier one.
        self.settle()?;
        let Some(started) = started else { return Ok(self.committed_offsets()) };
        let mut jobs = Vec::new();
        for (p, final_snapshot) in touched {
            let Some(part) = self.parts.get_mut(&p) else { continue };
            let next = part.runner.next_offset();
            let due = part.last_snapshot.elapsed() >= self.snapshot_interval || final_snapshot;
            let snapshot = due && next.is_some() && next != part.snapshot_at;
            if let Ok(job) = part.runner.take_commit(snapshot) {
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            self.send(jobs, started)?;
        }
        Ok(self.committed_offsets())
    }

    /// Hands `jobs` and the store to the committer thread (started at the
    /// first batch).
    fn send(&mut self, jobs: Vec<CommitJob>, started: Instant) -> anyhow::Result<()> {
        if self.committer.is_none() {
            self.committer = Some(Committer::start(self.store_name.clone(), self.stop.clone())?);
        }
        let committer = self.committer.as_ref().expect("started above");
        let Some(store) = self.store.take() else {
            anyhow::bail!("the view store ({}) was lost with its committer thread", self.store_name)
        };
        if let Err(mpsc::SendError((store, jobs))) = committer.jobs.send((store, jobs)) {
            self.store = Some(store);
            for job in jobs {
                self.release(job.partition());
            }
            anyhow::bail!("the view store's committer thread ended; nothing more can be committed");
        }
        self.in_flight = Some(started);
        Ok(())
    }

    /// Marks this worker's partitions alive in the store (refused ones too:
    /// they are assigned to this worker, and no other would do better).
    fn touch(&mut self) -> anyhow::Result<()> {
        let mut owned: BTreeMap<Version, Vec<(i32, i64)>> = BTreeMap::new();
        for (p, part) in &self.parts {
            owned.entry(part.runner.version().clone()).or_default().push((*p, part.runner.epoch()));
        }
        for (p, r) in &self.refused {
            owned.entry(r.version.clone()).or_default().push((*p, r.epoch));
        }
        let store = self.store()?;
        for (version, owned) in owned {
            store.touch(&version, &owned).context("marking partitions alive")?;
        }
        Ok(())
    }

    /// The partitions this worker holds in a version that is no longer the
    /// live one, and the live one; None when there are none (or the live
    /// pointer cannot be read now: it is read again in a second).
    fn promoted(&mut self) -> Option<(Version, Vec<i32>)> {
        // A failed commit found here is kept in `fatal` by `settle`.
        let live = match self.store().ok()?.live() {
            Ok(v) => v,
            Err(e) => {
                if crate::throttled("read-live-version") {
                    tracing::warn!("reading the live view version: {e}");
                }
                return None;
            }
        };
        let stale: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, part)| part.runner.version() != &live)
            .map(|(p, _)| *p)
            .chain(self.refused.iter().filter(|(_, r)| r.version != live).map(|(p, _)| *p))
            .collect();
        (!stale.is_empty()).then_some((live, stale))
    }

    /// Why the group looks stuck, if it does: a partition of the topic that
    /// is not ours and was never claimed, or whose owner showed no life for
    /// `after`. Having no partition is no sign of it (more workers than
    /// partitions leave some idle), and neither is a rebalance under way;
    /// nothing is judged until `after` has passed since the last assignment.
    fn orphaned(&mut self, partitions: i32, after: Duration) -> Option<String> {
        if self.settled_at.elapsed() < after {
            return None;
        }
        // A rebalance that never ends is itself a sign of a stuck group.
        if self.rebalancing_since.is_some_and(|t| t.elapsed() < after * 3) {
            return None;
        }
        // Signs of life in any version: right after a promotion the new live
        // version's claims are still being made, while the owners touch the
        // old one until they switch.
        // A failed commit found here is kept in `fatal` by `settle`.
        let leases = match self.store().ok()?.signs_of_life() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("reading partition leases: {e}");
                return None;
            }
        };
        let now = now().0 / 1000;
        let ours = |p: &i32| self.parts.contains_key(p) || self.refused.contains_key(p);
        for p in (0..partitions).filter(|p| !ours(p)) {
            let latest = leases.iter().filter(|l| l.partition == p).map(|l| l.touched_at_ms).max();
            match latest {
                None => return Some(format!("partition {p} was never claimed")),
                Some(t) if now - t > after.as_millis() as i64 => {
                    return Some(format!(
                        "partition {p} showed no life for {} s",
                        (now - t) / 1000
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Every consumed partition reached its end (refused ones are not
    /// consumed; [`run`] reports them).
    fn caught_up(&self) -> bool {
        (!self.parts.is_empty() || !self.refused.is_empty()) && self.parts.values().all(Part::done)
    }

    /// The refused partitions and why, for a closing error.
    fn refusals(&self) -> String {
        self.refused
            .iter()
            .map(|(p, r)| format!("partition {p}: {}", r.why))
            .collect::<Vec<_>>()
            .join("; ")
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

/// The DLQ record's headers: why, and where the record came from.
fn dlq_headers(partition: i32, d: &DlqRecord) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("reason", d.reason.as_str().to_owned()),
        ("source_partition", partition.to_string()),
        ("source_offset", d.offset.to_string()),
    ];
    if !d.detail.is_empty() {
        h.push(("detail", d.detail.clone()));
    }
    h
}

/// Room kept in a DLQ record for what librdkafka and Kafka add around the
/// value and headers (record and batch framing).
const DLQ_FRAMING: usize = 1024;
/// A `detail` longer than this is cut when the record must be truncated.
const DLQ_DETAIL_MAX: usize = 1024;

fn headers_size(h: &[(&str, String)]) -> usize {
    h.iter().map(|(k, v)| k.len() + v.len() + 10).sum()
}

/// The DLQ record of `d`: its value untouched when value and headers fit in
/// `limit` bytes (the producer's `message.max.bytes`), else cut to fit, with
/// headers saying so (`truncated`, `original_size`, `original_sha256` in
/// hex), so that the record still reaches the DLQ and its partition goes on.
fn dlq_record(partition: i32, d: &DlqRecord, limit: usize) -> (&[u8], OwnedHeaders) {
    use sha2::Digest as _;
    let mut h = dlq_headers(partition, d);
    let mut value = &d.payload[..];
    if value.len() + headers_size(&h) + DLQ_FRAMING > limit {
        for (k, v) in &mut h {
            if *k == "detail" && v.len() > DLQ_DETAIL_MAX {
                let mut cut = DLQ_DETAIL_MAX;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v.truncate(cut);
            }
        }
        h.push(("truncated", "true".to_owned()));
        h.push(("original_size", value.len().to_string()));
        h.push(("original_sha256", hex::encode(sha2::Sha256::digest(value))));
        let keep = limit.saturating_sub(headers_size(&h) + DLQ_FRAMING).min(value.len());
        value = &value[..keep];
    }
    let mut headers = OwnedHeaders::new_with_capacity(h.len());
    for (k, v) in &h {
        headers = headers.insert(Header { key: k, value: Some(v.as_str()) });
    }
    (value, headers)
}

/// How long the poll after a staged batch waits for records at most: about
/// what the DLQ's acknowledgements take on the embedded broker, under load.
const STAGED_POLL_WAIT: Duration = Duration::from_millis(20);

/// While a staged batch's DLQ records travel, the worker reads more records
/// in polls of at most this wait, checking for the acknowledgements between
/// them.
const STAGED_POLL_STEP: Duration = Duration::from_millis(2);

/// How long the worker reads on while the staged batch's DLQ records are
/// unacknowledged, at most: past it, the commit waits for them (and says
/// in the log what it waits for, if it waits long).
const STAGED_READ_LIMIT: Duration = Duration::from_millis(500);

/// Queues `batch`'s records to the DLQ producer, each cut to fit `limit`.
/// Returns why one could not be queued, if one could not, and whether it
/// was too large.
fn queue_dlq(
    producer: &mut Publisher,
    topic: &str,
    batch: &[(i32, DlqRecord)],
    limit: usize,
) -> Option<(String, bool)> {
    for (p, d) in batch {
        let (value, headers) = dlq_record(*p, d, limit);
        if let Err(e) = producer.try_send(topic, None, value, Some(headers)) {
            let too_large = e.rdkafka_error_code() == Some(MessageSizeTooLarge);
            return Some((format!("cannot queue a record: {e}"), too_large));
        }
    }
    None
}

/// Waits until Kafka acknowledged every one of a batch's DLQ records, which
/// [`queue_dlq`] queued already (`queued`: why that failed, if it did). A
/// failure never ends the worker: a DLQ that refuses the records (the
/// broker away, the topic missing, not authorised, a record too large) is
/// said in the log every few seconds and the whole batch is sent again after
/// a back-off (0.1 s doubling up to 5 s). Repeats in the DLQ are allowed:
/// readers drop them by `source_partition`/`source_offset`. After a record
/// too large for the broker, records are cut to half the size; a producer
/// that hit a fatal error is replaced. Only `stop` ends the wait without
/// the acknowledgements (the partition's next owner redoes the batch).
fn deliver_dlq(
    producer: &mut Publisher,
    topic: &str,
    batch: &[(i32, DlqRecord)],
    stop: &AtomicBool,
    queued: Option<(String, bool)>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut limit = producer.max_message_bytes();
    let mut pause = Duration::from_millis(100);
    let mut first = Some(queued);
    loop {
        // The first time round the batch is queued already (by
        // `Engine::stage`), and `queued` says why that failed, if it did.
        let mut failure = match first.take() {
            Some(queued) => queued,
            None => {
                producer.delivery().reset();
                queue_dlq(producer, topic, batch, limit)
            }
        };
        while failure.is_none() {
            match producer.wait(Duration::from_secs(30), || stop.load(Ordering::Relaxed)) {
                Ok(()) => return Ok(()),
                Err(e @ WaitError::Interrupted(_)) => return Err(e.into()),
                Err(WaitError::TimedOut(n)) => {
                    if crate::throttled("dlq-wait") {
                        tracing::warn!(
                            waited_s = started.elapsed().as_secs(),
                            "the DLQ `{topic}` has not acknowledged {n} of the batch's {} records yet (is the broker reachable?); still waiting: nothing is committed before it does",
                            batch.len()
                        );
                    }
                }
                Err(e @ WaitError::Failed { .. }) => {
                    let too_large =
                        producer.delivery().first_error_code() == Some(MessageSizeTooLarge);
                    failure = Some((e.to_string(), too_large));
                }
            }
        }
        let (error, too_large) = failure.unwrap_or_default();
        metrics::counter!("swabstream_dlq_retries_total").increment(1);
        // What is still in flight is delivered or failed before the batch
        // is counted afresh.
        producer.settle(Duration::from_secs(10));
        if too_large {
            limit = (limit / 2).max(4096);
        }
        if let Some(fatal) = producer.fatal_error() {
            tracing::warn!("the DLQ producer failed for good ({fatal}); making a new one");
            producer.renew().context("making a new DLQ producer")?;
        }
        if crate::throttled("dlq-retry") {
            tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                "the DLQ `{topic}` did not take the batch's {} records ({error}); sending them again in {pause:.1?}. Check that the broker is reachable, that the topic exists and that this worker may write to it; nothing is committed until it takes them",
                batch.len()
            );
        }
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                anyhow::bail!("stopped while the DLQ refused the batch's records: {error}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// What a claimed partition's log allows, against what the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LogCheck {
    /// The log holds every record the partition needs.
    Consume,
    /// The store has nothing of the partition and its log does not start at
    /// 0: legal (its views start where the log starts), worth a warning.
    FromLogStart,
    /// The log does not hold what the store's checkpoint needs: why, and
    /// what to do.
    Refuse(String),
}

/// Checks a partition's log (`low`..`high`, its watermarks) against where
/// its state resumes (`snapshot`, the snapshot's offset; 0 without one) and
/// the store's `checkpoint` (records below it were counted; 0 if none).
/// Records are never skipped silently: a log that starts after the resume
/// offset lost records the state needs; a log that ends before the
/// checkpoint is not the log the store counted.
fn check_log(low: i64, high: i64, snapshot: Option<i64>, checkpoint: i64) -> LogCheck {
    if high < checkpoint {
        return LogCheck::Refuse(format!(
            "its log ends at offset {high}, but the view store counted its records up to offset {checkpoint}: the log is shorter than what the store holds (was the topic deleted and made again, or the broker's data wiped, while the store was kept?). It is not consumed, so no record is skipped. Point the worker at the topic and broker this store was built from, or rebuild the views from this log into a fresh store with `swabstream replay`"
        ));
    }
    let resume = snapshot.unwrap_or(0);
    if resume < low {
        if snapshot.is_none() && checkpoint == 0 {
            return LogCheck::FromLogStart;
        }
        return LogCheck::Refuse(format!(
            "its state must be rebuilt from offset {resume} (the store counted it up to offset {checkpoint}), but its log now starts at offset {low}: records {resume}..{low} are gone (topic retention, or deleted records, while no worker read them). Skipping them would lose or miscount events, so it is not consumed. Rebuild the views from what the log still holds into a fresh store with `swabstream replay`, or point the worker at a log that still holds those records"
        ));
    }
    LogCheck::Consume
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
                engine.settled_at = Instant::now();
                engine.rebalancing_since = None;
                let partitions: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                // Only the partitions claimed and not refused are consumed;
                // refused ones stay this worker's (and alive) without a fetch.
                let mut assign = TopicPartitionList::new();
                for p in partitions {
                    let log = match watermarks(consumer, &self.topic, p) {
                        Ok(w) => w,
                        Err(e) => {
                            engine.fatal.get_or_insert(e);
                            continue;
                        }
                    };
                    match engine.claim(p, Some(log)) {
                        Ok(Some(resume)) => {
                            let offset = match resume {
                                Resume::Beginning => Offset::Beginning,
                                Resume::At(o) => Offset::Offset(o),
                            };
                            let _ = assign.add_partition_offset(&self.topic, p, offset);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            engine.fatal.get_or_insert(e);
                        }
                    }
                }
                if let Err(e) = consumer.assign(&assign) {
                    engine.fatal.get_or_insert(anyhow::anyhow!("assigning partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                engine.rebalancing_since = Some(Instant::now());
                tracing::info!(?revoked, "partitions revoked: committing what is pending");
                match engine.flush(|p| revoked.contains(&p), true) {
                    Ok(offsets) => commit_to_kafka(consumer, &self.topic, &offsets),
                    // Not fatal: the partitions' next owner redoes what was
                    // not committed.
                    Err(e) => tracing::warn!("could not commit revoked partitions: {e:#}"),
                }
                // Eager rebalancing revokes everything; refused partitions
                // were never handed to the consumer, so they may be missing
                // from `revoked`.
                let refused: Vec<i32> = engine.refused.keys().copied().collect();
                for p in revoked.into_iter().chain(refused) {
                    engine.release(p);
                }
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up all partitions");
                engine.parts.clear();
                for p in std::mem::take(&mut engine.refused).into_keys() {
                    metrics::gauge!("swabstream_partition_refused", "partition" => p.to_string())
                        .set(0.0);
                }
                let _ = consumer.unassign();
            }
        }
    }
}

/// A partition's low and high watermarks, asking the cluster (three tries:
/// the claim cannot be judged without them).
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(i64, i64)> {
    let mut tries = 0;
    loop {
        tries += 1;
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if tries < 3 => {
                tracing::warn!(
                    "reading the watermarks of partition {partition} (try {tries} of 3): {e}"
                );
            }
            Err(e) => {
                return Err(anyhow::anyhow!(e).context(format!(
                    "reading the start and end of partition {partition}, needed to check its log against the store"
                )));
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
        // A worker behind its log fills librdkafka's prefetch queue (100,000
        // records a partition); fetching then pauses for this long, 1 s by
        // default, and a worker that drains the queue sooner waits idle for
        // the rest: on a 1.92 M-event day 2.9 of its 4.3 s of polling, the
        // end-to-end ratio 0.41–0.61. At 10 ms: polling 1.0–1.2 s, ratio 0.66–0.80.
        ("fetch.queue.backoff.ms", "10"),
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

/// Runs `op` until it succeeds, fails for good, or `stop` is set. A
/// transient store error (Scylla replicas away, a timeout, a busy file) is
/// retried with back-off, 0.1 s doubling up to 5 s, and said in the log at
/// most every 5 s: what is waited for, and on which store.
fn retry_transient<T>(
    what: &str,
    store: &str,
    stop: &AtomicBool,
    mut op: impl FnMut() -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    let mut pause = Duration::from_millis(100);
    let started = Instant::now();
    loop {
        match op() {
            Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                if crate::throttled(&format!("store-wait {what}")) {
                    tracing::warn!(
                        waited_s = started.elapsed().as_secs(),
                        "{what}: the view store ({store}) is unavailable, retrying: {e}"
                    );
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// How a switch to a new live version went.
#[derive(Debug)]
enum Switched {
    /// Every partition was claimed in the new version and the consumer
    /// sought to its snapshot.
    InPlace,
    /// The assignment itself must change (a partition refused in one
    /// version and not in the other, or a seek the consumer refused): why.
    NeedsRejoin(String),
}

/// Moves the partitions `stale` from the version they were claimed in to
/// `live`, after a promotion, without leaving the group:
/// 1. what is pending for them is applied and committed to the old version,
///    with a snapshot (the in-flight batch is finished there, its DLQ
///    records acknowledged first, as any batch), so the old version is
///    left consistent at the worker's position, for `promote --back`;
/// 2. each is claimed in `live` (bumping its epoch there, which fences a
///    replay still writing it), its state restored from `live`'s snapshot;
/// 3. the consumer seeks it to that snapshot (librdkafka purges what it
///    fetched from the old position), and the records up to `live`'s
///    checkpoint are re-applied without writes, as after any claim.
///
/// Records below the old position produced their DLQ records already, so
/// they produce none again. A kill anywhere in between leaves each version
/// as a commit left it; the next owner claims in the live one.
fn switch_version<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    e: &mut Engine,
    topic: &str,
    live: &Version,
    stale: &[i32],
) -> anyhow::Result<Switched> {
    tracing::info!(
        version = %live,
        partitions = ?stale,
        "the live view version is now `{live}`: committing what is pending to the old one and continuing `{live}` from its checkpoints"
    );
    // A version dropped since (promoted away, then dropped before this
    // worker noticed) takes no more commits: what was polled for it is let
    // go unapplied, and read again from the live version's checkpoint.
    let registry = e.store()?.registry().ok();
    let abandoned: Vec<i32> = stale
        .iter()
        .copied()
        .filter(|p| {
            e.parts.get(p).is_some_and(|part| {
                registry.as_ref().is_some_and(|r| r.by_id(part.runner.version().id).is_none())
            })
        })
        .collect();
    for p in &abandoned {
        if let Some(part) = e.parts.get_mut(p) {
            tracing::warn!(
                partition = p,
                version = %part.runner.version(),
                "the version this partition was written in has been dropped: its pending records are read again in `{live}`"
            );
            part.pending.clear();
        }
    }
    let offsets = e.flush(|p| stale.contains(&p) && !abandoned.contains(&p), true)?;
    commit_to_kafka(consumer, topic, &offsets);
    let mut seeks = Vec::new();
    let mut rejoin = None;
    for &p in stale {
        let consumed = e.parts.contains_key(&p);
        if !consumed && !e.refused.contains_key(&p) {
            // Fenced off while committing: another worker has it now.
            continue;
        }
        let position = e.parts.get(&p).and_then(|part| part.runner.next_offset());
        let log = watermarks(consumer, topic, p)?;
        e.release(p);
        match e.claim(p, Some(log))? {
            Some(resume) => {
                if let (Some(o), Some(part)) = (position, e.parts.get_mut(&p)) {
                    part.runner.dlq_produced_below(o);
                }
                if consumed {
                    seeks.push((p, resume));
                } else {
                    rejoin =
                        Some(format!("partition {p}, refused before, is consumed in `{live}`"));
                }
            }
            None if consumed => {
                rejoin = Some(format!("partition {p} is refused in `{live}`"));
            }
            None => {}
        }
    }
    for (p, resume) in seeks {
        let offset = match resume {
            Resume::Beginning => Offset::Beginning,
            Resume::At(o) => Offset::Offset(o),
        };
        if let Err(err) = consumer.seek(topic, p, offset, Duration::from_secs(10)) {
            rejoin.get_or_insert(format!("the consumer did not seek partition {p}: {err}"));
        }
    }
    Ok(match rejoin {
        Some(why) => Switched::NeedsRejoin(why),
        None => Switched::InPlace,
    })
}

/// Checks the topic's partition count against the one the store was built
/// for (recording it the first time): a changed count puts a person's new
/// events in another partition than their state.
fn check_partitions(store: &mut dyn ViewStore, partitions: i32) -> anyhow::Result<()> {
    match store.check_partition_count(partitions) {
        Err(e @ StoreError::PartitionCount { .. }) => Err(anyhow::anyhow!("{e}")),
        other => {
            other.with_context(|| format!("checking the partition count in {}", store.describe()))
        }
    }
}

/// Runs a consumer-group worker until `stop` is set (or, with
/// `until_caught_up`, until its partitions reached the end of the log).
pub fn run(
    cluster: &Cluster,
    opts: &WorkerOptions,
    mut store: Box<dyn ViewStore>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let partitions = crate::partition_count(cluster, &opts.topic)?;
    check_partitions(&mut *store, partitions)?;
    let dlq = Publisher::new(cluster)?;
    dlq.prepare(&opts.dlq_topic, Duration::from_secs(5));
    let engine = Arc::new(Mutex::new(Engine::new(store, opts, Some(dlq), stop.clone())));
    let ctx = Ctx { engine: engine.clone(), topic: opts.topic.clone() };
    let consumer: BaseConsumer<Ctx> = cluster
        .config(Role::Consumer, &consumer_defaults(&opts.group_id))
        .create_with_context(ctx)?;
    lock(&engine).partitions = partitions;
    lock(&engine).report.setup = started.elapsed();
    consumer.subscribe(&[&opts.topic])?;
    tracing::info!(topic = %opts.topic, group = %opts.group_id, "worker started");
    let mut touched = Instant::now();
    let mut reminded = Instant::now();
    let committed_at = std::cell::Cell::new(Instant::now());
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let polling = Instant::now();
        // While a batch waits for its DLQ acknowledgements, the next poll
        // waits no longer than they take: a quiet topic must not hold the
        // batch's commit back for the whole `batch_max_wait`.
        let wait = if lock(&engine).staged.dlq.is_empty() {
            opts.batch_max_wait
        } else {
            opts.batch_max_wait.min(STAGED_POLL_WAIT)
        };
        poll_batch(&consumer, &engine, opts.batch_max_records, wait, &stop);
        // The poll returns once librdkafka's prefetched records are taken,
        // usually well before the staged batch's DLQ acknowledgements come
        // (tens of ms: linger, then the broker's WAL flush). Reading on
        // until they do, up to a full batch, turns that wait into records:
        // waiting for them idle cost the worker half its time.
        loop {
            let e = lock(&engine);
            let room = opts.batch_max_records.saturating_sub(e.pending());
            let waiting = !e.staged.dlq.is_empty()
                && e.fatal.is_none()
                && room > 0
                && polling.elapsed() < STAGED_READ_LIMIT
                && !e.dlq.as_ref().is_none_or(Publisher::ready);
            drop(e);
            if !waiting || stop.load(Ordering::Relaxed) {
                break;
            }
            poll_batch(&consumer, &engine, room, STAGED_POLL_STEP, &stop);
        }
        let mut e = lock(&engine);
        e.report.poll_time += polling.elapsed();
        if let Some(err) = e.fatal.take() {
            break Err(err);
        }
        // The batch before this one, whose DLQ records travelled while this
        // one was polled, is committed; this one is applied and its DLQ
        // records sent, to be committed after the next poll. A batch
        // without DLQ records has nothing to overlap and is committed at
        // once, and so is every batch once a second and at the end: the
        // version and liveness checks below then see all applied committed
        // (they wait for the committer thread). Either way the committer
        // writes the batch while the loop polls the next.
        // Batches are committed together at most every `commit_interval`:
        // a row many batches changed is written once.
        let due = touched.elapsed() >= Duration::from_secs(1);
        let commit = |e: &mut Engine| {
            committed_at.set(Instant::now());
            e.commit_staged().map(|offsets| commit_to_kafka(&consumer, &opts.topic, &offsets))
        };
        if (due || committed_at.get().elapsed() >= opts.commit_interval)
            && let Err(err) = commit(&mut e)
        {
            break Err(err);
        }
        e.stage(|_| true, false);
        let caught_up = opts.until_caught_up && e.caught_up();
        if (due
            || caught_up
            || (e.staged.dlq.is_empty() && committed_at.get().elapsed() >= opts.commit_interval))
            && let Err(err) = commit(&mut e)
        {
            break Err(err);
        }
        if caught_up {
            if !e.refused.is_empty() {
                break Err(anyhow::anyhow!(
                    "refused {} of the assigned partitions, whose logs do not hold what the view store counted: {}",
                    e.refused.len(),
                    e.refusals()
                ));
            }
            tracing::info!("every assigned partition reached the end of the log");
            break Ok(());
        }
        if !e.refused.is_empty() && reminded.elapsed() >= Duration::from_secs(60) {
            reminded = Instant::now();
            tracing::error!("still refusing to consume: {}", e.refusals());
        }
        if due {
            touched = Instant::now();
            if let Err(err) = e.touch() {
                break Err(err);
            }
            if let Some((live, stale)) = e.promoted() {
                match switch_version(&consumer, &mut e, &opts.topic, &live, &stale) {
                    Ok(Switched::InPlace) => {}
                    Ok(Switched::NeedsRejoin(why)) => {
                        tracing::warn!(
                            "switching to version `{live}`: {why}; leaving and rejoining the group, so that every partition is claimed in it afresh"
                        );
                        drop(e);
                        consumer.unsubscribe();
                        if let Err(err) = consumer.subscribe(&[&opts.topic]) {
                            break Err(err.into());
                        }
                        lock(&engine).settled_at = Instant::now();
                        continue;
                    }
                    Err(err) => break Err(err),
                }
            }
            // A safety net under the group coordinator: every worker marks
            // its partitions alive in the store, so a partition left without
            // a live owner is seen, and a rejoin makes the coordinator expire
            // the dead member and hand it out again. (tansu 0.6 was seen to
            // leave a killed member's partitions unassigned indefinitely.)
            if let Some(why) = e.orphaned(partitions, opts.orphan_after) {
                tracing::warn!("{why}: leaving and rejoining the group to force a rebalance");
                drop(e);
                consumer.unsubscribe();
                if let Err(err) = consumer.subscribe(&[&opts.topic]) {
                    break Err(err.into());
                }
                lock(&engine).settled_at = Instant::now();
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
        // Leaving on an error: a batch the committer is writing is let
        // finish, so nothing of this worker writes the store once it returned.
        if let Err(err) = e.settle() {
            tracing::warn!("the last batch's commit failed: {err:#}");
        }
        e.parts.clear();
        e.refused.clear();
        let mut r = e.report.clone();
        r.elapsed = started.elapsed();
        r
    };
    consumer.unsubscribe();
    drop_in_background(consumer);
    result.map(|()| report)
}

/// A replay that lost a partition of its version to another writer:
/// workers, once the version was promoted (or a second replay into it).
#[derive(Debug, thiserror::Error)]
#[error(
    "the replay into version `{version}` stopped: partition(s) {partitions:?} were claimed by another writer ({detail}). If `{version}` was promoted while the replay wrote it, the workers own it now and continue it from its checkpoints ({checkpoints:?}): nothing is lost or counted twice, and nothing is left to do. Otherwise another replay is writing `{version}`: stop it, drop the version and rebuild it"
)]
pub struct ReplayFenced {
    pub version: String,
    pub partitions: Vec<i32>,
    pub detail: String,
    /// The version's checkpoints (partition, offset) when the replay stopped.
    pub checkpoints: Vec<(i32, i64)>,
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

/// Rebuilds views from the log into `version` of `store` (which should be
/// empty: a fresh store's `v1`, or a version made for the rebuild), from
/// `from` up to the end of each partition as it was when the replay started.
/// Produces nothing: the log's DLQ records were produced when it was live.
/// `progress` is told the records applied so far and the total to apply.
///
/// When another writer claims one of its partitions in `version` (workers
/// do, once `version` is promoted), the replay stops with
/// [`ReplayFenced`]: the workers continue the version from its checkpoints.
pub fn replay(
    cluster: &Cluster,
    opts: &WorkerOptions,
    mut store: Box<dyn ViewStore>,
    version: &Version,
    from: ReplayFrom,
    stop: Arc<AtomicBool>,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<(Report, BTreeMap<i32, i64>)> {
    let started = Instant::now();
    let partitions = crate::partition_count(cluster, &opts.topic)?;
    check_partitions(&mut *store, partitions)?;
    let mut engine = Engine::new(store, opts, None, stop.clone());
    engine.target = Some(version.clone());
    // No group membership: a replay reads every partition by assignment and
    // commits nothing to Kafka; librdkafka still wants a group id.
    let consumer: BaseConsumer<Quiet> = cluster
        .config(Role::Consumer, &consumer_defaults("swabstream-replay"))
        .create_with_context(Quiet)?;
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
            // An offset the log no longer holds is refused, not moved: the
            // views would silently miss records the operator asked for.
            ReplayFrom::Offset(o) if o < low => anyhow::bail!(
                "partition {p}'s log starts at offset {low}: records from offset {o} are gone (retention or deleted records). Replay from the log's start (no --from-offset), or from an offset at or after every partition's log start"
            ),
            ReplayFrom::Offset(o) => Offset::Offset(o.min(high)),
            ReplayFrom::Time(t) => Offset::Offset(t.0 / 1000),
        };
        start.add_partition_offset(&opts.topic, p, offset)?;
    }
    if let ReplayFrom::Time(_) = from {
        start = consumer.offsets_for_times(start, Duration::from_secs(30))?;
    }
    let mut total = 0u64;
    for p in 0..partitions {
        engine.claim(p, None)?;
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
    let mut committed_at = Instant::now();
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Err(anyhow::anyhow!("replay interrupted"));
        }
        let polling = Instant::now();
        poll_batch(&consumer, &engine, opts.batch_max_records, opts.batch_max_wait, &stop);
        let mut e = lock(&engine);
        e.report.poll_time += polling.elapsed();
        applied += e.pending() as u64;
        // Committed every `commit_interval`, and written while the next
        // batches are polled; a partition fenced off is seen a commit later.
        e.stage(|_| true, false);
        if committed_at.elapsed() >= opts.commit_interval {
            committed_at = Instant::now();
            if let Err(err) = e.commit_staged() {
                break Err(err);
            }
        }
        if let Some(fenced) = replay_fenced(&mut e, version) {
            break Err(fenced.into());
        }
        progress(applied.min(total), total);
        if e.caught_up() {
            break Ok(());
        }
    };
    let mut e = lock(&engine);
    let mut result = result;
    if result.is_ok() {
        e.flush(|_| true, true)?;
        // The last batches' commits were written after the loop's check.
        if let Some(fenced) = replay_fenced(&mut e, version) {
            result = Err(fenced.into());
        }
    }
    let offsets = e.store()?.offsets(version)?.into_iter().collect();
    let mut report = e.report.clone();
    report.elapsed = started.elapsed();
    drop(e);
    drop_in_background(consumer);
    result.map(|()| (report, offsets))
}

/// The replay's error once another writer claimed one of its partitions.
fn replay_fenced(e: &mut Engine, version: &Version) -> Option<ReplayFenced> {
    if e.fenced.is_empty() {
        return None;
    }
    let offsets = e.store().ok().and_then(|s| s.offsets(version).ok()).unwrap_or_default();
    Some(ReplayFenced {
        version: version.name.clone(),
        partitions: e.fenced.iter().map(|(p, _)| *p).collect(),
        detail: e.fenced[0].1.clone(),
        checkpoints: offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_holding_what_the_store_needs_is_consumed() {
        assert_eq!(check_log(0, 0, None, 0), LogCheck::Consume, "a new topic, a new store");
        assert_eq!(check_log(0, 500, Some(300), 400), LogCheck::Consume);
        assert_eq!(
            check_log(300, 500, Some(300), 500),
            LogCheck::Consume,
            "the log starts at the snapshot"
        );
        assert_eq!(check_log(0, 400, None, 400), LogCheck::Consume, "no snapshot: rebuilt from 0");
    }

    #[test]
    fn a_store_with_nothing_of_a_partition_starts_where_its_log_starts() {
        assert_eq!(check_log(1000, 1200, None, 0), LogCheck::FromLogStart);
    }

    #[test]
    fn a_log_start_past_the_resume_offset_is_refused() {
        // Retention (or DeleteRecords) removed records the state needs.
        let LogCheck::Refuse(why) = check_log(350, 500, Some(300), 400) else { panic!() };
        assert!(
            why.contains("records 300..350 are gone") && why.contains("swabstream replay"),
            "{why}"
        );
        // No snapshot but a checkpoint: the state is rebuilt from 0.
        assert!(matches!(check_log(1, 500, None, 400), LogCheck::Refuse(_)));
        // Nothing of the gap was counted either: skipping it would lose it.
        assert!(matches!(check_log(450, 500, Some(400), 400), LogCheck::Refuse(_)));
    }

    #[test]
    fn a_log_shorter_than_the_checkpoint_is_refused() {
        // A recreated topic or a wiped broker.
        let LogCheck::Refuse(why) = check_log(0, 20, Some(400), 500) else { panic!() };
        assert!(why.contains("shorter than") && why.contains("offset 500"), "{why}");
        assert!(matches!(check_log(0, 0, None, 10), LogCheck::Refuse(_)));
    }

    fn dlq(len: usize, detail: &str) -> DlqRecord {
        DlqRecord {
            offset: 7,
            reason: Reason::Malformed,
            detail: detail.to_owned(),
            payload: (0..len).map(|i| i as u8).collect(),
        }
    }

    fn headers_of(h: &OwnedHeaders) -> Vec<(String, String)> {
        use rdkafka::message::Headers as _;
        h.iter()
            .map(|h| {
                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into())
            })
            .collect()
    }

    #[test]
    fn a_dlq_record_that_fits_is_sent_as_it_is() {
        let d = dlq(1000, "bad magic");
        let (value, headers) = dlq_record(3, &d, 1_000_000);
        assert_eq!(value, &d.payload[..]);
        let h = headers_of(&headers);
        assert!(h.iter().all(|(k, _)| k != "truncated"), "{h:?}");
        assert!(h.contains(&("source_offset".into(), "7".into())));
    }

    #[test]
    fn a_dlq_record_too_large_is_cut_to_fit_and_says_so() {
        use sha2::Digest as _;
        let d = dlq(999_950, &"x".repeat(5000));
        let (value, headers) = dlq_record(1, &d, 1_000_000);
        let h = headers_of(&headers);
        let size: usize = h.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + value.len();
        assert!(size + 512 < 1_000_000, "{size}");
        assert!(value.len() > 990_000 && d.payload.starts_with(value));
        let get = |k: &str| h.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.clone());
        assert_eq!(get("truncated").as_deref(), Some("true"));
        assert_eq!(get("original_size").as_deref(), Some("999950"));
        assert_eq!(get("original_sha256"), Some(hex::encode(sha2::Sha256::digest(&d.payload))));
        assert_eq!(get("detail").map(|v| v.len()), Some(DLQ_DETAIL_MAX));
        // A limit smaller than the headers leaves the headers alone.
        let (value, _) = dlq_record(1, &d, 100);
        assert!(value.is_empty());
    }
}
