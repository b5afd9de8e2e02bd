//! cairnfs end to end: real mounts, real tools (cp, rsync, ls, find, stat, getfattr, setfattr,
//! python), real cairnd processes on several hosts sharing one catalog.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_catalog::md5::md5_file;
use cairn_catalog::model::Has;
use cairn_node::NodeRoot;
use cairn_tests::{Archive, fuse_available, wait_until, write_file};

const T: Duration = Duration::from_secs(40);

/// Runs a shell command, asserting success; returns stdout.
fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command expected to fail; returns stderr.
fn sh_fails(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(!out.status.success(), "{cmd} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn md5sum(p: &Path) -> String {
    md5_file(p).unwrap().1
}

// [S4] [S8]
#[test]
fn cp_r_imports_every_file_with_its_md5() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let mut h = a.host("h1");
    let root = h.node("store1", &[]);
    h.start();
    wait_until(T, "node initialised", || {
        NodeRoot::new(&root).marker().exists()
    });
    let m = h.mount(Some("store1"));
    let src = a.dir.path().join("src");
    write_file(&src, "2025/01/a.dat", "alpha\n");
    write_file(&src, "2025/01/b.dat", vec![7u8; 300_000]);
    write_file(&src, "2025/02/c.dat", "");
    // Large enough for whole-MiB writes (they go to the disk directly) and an odd tail.
    let big: Vec<u8> = (0..(5 << 20) + 123u32)
        .map(|i| (i * 13 + i / 4093) as u8)
        .collect();
    write_file(&src, "2025/02/d.dat", big);
    sh(&format!("cp -r {}/2025 {}", src.display(), m.dir.display()));
    for rel in [
        "2025/01/a.dat",
        "2025/01/b.dat",
        "2025/02/c.dat",
        "2025/02/d.dat",
    ] {
        wait_until(T, "imported", || a.has("store1", rel) == Some(Has::Yes));
        assert_eq!(
            m.xattr(rel, "md5").unwrap(),
            md5sum(&src.join(rel)),
            "{rel}"
        );
        assert_eq!(md5sum(&m.path(rel)), md5sum(&src.join(rel)));
        assert_eq!(md5sum(&root.join(rel)), md5sum(&src.join(rel)));
        assert_eq!(m.xattr(rel, "state").unwrap(), "local");
    }
    assert_eq!(a.on("store1").0, 4);
    // Once the kernel has forgotten the inodes it got while writing, the files are found
    // afresh, as archived files.
    drop_kernel_caches();
    for rel in ["2025/01/a.dat", "2025/02/d.dat"] {
        assert_eq!(md5sum(&m.path(rel)), md5sum(&src.join(rel)), "{rel}");
    }
    assert!(
        !NodeRoot::new(&root).staging().exists()
            || std::fs::read_dir(NodeRoot::new(&root).staging())
                .unwrap()
                .count()
                == 0,
        "nothing is left in staging"
    );
}

// [S8]
#[test]
fn a_file_written_through_mmap_is_imported_with_its_md5() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let m = h.mount(Some("store1"));
    // What numpy.memmap does to make a new file: size it, map it, store into the map.
    sh(&format!(
        "python3 -c 'import mmap, sys
with open(sys.argv[1], \"w+b\") as f:
    f.truncate(3 << 20)
    mm = mmap.mmap(f.fileno(), 3 << 20)
    mm[0:5] = b\"hello\"
    mm[(2 << 20) + 7:(2 << 20) + 12] = b\"world\"
    mm.flush()
    mm.close()' {}",
        m.path("mapped.dat").display()
    ));
    let mut want = vec![0u8; 3 << 20];
    want[0..5].copy_from_slice(b"hello");
    want[(2 << 20) + 7..(2 << 20) + 12].copy_from_slice(b"world");
    wait_until(T, "imported", || {
        a.has("store1", "mapped.dat") == Some(Has::Yes)
    });
    assert_eq!(
        m.xattr("mapped.dat", "md5").unwrap(),
        cairn_catalog::md5::md5_hex(&want)
    );
    assert!(std::fs::read(m.path("mapped.dat")).unwrap() == want);
}

/// One host with node `store1` (its write node), cairnd running, and its mount.
fn one_host(a: &Archive, daemon_extra: &str) -> (cairn_tests::TestHost, std::path::PathBuf) {
    let mut h = a.host_with("h1", daemon_extra);
    let root = h.node("store1", &[]);
    h.start();
    wait_until(T, "node initialised", || {
        NodeRoot::new(&root).marker().exists()
    });
    (h, root)
}

/// Two hosts, `h1` with node `store1` and `h2` with `store2`, started, each with a mount whose
/// write node is its own node. `h2_cache` is added to h2's `[cache]` section (the last of its
/// configuration). Returns the hosts, their node roots and their mounts.
fn two_hosts(
    a: &Archive,
    h2_cache: &str,
) -> (
    [cairn_tests::TestHost; 2],
    [std::path::PathBuf; 2],
    [cairn_tests::Mount; 2],
) {
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    let r1 = h1.node("store1", &[]);
    let r2 = h2.node("store2", &[]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&h2.config)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{h2_cache}\n").as_bytes()))
        .unwrap();
    h1.start();
    h2.start();
    wait_until(T, "nodes initialised", || {
        NodeRoot::new(&r1).marker().exists() && NodeRoot::new(&r2).marker().exists()
    });
    let m1 = h1.mount(Some("store1"));
    let m2 = h2.mount(Some("store2"));
    ([h1, h2], [r1, r2], [m1, m2])
}

/// Archives `files` (path, content) through `m1`: written into a tree of their own, copied in
/// with `cp -r` under `top`, imported on `m1`'s host and listed by `m2`.
fn archive_through(
    a: &Archive,
    [m1, m2]: [&cairn_tests::Mount; 2],
    top: &str,
    files: &[(String, String)],
) {
    let src = a.dir.path().join("src");
    for (rel, data) in files {
        write_file(&src, &format!("{top}/{rel}"), data);
    }
    let before = a.on("store1").0;
    sh(&format!(
        "cp -r {} {}",
        src.join(top).display(),
        m1.dir.display()
    ));
    wait_until(T, "imported on h1", || {
        a.on("store1").0 == before + files.len() as u64
    });
    wait_until(T, "listed on h2", || {
        files
            .iter()
            .all(|(rel, _)| m2.path(&format!("{top}/{rel}")).exists())
    });
}

fn mtime(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().mtime()
}

