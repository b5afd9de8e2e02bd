//! Opening a catalog, checking its schema, and running named queries in transactions.
//!
//! All reads and writes go through [`Catalog::read`] / [`Catalog::write`], which run a closure
//! over a [`Tx`] inside one transaction. When the database reports that it is busy (another
//! process holds the SQLite write lock past the busy timeout, or PostgreSQL aborts a
//! serializable transaction), the transaction is rolled back and the whole closure runs again
//! after a capped, jittered backoff. Closures must therefore only touch the database — no
//! side effects that cannot be repeated. This is what lets the CLI, every cairnd and every
//! cairnfs of a machine share one SQLite file without "database is locked" failures.
//!
//! The same rerun covers a PostgreSQL connection lost before the transaction committed (a
//! server restart, a lost link): the backend reconnects at the next `BEGIN`, for as long as
//! the catalog's [`Patience`] allows (30 s by default; cairnd waits until it is stopped).

mod files;
mod graph;
mod import;
mod mount;
mod requests;
mod work;

use std::time::{Duration, Instant};

pub use files::{CopySelect, FileFilter, NewFile, SyncCandidate, normalize_path};
pub use graph::{NewNode, NodeUpdate};
pub use import::{ImportOutcome, size_on_disk};
pub use requests::{CopyRequestFilter, ImportKind, NewCopyRequest};
pub use work::{CopyWork, Fired, SourceCopy};

use crate::db::postgres::{self, PostgresBackend};
use crate::db::sqlite::{self, SqliteBackend};
use crate::db::{Backend, DbError, Dialect, FromValue, Patience, Row, TxMode, Value};
use crate::error::{CatalogError, Result};
use crate::model::{FromRow, Id};
use crate::schema::{self, MIGRATIONS, SCHEMA_VERSION};

/// An open catalog.
pub struct Catalog {
    backend: Box<dyn Backend>,
    /// The URL with any password hidden: this is what messages show.
    url: String,
    patience: Patience,
    /// A transaction failed because the database or the link to it did: see
    /// [`Catalog::is_broken`].
    broken: bool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("url", &self.url).finish()
    }
}

fn open_backend(url: &str, create: bool) -> Result<Box<dyn Backend>> {
    if let Some(path) = sqlite::path_from_url(url) {
        return Ok(Box::new(SqliteBackend::open(&path, create)?));
    }
    if postgres::is_postgres_url(url) {
        // A PostgreSQL database is created by its administrator (docs/OPERATIONS.md);
        // `create` only applies to a SQLite file.
        return Ok(Box::new(PostgresBackend::open(url)?));
    }
    Err(CatalogError::UnsupportedUrl(postgres::redact(url)))
}

impl Catalog {
    /// Opens an existing catalog and checks that its schema is the one this build knows.
    pub fn open(url: &str) -> Result<Catalog> {
        let mut cat = Catalog::new(open_backend(url, false)?, url);
        let url = &cat.url.clone();
        match cat.schema_version()? {
            None => Err(CatalogError::NotInitialised {
                url: url.to_owned(),
            }),
            Some(v) if v < SCHEMA_VERSION => Err(CatalogError::SchemaTooOld {
                url: url.to_owned(),
                found: v,
                expected: SCHEMA_VERSION,
            }),
            Some(v) if v > SCHEMA_VERSION => Err(CatalogError::SchemaTooNew {
                url: url.to_owned(),
                found: v,
                expected: SCHEMA_VERSION,
            }),
            Some(_) => Ok(cat),
        }
    }

    /// Creates the schema in a new (or empty) database. Fails if a schema is already there.
    pub fn init(url: &str) -> Result<Catalog> {
        Self::init_at(url, SCHEMA_VERSION)
    }

