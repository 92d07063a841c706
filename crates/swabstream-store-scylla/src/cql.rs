//! Every CQL statement the store sends, as data: its text, its bound values
//! and its write timestamp, built by pure functions that the store only
//! executes (and that the tests and the statements bench read directly).
//!
//! Nothing here does IO. The one rule every write and delete of the view,
//! checkpoint and snapshot tables follows is [`write_ts`]: `USING TIMESTAMP`
//! the Kafka offset the write reflects, times [`STEPS`], plus its step.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use scylla::statement::{Consistency, SerialConsistency};
use swabstream_events::Day;
use swabstream_store::chunks::{self, Manifest};
use swabstream_views::ViewRow;

use crate::ScyllaError;

/// The CQL schema, with `{keyspace}` and `{replication}` to substitute.
pub const SCHEMA: &str = include_str!("../../../schemas/scylla-views-v2.cql");
/// The schema version recorded in `meta` (the file's `-v2`).
pub const SCHEMA_VERSION: &str = "2";
/// How many of the schema's statements come before the version is checked:
/// the keyspace and `meta`. The other tables are made only in a keyspace
/// that holds this version (or none yet), never beside another version's.
pub const SCHEMA_PREAMBLE: usize = 2;
/// The registry's one row.
pub const REGISTRY_KEY: &str = "versions";
/// Snapshot chunk size: half of the 1 MiB at which Scylla warns of a large
/// cell, so a 100 MB snapshot is 200 rows of one Scylla partition.
pub const CHUNK_BYTES: usize = 512 << 10;
/// Most statements in one unlogged batch, and most bound bytes: far below
/// Scylla's batch warning (128 KiB) and refusal (1 MiB) thresholds.
pub const MAX_BATCH_STATEMENTS: usize = 64;
pub const MAX_BATCH_BYTES: usize = 32 << 10;
/// Write timestamps per offset: `offset * STEPS + step`.
pub const STEPS: i64 = 8;

/// A keyspace name that is a valid unquoted CQL identifier, so that it can
/// be put into statement text as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyspace(String);

