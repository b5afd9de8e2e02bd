//! A closed file is never lost: the handoff from a writer's `close` to the catalog, under
//! faults. The mount is killed right after writers closed their files; the catalog is locked
//! by another process, or its WAL cannot be written, while files are closed; a name the
//! archive cannot take is written. Each scenario runs 10 times.
//!
//! After each: every file whose `close` returned 0 is in the catalog exactly once, with the
//! md5 of its bytes, and no file lies under an archive name on the node that the catalog does
//! not know.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_catalog::md5::md5_hex;
use cairn_catalog::model::Has;
use cairn_tests::{Archive, CATALOG_ENV, TestHost, fuse_available, wait_until};

const T: Duration = Duration::from_secs(90);
const RUNS: usize = 10;

/// One host with cairnd running, its node initialised.
fn host(a: &Archive) -> (TestHost, PathBuf) {
    let mut h = a.host("h1");
    let root = h.node("store1", &[]);
    h.start();
    wait_until(T, "node initialised", || {
        root.join(".cairn/node.toml").exists()
    });
    (h, root)
}

fn on_sqlite() -> bool {
    let sqlite = std::env::var(CATALOG_ENV).map_or(true, |v| v == "sqlite");
    if !sqlite {
        eprintln!(
            "\n*** this scenario locks a SQLite catalog's files: not run on PostgreSQL ***\n"
        );
    }
    sqlite
}

/// The contents of the `k`-th file of run `run`.
fn contents(run: usize, k: usize) -> Vec<u8> {
    format!("run {run} file {k}\n")
        .repeat(1 + k % 7)
        .into_bytes()
}

/// Writes `n` files into `dir` (below the mount), each closed before the next is opened;
/// returns their paths relative to the mount with their bytes.
fn write_files(mnt: &Path, dir: &str, run: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(mnt.join(dir)).unwrap();
    (0..n)
        .map(|k| {
            let rel = format!("{dir}/f{k:03}.dat");
            let data = contents(run, k);
            std::fs::write(mnt.join(&rel), &data).unwrap_or_else(|e| panic!("writing {rel}: {e}"));
            (rel, data)
        })
        .collect()
}

/// Waits until every file is in the catalog with its md5 and a healthy copy on `store1`.
fn wait_registered(a: &Archive, files: &[(String, Vec<u8>)], log: impl Fn() -> String) {
    let mut last = String::new();
    let ok = (0..(T.as_millis() / 200)).any(|_| {
        let mut cat = a.catalog();
        let missing: Vec<&str> = files
            .iter()
            .filter(|(rel, data)| {
                let f = cat.read(|tx| tx.file_by_path(rel)).ok().flatten();
                !f.is_some_and(|f| f.md5 == md5_hex(data) && f.size == data.len() as u64)
            })
            .map(|(rel, _)| rel.as_str())
            .collect();
        if missing.is_empty() {
            return true;
        }
        last = format!(
            "{} missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    assert!(
        ok,
        "closed files not registered: {last}\nthe mount's log:\n{}",
        log()
    );
    for (rel, _) in files {
        assert_eq!(a.has("store1", rel), Some(Has::Yes), "{rel}");
    }
}

/// No file under an archive name on the node is unknown to the catalog, none is kept aside
/// as a conflict, and the catalog has `expected` files.
fn nothing_stray(a: &Archive, root: &Path, expected: usize) {
    let mut cat = a.catalog();
    let files = cat.read(|tx| tx.files(&Default::default())).unwrap();
    let known: BTreeSet<String> = files.iter().map(|f| f.path.clone()).collect();
    assert!(!known.iter().any(|p| p.contains(".conflict-")), "{known:?}");
    assert_eq!(known.len(), expected);
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".cairn") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                assert!(
                    known.contains(&rel),
                    "{rel} is on the node but not in the catalog"
                );
            }
        }
    }
}

// [S24]
#[test]
fn files_closed_just_before_the_mount_is_killed_are_imported_by_the_next_mount() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let mut all = Vec::new();
    for run in 0..RUNS {
        let mut m = h.mount(Some("store1"));
        let files = write_files(&m.dir, &format!("k{run}"), run, 200);
        // At once: most are still settling, some may be mid-import.
        m.kill9();
        let m = h.mount(Some("store1"));
        wait_registered(&a, &files, || m.log());
        for (rel, data) in files.iter().step_by(37) {
            assert_eq!(std::fs::read(m.dir.join(rel)).unwrap(), *data, "{rel}");
        }
        all.extend(files);
        drop(m);
    }
    nothing_stray(&a, &root, all.len());
}

