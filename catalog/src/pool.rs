//! Catalog connections shared by the threads of one process (cairnd's tasks, cairnfs's
//! operations).
//!
//! A connection is taken for one piece of work and given back after it. One whose transaction
//! failed because the database or the link to it failed ([`Catalog::is_broken`]) is dropped
//! instead, and the next piece of work opens a fresh one: a mount whose SQLite WAL was briefly
//! unwritable must not go on failing with the connection that saw it. "Not found" or "invalid"
//! answers from the catalog keep the connection.
//!
//! How long work waits for a catalog that cannot be reached is the pool's [`Patience`]: cairnd
//! waits out an outage until it is stopped ([`Patience::until_stopped`]); the mount gives up
//! after 2 s so that a program gets an error instead of hanging.
//!
//! A pool made with a [`Routing`] that has a replica ([`Pool::routed`]) reads from this site's
//! hot standby and writes to the primary. Its connections share one routing, so **what one
//! thread writes, every thread of the process reads**: after `pool.with(|c| c.write(…))`
//! returns, any `pool.with(|c| c.read(…))` sees that write (it waits for the replica to replay
//! it, up to `catalog.replica_wait`, else reads from the primary). No token is passed around.
//! [`Pool::wait_replicated`] waits until the replica has this process's writes, for a write
//! that other processes of the site must see at once (an attribute set through the mount,
//! then read by `cairn request list`). With SQLite, or no replica, all of this costs nothing.

use std::sync::Mutex;

use crate::Catalog;
use crate::db::Patience;
use crate::error::CatalogError;
use crate::replica::{ReplicaStatus, Routing};

/// A pool of connections to one catalog.
pub struct Pool {
    routing: Routing,
    idle: Mutex<Vec<Catalog>>,
    patience: Patience,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("routing", &self.routing)
            .finish()
    }
}

impl Pool {
    /// A pool for the catalog at `url`; connections are opened when first needed.
    pub fn new(url: &str, patience: Patience) -> Pool {
        Pool::routed(Routing::primary(url), patience)
    }

    /// A pool reading and writing as `routing` says (`Routing::from_config`), e.g. from a
    /// replica at this site and to the primary.
    pub fn routed(routing: Routing, patience: Patience) -> Pool {
        Pool {
            routing,
            idle: Mutex::new(Vec::new()),
            patience,
        }
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// What the last check of the replica found; `None` without a replica. Makes no query.
    pub fn replica_status(&self) -> Option<ReplicaStatus> {
        self.routing.replica_status()
    }

    /// Waits (up to `catalog.replica_wait`) until the replica has replayed this process's
    /// latest write; see [`Catalog::wait_replicated`].
    pub fn wait_replicated(&self) -> bool {
        if !self.routing.has_written() {
            return true;
        }
        self.with(|c| Ok::<_, CatalogError>(c.wait_replicated()))
            .unwrap_or(false)
    }

    /// Stops waiting for an unreachable catalog: what waits fails now (shutdown).
    pub fn stop_waiting(&self) {
        self.patience.stop();
    }

    /// Runs `f` with a connection (reused, or opened for it). The connection goes back to the
    /// pool unless a database or connection error broke it.
    pub fn with<T, E: From<CatalogError>>(
        &self,
        f: impl FnOnce(&mut Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        let cached = self.idle.lock().expect("pool lock").pop();
        let mut cat = match cached {
            Some(c) => c,
            None => {
                let mut c = Catalog::open_routed(&self.routing)?;
                c.set_patience(self.patience.clone());
                c
            }
        };
        let out = f(&mut cat);
        if !cat.is_broken() {
            self.idle.lock().expect("pool lock").push(cat);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;

    fn pool() -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        Catalog::init(&url).unwrap();
        (dir, Pool::new(&url, Patience::default()))
    }

    fn idle(p: &Pool) -> usize {
        p.idle.lock().unwrap().len()
    }

    #[test]
    fn a_connection_is_reused() {
        let (_dir, p) = pool();
        p.with(|c| c.catalog_id()).unwrap();
        assert_eq!(idle(&p), 1);
        p.with(|c| c.catalog_id()).unwrap();
        assert_eq!(idle(&p), 1, "the same connection came back");
    }

    #[test]
    fn a_connection_that_failed_with_a_database_error_is_dropped() {
        let (_dir, p) = pool();
        let failed: Result<u64> =
            p.with(|c| c.write(|tx| tx.exec("UPDATE no_such_table SET x = 1", &[])));
        assert!(matches!(failed, Err(CatalogError::Db(_))), "{failed:?}");
        assert_eq!(idle(&p), 0, "not given back");
        p.with(|c| c.catalog_id())
            .expect("a fresh connection works");
        assert_eq!(idle(&p), 1);
    }

    #[test]
    fn not_found_and_invalid_answers_keep_the_connection() {
        let (_dir, p) = pool();
        let missing = p.with(|c| c.read(|tx| tx.node("nope")));
        assert!(matches!(missing, Err(CatalogError::NotFound { .. })));
        assert_eq!(idle(&p), 1);
        let invalid: Result<()> = p.with(|c| c.write(|_| Err(CatalogError::Invalid("no".into()))));
        assert!(invalid.is_err());
        assert_eq!(idle(&p), 1);
    }

    #[test]
    fn a_constraint_failure_keeps_the_connection() {
        let (_dir, p) = pool();
        p.with(|c| c.write(|tx| tx.create_group("g", crate::model::IoClass::Default, None)))
            .unwrap();
        let again = p.with(|c| {
            c.write(|tx| {
                tx.exec(
                    "INSERT INTO storage_group (name, io_class) VALUES ('g', 'default')",
                    &[],
                )
            })
        });
        assert!(again.is_err());
        assert_eq!(idle(&p), 1);
    }
}