// [S8] [S11]
#[test]
fn rsync_a_and_cp_a_import_each_file_once_with_the_source_mtimes() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let m = h.mount(Some("store1"));
    let src = a.dir.path().join("src");
    for i in 0..20 {
        write_file(&src, &format!("d{}/f{i}.dat", i % 3), format!("file {i}\n"));
    }
    sh(&format!(
        "find {} -type f -exec touch -d '2024-03-01 12:00:00' {{}} +",
        src.display()
    ));
    sh(&format!(
        "rsync -a {}/ {}/viarsync/",
        src.display(),
        m.dir.display()
    ));
    sh(&format!(
        "cp -a {} {}/viacp",
        src.display(),
        m.dir.display()
    ));
    let mut cat = a.catalog();
    wait_until(T, "40 files imported", || a.on("store1").0 == 40);
    let files = cat
        .read(|tx| tx.files(&cairn_catalog::catalog::FileFilter::default()))
        .unwrap();
    assert_eq!(files.len(), 40, "each file once, and no temporary file");
    for f in &files {
        assert!(!f.name.starts_with('.'), "{} was imported", f.path);
        let rel = f.path.split_once('/').unwrap().1;
        assert_eq!(f.mtime, mtime(&src.join(rel)), "{}", f.path);
        assert_eq!(mtime(&m.path(&f.path)), f.mtime);
        assert_eq!(f.md5, md5sum(&src.join(rel)));
    }
    // rsync again: nothing changes and nothing is written.
    sh(&format!(
        "rsync -a {}/ {}/viarsync/",
        src.display(),
        m.dir.display()
    ));
    assert_eq!(a.on("store1").0, 40);
    assert!(m.log().matches("Imported").count() == 40, "{}", m.log());
    drop(root);
}

// [S1]
#[test]
fn ls_find_du_and_stat_agree_with_the_catalog() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    for i in 0..30 {
        write_file(
            &root,
            &format!("2025/0{}/x{i}.dat", i % 4),
            vec![b'x'; i * 100],
        );
    }
    h.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    let m = h.mount(None);
    let found = sh(&format!("cd {} && find . -type f | sort", m.dir.display()));
    let mut cat = a.catalog();
    let mut want: Vec<String> = cat
        .read(|tx| tx.files(&cairn_catalog::catalog::FileFilter::default()))
        .unwrap()
        .iter()
        .map(|f| format!("./{}", f.path))
        .collect();
    want.sort();
    assert_eq!(found.lines().collect::<Vec<_>>(), want);
    let du = sh(&format!(
        "du -sb --apparent-size {} | cut -f1",
        m.dir.display()
    ));
    let bytes: u64 = (0..30).map(|i| i * 100).sum();
    // du counts directories too (size 0 here).
    assert_eq!(du.trim().parse::<u64>().unwrap(), bytes);
    let st = sh(&format!(
        "stat -c '%s %a %F' {}",
        m.path("2025/01/x5.dat").display()
    ));
    assert_eq!(st.trim(), "500 444 regular file");
    let st = sh(&format!("stat -c '%a %F' {}", m.path("2025/01").display()));
    assert_eq!(st.trim(), "755 directory");
    let ls = sh(&format!("ls -lR {}", m.dir.display()));
    assert_eq!(ls.matches(".dat").count(), 30, "{ls}");
    assert!(ls.contains("-r--r--r--"), "{ls}");
}

// [S1] [S11]
#[test]
fn a_large_directory_lists_whole_with_the_right_attributes() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    // Long names, so the listing takes many readdir replies.
    let name = |i: usize| format!("observation-{i:05}-detector-channel-a-calibrated.dat");
    for i in 0..1500 {
        write_file(&root, &format!("big/{}", name(i)), vec![b'x'; i % 97]);
    }
    for d in ["sub0", "sub1", "sub2"] {
        write_file(&root, &format!("big/{d}/inner.dat"), "inner\n");
    }
    h.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    let m = h.mount(None);
    let mut want: Vec<String> = (0..1500)
        .map(|i| format!("{} {}", name(i), i % 97))
        .collect();
    want.extend(["sub0 dir", "sub1 dir", "sub2 dir"].map(String::from));
    want.sort();
    // Names only first (`find` reads them without attributes), then with them: cold, then
    // warm from the kernel's cache.
    let found = sh(&format!("find {} | wc -l", m.path("big").display()));
    assert_eq!(found.trim(), (1 + 1500 + 3 + 3).to_string());
    for pass in ["cold", "warm"] {
        let listed = sh(&format!(
            "python3 -c 'import os, sys
for e in os.scandir(sys.argv[1]):
    print(e.name, \"dir\" if e.is_dir() else e.stat().st_size)' {}",
            m.path("big").display()
        ));
        let mut got: Vec<&str> = listed.lines().collect();
        got.sort();
        assert_eq!(got, want, "{pass}");
        // Each entry's inode number in the listing (d_ino, also for an entry given without
        // attributes) is the one `stat` gives.
        let inos = sh(&format!(
            "python3 -c 'import os, sys
print(sum(1 for e in os.scandir(sys.argv[1]) if e.inode() != os.stat(e.path).st_ino or not e.inode()))' {}",
            m.path("big").display()
        ));
        assert_eq!(
            inos.trim(),
            "0",
            "{pass}: entries with a wrong inode number"
        );
        let ls = sh(&format!("ls -la {}", m.path("big").display()));
        let lines: Vec<&str> = ls.lines().skip(1).collect();
        assert_eq!(lines.len(), 2 + 3 + 1500, "{pass}: {ls}");
        assert!(
            lines[0].ends_with(" .") && lines[1].ends_with(" .."),
            "{ls}"
        );
        for l in &lines[2..] {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (size, n) = (f[4], f[8]);
            match n.strip_prefix("observation-") {
                Some(rest) => {
                    let i: usize = rest[..5].parse().unwrap();
                    assert_eq!(size, (i % 97).to_string(), "{pass}: {l}");
                    assert!(l.starts_with("-r--r--r--"), "{l}");
                }
                None => assert!(l.starts_with("drwxr-xr-x"), "{l}"),
            }
        }
        drop_kernel_caches();
    }
    // A directory's mode set through the mount shows when it is looked up afresh, though
    // its parent was listed before.
    sh(&format!("ls {} >/dev/null", m.path("big").display()));
    sh(&format!("chmod 700 {}", m.path("big/sub0").display()));
    drop_kernel_caches();
    let mode = sh(&format!("stat -c %a {}", m.path("big/sub0").display()));
    assert_eq!(mode.trim(), "700");
}

/// Makes the kernel forget dentries and inodes (as root; otherwise a no-op).
fn drop_kernel_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

