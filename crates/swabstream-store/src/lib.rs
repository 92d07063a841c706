//! What swabstream needs of a view store, whichever it is: the embedded
//! SQLite file (`swabstream-store-sqlite`) or a ScyllaDB cluster
//! (`swabstream-store-scylla`).
//!
//! A store holds, per Kafka partition: *partial* view rows with absolute
//! values (the partition's own counts; summed over partitions they are the
//! city's views), a checkpoint (the offset those rows reflect, the epoch of
//! the worker that owns the partition, its latest state snapshot), and the
//! snapshots themselves. The worker's checkpoint protocol
//! (`swabstream-pipeline`) keeps the views exactly once through this trait;
//! `views`, `replay` and the analysts' service read through it.
//!
//! Each implementation keeps the same promises, checked by one behaviour
//! suite ([`suite`], the `suite` feature) that every store's tests run:
//! - a commit with an epoch older than the partition's latest claim is
//!   refused ([`StoreError::Fenced`]) and changes nothing a reader sees;
//! - a commit never moves a checkpoint backwards ([`StoreError::Regress`]);
//! - rows are absolute: writing a row again replaces it, never adds to it;
//! - a snapshot reads back byte for byte, whatever its size ([`chunks`]);
//! - a reader sees the sum over partitions of each partition's latest rows.

pub mod chunks;
#[cfg(feature = "suite")]
pub mod suite;

use std::fmt;

use swabstream_views::{ViewRow, ViewSet};

/// What can go wrong with a view store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store itself failed: SQLite (unreadable file, full disk) or Scylla
    /// (timeouts, unavailable replicas, refused statements). `transient`
    /// errors are worth retrying as they are; the others need an operator.
    // The driver's error is in the message, not also a `source()`: printed
    // as a chain (`{:#}`), it would say everything twice.
    #[error("view store ({store}): {error}")]
    Backend {
        store: &'static str,
        transient: bool,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store was made for another topic.
    #[error(
        "this view store holds views of topic `{found}`, not `{expected}`; use another data directory, store path or keyspace"
    )]
    OtherTopic { expected: String, found: String },
    /// The store was built for a topic with another partition count.
    #[error(
        "this view store was built for {recorded} partitions, but the topic has {found}: a person's events would now land in another partition than their state. Keep the partition count a topic was made with (make enough partitions from the start), or publish to a new topic and rebuild its views into a new store (README: scaling out)"
    )]
    PartitionCount { recorded: i32, found: i32 },
    /// The store holds a schema version this build does not know.
    #[error(
        "view store schema version {found} is not supported by this build (it writes {supported}); rebuild the views into a fresh store with `swabstream replay`"
    )]
    SchemaVersion { found: String, supported: &'static str },
    /// Another worker claimed the partition since this one did: it must stop writing.
    #[error("partition {partition} was claimed by another worker (epoch {current}, ours {ours})")]
    Fenced { partition: i32, ours: i64, current: i64 },
    /// A commit would move the partition's checkpoint backwards.
    #[error("partition {partition}: checkpoint {stored} is ahead of the commit's {offered}")]
    Regress { partition: i32, stored: i64, offered: i64 },
    /// There is no store there (nothing has run there yet).
    #[error(
        "no view store at {0}: run a worker first, or point --config / the store settings at the store"
    )]
    Missing(String),
    /// A stored value cannot be read back (edited by hand? a torn write?).
    #[error("view store holds an unreadable value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed (a timeout, a busy
    /// file, replicas away): the worker waits and retries instead of exiting.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { transient: true, .. })
    }

    /// Whether another worker owns the partition now.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

/// Where a partition stands in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The offset after the last record the partition's rows reflect.
    pub next_offset: i64,
    /// The partition's state as of an offset at or before `next_offset`.
    pub snapshot: Option<Snapshot>,
}

/// A partition's state snapshot and the offset it was taken at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub next_offset: i64,
    pub bytes: Vec<u8>,
}

