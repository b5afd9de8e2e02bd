//! PostgreSQL-only behaviour of the catalog: connections that drop — between transactions (an
//! idle connection the server or a firewall closed during a long pull), in the middle of one
//! (a server restart), or without the server noticing (a network partition) — are reopened,
//! and an interrupted transaction runs again whole.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

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

/// A TCP relay to the test server that can cut its clients off while the server's side of
/// every connection stays open: a network partition as the server sees it (nothing happened).
struct Partition {
    port: u16,
    links: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
}

impl Partition {
    fn relay_to(server: &str) -> Partition {
        let config: postgres::Config = server.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the test server is not on TCP: {other:?}"),
        };
        let target = format!(
            "{host}:{}",
            config.get_ports().first().copied().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
        let l = links.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(&target).unwrap();
                l.lock()
                    .unwrap()
                    .push((client.try_clone().unwrap(), server.try_clone().unwrap()));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client, server));
                std::thread::spawn(move || pump(s2, c2));
            }
        });
        Partition { port, links }
    }

    /// `url` going through the relay instead of straight to the server.
    fn url(&self, url: &str, server: &str) -> String {
        let config: postgres::Config = server.parse().unwrap();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        url.replacen(&format!(":{port}/"), &format!(":{}/", self.port), 1)
    }

    /// Cuts every client off; the server's side stays open and hears nothing.
    fn cut(&self) {
        for (client, _server) in self.links.lock().unwrap().iter() {
            let _ = client.shutdown(Shutdown::Both);
        }
    }
}

/// Copies bytes until either side ends, without passing the end on.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

#[test]
fn a_transaction_cut_off_by_a_partition_does_not_hold_its_locks_postgres() {
    let test = "a_transaction_cut_off_by_a_partition_does_not_hold_its_locks_postgres";
    let Some(server) = testing::pg_server(test) else {
        return;
    };
    let db = TestDatabase::create(&server);
    Catalog::init(&db.url).unwrap();
    let partition = Partition::relay_to(&server);
    let mut cat = Catalog::open(&partition.url(&db.url, &server)).unwrap();
    let attempts = Cell::new(0);
    cat.write(|tx| {
        attempts.set(attempts.get() + 1);
        tx.create_group("first", IoClass::Default, None)?;
        if attempts.get() == 1 {
            // The first run's insert of "first" stays uncommitted, with its lock, in a server
            // session that knows nothing of the cut: the rerun's insert of the same name must
            // not wait for it.
            partition.cut();
        }
        tx.create_group("second", IoClass::Default, None)?;
        Ok(())
    })
    .expect("the transaction commits on its second run");
    assert_eq!(attempts.get(), 2);
    let names: Vec<String> = cat
        .read(|tx| tx.groups())
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["first", "second"], "each written once");
}
