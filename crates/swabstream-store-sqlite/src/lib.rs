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
use swabstream_store::{Checkpoint, Claim, PartitionStatus, Snapshot, StoreError, ViewStore};
use swabstream_views::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
    ViewSet,
};

const SCHEMA: &str = include_str!("schema.sql");
/// 2: snapshots in chunks, commit times, the partition count in `meta`.
const SCHEMA_VERSION: &str = "2";
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
        block_on(conn.execute_batch(SCHEMA)).map_err(db)?;
        let upserts = Upserts::prepare(&conn)?;
        let store = SqliteStore { conn, upserts, path: path.to_owned() };
        store.check_meta("schema_version", SCHEMA_VERSION, |found| StoreError::SchemaVersion {
            found,
            supported: SCHEMA_VERSION,
        })?;
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

    fn read_snapshot(&self, partition: i32, manifest: &Manifest) -> Result<Vec<u8>, StoreError> {
        let parts = query(
            &self.conn,
            "SELECT seq, bytes FROM snapshot_chunk WHERE partition = ?1 AND snapshot_offset = ?2",
            params![partition, manifest.next_offset],
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
        partition: i32,
        offset: i64,
        bytes: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        exec(&self.conn, "DELETE FROM snapshot_chunk WHERE partition = ?1", [partition])?;
        for (seq, chunk) in chunks::split(bytes, CHUNK_BYTES) {
            // libsql binds only owned values, so each chunk is copied once
            // into a `Value::Blob` (and once more by SQLite: libsql binds
            // blobs as SQLITE_TRANSIENT). `Connection::execute` moves the
            // value on to the bind; a prepared `Statement` would clone it.
            exec(
                &self.conn,
                "INSERT INTO snapshot_chunk (partition, snapshot_offset, seq, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![partition, offset, i64::from(seq), Value::Blob(chunk.to_vec())],
            )?;
        }
        let m = Manifest::of(offset, bytes, CHUNK_BYTES);
        exec(
            &self.conn,
            "UPDATE checkpoint SET snapshot_offset = ?2, snapshot_chunks = ?3, snapshot_bytes = ?4,
                    snapshot_crc = ?5, snapshot_at_ms = ?6
             WHERE partition = ?1",
            params![
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

    fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, StoreError> {
        let row = query_row(
            &self.conn,
            "SELECT next_offset, snapshot_offset, snapshot_chunks, snapshot_bytes, snapshot_crc
             FROM checkpoint WHERE partition = ?1 AND next_offset >= 0",
            [partition],
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
                bytes: self.read_snapshot(partition, &m)?,
            }),
            None => None,
        };
        Ok(Some(Checkpoint { next_offset, snapshot }))
    }

    fn claim(&mut self, partition: i32) -> Result<Claim, StoreError> {
        let tx = Tx::begin(&self.conn)?;
        let epoch = query_row(
            &self.conn,
            "SELECT epoch FROM checkpoint WHERE partition = ?1",
            [partition],
            |r| int(r, 0),
        )?;
        let epoch = match epoch {
            Some(e) => {
                exec(
                    &self.conn,
                    "UPDATE checkpoint SET epoch = ?2, updated_at_ms = ?3 WHERE partition = ?1",
                    params![partition, e + 1, now_ms()],
                )?;
                e + 1
            }
            None => {
                exec(
                    &self.conn,
                    "INSERT INTO checkpoint (partition, next_offset, epoch, updated_at_ms) VALUES (?1, -1, 1, ?2)",
                    params![partition, now_ms()],
                )?;
                1
            }
        };
        tx.commit()?;
        Ok(Claim { epoch, checkpoint: self.checkpoint(partition)? })
    }

    fn touch(&mut self, owned: &[(i32, i64)]) -> Result<(), StoreError> {
        if owned.is_empty() {
            return Ok(());
        }
        let tx = Tx::begin(&self.conn)?;
        let now = now_ms();
        for &(partition, epoch) in owned {
            exec(
                &self.conn,
                "UPDATE checkpoint SET updated_at_ms = ?3 WHERE partition = ?1 AND epoch = ?2",
                params![partition, epoch, now],
            )?;
        }
        tx.commit()
    }

    fn partitions(&self) -> Result<Vec<PartitionStatus>, StoreError> {
        query(
            &self.conn,
            "SELECT partition, epoch, next_offset, snapshot_offset, snapshot_bytes, updated_at_ms,
                    committed_at_ms, snapshot_at_ms
             FROM checkpoint ORDER BY partition",
            (),
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

    fn commit(
        &mut self,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let tx = Tx::begin(&self.conn)?;
        let (current, stored) = query_row(
            &self.conn,
            "SELECT epoch, next_offset FROM checkpoint WHERE partition = ?1",
            [partition],
            |r| Ok((int(r, 0)?, int(r, 1)?)),
        )?
        .unwrap_or((0, -1));
        if current != epoch {
            return Err(StoreError::Fenced { partition, ours: epoch, current });
        }
        if next_offset < stored {
            return Err(StoreError::Regress { partition, stored, offered: next_offset });
        }
        self.upserts.write(partition, rows)?;
        let now = now_ms();
        if let Some(bytes) = snapshot {
            self.write_snapshot(partition, next_offset, bytes, now)?;
        }
        exec(
            &self.conn,
            "UPDATE checkpoint SET next_offset = ?2, updated_at_ms = ?3, committed_at_ms = ?3
             WHERE partition = ?1",
            params![partition, next_offset, now],
        )?;
        tx.commit()
    }

    fn views(&self) -> Result<ViewSet, StoreError> {
        self.read_views("")
    }

    fn partition_views(&self, partition: i32) -> Result<ViewSet, StoreError> {
        self.read_views(&format!("_part WHERE partition = {partition}"))
    }
}

impl SqliteStore {
    /// The views summed by the store's SQL views (`suffix` empty), or one
    /// partition's rows (`suffix` naming the `_part` table and partition).
    fn read_views(&self, suffix: &str) -> Result<ViewSet, StoreError> {
        let mut rows = Vec::new();
        let c = &self.conn;
        let q = |view: &str, cols: &str| format!("SELECT {cols} FROM {view}{suffix}");
        rows.extend(query(
            c,
            &q(
                "city_daily",
                "day, people_sampled, using_code, valid_scans, rescans, rejected, duplicates",
            ),
            (),
            |r| {
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
            },
        )?);
        rows.extend(query(
            c,
            &q(
                "district_daily",
                "day, district, people_sampled, using_code, valid_scans, rejected",
            ),
            (),
            |r| {
                Ok(ViewRow::DistrictDaily(DistrictDaily {
                    day: day(r, 0)?,
                    district: text(r, 1)?,
                    people_sampled: count(r, 2)?,
                    using_code: count(r, 3)?,
                    valid_scans: count(r, 4)?,
                    rejected: count(r, 5)?,
                }))
            },
        )?);
        rows.extend(query(
            c,
            &q("site_hourly", "day, site_id, hour, people_sampled, valid_scans"),
            (),
            |r| {
                let hour = int(r, 2)?;
                Ok(ViewRow::SiteHourly(SiteHourly {
                    day: day(r, 0)?,
                    site_id: text(r, 1)?,
                    hour: u8::try_from(hour)
                        .map_err(|_| StoreError::Corrupt(format!("hour {hour}")))?,
                    people_sampled: count(r, 3)?,
                    valid_scans: count(r, 4)?,
                }))
            },
        )?);
        rows.extend(query(c, &q("method_daily", "day, method, people_sampled"), (), |r| {
            Ok(ViewRow::MethodDaily(MethodDaily {
                day: day(r, 0)?,
                method: text(r, 1)?,
                people_sampled: count(r, 2)?,
            }))
        })?);
        rows.extend(query(c, &q("rejections_daily", "day, reason, count"), (), |r| {
            Ok(ViewRow::RejectionsDaily(RejectionsDaily {
                day: day(r, 0)?,
                reason: text(r, 1)?,
                count: count(r, 2)?,
            }))
        })?);
        rows.extend(query(c, &q("codes_issued_daily", "day, kind, channel, count"), (), |r| {
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
                "INSERT OR REPLACE INTO city_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            district: prepare(
                "INSERT OR REPLACE INTO district_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            site: prepare(
                "INSERT OR REPLACE INTO site_hourly_part VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            method: prepare("INSERT OR REPLACE INTO method_daily_part VALUES (?1, ?2, ?3, ?4)")?,
            rejections: prepare(
                "INSERT OR REPLACE INTO rejections_daily_part VALUES (?1, ?2, ?3, ?4)",
            )?,
            codes: prepare(
                "INSERT OR REPLACE INTO codes_issued_daily_part VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
        })
    }

    fn write(&self, p: i32, rows: &[ViewRow]) -> Result<(), StoreError> {
        for row in rows {
            match row {
                ViewRow::CityDaily(r) => run(
                    &self.city,
                    params![
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
                    params![p, r.day.to_string(), r.method.as_str(), sql_count(r.people_sampled)],
                )?,
                ViewRow::RejectionsDaily(r) => run(
                    &self.rejections,
                    params![p, r.day.to_string(), r.reason.as_str(), sql_count(r.count)],
                )?,
                ViewRow::CodesIssuedDaily(r) => run(
                    &self.codes,
                    params![
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
