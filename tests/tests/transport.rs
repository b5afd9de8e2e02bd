//! Transport disks with real filesystems: ext4 images on loop devices, mounted and unmounted
//! under the hosts' `transport.watch` directories. Needs root (CI runs as root).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cairn_catalog::model::Has;
use cairn_node::NodeRoot;
use cairn_tests::{Archive, LoopDisk, TestHost, can_mount_loop_disks, wait_until, write_file};

const T: Duration = Duration::from_secs(40);

/// A new disk of `mib` MiB plugged into host `h` (mounted in its watch dir as `name`) and made
/// transport node `name` of group `group` there, initialised. Returns the disk and its mount.
fn plug_new_disk(
    a: &Archive,
    h: &TestHost,
    name: &str,
    group: &str,
    mib: u64,
) -> (LoopDisk, PathBuf) {
    let mut disk = LoopDisk::new(a.dir.path(), name, mib).expect("mkfs.ext4 works");
    let at = h.dir.join("watch").join(name);
    disk.mount(&at);
    h.cairn(&[
        "node",
        "create",
        name,
        "--transport",
        "--group",
        group,
        &format!("--host={}", h.name),
        &format!("--root={}", at.display()),
        "--init",
        "--activate",
    ]);
    wait_until(T, "the disk initialised", || {
        NodeRoot::new(&at).marker().exists()
    });
    (disk, at)
}

fn node_active_on(a: &Archive, node: &str) -> Option<(String, String)> {
    let n = a.catalog().read(|tx| tx.node(node)).unwrap();
    n.active
        .then(|| (n.host.unwrap_or_default(), n.root.unwrap_or_default()))
}

#[test]
fn seed_004_sneakernet_with_a_real_disk_moved_between_hosts() {
    if !can_mount_loop_disks() {
        return;
    }
    let a = Archive::new();
    let mut h1 = a.host("alpenhost1");
    let mut h3 = a.host("alpenhost3");
    let r1 = h1.node("demo_storage1", &["--archive"]);
    let r3 = h3.node("demo_storage3", &["--archive"]);
    h1.start();
    h3.start();
    wait_until(T, "init", || {
        NodeRoot::new(&r3).marker().exists() && NodeRoot::new(&r1).marker().exists()
    });
    for (p, body) in [
        ("2025/02/21/meta.txt", "meta\n"),
        ("2025/02/21/23/1324.dat", "0 1 2 3 4 5\n"),
        ("2025/02/26/02/0011.dat", "14 15 16 17 18\n"),
    ] {
        write_file(&r3, p, body.as_bytes());
    }
    h3.cairn(&["node", "scan", "demo_storage3", "--register-new"]);
    a.wait_idle(T);
    // The transport disk, plugged into alpenhost3.
    h3.cairn(&["group", "create", "--class=transport", "transport_group"]);
    let (mut disk, _) = plug_new_disk(&a, &h3, "transport1", "transport_group", 32);
    let out = h3.cairn(&[
        "node",
        "sync",
        "demo_storage3",
        "transport_group",
        "--target=demo_storage1",
        "--force",
    ]);
    assert!(out.contains("Would sync 3 files"), "{out}");
    a.wait_idle(T);
    assert_eq!(a.on("transport1").0, 3);
    let status = a.cairn(&["transport", "status"]);
    assert!(
        status.contains("transport1") && status.contains("alpenhost3"),
        "{status}"
    );

    // Carried to alpenhost1: unmounted there, mounted here; no cairn command in between.
    disk.umount();
    wait_until(T, "alpenhost3 lets it go", || {
        node_active_on(&a, "transport1").is_none()
    });
    assert!(
        h3.log().contains("Transport disk \"transport1\" unmounted"),
        "{}",
        h3.log()
    );
    let at1 = h1.dir.join("watch/disk1");
    disk.mount(&at1);
    wait_until(T, "alpenhost1 takes it over", || {
        node_active_on(&a, "transport1") == Some(("alpenhost1".into(), at1.display().to_string()))
    });
    assert!(
        h1.log()
            .contains("Transport disk \"transport1\" mounted at"),
        "{}",
        h1.log()
    );
    h1.cairn(&["node", "sync", "transport1", "demo_storage1", "--force"]);
    a.wait_idle(T);
    assert_eq!(a.on("demo_storage1").0, 3);
    assert_eq!(
        std::fs::read_to_string(r1.join("2025/02/21/23/1324.dat")).unwrap(),
        "0 1 2 3 4 5\n"
    );
    assert!(
        h1.log().contains("using local copy"),
        "a disk plugged into this host is read locally"
    );
    // Cleared for reuse once the archive has everything.
    h1.cairn(&[
        "node",
        "clean",
        "--now",
        "--force",
        "transport1",
        "--target=demo_storage1",
    ]);
    wait_until(T, "transport1 cleared", || a.on("transport1") == (0, 0));
    assert!(!at1.join("2025").exists());
    disk.umount();
    wait_until(T, "inactive once unplugged", || {
        node_active_on(&a, "transport1").is_none()
    });
}