// [S10] [S12]
#[test]
fn archived_files_cannot_be_removed_renamed_or_overwritten() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let m = h.mount(Some("store1"));
    std::fs::create_dir(m.path("2025")).unwrap();
    std::fs::write(m.path("2025/keep.dat"), "precious\n").unwrap();
    wait_until(T, "imported", || {
        a.has("store1", "2025/keep.dat") == Some(Has::Yes)
    });
    let p = m.path("2025/keep.dat");
    for (cmd, what) in [
        (format!("rm -f {}", p.display()), "rm"),
        (
            format!("mv {} {}/moved.dat", p.display(), m.path("2025").display()),
            "mv",
        ),
        (format!("echo overwritten > {}", p.display()), ">"),
        (format!("echo more >> {}", p.display()), ">>"),
        (format!("truncate -s 0 {}", p.display()), "truncate"),
    ] {
        let err = sh_fails(&cmd);
        assert!(err.contains("Operation not permitted"), "{what}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "precious\n");
    assert_eq!(
        std::fs::read_to_string(root.join("2025/keep.dat")).unwrap(),
        "precious\n"
    );
    assert_eq!(a.on("store1").0, 1);
    assert!(!m.path("2025/moved.dat").exists());
    // A directory with an archived file stays; an empty one can go.
    assert!(sh_fails(&format!("rmdir {}", m.path("2025").display())).contains("not empty"));
    std::fs::create_dir(m.path("2025/empty")).unwrap();
    std::fs::remove_dir(m.path("2025/empty")).unwrap();
    assert!(!m.path("2025/empty").exists());
}

// [S9] [S11]
#[test]
fn dot_files_stay_local_until_renamed_then_import_once() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let mut m = h.mount(Some("store1"));
    std::fs::create_dir(m.path("run")).unwrap();
    std::fs::write(m.path("run/.part.tmp"), "half of it\n").unwrap();
    // Visible here, kept on the write node out of the archive's tree, not in the catalog.
    assert!(sh(&format!("ls -a {}", m.path("run").display())).contains(".part.tmp"));
    assert_eq!(
        std::fs::read_to_string(NodeRoot::new(&root).kept().join("run/.part.tmp")).unwrap(),
        "half of it\n"
    );
    assert!(!root.join("run/.part.tmp").exists());
    assert_eq!(m.xattr("run/.part.tmp", "state").unwrap(), "unimported");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.on("store1").0, 0);
    // The next mount on this host shows it again.
    m.stop();
    let m = h.mount(Some("store1"));
    assert_eq!(
        std::fs::read_to_string(m.path("run/.part.tmp")).unwrap(),
        "half of it\n"
    );
    assert!(sh(&format!("ls -a {}", m.path("run").display())).contains(".part.tmp"));
    sh(&format!("chmod 600 {}", m.path("run/.part.tmp").display()));
    assert_eq!(
        sh(&format!("stat -c %a {}", m.path("run/.part.tmp").display())).trim(),
        "600"
    );
    // Appending works while it is local; the rename imports it.
    sh(&format!(
        "echo 'and the rest' >> {}",
        m.path("run/.part.tmp").display()
    ));
    std::fs::rename(m.path("run/.part.tmp"), m.path("run/final.dat")).unwrap();
    wait_until(T, "imported", || {
        a.has("store1", "run/final.dat") == Some(Has::Yes)
    });
    assert_eq!(
        std::fs::read_to_string(m.path("run/final.dat")).unwrap(),
        "half of it\nand the rest\n"
    );
    assert_eq!(
        m.xattr("run/final.dat", "md5").unwrap(),
        cairn_catalog::md5::md5_hex(b"half of it\nand the rest\n")
    );
    assert!(!NodeRoot::new(&root).kept().join("run/.part.tmp").exists());
    assert_eq!(a.on("store1").0, 1);
}

// [S9]
#[test]
fn a_dot_file_renamed_while_open_is_kept_under_its_new_name() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let mut m = h.mount(Some("store1"));
    std::fs::create_dir(m.path("run")).unwrap();
    // Renamed before its writer closes it (and so before the kernel's release of it).
    sh(&format!(
        "python3 -c \"
import os
f = open('{a}', 'w'); f.write('kept\\n'); f.flush()
os.rename('{a}', '{b}')
f.close()\"",
        a = m.path("run/.a.tmp").display(),
        b = m.path("run/.b.tmp").display()
    ));
    let kept = NodeRoot::new(&root).kept();
    wait_until(T, "kept under its new name", || {
        std::fs::read_to_string(kept.join("run/.b.tmp")).is_ok_and(|s| s == "kept\n")
    });
    assert!(!kept.join("run/.a.tmp").exists());
    // The next mount shows it under that name, and only that one.
    m.stop();
    let m = h.mount(Some("store1"));
    assert_eq!(
        std::fs::read_to_string(m.path("run/.b.tmp")).unwrap(),
        "kept\n"
    );
    let ls = sh(&format!("ls -a {}", m.path("run").display()));
    assert!(!ls.contains(".a.tmp"), "{ls}");
    assert_eq!(a.on("store1").0, 0);
}

// [S9] [S12]
#[test]
fn directories_starting_with_a_dot_are_archived_like_any_other() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let m = h.mount(Some("store1"));
    let src = a.dir.path().join("src");
    write_file(&src, "t/.calib/sub/a.dat", "alpha\n");
    write_file(&src, "t/b.dat", "beta\n");
    write_file(&src, "t/.calib/.part", "not yet\n");
    // Only a file's own name keeps it out of the archive, as in cairnd's import of a node:
    // `cp -r` and `rsync -a` of a tree with hidden directories succeed.
    sh(&format!(
        "cp -r {} {}",
        src.join("t").display(),
        m.dir.display()
    ));
    sh(&format!(
        "rsync -a {}/ {}/",
        src.join("t").display(),
        m.path("r").display()
    ));
    for top in ["t", "r"] {
        for rel in [".calib/sub/a.dat", "b.dat"] {
            let path = format!("{top}/{rel}");
            wait_until(T, "imported", || a.has("store1", &path) == Some(Has::Yes));
            assert_eq!(
                std::fs::read(root.join(&path)).unwrap(),
                std::fs::read(src.join("t").join(rel)).unwrap(),
                "{path}"
            );
            assert_eq!(m.xattr(&path, "state").unwrap(), "local", "{path}");
        }
        let part = format!("{top}/.calib/.part");
        assert_eq!(m.xattr(&part, "state").unwrap(), "unimported");
        assert_eq!(std::fs::read_to_string(m.path(&part)).unwrap(), "not yet\n");
        // Kept on the write node under its name (rsync's temporary name is renamed there
        // once the kernel's release of it, which comes after `close`, reaches the mount).
        let kept = NodeRoot::new(&root).kept().join(&part);
        wait_until(T, "kept under its name", || {
            std::fs::read_to_string(&kept).is_ok_and(|s| s == "not yet\n")
        });
    }
    assert_eq!(a.on("store1").0, 4);
    // The node's own area is the one name a directory at the top cannot have.
    let err = sh_fails(&format!("mkdir {}", m.path(".cairn").display()));
    assert!(err.contains("Invalid argument"), "{err}");
    sh(&format!("mkdir {}", m.path("t/.cairn").display()));
}

// [S13]
#[test]
fn a_writer_killed_mid_file_imports_nothing() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let m = h.mount(Some("store1"));
    let target = m.path("killed.dat");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec dd if=/dev/zero of={} bs=64k count=1000000 2>/dev/null",
            target.display()
        ))
        .spawn()
        .unwrap();
    wait_until(T, "the writer under way", || {
        std::fs::metadata(&target).is_ok_and(|md| md.len() > 1 << 20)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(T, "the partial file discarded", || !target.exists());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.on("store1").0, 0);
    assert!(!root.join("killed.dat").exists());
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&root).staging())
            .unwrap()
            .count(),
        0,
        "the staged bytes are gone"
    );
    assert!(m.log().contains("was killed"), "{}", m.log());
}

