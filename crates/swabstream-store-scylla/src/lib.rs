//! swabstream's view store on a ScyllaDB cluster (`store.kind = "scylla"`),
//! implementing [`swabstream_store::ViewStore`].
//!
//! It holds what the SQLite store holds — per-Kafka-partition partial rows
//! with absolute values, each partition's checkpoint and owner's epoch, and
//! chunked state snapshots — but Scylla has no transaction across its
//! partitions, so the rows and the checkpoint cannot be written atomically.
//! Exactly-once views come instead from two rules (ARCHITECTURE.md, "The Scylla view store", has the whole
//! argument):
//! - every write and delete of rows, checkpoints and snapshot chunks carries
//!   `USING TIMESTAMP` derived from the Kafka offset it reflects
//!   ([`cql::write_ts`]): a repeat writes identical cells, and a stale
//!   owner's late write is older than anything a newer owner wrote, so it
//!   loses in any arrival order. The checkpoint is written after its rows,
//!   older snapshots are deleted after the checkpoint no longer names them.
//! - ownership is an epoch bumped by a lightweight transaction on a table
//!   (`claim`) that plain writes never touch; a commit reads it first and is
//!   refused when fenced, before writing anything.
//!
//! Everything is kept per view version: each table but `meta` and `registry`
//! has the version's id in its partition key. The registry (versions, the
//! live one, the previous one) is one row changed only by compare-and-set
//! LWTs on its revision, so a promotion is one Paxos round: atomic. A drop
//! deletes the version's Scylla partitions at a timestamp above every
//! offset's, so nothing a stale writer sends to that id later shows again.
//!
//! Parts:
//! - [`cql`]: every statement as data (text, bound values, timestamps) and
//!   the schema from `schemas/scylla-views-v2.cql`; pure, tested here.
//! - `bridge`: the synchronous API over the async driver, on a small runtime
//!   the store owns.
//! - `error`: the driver's errors as transient (retry) or not (operator).

pub mod cql;

mod bridge;
mod error;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::PagingState;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlValue, Row};
use swabstream_events::Day;
use swabstream_store::chunks::{self, Manifest};
use swabstream_store::versions::{Registry, VersionMeta};
use swabstream_store::{
    Checkpoint, Claim, Life, PartitionStatus, Promotion, Snapshot, StoreError, Version, ViewStore,
};
use swabstream_views::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
    ViewSet,
};

use crate::bridge::Bridge;
use crate::cql::{Bound, Keyspace, Replication, Stmt, Value};
pub use crate::error::ScyllaError;
use crate::error::{ToStore, answer};

/// Requests of one commit in flight at once (rows, batches, chunks).
const IN_FLIGHT: usize = 64;
/// Attempts of one statement on a transient error before the error goes to
/// the caller (the worker then waits and retries the whole commit).
const ATTEMPTS: u32 = 3;
/// Claims lost to a concurrent claimant before giving up (transiently); the
/// same for compare-and-set rounds of the registry.
const CLAIM_ROUNDS: u32 = 16;

/// Where the cluster is and how to use it (`[store.scylla]`).
#[derive(Clone)]
pub struct ScyllaSettings {
    /// `host:port` of some of the cluster's nodes.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication: Replication,
    /// The consistency level of every read and write (`LOCAL_QUORUM`...).
    pub consistency: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub request_timeout: Duration,
}