#[test]
fn the_fuller_disk_fills_first_and_a_file_that_fits_nowhere_waits_with_the_reason() {
    if !can_mount_loop_disks() {
        return;
    }
    let a = Archive::new();
    let mut h = a.host_with("h1", "retry_delay = \"1h\"");
    let r = h.node("field", &[]);
    h.start();
    wait_until(T, "init", || NodeRoot::new(&r).marker().exists());
    h.cairn(&["group", "create", "--class=transport", "tg"]);
    let mut disks = Vec::new();
    for name in ["t1", "t2"] {
        let (d, at) = plug_new_disk(&a, &h, name, "tg", 32);
        disks.push((d, at));
    }
    // t2 is the fuller one: something else already takes half of it.
    std::fs::write(disks[1].1.join("other-data"), vec![7u8; 14 << 20]).unwrap();
    for i in 0..3 {
        write_file(&r, &format!("2025/01/01/{i}.dat"), vec![i as u8; 1 << 20]);
    }
    write_file(&r, "2025/01/01/huge.dat", vec![9u8; 40 << 20]);
    h.cairn(&["node", "scan", "field", "--register-new"]);
    a.wait_idle(T);
    std::thread::sleep(Duration::from_millis(1500)); // a loop records the disks' free space
    h.cairn(&["node", "sync", "field", "tg", "--force"]);
    wait_until(T, "the three small files copied", || {
        (0..3).all(|i| a.has("t2", &format!("2025/01/01/{i}.dat")) == Some(Has::Yes))
    });
    assert_eq!(
        a.on("t1").0,
        0,
        "the emptier disk is not used while the fuller one has room"
    );
    wait_until(T, "the huge file refused", || {
        a.cairn(&["request", "list", "--pending"])
            .contains("no transport disk has room")
    });
    let pending = a.cairn(&["request", "list", "--pending"]);
    assert!(pending.contains("huge.dat"), "{pending}");
}

#[test]
fn yanking_a_disk_mid_copy_records_nothing_and_the_copy_completes_when_it_returns() {
    if !can_mount_loop_disks() {
        return;
    }
    let a = Archive::new();
    let mut h2 = a.host_with("h2", "retry_delay = \"1s\"");
    let r1 = h2.node("field", &[]);
    h2.start();
    wait_until(T, "init", || NodeRoot::new(&r1).marker().exists());
    // Big enough that the copy onto the disk takes a while.
    let body: Vec<u8> = (0..(150u32 << 20)).map(|i| (i % 251) as u8).collect();
    write_file(&r1, "2025/01/01/big.dat", &body);
    h2.cairn(&["node", "scan", "field", "--register-new"]);
    a.wait_idle(Duration::from_secs(60));
    h2.cairn(&["group", "create", "--class=transport", "tg"]);
    let (mut disk, at) = plug_new_disk(&a, &h2, "t1", "tg", 512);
    h2.cairn(&["node", "sync", "field", "tg", "--force"]);
    let partial = || cairn_tests::partial_bytes(&at);
    wait_until(T, "a partial copy on the disk", || partial() > 0);
    // Yanked: gone from the tree at once, though the copy still holds a file open on it.
    let out = Command::new("umount").arg("-l").arg(&at).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    disk.at = None;
    wait_until(T, "the node inactive", || {
        node_active_on(&a, "t1").is_none()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.has("t1", "2025/01/01/big.dat"), None, "nothing recorded");
    assert!(
        !at.join("2025").exists(),
        "nothing written into the empty mount point"
    );
    // The interrupted attempt ends; only then is the disk really out (a lazily unmounted
    // filesystem lives on while a file on it is open), as a yanked disk would be.
    wait_until(T, "the attempt to fail", || {
        h2.log().contains("AFCR#1 attempt 1 failed")
    });
    wait_until(T, "the loop device released", || {
        Command::new("losetup")
            .arg("-j")
            .arg(&disk.image)
            .output()
            .is_ok_and(|o| o.stdout.is_empty())
    });
    // Plugged back in (checked first, as a disk pulled out mid-write would be), taken over
    // again, and the copy completes.
    let _ = Command::new("e2fsck")
        .args(["-f", "-y", "-q"])
        .arg(&disk.image)
        .output();
    disk.mount(&at);
    let done = || a.has("t1", "2025/01/01/big.dat") == Some(Has::Yes);
    for _ in 0..600 {
        if done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tmp: Vec<_> = std::fs::read_dir(NodeRoot::new(&at).tmp())
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).ok()))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        done(),
        "the copy did not complete on the returned disk: tmp {tmp:?} {}",
        h2.log()
    );
    assert_eq!(std::fs::read(at.join("2025/01/01/big.dat")).unwrap(), body);
}

