//! Who may do what on a shared host: ordinary users on a mount started by root, the way
//! `packaging/cairnfs.service` starts it. Owners and modes are recorded by name and shown by
//! every mount; cairnfs checks them by POSIX's rules; only root and the admin group move or
//! remove copies through extended attributes; no user's write reaches another's open file.
//!
//! The users are real (`useradd`); the tests need root, and skip saying so without it (never
//! in CI).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cairn_catalog::model::{Has, Wants};
use cairn_tests::{Archive, Mount, TestHost, fuse_available, wait_until, write_file};

const T: Duration = Duration::from_secs(40);
const USER: &str = "cairn-t-user";
const OTHER: &str = "cairn-t-other";
const ADMIN: &str = "cairn-t-admin";
const ADMINS: &str = "cairn-t-admins";

fn root_available() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "the multi-user tests need root in CI"
        );
        eprintln!("\n*** SKIPPING: the multi-user tests need root (useradd, runuser) ***\n");
    }
    root
}

/// Makes the test users (once per machine; tests may race to do it).
fn users() {
    let _ = Command::new("groupadd").arg(ADMINS).output();
    for (u, extra) in [(USER, None), (OTHER, None), (ADMIN, Some(ADMINS))] {
        let mut c = Command::new("useradd");
        c.args(["--no-create-home", "--shell", "/bin/sh"]);
        if let Some(g) = extra {
            c.args(["-G", g]);
        }
        let _ = c.arg(u).output();
        assert!(
            Command::new("id").arg(u).output().unwrap().status.success(),
            "user {u} exists"
        );
    }
}

