//! cairnd on one host, with real processes: the single-host parts of seed 004, crash safety,
//! racing cleans.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_catalog::md5::md5_file;
use cairn_catalog::model::Has;
use cairn_node::NodeRoot;
use cairn_tests::{Archive, big_file, wait_until, write_file};

const T: Duration = Duration::from_secs(30);

#[test]
fn seed_004_single_host() {
    let a = Archive::new();
    let mut h = a.host("alpenhost1");
    let r1 = h.root("demo_storage1");
    let r2 = h.root("demo_storage2");
    let r3 = h.root("demo_storage3");
    h.cairn(&["group", "create", "demo_storage1"]);
    h.cairn(&[
        "node",
        "create",
        "demo_storage1",
        "--group=demo_storage1",
        "--auto-import",
        &format!("--root={}", r1.display()),
        "--host=alpenhost1",
    ]);
    h.start();
    h.cairn(&["node", "activate", "demo_storage1"]);
    h.cairn(&["node", "init", "demo_storage1"]);
    wait_until(T, "node init", || NodeRoot::new(&r1).marker().exists());
    wait_until(T, "auto-import watch", || {
        h.log().contains("for auto import")
    });

    // Auto-import: a plain write, closed → imported; a temp name then mv → imported once.
    write_file(
        &r1,
        "2025/02/21/meta.txt",
        "This is the first acquisition in the alpenhorn demo\n",
    );
    write_file(&r1, "2025/02/21/23/.1324.dat", "0 1 2 3 4 5\n");
    std::fs::rename(
        r1.join("2025/02/21/23/.1324.dat"),
        r1.join("2025/02/21/23/1324.dat"),
    )
    .unwrap();
    wait_until(T, "auto-import of two files", || {
        a.on("demo_storage1") == (2, 64)
    });
    let f = a
        .catalog()
        .read(|tx| tx.file("2025/02/21/meta.txt"))
        .unwrap();
    assert_eq!(f.md5, "4f2a66c1ff5eb90a5013522d53ea2e91");
    assert_eq!(f.acq, "2025/02/21", "acq_depth = 3");

    // Manual import: auto-import off, then import one file and scan for the rest.
    h.cairn(&["node", "modify", "demo_storage1", "--no-auto-import"]);
    wait_until(T, "watch stopped", || {
        h.log().contains("Stopped watching node \"demo_storage1\"")
    });
    write_file(&r1, "2025/02/21/23/1330.dat", "0 1 2 3 4 5\n");
    write_file(&r1, "2025/02/21/23/1342.dat", "3 4 5 6 7 8\n");
    write_file(&r1, "2025/02/21/23/1349.dat", "9 10 11 12 13\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        a.on("demo_storage1"),
        (2, 64),
        "nothing imported without auto-import: {}",
        h.log()
    );
    h.cairn(&[
        "file",
        "import",
        "--register-new",
        "2025/02/21/23/1330.dat",
        "demo_storage1",
    ]);
    h.cairn(&[
        "node",
        "scan",
        "demo_storage1",
        "--register-new",
        "2025/02/21",
    ]);
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage1"), (5, 102));

    // Sync between nodes: one file, then the rest in bulk.
    h.cairn(&[
        "node",
        "create",
        "demo_storage2",
        "--create-group",
        &format!("--root={}", r2.display()),
        "--host=alpenhost1",
        "--init",
        "--activate",
    ]);
    h.cairn(&[
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
    let done = a.cairn(&["request", "list", "--done"]);
    let row: Vec<&str> = done
        .lines()
        .find(|l| l.contains("2025/02/21/meta.txt"))
        .expect("the finished request is listed")
        .split_whitespace()
        .collect();
    assert!(
        row.windows(2).any(|w| w == ["Done", "1"]),
        "state and attempts: {done}"
    );
    assert!(
        row.windows(2).filter(|w| w == &["52", "B"]).count() == 2,
        "size and bytes moved: {done}"
    );
    assert!(
        row.iter().any(|c| c.ends_with('s') && c.contains('.')),
        "duration: {done}"
    );
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/02/21/meta.txt"))
            .unwrap()
            .len(),
        52
    );
    let out = h.cairn(&["node", "sync", "demo_storage1", "demo_storage2", "--force"]);
    assert!(out.contains("Would sync 4 files (50 B)"), "{out}");
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage2"), (5, 102));
    assert!(
        h.log()
            .contains("Pull of 2025/02/21/23/1349.dat complete. Transferred 14 B")
    );

    // Corruption: verify finds it, syncing back repairs it.
    std::fs::write(r1.join("2025/02/21/23/1324.dat"), "bad data\n").unwrap();
    h.cairn(&[
        "node",
        "verify",
        "--all",
        "--acq=2025/02/21",
        "demo_storage1",
        "--force",
    ]);
    wait_until(T, "verify finds the corrupt copy", || {
        a.has("demo_storage1", "2025/02/21/23/1324.dat") == Some(Has::Corrupt)
    });
    wait_until(T, "all verified", || {
        let mut cat = a.catalog();
        let n = cat.read(|tx| tx.node("demo_storage1")).unwrap();
        cat.read(|tx| tx.copies_to_verify(n.id, None, 0, 10))
            .unwrap()
            .is_empty()
    });
    let stats = a.cairn(&["node", "stats", "--extra-stats"]);
    let row: Vec<_> = stats
        .lines()
        .find(|l| l.starts_with("demo_storage1"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["demo_storage1", "4", "90", "B", "-", "1", "-", "-"],
        "{stats}"
    );
    assert!(
        h.log().contains("is corrupt! Size: 9; expected: 12"),
        "{}",
        h.log()
    );
    let out = h.cairn(&["node", "sync", "demo_storage2", "demo_storage1", "--force"]);
    assert!(out.contains("Would sync 1 file (12 B)"), "{out}");
    a.wait_idle(T);
    assert_eq!(
        a.has("demo_storage1", "2025/02/21/23/1324.dat"),
        Some(Has::Yes)
    );
    assert_eq!(
        std::fs::read_to_string(r1.join("2025/02/21/23/1324.dat")).unwrap(),
        "0 1 2 3 4 5\n"
    );

    // Clean: refused until two archive copies exist elsewhere.
    h.cairn(&[
        "file",
        "clean",
        "--now",
        "--node=demo_storage1",
        "2025/02/21/meta.txt",
    ]);
    wait_until(T, "refusal logged", || {
        h.log().contains("too few archive copies (0 of 2")
    });
    assert!(r1.join("2025/02/21/meta.txt").exists());
    h.cairn(&["node", "modify", "--archive", "demo_storage2"]);
    wait_until(T, "refusal with one archive copy", || {
        h.log().contains("too few archive copies (1 of 2")
    });
    assert!(r1.join("2025/02/21/meta.txt").exists());
    h.cairn(&[
        "node",
        "create",
        "demo_storage3",
        "--create-group",
        "--archive",
        &format!("--root={}", r3.display()),
        "--host=alpenhost1",
        "--init",
        "--activate",
    ]);
    h.cairn(&["node", "sync", "--force", "demo_storage2", "demo_storage3"]);
    let t0 = Instant::now();
    while r1.join("2025/02/21/meta.txt").exists() {
        assert!(t0.elapsed() < T, "meta.txt deleted\n{}", h.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.has("demo_storage1", "2025/02/21/meta.txt"), Some(Has::No));
    a.wait_idle(T);
    let out = h.cairn(&[
        "node",
        "clean",
        "demo_storage1",
        "--now",
        "--target",
        "demo_storage3",
        "--force",
    ]);
    assert!(out.contains("Would release 4 files (50 B)."), "{out}");
    wait_until(T, "node 1 emptied", || {
        a.on("demo_storage1") == (0, 0) && !r1.join("2025").exists()
    });
    // Logged once the directories above the last file are removed, a moment after.
    let removed = format!("Removed directory {}/2025 on demo_storage1", r1.display());
    wait_until(T, "the emptied directory logged", || {
        h.log().contains(&removed)
    });
    assert_eq!(a.on("demo_storage2"), (5, 102));
    assert_eq!(a.on("demo_storage3"), (5, 102));

    // Auto-actions: node1 → group2 → group3, autoclean of node1 once in group3.
    h.cairn(&["group", "autosync", "demo_storage2", "demo_storage1"]);
    h.cairn(&["group", "autosync", "demo_storage3", "demo_storage2"]);
    h.cairn(&["node", "autoclean", "demo_storage1", "demo_storage3"]);
    write_file(&r1, "2025/02/26/02/0011.dat", "14 15 16 17 18\n");
    h.cairn(&["node", "scan", "demo_storage1", "--register-new"]);
    wait_until(
        T,
        "the new file travels to node 3 and leaves node 1",
        || {
            a.has("demo_storage3", "2025/02/26/02/0011.dat") == Some(Has::Yes)
                && a.has("demo_storage1", "2025/02/26/02/0011.dat") == Some(Has::No)
        },
    );
    // The copy is recorded gone as the file goes; its emptied directories follow.
    wait_until(T, "empty dirs removed", || !r1.join("2025").exists());
    assert_eq!(a.on("demo_storage2"), (6, 117));
    assert_eq!(a.on("demo_storage3"), (6, 117));
    let (_, md5) = md5_file(&r3.join("2025/02/26/02/0011.dat")).unwrap();
    assert_eq!(md5, cairn_catalog::md5::md5_hex(b"14 15 16 17 18\n"));

    assert_eq!(h.stop().code(), Some(0));
    for r in [&r1, &r2, &r3] {
        let tmp: Vec<_> = std::fs::read_dir(NodeRoot::new(r).tmp()).unwrap().collect();
        assert!(tmp.is_empty(), "no temp files left in {}", r.display());
    }
}

#[test]
fn a_root_with_another_nodes_marker_is_refused() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let r = h.root("n1");
    let root = format!("--root={}", r.display());
    h.cairn(&[
        "node",
        "create",
        "n1",
        "--create-group",
        &root,
        "--host=h1",
        "--init",
        "--activate",
    ]);
    h.start();
    wait_until(T, "n1 initialised", || NodeRoot::new(&r).marker().exists());
    // The same disk named as another node: the wrong disk in the slot.
    h.cairn(&[
        "node",
        "create",
        "n2",
        "--create-group",
        &root,
        "--host=h1",
        "--init",
        "--activate",
    ]);
    wait_until(T, "a refusal", || h.log().contains("Refusing node \"n2\""));
    let marker = std::fs::read_to_string(NodeRoot::new(&r).marker()).unwrap();
    assert!(marker.contains("node = \"n1\""), "{marker}");
    let mut cat = a.catalog();
    let failed_requests = |cat: &mut cairn_catalog::Catalog| {
        cat.read(|tx| tx.import_requests(None, &[cairn_catalog::model::RequestState::Failed]))
            .unwrap()
    };
    // The refusal is logged when the pass sees the root; the init request fails just after.
    wait_until(T, "the init request failed", || {
        !failed_requests(&mut cat).is_empty()
    });
    let failed = failed_requests(&mut cat);
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("marker of node \"n1\"")
    );
}

fn partial_copy_in(root: &Path) -> Option<u64> {
    std::fs::read_dir(NodeRoot::new(root).tmp())
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("copy-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .find(|len| *len > 32 << 20)
}

#[test]
fn sigterm_and_kill_9_mid_copy_leave_no_partial_file_and_the_copy_completes() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let r1 = h.root("n1");
    let r2 = h.root("n2");
    for (n, r) in [("n1", &r1), ("n2", &r2)] {
        h.cairn(&[
            "node",
            "create",
            n,
            "--create-group",
            &format!("--root={}", r.display()),
            "--host=h1",
            "--init",
            "--activate",
        ]);
    }
    big_file(&r1.join("2025/01/01/big.dat"), 1024);
    let (size, md5) = md5_file(&r1.join("2025/01/01/big.dat")).unwrap();
    h.start();
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(Duration::from_secs(120));
    assert_eq!(a.on("n1"), (1, size));
    let target = r2.join("2025/01/01/big.dat");

    // SIGTERM mid-copy: a clean stop, no temp file, the request back in the queue.
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    wait_until(Duration::from_secs(60), "a partial copy", || {
        partial_copy_in(&r2).is_some()
    });
    assert_eq!(h.stop().code(), Some(0), "{}", h.log());
    assert!(!target.exists(), "nothing under the archive name");
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&r2).tmp()).unwrap().count(),
        0,
        "temp file removed"
    );
    let pending = a.cairn(&["request", "list", "--pending"]);
    assert!(pending.contains("big.dat"), "{pending}");

    // kill -9 mid-copy: the partial file stays in .cairn/tmp only.
    h.start();
    wait_until(Duration::from_secs(60), "a partial copy again", || {
        partial_copy_in(&r2).is_some()
    });
    h.kill9();
    assert!(
        !target.exists(),
        "nothing under the archive name after a crash"
    );
    assert_eq!(a.has("n2", "2025/01/01/big.dat"), None, "no copy recorded");

    // Restart: the abandoned request resumes and the copy completes, verified.
    h.start();
    a.wait_idle(Duration::from_secs(180));
    assert_eq!(
        a.has("n2", "2025/01/01/big.dat"),
        Some(Has::Yes),
        "{}",
        h.log()
    );
    assert_eq!(md5_file(&target).unwrap(), (size, md5));
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&r2).tmp()).unwrap().count(),
        0,
        "leftovers tidied"
    );
    assert!(
        h.log().contains("Resuming 1 requests left active"),
        "{}",
        h.log()
    );
}

