//! Several hosts on one machine, each its own cairnd with its own port, sharing one catalog:
//! pulls over HTTP, seed 004 across three hosts, resume after a dead source, the HTTP
//! server's refusals, mutual TLS and the peers it refuses, small files pulled in batches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_catalog::md5::md5_file;
use cairn_catalog::model::{Has, RequestId};
use cairn_node::NodeRoot;
use cairn_node::root::IncomingBatch;
use cairn_tests::{Archive, TestHost, big_file, http_get, wait_until, write_file};

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
    // The copies are released in the catalog first, then removed with their emptied
    // directories.
    wait_until(T, "empty dirs removed", || !r1.join("2025").exists());

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
    // The releases `clean --now` asked for before the new file came are not among what
    // `wait_idle` waits for (copies and imports): demo_storage1 is waited for to empty.
    wait_until(T, "demo_storage1 emptied again", || {
        a.on("demo_storage1") == (0, 0)
    });
    a.wait_idle(T);
    let stats = a.stats();
    assert_eq!(stats["demo_storage1"], (0, 0));
    assert_eq!(stats["demo_storage2"], (8, 184));
    assert_eq!(stats["demo_storage3"], (8, 184));
    wait_until(T, "empty dirs removed again", || !r1.join("2025").exists());
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
    assert_eq!(temp_entries(&r2), 0);
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
                    own: Default::default(),
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

/// Runs openssl(1) in `dir`; `None` if it fails.
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

/// A certificate authority `CA.pem` (key `CA.key`) in `dir`, and certificates `NAME.pem`
/// (keys `NAME.key`, mode 0600) signed by it for 127.0.0.1, good for a server and a client,
/// made with openssl(1).
fn test_pki(dir: &Path, ca: &str, names: &[&str]) -> Option<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        dir.join("host.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .ok()?;
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    let subject = format!("/CN={ca}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &ca_key, "-out", &ca_pem,
            "-days", "2", "-subj", &subject,
        ],
    )?;
    for name in names {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=127.0.0.1",
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "host.ext",
            ],
        )?;
        std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).ok()?;
    }
    Some(())
}

/// The archive's PKI (`ca`, and `host` for both hosts) and a stranger's (`stranger-ca`
/// and `stranger`), or `None` where openssl(1) is missing outside CI.
fn archive_and_stranger_pki(dir: &Path) -> Option<()> {
    std::fs::create_dir_all(dir).unwrap();
    let made =
        test_pki(dir, "ca", &["host"]).and_then(|()| test_pki(dir, "stranger-ca", &["stranger"]));
    if made.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl(1) is needed for the TLS tests in CI"
        );
        eprintln!("SKIPPED: openssl(1) could not make a test certificate authority");
    }
    made
}

/// Two hosts of the archive over mutual TLS, each presenting `host.pem`, with a file on
/// h1's node n1.
fn tls_hosts(a: &Archive, pki: &Path) -> (TestHost, TestHost, PathBuf, PathBuf) {
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
    (h1, h2, r1, r2)
}

