//! SQLite backend: the embedded default, shared by every process on one machine.
//!
//! Opened in WAL mode with a busy timeout and foreign keys on (asserted after setting, since a
//! PRAGMA that is silently ignored would be a latent bug). Writers take the lock up front with
//! `BEGIN IMMEDIATE`, so a write transaction waits in SQLite's busy handler instead of failing
//! half-way; what still comes back as `SQLITE_BUSY` is retried by [`crate::Catalog`].
//! Named queries stay prepared per connection; batch statements, whose text is made for one
//! batch's size, are prepared for each use (`CACHED_PARAMS_MAX`). What SQLite holds in all
//! of a process's connections can be bounded with [`limit_memory`].
//!
//! The write transactions of one process on one database take turns at a gate of their own
//! ([`WriteGate`]) before they ask SQLite for its lock: a writer that finds another of its
//! own process holding it is woken the moment that one ends, where SQLite's busy handler
//! would have slept 1, 2, 5, 10, 15 … ms between tries. Writers of other processes still
//! meet in SQLite's busy handler.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::{Backend, DbError, Dialect, Row, TxMode, Value};

/// How long SQLite itself waits for a lock before returning `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteBackend {
    conn: Connection,
    /// The gate of this process's writers to the same database file (none in memory).
    gate: Option<Arc<WriteGate>>,
    /// This connection holds the gate: its write transaction is open.
    holding: bool,
    /// How long a writer waits at the gate, as in SQLite's busy handler.
    patience: Duration,
}

/// Turns of one process's write transactions on one database file.
#[derive(Default)]
struct WriteGate {
    held: Mutex<bool>,
    freed: Condvar,
}

impl WriteGate {
    /// The gate of the database at `path`, shared by every connection of this process to it.
    fn of(path: &Path) -> Arc<WriteGate> {
        static GATES: OnceLock<Mutex<HashMap<PathBuf, Weak<WriteGate>>>> = OnceLock::new();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut gates = GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        gates.retain(|_, g| g.strong_count() > 0);
        if let Some(g) = gates.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        let g = Arc::new(WriteGate::default());
        gates.insert(key, Arc::downgrade(&g));
        g
    }

    /// Takes the gate, waiting at most `patience`; whether it was taken.
    fn enter(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            held = self
                .freed
                .wait_timeout(held, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *held = true;
        true
    }

    fn leave(&self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.freed.notify_one();
    }
}

/// The bytes SQLite holds in this process, and the most it has held.
pub fn memory_used() -> (i64, i64) {
    // SAFETY: reads two of SQLite's process-wide counters.
    unsafe {
        (
            rusqlite::ffi::sqlite3_memory_used(),
            rusqlite::ffi::sqlite3_memory_highwater(0),
        )
    }
}

/// Bounds what SQLite keeps in memory in this process, all its connections together (their
/// page caches, mostly; each would otherwise fill its own 2 MiB as the catalog grows): past
/// `bytes` SQLite reuses cache pages rather than taking more. A soft limit: a statement that
/// needs more still gets it.
pub fn limit_memory(bytes: u64) {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: sets SQLite's process-wide soft heap limit, which may be set at any time.
    unsafe {
        rusqlite::ffi::sqlite3_soft_heap_limit64(bytes);
    }
}

/// The file path named by a `sqlite://` URL: `sqlite:///abs/path.db` or `sqlite://rel.db`.
pub fn path_from_url(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    if rest.is_empty() {
        return None;
    }
    Some(PathBuf::from(rest))
}

impl SqliteBackend {
    /// Opens (creating if `create`) the database file at `path`.
    pub fn open(path: &Path, create: bool) -> Result<Self, DbError> {
        let open_err = |reason: String| DbError::Open {
            url: format!("sqlite://{}", path.display()),
            reason,
        };
        if !create && !path.exists() {
            return Err(open_err(
                "no such file (run `cairn db init` to create it)".into(),
            ));
        }
        if create && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
        conn.set_prepared_statement_cache_capacity(128);
        let in_memory = path.as_os_str() == ":memory:";
        let mut backend = SqliteBackend {
            conn,
            gate: (!in_memory).then(|| WriteGate::of(path)),
            holding: false,
            patience: BUSY_TIMEOUT,
        };
        backend.configure()?;
        Ok(backend)
    }