#[test]
fn racing_cleans_on_two_hosts_never_go_below_min_archive_copies() {
    use cairn_catalog::catalog::NewFile;
    use cairn_catalog::model::Wants;
    const FILES: usize = 40;
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    let h3 = a.host("h3");
    let roots = [h1.root("a1"), h2.root("a2"), h3.root("a3")];
    for (i, (h, r)) in [(&h1, &roots[0]), (&h2, &roots[1]), (&h3, &roots[2])]
        .into_iter()
        .enumerate()
    {
        let n = format!("a{}", i + 1);
        h.cairn(&[
            "node",
            "create",
            &n,
            "--create-group",
            "--archive",
            &format!("--root={}", r.display()),
            &format!("--host={}", h.name),
            "--init",
            "--activate",
        ]);
    }
    // Every file has a healthy copy on all three archive nodes; a1 and a2 are both released.
    let mut cat = a.catalog();
    for i in 0..FILES {
        let path = format!("2025/race/{i:03}.dat");
        let body = format!("file {i}\n");
        for r in &roots {
            write_file(r, &path, &body);
        }
        cat.write(|tx| {
            let (f, _) = tx.register_file(
                &NewFile {
                    path: path.clone(),
                    acq: "2025/race".into(),
                    size: body.len() as u64,
                    md5: cairn_catalog::md5::md5_hex(body.as_bytes()),
                    mtime: 0,
                    own: Default::default(),
                },
                1,
            )?;
            for n in ["a1", "a2", "a3"] {
                let node = tx.node(n)?;
                let c = tx.record_copy(f.id, node.id, Has::Yes, None, 1)?;
                if n != "a3" {
                    tx.set_wants(&[c], Wants::ReleaseNow, 1)?;
                }
            }
            Ok(())
        })
        .unwrap();
    }
    h1.start();
    h2.start();
    let gone =
        |node: &str, i: usize| a.has(node, &format!("2025/race/{i:03}.dat")) == Some(Has::No);
    wait_until(Duration::from_secs(60), "one of each pair released", || {
        (0..FILES).all(|i| gone("a1", i) || gone("a2", i))
    });
    // Let both daemons try again for a few loops: the survivors must stay.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..FILES {
        let path = format!("2025/race/{i:03}.dat");
        let healthy: Vec<_> = ["a1", "a2", "a3"]
            .into_iter()
            .filter(|n| a.has(n, &path) == Some(Has::Yes))
            .collect();
        assert_eq!(healthy.len(), 2, "{path}: {healthy:?}");
        for (n, r) in ["a1", "a2", "a3"].iter().zip(&roots) {
            assert_eq!(
                r.join(&path).exists(),
                healthy.contains(n),
                "{path} on {n}: disk and catalog agree"
            );
        }
    }
    assert!(
        h1.log().contains("too few archive copies") || h2.log().contains("too few archive copies")
    );
}