impl ScyllaSettings {
    /// Settings for the nodes in `nodes` (`host:port,host:port`), with
    /// `keyspace`, SimpleStrategy RF 1 and LOCAL_QUORUM (a test cluster's).
    pub fn new(nodes: &str, keyspace: &str) -> ScyllaSettings {
        ScyllaSettings {
            nodes: split_nodes(nodes),
            keyspace: keyspace.to_owned(),
            replication: Replication::Simple(1),
            consistency: "LOCAL_QUORUM".to_owned(),
            username: None,
            password: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// `host:port,host:port` as a list, blanks dropped.
pub fn split_nodes(nodes: &str) -> Vec<String> {
    nodes.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect()
}

impl fmt::Debug for ScyllaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaSettings")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The Scylla view store. Its API is synchronous: each call runs on the
/// store's own runtime while the calling thread waits (see `bridge`), from a
/// plain thread and from inside another tokio runtime alike.
pub struct ScyllaStore {
    // Dropped in `Drop`, inside the runtime's context, before the runtime.
    inner: Option<Arc<Inner>>,
    bridge: Bridge,
    describe: String,
}

impl fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaStore").field("at", &self.describe).finish_non_exhaustive()
    }
}

impl Drop for ScyllaStore {
    fn drop(&mut self) {
        let _in_runtime = self.bridge.enter();
        self.inner.take();
    }
}

struct Inner {
    session: Session,
    prepared: Vec<PreparedStatement>,
}

impl ScyllaStore {
    /// Connects, creates the keyspace and tables if missing (idempotent),
    /// prepares every statement, and checks that the keyspace holds this
    /// schema version and `topic`'s views.
    pub fn open(settings: &ScyllaSettings, topic: &str) -> Result<ScyllaStore, StoreError> {
        // Every setting is checked before any connection is tried.
        let keyspace = Keyspace::new(&settings.keyspace)?;
        let (consistency, serial) = cql::consistency(&settings.consistency)?;
        let schema = cql::schema(&keyspace, &settings.replication)?;
        if settings.nodes.is_empty() {
            return Err(ScyllaError::NoNodes.into());
        }
        let describe =
            format!("ScyllaDB keyspace {} at {}", keyspace.as_str(), settings.nodes.join(","));
        let bridge = Bridge::new(2).map_err(|e| error::backend(false, e))?;
        let settings = settings.clone();
        let topic = topic.to_owned();
        let inner = bridge.run(async move {
            let profile = ExecutionProfile::builder()
                .consistency(consistency)
                .serial_consistency(Some(serial))
                .request_timeout(Some(settings.request_timeout))
                .build();
            let mut builder = SessionBuilder::new()
                .known_nodes(&settings.nodes)
                .default_execution_profile_handle(profile.into_handle());
            if let Some(user) = &settings.username {
                builder = builder.user(user, settings.password.clone().unwrap_or_default());
            }
            let session = builder.build().await.map_err(ToStore::to_store)?;
            // The keyspace and `meta` first; then the version a keyspace
            // holds is read, and another version's is refused before any
            // table of this one is made beside its tables.
            for ddl in &schema[..cql::SCHEMA_PREAMBLE] {
                retry(|| session.query_unpaged(ddl.as_str(), ())).await?;
            }
            let found = schema_version(&session, &keyspace).await?;
            if let Some(found) = found.filter(|f| f != cql::SCHEMA_VERSION) {
                return Err(StoreError::SchemaVersion { found, supported: cql::SCHEMA_VERSION });
            }
            for ddl in &schema[cql::SCHEMA_PREAMBLE..] {
                retry(|| session.query_unpaged(ddl.as_str(), ())).await?;
            }
            let mut prepared = Vec::with_capacity(Stmt::ALL.len());
            for stmt in Stmt::ALL {
                let text = stmt.text(&keyspace);
                let mut p = retry_prepare(&session, &text).await?;
                // Timestamped writes hold absolute values and reads change
                // nothing: the driver may retry them on another replica.
                p.set_is_idempotent(!stmt.is_lwt());
                p.set_page_size(stmt.page_size());
                prepared.push(p);
            }
            let inner = Arc::new(Inner { session, prepared });
            inner
                .check_meta("schema_version", cql::SCHEMA_VERSION, |found| {
                    StoreError::SchemaVersion { found, supported: cql::SCHEMA_VERSION }
                })
                .await?;
            inner
                .check_meta("topic", &topic, |found| StoreError::OtherTopic {
                    expected: topic.clone(),
                    found,
                })
                .await?;
            inner.ensure_registry().await?;
            Ok::<_, StoreError>(inner)
        })??;
        Ok(ScyllaStore { inner: Some(inner), bridge, describe })
    }

    /// Sends a commit's writes without its fence and regress checks: the
    /// commit of an owner that passed its checks just before another worker
    /// claimed the partition, and lands late. For the tests of that race
    /// only; never call it otherwise.
    #[doc(hidden)]
    pub fn commit_as_if_checked_before_a_claim(
        &mut self,
        version: &Version,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let plan =
            cql::commit_plan(version.id, partition, epoch, rows, next_offset, snapshot, now_ms())?;
        self.run(|inner| async move { inner.send(plan).await })
    }

    fn inner(&self) -> Arc<Inner> {
        Arc::clone(self.inner.as_ref().expect("only taken when dropped"))
    }

    /// Runs `f(inner)` on the store's runtime and waits for it.
    fn run<T: Send + 'static, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.bridge.run(f(self.inner()))?
    }
}

