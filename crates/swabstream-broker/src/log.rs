//! The broker's storage as tansu sees it: tansu's own engine, with one
//! correction for engines that store whole record batches.
//!
//! tansu's SlateDB engine keys each stored batch by its base offset and
//! answers a fetch with the batches whose base is at or after the requested
//! offset. A fetch from an offset *inside* a batch (what every consumer does
//! after seeking to a checkpoint) therefore skipped the rest of that batch:
//! silent loss. Kafka's contract is that a fetch returns the batch holding
//! the requested offset. [`Log::fetch`] keeps that contract: when the engine's
//! answer does not start at the requested offset, it finds the batch holding
//! it and returns that batch's tail, re-encoded to start exactly there.
//!
//! The tail is re-encoded rather than returned whole because tansu's fetch
//! service advances its own cursor by the record count of what storage
//! returns: a whole batch starting before the requested offset would move
//! that cursor past the start of the next batch, and a following small
//! batch would be skipped in turn.
//!
//! SlateDB runs each storage call as an optimistic transaction, and tansu
//! serves connections concurrently: two calls that touch one key at once
//! (two producers' idempotence state, two group members' joins, two
//! clients creating the same topic) make one of them fail with a
//! transaction conflict, which tansu hands the client as a server error.
//! Seen here as a rebalance storm among five workers and a `publish` that
//! died creating its topics beside a worker. A conflicted transaction wrote
//! nothing, so [`Log`] runs the call again ([`retry`]): what SQLite's single
//! storage task did by queueing, this does by retrying.
//!
//! tansu's group coordinator takes a group's state out of its cache while it
//! handles a request; a second member joining meanwhile finds no state, starts
//! the group afresh and writes it with no version, meaning "create it". The
//! SQLite engine treats that as create-if-absent and answers `Outdated` with
//! the group's current state, which the coordinator then merges. The SlateDB
//! engine overwrote the group instead, so concurrent joiners each formed a
//! group of one and were handed every partition, in a rebalance storm.
//! `Log::update_group` asks for create-if-absent, as SQLite reads it.
//!
//! The SlateDB engine answers "the earliest offset" and "the first offset
//! at or after a time" from a map of batch base timestamps to offsets, in
//! which batches of one millisecond overwrite each other and in which
//! timestamps need not rise with offsets (several producers at once). Four
//! producers on one partition had "earliest" answered as offset 30 of a log
//! starting at 0: readers from the beginning (a fresh worker, a replay, the
//! DLQ commands) skipped the first records. [`Log`] answers "earliest" with
//! the log start the engine keeps beside it, and a time by reading the
//! batches' timestamps. Both engines answered "nothing at or after that
//! time" as offset 0 (a replay from a later time replayed everything);
//! Kafka answers -1, the log's end.
//!
//! Every other call passes straight through to the engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tansu_sans_io::describe_cluster_response::DescribeClusterBroker;
use tansu_sans_io::describe_configs_response::DescribeConfigsResult;
use tansu_sans_io::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic;
use tansu_sans_io::incremental_alter_configs_request::AlterConfigsResource;
use tansu_sans_io::incremental_alter_configs_response::AlterConfigsResourceResponse;
use tansu_sans_io::list_groups_response::ListedGroup;
use tansu_sans_io::record::{self, deflated, inflated};
use tansu_sans_io::txn_offset_commit_response::TxnOffsetCommitResponseTopic;
use tansu_sans_io::{
    ConfigResource, ErrorCode, IsolationLevel, ListOffset, ScramMechanism,
    create_topics_request::CreatableTopic, delete_groups_response::DeletableGroupResult,
    delete_records_request::DeleteRecordsTopic, delete_records_response::DeleteRecordsTopicResult,
};
use tansu_storage::{
    BrokerRegistrationRequest, Error, GroupDetail, ListOffsetResponse, MetadataResponse,
    NamedGroupDetail, OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result,
    ScramCredential, Storage, StorageContainer, TopicId, Topition, TxnAddPartitionsRequest,
    TxnAddPartitionsResponse, TxnOffsetCommitRequest, UpdateError, Version,
};
use url::Url;
use uuid::Uuid;

/// tansu's storage engine, with fetches from inside a stored batch mended.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    inner: StorageContainer,
    /// Held while a group is created (see `update_group`).
    creating: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Whether the engine stores whole batches (SlateDB) rather than a row
    /// per record (SQLite), i.e. whether a fetch can land inside one.
    batched: bool,
}

