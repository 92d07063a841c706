//! The wire form of SPEC §2.2: Avro, with the schemas kept under `schemas/`.
//!
//! A [`Codec`] writes the newest schema version this build knows and reads
//! every version (old events stay readable forever: the log is the truth).
//!
//! - **Fast path.** Version 1 — the schema whose Parsing Canonical Form has
//!   the fingerprint [`V1_FINGERPRINT`] — is encoded and decoded by hand:
//!   zigzag varints, length-prefixed strings lent straight out of the input
//!   (`Cow::Borrowed`, UTF-8 checked, no allocation). Every datum written
//!   with v1 takes it, whatever the current schema (as long as the codec
//!   reads v1, which every build does): the reader's schema only matters for
//!   fields the writer lacks, and v1 has every field the model knows.
//! - **General path.** Any other writer schema (an older or newer version, or
//!   one fetched from a schema registry) is first checked by a schema-driven
//!   scan of the bytes (every length must fit in what is left, so no hostile
//!   length makes anyone allocate), then decoded by apache-avro into a
//!   [`Value`], then resolved into the model by Avro's rules: fields by
//!   name, fields the model does not know ignored, missing fields from the
//!   current schema's defaults, union branches by record name.
//!
//! Errors name the field as the JSON form does (`code_id`,
//! `identification.code_id`), so a DLQ entry reads the same whichever form
//! the event came in.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{
    DecimalSchema, InnerDecimalSchema, Name, RecordSchema, ResolvedSchema, UuidSchema,
};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::Value as Json;

use crate::framing::RegistryError;
use crate::model::{
    Body, Channel, CodeIssued, CodeKind, Event, Identification, PersonRef, RelativeCodeAudited,
    SampleScanned, ShapeError, Verification,
};
use crate::time::Timestamp;

/// Version 1 of the event schema, `schemas/sampling-event-v1.avsc`.
pub const SCHEMA_V1: &str = include_str!("../../../schemas/sampling-event-v1.avsc");

/// Every schema version in `schemas/`, oldest first. The last is the one this
/// build writes; all are readable.
///
/// To add a version: put `sampling-event-vN.avsc` in `schemas/` (an added
/// field needs a default), add a `SCHEMA_VN` constant and append it here. Old
/// versions are never removed.
pub const SCHEMAS: &[&str] = &[SCHEMA_V1];

/// CRC-64-AVRO fingerprint of the Parsing Canonical Form of [`SCHEMA_V1`]: the
/// layout the hand-written codec implements. Pinned here, and checked by a test,
/// so that an edit to the v1 file that changes its meaning cannot go unnoticed.
pub const V1_FINGERPRINT: u64 = 0x8f2d_7671_50b0_6c01;

/// The fingerprint apache-avro 0.22 computes for [`SCHEMA_V1`] (see
/// [`parsing_canonical_form`]). Never written; accepted on reading.
pub const V1_APACHE_AVRO_FINGERPRINT: u64 = 0x605c_40cf_7f27_4e57;

/// The two bytes that open an Avro single-object encoding.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// Marker plus the 8-byte little-endian fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;

/// The most nesting the general decoder follows (recursive schemas).
const MAX_DEPTH: u32 = 64;

/// A field name in an error: static on the fast path, built from the writer's
/// schema on the general one.
pub type FieldName = Cow<'static, str>;

/// Why a record could not be decoded into an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside a field, or a length prefix runs past the end of the input.
    #[error("truncated: the input ends inside field `{field}`")]
    Truncated { field: FieldName },
    /// A string field holds bytes that are not UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: FieldName },
    /// A varint longer than 10 bytes, or an `int` outside 32 bits.
    #[error("field `{field}` holds a malformed or out-of-range integer")]
    BadInteger { field: FieldName },
    /// A length prefix is negative.
    #[error("field `{field}` has a negative length ({length})")]
    NegativeLength { field: FieldName, length: i64 },
    /// A boolean byte other than 0 or 1.
    #[error("field `{field}` must be a boolean byte 0 or 1, found {byte:#04x}")]
    BadBoolean { field: FieldName, byte: u8 },
    /// A union branch index the writer's schema does not have.
    #[error(
        "field `{field}` selects union branch {index}, which the writer's schema does not have"
    )]
    BadUnionIndex { field: FieldName, index: i64 },
    /// An enum symbol index the writer's schema does not have.
    #[error(
        "field `{field}` has enum symbol index {index}, which the writer's schema does not have"
    )]
    BadEnumSymbol { field: FieldName, index: i64 },
    /// Bytes left over after a complete record.
    #[error("{0} trailing bytes after the end of the record")]
    TrailingBytes(usize),
    /// The record does not start with the single-object marker `C3 01`.
    #[error("not Avro single-object encoding: the record does not start with the marker C3 01")]
    NotSingleObject,
    /// The writer's schema fingerprint (hex) is not one of `schemas/`.
    #[error(
        "written with a schema this build does not know (fingerprint {0}); \
         add its .avsc to schemas/ and list it in avro::SCHEMAS"
    )]
    UnknownSchema(String),
    /// The record decoded, but breaks a rule of SPEC §2.1 (an empty or too long identifier, say).
    #[error("{0}")]
    Shape(#[from] ShapeError),
    /// The writer's schema cannot be read as this build's events (a required field
    /// missing without a default, an unknown event type or symbol, a type change).
    #[error("cannot read the writer's schema as this build's events: {0}")]
    Resolution(String),
    /// apache-avro could not decode the datum with its writer's schema.
    #[error("undecodable Avro: {0}")]
    Malformed(String),
    /// The first byte opens neither framing (`C3 01` single object, `00` Confluent).
    #[error("{}", unknown_framing(*.0))]
    UnknownFraming(u8),
    /// A Confluent-framed record, but no schema registry is configured to look up its id.
    #[error(
        "Confluent-framed record (schema id {id}) but no schema registry is configured; \
         configure the registry URL, or have producers use single-object framing"
    )]
    NoRegistry { id: u32 },
    /// The schema registry could not give the schema of a Confluent-framed record.
    #[error("fetching schema id {id} from the schema registry: {source}")]
    Registry { id: u32, source: RegistryError },
    /// The schema registry gave a schema text that is not a valid Avro schema.
    #[error("schema id {id} from the schema registry is not a valid Avro schema: {message}")]
    RegistrySchema { id: u32, message: String },
}

fn unknown_framing(first: u8) -> String {
    let hint = if first == b'{' { " (it looks like JSON)" } else { "" };
    format!(
        "unknown framing: first byte {first:#04x} opens neither Avro single-object encoding \
         (C3 01) nor Confluent framing (00){hint}"
    )
}

impl DecodeError {
    /// The field this error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::Truncated { field }
            | DecodeError::InvalidUtf8 { field }
            | DecodeError::BadInteger { field }
            | DecodeError::NegativeLength { field, .. }
            | DecodeError::BadBoolean { field, .. }
            | DecodeError::BadUnionIndex { field, .. }
            | DecodeError::BadEnumSymbol { field, .. } => Some(field),
            DecodeError::Shape(e) => Some(e.field),
            _ => None,
        }
    }
}

/// Why a set of schemas cannot make a [`Codec`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A schema text is not a valid Avro schema.
    #[error("the {which} schema is not a valid Avro schema: {message}")]
    Invalid { which: String, message: String },
    /// The current schema cannot carry every event of the model (a field of an
    /// unsuitable type, a missing symbol, a new field without a default).
    #[error("the current schema cannot carry swabstream's events: {0}")]
    CannotCarryModel(String),
}

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's Parsing Canonical Form,
/// as in the single-object header.
pub fn fingerprint_of(schema: &Schema) -> u64 {
    crc64_avro(parsing_canonical_form(schema).as_bytes())
}

/// The fingerprint apache-avro 0.22 gives a schema (see [`parsing_canonical_form`]
/// for why it can differ); accepted on reading, so that records written by a
/// plain apache-avro single-object writer decode too.
fn apache_avro_fingerprint(schema: &Schema) -> u64 {
    crc64_avro(schema.canonical_form().as_bytes())
}

const CRC64_AVRO_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

