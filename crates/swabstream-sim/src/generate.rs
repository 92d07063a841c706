//! The day, person by person.
//!
//! Each person follows one [`Scenario`]: a short, hand-written story of the
//! codes they were issued and the scans they went through, in which every
//! event's outcome (valid, or rejected for which reason) is written down with
//! it. A few independent layers add trouble that does not change those
//! outcomes: a faulty scanner in front of the visit, rescans, a visit across
//! midnight, producer retries (duplicates), re-issued codes. The truth is then
//! the projection of SPEC §3.4 over those known outcomes, person by person, in
//! the person's publish order: it never runs the validation rules.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swabstream_events::{
    Channel, CodeKind, Day, PersonRef, PseudonymKey, Reason, ScanMethod, Timestamp, Verification,
};

use crate::city::{City, Fault, HOUR_WEIGHTS, Pick};
use crate::idnum::IdMaker;
use crate::truth::Truth;

pub(crate) const MS: i64 = 1_000;
pub(crate) const SEC: i64 = 1_000_000;
pub(crate) const MIN: i64 = 60 * SEC;
pub(crate) const HOUR: i64 = 60 * MIN;
pub(crate) const DAY: i64 = 24 * HOUR;

/// Share of people with a trouble-free history whose visit starts at a scanner
/// that sends an unknown district code.
pub(crate) const P_FAULTY_DISTRICT: f64 = 0.0025;
/// ... or at a scanner whose clock is in 2122.
pub(crate) const P_FAULTY_CLOCK: f64 = 0.0015;
/// After a faulty scanner, the share whose visit goes on at a good scanner
/// (the others are not sampled at all).
pub(crate) const P_RETRY_AFTER_FAULT: f64 = 0.75;
/// Sampled people scanned again later the same day, at the same site...
pub(crate) const P_RESCAN_HERE: f64 = 0.012;
/// ... or at another site, hours later.
pub(crate) const P_RESCAN_ELSEWHERE: f64 = 0.003;
/// Sampled people who come at 23:45–23:58 and are scanned again just after midnight.
pub(crate) const P_MIDNIGHT: f64 = 0.0015;
/// Events the producer sends twice right away (a retry after a lost ack).
pub(crate) const P_DUP_SOON: f64 = 0.005;
/// Events the producer sends again one to twelve hours later (a resend of its buffer).
pub(crate) const P_DUP_LATE: f64 = 0.0015;
/// People registered by ID document or declared ID who have a personal code anyway.
pub(crate) const P_CODE_BUT_ID: f64 = 0.30;
/// Personal and dynamic codes issued a second time (same `code_id`).
pub(crate) const P_REISSUE: f64 = 0.03;

/// With late data (`SimConfig::late_data`): the code system is down from
/// 07:00 to 10:00 local on the day. Codes issued meanwhile are held and sent
/// when it is back, over the next 90 minutes.
pub(crate) const OUTAGE_START_H: i64 = 7;
pub(crate) const OUTAGE_END_H: i64 = 10;
/// People of the `Personal` scenario whose first scan falls in the outage
/// and who got their code minutes before it, that morning.
pub(crate) const P_ISSUED_IN_OUTAGE: f64 = 0.4;
/// With late data: one scanner (the first) of every 20th site loses its
/// connection from 08:00 to 12:00 and publishes its buffer from 15:00 on.
pub(crate) const BACKLOG_SITE_EVERY: u32 = 20;
pub(crate) const BACKLOG_START_H: i64 = 8;
pub(crate) const BACKLOG_END_H: i64 = 12;
pub(crate) const BACKLOG_SENT_H: i64 = 15;

/// One person's story. Outcomes are per scan attempt, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Issued a code (82 % personal, 13 % dynamic, 5 % paper), never sampled.
    CodeNeverSampled,
    /// Personal code → valid (CODE_PERSONAL). A quarter of the scans carry a
    /// `generated_at` hours or days old: a screenshot is fine for a personal code.
    Personal,
    /// Paper code, valid for a week → valid (CODE_PAPER).
    Paper,
    /// Dynamic code, live → valid (CODE_DYNAMIC).
    Dynamic,
    /// Relative code verified by household register or birth certificate, live → valid.
    RelativeVerified,
    /// Relative code MANUAL_PENDING, audit approved, live → valid (CODE_RELATIVE).
    RelativeApproved,
    /// Dynamic code: stale screenshot → CODE_NOT_LIVE; live → valid.
    DynamicStale,
    /// Verified relative code: stale screenshot → CODE_NOT_LIVE; live → valid.
    RelativeStale,
    /// Dynamic code on a phone whose clock runs minutes ahead → CODE_NOT_LIVE;
    /// declared ID → valid.
    DynamicClockAhead,
    /// Relative code MANUAL_PENDING, never audited → RELATIVE_UNVERIFIED; ID document → valid.
    RelativePending,
    /// Relative code approved, then an audit rejects it → RELATIVE_UNVERIFIED;
    /// ID document → valid.
    RelativeApprovedThenRejected,
    /// Relative code AUTO_HOUSEHOLD, re-issued (same code) as MANUAL_PENDING →
    /// RELATIVE_UNVERIFIED; declared ID → valid.
    RelativeReissuedPending,
    /// Paper code that expired the day before yesterday → CODE_EXPIRED; ID document → valid.
    PaperExpired,
    /// Has a personal code, first shows the previous person's (a family
    /// member's) → CODE_UNKNOWN; own code → valid.
    WrongCode,
    /// Shows a code never issued in the stream → CODE_UNKNOWN; declared ID → valid.
    UnissuedCode,
    /// Personal code issued by a code-system node whose clock is in 2122
    /// (IN_FUTURE, so never issued) → CODE_UNKNOWN; declared ID → valid.
    FutureIssue,
    /// ID document → valid.
    IdDocument,
    /// Declared ID number → valid.
    DeclaredId,
}

