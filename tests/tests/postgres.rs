//! What a PostgreSQL catalog adds for sites on several machines: requests made anywhere wake
//! the cairnd concerned (LISTEN/NOTIFY), a database restart in the middle of a multi-host sync
//! loses nothing and repeats nothing, and cairnd waits out an outage of the catalog.
//!
//! These run when `CAIRN_TEST_PG_URL` names a server (`tests/pg.sh run …`); the restart and
//! outage tests start a private server of their own with `tests/pg.sh`, so that stopping it
//! disturbs no other test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_catalog::catalog::CopyRequestFilter;
use cairn_catalog::md5::md5_file;
use cairn_catalog::model::{Has, RequestState};
use cairn_catalog::testing;
use cairn_node::NodeRoot;
use cairn_tests::{Archive, wait_until, write_file};

const T: Duration = Duration::from_secs(60);

/// A PostgreSQL server of one test's own, stopped and removed in `Drop`.
struct PrivateServer {
    dir: PathBuf,
    url: String,
}

fn pg_sh() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/pg.sh")
}

impl PrivateServer {
    fn start() -> PrivateServer {
        // Not below a private temp dir: the server runs as the `postgres` user when we are
        // root, and must reach its directory.
        let dir = std::env::temp_dir().join(format!(
            "cairn-pg-{}-{}",
            std::process::id(),
            cairn_tests::free_port()
        ));
        let out = Command::new("bash")
            .arg(pg_sh())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("tests/pg.sh runs");
        assert!(
            out.status.success(),
            "tests/pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        PrivateServer { dir, url }
    }

    /// Stops the server (fast: open sessions are ended) and starts it again.
    fn restart(&self) {
        self.pg_sh("restart");
    }

    /// Stops the server until [`PrivateServer::resume`].
    fn halt(&self) {
        self.pg_sh("halt");
    }

    fn resume(&self) {
        self.pg_sh("start");
    }

    fn pg_sh(&self, what: &str) {
        let out = Command::new("bash")
            .arg(pg_sh())
            .arg(what)
            .arg(&self.dir)
            .output()
            .expect("tests/pg.sh runs");
        assert!(
            out.status.success(),
            "tests/pg.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(pg_sh())
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// `mib` MiB that differ from every other file's (the index is in every block).
fn distinct_file(root: &Path, rel: &str, index: usize, mib: usize) {
    let mut bytes = Vec::with_capacity(mib << 20);
    while bytes.len() < mib << 20 {
        bytes.extend_from_slice(format!("file {index} block {:09}\n", bytes.len()).as_bytes());
    }
    write_file(root, rel, bytes);
}

#[test]
fn a_request_made_on_another_machine_wakes_cairnd_postgres() {
    let test = "a_request_made_on_another_machine_wakes_cairnd_postgres";
    let Some(server) = testing::pg_server(test) else {
        return;
    };
    let a = Archive::on_postgres(&server);
    // A pass an hour away: only a notification can make it act sooner.
    let mut h1 = a.host_with("h1", "interval = \"1h\"");
    let r1 = h1.node("n1", &[]);
    let r2 = h1.node("n2", &[]);
    write_file(&r1, "2025/01/01/a.dat", "a\n");
    h1.start();
    wait_until(T, "nodes initialised", || {
        NodeRoot::new(&r1).marker().exists() && NodeRoot::new(&r2).marker().exists()
    });
    a.wait_idle(T);

    // The CLI of a machine with no cairnd: nothing nudges h1's socket.
    a.cairn(&["node", "scan", "n1", "--register-new"]);
    wait_until(T, "the scan, woken by the catalog", || a.on("n1").0 == 1);
    a.cairn(&["node", "sync", "n1", "n2", "--force"]);
    wait_until(T, "the copy, woken by the catalog", || a.on("n2").0 == 1);
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/01/01/a.dat")).unwrap(),
        "a\n"
    );
}

#[test]
fn restarting_the_server_mid_sync_loses_nothing_and_repeats_nothing_postgres() {
    let test = "restarting_the_server_mid_sync_loses_nothing_and_repeats_nothing_postgres";
    if testing::pg_server(test).is_none() {
        return;
    }
    const FILES: usize = 24;
    const MIB: usize = 2;
    let server = PrivateServer::start();
    let a = Archive::on_postgres(&server.url);
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    let mut h3 = a.host("h3");
    // Pulls slow enough that the restarts land in the middle of the sync.
    for h in [&h2, &h3] {
        h.limit_pulls("8MiB");
    }
    let r1 = h1.node("field", &[]);
    let r2 = h2.node("archive2", &["--archive"]);
    let r3 = h3.node("archive3", &["--archive"]);
    for i in 0..FILES {
        distinct_file(&r1, &format!("2025/01/01/{i:03}.dat"), i, MIB);
    }
    h1.start();
    h2.start();
    h3.start();
    h1.cairn(&["node", "scan", "field", "--register-new"]);
    a.wait_idle(T);
    assert_eq!(a.on("field").0, FILES as u64);

    h1.cairn(&["node", "sync", "field", "archive2", "--force"]);
    h1.cairn(&["node", "sync", "field", "archive3", "--force"]);
    wait_until(T, "the sync under way", || a.on("archive2").0 >= 2);
    server.restart();
    wait_until(T, "the sync going on after the restart", || {
        a.on("archive2").0 >= FILES as u64 / 2
    });
    server.restart();
    a.wait_idle(Duration::from_secs(240));

    // Every request done, once; no request for a file and group twice.
    let requests = a
        .catalog()
        .read(|tx| tx.copy_requests(&CopyRequestFilter::default()))
        .unwrap();
    assert_eq!(requests.len(), 2 * FILES, "one request per file and group");
    for r in &requests {
        assert_eq!(r.state, RequestState::Done, "request #{}: {r:?}", r.id);
    }
    let mut pairs: Vec<_> = requests
        .iter()
        .map(|r| (r.file_id, r.to_group.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 2 * FILES, "no duplicate requests");

    // Every copy there, healthy, with the right bytes, and nothing left half-done.
    for (node, root) in [("archive2", &r2), ("archive3", &r3)] {
        assert_eq!(a.on(node).0, FILES as u64, "copies on {node}");
        for i in 0..FILES {
            let path = format!("2025/01/01/{i:03}.dat");
            assert_eq!(a.has(node, &path), Some(Has::Yes), "{path} on {node}");
            assert_eq!(
                md5_file(&root.join(&path)).unwrap(),
                md5_file(&r1.join(&path)).unwrap(),
                "{path} on {node}"
            );
        }
        let tmp = NodeRoot::new(root).tmp();
        let left = std::fs::read_dir(&tmp).map_or(0, |d| d.count());
        assert_eq!(left, 0, "temp files left in {}", tmp.display());
    }
    // The operator can see that cairnd lost the catalog and carried on.
    assert!(
        h2.log().contains("again"),
        "h2 says it is back in touch with the catalog: {}",
        h2.log()
    );
}

#[test]
fn cairnd_waits_out_a_catalog_outage_and_still_stops_on_sigterm_postgres() {
    let test = "cairnd_waits_out_a_catalog_outage_and_still_stops_on_sigterm_postgres";
    if testing::pg_server(test).is_none() {
        return;
    }
    let server = PrivateServer::start();
    let a = Archive::on_postgres(&server.url);
    let mut h1 = a.host("h1");
    let r1 = h1.node("n1", &[]);
    let r2 = h1.node("n2", &[]);
    write_file(&r1, "2025/01/01/a.dat", "a\n");
    h1.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);

    // The catalog goes away: cairnd says so and keeps running.
    server.halt();
    wait_until(T, "cairnd to notice", || {
        h1.log().contains("lost the connection to the catalog")
    });
    std::thread::sleep(Duration::from_secs(3)); // a few passes' worth of outage
    // It comes back: cairnd says so and carries out what is asked.
    server.resume();
    wait_until(T, "cairnd back in touch", || {
        h1.log().contains("on the catalog at")
    });
    a.cairn(&["node", "sync", "n1", "n2", "--force"]);
    wait_until(T, "the copy after the outage", || a.on("n2").0 == 1);
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/01/01/a.dat")).unwrap(),
        "a\n"
    );

    // Gone again: SIGTERM still stops cairnd cleanly instead of waiting for the catalog.
    server.halt();
    wait_until(T, "cairnd to notice again", || {
        h1.log()
            .matches("lost the connection to the catalog")
            .count()
            >= 2
    });
    assert_eq!(h1.stop().code(), Some(0), "{}", h1.log());
    assert!(h1.log().contains("cairnd stopped."), "{}", h1.log());
}

#[test]
fn pulls_longer_than_the_servers_idle_timeout_are_all_recorded_postgres() {
    // alpenhorn lost work this way: its database server dropped connections left idle during
    // long pulls, and the completion of each pull was never recorded.
    let test = "pulls_longer_than_the_servers_idle_timeout_are_all_recorded_postgres";
    let Some(server) = testing::pg_server(test) else {
        return;
    };
    const FILES: usize = 6;
    let a = Archive::on_postgres(&server);
    let db = a.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
    // Every session of this catalog idle for more than 300 ms is ended by the server.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET idle_session_timeout = '300ms'"
        ))
        .unwrap();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    // Each pull takes about a second: longer than the idle timeout.
    h2.limit_pulls("1MiB");
    let r1 = h1.node("field", &[]);
    let r2 = h2.node("archive", &["--archive"]);
    for i in 0..FILES {
        distinct_file(&r1, &format!("2025/01/01/{i}.dat"), i, 1);
    }
    h1.start();
    h2.start();
    h1.cairn(&["node", "scan", "field", "--register-new"]);
    a.wait_idle(T);
    h1.cairn(&["node", "sync", "field", "archive", "--force"]);
    a.wait_idle(Duration::from_secs(120));
    let requests = a
        .catalog()
        .read(|tx| tx.copy_requests(&CopyRequestFilter::default()))
        .unwrap();
    assert_eq!(requests.len(), FILES);
    for r in &requests {
        assert_eq!(r.state, RequestState::Done, "request #{}: {r:?}", r.id);
        assert_eq!(r.attempts, 1, "done at the first attempt: {r:?}");
    }
    for i in 0..FILES {
        let path = format!("2025/01/01/{i}.dat");
        assert_eq!(a.has("archive", &path), Some(Has::Yes), "{path}");
        assert_eq!(
            md5_file(&r2.join(&path)).unwrap(),
            md5_file(&r1.join(&path)).unwrap()
        );
    }
    // The server did drop idle sessions (the listening one too, which says so).
    assert!(
        h2.log().contains("lost the connection to the catalog"),
        "{}",
        h2.log()
    );
}