#[test]
fn pulls_go_over_mutual_tls_when_configured_and_plain_http_is_refused() {
    let a = Archive::new();
    let pki = a.dir.path().join("pki");
    if archive_and_stranger_pki(&pki).is_none() {
        return;
    }
    let (h1, h2, _r1, r2) = tls_hosts(&a, &pki);
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
    assert!(
        h1.log().contains("Serving over mutual TLS with"),
        "{}",
        h1.log()
    );
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
fn small_files_go_in_batches_over_mutual_tls_too() {
    let a = Archive::new();
    let pki = a.dir.path().join("pki");
    if archive_and_stranger_pki(&pki).is_none() {
        return;
    }
    let (h1, h2, r1, r2) = tls_hosts(&a, &pki);
    let paths = small_files(&r1, "2025/01/05", 60);
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(Duration::from_secs(60));
    assert_all_pulled(&a, &h2, &r1, &r2, &paths);
    let (log1, log2) = (h1.log(), h2.log());
    assert!(log1.contains("Serving over mutual TLS with"), "{log1}");
    assert!(log2.contains("Pulling a batch of"), "{log2}");
    assert!(log1.contains("Served a batch of"), "{log1}");
}

/// `curl` over https to `address`, trusting the archive's authority, with the client
/// certificate `cert` (a name in `pki`) and the token, if given: its exit status and output.
fn curl(
    pki: &Path,
    address: &str,
    path: &str,
    cert: Option<&str>,
    token: Option<&str>,
) -> (bool, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.join("ca.pem"));
    if let Some(name) = cert {
        cmd.arg("--cert")
            .arg(pki.join(format!("{name}.pem")))
            .arg("--key")
            .arg(pki.join(format!("{name}.key")));
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("https://{address}{path}"))
        .output()
        .expect("curl runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn over_mutual_tls_a_peer_without_a_certificate_from_the_archive_ca_is_refused_token_or_not() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is needed for this test in CI"
        );
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let a = Archive::new();
    let pki = a.dir.path().join("pki");
    if archive_and_stranger_pki(&pki).is_none() {
        return;
    }
    let (h1, _h2, _r1, _r2) = tls_hosts(&a, &pki);
    let token = a.token();
    let copy = "/v1/copy/n1/2025/01/01/a.dat";
    for (cert, token) in [
        (None, Some(token.as_str())),
        (None, None),
        (Some("stranger"), Some(token.as_str())),
        (Some("stranger"), None),
    ] {
        for path in [copy, "/v1/batch?copies=1", "/healthz", "/metrics"] {
            let (ok, out) = curl(&pki, &h1.address, path, cert, token);
            assert!(
                !ok && !out.contains("over tls") && !out.contains("cairn_"),
                "{path} with certificate {cert:?} and token {}: {out}",
                token.is_some()
            );
        }
    }
    // A host of the archive needs its certificate, and no token.
    let (ok, out) = curl(&pki, &h1.address, copy, Some("host"), None);
    assert!(ok && out == "over tls\n", "{out}");
    let (ok, metrics) = curl(&pki, &h1.address, "/metrics", Some("host"), None);
    assert!(ok, "{metrics}");
    assert!(
        metrics.contains("cairn_http_refused_total 16"),
        "each refused handshake is counted: {metrics}"
    );
    assert!(h1.log().contains("TLS handshake failed"), "{}", h1.log());
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
    assert_eq!(temp_entries(&r2), 0);
}

/// Regression: a pull that failed for space kept its partial file, which then counted as used,
/// so the same request never fitted again (10 attempts, then `request retry` failed at once).
#[test]
fn a_pull_that_failed_for_space_completes_at_its_next_attempt_once_space_is_freed() {
    if !cairn_tests::can_mount_loop_disks() {
        return;
    }
    let a = Archive::new();
    let mut h1 = a.host("h1");
    // The next attempt comes 3 s after a failure: time to free the space and measure it.
    let mut h2 = a.host_with("h2", "retry_delay = \"3s\"");
    // Slow enough that the disk fills (below) while the pull is still running.
    h2.limit_pulls("8MiB");
    let mut disk = cairn_tests::LoopDisk::new(&h2.dir, "n2", 64).expect("mkfs.ext4");
    disk.mount(&h2.root("n2"));
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    big_file(&r1.join("2025/01/01/big.dat"), 40);
    h1.start();
    h2.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h1.cairn(&["node", "sync", "n1", "n2", "--force"]);
    let partial = || cairn_tests::partial_bytes(&r2);
    wait_until(T, "half of the pull", || partial() >= 24 << 20);
    // Something else fills the disk meanwhile.
    let ballast = r2.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![7u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    wait_until(T, "the attempt to fail for space", || {
        h2.log().contains("attempt 1 failed")
    });
    assert!(h2.log().contains("No space left on device"), "{}", h2.log());
    let kept = partial();
    assert!(kept >= 24 << 20, "the partial pull is kept: {kept} B");
    std::fs::remove_file(&ballast).unwrap();
    a.wait_idle(T);
    assert_eq!(
        a.has("n2", "2025/01/01/big.dat"),
        Some(Has::Yes),
        "{}",
        h2.log()
    );
    assert!(
        !h2.log().contains("attempt 2 failed"),
        "the next attempt fits: {}",
        h2.log()
    );
    assert!(
        h2.log()
            .contains("Resuming pull of 2025/01/01/big.dat from h1 at byte"),
        "{}",
        h2.log()
    );
    assert_eq!(
        md5_file(&r2.join("2025/01/01/big.dat")).unwrap(),
        md5_file(&r1.join("2025/01/01/big.dat")).unwrap()
    );
    h2.stop();
    disk.umount();
}

/// The files of `root` under `dir` named `NNNN.dat`, `n` of them, each its own bytes: 4 KiB
/// most, and sizes at the edges of a batch every 50 (empty, one byte short of and at the
/// size a server gathers small files to, the largest a batch takes).
fn small_files(root: &Path, dir: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let path = format!("{dir}/{i:04}.dat");
            let size = match i % 50 {
                1 => 0,
                2 => (64 << 10) - 1,
                3 => 64 << 10,
                4 if i < 50 => 1 << 20,
                _ => 4096,
            };
            let body: Vec<u8> = (0..size).map(|b| ((b * 7 + i * 13) % 251) as u8).collect();
            write_file(root, &path, body);
            path
        })
        .collect()
}

