//! Several hosts on one machine, each its own cairnd with its own port, sharing one catalog:
//! pulls over HTTP, seed 004 across three hosts, resume after a dead source, the HTTP
//! server's refusals.

use std::time::Duration;

use cairn_catalog::md5::md5_file;
use cairn_catalog::model::Has;
use cairn_node::NodeRoot;
use cairn_tests::{Archive, big_file, http_get, wait_until, write_file};

const T: Duration = Duration::from_secs(40);

#[test]
fn seed_004_across_three_hosts() {
    let a = Archive::new();
    let mut h1 = a.host("alpenhost1");
    let mut h2 = a.host("alpenhost2");
    let mut h3 = a.host("alpenhost3");
    let r1 = h1.node("demo_storage1", &[]);
    let r2 = h2.node("demo_storage2", &[]);
    h1.start();
    h2.start();
    wait_until(T, "nodes initialised", || {
        NodeRoot::new(&r1).marker().exists() && NodeRoot::new(&r2).marker().exists()
    });
    write_file(
        &r1,
        "2025/02/21/meta.txt",
        "This is the first acquisition in the alpenhorn demo\n",
    );
    write_file(&r1, "2025/02/21/23/1324.dat", "0 1 2 3 4 5\n");
    write_file(&r1, "2025/02/21/23/1330.dat", "0 1 2 3 4 5\n");
    write_file(&r1, "2025/02/21/23/1342.dat", "3 4 5 6 7 8\n");
    write_file(&r1, "2025/02/21/23/1349.dat", "9 10 11 12 13\n");
    h1.cairn(&["node", "scan", "demo_storage1", "--register-new"]);
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage1"), (5, 102));

    // Single sync, pulled by alpenhost2 from alpenhost1 over HTTP.
    h1.cairn(&[
        "file",
        "sync",
        "--from",
        "demo_storage1",
        "--to",
        "demo_storage2",
        "2025/02/21/meta.txt",
    ]);
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage2"), (1, 52));
    assert!(
        h2.log().contains(
            "Pulling file 2025/02/21/meta.txt from node \"demo_storage1\" on alpenhost1 using http"
        ),
        "{}",
        h2.log()
    );
    assert!(
        h1.log()
            .contains("Serving 2025/02/21/meta.txt of demo_storage1"),
        "{}",
        h1.log()
    );

    // Bulk sync: only the four files demo_storage2 lacks.
    let out = h1.cairn(&[
        "node",
        "sync",
        "demo_storage1",
        "demo_storage2",
        "--show-files",
        "--force",
    ]);
    assert!(out.contains("Would sync 4 files (50 B)"), "{out}");
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage2"), (5, 102));

    // Corruption on alpenhost1, found by verify, repaired from alpenhost2.
    std::fs::write(r1.join("2025/02/21/23/1324.dat"), "bad data\n").unwrap();
    h1.cairn(&[
        "node",
        "verify",
        "--all",
        "--acq=2025/02/21",
        "demo_storage1",
        "--force",
    ]);
    a.wait_idle(T);
    wait_until(T, "the corrupt copy found", || {
        a.has("demo_storage1", "2025/02/21/23/1324.dat") == Some(Has::Corrupt)
    });
    assert_eq!(a.on("demo_storage1"), (4, 90));
    let out = h1.cairn(&["node", "sync", "demo_storage2", "demo_storage1", "--force"]);
    assert!(out.contains("Would sync 1 file (12 B)"), "{out}");
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage1"), (5, 102));
    assert_eq!(
        std::fs::read_to_string(r1.join("2025/02/21/23/1324.dat")).unwrap(),
        "0 1 2 3 4 5\n"
    );

    // Clean with the archive rule: refused until two archive copies exist on other nodes.
    h1.cairn(&[
        "file",
        "clean",
        "--now",
        "--node=demo_storage1",
        "2025/02/21/meta.txt",
    ]);
    wait_until(T, "refused with no archive copy", || {
        h1.log().contains("too few archive copies (0 of 2")
    });
    h1.cairn(&["node", "modify", "--archive", "demo_storage2"]);
    wait_until(T, "refused with one archive copy", || {
        h1.log().contains("too few archive copies (1 of 2")
    });
    assert!(r1.join("2025/02/21/meta.txt").exists());
    let r3 = h3.node("demo_storage3", &["--archive"]);
    h3.start();
    h1.cairn(&["node", "sync", "--force", "demo_storage2", "demo_storage3"]);
    wait_until(T, "meta.txt deleted on alpenhost1", || {
        !r1.join("2025/02/21/meta.txt").exists()
    });
    a.wait_idle(T);
    let stats = a.stats();
    assert_eq!(stats["demo_storage1"], (4, 50));
    assert_eq!(stats["demo_storage2"], (5, 102));
    assert_eq!(stats["demo_storage3"], (5, 102));
    h1.cairn(&[
        "node",
        "clean",
        "demo_storage1",
        "--now",
        "--target",
        "demo_storage3",
        "--force",
    ]);
    wait_until(T, "demo_storage1 emptied", || {
        a.on("demo_storage1") == (0, 0)
    });
    assert!(!r1.join("2025").exists(), "empty dirs removed");

    // Auto-actions across hosts: 1 → 2 → 3, and 1 cleaned once the file is on 3.
    h1.cairn(&["group", "autosync", "demo_storage2", "demo_storage1"]);
    // 52 B, as in the seed.
    write_file(
        &r1,
        "2025/02/26/meta.txt",
        "This is the second acquisition in the alpenhorn demo",
    );
    h1.cairn(&["node", "scan", "demo_storage1", "--register-new"]);
    wait_until(T, "the first auto-sync", || {
        a.has("demo_storage2", "2025/02/26/meta.txt") == Some(Has::Yes)
    });
    h1.cairn(&["group", "autosync", "demo_storage3", "demo_storage2"]);
    write_file(&r1, "2025/02/26/01/0529.dat", "14 15 16 17 18\n");
    h1.cairn(&["node", "scan", "demo_storage1", "--register-new"]);
    wait_until(T, "the chain to demo_storage3", || {
        a.has("demo_storage3", "2025/02/26/01/0529.dat") == Some(Has::Yes)
    });
    a.wait_idle(T);
    let stats = a.stats();
    assert_eq!(stats["demo_storage1"], (2, 67));
    assert_eq!(stats["demo_storage2"], (7, 169));
    assert_eq!(
        stats["demo_storage3"],
        (6, 117),
        "auto-actions are not retroactive"
    );
    h1.cairn(&["node", "sync", "demo_storage2", "demo_storage3", "--force"]);
    a.wait_idle(T);
    assert_eq!(a.stats()["demo_storage3"], (7, 169));
    h1.cairn(&[
        "node",
        "clean",
        "--now",
        "demo_storage1",
        "--target=demo_storage3",
        "--force",
    ]);
    h1.cairn(&["node", "autoclean", "demo_storage1", "demo_storage3"]);
    write_file(&r1, "2025/02/26/02/0011.dat", "14 15 16 17 18\n");
    h1.cairn(&["node", "scan", "demo_storage1", "--register-new"]);
    wait_until(T, "the new file on 3 and gone from 1", || {
        a.has("demo_storage3", "2025/02/26/02/0011.dat") == Some(Has::Yes)
            && a.has("demo_storage1", "2025/02/26/02/0011.dat") == Some(Has::No)
    });
    a.wait_idle(T);
    let stats = a.stats();
    assert_eq!(stats["demo_storage1"], (0, 0));
    assert_eq!(stats["demo_storage2"], (8, 184));
    assert_eq!(stats["demo_storage3"], (8, 184));
    assert!(!r1.join("2025").exists());
    let (_, md5) = md5_file(&r3.join("2025/02/26/02/0011.dat")).unwrap();
    assert_eq!(md5, cairn_catalog::md5::md5_hex(b"14 15 16 17 18\n"));
    // `cairn status` over the three hosts: all up, the same counts as `node stats`.
    let status: serde_json::Value = serde_json::from_str(&h1.cairn(&["status", "--json"])).unwrap();
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().all(|h| h["cairnd_up"] == true), "{hosts:?}");
    let files = |n: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .map(|x| {
                (
                    x["stats"]["files"].as_u64().unwrap(),
                    x["stats"]["bytes"].as_u64().unwrap(),
                )
            })
    };
    assert_eq!(files("demo_storage1"), Some((0, 0)));
    assert_eq!(files("demo_storage2"), Some((8, 184)));
    assert_eq!(files("demo_storage3"), Some((8, 184)));
    assert_eq!(
        status["copy_requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == "pending")
            .count(),
        0
    );
    for h in [&mut h1, &mut h2, &mut h3] {
        assert_eq!(h.stop().code(), Some(0));
    }
}

