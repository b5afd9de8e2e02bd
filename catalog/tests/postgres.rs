//! PostgreSQL-only behaviour of the catalog: connections that drop — between transactions (an
//! idle connection the server or a firewall closed during a long pull) or in the middle of one
//! (a server restart) — are reopened, and an interrupted transaction runs again whole.

use std::cell::Cell;

use cairn_catalog::Catalog;
use cairn_catalog::model::IoClass;
use cairn_catalog::testing::{self, TestDatabase};

/// Ends every other session on the test's database, as a server restart or an idle-connection
/// timeout would.
fn drop_connections(db: &TestDatabase, server: &str) {
    let mut admin = postgres::Client::connect(server, postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .unwrap();
}

#[test]
fn a_connection_dropped_between_transactions_is_reopened_postgres() {
    let test = "a_connection_dropped_between_transactions_is_reopened_postgres";
    let Some(server) = testing::pg_server(test) else {
        return;
    };
    let db = TestDatabase::create(&server);
    let mut cat = Catalog::init(&db.url).unwrap();
    cat.write(|tx| tx.create_group("before", IoClass::Default, None))
        .unwrap();
    drop_connections(&db, &server);
    cat.write(|tx| tx.create_group("after", IoClass::Default, None))
        .expect("the write after the drop reconnects and commits");
    let names: Vec<String> = cat
        .read(|tx| tx.groups())
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["after", "before"]);
}

#[test]
fn a_transaction_cut_off_half_way_runs_again_whole_postgres() {
    let test = "a_transaction_cut_off_half_way_runs_again_whole_postgres";
    let Some(server) = testing::pg_server(test) else {
        return;
    };
    let db = TestDatabase::create(&server);
    let mut cat = Catalog::init(&db.url).unwrap();
    let attempts = Cell::new(0);
    cat.write(|tx| {
        attempts.set(attempts.get() + 1);
        tx.create_group("first", IoClass::Default, None)?;
        if attempts.get() == 1 {
            drop_connections(&db, &server);
        }
        tx.create_group("second", IoClass::Default, None)?;
        Ok(())
    })
    .expect("the transaction commits on its second run");
    assert_eq!(attempts.get(), 2, "run again after the connection dropped");
    let names: Vec<String> = cat
        .read(|tx| tx.groups())
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["first", "second"], "each written once");
}
