//! Which files are open for writing on this host, read from `/proc`.
//!
//! Auto-import holds to "a file still open for writing is not imported": a writer that closes
//! one descriptor may hold another, and `rsync`/`cp` of a large file can look finished to a
//! close-write event from another process. Before registering a file, cairnd checks it here.
//!
//! How: every `/proc/PID/fd/FD` link names what the descriptor refers to, and
//! `/proc/PID/fdinfo/FD` carries its open `flags:` in octal; the access mode bits
//! (`O_ACCMODE`) say whether it was opened `O_WRONLY` or `O_RDWR`. Links that are not paths
//! (`pipe:[…]`, `socket:[…]`, `anon_inode:…`) are ignored, and the kernel's ` (deleted)` suffix
//! on unlinked files is stripped.
//!
//! Limits, all of which the caller must live with:
//! - It is a snapshot. Processes come and go while `/proc` is read; those that vanish are
//!   skipped, and a file opened after the scan is not in it. Check right before importing.
//! - Only processes whose descriptors this process may read are seen (same user, or root /
//!   `CAP_SYS_PTRACE`; a `/proc` mounted with `hidepid` hides others entirely).
//!   [`OpenWriters::unreadable_processes`] counts those that were refused, so the caller can
//!   say that the check is incomplete. cairnd should run as root or as the writers' user.
//! - Only this host: a writer on another machine over NFS has no entry here, and a writer in
//!   another mount namespace shows paths as it sees them.
//! - A full scan reads one small file per writable-looking descriptor of every process; take
//!   one [`OpenWriters`] per batch of files rather than one scan per file.
//! - Bounded: the descriptors are read on a thread of the walk's own, and a process that does not
//!   answer within a second (one stuck in the kernel on a hung FUSE or NFS mount) is passed over
//!   and logged; a walk never holds its caller more than 5 s. `procfs/walk.rs` says how.
//!   [`OpenWriters::passed_over_processes`] counts the processes passed over.

mod walk;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use walk::{Limits, ProcReader, Walker, Want};

/// The set of files that some process on this host had open for writing when it was built.
#[derive(Debug, Default, Clone)]
pub struct OpenWriters {
    /// Canonical absolute paths, as `/proc` reports them.
    paths: HashSet<PathBuf>,
    /// Processes whose descriptors could not be read for lack of permission.
    unreadable: usize,
    /// Processes passed over because their descriptors did not answer in time.
    passed_over: usize,
}

impl OpenWriters {
    /// Whether `path` was open for writing. The path is canonicalized first (the `/proc` links
    /// already are); if that fails (the file is gone) it is compared as given, made absolute.
    pub fn contains(&self, path: &Path) -> bool {
        self.paths.contains(&comparable(path))
    }

    /// How many processes were skipped because their descriptors were not readable by this
    /// process; when non-zero, a file open by one of them would not be reported.
    pub fn unreadable_processes(&self) -> usize {
        self.unreadable
    }

    /// How many processes were passed over because their descriptors did not answer in time
    /// (each is logged); when non-zero, a file open by one of them would not be reported.
    pub fn passed_over_processes(&self) -> usize {
        self.passed_over
    }
}

/// The walker of this process: it remembers which processes are stuck from one walk to the next.
static WALKER: LazyLock<Walker> = LazyLock::new(|| Walker::new(Arc::new(Proc), Limits::default()));

/// Scans `/proc` for every file open for writing by any (readable) process on this host.
///
/// Fails only when `/proc` itself cannot be listed (or no thread can be started to read it);
/// processes and descriptors that vanish, cannot be read or do not answer in time are skipped.
pub fn open_for_writing() -> io::Result<OpenWriters> {
    let found = WALKER.walk(Want::Writers)?;
    Ok(OpenWriters {
        paths: found.paths,
        unreadable: found.unreadable,
        passed_over: found.passed_over,
    })
}

/// Whether some (readable) process on this host has `path` open for writing. Cheaper than
/// [`open_for_writing`] for one file: only descriptors that point at `path` are examined, and
/// the walk stops at the first writer.
pub fn is_open_for_writing(path: &Path) -> io::Result<bool> {
    let found = WALKER.walk(Want::Writer(comparable(path)))?;
    Ok(!found.paths.is_empty())
}

/// The form of `path` that is compared against `/proc` links.
fn comparable(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or(path.into()))
}

/// The files below `dir` that some (readable) process on this host has open, in any mode.
/// Empty if `/proc` cannot be read.
pub fn open_under(dir: &Path) -> HashSet<PathBuf> {
    WALKER
        .walk(Want::Under(comparable(dir)))
        .map(|found| found.paths)
        .unwrap_or_default()
}

/// This host's `/proc`.
struct Proc;

impl ProcReader for Proc {
    fn pids(&self) -> io::Result<Vec<u32>> {
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            // Not a process: `self`, `meminfo`, …
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    fn links(&self, pid: u32) -> io::Result<Vec<(OsString, PathBuf)>> {
        let mut links = Vec::new();
        for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
            let Ok(fd) = fd else { continue };
            if let Ok(link) = fs::read_link(fd.path()) {
                links.push((fd.file_name(), link));
            }
        }
        Ok(links)
    }

