//! swabstream's embedded view store: one SQLite file holding each partition's
//! partial view rows, the offset they reflect, and a snapshot of the
//! partition's state — written together, in one transaction, so that the
//! rows and their checkpoint can never disagree (the discipline behind
//! exactly-once views: the store, not Kafka, holds the truth of where a
//! partition is). It implements [`swabstream_store::ViewStore`].
//!
//! Ownership of a partition is fenced with an epoch: [`ViewStore::claim`]
//! bumps it, and a commit made with an older epoch (a worker that lost the
//! partition in a rebalance but has not noticed yet) is refused inside the
//! commit's own transaction.
//!
//! Everything is kept per view version (`swabstream_store::versions`): each
//! table is keyed by the version's id first, the registry is the `version`
//! table plus `meta`'s `live_version`, `previous_version`, `promoted_at_ms`
//! and `next_version_id`, and every change of it is one transaction, so a
//! promotion is atomic for every reader. A file of schema 2 (before
//! versions) is migrated when opened: its rows become `v1`, live.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libsql::params::IntoParams;
use libsql::{Connection, Row, Statement, Value, params};
use swabstream_events::Day;
use swabstream_store::chunks::{self, Manifest};
use swabstream_store::versions::{FIRST_VERSION, Registry, VersionMeta};
use swabstream_store::{
    Checkpoint, Claim, Life, PartitionStatus, Promotion, Snapshot, StoreError, Version, ViewStore,
};
use swabstream_views::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
    ViewSet,
};

const SCHEMA: &str = include_str!("schema.sql");
/// 2: snapshots in chunks, commit times, the partition count in `meta`.
/// 3: named versions of the views, every table keyed by the version's id.
const SCHEMA_VERSION: &str = "3";
/// The tables of schema 2 that schema 3 keys by version (same columns, the
/// version's id put first): what the migration copies.
const VERSIONED_TABLES: [&str; 8] = [
    "checkpoint",
    "snapshot_chunk",
    "city_daily_part",
    "district_daily_part",
    "site_hourly_part",
    "method_daily_part",
    "rejections_daily_part",
    "codes_issued_daily_part",
];
/// The summing views of schema 2, dropped (and made again over the
/// versioned tables) by the migration.
const SUM_VIEWS: [&str; 6] = [
    "city_daily",
    "district_daily",
    "site_hourly",
    "method_daily",
    "rejections_daily",
    "codes_issued_daily",
];
/// Snapshot chunk size: far below SQLite's 1 GB value limit, large enough
/// that a 100 MB snapshot is a few dozen rows.
const CHUNK_BYTES: usize = 4 << 20;

/// libsql's errors as the store interface's: busy/locked is transient.
fn db(e: libsql::Error) -> StoreError {
    let transient = is_busy(&e);
    StoreError::Backend { store: "sqlite", transient, error: Box::new(e) }
}

