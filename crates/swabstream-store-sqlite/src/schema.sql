-- swabstream's embedded view store, schema version 3. One file, readable
-- with the sqlite3 shell:
--   sqlite3 views.db 'SELECT * FROM city_daily'
--
-- The store holds named versions of the views (`version`), one of them live
-- (`meta` key `live_version`); every other table is keyed by the version's
-- id first. Each *_part table holds one partition's partial rows, with
-- absolute values (so a rewrite is idempotent); the views of the same names
-- without `_part` sum the live version's rows into the city's views (SPEC §4).
-- `checkpoint` holds, per version and partition, the offset the rows
-- reflect, the owner's epoch (a worker that lost the partition can no longer
-- write), and the manifest of the partition's state snapshot, whose chunks
-- are in `snapshot_chunk`. `meta` records the schema version, the topic, its
-- partition count, and the live and previous versions.
--
-- Schema 2 (before versions) had the same tables without `version`; opening
-- such a file migrates it in one transaction: its rows become version 1,
-- named `v1`, live.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Ids are never given twice (`meta` key `next_version_id`): a name dropped
-- and made again is a new version.
CREATE TABLE IF NOT EXISTS version (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS checkpoint (
    version         INTEGER NOT NULL,
    partition       INTEGER NOT NULL,
    next_offset     INTEGER NOT NULL,      -- -1: claimed, never committed
    epoch           INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,      -- last sign of life: claim or touch
    committed_at_ms INTEGER,
    -- The latest snapshot's manifest; its bytes are in snapshot_chunk.
    snapshot_offset INTEGER,
    snapshot_chunks INTEGER,
    snapshot_bytes  INTEGER,
    snapshot_crc    INTEGER,
    snapshot_at_ms  INTEGER,
    PRIMARY KEY (version, partition)
) WITHOUT ROWID;

-- Snapshots in chunks (see swabstream-store's `chunks`): a week of a city's
-- partition is past SQLite's 1 GB value limit. Only the checkpoint's
-- snapshot is kept; older ones are deleted in the commit that replaces it.
CREATE TABLE IF NOT EXISTS snapshot_chunk (
    version         INTEGER NOT NULL,
    partition       INTEGER NOT NULL,
    snapshot_offset INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    bytes           BLOB NOT NULL,
    PRIMARY KEY (version, partition, snapshot_offset, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS city_daily_part (
    version INTEGER NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL,
    people_sampled INTEGER NOT NULL, using_code INTEGER NOT NULL, valid_scans INTEGER NOT NULL,
    rescans INTEGER NOT NULL, rejected INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    PRIMARY KEY (version, partition, day)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS district_daily_part (
    version INTEGER NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL, district TEXT NOT NULL,
    people_sampled INTEGER NOT NULL, using_code INTEGER NOT NULL, valid_scans INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    PRIMARY KEY (version, partition, day, district)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS site_hourly_part (
    version INTEGER NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL, site_id TEXT NOT NULL, hour INTEGER NOT NULL,
    people_sampled INTEGER NOT NULL, valid_scans INTEGER NOT NULL,
    PRIMARY KEY (version, partition, day, site_id, hour)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS method_daily_part (
    version INTEGER NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL, method TEXT NOT NULL,
    people_sampled INTEGER NOT NULL,
    PRIMARY KEY (version, partition, day, method)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rejections_daily_part (
    version INTEGER NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL, reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (version, partition, day, reason)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS codes_issued_daily_part (
    version INTEGER NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (version, partition, day, kind, channel)
) WITHOUT ROWID;

-- The live version's id, for the summing views below.
CREATE VIEW IF NOT EXISTS live_version_id AS
    SELECT v.id FROM version v JOIN meta m ON m.key = 'live_version' AND m.value = v.name;

CREATE VIEW IF NOT EXISTS city_daily AS
    SELECT day, SUM(people_sampled) AS people_sampled, SUM(using_code) AS using_code,
           CASE WHEN SUM(people_sampled) > 0
                THEN SUM(using_code) * 100.0 / SUM(people_sampled) END AS percent_using_code,
           SUM(valid_scans) AS valid_scans, SUM(rescans) AS rescans, SUM(rejected) AS rejected,
           SUM(duplicates) AS duplicates
    FROM city_daily_part WHERE version = (SELECT id FROM live_version_id) GROUP BY day ORDER BY day;

CREATE VIEW IF NOT EXISTS district_daily AS
    SELECT day, district, SUM(people_sampled) AS people_sampled, SUM(using_code) AS using_code,
           SUM(valid_scans) AS valid_scans, SUM(rejected) AS rejected
    FROM district_daily_part WHERE version = (SELECT id FROM live_version_id) GROUP BY day, district ORDER BY day, district;

CREATE VIEW IF NOT EXISTS site_hourly AS
    SELECT day, site_id, hour, SUM(people_sampled) AS people_sampled, SUM(valid_scans) AS valid_scans
    FROM site_hourly_part WHERE version = (SELECT id FROM live_version_id) GROUP BY day, site_id, hour ORDER BY day, site_id, hour;

CREATE VIEW IF NOT EXISTS method_daily AS
    SELECT day, method, SUM(people_sampled) AS people_sampled
    FROM method_daily_part WHERE version = (SELECT id FROM live_version_id) GROUP BY day, method ORDER BY day, method;

CREATE VIEW IF NOT EXISTS rejections_daily AS
    SELECT day, reason, SUM(count) AS count
    FROM rejections_daily_part WHERE version = (SELECT id FROM live_version_id) GROUP BY day, reason ORDER BY day, reason;

CREATE VIEW IF NOT EXISTS codes_issued_daily AS
    SELECT day, kind, channel, SUM(count) AS count
    FROM codes_issued_daily_part WHERE version = (SELECT id FROM live_version_id) GROUP BY day, kind, channel ORDER BY day, kind, channel;