static CRC64_AVRO_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (CRC64_AVRO_EMPTY & 0u64.wrapping_sub(fp & 1));
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// The CRC-64-AVRO (Rabin) fingerprint of some bytes, as the Avro
/// specification defines it.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    bytes.iter().fold(CRC64_AVRO_EMPTY, |fp, &b| {
        (fp >> 8) ^ CRC64_AVRO_TABLE[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

/// The Parsing Canonical Form of a schema, as the Avro specification and its
/// Java implementation (`SchemaNormalization`) define it.
///
/// apache-avro 0.22 has its own (`Schema::canonical_form`), but it renders a
/// logical type such as `{"type":"long","logicalType":"timestamp-micros"}` as
/// `{"type":"long"}` where the specification's `[PRIMITIVES]` and `[STRIP]`
/// rules, and Java's `SchemaNormalization`, give `"long"`. Our schema uses
/// `timestamp-micros`, so with apache-avro's form our fingerprint would not
/// match what a Java (or other specification-following) producer puts in a
/// single-object header. This one does; apache-avro's is still accepted on
/// reading.
pub fn parsing_canonical_form(schema: &Schema) -> String {
    let mut out = String::with_capacity(1024);
    let mut defined = std::collections::HashSet::new();
    pcf(schema, &mut defined, &mut out);
    out
}

fn pcf(schema: &Schema, defined: &mut std::collections::HashSet<String>, out: &mut String) {
    use std::fmt::Write as _;
    let primitive = |out: &mut String, name: &str| {
        out.push('"');
        out.push_str(name);
        out.push('"');
    };
    // A named type is spelled out where first met, and referred to by its full name after.
    let named = |out: &mut String,
                 defined: &mut std::collections::HashSet<String>,
                 name: &Name,
                 kind: &str| {
        let full = name.fullname(None);
        if defined.contains(&full) {
            let _ = write!(out, "\"{full}\"");
            false
        } else {
            let _ = write!(out, "{{\"name\":\"{full}\",\"type\":\"{kind}\"");
            defined.insert(full);
            true
        }
    };
    let fixed = |out: &mut String,
                 defined: &mut std::collections::HashSet<String>,
                 f: &apache_avro::schema::FixedSchema| {
        if named(out, defined, &f.name, "fixed") {
            let _ = write!(out, ",\"size\":{}}}", f.size);
        }
    };
    match schema {
        Schema::Null => primitive(out, "null"),
        Schema::Boolean => primitive(out, "boolean"),
        Schema::Int | Schema::Date | Schema::TimeMillis => primitive(out, "int"),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => primitive(out, "long"),
        Schema::Float => primitive(out, "float"),
        Schema::Double => primitive(out, "double"),
        Schema::Bytes
        | Schema::BigDecimal
        | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Bytes, .. })
        | Schema::Uuid(UuidSchema::Bytes) => primitive(out, "bytes"),
        Schema::String | Schema::Uuid(UuidSchema::String) => primitive(out, "string"),
        Schema::Fixed(f)
        | Schema::Duration(f)
        | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(f), .. })
        | Schema::Uuid(UuidSchema::Fixed(f)) => fixed(out, defined, f),
        Schema::Union(u) => {
            out.push('[');
            for (i, b) in u.variants().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(b, defined, out);
            }
            out.push(']');
        }
        Schema::Array(a) => {
            out.push_str("{\"type\":\"array\",\"items\":");
            pcf(&a.items, defined, out);
            out.push('}');
        }
        Schema::Map(m) => {
            out.push_str("{\"type\":\"map\",\"values\":");
            pcf(&m.types, defined, out);
            out.push('}');
        }
        Schema::Enum(e) => {
            if named(out, defined, &e.name, "enum") {
                out.push_str(",\"symbols\":[");
                for (i, s) in e.symbols.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "\"{s}\"");
                }
                out.push_str("]}");
            }
        }
        Schema::Record(r) => {
            if named(out, defined, &r.name, "record") {
                out.push_str(",\"fields\":[");
                for (i, f) in r.fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{{\"name\":\"{}\",\"type\":", f.name);
                    pcf(&f.schema, defined, out);
                    out.push('}');
                }
                out.push_str("]}");
            }
        }
        Schema::Ref { name } => {
            let _ = write!(out, "\"{}\"", name.fullname(None));
        }
    }
}

/// A parsed schema version, ready to decode with.
pub(crate) struct Version {
    schema: Schema,
    /// The named types of `schema`, for following `Ref`s.
    names: HashMap<Name, Schema>,
    fingerprint: u64,
    /// What apache-avro 0.22 computes instead, accepted on reading.
    apache_avro_fingerprint: u64,
    hand_coded: bool,
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.fingerprint)?;
        if self.hand_coded {
            f.write_str(" (hand-coded)")?;
        }
        Ok(())
    }
}

impl Version {
    fn new(schema: Schema) -> Result<Version, String> {
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| e.to_string())?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let fingerprint = fingerprint_of(&schema);
        let apache_avro_fingerprint = apache_avro_fingerprint(&schema);
        Ok(Version {
            schema,
            names,
            fingerprint,
            apache_avro_fingerprint,
            hand_coded: fingerprint == V1_FINGERPRINT,
        })
    }

    fn parse(text: &str, which: &str) -> Result<Version, SchemaError> {
        let invalid = |message: String| SchemaError::Invalid { which: which.to_owned(), message };
        let schema = Schema::parse_str(text).map_err(|e| invalid(e.to_string()))?;
        Version::new(schema).map_err(invalid)
    }

    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn matches(&self, fingerprint: u64) -> bool {
        self.fingerprint == fingerprint || self.apache_avro_fingerprint == fingerprint
    }
}

/// The Avro codec of a build: writes its newest schema, reads all of them.
///
/// Cheap to clone (the parsed schemas are shared).
#[derive(Clone)]
pub struct Codec {
    inner: Arc<Inner>,
}

struct Inner {
    current_text: String,
    /// Every readable version; `versions[0]` is the current one.
    versions: Vec<Arc<Version>>,
    /// The current schema's field defaults, by (record name, field name), for
    /// fields an older writer's schema lacks.
    defaults: HashMap<(String, String), Json>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("writes", &self.inner.versions[0])
            .field("reads", &self.inner.versions)
            .finish()
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    /// The codec of this build: writes the newest of [`SCHEMAS`], reads them all.
    pub fn new() -> Codec {
        Codec::shared().clone()
    }