/// The scenarios and their weights, per 10,000 people.
pub(crate) const SCENARIOS: [(Scenario, u64); 18] = [
    (Scenario::CodeNeverSampled, 200),
    (Scenario::Personal, 5800),
    (Scenario::Paper, 450),
    (Scenario::Dynamic, 600),
    (Scenario::RelativeVerified, 250),
    (Scenario::RelativeApproved, 60),
    (Scenario::DynamicStale, 120),
    (Scenario::RelativeStale, 30),
    (Scenario::DynamicClockAhead, 20),
    (Scenario::RelativePending, 40),
    (Scenario::RelativeApprovedThenRejected, 20),
    (Scenario::RelativeReissuedPending, 15),
    (Scenario::PaperExpired, 60),
    (Scenario::WrongCode, 40),
    (Scenario::UnissuedCode, 25),
    (Scenario::FutureIssue, 15),
    (Scenario::IdDocument, 1500),
    (Scenario::DeclaredId, 755),
];

/// What the validation rules will say about an event, known by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Valid,
    Rejected(Reason),
}

/// How a scan identified the person, as it goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecIdent {
    Code { kind: CodeKind, code: u64, generated_at: Option<i64> },
    IdDocument,
    DeclaredId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecBody {
    Issue {
        kind: CodeKind,
        channel: Channel,
        code: u64,
        expires_at: Option<i64>,
        verification: Option<Verification>,
    },
    /// Audits are of relative codes.
    Audit { code: u64, approved: bool },
    Scan {
        site: u32,
        /// 0-based; shown 1-based.
        scanner: u8,
        /// Below 16: index into `DISTRICTS`; else `UNKNOWN_DISTRICTS[district - 16]`.
        district: u8,
        tube: u32,
        ident: RecIdent,
    },
}

/// One event, compactly: strings are made only when it is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    /// When the producer sends it (µs): the publish order.
    pub send: i64,
    /// `occurred_at` (µs).
    pub occurred: i64,
    pub event_id: u128,
    pub person: u32,
    /// The index of the original of a duplicate, else its own index.
    pub orig: u32,
    pub body: RecBody,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    Never,
    /// Valid for a week from issue: past every scan of the day.
    Week,
    /// Expired 12–36 hours after issue, which was 3–5 days before the day:
    /// before the day starts.
    Lapsed,
}

#[derive(Clone, Copy, Debug)]
enum Pre {
    Issue {
        code: u64,
        kind: CodeKind,
        channel: Channel,
        verification: Option<Verification>,
        expiry: Expiry,
        /// Stamped 2122 by a code-system node: rejected IN_FUTURE.
        future: bool,
    },
    Audit {
        code: u64,
        approved: bool,
    },
}

/// How a code is on the screen (or paper) when scanned.
#[derive(Clone, Copy, Debug)]
enum Screen {
    /// A personal code: no `generated_at`, or an old one (a screenshot is fine).
    Static,
    /// A paper code: no `generated_at`.
    Printed,
    /// Rendered 0.3–50 s before the scan, or up to 4 s after (a clock a little ahead).
    Live,
    /// A screenshot: no `generated_at`, or 75 s–40 min old.
    Stale,
    /// A phone clock 30 s–15 min ahead.
    Ahead,
}

#[derive(Clone, Copy, Debug)]
enum Ident {
    Code { code: u64, kind: CodeKind, screen: Screen },
    IdDocument,
    DeclaredId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The visit's first attempt.
    First,
    /// 20–150 s after the previous attempt, same site.
    Retry,
    /// 3–90 min later, same site.
    RescanHere,
    /// 1–5 h later, at another site.
    RescanElsewhere,
    /// Just after midnight, same site.
    NextDay,
}