// [S13]
#[test]
fn a_write_that_fails_on_a_full_write_node_imports_nothing() {
    if !fuse_available() || !cairn_tests::can_mount_loop_disks() {
        return;
    }
    let a = Archive::new();
    let mut h = a.host("h1");
    // The write node is a 24 MiB disk.
    let mut disk = cairn_tests::LoopDisk::new(a.dir.path(), "small", 24).expect("mkfs.ext4");
    let root = h.root("store1");
    disk.mount(&root);
    h.node("store1", &[]);
    h.start();
    wait_until(T, "node initialised", || {
        NodeRoot::new(&root).marker().exists()
    });
    let m = h.mount(Some("store1"));
    let err = sh_fails(&format!(
        "dd if=/dev/urandom of={} bs=1M count=40 status=none",
        m.path("too-big.dat").display()
    ));
    assert!(err.contains("No space left on device"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.has("store1", "too-big.dat"), None, "nothing imported");
    assert!(!m.path("too-big.dat").exists());
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&root).staging())
            .unwrap()
            .count(),
        0,
        "the staged bytes are gone"
    );
    assert!(m.log().contains("No space left"), "{}", m.log());
    // With the space back, the next file goes in.
    std::fs::write(m.path("fits.dat"), "small\n").unwrap();
    wait_until(T, "imported", || {
        a.has("store1", "fits.dat") == Some(Has::Yes)
    });
    drop(m);
    drop(h);
    disk.umount();
}

// [S13]
#[test]
fn a_mount_killed_mid_write_leaves_nothing_imported_and_is_tidied() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let mut m = h.mount(Some("store1"));
    let mut f = std::fs::File::create(m.path("half.dat")).unwrap();
    std::io::Write::write_all(&mut f, &[1u8; 100_000]).unwrap();
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&root).staging())
            .unwrap()
            .count(),
        1
    );
    m.kill9();
    drop(f);
    assert_eq!(a.on("store1").0, 0);
    let m = h.mount(Some("store1"));
    assert_eq!(
        std::fs::read_dir(NodeRoot::new(&root).staging())
            .unwrap()
            .count(),
        0,
        "a new mount tidies what the dead one left"
    );
    assert!(!m.path("half.dat").exists());
    assert_eq!(a.on("store1").0, 0);
}

// [S7]
#[test]
fn a_mount_without_a_write_node_is_read_only() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let m = h.mount(None);
    let err = sh_fails(&format!("touch {}", m.path("new.dat").display()));
    assert!(err.contains("Read-only file system"), "{err}");
    let err = sh_fails(&format!("mkdir {}", m.path("newdir").display()));
    assert!(err.contains("Read-only file system"), "{err}");
}

// [S15] [S16] [S17]
#[test]
fn xattrs_sync_clean_and_refuse_bad_values() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let mut h = a.host_with("h1", "min_archive_copies = 1");
    let root = h.node("store1", &[]);
    let r2 = h.node("store2", &["--archive"]);
    h.start();
    wait_until(T, "nodes initialised", || {
        NodeRoot::new(&root).marker().exists() && NodeRoot::new(&r2).marker().exists()
    });
    let m = h.mount(Some("store1"));
    std::fs::create_dir_all(m.path("obs/night1")).unwrap();
    std::fs::write(m.path("obs/night1/a.dat"), "a\n").unwrap();
    std::fs::write(m.path("obs/night1/b.dat"), "b\n").unwrap();
    wait_until(T, "imported", || a.on("store1").0 == 2);
    let names = sh(&format!(
        "getfattr --absolute-names -d -m - {}",
        m.path("obs/night1/a.dat").display()
    ));
    for n in ["md5", "size", "state", "copies", "requests"] {
        assert!(names.contains(&format!("user.cairn.{n}")), "{names}");
    }
    assert_eq!(m.xattr("obs/night1/a.dat", "size").unwrap(), "2");
    assert_eq!(m.xattr("obs/night1/a.dat", "copies").unwrap(), "store1=yes");

    // Bad values: EINVAL, nothing changes.
    let err = m
        .set_xattr("obs/night1/a.dat", "sync", "no_such_group")
        .unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");
    let err = m
        .set_xattr("obs/night1/a.dat", "clean", "store1 later please")
        .unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");
    let err = m
        .set_xattr("obs/night1/a.dat", "verify", "nowhere")
        .unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");
    let err = m
        .set_xattr("obs/night1/a.dat", "frobnicate", "x")
        .unwrap_err();
    assert!(err.contains("not supported"), "{err}");
    let err = m.set_xattr("obs/night1/a.dat", "md5", "0").unwrap_err();
    assert!(err.contains("not permitted"), "{err}");
    assert_eq!(a.on("store2").0, 0);
    // The mount keeps no security labels or ACLs, and says so (`ls -l` then stops asking);
    // an unknown user attribute is merely absent.
    let file = m.path("obs/night1/a.dat");
    for name in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        let err = sh_fails(&format!("getfattr -n {name} {}", file.display()));
        assert!(err.contains("Operation not supported"), "{name}: {err}");
    }
    let err = sh_fails(&format!("getfattr -n user.other {}", file.display()));
    assert!(err.contains("No such attribute"), "{err}");

    // sync on the directory applies to every file below it.
    m.set_xattr("obs", "sync", "store2").unwrap();
    wait_until(T, "synced", || a.on("store2").0 == 2);
    assert_eq!(
        m.xattr("obs/night1/a.dat", "copies").unwrap(),
        "store1=yes store2=yes"
    );

    // Releasing the only archive copy is refused by the archive rule; the field copy goes.
    m.set_xattr("obs/night1/a.dat", "clean", "store2 now")
        .unwrap();
    m.set_xattr("obs/night1/b.dat", "clean", "store1 now")
        .unwrap();
    wait_until(T, "field copy released", || {
        a.has("store1", "obs/night1/b.dat") == Some(Has::No)
    });
    assert!(!root.join("obs/night1/b.dat").exists());
    wait_until(T, "refusal logged", || {
        h.log().contains("too few archive copies")
    });
    assert_eq!(a.has("store2", "obs/night1/a.dat"), Some(Has::Yes));
    // Still readable: from the archive node of this host.
    assert_eq!(
        std::fs::read_to_string(m.path("obs/night1/b.dat")).unwrap(),
        "b\n"
    );
    m.set_xattr("obs/night1/a.dat", "verify", "store2").unwrap();
}

// [S3] [S5] [S6] [S15]
#[test]
fn remote_files_are_read_through_the_cache_on_another_host() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let ([mut h1, h2], [_r1, r2], [m1, m2]) = two_hosts(&a, "");
    // Written on host 1, listed and read on host 2.
    std::fs::create_dir(m1.path("data")).unwrap();
    std::fs::write(m1.path("data/small.txt"), "hello from h1\n").unwrap();
    let big = a.dir.path().join("big.bin");
    cairn_tests::big_file(&big, 48);
    sh(&format!(
        "cp {} {}",
        big.display(),
        m1.path("data/big.bin").display()
    ));
    wait_until(T, "imported on h1", || a.on("store1").0 == 2);
    wait_until(T, "listed on h2", || m2.path("data/big.bin").exists());
    assert_eq!(m2.xattr("data/big.bin", "state").unwrap(), "remote");
    assert_eq!(
        std::fs::read_to_string(m2.path("data/small.txt")).unwrap(),
        "hello from h1\n"
    );
    // Python reading with seeks, while the file streams in.
    let py = sh(&format!(
        "python3 -c \"
import hashlib
f = open('{}', 'rb')
f.seek(40 << 20); tail = f.read(4096)
f.seek(0); head = f.read(100)
f.seek(0); h = hashlib.md5(f.read()).hexdigest()
print(len(tail), len(head), h)\"",
        m2.path("data/big.bin").display()
    ));
    assert_eq!(py.trim(), format!("4096 100 {}", md5sum(&big)));
    assert_eq!(md5sum(&m2.path("data/big.bin")), md5sum(&big));
    assert_eq!(m2.xattr("data/big.bin", "state").unwrap(), "cached");
    assert!(
        h2.dir.join("cache").join(md5sum(&big)).exists(),
        "the cache keeps the checked file by md5"
    );
    assert_eq!(a.on("store2").0, 0, "reading does not make an archive copy");

    // No reachable source: EIO, and a log line saying why.
    std::fs::write(m1.path("data/late.txt"), "late\n").unwrap();
    wait_until(T, "imported", || {
        a.has("store1", "data/late.txt") == Some(Has::Yes)
    });
    h1.stop();
    let err = sh_fails(&format!("cat {}", m2.path("data/late.txt").display()));
    assert!(err.contains("Input/output error"), "{err}");
    assert!(m2.log().contains("data/late.txt"), "{}", m2.log());
    drop(r2);
}