impl ViewStore for ScyllaStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError> {
        self.run(|inner| async move {
            inner
                .check_meta("partitions", &partitions.to_string(), |found| match found.parse() {
                    Ok(recorded) => StoreError::PartitionCount { recorded, found: partitions },
                    Err(_) => StoreError::Corrupt(format!("partition count `{found}`")),
                })
                .await
        })
    }

    fn registry(&self) -> Result<Registry, StoreError> {
        self.run(|inner| async move { Ok(inner.registry().await?.1) })
    }

    fn create_version(&mut self, name: &str) -> Result<Version, StoreError> {
        let name = name.to_owned();
        self.run(|inner| async move {
            let now = now_ms();
            inner.change_registry(|r| r.create(&name, now)).await
        })
    }

    fn promote(&mut self, name: &str) -> Result<Promotion, StoreError> {
        let name = name.to_owned();
        self.run(|inner| async move {
            let now = now_ms();
            inner.change_registry(|r| r.promote(&name, now)).await
        })
    }

    fn promote_back(&mut self) -> Result<Promotion, StoreError> {
        self.run(|inner| async move {
            let now = now_ms();
            inner
                .change_registry(|r| {
                    let back = r.back()?;
                    r.promote(&back.name, now)
                })
                .await
        })
    }

    fn drop_version(&mut self, name: &str) -> Result<Version, StoreError> {
        let name = name.to_owned();
        self.run(|inner| async move {
            // 1. The name goes (no reader, claim or promotion finds it any
            //    more); its id waits in `dropping` until its data is gone.
            let v = inner.change_registry(|r| r.drop_version(&name)).await?;
            // 2. Its data, and that of any drop interrupted before.
            let (_, r) = inner.registry().await?;
            for id in &r.dropping {
                inner.delete_version_data(*id).await?;
            }
            // 3. Done: the ids leave `dropping`.
            let done = r.dropping.clone();
            inner
                .change_registry(|r| {
                    r.dropping.retain(|id| !done.contains(id));
                    Ok(())
                })
                .await?;
            Ok(v)
        })
    }

    fn claim(&mut self, version: &Version, partition: i32) -> Result<Claim, StoreError> {
        let version = version.clone();
        self.run(|inner| async move {
            // A dropped version is not claimed back into being.
            let (_, registry) = inner.registry().await?;
            if registry.by_id(version.id).is_none() {
                return Err(StoreError::UnknownVersion {
                    name: version.name.clone(),
                    known: registry.names(),
                });
            }
            let key = vec![Value::BigInt(version.id), Value::Int(partition)];
            for _ in 0..CLAIM_ROUNDS {
                let current: Option<i64> = inner
                    .select::<(Option<i64>,)>(Stmt::ReadEpoch, key.clone())
                    .await?
                    .into_iter()
                    .next()
                    .and_then(|(e,)| e);
                let now = now_ms();
                let (stmt, values, next) = match current {
                    None => (
                        Stmt::ClaimFirst,
                        vec![
                            Value::BigInt(version.id),
                            Value::Int(partition),
                            Value::BigInt(1),
                            Value::BigInt(now),
                        ],
                        1,
                    ),
                    Some(e) => (
                        Stmt::ClaimNext,
                        vec![
                            Value::BigInt(e + 1),
                            Value::BigInt(now),
                            Value::BigInt(version.id),
                            Value::Int(partition),
                            Value::BigInt(e),
                        ],
                        e + 1,
                    ),
                };
                if inner.lwt(stmt, values).await?.applied {
                    return Ok(Claim {
                        epoch: next,
                        checkpoint: inner.checkpoint(version.id, partition).await?,
                    });
                }
                // Another worker claimed it between the read and the LWT: go
                // again from the epoch it wrote.
            }
            Err(error::backend(
                true,
                ScyllaError::Driver(format!(
                    "partition {partition}: {CLAIM_ROUNDS} claims in a row lost to other claimants"
                )),
            ))
        })
    }

    fn commit(
        &mut self,
        version: &Version,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        // Built (and an impossible offset refused) before anything is sent.
        let plan =
            cql::commit_plan(version.id, partition, epoch, rows, next_offset, snapshot, now_ms())?;
        let key = vec![Value::BigInt(version.id), Value::Int(partition)];
        self.run(|inner| async move {
            let (claimed, committed) = futures::try_join!(
                inner.select::<(Option<i64>,)>(Stmt::ReadEpoch, key.clone()),
                inner.select::<(Option<i64>, Option<i64>)>(Stmt::ReadCommitted, key),
            )?;
            // No claim: never claimed here, or the version was dropped (its
            // claims are deleted): fenced either way.
            let current = claimed.first().and_then(|(e,)| *e).unwrap_or(0);
            if current != epoch {
                return Err(StoreError::Fenced { partition, ours: epoch, current });
            }
            if let Some((Some(stored), by)) = committed.first().copied() {
                // A checkpoint ahead of ours that an earlier owner wrote (its
                // last commit, late, after our claim) is not a regress: its
                // writes are the log's truth at that offset, and ours, older,
                // cannot move it back (ARCHITECTURE.md, "a stale owner's late commit").
                if next_offset < stored && by.unwrap_or(epoch) >= epoch {
                    return Err(StoreError::Regress { partition, stored, offered: next_offset });
                }
            }
            inner.send(plan).await
        })
    }

    fn touch(&mut self, version: &Version, owned: &[(i32, i64)]) -> Result<(), StoreError> {
        let owned = owned.to_vec();
        let id = version.id;
        self.run(|inner| async move {
            let now = now_ms();
            stream::iter(owned)
                .map(|(p, e)| {
                    let inner = &inner;
                    async move {
                        // Not applied when another worker claimed it since.
                        inner
                            .lwt(
                                Stmt::Touch,
                                vec![
                                    Value::BigInt(now),
                                    Value::BigInt(id),
                                    Value::Int(p),
                                    Value::BigInt(e),
                                ],
                            )
                            .await
                            .map(|_| ())
                    }
                })
                .buffer_unordered(16)
                .try_collect::<()>()
                .await
        })
    }

    fn checkpoint(
        &self,
        version: &Version,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let id = version.id;
        self.run(|inner| async move { inner.checkpoint(id, partition).await })
    }

    fn partitions(&self, version: &Version) -> Result<Vec<PartitionStatus>, StoreError> {
        let id = version.id;
        self.run(|inner| async move {
            let (claims, checkpoints) = futures::try_join!(
                inner.select::<(i64, i32, Option<i64>, Option<i64>)>(Stmt::ReadClaims, vec![]),
                inner.select::<(
                    i64,
                    i32,
                    Option<i64>,
                    Option<i64>,
                    Option<SnapshotCell>,
                    Option<i64>,
                )>(Stmt::ReadCheckpoints, vec![]),
            )?;
            // Both tables hold every version's rows: this version's are kept.
            let checkpoints: BTreeMap<i32, _> = checkpoints
                .into_iter()
                .filter(|c| c.0 == id)
                .map(|(_, p, n, c, s, sa)| (p, (n, c, s, sa)))
                .collect();
            let mut out: Vec<PartitionStatus> = claims
                .into_iter()
                .filter(|c| c.0 == id)
                .map(|(_, partition, epoch, touched)| {
                    let (next_offset, committed_at_ms, snapshot, snapshot_at_ms) =
                        checkpoints.get(&partition).copied().unwrap_or_default();
                    PartitionStatus {
                        partition,
                        epoch: epoch.unwrap_or(0),
                        next_offset,
                        snapshot_offset: snapshot.map(|s| s.0),
                        snapshot_bytes: snapshot.map(|s| s.3.max(0) as u64),
                        // Claims and touches only: a replay's commits are
                        // no worker's life (as in the SQLite store).
                        touched_at_ms: touched.unwrap_or(0),
                        committed_at_ms,
                        snapshot_at_ms,
                    }
                })
                .collect();
            out.sort_by_key(|p| p.partition);
            Ok(out)
        })
    }

    fn signs_of_life(&self) -> Result<Vec<Life>, StoreError> {
        self.run(|inner| async move {
            let claims = inner
                .select::<(i64, i32, Option<i64>, Option<i64>)>(Stmt::ReadClaims, vec![])
                .await?;
            Ok(claims
                .into_iter()
                .map(|(version_id, partition, epoch, touched)| Life {
                    version_id,
                    partition,
                    epoch: epoch.unwrap_or(0),
                    touched_at_ms: touched.unwrap_or(0),
                })
                .collect())
        })
    }

    fn version_views(&self, version: &Version) -> Result<ViewSet, StoreError> {
        let id = version.id;
        self.run(|inner| async move { inner.views(id, None).await })
    }

    fn partition_views(&self, version: &Version, partition: i32) -> Result<ViewSet, StoreError> {
        let id = version.id;
        self.run(|inner| async move { inner.views(id, Some(partition)).await })
    }
}