#[derive(Clone, Copy, Debug)]
struct Attempt {
    ident: Ident,
    outcome: Outcome,
    step: Step,
    /// At the visit site's faulty scanner.
    faulty: bool,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    rec: Rec,
    outcome: Outcome,
    /// For a duplicate: the position of its original in the person's sequence.
    dup_of: Option<usize>,
    /// A scan rejected `CODE_UNKNOWN` only because its code's `CodeIssued`
    /// was held by the code system's outage: valid when redriven.
    held_code: bool,
}

/// Everything generated: the compact events, their publish order, the truth.
#[derive(Debug)]
pub(crate) struct Generated {
    pub persons: Vec<PersonRef>,
    pub site_ids: Vec<String>,
    pub recs: Vec<Rec>,
    /// Indices into `recs`, in publish order.
    pub order: Vec<u32>,
    pub truth: Truth,
    /// With late data: the truth before the `CODE_UNKNOWN` redrive.
    pub truth_before_redrive: Option<Truth>,
    /// The raw ID numbers, when asked for (tests only).
    #[cfg(test)]
    pub raw_ids: Option<Vec<String>>,
}

pub(crate) struct Generator<'a> {
    key: &'a PseudonymKey,
    rng: ChaCha8Rng,
    city: City,
    day_start: i64,
    /// From the day to the same date a hundred years on.
    future_shift: i64,
    ids: IdMaker,
    scenarios: Pick,
    hours: Pick,
    last_personal_code: Option<u64>,
    persons: Vec<PersonRef>,
    recs: Vec<Rec>,
    truth: Truth,
    /// Late data: the outage and the scanner backlog, and a second truth.
    before_redrive: Option<Truth>,
    #[cfg(test)]
    raw_ids: Option<Vec<String>>,
    // Scratch, reused from person to person.
    pre: Vec<Pre>,
    attempts: Vec<Attempt>,
    items: Vec<Item>,
    base: Vec<Item>,
    late: Vec<(usize, i64)>,
    days: Vec<Day>,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("persons", &self.persons.len()).finish_non_exhaustive()
    }
}

impl<'a> Generator<'a> {
    pub fn new(seed: u64, people: u64, day: Day, key: &'a PseudonymKey) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let city = City::new(&mut rng, people);
        let (y, m, d) = day.civil();
        let future = Day::from_civil(y + 100, m, d).unwrap_or(Day(day.0 + 36_524));
        let cap = usize::try_from(people).unwrap_or(usize::MAX).min(1 << 28);
        Generator {
            key,
            rng,
            city,
            day_start: day.start().micros(),
            future_shift: i64::from(future.0 - day.0) * DAY,
            ids: IdMaker::default(),
            scenarios: Pick::new(SCENARIOS.iter().map(|s| s.1)),
            hours: Pick::new(HOUR_WEIGHTS),
            last_personal_code: None,
            persons: Vec::with_capacity(cap),
            recs: Vec::with_capacity(cap.saturating_mul(2)),
            truth: Truth::default(),
            before_redrive: None,
            #[cfg(test)]
            raw_ids: None,
            pre: Vec::new(),
            attempts: Vec::new(),
            items: Vec::new(),
            base: Vec::new(),
            late: Vec::new(),
            days: Vec::new(),
        }
    }

    /// Keeps the raw ID numbers, so that a test can look for them.
    #[cfg(test)]
    pub fn keep_raw_ids(mut self) -> Self {
        self.raw_ids = Some(Vec::new());
        self
    }

    /// The day with late and out-of-order data (see `SimConfig::late_data`).
    pub fn late_data(mut self, on: bool) -> Self {
        self.before_redrive = on.then(Truth::default);
        self
    }

    pub fn run(mut self, people: u64) -> Generated {
        assert!(people < u64::from(u32::MAX) / 4, "too many people for one simulated day");
        for p in 0..people {
            self.person(p as u32);
        }
        assign_tubes(&mut self.recs);
        let mut order: Vec<(i64, u32)> =
            self.recs.iter().enumerate().map(|(i, r)| (r.send, i as u32)).collect();
        // By send time; among equal times by generation order, which keeps
        // every person's own order (their send times never decrease).
        order.sort_unstable();
        Generated {
            persons: self.persons,
            site_ids: self.city.site_ids,
            recs: self.recs,
            order: order.into_iter().map(|(_, i)| i).collect(),
            truth: self.truth,
            truth_before_redrive: self.before_redrive,
            #[cfg(test)]
            raw_ids: self.raw_ids,
        }
    }

