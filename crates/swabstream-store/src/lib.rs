//! swabstream's embedded view store: one SQLite file holding each partition's
//! partial view rows, the offset they reflect, and a snapshot of the
//! partition's state — written together, in one transaction, so that the
//! rows and their checkpoint can never disagree (the discipline behind
//! exactly-once views: the store, not Kafka, holds the truth of where a
//! partition is).
//!
//! Ownership of a partition is fenced with an epoch: [`ViewStore::claim`]
//! bumps it, and a commit made with an older epoch (a worker that lost the
//! partition in a rebalance but has not noticed yet) is refused.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use swabstream_events::Day;
use swabstream_views::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
    ViewSet,
};

const SCHEMA: &str = include_str!("schema.sql");
const SCHEMA_VERSION: &str = "1";

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (the file is unreadable, the disk is full, ...).
    #[error("view store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was made for another topic.
    #[error(
        "this view store holds views of topic `{found}`, not `{expected}`; use another data directory or store path"
    )]
    OtherTopic { expected: String, found: String },
    /// The file holds a schema version this build does not know.
    #[error("view store schema version {0} is not supported by this build")]
    SchemaVersion(String),
    /// Another worker claimed the partition since this one did: it must stop writing.
    #[error("partition {partition} was claimed by another worker (epoch {current}, ours {ours})")]
    Fenced { partition: i32, ours: i64, current: i64 },
    /// A commit would move the partition's checkpoint backwards.
    #[error("partition {partition}: checkpoint {stored} is ahead of the commit's {offered}")]
    Regress { partition: i32, stored: i64, offered: i64 },
    /// There is no store at the path (nothing has run there yet).
    #[error(
        "no view store at {0}: run a worker first, or point --config / store.path at the store"
    )]
    Missing(String),
    /// A stored value cannot be read back (the file was edited by hand?).
    #[error("view store holds an unreadable value: {0}")]
    Corrupt(String),
}

/// Where a partition stands in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The offset after the last record the partition's rows reflect.
    pub next_offset: i64,
    /// The partition's state as of an offset at or before `next_offset`.
    pub snapshot: Option<Snapshot>,
}

/// A partition's state snapshot and the offset it was taken at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub next_offset: i64,
    pub bytes: Vec<u8>,
}

/// A claim on a partition: the epoch to commit with, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    pub checkpoint: Option<Checkpoint>,
}

/// The embedded view store.
#[derive(Debug)]
pub struct ViewStore {
    conn: Connection,
}

impl ViewStore {
    /// Opens (creating if needed) the store at `path` for `topic`'s views.
    pub fn open(path: &Path, topic: &str) -> Result<ViewStore, StoreError> {
        let conn = Connection::open(path)?;
        // WAL lets analysts read while the worker writes; FULL makes a commit
        // durable when it returns, so a checkpoint never outlives a power cut
        // that its DLQ records did not.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        let store = ViewStore { conn };
        store.check_meta("schema_version", SCHEMA_VERSION, |found| {
            StoreError::SchemaVersion(found)
        })?;
        store.check_meta("topic", topic, |found| StoreError::OtherTopic {
            expected: topic.to_owned(),
            found,
        })?;
        Ok(store)
    }

