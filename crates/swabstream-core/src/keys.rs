//! Compact keys for the partition's state.
//!
//! Event ids, persons and (person, code) pairs are kept as SipHash-1-3
//! fingerprints rather than as their strings: fixed size, far smaller than
//! the strings (up to 64 bytes, 32 for a `person_ref`), and already uniformly
//! distributed, so the hash tables need no second hash. A code keeps all 96
//! bits; an event id and a person keep 74 (see [`fp74`]) so that each packs
//! with a day into 12 bytes — about three of those per person-day (its own,
//! and two event ids) are most of the state. SipHash makes a colliding pair
//! impractical to craft on purpose.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};
use swabstream_events::{CodeKind, Day, PersonRef, Timestamp};

use crate::table::Slot;

// Fixed keys: the fingerprints must be the same in every worker and every run,
// since they live in snapshots. Changing them is a snapshot format change.
const K0: u64 = 0x7377_6162_7374_7265; // "swabstre"
const K1: u64 = 0x616d_2d6b_6579_7331; // "am-keys1"

fn sip96(parts: &[&[u8]]) -> [u32; 3] {
    // The parts and their separators are laid out in a buffer and hashed in
    // one go (siphasher's `hash`): the same value as absorbing them one by
    // one, without the streaming `write`'s bookkeeping of a partial word
    // across calls. Longer inputs take the streaming way.
    const MAX: usize = 128;
    if parts.iter().map(|p| p.len() + 1).sum::<usize>() <= MAX {
        let mut buf = [0u8; MAX];
        let mut n = 0;
        for p in parts {
            buf[n..n + p.len()].copy_from_slice(p);
            buf[n + p.len()] = 0xff;
            n += p.len() + 1;
        }
        return fold96(SipHasher13::new_with_keys(K0, K1).hash(&buf[..n]));
    }
    let mut h = SipHasher13::new_with_keys(K0, K1);
    for p in parts {
        absorb(&mut h, p);
    }
    finish96(&h)
}

fn absorb(h: &mut SipHasher13, part: &[u8]) {
    h.write(part);
    // A separator that no part contains at the same place keeps
    // ("ab","c") and ("a","bc") apart.
    h.write_u8(0xff);
}

fn finish96(h: &SipHasher13) -> [u32; 3] {
    fold96(h.finish128())
}

fn fold96(f: siphasher::sip128::Hash128) -> [u32; 3] {
    let k = [f.h1 as u32, (f.h1 >> 32) as u32, f.h2 as u32];
    // All zeros marks an empty table slot; the one fingerprint that would
    // collide with it joins its neighbour instead (a 2⁻⁹⁶ event).
    if k == [0, 0, 0] { [1, 0, 0] } else { k }
}

fn low64(k: &[u32; 3]) -> u64 {
    u64::from(k[0]) | (u64::from(k[1]) << 32)
}

/// The fingerprint of an `event_id`: 74 bits (the third word's top 22 are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventKey(pub [u32; 3]);

impl EventKey {
    /// Its 74 kept bits (see [`fp74`]).
    pub fn of(event_id: &str) -> Self {
        EventKey(fp74(sip96(&[event_id.as_bytes()])))
    }
}

/// The fingerprint of a person: 74 bits, as [`EventKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonKey(pub [u32; 3]);

impl PersonKey {
    /// Hashed, not taken from the pseudonym's bytes: a `person_ref` should be
    /// an HMAC output, but an upstream bug that sends padded or sequential
    /// values must not merge different persons.
    pub fn of(person: &PersonRef) -> Self {
        PersonKey(fp74(sip96(&[&person.0])))
    }
}

/// The fingerprint of a (person, code_id) pair: all 96 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeKey(pub [u32; 3]);

impl CodeKey {
    pub fn of(person: &PersonRef, code_id: &str) -> Self {
        CodeKey(sip96(&[&person.0, code_id.as_bytes()]))
    }

    /// The person's key and this code's, equal to [`PersonKey::of`] and
    /// [`CodeKey::of`], hashing the person once: both fingerprints start with
    /// the same input, so the hasher's state after it is shared (a scan by
    /// code needs both, and hashing is a tenth of applying a record).
    pub fn with_person(person: &PersonRef, code_id: &str) -> (PersonKey, Self) {
        let mut h = SipHasher13::new_with_keys(K0, K1);
        absorb(&mut h, &person.0);
        let person_key = PersonKey(fp74(finish96(&h)));
        absorb(&mut h, code_id.as_bytes());
        (person_key, CodeKey(finish96(&h)))
    }
}

