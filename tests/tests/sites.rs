//! Several sites: a PostgreSQL primary at the archive, a hot standby at a distant site, the
//! link between them with its delay ([`cairn_tests::site::Sites`]), and cairn's processes at
//! the distant site reading from the standby and writing to the primary through the link.
//!
//! These start servers of their own (PostgreSQL's binaries must be installed) and need no
//! `CAIRN_TEST_PG_URL`.

use std::time::{Duration, Instant};

use cairn_catalog::db::Patience;
use cairn_catalog::model::{Has, IoClass};
use cairn_catalog::replica::{ReplicaOptions, ReplicaState};
use cairn_catalog::{Catalog, Pool, Routing};
use cairn_tests::pki::Pki;
use cairn_tests::site::{PgServer, Sites, can_run_servers};
use cairn_tests::{Archive, wait_until, write_file};

#[test]
fn the_standby_replicates_through_the_link_and_waits_while_it_is_cut() {
    if !can_run_servers("the_standby_replicates_through_the_link_and_waits_while_it_is_cut") {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let mut primary = sites.primary.client("postgres");
    primary
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .unwrap();
    sites.wait_replayed(Duration::from_secs(30));
    let count = |sites: &Sites| -> i64 {
        sites
            .standby
            .client("postgres")
            .query_one("SELECT count(*) FROM t", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&sites), 1);

    sites.link.cut();
    let mut primary = sites.primary.client("postgres");
    primary.batch_execute("INSERT INTO t VALUES (2)").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&sites), 1, "nothing crosses a cut link");

    sites.link.restore();
    sites.wait_replayed(Duration::from_secs(60));
    assert_eq!(
        count(&sites),
        2,
        "replication resumes when the link is back"
    );
}

/// The distant site's routing for `archive`: reads from the standby, writes through the link.
fn far_routing(archive: &Archive, max_lag: Duration) -> Routing {
    let remote = archive.remote.as_ref().expect("a two-site archive");
    Routing::with_replica(
        &remote.url,
        ReplicaOptions {
            url: remote.replica.clone(),
            max_lag,
            wait: Duration::from_secs(1),
        },
    )
}

#[test]
fn a_distant_site_reads_from_its_standby_and_sees_its_own_writes_at_once() {
    if !can_run_servers("a_distant_site_reads_from_its_standby_and_sees_its_own_writes_at_once") {
        return;
    }
    // 50 ms round trip between the sites.
    let sites = Sites::new(Duration::from_millis(25));
    let archive = sites.archive();
    let pool = Pool::routed(
        far_routing(&archive, Duration::from_secs(30)),
        Patience::default(),
    );
    // Read your writes, 100 times: each group created is there at the very next read, from
    // any connection of the process.
    for i in 0..100 {
        let name = format!("g{i}");
        pool.with(|c| c.write(|tx| tx.create_group(&name, IoClass::Default, None)))
            .unwrap();
        let seen = pool.with(|c| c.read(|tx| tx.group_by_name(&name))).unwrap();
        assert!(
            seen.is_some(),
            "trial {i}: the group just created is not seen"
        );
    }
    let status = pool.replica_status().expect("a replica");
    assert_eq!(status.state, ReplicaState::InUse, "{status:?}");

    // Reads are answered at this site: 50 of them make next to no flight across the link (a
    // read on the primary is three: BEGIN, the query, COMMIT; the standby's own replication
    // traffic crosses it too, a few flights a second).
    let before = sites.link.flights();
    for _ in 0..50 {
        pool.with(|c| c.read(|tx| tx.groups())).unwrap();
    }
    let flights = sites.link.flights() - before;
    assert!(
        flights < 20,
        "{flights} flights across the link for 50 reads"
    );

    // What another site writes shows here once replicated.
    let mut near = archive.catalog();
    near.write(|tx| tx.create_group("from_b", IoClass::Default, None))
        .unwrap();
    let lag = sites.wait_replayed(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(10));
    let seen = pool
        .with(|c| c.read(|tx| tx.group_by_name("from_b")))
        .unwrap();
    assert!(seen.is_some(), "replicated within {lag:?} but not seen");
}

#[test]
fn a_replica_that_is_not_a_standby_is_refused_naming_the_key() {
    if !can_run_servers("a_replica_that_is_not_a_standby_is_refused_naming_the_key") {
        return;
    }
    let sites = Sites::new(Duration::from_millis(1));
    let archive = sites.archive();
    let routing = Routing::with_replica(
        &archive.url,
        ReplicaOptions {
            // The primary itself.
            url: archive.url.clone(),
            max_lag: Duration::from_secs(30),
            wait: Duration::from_secs(1),
        },
    );
    let err = Catalog::open_routed(&routing).expect_err("a primary as replica is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("catalog.replica") && msg.contains("not a hot standby"),
        "{msg}"
    );
}

