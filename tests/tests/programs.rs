//! Real programs writing into cairnfs the way they always do, each 20 times in a loop, with
//! cairnd running: `cp`, `cp -a`, `cp -p`, `install`, `rsync -a`, `tar x`, `unzip`, `dd`,
//! the shell's `>` and `>>`, Python's `shutil`, write-close-append, numpy, h5py and astropy.
//!
//! For each run: the program succeeds; a listing right after it ends shows every file; the
//! bytes read back equal the source; `user.cairn.md5` equals the md5 of those bytes; the
//! catalog holds the file exactly once, with its copy on the write node. At the end of each
//! test the node's copies are all verified by cairnd, and none is corrupt. These are the
//! moments around `close` where a file used to vanish, be archived truncated, or be changed
//! after it was archived (docs/SEMANTICS.md, "A written file's life").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_catalog::md5::md5_hex as md5_bytes;
use cairn_catalog::model::Has;
use cairn_tests::{Archive, Mount, TestHost, fuse_available, wait_until, write_file};

const T: Duration = Duration::from_secs(60);
const RUNS: usize = 20;

/// One host with cairnd running and its view mounted, writing into node `store1`.
struct Site {
    a: Archive,
    h: TestHost,
    root: PathBuf,
    m: Mount,
    /// A directory outside the mount for sources and native copies.
    src: PathBuf,
}

fn site() -> Option<Site> {
    if !fuse_available() {
        return None;
    }
    let a = Archive::new();
    let mut h = a.host("h1");
    let root = h.node("store1", &[]);
    h.start();
    wait_until(T, "node initialised", || {
        root.join(".cairn/node.toml").exists()
    });
    let m = h.mount(Some("store1"));
    let src = a.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    Some(Site { a, h, root, m, src })
}

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

/// Some bytes that differ from run to run and file to file.
fn bytes(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7919) ^ (i >> 9)) as u8)
        .collect()
}

impl Site {
    /// Checks what a program just wrote: `files` are (path under the mount, expected bytes).
    fn check(&self, what: &str, files: &[(String, Vec<u8>)]) {
        // Listed right after the program ended, before anything is waited for.
        for (rel, _) in files {
            let p = self.m.path(rel);
            let dir = p.parent().unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let listed: BTreeSet<String> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{what}: listing {}: {e}", dir.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                listed.contains(&name),
                "{what}: {rel} is missing from the listing right after the program: {listed:?}"
            );
        }
        for (rel, want) in files {
            let got = std::fs::read(self.m.path(rel))
                .unwrap_or_else(|e| panic!("{what}: reading {rel} back: {e}"));
            assert!(
                got == *want,
                "{what}: {rel} reads back {} bytes, not the {} written",
                got.len(),
                want.len()
            );
            let md5 = md5_bytes(want);
            assert_eq!(
                self.m
                    .xattr(rel, "md5")
                    .unwrap_or_else(|e| panic!("{what}: {rel}: {e}")),
                md5,
                "{what}: user.cairn.md5 of {rel}"
            );
            let mut cat = self.a.catalog();
            let f = cat
                .read(|tx| tx.file_by_path(rel))
                .unwrap()
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: {rel} is not in the catalog; the mount's log:\n{}",
                        self.m.log()
                    )
                });
            assert_eq!((f.size, f.md5.as_str()), (want.len() as u64, md5.as_str()));
            assert_eq!(self.a.has("store1", rel), Some(Has::Yes), "{what}: {rel}");
            assert_eq!(
                std::fs::read(self.root.join(rel)).unwrap(),
                *want,
                "{what}: node copy"
            );
        }
    }

    /// At the end: the catalog has exactly `expected` files, none kept aside as a conflict,
    /// nothing is under an archive name on the node that the catalog does not know, and
    /// cairnd's verification of every copy finds nothing wrong.
    fn finish(&self, expected: usize) {
        let mut cat = self.a.catalog();
        let files = cat.read(|tx| tx.files(&Default::default())).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert!(
            !names.iter().any(|n| n.contains(".conflict-")),
            "conflicts: {names:?}"
        );
        assert_eq!(files.len(), expected, "{names:?}");
        let known: BTreeSet<&str> = names.iter().copied().collect();
        for p in files_under(&self.root) {
            assert!(
                known.contains(p.as_str()),
                "{p} is on the node but not in the catalog"
            );
        }
        let t0 = cairn_catalog::units::now();
        self.h
            .cairn(&["node", "verify", "store1", "--all", "--force"]);
        let copies = || {
            let mut cat = self.a.catalog();
            cat.read(|tx| {
                let mut out = Vec::new();
                for f in tx.files(&Default::default())? {
                    out.extend(
                        tx.copies_of(f.id)?
                            .into_iter()
                            .filter(|c| c.node == "store1"),
                    );
                }
                Ok(out)
            })
            .unwrap()
        };
        wait_until(T, "every copy verified", || {
            copies()
                .iter()
                .all(|c| !c.verify_requested && c.verified_at.is_some_and(|t| t >= t0))
        });
        let bad: Vec<_> = copies().into_iter().filter(|c| c.has != Has::Yes).collect();
        assert!(
            bad.is_empty(),
            "copies not healthy after verification: {bad:?}"
        );
    }

    /// A source file outside the mount.
    fn source(&self, rel: &str, data: &[u8]) -> PathBuf {
        write_file(&self.src, rel, data);
        self.src.join(rel)
    }
}