    /// Opens an existing store, for reading; refuses to create one.
    pub fn open_existing(path: &Path, topic: &str) -> Result<ViewStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        ViewStore::open(path, topic)
    }

    fn check_meta(
        &self,
        key: &str,
        value: &str,
        mismatch: impl FnOnce(String) -> StoreError,
    ) -> Result<(), StoreError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        match found {
            Some(f) if f != value => Err(mismatch(f)),
            Some(_) => Ok(()),
            None => {
                self.conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", [key, value])?;
                Ok(())
            }
        }
    }

    /// The checkpoint of a partition, if it has one.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT next_offset, snapshot_offset, snapshot FROM checkpoint WHERE partition = ?1",
                [partition],
                |r| {
                    let snapshot = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<Vec<u8>>>(2)?) {
                        (Some(next_offset), Some(bytes)) => Some(Snapshot { next_offset, bytes }),
                        _ => None,
                    };
                    Ok(Checkpoint { next_offset: r.get(0)?, snapshot })
                },
            )
            .optional()?)
    }

    /// Every partition's checkpointed offset.
    pub fn offsets(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT partition, next_offset FROM checkpoint ORDER BY partition")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Claims a partition for this worker: bumps its epoch, so commits of any
    /// earlier claimant are refused from now on, and returns where it stands.
    pub fn claim(&mut self, partition: i32) -> Result<Claim, StoreError> {
        let tx = self.conn.transaction()?;
        let epoch: Option<i64> = tx
            .query_row("SELECT epoch FROM checkpoint WHERE partition = ?1", [partition], |r| {
                r.get(0)
            })
            .optional()?;
        let epoch = match epoch {
            Some(e) => {
                tx.execute(
                    "UPDATE checkpoint SET epoch = ?2 WHERE partition = ?1",
                    params![partition, e + 1],
                )?;
                e + 1
            }
            None => {
                tx.execute(
                    "INSERT INTO checkpoint (partition, next_offset, epoch, updated_at_ms) VALUES (?1, -1, 1, ?2)",
                    params![partition, now_ms()],
                )?;
                1
            }
        };
        tx.commit()?;
        let checkpoint = self.checkpoint(partition)?.filter(|c| c.next_offset >= 0);
        Ok(Claim { epoch, checkpoint })
    }

    /// Writes a partition's changed rows (absolute partial values) and the
    /// offset they reflect — and, when given, a state snapshot taken at that
    /// offset — in one transaction. Refused if another worker claimed the
    /// partition since `epoch`, or if it would move the checkpoint backwards.
    pub fn commit(
        &mut self,
        partition: i32,
        epoch: i64,
        rows: &[ViewRow],
        next_offset: i64,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (current, stored): (i64, i64) = tx
            .query_row(
                "SELECT epoch, next_offset FROM checkpoint WHERE partition = ?1",
                [partition],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, -1));
        if current != epoch {
            return Err(StoreError::Fenced { partition, ours: epoch, current });
        }
        if next_offset < stored {
            return Err(StoreError::Regress { partition, stored, offered: next_offset });
        }
        write_rows(&tx, partition, rows)?;
        match snapshot {
            Some(bytes) => tx.execute(
                "UPDATE checkpoint SET next_offset = ?2, snapshot_offset = ?2, snapshot = ?3, updated_at_ms = ?4
                 WHERE partition = ?1",
                params![partition, next_offset, bytes, now_ms()],
            )?,
            None => tx.execute(
                "UPDATE checkpoint SET next_offset = ?2, updated_at_ms = ?3 WHERE partition = ?1",
                params![partition, next_offset, now_ms()],
            )?,
        };
        tx.commit()?;
        Ok(())
    }

    /// The city's views: every partition's partial rows summed by the store's
    /// SQL views, `percent_using_code` derived from the sums.
    pub fn views(&self) -> Result<ViewSet, StoreError> {
        self.read_views("")
    }

    /// One partition's partial rows, as views.
    pub fn partition_views(&self, partition: i32) -> Result<ViewSet, StoreError> {
        self.read_views(&format!("_part WHERE partition = {partition}"))
    }

    fn read_views(&self, suffix: &str) -> Result<ViewSet, StoreError> {
        let mut rows = Vec::new();
        let c = &self.conn;
        let q = |view: &str, cols: &str| format!("SELECT {cols} FROM {view}{suffix}");
        for r in query(
            c,
            &q(
                "city_daily",
                "day, people_sampled, using_code, valid_scans, rescans, rejected, duplicates",
            ),
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
        )? {
            rows.push(r);
        }
        rows.extend(query(
            c,
            &q(
                "district_daily",
                "day, district, people_sampled, using_code, valid_scans, rejected",
            ),
            |r| {
                Ok(ViewRow::DistrictDaily(DistrictDaily {
                    day: day(r, 0)?,
                    district: r.get(1)?,
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
            |r| {
                Ok(ViewRow::SiteHourly(SiteHourly {
                    day: day(r, 0)?,
                    site_id: r.get(1)?,
                    hour: r.get(2)?,
                    people_sampled: count(r, 3)?,
                    valid_scans: count(r, 4)?,
                }))
            },
        )?);
        rows.extend(query(c, &q("method_daily", "day, method, people_sampled"), |r| {
            Ok(ViewRow::MethodDaily(MethodDaily {
                day: day(r, 0)?,
                method: r.get(1)?,
                people_sampled: count(r, 2)?,
            }))
        })?);
        rows.extend(query(c, &q("rejections_daily", "day, reason, count"), |r| {
            Ok(ViewRow::RejectionsDaily(RejectionsDaily {
                day: day(r, 0)?,
                reason: r.get(1)?,
                count: count(r, 2)?,
            }))
        })?);
        rows.extend(query(c, &q("codes_issued_daily", "day, kind, channel, count"), |r| {
            Ok(ViewRow::CodesIssuedDaily(CodesIssuedDaily {
                day: day(r, 0)?,
                kind: r.get(1)?,
                channel: r.get(2)?,
                count: count(r, 3)?,
            }))
        })?);
        // Rows are already summed per key (or one partition's); summing them
        // again is the identity and derives the percentage the same way
        // everywhere in swabstream.
        Ok(ViewSet::from_rows(rows))
    }
}

fn query<T>(
    conn: &Connection,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], map)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn day(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Day> {
    let s: String = r.get(i)?;
    Day::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("`{s}` is not a day").into(),
        )
    })
}