// [S5]
#[test]
fn small_remote_files_read_one_after_another_all_arrive() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let ([_h1, h2], [_r1, r2], [m1, m2]) = two_hosts(&a, "");
    let n = 750;
    let body = |d: &str, i: usize| format!("small file {d}{i}\n").repeat(1 + i % 300);
    let files: Vec<(String, String)> = ["a", "b"]
        .iter()
        .flat_map(|d| (0..n).map(move |i| (format!("{d}/f{i:04}.txt"), body(d, i))))
        .collect();
    archive_through(&a, [&m1, &m2], "many", &files);
    // Each open fetches its file (the two directories in turn: no directory is read file
    // after file, so nothing is fetched ahead), which arrives, passes its check and takes
    // its name in the cache within a millisecond or so: no open may miss it.
    for i in 0..n {
        for d in ["a", "b"] {
            let rel = format!("many/{d}/f{i:04}.txt");
            let got = std::fs::read_to_string(m2.path(&rel))
                .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m2.log()));
            assert_eq!(got, body(d, i), "{rel}");
        }
    }
    assert!(!h2.log().contains("Fetched ahead"), "{}", h2.log());
    drop(r2);
}

// [S5]
#[test]
fn a_directorys_small_remote_files_read_in_turn_are_fetched_ahead_in_batches() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let ([_h1, h2], [r1, r2], [m1, m2]) = two_hosts(&a, "");
    let n = 300;
    let body = |i: usize| format!("frame {i}\n").repeat(1 + i % 50);
    let files: Vec<(String, String)> = (0..n).map(|i| (format!("f{i:03}.txt"), body(i))).collect();
    archive_through(&a, [&m1, &m2], "frames", &files);
    // One copy on h1 has other bytes than the catalog says: it is not fetched ahead.
    let bad = "frames/f150.txt";
    std::fs::write(r1.join(bad), body(150).replace("frame", "FRAME")).unwrap();
    let cache = h2.dir.join("cache");
    let md5 = |i: usize| cairn_catalog::md5::md5_hex(body(i).as_bytes());
    // Two files read in turn: the rest of the directory follows without being opened.
    for i in 0..2 {
        let rel = format!("frames/f{i:03}.txt");
        assert_eq!(std::fs::read_to_string(m2.path(&rel)).unwrap(), body(i));
    }
    wait_until(T, "the others fetched ahead", || {
        (2..n)
            .filter(|&i| i != 150)
            .all(|i| cache.join(md5(i)).exists())
    });
    assert!(
        !cache.join(md5(150)).exists(),
        "wrong bytes never take a name"
    );
    assert!(h2.log().contains("Fetched ahead"), "{}", h2.log());
    for i in 0..n {
        let rel = format!("frames/f{i:03}.txt");
        if i == 150 {
            let err = sh_fails(&format!("cat {}", m2.path(&rel).display()));
            assert!(err.contains("Input/output error"), "{err}");
            continue;
        }
        assert_eq!(
            std::fs::read_to_string(m2.path(&rel)).unwrap(),
            body(i),
            "{rel}"
        );
    }
    assert_eq!(a.has("store1", bad), Some(Has::Suspect));
    assert_eq!(a.on("store2").0, 0, "reading does not make an archive copy");
    drop(r2);
}

// [S5]
#[test]
fn the_cache_stays_within_max_bytes_and_keeps_files_that_are_open() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let max = 64 << 10;
    let ([_h1, h2], [_r1, r2], [m1, m2]) = two_hosts(&a, "max_bytes = \"64KiB\"");
    let n = 48;
    let body = |i: usize| format!("{i:04} ").repeat(4096 / 5 + 1)[..4096].to_owned();
    let files: Vec<(String, String)> = (0..n).map(|i| (format!("f{i:02}.dat"), body(i))).collect();
    archive_through(&a, [&m1, &m2], "c", &files);
    let cache = h2.dir.join("cache");
    let cached = || -> Vec<(String, u64)> {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len()))
                    })
                    .filter(|(name, _)| !name.ends_with(".part"))
                    .collect()
            })
            .unwrap_or_default()
    };
    // One file stays open while the others are read, each once: 12 times what the cache may
    // hold.
    let mut held = std::fs::File::open(m2.path("c/f00.dat")).unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut held, &mut got).unwrap();
    assert_eq!(got, body(0));
    let held_md5 = cairn_catalog::md5::md5_hex(body(0).as_bytes());
    for i in 1..n {
        let rel = format!("c/f{i:02}.dat");
        assert_eq!(
            std::fs::read_to_string(m2.path(&rel)).unwrap(),
            body(i),
            "{rel}"
        );
        let now = cached();
        let total: u64 = now.iter().map(|(_, len)| len).sum();
        assert!(
            total <= max,
            "after {rel}: {total} bytes in the cache: {now:?}"
        );
        assert!(
            now.iter().any(|(name, _)| *name == held_md5),
            "after {rel}: the open file was evicted"
        );
    }
    assert!(cached().len() < n / 2, "{:?}", cached());
    drop(r2);
}

// [S6]
#[test]
fn a_remote_copy_with_wrong_bytes_fails_with_eio_not_wrong_data() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    let r1 = h1.node("store1", &[]);
    h2.node("store2", &[]);
    h1.start();
    h2.start();
    wait_until(T, "node initialised", || {
        NodeRoot::new(&r1).marker().exists()
    });
    write_file(&r1, "x/rot.dat", vec![b'a'; 100_000]);
    h1.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    // Bit rot on host 1's disk after import: same size, other bytes.
    std::fs::write(r1.join("x/rot.dat"), vec![b'b'; 100_000]).unwrap();
    let m2 = h2.mount(None);
    let err = sh_fails(&format!("md5sum {}", m2.path("x/rot.dat").display()));
    assert!(err.contains("Input/output error"), "{err}");
    assert_eq!(
        a.has("store1", "x/rot.dat"),
        Some(Has::Suspect),
        "h2's cairnd:\n{}\nthe mount:\n{}",
        h2.log(),
        m2.log()
    );
    assert!(
        h2.log().contains("does not match the catalog"),
        "{}",
        h2.log()
    );
}

