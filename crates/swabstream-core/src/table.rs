//! A hash table for the partition's fingerprint-keyed state.
//!
//! The state's three big tables — event ids, person-days, codes — hold
//! millions of small fixed-size entries whose keys are already random
//! fingerprints, and every record looks one or more of them up in a table far
//! larger than the CPU caches. Two things make that fast here, and are why this
//! is not a `HashMap`: entries sit inline in one array with linear probing, so a
//! lookup costs one cache miss instead of two (control bytes, then the entry);
//! and a slot can be prefetched before it is needed, so a batch can overlap the
//! misses of the records ahead with the work on the current one.
//!
//! A slot whose key is all zeros is empty; keys are fingerprints, so a real key
//! of all zeros is remapped (see `keys.rs`).
//!
//! The slot count is not a power of two: a hash is mapped onto it by the top
//! half of a 64×64-bit product, and the table grows by half when 7/8 full.
//! Doubling left a table as little as 44 % full (the 2,040,000-person day's
//! tables were 47 % full, doubling their bytes per entry); growing by half
//! keeps it between 58 % and 87.5 %, for half again as many rebuilds.

/// An entry of a [`FpTable`]: a fixed-size key (a fingerprint) and its value.
pub(crate) trait Slot: Copy + Default {
    /// The fingerprint's bits used to place the entry; uniformly distributed.
    fn hash(&self) -> u64;
    /// Whether two entries have the same key.
    fn same_key(&self, other: &Self) -> bool;
    /// Whether this slot is empty (`Default` is).
    fn is_empty(&self) -> bool;
    /// When the entry was made, in whatever unit the table's owner ages
    /// entries by (a day, an instant): what [`FpTable::retain_from`] compares.
    fn age(&self) -> i64;
}

/// An open-addressing table with linear probing, at most 7/8 full.
///
/// Its slot count is always one of [`capacities`], the smallest that holds
/// its entries: so a table rebuilt from another's entries (a restored
/// snapshot) has the same slots, and the same order.
#[derive(Clone, Debug)]
pub(crate) struct FpTable<S> {
    slots: Vec<S>,
    len: usize,
    /// No entry is older than this: lets [`FpTable::retain_from`] skip the
    /// rebuild when nothing would go.
    oldest: i64,
}

impl<S: Slot> Default for FpTable<S> {
    fn default() -> Self {
        FpTable { slots: Vec::new(), len: 0, oldest: i64::MAX }
    }
}

impl<S: Slot> FpTable<S> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the slot array.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<S>()
    }

    /// The slot a key's probe starts at: the hash scaled onto the slot count.
    #[inline]
    fn home(&self, probe: &S) -> usize {
        ((u128::from(probe.hash()) * self.slots.len() as u128) >> 64) as usize
    }

    /// The index of the slot holding `probe`'s key, or of the empty slot where it would go.
    #[inline]
    fn position(&self, probe: &S) -> usize {
        let n = self.slots.len();
        let mut i = self.home(probe);
        loop {
            let s = &self.slots[i];
            if s.is_empty() || s.same_key(probe) {
                return i;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// The entry with `probe`'s key.
    #[inline]
    pub fn get(&self, probe: &S) -> Option<&S> {
        if self.len == 0 {
            return None;
        }
        let s = &self.slots[self.position(probe)];
        (!s.is_empty()).then_some(s)
    }

    /// The entry with `probe`'s key, mutably. The caller must not make it older
    /// (lower its [`Slot::age`]): the table's record of its oldest entry would be wrong.
    #[inline]
    pub fn get_mut(&mut self, probe: &S) -> Option<&mut S> {
        if self.len == 0 {
            return None;
        }
        let i = self.position(probe);
        let s = &mut self.slots[i];
        (!s.is_empty()).then_some(s)
    }

    /// The entry with `probe`'s key, or the place where it would go: one probe
    /// for a lookup and the insert that may follow it.
    #[inline]
    pub fn find(&mut self, probe: &S) -> Found<'_, S> {
        if self.slots.is_empty() {
            self.grow();
        }
        let mut i = self.position(probe);
        if !self.slots[i].is_empty() {
            return Found::Entry(&mut self.slots[i]);
        }
        if !fits(self.len + 1, self.slots.len()) {
            self.grow();
            i = self.position(probe);
        }
        Found::Vacant(Vacant { table: self, index: i })
    }

    /// Inserts `entry`, replacing the entry with its key; returns the replaced one.
    #[inline]
    pub fn insert(&mut self, entry: S) -> Option<S> {
        // Before the probe, which borrows the table; a bound that is too low
        // would only cost a needless sweep.
        self.oldest = self.oldest.min(entry.age());
        match self.find(&entry) {
            Found::Entry(old) => Some(std::mem::replace(old, entry)),
            Found::Vacant(place) => {
                place.insert(entry);
                None
            }
        }
    }

    /// Asks the CPU to start loading the slot where `probe`'s key would be, so a
    /// lookup a little later finds it in cache. Changes nothing observable.
    #[inline]
    pub fn prefetch(&self, probe: &S) {
        if self.slots.is_empty() {
            return;
        }
        let home = self.home(probe);
        prefetch_read(std::ptr::from_ref(&self.slots[home]).cast());
        // A probe run often crosses into the next cache line (runs grow long
        // as the table fills towards 7/8): that line too.
        let next = (home + 64 / size_of::<S>()).min(self.slots.len() - 1);
        prefetch_read(std::ptr::from_ref(&self.slots[next]).cast());
    }

    /// Drops the entries older than `age`.
    pub fn retain_from(&mut self, age: i64) {
        if self.oldest >= age {
            return;
        }
        self.retain(|s| s.age() >= age);
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) {
        // Rebuilding is simpler than deleting under linear probing (which must
        // shift entries back), and the sweep runs once per day of event time.
        let old = std::mem::take(&mut self.slots);
        self.len = 0;
        self.oldest = i64::MAX;
        let kept = old.iter().filter(|s| !s.is_empty() && keep(s)).count();
        self.reserve(kept);
        for s in old {
            if !s.is_empty() && keep(&s) {
                self.insert(s);
            }
        }
    }

    /// Makes room for `n` more entries without growing.
    pub fn reserve(&mut self, n: usize) {
        let need = self.len + n;
        if !fits(need, self.slots.len()) {
            let cap = capacities().find(|&c| fits(need, c)).expect("some capacity holds any count");
            self.rehash(cap);
        }
    }

    fn grow(&mut self) {
        let now = self.slots.len();
        let cap = capacities().find(|&c| c > now).expect("capacities grow without end");
        self.rehash(cap);
    }

    fn rehash(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![S::default(); cap]);
        for s in old {
            if !s.is_empty() {
                let i = self.position(&s);
                self.slots[i] = s;
            }
        }
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &S> {
        self.slots.iter().filter(|s| !s.is_empty())
    }
}

/// What [`FpTable::find`] found.
pub(crate) enum Found<'a, S> {
    /// The entry with the key. The caller must not make it older (lower its
    /// [`Slot::age`]) nor change its key.
    Entry(&'a mut S),
    /// No entry has the key; this is where it goes, room made.
    Vacant(Vacant<'a, S>),
}

/// The empty slot where a key [`FpTable::find`] did not find goes.
pub(crate) struct Vacant<'a, S> {
    table: &'a mut FpTable<S>,
    index: usize,
}

impl<S: Slot> Vacant<'_, S> {
    /// Puts `entry` here; it must have the key that was looked for.
    #[inline]
    pub fn insert(self, entry: S) {
        let t = self.table;
        debug_assert!(t.slots[self.index].is_empty());
        t.oldest = t.oldest.min(entry.age());
        t.slots[self.index] = entry;
        t.len += 1;
    }
}