impl Keyspace {
    /// `[a-zA-Z][a-zA-Z0-9_]{0,47}`, lower-cased (unquoted CQL identifiers
    /// are case-insensitive: `Views` and `views` are one keyspace).
    pub fn new(name: &str) -> Result<Keyspace, ScyllaError> {
        let mut chars = name.chars();
        let valid = name.len() <= 48
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(Keyspace(name.to_ascii_lowercase()))
        } else {
            Err(ScyllaError::Keyspace(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the keyspace is replicated (`[store.scylla]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this replication factor.
    Simple(u32),
    /// `NetworkTopologyStrategy` with replicas per datacenter.
    PerDatacenter(BTreeMap<String, u32>),
}

impl Replication {
    /// The replication map as CQL. Datacenter names go into quotes, so they
    /// are checked to hold nothing that could end the quote.
    pub fn cql(&self) -> Result<String, ScyllaError> {
        if self.factors_zero() {
            return Err(ScyllaError::Replication(
                "give a replication factor of at least 1 (per datacenter, when datacenters are named)"
                    .into(),
            ));
        }
        match self {
            Replication::Simple(rf) => {
                Ok(format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"))
            }
            Replication::PerDatacenter(dcs) => {
                let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in dcs {
                    let ok = !dc.is_empty()
                        && dc.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !ok {
                        return Err(ScyllaError::Replication(format!(
                            "datacenter name `{dc}`: use letters, digits, `_`, `-` and `.`"
                        )));
                    }
                    out.push_str(&format!(", '{dc}': {rf}"));
                }
                out.push('}');
                Ok(out)
            }
        }
    }

    fn factors_zero(&self) -> bool {
        match self {
            Replication::Simple(rf) => *rf == 0,
            Replication::PerDatacenter(dcs) => dcs.is_empty() || dcs.values().any(|rf| *rf == 0),
        }
    }
}

/// The schema's statements for `keyspace`, in order (keyspace first).
pub fn schema(keyspace: &Keyspace, replication: &Replication) -> Result<Vec<String>, ScyllaError> {
    let replication = replication.cql()?;
    let text: String =
        SCHEMA.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    Ok(text
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace.as_str()).replace("{replication}", &replication))
        .collect())
}

/// A consistency level by its CQL name (`LOCAL_QUORUM`, `quorum`, ...), and
/// the serial consistency of the lightweight transactions that goes with it
/// (`LOCAL_SERIAL` for the `LOCAL_*` levels, else `SERIAL`).
pub fn consistency(name: &str) -> Result<(Consistency, SerialConsistency), ScyllaError> {
    let c = match name.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return Err(ScyllaError::Consistency(name.to_owned())),
    };
    let serial = match c {
        Consistency::LocalQuorum | Consistency::LocalOne => SerialConsistency::LocalSerial,
        _ => SerialConsistency::Serial,
    };
    Ok((c, serial))
}

/// What a write of a commit does; its place among the commit's writes of one
/// offset, and the low bits of its timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The partial rows and the snapshot's chunks.
    Rows = 1,
    /// The checkpoint, once every row and chunk is written.
    Checkpoint = 2,
    /// The deletion of older snapshots, once the checkpoint points past them.
    Cleanup = 3,
    /// A dropped version's deletions, at the largest offset: they shadow
    /// every write to the dropped version's id, even a stale writer's
    /// arriving later (the id is never given again).
    Drop = 7,
}

/// The write timestamp of a write reflecting the log up to `next_offset`:
/// `next_offset * 8 + step`. Strictly increasing in the offset, and in the
/// step within one offset. An offset whose timestamp would not fit an `i64`
/// (past 2⁶⁰, a million records a second for 36,000 years) is refused, never
/// wrapped: a wrapped timestamp would lose to every older write.
pub fn write_ts(next_offset: i64, step: Step) -> Result<i64, ScyllaError> {
    if next_offset < 0 {
        return Err(ScyllaError::Offset(next_offset));
    }
    next_offset
        .checked_mul(STEPS)
        .and_then(|t| t.checked_add(step as i64))
        .ok_or(ScyllaError::Offset(next_offset))
}

/// The largest offset [`write_ts`] accepts.
pub const MAX_OFFSET: i64 = (i64::MAX - (STEPS - 1)) / STEPS;

/// The timestamp of a dropped version's deletions: above every timestamp
/// [`write_ts`] gives a write.
pub fn drop_ts() -> i64 {
    MAX_OFFSET * STEPS + Step::Drop as i64
}

/// A bound value, typed as its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i32),
    BigInt(i64),
    Date(Day),
    Text(String),
    Blob(Vec<u8>),
    /// The checkpoint's `snapshot` cell: the manifest and its writer's epoch.
    Snapshot {
        manifest: Manifest,
        epoch: i64,
    },
    /// A null (an unset registry pointer).
    Null,
    /// The registry's `versions` cell: name → (id, created_at_ms).
    Versions(BTreeMap<String, (i64, i64)>),
    /// The registry's `dropping` cell.
    Ids(BTreeSet<i64>),
}

impl Value {
    /// Bytes on the wire as a bound value: a 4-byte length, then the value.
    pub fn wire_bytes(&self) -> usize {
        4 + match self {
            Value::Int(_) | Value::Date(_) => 4,
            Value::BigInt(_) => 8,
            Value::Text(s) => s.len(),
            Value::Blob(b) => b.len(),
            // A tuple: each of its five elements with its own length.
            Value::Snapshot { .. } => 4 * 5 + 8 + 8 + 4 + 8 + 8,
            Value::Null => 0,
            Value::Versions(m) => {
                4 + m.keys().map(|k| 4 + k.len() + 4 + 2 * (4 + 8)).sum::<usize>()
            }
            Value::Ids(s) => 4 + s.len() * (4 + 8),
        }
    }

    /// Order of routing-key values, for grouping a commit's rows by Scylla
    /// partition (only dates, text and ints are keys).
    fn key_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }
}

fn count(v: u64) -> Value {
    // Counts of people and events stay far below 2⁶³.
    Value::BigInt(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Every statement the store prepares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stmt {
    UpsertCity,
    UpsertDistrict,
    UpsertSite,
    UpsertMethod,
    UpsertRejections,
    UpsertCodes,
    InsertChunk,
    WriteCheckpoint,
    WriteCheckpointAndSnapshot,
    DeleteOlderSnapshots,
    ReadEpoch,
    ReadCommitted,
    ReadCheckpoint,
    ReadChunks,
    ReadClaims,
    ReadCheckpoints,
    ClaimFirst,
    ClaimNext,
    Touch,
    ReadMeta,
    InsertMeta,
    SumCity,
    SumDistrict,
    SumSite,
    SumMethod,
    SumRejections,
    SumCodes,
    PartCity,
    PartDistrict,
    PartSite,
    PartMethod,
    PartRejections,
    PartCodes,
    ReadRegistry,
    InsertRegistry,
    UpdateRegistry,
    DeleteClaim,
    DropCity,
    DropDistrict,
    DropSite,
    DropMethod,
    DropRejections,
    DropCodes,
    DropCheckpoint,
    DropChunks,
    KeysCity,
    KeysDistrict,
    KeysSite,
    KeysMethod,
    KeysRejections,
    KeysCodes,
}

/// One view's table, the columns of its key (Scylla partition key first,
/// without the Kafka partition) and its values.
struct ViewTable {
    table: &'static str,
    key: &'static [&'static str],
    /// How many of `key` form the Scylla partition key.
    routing: usize,
    values: &'static [&'static str],
}

const CITY: ViewTable = ViewTable {
    table: "city_daily_part",
    key: &["day"],
    routing: 1,
    values: &["people_sampled", "using_code", "valid_scans", "rescans", "rejected", "duplicates"],
};
const DISTRICT: ViewTable = ViewTable {
    table: "district_daily_part",
    key: &["day", "district"],
    routing: 1,
    values: &["people_sampled", "using_code", "valid_scans", "rejected"],
};
const SITE: ViewTable = ViewTable {
    table: "site_hourly_part",
    key: &["day", "site_id", "hour"],
    routing: 2,
    values: &["people_sampled", "valid_scans"],
};
const METHOD: ViewTable = ViewTable {
    table: "method_daily_part",
    key: &["day", "method"],
    routing: 1,
    values: &["people_sampled"],
};
const REJECTIONS: ViewTable = ViewTable {
    table: "rejections_daily_part",
    key: &["day", "reason"],
    routing: 1,
    values: &["count"],
};
const CODES: ViewTable = ViewTable {
    table: "codes_issued_daily_part",
    key: &["day", "kind", "channel"],
    routing: 1,
    values: &["count"],
};

impl ViewTable {
    /// `INSERT INTO ks.t (version, key…, partition, values…) VALUES (?, …) USING TIMESTAMP ?`
    fn upsert(&self, ks: &str) -> String {
        let cols: Vec<&str> = ["version"]
            .iter()
            .chain(self.key)
            .chain(&["partition"])
            .chain(self.values)
            .copied()
            .collect();
        let marks = vec!["?"; cols.len()].join(", ");
        format!(
            "INSERT INTO {ks}.{} ({}) VALUES ({marks}) USING TIMESTAMP ?",
            self.table,
            cols.join(", ")
        )
    }

    /// The city's rows, per version: summed over Kafka partitions by the
    /// server (the caller keeps the version it reads; restricting `version`
    /// alone, a part of the partition key, would need filtering).
    fn sum(&self, ks: &str) -> String {
        let sums: Vec<String> = self.values.iter().map(|v| format!("SUM({v})")).collect();
        format!(
            "SELECT version, {}, {} FROM {ks}.{} GROUP BY version, {}",
            self.key.join(", "),
            sums.join(", "),
            self.table,
            self.key.join(", ")
        )
    }

    /// One Kafka partition's rows, in every version (a filtered scan:
    /// `partition` is the last clustering column, for the sums' sake).
    fn part(&self, ks: &str) -> String {
        format!(
            "SELECT version, {}, {} FROM {ks}.{} WHERE partition = ? ALLOW FILTERING",
            self.key.join(", "),
            self.values.join(", "),
            self.table
        )
    }

    /// The Scylla partition keys of the table, in every version (for a drop).
    fn keys(&self, ks: &str) -> String {
        let routing: Vec<&str> = self.key[..self.routing].to_vec();
        format!("SELECT DISTINCT version, {} FROM {ks}.{}", routing.join(", "), self.table)
    }

    /// The deletion of one Scylla partition of a dropped version.
    fn drop_partition(&self, ks: &str) -> String {
        let conds: Vec<String> = ["version"]
            .iter()
            .chain(&self.key[..self.routing])
            .map(|c| format!("{c} = ?"))
            .collect();
        format!("DELETE FROM {ks}.{} USING TIMESTAMP ? WHERE {}", self.table, conds.join(" AND "))
    }
}

impl Stmt {
    pub const ALL: [Stmt; 51] = [
        Stmt::UpsertCity,
        Stmt::UpsertDistrict,
        Stmt::UpsertSite,
        Stmt::UpsertMethod,
        Stmt::UpsertRejections,
        Stmt::UpsertCodes,
        Stmt::InsertChunk,
        Stmt::WriteCheckpoint,
        Stmt::WriteCheckpointAndSnapshot,
        Stmt::DeleteOlderSnapshots,
        Stmt::ReadEpoch,
        Stmt::ReadCommitted,
        Stmt::ReadCheckpoint,
        Stmt::ReadChunks,
        Stmt::ReadClaims,
        Stmt::ReadCheckpoints,
        Stmt::ClaimFirst,
        Stmt::ClaimNext,
        Stmt::Touch,
        Stmt::ReadMeta,
        Stmt::InsertMeta,
        Stmt::SumCity,
        Stmt::SumDistrict,
        Stmt::SumSite,
        Stmt::SumMethod,
        Stmt::SumRejections,
        Stmt::SumCodes,
        Stmt::PartCity,
        Stmt::PartDistrict,
        Stmt::PartSite,
        Stmt::PartMethod,
        Stmt::PartRejections,
        Stmt::PartCodes,
        Stmt::ReadRegistry,
        Stmt::InsertRegistry,
        Stmt::UpdateRegistry,
        Stmt::DeleteClaim,
        Stmt::DropCity,
        Stmt::DropDistrict,
        Stmt::DropSite,
        Stmt::DropMethod,
        Stmt::DropRejections,
        Stmt::DropCodes,
        Stmt::DropCheckpoint,
        Stmt::DropChunks,
        Stmt::KeysCity,
        Stmt::KeysDistrict,
        Stmt::KeysSite,
        Stmt::KeysMethod,
        Stmt::KeysRejections,
        Stmt::KeysCodes,
    ];

    fn view(self) -> Option<&'static ViewTable> {
        use Stmt::*;
        Some(match self {
            UpsertCity | SumCity | PartCity | DropCity | KeysCity => &CITY,
            UpsertDistrict | SumDistrict | PartDistrict | DropDistrict | KeysDistrict => &DISTRICT,
            UpsertSite | SumSite | PartSite | DropSite | KeysSite => &SITE,
            UpsertMethod | SumMethod | PartMethod | DropMethod | KeysMethod => &METHOD,
            UpsertRejections | SumRejections | PartRejections | DropRejections | KeysRejections => {
                &REJECTIONS
            }
            UpsertCodes | SumCodes | PartCodes | DropCodes | KeysCodes => &CODES,
            _ => return None,
        })
    }

    /// The statement's text in `ks`.
    pub fn text(self, ks: &Keyspace) -> String {
        use Stmt::*;
        let ks = ks.as_str();
        match self {
            UpsertCity | UpsertDistrict | UpsertSite | UpsertMethod | UpsertRejections
            | UpsertCodes => self.view().map(|v| v.upsert(ks)).unwrap_or_default(),
            SumCity | SumDistrict | SumSite | SumMethod | SumRejections | SumCodes => {
                self.view().map(|v| v.sum(ks)).unwrap_or_default()
            }
            PartCity | PartDistrict | PartSite | PartMethod | PartRejections | PartCodes => {
                self.view().map(|v| v.part(ks)).unwrap_or_default()
            }
            DropCity | DropDistrict | DropSite | DropMethod | DropRejections | DropCodes => {
                self.view().map(|v| v.drop_partition(ks)).unwrap_or_default()
            }
            KeysCity | KeysDistrict | KeysSite | KeysMethod | KeysRejections | KeysCodes => {
                self.view().map(|v| v.keys(ks)).unwrap_or_default()
            }
            InsertChunk => format!(
                "INSERT INTO {ks}.snapshot_chunk (version, partition, snapshot_offset, epoch, seq, bytes) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ),
            WriteCheckpoint => format!(
                "UPDATE {ks}.checkpoint USING TIMESTAMP ? SET next_offset = ?, committed_epoch = ?, committed_at_ms = ? WHERE version = ? AND partition = ?"
            ),
            WriteCheckpointAndSnapshot => format!(
                "UPDATE {ks}.checkpoint USING TIMESTAMP ? SET next_offset = ?, committed_epoch = ?, committed_at_ms = ?, snapshot = ?, snapshot_at_ms = ? WHERE version = ? AND partition = ?"
            ),
            DeleteOlderSnapshots => format!(
                "DELETE FROM {ks}.snapshot_chunk USING TIMESTAMP ? WHERE version = ? AND partition = ? AND snapshot_offset < ?"
            ),
            DropCheckpoint => format!(
                "DELETE FROM {ks}.checkpoint USING TIMESTAMP ? WHERE version = ? AND partition = ?"
            ),
            DropChunks => format!(
                "DELETE FROM {ks}.snapshot_chunk USING TIMESTAMP ? WHERE version = ? AND partition = ?"
            ),
            ReadEpoch => {
                format!("SELECT epoch FROM {ks}.claim WHERE version = ? AND partition = ?")
            }
            ReadCommitted => format!(
                "SELECT next_offset, committed_epoch FROM {ks}.checkpoint WHERE version = ? AND partition = ?"
            ),
            ReadCheckpoint => format!(
                "SELECT next_offset, snapshot FROM {ks}.checkpoint WHERE version = ? AND partition = ?"
            ),
            ReadChunks => format!(
                "SELECT seq, bytes FROM {ks}.snapshot_chunk WHERE version = ? AND partition = ? AND snapshot_offset = ? AND epoch = ? AND seq < ?"
            ),
            ReadClaims => {
                format!("SELECT version, partition, epoch, touched_at_ms FROM {ks}.claim")
            }
            ReadCheckpoints => format!(
                "SELECT version, partition, next_offset, committed_at_ms, snapshot, snapshot_at_ms FROM {ks}.checkpoint"
            ),
            ClaimFirst => format!(
                "INSERT INTO {ks}.claim (version, partition, epoch, touched_at_ms) VALUES (?, ?, ?, ?) IF NOT EXISTS"
            ),
            ClaimNext => format!(
                "UPDATE {ks}.claim SET epoch = ?, touched_at_ms = ? WHERE version = ? AND partition = ? IF epoch = ?"
            ),
            Touch => format!(
                "UPDATE {ks}.claim SET touched_at_ms = ? WHERE version = ? AND partition = ? IF epoch = ?"
            ),
            DeleteClaim => {
                format!("DELETE FROM {ks}.claim WHERE version = ? AND partition = ? IF EXISTS")
            }
            ReadRegistry => format!(
                "SELECT revision, versions, live, previous, next_id, promoted_at_ms, dropping FROM {ks}.registry WHERE key = ?"
            ),
            InsertRegistry => format!(
                "INSERT INTO {ks}.registry (key, revision, versions, live, previous, next_id, promoted_at_ms, dropping) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ),
            UpdateRegistry => format!(
                "UPDATE {ks}.registry SET revision = ?, versions = ?, live = ?, previous = ?, next_id = ?, promoted_at_ms = ?, dropping = ? WHERE key = ? IF revision = ?"
            ),
            ReadMeta => format!("SELECT value FROM {ks}.meta WHERE key = ?"),
            InsertMeta => {
                format!("INSERT INTO {ks}.meta (key, value) VALUES (?, ?) IF NOT EXISTS")
            }
        }
    }

    /// A lightweight transaction (on `claim`, `meta` and `registry` only).
    pub fn is_lwt(self) -> bool {
        use Stmt::*;
        matches!(
            self,
            ClaimFirst
                | ClaimNext
                | Touch
                | DeleteClaim
                | InsertMeta
                | InsertRegistry
                | UpdateRegistry
        )
    }

    /// A plain write: it carries an offset-derived `USING TIMESTAMP ?` and is
    /// idempotent (absolute values), so it may be retried as it is.
    pub fn is_timestamped_write(self) -> bool {
        use Stmt::*;
        matches!(
            self,
            UpsertCity
                | UpsertDistrict
                | UpsertSite
                | UpsertMethod
                | UpsertRejections
                | UpsertCodes
                | InsertChunk
                | WriteCheckpoint
                | WriteCheckpointAndSnapshot
                | DeleteOlderSnapshots
                | DropCity
                | DropDistrict
                | DropSite
                | DropMethod
                | DropRejections
                | DropCodes
                | DropCheckpoint
                | DropChunks
        )
    }

    /// A view row's upsert (batched by Scylla partition).
    fn is_upsert(self) -> bool {
        use Stmt::*;
        matches!(
            self,
            UpsertCity
                | UpsertDistrict
                | UpsertSite
                | UpsertMethod
                | UpsertRejections
                | UpsertCodes
        )
    }

    /// Rows a page of this read holds.
    pub fn page_size(self) -> i32 {
        match self {
            // 8 chunks of 512 KiB: 4 MiB a page.
            Stmt::ReadChunks => 8,
            _ => 5000,
        }
    }
}

/// One statement with its bound values (the write timestamp among them,
/// where the text says `USING TIMESTAMP ?`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    pub stmt: Stmt,
    pub values: Vec<Value>,
}

impl Bound {
    /// The values of the Scylla partition key, for a view row's upsert;
    /// empty for statements never batched.
    pub fn routing(&self) -> &[Value] {
        match self.stmt.view() {
            // The version's id, then the view's routing columns.
            Some(v) if self.stmt.is_upsert() => &self.values[..=v.routing],
            _ => &[],
        }
    }

    /// Bound bytes on the wire.
    pub fn wire_bytes(&self) -> usize {
        self.values.iter().map(Value::wire_bytes).sum()
    }
}

/// The upsert of one partial row of version `version`, at write timestamp `ts`.
pub fn row_statement(version: i64, partition: i32, row: &ViewRow, ts: i64) -> Bound {
    use Value::{BigInt, Date, Int, Text};
    let p = Int(partition);
    let (stmt, values) = match row {
        ViewRow::CityDaily(r) => (
            Stmt::UpsertCity,
            vec![
                Date(r.day),
                p,
                count(r.people_sampled),
                count(r.using_code),
                count(r.valid_scans),
                count(r.rescans),
                count(r.rejected),
                count(r.duplicates),
            ],
        ),
        ViewRow::DistrictDaily(r) => (
            Stmt::UpsertDistrict,
            vec![
                Date(r.day),
                Text(r.district.clone()),
                p,
                count(r.people_sampled),
                count(r.using_code),
                count(r.valid_scans),
                count(r.rejected),
            ],
        ),
        ViewRow::SiteHourly(r) => (
            Stmt::UpsertSite,
            vec![
                Date(r.day),
                Text(r.site_id.clone()),
                Int(i32::from(r.hour)),
                p,
                count(r.people_sampled),
                count(r.valid_scans),
            ],
        ),
        ViewRow::MethodDaily(r) => (
            Stmt::UpsertMethod,
            vec![Date(r.day), Text(r.method.clone()), p, count(r.people_sampled)],
        ),
        ViewRow::RejectionsDaily(r) => {
            (Stmt::UpsertRejections, vec![Date(r.day), Text(r.reason.clone()), p, count(r.count)])
        }
        ViewRow::CodesIssuedDaily(r) => (
            Stmt::UpsertCodes,
            vec![Date(r.day), Text(r.kind.clone()), Text(r.channel.clone()), p, count(r.count)],
        ),
    };
    let mut all = Vec::with_capacity(values.len() + 2);
    all.push(BigInt(version));
    all.extend(values);
    all.push(BigInt(ts));
    Bound { stmt, values: all }
}

/// What a commit sends, in order: each step's requests may go concurrently,
/// and a step starts only when every request of the one before succeeded.
/// A request is one statement, or an unlogged batch of statements of one
/// Scylla partition (applied by one replica set, atomically).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPlan {
    pub steps: Vec<Vec<Vec<Bound>>>,
}

impl CommitPlan {
    pub fn statements(&self) -> impl Iterator<Item = &Bound> {
        self.steps.iter().flatten().flatten()
    }

    pub fn requests(&self) -> usize {
        self.steps.iter().map(Vec::len).sum()
    }

    pub fn wire_bytes(&self) -> usize {
        self.statements().map(Bound::wire_bytes).sum()
    }
}

/// The statements of one commit of `partition` of version `version` by the owner of `epoch`:
/// its rows (as unlogged batches per Scylla partition) and the snapshot's
/// chunks, then the checkpoint, then — with a snapshot — the deletion of
/// older snapshots. Every write is stamped with [`write_ts`] of
/// `next_offset`. `now_ms` is the commit's wall-clock time, for `status`.
pub fn commit_plan(
    version: i64,
    partition: i32,
    epoch: i64,
    rows: &[ViewRow],
    next_offset: i64,
    snapshot: Option<&[u8]>,
    now_ms: i64,
) -> Result<CommitPlan, ScyllaError> {
    let ts_rows = write_ts(next_offset, Step::Rows)?;
    let ts_checkpoint = write_ts(next_offset, Step::Checkpoint)?;
    let ts_cleanup = write_ts(next_offset, Step::Cleanup)?;

    let mut upserts: Vec<Bound> =
        rows.iter().map(|r| row_statement(version, partition, r, ts_rows)).collect();
    upserts.sort_by(|a, b| {
        a.stmt.cmp(&b.stmt).then_with(|| {
            a.routing()
                .iter()
                .zip(b.routing())
                .map(|(x, y)| x.key_cmp(y))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        })
    });
    let mut first: Vec<Vec<Bound>> = Vec::new();
    for b in upserts {
        if let Some(batch) = first.last_mut() {
            let same = batch[0].stmt == b.stmt && batch[0].routing() == b.routing();
            let bytes: usize = batch.iter().map(Bound::wire_bytes).sum();
            if same
                && batch.len() < MAX_BATCH_STATEMENTS
                && bytes + b.wire_bytes() <= MAX_BATCH_BYTES
            {
                batch.push(b);
                continue;
            }
        }
        first.push(vec![b]);
    }

    let mut steps = Vec::new();
    let checkpoint = match snapshot {
        Some(bytes) => {
            let manifest = Manifest::of(next_offset, bytes, CHUNK_BYTES);
            for (seq, chunk) in chunks::split(bytes, CHUNK_BYTES) {
                first.push(vec![Bound {
                    stmt: Stmt::InsertChunk,
                    values: vec![
                        Value::BigInt(version),
                        Value::Int(partition),
                        Value::BigInt(next_offset),
                        Value::BigInt(epoch),
                        Value::Int(seq as i32),
                        Value::Blob(chunk.to_vec()),
                        Value::BigInt(ts_rows),
                    ],
                }]);
            }
            Bound {
                stmt: Stmt::WriteCheckpointAndSnapshot,
                values: vec![
                    Value::BigInt(ts_checkpoint),
                    Value::BigInt(next_offset),
                    Value::BigInt(epoch),
                    Value::BigInt(now_ms),
                    Value::Snapshot { manifest, epoch },
                    Value::BigInt(now_ms),
                    Value::BigInt(version),
                    Value::Int(partition),
                ],
            }
        }
        None => Bound {
            stmt: Stmt::WriteCheckpoint,
            values: vec![
                Value::BigInt(ts_checkpoint),
                Value::BigInt(next_offset),
                Value::BigInt(epoch),
                Value::BigInt(now_ms),
                Value::BigInt(version),
                Value::Int(partition),
            ],
        },
    };
    if !first.is_empty() {
        steps.push(first);
    }
    steps.push(vec![vec![checkpoint]]);
    if snapshot.is_some() {
        steps.push(vec![vec![Bound {
            stmt: Stmt::DeleteOlderSnapshots,
            values: vec![
                Value::BigInt(ts_cleanup),
                Value::BigInt(version),
                Value::Int(partition),
                Value::BigInt(next_offset),
            ],
        }]]);
    }
    Ok(CommitPlan { steps })
}

/// The deletions of a dropped version `version`: every Scylla partition of
/// its rows (`keys`: each view's partition keys of that version, the version
/// left out), its checkpoints and snapshot chunks (`partitions`: those its
/// claims name), all at [`drop_ts`]. Their claims go separately, by LWT.
pub fn drop_plan(version: i64, keys: &[(Stmt, Vec<Value>)], partitions: &[i32]) -> Vec<Bound> {
    let ts = Value::BigInt(drop_ts());
    let mut out = Vec::new();
    for (stmt, key) in keys {
        let mut values = vec![ts.clone(), Value::BigInt(version)];
        values.extend(key.iter().cloned());
        out.push(Bound { stmt: *stmt, values });
    }
    for &p in partitions {
        for stmt in [Stmt::DropCheckpoint, Stmt::DropChunks] {
            out.push(Bound {
                stmt,
                values: vec![ts.clone(), Value::BigInt(version), Value::Int(p)],
            });
        }
    }
    out
}

/// The statement deleting a version's partitions of each view, for the
/// partition keys its `Keys…` read returned.
pub fn drop_statement_of(keys: Stmt) -> Option<Stmt> {
    use Stmt::*;
    Some(match keys {
        KeysCity => DropCity,
        KeysDistrict => DropDistrict,
        KeysSite => DropSite,
        KeysMethod => DropMethod,
        KeysRejections => DropRejections,
        KeysCodes => DropCodes,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use swabstream_views::{
        CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly,
    };

    use super::Value::{BigInt, Date, Int, Text};
    use super::*;

    fn ks() -> Keyspace {
        Keyspace::new("views").unwrap()
    }

    fn day() -> Day {
        Day::parse("2022-04-09").unwrap()
    }

    #[test]
    fn keyspace_names_are_cql_identifiers() {
        for ok in ["swabstream", "a", "Views_2", &"k".repeat(48)] {
            assert!(Keyspace::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Keyspace::new("Views_2").unwrap().as_str(), "views_2");
        for bad in ["", "1abc", "_x", "a-b", "ks; DROP KEYSPACE x", "\"q\"", "é", &"k".repeat(49)]
        {
            let err = Keyspace::new(bad).unwrap_err().to_string();
            assert!(err.contains("keyspace") && err.contains("[a-zA-Z]"), "{err}");
        }
    }

    #[test]
    fn replication_as_cql() {
        assert_eq!(
            Replication::Simple(3).cql().unwrap(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let dcs = BTreeMap::from([("dc1".to_owned(), 3), ("eu-west.2".to_owned(), 2)]);
        assert_eq!(
            Replication::PerDatacenter(dcs).cql().unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'eu-west.2': 2}"
        );
        let bad = BTreeMap::from([("dc1': 1} AND durable_writes = false --".to_owned(), 3)]);
        assert!(Replication::PerDatacenter(bad).cql().is_err());
        assert!(Replication::Simple(0).cql().is_err());
        assert!(Replication::PerDatacenter(BTreeMap::new()).cql().is_err());
    }

    #[test]
    fn the_schema_is_the_file_with_the_keyspace_substituted() {
        let stmts = schema(&ks(), &Replication::Simple(1)).unwrap();
        assert_eq!(
            stmts[0],
            "CREATE KEYSPACE IF NOT EXISTS views WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(stmts.len(), 12);
        assert!(
            stmts[..SCHEMA_PREAMBLE]
                .iter()
                .all(|s| s.contains("KEYSPACE") || s.contains("views.meta ")),
            "{stmts:?}"
        );
        for s in &stmts {
            assert!(s.starts_with("CREATE ") && s.contains(" IF NOT EXISTS views"), "{s}");
            assert!(!s.contains('{') || s.starts_with("CREATE KEYSPACE"), "{s}");
            assert!(!s.contains("--"), "{s}");
        }
        assert!(
            stmts
                .iter()
                .any(|s| s.contains("PRIMARY KEY ((version, day, site_id), hour, partition)"))
        );
        assert!(stmts.iter().any(|s| s.contains("PRIMARY KEY ((version, partition))")));
    }

    #[test]
    fn consistency_names() {
        assert_eq!(
            consistency("LOCAL_QUORUM").unwrap(),
            (Consistency::LocalQuorum, SerialConsistency::LocalSerial)
        );
        assert_eq!(
            consistency("quorum").unwrap(),
            (Consistency::Quorum, SerialConsistency::Serial)
        );
        assert!(consistency("SERIAL").is_err());
        assert!(consistency("MOST").unwrap_err().to_string().contains("LOCAL_QUORUM"));
    }

    #[test]
    fn timestamps_at_the_edges() {
        assert_eq!(write_ts(0, Step::Rows).unwrap(), 1);
        assert_eq!(write_ts(10, Step::Checkpoint).unwrap(), 82);
        assert_eq!(write_ts(MAX_OFFSET, Step::Cleanup).unwrap(), MAX_OFFSET * 8 + 3);
        // Every step of the largest offset fits, even those no write uses yet.
        assert!(MAX_OFFSET.checked_mul(STEPS).unwrap().checked_add(STEPS - 1).is_some());
        for bad in [MAX_OFFSET + 1, i64::MAX, -1, i64::MIN] {
            let err = write_ts(bad, Step::Rows).unwrap_err();
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
        // Kafka offsets are i64; the largest a partition can reach in practice
        // (a million records a second for a century) is far inside the range.
        let century = 1_000_000i64 * 86_400 * 365 * 100;
        assert!(
            write_ts(century, Step::Cleanup).unwrap()
                > write_ts(century - 1, Step::Cleanup).unwrap()
        );
    }

    proptest! {
        /// Strictly monotonic: a later offset's every write is newer than an
        /// earlier offset's every write; within one offset, steps in order.
        #[test]
        fn timestamps_strictly_increase_with_the_offset(
            a in 0..=MAX_OFFSET, b in 0..=MAX_OFFSET,
        ) {
            let steps = [Step::Rows, Step::Checkpoint, Step::Cleanup];
            for s in steps {
                for t in steps {
                    let (x, y) = (write_ts(a, s).unwrap(), write_ts(b, t).unwrap());
                    if a < b { prop_assert!(x < y); }
                    if a == b { prop_assert_eq!(x.cmp(&y), s.cmp(&t)); }
                }
            }
        }
    }

    /// Each view's row: the statement text and its values side by side.
    #[test]
    fn every_view_row_as_a_statement() {
        let ts = 8 * 1234 + 1;
        let cases: Vec<(ViewRow, &str, Vec<Value>)> = vec![
            (
                ViewRow::CityDaily(CityDaily {
                    day: day(),
                    people_sampled: 7,
                    using_code: 5,
                    percent_using_code: Some(71.4),
                    valid_scans: 9,
                    rescans: 2,
                    rejected: 3,
                    duplicates: 1,
                }),
                "INSERT INTO views.city_daily_part (version, day, partition, people_sampled, using_code, valid_scans, rescans, rejected, duplicates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                vec![
                    BigInt(9),
                    Date(day()),
                    Int(4),
                    BigInt(7),
                    BigInt(5),
                    BigInt(9),
                    BigInt(2),
                    BigInt(3),
                    BigInt(1),
                    BigInt(ts),
                ],
            ),
            (
                ViewRow::DistrictDaily(DistrictDaily {
                    day: day(),
                    district: "310104".into(),
                    people_sampled: 4,
                    using_code: 3,
                    valid_scans: 6,
                    rejected: 1,
                }),
                "INSERT INTO views.district_daily_part (version, day, district, partition, people_sampled, using_code, valid_scans, rejected) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                vec![
                    BigInt(9),
                    Date(day()),
                    Text("310104".into()),
                    Int(4),
                    BigInt(4),
                    BigInt(3),
                    BigInt(6),
                    BigInt(1),
                    BigInt(ts),
                ],
            ),
            (
                ViewRow::SiteHourly(SiteHourly {
                    day: day(),
                    site_id: "XH-0042".into(),
                    hour: 23,
                    people_sampled: 2,
                    valid_scans: 3,
                }),
                "INSERT INTO views.site_hourly_part (version, day, site_id, hour, partition, people_sampled, valid_scans) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                vec![
                    BigInt(9),
                    Date(day()),
                    Text("XH-0042".into()),
                    Int(23),
                    Int(4),
                    BigInt(2),
                    BigInt(3),
                    BigInt(ts),
                ],
            ),
            (
                ViewRow::MethodDaily(MethodDaily {
                    day: day(),
                    method: "CODE_PAPER".into(),
                    people_sampled: 11,
                }),
                "INSERT INTO views.method_daily_part (version, day, method, partition, people_sampled) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                vec![
                    BigInt(9),
                    Date(day()),
                    Text("CODE_PAPER".into()),
                    Int(4),
                    BigInt(11),
                    BigInt(ts),
                ],
            ),
            (
                ViewRow::RejectionsDaily(RejectionsDaily {
                    day: day(),
                    reason: "IN_FUTURE".into(),
                    count: 13,
                }),
                "INSERT INTO views.rejections_daily_part (version, day, reason, partition, count) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                vec![
                    BigInt(9),
                    Date(day()),
                    Text("IN_FUTURE".into()),
                    Int(4),
                    BigInt(13),
                    BigInt(ts),
                ],
            ),
            (
                ViewRow::CodesIssuedDaily(CodesIssuedDaily {
                    day: day(),
                    kind: "PAPER".into(),
                    channel: "OFFLINE".into(),
                    count: 17,
                }),
                "INSERT INTO views.codes_issued_daily_part (version, day, kind, channel, partition, count) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                vec![
                    BigInt(9),
                    Date(day()),
                    Text("PAPER".into()),
                    Text("OFFLINE".into()),
                    Int(4),
                    BigInt(17),
                    BigInt(ts),
                ],
            ),
        ];
        for (row, text, values) in cases {
            let b = row_statement(9, 4, &row, ts);
            assert_eq!(b.stmt.text(&ks()), text);
            assert_eq!(b.values, values, "{text}");
            // One bound value per marker.
            assert_eq!(text.matches('?').count(), b.values.len(), "{text}");
        }
    }

    fn city(d: Day, people: u64) -> ViewRow {
        ViewRow::CityDaily(CityDaily { day: d, people_sampled: people, ..CityDaily::default() })
    }

    fn district(d: Day, name: &str) -> ViewRow {
        ViewRow::DistrictDaily(DistrictDaily {
            day: d,
            district: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_commit_without_a_snapshot() {
        let d2 = Day(day().0 + 1);
        let rows = [
            district(d2, "310115"),
            city(day(), 3),
            district(day(), "310104"),
            district(d2, "310101"),
        ];
        let plan = commit_plan(9, 2, 7, &rows, 100, None, 1_650_000_000_000).unwrap();
        // Per step, per request: each statement and its routing key.
        type Shape = Vec<Vec<Vec<(Stmt, Vec<Value>)>>>;
        let shape: Shape = plan
            .steps
            .iter()
            .map(|s| {
                s.iter()
                    .map(|r| r.iter().map(|b| (b.stmt, b.routing().to_vec())).collect())
                    .collect()
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![
                    vec![(Stmt::UpsertCity, vec![BigInt(9), Date(day())])],
                    vec![(Stmt::UpsertDistrict, vec![BigInt(9), Date(day())])],
                    // Both districts of the next day: one batch, one Scylla partition.
                    vec![
                        (Stmt::UpsertDistrict, vec![BigInt(9), Date(d2)]),
                        (Stmt::UpsertDistrict, vec![BigInt(9), Date(d2)])
                    ],
                ],
                vec![vec![(Stmt::WriteCheckpoint, vec![])]],
            ]
        );
        assert!(plan.statements().take(4).all(|b| b.values.last() == Some(&BigInt(801))));
        let cp = &plan.steps[1][0][0];
        assert_eq!(
            cp.stmt.text(&ks()),
            "UPDATE views.checkpoint USING TIMESTAMP ? SET next_offset = ?, committed_epoch = ?, committed_at_ms = ? WHERE version = ? AND partition = ?"
        );
        assert_eq!(
            cp.values,
            [BigInt(802), BigInt(100), BigInt(7), BigInt(1_650_000_000_000), BigInt(9), Int(2)]
        );
    }

    #[test]
    fn a_commit_with_a_snapshot_writes_chunks_then_checkpoint_then_deletes_older_ones() {
        let snapshot: Vec<u8> = (0..CHUNK_BYTES * 2 + 5).map(|i| (i % 253) as u8).collect();
        let plan = commit_plan(9, 1, 3, &[city(day(), 1)], 50, Some(&snapshot), 9).unwrap();
        assert_eq!(plan.steps.len(), 3);
        let chunks: Vec<&Bound> =
            plan.steps[0].iter().flatten().filter(|b| b.stmt == Stmt::InsertChunk).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[2].values[..5], [BigInt(9), Int(1), BigInt(50), BigInt(3), Int(2)]);
        assert_eq!(chunks[2].values[5], Value::Blob(snapshot[CHUNK_BYTES * 2..].to_vec()));
        assert_eq!(chunks[2].values[6], BigInt(401));
        let cp = &plan.steps[1][0][0];
        assert_eq!(cp.stmt, Stmt::WriteCheckpointAndSnapshot);
        let manifest = Manifest::of(50, &snapshot, CHUNK_BYTES);
        assert_eq!(
            cp.values,
            [
                BigInt(402),
                BigInt(50),
                BigInt(3),
                BigInt(9),
                Value::Snapshot { manifest, epoch: 3 },
                BigInt(9),
                BigInt(9),
                Int(1)
            ]
        );
        let del = &plan.steps[2][0][0];
        assert_eq!(
            del.stmt.text(&ks()),
            "DELETE FROM views.snapshot_chunk USING TIMESTAMP ? WHERE version = ? AND partition = ? AND snapshot_offset < ?"
        );
        assert_eq!(del.values, [BigInt(403), BigInt(9), Int(1), BigInt(50)]);
        // Reassembled from the statements' own values, the snapshot is whole.
        let parts = chunks.iter().map(|b| match (&b.values[4], &b.values[5]) {
            (Int(seq), Value::Blob(c)) => (*seq as u32, c.clone()),
            _ => unreachable!(),
        });
        assert_eq!(chunks::reassemble(&manifest, parts).unwrap(), snapshot);
    }

    #[test]
    fn batches_stay_small() {
        let rows: Vec<ViewRow> = (0..200).map(|i| district(day(), &format!("d{i:03}"))).collect();
        let plan = commit_plan(1, 0, 1, &rows, 5, None, 0).unwrap();
        let sizes: Vec<usize> = plan.steps[0].iter().map(Vec::len).collect();
        assert_eq!(sizes, [64, 64, 64, 8]);
        let long = "x".repeat(10_000);
        let rows: Vec<ViewRow> = (0..10).map(|i| district(day(), &format!("{long}{i}"))).collect();
        let plan = commit_plan(1, 0, 1, &rows, 5, None, 0).unwrap();
        assert!(
            plan.steps[0]
                .iter()
                .all(|b| b.iter().map(Bound::wire_bytes).sum::<usize>() <= MAX_BATCH_BYTES)
        );
    }

    #[test]
    fn an_offset_past_the_timestamps_is_refused_before_anything_is_built() {
        assert!(commit_plan(1, 0, 1, &[], MAX_OFFSET + 1, None, 0).is_err());
        assert!(commit_plan(1, 0, 1, &[], -1, None, 0).is_err());
        assert!(commit_plan(1, 0, 1, &[], MAX_OFFSET, None, 0).is_ok());
    }

    /// Every write and delete of the timestamped tables says `USING
    /// TIMESTAMP ?` (never the server's clock), every LWT is on `claim` or
    /// `meta`, and no plain write touches those two tables.
    #[test]
    fn every_write_carries_its_timestamp_and_lwts_keep_to_their_tables() {
        for s in Stmt::ALL {
            let text = s.text(&ks());
            let writes = ["INSERT", "UPDATE", "DELETE"].iter().any(|w| text.starts_with(w));
            let lwt_table = text.contains("views.claim ")
                || text.contains("views.meta ")
                || text.contains("views.registry ");
            if writes && !lwt_table {
                assert!(s.is_timestamped_write() && text.contains("USING TIMESTAMP ?"), "{text}");
            }
            if writes && lwt_table {
                assert!(s.is_lwt() && text.contains(" IF "), "{text}");
            }
            if !writes {
                assert!(text.starts_with("SELECT ") && !s.is_lwt(), "{text}");
            }
        }
    }

    #[test]
    fn reads_sum_by_group_by_on_the_key() {
        assert_eq!(
            Stmt::SumSite.text(&ks()),
            "SELECT version, day, site_id, hour, SUM(people_sampled), SUM(valid_scans) FROM views.site_hourly_part GROUP BY version, day, site_id, hour"
        );
        assert_eq!(
            Stmt::SumCity.text(&ks()),
            "SELECT version, day, SUM(people_sampled), SUM(using_code), SUM(valid_scans), SUM(rescans), SUM(rejected), SUM(duplicates) FROM views.city_daily_part GROUP BY version, day"
        );
        assert_eq!(
            Stmt::PartCodes.text(&ks()),
            "SELECT version, day, kind, channel, count FROM views.codes_issued_daily_part WHERE partition = ? ALLOW FILTERING"
        );
    }

    /// A drop deletes whole Scylla partitions of the version, each stamped
    /// above every offset's timestamp, so that a stale writer's late write
    /// to the dropped id stays deleted.
    #[test]
    fn a_drop_deletes_the_versions_partitions_above_every_write() {
        assert!(drop_ts() > write_ts(MAX_OFFSET, Step::Cleanup).unwrap());
        assert_eq!(
            Stmt::DropSite.text(&ks()),
            "DELETE FROM views.site_hourly_part USING TIMESTAMP ? WHERE version = ? AND day = ? AND site_id = ?"
        );
        assert_eq!(
            Stmt::KeysSite.text(&ks()),
            "SELECT DISTINCT version, day, site_id FROM views.site_hourly_part"
        );
        assert_eq!(
            Stmt::KeysCodes.text(&ks()),
            "SELECT DISTINCT version, day FROM views.codes_issued_daily_part"
        );
        let keys = vec![
            (Stmt::DropCity, vec![Date(day())]),
            (Stmt::DropSite, vec![Date(day()), Text("S1".into())]),
        ];
        let plan = drop_plan(4, &keys, &[0, 2]);
        assert_eq!(plan.len(), 2 + 2 * 2);
        for b in &plan {
            assert_eq!(b.values[0], BigInt(drop_ts()));
            assert_eq!(b.values[1], BigInt(4));
            // One bound value per marker.
            assert_eq!(b.stmt.text(&ks()).matches('?').count(), b.values.len(), "{b:?}");
            assert!(b.stmt.is_timestamped_write());
        }
        assert_eq!(plan[3].stmt, Stmt::DropChunks);
        assert_eq!(plan[3].values[2], Int(0));
        assert_eq!(drop_statement_of(Stmt::KeysMethod), Some(Stmt::DropMethod));
        assert_eq!(drop_statement_of(Stmt::ReadClaims), None);
        // The claims of a dropped version go by LWT: `claim` never takes a plain write.
        assert!(Stmt::DeleteClaim.is_lwt() && Stmt::DeleteClaim.text(&ks()).ends_with("IF EXISTS"));
    }

    /// The registry is one row, changed only by compare-and-set on its revision.
    #[test]
    fn the_registry_is_changed_by_compare_and_set() {
        let update = Stmt::UpdateRegistry.text(&ks());
        assert!(update.ends_with("WHERE key = ? IF revision = ?"), "{update}");
        assert_eq!(update.matches('?').count(), 9);
        assert!(Stmt::InsertRegistry.text(&ks()).ends_with("IF NOT EXISTS"));
        assert!(Stmt::UpdateRegistry.is_lwt() && !Stmt::UpdateRegistry.is_timestamped_write());
    }

    /// The store finds a statement's prepared form at `stmt as usize` in
    /// the order of `Stmt::ALL`: the two must agree.
    #[test]
    fn every_statement_is_at_its_own_index() {
        for (i, stmt) in Stmt::ALL.iter().enumerate() {
            assert_eq!(*stmt as usize, i, "{stmt:?}");
        }
    }
}
