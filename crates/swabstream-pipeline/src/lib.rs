//! The checkpoint protocol of one partition: how a worker keeps a partition's
//! views exactly once with the view store as the source of truth.
//!
//! For each batch a worker polled:
//! 1. [`PartitionRunner::apply`] applies the records to the partition's state
//!    and returns the DLQ records to produce;
//! 2. the worker produces them and waits until Kafka acknowledged them all;
//! 3. [`PartitionRunner::commit`] writes the changed rows and the offset they
//!    reflect (and, when due, a state snapshot) in one store transaction;
//! 4. the worker may commit the offset to Kafka, for lag tools only.
//!
//! A crash anywhere loses nothing and counts nothing twice: rows and offset
//! are written together or not at all, rows hold absolute values, and records
//! below the state's offset are skipped. A crash between 2 and 3 makes the
//! DLQ records of that batch appear twice in the DLQ (at least once there;
//! they carry their source partition and offset, so readers can tell).
//!
//! Recovery ([`PartitionRunner::claim`]): the state is restored from the last
//! snapshot (taken at offset *s*) and consumption resumes at *s*. Records
//! between *s* and the checkpoint *c* are applied again to rebuild the state,
//! without producing their DLQ records again (they were acknowledged before
//! *c* was committed) and without writing rows until the state reaches *c*
//! (the store already holds newer values; writing older ones would make the
//! views step back while analysts watch).

use swabstream_core::{
    CoreConfig, DlqRecord, OutcomeCounts, PartitionState, Placement, Record, SnapshotError,
};
use swabstream_store::{StoreError, Version, ViewStore};
use swabstream_views::ViewRow;

/// Why a partition cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The store failed, or fenced this worker off.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored snapshot cannot be restored.
    #[error("partition {partition}: {source}")]
    Snapshot { partition: i32, source: SnapshotError },
    /// The partition is not one of the topic's as this worker counted them
    /// (the topic grew while it ran).
    #[error(
        "partition {partition} is outside a topic of {partitions} partitions as this worker \
         counted them; restart the worker"
    )]
    OutsideTopic { partition: i32, partitions: i32 },
}

impl PipelineError {
    /// Whether another worker owns the partition now: stop working on it, quietly.
    pub fn is_fenced(&self) -> bool {
        matches!(self, PipelineError::Store(e) if e.is_fenced())
    }

    /// Whether the same call may succeed later (the store was away).
    pub fn is_transient(&self) -> bool {
        matches!(self, PipelineError::Store(e) if e.is_transient())
    }
}

/// Where to start consuming a claimed partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// From the beginning of the log: no snapshot yet.
    Beginning,
    /// From this offset (the snapshot's).
    At(i64),
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Rows and offset were written, with a snapshot of `snapshot_bytes`
    /// bytes if `snapshot`.
    Written { next_offset: i64, snapshot: bool, snapshot_bytes: usize },
    /// Rows and offset were written without the snapshot that was due: the
    /// commit carrying it failed (`error`), the one without it succeeded.
    /// The snapshot is tried again with a later commit.
    SnapshotFailed { next_offset: i64, snapshot_bytes: usize, error: String },
    /// Still rebuilding state below the checkpoint: nothing to write yet.
    Replaying { next_offset: i64, checkpoint: i64 },
    /// Nothing was applied since the last commit.
    Idle,
}

/// One claimed partition of one view version: its state, and what the
/// store already holds of it.
#[derive(Debug)]
pub struct PartitionRunner {
    version: Version,
    partition: i32,
    epoch: i64,
    state: PartitionState,
    /// The store's checkpoint: records below it were committed before.
    checkpoint: i64,
    /// The offset the store's rows reflect now (our last commit).
    written: i64,
    /// Records below this offset produce no DLQ records: the checkpoint,
    /// or further on when this worker already produced them while writing
    /// another version (see [`Self::dlq_produced_below`]).
    dlq_from: i64,
}

