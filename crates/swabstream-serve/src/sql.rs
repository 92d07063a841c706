//! The read-only SQL endpoint for BI tools (SPEC §8): the PostgreSQL wire
//! protocol (`pgwire`), where `psql`, Grafana, Superset or Metabase run
//! `SELECT` over the six views, tables with SPEC §4's names and columns.
//!
//! The statements run in an in-memory SQLite database (libsql, the tree's
//! one SQLite) loaded from the refresher's latest snapshot — never against
//! the view store, which keeps seeing one read per refresh interval. The
//! copy is rebuilt when a query finds the snapshot changed. Reads only: a
//! statement must be a `SELECT` (or `WITH … SELECT`, `VALUES`, `EXPLAIN`),
//! the connection is `query_only`, and an authorizer denies every action
//! but reading; each statement is interrupted after the time limit.
//!
//! Beside the six views, two tables say how fresh the numbers are (what
//! `as_of` says in every HTTP answer, SPEC §8): `as_of`, one row (read_at,
//! checked_at, stale, problem, lag), and `as_of_partitions`, one row per Kafka
//! partition (partition, checkpoint_offset, log_end, lag, committed_at). They
//! are rewritten whenever the snapshot's `as_of` moves, even when the views
//! did not: the log ends and the read time change without the views.
//!
//! The user name is the analyst's id, the password their token.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use swabstream_gateway::auth::Credentials;
use swabstream_views::ViewSet;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::{AsOf, Snapshot};

/// Longest a statement may run before it is interrupted.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most rows one answer holds.
pub const MAX_ROWS: usize = 1_000_000;

const SCHEMA: &str = "
CREATE TABLE city_daily (day TEXT NOT NULL, people_sampled INTEGER NOT NULL, using_code INTEGER NOT NULL,
  percent_using_code REAL, valid_scans INTEGER NOT NULL, rescans INTEGER NOT NULL, rejected INTEGER NOT NULL,
  duplicates INTEGER NOT NULL, PRIMARY KEY (day));
CREATE TABLE district_daily (day TEXT NOT NULL, district TEXT NOT NULL, people_sampled INTEGER NOT NULL,
  using_code INTEGER NOT NULL, valid_scans INTEGER NOT NULL, rejected INTEGER NOT NULL, PRIMARY KEY (day, district));
CREATE TABLE site_hourly (day TEXT NOT NULL, site_id TEXT NOT NULL, hour INTEGER NOT NULL,
  people_sampled INTEGER NOT NULL, valid_scans INTEGER NOT NULL, PRIMARY KEY (day, site_id, hour));
CREATE TABLE method_daily (day TEXT NOT NULL, method TEXT NOT NULL, people_sampled INTEGER NOT NULL,
  PRIMARY KEY (day, method));
CREATE TABLE rejections_daily (day TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
  PRIMARY KEY (day, reason));
CREATE TABLE codes_issued_daily (day TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
  count INTEGER NOT NULL, PRIMARY KEY (day, kind, channel));
CREATE TABLE as_of (read_at TEXT, checked_at TEXT NOT NULL, stale BOOLEAN NOT NULL, problem TEXT,
  lag INTEGER);
CREATE TABLE as_of_partitions (partition INTEGER NOT NULL, checkpoint_offset INTEGER, log_end INTEGER,
  lag INTEGER, committed_at TEXT, PRIMARY KEY (partition));
";

/// The in-memory copy and the generation of the snapshot it holds.
struct Loaded {
    generation: u64,
    /// The freshness the `as_of` tables hold.
    as_of: AsOf,
    conn: libsql::Connection,
    _db: libsql::Database,
}

/// Answers the analysts' statements.
pub struct Backend {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    copy: Mutex<Option<Loaded>>,
    parser: Arc<NoopQueryParser>,
    timeout: Duration,
}

impl Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