impl Log {
    pub(crate) fn new(inner: StorageContainer, batched: bool) -> Self {
        Self { inner, batched, creating: Default::default() }
    }

    /// The batch holding `offset`, if the log has one: the engine can only
    /// scan forward from a base offset, so step back from `offset` in
    /// doubling strides until a batch starts at or before it, then walk
    /// forward batch by batch. This runs only when a fetch lands inside a
    /// batch (after a seek), never on the sequential path.
    async fn batch_holding(
        &self,
        tp: &Topition,
        offset: i64,
        log_start: i64,
        isolation: IsolationLevel,
    ) -> Result<Option<deflated::Batch>> {
        let mut stride = 1i64;
        loop {
            let from = offset.saturating_sub(stride).max(log_start);
            let first = self.first_batch_from(tp, from, isolation).await?;
            match first {
                Some(mut batch) if batch.base_offset <= offset => loop {
                    if batch.max_offset() >= offset {
                        return Ok(Some(batch));
                    }
                    match self.first_batch_from(tp, batch.max_offset() + 1, isolation).await? {
                        Some(next) if next.base_offset <= offset => batch = next,
                        // A gap in the log (records deleted): nothing holds it.
                        _ => return Ok(None),
                    }
                },
                _ if from <= log_start => return Ok(None),
                _ => stride = stride.saturating_mul(2),
            }
        }
    }

    /// The first offset whose record's timestamp is at or after `time`, as
    /// Kafka answers it (-1 when there is none), found by reading the
    /// partition's batch headers from its start (a record batch is opened
    /// only when its largest timestamp reaches `time`). The engine's own
    /// answer comes from a map of batch base timestamps to base offsets in
    /// which batches of one millisecond overwrite each other and timestamps
    /// need not rise with offsets (several producers): it answered later
    /// offsets than the first match, which skipped records.
    async fn offset_for_time(
        &self,
        tp: &Topition,
        time: SystemTime,
        isolation: IsolationLevel,
    ) -> Result<ListOffsetResponse> {
        let target = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let stage = self.inner.offset_stage(tp).await?;
        let end = readable_end(&stage, isolation);
        let mut from = stage.log_start();
        while from < end {
            let batches = self.fetch(tp, from, 0, TIME_SCAN_BYTES, isolation).await?;
            // Nothing more, or nothing past `from` (which would loop).
            if batches.last().is_none_or(|b| b.max_offset() < from) {
                break;
            }
            for batch in batches {
                let next = batch.max_offset() + 1;
                if batch.max_timestamp >= target {
                    let base_offset = batch.base_offset;
                    let inflated = inflated::Batch::try_from(batch)?;
                    let found = inflated.records.iter().find_map(|r| {
                        let ts = inflated.base_timestamp + r.timestamp_delta;
                        (ts >= target).then_some((base_offset + i64::from(r.offset_delta), ts))
                    });
                    if let Some((offset, ts)) = found {
                        let at = u64::try_from(ts)
                            .ok()
                            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
                        return Ok(list_offset(Some(offset), at));
                    }
                }
                from = from.max(next);
            }
        }
        Ok(list_offset(Some(-1), None))
    }

    /// The first stored batch whose base offset is at or after `from`.
    async fn first_batch_from(
        &self,
        tp: &Topition,
        from: i64,
        isolation: IsolationLevel,
    ) -> Result<Option<deflated::Batch>> {
        // A one-byte budget makes the engine stop after its first batch.
        let mut batches = self.inner.fetch(tp, from, 0, 1, isolation).await?;
        Ok(if batches.is_empty() { None } else { Some(batches.swap_remove(0)) })
    }
}

/// The offset a reader at `isolation` may read up to (not included).
fn readable_end(stage: &OffsetStage, isolation: IsolationLevel) -> i64 {
    if isolation == IsolationLevel::ReadCommitted {
        stage.last_stable()
    } else {
        stage.high_watermark()
    }
}

/// How much of a partition one step of [`Log::offset_for_time`] reads.
const TIME_SCAN_BYTES: u32 = 4 << 20;

fn list_offset(offset: Option<i64>, timestamp: Option<SystemTime>) -> ListOffsetResponse {
    ListOffsetResponse { error_code: ErrorCode::None, timestamp, offset }
}

/// How many times a conflicted call is run again before its error goes to
/// the client. Conflicts clear in a few attempts; this bounds a livelock.
const CONFLICT_RETRIES: u32 = 200;