/// A mount started at once after a kill, while the killed one is not yet reaped (its pid still
/// there, a zombie), takes over the files it closed: they are there under their names, and
/// registered.
#[test]
fn files_closed_before_a_kill_are_taken_over_by_a_mount_started_before_the_old_is_reaped() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let mut all = Vec::new();
    for run in 0..3 {
        let mut m = h.mount(Some("store1"));
        let files = write_files(&m.dir, &format!("z{run}"), run, 200);
        let mut killed = m.kill9_unreaped();
        drop(m);
        let m = h.mount(Some("store1"));
        wait_registered(&a, &files, || m.log());
        for (rel, data) in files.iter().step_by(37) {
            assert_eq!(std::fs::read(m.dir.join(rel)).unwrap(), *data, "{rel}");
        }
        killed.wait().unwrap();
        all.extend(files);
        drop(m);
    }
    nothing_stray(&a, &root, all.len());
}

// [S24]
#[test]
fn files_closed_while_another_process_locks_the_catalog_survive_a_clean_remount() {
    if !fuse_available() || !on_sqlite() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let db = a.dir.path().join("catalog.db");
    let mut all = Vec::new();
    for run in 0..RUNS {
        let mut m = h.mount(Some("store1"));
        // (Making a directory needs the catalog: it is made first.)
        std::fs::create_dir_all(m.dir.join(format!("l{run}"))).unwrap();
        // Another process takes the catalog's write lock and keeps it.
        let lock = Locker::hold(&db);
        let files = write_files(&m.dir, &format!("l{run}"), run, 10);
        // The mount tries, fails (the catalog stays locked past its patience), and is
        // unmounted cleanly while the lock is held.
        std::thread::sleep(Duration::from_millis(2500));
        assert!(m.stop().success());
        drop(lock);
        if run == 0 {
            // No mount runs: cairnd reports what waits in the node's journal.
            wait_until(T, "cairn status shows the journal", || {
                let out = a.cairn(&["status"]);
                out.contains("waiting on nodes to be registered")
                    && out
                        .lines()
                        .any(|l| l.starts_with("store1") && l.contains(" 10 "))
            });
        }
        let m = h.mount(Some("store1"));
        wait_registered(&a, &files, || m.log());
        if run == 0 {
            wait_until(T, "the journal reported empty", || {
                !a.cairn(&["status"])
                    .contains("waiting on nodes to be registered")
            });
        }
        all.extend(files);
        drop(m);
    }
    nothing_stray(&a, &root, all.len());
}

// [S24]
#[test]
fn files_closed_while_the_catalog_is_locked_are_registered_once_it_is_free() {
    if !fuse_available() || !on_sqlite() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let m = h.mount(Some("store1"));
    let db = a.dir.path().join("catalog.db");
    let mut all = Vec::new();
    for run in 0..RUNS {
        std::fs::create_dir_all(m.dir.join(format!("b{run}"))).unwrap();
        let lock = Locker::hold(&db);
        let files = write_files(&m.dir, &format!("b{run}"), run, 10);
        // The import tries, gives up on the busy catalog, and the files wait for it: they
        // say so, and they are listed and readable meanwhile, from this host.
        wait_until(T, "files waiting for the catalog", || {
            files
                .iter()
                .all(|(rel, _)| m.xattr(rel, "state").as_deref() == Ok("pending"))
        });
        for (rel, data) in &files {
            assert_eq!(std::fs::read(m.dir.join(rel)).unwrap(), *data, "{rel}");
            assert_eq!(m.xattr(rel, "md5").unwrap(), md5_hex(data), "{rel}");
        }
        drop(lock);
        wait_registered(&a, &files, || m.log());
        all.extend(files);
    }
    nothing_stray(&a, &root, all.len());
}