    fn flags(&self, pid: u32, fd: &OsStr) -> Option<u32> {
        let mut path = PathBuf::from(format!("/proc/{pid}/fdinfo"));
        path.push(fd);
        flags(&fs::read_to_string(path).ok()?)
    }
}

/// The file a `/proc/PID/fd` link points at, or `None` for pipes, sockets and other
/// non-path objects (whose links are not absolute paths).
fn file_path(link: PathBuf) -> Option<PathBuf> {
    if !link.is_absolute() {
        return None;
    }
    match link.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(bytes) => Some(PathBuf::from(OsStr::from_bytes(bytes))),
        None => Some(link),
    }
}

/// The open flags from the text of a `/proc/PID/fdinfo/FD` file (`flags:\t0100002`, octal).
fn flags(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
}

/// Whether open flags give write access (`O_WRONLY` or `O_RDWR`).
fn is_write_mode(flags: u32) -> bool {
    let mode = flags as libc::c_int & libc::O_ACCMODE;
    mode == libc::O_WRONLY || mode == libc::O_RDWR
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Write;

    #[test]
    fn files_open_in_any_mode_under_a_directory_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a/b.dat");
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "x").unwrap();
        std::fs::write(other.path().join("c.dat"), "y").unwrap();
        let reading = File::open(&inside).unwrap();
        let _elsewhere = File::open(other.path().join("c.dat")).unwrap();
        let open = open_under(dir.path());
        assert_eq!(open, HashSet::from([comparable(&inside)]));
        drop(reading);
        assert!(open_under(dir.path()).is_empty());
    }

    #[test]
    fn file_open_for_writing_is_reported_until_closed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("growing.dat");
        let mut file = File::create(&path).expect("file created");
        file.write_all(b"partial").expect("write");

        assert!(open_for_writing().expect("scan").contains(&path));
        assert!(is_open_for_writing(&path).expect("scan"));

        drop(file);
        assert!(!open_for_writing().expect("scan").contains(&path));
        assert!(!is_open_for_writing(&path).expect("scan"));
    }

    #[test]
    fn a_file_a_child_process_holds_open_for_writing_is_found() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("child.dat");
        // The child opens the file for appending on descriptor 3 and holds it until its stdin
        // closes.
        let mut child = Command::new("sh")
            .args(["-c", r#"exec 3>>"$1"; echo ready; read line || true"#, "sh"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh started");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("the child's stdout"))
            .read_line(&mut ready)
            .expect("the child's first line");
        assert_eq!(ready, "ready\n");

        let writers = open_for_writing().expect("scan");
        assert!(writers.contains(&path));
        assert!(is_open_for_writing(&path).expect("scan"));
        assert!(open_under(dir.path()).contains(&comparable(&path)));

        drop(child.stdin.take());
        assert!(child.wait().expect("the child ended").success());
        assert!(!is_open_for_writing(&path).expect("scan"));
        assert!(!open_for_writing().expect("scan").contains(&path));
    }

    #[test]
    fn file_open_read_write_is_reported() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("rw.dat");
        File::create(&path).expect("file created");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open rw");
        assert!(is_open_for_writing(&path).expect("scan"));
        drop(file);
        assert!(!is_open_for_writing(&path).expect("scan"));
    }

    #[test]
    fn file_open_read_only_is_not_reported() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("done.dat");
        std::fs::write(&path, b"complete").expect("file written");
        let file = File::open(&path).expect("open read-only");

        assert!(!open_for_writing().expect("scan").contains(&path));
        assert!(!is_open_for_writing(&path).expect("scan"));
        drop(file);
    }

    #[test]
    fn path_is_compared_canonically() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let path = dir.path().join("sub").join("f");
        let _file = File::create(&path).expect("file created");
        let roundabout = dir
            .path()
            .join("sub")
            .join("..")
            .join("sub")
            .join(".")
            .join("f");
        assert!(is_open_for_writing(&roundabout).expect("scan"));
    }

    #[test]
    fn deleted_file_still_open_is_reported_by_its_old_path() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("unlinked");
        let _file = File::create(&path).expect("file created");
        let canonical = fs::canonicalize(&path).expect("canonical");
        std::fs::remove_file(&path).expect("unlink");
        assert!(open_for_writing().expect("scan").contains(&canonical));
    }

    #[test]
    fn fdinfo_flags_are_parsed_as_octal() {
        let info = "pos:\t0\nflags:\t0100001\nmnt_id:\t25\nino:\t42\n";
        assert_eq!(flags(info), Some(0o100001));
        assert!(is_write_mode(0o100001));
        assert!(is_write_mode(0o2));
        assert!(!is_write_mode(0o100000));
        assert_eq!(flags("pos:\t0\n"), None);
    }

    #[test]
    fn non_file_links_are_ignored_and_deleted_suffix_stripped() {
        assert_eq!(file_path("pipe:[1234]".into()), None);
        assert_eq!(file_path("socket:[99]".into()), None);
        assert_eq!(file_path("anon_inode:[eventfd]".into()), None);
        assert_eq!(
            file_path("/data/a b (deleted)".into()),
            Some("/data/a b".into())
        );
        assert_eq!(file_path("/data/x".into()), Some("/data/x".into()));
    }
}
