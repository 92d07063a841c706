//! A real store with faults put in front of its claims and commits, for the
//! tests of what the pipeline and the worker do when a store misbehaves
//! (snapshots that read back damaged, snapshots it refuses, commits it is
//! away for): every other call goes to the store as it is.

use std::fmt;

use swabstream_views::{ViewRow, ViewSet};

use crate::{
    Checkpoint, Claim, Life, PartitionStatus, Promotion, Registry, StoreError, Version, ViewStore,
};

/// A `commit` call as a fault hook sees it; [`Commit::send`] makes it on a
/// store (the one wrapped, or with fields changed: `Commit { snapshot: None, ..c }`).
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    pub version: &'a Version,
    pub partition: i32,
    pub epoch: i64,
    pub rows: &'a [ViewRow],
    pub next_offset: i64,
    pub snapshot: Option<&'a [u8]>,
}

impl Commit<'_> {
    pub fn send(self, store: &mut dyn ViewStore) -> Result<(), StoreError> {
        store.commit(
            self.version,
            self.partition,
            self.epoch,
            self.rows,
            self.next_offset,
            self.snapshot,
        )
    }
}

type ClaimHook<S> = Box<dyn FnMut(&mut S, &Version, i32) -> Result<Claim, StoreError> + Send>;
type CommitHook<S> = Box<dyn FnMut(&mut S, Commit<'_>) -> Result<(), StoreError> + Send>;

/// `inner`, with `claim` and `commit` going through hooks that decide what
/// happens (by default, what `inner` does).
pub struct Faulty<S> {
    pub inner: S,
    claim: ClaimHook<S>,
    commit: CommitHook<S>,
}

impl<S: ViewStore + 'static> Faulty<S> {
    pub fn new(inner: S) -> Faulty<S> {
        Faulty {
            inner,
            claim: Box::new(|s, v, p| s.claim(v, p)),
            commit: Box::new(|s, c| c.send(s)),
        }
    }

    /// Claims go through `hook`, which is given the wrapped store.
    pub fn on_claim(
        mut self,
        hook: impl FnMut(&mut S, &Version, i32) -> Result<Claim, StoreError> + Send + 'static,
    ) -> Faulty<S> {
        self.claim = Box::new(hook);
        self
    }

    /// Commits go through `hook`, which is given the wrapped store.
    pub fn on_commit(
        mut self,
        hook: impl FnMut(&mut S, Commit<'_>) -> Result<(), StoreError> + Send + 'static,
    ) -> Faulty<S> {
        self.commit = Box::new(hook);
        self
    }
}

impl<S: fmt::Debug> fmt::Debug for Faulty<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S: ViewStore> ViewStore for Faulty<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError> {
        self.inner.check_partition_count(partitions)
    }
    fn registry(&self) -> Result<Registry, StoreError> {
        self.inner.registry()
    }
    fn live(&self) -> Result<Version, StoreError> {
        self.inner.live()
    }
    fn version(&self, name: &str) -> Result<Version, StoreError> {
        self.inner.version(name)
    }
    fn create_version(&mut self, name: &str) -> Result<Version, StoreError> {
        self.inner.create_version(name)
    }
    fn promote(&mut self, name: &str) -> Result<Promotion, StoreError> {
        self.inner.promote(name)
    }
    fn promote_back(&mut self) -> Result<Promotion, StoreError> {
        self.inner.promote_back()
    }
    fn drop_version(&mut self, name: &str) -> Result<Version, StoreError> {
        self.inner.drop_version(name)
    }
    fn claim(&mut self, version: &Version, partition: i32) -> Result<Claim, StoreError> {
        (self.claim)(&mut self.inner, version, partition)
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
        let call = Commit { version, partition, epoch, rows, next_offset, snapshot };
        (self.commit)(&mut self.inner, call)
    }
    fn touch(&mut self, version: &Version, owned: &[(i32, i64)]) -> Result<(), StoreError> {
        self.inner.touch(version, owned)
    }
    fn checkpoint(
        &self,
        version: &Version,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.checkpoint(version, partition)
    }
    fn partitions(&self, version: &Version) -> Result<Vec<PartitionStatus>, StoreError> {
        self.inner.partitions(version)
    }
    fn signs_of_life(&self) -> Result<Vec<Life>, StoreError> {
        self.inner.signs_of_life()
    }
    fn offsets(&self, version: &Version) -> Result<Vec<(i32, i64)>, StoreError> {
        self.inner.offsets(version)
    }
    fn views(&self) -> Result<ViewSet, StoreError> {
        self.inner.views()
    }
    fn version_views(&self, version: &Version) -> Result<ViewSet, StoreError> {
        self.inner.version_views(version)
    }
    fn partition_views(&self, version: &Version, partition: i32) -> Result<ViewSet, StoreError> {
        self.inner.partition_views(version, partition)
    }
}