fn sqlite_error(e: libsql::Error) -> PgWireError {
    let text = e.to_string();
    if text.contains("interrupted") {
        return user_error("57014", "the statement ran past the time limit and was cancelled");
    }
    if text.contains("not authorized") || text.contains("readonly") || text.contains("read-only") {
        return user_error("25006", READ_ONLY);
    }
    user_error("42601", text)
}

const READ_ONLY: &str =
    "swabstream's SQL endpoint is read-only: only SELECT statements over the views run here";

/// `sql` after its leading white space and comments (`-- …` lines and
/// `/* … */` blocks). Empty when the statement is only comments: pgx, the
/// driver of Grafana's PostgreSQL data source, pings a connection with
/// `-- ping`, which PostgreSQL answers as an empty query.
fn without_leading_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    loop {
        if let Some(line) = rest.strip_prefix("--") {
            rest = line.split_once('\n').map_or("", |(_, after)| after).trim_start();
        } else if let Some(block) = rest.strip_prefix("/*") {
            // Unterminated: all comment (SQLite would refuse it anyway).
            rest = block.split_once("*/").map_or("", |(_, after)| after).trim_start();
        } else {
            return rest;
        }
    }
}

/// Whether `sql` holds no statement at all, only white space, `;` and comments.
fn is_empty_statement(sql: &str) -> bool {
    without_leading_comments(sql).trim_matches(|c: char| c == ';' || c.is_whitespace()).is_empty()
}

/// Whether `sql` is a `SET` (drivers set session options on connecting;
/// they are accepted and ignored).
fn is_set(sql: &str) -> bool {
    let s = without_leading_comments(sql);
    s.len() > 4 && s[..4].eq_ignore_ascii_case("SET ")
}

/// Refuses anything but a read, before SQLite sees it (SQLite's own guards
/// stand behind this: `query_only` and an authorizer).
fn check_read_only(sql: &str) -> PgWireResult<()> {
    let first = without_leading_comments(sql)
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if matches!(first.as_str(), "SELECT" | "WITH" | "VALUES" | "EXPLAIN") {
        Ok(())
    } else {
        Err(user_error("25006", format!("{READ_ONLY}; `{first}` is refused")))
    }
}

impl Backend {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, timeout: Duration) -> Backend {
        Backend {
            snapshots,
            copy: Mutex::new(None),
            parser: Arc::new(NoopQueryParser::new()),
            timeout,
        }
    }

    /// Runs one read, returning the column names and types and the rows.
    async fn run(&self, sql: &str) -> PgWireResult<(Vec<(String, Type)>, Vec<Vec<libsql::Value>>)> {
        check_read_only(sql)?;
        let snap = self.snapshots.borrow().clone();
        let mut copy = self.copy.lock().await;
        match copy.as_mut() {
            Some(c) if c.generation == snap.generation => {
                if c.as_of != snap.as_of {
                    if let Err(e) = refresh_as_of(&c.conn, &snap.as_of).await {
                        // The guards may be down on that connection: no
                        // statement runs there; the next one loads a new copy.
                        *copy = None;
                        return Err(sqlite_error(e));
                    }
                    c.as_of = snap.as_of.clone();
                }
            }
            _ => {
                *copy = Some(
                    load(&snap.views, &snap.as_of, snap.generation).await.map_err(sqlite_error)?,
                );
            }
        }
        let conn = &copy.as_ref().expect("just loaded").conn;
        // The interrupt comes from another task while this one runs the statement.
        let watchdog = {
            let conn = conn.clone();
            let limit = self.timeout;
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                let _ = conn.interrupt();
            })
        };
        let result = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(read_all(conn, sql))
        });
        watchdog.abort();
        result
    }

    fn answer(
        &self,
        columns: Vec<(String, Type)>,
        rows: Vec<Vec<libsql::Value>>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let fields: Vec<FieldInfo> = columns
            .into_iter()
            .enumerate()
            .map(|(i, (name, ty))| FieldInfo::new(name, None, None, ty, format.format_for(i)))
            .collect();
        let fields = Arc::new(fields);
        let mut encoded = Vec::with_capacity(rows.len());
        for row in rows {
            let mut enc = DataRowEncoder::new(fields.clone());
            for (value, field) in row.into_iter().zip(fields.iter()) {
                match value {
                    libsql::Value::Null => enc.encode_field(&None::<i64>)?,
                    libsql::Value::Integer(i) if *field.datatype() == Type::BOOL => {
                        enc.encode_field(&(i != 0))?
                    }
                    libsql::Value::Integer(i) if *field.datatype() == Type::FLOAT8 => {
                        enc.encode_field(&(i as f64))?
                    }
                    libsql::Value::Integer(i) => enc.encode_field(&i)?,
                    libsql::Value::Real(f) => enc.encode_field(&f)?,
                    libsql::Value::Text(t) => enc.encode_field(&t)?,
                    libsql::Value::Blob(b) => enc.encode_field(&b)?,
                }
            }
            encoded.push(Ok(enc.take_row()));
        }
        Ok(Response::Query(QueryResponse::new(fields, stream::iter(encoded))))
    }
}

