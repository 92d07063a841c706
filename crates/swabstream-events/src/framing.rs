//! How an Avro record sits in a Kafka record value (SPEC §2.2).
//!
//! - **Single-object encoding** (the default): `C3 01`, the writer schema's
//!   8-byte little-endian CRC-64-AVRO fingerprint, the datum. Any reader with
//!   `schemas/` decodes it; no registry service is involved.
//! - **Confluent framing**, where a schema registry is configured: magic byte
//!   `00`, the 4-byte big-endian schema id, the datum.
//!
//! A [`WireFormat`] writes one framing and reads both, telling them apart by
//! their first bytes. This module does no IO itself: a registry is reached
//! through the [`SchemaRegistry`] trait (an HTTP client lives elsewhere).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use apache_avro::Schema;

use crate::avro::{Codec, DecodeError, SINGLE_OBJECT_MARKER, Version};
use crate::model::Event;

/// The magic byte that opens a Confluent-framed record.
pub const CONFLUENT_MAGIC: u8 = 0x00;

/// The magic byte plus the 4-byte big-endian schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// What went wrong talking to a schema registry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry has no schema with this id.
    #[error("the registry has no schema with id {0}")]
    UnknownId(u32),
    /// The registry refused to register the schema (incompatible with the subject's earlier versions, say).
    #[error("the registry refused the schema for subject `{subject}`: {reason}")]
    Rejected { subject: String, reason: String },
    /// The registry could not be reached, or gave an answer that makes no sense.
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
}

/// A schema registry (Confluent Schema Registry, or an in-memory stand-in).
pub trait SchemaRegistry: Send + Sync + fmt::Debug {
    /// Registers a schema under a subject (or finds it already registered) and returns its id.
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError>;

    /// The text of the schema with this id.
    fn schema_by_id(&self, id: u32) -> Result<String, RegistryError>;
}

/// A schema registry in memory, for tests and single-process runs. Ids count
/// from 1; the same schema text always gets the same id, whatever the subject.
#[derive(Debug, Default)]
pub struct InMemoryRegistry {
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// Schema texts; id `n` is at `n - 1`.
    schemas: Vec<String>,
    ids: HashMap<String, u32>,
    /// The ids registered under each subject, in order.
    subjects: HashMap<String, Vec<u32>>,
}

impl InMemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        InMemoryRegistry::default()
    }

    /// The ids registered under a subject, oldest first.
    pub fn subject_ids(&self, subject: &str) -> Vec<u32> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.subjects.get(subject).cloned().unwrap_or_default()
    }
}

impl SchemaRegistry for InMemoryRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = match state.ids.get(schema) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(state.schemas.len() + 1)
                    .map_err(|_| RegistryError::Unavailable("the registry is full".into()))?;
                state.schemas.push(schema.to_owned());
                state.ids.insert(schema.to_owned(), id);
                id
            }
        };
        let ids = state.subjects.entry(subject.to_owned()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
        Ok(id)
    }

    fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        index.and_then(|i| state.schemas.get(i)).cloned().ok_or(RegistryError::UnknownId(id))
    }
}

/// How records are framed when written.
#[derive(Clone, Debug)]
pub enum Framing {
    /// Avro single-object encoding: `C3 01`, 8-byte fingerprint, datum.
    SingleObject,
    /// Confluent framing: `00`, 4-byte big-endian schema id, datum. The
    /// codec's schema is registered under `subject` (`<topic>-value` by the
    /// registry's default naming) on first use.
    Confluent { registry: Arc<dyn SchemaRegistry>, subject: String },
}

/// Why an event could not be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Registering the writer's schema with the schema registry failed.
    #[error("registering the writer's schema under subject `{subject}`: {source}")]
    Register { subject: String, source: RegistryError },
}

/// The wire format of the `sampling-events` topic: a [`Codec`] and a
/// [`Framing`]. Writes its framing; reads both.
///
/// Shareable between threads: the registered id and the schemas fetched by id
/// are cached inside.
#[derive(Debug)]
pub struct WireFormat {
    codec: Codec,
    framing: Framing,
    /// For reading Confluent-framed records.
    registry: Option<Arc<dyn SchemaRegistry>>,
    /// The id the codec's schema got from the registry (Confluent framing).
    write_id: OnceLock<u32>,
    /// Writer schemas of Confluent-framed records, by id.
    by_id: RwLock<HashMap<u32, Arc<Version>>>,
    /// The first id resolved, checked before `by_id` without taking a lock: a
    /// topic is mostly written with one schema at a time.
    first: OnceLock<(u32, Arc<Version>)>,
}