#[test]
fn a_corrupt_source_on_another_host_is_marked_suspect_and_another_host_serves() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    let mut h3 = a.host("h3");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h3.node("n3", &[]);
    for h in [&mut h1, &mut h2, &mut h3] {
        h.start();
    }
    write_file(&r1, "2025/01/01/a.dat", "the right bytes\n");
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h1.cairn(&["node", "sync", "n1", "n3", "--force"]);
    a.wait_idle(T);
    assert_eq!(a.has("n3", "2025/01/01/a.dat"), Some(Has::Yes));
    // n1's copy rots; the catalog still says it is healthy.
    std::fs::write(r1.join("2025/01/01/a.dat"), "the wrong bytes\n").unwrap();
    h1.cairn(&[
        "file",
        "sync",
        "--from",
        "n1",
        "--to",
        "n2",
        "2025/01/01/a.dat",
    ]);
    a.wait_idle(T);
    assert_eq!(a.has("n1", "2025/01/01/a.dat"), Some(Has::Suspect));
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), Some(Has::Yes));
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/01/01/a.dat")).unwrap(),
        "the right bytes\n"
    );
    assert!(h2.log().contains("gave wrong bytes"), "{}", h2.log());
    assert!(
        h2.log().contains("from node \"n3\" on h3 using http"),
        "{}",
        h2.log()
    );
    let (status, _, body) = http_get(&h2.address, "/metrics", &[]);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    assert!(
        metrics.contains("cairn_md5_mismatches_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_transfers_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn cancelling_a_request_stops_its_running_pull() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    // The receiver pulls slowly, so the pull is still running when it is cancelled.
    h2.limit_pulls("4MiB");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    big_file(&r1.join("2025/01/01/big.dat"), 64);
    h1.start();
    h2.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(Duration::from_secs(60));
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    let partial = || cairn_tests::partial_bytes(&r2);
    wait_until(T, "a pull under way", || partial() > 4 << 20);
    let id = a
        .catalog()
        .read(|tx| tx.copy_requests(&Default::default()))
        .unwrap()
        .into_iter()
        .next()
        .expect("the request")
        .id;
    let asked = std::time::Instant::now();
    h2.cairn(&["request", "cancel", &id.to_string()]);
    wait_until(Duration::from_secs(10), "the pull to stop", || {
        h2.log().contains("was cancelled")
    });
    // Stopped well before the 16 s the whole file takes at this rate, and tidied.
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(partial(), 0, "the partial pull is removed");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.has("n2", "2025/01/01/big.dat"), None, "nothing recorded");
    assert!(!r2.join("2025/01/01/big.dat").exists());
    let state = a.catalog().read(|tx| tx.copy_request(id)).unwrap().state;
    assert_eq!(state, cairn_catalog::model::RequestState::Cancelled);
}

