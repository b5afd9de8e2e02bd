//! Test support: a fresh PostgreSQL database per test, on the server named by
//! `CAIRN_TEST_PG_URL` (`tests/pg.sh` starts a throwaway one).
//!
//! Without that variable a PostgreSQL test is skipped, loudly on stderr, unless `CI` is set:
//! in CI a missing server is a failure, never a silent pass.

use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};

/// The URL of a PostgreSQL server the tests may create databases on (as a superuser).
pub const PG_URL_ENV: &str = "CAIRN_TEST_PG_URL";

/// The server URL from [`PG_URL_ENV`]; `None` (after saying so on stderr) if it is unset
/// outside CI. Panics if it is unset in CI.
pub fn pg_server(test: &str) -> Option<String> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{test}: {PG_URL_ENV} is not set, and CI must run the PostgreSQL tests \
             (start a server with `tests/pg.sh run cargo nextest run --workspace`)"
        ),
        _ => {
            eprintln!(
                "\n*** SKIPPED {test}: no PostgreSQL server ({PG_URL_ENV} is not set). \
                 Run `tests/pg.sh run cargo nextest run --workspace` to include it. ***\n"
            );
            None
        }
    }
}

/// `url` naming database `db` instead of its own.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let query = tail.split_once('?').map(|(_, q)| q);
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

/// A database created for one test and dropped with it.
pub struct TestDatabase {
    server: String,
    pub name: String,
    /// The catalog URL of the new, empty database.
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database on the server at `server` (collation `C`, like the
    /// production setup in docs/OPERATIONS.md).
    pub fn create(server: &str) -> TestDatabase {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "cairn_test_{}_{:x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        );
        let mut admin = Client::connect(server, NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test server {server}: {e}"));
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' \
                 LC_COLLATE 'C' LC_CTYPE 'C'"
            ))
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        TestDatabase {
            server: server.to_owned(),
            url: with_database(server, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Best effort: a server that has gone away (a test that stopped it) takes the
        // database with it.
        if let Ok(mut admin) = Client::connect(&self.server, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