    fn configure(&mut self) -> Result<(), DbError> {
        // journal_mode needs the write lock on a fresh file; retry while another process has it.
        let mode: String = retry_busy(|| {
            self.conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(map_err)
        })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Other(format!(
                "SQLite refused WAL mode (journal_mode is {mode}); is the catalog on a network filesystem?"
            )));
        }
        self.conn
            .execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
            .map_err(map_err)?;
        // Keep one query plan per statement. Without this, SQLite re-plans a join with bound
        // parameters every time rusqlite's statement cache clears the bindings, which was most
        // of the cost of a path lookup. The catalog never runs ANALYZE and has no partial
        // indexes, so plans chosen from bound values would not be better.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )
            .map_err(map_err)?;
        let fk: i64 = self
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .map_err(map_err)?;
        if fk != 1 {
            return Err(DbError::Other(
                "SQLite refused to enable foreign keys".into(),
            ));
        }
        Ok(())
    }
}

fn retry_busy<T>(mut f: impl FnMut() -> Result<T, DbError>) -> Result<T, DbError> {
    let mut delay = Duration::from_millis(5);
    for _ in 0..50 {
        match f() {
            Err(e) if e.is_busy() => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
    f()
}

fn map_err(e: rusqlite::Error) -> DbError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DbError::Busy(e.to_string()),
            ErrorCode::ConstraintViolation => DbError::Constraint(e.to_string()),
            _ => DbError::Other(e.to_string()),
        },
        _ => DbError::Other(e.to_string()),
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Int(i) => S::Integer(*i),
        Value::Real(f) => S::Real(*f),
        Value::Text(s) => S::Text(s.clone()),
    }
}

fn from_sql(v: ValueRef<'_>) -> Result<Value, DbError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| DbError::Decode(format!("text column is not UTF-8: {e}")))?
                .to_owned(),
        ),
        ValueRef::Blob(_) => return Err(DbError::Decode("unexpected blob column".into())),
    })
}

/// Statements binding more parameters than this are batch statements, their text made for
/// one batch's size (`IN (?, ?, …)`, rows of `VALUES`): they are prepared for each use and
/// not kept. Kept, each size would stay prepared in every connection, up to the cache's 128
/// statements of up to megabytes each: a mount's memory grew for hours with the sizes of
/// its import batches.
const CACHED_PARAMS_MAX: usize = 64;

/// Whether `sql`, binding `params`, is a batch statement (see [`CACHED_PARAMS_MAX`]): many
/// parameters, or a list of several values, rows or `OR`-joined terms whatever its size (a
/// few KiB each size, kept, and a mount's SQLite memory crept up with the sizes of its small
/// batches).
fn is_batch(sql: &str, params: usize) -> bool {
    params > CACHED_PARAMS_MAX
        || sql.contains("), (")
        || sql.contains("IN (?, ?")
        || sql.contains(") OR (")
}

