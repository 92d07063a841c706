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
//!
//! A store holds named *versions* of all of that ([`versions`]), one of them
//! live: what [`ViewStore::views`] reads and workers write. Everything a
//! partition has (rows, checkpoint, claim, snapshot) belongs to one version,
//! so a rebuild into a new version (`replay --into`) never touches the live
//! one, and each version keeps the promises above on its own:
//! - versions are isolated: a version's rows, checkpoints and epochs are its
//!   own, and dropping one leaves the others as they were;
//! - promotion is atomic: every reader sees either the old live version or
//!   the new one, never a mix; the live one is never dropped;
//! - a name dropped and made again is a new version (a new id): nothing of
//!   the old one shows in it.

pub mod chunks;
#[cfg(feature = "suite")]
pub mod faulty;
#[cfg(feature = "suite")]
pub mod suite;
pub mod versions;

use std::fmt;

use swabstream_views::{ViewRow, ViewSet};

pub use crate::versions::{Promotion, Registry, Version};

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
    /// A version's name that breaks [`versions::NAME_RULE`].
    #[error("`{0}` is not a version name: use {rule}", rule = versions::NAME_RULE)]
    VersionName(String),
    /// No version of that name.
    #[error("no version named `{name}`; the versions are {}", known.join(", "))]
    UnknownVersion { name: String, known: Vec<String> },
    /// A version of that name exists already.
    #[error(
        "version `{0}` exists already; rebuild into another name, or drop it first with `swabstream versions drop {0}`"
    )]
    VersionExists(String),
    /// The live version cannot be dropped.
    #[error(
        "version `{0}` is live; promote another version first (`swabstream promote NAME`), then drop it"
    )]
    VersionIsLive(String),
    /// `promote --back` with nothing to go back to.
    #[error("{}", match dropped {
        Some(d) => format!("the version live before `{live}` was `{d}`, which has been dropped: nothing to go back to; promote a version by name"),
        None => format!("`{live}` has been live since the store was made: nothing to go back to"),
    })]
    NoPreviousVersion { live: String, dropped: Option<String> },
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
    /// Last sign of life of the owner: a claim or a touch (ms
    /// since the Unix epoch).
    pub touched_at_ms: i64,
    /// The last commit, and the last commit carrying a snapshot.
    pub committed_at_ms: Option<i64>,
    pub snapshot_at_ms: Option<i64>,
}

/// A partition's latest claim in one version: who writes what, for the
/// orphan safety net and `status` (which version each partition's worker
/// writes: the one it touched last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Life {
    pub version_id: i64,
    pub partition: i32,
    pub epoch: i64,
    /// The latest claim or touch (ms since the Unix epoch); commits do not
    /// move it, so a replay writing a version shows no life there after its claims.
    pub touched_at_ms: i64,
}

/// A view store. Calls are synchronous (the worker runs on a thread of its
/// own); an implementation over an async driver runs it on a runtime it owns.
///
/// Everything of a partition lives in a [`Version`]; the calls that read or
/// write it name the version (by the id a [`Version`] carries, so a name
/// dropped and made again is never mistaken for the old one).
pub trait ViewStore: Send + fmt::Debug {
    /// Where the store is, for logs and errors ("SQLite file x.db", ...).
    fn describe(&self) -> String;

    /// Records the topic's partition count the first time, and refuses
    /// ([`StoreError::PartitionCount`]) a topic whose count has changed since.
    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError>;

    /// The versions, which one is live, and the one live before it.
    fn registry(&self) -> Result<Registry, StoreError>;

    /// The live version: what [`Self::views`] reads and workers write.
    fn live(&self) -> Result<Version, StoreError> {
        self.registry()?.live()
    }

    /// The version named `name`, or [`StoreError::UnknownVersion`] listing the known ones.
    fn version(&self, name: &str) -> Result<Version, StoreError> {
        versions::check_name(name)?;
        self.registry()?.get(name)
    }

    /// Makes a new, empty version (refused if the name exists).
    fn create_version(&mut self, name: &str) -> Result<Version, StoreError>;

    /// Makes `name` the live version, atomically: a reader sees the old live
    /// version or this one, never a mix.
    fn promote(&mut self, name: &str) -> Result<Promotion, StoreError>;

    /// Makes the version live before the last promotion live again
    /// (read and changed atomically).
    fn promote_back(&mut self) -> Result<Promotion, StoreError>;

