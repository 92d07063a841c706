//! The Scylla store's own errors, and how the driver's become the store
//! interface's [`StoreError`]: transient (worth retrying as it is: timeouts,
//! replicas unavailable, overload, broken connections) or not (a refused
//! statement, bad credentials, a setting that cannot work).

use scylla::errors::DbError;
use scylla::errors::{
    ExecutionError, IntoRowsResultError, MetadataError, NewSessionError, PrepareError,
    RequestAttemptError, RowsError, SchemaAgreementError,
};
use swabstream_store::StoreError;

/// What is wrong, when it is not the driver's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScyllaError {
    /// The keyspace name cannot be used as an unquoted CQL identifier.
    #[error(
        "store.scylla.keyspace `{0}` is not a valid keyspace name: use [a-zA-Z][a-zA-Z0-9_]{{0,47}} (a letter, then up to 47 letters, digits or underscores)"
    )]
    Keyspace(String),
    /// The replication settings cannot make a keyspace.
    #[error("store.scylla replication: {0}")]
    Replication(String),
    /// The consistency level is not one CQL knows.
    #[error(
        "store.scylla.consistency `{0}` is not a consistency level: use LOCAL_QUORUM (the default), QUORUM, EACH_QUORUM, ALL, ONE, TWO, THREE or LOCAL_ONE"
    )]
    Consistency(String),
    /// No contact points.
    #[error("store.scylla.nodes is empty: give `host:port` of at least one node")]
    NoNodes,
    /// An offset whose write timestamp would not fit in 64 bits (or a negative one).
    #[error(
        "offset {0} is outside 0..=2^60: its write timestamp (offset × 8 + step) would not fit in 64 bits"
    )]
    Offset(i64),
    /// A statement did not answer as its text says it must.
    #[error("unexpected answer to `{statement}`: {what}")]
    Answer { statement: String, what: String },
    /// The store's own runtime stopped (a panic in the driver).
    #[error("the Scylla store's runtime stopped while running a request")]
    Runtime,
    /// The driver.
    #[error("{0}")]
    Driver(String),
}

impl From<ScyllaError> for StoreError {
    fn from(e: ScyllaError) -> StoreError {
        StoreError::Backend { store: "scylla", transient: false, error: Box::new(e) }
    }
}

/// The driver's errors as the store interface's (a trait of this crate:
/// neither the errors nor `StoreError` are).
pub(crate) trait ToStore {
    fn to_store(self) -> StoreError;
}

impl ToStore for ScyllaError {
    fn to_store(self) -> StoreError {
        self.into()
    }
}

impl ToStore for StoreError {
    fn to_store(self) -> StoreError {
        self
    }
}

pub(crate) fn backend(
    transient: bool,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Backend { store: "scylla", transient, error: Box::new(e) }
}

/// Whether the server's error is worth retrying as it is.
pub(crate) fn db_transient(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::RateLimitReached { .. }
            | DbError::TruncateError
            | DbError::ServerError
    )
}

fn attempt_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => db_transient(db),
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        _ => false,
    }
}

/// Whether a failed execution is worth retrying: timeouts, unavailable or
/// overloaded replicas, no connection to any node.
pub(crate) fn execution_transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(a) => attempt_transient(a),
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::PrepareError(p) => prepare_transient(p),
        _ => false,
    }
}

pub(crate) fn prepare_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_transient(first_attempt),
        _ => false,
    }
}

impl ToStore for ExecutionError {
    fn to_store(self) -> StoreError {
        let e = self;
        backend(execution_transient(&e), e)
    }
}

impl ToStore for PrepareError {
    fn to_store(self) -> StoreError {
        let e = self;
        backend(prepare_transient(&e), e)
    }
}

impl ToStore for NewSessionError {
    /// No node reachable or resolvable (an outage, nodes restarting, DNS
    /// away) is transient; a configuration the driver refuses is not.
    fn to_store(self) -> StoreError {
        let e = self;
        let transient =
            !matches!(e, NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_));
        backend(transient, e)
    }
}

impl ToStore for SchemaAgreementError {
    fn to_store(self) -> StoreError {
        let e = self;
        backend(true, e)
    }
}

impl ToStore for MetadataError {
    fn to_store(self) -> StoreError {
        let e = self;
        backend(true, e)
    }
}

/// A result that is not what the schema says (a keyspace made by hand?).
pub(crate) fn answer(statement: &str, what: impl std::fmt::Display) -> StoreError {
    ScyllaError::Answer { statement: statement.to_owned(), what: what.to_string() }.into()
}

impl ToStore for IntoRowsResultError {
    fn to_store(self) -> StoreError {
        let e = self;
        backend(false, e)
    }
}

impl ToStore for RowsError {
    fn to_store(self) -> StoreError {
        let e = self;
        backend(false, e)
    }
}