impl WireFormat {
    /// A wire format writing `framing`. With Confluent framing its registry is
    /// also used to read Confluent-framed records.
    pub fn new(codec: Codec, framing: Framing) -> Self {
        let registry = match &framing {
            Framing::SingleObject => None,
            Framing::Confluent { registry, .. } => Some(registry.clone()),
        };
        WireFormat {
            codec,
            framing,
            registry,
            write_id: OnceLock::new(),
            by_id: RwLock::new(HashMap::new()),
            first: OnceLock::new(),
        }
    }

    /// This build's codec with single-object framing: the default of SPEC §2.2.
    pub fn single_object() -> Self {
        WireFormat::new(Codec::new(), Framing::SingleObject)
    }

    /// Uses this registry to read Confluent-framed records (whatever framing is written).
    pub fn with_registry(mut self, registry: Arc<dyn SchemaRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The framing written.
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// Appends the event, framed. Only Confluent framing can fail: the first
    /// call registers the codec's schema, and that may fail (and is retried on
    /// the next call).
    pub fn encode(&self, e: &Event<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match &self.framing {
            Framing::SingleObject => self.codec.encode(e, out),
            Framing::Confluent { registry, subject } => {
                let id = self.write_id(registry.as_ref(), subject)?;
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
                self.codec.encode_datum(e, out);
            }
        }
        Ok(())
    }

    /// The id of the codec's schema in the registry, registered once.
    fn write_id(&self, registry: &dyn SchemaRegistry, subject: &str) -> Result<u32, EncodeError> {
        if let Some(&id) = self.write_id.get() {
            return Ok(id);
        }
        let id = registry
            .register(subject, self.codec.schema_text())
            .map_err(|source| EncodeError::Register { subject: subject.to_owned(), source })?;
        // Two threads may both register; the registry gives both the same id.
        let id = *self.write_id.get_or_init(|| id);
        if let Some(v) = self.codec.version(self.codec.fingerprint()) {
            self.remember(id, v.clone());
        }
        Ok(id)
    }

    /// Decodes a record in either framing, told apart by its first bytes.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        match bytes.first() {
            None => Err(DecodeError::Truncated { field: "framing header".into() }),
            Some(&b) if b == SINGLE_OBJECT_MARKER[0] => self.codec.decode(bytes),
            Some(&CONFLUENT_MAGIC) => {
                let Some((id, datum)) = bytes[1..].split_first_chunk::<4>() else {
                    return Err(DecodeError::Truncated { field: "schema id".into() });
                };
                let id = u32::from_be_bytes(*id);
                if let Some((first, v)) = self.first.get()
                    && *first == id
                {
                    return self.codec.decode_version(v, datum);
                }
                if let Some(v) = self.by_id.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
                    return self.codec.decode_version(v, datum);
                }
                let v = self.fetch(id)?;
                self.codec.decode_version(&v, datum)
            }
            Some(&b) => Err(DecodeError::UnknownFraming(b)),
        }
    }

    /// Fetches the writer's schema of a Confluent id from the registry, and
    /// caches it. Failures are not cached: the next record asks again.
    fn fetch(&self, id: u32) -> Result<Arc<Version>, DecodeError> {
        let registry = self.registry.as_ref().ok_or(DecodeError::NoRegistry { id })?;
        let text =
            registry.schema_by_id(id).map_err(|source| DecodeError::Registry { id, source })?;
        let schema = Schema::parse_str(&text)
            .map_err(|e| DecodeError::RegistrySchema { id, message: e.to_string() })?;
        let v = self
            .codec
            .prepare(&schema)
            .map_err(|message| DecodeError::RegistrySchema { id, message })?;
        self.remember(id, v.clone());
        Ok(v)
    }

    fn remember(&self, id: u32, v: Arc<Version>) {
        let _ = self.first.set((id, v.clone()));
        self.by_id.write().unwrap_or_else(|p| p.into_inner()).insert(id, v);
    }

    /// The writer's schema fingerprint of each Confluent id read or written so far.
    pub fn known_ids(&self) -> Vec<(u32, u64)> {
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<(u32, u64)> = map.iter().map(|(&id, v)| (id, v.fingerprint())).collect();
        ids.sort_unstable();
        ids
    }
}