    /// Deletes a version that is not live: its rows, checkpoints, claims and
    /// snapshots. Its name may then be made again, as a new version.
    fn drop_version(&mut self, name: &str) -> Result<Version, StoreError>;

    /// Claims `partition` of `version` for this worker: bumps its epoch
    /// there, so commits of any earlier claimant of it are refused from now
    /// on, and says where it stands. A version that no longer exists is
    /// refused ([`StoreError::UnknownVersion`]).
    fn claim(&mut self, version: &Version, partition: i32) -> Result<Claim, StoreError>;

    /// Writes a partition's changed rows (absolute partial values) and the
    /// offset they reflect, with a snapshot taken at that offset when given.
    /// Refused if another worker claimed the partition since `epoch`, or if
    /// it would move the checkpoint backwards. Once it returns `Ok`, a reader
    /// sees the rows and a later claim sees the checkpoint.
    fn commit(
        &mut self,
        version: &Version,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    /// Marks the partitions `owned` (partition, epoch) of `version` alive
    /// now; partitions claimed by someone else since are left alone.
    fn touch(&mut self, version: &Version, owned: &[(i32, i64)]) -> Result<(), StoreError>;

    /// A partition's checkpoint in `version` with its snapshot, if it was ever committed.
    fn checkpoint(
        &self,
        version: &Version,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError>;

    /// Every claimed partition of `version`, in partition order.
    fn partitions(&self, version: &Version) -> Result<Vec<PartitionStatus>, StoreError>;

    /// Every partition's latest claim in every version, in no set order.
    fn signs_of_life(&self) -> Result<Vec<Life>, StoreError>;

    /// Every committed partition's checkpoint offset in `version`, in partition order.
    fn offsets(&self, version: &Version) -> Result<Vec<(i32, i64)>, StoreError> {
        Ok(self
            .partitions(version)?
            .into_iter()
            .filter_map(|p| p.next_offset.map(|o| (p.partition, o)))
            .collect())
    }

    /// The city's views in the live version: every partition's partial rows summed.
    fn views(&self) -> Result<ViewSet, StoreError> {
        let live = self.live()?;
        self.version_views(&live)
    }

    /// The city's views in `version`.
    fn version_views(&self, version: &Version) -> Result<ViewSet, StoreError>;

    /// One partition's partial rows in `version`, as views.
    fn partition_views(&self, version: &Version, partition: i32) -> Result<ViewSet, StoreError>;
}

impl<S: ViewStore + ?Sized> ViewStore for Box<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError> {
        (**self).check_partition_count(partitions)
    }
    fn registry(&self) -> Result<Registry, StoreError> {
        (**self).registry()
    }
    fn live(&self) -> Result<Version, StoreError> {
        (**self).live()
    }
    fn version(&self, name: &str) -> Result<Version, StoreError> {
        (**self).version(name)
    }
    fn create_version(&mut self, name: &str) -> Result<Version, StoreError> {
        (**self).create_version(name)
    }
    fn promote(&mut self, name: &str) -> Result<Promotion, StoreError> {
        (**self).promote(name)
    }
    fn promote_back(&mut self) -> Result<Promotion, StoreError> {
        (**self).promote_back()
    }
    fn drop_version(&mut self, name: &str) -> Result<Version, StoreError> {
        (**self).drop_version(name)
    }
    fn claim(&mut self, version: &Version, partition: i32) -> Result<Claim, StoreError> {
        (**self).claim(version, partition)
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
        (**self).commit(version, partition, epoch, rows, next_offset, snapshot)
    }
    fn touch(&mut self, version: &Version, owned: &[(i32, i64)]) -> Result<(), StoreError> {
        (**self).touch(version, owned)
    }
    fn checkpoint(
        &self,
        version: &Version,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        (**self).checkpoint(version, partition)
    }
    fn partitions(&self, version: &Version) -> Result<Vec<PartitionStatus>, StoreError> {
        (**self).partitions(version)
    }
    fn signs_of_life(&self) -> Result<Vec<Life>, StoreError> {
        (**self).signs_of_life()
    }
    fn offsets(&self, version: &Version) -> Result<Vec<(i32, i64)>, StoreError> {
        (**self).offsets(version)
    }
    fn views(&self) -> Result<ViewSet, StoreError> {
        (**self).views()
    }
    fn version_views(&self, version: &Version) -> Result<ViewSet, StoreError> {
        (**self).version_views(version)
    }
    fn partition_views(&self, version: &Version, partition: i32) -> Result<ViewSet, StoreError> {
        (**self).partition_views(version, partition)
    }
}
