//! Compact keys for the partition's state.
//!
//! Event ids, persons and (person, code) pairs are kept as 96-bit SipHash-1-3
//! fingerprints rather than as their strings: 12 bytes instead of up to 64 (or
//! 32 for a `person_ref`), fixed size, and already uniformly distributed, so the
//! hash tables need no second hash. Two different ids share a fingerprint with
//! probability about n²/2⁹⁷ — for ten million ids, below 10⁻¹⁵ — which is far
//! below the rate of hardware faults, and SipHash makes such a pair impractical
//! to craft on purpose.

use std::hash::{BuildHasher, Hash, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};
use swabstream_events::{Day, PersonRef};

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
    [f.h1 as u32, (f.h1 >> 32) as u32, f.h2 as u32]
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

impl Hash for EventKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(low64(&self.0));
    }
}

/// The fingerprint of a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonKey(pub [u32; 3]);

impl PersonKey {
    pub fn of(person: &PersonRef) -> Self {
        PersonKey(sip96(&[&person.0]))
    }
}

/// A person on a local day: 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl Hash for PersonDayKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same person on consecutive days must not land in neighbouring
        // buckets by construction; multiplying the day spreads it over all bits.
        let p = u64::from(self.0[0]) | (u64::from(self.0[1]) << 32);
        state.write_u64(p ^ u64::from(self.0[3]).wrapping_mul(0x9e37_79b9_7f4a_7c15));
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

impl Hash for CodeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(low64(&self.0));
    }
}

/// A hasher for keys that are already fingerprints: it passes the 64 bits
/// through (and mixes anything else with FNV-1a, which no key here uses).
#[derive(Clone, Copy, Debug, Default)]
pub struct PassThrough;

#[derive(Debug, Default)]
pub struct PassThroughHasher(u64);

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
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
        assert_eq!(
            PersonDayKey::new(PersonKey::of(&p), Day(19091)).day(),
            Day(19091)
        );
        assert_eq!(PersonDayKey::new(PersonKey::of(&p), Day(-3)).day(), Day(-3));
    }
}