#[test]
fn killing_the_source_mid_transfer_resumes_with_range_when_it_is_back() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    // The receiver pulls slowly (so the transfer can be cut) and retries after 1 s.
    let mut h2 = a.host_with("h2", "retry_delay = \"1s\"");
    h2.limit_pulls("64MiB");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    big_file(&r1.join("2025/01/01/big.dat"), 256);
    let (size, md5) = md5_file(&r1.join("2025/01/01/big.dat")).unwrap();
    h1.start();
    h2.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(Duration::from_secs(60));
    h1.cairn(&["node", "sync", "n1", "n2", "--force"]);
    let partial = || cairn_tests::partial_bytes(&r2);
    wait_until(T, "a partial pull", || partial() > 32 << 20);
    h1.kill9();
    let target = r2.join("2025/01/01/big.dat");
    wait_until(T, "the receiver to give up this attempt", || {
        h2.log().contains("attempt 1 failed")
    });
    assert!(!target.exists(), "nothing under the archive name");
    assert!(partial() > 0, "the partial pull is kept for resuming");
    h1.start();
    a.wait_idle(Duration::from_secs(120));
    assert_eq!(
        a.has("n2", "2025/01/01/big.dat"),
        Some(Has::Yes),
        "{}",
        h2.log()
    );
    assert_eq!(md5_file(&target).unwrap(), (size, md5));
    assert!(
        h2.log()
            .contains("Resuming pull of 2025/01/01/big.dat from h1 at byte"),
        "{}",
        h2.log()
    );
    assert!(h1.log().contains("(resume)"), "{}", h1.log());
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&r2).tmp()).unwrap().count(),
        0
    );
}