    fn person(&mut self, p: u32) {
        let scenario = SCENARIOS[self.scenarios.pick(&mut self.rng)].0;
        let home = self.city.districts.pick(&mut self.rng);
        let years = self.birth_years(scenario);
        let raw = self.ids.make(&mut self.rng, home, years);
        let person_ref = self.key.person_ref(&raw).expect("an ID number is 18 letters and digits");
        #[cfg(test)]
        if let Some(kept) = &mut self.raw_ids {
            kept.push(raw);
        }
        #[cfg(not(test))]
        drop(raw);
        self.persons.push(person_ref);

        self.pre.clear();
        self.attempts.clear();
        self.items.clear();
        self.plan(scenario);
        self.maybe_reissue();
        let visit_site = self.visit_site_and_faults(home);
        self.maybe_rescan_and_midnight();
        self.emit_pre();
        self.emit_attempts(visit_site);
        if self.before_redrive.is_some() {
            self.late_and_out_of_order(scenario);
        }
        self.add_duplicates();
        self.project();
        let first = self.recs.len() as u32;
        for (i, item) in self.items.iter().enumerate() {
            let mut rec = item.rec;
            rec.person = p;
            rec.orig = first + item.dup_of.unwrap_or(i) as u32;
            self.recs.push(rec);
        }
    }

    fn birth_years(&mut self, scenario: Scenario) -> std::ops::RangeInclusive<u32> {
        use Scenario::*;
        match scenario {
            Paper | PaperExpired => 1926..=1957,
            RelativeVerified
            | RelativeApproved
            | RelativeStale
            | RelativePending
            | RelativeApprovedThenRejected
            | RelativeReissuedPending => {
                if self.rng.gen_bool(0.5) {
                    2008..=2021
                } else {
                    1926..=1950
                }
            }
            _ => 1945..=2004,
        }
    }

    /// The scenario's codes, audits and scan attempts with their outcomes.
    fn plan(&mut self, scenario: Scenario) {
        use CodeKind::{Dynamic, Paper, Personal, Relative};
        use Outcome::{Rejected, Valid};
        use Screen::{Ahead, Live, Printed, Stale, Static};
        use Verification::{AutoHousehold, BirthCertificate, ManualPending};
        let code = |code, kind, screen| Ident::Code { code, kind, screen };
        match scenario {
            Scenario::CodeNeverSampled => {
                let kind = match self.rng.gen_range(0..100) {
                    0..5 => Paper,
                    5..18 => Dynamic,
                    _ => Personal,
                };
                let expiry = if kind == Paper { Expiry::Week } else { Expiry::Never };
                self.issue(kind, None, expiry);
            }
            Scenario::Personal => {
                let c = self.issue(Personal, None, Expiry::Never);
                self.attempt(code(c, Personal, Static), Valid);
            }
            Scenario::Paper => {
                let c = self.issue(Paper, None, Expiry::Week);
                self.attempt(code(c, Paper, Printed), Valid);
            }
            Scenario::Dynamic => {
                let c = self.issue(Dynamic, None, Expiry::Never);
                self.attempt(code(c, Dynamic, Live), Valid);
            }
            Scenario::RelativeVerified => {
                let v = if self.rng.gen_bool(0.7) { AutoHousehold } else { BirthCertificate };
                let c = self.issue(Relative, Some(v), Expiry::Never);
                self.attempt(code(c, Relative, Live), Valid);
            }
            Scenario::RelativeApproved => {
                let c = self.issue(Relative, Some(ManualPending), Expiry::Never);
                self.pre.push(Pre::Audit { code: c, approved: true });
                self.attempt(code(c, Relative, Live), Valid);
            }
            Scenario::DynamicStale => {
                let c = self.issue(Dynamic, None, Expiry::Never);
                self.attempt(code(c, Dynamic, Stale), Rejected(Reason::CodeNotLive));
                self.attempt(code(c, Dynamic, Live), Valid);
            }
            Scenario::RelativeStale => {
                let v = if self.rng.gen_bool(0.7) { AutoHousehold } else { BirthCertificate };
                let c = self.issue(Relative, Some(v), Expiry::Never);
                self.attempt(code(c, Relative, Stale), Rejected(Reason::CodeNotLive));
                self.attempt(code(c, Relative, Live), Valid);
            }
            Scenario::DynamicClockAhead => {
                let c = self.issue(Dynamic, None, Expiry::Never);
                self.attempt(code(c, Dynamic, Ahead), Rejected(Reason::CodeNotLive));
                self.attempt(Ident::DeclaredId, Valid);
            }
            Scenario::RelativePending => {
                let c = self.issue(Relative, Some(ManualPending), Expiry::Never);
                self.attempt(code(c, Relative, Live), Rejected(Reason::RelativeUnverified));
                self.attempt(Ident::IdDocument, Valid);
            }
            Scenario::RelativeApprovedThenRejected => {
                let c = self.issue(Relative, Some(ManualPending), Expiry::Never);
                self.pre.push(Pre::Audit { code: c, approved: true });
                self.pre.push(Pre::Audit { code: c, approved: false });
                self.attempt(code(c, Relative, Live), Rejected(Reason::RelativeUnverified));
                self.attempt(Ident::IdDocument, Valid);
            }
            Scenario::RelativeReissuedPending => {
                let c = self.issue(Relative, Some(AutoHousehold), Expiry::Never);
                let channel = self.channel(Relative);
                self.pre.push(Pre::Issue {
                    code: c,
                    kind: Relative,
                    channel,
                    verification: Some(ManualPending),
                    expiry: Expiry::Never,
                    future: false,
                });
                self.attempt(code(c, Relative, Live), Rejected(Reason::RelativeUnverified));
                self.attempt(Ident::DeclaredId, Valid);
            }
            Scenario::PaperExpired => {
                let c = self.issue(Paper, None, Expiry::Lapsed);
                self.attempt(code(c, Paper, Printed), Rejected(Reason::CodeExpired));
                self.attempt(Ident::IdDocument, Valid);
            }
            Scenario::WrongCode => {
                let other = match self.last_personal_code {
                    Some(c) => c,
                    None => self.rng.next_u64(),
                };
                let own = self.issue(Personal, None, Expiry::Never);
                self.attempt(code(other, Personal, Static), Rejected(Reason::CodeUnknown));
                self.attempt(code(own, Personal, Static), Valid);
            }
            Scenario::UnissuedCode => {
                let c = self.rng.next_u64();
                self.attempt(code(c, Personal, Static), Rejected(Reason::CodeUnknown));
                self.attempt(Ident::DeclaredId, Valid);
            }
            Scenario::FutureIssue => {
                let c = self.rng.next_u64();
                let channel = self.channel(Personal);
                self.pre.push(Pre::Issue {
                    code: c,
                    kind: Personal,
                    channel,
                    verification: None,
                    expiry: Expiry::Never,
                    future: true,
                });
                self.attempt(code(c, Personal, Static), Rejected(Reason::CodeUnknown));
                self.attempt(Ident::DeclaredId, Valid);
            }
            Scenario::IdDocument | Scenario::DeclaredId => {
                if self.rng.gen_bool(P_CODE_BUT_ID) {
                    self.issue(Personal, None, Expiry::Never);
                }
                let ident = if scenario == Scenario::IdDocument {
                    Ident::IdDocument
                } else {
                    Ident::DeclaredId
                };
                self.attempt(ident, Valid);
            }
        }
    }