/// Runs `cmd` with `sh` as `user`; its output.
fn as_user(user: &str, cmd: &str) -> Output {
    eprintln!("as {user}: {cmd}");
    let mut child = Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", cmd])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(15) {
            let ps = Command::new("sh")
                .arg("-c")
                .arg("ps -eo pid,ppid,uid,stat,wchan:32,cmd | grep -v ' \\[' | tail -40")
                .output()
                .unwrap();
            panic!("hung: {}", String::from_utf8_lossy(&ps.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Runs `cmd` as `user`, which must succeed; its stdout.
fn ok(user: &str, cmd: &str) -> String {
    let out = as_user(user, cmd);
    assert!(
        out.status.success(),
        "as {user}: {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` as `user`, which must fail with "Permission denied"; its stderr.
fn denied(user: &str, cmd: &str) {
    let out = as_user(user, cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "as {user}: {cmd} should be refused with EACCES: status {}, {err}",
        out.status
    );
}

/// A host with a node, cairnd, and a root mount whose path every user may reach.
fn site(a: &Archive) -> (TestHost, std::path::PathBuf, Mount) {
    let mut h = a.host("h1");
    let root = h.node("store1", &[]);
    h.start();
    wait_until(T, "node initialised", || {
        root.join(".cairn/node.toml").exists()
    });
    std::fs::write(
        &h.config,
        std::fs::read_to_string(&h.config).unwrap()
            + &format!(
                "[fs]\nttl = \"100ms\"\nwrite_node = \"store1\"\nsettle = \"200ms\"\n\
                 admin_group = \"{ADMINS}\"\nunknown_owner = \"nobody\"\n"
            ),
    )
    .unwrap();
    let m = h.mount(Some("store1"));
    for d in [a.dir.path(), h.dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (h, root, m)
}

fn owner(p: &Path) -> (String, u32) {
    let m = std::fs::metadata(p).unwrap();
    let out = Command::new("id")
        .args(["-nu", &m.uid().to_string()])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        m.mode() & 0o7777,
    )
}

// [S27]
#[test]
fn an_ordinary_user_cannot_read_write_or_remove_what_is_not_theirs() {
    if !fuse_available() || !root_available() {
        return;
    }
    users();
    let a = Archive::new();
    let (_h, root, m) = site(&a);
    let p = |rel: &str| m.path(rel).display().to_string();
    // What root has: a private file, a private directory, a dot file, a file it is writing.
    std::fs::write(m.path("secret.dat"), b"root only\n").unwrap();
    std::fs::set_permissions(m.path("secret.dat"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(m.path("private")).unwrap();
    std::fs::set_permissions(m.path("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(m.path("private/inside.dat"), b"in private\n").unwrap();
    std::fs::write(m.path(".rootdot"), b"root's dot file\n").unwrap();
    assert_eq!(m.xattr("secret.dat", "md5").map(|s| s.len()), Ok(32));
    assert_eq!(
        m.xattr("private/inside.dat", "md5").map(|s| s.len()),
        Ok(32)
    );
    let mut writing = std::fs::File::create(m.path("open.dat")).unwrap();
    use std::io::Write;
    writing.write_all(b"root writes\n").unwrap();

    denied(USER, &format!("cat {}", p("secret.dat")));
    denied(USER, &format!("ls {}", p("private")));
    denied(USER, &format!("cat {}", p("private/inside.dat")));
    denied(USER, &format!("echo x > {}", p("private/new.dat")));
    denied(USER, &format!("mkdir {}", p("private/d")));
    denied(USER, &format!("mkdir {}", p("top")));
    denied(USER, &format!("echo x >> {}", p(".rootdot")));
    denied(USER, &format!("rm -f {}", p(".rootdot")));
    denied(USER, &format!("echo theirs >> {}", p("open.dat")));
    // Copies are the operators' business.
    denied(
        USER,
        &format!(
            "setfattr -n user.cairn.clean -v 'store1 now' {}",
            p("secret.dat")
        ),
    );
    denied(
        USER,
        &format!(
            "setfattr -n user.cairn.clean -v 'store1 now' {}",
            p("private")
        ),
    );
    denied(
        USER,
        &format!("setfattr -n user.cairn.clean -v store1 {}", m.dir.display()),
    );
    denied(
        USER,
        &format!("setfattr -n user.cairn.sync -v store1 {}", m.dir.display()),
    );
    denied(
        USER,
        &format!(
            "setfattr -n user.cairn.verify -v store1 {}",
            p("secret.dat")
        ),
    );

    // Nothing changed.
    writing.write_all(b"and goes on\n").unwrap();
    drop(writing);
    assert_eq!(
        std::fs::read(m.path("open.dat")).unwrap(),
        b"root writes\nand goes on\n"
    );
    assert_eq!(
        std::fs::read(m.path(".rootdot")).unwrap(),
        b"root's dot file\n"
    );
    assert!(!m.path("private/new.dat").exists() && !m.path("top").exists());
    assert_eq!(
        std::fs::read(root.join("secret.dat")).unwrap(),
        b"root only\n"
    );
    let mut cat = a.catalog();
    for rel in ["secret.dat", "private/inside.dat"] {
        let copy = cat
            .read(|tx| {
                let f = tx.file_by_path(rel)?.unwrap();
                let n = tx.node("store1")?;
                tx.copy_on(f.id, n.id)
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (copy.has, copy.wants, copy.verify_requested),
            (Has::Yes, Wants::Keep, false)
        );
    }
    assert!(
        m.log().contains("from uid"),
        "the refusals are logged with the user"
    );
}

// [S27] [S28]
#[test]
fn a_user_writes_in_their_own_directory_and_every_mount_shows_them_as_owner() {
    if !fuse_available() || !root_available() {
        return;
    }
    users();
    let a = Archive::new();
    let (h, _root, m) = site(&a);
    let p = |rel: &str| m.path(rel).display().to_string();
    std::fs::create_dir(m.path("home")).unwrap();
    let st = Command::new("chown")
        .args([USER, &p("home")])
        .status()
        .unwrap();
    assert!(st.success(), "chown of a directory by root");
    ok(USER, &format!("umask 027; echo mine > {}", p("home/a.dat")));
    ok(
        USER,
        &format!(
            "umask 027; chmod 0640 {}; mkdir {}",
            p("home/a.dat"),
            p("home/sub")
        ),
    );
    ok(
        USER,
        &format!("getfattr -n user.cairn.md5 {}", p("home/a.dat")),
    );
    // (Past the kernel's cache of the attributes the file had while it was written.)
    std::thread::sleep(Duration::from_millis(300));
    // Archived: the owner and the read bits stay, the write bit goes.
    assert_eq!(owner(&m.path("home/a.dat")), (USER.to_owned(), 0o440));
    assert_eq!(owner(&m.path("home")).0, USER);
    assert_eq!(owner(&m.path("home/sub")), (USER.to_owned(), 0o750));
    // Others of the world may not read it; its owner may, and may verify it.
    denied(OTHER, &format!("cat {}", p("home/a.dat")));
    assert_eq!(ok(USER, &format!("cat {}", p("home/a.dat"))), "mine\n");
    ok(
        USER,
        &format!(
            "setfattr -n user.cairn.verify -v store1 {}",
            p("home/a.dat")
        ),
    );
    // chmod of an archived file changes its read bits, and lasts.
    ok(USER, &format!("chmod 0444 {}", p("home/a.dat")));
    assert_eq!(ok(OTHER, &format!("cat {}", p("home/a.dat"))), "mine\n");
    // The catalog has them by name, and a second mount shows the same.
    let mut cat = a.catalog();
    let f = cat
        .read(|tx| tx.file_by_path("home/a.dat"))
        .unwrap()
        .unwrap();
    assert_eq!(f.own.user.as_deref(), Some(USER));
    assert_eq!(f.own.mode, Some(0o444));
    drop(m);
    let m2 = h.mount(Some("store1"));
    assert_eq!(owner(&m2.path("home/a.dat")), (USER.to_owned(), 0o444));
    assert_eq!(owner(&m2.path("home/sub")), (USER.to_owned(), 0o750));
}

// [S28]
#[test]
fn a_name_unknown_here_shows_as_the_unknown_owner_and_cairnd_imports_keep_the_node_owner() {
    if !fuse_available() || !root_available() {
        return;
    }
    users();
    let a = Archive::new();
    let (h, root, m) = site(&a);
    // A file put on the node by a user and found by a scan belongs to that user.
    write_file(&root, "scan/found.dat", "found\n");
    let st = Command::new("chown")
        .args([
            &format!("{USER}:{USER}"),
            &root.join("scan/found.dat").display().to_string(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        root.join("scan/found.dat"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    h.cairn(&["node", "scan", "store1", "--register-new"]);
    wait_until(T, "scanned", || {
        a.has("store1", "scan/found.dat") == Some(Has::Yes)
    });
    assert_eq!(owner(&m.path("scan/found.dat")), (USER.to_owned(), 0o440));
    // An owner this host has never heard of (another site's user).
    let mut cat = a.catalog();
    cat.write(|tx| {
        let f = tx.file_by_path("scan/found.dat")?.unwrap();
        tx.set_file_ownership(
            f.id,
            &cairn_catalog::model::Ownership {
                user: Some("someone-elsewhere".into()),
                ..Default::default()
            },
        )
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let drop_caches = std::fs::write("/proc/sys/vm/drop_caches", "2");
    assert!(drop_caches.is_ok());
    assert_eq!(
        std::fs::metadata(m.path("scan/found.dat")).unwrap().uid(),
        65534
    );
}

// [S29]
#[test]
fn the_admin_group_may_sync_and_clean_and_values_are_checked_whole() {
    if !fuse_available() || !root_available() {
        return;
    }
    users();
    let a = Archive::new();
    let (h, _root, m) = site(&a);
    let p = |rel: &str| m.path(rel).display().to_string();
    h.node("store2", &[]);
    std::fs::write(m.path("d.dat"), b"data\n").unwrap();
    assert_eq!(m.xattr("d.dat", "md5").map(|s| s.len()), Ok(32));
    ok(
        ADMIN,
        &format!("setfattr -n user.cairn.sync -v store2 {}", p("d.dat")),
    );
    wait_until(T, "copied", || a.has("store2", "d.dat") == Some(Has::Yes));
    ok(
        ADMIN,
        &format!("setfattr -n user.cairn.clean -v store2 {}", p("d.dat")),
    );
    let out = as_user(
        ADMIN,
        &format!(
            "setfattr -n user.cairn.clean -v $'store2\\nnow' {}",
            p("d.dat")
        ),
    );
    assert!(
        !out.status.success(),
        "a value with a newline inside is refused"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "setfattr -n user.cairn.clean -v $'store2\\nnow' {}",
            p("d.dat")
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cat = a.catalog();
    let wants = cat
        .read(|tx| {
            let f = tx.file_by_path("d.dat")?.unwrap();
            let n = tx.node("store2")?;
            Ok(tx.copy_on(f.id, n.id)?.unwrap().wants)
        })
        .unwrap();
    assert_eq!(
        wants,
        Wants::ReleaseWhenNeeded,
        "the admin's clean, not the refused one"
    );
}

// [S27]
#[test]
fn no_user_can_write_into_a_file_another_user_is_writing() {
    if !fuse_available() || !root_available() {
        return;
    }
    users();
    let a = Archive::new();
    let (_h, _root, m) = site(&a);
    let p = |rel: &str| m.path(rel).display().to_string();
    std::fs::create_dir(m.path("shared")).unwrap();
    std::fs::set_permissions(m.path("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A world-writable file, held open by its writer.
    let holder = Command::new("runuser")
        .args(["-u", USER, "--", "sh", "-c"])
        .arg(format!(
            "umask 0; exec 3>{}; echo first >&3; sleep 3; echo last >&3",
            p("shared/w.dat")
        ))
        .spawn()
        .unwrap();
    wait_until(T, "the file is being written", || {
        m.path("shared/w.dat").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    denied(OTHER, &format!("echo intruder >> {}", p("shared/w.dat")));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo root-too >> {}", p("shared/w.dat")))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "not even root writes into another's open file"
    );
    let status = holder.wait_with_output().unwrap().status;
    assert!(status.success());
    assert_eq!(m.xattr("shared/w.dat", "md5").map(|s| s.len()), Ok(32));
    assert_eq!(
        std::fs::read(m.path("shared/w.dat")).unwrap(),
        b"first\nlast\n"
    );
}

// [S27]
#[test]
fn in_a_sticky_directory_only_the_owner_removes_or_renames_an_entry() {
    if !fuse_available() || !root_available() {
        return;
    }
    users();
    let a = Archive::new();
    let (_h, _root, m) = site(&a);
    let p = |rel: &str| m.path(rel).display().to_string();
    std::fs::create_dir(m.path("drop")).unwrap();
    std::fs::set_permissions(m.path("drop"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    ok(USER, &format!("echo a > {}", p("drop/.mine")));
    denied_eperm(OTHER, &format!("rm -f {}", p("drop/.mine")));
    denied_eperm(
        OTHER,
        &format!("mv {} {}", p("drop/.mine"), p("drop/.theirs")),
    );
    ok(
        USER,
        &format!("mv {} {}", p("drop/.mine"), p("drop/.still-mine")),
    );
    ok(USER, &format!("rm {}", p("drop/.still-mine")));
}

/// Runs `cmd` as `user`, which must fail with "Operation not permitted".
fn denied_eperm(user: &str, cmd: &str) {
    let out = as_user(user, cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not permitted"),
        "as {user}: {cmd} should be refused with EPERM: {err}"
    );
}

/// A regression: a program that started a child while it had a file of the mount open for
/// writing hung for good (the child's exec closed the file, and the mount, asked to flush it,
/// read the child's `/proc/PID/stat`, which waits for the exec).
#[test]
fn a_program_that_starts_a_child_while_writing_a_file_does_not_hang() {
    if !fuse_available() {
        return;
    }
    let a = Archive::new();
    let (_h, _root, m) = site(&a);
    let mut f = std::fs::File::create(m.path("spawning.dat")).unwrap();
    use std::io::Write;
    f.write_all(b"before\n").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Command::new("true").status().map(|s| s.success()));
    });
    let started = rx.recv_timeout(Duration::from_secs(20));
    assert!(
        matches!(started, Ok(Ok(true))),
        "starting a child hung or failed: {started:?}"
    );
    f.write_all(b"after\n").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(m.path("spawning.dat")).unwrap(),
        b"before\nafter\n"
    );
}
