//! swabstream's core: the per-partition state machine of SPEC §3.
//!
//! A [`PartitionState`] takes a partition's records in log order — offset,
//! record timestamp, payload bytes — and for each one decodes it, drops it if
//! its `event_id` was seen (exact dedupe), validates it (first failing rule
//! gives the reason) and projects it into the partition's partial views. What
//! it produces: an [`Outcome`] per record, [`DlqRecord`]s for rejected ones,
//! and the view rows that changed ([`PartitionState::take_changes`]), each with
//! its absolute value in this partition, so that writing them is idempotent
//! and the partial rows of all partitions sum to the city's views. Told its
//! [`Placement`] (which partition of how many), it also checks that each record
//! is keyed by its event's `person_ref` and sits where Kafka's murmur2
//! partitioner puts that key, since the rules hold only when a person's events
//! share one partition ([`placement`]).
//!
//! Its state — event ids, each person's codes, persons sampled per day — is
//! bounded by the retention rule and can be saved as a compact snapshot and
//! restored ([`PartitionState::snapshot`], [`PartitionState::restore`]).
//!
//! Architecture invariant: this crate does no IO and knows nothing of Kafka or
//! of any store. Given the same records it produces the same views, always.

mod effects;
mod keys;
pub mod placement;
mod snapshot;
mod state;
mod table;
mod views;

pub use effects::{DlqRecord, Outcome, OutcomeCounts};
pub use placement::Placement;
pub use snapshot::SnapshotError;
pub use state::{
    CoreConfig, FUTURE_TOLERANCE_SECS, LIVE_AFTER_SECS, LIVE_BEFORE_SECS, MemoryUsage,
    PartitionState, Record,
};
pub use views::PartitionViews;