/// A fresh in-memory database holding `views` and `as_of`, made read-only.
async fn load(views: &ViewSet, as_of: &AsOf, generation: u64) -> Result<Loaded, libsql::Error> {
    let db = libsql::Builder::new_local(":memory:").build().await?;
    let conn = db.connect()?;
    conn.execute_batch(SCHEMA).await?;
    conn.execute("BEGIN", ()).await?;
    let v = views;
    for r in &v.city_daily {
        conn.execute(
            "INSERT INTO city_daily VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            libsql::params![
                r.day.to_string(),
                r.people_sampled as i64,
                r.using_code as i64,
                r.percent_using_code,
                r.valid_scans as i64,
                r.rescans as i64,
                r.rejected as i64,
                r.duplicates as i64
            ],
        )
        .await?;
    }
    for r in &v.district_daily {
        conn.execute(
            "INSERT INTO district_daily VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            libsql::params![
                r.day.to_string(),
                r.district.clone(),
                r.people_sampled as i64,
                r.using_code as i64,
                r.valid_scans as i64,
                r.rejected as i64
            ],
        )
        .await?;
    }
    let site = conn.prepare("INSERT INTO site_hourly VALUES (?1, ?2, ?3, ?4, ?5)").await?;
    for r in &v.site_hourly {
        site.execute(libsql::params![
            r.day.to_string(),
            r.site_id.clone(),
            i64::from(r.hour),
            r.people_sampled as i64,
            r.valid_scans as i64
        ])
        .await?;
        site.reset();
    }
    for r in &v.method_daily {
        conn.execute(
            "INSERT INTO method_daily VALUES (?1, ?2, ?3)",
            libsql::params![r.day.to_string(), r.method.clone(), r.people_sampled as i64],
        )
        .await?;
    }
    for r in &v.rejections_daily {
        conn.execute(
            "INSERT INTO rejections_daily VALUES (?1, ?2, ?3)",
            libsql::params![r.day.to_string(), r.reason.clone(), r.count as i64],
        )
        .await?;
    }
    for r in &v.codes_issued_daily {
        conn.execute(
            "INSERT INTO codes_issued_daily VALUES (?1, ?2, ?3, ?4)",
            libsql::params![r.day.to_string(), r.kind.clone(), r.channel.clone(), r.count as i64],
        )
        .await?;
    }
    conn.execute("COMMIT", ()).await?;
    write_as_of(&conn, as_of).await?;
    guard(&conn).await?;
    Ok(Loaded { generation, as_of: as_of.clone(), conn, _db: db })
}

/// Makes the connection read-only: `query_only`, and an authorizer that
/// allows nothing but reading.
async fn guard(conn: &libsql::Connection) -> Result<(), libsql::Error> {
    conn.execute_batch("PRAGMA query_only = ON;").await?;
    let reads_only: libsql::AuthHook = Arc::new(|ctx: &libsql::AuthContext<'_>| {
        use libsql::AuthAction as A;
        match ctx.action {
            A::Select | A::Read { .. } | A::Function { .. } | A::Recursive => {
                libsql::Authorization::Allow
            }
            _ => libsql::Authorization::Deny,
        }
    });
    conn.authorizer(Some(reads_only))
}

