//! Where a person's records belong (SPEC §2, §3.1): Kafka's default
//! partitioner, and the check that a record sits where it would put it.
//!
//! The rules of SPEC §3 hold only when every event of a person is in one
//! partition. The topic is keyed by the lowercase hex of `person_ref`, and the
//! producers partition with Kafka's murmur2; a record keyed some other way, or
//! partitioned by another partitioner (librdkafka's default is not murmur2), or
//! written before the topic grew, would put one person in two partitions.

/// The partition a state machine owns and the topic's partition count: its
/// owner's fact, not state (it is never in a snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    partition: i32,
    partitions: u32,
}

impl Placement {
    /// Partition `partition` of a topic of `partitions`; `None` unless
    /// `0 <= partition < partitions`.
    pub fn new(partition: i32, partitions: i32) -> Option<Placement> {
        let n = u32::try_from(partitions).ok().filter(|&n| n > 0)?;
        let p = u32::try_from(partition).ok().filter(|&p| p < n)?;
        Some(Placement { partition: p as i32, partitions: n })
    }

    /// The partition owned.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions as i32
    }

    /// Why a record with this key and this `person_ref` does not belong in
    /// this partition, or `None` if it does. The message names the check that
    /// failed and never the key or the pseudonym.
    pub fn misplaced(&self, key: Option<&[u8]>, person_ref: &[u8; 32]) -> Option<String> {
        let Some(key) = key else {
            return Some("the record has no key; it must be the event's person_ref".to_owned());
        };
        if !is_hex_of(key, person_ref) {
            return Some(format!(
                "the record's key ({} bytes) is not its event's person_ref as 64 lowercase hex \
                 characters",
                key.len()
            ));
        }
        let right = partition_of(key, self.partitions);
        (right != self.partition).then(|| {
            format!(
                "the record is in partition {} but murmur2 of its key puts it in partition {right} \
                 of {}",
                self.partition, self.partitions
            )
        })
    }
}

/// Whether `key` is exactly the lowercase hex of `bytes`, without allocating
/// or branching per character: eight characters at a time are made from four
/// bytes in a `u64` and compared with the key's eight.
pub fn is_hex_of(key: &[u8], bytes: &[u8; 32]) -> bool {
    let Ok(key) = <&[u8; 64]>::try_from(key) else {
        return false;
    };
    let mut diff = 0u64;
    for (chars, four) in key.chunks_exact(8).zip(bytes.chunks_exact(4)) {
        let chars = u64::from_le_bytes(chars.try_into().expect("chunks of eight"));
        let four = u32::from_le_bytes(four.try_into().expect("chunks of four"));
        diff |= chars ^ hex4(four);
    }
    diff == 0
}

/// The lowercase hex of four bytes (first byte first, as in memory): eight
/// ASCII characters, as the little-endian `u64` they make.
fn hex4(four: u32) -> u64 {
    const NIBBLE: u64 = 0x000f_000f_000f_000f;
    const BYTES: u64 = 0x0101_0101_0101_0101;
    // Byte i to the low byte of 16-bit lane i.
    let mut z = u64::from(four);
    z = (z | (z << 16)) & 0x0000_ffff_0000_ffff;
    z = (z | (z << 8)) & 0x00ff_00ff_00ff_00ff;
    // Byte 2i: the high nibble of byte i; byte 2i + 1: its low nibble.
    let n = ((z >> 4) & NIBBLE) | ((z & NIBBLE) << 8);
    // A nibble of 10 or more carries into bit 4 when 6 is added: a letter,
    // 'a' - '0' - 10 = 39 further on. No byte ever carries into the next.
    let letters = ((n + 6 * BYTES) >> 4) & BYTES;
    n + u64::from(b'0') * BYTES + letters * 39
}

/// The partition of a key, as Kafka's default partitioner chooses it for the
/// key bytes: murmur2, positive part, modulo the partition count.
pub fn partition_of(key: &[u8], partitions: u32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions) as i32
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn hex_of_is_exact_lowercase_hex() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(is_hex_of(hex.as_bytes(), &bytes));
        assert!(!is_hex_of(hex.to_uppercase().as_bytes(), &bytes));
        assert!(!is_hex_of(&hex.as_bytes()[..62], &bytes));
        assert!(!is_hex_of(format!("{hex}00").as_bytes(), &bytes));
        let mut other = hex.into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!is_hex_of(&other, &bytes));
    }

    #[test]
    fn hex_of_agrees_with_formatting_for_every_byte_value() {
        // Every value at every position of a four-byte group, in both nibbles.
        for v in 0..=255u8 {
            for shift in 0..4 {
                let mut bytes = [0x5au8; 32];
                bytes[shift] = v;
                bytes[31 - shift] = v;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                assert!(is_hex_of(hex.as_bytes(), &bytes), "{v:#04x} at {shift}");
                let mut wrong = hex.clone().into_bytes();
                wrong[2 * shift] = if wrong[2 * shift] == b'f' { b'e' } else { b'f' };
                assert!(!is_hex_of(&wrong, &bytes), "{v:#04x} at {shift}");
            }
        }
    }

    #[test]
    fn placement_is_within_the_topic() {
        assert!(Placement::new(0, 1).is_some());
        assert!(Placement::new(3, 4).is_some());
        assert!(Placement::new(4, 4).is_none());
        assert!(Placement::new(-1, 4).is_none());
        assert!(Placement::new(0, 0).is_none());
    }
}