/// Bits of the third word of an event's or person's fingerprint that are
/// kept: 64 + 10 = 74 bits, so that the fingerprint and a day pack into 12
/// bytes. Two of n ids then share a fingerprint with probability about
/// n²/2⁷⁵: for the 83 M ids a partition of a 25 M-person city holds over 7
/// days, 2·10⁻⁷ — one wrongly deduplicated event in five million such weeks.
const FP_LOW_BITS: u32 = 10;
const FP_LOW_MASK: u32 = (1 << FP_LOW_BITS) - 1;
/// A day in 22 bits, counted from [`DAY_BASE`]: every local day of an
/// instant in SPEC §3.1's range (years 0001–9999, UTC+8) fits.
const DAY_BITS: u32 = 32 - FP_LOW_BITS;
/// 0001-01-01, the first local day an instant in range can fall on.
pub(crate) const DAY_BASE: i32 = -719_162;

/// The 74 bits kept of a 96-bit fingerprint; never all zeros (the mark of
/// an empty slot). Every key computed now, and every key read from an older
/// snapshot, goes through here, so they agree.
pub(crate) fn fp74(k: [u32; 3]) -> [u32; 3] {
    let t = [k[0], k[1], k[2] & FP_LOW_MASK];
    if t == [0, 0, 0] { [1, 0, 0] } else { t }
}

/// A 74-bit fingerprint with `day` in the 22 bits above its kept bits (the
/// words of an [`IdSlot`] or a [`PersonDayKey`]), or `None` for a day no
/// instant in range has.
fn with_day(fp: [u32; 3], day: Day) -> Option<[u32; 3]> {
    let d = u32::try_from(day.0.checked_sub(DAY_BASE)?).ok()?;
    (d < 1 << DAY_BITS).then_some([fp[0], fp[1], fp[2] | d << FP_LOW_BITS])
}

/// The day packed by [`with_day`].
fn day_of(words: &[u32; 3]) -> Day {
    Day((words[2] >> FP_LOW_BITS) as i32 + DAY_BASE)
}

/// The fingerprint packed by [`with_day`].
fn fingerprint_of(words: &[u32; 3]) -> [u32; 3] {
    [words[0], words[1], words[2] & FP_LOW_MASK]
}

/// Whether packed words hold a fingerprint (never zero: see [`fp74`]), as
/// every entry's do; words read from a damaged snapshot may not.
fn holds_fingerprint(words: &[u32; 3]) -> bool {
    fingerprint_of(words) != [0, 0, 0]
}

/// A seen event id: its fingerprint's 74 bits and the local day of its
/// `occurred_at`, packed into 12 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdSlot {
    key: [u32; 3],
}

impl IdSlot {
    /// `None` for a day outside what an instant in range can have.
    pub fn new(id: EventKey, day: Day) -> Option<Self> {
        Some(IdSlot { key: with_day(id.0, day)? })
    }

    pub fn probe(id: EventKey) -> Self {
        IdSlot { key: id.0 }
    }

    /// The fingerprint (74 bits in three words).
    pub fn id(&self) -> EventKey {
        EventKey(fingerprint_of(&self.key))
    }

    pub fn day(&self) -> Day {
        day_of(&self.key)
    }

    /// The packed words, as snapshots keep them.
    pub fn words(&self) -> [u32; 3] {
        self.key
    }

    /// From [`Self::words`]; `None` for words no slot holds (a damaged snapshot).
    pub fn from_words(key: [u32; 3]) -> Option<Self> {
        holds_fingerprint(&key).then_some(IdSlot { key })
    }
}

impl Slot for IdSlot {
    fn hash(&self) -> u64 {
        low64(&self.key)
    }
    fn same_key(&self, other: &Self) -> bool {
        fingerprint_of(&self.key) == fingerprint_of(&other.key)
    }
    fn is_empty(&self) -> bool {
        self.key == [0, 0, 0]
    }
    fn age(&self) -> i64 {
        i64::from(self.day().0)
    }
}

/// A person on a local day: the person's 74 bits and the day, in 12 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersonDayKey([u32; 3]);

impl PersonDayKey {
    /// `None` for a day outside what an instant in range can have.
    pub fn new(person: PersonKey, day: Day) -> Option<Self> {
        with_day(person.0, day).map(PersonDayKey)
    }

    pub fn day(&self) -> Day {
        day_of(&self.0)
    }

    /// The person's fingerprint (74 bits in three words).
    pub fn person(&self) -> PersonKey {
        PersonKey(fingerprint_of(&self.0))
    }

    /// The packed words, as snapshots keep them.
    pub fn words(&self) -> [u32; 3] {
        self.0
    }