// [S24]
#[test]
fn a_mount_whose_catalog_wal_was_unwritable_recovers_by_itself_and_loses_nothing() {
    if !fuse_available() || !on_sqlite() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let m = h.mount(Some("store1"));
    let wal = a.dir.path().join("catalog.db-wal");
    let mut all = Vec::new();
    for run in 0..RUNS {
        // A first file makes sure the WAL exists.
        let warm = write_files(&m.dir, &format!("w{run}/warm"), run, 1);
        assert_eq!(m.xattr(&warm[0].0, "md5").unwrap(), md5_hex(&warm[0].1));
        let started = std::time::Instant::now();
        let immutable = Immutable::set(&wal);
        let files = write_files(&m.dir, &format!("w{run}"), run, 22);
        std::thread::sleep(Duration::from_millis(2000));
        drop(immutable);
        wait_registered(&a, &files, || m.log());
        eprintln!(
            "run {run}: registered {:?} after the WAL was made unwritable",
            started.elapsed()
        );
        all.extend(warm);
        all.extend(files);
    }
    nothing_stray(&a, &root, all.len());
}

// [S25]
#[test]
fn a_name_too_long_for_the_node_is_refused_at_create_and_nothing_is_kept() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let m = h.mount(Some("store1"));
    for run in 0..RUNS {
        let name = format!("{run}{}", "n".repeat(255));
        let e = std::fs::write(m.dir.join(&name), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
        let ok = format!("{run}{}", "n".repeat(254));
        std::fs::write(m.dir.join(&ok), b"y").unwrap();
        assert_eq!(m.xattr(&ok, "md5").unwrap(), md5_hex(b"y"));
    }
    let staged = std::fs::read_dir(root.join(".cairn/staging"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "nothing left staged");
    nothing_stray(&a, &root, RUNS);
}

// [S26]
#[test]
fn a_path_archived_meanwhile_with_other_bytes_keeps_both_files() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let other = h.node("store2", &[]);
    wait_until(T, "second node initialised", || {
        other.join(".cairn/node.toml").exists()
    });
    // A long settle: the other file is archived while this one waits.
    std::fs::write(
        &h.config,
        std::fs::read_to_string(&h.config).unwrap()
            + "[fs]\nttl = \"100ms\"\nwrite_node = \"store1\"\nsettle = \"4s\"\n",
    )
    .unwrap();
    let m = h.mount(Some("store1"));
    std::fs::create_dir_all(m.dir.join("d")).unwrap();
    std::fs::write(m.dir.join("d/f.dat"), b"written here\n").unwrap();
    cairn_tests::write_file(&other, "d/f.dat", "archived elsewhere\n");
    h.cairn(&["node", "scan", "store2", "--register-new"]);
    wait_until(T, "the other file archived", || {
        a.has("store2", "d/f.dat") == Some(Has::Yes)
    });
    // Ours settles, meets the other at its path, and is kept under a name that says so.
    let ours = wait_for_conflict(&a);
    assert!(ours.starts_with("d/f.dat.conflict-h1-"), "{ours}");
    assert_eq!(a.has("store1", &ours), Some(Has::Yes));
    assert_eq!(std::fs::read(m.dir.join(&ours)).unwrap(), b"written here\n");
    assert_eq!(
        std::fs::read(m.dir.join("d/f.dat")).unwrap(),
        b"archived elsewhere\n"
    );
    assert_eq!(std::fs::read(root.join(&ours)).unwrap(), b"written here\n");
    assert!(
        !root.join("d/f.dat").exists(),
        "nothing stray under the other's name"
    );
    assert!(
        m.log().contains("archived meanwhile with other contents"),
        "{}",
        m.log()
    );
    // And `cairn file conflicts` lists it, with both md5s.
    let listed = h.cairn(&["file", "conflicts"]);
    let md5 = |b: &[u8]| cairn_catalog::md5::md5_hex(b);
    assert!(listed.contains(&ours), "{listed}");
    assert!(listed.contains(&md5(b"written here\n")), "{listed}");
    assert!(listed.contains(&md5(b"archived elsewhere\n")), "{listed}");
    let json: serde_json::Value =
        serde_json::from_str(&h.cairn(&["file", "conflicts", "--path", "d", "--json"])).unwrap();
    assert_eq!(json[0]["path"], "d/f.dat", "{json}");
    assert_eq!(json[0]["kept_as"], ours.as_str(), "{json}");
    assert_eq!(json[0]["host"], "h1", "{json}");
    assert_eq!(
        json[0]["archived"]["md5"],
        md5(b"archived elsewhere\n"),
        "{json}"
    );
    assert_eq!(
        h.cairn(&["file", "conflicts", "--path", "elsewhere"])
            .trim(),
        "No conflicts."
    );
}

