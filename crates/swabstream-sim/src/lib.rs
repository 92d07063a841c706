//! swabstream's simulator: a realistic sampling day as events, in publish
//! order, and its ground truth, the six views of SPEC §4 as they must come out.
//!
//! Each person follows one of a small set of scenarios (a personal code scanned
//! once; a stale screenshot of a dynamic code, then the live code; a relative
//! code still waiting for its audit, then the ID document; ...), each with its
//! outcomes written down by hand, plus independent trouble layered on top
//! (faulty scanners, rescans, midnight, producer retries, re-issued codes).
//! The truth is counted from those intended outcomes; it never comes from
//! running the rules, so it can check the rules engine.
//!
//! What the truth assumes of whoever publishes the events: only the events
//! stamped 2122 (a scanner and a code-system node with wrong clocks) are
//! `IN_FUTURE`. Every other event occurs before the local midnight that ends
//! the day after the sampling day, and is sent (see
//! [`Simulation::timed_events`]) no earlier than it occurs; so record
//! timestamps may be the send times, or any one time from that midnight until
//! the year 2100 ("now", when publishing a file).
//!
//! Raw ID numbers are made, pseudonymised with the configured key, and
//! dropped: they are written nowhere.

mod city;
mod generate;
pub mod idnum;
mod truth;

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use swabstream_events::{
    Body, CodeIssued, CodeKind, DISTRICTS, Day, Event, Identification, PseudonymKey,
    RelativeCodeAudited, SampleScanned, Timestamp, json,
};
use swabstream_views::ViewSet;

use crate::city::UNKNOWN_DISTRICTS;
use crate::generate::{Generated, Generator, Rec, RecBody, RecIdent};

/// The key the simulator pseudonymises with unless told otherwise. Not a
/// secret: simulated people are nobody.
pub const DEMO_KEY: &[u8] = b"swabstream demo pseudonym key (not a secret)";

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many persons: about 98 % of them are sampled on the day, the rest
    /// only hold a code (or were scanned only by a faulty scanner).
    pub people: u64,
    /// Same seed, same events and truth, byte for byte.
    pub seed: u64,
    /// The sampling day (local, UTC+8). Codes are issued in the five days
    /// before it; a few people are scanned again just after its midnight.
    pub day: Day,
    /// The pseudonym key that turns ID numbers into `person_ref`s.
    pub key: PseudonymKey,
    /// Late and out-of-order data, as the seed's day had (off by default;
    /// off, the day is byte for byte what it was without the option): the
    /// code system is down from 07:00 to 10:00, so the `CodeIssued` of some
    /// people who got their code that morning is sent up to 90 minutes after
    /// it came back, after the scans that use it (which are `CODE_UNKNOWN`);
    /// and the first scanner of every 20th site publishes what it buffered
    /// from 08:00 to 12:00 at 15:00. The truth is then the day after one
    /// `dlq redrive --reason CODE_UNKNOWN` once everything was published and
    /// applied (SPEC §9: the held scans count once, each other `CODE_UNKNOWN`
    /// is rejected again, and every original rejection stays counted);
    /// [`Simulation::truth_before_redrive`] is the day before it.
    pub late_data: bool,
}

impl Default for SimConfig {
    /// 100,000 people on 2022-04-09, seed 1, the [`DEMO_KEY`].
    fn default() -> Self {
        SimConfig {
            people: 100_000,
            seed: 1,
            day: Day::from_civil(2022, 4, 9).expect("a real date"),
            key: PseudonymKey::new(DEMO_KEY.to_vec()).expect("the demo key is long enough"),
            late_data: false,
        }
    }
}

/// A simulated day, materialised: the events in publish order and the truth.
#[derive(Clone, Debug)]
pub struct SimulatedDay {
    pub events: Vec<Event<'static>>,
    pub truth: ViewSet,
}

/// Simulates a day, all events in memory (about 400 bytes an event, about
/// 1.9 events a person). For millions of people, [`generate`] and
/// [`Simulation::events`] stream them instead.
pub fn simulate(cfg: &SimConfig) -> SimulatedDay {
    let sim = generate(cfg);
    let events = sim.events().collect();
    SimulatedDay { events, truth: sim.truth }
}

