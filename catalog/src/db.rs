//! The narrow waist between the catalog's named queries and a database backend.
//!
//! Every named query in [`crate::Tx`] is written once, in portable SQL with `?` placeholders,
//! against the [`Backend`] trait: execute, query, begin, commit, rollback. A backend only maps
//! values and errors and rewrites placeholders if it must. That keeps the SQL in one place, so
//! SQLite and PostgreSQL cannot drift apart in behaviour.
//!
//! Portable subset used by the queries: `INSERT … RETURNING id`, `ON CONFLICT DO NOTHING`,
//! integers for booleans, text for enums, `BIGINT` unix seconds for times.

pub mod postgres;
pub mod sqlite;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A value bound to a placeholder or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a `&[Value]` parameter list: `params![a, b, c]`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($v:expr),+ $(,)?) => { &[$($crate::db::Value::from($v)),+] as &[$crate::db::Value] };
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

/// Conversion of one column of a [`Row`].
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self, DbError>;
}

impl Row {
    /// Column `i` converted to `T`; a type mismatch is a [`DbError::Decode`].
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, DbError> {
        let v = self.0.get(i).ok_or_else(|| {
            DbError::Decode(format!("no column {i} in a row of {}", self.0.len()))
        })?;
        T::from_value(v)
    }
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(DbError::Decode(format!(
                "expected an integer, found {other:?}"
            ))),
        }
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        let i = i64::from_value(v)?;
        u64::try_from(i).map_err(|_| DbError::Decode(format!("expected a size, found {i}")))
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        let i = i64::from_value(v)?;
        u32::try_from(i).map_err(|_| DbError::Decode(format!("expected a count, found {i}")))
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(DbError::Decode(format!(
                "expected a number, found {other:?}"
            ))),
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(DbError::Decode(format!("expected text, found {other:?}"))),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, DbError> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A failure of the database itself, as opposed to the catalog saying no.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Another process holds the lock or a serialization conflict occurred; the whole
    /// transaction may be retried.
    #[error("database busy: {0}")]
    Busy(String),
    /// The connection to the database server was lost, or could not be made again. The
    /// transaction did not commit (a commit whose outcome is unknown is looked up after
    /// reconnecting before this is returned); the whole transaction may be retried.
    #[error("lost the connection to the catalog: {0}")]
    Disconnected(String),
    /// A unique or foreign-key constraint failed.
    #[error("constraint failed: {0}")]
    Constraint(String),
    /// A column did not hold what the query expected.
    #[error("unexpected value in the catalog: {0}")]
    Decode(String),
    /// The database could not be opened.
    #[error("cannot open {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl DbError {
    pub fn is_busy(&self) -> bool {
        matches!(self, DbError::Busy(_))
    }

    pub fn is_disconnected(&self) -> bool {
        matches!(self, DbError::Disconnected(_))
    }

    /// Whether the connection that gave this error should not be used again: the database
    /// or the link to it failed (a lost server, an I/O error, an unwritable WAL), as opposed to
    /// the data not fitting a constraint or a column.
    pub fn breaks_connection(&self) -> bool {
        match self {
            DbError::Busy(_) | DbError::Disconnected(_) | DbError::Open { .. } => true,
            DbError::Other(_) => true,
            DbError::Constraint(_) | DbError::Decode(_) => false,
        }
    }
}

/// How long to keep trying while the database server cannot be reached, before an operation
/// fails. cairnd waits out an outage (it pauses and resumes); the CLI gives up sooner.
#[derive(Debug, Clone)]
pub struct Patience {
    /// Give up once the server has been unreachable this long.
    pub give_up: Duration,
    /// Give up once the database has been busy (another process holding its write lock) this
    /// long. Default 120 s.
    pub busy: Duration,
    /// Give up at once when this is set (a daemon shutting down).
    pub stop: Option<Arc<AtomicBool>>,
}

/// How long a transaction keeps being retried while the database is busy, by default.
const BUSY_GIVE_UP: Duration = Duration::from_secs(120);

impl Patience {
    pub fn new(give_up: Duration) -> Self {
        Patience {
            give_up,
            busy: BUSY_GIVE_UP,
            stop: None,
        }
    }

    /// The same, giving up after `busy` of a busy database: for a process that has somewhere
    /// else to keep its work meanwhile (the mount's journal), rather than wait.
    pub fn with_busy(self, busy: Duration) -> Self {
        Patience { busy, ..self }
    }

    /// Waits out any outage until [`Patience::stop`] is set: for a daemon, whose work pauses
    /// and resumes with the catalog.
    pub fn until_stopped() -> Self {
        Patience {
            give_up: Duration::from_secs(365 * 24 * 3600),
            busy: BUSY_GIVE_UP,
            stop: Some(Arc::new(AtomicBool::new(false))),
        }
    }

    /// Makes what waits give up now (shutdown).
    pub fn stop(&self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

impl Default for Patience {
    /// Long enough for a database restart; short enough for a command to give up in time.
    fn default() -> Self {
        Patience::new(Duration::from_secs(30))
    }
}

/// Which SQL dialect a backend speaks, for the few statements that differ (DDL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
        })
    }
}

/// How a transaction intends to use the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// A consistent snapshot for reading.
    Read,
    /// Takes the write lock up front (SQLite `BEGIN IMMEDIATE`), so a transaction never fails
    /// half-way because another writer got in first.
    Write,
}

/// A connection to one catalog database.
pub trait Backend: Send {
    fn dialect(&self) -> Dialect;
    /// Runs a statement and returns the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs a query and returns all its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs several statements separated by `;` with no parameters (DDL).
    fn execute_batch(&mut self, sql: &str) -> Result<(), DbError>;
    fn begin(&mut self, mode: TxMode) -> Result<(), DbError>;
    fn commit(&mut self) -> Result<(), DbError>;
    fn rollback(&mut self) -> Result<(), DbError>;
    /// How long to keep reconnecting to a server that went away (no-op for an embedded
    /// database).
    fn set_patience(&mut self, _patience: Patience) {}
    /// Connects now if not connected, for statements outside a transaction (no-op for an
    /// embedded database).
    fn ensure_connected(&mut self) -> Result<(), DbError> {
        Ok(())
    }
    /// The position in the server's write-ahead log at or past the end of the last write
    /// transaction this connection committed, if the database has one (PostgreSQL): a hot
    /// standby that has replayed this far shows that transaction.
    fn last_commit_lsn(&self) -> Option<u64> {
        None
    }
}