/// Three nodes on one host; returns their roots after init.
fn three_nodes(
    a: &Archive,
    h: &mut cairn_tests::TestHost,
    archive: bool,
) -> [std::path::PathBuf; 3] {
    let roots = [h.root("n1"), h.root("n2"), h.root("n3")];
    for (i, r) in roots.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let root = format!("--root={}", r.display());
        let mut args = vec![
            "node",
            "create",
            &name,
            "--create-group",
            &root,
            "--host=h1",
            "--init",
            "--activate",
        ];
        if archive && i > 0 {
            args.push("--archive");
        }
        h.cairn(&args);
    }
    h.start();
    for r in &roots {
        wait_until(T, "init", || NodeRoot::new(r).marker().exists());
    }
    let _ = a;
    roots
}

#[test]
fn a_source_with_wrong_bytes_is_marked_suspect_and_another_source_is_used() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, r2, r3] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/a.dat", "the right bytes\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h.cairn(&["node", "sync", "n1", "n3", "--force"]);
    a.wait_idle(T);
    // n1's copy rots on disk; the catalog does not know yet.
    std::fs::write(r1.join("2025/01/01/a.dat"), "the wrong bytes\n").unwrap();
    // Ask for a copy from n1 into n2: n1's bytes fail the md5, n3's copy is used instead.
    h.cairn(&[
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
    assert!(h.log().contains("gave wrong bytes"), "{}", h.log());
    let _ = r3;
}

#[test]
fn space_pressure_releases_discretionary_copies_only_when_needed() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, _, _] = three_nodes(&a, &mut h, true);
    for i in 0..3 {
        write_file(&r1, &format!("2025/01/01/{i}.dat"), format!("file {i}\n"));
    }
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    h.cairn(&["node", "sync", "n1", "n3", "--force"]);
    a.wait_idle(T);
    // Released for discretionary cleaning: nothing goes while there is room.
    let out = h.cairn(&["node", "clean", "n1", "--force"]);
    assert!(out.contains("Would release 3 files"), "{out}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(a.on("n1").0, 3, "no deletion without space pressure");
    // Now the node must keep more free space than its disk has: everything releasable goes.
    h.cairn(&["node", "modify", "n1", "--min-avail", "1000PiB"]);
    wait_until(T, "discretionary release", || a.on("n1").0 == 0);
    // The bytes go once the release is committed.
    wait_until(T, "released copies deleted", || !r1.join("2025").exists());
    assert!(h.log().contains("needs"), "{}", h.log());
}

