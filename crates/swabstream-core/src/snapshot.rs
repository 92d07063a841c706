//! A compact binary snapshot of a partition's state, so a worker can
//! checkpoint it and a successor can restore it instead of replaying the log
//! from the beginning.
//!
//! Layout (little-endian): the magic `SWSNAP` and a format version, the
//! settings, position and counts, then each table as a count followed by
//! fixed-size entries, and a CRC-32 of everything before it. Restoring checks
//! every length against the bytes present, so a truncated or corrupted
//! snapshot is an error, never a panic or a wrong state.

use swabstream_events::{CodeKind, DISTRICTS, Day, Reason, Timestamp};

use crate::effects::OutcomeCounts;
use crate::keys::{CodeKey, CodeSlot, EventKey, IdSlot, PersonDayKey, PersonKey, fp74};
use crate::state::{CoreConfig, PartitionState};
use crate::views::{CityCounts, DayRows, DistrictCounts, RowBits, SiteCounts, SiteHourKey};

const MAGIC: &[u8; 6] = b"SWSNAP";
/// Version 3 keeps event ids and person-days as the state does, 12 bytes
/// each (74 bits of fingerprint and a day); versions 1 and 2 kept 16 (all 96
/// bits, and the day apart), and are read by dropping the bits the state no
/// longer keeps, as it does for every key it computes. Version 2 counts
/// eight rejection reasons (`WRONG_PARTITION` was added at the end); version
/// 1, seven. All three are read.
const VERSION: u16 = 3;
/// Bytes of an event id, and of a person-day, in this version's tables.
fn key_bytes(version: u16) -> usize {
    if version >= 3 { 12 } else { 16 }
}
/// How many reasons a snapshot of this version counts.
fn reasons_in(version: u16) -> usize {
    if version == 1 { 7 } else { Reason::ALL.len() }
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes do not start like a snapshot.
    #[error("not a swabstream state snapshot (bad magic)")]
    NotASnapshot,
    /// Written by a format version this build does not read.
    #[error(
        "snapshot format version {0} is not supported (this build reads versions 1 to {VERSION})"
    )]
    UnsupportedVersion(u16),
    /// The checksum does not match: the bytes were damaged.
    #[error("snapshot checksum mismatch: the snapshot is damaged; restore from the log instead")]
    Checksum,
    /// The bytes end inside a section, or a value is impossible.
    #[error("snapshot is malformed: {0}")]
    Malformed(&'static str),
    /// Taken with other settings than the worker runs with.
    #[error(
        "snapshot was taken with a retention of {snapshot} days, the worker runs with {configured}; \
         views would change meaning, so rebuild from the log"
    )]
    ConfigMismatch { snapshot: u16, configured: u16 },
}