    /// The codec of this build, parsed once per process.
    pub fn shared() -> &'static Codec {
        static SHARED: OnceLock<Codec> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (current, older) = SCHEMAS.split_last().expect("SCHEMAS is never empty");
            Codec::with_schemas(current, older)
                .expect("the schemas in schemas/ are valid (checked by the tests)")
        })
    }

    /// A codec writing `current` and reading it and every schema in `older`:
    /// for evolution tests, and for trying out a new version before it lands
    /// in [`SCHEMAS`].
    ///
    /// Checks that `current` can carry every kind of event: each body,
    /// identification and symbol is written with it and read back.
    pub fn with_schemas(current: &str, older: &[&str]) -> Result<Codec, SchemaError> {
        let cur = Version::parse(current, "current")?;
        let defaults = collect_defaults(&cur.schema, &cur.names);
        let mut versions = vec![Arc::new(cur)];
        for (i, text) in older.iter().enumerate() {
            let v = Version::parse(text, &format!("older #{}", i + 1))?;
            if versions.iter().all(|known| known.fingerprint != v.fingerprint) {
                versions.push(Arc::new(v));
            }
        }
        let codec = Codec {
            inner: Arc::new(Inner { current_text: current.to_owned(), versions, defaults }),
        };
        codec.check_carries_model()?;
        Ok(codec)
    }

    /// The fingerprint of the schema this codec writes: CRC-64-AVRO of its
    /// Parsing Canonical Form, as in the single-object header.
    pub fn fingerprint(&self) -> u64 {
        self.current().fingerprint
    }

    /// The fingerprints of every schema this codec reads, the current one first.
    pub fn readable_fingerprints(&self) -> impl Iterator<Item = u64> + '_ {
        self.inner.versions.iter().map(|v| v.fingerprint)
    }

    /// The schema this codec writes.
    pub fn schema(&self) -> &Schema {
        &self.current().schema
    }

    /// The text of the schema this codec writes (what is registered with a schema registry).
    pub fn schema_text(&self) -> &str {
        &self.inner.current_text
    }

    fn current(&self) -> &Version {
        &self.inner.versions[0]
    }

    pub(crate) fn version(&self, fingerprint: u64) -> Option<&Arc<Version>> {
        self.inner.versions.iter().find(|v| v.matches(fingerprint))
    }

    /// The version of a writer's schema: one of ours when the fingerprint
    /// matches, else a foreign one (read through resolution).
    pub(crate) fn prepare(&self, writer: &Schema) -> Result<Arc<Version>, String> {
        match self.version(fingerprint_of(writer)) {
            Some(v) => Ok(v.clone()),
            None => Version::new(writer.clone()).map(Arc::new),
        }
    }

    // ---- encoding ------------------------------------------------------------------------

    /// Appends the event as a raw Avro datum of the current schema (no framing).
    pub fn encode_datum(&self, e: &Event<'_>, out: &mut Vec<u8>) {
        if self.current().hand_coded {
            encode_v1(e, out);
        } else {
            self.encode_datum_resolving(e, out);
        }
    }

    /// Appends the event in Avro single-object encoding: `C3 01`, the 8-byte
    /// little-endian fingerprint of the current schema, the datum.
    pub fn encode(&self, e: &Event<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(&SINGLE_OBJECT_MARKER);
        out.extend_from_slice(&self.fingerprint().to_le_bytes());
        self.encode_datum(e, out);
    }

    /// Appends the event as a raw datum of the current schema, always through
    /// apache-avro (never the hand-written encoder): slower; for cross-checks.
    pub fn encode_datum_resolving(&self, e: &Event<'_>, out: &mut Vec<u8>) {
        // `with_schemas` wrote every body, identification and symbol with this
        // schema; what is left to vary (strings, instants) always fits.
        self.try_encode_general(e, out)
            .expect("the current schema carries every event (checked by Codec::with_schemas)");
    }

    fn try_encode_general(&self, e: &Event<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        let cur = self.current();
        let value = ToValue { names: &cur.names }.value(&model_value(e), &cur.schema)?;
        let writer = GenericDatumWriter::builder(&cur.schema).build().map_err(|e| e.to_string())?;
        writer.write_value(out, value).map_err(|e| e.to_string())?;
        Ok(())
    }

    // ---- decoding ------------------------------------------------------------------------

    /// Decodes a record in Avro single-object encoding. Strings are lent from
    /// `bytes` when the writer's schema is v1.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        let (fp, datum) = split_single_object(bytes)?;
        self.decode_datum(fp, datum)
    }

    /// Decodes a raw datum written with the schema of this fingerprint, which
    /// must be one of those this codec reads.
    pub fn decode_datum<'a>(
        &self,
        writer_fingerprint: u64,
        bytes: &'a [u8],
    ) -> Result<Event<'a>, DecodeError> {
        match self.version(writer_fingerprint) {
            Some(v) => self.decode_version(v, bytes),
            None => Err(DecodeError::UnknownSchema(format!("{writer_fingerprint:016x}"))),
        }
    }

    /// Decodes a raw datum written with this schema (one from a schema
    /// registry, say). A schema of ours, v1 included, is recognised by its
    /// fingerprint; any other is read through schema resolution.
    ///
    /// Computes the schema's fingerprint on every call: cache per schema id
    /// (as [`crate::framing::WireFormat`] does) on a hot path.
    pub fn decode_with_writer_schema<'a>(
        &self,
        writer: &Schema,
        bytes: &'a [u8],
    ) -> Result<Event<'a>, DecodeError> {
        let v = self.prepare(writer).map_err(DecodeError::Resolution)?;
        self.decode_version(&v, bytes)
    }

    /// Decodes a raw datum written with this schema, always through apache-avro
    /// and schema resolution (never the hand-written decoder): slower; for
    /// cross-checks and tools.
    pub fn decode_resolving(
        &self,
        writer: &Schema,
        bytes: &[u8],
    ) -> Result<Event<'static>, DecodeError> {
        let v = self.prepare(writer).map_err(DecodeError::Resolution)?;
        self.decode_general(&v, bytes)
    }

    pub(crate) fn decode_version<'a>(
        &self,
        v: &Version,
        bytes: &'a [u8],
    ) -> Result<Event<'a>, DecodeError> {
        if v.hand_coded { decode_v1(bytes) } else { self.decode_general(v, bytes) }
    }

    fn decode_general(&self, v: &Version, bytes: &[u8]) -> Result<Event<'static>, DecodeError> {
        // First a scan of our own: it bounds every length by the input, so
        // apache-avro never allocates from a hostile length, and it names the
        // field of a truncation.
        Scan { names: &v.names, buf: bytes, pos: 0, depth: 0, items: 0 }.datum(&v.schema)?;
        let reader = GenericDatumReader::builder(&v.schema)
            .build()
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let mut rest = bytes;
        let value =
            reader.read_value(&mut rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        let event = FromValue { names: &v.names, defaults: &self.inner.defaults }
            .event(&value, &v.schema)?;
        event.check_shape()?;
        Ok(event)
    }

    /// Writes one event of every kind with the current schema and reads it back.
    fn check_carries_model(&self) -> Result<(), SchemaError> {
        let cur = self.current();
        for sample in model_samples() {
            let mut buf = Vec::new();
            let what = || format!("{} {}", sample.body.type_name(), sample.event_id);
            self.try_encode_general(&sample, &mut buf)
                .map_err(|e| SchemaError::CannotCarryModel(format!("writing {}: {e}", what())))?;
            let back = self
                .decode_general(cur, &buf)
                .map_err(|e| SchemaError::CannotCarryModel(format!("reading {}: {e}", what())))?;
            if back != sample {
                return Err(SchemaError::CannotCarryModel(format!(
                    "{} does not read back as written",
                    what()
                )));
            }
        }
        Ok(())
    }
}

/// Splits a single-object record into the writer's fingerprint and the datum.
pub fn split_single_object(bytes: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    if bytes.len() < 2 || bytes[..2] != SINGLE_OBJECT_MARKER {
        return Err(DecodeError::NotSingleObject);
    }
    let Some((fp, datum)) = bytes[2..].split_first_chunk::<8>() else {
        return Err(DecodeError::Truncated { field: Cow::Borrowed("schema fingerprint") });
    };
    Ok((u64::from_le_bytes(*fp), datum))
}

// ---- the hand-written codec for v1 ---------------------------------------------------------

#[inline]
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A union branch or enum index (always small).
#[inline]
fn put_index(out: &mut Vec<u8>, i: usize) {
    put_long(out, i as i64);
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn put_opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(2); // branch 1, zigzagged
            put_long(out, v);
        }
    }
}

fn encode_v1(e: &Event<'_>, out: &mut Vec<u8>) {
    out.reserve(160);
    put_str(out, &e.event_id);
    out.extend_from_slice(&e.person_ref.0);
    put_long(out, e.occurred_at.0);
    match &e.body {
        Body::CodeIssued(c) => {
            put_index(out, 0);
            put_str(out, &c.code_id);
            put_index(out, c.kind.index());
            put_index(out, c.channel.index());
            put_opt_long(out, c.expires_at.map(|t| t.0));
            match c.verification {
                None => out.push(0),
                Some(v) => {
                    out.push(2);
                    put_index(out, v.index());
                }
            }
        }
        Body::RelativeCodeAudited(a) => {
            put_index(out, 1);
            put_str(out, &a.code_id);
            out.push(u8::from(a.approved));
        }
        Body::SampleScanned(s) => {
            put_index(out, 2);
            put_str(out, &s.site_id);
            put_str(out, &s.district);
            put_str(out, &s.tube_id);
            put_str(out, &s.scanner_id);
            match &s.identification {
                Identification::Code { code_id, generated_at } => {
                    put_index(out, 0);
                    put_str(out, code_id);
                    put_opt_long(out, generated_at.map(|t| t.0));
                }
                Identification::IdDocument => put_index(out, 1),
                Identification::DeclaredId => put_index(out, 2),
            }
        }
    }
}

/// Reads a v1 datum, lending strings from the input.
struct Reader<'a> {
    buf: &'a [u8],
}

/// A failure on the fast path: kept small (the hot path passes `Result`s of
/// it around), and made a [`DecodeError`] once, at the end.
#[derive(Clone, Copy, Debug)]
struct Fail {
    field: &'static str,
    kind: FailKind,
}

#[derive(Clone, Copy, Debug)]
enum FailKind {
    Truncated,
    Utf8,
    Integer,
    NegativeLength(i64),
    Union(i64),
    Enum(i64),
    Boolean(u8),
}