#[test]
fn the_http_server_refuses_what_it_must_not_serve() {
    use cairn_catalog::catalog::NewFile;
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let r1 = h1.node("n1", &[]);
    h1.start();
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    write_file(&r1, "2025/01/01/ok.dat", "served\n");
    write_file(&r1, "2025/01/01/unregistered.dat", "secret\n");
    h1.cairn(&[
        "file",
        "import",
        "--register-new",
        "2025/01/01/ok.dat",
        "n1",
    ]);
    a.wait_idle(T);
    // Entries that the catalog knows but that lead out of the root.
    let outside = a.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), "root:x:0:0\n").unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), r1.join("2025/01/01/link.dat")).unwrap();
    std::os::unix::fs::symlink(&outside, r1.join("2025/linkdir")).unwrap();
    let mut cat = a.catalog();
    cat.write(|tx| {
        let n = tx.node("n1")?;
        for p in ["2025/01/01/link.dat", "2025/linkdir/passwd"] {
            let md5 = cairn_catalog::md5::md5_hex(b"root:x:0:0\n");
            let (f, _) = tx.register_file(
                &NewFile {
                    path: p.to_owned(),
                    acq: "x".into(),
                    size: 11,
                    md5: md5.clone(),
                    mtime: 0,
                },
                1,
            )?;
            tx.record_copy(f.id, n.id, Has::Yes, None, 1)?;
        }
        Ok(())
    })
    .unwrap();
    let token = a.token();
    let auth = format!("Bearer {token}");
    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http_get(&h1.address, path, &headers)
    };
    // The good case, whole and resumed.
    let (status, _, body) = get("/v1/copy/n1/2025/01/01/ok.dat", Some(&auth));
    assert_eq!((status, body.as_slice()), (200, b"served\n".as_slice()));
    let (status, headers, body) = http_get(
        &h1.address,
        "/v1/copy/n1/2025/01/01/ok.dat",
        &[("Authorization", &auth), ("Range", "bytes=3-")],
    );
    assert_eq!((status, body.as_slice()), (206, b"ved\n".as_slice()));
    assert!(headers.contains(&("content-range".into(), "bytes 3-6/7".into())));
    // Refusals: nothing served for any of them.
    for (path, auth, want) in [
        ("/v1/copy/n1/2025/01/01/ok.dat", None, 401),
        ("/v1/copy/n1/2025/01/01/ok.dat", Some("Bearer wrong"), 401),
        ("/v1/copy/n1/../../../etc/passwd", Some(auth.as_str()), 400),
        (
            "/v1/copy/n1/2025/%2e%2e/%2e%2e/.cairn/node.toml",
            Some(auth.as_str()),
            400,
        ),
        ("/v1/copy/n1/.cairn/node.toml", Some(auth.as_str()), 404),
        (
            "/v1/copy/n1/2025/01/01/unregistered.dat",
            Some(auth.as_str()),
            404,
        ),
        ("/v1/copy/n1/2025/01/01/link.dat", Some(auth.as_str()), 404),
        ("/v1/copy/n1/2025/linkdir/passwd", Some(auth.as_str()), 403),
        ("/v1/copy/nope/2025/01/01/ok.dat", Some(auth.as_str()), 404),
        ("/etc/passwd", Some(auth.as_str()), 404),
    ] {
        let (status, _, body) = get(path, auth);
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("root:x") && !body.contains("secret") && !body.contains("catalog_id"),
            "{path} leaked: {body}"
        );
    }
    let log = h1.log();
    assert!(log.contains("wrong bearer token"), "{log}");
    assert!(log.contains("missing bearer token"), "{log}");
    assert!(
        log.contains("Refused /v1/copy/n1/2025/01/01/unregistered.dat to 127.0.0.1"),
        "{log}"
    );
    let (status, _, body) = get("/healthz", None);
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
    let (_, _, body) = get("/metrics", None);
    let metrics = String::from_utf8(body).unwrap();
    assert!(metrics.contains("cairn_http_refused_total 10"), "{metrics}");
    assert!(
        metrics.contains("# TYPE cairn_transfer_bytes_sent_total counter"),
        "{metrics}"
    );
}