/// The entries in `.cairn/tmp/` of the node root `root`.
fn temp_entries(root: &Path) -> usize {
    std::fs::read_dir(NodeRoot::new(root).tmp())
        .unwrap()
        .count()
}

/// After a cut: under its archive name on n2 (root `to_root`), each of `paths` is whole (the
/// bytes it has on n1, root `from_root`) or not there at all, and a recorded one is there.
/// Returns how many are whole. The catalog is read first: the files that arrived whole may
/// be being installed and recorded right now, and a file gets its name before its record.
fn whole_or_absent(a: &Archive, from_root: &Path, to_root: &Path, paths: &[String]) -> usize {
    let mut whole = 0;
    for p in paths {
        let want = md5_file(&from_root.join(p)).unwrap();
        let recorded = a.has("n2", p) == Some(Has::Yes);
        match md5_file(&to_root.join(p)) {
            Ok(got) => {
                assert_eq!(got, want, "{p}: a partial or wrong file under its name");
                whole += 1;
            }
            Err(_) => assert!(!recorded, "{p} recorded, not there"),
        }
    }
    whole
}

/// Each of `paths` is on h2's node n2 (`to`, root `to_root`), healthy in the catalog and
/// with the bytes it has on n1 (root `from_root`).
fn assert_all_pulled(
    a: &Archive,
    to: &TestHost,
    from_root: &Path,
    to_root: &Path,
    paths: &[String],
) {
    for p in paths {
        assert_eq!(a.has("n2", p), Some(Has::Yes), "{p}: {}", to.log());
        assert_eq!(
            md5_file(&to_root.join(p)).unwrap(),
            md5_file(&from_root.join(p)).unwrap(),
            "{p}"
        );
    }
}

/// Two hosts, `n` small files under `acq` on h1's node n1, registered, and synced to h2's
/// node n2 (`node sync`, waited for): the hosts, both roots and the files' paths.
fn synced_pair(
    a: &Archive,
    acq: &str,
    n: usize,
) -> (TestHost, TestHost, PathBuf, PathBuf, Vec<String>) {
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h1.start();
    h2.start();
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    let paths = small_files(&r1, acq, n);
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(Duration::from_secs(60));
    (h1, h2, r1, r2, paths)
}

#[test]
fn small_files_between_hosts_are_pulled_in_batches_md5_checked_and_all_recorded() {
    let a = Archive::new();
    let (h1, h2, r1, r2, paths) = synced_pair(&a, "2025/01/01", 300);
    assert_all_pulled(&a, &h2, &r1, &r2, &paths);
    let (log1, log2) = (h1.log(), h2.log());
    assert!(log2.contains("Pulling a batch of"), "{log2}");
    assert!(log1.contains("Served a batch of"), "{log1}");
    // Far fewer requests than files: none of them went alone.
    assert!(!log2.contains("Pulling file"), "{log2}");
    assert!(log2.matches("Pulling a batch of").count() < 10, "{log2}");
    assert_eq!(temp_entries(&r2), 0, "no temp file left");
}

/// A batch's file is written unnamed and linked to its archive name; where a corrupt copy
/// holds the name, it is replaced (by way of a name in `.cairn/tmp/`), not refused.
#[test]
fn corrupt_copies_are_replaced_by_a_batch() {
    let a = Archive::new();
    let (_h1, h2, r1, r2, paths) = synced_pair(&a, "2025/01/03", 20);
    assert_all_pulled(&a, &h2, &r1, &r2, &paths);
    let rotten = [&paths[3], &paths[8], &paths[15]];
    for p in rotten {
        std::fs::write(r2.join(p), b"rotten").unwrap();
    }
    h2.cairn(&["node", "verify", "--all", "n2", "--force"]);
    wait_until(T, "the corrupt copies found", || {
        rotten.iter().all(|p| a.has("n2", p) == Some(Has::Corrupt))
    });
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(Duration::from_secs(60));
    let log2 = h2.log();
    assert!(
        log2.contains("Pulling a batch of 3 files from h1"),
        "{log2}"
    );
    assert_all_pulled(&a, &h2, &r1, &r2, &paths);
    assert_eq!(temp_entries(&r2), 0, "no temp file left");
}