    /// Creates the schema up to `version` only: for migration tests.
    #[doc(hidden)]
    pub fn init_at(url: &str, version: u32) -> Result<Catalog> {
        let mut cat = Catalog::new(open_backend(url, true)?, url);
        let url = &cat.url.clone();
        if let Some(v) = cat.schema_version()? {
            return Err(CatalogError::Invalid(format!(
                "the catalog at {url} already exists (schema version {v}); \
                 use `cairn db upgrade` to update it"
            )));
        }
        cat.migrate_to(version)?;
        Ok(cat)
    }

    /// Applies every migration the catalog lacks. Returns (version before, version after).
    pub fn upgrade(url: &str) -> Result<(u32, u32)> {
        let mut cat = Catalog::new(open_backend(url, false)?, url);
        let url = &cat.url.clone();
        let before = cat
            .schema_version()?
            .ok_or_else(|| CatalogError::NotInitialised {
                url: url.to_owned(),
            })?;
        if before > SCHEMA_VERSION {
            return Err(CatalogError::SchemaTooNew {
                url: url.to_owned(),
                found: before,
                expected: SCHEMA_VERSION,
            });
        }
        cat.migrate_to(SCHEMA_VERSION)?;
        Ok((before, SCHEMA_VERSION))
    }

    fn new(backend: Box<dyn Backend>, url: &str) -> Catalog {
        Catalog {
            backend,
            url: postgres::redact(url),
            patience: Patience::default(),
            broken: false,
        }
    }

    /// The catalog's URL, with any password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long a transaction keeps being retried while the database server cannot be
    /// reached (default 30 s). cairnd waits out an outage of the catalog.
    pub fn set_patience(&mut self, patience: Patience) {
        self.backend.set_patience(patience.clone());
        self.patience = patience;
    }