impl From<Fail> for DecodeError {
    #[cold]
    fn from(f: Fail) -> DecodeError {
        let field = Cow::Borrowed(f.field);
        match f.kind {
            FailKind::Truncated => DecodeError::Truncated { field },
            FailKind::Utf8 => DecodeError::InvalidUtf8 { field },
            FailKind::Integer => DecodeError::BadInteger { field },
            FailKind::NegativeLength(length) => DecodeError::NegativeLength { field, length },
            FailKind::Union(index) => DecodeError::BadUnionIndex { field, index },
            FailKind::Enum(index) => DecodeError::BadEnumSymbol { field, index },
            FailKind::Boolean(byte) => DecodeError::BadBoolean { field, byte },
        }
    }
}

#[cold]
fn fail(field: &'static str, kind: FailKind) -> Fail {
    Fail { field, kind }
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn byte(&mut self, field: &'static str) -> Result<u8, Fail> {
        let Some((&b, rest)) = self.buf.split_first() else {
            return Err(fail(field, FailKind::Truncated));
        };
        self.buf = rest;
        Ok(b)
    }

    /// A zigzag varint of up to 10 bytes.
    #[inline(always)]
    fn long(&mut self, field: &'static str) -> Result<i64, Fail> {
        let buf = self.buf;
        let mut z = 0u64;
        for (i, &b) in buf.iter().take(10).enumerate() {
            z |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The 10th byte holds the one bit left of 64.
                if i == 9 && b > 1 {
                    break;
                }
                self.buf = &buf[i + 1..];
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(fail(field, if buf.len() >= 10 { FailKind::Integer } else { FailKind::Truncated }))
    }

    /// A union branch index below `n`.
    #[inline(always)]
    fn branch(&mut self, field: &'static str, n: usize) -> Result<usize, Fail> {
        let i = self.long(field)?;
        if (0..n as i64).contains(&i) {
            Ok(i as usize)
        } else {
            Err(fail(field, FailKind::Union(i)))
        }
    }

    /// A symbol of an enum, by its index.
    #[inline(always)]
    fn symbol<T: Copy>(&mut self, field: &'static str, all: &[T]) -> Result<T, Fail> {
        let i = self.long(field)?;
        match usize::try_from(i).ok().and_then(|i| all.get(i)) {
            Some(&t) => Ok(t),
            None => Err(fail(field, FailKind::Enum(i))),
        }
    }

    /// The bytes of a string, not yet checked to be UTF-8.
    #[inline(always)]
    fn raw(&mut self, field: &'static str) -> Result<&'a [u8], Fail> {
        let len = self.long(field)?;
        if len < 0 {
            return Err(fail(field, FailKind::NegativeLength(len)));
        }
        if len as u64 > self.buf.len() as u64 {
            return Err(fail(field, FailKind::Truncated));
        }
        let (s, rest) = self.buf.split_at(len as usize);
        self.buf = rest;
        Ok(s)
    }

    #[inline(always)]
    fn str(&mut self, field: &'static str) -> Result<&'a str, Fail> {
        let s = self.raw(field)?;
        std::str::from_utf8(s).map_err(|_| fail(field, FailKind::Utf8))
    }

    #[inline(always)]
    fn cow(&mut self, field: &'static str) -> Result<Cow<'a, str>, Fail> {
        self.str(field).map(Cow::Borrowed)
    }

    #[inline(always)]
    fn opt_long(&mut self, field: &'static str) -> Result<Option<i64>, Fail> {
        match self.branch(field, 2)? {
            0 => Ok(None),
            _ => self.long(field).map(Some),
        }
    }

    #[inline(always)]
    fn boolean(&mut self, field: &'static str) -> Result<bool, Fail> {
        match self.byte(field)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(fail(field, FailKind::Boolean(byte))),
        }
    }
}

/// The body of a `SampleScanned`. Its strings and the length prefixes and
/// union index between them are one run of (almost always) UTF-8 text, checked
/// with one call rather than five; a string is then a slice of that text at
/// its offsets (an ASCII length byte is always a character boundary). Anything
/// unusual — a length of 64 or more, whose varint is not ASCII, or bad UTF-8 —
/// falls back to checking each string on its own.
#[inline(always)]
fn read_scan<'a>(r: &mut Reader<'a>) -> Result<Body<'a>, Fail> {
    let start = r.buf;
    let string = |r: &mut Reader<'a>, field| {
        let bytes = r.raw(field)?;
        let end = start.len() - r.buf.len();
        Ok::<_, Fail>((bytes, end - bytes.len()..end, field))
    };
    let site = string(r, "site_id")?;
    let district = string(r, "district")?;
    let tube = string(r, "tube_id")?;
    let scanner = string(r, "scanner_id")?;
    let method = r.branch("identification", 3)?;
    let code = if method == 0 { Some(string(r, "identification.code_id")?) } else { None };
    let text = std::str::from_utf8(&start[..start.len() - r.buf.len()]).ok();
    let text = |(bytes, range, field): (&'a [u8], std::ops::Range<usize>, &'static str)| match text
        .and_then(|t| t.get(range))
    {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => {
            std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|_| fail(field, FailKind::Utf8))
        }
    };
    let identification = match (method, code) {
        (0, Some(code)) => Identification::Code {
            code_id: text(code)?,
            generated_at: r.opt_long("identification.generated_at")?.map(Timestamp),
        },
        (1, _) => Identification::IdDocument,
        _ => Identification::DeclaredId,
    };
    Ok(Body::SampleScanned(SampleScanned {
        site_id: text(site)?,
        district: text(district)?,
        tube_id: text(tube)?,
        scanner_id: text(scanner)?,
        identification,
    }))
}

#[inline]
fn decode_v1(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let mut r = Reader { buf: bytes };
    let event = read_v1(&mut r)?;
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(r.buf.len()));
    }
    event.check_shape()?;
    Ok(event)
}

#[inline(always)]
fn read_v1<'a>(r: &mut Reader<'a>) -> Result<Event<'a>, Fail> {
    let event_id = r.cow("event_id")?;
    let Some((person, rest)) = r.buf.split_first_chunk::<32>() else {
        return Err(fail("person_ref", FailKind::Truncated));
    };
    r.buf = rest;
    let person_ref = PersonRef(*person);
    let occurred_at = Timestamp(r.long("occurred_at")?);
    let body = match r.branch("body", 3)? {
        0 => Body::CodeIssued(CodeIssued {
            code_id: r.cow("code_id")?,
            kind: r.symbol("kind", CodeKind::ALL)?,
            channel: r.symbol("channel", Channel::ALL)?,
            expires_at: r.opt_long("expires_at")?.map(Timestamp),
            verification: match r.branch("verification", 2)? {
                0 => None,
                _ => Some(r.symbol("verification", Verification::ALL)?),
            },
        }),
        1 => Body::RelativeCodeAudited(RelativeCodeAudited {
            code_id: r.cow("code_id")?,
            approved: r.boolean("approved")?,
        }),
        _ => read_scan(r)?,
    };
    Ok(Event { event_id, person_ref, occurred_at, body })
}

// ---- the general path: a bounds-checking scan -----------------------------------------------

/// Walks a datum by its writer's schema without building anything: checks
/// that every length fits in the input, every index is in range and every
/// string is UTF-8, and that nothing follows the datum.
struct Scan<'s, 'b> {
    names: &'s HashMap<Name, Schema>,
    buf: &'b [u8],
    pos: usize,
    depth: u32,
    /// Array and map items seen, bounded by the input length.
    items: usize,
}

/// The dotted name of a field inside `parent`, as the JSON form names it (the
/// body's fields sit at the top level there).
fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "body" { name.to_owned() } else { format!("{parent}.{name}") }
}

