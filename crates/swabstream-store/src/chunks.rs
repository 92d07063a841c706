//! How every store keeps a state snapshot: as numbered chunks, with a
//! manifest in the checkpoint that says how many chunks, how many bytes and
//! their CRC-32.
//!
//! A partition holding a city's week passes SQLite's 1 GB value limit and is
//! far beyond what one Scylla cell or batch should carry (Scylla warns on
//! cells over 1 MB and refuses mutations over half a commitlog segment), so
//! no store writes a snapshot as one value. Chunks are keyed by the offset
//! the snapshot was taken at and their number; they are written before the
//! checkpoint that points at them, and a reader trusts only what the
//! manifest describes, so a torn or half-deleted snapshot is detected, never
//! restored.

use crate::StoreError;

/// What the checkpoint says of its snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The offset the snapshot was taken at.
    pub next_offset: i64,
    /// How many chunks, numbered from 0.
    pub chunks: u32,
    /// The snapshot's length.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole snapshot.
    pub crc32: u32,
}

impl Manifest {
    /// The manifest of `bytes` cut into chunks of at most `chunk_bytes`.
    pub fn of(next_offset: i64, bytes: &[u8], chunk_bytes: usize) -> Manifest {
        Manifest {
            next_offset,
            chunks: split(bytes, chunk_bytes).count() as u32,
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }
}

/// The chunks of `bytes`, numbered from 0, each at most `chunk_bytes` long
/// (an empty snapshot has none).
///
/// # Panics
/// If `chunk_bytes` is 0 (a store's constant, never input).
pub fn split(bytes: &[u8], chunk_bytes: usize) -> impl Iterator<Item = (u32, &[u8])> {
    assert!(chunk_bytes > 0, "a snapshot chunk must hold at least one byte");
    bytes.chunks(chunk_bytes).enumerate().map(|(i, c)| (i as u32, c))
}

/// Puts a snapshot back together from its chunks (in any order), checking
/// them against the manifest: every chunk there once, the length, the CRC.
pub fn reassemble(
    manifest: &Manifest,
    chunks: impl IntoIterator<Item = (u32, Vec<u8>)>,
) -> Result<Vec<u8>, StoreError> {
    let corrupt = |what: String| {
        StoreError::Corrupt(format!("snapshot at offset {}: {what}", manifest.next_offset))
    };
    let mut chunks: Vec<(u32, Vec<u8>)> = chunks.into_iter().collect();
    chunks.sort_unstable_by_key(|(seq, _)| *seq);
    if chunks.len() != manifest.chunks as usize
        || chunks.iter().enumerate().any(|(i, (seq, _))| *seq as usize != i)
    {
        let seqs: Vec<u32> = chunks.iter().map(|(s, _)| *s).take(8).collect();
        return Err(corrupt(format!(
            "{} chunks found (first numbers {seqs:?}), the checkpoint names {}",
            chunks.len(),
            manifest.chunks
        )));
    }
    let len: usize = chunks.iter().map(|(_, c)| c.len()).sum();
    if len as u64 != manifest.bytes {
        return Err(corrupt(format!("{len} bytes found, the checkpoint names {}", manifest.bytes)));
    }
    let mut out = Vec::with_capacity(len);
    for (_, c) in chunks {
        out.extend_from_slice(&c);
    }
    if crc32fast::hash(&out) != manifest.crc32 {
        return Err(corrupt("its checksum does not match the checkpoint's".to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn owned(bytes: &[u8], chunk: usize) -> Vec<(u32, Vec<u8>)> {
        split(bytes, chunk).map(|(i, c)| (i, c.to_vec())).collect()
    }

    proptest! {
        /// Any snapshot, cut at any chunk limit and read back in any order,
        /// is the snapshot; every chunk respects the limit.
        #[test]
        fn any_size_any_limit_reassembles(
            bytes in proptest::collection::vec(any::<u8>(), 0..5000),
            chunk in 1usize..700,
            seed in any::<u64>(),
        ) {
            let m = Manifest::of(42, &bytes, chunk);
            let mut parts = owned(&bytes, chunk);
            prop_assert!(parts.iter().all(|(_, c)| !c.is_empty() && c.len() <= chunk));
            prop_assert_eq!(m.chunks as usize, bytes.len().div_ceil(chunk));
            // A deterministic shuffle: the order rows come back in is the store's.
            let n = parts.len().max(1);
            parts.rotate_left((seed as usize) % n);
            if seed % 2 == 0 { parts.reverse(); }
            prop_assert_eq!(reassemble(&m, parts).unwrap(), bytes);
        }

        /// A missing chunk, a chunk too many, or one changed byte is refused.
        #[test]
        fn damage_is_detected(
            bytes in proptest::collection::vec(any::<u8>(), 1..3000),
            chunk in 1usize..500,
            pick in any::<prop::sample::Index>(),
        ) {
            let m = Manifest::of(7, &bytes, chunk);
            let parts = owned(&bytes, chunk);
            let i = pick.index(parts.len());

            let mut missing = parts.clone();
            missing.remove(i);
            prop_assert!(reassemble(&m, missing).is_err());

            let mut extra = parts.clone();
            extra.push((m.chunks, vec![0]));
            prop_assert!(reassemble(&m, extra).is_err());

            let mut flipped = parts.clone();
            let c = &mut flipped[i].1;
            let at = pick.index(c.len());
            c[at] ^= 0x5a;
            prop_assert!(reassemble(&m, flipped).is_err());

            let mut twice = parts;
            let dup = twice[i].clone();
            twice.push(dup);
            prop_assert!(reassemble(&m, twice).is_err());
        }
    }

    #[test]
    fn an_empty_snapshot_has_no_chunks() {
        let m = Manifest::of(0, &[], 16);
        assert_eq!((m.chunks, m.bytes), (0, 0));
        assert_eq!(reassemble(&m, Vec::new()).unwrap(), Vec::<u8>::new());
    }
}