    /// Plans a valid `CodeIssued` of a fresh code; returns the code.
    fn issue(&mut self, kind: CodeKind, verification: Option<Verification>, expiry: Expiry) -> u64 {
        let code = self.rng.next_u64();
        let channel = self.channel(kind);
        self.pre.push(Pre::Issue { code, kind, channel, verification, expiry, future: false });
        if kind == CodeKind::Personal {
            self.last_personal_code = Some(code);
        }
        code
    }

    fn channel(&mut self, kind: CodeKind) -> Channel {
        if kind == CodeKind::Paper {
            return Channel::Offline;
        }
        match self.rng.gen_range(0..100) {
            0..35 => Channel::App,
            35..75 => Channel::Wechat,
            _ => Channel::Alipay,
        }
    }

    fn attempt(&mut self, ident: Ident, outcome: Outcome) {
        let step = if self.attempts.is_empty() { Step::First } else { Step::Retry };
        self.attempts.push(Attempt { ident, outcome, step, faulty: false });
    }

    /// A lone personal or dynamic code is sometimes issued again, same
    /// `code_id` and kind (the channel may differ): it replaces the first,
    /// changes nothing for the scans, and counts again in `codes_issued_daily`.
    fn maybe_reissue(&mut self) {
        if self.pre.len() != 1 {
            return;
        }
        let Pre::Issue { code, kind, future: false, .. } = self.pre[0] else {
            return;
        };
        if !matches!(kind, CodeKind::Personal | CodeKind::Dynamic) || !self.rng.gen_bool(P_REISSUE)
        {
            return;
        }
        let channel = self.channel(kind);
        self.pre.push(Pre::Issue {
            code,
            kind,
            channel,
            verification: None,
            expiry: Expiry::Never,
            future: false,
        });
    }

    /// Where the visit happens: usually a site of the home district; for a
    /// few, a site with a faulty scanner, where the first attempt is rejected
    /// for the fault (DISTRICT_UNKNOWN and IN_FUTURE come before every code
    /// rule) and the visit then goes on at a good scanner, or ends there.
    fn visit_site_and_faults(&mut self, home: usize) -> u32 {
        if self.attempts.is_empty() {
            return 0;
        }
        let u: f64 = self.rng.gen_range(0.0..1.0);
        let (sites, reason) = if u < P_FAULTY_DISTRICT {
            (&self.city.district_faults, Reason::DistrictUnknown)
        } else if u < P_FAULTY_DISTRICT + P_FAULTY_CLOCK {
            (&self.city.clock_faults, Reason::InFuture)
        } else {
            return self.city.site_in(&mut self.rng, home);
        };
        let site = sites[self.rng.gen_range(0..sites.len())];
        let first = self.attempts[0];
        self.attempts[0].step = Step::Retry;
        self.attempts.insert(
            0,
            Attempt {
                ident: first.ident,
                outcome: Outcome::Rejected(reason),
                step: Step::First,
                faulty: true,
            },
        );
        if !self.rng.gen_bool(P_RETRY_AFTER_FAULT) {
            self.attempts.truncate(1);
        }
        site
    }