/// Paths of the files under a node root, outside `.cairn/`.
fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
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
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn cp_cp_a_and_cp_p_archive_every_file_as_written() {
    let Some(s) = site() else { return };
    std::fs::create_dir_all(s.m.path("cp")).unwrap();
    for i in 0..RUNS {
        let data = bytes(i, 1000 + i * 997);
        let src = s.source(&format!("cp/{i}.dat"), &data);
        let mut files = Vec::new();
        for flag in ["", "-a", "-p"] {
            let rel = format!("cp/{i}{flag}.dat");
            sh(&format!(
                "cp {flag} {} {}",
                src.display(),
                s.m.path(&rel).display()
            ));
            files.push((rel, data.clone()));
        }
        s.check("cp", &files);
        // -a and -p keep the source's modification time, and it is the one archived.
        let src_mtime = mtime(&src);
        for flag in ["-a", "-p"] {
            assert_eq!(mtime(&s.m.path(&format!("cp/{i}{flag}.dat"))), src_mtime);
        }
    }
    s.finish(3 * RUNS);
}

fn mtime(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().mtime()
}

// [S22]
#[test]
fn install_with_a_mode_archives_the_file() {
    let Some(s) = site() else { return };
    for i in 0..RUNS {
        let data = bytes(i, 513 * (i + 1));
        let src = s.source(&format!("i{i}.dat"), &data);
        let rel = format!("install/{i}.dat");
        sh(&format!(
            "install -D -m 600 {} {}",
            src.display(),
            s.m.path(&rel).display()
        ));
        s.check("install -m 600", &[(rel, data)]);
    }
    s.finish(RUNS);
}

#[test]
fn rsync_a_archives_a_tree_and_a_second_run_changes_nothing() {
    let Some(s) = site() else { return };
    for i in 0..RUNS {
        let mut files = Vec::new();
        for k in 0..3 {
            let data = bytes(i * 10 + k, 200 + k * 4000);
            s.source(&format!("rs{i}/d/{k}.dat"), &data);
            files.push((format!("rsync{i}/d/{k}.dat"), data));
        }
        let from = s.src.join(format!("rs{i}"));
        let to = s.m.path(&format!("rsync{i}"));
        sh(&format!("rsync -a {}/ {}/", from.display(), to.display()));
        s.check("rsync -a", &files);
        let again = sh(&format!(
            "rsync -a -i {}/ {}/",
            from.display(),
            to.display()
        ));
        assert!(
            again
                .lines()
                .all(|l| !l.starts_with('>') && !l.starts_with('c')),
            "the second rsync -a changed something:\n{again}"
        );
    }
    s.finish(3 * RUNS);
}