fn count(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(i)?;
    u64::try_from(v).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Integer,
            format!("negative count {v}").into(),
        )
    })
}

fn sql_count(v: u64) -> i64 {
    // Counts of people and events stay far below 2⁶³.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn write_rows(tx: &Transaction<'_>, p: i32, rows: &[ViewRow]) -> Result<(), StoreError> {
    for row in rows {
        match row {
            ViewRow::CityDaily(r) => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO city_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    p,
                    r.day.to_string(),
                    sql_count(r.people_sampled),
                    sql_count(r.using_code),
                    sql_count(r.valid_scans),
                    sql_count(r.rescans),
                    sql_count(r.rejected),
                    sql_count(r.duplicates)
                ])?,
            ViewRow::DistrictDaily(r) => tx
                .prepare_cached("INSERT OR REPLACE INTO district_daily_part VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
                .execute(params![
                    p,
                    r.day.to_string(),
                    r.district,
                    sql_count(r.people_sampled),
                    sql_count(r.using_code),
                    sql_count(r.valid_scans),
                    sql_count(r.rejected)
                ])?,
            ViewRow::SiteHourly(r) => tx
                .prepare_cached("INSERT OR REPLACE INTO site_hourly_part VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                .execute(params![
                    p,
                    r.day.to_string(),
                    r.site_id,
                    r.hour,
                    sql_count(r.people_sampled),
                    sql_count(r.valid_scans)
                ])?,
            ViewRow::MethodDaily(r) => tx
                .prepare_cached("INSERT OR REPLACE INTO method_daily_part VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![p, r.day.to_string(), r.method, sql_count(r.people_sampled)])?,
            ViewRow::RejectionsDaily(r) => tx
                .prepare_cached("INSERT OR REPLACE INTO rejections_daily_part VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![p, r.day.to_string(), r.reason, sql_count(r.count)])?,
            ViewRow::CodesIssuedDaily(r) => tx
                .prepare_cached("INSERT OR REPLACE INTO codes_issued_daily_part VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![p, r.day.to_string(), r.kind, r.channel, sql_count(r.count)])?,
        };
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