impl Scan<'_, '_> {
    fn datum(&mut self, schema: &Schema) -> Result<(), DecodeError> {
        self.skip(schema, "")?;
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    fn field(path: &str) -> FieldName {
        Cow::Owned(if path.is_empty() { "(record)".to_owned() } else { path.to_owned() })
    }

    fn take(&mut self, n: usize, path: &str) -> Result<&[u8], DecodeError> {
        if n > self.buf.len() - self.pos {
            return Err(DecodeError::Truncated { field: Scan::field(path) });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn long(&mut self, path: &str) -> Result<i64, DecodeError> {
        let mut r = Reader { buf: &self.buf[self.pos..] };
        let before = r.buf.len();
        let v = r.long("").map_err(|e| match e.kind {
            FailKind::Integer => DecodeError::BadInteger { field: Scan::field(path) },
            _ => DecodeError::Truncated { field: Scan::field(path) },
        })?;
        self.pos += before - r.buf.len();
        Ok(v)
    }

    fn int(&mut self, path: &str) -> Result<i64, DecodeError> {
        let v = self.long(path)?;
        if i32::try_from(v).is_err() {
            return Err(DecodeError::BadInteger { field: Scan::field(path) });
        }
        Ok(v)
    }

    fn bytes(&mut self, path: &str) -> Result<&[u8], DecodeError> {
        let len = self.long(path)?;
        if len < 0 {
            return Err(DecodeError::NegativeLength { field: Scan::field(path), length: len });
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len, path)
    }

    fn string(&mut self, path: &str) -> Result<(), DecodeError> {
        let b = self.bytes(path)?;
        if std::str::from_utf8(b).is_err() {
            return Err(DecodeError::InvalidUtf8 { field: Scan::field(path) });
        }
        Ok(())
    }

    fn nested(&mut self, schema: &Schema, path: &str) -> Result<(), DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::Malformed(format!(
                "field `{path}` nests deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        let r = self.skip(schema, path);
        self.depth -= 1;
        r
    }

    /// The blocks of an array or map.
    fn blocks(
        &mut self,
        path: &str,
        mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let n = self.long(path)?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                self.long(path)?; // the block's size in bytes
            }
            let count = n.unsigned_abs();
            self.items = self.items.saturating_add(usize::try_from(count).unwrap_or(usize::MAX));
            if self.items > self.buf.len() {
                return Err(DecodeError::Malformed(format!(
                    "field `{path}` declares more items than the record has bytes"
                )));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    fn skip(&mut self, schema: &Schema, path: &str) -> Result<(), DecodeError> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match self.take(1, path)?[0] {
                0 | 1 => Ok(()),
                byte => Err(DecodeError::BadBoolean { field: Scan::field(path), byte }),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int(path).map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long(path).map(drop),
            Schema::Float => self.take(4, path).map(drop),
            Schema::Double => self.take(8, path).map(drop),
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Bytes, .. })
            | Schema::Uuid(UuidSchema::Bytes) => self.bytes(path).map(drop),
            Schema::String | Schema::Uuid(UuidSchema::String) => self.string(path),
            Schema::Fixed(f)
            | Schema::Duration(f)
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(f), .. })
            | Schema::Uuid(UuidSchema::Fixed(f)) => self.take(f.size, path).map(drop),
            Schema::Enum(e) => {
                let i = self.int(path)?;
                if i < 0 || i as usize >= e.symbols.len() {
                    return Err(DecodeError::BadEnumSymbol { field: Scan::field(path), index: i });
                }
                Ok(())
            }
            Schema::Union(u) => {
                let i = self.int(path)?;
                let Some(branch) = usize::try_from(i).ok().and_then(|i| u.variants().get(i)) else {
                    return Err(DecodeError::BadUnionIndex { field: Scan::field(path), index: i });
                };
                self.nested(branch, path)
            }
            Schema::Record(r) => {
                for f in &r.fields {
                    self.nested(&f.schema, &child(path, &f.name))?;
                }
                Ok(())
            }
            Schema::Array(a) => self.blocks(path, |s| s.nested(&a.items, path)),
            Schema::Map(m) => self.blocks(path, |s| {
                s.string(path)?;
                s.nested(&m.types, path)
            }),
            Schema::Ref { name } => {
                let names = self.names;
                let target = names.get(name).ok_or_else(|| {
                    DecodeError::Resolution(format!(
                        "the writer's schema refers to an undefined type `{name}`"
                    ))
                })?;
                self.nested(target, path)
            }
        }
    }
}

// ---- the general path: Value -> Event --------------------------------------------------------

fn deref<'s>(names: &'s HashMap<Name, Schema>, mut schema: &'s Schema) -> &'s Schema {
    // Parsed schemas have fully qualified `Ref`s; a chain of them ends (depth bound for safety).
    for _ in 0..MAX_DEPTH {
        match schema {
            Schema::Ref { name } => match names.get(name) {
                Some(s) => schema = s,
                None => return schema,
            },
            _ => return schema,
        }
    }
    schema
}

/// The default of every field of every record in a schema, by (record name, field name).
fn collect_defaults(
    schema: &Schema,
    names: &HashMap<Name, Schema>,
) -> HashMap<(String, String), Json> {
    let mut out = HashMap::new();
    let mut records: Vec<&RecordSchema> = Vec::new();
    for s in std::iter::once(schema).chain(names.values()) {
        if let Schema::Record(r) = s {
            records.push(r);
        }
    }
    for r in records {
        for f in &r.fields {
            if let Some(d) = &f.default {
                out.insert((r.name.name().to_owned(), f.name.clone()), d.clone());
            }
        }
    }
    out
}

/// Where a model field's value comes from.
enum Src<'v> {
    /// The writer's datum, with the writer's schema of the field.
    Val(&'v Value, &'v Schema),
    /// The current schema's default, the writer's schema lacking the field.
    Default(&'v Json),
    /// Neither.
    Absent,
}

struct FromValue<'c> {
    names: &'c HashMap<Name, Schema>,
    defaults: &'c HashMap<(String, String), Json>,
}

/// A record of the writer's datum, with its schema.
struct Rec<'v> {
    schema: &'v RecordSchema,
    fields: &'v [(String, Value)],
}