    /// After a visit that ended with a valid scan: maybe a rescan, maybe a
    /// visit at midnight with a second scan on the next day. Both use the way
    /// the person was just identified, which stays valid.
    fn maybe_rescan_and_midnight(&mut self) {
        let Some(last) = self.attempts.last().copied() else {
            return;
        };
        if last.outcome != Outcome::Valid {
            return;
        }
        let again =
            |step| Attempt { ident: last.ident, outcome: Outcome::Valid, step, faulty: false };
        let u: f64 = self.rng.gen_range(0.0..1.0);
        if u < P_RESCAN_HERE {
            self.attempts.push(again(Step::RescanHere));
        } else if u < P_RESCAN_HERE + P_RESCAN_ELSEWHERE {
            self.attempts.push(again(Step::RescanElsewhere));
        }
        if self.rng.gen_bool(P_MIDNIGHT) {
            self.attempts.push(again(Step::NextDay));
        }
    }

    /// A uniform time in `[lo, hi)`, to the millisecond.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.gen_range(lo / MS..hi / MS) * MS
    }

    fn event_id(&mut self) -> u128 {
        (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64())
    }

    /// Codes and audits, at sorted times in the five days before the day.
    fn emit_pre(&mut self) {
        if self.pre.is_empty() {
            return;
        }
        let lapsed =
            self.pre.iter().any(|p| matches!(p, Pre::Issue { expiry: Expiry::Lapsed, .. }));
        // A day among the five before (the 5th or 4th for a paper code that
        // lapses before the day), at an hour of the daily curve.
        let days_before = if lapsed { 4..=5 } else { 1..=5 };
        let mut times = [0i64; 4];
        let times = &mut times[..self.pre.len()];
        for t in times.iter_mut() {
            let k = self.rng.gen_range(days_before.clone());
            let hour = self.hours.pick(&mut self.rng) as i64;
            *t = self.day_start - k * DAY + hour * HOUR + self.between(0, HOUR);
        }
        times.sort_unstable();
        for (i, &t) in times.iter().enumerate() {
            let (body, occurred, outcome) = match self.pre[i] {
                Pre::Issue { code, kind, channel, verification, expiry, future } => {
                    let expires_at = match expiry {
                        Expiry::Never => None,
                        Expiry::Week => Some(t + 7 * DAY),
                        Expiry::Lapsed => Some(t + self.between(12 * HOUR, 36 * HOUR)),
                    };
                    let body = RecBody::Issue { kind, channel, code, expires_at, verification };
                    if future {
                        (body, t + self.future_shift, Outcome::Rejected(Reason::InFuture))
                    } else {
                        (body, t, Outcome::Valid)
                    }
                }
                Pre::Audit { code, approved } => {
                    (RecBody::Audit { code, approved }, t, Outcome::Valid)
                }
            };
            let send = t + self.between(10 * MS, SEC);
            let rec = Rec { send, occurred, event_id: self.event_id(), person: 0, orig: 0, body };
            self.items.push(Item { rec, outcome, dup_of: None, held_code: false });
        }
    }

    fn emit_attempts(&mut self, visit_site: u32) {
        if self.attempts.is_empty() {
            return;
        }
        let midnight = self.attempts.iter().any(|a| a.step == Step::NextDay);
        let start = if midnight {
            self.day_start + 23 * HOUR + 45 * MIN + self.between(0, 13 * MIN)
        } else {
            let hour = self.hours.pick(&mut self.rng) as i64;
            self.day_start + hour * HOUR + self.between(0, HOUR)
        };
        let mut t = start;
        for i in 0..self.attempts.len() {
            let a = self.attempts[i];
            t = match a.step {
                Step::First => start,
                Step::Retry => t + self.between(20 * SEC, 150 * SEC),
                Step::RescanHere => t + self.between(3 * MIN, 90 * MIN),
                Step::RescanElsewhere => t + self.between(HOUR, 5 * HOUR),
                Step::NextDay => {
                    let after_midnight = self.day_start + DAY + self.between(5 * SEC, 15 * MIN);
                    after_midnight.max(t + MIN)
                }
            };
            let site = if a.step == Step::RescanElsewhere {
                let d = self.city.districts.pick(&mut self.rng);
                self.city.site_in(&mut self.rng, d)
            } else {
                visit_site
            };
            let s = &self.city.sites[site as usize];
            let (scanner, district, occurred) = if a.faulty {
                match s.fault {
                    Fault::District(k) => (s.scanners - 1, 16 + k, t),
                    Fault::Clock => (s.scanners - 1, s.district, t + self.future_shift),
                    Fault::None => unreachable!("a faulty attempt is at a faulty site"),
                }
            } else {
                let good = s.good_scanners();
                let district = s.district;
                (self.rng.gen_range(0..good), district, t)
            };
            let ident = self.render(a.ident, t);
            let send = t + self.between(50 * MS, 3 * SEC);
            let body = RecBody::Scan { site, scanner, district, tube: 0, ident };
            let rec = Rec { send, occurred, event_id: self.event_id(), person: 0, orig: 0, body };
            self.items.push(Item { rec, outcome: a.outcome, dup_of: None, held_code: false });
        }
    }

    /// The identification as the scanner sends it, for a scan at real time `t`.
    fn render(&mut self, ident: Ident, t: i64) -> RecIdent {
        let (code, kind, screen) = match ident {
            Ident::IdDocument => return RecIdent::IdDocument,
            Ident::DeclaredId => return RecIdent::DeclaredId,
            Ident::Code { code, kind, screen } => (code, kind, screen),
        };
        let generated_at = match screen {
            Screen::Static => self.rng.gen_bool(0.25).then(|| t - self.between(SEC, 2 * DAY)),
            Screen::Printed => None,
            Screen::Live => {
                if self.rng.gen_bool(0.9) {
                    Some(t - self.between(300 * MS, 50 * SEC))
                } else {
                    Some(t + self.between(0, 4 * SEC))
                }
            }
            Screen::Stale => {
                if self.rng.gen_bool(0.4) {
                    None
                } else {
                    Some(t - self.between(75 * SEC, 40 * MIN))
                }
            }
            Screen::Ahead => Some(t + self.between(30 * SEC, 15 * MIN)),
        };
        RecIdent::Code { kind, code, generated_at }
    }

    /// Late data: a `Personal` person who got their code that morning while
    /// the code system was down has it sent after the outage, so the scans
    /// published before it are `CODE_UNKNOWN` (valid when redriven); and a
    /// backlogged scanner's scans are sent hours late. Then the person's
    /// events are put in send order, which is their log order.
    fn late_and_out_of_order(&mut self, scenario: Scenario) {
        let (start, end) =
            (self.day_start + OUTAGE_START_H * HOUR, self.day_start + OUTAGE_END_H * HOUR);
        let issues: Vec<usize> = (0..self.items.len())
            .filter(|&i| matches!(self.items[i].rec.body, RecBody::Issue { .. }))
            .collect();
        let first_scan = self
            .items
            .iter()
            .find(|i| matches!(i.rec.body, RecBody::Scan { .. }))
            .map(|i| i.rec.occurred);
        if let (Scenario::Personal, &[issue], Some(t)) = (scenario, issues.as_slice(), first_scan)
            && (start..end).contains(&t)
            && self.rng.gen_bool(P_ISSUED_IN_OUTAGE)
        {
            let issued = (t - self.between(2 * MIN, 40 * MIN)).max(start);
            let send = end + self.between(0, 90 * MIN);
            let rec = &mut self.items[issue].rec;
            rec.occurred = issued;
            rec.send = send;
        }
        for k in 0..self.items.len() {
            let rec = self.items[k].rec;
            if let RecBody::Scan { site, scanner: 0, .. } = rec.body
                && site % BACKLOG_SITE_EVERY == 3
                && (self.day_start + BACKLOG_START_H * HOUR..self.day_start + BACKLOG_END_H * HOUR)
                    .contains(&rec.send)
            {
                self.items[k].rec.send =
                    self.day_start + BACKLOG_SENT_H * HOUR + self.between(0, HOUR);
            }
        }
        // Stable: equal send times keep the generation order.
        self.items.sort_by_key(|i| i.rec.send);
        // Scans published before their code are CODE_UNKNOWN.
        let mut issued = false;
        for item in &mut self.items {
            match item.rec.body {
                RecBody::Issue { .. } => issued = true,
                RecBody::Scan { ident: RecIdent::Code { .. }, .. }
                    if !issued
                        && item.outcome == Outcome::Valid
                        && scenario == Scenario::Personal =>
                {
                    item.outcome = Outcome::Rejected(Reason::CodeUnknown);
                    item.held_code = true;
                }
                _ => {}
            }
        }
    }

    /// Producer retries: some events again right after, some hours later (at
    /// the end of the person's sequence). Then send times are made to never
    /// decrease along the sequence, so that publishing by send time keeps it.
    fn add_duplicates(&mut self) {
        std::mem::swap(&mut self.items, &mut self.base);
        self.items.clear();
        self.late.clear();
        for k in 0..self.base.len() {
            let item = self.base[k];
            self.items.push(item);
            let i = self.items.len() - 1;
            let u: f64 = self.rng.gen_range(0.0..1.0);
            if u < P_DUP_SOON {
                let mut dup = item;
                dup.dup_of = Some(i);
                dup.rec.send += self.between(200 * MS, 5 * SEC);
                self.items.push(dup);
            } else if u < P_DUP_SOON + P_DUP_LATE {
                let delay = self.between(HOUR, 12 * HOUR);
                self.late.push((i, delay));
            }
        }
        for &(i, delay) in &self.late {
            let mut dup = self.items[i];
            dup.dup_of = Some(i);
            dup.rec.send += delay;
            self.items.push(dup);
        }
        for i in 1..self.items.len() {
            let prev = self.items[i - 1].rec.send;
            let rec = &mut self.items[i].rec;
            rec.send = rec.send.max(prev);
        }
    }

    /// SPEC §3.4 over the person's known outcomes, in publish order. With
    /// late data, `truth` is the day after one redrive of `CODE_UNKNOWN` at
    /// its end (SPEC §9: each such record's event again, at the end of the
    /// person's log, in log order; the rejections stay counted) and
    /// `before_redrive` the day before it.
    fn project(&mut self) {
        if let Some(before) = &mut self.before_redrive {
            project_items(before, &mut self.days, self.items.iter().copied());
            let redriven = self
                .items
                .iter()
                .filter(|i| {
                    i.dup_of.is_none() && i.outcome == Outcome::Rejected(Reason::CodeUnknown)
                })
                .map(|i| Item {
                    outcome: if i.held_code { Outcome::Valid } else { i.outcome },
                    ..*i
                })
                .collect::<Vec<_>>();
            project_items(
                &mut self.truth,
                &mut self.days,
                self.items.iter().copied().chain(redriven),
            );
        } else {
            project_items(&mut self.truth, &mut self.days, self.items.iter().copied());
        }
    }
}