#[test]
fn auto_verify_finds_corruption_by_age() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let r = h.root("n1");
    h.cairn(&[
        "node",
        "create",
        "n1",
        "--create-group",
        &format!("--root={}", r.display()),
        "--host=h1",
        "--init",
        "--activate",
        "--auto-verify",
        "1s",
    ]);
    write_file(&r, "2025/01/01/a.dat", "good\n");
    h.start();
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    std::fs::write(r.join("2025/01/01/a.dat"), "evil\n").unwrap();
    wait_until(T, "auto-verify marks it corrupt", || {
        a.has("n1", "2025/01/01/a.dat") == Some(Has::Corrupt)
    });
    assert!(h.log().contains("is corrupt! MD5"), "{}", h.log());
}

#[test]
fn a_file_open_for_writing_is_not_imported_by_a_scan() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/done.dat", "complete\n");
    let open = std::fs::File::create(r1.join("2025/01/01/busy.dat")).unwrap();
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    assert_eq!(a.has("n1", "2025/01/01/done.dat"), Some(Has::Yes));
    assert_eq!(
        a.has("n1", "2025/01/01/busy.dat"),
        None,
        "still being written"
    );
    assert!(h.log().contains("still open for writing"), "{}", h.log());
    drop(open);
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    assert_eq!(a.has("n1", "2025/01/01/busy.dat"), Some(Has::Yes));
}