#[test]
fn a_stopped_replica_sends_reads_to_the_primary_until_it_is_back() {
    if !can_run_servers("a_stopped_replica_sends_reads_to_the_primary_until_it_is_back") {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let pool = Pool::routed(
        far_routing(&archive, Duration::from_secs(30)),
        Patience::default(),
    );
    pool.with(|c| c.write(|tx| tx.create_group("before", IoClass::Default, None)))
        .unwrap();
    assert!(
        pool.with(|c| c.read(|tx| tx.group_by_name("before")))
            .unwrap()
            .is_some()
    );

    sites.standby.stop();
    for i in 0..20 {
        let name = format!("during{i}");
        pool.with(|c| c.write(|tx| tx.create_group(&name, IoClass::Default, None)))
            .unwrap();
        let seen = pool
            .with(|c| c.read(|tx| tx.group_by_name(&name)))
            .expect("reads go on without the replica");
        assert!(seen.is_some(), "{name}");
    }
    let status = pool.replica_status().unwrap();
    assert_eq!(status.state, ReplicaState::Unreachable, "{status:?}");

    sites.standby.start();
    wait_until(
        Duration::from_secs(30),
        "the replica to be used again",
        || {
            pool.with(|c| c.read(|tx| tx.groups())).unwrap();
            pool.replica_status().unwrap().state == ReplicaState::InUse
        },
    );
}

#[test]
fn a_lagging_replica_is_reported_and_not_used() {
    if !can_run_servers("a_lagging_replica_is_reported_and_not_used") {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let pool = Pool::routed(
        far_routing(&archive, Duration::from_secs(2)),
        Patience::default(),
    );
    pool.with(|c| c.read(|tx| tx.groups())).unwrap();
    assert_eq!(pool.replica_status().unwrap().state, ReplicaState::InUse);

    sites.pause_replay();
    // The archive's site goes on writing; the standby receives but does not replay.
    let mut near = archive.catalog();
    for i in 0..5 {
        near.write(|tx| tx.create_group(&format!("b{i}"), IoClass::Default, None))
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    let mut cat = Catalog::open_routed(pool.routing()).unwrap();
    let status = cat.replica_status().unwrap();
    assert_eq!(status.state, ReplicaState::Lagging, "{status:?}");
    assert!(status.lag_seconds.unwrap() > 2.0, "{status:?}");
    // Reads go to the primary: the latest group is seen although the standby lacks it.
    assert!(
        pool.with(|c| c.read(|tx| tx.group_by_name("b4")))
            .unwrap()
            .is_some()
    );

    sites.resume_replay();
    wait_until(Duration::from_secs(30), "the replica to catch up", || {
        cat.replica_status().unwrap().state == ReplicaState::InUse
    });
}

#[test]
fn a_cut_link_leaves_the_site_reading_from_its_standby() {
    if !can_run_servers("a_cut_link_leaves_the_site_reading_from_its_standby") {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let pool = Pool::routed(
        far_routing(&archive, Duration::from_secs(1)),
        Patience::new(Duration::from_secs(2)),
    );
    pool.with(|c| c.write(|tx| tx.create_group("before", IoClass::Default, None)))
        .unwrap();
    // (Cut at once, the write might not have crossed to the standby yet: then the standby,
    // the best answer left, would not have it.)
    assert!(pool.wait_replicated());
    sites.link.cut();
    // Long enough for the standby to count as lagging: reads would go to the primary, which
    // cannot be reached, and the standby answers.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..20 {
        // With a patience of 2 s, a read waiting for the primary would fail.
        let seen = pool
            .with(|c| c.read(|tx| tx.group_by_name("before")))
            .expect("the standby answers while the link is cut");
        assert!(seen.is_some());
    }
    // A site cut off can still open the catalog.
    let mut cat = Catalog::open_routed(pool.routing()).expect("opens from the standby");
    assert!(cat.read(|tx| tx.group_by_name("before")).unwrap().is_some());
    sites.link.restore();
    pool.with(|c| c.write(|tx| tx.create_group("after", IoClass::Default, None)))
        .expect("writes go through again once the link is back");
}

/// Connections to `db` on `server` that are encrypted.
fn encrypted_sessions(server: &PgServer, db: &str) -> i64 {
    server
        .client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = $1 AND s.ssl",
            &[&db],
        )
        .unwrap()
        .get(0)
}

fn with_query(url: &str, query: &str) -> String {
    format!("{url}?{query}")
}

#[test]
fn catalog_connections_use_tls_and_refuse_a_certificate_that_does_not_match() {
    let test = "catalog_connections_use_tls_and_refuse_a_certificate_that_does_not_match";
    if !can_run_servers(test) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let Some(pki) = Pki::or_skip(&keys.path().join("ca"), "IP:127.0.0.1", test) else {
        return;
    };
    let Some(other) = Pki::or_skip(&keys.path().join("other"), "IP:127.0.0.1", test) else {
        return;
    };
    let sites = Sites::with_tls(Duration::from_millis(2), &pki);
    let archive = sites.archive();
    let db = archive.url.rsplit('/').next().unwrap().to_owned();
    let verify_full = |url: &str, ca: &Pki| {
        with_query(
            url,
            &format!("sslmode=verify-full&sslrootcert={}", ca.ca.display()),
        )
    };

    // verify-full with the right authority: connected, encrypted.
    let mut cat = Catalog::open(&verify_full(&archive.url, &pki)).expect("verify-full connects");
    cat.read(|tx| tx.groups()).unwrap();
    assert!(encrypted_sessions(&sites.primary, &db) >= 1);
    drop(cat);

    // A certificate from another authority is refused, saying why.
    let err = Catalog::open(&verify_full(&archive.url, &other))
        .expect_err("another authority's certificate is refused")
        .to_string();
    assert!(
        err.contains("invalid peer certificate") && err.contains("sslrootcert"),
        "{err}"
    );

    // A certificate that does not name the host connected to: refused by verify-full,
    // accepted by verify-ca (which checks the authority only).
    let by_name = archive.url.replace("127.0.0.1", "localhost");
    let err = Catalog::open(&verify_full(&by_name, &pki))
        .expect_err("a certificate for another name is refused")
        .to_string();
    assert!(err.contains("not valid for name"), "{err}");
    Catalog::open(&with_query(
        &by_name,
        &format!("sslmode=verify-ca&sslrootcert={}", pki.ca.display()),
    ))
    .expect("verify-ca does not check the name");

    // require: encrypted without checking the certificate.
    Catalog::open(&with_query(&archive.url, "sslmode=require")).expect("require connects");

    // The distant site: both the primary (through the link) and the standby over TLS.
    let remote = archive.remote.clone().unwrap();
    let routing = Routing::with_replica(
        &verify_full(&remote.url, &pki),
        ReplicaOptions {
            url: verify_full(&remote.replica, &pki),
            max_lag: Duration::from_secs(30),
            wait: Duration::from_secs(1),
        },
    );
    let pool = Pool::routed(routing, Patience::default());
    pool.with(|c| c.write(|tx| tx.create_group("over_tls", IoClass::Default, None)))
        .unwrap();
    assert!(
        pool.with(|c| c.read(|tx| tx.group_by_name("over_tls")))
            .unwrap()
            .is_some()
    );
    assert_eq!(pool.replica_status().unwrap().state, ReplicaState::InUse);
    assert!(
        encrypted_sessions(&sites.standby, &db) >= 1,
        "the standby's sessions"
    );
    assert!(
        encrypted_sessions(&sites.primary, &db) >= 1,
        "the primary's sessions"
    );

    // A server without TLS is refused under require.
    let plain = Sites::new(Duration::from_millis(1));
    let plain_archive = plain.archive();
    let err = Catalog::open(&with_query(&plain_archive.url, "sslmode=require"))
        .expect_err("require refuses a server without TLS")
        .to_string();
    assert!(err.contains("TLS"), "{err}");
}

#[test]
fn a_distant_site_imports_in_batches_and_sees_what_the_archive_imports() {
    let test = "a_distant_site_imports_in_batches_and_sees_what_the_archive_imports";
    if !can_run_servers(test) {
        return;
    }
    // 20 ms round trip.
    let sites = Sites::new(Duration::from_millis(10));
    let archive = sites.archive();
    let mut far = archive.far_host("far", "");
    let mut near = archive.host("near");
    let field = far.node("field", &[]);
    near.node("vault", &["--archive"]);
    let n = 1500;
    for i in 0..n {
        write_file(
            &field,
            &format!("2025/05/01/f{i:05}.dat"),
            vec![(i % 251) as u8; 4096],
        );
    }
    far.start();
    near.start();

    let t = Instant::now();
    let flights = sites.link.flights();
    far.cairn(&["node", "scan", "field", "--register-new"]);
    wait_until(
        Duration::from_secs(120),
        "the scan to register every file",
        || archive.on("field").0 == n,
    );
    let took = t.elapsed();
    let trips = sites.link.flights() - flights;
    eprintln!("scan of {n} files at 20 ms: {took:?}, about {trips} round trips through the link");
    // A file at a time costs about eight round trips each; a batch of 1,000 about ten.
    assert!(trips < n / 2, "{trips} round trips for {n} files");

    // The archive's site imports a file; the distant site lists it once it is replicated.
    write_file(&near.root("vault"), "2025/05/02/b.dat", b"from the archive");
    near.cairn(&["node", "scan", "vault", "--register-new"]);
    wait_until(
        Duration::from_secs(30),
        "the archive's file at the distant site",
        || far.cairn(&["file", "list"]).contains("2025/05/02/b.dat"),
    );

    // The distant site shows its replica: `cairn status` and cairnd's /metrics.
    let status = far.cairn(&["status"]);
    assert!(
        status.contains("Replica:") && status.contains("in use"),
        "{status}"
    );
    assert!(status.contains("Standbys of the primary:"), "{status}");
    let (code, _, body) = cairn_tests::http_get(&far.address, "/metrics", &[]);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200);
    assert!(
        body.contains("cairn_catalog_replica_lag_seconds{replica="),
        "{body}"
    );
    assert!(body.contains("cairn_catalog_replica_in_use{"), "{body}");
    assert!(
        far.log().contains("Reading the catalog from the replica"),
        "{}",
        far.log()
    );
    far.stop();
    near.stop();
}

#[test]
fn a_request_made_at_the_archive_wakes_a_distant_cairnd_which_finds_it_on_its_standby() {
    let test = "a_request_made_at_the_archive_wakes_a_distant_cairnd_which_finds_it_on_its_standby";
    if !can_run_servers(test) {
        return;
    }
    // 50 ms round trip; the distant cairnd makes a pass only when woken.
    let sites = Sites::new(Duration::from_millis(25));
    let archive = sites.archive();
    let mut far = archive.far_host_with("far", "", "interval = \"1h\"");
    let mut near = archive.host("near");
    far.node("field", &[]);
    let vault = near.node("vault", &["--archive"]);
    write_file(&vault, "2025/05/03/a.dat", b"made at the archive");
    far.start();
    near.start();
    near.cairn(&["node", "scan", "vault", "--register-new"]);
    archive.wait_idle(Duration::from_secs(30));
    // Made at the archive's site: NOTIFY reaches the distant cairnd about when the commit's log
    // reaches its standby; its pass must not read the standby before it has the request.
    for i in 0..5 {
        let name = format!("2025/05/03/b{i}.dat");
        write_file(&vault, &name, format!("file {i}"));
        near.cairn(&["node", "scan", "vault", "--register-new"]);
        archive.wait_idle(Duration::from_secs(30));
        near.cairn(&["file", "sync", &name, "--from", "vault", "--to", "field"]);
        wait_until(
            Duration::from_secs(30),
            "the distant cairnd to pull the file",
            || archive.has("field", &name) == Some(Has::Yes),
        );
    }
    far.stop();
    near.stop();
}

/// A far host with its node initialised, cairnd running, and its view mounted: the mount reads
/// from the site's standby and writes to the primary through the link.
fn far_mount(
    archive: &Archive,
    name: &str,
) -> (
    cairn_tests::TestHost,
    std::path::PathBuf,
    cairn_tests::Mount,
) {
    let mut far = archive.far_host(name, "");
    let root = far.node("field", &[]);
    far.start();
    wait_until(Duration::from_secs(60), "node initialised", || {
        cairn_node::NodeRoot::new(&root).marker().exists()
    });
    std::fs::write(
        &far.config,
        std::fs::read_to_string(&far.config).unwrap()
            + "[fs]\nttl = \"1s\"\nwrite_node = \"field\"\nsettle = \"100ms\"\n",
    )
    .unwrap();
    let m = far.mount(Some("field"));
    (far, root, m)
}

/// The issue's check: what a mount at a site 50 ms from the primary writes, it sees at once —
/// listed, `stat`-able, with its md5 and copies — a hundred times in a row.
#[test]
fn a_distant_mount_reads_its_own_writes_at_once() {
    let test = "a_distant_mount_reads_its_own_writes_at_once";
    if !can_run_servers(test) || !cairn_tests::fuse_available() {
        return;
    }
    // 50 ms round trip.
    let sites = Sites::new(Duration::from_millis(25));
    let archive = sites.archive();
    let (_far, _root, m) = far_mount(&archive, "far");
    std::fs::create_dir(m.path("run")).unwrap();
    for i in 0..100 {
        let rel = format!("run/f{i:03}.dat");
        let data = format!("trial {i}\n");
        std::fs::write(m.path(&rel), &data).unwrap();
        // The md5 archives it (registered at the primary, through the link) ...
        assert_eq!(
            m.xattr(&rel, "md5").unwrap(),
            cairn_catalog::md5::md5_hex(data.as_bytes()),
            "trial {i}"
        );
        // ... and at once, read from the standby that may not have replayed it yet, it is
        // there: its copies, its attributes, a listing, its bytes.
        assert_eq!(m.xattr(&rel, "copies").unwrap(), "field=yes", "trial {i}");
        assert_eq!(m.xattr(&rel, "state").unwrap(), "local", "trial {i}");
        let meta = std::fs::metadata(m.path(&rel)).unwrap();
        assert_eq!(meta.len(), data.len() as u64, "trial {i}");
        let listed: Vec<String> = std::fs::read_dir(m.path("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            listed.contains(&format!("f{i:03}.dat")),
            "trial {i}: {listed:?}"
        );
        assert_eq!(std::fs::read_to_string(m.path(&rel)).unwrap(), data);
    }
}

/// A file the archive's site imports appears on a distant site's mount once the standby has
/// it; with the standby stopped, the mount goes on, reading from the primary; and with the
/// link cut too, what it listed before still lists.
#[test]
fn a_distant_mount_shows_the_archives_files_and_outlives_its_standby() {
    let test = "a_distant_mount_shows_the_archives_files_and_outlives_its_standby";
    if !can_run_servers(test) || !cairn_tests::fuse_available() {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let (_far, _root, m) = far_mount(&archive, "far");
    let mut near = archive.host("near");
    let vault = near.node("vault", &["--archive"]);
    near.start();
    wait_until(Duration::from_secs(60), "vault initialised", || {
        cairn_node::NodeRoot::new(&vault).marker().exists()
    });
    write_file(&vault, "shared/a.dat", b"from the archive\n");
    near.cairn(&["node", "scan", "vault", "--register-new"]);
    wait_until(
        Duration::from_secs(30),
        "the archive's file on the mount",
        || m.path("shared/a.dat").exists(),
    );
    assert_eq!(m.xattr("shared/a.dat", "state").unwrap(), "remote");

    // The standby goes away: the mount reads from the primary.
    sites.standby.stop();
    std::fs::write(m.path("after.dat"), b"written without a standby\n").unwrap();
    assert_eq!(
        m.xattr("after.dat", "md5").unwrap(),
        cairn_catalog::md5::md5_hex(b"written without a standby\n")
    );
    assert!(
        std::fs::read_dir(m.path("shared")).unwrap().count() == 1,
        "listings still work"
    );

    // No standby and the link cut: a directory listed before still lists (the kernel's copy,
    // which the mount cannot tell is out of date), and its file still stats.
    sites.link.cut();
    std::thread::sleep(Duration::from_millis(1500));
    let listed: Vec<String> = std::fs::read_dir(m.path("shared"))
        .expect("a listed directory lists during the cut")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["a.dat"], "{}", m.log());
    assert_eq!(std::fs::metadata(m.path("shared/a.dat")).unwrap().len(), 17);
    sites.link.restore();
    near.stop();
}

/// Issue "a site keeps archiving while its link to the catalog is cut": `cp -r` into a distant
/// site's mount while the link to the primary is cut sees no error; every file is listed and
/// readable there during the cut, `pending` with its md5; within moments of the link's return
/// all are registered once, with their md5s. Then the same with the mount killed during the
/// cut and started again (still cut): the journal shows every file again. [S30]
#[test]
fn a_distant_mount_keeps_archiving_while_its_link_is_cut() {
    let test = "a_distant_mount_keeps_archiving_while_its_link_is_cut";
    if !can_run_servers(test) || !cairn_tests::fuse_available() {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let (far, _root, mut m) = far_mount(&archive, "far");
    let src = archive.dir.path().join("src");
    let mut want = Vec::new();
    // One directory with a name starting with '.': made here during the cut like the others.
    let dirs = ["d0", "d1", "d2", ".d3"];
    for d in dirs {
        for f in 0..50 {
            let rel = format!("cut/{d}/f{f:02}.dat");
            let data = format!("{rel} written while cut\n").repeat(1 + f % 5);
            write_file(&src, &rel, &data);
            want.push((rel, data));
        }
    }
    let cp = |to: &str, m: &cairn_tests::Mount| {
        let t = Instant::now();
        let out = std::process::Command::new("cp")
            .arg("-r")
            .arg(src.join("cut"))
            .arg(m.path(to))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cp -r into {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    // The same with the link up first, for comparison (and so that the mount's connections
    // to the primary are open when the link is cut).
    let linked = cp("linked", &m);
    eprintln!(
        "cp -r of {} files with the link up took {linked:?}",
        want.len()
    );

    for round in [
        "the mount stays up",
        "the mount is killed and started again",
    ] {
        let top = format!("cut{}", round.len());
        let rels: Vec<(String, String)> = want
            .iter()
            .map(|(r, d)| (r.replacen("cut/", &format!("{top}/"), 1), d.clone()))
            .collect();
        sites.link.cut();
        let took = cp(&top, &m);
        eprintln!(
            "{round}: cp -r of {} files during the cut took {took:?}",
            rels.len()
        );
        if round.contains("killed") {
            m.kill9();
            m = far.mount(Some("field"));
        }
        // Listed and readable here during the cut; waiting, with its md5.
        for (rel, data) in rels.iter().step_by(7) {
            let got = std::fs::read_to_string(m.path(rel))
                .unwrap_or_else(|e| panic!("{round}: {rel} during the cut: {e}"));
            assert_eq!(got, *data, "{round}: {rel}");
            assert_eq!(
                m.xattr(rel, "md5"),
                Ok(cairn_catalog::md5::md5_hex(data.as_bytes())),
                "{round}: {rel}"
            );
        }
        let (rel, _) = &rels[0];
        wait_until(Duration::from_secs(10), "a file pending", || {
            m.xattr(rel, "state").as_deref() == Ok("pending")
        });
        // cairnd's /metrics and `cairn status` on this host count them (with any of the
        // files copied just before the cut still waiting), though the catalog cannot hear a
        // report.
        let waiting = || -> u64 {
            let (_, _, body) = cairn_tests::http_get(&far.address, "/metrics", &[]);
            String::from_utf8_lossy(&body)
                .lines()
                .find_map(|l| l.strip_prefix("cairn_journal_files{node=\"field\"} "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        wait_until(Duration::from_secs(10), "/metrics counting them", || {
            waiting() >= rels.len() as u64
        });
        wait_until(
            Duration::from_secs(10),
            "cairn status counting them",
            || {
                let counted = waiting().to_string();
                far.cairn(&["status"])
                    .lines()
                    .any(|l| l.contains("field") && l.split_whitespace().any(|w| w == counted))
            },
        );
        for d in dirs {
            assert_eq!(
                std::fs::read_dir(m.path(&format!("{top}/{d}")))
                    .unwrap()
                    .count(),
                50,
                "{round}: {top}/{d} during the cut"
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        sites.link.restore();
        let back = Instant::now();
        let mut cat = Catalog::open(&archive.url).unwrap();
        wait_until(
            Duration::from_secs(30),
            "every file registered after the cut",
            || {
                rels.iter().all(|(rel, data)| {
                    cat.read(|tx| tx.file_by_path(rel))
                        .ok()
                        .flatten()
                        .is_some_and(|f| f.md5 == cairn_catalog::md5::md5_hex(data.as_bytes()))
                })
            },
        );
        let took = back.elapsed();
        eprintln!("{round}: all registered {took:?} after the link came back");
        // What waits is tried again at least every 5 s.
        assert!(
            took < Duration::from_secs(10),
            "{round}: {took:?} after the link's return"
        );
        let files = cat
            .read(|tx| tx.files(&Default::default()))
            .unwrap()
            .into_iter()
            .filter(|f| f.path.starts_with(&format!("{top}/")))
            .count();
        assert_eq!(files, rels.len(), "{round}: each registered once");
        // And the directories made here during the cut are the catalog's now.
        for d in dirs {
            assert!(
                cat.read(|tx| tx.dir_by_path(&format!("{top}/{d}")))
                    .unwrap()
                    .is_some(),
                "{round}: {top}/{d} in the catalog"
            );
        }
    }
}

/// Issue "a site keeps archiving while its link to the catalog is cut", cairnd's part: files
/// an instrument writes into an auto-import node while the link to the primary is cut wait on
/// the node (`.cairn/waiting.db`), survive a kill -9 of cairnd, and are registered once within
/// seconds of the link's return. A path that the archive's site registered meanwhile with
/// other bytes is a conflict: both are kept, this site's under a name that says so, and
/// `cairn file conflicts` lists it.
#[test]
fn a_distant_cairnd_keeps_auto_importing_while_its_link_is_cut() {
    let test = "a_distant_cairnd_keeps_auto_importing_while_its_link_is_cut";
    if !can_run_servers(test) {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let mut far = archive.far_host("far", "");
    let mut near = archive.host("near");
    let field = far.node("field", &["--auto-import"]);
    near.node("vault", &["--archive"]);
    far.start();
    near.start();
    wait_until(Duration::from_secs(30), "auto-import watch", || {
        far.log().contains("for auto import")
    });
    // What the field node imports is copied to the archive's vault.
    near.cairn(&["group", "autosync", "vault", "field"]);
    write_file(&field, "2025/06/01/before.dat", b"before the cut\n");
    wait_until(
        Duration::from_secs(30),
        "a file imported before the cut",
        || archive.has("field", "2025/06/01/before.dat") == Some(Has::Yes),
    );

    sites.link.cut();
    let n = 60;
    let data = |i: usize| format!("file {i} written while the link is cut\n").repeat(1 + i % 7);
    for i in 0..n {
        write_file(&field, &format!("2025/06/02/f{i:03}.dat"), data(i));
    }
    // (The file imported just before may wait too: the standby had not replayed it when the
    // link went.)
    let waiting = || -> std::collections::BTreeSet<String> {
        cairn_node::waiting::WaitingList::open(&field)
            .and_then(|w| w.oldest(1000))
            .map(|rows| rows.into_iter().map(|w| w.file.path).collect())
            .unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(60),
        "every file waiting on the node",
        || (0..n).all(|i| waiting().contains(&format!("2025/06/02/f{i:03}.dat"))),
    );
    // /metrics says so at once, though the catalog cannot hear it.
    let (_, _, body) = cairn_tests::http_get(&far.address, "/metrics", &[]);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(&format!(
            "cairn_journal_files{{node=\"field\"}} {}",
            waiting().len()
        )),
        "{body}"
    );
    // Meanwhile the archive's site registers one of those paths with other bytes.
    write_file(
        &near.root("vault"),
        "2025/06/02/f000.dat",
        b"the archive's own f000\n",
    );
    near.cairn(&["node", "scan", "vault", "--register-new"]);
    wait_until(Duration::from_secs(30), "the archive's f000", || {
        archive.has("vault", "2025/06/02/f000.dat") == Some(Has::Yes)
    });
    // The site's mount (an analysis host's: no write node), started during the cut, shows
    // them: listed, readable, pending with their md5s, in the directory the catalog does not
    // have yet.
    let m = far.mount(None);
    let listed: std::collections::BTreeSet<String> = std::fs::read_dir(m.path("2025/06/02"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.len(), n, "{listed:?}");
    for i in [0, 5, n - 1] {
        let rel = format!("2025/06/02/f{i:03}.dat");
        assert_eq!(std::fs::read_to_string(m.path(&rel)).unwrap(), data(i));
        assert_eq!(m.xattr(&rel, "state").as_deref(), Ok("pending"), "{rel}");
        assert_eq!(
            m.xattr(&rel, "md5"),
            Ok(cairn_catalog::md5::md5_hex(data(i).as_bytes())),
            "{rel}"
        );
    }
    // Read-only meanwhile.
    assert!(
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.path("2025/06/02/f005.dat"))
            .is_err()
    );
    // cairnd is killed during the cut and started again, still cut.
    far.kill9();
    far.start();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        archive.on("field").0,
        1,
        "nothing registered through a cut link"
    );

    sites.link.restore();
    let back = Instant::now();
    let md5 = |b: &[u8]| cairn_catalog::md5::md5_hex(b);
    wait_until(
        Duration::from_secs(30),
        "every waiting file registered",
        || archive.on("field").0 == n as u64 + 1,
    );
    let took = back.elapsed();
    eprintln!("{n} files registered {took:?} after the link came back");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let mut cat = archive.catalog();
    for i in 1..n {
        let f = cat
            .read(|tx| tx.file(&format!("2025/06/02/f{i:03}.dat")))
            .unwrap();
        assert_eq!(f.md5, md5(data(i).as_bytes()), "f{i:03}");
    }
    // f000: the archive's stays at its path; this site's is kept aside, and listed.
    let f0 = cat.read(|tx| tx.file("2025/06/02/f000.dat")).unwrap();
    assert_eq!(f0.md5, md5(b"the archive's own f000\n"));
    let conflicts = cat.read(|tx| tx.conflicts(None)).unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let (kept, name, other) = &conflicts[0];
    assert_eq!(kept.md5, md5(data(0).as_bytes()));
    assert_eq!(name.host, "far");
    assert_eq!(other.as_ref().map(|o| o.md5.clone()), Some(f0.md5.clone()));
    assert_eq!(
        std::fs::read_to_string(field.join(&kept.path)).unwrap(),
        data(0)
    );
    assert!(!field.join("2025/06/02/f000.dat").exists());
    let listed = far.cairn(&["file", "conflicts"]);
    assert!(listed.contains(&kept.path), "{listed}");
    // The mount shows the catalog's files now: the archive's f000 at its path, this site's
    // kept aside, and the rest archived.
    wait_until(
        Duration::from_secs(10),
        "the mount shows what the catalog has",
        || {
            std::fs::read_to_string(m.path("2025/06/02/f000.dat"))
                .ok()
                .as_deref()
                == Some("the archive's own f000\n")
                && m.xattr("2025/06/02/f005.dat", "state")
                    .is_ok_and(|s| s != "pending")
                && std::fs::read_to_string(m.path(&kept.path)).ok() == Some(data(0))
        },
    );
    drop(m);
    // And the auto-sync rule copies them to the archive: the file from before, every file
    // written during the cut, this site's f000 kept aside (the archive's own is there).
    wait_until(Duration::from_secs(60), "the vault has them all", || {
        archive.on("vault").0 == n as u64 + 2
    });
    // Nothing is left waiting (what else registered meanwhile, the replayer finds there).
    wait_until(Duration::from_secs(10), "the waiting list empty", || {
        cairn_node::waiting::WaitingList::peek(&field)
            .ok()
            .flatten()
            .map(|s| s.files)
            == Some(0)
    });
    far.stop();
    near.stop();
}

/// Issue "a site keeps archiving while its link to the catalog is cut": a cut during a reply.
/// The mount's registration of a file commits at the primary, and the link goes down as the
/// answer comes back: the mount cannot tell, keeps the file pending, and registers it again
/// when the link is back — which finds it there. One file, once, no conflict.
#[test]
fn a_registration_whose_answer_the_cut_lost_is_not_made_twice() {
    let test = "a_registration_whose_answer_the_cut_lost_is_not_made_twice";
    if !can_run_servers(test) || !cairn_tests::fuse_available() {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let (_far, _root, m) = far_mount(&archive, "far");
    let data = b"registered, but the answer was lost\n";
    let md5 = cairn_catalog::md5::md5_hex(data);
    // The one transaction that carries this md5: its COMMIT's answer is lost with the link.
    sites.link.lose_reply_after(md5.as_bytes(), b"COMMIT");
    std::fs::create_dir_all(m.path("lost")).unwrap();
    std::fs::write(m.path("lost/f.dat"), data).unwrap();
    let mut cat = Catalog::open(&archive.url).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the registration committed at the primary",
        || {
            cat.read(|tx| tx.file_by_path("lost/f.dat"))
                .ok()
                .flatten()
                .is_some()
        },
    );
    wait_until(Duration::from_secs(10), "the answer lost", || {
        sites.link.reply_lost()
    });
    // The mount could not tell: the file waits, and stays readable.
    wait_until(Duration::from_secs(10), "the file pending", || {
        m.xattr("lost/f.dat", "state").as_deref() == Ok("pending")
    });
    assert_eq!(std::fs::read(m.path("lost/f.dat")).unwrap(), data);

    sites.link.restore();
    wait_until(Duration::from_secs(20), "the file archived here", || {
        m.xattr("lost/f.dat", "state")
            .is_ok_and(|s| s != "pending" && s != "settling" && s != "importing")
    });
    let files: Vec<_> = cat
        .read(|tx| tx.files(&Default::default()))
        .unwrap()
        .into_iter()
        .filter(|f| f.path.starts_with("lost/"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].md5, md5);
    assert!(cat.read(|tx| tx.conflicts(None)).unwrap().is_empty());
    assert_eq!(m.xattr("lost/f.dat", "md5"), Ok(md5));
}

/// The issue's check for "a site keeps archiving while its link to the catalog is cut": the
/// link is cut for a minute while `cp -r` of 1,000 files goes into the site's mount and 1,000
/// are dropped on an auto-import node, with cairnd killed (-9) and restarted during the cut in
/// one round and cairnfs in the other. The writers see no error; during the cut every file is
/// listed and readable on the site's mount; within 10 s of the link's return all 2,000 are in
/// the catalog once each, with the md5 of their bytes; the auto-sync rules then copy them to
/// the archive's group.
#[test]
fn a_site_cut_off_for_a_minute_loses_nothing_and_repeats_nothing() {
    let test = "a_site_cut_off_for_a_minute_loses_nothing_and_repeats_nothing";
    if !can_run_servers(test) || !cairn_tests::fuse_available() {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let mut far = archive.far_host("far", "");
    let mut near = archive.host("near");
    let field = far.node("field", &[]);
    let instrument = far.node("drop", &["--auto-import"]);
    near.node("vault", &["--archive"]);
    std::fs::write(
        &far.config,
        std::fs::read_to_string(&far.config).unwrap()
            + "[fs]\nttl = \"1s\"\nwrite_node = \"field\"\nsettle = \"100ms\"\n",
    )
    .unwrap();
    far.start();
    near.start();
    wait_until(
        Duration::from_secs(60),
        "nodes initialised and watched",
        || {
            cairn_node::NodeRoot::new(&field).marker().exists()
                && far.log().contains("for auto import")
        },
    );
    near.cairn(&["group", "autosync", "vault", "field"]);
    near.cairn(&["group", "autosync", "vault", "drop"]);
    let mut m = far.mount(Some("field"));
    let md5 = |b: &[u8]| cairn_catalog::md5::md5_hex(b);
    // A file archived before the cuts, which the site's cairnd serves during them.
    std::fs::write(m.path("before.dat"), b"archived before the cut\n").unwrap();
    assert_eq!(m.xattr("before.dat", "md5").map(|s| s.len()), Ok(32));
    let auth = format!("Bearer {}", archive.token());
    let address = far.address.clone();
    let served = || {
        cairn_tests::http_get(
            &address,
            "/v1/copy/field/before.dat",
            &[("Authorization", auth.as_str())],
        )
    };
    wait_until(Duration::from_secs(30), "the file served", || {
        served().0 == 200
    });
    let n = 1000;
    let src = archive.dir.path().join("src");
    let mut total = 0u64;
    for (round, killed) in [(1, "cairnd"), (2, "cairnfs")] {
        // Two trees of n files each, the same bytes nowhere else.
        let data = |tree: &str, i: usize| format!("{round} {tree} {i}\n").repeat(1 + i % 9);
        let mut want = Vec::new();
        for (tree, top) in [
            ("mount", format!("m{round}")),
            ("node", format!("a{round}")),
        ] {
            for i in 0..n {
                let rel = format!("{top}/{:02}/f{i:04}.dat", i / 100);
                write_file(&src, &rel, data(tree, i));
                want.push((rel, data(tree, i)));
            }
        }
        sites.link.cut();
        let cut = Instant::now();
        let cp = |from: std::path::PathBuf, to: std::path::PathBuf| {
            std::thread::spawn(move || {
                std::process::Command::new("cp")
                    .arg("-r")
                    .arg(from)
                    .arg(to)
                    .output()
                    .unwrap()
            })
        };
        let into_mount = cp(src.join(format!("m{round}")), m.path(&format!("m{round}")));
        let onto_node = cp(
            src.join(format!("a{round}")),
            instrument.join(format!("a{round}")),
        );
        for (what, out) in [("mount", into_mount), ("node", onto_node)] {
            let out = out.join().unwrap();
            assert!(
                out.status.success(),
                "round {round}: cp -r onto the {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // One of the two is killed during the cut and started again.
        std::thread::sleep(Duration::from_secs(2));
        if killed == "cairnd" {
            far.kill9();
            far.start();
        } else {
            m.kill9();
            m = far.mount(Some("field"));
        }
        // Every file listed and readable on the site's mount during the cut.
        let t = Instant::now();
        loop {
            let missing: Vec<&String> = want
                .iter()
                .filter(|(rel, data)| {
                    std::fs::read_to_string(m.path(rel)).ok().as_deref() != Some(data.as_str())
                })
                .map(|(rel, _)| rel)
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(50),
                "round {round}: {} files not listed and readable on the mount during the cut, \
                 e.g. {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                far.log()
                    .lines()
                    .rev()
                    .filter(|l| !l.contains("Imported") && !l.contains("added to DB"))
                    .take(25)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        // cairnd serves its copies to the hosts that can reach it.
        let (status, _, body) = served();
        assert_eq!(
            (status, body.as_slice()),
            (200, b"archived before the cut\n".as_slice()),
            "round {round}: serving during the cut"
        );
        if let Some(left) = Duration::from_secs(60).checked_sub(cut.elapsed()) {
            std::thread::sleep(left);
        }
        sites.link.restore();
        let back = Instant::now();
        let mut cat = Catalog::open(&archive.url).unwrap();
        let registered = |cat: &mut Catalog| -> usize {
            let files = cat.read(|tx| tx.files(&Default::default())).unwrap();
            let by_path: std::collections::HashMap<&str, &str> = files
                .iter()
                .map(|f| (f.path.as_str(), f.md5.as_str()))
                .collect();
            want.iter()
                .filter(|(rel, data)| {
                    by_path.get(rel.as_str()) == Some(&md5(data.as_bytes()).as_str())
                })
                .count()
        };
        wait_until(Duration::from_secs(30), "all registered", || {
            registered(&mut cat) == want.len()
        });
        let took = back.elapsed();
        eprintln!(
            "round {round} ({killed} killed): {} files registered {took:?} after the link came back",
            want.len()
        );
        assert!(took < Duration::from_secs(10), "round {round}: {took:?}");
        // Each once: as many files as paths written, and no conflict.
        total += want.len() as u64;
        let files = cat.read(|tx| tx.files(&Default::default())).unwrap();
        assert_eq!(files.len() as u64, total + 1, "round {round}");
        assert!(cat.read(|tx| tx.conflicts(None)).unwrap().is_empty());
        // The auto-sync rules copy them to the archive's group.
        wait_until(Duration::from_secs(180), "all copied to the vault", || {
            archive.on("vault").0 == total + 1
        });
    }
    drop(m);
    far.stop();
    near.stop();
}

/// Issue "a site keeps archiving while its link to the catalog is cut": the daemon rides it
/// out and keeps serving its copies to the hosts it can reach. A second host of the cut-off
/// site reads, through its mount, a file whose only copy is on the first host: pulled into its
/// cache from the first host's cairnd, with nothing asked of the primary.
#[test]
fn during_a_cut_a_host_of_the_site_reads_a_file_only_another_host_of_the_site_holds() {
    let test = "during_a_cut_a_host_of_the_site_reads_a_file_only_another_host_of_the_site_holds";
    if !can_run_servers(test) || !cairn_tests::fuse_available() {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let archive = sites.archive();
    let (_far, _root, m) = far_mount(&archive, "far");
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(m.path("held.dat"), &data).unwrap();
    assert_eq!(m.xattr("held.dat", "md5").map(|s| s.len()), Ok(32));
    // The other host of the site: cairnd and a read-only mount, no node of its own.
    let mut other = archive.far_host("other", "");
    other.start();
    let m2 = other.mount(None);
    wait_until(Duration::from_secs(30), "the other mount lists it", || {
        m2.path("held.dat").exists()
    });
    sites.link.cut();
    let t = Instant::now();
    let got = std::fs::read(m2.path("held.dat")).expect("read during the cut");
    assert!(got == data, "the bytes of held.dat");
    eprintln!(
        "read through the other host during the cut in {:?}",
        t.elapsed()
    );
    // From the first host's node, by its cairnd.
    assert!(
        other.log().contains("Cached held.dat from node field"),
        "{}",
        other.log()
    );
    sites.link.restore();
}