/// SPEC §3.4 over one person's items, in order.
fn project_items(truth: &mut Truth, days: &mut Vec<Day>, items: impl Iterator<Item = Item>) {
    {
        days.clear();
        for item in items {
            let day = Timestamp(item.rec.occurred).local_day();
            if item.dup_of.is_some() {
                truth.city(day).duplicates += 1;
                continue;
            }
            match (item.outcome, item.rec.body) {
                (Outcome::Rejected(reason), body) => {
                    truth.city(day).rejected += 1;
                    *truth.rejection(day, reason) += 1;
                    if let RecBody::Scan { district, .. } = body
                        && district < 16
                    {
                        truth.district(day, district).rejected += 1;
                    }
                }
                (Outcome::Valid, RecBody::Issue { kind, channel, .. }) => {
                    *truth.codes(day, kind, channel) += 1;
                }
                (Outcome::Valid, RecBody::Audit { .. }) => {}
                (Outcome::Valid, RecBody::Scan { site, district, ident, .. }) => {
                    assert!(district < 16, "a valid scan names a known district");
                    let hour = Timestamp(item.rec.occurred).local_hour();
                    truth.city(day).valid_scans += 1;
                    truth.district(day, district).valid_scans += 1;
                    truth.site(day, site, hour).valid_scans += 1;
                    if days.contains(&day) {
                        truth.city(day).rescans += 1;
                        continue;
                    }
                    days.push(day);
                    let method = match ident {
                        RecIdent::Code { kind, .. } => ScanMethod::of_code(kind),
                        RecIdent::IdDocument => ScanMethod::IdDocument,
                        RecIdent::DeclaredId => ScanMethod::DeclaredId,
                    };
                    let code = u64::from(method.is_code());
                    let c = truth.city(day);
                    c.people_sampled += 1;
                    c.using_code += code;
                    let d = truth.district(day, district);
                    d.people_sampled += 1;
                    d.using_code += code;
                    truth.site(day, site, hour).people_sampled += 1;
                    *truth.method(day, method) += 1;
                }
            }
        }
    }
}

/// Ten people to a pooled tube, in the order they were scanned at the site;
/// a duplicate carries its original's tube.
fn assign_tubes(recs: &mut [Rec]) {
    let mut scans: Vec<(u32, i64, u32)> = recs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.body {
            RecBody::Scan { site, .. } if r.orig as usize == i => Some((site, r.send, i as u32)),
            _ => None,
        })
        .collect();
    scans.sort_unstable();
    let mut current = u32::MAX;
    let mut slot = 0u32;
    for (site, _, i) in scans {
        if site != current {
            current = site;
            slot = 0;
        }
        if let RecBody::Scan { tube, .. } = &mut recs[i as usize].body {
            *tube = slot / 10 + 1;
        }
        slot += 1;
    }
    for i in 0..recs.len() {
        let o = recs[i].orig as usize;
        if o != i {
            recs[i].body = recs[o].body;
        }
    }
}