#[test]
fn pre_pull_search_records_a_file_already_in_place() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, r2, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/a.dat", "same bytes\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    write_file(&r2, "2025/01/01/a.dat", "same bytes\n");
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(T);
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), Some(Has::Yes));
    assert!(
        h.log().contains("Pre-pull search found 2025/01/01/a.dat"),
        "{}",
        h.log()
    );
    assert!(
        !h.log().contains("Pulling file 2025/01/01/a.dat"),
        "no copy was made"
    );
}

#[test]
fn a_copy_that_does_not_fit_fails_with_the_reason_and_retry_requeues_it() {
    let a = Archive::new();
    let mut h = a.host_with("h1", "max_attempts = 1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    h.cairn(&["node", "modify", "n2", "--max-total", "10B"]);
    write_file(
        &r1,
        "2025/01/01/a.dat",
        "fifty-two bytes of data that will not fit on node 2\n",
    );
    scan_and_sync_n1_to_n2(&a, &h);
    let failed = a.cairn(&["request", "list", "--failed"]);
    assert!(failed.contains("has no room"), "{failed}");
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), None);
    // Room made, the failed request put back: it completes.
    h.cairn(&["node", "modify", "n2", "--no-max-total"]);
    assert!(
        h.cairn(&["request", "retry", "--failed"])
            .contains("Requeued 1 copy request.")
    );
    a.wait_idle(T);
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), Some(Has::Yes));
}

/// Registers what is new on n1, then syncs n1 into n2, each until cairnd is idle.
fn scan_and_sync_n1_to_n2(a: &Archive, h: &cairn_tests::TestHost) {
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(T);
}

#[test]
fn max_total_counts_the_copies_a_node_holds_already() {
    let a = Archive::new();
    let mut h = a.host_with("h1", "max_attempts = 1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    h.cairn(&["node", "modify", "n2", "--max-total", "80B"]);
    let bytes = "fifty-two bytes of data: each file on its own fits.\n";
    assert_eq!(bytes.len(), 52);
    write_file(&r1, "2025/01/01/a.dat", bytes);
    scan_and_sync_n1_to_n2(&a, &h);
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), Some(Has::Yes));
    // 52 bytes held, 52 more would make 104 of 80.
    write_file(&r1, "2025/01/01/b.dat", bytes);
    scan_and_sync_n1_to_n2(&a, &h);
    let failed = a.cairn(&["request", "list", "--failed"]);
    assert!(failed.contains("has no room"), "{failed}");
    assert_eq!(a.has("n2", "2025/01/01/b.dat"), None);
}

/// The refused release is tried again at every pass (5 a second here), and counted each time
/// in `/metrics`, but logged once: an hour of it was 1,500 lines a minute on one host.
#[test]
fn a_standing_refused_release_is_retried_each_loop_but_logged_once() {
    let a = Archive::new();
    let mut h = a.host_with("h1", "interval = \"200ms\"");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/a.dat", "only copy\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h.cairn(&["file", "clean", "--now", "--node=n1", "2025/01/01/a.dat"]);
    wait_until(T, "the refusal", || {
        h.log().contains("Not deleting 2025/01/01/a.dat")
    });
    let refusals = || {
        let (status, _, body) = cairn_tests::http_get(&h.address, "/metrics", &[]);
        assert_eq!(status, 200);
        String::from_utf8(body)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("cairn_release_refusals_total "))
            .expect("the refusal counter")
            .parse::<u64>()
            .unwrap()
    };
    let before = refusals();
    std::thread::sleep(Duration::from_secs(4));
    let tried = refusals() - before;
    assert!(
        (5..=40).contains(&tried),
        "{tried} refusals in 4 s of 200 ms loops: once a loop, not in a spin"
    );
    let logged = h.log().matches("Not deleting 2025/01/01/a.dat").count();
    assert_eq!(logged, 1, "said once while it stands: {}", h.log());
    assert!(r1.join("2025/01/01/a.dat").exists());
}