    /// Whether a transaction on this connection failed with a database or connection error
    /// (not a "not found" or "invalid" from the catalog). A pool drops such a connection
    /// rather than reuse it: a SQLite connection that met an unwritable WAL, say, may go on
    /// failing where a fresh one works.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn dialect(&self) -> Dialect {
        self.backend.dialect()
    }

    /// The schema version recorded in the catalog, `None` if it has no schema yet.
    pub fn schema_version(&mut self) -> Result<Option<u32>> {
        let exists = match self.backend.dialect() {
            Dialect::Sqlite => self.backend.query(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
                &[],
            )?,
            Dialect::Postgres => self.backend.query(
                "SELECT 1 FROM information_schema.tables WHERE table_name = 'schema_version' \
                 AND table_schema = current_schema()",
                &[],
            )?,
        };
        if exists.is_empty() {
            return Ok(None);
        }
        let rows = self
            .backend
            .query("SELECT version FROM schema_version", &[])?;
        match rows.first() {
            Some(r) => Ok(Some(r.get::<u32>(0)?)),
            None => Ok(None),
        }
    }

    /// The random identity written at `db init`, recorded in node markers.
    pub fn catalog_id(&mut self) -> Result<String> {
        self.read(|tx| tx.scalar::<String>("SELECT catalog_id FROM schema_version", &[]))
    }

    fn migrate_to(&mut self, target: u32) -> Result<()> {
        let current = self.schema_version()?.unwrap_or(0);
        for m in MIGRATIONS
            .iter()
            .filter(|m| m.version > current && m.version <= target)
        {
            let sql = schema::render(m, self.backend.dialect());
            self.run(TxMode::Write, |tx| {
                tx.backend.execute_batch(&sql)?;
                if m.version == 1 {
                    tx.exec(
                        "INSERT INTO schema_version (version, catalog_id, created_at) \
                         VALUES (?, ?, ?)",
                        crate::params![1i64, new_catalog_id(), crate::units::now()],
                    )?;
                } else {
                    tx.exec(
                        "UPDATE schema_version SET version = ?",
                        crate::params![m.version],
                    )?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Runs `f` in a read transaction (a consistent snapshot).
    pub fn read<T>(&mut self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(TxMode::Read, f)
    }

    /// Runs `f` in a write transaction; all of it commits or none of it does.
    pub fn write<T>(&mut self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(TxMode::Write, f)
    }

    fn run<T>(&mut self, mode: TxMode, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let result = self.run_retrying(mode, f);
        if let Err(CatalogError::Db(e)) = &result
            && e.breaks_connection()
        {
            self.broken = true;
        }
        result
    }

    fn run_retrying<T>(
        &mut self,
        mode: TxMode,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        let mut outage: Option<Instant> = None;
        loop {
            match self.try_once(mode, &mut f) {
                Err(CatalogError::Db(e))
                    if e.is_busy()
                        && start.elapsed() < self.patience.busy
                        && !self.patience.stopped() =>
                {
                    std::thread::sleep(backoff.next());
                }
                // The connection dropped before the transaction committed (a server restart,
                // a lost link): the backend reconnects at the next BEGIN, and the whole
                // transaction runs again, as when busy.
                Err(CatalogError::Db(e))
                    if e.is_disconnected()
                        && outage.get_or_insert_with(Instant::now).elapsed()
                            < self.patience.give_up
                        && !self.patience.stopped() =>
                {
                    std::thread::sleep(backoff.next());
                }
                Err(CatalogError::Db(e)) if e.is_busy() => {
                    return Err(CatalogError::Db(DbError::Busy(format!(
                        "gave up after {}s: {e}",
                        start.elapsed().as_secs()
                    ))));
                }
                other => return other,
            }
        }
    }

    fn try_once<T>(
        &mut self,
        mode: TxMode,
        f: &mut impl FnMut(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.backend.begin(mode)?;
        let result = f(&mut Tx {
            backend: self.backend.as_mut(),
        });
        match result {
            Ok(v) => match self.backend.commit() {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.backend.rollback();
                    Err(e.into())
                }
            },
            Err(e) => {
                // The rollback's own failure would hide the error that matters.
                let _ = self.backend.rollback();
                Err(e)
            }
        }
    }
}

/// Capped exponential backoff with jitter, so that retrying writers spread out.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos().into());
        Backoff {
            next: Duration::from_millis(2),
            seed: seed | 1,
        }
    }

    fn next(&mut self) -> Duration {
        // xorshift: cheap jitter without a dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_millis(250));
        base + Duration::from_micros(self.seed % (base.as_micros() as u64 + 1))
    }
}

fn new_catalog_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (t ^ u128::from(std::process::id()) << 64).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One transaction. Named queries are methods on it (see the `catalog/` modules).
pub struct Tx<'a> {
    backend: &'a mut dyn Backend,
}

impl Tx<'_> {
    pub(crate) fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        Ok(self.backend.execute(sql, params)?)
    }

    pub(crate) fn rows<T: FromRow>(&mut self, sql: &str, params: &[Value]) -> Result<Vec<T>> {
        let rows = self.backend.query(sql, params)?;
        rows.iter()
            .map(|r| T::from_row(r).map_err(CatalogError::from))
            .collect()
    }

    pub(crate) fn raw(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Ok(self.backend.query(sql, params)?)
    }

    pub(crate) fn row<T: FromRow>(&mut self, sql: &str, params: &[Value]) -> Result<Option<T>> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    pub(crate) fn scalar<T: FromValue>(&mut self, sql: &str, params: &[Value]) -> Result<T> {
        let rows = self.backend.query(sql, params)?;
        let row = rows
            .first()
            .ok_or_else(|| DbError::Decode(format!("no row from {sql}")))?;
        Ok(row.get(0)?)
    }

    /// Runs an `INSERT … RETURNING id` and returns the id.
    pub(crate) fn insert(&mut self, sql: &str, params: &[Value]) -> Result<Id> {
        self.scalar(sql, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= Duration::from_millis(2) && first <= Duration::from_millis(4));
        for _ in 0..20 {
            assert!(b.next() <= Duration::from_millis(500));
        }
    }
}