/// What `rsync` does, with the kernel's release of the file arriving after the rename (it
/// may: the release of a closed file is passed on asynchronously): written under a temporary
/// dot name, renamed to its own name while still open, then closed. Archived under its name.
#[test]
fn a_temporary_file_renamed_before_its_last_handle_goes_is_archived() {
    use std::io::Write;
    let Some(s) = site() else { return };
    std::fs::create_dir_all(s.m.path("renamed")).unwrap();
    let mut files = Vec::new();
    for i in 0..RUNS {
        let data = bytes(i, 1000 + i * 300);
        let tmp = s.m.path(&format!("renamed/.f{i}.dat.XyZ12"));
        let rel = format!("renamed/f{i}.dat");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&data).unwrap();
        std::fs::rename(&tmp, s.m.path(&rel)).unwrap();
        drop(f);
        files.push((rel, data));
    }
    s.check("write, rename, close", &files);
    s.finish(RUNS);
}

// [S22]
#[test]
fn tar_x_then_ls_shows_every_file_at_once() {
    let Some(s) = site() else { return };
    for i in 0..RUNS {
        let mut files = Vec::new();
        for k in 0..4 {
            let data = bytes(i * 10 + k, 3000 + k * 1000);
            s.source(&format!("tar{i}/run/{k}.dat"), &data);
            files.push((format!("tar{i}/run/{k}.dat"), data));
        }
        let t = s.src.join(format!("{i}.tar"));
        sh(&format!(
            "tar cf {} -C {} tar{i}",
            t.display(),
            s.src.display()
        ));
        sh(&format!("tar xf {} -C {}", t.display(), s.m.dir.display()));
        s.check("tar x", &files);
    }
    s.finish(4 * RUNS);
}

// [S22]
#[test]
fn unzip_archives_every_member_with_its_time() {
    let Some(s) = site() else { return };
    if Command::new("unzip").arg("-v").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "unzip is missing in CI");
        eprintln!("\n*** SKIPPING: unzip is not installed (packaging/install-deps.sh) ***\n");
        return;
    }
    for i in 0..RUNS {
        let mut files = Vec::new();
        let mut members = Vec::new();
        for k in 0..3 {
            let data = bytes(i * 10 + k, 700 + k * 5000);
            let p = s.source(&format!("z{i}/{k}.dat"), &data);
            members.push(p.display().to_string());
            files.push((format!("unzip{i}/z{i}/{k}.dat"), data));
        }
        let z = s.src.join(format!("{i}.zip"));
        sh(&format!(
            "cd {} && zip -q -r {} z{i}",
            s.src.display(),
            z.display()
        ));
        let out = s.m.path(&format!("unzip{i}"));
        sh(&format!("unzip -q {} -d {}", z.display(), out.display()));
        s.check("unzip", &files);
        // unzip sets each member's time after closing it; that time is the one archived.
        for (k, m) in members.iter().enumerate() {
            let got = mtime(&s.m.path(&format!("unzip{i}/z{i}/{k}.dat")));
            assert_eq!(got, mtime(Path::new(m)), "member {k}");
        }
    }
    s.finish(3 * RUNS);
}

#[test]
fn dd_with_conv_fsync_archives_the_file() {
    let Some(s) = site() else { return };
    for i in 0..RUNS {
        let data = bytes(i, 100_000 + i * 4099);
        let src = s.source(&format!("dd{i}.dat"), &data);
        let rel = format!("dd{i}.dat");
        sh(&format!(
            "dd if={} of={} bs=64k conv=fsync status=none",
            src.display(),
            s.m.path(&rel).display()
        ));
        s.check("dd conv=fsync", &[(rel, data)]);
    }
    s.finish(RUNS);
}

