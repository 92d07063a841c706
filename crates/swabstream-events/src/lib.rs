//! swabstream's events: what flows through the `sampling-events` topic.
//!
//! - [`model`]: the three event types of SPEC §2 and the vocabulary the rules
//!   and views speak (districts, reject reasons, scan methods).
//! - [`time`]: instants and the city's local days and hours.
//! - [`json`]: the JSON form (HTTP bodies, JSON-lines files), with errors that
//!   name the field.
//! - [`avro`]: the wire form, Avro, with a hand-written codec for the current
//!   schema (the hot path) and schema resolution for older versions.
//! - [`framing`]: Avro single-object encoding, and Confluent framing through a
//!   schema registry.
//! - [`pseudonym`]: turning an ID number into a `person_ref` at the edge.
//!
//! Architecture invariant: this crate does no IO.

pub mod avro;
pub mod framing;
pub mod json;
pub mod model;
pub mod pseudonym;
pub mod time;

pub use model::{
    Body, Channel, CodeIssued, CodeKind, DISTRICTS, Event, Identification, PersonRef, Reason,
    RelativeCodeAudited, SampleScanned, ScanMethod, ShapeError, Verification, district_index,
};
pub use pseudonym::PseudonymKey;
pub use time::{Day, Timestamp};