impl SqliteBackend {
    /// Runs `f` with `sql` prepared: from the connection's cache, unless it is a batch
    /// statement.
    fn with_prepared<T>(
        &mut self,
        sql: &str,
        params: usize,
        f: impl FnOnce(&mut rusqlite::Statement<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        if is_batch(sql, params) {
            f(&mut self.conn.prepare(sql).map_err(map_err)?)
        } else {
            let mut st = self.conn.prepare_cached(sql).map_err(map_err)?;
            f(&mut st)
        }
    }

    /// Gives the gate back, if this connection holds it.
    fn leave_gate(&mut self) {
        if self.holding {
            self.holding = false;
            if let Some(g) = &self.gate {
                g.leave();
            }
        }
    }

    /// Runs a statement without parameters, prepared once per connection (BEGIN and COMMIT
    /// run for every transaction).
    fn run_cached(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(drop)
            .map_err(map_err)
    }
}

impl Backend for SqliteBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// A process that gives up early on a busy database waits no longer in SQLite's own busy
    /// handler either.
    fn set_patience(&mut self, patience: crate::db::Patience) {
        self.patience = BUSY_TIMEOUT.min(patience.busy);
        let _ = self.conn.busy_timeout(self.patience);
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let params: Vec<_> = params.iter().map(to_sql).collect();
        self.with_prepared(sql, params.len(), |stmt| {
            let n = stmt
                .execute(rusqlite::params_from_iter(params))
                .map_err(map_err)?;
            Ok(n as u64)
        })
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let params: Vec<_> = params.iter().map(to_sql).collect();
        self.with_prepared(sql, params.len(), |stmt| {
            let ncols = stmt.column_count();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(map_err)? {
                let mut vals = Vec::with_capacity(ncols);
                for i in 0..ncols {
                    vals.push(from_sql(r.get_ref(i).map_err(map_err)?)?);
                }
                out.push(Row(vals));
            }
            Ok(out)
        })
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql).map_err(map_err)
    }

    fn begin(&mut self, mode: TxMode) -> Result<(), DbError> {
        if mode == TxMode::Read {
            return self.run_cached("BEGIN DEFERRED");
        }
        let mut entered = false;
        if let Some(g) = &self.gate
            && !self.holding
        {
            if !g.enter(self.patience) {
                return Err(DbError::Busy(format!(
                    "another writer of this process held the catalog for {:?}",
                    self.patience
                )));
            }
            self.holding = true;
            entered = true;
        }
        let begun = self.run_cached("BEGIN IMMEDIATE");
        // A gate taken for this transaction goes back if it did not begin (one already open
        // keeps its own).
        if begun.is_err() && entered {
            self.leave_gate();
        }
        begun
    }

    fn commit(&mut self) -> Result<(), DbError> {
        let done = self.run_cached("COMMIT");
        if self.conn.is_autocommit() {
            self.leave_gate();
        }
        done
    }

    fn rollback(&mut self) -> Result<(), DbError> {
        let done = if self.conn.is_autocommit() {
            Ok(())
        } else {
            self.conn.execute_batch("ROLLBACK").map_err(map_err)
        };
        self.leave_gate();
        done
    }
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        self.leave_gate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with table `t (a, b)`, in a directory kept while the backend lives.
    fn table_t() -> (tempfile::TempDir, SqliteBackend) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SqliteBackend::open(&dir.path().join("c.db"), true).unwrap();
        b.execute_batch("CREATE TABLE t (a INTEGER, b TEXT)")
            .unwrap();
        (dir, b)
    }

    /// Inserts `rows` rows into `t` with one statement made for that many rows.
    fn insert_rows(b: &mut SqliteBackend, rows: usize) {
        let sql = format!(
            "INSERT INTO t (a, b) VALUES {}",
            vec!["(?, ?)"; rows].join(", ")
        );
        let args: Vec<Value> = (0..rows)
            .flat_map(|i| [Value::Int(i as i64), Value::Text(format!("f{i}"))])
            .collect();
        b.execute(&sql, &args).unwrap();
    }

    /// SQLite's memory in this process (nextest runs each test in a process of its own).
    fn used() -> i64 {
        memory_used().0
    }

    /// Small batches too: a list of a few values, a few rows, are made for their size.
    #[test]
    fn small_batch_statements_are_not_kept_prepared_either() {
        let (_dir, mut b) = table_t();
        let both = |b: &mut SqliteBackend, n: usize| {
            insert_rows(b, n);
            let sql = format!(
                "SELECT a, b FROM t WHERE a IN ({}) ORDER BY a",
                vec!["?"; n].join(", ")
            );
            let args: Vec<Value> = (0..n).map(|i| Value::Int(i as i64)).collect();
            b.query(&sql, &args).unwrap();
            // Terms joined by OR, as the lookup of names in several directories makes them.
            let sql = format!(
                "SELECT a, b FROM t WHERE {}",
                vec!["(a = ? AND b IN (?))"; n].join(" OR ")
            );
            let args: Vec<Value> = (0..2 * n).map(|i| Value::Int(i as i64)).collect();
            b.query(&sql, &args).unwrap();
        };
        both(&mut b, 1);
        let before = used();
        for n in 2..=32 {
            both(&mut b, n);
        }
        let grown = used() - before;
        assert!(
            grown < 48 << 10,
            "93 small batch statements left {grown} bytes with SQLite"
        );
    }

    /// Batch statements of many sizes (an import's, a batch at a time) leave nothing
    /// prepared behind them.
    #[test]
    fn batch_statements_are_not_kept_prepared() {
        let (_dir, mut b) = table_t();
        insert_rows(&mut b, 100);
        let before = used();
        for rows in 101..160 {
            insert_rows(&mut b, rows);
        }
        let grown = used() - before;
        assert!(
            grown < 512 << 10,
            "59 batch statements left {grown} bytes with SQLite"
        );
    }

    fn two_connections() -> (tempfile::TempDir, SqliteBackend, SqliteBackend) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut a = SqliteBackend::open(&path, true).unwrap();
        a.execute_batch("CREATE TABLE t (a INTEGER)").unwrap();
        let b = SqliteBackend::open(&path, false).unwrap();
        (dir, a, b)
    }

    fn patience(busy: Duration) -> crate::db::Patience {
        crate::db::Patience {
            give_up: Duration::from_secs(60),
            busy,
            stop: None,
        }
    }

    /// A second writer of the same process waits for the first at the gate, not in SQLite's
    /// busy handler: with SQLite's own wait at zero it would fail at once.
    #[test]
    fn a_writer_waits_for_another_of_its_process_at_the_gate() {
        let (_dir, mut a, mut b) = two_connections();
        b.conn.busy_timeout(Duration::ZERO).unwrap();
        a.begin(TxMode::Write).unwrap();
        a.execute("INSERT INTO t VALUES (1)", &[]).unwrap();
        let first = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            a.commit().unwrap();
            a
        });
        b.begin(TxMode::Write)
            .expect("the second writer gets its turn");
        b.execute("INSERT INTO t VALUES (2)", &[]).unwrap();
        b.commit().unwrap();
        let mut a = first.join().unwrap();
        let n = a.query("SELECT COUNT(*) FROM t", &[]).unwrap();
        assert_eq!(n[0].get::<i64>(0).unwrap(), 2);
    }

    /// A writer gives up at the gate after its patience, saying why; a rolled-back or dropped
    /// transaction gives the gate back.
    #[test]
    fn the_gate_is_given_back_however_a_transaction_ends() {
        let (_dir, mut a, mut b) = two_connections();
        b.set_patience(patience(Duration::from_millis(50)));
        a.begin(TxMode::Write).unwrap();
        let err = b.begin(TxMode::Write).unwrap_err();
        assert!(err.is_busy(), "{err}");
        assert!(
            err.to_string().contains("another writer of this process"),
            "{err}"
        );
        a.rollback().unwrap();
        b.begin(TxMode::Write).expect("free after a rollback");
        b.commit().unwrap();
        a.begin(TxMode::Write).unwrap();
        drop(a);
        b.begin(TxMode::Write)
            .expect("free once the holder is gone");
        b.commit().unwrap();
        b.begin(TxMode::Read).unwrap();
        b.commit().unwrap();
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            path_from_url("sqlite:///var/lib/cairn/catalog.db"),
            Some(PathBuf::from("/var/lib/cairn/catalog.db"))
        );
        assert_eq!(
            path_from_url("sqlite://rel.db"),
            Some(PathBuf::from("rel.db"))
        );
        assert_eq!(
            path_from_url("sqlite:rel.db"),
            Some(PathBuf::from("rel.db"))
        );
        assert_eq!(path_from_url("sqlite://"), None);
        assert_eq!(path_from_url("postgres://x"), None);
    }

    #[test]
    fn pragmas_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SqliteBackend::open(&dir.path().join("c.db"), true).unwrap();
        let mode = b.query("PRAGMA journal_mode", &[]).unwrap();
        assert_eq!(mode[0].get::<String>(0).unwrap(), "wal");
        let fk = b.query("PRAGMA foreign_keys", &[]).unwrap();
        assert_eq!(fk[0].get::<i64>(0).unwrap(), 1);
        let t = b.query("PRAGMA busy_timeout", &[]).unwrap();
        assert_eq!(t[0].get::<i64>(0).unwrap(), 5000);
    }

    #[test]
    fn open_missing_without_create_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteBackend::open(&dir.path().join("none.db"), false)
            .err()
            .expect("opening a missing catalog fails");
        assert!(err.to_string().contains("cairn db init"), "{err}");
    }
}