// [S23]
#[test]
fn a_shell_redirect_then_an_append_archives_both_lines() {
    let Some(s) = site() else { return };
    std::fs::create_dir_all(s.m.path("sh")).unwrap();
    for i in 0..RUNS {
        let rel = format!("sh/{i}.txt");
        let p = s.m.path(&rel);
        sh(&format!("echo a{i} > {0}; echo b{i} >> {0}", p.display()));
        s.check("> then >>", &[(rel, format!("a{i}\nb{i}\n").into_bytes())]);
    }
    s.finish(RUNS);
}

/// An appended file long archived refuses the append and keeps its bytes.
// [S23]
#[test]
fn an_append_to_a_file_archived_long_ago_is_refused_and_changes_nothing() {
    let Some(s) = site() else { return };
    let p = s.m.path("old.txt");
    sh(&format!("echo a > {}", p.display()));
    s.check("archived", &[("old.txt".into(), b"a\n".to_vec())]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo b >> {}", p.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(s.root.join("old.txt")).unwrap(), b"a\n");
    assert_eq!(std::fs::read(&p).unwrap(), b"a\n");
    s.finish(1);
}

// ---- Python ----

/// A Python interpreter with numpy, h5py and astropy: `CAIRN_TEST_PYTHON`, or the virtual
/// environment `.ci/run` makes at `/opt/cairn-venv`. Without one a test skips, loudly — but
/// never in CI.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("CAIRN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/cairn-venv/bin/python3"));
    let ok = Command::new(&p)
        .args(["-c", "import numpy, h5py, astropy.io.fits"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {} lacks numpy, h5py or astropy (.ci/run installs them)",
            p.display()
        );
        eprintln!(
            "\n*** SKIPPING a Python test: {} with numpy, h5py and astropy is missing \
             (set CAIRN_TEST_PYTHON, or see .ci/run) ***\n",
            p.display()
        );
        return None;
    }
    Some(p)
}