/// Whether `len` entries fit in `slots` slots (at most 7/8 full).
fn fits(len: usize, slots: usize) -> bool {
    len.saturating_mul(8) <= slots.saturating_mul(7)
}

/// The slot counts a table may have: 16, then half again each time (rounded
/// down), until past any memory there is.
fn capacities() -> impl Iterator<Item = usize> {
    std::iter::successors(Some(16usize), |&c| c.checked_add(c / 2))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_read(p: *const i8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is a hint: it never faults, whatever the address, and
    // has no effect the program can observe. SSE is part of x86_64's baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefetch_read(_p: *const i8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    struct E {
        k: u64,
        v: u32,
    }

    impl Slot for E {
        fn hash(&self) -> u64 {
            // A poor hash on purpose: seven homes spread over the table (the
            // top bits choose), so long probe runs and wrap-around get exercised.
            (self.k % 7) * (u64::MAX / 7)
        }
        fn same_key(&self, o: &Self) -> bool {
            self.k == o.k
        }
        fn is_empty(&self) -> bool {
            self.k == 0
        }
        fn age(&self) -> i64 {
            i64::from(self.v)
        }
    }

    #[test]
    fn behaves_like_a_map() {
        let mut t = FpTable::<E>::default();
        let mut m = std::collections::HashMap::new();
        for i in 1..5000u64 {
            let k = (i * 7919) % 1013 + 1;
            assert_eq!(t.insert(E { k, v: i as u32 }).map(|e| e.v), m.insert(k, i as u32));
            t.prefetch(&E { k: k + 1, v: 0 });
        }
        assert_eq!(t.len(), m.len());
        for (k, v) in &m {
            assert_eq!(t.get(&E { k: *k, v: 0 }).map(|e| e.v), Some(*v));
        }
        assert!(t.get(&E { k: 5000, v: 0 }).is_none());
        t.retain(|e| e.k % 2 == 0);
        m.retain(|k, _| k % 2 == 0);
        assert_eq!(t.len(), m.len());
        for k in 1..1100u64 {
            assert_eq!(t.get(&E { k, v: 0 }).map(|e| e.v), m.get(&k).copied());
        }
        if let Some(e) = t.get_mut(&E { k: 2, v: 0 }) {
            e.v = 9999;
        }
        assert_eq!(t.get(&E { k: 2, v: 0 }).map(|e| e.v), Some(9999));
        assert_eq!(t.iter().count(), m.len());
        for k in [4u64, 3, 6000, 6001] {
            match t.find(&E { k, v: 0 }) {
                Found::Entry(e) => {
                    assert_eq!(Some(e.v), m.get(&k).copied());
                    e.v += 1;
                    m.insert(k, e.v);
                }
                Found::Vacant(v) => {
                    assert!(!m.contains_key(&k));
                    v.insert(E { k, v: 7 });
                    m.insert(k, 7);
                }
            }
            assert_eq!(t.get(&E { k, v: 0 }).map(|e| e.v), m.get(&k).copied());
            assert_eq!(t.len(), m.len());
        }
        let before = t.len();
        t.retain_from(0);
        assert_eq!(t.len(), before, "nothing is older than 0");
        t.retain_from(4500);
        assert!(t.iter().all(|e| e.v >= 4500));
        assert!(t.len() < before);
    }
}