#[test]
fn the_mount_serves_what_it_knows_and_fails_fast_while_the_catalog_is_away_postgres() {
    let test = "the_mount_serves_what_it_knows_and_fails_fast_while_the_catalog_is_away_postgres";
    if testing::pg_server(test).is_none() || !cairn_tests::fuse_available() {
        return;
    }
    let server = PrivateServer::start();
    let a = Archive::on_postgres(&server.url);
    let mut h1 = a.host("h1");
    let r1 = h1.node("n1", &[]);
    write_file(&r1, "seen/a.dat", "seen before\n");
    write_file(&r1, "unseen/b.dat", "not looked at\n");
    h1.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    let m = h1.mount(None);
    let mut open = std::fs::File::open(m.path("seen/a.dat")).unwrap();
    assert!(m.path("seen/a.dat").exists());

    server.halt();
    // A name never looked at needs the catalog: an error within seconds, not a hang.
    let start = std::time::Instant::now();
    let err = std::fs::read_dir(m.path("unseen")).map(|_| ()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // What is known goes on: an open file reads, a seen name stats.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open, &mut text).unwrap();
    assert_eq!(text, "seen before\n");
    let size = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os; print(os.stat('{}').st_size)",
            m.path("seen/a.dat").display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&size.stdout).trim(), "12");

    server.resume();
    wait_until(T, "the mount back in touch", || {
        std::fs::read_to_string(m.path("unseen/b.dat")).is_ok_and(|t| t == "not looked at\n")
    });
}