// [S18]
#[test]
fn acquisition_directories_tell_whether_they_are_complete() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    write_file(&root, "2025/03/04/a.dat", "a");
    write_file(&root, "2025/03/04/b.dat", "b");
    h.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    let m = h.mount(None);
    assert_eq!(m.xattr("2025/03/04", "complete").unwrap(), "open");
    assert!(
        m.xattr("2025/03", "complete").is_err(),
        "not an acquisition"
    );
    h.cairn(&["acq", "close", "2025/03/04"]);
    wait_until(T, "complete", || {
        m.xattr("2025/03/04", "complete").as_deref() == Ok("store1=yes")
    });
}

// [S19]
#[test]
fn statfs_reports_the_capacity_of_this_hosts_nodes() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    let m = h.mount(None);
    let size = |p: &Path| sh(&format!("df -B1 --output=size {} | tail -1", p.display()));
    assert_eq!(size(&m.dir).trim(), size(&root).trim());
}

// [S20]
#[test]
fn sigterm_unmounts_cleanly_and_a_busy_mountpoint_is_refused() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let mut m = h.mount(None);
    let out = Command::new(cairn_tests::bin("cairnfs"))
        .arg(&m.dir)
        .arg("--config")
        .arg(&h.config)
        .arg("-f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already mounted"), "{err}");
    let status = m.stop();
    assert!(status.success(), "{status}");
    assert!(!cairn_tests::is_mounted(&m.dir));
}

// [S2]
#[test]
fn inode_numbers_survive_a_remount() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    write_file(&root, "a/b/c.dat", "c");
    h.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    let inodes = |m: &cairn_tests::Mount| {
        sh(&format!(
            "stat -c %i {} {}",
            m.path("a/b").display(),
            m.path("a/b/c.dat").display()
        ))
    };
    let mut m = h.mount(None);
    let first = inodes(&m);
    m.stop();
    let m = h.mount(None);
    assert_eq!(inodes(&m), first);
}

// [S14]
#[test]
fn links_and_device_files_cannot_be_made() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let m = h.mount(Some("store1"));
    std::fs::write(m.path("f.dat"), "f").unwrap();
    wait_until(T, "imported", || a.has("store1", "f.dat") == Some(Has::Yes));
    for cmd in [
        format!("ln -s f.dat {}", m.path("sym").display()),
        format!(
            "ln {} {}",
            m.path("f.dat").display(),
            m.path("hard").display()
        ),
        format!("mkfifo {}", m.path("fifo").display()),
    ] {
        sh_fails(&cmd);
    }
    assert_eq!(sh(&format!("ls {}", m.dir.display())).trim(), "f.dat");
}

// [S20]
#[test]
fn fusermount_u_unmounts_and_cairnfs_exits_0() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let mut m = h.mount(None);
    sh(&format!("fusermount3 -u {}", m.dir.display()));
    wait_until(T, "unmounted", || !cairn_tests::is_mounted(&m.dir));
    assert!(m.stop_waiting().success(), "{}", m.log());
}

// [S21] [S8]
#[test]
fn fsync_succeeds_and_autosync_fires_at_close() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let mut h = a.host("h1");
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        cfg.replace("interval = \"1s\"", "interval = \"60s\""),
    )
    .unwrap();
    let root = h.node("store1", &[]);
    let r2 = h.node("store2", &[]);
    h.cairn(&["group", "autosync", "store2", "store1"]);
    h.start();
    wait_until(T, "nodes initialised", || {
        NodeRoot::new(&root).marker().exists() && NodeRoot::new(&r2).marker().exists()
    });
    let m = h.mount(Some("store1"));
    sh(&format!(
        "python3 -c \"
import os
f = open('{}', 'wb'); f.write(b'synced'); f.flush(); os.fsync(f.fileno()); f.close()\"",
        m.path("s.dat").display()
    ));
    // The daemon loop is a minute: only the mount's nudge gets this copied in time.
    wait_until(Duration::from_secs(20), "auto-synced", || {
        a.has("store2", "s.dat") == Some(Has::Yes)
    });
    assert_eq!(std::fs::read_to_string(r2.join("s.dat")).unwrap(), "synced");
}

/// Two hosts, both running: h1 holds `slow/NAME` of each (NAME, MiB) in `big` and
/// `other/small.txt` (6 bytes), registered; h2 pulls from others at `rate`. Returns h1, h2 and
/// h1's node root.
fn slow_pair(
    a: &Archive,
    rate: &str,
    big: &[(&str, usize)],
) -> (
    cairn_tests::TestHost,
    cairn_tests::TestHost,
    std::path::PathBuf,
) {
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    h2.limit_pulls(rate);
    let r1 = h1.node("store1", &[]);
    h2.node("store2", &[]);
    h1.start();
    h2.start();
    wait_until(T, "node initialised", || {
        NodeRoot::new(&r1).marker().exists()
    });
    for (name, mib) in big {
        cairn_tests::big_file(&r1.join("slow").join(name), *mib);
    }
    write_file(&r1, "other/small.txt", "small\n");
    h1.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    (h1, h2, r1)
}

#[test]
fn a_slow_remote_read_does_not_hold_up_other_operations() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    // Host 2 pulls at 2 MiB/s: a 12 MiB file takes seconds.
    let (_h1, h2, r1) = slow_pair(&a, "2MiB", &[("big.bin", 12)]);
    let m2 = h2.mount(None);
    let mut reader = Command::new("md5sum")
        .arg(m2.path("slow/big.bin"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(T, "the fetch under way", || {
        h2.log().contains("Pulling") || {
            std::fs::read_dir(h2.dir.join("cache")).is_ok_and(|d| d.count() > 0)
        }
    });
    // While the fetch runs: listing, stat and another file's xattrs all answer.
    let ls = sh(&format!("ls -l {}", m2.path("other").display()));
    assert!(ls.contains("small.txt"), "{ls}");
    assert_eq!(m2.xattr("other/small.txt", "size").unwrap(), "6");
    assert!(
        reader.try_wait().unwrap().is_none(),
        "the slow read is still going while the others were answered"
    );
    let out = reader.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&md5sum(&r1.join("slow/big.bin"))));
}

