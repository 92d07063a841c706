//! The per-partition state machine of SPEC §3: decode, dedupe, validate, project.

use swabstream_events::avro::{Codec, DecodeError};
use swabstream_events::{
    Body, CodeKind, Day, Event, Identification, Reason, ScanMethod, Timestamp, Verification,
    district_index,
};
use swabstream_views::{ViewRow, ViewSet};

use crate::effects::{DlqRecord, Outcome, OutcomeCounts};
use crate::keys::{CodeKey, CodeSlot, EventKey, IdSlot, PersonDayKey, PersonKey};
use crate::placement::Placement;
use crate::table::{Found, FpTable};
use crate::views::PartitionViews;

/// How far `occurred_at` may be ahead of the record's Kafka timestamp (SPEC §3: 5 minutes).
pub const FUTURE_TOLERANCE_SECS: i64 = 5 * 60;
/// How long before the scan a live code may have been rendered (SPEC §3: 60 s).
pub const LIVE_BEFORE_SECS: i64 = 60;
/// How long after the scan a live code may have been rendered (clock skew; SPEC §3: 5 s).
pub const LIVE_AFTER_SECS: i64 = 5;

/// Settings of the state machine. Every worker of one topic must use the same,
/// since they decide what the views are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// Days of event time that dedupe and sampling state are kept behind the
    /// newest accepted `occurred_at` (SPEC §3.2: at least 7).
    pub retention_days: u16,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig { retention_days: 7 }
    }
}

/// A Kafka record as the core sees it.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub offset: i64,
    /// The record's timestamp (CreateTime or LogAppendTime), or
    /// [`Record::NO_TIMESTAMP`]. One outside [`Timestamp::MIN`]..=[`Timestamp::MAX`]
    /// (none included) makes the record `MALFORMED`: see [`PartitionState::apply`].
    pub timestamp: Timestamp,
    /// The record's key; `None` for a record without one. With a
    /// [`Placement`] set, it must be the event's `person_ref` as 64 lowercase
    /// hex characters, partitioned into this partition (SPEC §3.1).
    pub key: Option<&'a [u8]>,
    /// The record's value; `None` for a record without one (a tombstone).
    pub payload: Option<&'a [u8]>,
}

impl Record<'_> {
    /// The timestamp of a record Kafka gave none (-1: a producer of the
    /// pre-0.10 message format). Out of range, so the record is `MALFORMED`:
    /// `IN_FUTURE` is judged against the record timestamp, and substituting
    /// the clock of the moment it is applied would make a replay differ from
    /// the live run. From the DLQ, `dlq redrive` gives it a timestamp.
    pub const NO_TIMESTAMP: Timestamp = Timestamp(i64::MIN);
}

/// The state of one partition: what it must remember to apply the next record,
/// and its partial views.
///
/// It is a pure function of the records applied so far (SPEC §3): no clock, no
/// IO, no randomness. Its memory is bounded by the retention rule: event ids and
/// person-days older than `retention_days` behind the watermark (the newest
/// accepted `occurred_at`) are forgotten, and so are codes that expired that
/// long ago. Forgetting is decided when a record is looked up, against the
/// watermark of that moment; the physical sweep that frees the memory runs
/// when the watermark's day moves, and never changes an outcome.
#[derive(Debug)]
pub struct PartitionState {
    pub(crate) config: CoreConfig,
    codec: &'static Codec,
    /// The offset after the last applied record.
    pub(crate) next_offset: Option<i64>,
    /// The newest `occurred_at` among accepted events.
    pub(crate) watermark: Option<Timestamp>,
    /// The last day the sweep ran for.
    pub(crate) swept_for: Option<Day>,
    /// Seen event ids, with the local day of their `occurred_at`.
    pub(crate) ids: FpTable<IdSlot>,
    /// Persons sampled on a day (their first valid scan of it was seen).
    pub(crate) person_days: FpTable<PersonDayKey>,
    /// Codes held, by (person, code_id).
    pub(crate) codes: FpTable<CodeSlot>,
    pub(crate) views: PartitionViews,
    pub(crate) counts: OutcomeCounts,
    /// Which partition of how many this is, if its owner said: the owner's
    /// fact, not state, so never in a snapshot.
    placement: Option<Placement>,
}