#[test]
fn a_copy_never_overwrites_a_file_the_catalog_does_not_know() {
    let a = Archive::new();
    let mut h = a.host_with("h1", "max_attempts = 1");
    let [r1, r2, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/a.dat", "archived bytes\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    write_file(&r2, "2025/01/01/a.dat", "someone else's file\n");
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    a.wait_idle(T);
    let failed = a.cairn(&["request", "list", "--failed"]);
    assert!(failed.contains("is in the way"), "{failed}");
    assert_eq!(
        std::fs::read_to_string(r2.join("2025/01/01/a.dat")).unwrap(),
        "someone else's file\n"
    );
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), None);
}

/// Regression: a delayed auto-clean released only after a verification that nobody ran, so the
/// field node filled up. Now cairnd verifies the group copy itself once it is old enough.
#[test]
fn delayed_auto_clean_verifies_the_group_copy_itself_then_releases_or_keeps() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, r2, _] = three_nodes(&a, &mut h, true);
    h.cairn(&["group", "autosync", "n2", "n1"]);
    h.cairn(&["group", "autosync", "n3", "n1"]);
    let out = h.cairn(&["node", "autoclean", "n1", "n2", "--after", "2s"]);
    assert_eq!(
        out,
        "Auto-clean trigger: Group \"n2\" added (after 2s there, once verified)\n"
    );
    let show = h.cairn(&["node", "show", "n1", "--actions"]);
    assert!(
        show.contains("File in that group for 2s, verified"),
        "{show}"
    );
    write_file(&r1, "2025/05/01/x.dat", "field data\n");
    write_file(&r1, "2025/05/01/y.dat", "more field data\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    wait_until(T, "both archives have them", || {
        ["x", "y"].iter().all(|f| {
            let p = format!("2025/05/01/{f}.dat");
            a.has("n2", &p) == Some(Has::Yes) && a.has("n3", &p) == Some(Has::Yes)
        })
    });
    let arrived = std::time::Instant::now();
    // y's copy in the group rots before it is verified.
    std::fs::write(r2.join("2025/05/01/y.dat"), "rotten!!!!!!!!!!\n").unwrap();
    // No `node verify`: once 2 s old, n2's copies are verified by cairnd, then n1's released.
    wait_until(T, "released once verified", || {
        a.has("n1", "2025/05/01/x.dat") == Some(Has::No)
    });
    let took = arrived.elapsed();
    assert!(
        took < Duration::from_secs(2 + 8),
        "within a few 1 s intervals of the delay: {took:?}"
    );
    wait_until(T, "the rotten copy found", || {
        a.has("n2", "2025/05/01/y.dat") == Some(Has::Corrupt)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.has("n1", "2025/05/01/y.dat"),
        Some(Has::Yes),
        "kept: its copy in the group is corrupt"
    );
    assert!(!r1.join("2025/05/01/x.dat").exists());
    assert!(r1.join("2025/05/01/y.dat").exists());
    assert!(r2.join("2025/05/01/x.dat").exists());
    let log = h.log();
    for line in [
        "Delayed auto-clean of node \"n1\": verifying 2025/05/01/x.dat on n2",
        "File 2025/05/01/x.dat on node n2 is A-OK!",
        "Delayed auto-clean: releasing 2025/05/01/x.dat on n1",
    ] {
        assert!(log.contains(line), "{line:?} in {log}");
    }
    assert_eq!(
        log.matches(
            "Delayed auto-clean: keeping 2025/05/01/y.dat on n1: its copy in group \"n2\" \
             failed verification."
        )
        .count(),
        1,
        "reported once: {log}"
    );
}

#[test]
fn clean_older_than_picks_copies_by_age_including_past_dates() {
    use cairn_catalog::catalog::NewFile;
    let a = Archive::new();
    a.cairn(&[
        "node",
        "create",
        "n1",
        "--create-group",
        "--root=/d",
        "--host=h",
    ]);
    let now = cairn_catalog::units::now();
    let day = 86_400;
    let mut cat = a.catalog();
    cat.write(|tx| {
        let n = tx.node("n1")?;
        // Copies that arrived 40 days, 10 days and 1 hour ago.
        for (name, age) in [("old", 40 * day), ("mid", 10 * day), ("new", 3600)] {
            let path = format!("2025/01/01/{name}.dat");
            let md5 = cairn_catalog::md5::md5_hex(name.as_bytes());
            let (f, _) = tx.register_file(
                &NewFile {
                    path: path.clone(),
                    acq: "2025/01/01".into(),
                    size: 3,
                    md5: md5.clone(),
                    mtime: 0,
                    own: Default::default(),
                },
                now - age,
            )?;
            tx.record_copy(f.id, n.id, Has::Yes, None, now - age)?;
        }
        Ok(())
    })
    .unwrap();
    let out = a.cairn(&[
        "node",
        "clean",
        "n1",
        "--older-than",
        "30d",
        "--show-files",
        "--force",
    ]);
    assert!(
        out.contains("Would release 1 file (3 B):\n2025/01/01/old.dat\n"),
        "{out}"
    );
    let out = a.cairn(&[
        "node",
        "clean",
        "n1",
        "--older-than",
        "7d",
        "--now",
        "--show-files",
        "--force",
    ]);
    assert!(
        out.contains("Would release 2 files (6 B):\n2025/01/01/mid.dat\n2025/01/01/old.dat\n"),
        "{out}"
    );
    assert_eq!(
        a.cairn(&["file", "state", "2025/01/01/new.dat", "n1"]),
        "Healthy Keep\n"
    );
}