/// A claim on a partition: the epoch to commit with, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    /// None when the partition was never committed.
    pub checkpoint: Option<Checkpoint>,
}

/// What the store knows of a claimed partition, without its snapshot's
/// bytes: for the orphan safety net, `status` and `as_of`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: i32,
    /// The epoch of the latest claim.
    pub epoch: i64,
    /// The checkpoint; None when claimed but never committed.
    pub next_offset: Option<i64>,
    /// The offset of the latest snapshot and its size.
    pub snapshot_offset: Option<i64>,
    pub snapshot_bytes: Option<u64>,
    /// Last sign of life of the owner: a claim, a commit or a touch (ms
    /// since the Unix epoch).
    pub touched_at_ms: i64,
    /// The last commit, and the last commit carrying a snapshot.
    pub committed_at_ms: Option<i64>,
    pub snapshot_at_ms: Option<i64>,
}

/// A view store. Calls are synchronous (the worker runs on a thread of its
/// own); an implementation over an async driver runs it on a runtime it owns.
pub trait ViewStore: Send + fmt::Debug {
    /// Where the store is, for logs and errors ("SQLite file x.db", ...).
    fn describe(&self) -> String;

    /// Records the topic's partition count the first time, and refuses
    /// ([`StoreError::PartitionCount`]) a topic whose count has changed since.
    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError>;

    /// Claims `partition` for this worker: bumps its epoch, so commits of
    /// any earlier claimant are refused from now on, and says where it stands.
    fn claim(&mut self, partition: i32) -> Result<Claim, StoreError>;

    /// Writes a partition's changed rows (absolute partial values) and the
    /// offset they reflect, with a snapshot taken at that offset when given.
    /// Refused if another worker claimed the partition since `epoch`, or if
    /// it would move the checkpoint backwards. Once it returns `Ok`, a reader
    /// sees the rows and a later claim sees the checkpoint.
    fn commit(
        &mut self,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    /// Marks the partitions `owned` (partition, epoch) alive now; partitions
    /// claimed by someone else since are left alone.
    fn touch(&mut self, owned: &[(i32, i64)]) -> Result<(), StoreError>;

    /// A partition's checkpoint with its snapshot, if it was ever committed.
    fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, StoreError>;

    /// Every claimed partition, in partition order.
    fn partitions(&self) -> Result<Vec<PartitionStatus>, StoreError>;

    /// Every committed partition's checkpoint offset, in partition order.
    fn offsets(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        Ok(self
            .partitions()?
            .into_iter()
            .filter_map(|p| p.next_offset.map(|o| (p.partition, o)))
            .collect())
    }

    /// The city's views: every partition's partial rows summed.
    fn views(&self) -> Result<ViewSet, StoreError>;

    /// One partition's partial rows, as views.
    fn partition_views(&self, partition: i32) -> Result<ViewSet, StoreError>;
}

impl<S: ViewStore + ?Sized> ViewStore for Box<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError> {
        (**self).check_partition_count(partitions)
    }
    fn claim(&mut self, partition: i32) -> Result<Claim, StoreError> {
        (**self).claim(partition)
    }
    fn commit(
        &mut self,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        (**self).commit(partition, epoch, rows, next_offset, snapshot)
    }
    fn touch(&mut self, owned: &[(i32, i64)]) -> Result<(), StoreError> {
        (**self).touch(owned)
    }
    fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, StoreError> {
        (**self).checkpoint(partition)
    }
    fn partitions(&self) -> Result<Vec<PartitionStatus>, StoreError> {
        (**self).partitions()
    }
    fn offsets(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        (**self).offsets()
    }
    fn views(&self) -> Result<ViewSet, StoreError> {
        (**self).views()
    }
    fn partition_views(&self, partition: i32) -> Result<ViewSet, StoreError> {
        (**self).partition_views(partition)
    }
}