#[test]
fn auto_actions_fill_a_disk_at_the_site_and_drain_it_at_the_archive() {
    if !can_mount_loop_disks() {
        return;
    }
    let a = Archive::new();
    // The archive keeps one copy here; the site has no network to the archive: its host has no
    // address, so nothing is pulled from it over the wire.
    let mut archive = a.host_with("archive", "min_archive_copies = 1");
    let mut site = a.host("site");
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("advertise"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&site.config, cfg).unwrap();
    let field = site.node("field", &[]);
    let store = archive.node("store", &["--archive"]);
    site.start();
    archive.start();
    wait_until(T, "init", || {
        NodeRoot::new(&field).marker().exists() && NodeRoot::new(&store).marker().exists()
    });
    site.cairn(&["group", "create", "--class=transport", "tg"]);
    let (mut disk, _) = plug_new_disk(&a, &site, "t1", "tg", 32);
    // The cycle: field → transport disks; each disk → the archive; a disk is cleared of what
    // the archive has.
    site.cairn(&["group", "autosync", "tg", "field"]);
    site.cairn(&["group", "autosync", "store", "t1"]);
    site.cairn(&["node", "autoclean", "t1", "store"]);
    write_file(&field, "2025/03/01/run.dat", "observations\n");
    site.cairn(&["node", "scan", "field", "--register-new"]);
    wait_until(T, "the new file on the disk", || {
        a.has("t1", "2025/03/01/run.dat") == Some(Has::Yes)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        a.has("store", "2025/03/01/run.dat"),
        None,
        "no way over the network"
    );
    // Carried to the archive.
    disk.umount();
    wait_until(T, "released by the site", || {
        node_active_on(&a, "t1").is_none()
    });
    let at_archive = archive.dir.join("watch/t1");
    disk.mount(&at_archive);
    wait_until(T, "drained into the archive and cleared", || {
        a.has("store", "2025/03/01/run.dat") == Some(Has::Yes)
            && a.has("t1", "2025/03/01/run.dat") == Some(Has::No)
    });
    assert_eq!(
        std::fs::read_to_string(store.join("2025/03/01/run.dat")).unwrap(),
        "observations\n"
    );
    // The copy is released in the catalog first, then removed with its emptied directories.
    wait_until(T, "the disk is empty again, ready to go back", || {
        !at_archive.join("2025").exists()
    });
}

// [S4]
#[test]
fn a_transport_disks_files_read_through_cairnfs_are_local_reads() {
    if !can_mount_loop_disks() || !cairn_tests::fuse_available() {
        return;
    }
    let a = Archive::new();
    let mut h1 = a.host("site");
    let mut h2 = a.host("faraway");
    let r1 = h1.node("site_storage", &[]);
    let r2 = h2.node("far_storage", &[]);
    h1.start();
    h2.start();
    wait_until(T, "nodes initialised", || {
        NodeRoot::new(&r1).marker().exists() && NodeRoot::new(&r2).marker().exists()
    });
    h1.cairn(&["group", "create", "--class=transport", "transport_group"]);
    let (_disk, at) = plug_new_disk(&a, &h1, "transport1", "transport_group", 32);
    write_file(&r1, "2025/obs/frame.fits", vec![42u8; 200_000]);
    h1.cairn(&["node", "scan", "site_storage", "--register-new"]);
    a.wait_idle(T);
    h1.cairn(&["node", "sync", "site_storage", "transport_group", "--force"]);
    a.wait_idle(T);
    assert_eq!(a.has("transport1", "2025/obs/frame.fits"), Some(Has::Yes));
    // The field node goes away: the disk holds the only copy on this host. A copy on another
    // host exists too, so a fetch would be possible — and must not happen.
    h1.cairn(&["node", "sync", "site_storage", "far_storage", "--force"]);
    a.wait_idle(T);
    h1.cairn(&["node", "deactivate", "site_storage"]);
    let m = h1.mount(None);
    assert_eq!(m.xattr("2025/obs/frame.fits", "state").unwrap(), "local");
    let bytes = std::fs::read(m.path("2025/obs/frame.fits")).unwrap();
    assert_eq!(bytes, vec![42u8; 200_000]);
    assert!(
        !h1.log().contains("for the mount"),
        "nothing was fetched: {}",
        h1.log()
    );
    assert!(
        !h1.dir
            .join("cache")
            .join(cairn_catalog::md5::md5_hex(&bytes))
            .exists()
    );
    assert!(at.join("2025/obs/frame.fits").exists());
}