/// The schema version a keyspace's `meta` records, if any.
async fn schema_version(
    session: &Session,
    keyspace: &Keyspace,
) -> Result<Option<String>, StoreError> {
    let text = format!("SELECT value FROM {}.meta WHERE key = 'schema_version'", keyspace.as_str());
    let result = retry(|| session.query_unpaged(text.as_str(), ())).await?;
    let rows = result.into_rows_result().map_err(ToStore::to_store)?;
    let found = rows
        .rows::<(Option<String>,)>()
        .map_err(ToStore::to_store)?
        .next()
        .transpose()
        .map_err(|e| answer(&text, e))?
        .and_then(|(v,)| v);
    Ok(found)
}

/// The registry's row as the driver reads it.
type RegistryRow = (
    Option<i64>,
    Option<BTreeMap<String, (i64, i64)>>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<BTreeSet<i64>>,
);

/// The registry's values, in the order `UpdateRegistry` binds them after the
/// revision (and `InsertRegistry` after key and revision).
fn registry_values(r: &Registry) -> Vec<Value> {
    vec![
        Value::Versions(
            r.versions.iter().map(|(n, m)| (n.clone(), (m.id, m.created_at_ms))).collect(),
        ),
        Value::Text(r.live.clone()),
        r.previous.clone().map_or(Value::Null, Value::Text),
        Value::BigInt(r.next_id),
        r.promoted_at_ms.map_or(Value::Null, Value::BigInt),
        Value::Ids(r.dropping.clone()),
    ]
}