    /// From [`Self::words`]; `None` for words no key holds (a damaged snapshot).
    pub fn from_words(key: [u32; 3]) -> Option<Self> {
        holds_fingerprint(&key).then_some(PersonDayKey(key))
    }
}

impl Slot for PersonDayKey {
    fn hash(&self) -> u64 {
        // The same person on consecutive days must not land in neighbouring
        // slots by construction; multiplying the day spreads it over all bits.
        low64(&self.0) ^ u64::from(self.0[2] >> FP_LOW_BITS).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn same_key(&self, other: &Self) -> bool {
        self.0 == other.0
    }
    fn is_empty(&self) -> bool {
        self.0 == [0, 0, 0]
    }
    fn age(&self) -> i64 {
        i64::from(self.day().0)
    }
}

/// The first instant in range, in microseconds: code expiries are kept as
/// microseconds after it, in 59 bits.
const EXPIRY_BASE: i64 = Timestamp::MIN.micros();
const EXPIRY_BITS: u32 = 59;
/// The stored expiry of a code that never expires.
const NEVER: u64 = (1 << EXPIRY_BITS) - 1;
/// Bits 59–60 of a code's word hold its kind; bit 61 whether it is verified.
const KIND_SHIFT: u32 = EXPIRY_BITS;
const VERIFIED_BIT: u64 = 1 << 61;
const _: () = assert!(((Timestamp::MAX.micros() - EXPIRY_BASE) as u64) < NEVER);

/// A code a person holds, under the full 96-bit fingerprint of (person,
/// `code_id`), with its kind, whether it is verified, and its expiry packed
/// into one word: 20 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeSlot {
    pub key: [u32; 3],
    /// Bits 0–58: the expiry ([`NEVER`], or microseconds after
    /// [`EXPIRY_BASE`]); 59–60: [`CodeKind::index`]; 61: verified. Split in
    /// two halves so the slot has 4-byte alignment.
    meta: [u32; 2],
}

const _: () = assert!(CodeKind::ALL.len() <= 4, "a code's kind is two bits");

impl CodeSlot {
    /// `None` for an expiry outside SPEC §3.1's range (`i64::MAX`: never).
    pub fn new(key: CodeKey, kind: CodeKind, verified: bool, expires_at: i64) -> Option<Self> {
        let expiry = if expires_at == i64::MAX {
            NEVER
        } else if (Timestamp::MIN.micros()..=Timestamp::MAX.micros()).contains(&expires_at) {
            (expires_at - EXPIRY_BASE) as u64
        } else {
            return None;
        };
        let mut code = CodeSlot { key: key.0, meta: [0; 2] };
        code.set_meta(expiry | ((kind.index() as u64) << KIND_SHIFT));
        code.set_verified(verified);
        Some(code)
    }

    pub fn probe(key: CodeKey) -> Self {
        CodeSlot { key: key.0, ..CodeSlot::default() }
    }

    fn meta(&self) -> u64 {
        u64::from(self.meta[0]) | (u64::from(self.meta[1]) << 32)
    }

    fn set_meta(&mut self, meta: u64) {
        self.meta = [meta as u32, (meta >> 32) as u32];
    }

    pub fn kind(&self) -> CodeKind {
        let i = (self.meta() >> KIND_SHIFT) & 3;
        CodeKind::from_index(i as usize).unwrap_or(CodeKind::Personal)
    }

    /// For `RELATIVE` codes: whether the relationship is verified now.
    pub fn verified(&self) -> bool {
        self.meta() & VERIFIED_BIT != 0
    }

    pub fn set_verified(&mut self, verified: bool) {
        let meta = self.meta() & !VERIFIED_BIT;
        self.set_meta(if verified { meta | VERIFIED_BIT } else { meta });
    }

    /// When it expires, in microseconds; `i64::MAX` when it does not.
    pub fn expires_at(&self) -> i64 {
        match self.meta() & NEVER {
            NEVER => i64::MAX,
            e => EXPIRY_BASE + e as i64,
        }
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
        for code in ["", "K1", "a code id longer than one SipHash block of eight bytes"] {
            let (pk, ck) = CodeKey::with_person(&p, code);
            assert_eq!((pk, ck), (PersonKey::of(&p), CodeKey::of(&p, code)), "{code:?}");
        }
        // The kept bits are the full fingerprint's, so keys from a version 2
        // snapshot (96 bits) map onto the ones computed now.
        let full = sip96(&[b"e-1"]);
        assert_eq!(EventKey::of("e-1").0, [full[0], full[1], full[2] & FP_LOW_MASK]);
        assert_eq!(size_of::<IdSlot>(), 12);
        assert_eq!(size_of::<PersonDayKey>(), 12);
        assert_eq!(size_of::<CodeSlot>(), 20);
    }