/// The path of the one file kept aside as a conflict, once the catalog has it.
fn wait_for_conflict(a: &Archive) -> String {
    let mut found = None;
    wait_until(
        T,
        "the conflicting file archived under another name",
        || {
            let mut cat = a.catalog();
            found = cat
                .read(|tx| tx.files(&Default::default()))
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .find(|p| p.contains(".conflict-"));
            found.is_some()
        },
    );
    found.unwrap()
}

/// Another process holding a SQLite catalog's write lock (`BEGIN IMMEDIATE`) until dropped.
struct Locker(Child);

impl Locker {
    fn hold(db: &Path) -> Locker {
        let mut c = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n",
            )
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Locker(c)
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// A file made immutable (`chattr +i`: not even root may write it) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let ok = Command::new("chattr").arg("+i").arg(p).status().unwrap();
        assert!(ok.success(), "chattr +i {}", p.display());
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

// [S24]
#[test]
fn directories_made_while_the_catalog_is_locked_are_made_there_once_it_is_free() {
    if !fuse_available() || !on_sqlite() {
        return;
    }
    let a = Archive::new();
    let (h, root) = host(&a);
    let db = a.dir.path().join("catalog.db");
    let mut m = h.mount(Some("store1"));
    let lock = Locker::hold(&db);
    // `mkdir -p` and files inside, all while the catalog cannot take anything.
    std::fs::create_dir_all(m.dir.join("night/raw")).unwrap();
    let mut files = write_files(&m.dir, "night/raw", 0, 5);
    files.extend(write_files(&m.dir, "night", 1, 2));
    let listed: Vec<String> = std::fs::read_dir(m.dir.join("night"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(listed.contains(&"raw".to_owned()), "{listed:?}");
    for (rel, data) in &files {
        assert_eq!(std::fs::read(m.dir.join(rel)).unwrap(), *data, "{rel}");
    }
    // A restart while it is still locked shows them again.
    assert!(m.stop().success());
    let m = h.mount(Some("store1"));
    assert!(m.dir.join("night/raw").is_dir(), "{}", m.log());
    for (rel, data) in &files {
        assert_eq!(std::fs::read(m.dir.join(rel)).unwrap(), *data, "{rel}");
    }
    drop(lock);
    wait_registered(&a, &files, || m.log());
    let mut cat = a.catalog();
    let d = cat.read(|tx| tx.dir_by_path("night/raw")).unwrap();
    assert!(d.is_some(), "the directory is in the catalog");
    wait_until(T, "the directory made here is the catalog's", || {
        !m.log().is_empty()
            && m.log()
                .contains("night/raw made here is in the catalog now")
    });
    assert!(m.dir.join("night/raw").is_dir());
    nothing_stray(&a, &root, files.len());
}

/// A file written through the mount is, once archived, the archive's file on this host too:
/// the kernel is told the inode it was written under is gone, so the mount keeps nothing of
/// it (a mount that writes for months does not grow with every file), and `stat` gives the
/// inode number every host gives that file.
#[test]
fn a_written_file_once_archived_has_the_inode_every_host_gives_it() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = host(&a);
    let mut h2 = a.host("h2");
    h2.node("store2", &[]);
    h2.start();
    // Names kept long: the kernel would not ask again by itself during the test.
    let config = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        config + "[fs]\nttl = \"1h\"\nwrite_node = \"store1\"\n",
    )
    .unwrap();
    let m = h.mount(Some("store1"));
    std::fs::create_dir(m.path("obs")).unwrap();
    let mut written = Vec::new();
    for i in 0..20 {
        let rel = format!("obs/f{i:02}.dat");
        let data = format!("frame {i}\n");
        std::fs::write(m.path(&rel), &data).unwrap();
        let ino = std::fs::metadata(m.path(&rel)).unwrap().ino();
        written.push((rel, data, ino));
    }
    // Archived (the md5 waits for it).
    for (rel, data, _) in &written {
        assert_eq!(m.xattr(rel, "md5").unwrap(), md5_hex(data.as_bytes()));
    }
    let m2 = h2.mount(None);
    for (rel, data, ino) in &written {
        let theirs = std::fs::metadata(m2.path(rel)).unwrap().ino();
        assert_ne!(
            *ino, theirs,
            "{rel}: written under an inode of this mount's own"
        );
        wait_until(T, "the archived file's inode on the writing host", || {
            std::fs::metadata(m.path(rel)).unwrap().ino() == theirs
        });
        assert_eq!(std::fs::read_to_string(m.path(rel)).unwrap(), *data);
    }
}