#[test]
fn a_corrupt_file_in_a_batch_fails_alone_and_is_fixed_from_another_source() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host_with("h2", "retry_delay = \"1s\"");
    let mut h3 = a.host("h3");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h3.node("n3", &[]);
    for h in [&mut h1, &mut h2, &mut h3] {
        h.start();
    }
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    let paths = small_files(&r1, "2025/01/02", 40);
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h3.cairn(&["node", "sync", "n1", "n3", "--force"]);
    a.wait_idle(T);
    // One of n1's copies rots; the catalog still says it is healthy.
    let bad = &paths[17];
    let want = md5_file(&r1.join(bad)).unwrap();
    std::fs::write(r1.join(bad), vec![0u8; 4096]).unwrap();
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(Duration::from_secs(60));
    let log2 = h2.log();
    assert!(
        log2.contains("Pulling a batch of 40 files from h1"),
        "{log2}"
    );
    assert!(log2.contains(&format!("Pull of {bad} from node \"n1\" gave wrong bytes")));
    assert!(log2.contains("(1 failed)"), "{log2}");
    assert_eq!(a.has("n1", bad), Some(Has::Suspect));
    for p in &paths {
        assert_eq!(a.has("n2", p), Some(Has::Yes), "{p}: {log2}");
    }
    // The rotten one came from n3, with the right bytes.
    assert!(
        log2.contains(&format!("Pulling file {bad} from node \"n3\" on h3")),
        "{log2}"
    );
    assert_eq!(md5_file(&r2.join(bad)).unwrap(), want);
}

