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
use swabstream_store::{StoreError, ViewStore};

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
        matches!(self, PipelineError::Store(StoreError::Fenced { .. }))
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Rows and offset were written, with a snapshot of `snapshot_bytes`
    /// bytes if `snapshot`.
    Written { next_offset: i64, snapshot: bool, snapshot_bytes: usize },
    /// Still rebuilding state below the checkpoint: nothing to write yet.
    Replaying { next_offset: i64, checkpoint: i64 },
    /// Nothing was applied since the last commit.
    Idle,
}

/// One claimed partition: its state, and what the store already holds of it.
#[derive(Debug)]
pub struct PartitionRunner {
    partition: i32,
    epoch: i64,
    state: PartitionState,
    /// The store's checkpoint: records below it were committed before.
    checkpoint: i64,
    /// The offset the store's rows reflect now (our last commit).
    written: i64,
}

impl PartitionRunner {
    /// Claims `partition` of a topic of `partitions` in the store (fencing
    /// off any earlier owner), restores its state from the last snapshot, and
    /// says where to resume. The state checks that each record belongs in
    /// this partition (SPEC §3.1: `WRONG_PARTITION`).
    pub fn claim(
        store: &mut ViewStore,
        partition: i32,
        partitions: i32,
        config: CoreConfig,
    ) -> Result<(PartitionRunner, Resume), PipelineError> {
        let placement = Placement::new(partition, partitions)
            .ok_or(PipelineError::OutsideTopic { partition, partitions })?;
        let claim = store.claim(partition)?;
        let checkpoint = claim.checkpoint.as_ref().map_or(0, |c| c.next_offset);
        let (mut state, resume) = match claim.checkpoint.and_then(|c| c.snapshot) {
            Some(snap) => {
                let state = PartitionState::restore(&snap.bytes, config)
                    .map_err(|source| PipelineError::Snapshot { partition, source })?;
                (state, Resume::At(snap.next_offset))
            }
            None => (PartitionState::new(config), Resume::Beginning),
        };
        state.set_placement(Some(placement));
        let runner = PartitionRunner {
            partition,
            epoch: claim.epoch,
            state,
            checkpoint,
            written: checkpoint,
        };
        Ok((runner, resume))
    }

    /// The epoch of this runner's claim.
    pub fn epoch(&self) -> i64 {
        self.epoch
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
        dlq.retain(|d| d.offset >= self.checkpoint);
        (dlq, counts)
    }

    /// Writes the rows changed since the last commit and the offset they
    /// reflect, with a snapshot of the state when `snapshot` is set, in one
    /// store transaction. Call only after the batch's DLQ records were acknowledged.
    pub fn commit(
        &mut self,
        store: &mut ViewStore,
        snapshot: bool,
    ) -> Result<Committed, PipelineError> {
        let Some(next) = self.state.next_offset() else { return Ok(Committed::Idle) };
        if next < self.checkpoint {
            return Ok(Committed::Replaying { next_offset: next, checkpoint: self.checkpoint });
        }
        if next == self.written && !self.state.has_changes() && !snapshot {
            return Ok(Committed::Idle);
        }
        let bytes = snapshot.then(|| self.state.snapshot());
        // The rows stay marked changed until the store took them, so a failed
        // commit (a busy disk, say) is simply retried with the next one.
        let rows = self.state.changes();
        store.commit(self.partition, self.epoch, &rows, next, bytes.as_deref())?;
        self.state.clear_changes();
        self.written = next;
        Ok(Committed::Written {
            next_offset: next,
            snapshot,
            snapshot_bytes: bytes.as_ref().map_or(0, Vec::len),
        })
    }
}