/// Simulates a day, keeping the events compact (about 100 bytes an event);
/// they are made one at a time by [`Simulation::events`].
pub fn generate(cfg: &SimConfig) -> Simulation {
    let generated = Generator::new(cfg.seed, cfg.people, cfg.day, &cfg.key)
        .late_data(cfg.late_data)
        .run(cfg.people);
    Simulation::new(cfg, generated)
}

/// A simulated day, compact. Events are made on demand, in publish order.
pub struct Simulation {
    day: Day,
    people: u64,
    generated: Generated,
    truth: ViewSet,
    truth_before_redrive: Option<ViewSet>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("day", &self.day)
            .field("people", &self.people)
            .field("events", &self.len())
            .finish_non_exhaustive()
    }
}

impl Simulation {
    fn new(cfg: &SimConfig, mut generated: Generated) -> Simulation {
        let truth = std::mem::take(&mut generated.truth).into_view_set(&generated.site_ids);
        let truth_before_redrive =
            generated.truth_before_redrive.take().map(|t| t.into_view_set(&generated.site_ids));
        Simulation { day: cfg.day, people: cfg.people, generated, truth, truth_before_redrive }
    }

    /// The ground-truth views (with late data: after the redrive).
    pub fn truth(&self) -> &ViewSet {
        &self.truth
    }

    /// With late data, the views before `dlq redrive --reason CODE_UNKNOWN`.
    pub fn truth_before_redrive(&self) -> Option<&ViewSet> {
        self.truth_before_redrive.as_ref()
    }

    /// How many events (duplicates included).
    pub fn len(&self) -> usize {
        self.generated.order.len()
    }

    /// Whether there are no events at all.
    pub fn is_empty(&self) -> bool {
        self.generated.order.is_empty()
    }

    /// The events in publish order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = Event<'static>> + '_ {
        self.generated.order.iter().map(|&i| self.event(&self.generated.recs[i as usize]))
    }

    /// The events in publish order, each with the time its producer sends it
    /// (never before its `occurred_at`, except for clocks set to 2122; never
    /// decreasing), e.g. for Kafka record timestamps.
    pub fn timed_events(&self) -> impl ExactSizeIterator<Item = (Timestamp, Event<'static>)> + '_ {
        self.generated.order.iter().map(|&i| {
            let rec = &self.generated.recs[i as usize];
            (Timestamp(rec.send), self.event(rec))
        })
    }

    /// Counts for a closing line.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.truth, self.day, self.people, self.len() as u64)
    }

    fn event(&self, rec: &Rec) -> Event<'static> {
        let body = match rec.body {
            RecBody::Issue { kind, channel, code, expires_at, verification } => {
                Body::CodeIssued(CodeIssued {
                    code_id: Cow::Owned(code_id(kind, code)),
                    kind,
                    channel,
                    expires_at: expires_at.map(Timestamp),
                    verification,
                })
            }
            RecBody::Audit { code, approved } => Body::RelativeCodeAudited(RelativeCodeAudited {
                code_id: Cow::Owned(code_id(CodeKind::Relative, code)),
                approved,
            }),
            RecBody::Scan { site, scanner, district, tube, ident } => {
                let site_id = &self.generated.site_ids[site as usize];
                let district = match district {
                    d @ 0..16 => DISTRICTS[usize::from(d)].0,
                    d => UNKNOWN_DISTRICTS[usize::from(d - 16)],
                };
                Body::SampleScanned(SampleScanned {
                    site_id: Cow::Owned(site_id.clone()),
                    district: Cow::Borrowed(district),
                    tube_id: Cow::Owned(format!("{site_id}-T{tube:04}")),
                    scanner_id: Cow::Owned(format!("{site_id}-D{}", scanner + 1)),
                    identification: match ident {
                        RecIdent::Code { kind, code, generated_at } => Identification::Code {
                            code_id: Cow::Owned(code_id(kind, code)),
                            generated_at: generated_at.map(Timestamp),
                        },
                        RecIdent::IdDocument => Identification::IdDocument,
                        RecIdent::DeclaredId => Identification::DeclaredId,
                    },
                })
            }
        };
        Event {
            event_id: Cow::Owned(uuid(rec.event_id)),
            person_ref: self.generated.persons[rec.person as usize],
            occurred_at: Timestamp(rec.occurred),
            body,
        }
    }
}