/// Issue "small files in bulk": a batch cut mid-stream by a kill -9 of its source leaves no
/// partial file under an archive name (what had arrived whole is installed and recorded, the
/// rest is retried), and completes once the source is back.
#[test]
fn a_batch_cut_by_a_kill_of_its_source_leaves_no_partial_file_and_completes_after_restart() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host_with("h2", "retry_delay = \"1s\"");
    // 60 files of 256 KiB go in one batch (15 MiB), about 15 s at this rate: time to cut it,
    // even on a loaded machine. And more than the sockets between the two hosts hold (up to
    // 10 MiB on loopback): a kill of the source must leave some of it unsent, or the batch
    // would arrive whole from the kernel's buffers after all.
    h2.limit_pulls("1MiB");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h1.start();
    h2.start();
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    let paths: Vec<String> = (0..60)
        .map(|i| {
            let path = format!("2025/01/03/{i:04}.dat");
            let body: Vec<u8> = (0..256 << 10)
                .map(|b| ((b * 7 + i * 13) % 251) as u8)
                .collect();
            write_file(&r1, &path, body);
            path
        })
        .collect();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    // The batch is held in memory until it lands: what has arrived shows in h2's metrics.
    let received = || {
        let (_, _, body) = http_get(&h2.address, "/metrics", &[]);
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("cairn_transfer_bytes_received_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until(T, "the batch under way", || received() >= 4 * (256 << 10));
    h1.kill9();
    let t = std::time::Instant::now();
    while !h2.log().contains("attempt 1 failed") {
        assert!(
            t.elapsed() < T,
            "the receiver did not give up this attempt: {}",
            h2.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log2 = h2.log();
    assert!(
        log2.contains("Pulling a batch of 60 files from h1"),
        "{log2}"
    );
    let whole = whole_or_absent(&a, &r1, &r2, &paths);
    assert!(
        whole < paths.len(),
        "the cut came after the whole batch: {log2}"
    );
    h1.start();
    a.wait_idle(Duration::from_secs(120));
    assert_all_pulled(&a, &h2, &r1, &r2, &paths);
    assert_eq!(temp_entries(&r2), 0, "no temp file left");
}

/// A kill -9 of the receiving cairnd in the middle of a sync in batches: under its archive
/// name a file is whole or not there, nothing is left in `.cairn/tmp/` (a batch's files are
/// unnamed until they are whole and synced), and the sync completes after a restart.
#[test]
fn a_receiver_killed_mid_batch_leaves_no_partial_file_and_completes_after_restart() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    // About 20 MiB in twelve batches, four at a time, at 4 MiB/s: the kill comes as the
    // first ones land, with two rounds of batches to go.
    h2.limit_pulls("4MiB");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    h1.start();
    h2.start();
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    let paths = small_files(&r1, "2025/01/04", 3000);
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    wait_until(T, "a first batch landed", || {
        h2.log().contains("files from h1 complete")
    });
    h2.kill9();
    let whole = whole_or_absent(&a, &r1, &r2, &paths);
    assert!(
        whole < paths.len(),
        "the kill came after the whole sync: {}",
        h2.log()
    );
    assert_eq!(
        temp_entries(&r2),
        0,
        "nothing left in .cairn/tmp by the kill"
    );
    h2.start();
    a.wait_idle(Duration::from_secs(120));
    assert_all_pulled(&a, &h2, &r1, &r2, &paths);
    assert_eq!(temp_entries(&r2), 0, "no temp file left");
}

#[test]
fn a_batch_directory_left_by_a_crash_is_removed_whole_by_tidy() {
    let a = Archive::new();
    let mut h2 = a.host("h2");
    let r2 = h2.node("n2", &[]);
    // What a receiver killed while a batch landed leaves: the batch's directory, with files.
    let left = NodeRoot::new(&r2).incoming_batch(IncomingBatch {
        first: RequestId(777),
    });
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("copy-777.tmp"), b"half").unwrap();
    std::fs::write(left.join("copy-778.tmp"), b"").unwrap();
    h2.start();
    wait_until(T, "the leftover batch removed", || !left.exists());
    assert!(
        h2.log()
            .contains("removed leftover batch directory batch-777"),
        "{}",
        h2.log()
    );
    assert!(
        NodeRoot::new(&r2).tmp().is_dir(),
        "only the batch's directory went"
    );
}

/// A chunked HTTP/1.1 body, decoded.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

#[test]
fn a_batch_needs_the_token_and_serves_only_healthy_copies_inside_their_root() {
    use cairn_catalog::catalog::NewFile;
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let r1 = h1.node("n1", &[]);
    h1.start();
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    write_file(&r1, "2025/01/01/ok.dat", "served\n");
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    // A registered copy whose directory leads out of the root.
    let outside = a.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), "root:x:0:0\n").unwrap();
    std::os::unix::fs::symlink(&outside, r1.join("2025/linkdir")).unwrap();
    let mut cat = a.catalog();
    let (ok, escapes) = cat
        .write(|tx| {
            let n = tx.node("n1")?;
            let f = tx.file_by_path("2025/01/01/ok.dat")?.expect("registered");
            let ok = tx.copy_on(f.id, n.id)?.expect("a copy").id;
            let (f, _) = tx.register_file(
                &NewFile {
                    path: "2025/linkdir/passwd".to_owned(),
                    acq: "x".into(),
                    size: 11,
                    md5: cairn_catalog::md5::md5_hex(b"root:x:0:0\n"),
                    mtime: 0,
                    own: Default::default(),
                },
                1,
            )?;
            let escapes = tx.record_copy(f.id, n.id, Has::Yes, None, 1)?;
            Ok((ok, escapes))
        })
        .unwrap();
    let path = format!("/v1/batch?copies={ok},{escapes},999999,{ok}");
    let auth = format!("Bearer {}", a.token());
    for bad in [None, Some("Bearer wrong")] {
        let headers: Vec<(&str, &str)> = bad.map(|b| ("Authorization", b)).into_iter().collect();
        let (status, _, body) = http_get(&h1.address, &path, &headers);
        assert_eq!(status, 401);
        assert!(!String::from_utf8_lossy(&body).contains("served"));
    }
    for bad in ["/v1/batch", "/v1/batch?copies=", "/v1/batch?copies=1,x"] {
        let (status, _, _) = http_get(&h1.address, bad, &[("Authorization", &auth)]);
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _, raw) = http_get(&h1.address, &path, &[("Authorization", &auth)]);
    assert_eq!(status, 200);
    let body = String::from_utf8(dechunk(&raw)).unwrap();
    let md5 = cairn_catalog::md5::md5_hex(b"served\n");
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 6, "{body}");
    assert_eq!(lines[0], format!("{ok} 7 {md5}\n"));
    assert_eq!(lines[1], "served\n");
    assert!(
        lines[2].starts_with(&format!("{escapes} - ")) && lines[2].contains("outside the root"),
        "{body}"
    );
    assert!(lines[3].starts_with("999999 - "), "{body}");
    assert_eq!(lines[4], format!("{ok} 7 {md5}\n"));
    assert_eq!(lines[5], "served\n");
    assert!(!body.contains("root:x"), "{body}");
}