#[test]
fn a_mirror_takes_only_its_subset_by_path() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, r2, _] = three_nodes(&a, &mut h, false);
    let out = h.cairn(&["group", "autosync", "n2", "n1", "--path", "2025/"]);
    assert_eq!(out, "Auto-sync from \"n1\" started (under 2025/)\n");
    write_file(&r1, "2025/01/01/wanted.dat", "mirror me\n");
    write_file(&r1, "2024/12/31/old.dat", "not for the mirror\n");
    write_file(&r1, "2025x/other.dat", "not under 2025/ either\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    wait_until(T, "the wanted file mirrored", || {
        a.has("n2", "2025/01/01/wanted.dat") == Some(Has::Yes)
    });
    a.wait_idle(T);
    assert_eq!(a.on("n2").0, 1, "only the subset");
    assert!(!r2.join("2024").exists() && !r2.join("2025x").exists());
    // A one-off sync by path prefix, too.
    let out = h.cairn(&[
        "node",
        "sync",
        "n1",
        "n3",
        "--path",
        "2024",
        "--show-files",
        "--force",
    ]);
    assert!(
        out.contains(
            "Would sync 1 file (19 B) from Node \"n1\" to Group \"n3\":\n2024/12/31/old.dat\n"
        ),
        "{out}"
    );
}

#[test]
fn a_paused_node_or_host_gets_no_new_work_and_keeps_its_queue() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/a.dat", "queued\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    let out = h.cairn(&["node", "pause", "n2"]);
    assert_eq!(
        out,
        "Node \"n2\" paused: no new work into or out of it; queued requests wait.\n"
    );
    assert!(h.cairn(&["node", "show", "n2"]).contains("Paused: Yes"));
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.has("n2", "2025/01/01/a.dat"),
        None,
        "nothing into a paused node"
    );
    assert!(
        a.cairn(&["request", "list", "--pending"]).contains("a.dat"),
        "still queued"
    );
    // Resumed node, paused host: still nothing.
    h.cairn(&["host", "pause", "h1"]);
    h.cairn(&["node", "resume", "n2"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.has("n2", "2025/01/01/a.dat"),
        None,
        "nothing on a paused host"
    );
    assert!(h.log().contains("Host \"h1\" is paused"), "{}", h.log());
    h.cairn(&["host", "resume", "h1"]);
    a.wait_idle(T);
    assert_eq!(a.has("n2", "2025/01/01/a.dat"), Some(Has::Yes));
}

#[test]
fn a_closed_acquisition_is_complete_where_all_its_files_are() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        cfg.replace("[import]\n", "[import]\nacq_idle = \"4s\"\n"),
    )
    .unwrap();
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/06/01/01/a.dat", "a\n");
    write_file(&r1, "2025/06/01/02/b.dat", "b\n");
    write_file(&r1, "2025/06/02/01/c.dat", "c\n");
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    // Closed by hand at once (before `acq_idle` closes it: on a loaded machine the steps
    // below took longer than that).
    let out = a.cairn(&["acq", "close", "2025/06/01"]);
    assert_eq!(out, "Acquisition \"2025/06/01\" closed.\n");
    // Only one file of 2025/06/01 copied to n2 so far.
    h.cairn(&[
        "file",
        "sync",
        "--from",
        "n1",
        "--to",
        "n2",
        "2025/06/01/01/a.dat",
    ]);
    a.wait_idle(T);
    let names = |args: &[&str]| -> Vec<String> {
        let listing: serde_json::Value = serde_json::from_str(&a.cairn(args)).unwrap();
        listing
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&["acq", "list", "--complete-in", "n2", "--json"]),
        Vec::<String>::new(),
        "closed, but one of two files there"
    );
    assert_eq!(
        names(&["acq", "list", "--complete-in", "n2", "--all", "--json"]),
        ["2025/06/01", "2025/06/02"],
        "--all lists every acquisition"
    );
    h.cairn(&["node", "sync", "n1", "n2", "--acq", "2025/06/01", "--force"]);
    a.wait_idle(T);
    let show = a.cairn(&["acq", "show", "2025/06/01"]);
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["n2", "2", "Yes"]),
        "{show}"
    );
    assert_eq!(
        names(&["acq", "list", "--complete-in", "n2", "--json"]),
        ["2025/06/01"]
    );
    assert_eq!(
        names(&["acq", "list", "--complete-in", "n3", "--json"]),
        Vec::<String>::new(),
        "complete in n2 only, not in n3"
    );
    // The other acquisition closes by itself once idle (acq_idle = 4s).
    wait_until(T, "closed when idle", || {
        a.cairn(&["acq", "show", "2025/06/02"]).contains("Closed: ")
            && !a
                .cairn(&["acq", "show", "2025/06/02"])
                .contains("Closed: No")
    });
    assert!(
        h.log()
            .contains("Acquisition \"2025/06/02\" closed: no new file for 4s."),
        "{}",
        h.log()
    );
}