/// A reader waiting for bytes of a remote file that arrive slowly: a signal that kills it
/// (Ctrl-C, `kill`) ends it at once, as on a local disk, instead of when the bytes it asked
/// for arrive (with a cut link: two minutes, unkillable); a program that catches the signal
/// (Python's Ctrl-C) has its handler run within a second. The mount answers on.
#[test]
fn a_reader_waiting_for_a_slow_remote_file_stops_at_ctrl_c() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    // Host 2 pulls at 16 KiB/s: the first 128 KiB a reader asks for take 8 s.
    let (_h1, h2, _) = slow_pair(&a, "16KiB", &[("big.bin", 1)]);
    let m2 = h2.mount(None);
    let big = m2.path("slow/big.bin");
    // Starts `cmd`, waits until it is in a read of the file, signals it; returns how long it
    // took to end after the signal, and how it ended.
    let signalled = |cmd: &mut Command, signal: i32| {
        let mut reader = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        wait_until(T, "the fetch under way", || {
            std::fs::read_dir(h2.dir.join("cache")).is_ok_and(|d| d.count() > 0)
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            reader.try_wait().unwrap().is_none(),
            "the reader waits for bytes"
        );
        let sent = std::time::Instant::now();
        unsafe { libc::kill(reader.id() as i32, signal) };
        loop {
            if reader.try_wait().unwrap().is_some() {
                break;
            }
            let pid = reader.id();
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "the reader still waits {:?} after signal {signal}: {}",
                sent.elapsed(),
                std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = sent.elapsed();
        (took, reader.wait_with_output().unwrap())
    };
    use std::os::unix::process::ExitStatusExt;
    // At once: before the second a caught signal is given (the mount's `GRACE`).
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let (took, out) = signalled(Command::new("cat").arg(&big), signal);
        assert_eq!(out.status.signal(), Some(signal), "{:?}", out.status);
        assert!(
            took < Duration::from_secs(1),
            "killed by signal {signal}, cat ended {took:?} after it, not at once"
        );
    }
    let (_, out) = signalled(
        Command::new("python3").arg("-c").arg(format!(
            "import signal, sys
def caught(*_):
    print('caught', flush=True)
    sys.exit(3)
signal.signal(signal.SIGINT, caught)
with open({big:?}, 'rb', buffering=0) as f:
    f.read(65536)
print('read it all')"
        )),
        libc::SIGINT,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "caught\n");
    let ls = sh(&format!("ls -l {}", m2.path("other").display()));
    assert!(ls.contains("small.txt"), "{ls}");
    assert_eq!(m2.xattr("slow/big.bin", "size").unwrap(), "1048576");
}

/// A file still being fetched can be mapped (numpy's `memmap`, astropy's FITS reader): its
/// pages wait for their bytes (the read takes the seconds the pull takes), and the map holds
/// the file.
#[test]
fn a_remote_file_being_fetched_can_be_mapped() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    // Host 2 pulls at 2 MiB/s: the 12 MiB file takes seconds to arrive.
    let (_h1, h2, r1) = slow_pair(&a, "2MiB", &[("big.bin", 12)]);
    let m2 = h2.mount(None);
    let out = sh(&format!(
        "python3 -c \"
import hashlib, mmap, time
t = time.monotonic()
with open('{}', 'rb') as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    head = m[:4096]
    print(len(m), len(head), hashlib.md5(m[:]).hexdigest(), time.monotonic() - t > 2)\"",
        m2.path("slow/big.bin").display()
    ));
    assert_eq!(
        out.trim(),
        format!("12582912 4096 {} True", md5sum(&r1.join("slow/big.bin")))
    );
}

/// Ten programs read one file while it is fetched; five are killed (SIGKILL or Ctrl-C) at
/// different moments. Each killed one ends at once; the others read the whole file, right.
#[test]
fn readers_of_one_file_killed_mid_fetch_leave_the_others_their_bytes() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    // Host 2 pulls at 4 MiB/s: the 24 MiB file takes six seconds; the last kill is at 1.5 s.
    let (_h1, h2, r1) = slow_pair(&a, "4MiB", &[("big.bin", 24)]);
    let want = md5sum(&r1.join("slow/big.bin"));
    let m2 = h2.mount(None);
    let (mut killed, mut kept) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let reader = Command::new("md5sum")
            .arg(m2.path("slow/big.bin"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if i % 2 == 0 {
            killed.push(reader);
        } else {
            kept.push(reader);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, reader) in killed.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(100 + 150 * i as u64));
        let signal = if i % 2 == 0 {
            libc::SIGKILL
        } else {
            libc::SIGINT
        };
        assert!(
            unsafe { libc::kill(reader.id() as i32, signal) } == 0,
            "reader {i} still running when signalled"
        );
    }
    for reader in killed {
        let waited = std::time::Instant::now();
        let out = reader.wait_with_output().unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert!(
            waited.elapsed() < Duration::from_secs(2),
            "a killed reader ended {:?} after the last signal",
            waited.elapsed()
        );
    }
    for reader in kept {
        let out = reader.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&want),
            "{out:?}"
        );
    }
}

/// cairnd slow to answer the mount's ask for one file (here: a stand-in on its socket that
/// never answers for it): that open waits, and ends at Ctrl-C; the open of another file
/// meanwhile gets cairnd's answer (an error here) at once, not after the first one's wait.
#[test]
fn an_open_waiting_for_cairnd_stops_at_ctrl_c_and_holds_up_no_other_open() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (_h1, mut h2, _) = slow_pair(&a, "16KiB", &[("a.bin", 1), ("b.bin", 1)]);
    let m2 = h2.mount(None);
    let id_of = |path: &str| {
        a.catalog()
            .read(|tx| tx.file_by_path(path))
            .unwrap()
            .expect("registered")
            .id
    };
    let silent_for = format!("fetch {}", id_of("slow/a.bin"));
    h2.stop();
    let socket = h2.dir.join("run/cairnd.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let silent_for = silent_for.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(&conn).read_line(&mut line);
                if line.trim_end() == silent_for {
                    std::thread::sleep(Duration::from_secs(60));
                } else {
                    let _ = conn.write_all(b"error the stand-in says no\n");
                }
            });
        }
    });
    let mut waiting = Command::new("cat")
        .arg(m2.path("slow/a.bin"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the open waits for cairnd"
    );
    let other = std::time::Instant::now();
    let err = sh_fails(&format!("cat {}", m2.path("slow/b.bin").display()));
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        other.elapsed() < Duration::from_secs(5),
        "the other open waited {:?}",
        other.elapsed()
    );
    assert!(m2.log().contains("the stand-in says no"), "{}", m2.log());
    let sent = std::time::Instant::now();
    unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) };
    let status = waiting.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "the waiting open ended {:?} after Ctrl-C",
        sent.elapsed()
    );
}

/// How many threads of `pid` have a name starting with `prefix`, and how many times they
/// went to sleep in all (each wait for a request is one).
fn threads_waits(pid: u32, prefix: &str) -> (usize, u64) {
    let mut n = 0;
    let mut waits = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        waits += status
            .lines()
            .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
        n += 1;
    }
    (n, waits)
}