impl PartitionState {
    /// An empty partition, before its first record.
    pub fn new(config: CoreConfig) -> Self {
        PartitionState {
            config,
            codec: Codec::shared(),
            next_offset: None,
            watermark: None,
            swept_for: None,
            ids: FpTable::default(),
            person_days: FpTable::default(),
            codes: FpTable::default(),
            views: PartitionViews::default(),
            counts: OutcomeCounts::default(),
            placement: None,
        }
    }

    /// Tells the state which partition of the topic it is, so that rule 1
    /// (SPEC §3.1) checks each record's key and partition: one that does not
    /// belong here is `WRONG_PARTITION`. Without a placement (the default, and
    /// after [`Self::restore`]: it is not state) the check is skipped.
    pub fn set_placement(&mut self, placement: Option<Placement>) {
        self.placement = placement;
    }

    /// Which partition of the topic this is, if set.
    pub fn placement(&self) -> Option<Placement> {
        self.placement
    }

    /// The settings this state was made with.
    pub fn config(&self) -> CoreConfig {
        self.config
    }

    /// The offset after the last applied record; where consumption resumes.
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// The newest `occurred_at` among accepted events.
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }

    /// How many records ended each way so far.
    pub fn counts(&self) -> &OutcomeCounts {
        &self.counts
    }

    /// Applies one record: decodes it, then applies the event, or sends the
    /// record to `dlq` as `MALFORMED`.
    ///
    /// Rule 1 (SPEC §3.1) also holds the record timestamp to years 0001–9999:
    /// one outside them, or none ([`Record::NO_TIMESTAMP`]), makes the record
    /// `MALFORMED` with a detail naming the record timestamp. A malformed record
    /// counts on the local day of its record timestamp; without a usable one, on
    /// the day of its event's `occurred_at` if the value decodes, else on the
    /// day of the partition's watermark, else on 1970-01-01. All of these are
    /// functions of the log, never of the clock, so a replay counts the same.
    ///
    /// With a [`Placement`] set, rule 1 also holds the record to its partition:
    /// a decoded record whose key is not its event's `person_ref` in lowercase
    /// hex, or whose key murmur2 puts in another partition, is
    /// `WRONG_PARTITION`, counted like a rejection (on the local day of its
    /// `occurred_at`, in the district it names if known), before dedupe.
    pub fn apply(&mut self, record: Record<'_>, dlq: &mut Vec<DlqRecord>) -> Outcome {
        let prepared = self.prepare(&record);
        self.apply_prepared(&record, &prepared, dlq)
    }

    /// Applies an already decoded event. `key` is the record's key (checked
    /// as in [`Self::apply`]) and `payload` its original value, copied to the
    /// DLQ if the event is rejected.
    pub fn apply_event(
        &mut self,
        offset: i64,
        record_ts: Timestamp,
        key: Option<&[u8]>,
        event: &Event<'_>,
        payload: &[u8],
        dlq: &mut Vec<DlqRecord>,
    ) -> Outcome {
        if self.is_applied(offset) {
            return self.finish(offset, Outcome::Skipped);
        }
        // The decoders hold every instant to SPEC §3.1's range; an event made
        // some other way is held to it here, so that no view gets a day its
        // store cannot read back. Its occurred_at may be the bad instant, so
        // the day does not come from it.
        if let Err(e) = event.check_instants() {
            let day = self.malformed_day(record_ts, None);
            return self.malformed(offset, day, payload, &e.to_string(), dlq);
        }
        let keys = Keys::of(event);
        self.apply_decoded(offset, record_ts, key, event, &keys, payload, dlq)
    }

    /// Applies records in order and returns what they produced; the rows
    /// changed by the batch are taken with [`Self::take_changes`].
    ///
    /// Same outcomes as [`Self::apply`] record by record, only faster: the
    /// batch is decoded and fingerprinted first, and while one record is
    /// applied, the table slots of a record a few places ahead are prefetched,
    /// so the cache misses of the state's large tables overlap.
    pub fn apply_batch(
        &mut self,
        records: &[Record<'_>],
        dlq: &mut Vec<DlqRecord>,
    ) -> OutcomeCounts {
        // Records are prepared AHEAD places in front of the one applied, into
        // a ring that stays in L1, and applied from it by reference: a
        // prepared record is a few hundred bytes, and collecting a whole
        // batch of them, then moving each out, cost a tenth of the time in copies.
        const AHEAD: usize = 6;
        const RING: usize = 8;
        const _: () = assert!(RING > AHEAD && RING.is_power_of_two());
        let before = self.counts;
        let mut ring: [Option<Prepared<'_>>; RING] = [const { None }; RING];
        for (i, r) in records.iter().enumerate().take(AHEAD) {
            ring[i % RING] = Some(self.prepare(r));
        }
        for (i, record) in records.iter().enumerate() {
            if let Some(ahead) = records.get(i + AHEAD) {
                let p = self.prepare(ahead);
                if let Prepared::Event(_, keys) = &p {
                    self.prefetch(keys);
                }
                ring[(i + AHEAD) % RING] = Some(p);
            }
            let p = ring[i % RING].as_ref().expect("each record is prepared before it is applied");
            self.apply_prepared(record, p, dlq);
        }
        self.counts.since(&before)
    }

    fn prepare<'a>(&self, record: &Record<'a>) -> Prepared<'a> {
        match record.payload {
            None => Prepared::Malformed(None),
            Some(payload) => match self.codec.decode(payload) {
                Ok(event) => {
                    let keys = Keys::of(&event);
                    Prepared::Event(event, keys)
                }
                Err(e) => Prepared::Malformed(Some(e)),
            },
        }
    }

    fn apply_prepared(
        &mut self,
        record: &Record<'_>,
        prepared: &Prepared<'_>,
        dlq: &mut Vec<DlqRecord>,
    ) -> Outcome {
        let payload = record.payload.unwrap_or_default();
        // Checked when applying, not when preparing: a batch may hold the same offset twice.
        if self.is_applied(record.offset) {
            return self.finish(record.offset, Outcome::Skipped);
        }
        let (offset, ts) = (record.offset, record.timestamp);
        match prepared {
            Prepared::Malformed(None) => {
                let day = self.malformed_day(ts, None);
                self.malformed(offset, day, payload, "the record has no value", dlq)
            }
            Prepared::Malformed(Some(e)) => {
                let day = self.malformed_day(ts, None);
                self.malformed(offset, day, payload, &e.to_string(), dlq)
            }
            Prepared::Event(event, keys) => {
                self.apply_decoded(offset, ts, record.key, event, keys, payload, dlq)
            }
        }
    }

    fn prefetch(&self, keys: &Keys) {
        self.ids.prefetch(&IdSlot::probe(keys.id));
        if let Some(code) = keys.code {
            self.codes.prefetch(&CodeSlot::probe(code));
        }
        if let Some(pd) = keys.person_day {
            self.person_days.prefetch(&pd);
        }
    }

    /// Rule 1's checks of the record timestamp and of the record's key and
    /// partition, then the rules of the event.
    #[allow(clippy::too_many_arguments)]
    fn apply_decoded(
        &mut self,
        offset: i64,
        record_ts: Timestamp,
        key: Option<&[u8]>,
        event: &Event<'_>,
        keys: &Keys,
        payload: &[u8],
        dlq: &mut Vec<DlqRecord>,
    ) -> Outcome {
        if !record_ts.is_in_range() {
            let day = self.malformed_day(record_ts, Some(event.occurred_at));
            return self.malformed(offset, day, payload, &record_timestamp_problem(record_ts), dlq);
        }
        // Before dedupe: a misrouted copy must not make a correctly routed
        // one of the same event a duplicate, and it changes no state.
        if let Some(why) = self.placement.and_then(|p| p.misplaced(key, &event.person_ref.0)) {
            let reason = Reason::WrongPartition;
            self.views.count_rejection(keys.day, reason, keys.district);
            dlq.push(DlqRecord { offset, reason, detail: why, payload: payload.to_vec() });
            return self.finish(offset, Outcome::Rejected(reason));
        }
        self.apply_keyed(offset, record_ts, event, keys, payload, dlq)
    }

    fn apply_keyed(
        &mut self,
        offset: i64,
        record_ts: Timestamp,
        event: &Event<'_>,
        keys: &Keys,
        payload: &[u8],
        dlq: &mut Vec<DlqRecord>,
    ) -> Outcome {
        let day = keys.day;
        let cutoff = self.cutoff_day();

        // Rule 2: exact dedupe, valid or not. An id seen before the cutoff
        // counts as unseen, and its entry is renewed. (A day in range always
        // packs: the decoders hold instants to it.)
        let seen = IdSlot::new(keys.id, day).filter(|_| day >= cutoff);
        match self.ids.find(&IdSlot::probe(keys.id)) {
            Found::Entry(old) if old.day() >= cutoff => {
                self.views.count_duplicate(day);
                return self.finish(offset, Outcome::Duplicate);
            }
            Found::Entry(old) => {
                if let Some(seen) = seen {
                    *old = seen;
                }
            }
            Found::Vacant(place) => {
                if let Some(seen) = seen {
                    place.insert(seen);
                }
            }
        }

        // Rule 3: validate; rule 4: project.
        let outcome = match self.validate(event, keys, record_ts) {
            Err((reason, district)) => {
                self.views.count_rejection(day, reason, district);
                dlq.push(DlqRecord {
                    offset,
                    reason,
                    detail: String::new(),
                    payload: payload.to_vec(),
                });
                Outcome::Rejected(reason)
            }
            Ok(method) => {
                self.project(event, keys, method);
                self.advance_watermark(event.occurred_at);
                Outcome::Accepted
            }
        };
        self.finish(offset, outcome)
    }

    /// The rows changed since the last call, with their absolute (partial) values:
    /// what a worker writes to the view store together with [`Self::next_offset`].
    pub fn take_changes(&mut self) -> Vec<ViewRow> {
        self.views.take_changes()
    }

    /// The rows changed since they were last taken, left marked as changed;
    /// [`Self::clear_changes`] once they are written.
    pub fn changes(&self) -> Vec<ViewRow> {
        self.views.changes()
    }

    /// Marks every row as written.
    pub fn clear_changes(&mut self) {
        self.views.clear_dirty();
    }

    /// Whether rows changed since they were last taken.
    pub fn has_changes(&self) -> bool {
        self.views.has_changes()
    }

    /// Every partial row this partition holds.
    pub fn rows(&self) -> Vec<ViewRow> {
        self.views.rows()
    }

    /// This partition's views (summed over its own rows, `percent_using_code` derived).
    pub fn views(&self) -> ViewSet {
        ViewSet::from_rows(self.rows())
    }

    /// Memory held by each part of the state, in bytes (from table capacities).
    pub fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            event_ids: self.ids.len(),
            event_id_bytes: self.ids.heap_bytes(),
            person_days: self.person_days.len(),
            person_day_bytes: self.person_days.heap_bytes(),
            codes: self.codes.len(),
            code_bytes: self.codes.heap_bytes(),
            view_bytes: self.views.heap_bytes(),
        }
    }

    fn is_applied(&self, offset: i64) -> bool {
        self.next_offset.is_some_and(|next| offset < next)
    }

    fn finish(&mut self, offset: i64, outcome: Outcome) -> Outcome {
        self.counts.record(outcome);
        if outcome != Outcome::Skipped {
            self.next_offset = Some(offset + 1);
        }
        outcome
    }

    fn malformed(
        &mut self,
        offset: i64,
        day: Day,
        payload: &[u8],
        detail: &str,
        dlq: &mut Vec<DlqRecord>,
    ) -> Outcome {
        // Rule 1: counted on `day` (see `malformed_day`), city-wide only.
        self.views.count_rejection(day, Reason::Malformed, None);
        dlq.push(DlqRecord {
            offset,
            reason: Reason::Malformed,
            detail: detail.to_owned(),
            payload: payload.to_vec(),
        });
        self.finish(offset, Outcome::Rejected(Reason::Malformed))
    }

    /// The day a malformed record counts on (SPEC §3.1, §4): the local day of
    /// its record timestamp. Without a usable one (none, or out of range; its
    /// day might not even be a `YYYY-MM-DD`), a deterministic stand-in: the day
    /// of the event's `occurred_at` if it decoded, else that of the watermark,
    /// where the partition's accepted events are, else 1970-01-01 for a
    /// partition that accepted none yet. Every candidate is in range, so the
    /// day always reads back from the view store.
    fn malformed_day(&self, record_ts: Timestamp, occurred_at: Option<Timestamp>) -> Day {
        [Some(record_ts), occurred_at, self.watermark]
            .into_iter()
            .flatten()
            .find(|t| t.is_in_range())
            .map_or(Day(0), Timestamp::local_day)
    }

    /// The first local day whose state is still kept.
    fn cutoff_day(&self) -> Day {
        match self.watermark {
            Some(w) => Day(w.local_day().0 - i32::from(self.config.retention_days)),
            None => Day(i32::MIN),
        }
    }

    /// Rule 3. On success, for a scan, how the person was identified; on
    /// failure the reason and, for a scan naming a known district, its index.
    fn validate(
        &self,
        event: &Event<'_>,
        keys: &Keys,
        record_ts: Timestamp,
    ) -> Result<Option<ScanMethod>, (Reason, Option<u8>)> {
        let in_future = event.occurred_at > record_ts.plus_secs(FUTURE_TOLERANCE_SECS);
        let Body::SampleScanned(scan) = &event.body else {
            return if in_future { Err((Reason::InFuture, None)) } else { Ok(None) };
        };
        let Some(district) = keys.district else {
            return Err((Reason::DistrictUnknown, None));
        };
        let fail = |reason| Err((reason, Some(district)));
        if in_future {
            return fail(Reason::InFuture);
        }
        let generated_at = match &scan.identification {
            Identification::IdDocument => return Ok(Some(ScanMethod::IdDocument)),
            Identification::DeclaredId => return Ok(Some(ScanMethod::DeclaredId)),
            Identification::Code { generated_at, .. } => *generated_at,
        };
        let Some(code) = keys.code.and_then(|k| self.code(k)) else {
            return fail(Reason::CodeUnknown);
        };
        let kind = code.kind();
        if event.occurred_at.micros() > code.expires_at() {
            return fail(Reason::CodeExpired);
        }
        if matches!(kind, CodeKind::Dynamic | CodeKind::Relative) {
            let live = generated_at.is_some_and(|g| {
                g >= event.occurred_at.plus_secs(-LIVE_BEFORE_SECS)
                    && g <= event.occurred_at.plus_secs(LIVE_AFTER_SECS)
            });
            if !live {
                return fail(Reason::CodeNotLive);
            }
        }
        if kind == CodeKind::Relative && !code.verified() {
            return fail(Reason::RelativeUnverified);
        }
        Ok(Some(ScanMethod::of_code(kind)))
    }

    /// A code the person holds, unless it expired more than the retention ago.
    fn code(&self, key: CodeKey) -> Option<CodeSlot> {
        let code = *self.codes.get(&CodeSlot::probe(key))?;
        (code.expires_at() >= self.code_cutoff()).then_some(code)
    }

    /// Codes that expired before this instant (micros) are forgotten.
    fn code_cutoff(&self) -> i64 {
        match self.watermark {
            Some(w) => w.plus_secs(-i64::from(self.config.retention_days) * 86_400).micros(),
            None => i64::MIN,
        }
    }

    /// Rule 4, and the state changes of valid `CodeIssued` and audits.
    fn project(&mut self, event: &Event<'_>, keys: &Keys, method: Option<ScanMethod>) {
        let day = keys.day;
        match &event.body {
            Body::CodeIssued(c) => {
                let verified = matches!(
                    c.verification,
                    Some(Verification::AutoHousehold | Verification::BirthCertificate)
                );
                let expires_at = c.expires_at.map_or(i64::MAX, Timestamp::micros);
                // An expiry in range always packs (the decoders hold instants to it).
                if let Some(key) = keys.code
                    && let Some(code) = CodeSlot::new(key, c.kind, verified, expires_at)
                {
                    self.codes.insert(code);
                }
                self.views.count_code_issued(day, c.kind, c.channel);
            }
            Body::RelativeCodeAudited(a) => {
                let Some(key) = keys.code else { return };
                if self.code(key).is_some_and(|c| c.kind() == CodeKind::Relative)
                    && let Some(code) = self.codes.get_mut(&CodeSlot::probe(key))
                {
                    code.set_verified(a.approved);
                }
            }
            Body::SampleScanned(s) => {
                let (Some(method), Some(district), Some(person_day)) =
                    (method, keys.district, keys.person_day)
                else {
                    debug_assert!(false, "a valid scan has a method, a known district and keys");
                    return;
                };
                // A person-day older than the retention counts as unseen, like an event id.
                let first =
                    day < self.cutoff_day() || self.person_days.insert(person_day).is_none();
                let first = first.then_some(method);
                self.views.count_scan(
                    day,
                    event.occurred_at.local_hour(),
                    district,
                    &s.site_id,
                    first,
                );
            }
        }
    }

    fn advance_watermark(&mut self, t: Timestamp) {
        if self.watermark.is_some_and(|w| w >= t) {
            return;
        }
        self.watermark = Some(t);
        let day = t.local_day();
        if self.swept_for != Some(day) {
            self.swept_for = Some(day);
            self.sweep();
        }
    }

    /// Frees what the retention rule already made invisible.
    fn sweep(&mut self) {
        let cutoff = self.cutoff_day();
        let code_cutoff = self.code_cutoff();
        self.ids.retain_from(i64::from(cutoff.0));
        self.person_days.retain_from(i64::from(cutoff.0));
        self.codes.retain_from(code_cutoff);
    }
}