/// The checkpoint's `snapshot` cell: (offset, epoch, chunks, bytes, crc32).
type SnapshotCell = (i64, i64, i32, i64, i64);

/// What a lightweight transaction answered.
struct LwtAnswer {
    applied: bool,
    /// When not applied: the row's current values, by column name.
    current: BTreeMap<String, Option<CqlValue>>,
}

impl Inner {
    fn prepared(&self, stmt: Stmt) -> &PreparedStatement {
        &self.prepared[stmt as usize]
    }

    /// A commit's writes, step by step: each step's requests concurrently
    /// (at most [`IN_FLIGHT`]), the next step once all of them succeeded.
    async fn send(&self, plan: cql::CommitPlan) -> Result<(), StoreError> {
        for step in plan.steps {
            stream::iter(step)
                .map(|request| self.request(request))
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<()>()
                .await?;
        }
        Ok(())
    }

    /// One request of a commit: a statement, or an unlogged batch of
    /// statements of one Scylla partition.
    async fn request(&self, request: Vec<Bound>) -> Result<(), StoreError> {
        if let [one] = request.as_slice() {
            let values = cql_values(&one.values);
            retry(|| self.session.execute_unpaged(self.prepared(one.stmt), &values)).await?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(request.len());
        for b in &request {
            batch.append_statement(self.prepared(b.stmt).clone());
            values.push(cql_values(&b.values));
        }
        batch.set_is_idempotent(true);
        retry(|| self.session.batch(&batch, &values)).await?;
        Ok(())
    }

    /// Every row of a read, page by page.
    async fn select<T>(&self, stmt: Stmt, values: Vec<Value>) -> Result<Vec<T>, StoreError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let values = cql_values(&values);
        let prepared = self.prepared(stmt);
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (result, next) =
                retry(|| self.session.execute_single_page(prepared, &values, paging.clone()))
                    .await?;
            let rows = result.into_rows_result().map_err(ToStore::to_store)?;
            for row in rows.rows::<T>().map_err(ToStore::to_store)? {
                out.push(row.map_err(|e| answer(prepared.get_statement(), e))?);
            }
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Break(()) => return Ok(out),
                std::ops::ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    async fn lwt(&self, stmt: Stmt, values: Vec<Value>) -> Result<LwtAnswer, StoreError> {
        let values = cql_values(&values);
        let prepared = self.prepared(stmt);
        let result: QueryResult = retry(|| self.session.execute_unpaged(prepared, &values)).await?;
        let rows = result.into_rows_result().map_err(ToStore::to_store)?;
        let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
        let row = rows
            .rows::<Row>()
            .map_err(ToStore::to_store)?
            .next()
            .ok_or_else(|| answer(prepared.get_statement(), "no [applied] row"))?
            .map_err(|e| answer(prepared.get_statement(), e))?;
        let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
        Ok(LwtAnswer { applied, current: names.into_iter().zip(row.columns).collect() })
    }

    /// Checks that `meta` holds `value` under `key`, inserting it (once,
    /// whoever is first) if the key is new.
    async fn check_meta(
        &self,
        key: &str,
        value: &str,
        mismatch: impl FnOnce(String) -> StoreError,
    ) -> Result<(), StoreError> {
        let found = self
            .select::<(Option<String>,)>(Stmt::ReadMeta, vec![Value::Text(key.to_owned())])
            .await?
            .into_iter()
            .next()
            .and_then(|(v,)| v);
        let found = match found {
            Some(f) => Some(f),
            None => {
                let a = self
                    .lwt(
                        Stmt::InsertMeta,
                        vec![Value::Text(key.to_owned()), Value::Text(value.to_owned())],
                    )
                    .await?;
                match a.current.get("value") {
                    _ if a.applied => None,
                    Some(Some(CqlValue::Text(v))) => Some(v.clone()),
                    other => {
                        return Err(answer(
                            "INSERT INTO meta … IF NOT EXISTS",
                            format!("not applied, value {other:?}"),
                        ));
                    }
                }
            }
        };
        match found {
            Some(f) if f != value => Err(mismatch(f)),
            _ => Ok(()),
        }
    }

    async fn checkpoint(
        &self,
        version: i64,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let head = self
                .select::<(Option<i64>, Option<SnapshotCell>)>(
                    Stmt::ReadCheckpoint,
                    vec![Value::BigInt(version), Value::Int(partition)],
                )
                .await?;
            let Some((Some(next_offset), cell)) = head.into_iter().next() else {
                return Ok(None);
            };
            let Some(cell) = cell else {
                return Ok(Some(Checkpoint { next_offset, snapshot: None }));
            };
            let (manifest, epoch) = manifest_of(cell)?;
            let parts = self
                .select::<(i32, Vec<u8>)>(
                    Stmt::ReadChunks,
                    vec![
                        Value::BigInt(version),
                        Value::Int(partition),
                        Value::BigInt(manifest.next_offset),
                        Value::BigInt(epoch),
                        Value::Int(manifest.chunks as i32),
                    ],
                )
                .await?
                .into_iter()
                .map(|(seq, bytes)| (seq as u32, bytes));
            match chunks::reassemble(&manifest, parts) {
                Ok(bytes) => {
                    return Ok(Some(Checkpoint {
                        next_offset,
                        snapshot: Some(Snapshot { next_offset: manifest.next_offset, bytes }),
                    }));
                }
                // A newer snapshot's commit may have deleted this one between
                // the two reads (a stale owner's last commit racing a claim):
                // the checkpoint then names the newer one.
                Err(_) if attempt < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The registry row: its revision, and the registry. A keyspace without
    /// one (never opened by this build) is made one at open.
    async fn registry(&self) -> Result<(i64, Registry), StoreError> {
        let row = self
            .select::<RegistryRow>(Stmt::ReadRegistry, vec![Value::Text(cql::REGISTRY_KEY.into())])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("the keyspace holds no version registry".into()))?;
        let (revision, versions, live, previous, next_id, promoted_at_ms, dropping) = row;
        let (Some(revision), Some(live), Some(next_id)) = (revision, live, next_id) else {
            return Err(StoreError::Corrupt("the version registry lacks a value".into()));
        };
        let versions = versions
            .unwrap_or_default()
            .into_iter()
            .map(|(n, (id, created_at_ms))| (n, VersionMeta { id, created_at_ms }))
            .collect();
        Ok((
            revision,
            Registry {
                versions,
                live,
                previous,
                next_id,
                promoted_at_ms,
                dropping: dropping.unwrap_or_default(),
            },
        ))
    }

    /// Makes the registry row if the keyspace has none: `v1`, live.
    async fn ensure_registry(&self) -> Result<(), StoreError> {
        let found = self
            .select::<RegistryRow>(Stmt::ReadRegistry, vec![Value::Text(cql::REGISTRY_KEY.into())])
            .await?;
        if !found.is_empty() {
            return Ok(());
        }
        let mut values = vec![Value::Text(cql::REGISTRY_KEY.into()), Value::BigInt(1)];
        values.extend(registry_values(&Registry::initial(now_ms())));
        // Not applied: another process made it first, which is as good.
        self.lwt(Stmt::InsertRegistry, values).await?;
        Ok(())
    }

    /// Changes the registry by compare-and-set: read it with its revision,
    /// apply `change`, write it back IF the revision is still the one read;
    /// on losing to another change, start again from what that one wrote.
    async fn change_registry<T>(
        &self,
        mut change: impl FnMut(&mut Registry) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..CLAIM_ROUNDS {
            let (revision, mut r) = self.registry().await?;
            let out = change(&mut r)?;
            let mut values = vec![Value::BigInt(revision + 1)];
            values.extend(registry_values(&r));
            values.push(Value::Text(cql::REGISTRY_KEY.into()));
            values.push(Value::BigInt(revision));
            if self.lwt(Stmt::UpdateRegistry, values).await?.applied {
                return Ok(out);
            }
        }
        Err(error::backend(
            true,
            ScyllaError::Driver(format!(
                "the version registry: {CLAIM_ROUNDS} changes in a row lost to other changes"
            )),
        ))
    }

    /// Deletes everything of the dropped version `id`: its rows' Scylla
    /// partitions, checkpoints and snapshots at the drop timestamp (above
    /// every write's), and its claims by LWT. Idempotent: an interrupted
    /// drop is finished by the next one.
    async fn delete_version_data(&self, id: i64) -> Result<(), StoreError> {
        let mut keys: Vec<(Stmt, Vec<Value>)> = Vec::new();
        for stmt in [
            Stmt::KeysCity,
            Stmt::KeysDistrict,
            Stmt::KeysSite,
            Stmt::KeysMethod,
            Stmt::KeysRejections,
            Stmt::KeysCodes,
        ] {
            let drop = cql::drop_statement_of(stmt).expect("a keys statement");
            if stmt == Stmt::KeysSite {
                for (v, d, site) in self.select::<(i64, CqlDate, String)>(stmt, vec![]).await? {
                    if v == id {
                        keys.push((drop, vec![Value::Date(day(d)?), Value::Text(site)]));
                    }
                }
            } else {
                for (v, d) in self.select::<(i64, CqlDate)>(stmt, vec![]).await? {
                    if v == id {
                        keys.push((drop, vec![Value::Date(day(d)?)]));
                    }
                }
            }
        }
        let claims =
            self.select::<(i64, i32, Option<i64>, Option<i64>)>(Stmt::ReadClaims, vec![]).await?;
        let partitions: Vec<i32> = claims.iter().filter(|c| c.0 == id).map(|c| c.1).collect();
        let plan = cql::drop_plan(id, &keys, &partitions);
        stream::iter(plan)
            .map(|b| self.request(vec![b]))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        for p in partitions {
            self.lwt(Stmt::DeleteClaim, vec![Value::BigInt(id), Value::Int(p)]).await?;
        }
        Ok(())
    }

    async fn views(&self, version: i64, partition: Option<i32>) -> Result<ViewSet, StoreError> {
        let (stmts, values) = match partition {
            None => (
                [
                    Stmt::SumCity,
                    Stmt::SumDistrict,
                    Stmt::SumSite,
                    Stmt::SumMethod,
                    Stmt::SumRejections,
                    Stmt::SumCodes,
                ],
                vec![],
            ),
            Some(p) => (
                [
                    Stmt::PartCity,
                    Stmt::PartDistrict,
                    Stmt::PartSite,
                    Stmt::PartMethod,
                    Stmt::PartRejections,
                    Stmt::PartCodes,
                ],
                vec![Value::Int(p)],
            ),
        };
        let [city, district, site, method, rejections, codes] = stmts;
        let v = || values.clone();
        // Every version's rows come back (see `cql`'s sums): this one's are kept.
        let (city, district, site, method, rejections, codes) = futures::try_join!(
            self.select::<(i64, CqlDate, i64, i64, i64, i64, i64, i64)>(city, v()),
            self.select::<(i64, CqlDate, String, i64, i64, i64, i64)>(district, v()),
            self.select::<(i64, CqlDate, String, i32, i64, i64)>(site, v()),
            self.select::<(i64, CqlDate, String, i64)>(method, v()),
            self.select::<(i64, CqlDate, String, i64)>(rejections, v()),
            self.select::<(i64, CqlDate, String, String, i64)>(codes, v()),
        )?;
        let mut rows = Vec::new();
        for (_, d, p, u, v, r, j, du) in city.into_iter().filter(|r| r.0 == version) {
            rows.push(ViewRow::CityDaily(CityDaily {
                day: day(d)?,
                people_sampled: n(p)?,
                using_code: n(u)?,
                percent_using_code: None,
                valid_scans: n(v)?,
                rescans: n(r)?,
                rejected: n(j)?,
                duplicates: n(du)?,
            }));
        }
        for (_, d, district, p, u, v, r) in district.into_iter().filter(|r| r.0 == version) {
            rows.push(ViewRow::DistrictDaily(DistrictDaily {
                day: day(d)?,
                district,
                people_sampled: n(p)?,
                using_code: n(u)?,
                valid_scans: n(v)?,
                rejected: n(r)?,
            }));
        }
        for (_, d, site_id, hour, p, v) in site.into_iter().filter(|r| r.0 == version) {
            rows.push(ViewRow::SiteHourly(SiteHourly {
                day: day(d)?,
                site_id,
                hour: u8::try_from(hour)
                    .map_err(|_| StoreError::Corrupt(format!("hour {hour}")))?,
                people_sampled: n(p)?,
                valid_scans: n(v)?,
            }));
        }
        for (_, d, method, p) in method.into_iter().filter(|r| r.0 == version) {
            rows.push(ViewRow::MethodDaily(MethodDaily {
                day: day(d)?,
                method,
                people_sampled: n(p)?,
            }));
        }
        for (_, d, reason, c) in rejections.into_iter().filter(|r| r.0 == version) {
            rows.push(ViewRow::RejectionsDaily(RejectionsDaily {
                day: day(d)?,
                reason,
                count: n(c)?,
            }));
        }
        for (_, d, kind, channel, c) in codes.into_iter().filter(|r| r.0 == version) {
            rows.push(ViewRow::CodesIssuedDaily(CodesIssuedDaily {
                day: day(d)?,
                kind,
                channel,
                count: n(c)?,
            }));
        }
        // Summed by the server already (or one partition's); summing again is
        // the identity, sorts, and derives the percentage as everywhere else.
        Ok(ViewSet::from_rows(rows))
    }
}

/// Runs a request, again on a transient error, at most [`ATTEMPTS`] times
/// with a short back-off; the last error goes to the caller.
async fn retry<T, E, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: ToStore,
{
    let mut attempt = 1;
    loop {
        match f().await.map_err(ToStore::to_store) {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "ScyllaDB request failed; trying again");
                tokio::time::sleep(Duration::from_millis(100 * 3u64.pow(attempt - 1))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn retry_prepare(session: &Session, text: &str) -> Result<PreparedStatement, StoreError> {
    retry(|| session.prepare(text)).await
}

/// The store's values as the driver's (None binds a null).
fn cql_values(values: &[Value]) -> Vec<Option<CqlValue>> {
    values.iter().map(|v| if *v == Value::Null { None } else { Some(cql_value(v)) }).collect()
}

fn cql_value(v: &Value) -> CqlValue {
    match v {
        // Bound as null by `cql_values`; never reached as a value.
        Value::Null => CqlValue::Empty,
        Value::Versions(m) => CqlValue::Map(
            m.iter()
                .map(|(name, (id, created))| {
                    (
                        CqlValue::Text(name.clone()),
                        CqlValue::Tuple(vec![
                            Some(CqlValue::BigInt(*id)),
                            Some(CqlValue::BigInt(*created)),
                        ]),
                    )
                })
                .collect(),
        ),
        Value::Ids(ids) => CqlValue::Set(ids.iter().map(|i| CqlValue::BigInt(*i)).collect()),
        Value::Int(i) => CqlValue::Int(*i),
        Value::BigInt(i) => CqlValue::BigInt(*i),
        // CQL dates count days from 2³¹ days before the Unix epoch.
        Value::Date(d) => CqlValue::Date(CqlDate((i64::from(d.0) + (1 << 31)) as u32)),
        Value::Text(s) => CqlValue::Text(s.clone()),
        Value::Blob(b) => CqlValue::Blob(b.clone()),
        Value::Snapshot { manifest, epoch } => CqlValue::Tuple(vec![
            Some(CqlValue::BigInt(manifest.next_offset)),
            Some(CqlValue::BigInt(*epoch)),
            Some(CqlValue::Int(manifest.chunks as i32)),
            Some(CqlValue::BigInt(manifest.bytes as i64)),
            Some(CqlValue::BigInt(i64::from(manifest.crc32))),
        ]),
    }
}

fn manifest_of(
    (next_offset, epoch, n, bytes, crc): SnapshotCell,
) -> Result<(Manifest, i64), StoreError> {
    let bad = || {
        StoreError::Corrupt(format!("snapshot manifest {:?}", (next_offset, epoch, n, bytes, crc)))
    };
    Ok((
        Manifest {
            next_offset,
            chunks: u32::try_from(n).map_err(|_| bad())?,
            bytes: u64::try_from(bytes).map_err(|_| bad())?,
            crc32: u32::try_from(crc).map_err(|_| bad())?,
        },
        epoch,
    ))
}

fn day(d: CqlDate) -> Result<Day, StoreError> {
    i32::try_from(i64::from(d.0) - (1 << 31))
        .map(Day)
        .map_err(|_| StoreError::Corrupt(format!("date {}", d.0)))
}

fn n(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}")))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_cql() {
        for d in [Day(0), Day(19_091), Day(-719_468), Day(2_932_896)] {
            let CqlValue::Date(c) = cql_value(&Value::Date(d)) else { unreachable!() };
            assert_eq!(day(c).unwrap(), d);
        }
        assert_eq!(cql_value(&Value::Date(Day(0))), CqlValue::Date(CqlDate(1 << 31)));
    }

    #[test]
    fn manifests_round_trip_through_their_cell() {
        let m = Manifest::of(77, &[1, 2, 3, 4, 5], 2);
        let CqlValue::Tuple(t) = cql_value(&Value::Snapshot { manifest: m, epoch: 4 }) else {
            unreachable!()
        };
        let get = |i: usize| match &t[i] {
            Some(CqlValue::BigInt(v)) => *v,
            Some(CqlValue::Int(v)) => i64::from(*v),
            _ => unreachable!(),
        };
        let cell = (get(0), get(1), get(2) as i32, get(3), get(4));
        assert_eq!(manifest_of(cell).unwrap(), (m, 4));
        assert!(manifest_of((1, 1, -1, 0, 0)).is_err());
    }

    /// Every setting is checked, with a clear error, before a connection is
    /// tried (no server is needed to see these).
    #[test]
    fn bad_settings_are_refused_before_connecting() {
        let mut s = ScyllaSettings::new("127.0.0.1:1", "bad-name");
        let e = ScyllaStore::open(&s, "t").unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("bad-name"), "{e}");
        s.keyspace = "ok".into();
        s.consistency = "SOMETIMES".into();
        let e = ScyllaStore::open(&s, "t").unwrap_err();
        assert!(e.to_string().contains("SOMETIMES"), "{e}");
        s.consistency = "QUORUM".into();
        s.nodes.clear();
        assert!(ScyllaStore::open(&s, "t").unwrap_err().to_string().contains("nodes"));
    }

    /// No node listening: a transient error (the worker waits), not a hang
    /// or a panic.
    #[test]
    fn no_cluster_is_a_transient_error() {
        let mut s = ScyllaSettings::new("127.0.0.1:1", "nothing_here");
        s.request_timeout = Duration::from_secs(2);
        let e = ScyllaStore::open(&s, "t").unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(matches!(e, StoreError::Backend { store: "scylla", .. }), "{e}");
    }

    #[test]
    fn node_lists() {
        assert_eq!(split_nodes(" a:9042, b:9042 ,,"), ["a:9042", "b:9042"]);
        let s =
            ScyllaSettings { password: Some("hunter2".into()), ..ScyllaSettings::new("a:1", "k") };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
