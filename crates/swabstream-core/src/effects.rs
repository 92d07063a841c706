//! What applying records produces: an outcome per record, DLQ records, counts.

use swabstream_events::Reason;

/// What happened to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Valid: it changed the partition's state and views.
    Accepted,
    /// Its `event_id` was seen before in this partition: dropped, counted as a duplicate.
    Duplicate,
    /// Rejected for this reason: it goes to the DLQ and is counted under the reason.
    Rejected(Reason),
    /// Its offset is at or below one already applied (a redelivery): nothing changes.
    Skipped,
}

/// A record for the dead-letter queue: the original bytes and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlqRecord {
    /// The record's offset in its source partition.
    pub offset: i64,
    /// Why it was rejected.
    pub reason: Reason,
    /// For `MALFORMED` and `WRONG_PARTITION`, what is wrong with it (no
    /// personal data: the messages name fields and checks, never values);
    /// empty otherwise.
    pub detail: String,
    /// The record's value, byte for byte.
    pub payload: Vec<u8>,
}

/// How many records ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub accepted: u64,
    pub duplicates: u64,
    /// Indexed by [`Reason::index`].
    pub rejected: [u64; Reason::ALL.len()],
    pub skipped: u64,
}

impl OutcomeCounts {
    pub(crate) fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Rejected(r) => self.rejected[r.index()] += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }

    /// All rejected records, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Records counted, skipped ones excluded.
    pub fn applied(&self) -> u64 {
        self.accepted + self.duplicates + self.rejected_total()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &OutcomeCounts) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.skipped += other.skipped;
        for (t, r) in self.rejected.iter_mut().zip(other.rejected) {
            *t += r;
        }
    }

    /// The counts of `self` since `earlier`.
    pub fn since(&self, earlier: &OutcomeCounts) -> OutcomeCounts {
        let mut rejected = [0; Reason::ALL.len()];
        for (i, r) in rejected.iter_mut().enumerate() {
            *r = self.rejected[i] - earlier.rejected[i];
        }
        OutcomeCounts {
            accepted: self.accepted - earlier.accepted,
            duplicates: self.duplicates - earlier.duplicates,
            rejected,
            skipped: self.skipped - earlier.skipped,
        }
    }
}