    #[test]
    fn hashing_at_once_equals_hashing_part_by_part() {
        let streamed = |parts: &[&[u8]]| {
            let mut h = SipHasher13::new_with_keys(K0, K1);
            for p in parts {
                absorb(&mut h, p);
            }
            finish96(&h)
        };
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for a in [0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 126, 127, 128, 200] {
            for b in [0, 1, 5, 8, 40, 95, 96, 97] {
                let parts: [&[u8]; 2] = [&bytes[..a], &bytes[a..a + b]];
                assert_eq!(sip96(&parts), streamed(&parts), "{a} + {b}");
                assert_eq!(sip96(&parts[..1]), streamed(&parts[..1]), "{a}");
            }
        }
    }

    #[test]
    fn every_day_in_range_packs_and_unpacks() {
        let (first, last) = (Timestamp::MIN.local_day(), Timestamp::MAX.local_day());
        assert_eq!(first, Day(DAY_BASE), "0001-01-01 is the first local day");
        let p = PersonKey::of(&PersonRef([7; 32]));
        let id = EventKey::of("e-1");
        for day in [first, Day(first.0 + 1), Day(-1), Day(0), Day(19_091), Day(last.0 - 1), last] {
            let pd = PersonDayKey::new(p, day).expect("a day in range packs");
            assert_eq!((pd.day(), pd.person()), (day, p));
            let seen = IdSlot::new(id, day).expect("a day in range packs");
            assert_eq!((seen.day(), seen.id()), (day, id));
            assert!(seen.same_key(&IdSlot::probe(id)), "a probe finds the id whatever its day");
            assert_eq!(seen.hash(), IdSlot::probe(id).hash());
            assert_eq!(IdSlot::from_words(seen.words()), Some(seen));
            assert_eq!(PersonDayKey::from_words(pd.words()), Some(pd));
        }
        for day in [Day(first.0 - 1), Day(DAY_BASE + (1 << DAY_BITS)), Day(i32::MIN), Day(i32::MAX)]
        {
            assert_eq!(PersonDayKey::new(p, day), None, "{day:?}");
            assert_eq!(IdSlot::new(id, day), None, "{day:?}");
        }
        // The same person on two days: two keys.
        let a = PersonDayKey::new(p, Day(19_091)).unwrap();
        let b = PersonDayKey::new(p, Day(19_092)).unwrap();
        assert!(!a.same_key(&b));
        assert_ne!(a.hash(), b.hash());
        // Words of an empty slot are no entry.
        assert_eq!(IdSlot::from_words([0, 0, 0]), None);
        assert_eq!(IdSlot::from_words([0, 0, 5 << FP_LOW_BITS]), None);
        assert_eq!(PersonDayKey::from_words([0, 0, 5 << FP_LOW_BITS]), None);
    }

    #[test]
    fn a_zero_fingerprint_is_never_an_empty_slot() {
        assert_eq!(fp74([0, 0, 0]), [1, 0, 0]);
        assert_eq!(fp74([0, 0, !FP_LOW_MASK]), [1, 0, 0], "zero once the dropped bits go");
        let slot = IdSlot::new(EventKey(fp74([0, 0, 0])), Day(DAY_BASE)).unwrap();
        assert!(!slot.is_empty());
    }

    #[test]
    fn codes_keep_kind_verification_and_expiry() {
        let k = CodeKey::of(&PersonRef([7; 32]), "K");
        let (min, max) = (Timestamp::MIN.micros(), Timestamp::MAX.micros());
        for kind in CodeKind::ALL.iter().copied() {
            for verified in [false, true] {
                for expires in [min, min + 1, -5, 0, 1_649_433_600_000_000, max, i64::MAX] {
                    let mut c = CodeSlot::new(k, kind, verified, expires).expect("in range");
                    assert_eq!((c.kind(), c.verified(), c.expires_at()), (kind, verified, expires));
                    c.set_verified(!verified);
                    assert_eq!(
                        (c.kind(), c.verified(), c.expires_at()),
                        (kind, !verified, expires)
                    );
                    assert!(c.same_key(&CodeSlot::probe(k)));
                }
            }
        }
        for expires in [min - 1, max + 1, i64::MIN, i64::MAX - 1] {
            assert_eq!(CodeSlot::new(k, CodeKind::Paper, false, expires), None, "{expires}");
        }
    }
}