/// Runs a Python script with `args`, asserting success.
fn py(python: &Path, script: &str, args: &[&Path]) {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `script` twice per run, once writing into the mount and once into a native directory,
/// and checks the mount's file against the native one (`argv[1]` is where to write; the
/// script reads its file back itself, right after closing it).
fn python_scenario(name: &str, script: &str) {
    let Some(python) = python() else { return };
    let Some(s) = site() else { return };
    let native = s.src.join("native");
    std::fs::create_dir_all(&native).unwrap();
    std::fs::create_dir_all(s.m.path(name)).unwrap();
    for i in 0..RUNS {
        let rel = format!("{name}/{i}.out");
        let theirs = native.join(format!("{i}.out"));
        py(&python, script, &[&s.m.path(&rel)]);
        py(&python, script, &[&theirs]);
        s.check(name, &[(rel, std::fs::read(&theirs).unwrap())]);
    }
    s.finish(RUNS);
}

// [S22]
#[test]
fn python_shutil_copy2_keeps_the_time_and_the_bytes() {
    let Some(python) = python() else { return };
    let Some(s) = site() else { return };
    std::fs::create_dir_all(s.m.path("c2")).unwrap();
    for i in 0..RUNS {
        let data = bytes(i, 9000 + i);
        let src = s.source(&format!("c2/{i}.dat"), &data);
        let rel = format!("c2/{i}.dat");
        py(
            &python,
            "import shutil, sys; shutil.copy2(sys.argv[1], sys.argv[2])",
            &[&src, &s.m.path(&rel)],
        );
        s.check("shutil.copy2", &[(rel.clone(), data)]);
        assert_eq!(mtime(&s.m.path(&rel)), mtime(&src));
    }
    s.finish(RUNS);
}

#[test]
fn python_shutil_copytree_and_move_archive_every_file() {
    let Some(python) = python() else { return };
    let Some(s) = site() else { return };
    for i in 0..RUNS {
        let mut files = Vec::new();
        for k in 0..3 {
            let data = bytes(i * 10 + k, 100 + k * 3000);
            s.source(&format!("ct{i}/x/{k}.dat"), &data);
            files.push((format!("tree{i}/x/{k}.dat"), data));
        }
        py(
            &python,
            "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])",
            &[
                &s.src.join(format!("ct{i}")),
                &s.m.path(&format!("tree{i}")),
            ],
        );
        let data = bytes(i + 1000, 4321);
        let moved = s.source(&format!("mv{i}.dat"), &data);
        let rel = format!("tree{i}/moved.dat");
        py(
            &python,
            "import shutil, sys; shutil.move(sys.argv[1], sys.argv[2])",
            &[&moved, &s.m.path(&rel)],
        );
        assert!(!moved.exists(), "shutil.move removed its source");
        files.push((rel, data));
        s.check("copytree, move", &files);
    }
    s.finish(4 * RUNS);
}

// [S23]
#[test]
fn python_write_close_then_append_archives_the_whole_file() {
    python_scenario(
        "append",
        "import sys\n\
         p = sys.argv[1]\n\
         with open(p, 'w') as f: f.write('header\\n')\n\
         with open(p, 'a') as f: f.write('row 1\\n')\n\
         with open(p, 'a') as f: f.write('row 2\\n')\n\
         assert open(p).read() == 'header\\nrow 1\\nrow 2\\n'\n",
    );
}

#[test]
fn numpy_save_and_load_round_trip() {
    python_scenario(
        "npsave",
        "import sys, numpy as np\n\
         a = np.arange(30000, dtype='f8').reshape(100, 300) * 1.5\n\
         with open(sys.argv[1], 'wb') as f: np.save(f, a)\n\
         assert (np.load(sys.argv[1]) == a).all()\n",
    );
}

// [S23]
#[test]
fn numpy_open_memmap_maps_the_full_size_and_archives_it() {
    python_scenario(
        "openmemmap",
        "import sys, numpy as np\n\
         m = np.lib.format.open_memmap(sys.argv[1], mode='w+', dtype='i4', shape=(200, 500))\n\
         m[:] = np.arange(100000, dtype='i4').reshape(200, 500)\n\
         m.flush(); del m\n\
         r = np.load(sys.argv[1])\n\
         assert r.shape == (200, 500) and r[199, 499] == 99999\n",
    );
}

#[test]
fn numpy_memmap_written_and_flushed_is_archived() {
    python_scenario(
        "memmap",
        "import sys, numpy as np\n\
         m = np.memmap(sys.argv[1], dtype='u2', mode='w+', shape=(64, 1024))\n\
         m[:] = (np.arange(65536) % 65521).reshape(64, 1024)\n\
         m.flush(); del m\n\
         r = np.fromfile(sys.argv[1], dtype='u2')\n\
         assert r.size == 65536 and r[65535] == 65535 % 65521\n",
    );
}

#[test]
fn h5py_create_resize_attributes_and_read_back() {
    python_scenario(
        "h5",
        "import sys, numpy as np, h5py\n\
         with h5py.File(sys.argv[1], 'w', libver='latest') as f:\n\
         \x20   d = f.create_dataset('x', shape=(10, 4), maxshape=(None, 4), dtype='f4', chunks=(10, 4), track_times=False)\n\
         \x20   d[:] = 1.0\n\
         \x20   d.resize((50, 4))\n\
         \x20   d[10:] = 2.0\n\
         \x20   d.attrs['unit'] = 'K'\n\
         \x20   f.attrs['telescope'] = 'cairn'\n\
         with h5py.File(sys.argv[1], 'r') as f:\n\
         \x20   assert f['x'].shape == (50, 4) and f['x'][49, 3] == 2.0\n\
         \x20   assert f['x'].attrs['unit'] == 'K' and f.attrs['telescope'] == 'cairn'\n",
    );
}

#[test]
fn astropy_fits_writeto_then_open() {
    python_scenario(
        "fits",
        "import sys, numpy as np\n\
         from astropy.io import fits\n\
         data = np.arange(4096, dtype='>i2').reshape(64, 64)\n\
         fits.writeto(sys.argv[1], data, overwrite=False)\n\
         with fits.open(sys.argv[1]) as h:\n\
         \x20   assert (h[0].data == data).all()\n",
    );
}