fn resolution(field: &str, problem: impl fmt::Display) -> DecodeError {
    DecodeError::Resolution(format!("field `{field}` {problem}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "a boolean",
        Value::Int(_) | Value::Long(_) => "a number",
        Value::String(_) => "a string",
        Value::Bytes(_) | Value::Fixed(..) => "bytes",
        Value::Enum(..) => "an enum symbol",
        Value::Union(..) => "a union",
        Value::Record(_) => "a record",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "a value of another logical type",
    }
}

impl<'c> FromValue<'c> {
    fn deref<'s>(&self, s: &'s Schema) -> &'s Schema
    where
        'c: 's,
    {
        deref(self.names, s)
    }

    /// Strips a union: the branch's value and schema.
    fn branch<'v>(&self, v: &'v Value, s: &'v Schema) -> (&'v Value, &'v Schema)
    where
        'c: 'v,
    {
        match (v, self.deref(s)) {
            (Value::Union(i, inner), Schema::Union(u)) => {
                let b = u.variants().get(*i as usize).unwrap_or(&Schema::Null);
                (inner, self.deref(b))
            }
            (v, s) => (v, s),
        }
    }

    fn record<'v>(&self, v: &'v Value, s: &'v Schema, field: &str) -> Result<Rec<'v>, DecodeError>
    where
        'c: 'v,
    {
        match (v, self.deref(s)) {
            (Value::Record(fields), Schema::Record(schema)) => Ok(Rec { schema, fields }),
            (v, _) => {
                Err(resolution(field, format_args!("must be a record, the writer has {}", kind(v))))
            }
        }
    }

    fn src<'v>(&self, rec: &Rec<'v>, name: &str) -> Src<'v>
    where
        'c: 'v,
    {
        if let Some((_, v)) = rec.fields.iter().find(|(n, _)| n == name)
            && let Some(&i) = rec.schema.lookup.get(name)
        {
            return Src::Val(v, &rec.schema.fields[i].schema);
        }
        match self.defaults.get(&(rec.schema.name.name().to_owned(), name.to_owned())) {
            Some(d) => Src::Default(d),
            None => Src::Absent,
        }
    }

    fn absent(field: &str) -> DecodeError {
        resolution(
            field,
            "is not in the writer's schema, and the current schema gives it no default",
        )
    }

    fn string(&self, src: Src<'_>, field: &'static str) -> Result<Cow<'static, str>, DecodeError> {
        let s = match src {
            Src::Val(v, s) => match self.branch(v, s).0 {
                Value::String(s) => s.clone(),
                Value::Bytes(b) => String::from_utf8(b.clone())
                    .map_err(|_| DecodeError::InvalidUtf8 { field: Cow::Borrowed(field) })?,
                Value::Uuid(u) => u.to_string(),
                v => {
                    return Err(resolution(
                        field,
                        format_args!("must be a string, the writer has {}", kind(v)),
                    ));
                }
            },
            Src::Default(Json::String(s)) => s.clone(),
            Src::Default(_) => return Err(resolution(field, "has a default that is not a string")),
            Src::Absent => return Err(Self::absent(field)),
        };
        Ok(Cow::Owned(s))
    }

    fn opt_instant(
        &self,
        src: Src<'_>,
        field: &'static str,
    ) -> Result<Option<Timestamp>, DecodeError> {
        let micros = match src {
            Src::Val(v, s) => match self.branch(v, s).0 {
                Value::Null => return Ok(None),
                Value::Long(x) | Value::TimestampMicros(x) => Some(*x),
                Value::Int(x) => Some(i64::from(*x)),
                Value::TimestampMillis(x) => x.checked_mul(1000),
                Value::TimestampNanos(x) => Some(x.div_euclid(1000)),
                v => {
                    return Err(resolution(
                        field,
                        format_args!("must be an instant, the writer has {}", kind(v)),
                    ));
                }
            },
            Src::Default(Json::Null) | Src::Absent => return Ok(None),
            Src::Default(d) => d.as_i64(),
        };
        micros
            .map(|m| Some(Timestamp(m)))
            .ok_or_else(|| resolution(field, "is not an instant in microseconds that fits 64 bits"))
    }

    fn instant(&self, src: Src<'_>, field: &'static str) -> Result<Timestamp, DecodeError> {
        let absent = matches!(src, Src::Absent);
        match self.opt_instant(src, field)? {
            Some(t) => Ok(t),
            None if absent => Err(Self::absent(field)),
            None => Err(resolution(field, "must be an instant, the writer has null")),
        }
    }

    fn opt_symbol<T>(
        &self,
        src: Src<'_>,
        field: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        let sym = match &src {
            Src::Val(v, s) => match self.branch(v, s).0 {
                Value::Null => return Ok(None),
                Value::Enum(_, sym) | Value::String(sym) => sym.as_str(),
                v => {
                    return Err(resolution(
                        field,
                        format_args!("must be an enum symbol, the writer has {}", kind(v)),
                    ));
                }
            },
            Src::Default(Json::Null) | Src::Absent => return Ok(None),
            Src::Default(Json::String(sym)) => sym.as_str(),
            Src::Default(_) => return Err(resolution(field, "has a default that is not a symbol")),
        };
        parse(sym).map(Some).ok_or_else(|| {
            resolution(
                field,
                format_args!("has the symbol `{sym}`, which this build does not know"),
            )
        })
    }

    fn symbol<T>(
        &self,
        src: Src<'_>,
        field: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let absent = matches!(src, Src::Absent);
        match self.opt_symbol(src, field, parse)? {
            Some(t) => Ok(t),
            None if absent => Err(Self::absent(field)),
            None => Err(resolution(field, "must be an enum symbol, the writer has null")),
        }
    }

    fn boolean(&self, src: Src<'_>, field: &'static str) -> Result<bool, DecodeError> {
        match src {
            Src::Val(v, s) => match self.branch(v, s).0 {
                Value::Boolean(b) => Ok(*b),
                v => Err(resolution(
                    field,
                    format_args!("must be a boolean, the writer has {}", kind(v)),
                )),
            },
            Src::Default(Json::Bool(b)) => Ok(*b),
            Src::Default(_) => Err(resolution(field, "has a default that is not a boolean")),
            Src::Absent => Err(Self::absent(field)),
        }
    }

    fn person_ref(&self, src: Src<'_>) -> Result<PersonRef, DecodeError> {
        const FIELD: &str = "person_ref";
        match src {
            Src::Val(v, s) => match self.branch(v, s).0 {
                Value::Fixed(_, b) | Value::Bytes(b) => {
                    <[u8; 32]>::try_from(b.as_slice()).map(PersonRef).map_err(|_| {
                        resolution(
                            FIELD,
                            format_args!("must be 32 bytes, the writer has {}", b.len()),
                        )
                    })
                }
                Value::String(s) => PersonRef::parse_hex(s).map_err(|p| resolution(FIELD, p)),
                v => Err(resolution(
                    FIELD,
                    format_args!("must be 32 bytes, the writer has {}", kind(v)),
                )),
            },
            Src::Default(_) | Src::Absent => Err(Self::absent(FIELD)),
        }
    }

    /// A union of records: the branch's record and its (unqualified) name.
    fn variant<'v>(
        &self,
        src: Src<'v>,
        field: &'static str,
    ) -> Result<(Rec<'v>, &'v str), DecodeError>
    where
        'c: 'v,
    {
        match src {
            Src::Val(v, s) => {
                let (v, s) = self.branch(v, s);
                let rec = self.record(v, s, field)?;
                let name = rec_name(&rec);
                Ok((rec, name))
            }
            Src::Default(_) | Src::Absent => Err(Self::absent(field)),
        }
    }

    fn event(&self, v: &Value, s: &Schema) -> Result<Event<'static>, DecodeError> {
        let top = self.record(v, s, "(record)")?;
        let event_id = self.string(self.src(&top, "event_id"), "event_id")?;
        let person_ref = self.person_ref(self.src(&top, "person_ref"))?;
        let occurred_at = self.instant(self.src(&top, "occurred_at"), "occurred_at")?;
        let (b, name) = self.variant(self.src(&top, "body"), "body")?;
        let body = match name {
            "CodeIssued" => Body::CodeIssued(CodeIssued {
                code_id: self.string(self.src(&b, "code_id"), "code_id")?,
                kind: self.symbol(self.src(&b, "kind"), "kind", CodeKind::from_str)?,
                channel: self.symbol(self.src(&b, "channel"), "channel", Channel::from_str)?,
                expires_at: self.opt_instant(self.src(&b, "expires_at"), "expires_at")?,
                verification: self.opt_symbol(
                    self.src(&b, "verification"),
                    "verification",
                    Verification::from_str,
                )?,
            }),
            "RelativeCodeAudited" => Body::RelativeCodeAudited(RelativeCodeAudited {
                code_id: self.string(self.src(&b, "code_id"), "code_id")?,
                approved: self.boolean(self.src(&b, "approved"), "approved")?,
            }),
            "SampleScanned" => {
                let (i, method) = self.variant(self.src(&b, "identification"), "identification")?;
                let identification = match method {
                    "CodeIdentification" => Identification::Code {
                        code_id: self.string(self.src(&i, "code_id"), "identification.code_id")?,
                        generated_at: self.opt_instant(
                            self.src(&i, "generated_at"),
                            "identification.generated_at",
                        )?,
                    },
                    "IdDocument" => Identification::IdDocument,
                    "DeclaredId" => Identification::DeclaredId,
                    other => {
                        return Err(resolution(
                            "identification",
                            format_args!("is a `{other}`, which this build does not know"),
                        ));
                    }
                };
                Body::SampleScanned(SampleScanned {
                    site_id: self.string(self.src(&b, "site_id"), "site_id")?,
                    district: self.string(self.src(&b, "district"), "district")?,
                    tube_id: self.string(self.src(&b, "tube_id"), "tube_id")?,
                    scanner_id: self.string(self.src(&b, "scanner_id"), "scanner_id")?,
                    identification,
                })
            }
            other => {
                return Err(resolution(
                    "body",
                    format_args!("is a `{other}` event, which this build does not know"),
                ));
            }
        };
        Ok(Event { event_id, person_ref, occurred_at, body })
    }
}

fn rec_name<'v>(rec: &Rec<'v>) -> &'v str {
    rec.schema.name.name()
}

// ---- the general path: Event -> Value ------------------------------------------------------