impl PartitionRunner {
    /// Claims `partition` of a topic of `partitions` in the store (fencing
    /// off any earlier owner), restores its state from the last snapshot, and
    /// says where to resume. The state checks that each record belongs in
    /// this partition (SPEC §3.1: `WRONG_PARTITION`).
    pub fn claim(
        store: &mut dyn ViewStore,
        version: &Version,
        partition: i32,
        partitions: i32,
        config: CoreConfig,
    ) -> Result<(PartitionRunner, Resume), PipelineError> {
        let placement = Placement::new(partition, partitions)
            .ok_or(PipelineError::OutsideTopic { partition, partitions })?;
        let claim = store.claim(version, partition)?;
        let checkpoint = claim.checkpoint.as_ref().map_or(0, |c| c.next_offset);
        let (state, resume) = match claim.checkpoint.and_then(|c| c.snapshot) {
            Some(snap) => {
                let state = PartitionState::restore(&snap.bytes, config)
                    .map_err(|source| PipelineError::Snapshot { partition, source })?;
                (state, Resume::At(snap.next_offset))
            }
            None => (PartitionState::new(config), Resume::Beginning),
        };
        Ok((PartitionRunner::new(version, placement, claim.epoch, state, checkpoint), resume))
    }

    fn new(
        version: &Version,
        placement: Placement,
        epoch: i64,
        mut state: PartitionState,
        checkpoint: i64,
    ) -> Self {
        state.set_placement(Some(placement));
        PartitionRunner {
            version: version.clone(),
            partition: placement.partition(),
            epoch,
            state,
            checkpoint,
            written: checkpoint,
            dlq_from: checkpoint,
        }
    }

    /// Like [`Self::claim`], but a snapshot that cannot be read back (a
    /// checksum or length mismatch in the store, a format this build does
    /// not know) is set aside instead of failing the claim: the state starts
    /// empty, consumption resumes at the beginning of the log, and the
    /// store's checkpoint stays as it is, so nothing is written (and no DLQ
    /// record produced again) until the rebuilt state passes it. The third
    /// value says why the snapshot was set aside.
    ///
    /// Rebuilding needs the log from its first record: the caller checks the
    /// log's start before consuming (the worker refuses the partition when
    /// the log no longer starts at 0).
    ///
    /// A store's `claim` bumps the epoch before it reads the snapshot, so a
    /// [`StoreError::Corrupt`] from it leaves the claim made; the epoch and
    /// checkpoint are then read without the snapshot, through
    /// [`ViewStore::partitions`].
    pub fn claim_or_rebuild(
        store: &mut dyn ViewStore,
        version: &Version,
        partition: i32,
        partitions: i32,
        config: CoreConfig,
    ) -> Result<(PartitionRunner, Resume, Option<String>), PipelineError> {
        let placement = Placement::new(partition, partitions)
            .ok_or(PipelineError::OutsideTopic { partition, partitions })?;
        let fresh = |epoch: i64, checkpoint: i64| {
            PartitionRunner::new(version, placement, epoch, PartitionState::new(config), checkpoint)
        };
        let claim = match store.claim(version, partition) {
            Ok(claim) => claim,
            Err(StoreError::Corrupt(what)) => {
                let status = store
                    .partitions(version)?
                    .into_iter()
                    .find(|s| s.partition == partition)
                    .ok_or_else(|| StoreError::Corrupt(what.clone()))?;
                let runner = fresh(status.epoch, status.next_offset.unwrap_or(0));
                let why = format!("the stored snapshot cannot be read back ({what})");
                return Ok((runner, Resume::Beginning, Some(why)));
            }
            Err(e) => return Err(e.into()),
        };
        let checkpoint = claim.checkpoint.as_ref().map_or(0, |c| c.next_offset);
        match claim.checkpoint.and_then(|c| c.snapshot) {
            Some(snap) => match PartitionState::restore(&snap.bytes, config) {
                Ok(state) => {
                    let runner =
                        PartitionRunner::new(version, placement, claim.epoch, state, checkpoint);
                    Ok((runner, Resume::At(snap.next_offset), None))
                }
                Err(e) => {
                    let why = format!(
                        "the snapshot at offset {} cannot be restored ({e})",
                        snap.next_offset
                    );
                    Ok((fresh(claim.epoch, checkpoint), Resume::Beginning, Some(why)))
                }
            },
            None => Ok((fresh(claim.epoch, checkpoint), Resume::Beginning, None)),
        }
    }