#[test]
fn requests_come_over_io_uring_where_the_kernel_offers_it_and_config_allows() {
    if !fuse_available() {
        return;
    }
    let offered = cairn_tests::io_uring_offered();
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let src = tempfile::tempdir().unwrap();
    for i in 0..400 {
        write_file(
            src.path(),
            &format!("t/f{i:03}.dat"),
            format!("file {i}\n").repeat(50),
        );
    }
    let m = h.mount(Some("store1"));
    let before = threads_waits(m.pid(), "fuser-uring-");
    sh(&format!(
        "cp -r {}/t {}",
        src.path().display(),
        m.path("t").display()
    ));
    wait_until(T, "400 files imported", || a.on("store1").0 == 400);
    for i in [0, 199, 399] {
        let rel = format!("t/f{i:03}.dat");
        assert_eq!(
            m.xattr(&rel, "md5").unwrap(),
            md5sum(&src.path().join(&rel)),
            "{rel}"
        );
    }
    let after = threads_waits(m.pid(), "fuser-uring-");
    let log = m.log();
    if offered {
        assert!(log.contains("FUSE over io_uring: "), "{log}");
        assert!(after.0 >= 2, "threads serving io_uring: {after:?}");
        // At least a request a file, and each answered request a wait for the next.
        assert!(
            after.1 >= before.1 + 400,
            "the io_uring threads served the copy: {before:?} -> {after:?}"
        );
    } else {
        eprintln!(
            "\n*** The kernel does not offer FUSE over io_uring here (enable_uring N): \
             checked that the mount keeps to /dev/fuse. ***\n"
        );
        assert!(!log.contains("FUSE over io_uring: "), "{log}");
        assert_eq!(after.0, 0, "no io_uring threads");
    }
    drop(m);
    // `[fs] io_uring = false`: /dev/fuse only, whatever the kernel offers.
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(&h.config, cfg.replace("[fs]\n", "[fs]\nio_uring = false\n")).unwrap();
    let seen = log.len();
    let m = h.mount(Some("store1"));
    assert_eq!(
        std::fs::read_to_string(m.path("t/f007.dat")).unwrap(),
        "file 7\n".repeat(50)
    );
    assert!(
        !m.log()[seen..].contains("FUSE over io_uring: "),
        "{}",
        m.log()
    );
    assert_eq!(
        threads_waits(m.pid(), "fuser-uring-").0,
        0,
        "no io_uring threads"
    );
}

#[test]
fn slow_reads_on_one_cpu_do_not_hold_up_other_requests_from_that_cpu() {
    if !fuse_available() {
        return;
    }
    // Over io_uring a request waits for a thread of its caller's CPU: six reads that wait
    // for their bytes must not leave a listing on the same CPU waiting behind them.
    let a = Archive::new();
    let big: Vec<String> = (0..6).map(|i| format!("big{i}.bin")).collect();
    let big: Vec<(&str, usize)> = big.iter().map(|n| (n.as_str(), 8)).collect();
    let (_h1, h2, _r1) = slow_pair(&a, "512KiB", &big);
    let m2 = h2.mount(None);
    let mut readers: Vec<_> = (0..6)
        .map(|i| {
            Command::new("taskset")
                .args(["-c", "0", "md5sum"])
                .arg(m2.path(&format!("slow/big{i}.bin")))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_until(T, "the fetches under way", || {
        std::fs::read_dir(h2.dir.join("cache")).is_ok_and(|d| d.count() > 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    // `timeout` ends a listing still waiting after 10 s: all six reads take far longer.
    let ls = sh(&format!(
        "timeout 10 taskset -c 0 ls -l {} && timeout 10 taskset -c 0 stat -c %s {}",
        m2.path("other").display(),
        m2.path("other/small.txt").display()
    ));
    assert!(ls.contains("small.txt") && ls.ends_with("6\n"), "{ls}");
    for r in &mut readers {
        assert!(
            r.try_wait().unwrap().is_none(),
            "the slow reads are still going while the others were answered"
        );
    }
    for mut r in readers {
        let _ = r.kill();
        let _ = r.wait();
    }
}

#[test]
fn every_claim_in_semantics_md_has_a_test() {
    let doc = include_str!("../../docs/SEMANTICS.md");
    let tests = [
        include_str!("mount.rs"),
        include_str!("transport.rs"),
        include_str!("programs.rs"),
        include_str!("handoff.rs"),
        include_str!("users.rs"),
        include_str!("sites.rs"),
    ]
    .concat();
    let claims: Vec<&str> = doc
        .match_indices("**[S")
        .map(|(i, _)| {
            let rest = &doc[i + 3..];
            &rest[..rest.find(']').unwrap()]
        })
        .collect();
    assert!(claims.len() >= 20, "{claims:?}");
    for c in claims {
        assert!(
            tests.contains(&format!("[{c}]")),
            "docs/SEMANTICS.md claim [{c}] has no test tagged with it"
        );
    }
}

// [S20]
#[test]
fn mount_8_and_fstab_style_options_mount_in_the_background() {
    if !fuse_available() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "mount(8) tests need root in CI"
        );
        eprintln!("\n*** SKIPPING: mount -t fuse needs root here ***\n");
        return;
    }
    let a = Archive::new();
    let (h, root) = one_host(&a, "");
    write_file(&root, "seen/by/mount.dat", "via mount(8)\n");
    h.cairn(&["node", "scan", "store1", "--register-new"]);
    a.wait_idle(T);
    let mnt = h.dir.join("fstab-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // What an fstab line `CAIRNFS#cairn MNT fuse config=…,_netdev,nofail 0 0` runs; mount
    // returns only once the file system is up (cairnfs goes to the background then).
    let out = Command::new("mount")
        .args(["-t", "fuse"])
        .arg(format!("{}#cairn", cairn_tests::bin("cairnfs").display()))
        .arg(&mnt)
        .arg("-o")
        .arg(format!("config={},_netdev,nofail", h.config.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cairn_tests::is_mounted(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("seen/by/mount.dat")).unwrap(),
        "via mount(8)\n"
    );
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cairn_tests::is_mounted(&mnt));
}

#[test]
fn the_quickstart_sets_up_three_hosts_and_a_working_mount() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("qs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/quickstart.sh");
    let bin_dir = cairn_tests::bin("cairnfs").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(&script)
        .env("CAIRN_BIN", &bin_dir)
        .env("CAIRN_DEMO_DIR", &demo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stop = demo.join("stop.sh");
    let stopper = scopeguard(stop.clone());
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("== Try it"), "{stdout}");
    let mnt = demo.join("archive");
    assert!(cairn_tests::is_mounted(&mnt));
    // What the script tells people to try works.
    let far = mnt.join("2025/03/01/far.bin");
    assert_eq!(
        md5sum(&far),
        md5sum(&demo.join("alpenhost3/demo_storage3/2025/03/01/far.bin"))
    );
    let state = sh(&format!(
        "getfattr --only-values -n user.cairn.state {}",
        far.display()
    ));
    assert_eq!(state, "cached");
    sh(&format!(
        "setfattr -n user.cairn.sync -v demo_storage3 {}",
        mnt.join("2025/02/21").display()
    ));
    wait_until(T, "synced to demo_storage3", || {
        demo.join("alpenhost3/demo_storage3/2025/02/21/meta.txt")
            .exists()
    });
    drop(stopper);
    assert!(!cairn_tests::is_mounted(&mnt), "stop.sh unmounts");
}

/// Runs the quick start's stop.sh when dropped, even if the test fails.
struct StopScript(std::path::PathBuf);

fn scopeguard(p: std::path::PathBuf) -> StopScript {
    StopScript(p)
}

impl Drop for StopScript {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.0).output();
    }
}

// [S20]
#[test]
fn a_mount_unmounted_from_outside_leaves_the_next_mount_alone() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (h, _root) = one_host(&a, "");
    let mut first = h.mount(None);
    sh(&format!("fusermount3 -u {}", first.dir.display()));
    wait_until(T, "unmounted", || !cairn_tests::is_mounted(&first.dir));
    // Mounted again at once, while the first cairnfs may still be on its way out.
    let second = h.mount(None);
    assert!(first.stop_waiting().success(), "{}", first.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        cairn_tests::is_mounted(&second.dir),
        "the first cairnfs, leaving, took the second mount with it"
    );
    assert!(second.path("").read_dir().is_ok());
}