/// An event as a tree of model values, to be fitted to a schema.
enum Mv<'e> {
    Null,
    Str(&'e str),
    Instant(i64),
    Bool(bool),
    Bytes32(&'e [u8; 32]),
    Symbol(&'static str),
    Record(&'static str, Vec<(&'static str, Mv<'e>)>),
}

impl Mv<'_> {
    fn describe(&self) -> String {
        match self {
            Mv::Null => "null".into(),
            Mv::Str(_) => "a string".into(),
            Mv::Instant(_) => "an instant".into(),
            Mv::Bool(_) => "a boolean".into(),
            Mv::Bytes32(_) => "32 bytes".into(),
            Mv::Symbol(s) => format!("the symbol `{s}`"),
            Mv::Record(n, _) => format!("a `{n}` record"),
        }
    }
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Mv<'static>) -> Mv<'static> {
    v.map_or(Mv::Null, f)
}

fn model_value<'e>(e: &'e Event<'_>) -> Mv<'e> {
    let body = match &e.body {
        Body::CodeIssued(c) => Mv::Record(
            "CodeIssued",
            vec![
                ("code_id", Mv::Str(&c.code_id)),
                ("kind", Mv::Symbol(c.kind.as_str())),
                ("channel", Mv::Symbol(c.channel.as_str())),
                ("expires_at", opt(c.expires_at, |t| Mv::Instant(t.0))),
                ("verification", opt(c.verification, |v| Mv::Symbol(v.as_str()))),
            ],
        ),
        Body::RelativeCodeAudited(a) => Mv::Record(
            "RelativeCodeAudited",
            vec![("code_id", Mv::Str(&a.code_id)), ("approved", Mv::Bool(a.approved))],
        ),
        Body::SampleScanned(s) => {
            let ident = match &s.identification {
                Identification::Code { code_id, generated_at } => Mv::Record(
                    "CodeIdentification",
                    vec![
                        ("code_id", Mv::Str(code_id)),
                        ("generated_at", opt(*generated_at, |t| Mv::Instant(t.0))),
                    ],
                ),
                Identification::IdDocument => Mv::Record("IdDocument", vec![]),
                Identification::DeclaredId => Mv::Record("DeclaredId", vec![]),
            };
            Mv::Record(
                "SampleScanned",
                vec![
                    ("site_id", Mv::Str(&s.site_id)),
                    ("district", Mv::Str(&s.district)),
                    ("tube_id", Mv::Str(&s.tube_id)),
                    ("scanner_id", Mv::Str(&s.scanner_id)),
                    ("identification", ident),
                ],
            )
        }
    };
    Mv::Record(
        "SamplingEvent",
        vec![
            ("event_id", Mv::Str(&e.event_id)),
            ("person_ref", Mv::Bytes32(&e.person_ref.0)),
            ("occurred_at", Mv::Instant(e.occurred_at.0)),
            ("body", body),
        ],
    )
}

struct ToValue<'s> {
    names: &'s HashMap<Name, Schema>,
}

impl ToValue<'_> {
    /// Whether a model value can take this (non-union) schema.
    fn fits(&self, mv: &Mv<'_>, schema: &Schema) -> bool {
        match (mv, deref(self.names, schema)) {
            (Mv::Null, Schema::Null) => true,
            (Mv::Str(_), Schema::String | Schema::Bytes) => true,
            (
                Mv::Instant(_),
                Schema::Long
                | Schema::TimestampMicros
                | Schema::TimestampMillis
                | Schema::TimestampNanos,
            ) => true,
            (Mv::Bool(_), Schema::Boolean) => true,
            (Mv::Bytes32(_), Schema::Bytes) => true,
            (Mv::Bytes32(_), Schema::Fixed(f)) => f.size == 32,
            (Mv::Symbol(s), Schema::Enum(e)) => e.symbols.iter().any(|x| x == s),
            (Mv::Symbol(_), Schema::String) => true,
            (Mv::Record(n, _), Schema::Record(r)) => r.name.name() == *n,
            _ => false,
        }
    }

    fn value(&self, mv: &Mv<'_>, schema: &Schema) -> Result<Value, String> {
        let schema = deref(self.names, schema);
        Ok(match (mv, schema) {
            (_, Schema::Union(u)) => {
                let Some((i, b)) = u.variants().iter().enumerate().find(|(_, b)| self.fits(mv, b))
                else {
                    return Err(format!("no branch of a union takes {}", mv.describe()));
                };
                Value::Union(i as u32, Box::new(self.value(mv, b)?))
            }
            (Mv::Null, Schema::Null) => Value::Null,
            (Mv::Str(s), Schema::String) => Value::String((*s).to_owned()),
            (Mv::Str(s), Schema::Bytes) => Value::Bytes(s.as_bytes().to_vec()),
            (Mv::Instant(t), Schema::Long) => Value::Long(*t),
            (Mv::Instant(t), Schema::TimestampMicros) => Value::TimestampMicros(*t),
            (Mv::Instant(t), Schema::TimestampMillis) => Value::TimestampMillis(t.div_euclid(1000)),
            (Mv::Instant(t), Schema::TimestampNanos) => {
                Value::TimestampNanos(t.saturating_mul(1000))
            }
            (Mv::Bool(b), Schema::Boolean) => Value::Boolean(*b),
            (Mv::Bytes32(b), Schema::Fixed(f)) if f.size == 32 => Value::Fixed(32, b.to_vec()),
            (Mv::Bytes32(b), Schema::Bytes) => Value::Bytes(b.to_vec()),
            (Mv::Symbol(s), Schema::Enum(e)) => match e.symbols.iter().position(|x| x == s) {
                Some(i) => Value::Enum(i as u32, (*s).to_owned()),
                None => return Err(format!("enum `{}` has no symbol `{s}`", e.name)),
            },
            (Mv::Symbol(s), Schema::String) => Value::String((*s).to_owned()),
            (Mv::Record(n, fields), Schema::Record(r)) if r.name.name() == *n => {
                let mut out = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let v = match fields.iter().find(|(name, _)| *name == f.name) {
                        Some((_, mv)) => self.value(mv, &f.schema),
                        None => match &f.default {
                            Some(d) => self.default(d, &f.schema),
                            None => Err("has no default, and the events have no such field".into()),
                        },
                    }
                    .map_err(|e| format!("field `{}` of `{n}`: {e}", f.name))?;
                    out.push((f.name.clone(), v));
                }
                Value::Record(out)
            }
            (mv, s) => return Err(format!("{} cannot be written as {s:?}", mv.describe())),
        })
    }

    /// A field's default (JSON, for the first branch of a union) as a value of its schema.
    fn default(&self, d: &Json, schema: &Schema) -> Result<Value, String> {
        let schema = deref(self.names, schema);
        let bad = || format!("the default {d} does not fit the field's type");
        let int = || d.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(bad);
        let long = || d.as_i64().ok_or_else(bad);
        Ok(match schema {
            Schema::Union(u) => {
                let first = u.variants().first().ok_or_else(bad)?;
                Value::Union(0, Box::new(self.default(d, first)?))
            }
            Schema::Null if d.is_null() => Value::Null,
            Schema::Boolean => Value::Boolean(d.as_bool().ok_or_else(bad)?),
            Schema::Int => Value::Int(int()?),
            Schema::Date => Value::Date(int()?),
            Schema::TimeMillis => Value::TimeMillis(int()?),
            Schema::Long => Value::Long(long()?),
            Schema::TimeMicros => Value::TimeMicros(long()?),
            Schema::TimestampMillis => Value::TimestampMillis(long()?),
            Schema::TimestampMicros => Value::TimestampMicros(long()?),
            Schema::TimestampNanos => Value::TimestampNanos(long()?),
            Schema::LocalTimestampMillis => Value::LocalTimestampMillis(long()?),
            Schema::LocalTimestampMicros => Value::LocalTimestampMicros(long()?),
            Schema::LocalTimestampNanos => Value::LocalTimestampNanos(long()?),
            Schema::Float => Value::Float(d.as_f64().ok_or_else(bad)? as f32),
            Schema::Double => Value::Double(d.as_f64().ok_or_else(bad)?),
            Schema::String => Value::String(d.as_str().ok_or_else(bad)?.to_owned()),
            // Avro writes bytes and fixed defaults as strings of code points 0-255.
            Schema::Bytes => Value::Bytes(latin1(d).ok_or_else(bad)?),
            Schema::Fixed(f) => {
                let b = latin1(d).filter(|b| b.len() == f.size).ok_or_else(bad)?;
                Value::Fixed(f.size, b)
            }
            Schema::Enum(e) => {
                let s = d.as_str().ok_or_else(bad)?;
                let i = e.symbols.iter().position(|x| x == s).ok_or_else(bad)?;
                Value::Enum(i as u32, s.to_owned())
            }
            Schema::Array(a) => Value::Array(
                d.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|x| self.default(x, &a.items))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Map(m) => Value::Map(
                d.as_object()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|(k, x)| Ok((k.clone(), self.default(x, &m.types)?)))
                    .collect::<Result<_, String>>()?,
            ),
            Schema::Record(r) => {
                let obj = d.as_object().ok_or_else(bad)?;
                let mut out = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let x = obj.get(&f.name).or(f.default.as_ref()).ok_or_else(bad)?;
                    out.push((f.name.clone(), self.default(x, &f.schema)?));
                }
                Value::Record(out)
            }
            _ => return Err(format!("defaults of type {schema:?} are not supported")),
        })
    }
}