/// The embedded view store.
///
/// Its API is synchronous: each call runs SQLite on the calling thread (see
/// [`block_on`]), from a plain thread and from inside an async runtime alike.
pub struct SqliteStore {
    // Declared before `upserts`, so it drops first: the statements then hold
    // the last handles of the connection and close it once.
    conn: Connection,
    upserts: Upserts,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` for `topic`'s views.
    pub fn open(path: &Path, topic: &str) -> Result<SqliteStore, StoreError> {
        // Two processes opening a new file at once (two workers starting
        // together) can meet SQLITE_BUSY where SQLite does not call its busy
        // handler (switching the journal mode, creating the schema); opening
        // is idempotent, so it is retried.
        let started = std::time::Instant::now();
        loop {
            match SqliteStore::try_open(path, topic) {
                Err(e) if e.is_transient() && started.elapsed() < Duration::from_secs(30) => {
                    thread::sleep(Duration::from_millis(50));
                }
                result => return result,
            }
        }
    }

    fn try_open(path: &Path, topic: &str) -> Result<SqliteStore, StoreError> {
        let conn = block_on(libsql::Builder::new_local(path).build())
            .map_err(db)?
            .connect()
            .map_err(db)?;
        // Writers on the same file (a worker taking a partition over from
        // another, the CLI reading) wait for each other instead of failing
        // with SQLITE_BUSY at once.
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        // WAL lets analysts read while the worker writes; FULL makes a commit
        // durable when it returns, so a checkpoint never outlives a power cut
        // that its DLQ records did not.
        block_on(conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"))
            .map_err(db)?;
        prepare_schema(&conn)?;
        let upserts = Upserts::prepare(&conn)?;
        let store = SqliteStore { conn, upserts, path: path.to_owned() };
        store.check_meta("topic", topic, |found| StoreError::OtherTopic {
            expected: topic.to_owned(),
            found,
        })?;
        Ok(store)
    }

    /// Opens an existing store, for reading; refuses to create one.
    pub fn open_existing(path: &Path, topic: &str) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        SqliteStore::open(path, topic)
    }

    /// Checks that `meta` holds `value` under `key`, recording it if the key
    /// is new; `mismatch` makes the error from the value found.
    fn check_meta(
        &self,
        key: &str,
        value: &str,
        mismatch: impl FnOnce(String) -> StoreError,
    ) -> Result<(), StoreError> {
        let found =
            query_row(&self.conn, "SELECT value FROM meta WHERE key = ?1", [key], |r| text(r, 0))?;
        match found {
            Some(f) if f != value => Err(mismatch(f)),
            Some(_) => Ok(()),
            None => {
                // Another process may be writing the same key right now.
                exec(
                    &self.conn,
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                    [key, value],
                )?;
                self.check_meta(key, value, mismatch)
            }
        }
    }

    fn read_snapshot(
        &self,
        version: i64,
        partition: i32,
        manifest: &Manifest,
    ) -> Result<Vec<u8>, StoreError> {
        let parts = query(
            &self.conn,
            "SELECT seq, bytes FROM snapshot_chunk
             WHERE version = ?1 AND partition = ?2 AND snapshot_offset = ?3",
            params![version, partition, manifest.next_offset],
            |r| {
                let seq = int(r, 0)?;
                let seq = u32::try_from(seq)
                    .map_err(|_| StoreError::Corrupt(format!("snapshot chunk number {seq}")))?;
                Ok((seq, opt_blob(r, 1)?.unwrap_or_default()))
            },
        )?;
        chunks::reassemble(manifest, parts)
    }

    /// Writes `bytes` as the partition's snapshot at `offset`, replacing any
    /// other; inside the caller's transaction.
    fn write_snapshot(
        &self,
        version: i64,
        partition: i32,
        offset: i64,
        bytes: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        exec(
            &self.conn,
            "DELETE FROM snapshot_chunk WHERE version = ?1 AND partition = ?2",
            params![version, partition],
        )?;
        for (seq, chunk) in chunks::split(bytes, CHUNK_BYTES) {
            // libsql binds only owned values, so each chunk is copied once
            // into a `Value::Blob` (and once more by SQLite: libsql binds
            // blobs as SQLITE_TRANSIENT). `Connection::execute` moves the
            // value on to the bind; a prepared `Statement` would clone it.
            exec(
                &self.conn,
                "INSERT INTO snapshot_chunk (version, partition, snapshot_offset, seq, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![version, partition, offset, i64::from(seq), Value::Blob(chunk.to_vec())],
            )?;
        }
        let m = Manifest::of(offset, bytes, CHUNK_BYTES);
        exec(
            &self.conn,
            "UPDATE checkpoint SET snapshot_offset = ?3, snapshot_chunks = ?4, snapshot_bytes = ?5,
                    snapshot_crc = ?6, snapshot_at_ms = ?7
             WHERE version = ?1 AND partition = ?2",
            params![
                version,
                partition,
                offset,
                i64::from(m.chunks),
                m.bytes as i64,
                i64::from(m.crc32),
                now
            ],
        )
    }
}

impl SqliteStore {
    /// The registry as the tables hold it; inside a transaction when it is
    /// about to change.
    fn load_registry(&self) -> Result<Registry, StoreError> {
        let rows = query(
            &self.conn,
            "SELECT id, name, created_at_ms FROM version ORDER BY id",
            (),
            |r| Ok((text(r, 1)?, VersionMeta { id: int(r, 0)?, created_at_ms: int(r, 2)? })),
        )?;
        let meta = |key: &str| {
            query_row(&self.conn, "SELECT value FROM meta WHERE key = ?1", [key], |r| text(r, 0))
        };
        let number = |key: &str| -> Result<Option<i64>, StoreError> {
            meta(key)?
                .map(|v| {
                    v.parse().map_err(|_| StoreError::Corrupt(format!("meta `{key}` = `{v}`")))
                })
                .transpose()
        };
        let live = meta("live_version")?
            .ok_or_else(|| StoreError::Corrupt("no live version recorded in meta".into()))?;
        let versions: BTreeMap<String, VersionMeta> = rows.into_iter().collect();
        let next_id = number("next_version_id")?
            .unwrap_or_else(|| versions.values().map(|m| m.id + 1).max().unwrap_or(1));
        Ok(Registry {
            versions,
            live,
            previous: meta("previous_version")?,
            next_id,
            promoted_at_ms: number("promoted_at_ms")?,
            dropping: BTreeSet::new(),
        })
    }

    /// Writes `new` over `old` (inside the caller's transaction): versions
    /// added and removed, and the pointers.
    fn save_registry(&self, old: &Registry, new: &Registry) -> Result<(), StoreError> {
        for (name, m) in &new.versions {
            if !old.versions.contains_key(name) {
                exec(
                    &self.conn,
                    "INSERT INTO version (id, name, created_at_ms) VALUES (?1, ?2, ?3)",
                    params![m.id, name.as_str(), m.created_at_ms],
                )?;
            }
        }
        for (name, m) in &old.versions {
            if !new.versions.contains_key(name) {
                exec(&self.conn, "DELETE FROM version WHERE id = ?1", [m.id])?;
            }
        }
        let set = |key: &str, value: Option<String>| match value {
            Some(v) => exec(
                &self.conn,
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                [key, v.as_str()],
            ),
            None => exec(&self.conn, "DELETE FROM meta WHERE key = ?1", [key]),
        };
        set("live_version", Some(new.live.clone()))?;
        set("previous_version", new.previous.clone())?;
        set("next_version_id", Some(new.next_id.to_string()))?;
        set("promoted_at_ms", new.promoted_at_ms.map(|t| t.to_string()))
    }

    /// Runs `change` on the registry in one write transaction and saves
    /// what it made of it; `after` runs in the same transaction with the
    /// result (the drop's deletions).
    fn change_registry<T>(
        &self,
        change: impl FnOnce(&mut Registry) -> Result<T, StoreError>,
        after: impl FnOnce(&Self, &T) -> Result<(), StoreError>,
    ) -> Result<T, StoreError> {
        let tx = Tx::begin(&self.conn)?;
        let old = self.load_registry()?;
        let mut new = old.clone();
        let out = change(&mut new)?;
        after(self, &out)?;
        new.dropping.clear();
        self.save_registry(&old, &new)?;
        tx.commit()?;
        Ok(out)
    }

    /// The error for a version (by id) that the registry no longer holds.
    fn gone(&self, version: &Version) -> StoreError {
        let known = self.load_registry().map(|r| r.names()).unwrap_or_default();
        StoreError::UnknownVersion { name: version.name.clone(), known }
    }

    fn version_exists(&self, version: &Version) -> Result<bool, StoreError> {
        Ok(query_row(&self.conn, "SELECT 1 FROM version WHERE id = ?1", [version.id], |r| {
            int(r, 0)
        })?
        .is_some())
    }
}

impl ViewStore for SqliteStore {
    fn describe(&self) -> String {
        format!("SQLite file {}", self.path.display())
    }

    fn check_partition_count(&mut self, partitions: i32) -> Result<(), StoreError> {
        self.check_meta("partitions", &partitions.to_string(), |found| match found.parse() {
            Ok(recorded) => StoreError::PartitionCount { recorded, found: partitions },
            Err(_) => StoreError::Corrupt(format!("partition count `{found}`")),
        })
    }

    fn registry(&self) -> Result<Registry, StoreError> {
        self.load_registry()
    }

    /// One statement: every worker reads it each second to notice a promotion.
    fn live(&self) -> Result<Version, StoreError> {
        query_row(
            &self.conn,
            "SELECT v.id, v.name FROM version v
             JOIN meta m ON m.key = 'live_version' AND m.value = v.name",
            (),
            |r| Ok(Version { id: int(r, 0)?, name: text(r, 1)? }),
        )?
        .ok_or_else(|| StoreError::Corrupt("the live version is not among the versions".into()))
    }

    fn create_version(&mut self, name: &str) -> Result<Version, StoreError> {
        let now = now_ms();
        self.change_registry(|r| r.create(name, now), |_, _| Ok(()))
    }

    fn promote(&mut self, name: &str) -> Result<Promotion, StoreError> {
        let now = now_ms();
        self.change_registry(|r| r.promote(name, now), |_, _| Ok(()))
    }

    fn promote_back(&mut self) -> Result<Promotion, StoreError> {
        let now = now_ms();
        self.change_registry(
            |r| {
                let back = r.back()?;
                r.promote(&back.name, now)
            },
            |_, _| Ok(()),
        )
    }

    fn drop_version(&mut self, name: &str) -> Result<Version, StoreError> {
        self.change_registry(
            |r| r.drop_version(name),
            |s, v| {
                for table in VERSIONED_TABLES {
                    exec(&s.conn, &format!("DELETE FROM {table} WHERE version = ?1"), [v.id])?;
                }
                Ok(())
            },
        )
    }

    fn checkpoint(
        &self,
        version: &Version,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = query_row(
            &self.conn,
            "SELECT next_offset, snapshot_offset, snapshot_chunks, snapshot_bytes, snapshot_crc
             FROM checkpoint WHERE version = ?1 AND partition = ?2 AND next_offset >= 0",
            params![version.id, partition],
            |r| {
                let manifest = match opt_int(r, 1)? {
                    Some(next_offset) => Some(Manifest {
                        next_offset,
                        chunks: narrow(r, 2)?,
                        bytes: narrow(r, 3)?,
                        crc32: narrow(r, 4)?,
                    }),
                    None => None,
                };
                Ok((int(r, 0)?, manifest))
            },
        )?;
        let Some((next_offset, manifest)) = row else { return Ok(None) };
        let snapshot = match manifest {
            Some(m) => Some(Snapshot {
                next_offset: m.next_offset,
                bytes: self.read_snapshot(version.id, partition, &m)?,
            }),
            None => None,
        };
        Ok(Some(Checkpoint { next_offset, snapshot }))
    }

    fn claim(&mut self, version: &Version, partition: i32) -> Result<Claim, StoreError> {
        let tx = Tx::begin(&self.conn)?;
        // A dropped version is not claimed back into being: its rows are gone.
        if !self.version_exists(version)? {
            return Err(self.gone(version));
        }
        let epoch = query_row(
            &self.conn,
            "SELECT epoch FROM checkpoint WHERE version = ?1 AND partition = ?2",
            params![version.id, partition],
            |r| int(r, 0),
        )?;
        let epoch = match epoch {
            Some(e) => {
                exec(
                    &self.conn,
                    "UPDATE checkpoint SET epoch = ?3, updated_at_ms = ?4
                     WHERE version = ?1 AND partition = ?2",
                    params![version.id, partition, e + 1, now_ms()],
                )?;
                e + 1
            }
            None => {
                exec(
                    &self.conn,
                    "INSERT INTO checkpoint (version, partition, next_offset, epoch, updated_at_ms)
                     VALUES (?1, ?2, -1, 1, ?3)",
                    params![version.id, partition, now_ms()],
                )?;
                1
            }
        };
        tx.commit()?;
        Ok(Claim { epoch, checkpoint: self.checkpoint(version, partition)? })
    }

    fn touch(&mut self, version: &Version, owned: &[(i32, i64)]) -> Result<(), StoreError> {
        if owned.is_empty() {
            return Ok(());
        }
        let tx = Tx::begin(&self.conn)?;
        let now = now_ms();
        for &(partition, epoch) in owned {
            exec(
                &self.conn,
                "UPDATE checkpoint SET updated_at_ms = ?4
                 WHERE version = ?1 AND partition = ?2 AND epoch = ?3",
                params![version.id, partition, epoch, now],
            )?;
        }
        tx.commit()
    }

    fn partitions(&self, version: &Version) -> Result<Vec<PartitionStatus>, StoreError> {
        query(
            &self.conn,
            "SELECT partition, epoch, next_offset, snapshot_offset, snapshot_bytes, updated_at_ms,
                    committed_at_ms, snapshot_at_ms
             FROM checkpoint WHERE version = ?1 ORDER BY partition",
            [version.id],
            |r| {
                Ok(PartitionStatus {
                    partition: narrow(r, 0)?,
                    epoch: int(r, 1)?,
                    next_offset: Some(int(r, 2)?).filter(|o| *o >= 0),
                    snapshot_offset: opt_int(r, 3)?,
                    snapshot_bytes: opt_int(r, 4)?.map(|b| b as u64),
                    touched_at_ms: int(r, 5)?,
                    committed_at_ms: opt_int(r, 6)?,
                    snapshot_at_ms: opt_int(r, 7)?,
                })
            },
        )
    }

    fn signs_of_life(&self) -> Result<Vec<Life>, StoreError> {
        query(
            &self.conn,
            "SELECT version, partition, epoch, updated_at_ms FROM checkpoint",
            (),
            |r| {
                Ok(Life {
                    version_id: int(r, 0)?,
                    partition: narrow(r, 1)?,
                    epoch: int(r, 2)?,
                    touched_at_ms: int(r, 3)?,
                })
            },
        )
    }

    fn commit(
        &mut self,
        version: &Version,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let tx = Tx::begin(&self.conn)?;
        let found = query_row(
            &self.conn,
            "SELECT epoch, next_offset FROM checkpoint WHERE version = ?1 AND partition = ?2",
            params![version.id, partition],
            |r| Ok((int(r, 0)?, int(r, 1)?)),
        )?;
        let Some((current, stored)) = found else {
            // Never claimed here, or the version was dropped under the writer.
            if !self.version_exists(version)? {
                return Err(self.gone(version));
            }
            return Err(StoreError::Fenced { partition, ours: epoch, current: 0 });
        };
        if current != epoch {
            return Err(StoreError::Fenced { partition, ours: epoch, current });
        }
        if next_offset < stored {
            return Err(StoreError::Regress { partition, stored, offered: next_offset });
        }
        self.upserts.write(version.id, partition, rows)?;
        let now = now_ms();
        if let Some(bytes) = snapshot {
            self.write_snapshot(version.id, partition, next_offset, bytes, now)?;
        }
        // A commit is no sign of life (claims and touches are): a replay
        // writing a version must not look like the workers' version in `status`.
        exec(
            &self.conn,
            "UPDATE checkpoint SET next_offset = ?3, committed_at_ms = ?4
             WHERE version = ?1 AND partition = ?2",
            params![version.id, partition, next_offset, now],
        )?;
        tx.commit()
    }

    fn version_views(&self, version: &Version) -> Result<ViewSet, StoreError> {
        self.read_views(version.id, None)
    }

    fn partition_views(&self, version: &Version, partition: i32) -> Result<ViewSet, StoreError> {
        self.read_views(version.id, Some(partition))
    }
}

/// Opens the schema on `conn`: creates it in a new file, migrates a file of
/// schema 2, and refuses any other version (a newer build's file).
fn prepare_schema(conn: &Connection) -> Result<(), StoreError> {
    let found = schema_version(conn)?;
    if found.as_deref() == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    // Creating or migrating: under the write lock, and looked at again
    // there (another process may have done it meanwhile).
    let tx = Tx::begin(conn)?;
    match schema_version(conn)?.as_deref() {
        Some(SCHEMA_VERSION) => {}
        None => {
            block_on(conn.execute_batch(SCHEMA)).map_err(db)?;
            exec(
                conn,
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )?;
            first_version(conn)?;
        }
        Some("2") => migrate_from_2(conn)?,
        Some(other) => {
            return Err(StoreError::SchemaVersion {
                found: other.to_owned(),
                supported: SCHEMA_VERSION,
            });
        }
    }
    tx.commit()
}

/// The schema version a file records; None for a new file.
fn schema_version(conn: &Connection) -> Result<Option<String>, StoreError> {
    let has_meta = query_row(
        conn,
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        (),
        |r| int(r, 0),
    )?
    .is_some();
    if !has_meta {
        return Ok(None);
    }
    query_row(conn, "SELECT value FROM meta WHERE key = 'schema_version'", (), |r| text(r, 0))
}

/// The registry of a new store, or of a migrated one: `v1`, id 1, live.
fn first_version(conn: &Connection) -> Result<(), StoreError> {
    let r = Registry::initial(now_ms());
    exec(
        conn,
        "INSERT INTO version (id, name, created_at_ms) VALUES (1, ?1, ?2)",
        params![FIRST_VERSION, r.versions[FIRST_VERSION].created_at_ms],
    )?;
    exec(
        conn,
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('live_version', ?1), ('next_version_id', ?2)",
        [FIRST_VERSION, &r.next_id.to_string()],
    )
}

/// Schema 2 → 3, inside the caller's transaction: every table gets the
/// version's id as its first column, and every row becomes version 1
/// (`v1`, live). Epochs, checkpoints and snapshots are kept as they are, so
/// workers resume where they were.
fn migrate_from_2(conn: &Connection) -> Result<(), StoreError> {
    for view in SUM_VIEWS {
        exec(conn, &format!("DROP VIEW IF EXISTS {view}"), ())?;
    }
    for table in VERSIONED_TABLES {
        exec(conn, &format!("ALTER TABLE {table} RENAME TO {table}_v2"), ())?;
    }
    block_on(conn.execute_batch(SCHEMA)).map_err(db)?;
    for table in VERSIONED_TABLES {
        exec(conn, &format!("INSERT INTO {table} SELECT 1, * FROM {table}_v2"), ())?;
        exec(conn, &format!("DROP TABLE {table}_v2"), ())?;
    }
    first_version(conn)?;
    exec(conn, "UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [SCHEMA_VERSION])?;
    Ok(())
}

/// One view's table, its key columns and its value columns, for reading a
/// version's rows summed over partitions or one partition's.
struct ViewTable {
    table: &'static str,
    key: &'static str,
    values: &'static [&'static str],
}

const TABLES: [ViewTable; 6] = [
    ViewTable {
        table: "city_daily_part",
        key: "day",
        values: &[
            "people_sampled",
            "using_code",
            "valid_scans",
            "rescans",
            "rejected",
            "duplicates",
        ],
    },
    ViewTable {
        table: "district_daily_part",
        key: "day, district",
        values: &["people_sampled", "using_code", "valid_scans", "rejected"],
    },
    ViewTable {
        table: "site_hourly_part",
        key: "day, site_id, hour",
        values: &["people_sampled", "valid_scans"],
    },
    ViewTable { table: "method_daily_part", key: "day, method", values: &["people_sampled"] },
    ViewTable { table: "rejections_daily_part", key: "day, reason", values: &["count"] },
    ViewTable { table: "codes_issued_daily_part", key: "day, kind, channel", values: &["count"] },
];

impl ViewTable {
    /// The key and values of the version's rows: summed per key, or one
    /// partition's (`?1` the version's id, `?2` the partition).
    fn select(&self, partition: bool) -> String {
        if partition {
            format!(
                "SELECT {}, {} FROM {} WHERE version = ?1 AND partition = ?2",
                self.key,
                self.values.join(", "),
                self.table
            )
        } else {
            let sums: Vec<String> = self.values.iter().map(|v| format!("SUM({v})")).collect();
            format!(
                "SELECT {k}, {} FROM {} WHERE version = ?1 GROUP BY {k}",
                sums.join(", "),
                self.table,
                k = self.key
            )
        }
    }
}

impl SqliteStore {
    /// A version's views summed over partitions, or one partition's rows.
    fn read_views(&self, version: i64, partition: Option<i32>) -> Result<ViewSet, StoreError> {
        let mut rows = Vec::new();
        let c = &self.conn;
        let [city, district, site, method, rejections, codes] = &TABLES;
        let q = |t: &ViewTable| t.select(partition.is_some());
        let args = || match partition {
            Some(p) => vec![Value::Integer(version), Value::Integer(i64::from(p))],
            None => vec![Value::Integer(version)],
        };
        rows.extend(query(c, &q(city), args(), |r| {
            Ok(ViewRow::CityDaily(CityDaily {
                day: day(r, 0)?,
                people_sampled: count(r, 1)?,
                using_code: count(r, 2)?,
                percent_using_code: None,
                valid_scans: count(r, 3)?,
                rescans: count(r, 4)?,
                rejected: count(r, 5)?,
                duplicates: count(r, 6)?,
            }))
        })?);
        rows.extend(query(c, &q(district), args(), |r| {
            Ok(ViewRow::DistrictDaily(DistrictDaily {
                day: day(r, 0)?,
                district: text(r, 1)?,
                people_sampled: count(r, 2)?,
                using_code: count(r, 3)?,
                valid_scans: count(r, 4)?,
                rejected: count(r, 5)?,
            }))
        })?);
        rows.extend(query(c, &q(site), args(), |r| {
            let hour = int(r, 2)?;
            Ok(ViewRow::SiteHourly(SiteHourly {
                day: day(r, 0)?,
                site_id: text(r, 1)?,
                hour: u8::try_from(hour)
                    .map_err(|_| StoreError::Corrupt(format!("hour {hour}")))?,
                people_sampled: count(r, 3)?,
                valid_scans: count(r, 4)?,
            }))
        })?);
        rows.extend(query(c, &q(method), args(), |r| {
            Ok(ViewRow::MethodDaily(MethodDaily {
                day: day(r, 0)?,
                method: text(r, 1)?,
                people_sampled: count(r, 2)?,
            }))
        })?);
        rows.extend(query(c, &q(rejections), args(), |r| {
            Ok(ViewRow::RejectionsDaily(RejectionsDaily {
                day: day(r, 0)?,
                reason: text(r, 1)?,
                count: count(r, 2)?,
            }))
        })?);
        rows.extend(query(c, &q(codes), args(), |r| {
            Ok(ViewRow::CodesIssuedDaily(CodesIssuedDaily {
                day: day(r, 0)?,
                kind: text(r, 1)?,
                channel: text(r, 2)?,
                count: count(r, 3)?,
            }))
        })?);
        // Rows are already summed per key (or one partition's); summing them
        // again is the identity and derives the percentage the same way
        // everywhere in swabstream.
        Ok(ViewSet::from_rows(rows))
    }
}

/// The upserts of partial rows, one per view, prepared once per store (what
/// rusqlite's `prepare_cached` did).
struct Upserts {
    city: Statement,
    district: Statement,
    site: Statement,
    method: Statement,
    rejections: Statement,
    codes: Statement,
}

impl Upserts {
    fn prepare(conn: &Connection) -> Result<Upserts, StoreError> {
        let prepare = |sql: &str| block_on(conn.prepare(sql)).map_err(db);
        Ok(Upserts {
            city: prepare(
                "INSERT OR REPLACE INTO city_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?,
            district: prepare(
                "INSERT OR REPLACE INTO district_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            site: prepare(
                "INSERT OR REPLACE INTO site_hourly_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            method: prepare(
                "INSERT OR REPLACE INTO method_daily_part VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            rejections: prepare(
                "INSERT OR REPLACE INTO rejections_daily_part VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            codes: prepare(
                "INSERT OR REPLACE INTO codes_issued_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
        })
    }

    fn write(&self, v: i64, p: i32, rows: &[ViewRow]) -> Result<(), StoreError> {
        for row in rows {
            match row {
                ViewRow::CityDaily(r) => run(
                    &self.city,
                    params![
                        v,
                        p,
                        r.day.to_string(),
                        sql_count(r.people_sampled),
                        sql_count(r.using_code),
                        sql_count(r.valid_scans),
                        sql_count(r.rescans),
                        sql_count(r.rejected),
                        sql_count(r.duplicates)
                    ],
                )?,
                ViewRow::DistrictDaily(r) => run(
                    &self.district,
                    params![
                        v,
                        p,
                        r.day.to_string(),
                        r.district.as_str(),
                        sql_count(r.people_sampled),
                        sql_count(r.using_code),
                        sql_count(r.valid_scans),
                        sql_count(r.rejected)
                    ],
                )?,
                ViewRow::SiteHourly(r) => run(
                    &self.site,
                    params![
                        v,
                        p,
                        r.day.to_string(),
                        r.site_id.as_str(),
                        r.hour,
                        sql_count(r.people_sampled),
                        sql_count(r.valid_scans)
                    ],
                )?,
                ViewRow::MethodDaily(r) => run(
                    &self.method,
                    params![
                        v,
                        p,
                        r.day.to_string(),
                        r.method.as_str(),
                        sql_count(r.people_sampled)
                    ],
                )?,
                ViewRow::RejectionsDaily(r) => run(
                    &self.rejections,
                    params![v, p, r.day.to_string(), r.reason.as_str(), sql_count(r.count)],
                )?,
                ViewRow::CodesIssuedDaily(r) => run(
                    &self.codes,
                    params![
                        v,
                        p,
                        r.day.to_string(),
                        r.kind.as_str(),
                        r.channel.as_str(),
                        sql_count(r.count)
                    ],
                )?,
            }
        }
        Ok(())
    }
}

/// An open write transaction (`BEGIN IMMEDIATE`), rolled back when dropped
/// uncommitted — on an early return, an error or a panic — as rusqlite's was.
///
/// IMMEDIATE takes the write lock up front, waiting for it up to the busy
/// timeout; a deferred transaction that reads and then writes could instead
/// fail with SQLITE_BUSY, without waiting, when another connection wrote in
/// between. (Not libsql's `Connection::transaction`: its local transaction
/// unwraps the rollback's result when dropped, so a failed rollback would
/// panic the worker.)
struct Tx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Tx<'c> {
    fn begin(conn: &'c Connection) -> Result<Tx<'c>, StoreError> {
        exec(conn, "BEGIN IMMEDIATE", ())?;
        Ok(Tx { conn, open: true })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        exec(self.conn, "COMMIT", ())?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            // The error that ended the transaction is the one reported.
            let _ = block_on(self.conn.execute("ROLLBACK", ()));
        }
    }
}

/// Runs one of libsql's futures to completion on the calling thread.
///
/// libsql's API is async, but the local (`core`) connection this store uses
/// does no real awaiting: in libsql 0.9.30 every `async fn` behind it
/// (`local::impls`: `LibsqlConnection`, `LibsqlStmt`, `LibsqlTx`,
/// `LibsqlRows`) is a plain synchronous SQLite call wrapped in an `async fn`,
/// and `Builder::new_local(..).build()` only records the path. No tokio, no
/// reactor, no `spawn_blocking`: the futures are ready at their first poll
/// (a unit test below checks it). So this needs no runtime, and works the same
/// from a plain thread and from inside a tokio runtime (current-thread or
/// multi-thread; there, like any SQLite call, it blocks the calling thread for
/// the call's duration — nothing is nested in tokio's `block_on`).
///
/// The first poll uses a no-op waker (no allocation). Should a later libsql
/// really wait for something, this is still a correct executor: it polls again
/// with a waker that unparks this thread, and parks until woken.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let mut future = pin!(future);
    if let Poll::Ready(v) = future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => thread::park(),
        }
    }
}

fn exec(conn: &Connection, sql: &str, params: impl IntoParams) -> Result<(), StoreError> {
    block_on(conn.execute(sql, params)).map_err(db)?;
    Ok(())
}

/// Runs a prepared statement and resets it: libsql leaves a statement as its
/// last step left it, and SQLite ignores bindings to a statement not reset.
fn run(stmt: &Statement, params: impl IntoParams) -> Result<(), StoreError> {
    let done = block_on(stmt.execute(params));
    stmt.reset();
    done.map_err(db)?;
    Ok(())
}

fn query<T>(
    conn: &Connection,
    sql: &str,
    params: impl IntoParams,
    mut map: impl FnMut(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = block_on(conn.query(sql, params)).map_err(db)?;
    let mut out = Vec::new();
    while let Some(row) = block_on(rows.next()).map_err(db)? {
        out.push(map(&row)?);
    }
    Ok(out)
}

/// The first row of a query, if any; the statement is finalized on return.
fn query_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl IntoParams,
    map: impl FnOnce(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut rows = block_on(conn.query(sql, params)).map_err(db)?;
    block_on(rows.next()).map_err(db)?.map(|row| map(&row)).transpose()
}

// Column readers. libsql's own `Row::get` panics (`unreachable!`) on a value of
// another type; these report it as a corrupt store instead.

fn unexpected(r: &Row, i: i32, wanted: &str, found: &Value) -> StoreError {
    let found = match found {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    };
    let column = r.column_name(i).unwrap_or("?");
    StoreError::Corrupt(format!("column `{column}` holds {found}, not {wanted}"))
}

fn int(r: &Row, i: i32) -> Result<i64, StoreError> {
    match r.get_value(i).map_err(db)? {
        Value::Integer(v) => Ok(v),
        v => Err(unexpected(r, i, "an integer", &v)),
    }
}

fn opt_int(r: &Row, i: i32) -> Result<Option<i64>, StoreError> {
    match r.get_value(i).map_err(db)? {
        Value::Null => Ok(None),
        Value::Integer(v) => Ok(Some(v)),
        v => Err(unexpected(r, i, "an integer", &v)),
    }
}

/// An integer column that must fit a narrower type (a partition number, a
/// chunk count, a CRC).
fn narrow<T: TryFrom<i64>>(r: &Row, i: i32) -> Result<T, StoreError> {
    let v = int(r, i)?;
    T::try_from(v).map_err(|_| {
        let column = r.column_name(i).unwrap_or("?");
        StoreError::Corrupt(format!("column `{column}` holds {v}, out of its range"))
    })
}

fn text(r: &Row, i: i32) -> Result<String, StoreError> {
    match r.get_value(i).map_err(db)? {
        Value::Text(s) => Ok(s),
        v => Err(unexpected(r, i, "text", &v)),
    }
}

fn opt_blob(r: &Row, i: i32) -> Result<Option<Vec<u8>>, StoreError> {
    match r.get_value(i).map_err(db)? {
        Value::Null => Ok(None),
        Value::Blob(b) => Ok(Some(b)),
        v => Err(unexpected(r, i, "a blob", &v)),
    }
}

fn day(r: &Row, i: i32) -> Result<Day, StoreError> {
    let s = text(r, i)?;
    Day::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("`{s}` is not a day")))
}

fn count(r: &Row, i: i32) -> Result<u64, StoreError> {
    let v = int(r, i)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}")))
}

fn sql_count(v: u64) -> i64 {
    // Counts of people and events stay far below 2⁶³.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether SQLite said another connection holds the lock.
fn is_busy(e: &libsql::Error) -> bool {
    let text = e.to_string();
    text.contains("database is locked") || text.contains("database is busy")
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// [`super::block_on`]'s premise: libsql's local futures are ready at the
    /// first poll. If a libsql upgrade breaks this, `block_on` still works (it
    /// parks), but re-check the upgrade's local connection for tokio use.
    #[test]
    fn libsql_local_futures_are_ready_at_the_first_poll() {
        fn ready<F: Future>(f: F) -> F::Output {
            match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(v) => v,
                Poll::Pending => panic!("a libsql local future was not ready at its first poll"),
            }
        }
        let dir =
            std::env::temp_dir().join(format!("swabstream-store-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = ready(libsql::Builder::new_local(dir.join("poll.db")).build()).unwrap();
        let conn = db.connect().unwrap();
        ready(conn.execute_batch("CREATE TABLE t (x INTEGER, b BLOB)")).unwrap();
        let tx = ready(conn.transaction()).unwrap();
        ready(tx.execute("INSERT INTO t VALUES (?1, ?2)", (1, vec![1u8, 2]))).unwrap();
        ready(tx.commit()).unwrap();
        let stmt = ready(conn.prepare("INSERT INTO t VALUES (?1, NULL)")).unwrap();
        ready(stmt.execute([2])).unwrap();
        let mut rows = ready(conn.query("SELECT x FROM t ORDER BY x", ())).unwrap();
        let mut xs = Vec::new();
        while let Some(r) = ready(rows.next()).unwrap() {
            xs.push(r.get::<i64>(0).unwrap());
        }
        assert_eq!(xs, [1, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