#[test]
fn status_shows_live_hosts_queues_and_recent_transfers() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    write_file(&r1, "2025/01/01/a.dat", "moved\n");
    scan_and_sync_n1_to_n2(&a, &h);
    h.cairn(&["node", "pause", "n3"]);
    let status: serde_json::Value = serde_json::from_str(&h.cairn(&["status", "--json"])).unwrap();
    assert_eq!(status["hosts"][0]["name"], "h1");
    assert_eq!(status["hosts"][0]["cairnd_up"], true);
    assert_eq!(status["last_hour"][0], 1, "one copy in the last hour");
    assert_eq!(status["last_hour"][1], 6, "of 6 bytes");
    let text = h.cairn(&["status"]);
    assert!(text.contains("n3 (paused)"), "{text}");
    assert!(text.contains("Last hour: 1 copies, 6 B"), "{text}");
    let host_line = text
        .lines()
        .find(|l| l.starts_with("h1 "))
        .unwrap_or_default();
    assert!(host_line.contains(" Up "), "{text}");
    h.stop();
    let out = std::process::Command::new(cairn_tests::bin("cairn"))
        .args(["status", "--watch", "--json"])
        .env("CAIRN_CATALOG", &a.url)
        .env("CAIRN_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn wait_follows_the_work_and_reports_how_it_ended() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    for i in 0..3 {
        write_file(&r1, &format!("2025/01/01/{i}.dat"), format!("file {i}\n"));
    }
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    // No terminal here: plain progress lines, then the summary.
    let out = h.cairn(&["node", "sync", "n1", "n2", "--force", "--wait"]);
    assert!(
        out.contains("Finished: 3 of 3 files done, 0 failed, 21 B"),
        "{out}"
    );
    assert_eq!(a.on("n2").0, 3, "done when the command returns");
    let out = h.cairn(&["node", "verify", "--all", "n2", "--force", "--wait"]);
    assert!(out.contains("Finished: 3 of 3 verified done"), "{out}");
    let out = h.cairn(&[
        "file",
        "sync",
        "--from",
        "n1",
        "--to",
        "n3",
        "2025/01/01/0.dat",
        "--wait",
    ]);
    assert!(out.contains("Finished: 1 of 1 files done"), "{out}");
    // A release the archive rule refuses never finishes: the wait gives up, saying so.
    let out = h.cairn(&["node", "clean", "n1", "--now", "--force", "--wait"]);
    assert!(
        out.contains("Stopped waiting: 0 of 3 released done"),
        "{out}"
    );
    // On a terminal, a progress bar (script(1) provides one).
    let cmd = format!(
        "{} node verify --all n2 --force --wait",
        cairn_tests::bin("cairn").display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("CAIRN_CONFIG", &h.config)
        .env_remove("CAIRN_CATALOG")
        .output();
    match tty {
        Ok(o) => {
            let shown = String::from_utf8_lossy(&o.stdout);
            assert!(
                shown.contains("[========================] 3/3 verified"),
                "{shown}"
            );
            assert!(shown.contains("ETA"), "{shown}");
        }
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "script(1) is needed in CI"
            );
            eprintln!("SKIPPED: script(1) is not installed");
        }
    }
}

#[test]
fn pausing_a_node_mid_sync_lets_running_copies_finish_and_loses_nothing() {
    let a = Archive::new();
    let mut h = a.host("h1");
    let [r1, _, _] = three_nodes(&a, &mut h, false);
    const N: usize = 600;
    for i in 0..N {
        write_file(
            &r1,
            &format!("2025/01/{:02}/{i:04}.dat", i / 100),
            format!("{i}\n"),
        );
    }
    h.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(Duration::from_secs(60));
    h.cairn(&["node", "sync", "n1", "n2", "--force"]);
    wait_until(T, "the sync under way", || a.on("n2").0 >= 5);
    h.cairn(&["node", "pause", "n2"]);
    std::thread::sleep(Duration::from_millis(1500)); // copies already running finish
    let at_pause = a.on("n2").0;
    assert!(
        at_pause < N as u64,
        "paused mid-sync ({at_pause} of {N} done)"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.on("n2").0, at_pause, "nothing new starts while paused");
    h.cairn(&["node", "resume", "n2"]);
    a.wait_idle(Duration::from_secs(120));
    assert_eq!(a.on("n2").0, N as u64, "resume continues to the end");
    let done: serde_json::Value =
        serde_json::from_str(&a.cairn(&["request", "list", "--done", "--json"])).unwrap();
    let requests = done["copy_requests"].as_array().unwrap();
    assert_eq!(
        requests.len(),
        N,
        "one request per file: none lost, none duplicated"
    );
}