/// The DLQ detail of a record whose timestamp is missing or out of range.
fn record_timestamp_problem(ts: Timestamp) -> String {
    if ts == Record::NO_TIMESTAMP {
        "the record timestamp is missing (Kafka gave -1), and IN_FUTURE is judged against it"
            .to_owned()
    } else {
        format!("the record timestamp ({} ms) {}", ts.millis(), Timestamp::OUT_OF_RANGE)
    }
}

/// What a record's rules look up, computed once: its fingerprints, the local
/// day of its `occurred_at`, and a scan's district.
#[derive(Clone, Copy, Debug)]
struct Keys {
    id: EventKey,
    /// For events that name a code.
    code: Option<CodeKey>,
    /// For scans: the person on the scan's local day.
    person_day: Option<PersonDayKey>,
    /// The local day of `occurred_at`.
    day: Day,
    /// For scans naming one of the 16 districts: its index.
    district: Option<u8>,
}

impl Keys {
    fn of(event: &Event<'_>) -> Keys {
        let id = EventKey::of(&event.event_id);
        let day = event.occurred_at.local_day();
        let p = &event.person_ref;
        let (code, person_day, district) = match &event.body {
            Body::CodeIssued(c) => (Some(CodeKey::of(p, &c.code_id)), None, None),
            Body::RelativeCodeAudited(a) => (Some(CodeKey::of(p, &a.code_id)), None, None),
            Body::SampleScanned(s) => {
                let (person, code) = match &s.identification {
                    Identification::Code { code_id, .. } => {
                        let (person, code) = CodeKey::with_person(p, code_id);
                        (person, Some(code))
                    }
                    _ => (PersonKey::of(p), None),
                };
                (code, PersonDayKey::new(person, day), district_index(&s.district))
            }
        };
        Keys { id, code, person_day, day, district }
    }
}

/// A record made ready to apply: decoded and fingerprinted, or not decodable.
enum Prepared<'a> {
    Malformed(Option<DecodeError>),
    Event(Event<'a>, Keys),
}

/// Memory held by a partition's state, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub event_ids: usize,
    pub event_id_bytes: usize,
    pub person_days: usize,
    pub person_day_bytes: usize,
    pub codes: usize,
    pub code_bytes: usize,
    pub view_bytes: usize,
}

impl MemoryUsage {
    pub fn total(&self) -> usize {
        self.event_id_bytes + self.person_day_bytes + self.code_bytes + self.view_bytes
    }
}