    /// The store's checkpoint when the partition was claimed (0 if none):
    /// records below it were counted before.
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint
    }

    /// The epoch of this runner's claim.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The view version this runner writes.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Says that the DLQ records of the records below `offset` were
    /// produced already: by this worker, while it wrote another version of
    /// the same log before a promotion switched it to this one. The DLQ is
    /// one topic for all versions, so producing them again would only
    /// repeat them.
    pub fn dlq_produced_below(&mut self, offset: i64) {
        self.dlq_from = self.dlq_from.max(offset);
    }

    /// The partition this runner owns.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset after the last applied record.
    pub fn next_offset(&self) -> Option<i64> {
        self.state.next_offset()
    }

    /// Whether the state is still being rebuilt below the store's checkpoint.
    pub fn is_replaying(&self) -> bool {
        self.state.next_offset().unwrap_or(0) < self.checkpoint
    }

    /// The partition's state (for its views and counts).
    pub fn state(&self) -> &PartitionState {
        &self.state
    }

    /// Applies a batch. Returns the DLQ records the worker must produce, and
    /// have acknowledged, before [`Self::commit`]; records the store's
    /// checkpoint already covers produce none (they were produced before).
    pub fn apply(&mut self, records: &[Record<'_>]) -> (Vec<DlqRecord>, OutcomeCounts) {
        let mut dlq = Vec::new();
        let counts = self.state.apply_batch(records, &mut dlq);
        dlq.retain(|d| d.offset >= self.dlq_from);
        (dlq, counts)
    }

    /// Writes the rows changed since the last commit and the offset they
    /// reflect, with a snapshot of the state when `snapshot` is set, in one
    /// store transaction. Call only after the batch's DLQ records were
    /// acknowledged. The rows stay marked changed until the store took them,
    /// so a failed commit (a busy disk, say) is simply retried with the next
    /// one.
    pub fn commit(
        &mut self,
        store: &mut dyn ViewStore,
        snapshot: bool,
    ) -> Result<Committed, PipelineError> {
        let job = match self.commit_due(snapshot) {
            Ok(job) => job,
            Err(nothing) => return Ok(nothing),
        };
        let next = job.next_offset;
        let outcome = job.write(store)?;
        self.state.clear_changes();
        self.written = next;
        Ok(outcome)
    }

    /// Takes what [`Self::commit`] would write, as a job another thread can
    /// write while this runner applies the next batch: the changed rows are
    /// taken (marked written) now, so the rows the next batch changes are
    /// the next job's. The job must be written, retried until it is, before
    /// the runner's next job; when it fails for good, the runner must be
    /// dropped (claimed again), since its rows are no longer marked changed.
    /// `Err` says why there is nothing to write (as [`Self::commit`] would).
    pub fn take_commit(&mut self, snapshot: bool) -> Result<CommitJob, Committed> {
        let job = self.commit_due(snapshot)?;
        self.state.clear_changes();
        self.written = job.next_offset;
        Ok(job)
    }

    fn commit_due(&self, snapshot: bool) -> Result<CommitJob, Committed> {
        let Some(next) = self.state.next_offset() else { return Err(Committed::Idle) };
        if next < self.checkpoint {
            return Err(Committed::Replaying { next_offset: next, checkpoint: self.checkpoint });
        }
        if next == self.written && !self.state.has_changes() && !snapshot {
            return Err(Committed::Idle);
        }
        Ok(CommitJob {
            version: self.version.clone(),
            partition: self.partition,
            epoch: self.epoch,
            rows: self.state.changes(),
            next_offset: next,
            snapshot: snapshot.then(|| self.state.snapshot()),
        })
    }
}

/// One partition's commit, taken from its runner ([`PartitionRunner::take_commit`]):
/// the rows changed since the last one, with absolute values, the offset
/// they reflect, and the state's snapshot when one is due. Writing it again
/// after a failure writes the same rows.
#[derive(Debug)]
pub struct CommitJob {
    version: Version,
    partition: i32,
    epoch: i64,
    rows: Vec<ViewRow>,
    next_offset: i64,
    snapshot: Option<Vec<u8>>,
}

