//! Compact keys for the partition's state.
//!
//! Event ids, persons and (person, code) pairs are kept as 96-bit SipHash-1-3
//! fingerprints rather than as their strings: 12 bytes instead of up to 64 (or
//! 32 for a `person_ref`), fixed size, and already uniformly distributed, so the
//! hash tables need no second hash. Two different ids share a fingerprint with
//! probability about n²/2⁹⁷ — for ten million ids, below 10⁻¹⁵ — which is far
//! below the rate of hardware faults, and SipHash makes such a pair impractical
//! to craft on purpose.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};
use swabstream_events::{CodeKind, Day, PersonRef};

use crate::table::Slot;

// Fixed keys: the fingerprints must be the same in every worker and every run,
// since they live in snapshots. Changing them is a snapshot format change.
const K0: u64 = 0x7377_6162_7374_7265; // "swabstre"
const K1: u64 = 0x616d_2d6b_6579_7331; // "am-keys1"

fn sip96(parts: &[&[u8]]) -> [u32; 3] {
    let mut h = SipHasher13::new_with_keys(K0, K1);
    for p in parts {
        h.write(p);
        // A separator that no part contains at the same place keeps
        // ("ab","c") and ("a","bc") apart.
        h.write_u8(0xff);
    }
    let f = h.finish128();
    let k = [f.h1 as u32, (f.h1 >> 32) as u32, f.h2 as u32];
    // All zeros marks an empty table slot; the one fingerprint that would
    // collide with it joins its neighbour instead (a 2⁻⁹⁶ event).
    if k == [0, 0, 0] { [1, 0, 0] } else { k }
}

fn low64(k: &[u32; 3]) -> u64 {
    u64::from(k[0]) | (u64::from(k[1]) << 32)
}

/// The fingerprint of an `event_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventKey(pub [u32; 3]);

impl EventKey {
    pub fn of(event_id: &str) -> Self {
        EventKey(sip96(&[event_id.as_bytes()]))
    }
}

/// The fingerprint of a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonKey(pub [u32; 3]);

impl PersonKey {
    /// Hashed, not taken from the pseudonym's bytes: a `person_ref` should be
    /// an HMAC output, but an upstream bug that sends padded or sequential
    /// values must not merge different persons.
    pub fn of(person: &PersonRef) -> Self {
        PersonKey(sip96(&[&person.0]))
    }
}

/// A person on a local day: 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersonDayKey(pub [u32; 4]);

impl PersonDayKey {
    pub fn new(person: PersonKey, day: Day) -> Self {
        let p = person.0;
        PersonDayKey([p[0], p[1], p[2], day.0 as u32])
    }

    pub fn day(&self) -> Day {
        Day(self.0[3] as i32)
    }
}

/// The fingerprint of a (person, code_id) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeKey(pub [u32; 3]);

impl CodeKey {
    pub fn of(person: &PersonRef, code_id: &str) -> Self {
        CodeKey(sip96(&[&person.0, code_id.as_bytes()]))
    }
}

/// A seen event id: its fingerprint and the local day of its `occurred_at`. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdSlot {
    pub key: [u32; 3],
    pub day: i32,
}

impl IdSlot {
    pub fn probe(key: EventKey) -> Self {
        IdSlot { key: key.0, day: 0 }
    }
}

impl Slot for IdSlot {
    fn hash(&self) -> u64 {
        low64(&self.key)
    }
    fn same_key(&self, other: &Self) -> bool {
        self.key == other.key
    }
    fn is_empty(&self) -> bool {
        self.key == [0, 0, 0]
    }
    fn age(&self) -> i64 {
        i64::from(self.day)
    }
}

impl Slot for PersonDayKey {
    fn hash(&self) -> u64 {
        // The same person on consecutive days must not land in neighbouring
        // slots by construction; multiplying the day spreads it over all bits.
        let p = u64::from(self.0[0]) | (u64::from(self.0[1]) << 32);
        p ^ u64::from(self.0[3]).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn same_key(&self, other: &Self) -> bool {
        self.0 == other.0
    }
    fn is_empty(&self) -> bool {
        self.0[..3] == [0, 0, 0]
    }
    fn age(&self) -> i64 {
        i64::from(self.day().0)
    }
}

/// A code a person holds, under the fingerprint of (person, `code_id`). 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeSlot {
    pub key: [u32; 3],
    /// [`CodeKind::index`].
    kind: u8,
    /// For `RELATIVE` codes: whether the relationship is verified now.
    pub verified: bool,
    /// When it expires, in microseconds (`i64::MAX` when it does not), split
    /// in two halves so the slot packs into 24 bytes with 4-byte alignment.
    expires: [u32; 2],
}

impl CodeSlot {
    pub fn new(key: CodeKey, kind: CodeKind, verified: bool, expires_at: i64) -> Self {
        let e = expires_at as u64;
        CodeSlot {
            key: key.0,
            kind: kind.index() as u8,
            verified,
            expires: [e as u32, (e >> 32) as u32],
        }
    }

    pub fn probe(key: CodeKey) -> Self {
        CodeSlot { key: key.0, ..CodeSlot::default() }
    }

    pub fn kind(&self) -> CodeKind {
        CodeKind::from_index(usize::from(self.kind)).unwrap_or(CodeKind::Personal)
    }

    pub fn expires_at(&self) -> i64 {
        (u64::from(self.expires[0]) | (u64::from(self.expires[1]) << 32)) as i64
    }
}

impl Slot for CodeSlot {
    fn hash(&self) -> u64 {
        low64(&self.key)
    }
    fn same_key(&self, other: &Self) -> bool {
        self.key == other.key
    }
    fn is_empty(&self) -> bool {
        self.key == [0, 0, 0]
    }
    fn age(&self) -> i64 {
        self.expires_at()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_separate_parts() {
        // Snapshots depend on these values never changing.
        assert_eq!(EventKey::of("e-1").0, EventKey::of("e-1").0);
        assert_ne!(EventKey::of("e-1").0, EventKey::of("e-2").0);
        let p = PersonRef([7; 32]);
        let q = PersonRef([8; 32]);
        assert_ne!(CodeKey::of(&p, "K1"), CodeKey::of(&q, "K1"));
        assert_ne!(CodeKey::of(&p, "K1"), CodeKey::of(&p, "K2"));
        assert_eq!(PersonDayKey::new(PersonKey::of(&p), Day(19091)).day(), Day(19091));
        assert_eq!(PersonDayKey::new(PersonKey::of(&p), Day(-3)).day(), Day(-3));
        assert_eq!(size_of::<IdSlot>(), 16);
        assert_eq!(size_of::<PersonDayKey>(), 16);
        assert_eq!(size_of::<CodeSlot>(), 24);
        let c = CodeSlot::new(CodeKey::of(&p, "K"), CodeKind::Relative, true, -5);
        assert_eq!((c.kind(), c.verified, c.expires_at()), (CodeKind::Relative, true, -5));
        let c = CodeSlot::new(CodeKey::of(&p, "K"), CodeKind::Paper, false, i64::MAX);
        assert_eq!((c.kind(), c.expires_at()), (CodeKind::Paper, i64::MAX));
    }
}