fn latin1(d: &Json) -> Option<Vec<u8>> {
    d.as_str()?.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// One event of every kind: every body, identification and symbol, optional
/// fields both set and not. A current schema must carry each of them.
fn model_samples() -> Vec<Event<'static>> {
    let person_ref = PersonRef([7; 32]);
    let t = Timestamp(1_649_463_300_000_000);
    let event = |n: usize, body| Event {
        event_id: Cow::Owned(format!("sample-{n}")),
        person_ref,
        occurred_at: t,
        body,
    };
    let mut bodies = Vec::new();
    for (i, &kind) in CodeKind::ALL.iter().enumerate() {
        let verifications: Vec<Option<Verification>> = if kind == CodeKind::Relative {
            std::iter::once(None).chain(Verification::ALL.iter().copied().map(Some)).collect()
        } else {
            vec![None]
        };
        for verification in verifications {
            bodies.push(Body::CodeIssued(CodeIssued {
                code_id: Cow::Borrowed("K1"),
                kind,
                channel: Channel::ALL[i % Channel::ALL.len()],
                expires_at: (kind == CodeKind::Paper).then_some(t),
                verification,
            }));
        }
    }
    for &channel in Channel::ALL {
        bodies.push(Body::CodeIssued(CodeIssued {
            code_id: Cow::Borrowed("K2"),
            kind: CodeKind::Personal,
            channel,
            expires_at: None,
            verification: None,
        }));
    }
    for approved in [false, true] {
        bodies.push(Body::RelativeCodeAudited(RelativeCodeAudited {
            code_id: Cow::Borrowed("K3"),
            approved,
        }));
    }
    let idents = [
        Identification::Code { code_id: Cow::Borrowed("K1"), generated_at: Some(t) },
        Identification::Code { code_id: Cow::Borrowed("K1"), generated_at: None },
        Identification::IdDocument,
        Identification::DeclaredId,
    ];
    for identification in idents {
        bodies.push(Body::SampleScanned(SampleScanned {
            site_id: Cow::Borrowed("S1"),
            district: Cow::Borrowed("310104"),
            tube_id: Cow::Borrowed("T1"),
            scanner_id: Cow::Borrowed("D1"),
            identification,
        }));
    }
    bodies.into_iter().enumerate().map(|(n, b)| event(n, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(ident: Identification<'static>) -> Event<'static> {
        Event {
            event_id: Cow::Borrowed("e1"),
            person_ref: PersonRef([0xab; 32]),
            occurred_at: Timestamp(1_649_463_300_000_000),
            body: Body::SampleScanned(SampleScanned {
                site_id: Cow::Borrowed("S1"),
                district: Cow::Borrowed("310104"),
                tube_id: Cow::Borrowed("T1"),
                scanner_id: Cow::Borrowed("D1"),
                identification: ident,
            }),
        }
    }

    #[test]
    fn v1_fingerprint_is_pinned() {
        let schema = Schema::parse_str(SCHEMA_V1).unwrap();
        assert_eq!(
            fingerprint_of(&schema),
            V1_FINGERPRINT,
            "schemas/sampling-event-v1.avsc changed meaning; a published schema must never change: \
             add a new version instead"
        );
        assert_eq!(Codec::new().fingerprint(), V1_FINGERPRINT);
    }

    #[test]
    fn shipped_schemas_make_a_codec() {
        let (current, older) = SCHEMAS.split_last().unwrap();
        let c = Codec::with_schemas(current, older).unwrap();
        assert_eq!(c.readable_fingerprints().count(), SCHEMAS.len());
        assert!(format!("{c:?}").contains("hand-coded"));
    }

    #[test]
    fn hand_coded_and_apache_avro_write_the_same_bytes() {
        let c = Codec::new();
        for e in model_samples() {
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            c.encode_datum(&e, &mut fast);
            c.encode_datum_resolving(&e, &mut general);
            assert_eq!(fast, general, "{e:?}");
            assert_eq!(decode_v1(&fast).unwrap(), e);
            assert_eq!(c.decode_resolving(c.schema(), &fast).unwrap(), e);
        }
    }

    #[test]
    fn fast_decoding_lends_strings() {
        let e = scan(Identification::Code { code_id: Cow::Borrowed("K9"), generated_at: None });
        let mut buf = Vec::new();
        Codec::new().encode(&e, &mut buf);
        let back = Codec::new().decode(&buf).unwrap();
        assert!(matches!(back.event_id, Cow::Borrowed(_)));
        let Body::SampleScanned(s) = &back.body else { panic!() };
        assert!(matches!(s.tube_id, Cow::Borrowed(_)));
        assert_eq!(back, e);
    }

    #[test]
    fn varints_at_the_edges() {
        for v in [0, -1, 1, 63, -64, 64, i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1] {
            let mut buf = Vec::new();
            put_long(&mut buf, v);
            assert!(buf.len() <= 10);
            let mut r = Reader { buf: &buf };
            assert_eq!(r.long("x").unwrap(), v);
            assert!(r.buf.is_empty());
        }
        // An 11-byte varint, and a 10th byte with more than the one bit left.
        let mut r = Reader { buf: &[0xff; 11] };
        assert_eq!(
            DecodeError::from(r.long("x").unwrap_err()),
            DecodeError::BadInteger { field: "x".into() }
        );
        let mut r = Reader { buf: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02] };
        assert!(matches!(r.long("x"), Err(Fail { kind: FailKind::Integer, .. })));
        // Overlong but in range: accepted, as Avro readers do.
        let mut r = Reader { buf: &[0x82, 0x80, 0x00] };
        assert_eq!(r.long("x").unwrap(), 1);
    }

    #[test]
    fn scan_rejects_hostile_lengths_before_apache_avro_allocates() {
        let c = Codec::new();
        // event_id claims 2^62 bytes.
        let mut buf = Vec::new();
        put_long(&mut buf, 1 << 62);
        buf.extend_from_slice(b"abc");
        let err = c.decode_resolving(c.schema(), &buf).unwrap_err();
        assert_eq!(err, DecodeError::Truncated { field: "event_id".into() });
        let mut buf = Vec::new();
        put_long(&mut buf, -5);
        assert_eq!(
            c.decode_resolving(c.schema(), &buf).unwrap_err(),
            DecodeError::NegativeLength { field: "event_id".into(), length: -5 }
        );
    }

    #[test]
    fn general_path_names_nested_fields_like_json() {
        let c = Codec::new();
        let e = scan(Identification::Code {
            code_id: Cow::Borrowed("K9"),
            generated_at: Some(Timestamp(5)),
        });
        let mut buf = Vec::new();
        c.encode_datum(&e, &mut buf);
        // Cut inside identification.generated_at.
        let cut = &buf[..buf.len() - 1];
        assert_eq!(
            c.decode_resolving(c.schema(), cut).unwrap_err().field(),
            Some("identification.generated_at")
        );
        assert_eq!(decode_v1(cut).unwrap_err().field(), Some("identification.generated_at"));
    }

    #[test]
    fn a_schema_that_cannot_carry_the_model_is_refused() {
        // v1 without the DECLARED_ID identification.
        let text = SCHEMA_V1.replace(
            r#",
            {"type": "record", "name": "DeclaredId", "fields": []}"#,
            "",
        );
        assert_ne!(text, SCHEMA_V1);
        let err = Codec::with_schemas(&text, &[]).unwrap_err();
        assert!(err.to_string().contains("cannot carry"), "{err}");
        // A new field without a default.
        let text = SCHEMA_V1.replace(
            r#"{"name": "approved", "type": "boolean"}"#,
            r#"{"name": "approved", "type": "boolean"}, {"name": "auditor", "type": "string"}"#,
        );
        let err = Codec::with_schemas(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("auditor") && err.contains("no default"), "{err}");
        assert!(matches!(Codec::with_schemas("{", &[]), Err(SchemaError::Invalid { .. })));
    }
}