/// Rewrites the `as_of` tables of a guarded copy: the guards come down for
/// the rewrite and go back up before any analyst's statement can run (the
/// caller holds the copy's lock throughout).
async fn refresh_as_of(conn: &libsql::Connection, as_of: &AsOf) -> Result<(), libsql::Error> {
    conn.authorizer(None)?;
    conn.execute_batch("PRAGMA query_only = OFF;").await?;
    write_as_of(conn, as_of).await?;
    guard(conn).await
}

/// Replaces the rows of `as_of` and `as_of_partitions`, in one transaction.
async fn write_as_of(conn: &libsql::Connection, a: &AsOf) -> Result<(), libsql::Error> {
    conn.execute("BEGIN", ()).await?;
    conn.execute_batch("DELETE FROM as_of; DELETE FROM as_of_partitions;").await?;
    conn.execute(
        "INSERT INTO as_of VALUES (?1, ?2, ?3, ?4, ?5)",
        libsql::params![
            a.read_at.clone(),
            a.checked_at.clone(),
            i64::from(a.stale),
            a.problem.clone(),
            a.lag
        ],
    )
    .await?;
    for p in &a.partitions {
        conn.execute(
            "INSERT INTO as_of_partitions VALUES (?1, ?2, ?3, ?4, ?5)",
            libsql::params![
                i64::from(p.partition),
                p.checkpoint_offset,
                p.log_end,
                p.lag,
                p.committed_at.clone()
            ],
        )
        .await?;
    }
    conn.execute("COMMIT", ()).await?;
    Ok(())
}

/// Runs `sql` and reads every row, typing each column by its declared type
/// or, for expressions, by its first non-null value.
async fn read_all(
    conn: &libsql::Connection,
    sql: &str,
) -> PgWireResult<(Vec<(String, Type)>, Vec<Vec<libsql::Value>>)> {
    let stmt = conn.prepare(sql).await.map_err(sqlite_error)?;
    let declared: Vec<(String, Option<String>)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.decl_type().map(str::to_ascii_uppercase)))
        .collect();
    let mut rows = stmt.query(()).await.map_err(sqlite_error)?;
    let mut out: Vec<Vec<libsql::Value>> = Vec::new();
    while let Some(row) = rows.next().await.map_err(sqlite_error)? {
        if out.len() >= MAX_ROWS {
            return Err(user_error(
                "54000",
                format!("more than {MAX_ROWS} rows: add a WHERE or LIMIT"),
            ));
        }
        let mut values = Vec::with_capacity(declared.len());
        for i in 0..declared.len() {
            values.push(row.get_value(i as i32).map_err(sqlite_error)?);
        }
        out.push(values);
    }
    let columns = declared
        .into_iter()
        .enumerate()
        .map(|(i, (name, decl))| {
            let ty = match decl.as_deref() {
                Some("INTEGER") => Type::INT8,
                Some("BOOLEAN") => Type::BOOL,
                Some("REAL") => Type::FLOAT8,
                Some("TEXT") => Type::VARCHAR,
                _ => {
                    let first =
                        out.iter().map(|r| &r[i]).find(|v| !matches!(v, libsql::Value::Null));
                    match first {
                        Some(libsql::Value::Integer(_)) => {
                            // A mix of integers and reals is a float column.
                            if out.iter().any(|r| matches!(r[i], libsql::Value::Real(_))) {
                                Type::FLOAT8
                            } else {
                                Type::INT8
                            }
                        }
                        Some(libsql::Value::Real(_)) => Type::FLOAT8,
                        Some(libsql::Value::Blob(_)) => Type::BYTEA,
                        _ => Type::VARCHAR,
                    }
                }
            };
            (name, ty)
        })
        .collect();
    Ok((columns, out))
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let query = query.trim().trim_end_matches(';').trim();
        if is_empty_statement(query) {
            return Ok(vec![Response::EmptyQuery]);
        }
        if is_set(query) {
            return Ok(vec![Response::Execution(Tag::new("SET"))]);
        }
        let (columns, rows) = self.run(query).await?;
        Ok(vec![self.answer(columns, rows, &Format::UnifiedText)?])
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if portal.parameter_len() > 0 {
            return Err(user_error(
                "0A000",
                "statements with parameters are not supported: inline the values",
            ));
        }
        let sql = portal.statement.statement.trim().trim_end_matches(';');
        if is_empty_statement(sql) {
            return Ok(Response::EmptyQuery);
        }
        if is_set(sql) {
            return Ok(Response::Execution(Tag::new("SET")));
        }
        let (columns, rows) = self.run(sql).await?;
        self.answer(columns, rows, &portal.result_column_format)
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let fields = self.describe(&stmt.statement, &Format::UnifiedBinary).await?;
        Ok(DescribeStatementResponse::new(vec![], fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let fields =
            self.describe(&portal.statement.statement, &portal.result_column_format).await?;
        Ok(DescribePortalResponse::new(fields))
    }
}