impl PartitionState {
    /// The state as bytes, to be restored with [`PartitionState::restore`].
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_as(VERSION)
    }

    /// The snapshot in a format version (older ones for the tests that read
    /// them back): before version 3, ids and person-days take 16 bytes, the
    /// fingerprint's dropped bits written as zeros; before version 2, the
    /// counts of `WRONG_PARTITION` are left out.
    fn snapshot_as(&self, version: u16) -> Vec<u8> {
        let reasons = reasons_in(version);
        let k = key_bytes(version);
        let mut w = Vec::with_capacity(
            64 + self.ids.len() * k + self.person_days.len() * k + self.codes.len() * 22,
        );
        w.extend_from_slice(MAGIC);
        put_u16(&mut w, version);
        put_u16(&mut w, self.config.retention_days);
        put_i64(&mut w, self.next_offset.unwrap_or(-1));
        put_opt_i64(&mut w, self.watermark.map(Timestamp::micros));
        put_opt_i64(&mut w, self.swept_for.map(|d| i64::from(d.0)));
        let c = &self.counts;
        for v in [c.accepted, c.duplicates, c.skipped].iter().chain(c.rejected.iter().take(reasons))
        {
            put_u64(&mut w, *v);
        }

        put_u64(&mut w, self.ids.len() as u64);
        for s in self.ids.iter() {
            if version >= 3 {
                s.words().iter().for_each(|&x| put_u32(&mut w, x));
            } else {
                s.id().0.iter().for_each(|&x| put_u32(&mut w, x));
                put_i32(&mut w, s.day().0);
            }
        }
        put_u64(&mut w, self.person_days.len() as u64);
        for k in self.person_days.iter() {
            if version >= 3 {
                k.words().iter().for_each(|&x| put_u32(&mut w, x));
            } else {
                k.person().0.iter().for_each(|&x| put_u32(&mut w, x));
                put_i32(&mut w, k.day().0);
            }
        }
        put_u64(&mut w, self.codes.len() as u64);
        for c in self.codes.iter() {
            for x in c.key {
                put_u32(&mut w, x);
            }
            w.push(c.kind().index() as u8);
            w.push(u8::from(c.verified()));
            put_i64(&mut w, c.expires_at());
        }

        let v = &self.views;
        put_u64(&mut w, v.sites.len() as u64);
        for s in &v.sites {
            put_u32(&mut w, s.len() as u32);
            w.extend_from_slice(s.as_bytes());
        }
        put_u64(&mut w, v.days.len() as u64);
        for d in &v.days {
            put_i32(&mut w, d.day.0);
            let c = &d.city;
            for x in
                [c.people_sampled, c.using_code, c.valid_scans, c.rescans, c.rejected, c.duplicates]
            {
                put_u64(&mut w, x);
            }
            for x in &d.districts {
                for y in [x.people_sampled, x.using_code, x.valid_scans, x.rejected] {
                    put_u64(&mut w, y);
                }
            }
            for x in d.methods.iter().chain(d.reasons.iter().take(reasons)).chain(&d.codes) {
                put_u64(&mut w, *x);
            }
            let e = &d.exists;
            w.push(u8::from(e.city));
            put_u16(&mut w, e.districts);
            w.push(e.methods);
            w.push(e.reasons);
            put_u16(&mut w, e.codes);
        }
        // Sorted, so that equal states give equal bytes (the map's order is not stable).
        let mut site_rows: Vec<_> = v.site_rows.iter().collect();
        site_rows.sort_unstable_by_key(|(k, _)| (k.day, k.site, k.hour));
        put_u64(&mut w, site_rows.len() as u64);
        for (k, r) in site_rows {
            put_i32(&mut w, k.day.0);
            put_u32(&mut w, k.site);
            w.push(k.hour);
            put_u64(&mut w, r.people_sampled);
            put_u64(&mut w, r.valid_scans);
        }
        let crc = crc32fast::hash(&w);
        put_u32(&mut w, crc);
        w
    }

    /// Restores a state from [`PartitionState::snapshot`] bytes. Its rows count
    /// as unchanged: they were written with the checkpoint the snapshot belongs to.
    pub fn restore(bytes: &[u8], config: CoreConfig) -> Result<PartitionState, SnapshotError> {
        if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let version = u16::from_le_bytes([bytes[6], bytes[7]]);
        if !(1..=VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        if bytes.len() < 12 {
            return Err(SnapshotError::Malformed("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(SnapshotError::Checksum);
        }
        let mut r = Reader { buf: &body[8..] };
        let retention = r.u16()?;
        if retention != config.retention_days {
            return Err(SnapshotError::ConfigMismatch {
                snapshot: retention,
                configured: config.retention_days,
            });
        }
        let mut s = PartitionState::new(config);
        let next = r.i64()?;
        s.next_offset = (next >= 0).then_some(next);
        s.watermark = r.opt_i64()?.map(Timestamp);
        s.swept_for = match r.opt_i64()? {
            Some(d) => Some(Day(i32::try_from(d).map_err(|_| SnapshotError::Malformed("day"))?)),
            None => None,
        };
        let mut counts = OutcomeCounts {
            accepted: r.u64()?,
            duplicates: r.u64()?,
            skipped: r.u64()?,
            ..OutcomeCounts::default()
        };
        let reasons = reasons_in(version);
        for x in counts.rejected.iter_mut().take(reasons) {
            *x = r.u64()?;
        }
        s.counts = counts;

        let n = r.count(key_bytes(version))?;
        s.ids.reserve(n);
        for _ in 0..n {
            let words = [r.u32()?, r.u32()?, r.u32()?];
            let slot = if version >= 3 {
                IdSlot::from_words(words)
            } else {
                IdSlot::new(EventKey(fp74(words)), Day(r.i32()?))
            };
            s.ids.insert(slot.ok_or(SnapshotError::Malformed("event id"))?);
        }
        let n = r.count(key_bytes(version))?;
        s.person_days.reserve(n);
        for _ in 0..n {
            let words = [r.u32()?, r.u32()?, r.u32()?];
            let key = if version >= 3 {
                PersonDayKey::from_words(words)
            } else {
                PersonDayKey::new(PersonKey(fp74(words)), Day(r.i32()?))
            };
            s.person_days.insert(key.ok_or(SnapshotError::Malformed("person-day"))?);
        }
        let n = r.count(22)?;
        s.codes.reserve(n);
        for _ in 0..n {
            let k = CodeKey([r.u32()?, r.u32()?, r.u32()?]);
            let kind = CodeKind::from_index(usize::from(r.u8()?))
                .ok_or(SnapshotError::Malformed("code kind"))?;
            let verified = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(SnapshotError::Malformed("code verification")),
            };
            let code = CodeSlot::new(k, kind, verified, r.i64()?)
                .ok_or(SnapshotError::Malformed("code expiry"))?;
            s.codes.insert(code);
        }

        let v = &mut s.views;
        let n = r.count(4)?;
        for i in 0..n {
            let len = r.u32()? as usize;
            let text = std::str::from_utf8(r.take(len)?)
                .map_err(|_| SnapshotError::Malformed("site id is not UTF-8"))?;
            v.sites.push(text.into());
            v.site_index.insert(text.into(), i as u32);
        }
        let n = r.count(4 + 8 * (6 + 16 * 4 + 6 + reasons + 16) + 7)?;
        for i in 0..n {
            let day = Day(r.i32()?);
            let city = CityCounts {
                people_sampled: r.u64()?,
                using_code: r.u64()?,
                valid_scans: r.u64()?,
                rescans: r.u64()?,
                rejected: r.u64()?,
                duplicates: r.u64()?,
            };
            let mut districts = [DistrictCounts::default(); DISTRICTS.len()];
            for d in districts.iter_mut() {
                *d = DistrictCounts {
                    people_sampled: r.u64()?,
                    using_code: r.u64()?,
                    valid_scans: r.u64()?,
                    rejected: r.u64()?,
                };
            }
            let mut rows = DayRows { day, city, districts, ..DayRows::default() };
            for x in rows
                .methods
                .iter_mut()
                .chain(rows.reasons.iter_mut().take(reasons))
                .chain(rows.codes.iter_mut())
            {
                *x = r.u64()?;
            }
            rows.exists = RowBits {
                city: r.u8()? != 0,
                districts: r.u16()?,
                methods: r.u8()?,
                reasons: r.u8()?,
                codes: r.u16()?,
            };
            if v.day_index.insert(day, i as u32).is_some() {
                return Err(SnapshotError::Malformed("a day appears twice"));
            }
            v.days.push(rows);
        }
        let n = r.count(4 + 4 + 1 + 16)?;
        for _ in 0..n {
            let key = SiteHourKey { day: Day(r.i32()?), site: r.u32()?, hour: r.u8()? };
            if key.site as usize >= v.sites.len() || key.hour > 23 {
                return Err(SnapshotError::Malformed("site row"));
            }
            let row = SiteCounts { people_sampled: r.u64()?, valid_scans: r.u64()?, dirty: false };
            v.site_rows.insert(key, row);
        }
        if !r.buf.is_empty() {
            return Err(SnapshotError::Malformed("bytes after the last section"));
        }
        s.views.clear_dirty();
        Ok(s)
    }
}

fn put_u16(w: &mut Vec<u8>, v: u16) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put_i32(w: &mut Vec<u8>, v: i32) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put_i64(w: &mut Vec<u8>, v: i64) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put_opt_i64(w: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(x) => {
            w.push(1);
            put_i64(w, x);
        }
        None => w.push(0),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.buf.len() < n {
            return Err(SnapshotError::Malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.array().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32, SnapshotError> {
        self.array().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.array().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        self.array().map(i64::from_le_bytes)
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.i64().map(Some),
            _ => Err(SnapshotError::Malformed("option tag")),
        }
    }
    /// A table's entry count, checked against the bytes left so that a damaged
    /// count cannot make us reserve memory for entries that are not there.
    fn count(&mut self, min_entry_bytes: usize) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| SnapshotError::Malformed("count"))?;
        if n.saturating_mul(min_entry_bytes) > self.buf.len() {
            return Err(SnapshotError::Malformed("a count exceeds the bytes present"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Record, placement::Placement};

    #[test]
    fn a_version_1_snapshot_still_restores() {
        // A store written before WRONG_PARTITION existed holds version 1.
        let mut s = PartitionState::new(CoreConfig::default());
        s.set_placement(Placement::new(0, 1));
        let mut dlq = Vec::new();
        for (i, p) in [&b"garbage"[..], b"", b"\xc3\x01"].into_iter().enumerate() {
            let ts = Timestamp::from_secs(1_649_433_600);
            s.apply(
                Record { offset: i as i64, timestamp: ts, key: None, payload: Some(p) },
                &mut dlq,
            );
        }
        let old = s.snapshot_as(1);
        assert_eq!(u16::from_le_bytes([old[6], old[7]]), 1);
        let restored = PartitionState::restore(&old, CoreConfig::default()).unwrap();
        assert_eq!(restored.views(), s.views());
        assert_eq!(restored.counts(), s.counts());
        assert_eq!(restored.snapshot(), s.snapshot(), "and it is rewritten as version 3");
        assert!(old.len() < s.snapshot().len());
    }

    #[test]
    fn a_version_2_snapshot_restores_to_the_state_it_was_taken_of() {
        // Version 2 kept 96-bit fingerprints; a worker that restores one and
        // applies the rest of the day must end where one that never stopped does.
        use swabstream_events::avro::Codec;
        use swabstream_sim::{SimConfig, simulate};
        let cfg = SimConfig { people: 3_000, seed: 11, ..SimConfig::default() };
        let codec = Codec::shared();
        let payloads: Vec<Vec<u8>> = simulate(&cfg)
            .events
            .iter()
            .map(|e| {
                let mut b = Vec::new();
                codec.encode(e, &mut b);
                b
            })
            .collect();
        let ts = cfg.day.start().plus_secs(2 * 86_400);
        let apply = |s: &mut PartitionState, from: usize, to: usize| {
            let mut dlq = Vec::new();
            for (i, p) in payloads.iter().enumerate().take(to).skip(from) {
                let r = Record { offset: i as i64, timestamp: ts, key: None, payload: Some(p) };
                s.apply(r, &mut dlq);
            }
        };
        let half = payloads.len() / 2;
        let mut s = PartitionState::new(CoreConfig::default());
        apply(&mut s, 0, half);
        let m = s.memory();
        assert!(m.event_ids > 1_000 && m.person_days > 200 && m.codes > 1_000, "{m:?}");
        let old = s.snapshot_as(2);
        assert_eq!(u16::from_le_bytes([old[6], old[7]]), 2);
        let mut restored = PartitionState::restore(&old, CoreConfig::default()).unwrap();
        assert_eq!(restored.memory(), s.memory());
        assert_eq!(restored.snapshot(), s.snapshot(), "and it is rewritten as version 3");
        let saved = (m.event_ids + m.person_days) * 4;
        assert_eq!(old.len() - s.snapshot().len(), saved, "4 bytes fewer per id and person-day");
        apply(&mut s, half, payloads.len());
        apply(&mut restored, half, payloads.len());
        assert_eq!(restored.views(), s.views());
        assert_eq!(restored.counts(), s.counts());
        assert!(s.counts().duplicates > 0, "the second half repeats ids of the first");
    }
}
