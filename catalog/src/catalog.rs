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
//!
//! A catalog opened with a [`Routing`] that has a replica ([`Catalog::open_routed`]) reads from
//! the replica and writes to the primary, honouring the process's own writes; see
//! [`crate::replica`]. Its primary connection is made at the first write (or read the replica
//! cannot answer), so a site whose link is cut can still open the catalog and read.

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
pub use work::{Arrival, CopyWork, Fired, SourceCopy};

use crate::db::postgres::{self, PostgresBackend};
use crate::db::sqlite::{self, SqliteBackend};
use crate::db::{Backend, DbError, Dialect, FromValue, Patience, Row, TxMode, Value};
use crate::error::{CatalogError, Result};
use crate::model::FromRow;
use crate::replica::{Choice, ReplicaLink, ReplicaStatus, Routing};
use crate::schema::{self, MIGRATIONS, SCHEMA_VERSION};

/// An open catalog.
pub struct Catalog {
    /// The database, or with a replica, the primary.
    backend: Box<dyn Backend>,
    /// The hot standby reads go to, when there is one.
    replica: Option<ReplicaLink>,
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
        let version = cat.schema_version()?;
        cat.accept_version(version)
    }

    /// Opens the catalog as `routing` says: with a replica, reads go there and writes to the
    /// primary (see [`crate::replica`]). A replica that is not a hot standby is refused.
    pub fn open_routed(routing: &Routing) -> Result<Catalog> {
        let Some(replica) = routing.replica() else {
            return Catalog::open(routing.url());
        };
        if !postgres::is_postgres_url(routing.url()) {
            return Err(CatalogError::Invalid(
                "catalog.replica needs a PostgreSQL catalog.url (a SQLite catalog has none)".into(),
            ));
        }
        let primary = PostgresBackend::unconnected(routing.url(), None)?;
        let mut link = ReplicaLink::new(replica.clone())?;
        let state = link.check_now();
        if state == crate::replica::ReplicaState::NotStandby {
            return Err(CatalogError::Invalid(format!(
                "catalog.replica {} is not a hot standby: the server is not in recovery (it is                  a primary); point catalog.replica at this site's standby of catalog.url, or                  remove it",
                replica.shown
            )));
        }
        let mut cat = Catalog::new(Box::new(primary), routing.url());
        let usable = matches!(
            state,
            crate::replica::ReplicaState::InUse | crate::replica::ReplicaState::Lagging
        );
        if usable {
            match schema_version_of(link.backend.as_mut()) {
                Ok(v) => {
                    cat.replica = Some(link);
                    return cat.accept_version(v);
                }
                Err(e) => replica.unreachable(&e),
            }
        }
        // The replica cannot say: the primary must, at once (as when opening without one).
        cat.backend.set_patience(ReplicaLink::no_patience());
        let version = schema_version_of(cat.backend.as_mut());
        cat.backend.set_patience(Patience::default());
        cat.replica = Some(link);
        cat.accept_version(version?)
    }

    fn accept_version(self, version: Option<u32>) -> Result<Catalog> {
        let url = self.url.clone();
        match version {
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
            Some(_) => Ok(self),
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
            replica: None,
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
        schema_version_of(self.backend.as_mut())
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

    /// Runs `f` in a read transaction (a consistent snapshot). With a replica, on the replica
    /// when it is near enough and has this process's own writes, else on the primary.
    pub fn read<T>(&mut self, mut f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let Some(link) = self.replica.as_mut() else {
            return self.run(TxMode::Read, f);
        };
        match link.choose() {
            Choice::Replica => {
                match run_retrying(
                    link.backend.as_mut(),
                    &ReplicaLink::no_patience(),
                    TxMode::Read,
                    &mut f,
                ) {
                    // The replica went away (a query it refuses is an error like any other).
                    Err(CatalogError::Db(e))
                        if e.is_disconnected() || matches!(e, DbError::Open { .. }) =>
                    {
                        link.replica.unreachable(&e);
                    }
                    other => return other,
                }
                self.run(TxMode::Read, f)
            }
            Choice::Primary { fallback: true } => {
                // One try without patience: if the primary cannot be reached, the replica
                // answers, however far behind.
                match self.run_impatient(&mut f) {
                    Err(CatalogError::Db(e)) if e.is_disconnected() => {
                        let link = self.replica.as_mut().expect("a replica, matched above");
                        link.replica.primary_unreachable(&e);
                        match run_retrying(
                            link.backend.as_mut(),
                            &ReplicaLink::no_patience(),
                            TxMode::Read,
                            &mut f,
                        ) {
                            Err(CatalogError::Db(e2))
                                if e2.is_disconnected() || matches!(e2, DbError::Open { .. }) =>
                            {
                                link.replica.unreachable(&e2);
                                self.run(TxMode::Read, f)
                            }
                            other => other,
                        }
                    }
                    other => other,
                }
            }
            Choice::Primary { fallback: false } => self.run(TxMode::Read, f),
        }
    }

    /// Runs `f` with this connection giving up on a catalog out of reach after `give_up` (or
    /// its own patience, if shorter): for a caller that has somewhere else to keep its work
    /// meanwhile (a journal), or other work to get on with, rather than wait for a server it
    /// cannot reach. Zero: one try. A busy database is waited for as before: it is there.
    pub fn giving_up_after<T>(
        &mut self,
        give_up: std::time::Duration,
        f: impl FnOnce(&mut Catalog) -> T,
    ) -> T {
        let keep = self.patience.clone();
        self.set_patience(Patience {
            give_up: give_up.min(keep.give_up),
            ..keep.clone()
        });
        let out = f(self);
        self.set_patience(keep);
        out
    }

    /// [`Catalog::write`], [giving up](Catalog::giving_up_after) after `give_up`.
    pub fn write_or_give_up<T>(
        &mut self,
        give_up: std::time::Duration,
        f: impl FnMut(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.giving_up_after(give_up, |c| c.write(f))
    }

    /// Runs `f` in a write transaction; all of it commits or none of it does. With a replica,
    /// on the primary, and later reads of this process wait for the replica to have it.
    pub fn write<T>(&mut self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let result = self.run(TxMode::Write, f);
        if result.is_ok()
            && let Some(link) = &self.replica
            && let Some(lsn) = self.backend.last_commit_lsn()
        {
            link.replica.note_written(lsn);
        }
        result
    }

    /// Waits (up to `catalog.replica_wait`) until the replica has replayed this process's
    /// latest write, so that other processes reading from it see that write too. True at once
    /// without a replica or a write; false if the replica did not get there in time (or
    /// cannot be used), and then only this process is sure to see its writes.
    pub fn wait_replicated(&mut self) -> bool {
        let Some(link) = self.replica.as_mut() else {
            return true;
        };
        let need = link.written();
        if need == 0 {
            return true;
        }
        let wait = link.replica.options.wait;
        link.wait_replayed(need, wait)
    }

    /// Where the replica stands, asked now; `None` without a replica.
    pub fn replica_status(&mut self) -> Option<ReplicaStatus> {
        let link = self.replica.as_mut()?;
        link.check_now();
        Some(link.replica.status())
    }

    /// The standbys streaming from the primary, as it sees them (PostgreSQL; none for
    /// SQLite). Asks the primary, not the replica.
    pub fn standbys(&mut self) -> Result<Vec<crate::replica::Standby>> {
        if self.dialect() != Dialect::Postgres {
            return Ok(Vec::new());
        }
        // Something to show, not to wait for: one try.
        self.run_impatient(|tx| {
            tx.raw(crate::replica::Standby::QUERY, &[])?
                .iter()
                .map(|r| Ok(crate::replica::Standby::from_row(r)?))
                .collect()
        })
    }

    /// A read on the primary that fails at once if it cannot be reached.
    fn run_impatient<T>(&mut self, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        self.backend.set_patience(ReplicaLink::no_patience());
        let result = run_retrying(
            self.backend.as_mut(),
            &ReplicaLink::no_patience(),
            TxMode::Read,
            f,
        );
        self.backend.set_patience(self.patience.clone());
        result
    }

    fn run<T>(&mut self, mode: TxMode, f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let result = run_retrying(self.backend.as_mut(), &self.patience, mode, f);
        if let Err(CatalogError::Db(e)) = &result
            && e.breaks_connection()
        {
            self.broken = true;
        }
        result
    }
}

/// The schema version recorded in the database of `backend`, `None` if it has no schema yet.
fn schema_version_of(backend: &mut dyn Backend) -> Result<Option<u32>> {
    backend.ensure_connected()?;
    let exists = match backend.dialect() {
        Dialect::Sqlite => backend.query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            &[],
        )?,
        Dialect::Postgres => backend.query(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'schema_version' \
             AND table_schema = current_schema()",
            &[],
        )?,
    };
    if exists.is_empty() {
        return Ok(None);
    }
    let rows = backend.query("SELECT version FROM schema_version", &[])?;
    match rows.first() {
        Some(r) => Ok(Some(r.get::<u32>(0)?)),
        None => Ok(None),
    }
}

/// Runs `f` in one transaction on `backend`, again while the database is busy, and while it
/// cannot be reached for as long as `patience` allows.
fn run_retrying<T>(
    backend: &mut dyn Backend,
    patience: &Patience,
    mode: TxMode,
    mut f: impl FnMut(&mut Tx<'_>) -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut backoff = Backoff::new();
    let mut outage: Option<Instant> = None;
    loop {
        let tried = Instant::now();
        match try_once(backend, mode, &mut f) {
            Err(CatalogError::Db(e))
                if e.is_busy() && start.elapsed() < patience.busy && !patience.stopped() =>
            {
                std::thread::sleep(backoff.next());
            }
            // The connection dropped before the transaction committed (a server restart,
            // a lost link): the backend reconnects at the next BEGIN, and the whole
            // transaction runs again, as when busy.
            Err(CatalogError::Db(e))
                if e.is_disconnected()
                    // The outage began when the try that met it began: the backend's own
                    // patient reconnecting counts.
                    && outage.get_or_insert(tried).elapsed() < patience.give_up
                    && !patience.stopped() =>
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
    backend: &mut dyn Backend,
    mode: TxMode,
    f: &mut impl FnMut(&mut Tx<'_>) -> Result<T>,
) -> Result<T> {
    backend.begin(mode)?;
    let result = f(&mut Tx {
        backend: &mut *backend,
    });
    match result {
        Ok(v) => match backend.commit() {
            Ok(()) => Ok(v),
            Err(e) => {
                let _ = backend.rollback();
                Err(e.into())
            }
        },
        Err(e) => {
            // The rollback's own failure would hide the error that matters.
            let _ = backend.rollback();
            Err(e)
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

/// `?, ?, …`: `n` placeholders for an `IN (…)` list or a row of `VALUES`.
pub(crate) fn in_list(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// One transaction. Named queries are methods on it (see the `catalog/` modules).
pub struct Tx<'a> {
    backend: &'a mut dyn Backend,
}

impl Tx<'_> {
    /// The most files one batch statement of an import takes (`INSERT` of new files, their
    /// copies, the lookup of what is registered at their paths): a new file binds 10
    /// parameters, and SQLite takes 32,766 a statement, PostgreSQL 65,535. At a site far from
    /// the primary each statement is a round trip, so a batch takes as many as fit.
    pub(crate) fn files_per_statement(&self) -> usize {
        match self.backend.dialect() {
            Dialect::Sqlite => 3000,
            Dialect::Postgres => 6000,
        }
    }

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
    pub(crate) fn insert<T: crate::db::FromValue>(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<T> {
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