impl Backend {
    /// The columns a statement answers (by running it: the views are small).
    async fn describe(&self, sql: &str, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        let sql = sql.trim().trim_end_matches(';');
        if is_set(sql) || is_empty_statement(sql) {
            return Ok(vec![]);
        }
        let (columns, _) = self.run(sql).await?;
        Ok(columns
            .into_iter()
            .enumerate()
            .map(|(i, (name, ty))| FieldInfo::new(name, None, None, ty, format.format_for(i)))
            .collect())
    }
}

/// Analysts' tokens as passwords: the user is the analyst's id.
struct Tokens(Arc<Credentials>);

impl Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

#[async_trait]
impl AuthSource for Tokens {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        // Only hashes are kept: verify_password below does the checking.
        Ok(Password::new(None, vec![]))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default().to_owned();
        let header = [b"Bearer ".as_slice(), presented].concat();
        match self.0.authenticate(Some(&header)) {
            Ok(analyst) if analyst.id == user => Ok(None),
            _ => Err(PgWireError::InvalidPassword(user)),
        }
    }
}

struct Handlers {
    backend: Arc<Backend>,
    credentials: Arc<Credentials>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = "14.0 (swabstream, read-only views)".to_owned();
        Arc::new(CleartextPasswordAuthStartupHandler::new(
            Tokens(self.credentials.clone()),
            parameters,
        ))
    }
}

/// Serves the SQL endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    credentials: Arc<Credentials>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let handlers = Arc::new(Handlers {
        backend: Arc::new(Backend::new(snapshots, STATEMENT_TIMEOUT)),
        credentials,
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("SQL endpoint: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let handlers = handlers.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        tracing::debug!("SQL connection ended: {e}");
                    }
                });
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_no_statement_and_do_not_hide_one() {
        // pgx's ping, and comment-only statements: empty, as in PostgreSQL.
        for empty in ["-- ping", "", " ; ", "/* x */", "-- a\n-- b\n", "/* never closed"] {
            assert!(is_empty_statement(empty), "{empty:?}");
        }
        for read in ["-- the day\nSELECT 1", "/* c */ WITH x AS (SELECT 1) SELECT * FROM x"] {
            assert!(!is_empty_statement(read), "{read:?}");
            assert!(check_read_only(read).is_ok(), "{read:?}");
        }
        // A comment in front of a write does not get it past the check.
        for write in ["-- harmless\nDELETE FROM city_daily", "/* SELECT */ DROP TABLE city_daily"] {
            assert!(check_read_only(write).is_err(), "{write:?}");
        }
        assert!(is_set("-- session\nset DateStyle = ISO"));
        assert!(!is_set("SELECT 'SET x'"));
    }
}