/// `PER-`, `PAP-`, `DYN-` or `REL-` and 16 hex digits.
fn code_id(kind: CodeKind, code: u64) -> String {
    let prefix = match kind {
        CodeKind::Personal => "PER",
        CodeKind::Paper => "PAP",
        CodeKind::Dynamic => "DYN",
        CodeKind::Relative => "REL",
    };
    format!("{prefix}-{code:016x}")
}

/// A random (version 4) UUID's text form.
fn uuid(bits: u128) -> String {
    let v = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xffff,
        (v >> 64) & 0xffff,
        (v >> 48) & 0xffff,
        v & 0xffff_ffff_ffff
    )
}

/// Counts of a simulated day, for a closing line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The sampling day.
    pub day: Day,
    /// Persons simulated.
    pub people: u64,
    /// Events written, duplicates included.
    pub events: u64,
    /// People sampled on the day.
    pub sampled: u64,
    /// Of them, identified with a code.
    pub using_code: u64,
    /// People sampled on other days (just after midnight).
    pub sampled_other_days: u64,
    /// Valid scans, all days.
    pub valid_scans: u64,
    /// Rejected events, all days.
    pub rejected: u64,
    /// Duplicate events, all days.
    pub duplicates: u64,
    /// Valid `CodeIssued` events.
    pub codes_issued: u64,
}

impl Summary {
    fn of(truth: &ViewSet, day: Day, people: u64, events: u64) -> Summary {
        let today = truth.city(day);
        let all = |f: fn(&swabstream_views::CityDaily) -> u64| truth.city_daily.iter().map(f).sum();
        let sampled = today.map_or(0, |c| c.people_sampled);
        Summary {
            day,
            people,
            events,
            sampled,
            using_code: today.map_or(0, |c| c.using_code),
            sampled_other_days: all(|c| c.people_sampled) - sampled,
            valid_scans: all(|c| c.valid_scans),
            rejected: all(|c| c.rejected),
            duplicates: all(|c| c.duplicates),
            codes_issued: truth.codes_issued_daily.iter().map(|r| r.count).sum(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events for {} people: {} sampled on {}",
            self.events, self.people, self.sampled, self.day
        )?;
        if let Some(p) = swabstream_views::percent(self.using_code, self.sampled) {
            write!(f, " ({p:.1} % using a code)")?;
        }
        write!(
            f,
            ", {} sampled on other days, {} valid scans, {} rejected, {} duplicates, {} codes issued",
            self.sampled_other_days,
            self.valid_scans,
            self.rejected,
            self.duplicates,
            self.codes_issued
        )
    }
}

/// Simulates a day and writes `dir/events.jsonl` (one JSON event a line, in
/// publish order) and `dir/truth.json` (the views, pretty JSON; with late
/// data also `dir/truth-before-redrive.json`). Makes `dir` if needed. Events are written as they are made, never all in memory.
pub fn write_files(cfg: &SimConfig, dir: &Path) -> io::Result<Summary> {
    let sim = generate(cfg);
    fs::create_dir_all(dir)?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join("events.jsonl"))?);
    for event in sim.events() {
        out.write_all(json::to_json(&event).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let mut out = BufWriter::new(File::create(dir.join("truth.json"))?);
    serde_json::to_writer_pretty(&mut out, sim.truth())?;
    out.write_all(b"\n")?;
    out.flush()?;
    if let Some(before) = sim.truth_before_redrive() {
        let mut out = BufWriter::new(File::create(dir.join("truth-before-redrive.json"))?);
        serde_json::to_writer_pretty(&mut out, before)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(sim.summary())
}

#[cfg(test)]
mod tests;