/// Calls run again after a conflict, since the process started: what the
/// benches report beside their figures.
static CONFLICTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many storage calls were run again after a SlateDB transaction
/// conflict, in this process so far.
pub fn conflict_retries() -> u64 {
    CONFLICTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `e` is SlateDB's "transaction conflict: run it again".
fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Slate(s) if s.kind() == slatedb::ErrorKind::Transaction)
}

/// Runs `call` until it ends other than in a transaction conflict (at most
/// [`CONFLICT_RETRIES`] times more), backing off a little more each time so
/// that the calls that collided spread out.
async fn retry<T, E, Fut>(
    what: &str,
    conflict: impl Fn(&E) -> bool,
    mut call: impl FnMut() -> Fut,
) -> std::result::Result<T, E>
where
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if conflict(&e) && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                CONFLICTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(what, attempt, "embedded broker: transaction conflict, again");
                if attempt < 4 {
                    tokio::task::yield_now().await;
                } else {
                    let jitter = u64::from(std::process::id() ^ attempt) % 500;
                    tokio::time::sleep(Duration::from_micros(
                        200 * u64::from(attempt.min(20)) + jitter,
                    ))
                    .await;
                }
            }
            r => return r,
        }
    }
}

/// The records of `batch` from `offset` on, as a batch based at `offset`:
/// offsets deltas and the base sequence move with the new base, timestamps
/// stay (their deltas are relative to the base timestamp, kept as it is),
/// and the CRC is computed anew by the re-encoding.
pub(crate) fn tail_from(batch: deflated::Batch, offset: i64) -> Result<deflated::Batch> {
    let skip = offset - batch.base_offset;
    if skip <= 0 {
        return Ok(batch);
    }
    let skip_i32 = i32::try_from(skip)?;
    let mut inflated = inflated::Batch::try_from(batch)?;
    let records = std::mem::take(&mut inflated.records);
    inflated.records = records
        .into_iter()
        .filter(|r| r.offset_delta >= skip_i32)
        .map(|r| {
            let delta = r.offset_delta - skip_i32;
            record::Builder::from(r).offset_delta(delta).build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    inflated.base_offset = offset;
    inflated.last_offset_delta -= skip_i32;
    if inflated.base_sequence >= 0 {
        // Kafka's sequences wrap at i32::MAX.
        inflated.base_sequence = inflated.base_sequence.wrapping_add(skip_i32) & i32::MAX;
    }
    deflated::Batch::try_from(inflated).map_err(Into::into)
}

#[async_trait]
impl Storage for Log {
    async fn fetch(
        &self,
        tp: &'_ Topition,
        offset: i64,
        min_bytes: u32,
        max_bytes: u32,
        isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        let batches = self.inner.fetch(tp, offset, min_bytes, max_bytes, isolation).await?;
        if !self.batched || batches.first().is_some_and(|b| b.base_offset == offset) {
            return Ok(batches);
        }
        // The answer starts after `offset`, or is empty although `offset`
        // may lie inside the last batch: look for the batch that holds it.
        let stage = self.inner.offset_stage(tp).await?;
        let end = readable_end(&stage, isolation);
        if offset >= end || offset < stage.log_start() {
            return Ok(batches);
        }
        match self.batch_holding(tp, offset, stage.log_start(), isolation).await? {
            // Only the tail: tansu's fetch loop asks again from where it ends,
            // which is the next batch's base.
            Some(holding) => Ok(vec![tail_from(holding, offset)?]),
            None => Ok(batches),
        }
    }

    async fn register_broker(&self, broker_registration: BrokerRegistrationRequest) -> Result<()> {
        retry("register_broker", is_conflict, || {
            self.inner.register_broker(broker_registration.clone())
        })
        .await
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        retry("create_topic", is_conflict, || self.inner.create_topic(topic.clone(), validate_only))
            .await
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        retry("incremental_alter_resource", is_conflict, || {
            self.inner.incremental_alter_resource(resource.clone())
        })
        .await
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        retry("delete_records", is_conflict, || self.inner.delete_records(topics)).await
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        retry("delete_topic", is_conflict, || self.inner.delete_topic(topic)).await
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.inner.brokers().await
    }

    async fn produce(
        &self,
        transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        retry("produce", is_conflict, || {
            self.inner.produce(transaction_id, topition, batch.clone())
        })
        .await
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        self.inner.offset_stage(topition).await
    }

    async fn list_offsets(
        &self,
        isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        let mut answers = self.inner.list_offsets(isolation_level, offsets).await?;
        for ((tp, asked), (answered_for, answer)) in offsets.iter().zip(answers.iter_mut()) {
            if answered_for != tp || answer.error_code != ErrorCode::None {
                continue;
            }
            match asked {
                ListOffset::Latest => {}
                ListOffset::Earliest if self.batched => {
                    let start = self.inner.offset_stage(tp).await?.log_start();
                    *answer = list_offset(Some(start), None);
                }
                ListOffset::Earliest => {}
                ListOffset::Timestamp(t) if self.batched => {
                    *answer = self.offset_for_time(tp, *t, isolation_level).await?;
                }
                // SQLite answers "no record at or after that time" as offset
                // 0 without a timestamp (a real match carries one): Kafka
                // answers -1, which clients read as the log's end.
                ListOffset::Timestamp(_) => {
                    if answer.offset == Some(0) && answer.timestamp.is_none() {
                        *answer = list_offset(Some(-1), None);
                    }
                }
            }
        }
        Ok(answers)
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        retry("offset_commit", is_conflict, || {
            self.inner.offset_commit(group_id, retention_time_ms, offsets)
        })
        .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<BTreeMap<Topition, i64>> {
        self.inner.offset_fetch(group_id, topics, require_stable).await
    }

    async fn committed_offset_topitions(&self, group_id: &str) -> Result<BTreeMap<Topition, i64>> {
        self.inner.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        self.inner.metadata(topics).await
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        retry("upsert_user_scram_credential", is_conflict, || {
            self.inner.upsert_user_scram_credential(user, mechanism, credential.clone())
        })
        .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        retry("delete_user_scram_credential", is_conflict, || {
            self.inner.delete_user_scram_credential(user, mechanism)
        })
        .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.inner.user_scram_credential(user, mechanism).await
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        self.inner.describe_config(name, resource, keys).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.inner.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        retry("delete_groups", is_conflict, || self.inner.delete_groups(group_ids)).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.inner.describe_groups(group_ids, include_authorized_operations).await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.inner.describe_topic_partitions(topics, partition_limit, cursor).await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        let conflict =
            |e: &UpdateError<GroupDetail>| matches!(e, UpdateError::Error(e) if is_conflict(e));
        // No version means "create it". Ask with a version no stored group
        // has (tansu's are fresh v7 UUIDs): an existing group answers
        // `Outdated` with its state, which the coordinator merges. A missing
        // one answers `Outdated` with an empty group and an empty version
        // (the engine reads a missing key as a default); only then is it
        // created, with no version. Creators queue on one lock so that two
        // cannot both find the group missing.
        if version.is_none() && self.batched {
            let _creating = self.creating.lock().await;
            let nil = Some(Version::from(&Uuid::nil()));
            let asked = retry("update_group", conflict, || {
                self.inner.update_group(group_id, detail.clone(), nil.clone())
            })
            .await;
            return match asked {
                Err(UpdateError::Outdated { version, .. }) if version == Version::default() => {
                    retry("update_group", conflict, || {
                        self.inner.update_group(group_id, detail.clone(), None)
                    })
                    .await
                }
                other => other,
            };
        }
        retry("update_group", conflict, || {
            self.inner.update_group(group_id, detail.clone(), version.clone())
        })
        .await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        retry("init_producer", is_conflict, || {
            self.inner.init_producer(
                transaction_id,
                transaction_timeout_ms,
                producer_id,
                producer_epoch,
            )
        })
        .await
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        retry("txn_add_offsets", is_conflict, || {
            self.inner.txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
        })
        .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        retry("txn_add_partitions", is_conflict, || {
            self.inner.txn_add_partitions(partitions.clone())
        })
        .await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        retry("txn_offset_commit", is_conflict, || self.inner.txn_offset_commit(offsets.clone()))
            .await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        retry("txn_end", is_conflict, || {
            self.inner.txn_end(transaction_id, producer_id, producer_epoch, committed)
        })
        .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        self.inner.maintain(now).await
    }

    async fn cluster_id(&self) -> Result<String> {
        self.inner.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.inner.node().await
    }

    async fn advertised_listener(&self) -> Result<Url> {
        self.inner.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use slatedb::object_store::memory::InMemory;
    use tansu_sans_io::IsolationLevel;
    use tansu_sans_io::create_topics_request::CreatableTopic;
    use tansu_sans_io::record::{self, deflated, inflated};
    use tansu_storage::{Storage, StorageContainer, Topition};
    use url::Url;

    use super::{Log, tail_from};

    /// A SlateDB engine holding one partition made of batches of these
    /// sizes, each record's value its offset; and the mended log over it.
    async fn log_of(batch_sizes: &[i64]) -> (StorageContainer, Log, Topition) {
        let db = slatedb::Db::open("test", Arc::new(InMemory::new())).await.unwrap();
        let engine = tansu_storage::slate::Engine::new(
            "test",
            1,
            Url::parse("tcp://127.0.0.1:9092").unwrap(),
            Arc::new(db),
        );
        let raw = StorageContainer::Slate(engine);
        let topic =
            CreatableTopic::default().name("t".into()).num_partitions(1).replication_factor(1);
        raw.create_topic(topic, false).await.unwrap();
        let tp = Topition::new("t", 0);
        let mut offset = 0i64;
        for &n in batch_sizes {
            raw.produce(None, &tp, batch(offset, n)).await.unwrap();
            offset += n;
        }
        (raw.clone(), Log::new(raw, true), tp)
    }

    fn batch(first: i64, n: i64) -> deflated::Batch {
        let mut b = inflated::Batch::builder()
            .base_timestamp(1_650_000_000_000)
            .max_timestamp(1_650_000_000_000 + n - 1)
            .last_offset_delta(i32::try_from(n - 1).unwrap())
            .producer_id(-1)
            .producer_epoch(-1)
            .base_sequence(-1);
        for i in 0..n {
            b = b.record(
                record::Record::builder()
                    .offset_delta(i32::try_from(i).unwrap())
                    .timestamp_delta(i)
                    .key(Some(Bytes::from(format!("k{}", first + i))))
                    .value(Some(Bytes::from((first + i).to_string()))),
            );
        }
        deflated::Batch::try_from(b.build().unwrap()).unwrap()
    }

    /// Reads the partition from `offset` to its end as tansu's fetch service
    /// does: its cursor moves on by the record count of each answer. Returns
    /// each record's offset as its batch states it, checked against the
    /// offset its value says it was produced at.
    async fn read(log: &impl Storage, tp: &Topition, mut offset: i64) -> Vec<i64> {
        let mut seen = Vec::new();
        loop {
            let batches =
                log.fetch(tp, offset, 1, 1 << 20, IsolationLevel::ReadUncommitted).await.unwrap();
            if batches.is_empty() {
                return seen;
            }
            for b in batches {
                offset += i64::from(b.record_count);
                let base = b.base_offset;
                let records = inflated::Batch::try_from(b).unwrap().records;
                for r in records {
                    let at = base + i64::from(r.offset_delta);
                    let value: i64 =
                        std::str::from_utf8(&r.value.unwrap()).unwrap().parse().unwrap();
                    assert_eq!(at, value, "the record's offset is the one it was produced at");
                    seen.push(at);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_fetch_from_any_offset_returns_every_record_from_there_once() {
        // Small batches after a large one: with the large batch returned
        // whole, tansu's cursor would overshoot them.
        let sizes = [100, 3, 1, 50, 7, 1, 1, 20];
        let end: i64 = sizes.iter().sum();
        let (_, log, tp) = log_of(&sizes).await;
        for start in 0..=end {
            let seen = read(&log, &tp, start).await;
            assert_eq!(seen, (start..end).collect::<Vec<_>>(), "reading from offset {start}");
        }
    }

    #[tokio::test]
    async fn the_engine_alone_skips_the_rest_of_a_batch_fetched_from_inside() {
        // The trap the mend exists for. If tansu fixes it, this fails and
        // the mend can go.
        let (raw, _, tp) = log_of(&[100, 100]).await;
        let seen = read(&raw, &tp, 7).await;
        assert_eq!(seen.first(), Some(&100), "tansu's SlateDB engine from offset 7");
    }

    /// Concurrent produces to one partition all touch its watermark: on the
    /// engine alone some fail with a transaction conflict; through the log
    /// every one lands, each at offsets of its own.
    async fn concurrent_produces(storage: &impl Storage) -> (usize, Vec<i64>) {
        let tp = Topition::new("t", 0);
        let calls = (0..32).map(|i| storage.produce(None, &tp, batch(i * 10, 10)));
        let results = futures::future::join_all(calls).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        let mut bases: Vec<i64> = results.into_iter().filter_map(|r| r.ok()).collect();
        bases.sort_unstable();
        (failed, bases)
    }

    #[tokio::test]
    async fn concurrent_produces_to_one_partition_all_land_once() {
        let (raw, log, _) = log_of(&[]).await;
        let (failed, _) = concurrent_produces(&raw).await;
        eprintln!("the engine alone: {failed} of 32 concurrent produces failed in a conflict");
        let (failed, bases) = concurrent_produces(&log).await;
        assert_eq!(failed, 0, "through the log no produce fails");
        let start = bases[0];
        assert_eq!(
            bases,
            (0..32).map(|i| start + i * 10).collect::<Vec<_>>(),
            "each at its own offsets"
        );
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_topic_make_it_once_and_refuse_the_rest_by_name() {
        let (_, log, _) = log_of(&[]).await;
        let topic =
            CreatableTopic::default().name("u".into()).num_partitions(2).replication_factor(1);
        let calls = (0..16).map(|_| log.create_topic(topic.clone(), false));
        let results = futures::future::join_all(calls).await;
        let made = results.iter().filter(|r| r.is_ok()).count();
        let exists = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Err(tansu_storage::Error::Api(tansu_sans_io::ErrorCode::TopicAlreadyExists))
                )
            })
            .count();
        assert_eq!((made, exists), (1, 15), "{results:?}");
    }

    #[tokio::test]
    async fn a_group_written_without_a_version_is_created_only_if_absent() {
        use tansu_storage::{GroupDetail, UpdateError};
        let (raw, log, _) = log_of(&[]).await;
        let first = GroupDetail { generation_id: 1, ..GroupDetail::default() };
        let second = GroupDetail { generation_id: 2, ..GroupDetail::default() };
        // Through the log: created as tansu's coordinator creates a group
        // (no version; on `Outdated` again with the version it was given)...
        let mut version = None;
        loop {
            match log.update_group("g", first.clone(), version.take()).await {
                Ok(_) => break,
                Err(UpdateError::Outdated { current, version: v })
                    if current.generation_id == -1 =>
                {
                    version = Some(v);
                }
                other => panic!("creating the group: {other:?}"),
            }
        }
        // ...and a second writer without a version is told the group exists,
        // and what it holds.
        match log.update_group("g", second.clone(), None).await {
            Err(UpdateError::Outdated { current, .. }) => {
                assert_eq!(current.generation_id, 1, "the first writer's group stands");
            }
            other => panic!("a second create of the group: {other:?}"),
        }
        // The engine alone overwrote it (why the log asks differently).
        raw.update_group("h", first, None).await.unwrap();
        let overwrote = raw.update_group("h", second, None).await;
        assert!(overwrote.is_ok(), "tansu's SlateDB engine now refuses; the mend can go");
    }

    #[test]
    fn a_tail_is_a_valid_batch_from_its_new_base() {
        let mut whole = batch(1000, 10);
        // The engine sets a stored batch's base offset when it fetches it.
        whole.base_offset = 1000;
        let tail = tail_from(whole.clone(), 1004).unwrap();
        assert_eq!(tail.base_offset, 1004);
        assert_eq!(tail.record_count, 6);
        assert_eq!(tail.last_offset_delta, 5);
        assert_eq!(tail.base_timestamp, whole.base_timestamp);
        assert_eq!(tail.max_timestamp, whole.max_timestamp);
        // The CRC covers what follows it: recomputing it from the records
        // gives the one stored.
        let inflated = inflated::Batch::try_from(tail.clone()).unwrap();
        let again = deflated::Batch::try_from(inflated.clone()).unwrap();
        assert_eq!(again.crc, tail.crc);
        let offsets: Vec<i32> = inflated.records.iter().map(|r| r.offset_delta).collect();
        assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);
        let ts: Vec<i64> = inflated.records.iter().map(|r| r.timestamp_delta).collect();
        assert_eq!(ts, vec![4, 5, 6, 7, 8, 9], "record times are unchanged");
        // From the base or before it, the batch is returned as it is.
        assert_eq!(tail_from(whole.clone(), 1000).unwrap(), whole);
    }

    #[test]
    fn a_tail_moves_the_idempotent_sequence_with_its_base() {
        let mut b = inflated::Batch::try_from(batch(0, 10)).unwrap();
        b.producer_id = 7;
        b.producer_epoch = 0;
        b.base_sequence = 40;
        let b = deflated::Batch::try_from(b).unwrap();
        assert_eq!(tail_from(b, 3).unwrap().base_sequence, 43);
    }
}