impl CommitJob {
    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// How many view rows it writes.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Writes the job in one store transaction.
    pub fn write(&self, store: &mut dyn ViewStore) -> Result<Committed, PipelineError> {
        let (v, p, epoch, next) = (&self.version, self.partition, self.epoch, self.next_offset);
        let bytes = self.snapshot.as_deref();
        let snapshot_bytes = bytes.map_or(0, <[u8]>::len);
        match store.commit(v, p, epoch, &self.rows, next, bytes) {
            Ok(()) => Ok(Committed::Written {
                next_offset: next,
                snapshot: bytes.is_some(),
                snapshot_bytes,
            }),
            // A snapshot the store cannot take (too large, a disk filling up)
            // must not stop the partition: the rows and offset go without it,
            // and recovery replays from the previous snapshot instead.
            Err(e)
                if bytes.is_some()
                    && !e.is_fenced()
                    && !matches!(e, StoreError::Regress { .. }) =>
            {
                store.commit(v, p, epoch, &self.rows, next, None)?;
                Ok(Committed::SnapshotFailed {
                    next_offset: next,
                    snapshot_bytes,
                    error: e.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use swabstream_events::Timestamp;
    use swabstream_store::faulty::Faulty;
    use swabstream_store::{StoreError, ViewStore};
    use swabstream_store_sqlite::SqliteStore;

    use super::*;

    /// A store whose snapshots read back damaged: `Corrupt` from the claim
    /// (a chunk's CRC), or bytes the core cannot restore.
    fn damaged(store: SqliteStore, corrupt: bool) -> Faulty<SqliteStore> {
        Faulty::new(store).on_claim(move |store, v, p| {
            let mut claim = store.claim(v, p)?;
            if corrupt {
                return Err(StoreError::Corrupt("snapshot at offset 10: CRC mismatch".into()));
            }
            if let Some(s) = claim.checkpoint.as_mut().and_then(|c| c.snapshot.as_mut()) {
                s.bytes = b"not a snapshot".to_vec();
            }
            Ok(claim)
        })
    }

    fn garbage(offsets: std::ops::Range<i64>) -> Vec<Record<'static>> {
        offsets
            .map(|offset| Record {
                offset,
                timestamp: Timestamp(0),
                key: None,
                payload: Some(b"x"),
            })
            .collect()
    }

    #[test]
    fn an_unreadable_snapshot_is_set_aside_and_the_state_rebuilt_below_the_checkpoint() {
        for corrupt in [true, false] {
            let dir = std::env::temp_dir()
                .join(format!("swabstream-pipeline-{}-{corrupt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut store = SqliteStore::open(&dir.join("views.db"), "t").unwrap();
            let config = CoreConfig::default();
            let v1 = store.live().unwrap();
            let (mut first, _) = PartitionRunner::claim(&mut store, &v1, 0, 1, config).unwrap();
            first.apply(&garbage(0..10));
            first.commit(&mut store, true).unwrap();
            assert!(
                PartitionRunner::claim(&mut damaged(store, corrupt), &v1, 0, 1, config).is_err()
            );

            let store = SqliteStore::open(&dir.join("views.db"), "t").unwrap();
            let mut damaged = damaged(store, corrupt);
            let (mut runner, resume, why) =
                PartitionRunner::claim_or_rebuild(&mut damaged, &v1, 0, 1, config).unwrap();
            assert_eq!(resume, Resume::Beginning);
            assert!(why.is_some());
            assert_eq!((runner.checkpoint(), runner.epoch()), (10, 3), "the claim stands");
            // Below the checkpoint: no DLQ records again, nothing written.
            let (dlq, _) = runner.apply(&garbage(0..6));
            assert!(dlq.is_empty());
            assert!(matches!(
                runner.commit(&mut damaged, false).unwrap(),
                Committed::Replaying { .. }
            ));
            let (dlq, _) = runner.apply(&garbage(6..12));
            assert_eq!(dlq.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![10, 11]);
            assert!(matches!(
                runner.commit(&mut damaged, true).unwrap(),
                Committed::Written { next_offset: 12, .. }
            ));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// After a switch between versions, records whose DLQ records this
    /// worker produced while writing the other version produce none again;
    /// the ones past that point do.
    #[test]
    fn dlq_records_already_produced_for_another_version_are_not_produced_again() {
        let dir =
            std::env::temp_dir().join(format!("swabstream-pipeline-dlq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = SqliteStore::open(&dir.join("views.db"), "t").unwrap();
        let v2 = store.create_version("v2").unwrap();
        let config = CoreConfig::default();
        let (mut runner, resume) = PartitionRunner::claim(&mut store, &v2, 0, 1, config).unwrap();
        assert_eq!((resume, runner.version()), (Resume::Beginning, &v2));
        runner.dlq_produced_below(6);
        // Below the floor, never above it: a lower call changes nothing.
        runner.dlq_produced_below(3);
        let (dlq, _) = runner.apply(&garbage(0..9));
        assert_eq!(dlq.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![6, 7, 8]);
        // The rows of every record are written all the same, to v2.
        runner.commit(&mut store, false).unwrap();
        assert_eq!(store.offsets(&v2).unwrap(), vec![(0, 9)]);
        assert_eq!(store.offsets(&store.live().unwrap()).unwrap(), vec![]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