#[test]
fn pulls_go_over_tls_when_configured_and_plain_http_is_refused() {
    let a = Archive::new();
    let pki = a.dir.path().join("pki");
    if cairn_tests::pki::Pki::or_skip(
        &pki,
        "IP:127.0.0.1",
        "pulls_go_over_tls_when_configured_and_plain_http_is_refused",
    )
    .is_none()
    {
        return;
    }
    let tls = format!(
        "[transfer]\ntls_cert = \"{p}/host.pem\"\ntls_key = \"{p}/host.key\"\ntls_ca = \"{p}/ca.pem\"\n",
        p = pki.display()
    );
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    for h in [&h1, &h2] {
        let text = std::fs::read_to_string(&h.config)
            .unwrap()
            .replace("[transfer]\n", &tls);
        std::fs::write(&h.config, text).unwrap();
    }
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h1.start();
    h2.start();
    write_file(&r1, "2025/01/01/a.dat", "over tls\n");
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(T);
    assert_eq!(
        a.has("n2", "2025/01/01/a.dat"),
        Some(Has::Yes),
        "{}",
        h2.log()
    );
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/01/01/a.dat")).unwrap(),
        "over tls\n"
    );
    assert!(h1.log().contains("Serving over TLS"), "{}", h1.log());
    // A plain-HTTP request to the TLS server gets no copy.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&h1.address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let token = a.token();
    let req = format!(
        "GET /v1/copy/n1/2025/01/01/a.dat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("over tls"),
        "served in clear"
    );
    wait_until(T, "the refusal logged", || {
        h1.log().contains("TLS handshake failed")
    });
}

#[test]
fn pulls_by_rsync_are_checked_against_the_md5_before_they_are_installed() {
    let a = Archive::new();
    // A remote shell that runs the command on this machine: the real rsync protocol, without
    // an ssh server in the test.
    let rsh = a.dir.path().join("local-rsh");
    std::fs::write(
        &rsh,
        "#!/bin/sh\n# rsh [-l USER] HOST COMMAND...: run COMMAND here.\n\
         [ \"$1\" = -l ] && shift 2\nshift\nexec \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755)).unwrap();
    if std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "rsync is needed for this test in CI"
        );
        eprintln!("SKIPPED: rsync is not installed");
        return;
    }
    let mut h1 = a.host("h1");
    let mut h2 = a.host_with("h2", "max_attempts = 1");
    let text = std::fs::read_to_string(&h2.config).unwrap().replace(
        "[transfer]\n",
        &format!(
            "[transfer]\nmethod = \"rsync\"\nrsync_rsh = \"{}\"\n",
            rsh.display()
        ),
    );
    std::fs::write(&h2.config, text).unwrap();
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h1.cairn(&[
        "node",
        "modify",
        "n1",
        "--username",
        "root",
        "--address",
        "localhost",
    ]);
    h1.start();
    h2.start();
    write_file(&r1, "2025/01/01/good.dat", "good bytes\n");
    write_file(&r1, "2025/01/01/rotten.dat", "fine at first\n");
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    std::fs::write(r1.join("2025/01/01/rotten.dat"), "rotten later\n").unwrap();
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(T);
    assert_eq!(
        a.has("n2", "2025/01/01/good.dat"),
        Some(Has::Yes),
        "{}",
        h2.log()
    );
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/01/01/good.dat")).unwrap(),
        "good bytes\n"
    );
    assert!(h2.log().contains("using rsync"), "{}", h2.log());
    // The rotten source gave bytes that fail the md5: not installed, the source suspect.
    assert!(!r2.join("2025/01/01/rotten.dat").exists());
    assert_eq!(a.has("n1", "2025/01/01/rotten.dat"), Some(Has::Suspect));
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&r2).tmp()).unwrap().count(),
        0
    );
}
