//! Recursive inotify watch of a node root, for auto-import.
//!
//! A [`Watcher`] holds one inotify instance with a watch on the root and on every directory
//! below it, except `<root>/.cairn/` (cairnd's own incoming transfers and staging) which is
//! never entered or reported. It turns kernel events into [`WatchEvent`]s with paths relative
//! to the root:
//!
//! - [`WatchEvent::FileReady`]: a regular file was closed after writing (`IN_CLOSE_WRITE`) or
//!   renamed into place (`IN_MOVED_TO`), so `write .x.tmp; mv .x.tmp x` reports only `x`. Files
//!   whose name starts with `.` are never reported (dot files are never imported), but
//!   directories whose name starts with `.` are watched and files in them are reported.
//!   "Ready" means "worth looking at": the caller still checks that no process holds the file
//!   open for writing ([`crate::procfs`]) before importing it. A file closed after writing
//!   several times is reported each time.
//! - [`WatchEvent::DirCreated`]: a directory appeared (`mkdir` or moved in). Before reporting
//!   it the watcher has added watches on it and on every directory already below it, so from
//!   then on nothing in it is missed; what was written before those watches existed is the
//!   caller's to find by scanning the directory *recursively* (subdirectories found by that
//!   walk are not reported separately). The same directory can be reported more than once, so
//!   the scan must be idempotent.
//! - [`WatchEvent::Overflow`]: the kernel queue overflowed and events were lost. The watcher
//!   re-walks the tree to watch directories it missed; the caller does a catch-up scan.
//!
//! A directory moved away (out of the root, or to another name within it) loses its watches
//! and those of everything below it; if it landed inside the root it is reported as
//! [`WatchEvent::DirCreated`] at its new place with fresh watches. If the root itself is
//! deleted, moved or unmounted, all watches go and the watcher falls silent;
//! [`Watcher::root_watched`] tells the caller to build a new one when the root is back.
//!
//! Limits:
//! - inotify sees only changes made through this kernel: files written into an NFS (or other
//!   network) file system by another machine produce no events. Periodic scans remain the
//!   backstop; the watcher only makes local imports prompt.
//! - Each watched directory costs kernel memory (about 1 KiB) and counts against
//!   `fs.inotify.max_user_watches`. Hitting that limit is an error from [`Watcher::new`] or
//!   [`Watcher::wait`] naming the directory; the caller should fall back to periodic scans.
//! - A file that appears without being written or renamed in place (a hard link, `O_TMPFILE`
//!   then `linkat`) produces no event until the next scan.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// cairnd's own directory under a node root: never watched, never reported.
use cairn_node::root::CAIRN_DIR;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// Bytes read from the inotify descriptor at a time (an event is 16 bytes plus its name).
const BUFFER_BYTES: usize = 64 * 1024;

/// Raw events taken from the kernel in one [`Watcher::wait`]; the rest wait for the next call.
const MAX_BATCH: usize = 4096;

/// What a watched directory reports. `IN_Q_OVERFLOW`, `IN_IGNORED` and `IN_UNMOUNT` come
/// without asking.
fn watch_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        // Only directories, never through a symlink, and no events for unlinked children.
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

/// Something the auto-import of a node should act on. Paths are relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A regular file was closed after writing or renamed into place.
    FileReady(PathBuf),
    /// A directory appeared; it and its subdirectories are now watched. Scan it recursively.
    DirCreated(PathBuf),
    /// Events were lost; do a catch-up scan of the whole root.
    Overflow,
}

/// A recursive inotify watch of one node root. See the module documentation.
#[derive(Debug)]
pub struct Watcher {
    root: PathBuf,
    inotify: Inotify,
    /// Each live watch and the directory it watches, relative to the root (`""` is the root).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    buffer: Vec<u8>,
    /// A watch failure met while handling a batch, returned by the next `wait` so that the
    /// events before it are delivered first.
    deferred_error: Option<io::Error>,
}

/// One kernel event, copied out of the read buffer.
struct RawEvent {
    wd: WatchDescriptor,
    mask: EventMask,
    name: Option<OsString>,
}

impl Watcher {
    /// Starts watching `root` and every directory below it except `<root>/.cairn`.
    ///
    /// Fails when inotify is unavailable, the root cannot be watched, or a directory below it
    /// cannot be watched for a reason other than having vanished meanwhile (the usual one is
    /// the `fs.inotify.max_user_watches` limit).
    pub fn new(root: &Path) -> io::Result<Watcher> {
        let mut watcher = Watcher {
            root: root.to_path_buf(),
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            buffer: vec![0; BUFFER_BYTES],
            deferred_error: None,
        };
        if !watcher.watch_tree(Path::new(""))? {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("node root {} is not a directory", root.display()),
            ));
        }
        Ok(watcher)
    }

    /// The root this watcher was made for.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the root itself is still watched. False once it was deleted, moved away or its
    /// file system unmounted: no more events will come, build a new watcher when it is back.
    pub fn root_watched(&self) -> bool {
        self.dirs.values().any(|rel| rel.as_os_str().is_empty())
    }

    /// Waits up to `timeout` for events and returns them in the order they happened, or an
    /// empty list when the time ran out (or a signal interrupted the wait). Never blocks for
    /// longer, so a caller can check a stop flag between calls.
    ///
    /// An error means a new directory could not be watched (it was still reported as
    /// [`WatchEvent::DirCreated`]) or inotify itself failed; the watcher stays usable.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Vec<WatchEvent>> {
        if let Some(error) = self.deferred_error.take() {
            return Err(error);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let raw = self.read_available()?;
            let events = self.handle(raw);
            if !events.is_empty() {
                return Ok(events);
            }
            if let Some(error) = self.deferred_error.take() {
                return Err(error);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.poll(left)? {
                return Ok(Vec::new());
            }
        }
    }

    /// Reads every event the kernel has queued (up to `MAX_BATCH`) without blocking.
    fn read_available(&mut self) -> io::Result<Vec<RawEvent>> {
        let mut raw = Vec::new();
        while raw.len() < MAX_BATCH {
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => raw.extend(events.map(|e| RawEvent {
                    wd: e.wd,
                    mask: e.mask,
                    name: e.name.map(OsStr::to_os_string),
                })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(raw)
    }

    /// Blocks until the inotify descriptor is readable or `timeout` passes; true if readable.
    fn poll(&self, timeout: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so that a sub-millisecond rest does not become a busy loop.
        let millis = timeout.as_nanos().div_ceil(1_000_000);
        let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pollfd` is a valid, exclusively borrowed `pollfd` for the duration of the
        // call, the count is 1, and the descriptor is owned by `self.inotify`, which outlives
        // the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        match ready {
            -1 => {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => Ok(false),
                    _ => Err(error),
                }
            }
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// Turns raw events into watch events, keeping the watch table in step.
    fn handle(&mut self, raw: Vec<RawEvent>) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        for RawEvent { wd, mask, name } in raw {
            if mask.contains(EventMask::Q_OVERFLOW) {
                events.push(WatchEvent::Overflow);
                // Directories made while events were lost have no watch yet.
                if let Err(error) = self.watch_tree(Path::new("")) {
                    self.defer(error);
                }
                continue;
            }
            if mask.contains(EventMask::IGNORED) {
                // The kernel dropped the watch (directory deleted, unmounted, or removed by us).
                self.dirs.remove(&wd);
                continue;
            }
            let Some(dir) = self.dirs.get(&wd) else {
                // A watch already forgotten; its late events no longer have a path.
                continue;
            };
            let Some(name) = name else {
                if mask.contains(EventMask::MOVE_SELF) {
                    // Only still mapped if its parent is not watched, i.e. the root moved.
                    let dir = dir.clone();
                    self.unwatch_below(&dir);
                }
                // DELETE_SELF and UNMOUNT are followed by IGNORED.
                continue;
            };
            let rel = dir.join(&name);
            if mask.contains(EventMask::ISDIR) {
                if mask.contains(EventMask::MOVED_FROM) {
                    self.unwatch_below(&rel);
                } else if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                    && !is_cairn_dir(&rel)
                {
                    match self.watch_tree(&rel) {
                        Ok(true) => events.push(WatchEvent::DirCreated(rel)),
                        Ok(false) => {} // gone again already
                        Err(error) => {
                            events.push(WatchEvent::DirCreated(rel));
                            self.defer(error);
                        }
                    }
                }
            } else if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
                && !name.as_encoded_bytes().starts_with(b".")
                && fs::symlink_metadata(self.root.join(&rel)).is_ok_and(|m| m.is_file())
            {
                events.push(WatchEvent::FileReady(rel));
            }
        }
        events
    }

    /// Keeps the first of several errors met in one batch.
    fn defer(&mut self, error: io::Error) {
        self.deferred_error.get_or_insert(error);
    }

    /// Watches `rel` and every directory below it (not `<root>/.cairn`). The watch on a
    /// directory is added before it is listed, so a subdirectory made meanwhile is seen either
    /// in the listing or as an event. Returns false if `rel` is not (or no longer) a
    /// directory. Directories that vanish during the walk are skipped.
    fn watch_tree(&mut self, rel: &Path) -> io::Result<bool> {
        // A bind mount can make a directory its own descendant; visit each inode once.
        let mut visited = HashSet::new();
        let mut stack = vec![rel.to_path_buf()];
        let mut top_watched = false;
        while let Some(dir) = stack.pop() {
            let abs = self.root.join(&dir);
            let wd = match self.inotify.watches().add(&abs, watch_mask()) {
                Ok(wd) => wd,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    let message = format!("failed to watch {}: {e}", abs.display());
                    return Err(io::Error::new(e.kind(), message));
                }
            };
            top_watched |= dir == rel;
            if !visited.insert(wd.clone()) {
                continue;
            }
            // Adding a watch to an inode already watched returns its descriptor: this updates
            // the path of a directory that was renamed while events were lost.
            self.dirs.insert(wd, dir.clone());
            let entries = match fs::read_dir(&abs) {
                Ok(entries) => entries,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    let message = format!("failed to list {}: {e}", abs.display());
                    return Err(io::Error::new(e.kind(), message));
                }
            };
            for entry in entries {
                let Ok(entry) = entry else { continue };
                // `file_type` does not follow symlinks: a link to a directory is not entered.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let child = dir.join(entry.file_name());
                    if !is_cairn_dir(&child) {
                        stack.push(child);
                    }
                }
            }
        }
        Ok(top_watched)
    }

    /// Drops the watches of `rel` and of every directory below it (it moved; paths are stale).
    fn unwatch_below(&mut self, rel: &Path) {
        let stale: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, dir)| dir.starts_with(rel))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in stale {
            self.dirs.remove(&wd);
            // Fails only if the kernel already dropped it; its IGNORED event is then harmless.
            let _ = self.inotify.watches().remove(wd);
        }
    }
}

/// Whether `rel` is `<root>/.cairn` (only the one at the top of the root is cairnd's).
fn is_cairn_dir(rel: &Path) -> bool {
    rel == Path::new(CAIRN_DIR)
}

/// Errors that mean the directory is gone or was replaced by something else: nothing to watch.
fn vanished(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_node::NodeRoot;
    use std::fs::File;
    use std::io::Write;

    /// Long enough for a loaded CI machine; tests only wait this long when they are failing.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn watcher(root: &Path) -> Watcher {
        Watcher::new(root).expect("watcher starts")
    }

    /// Collects events until one equal to `last` arrives, then returns all of them.
    fn events_until(watcher: &mut Watcher, last: &WatchEvent) -> Vec<WatchEvent> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen.extend(watcher.wait(Duration::from_millis(100)).expect("wait"));
            if seen.contains(last) {
                return seen;
            }
        }
        panic!("expected {last:?}, saw only {seen:?}");
    }

    /// Writes `done` at the root and collects everything up to its event: since events come
    /// in order, whatever was done before it has been reported by then, or never will be.
    fn events_until_sentinel(watcher: &mut Watcher) -> Vec<WatchEvent> {
        fs::write(watcher.root().join("done"), b"").expect("sentinel written");
        let mut events = events_until(watcher, &ready("done"));
        assert_eq!(events.pop(), Some(ready("done")));
        events
    }

    fn ready(rel: &str) -> WatchEvent {
        WatchEvent::FileReady(rel.into())
    }

    fn created(rel: &str) -> WatchEvent {
        WatchEvent::DirCreated(rel.into())
    }

    #[test]
    fn file_written_and_closed_is_ready() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut watcher = watcher(root.path());
        assert_eq!(watcher.root(), root.path());
        fs::write(root.path().join("obs.fits"), b"data").expect("file written");
        assert_eq!(
            events_until(&mut watcher, &ready("obs.fits")),
            [ready("obs.fits")]
        );
    }

    #[test]
    fn file_still_open_is_not_ready_until_closed() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut watcher = watcher(root.path());
        let mut file = File::create(root.path().join("big.dat")).expect("file created");
        file.write_all(b"first half").expect("write");
        assert_eq!(watcher.wait(Duration::from_millis(300)).expect("wait"), []);
        file.write_all(b"second half").expect("write");
        drop(file);
        assert_eq!(
            events_until(&mut watcher, &ready("big.dat")),
            [ready("big.dat")]
        );
    }

    #[test]
    fn renamed_dot_temp_file_is_ready_under_final_name_only() {
        let root = tempfile::tempdir().expect("a temp dir");
        fs::create_dir(root.path().join("a")).expect("mkdir");
        let mut watcher = watcher(root.path());
        fs::write(root.path().join("a/.x.tmp"), b"data").expect("temp written");
        fs::rename(root.path().join("a/.x.tmp"), root.path().join("a/x")).expect("mv");
        assert_eq!(events_until_sentinel(&mut watcher), [ready("a/x")]);
    }

    #[test]
    fn new_nested_directory_is_watched() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut watcher = watcher(root.path());
        fs::create_dir_all(root.path().join("d1/d2")).expect("mkdir -p");
        let first = events_until(&mut watcher, &created("d1"));
        fs::write(root.path().join("d1/d2/f"), b"data").expect("file written");
        let mut events = first;
        events.extend(events_until(&mut watcher, &ready("d1/d2/f")));

        // d2 is reported too if it was made after the watch on d1 was added.
        let (dirs, files): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|e| matches!(e, WatchEvent::DirCreated(_)));
        assert!(
            dirs.iter()
                .all(|e| *e == created("d1") || *e == created("d1/d2")),
            "{dirs:?}"
        );
        assert_eq!(dirs[0], created("d1"));
        assert_eq!(files, [ready("d1/d2/f")]);
    }

    #[test]
    fn existing_directories_are_watched_including_dot_directories() {
        let root = tempfile::tempdir().expect("a temp dir");
        fs::create_dir_all(root.path().join("2025/02/21")).expect("mkdir");
        fs::create_dir_all(root.path().join(".hidden/sub")).expect("mkdir");
        let mut watcher = watcher(root.path());
        fs::write(root.path().join("2025/02/21/a.dat"), b"1").expect("file written");
        fs::write(root.path().join(".hidden/sub/b.dat"), b"2").expect("file written");
        fs::create_dir(root.path().join(".new")).expect("mkdir");
        let first = events_until(&mut watcher, &created(".new"));
        fs::write(root.path().join(".new/c.dat"), b"3").expect("file written");
        let mut events = first;
        events.extend(events_until_sentinel(&mut watcher));
        assert_eq!(
            events,
            [
                ready("2025/02/21/a.dat"),
                ready(".hidden/sub/b.dat"),
                created(".new"),
                ready(".new/c.dat")
            ]
        );
    }

    #[test]
    fn nothing_under_cairn_dir_is_reported() {
        let root = tempfile::tempdir().expect("a temp dir");
        let layout = NodeRoot::new(root.path());
        fs::create_dir_all(layout.tmp()).expect("mkdir");
        let mut watcher = watcher(root.path());
        fs::write(layout.tmp().join("incoming"), b"x").expect("file written");
        fs::create_dir_all(layout.staging().join("a/b")).expect("mkdir");
        fs::write(layout.staging().join("a/b/f"), b"x").expect("file written");
        fs::write(layout.marker(), b"x").expect("file written");
        assert_eq!(events_until_sentinel(&mut watcher), []);
    }

    #[test]
    fn cairn_dir_made_after_start_is_not_entered() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut watcher = watcher(root.path());
        let layout = NodeRoot::new(root.path());
        fs::create_dir_all(layout.staging()).expect("mkdir");
        fs::write(layout.staging().join("f"), b"x").expect("file written");
        // Only the top-level one is cairnd's: a `.cairn` deeper down is data.
        fs::create_dir_all(root.path().join("a/.cairn")).expect("mkdir");
        let first = events_until(&mut watcher, &created("a"));
        fs::write(root.path().join("a/.cairn/f"), b"x").expect("file written");
        let mut events = first;
        events.extend(events_until_sentinel(&mut watcher));
        events.retain(|e| *e != created("a/.cairn"));
        assert_eq!(events, [created("a"), ready("a/.cairn/f")]);
    }

    #[test]
    fn dot_files_are_not_reported() {
        let root = tempfile::tempdir().expect("a temp dir");
        fs::create_dir(root.path().join("a")).expect("mkdir");
        let mut watcher = watcher(root.path());
        fs::write(root.path().join(".hidden"), b"x").expect("file written");
        fs::write(root.path().join("a/.partial"), b"x").expect("file written");
        fs::rename(
            root.path().join("a/.partial"),
            root.path().join("a/.renamed"),
        )
        .expect("mv");
        assert_eq!(events_until_sentinel(&mut watcher), []);
    }

    #[test]
    fn directory_moved_within_root_is_reported_at_its_new_place() {
        let root = tempfile::tempdir().expect("a temp dir");
        fs::create_dir_all(root.path().join("old/sub")).expect("mkdir");
        let mut watcher = watcher(root.path());
        fs::rename(root.path().join("old"), root.path().join("new")).expect("mv");
        let first = events_until(&mut watcher, &created("new"));
        fs::write(root.path().join("new/sub/f"), b"x").expect("file written");
        let mut events = first;
        events.extend(events_until_sentinel(&mut watcher));
        assert_eq!(events, [created("new"), ready("new/sub/f")]);
    }

    #[test]
    fn directory_moved_out_of_root_is_forgotten() {
        let root = tempfile::tempdir().expect("a temp dir");
        let elsewhere = tempfile::tempdir().expect("a temp dir");
        fs::create_dir_all(root.path().join("leaving/sub")).expect("mkdir");
        let mut watcher = watcher(root.path());
        let watched = watcher.dirs.len();
        let away = elsewhere.path().join("left");
        fs::rename(root.path().join("leaving"), &away).expect("mv");
        // Let the watcher see the move before writing into the moved directory.
        assert_eq!(watcher.wait(Duration::from_millis(300)).expect("wait"), []);
        fs::write(away.join("sub/f"), b"x").expect("file written");
        fs::write(away.join("g"), b"x").expect("file written");
        assert_eq!(events_until_sentinel(&mut watcher), []);
        assert_eq!(watcher.dirs.len(), watched - 2);
    }

    #[test]
    fn deleted_directory_watch_is_forgotten() {
        let root = tempfile::tempdir().expect("a temp dir");
        fs::create_dir_all(root.path().join("gone/sub")).expect("mkdir");
        let mut watcher = watcher(root.path());
        assert_eq!(watcher.dirs.len(), 3);
        fs::remove_dir_all(root.path().join("gone")).expect("rm -r");
        assert_eq!(events_until_sentinel(&mut watcher), []);
        assert_eq!(watcher.dirs.len(), 1);
        assert!(watcher.root_watched());
    }

    #[test]
    fn deleted_root_stops_the_watcher() {
        let parent = tempfile::tempdir().expect("a temp dir");
        let root = parent.path().join("node");
        fs::create_dir(&root).expect("mkdir");
        let mut watcher = watcher(&root);
        fs::remove_dir(&root).expect("rmdir");
        let deadline = Instant::now() + PATIENCE;
        while watcher.root_watched() && Instant::now() < deadline {
            assert_eq!(watcher.wait(Duration::from_millis(100)).expect("wait"), []);
        }
        assert!(!watcher.root_watched());
    }

    #[test]
    fn overflow_is_reported_and_rewatches_missed_directories() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut watcher = watcher(root.path());
        fs::create_dir(root.path().join("late")).expect("mkdir");
        events_until(&mut watcher, &created("late"));
        // As if the creation of `late` had been among the lost events.
        watcher.unwatch_below(Path::new("late"));
        let root_wd = watcher.dirs.keys().next().expect("root watched").clone();
        let overflow = RawEvent {
            wd: root_wd,
            mask: EventMask::Q_OVERFLOW,
            name: None,
        };
        assert_eq!(watcher.handle(vec![overflow]), [WatchEvent::Overflow]);
        fs::write(root.path().join("late/f"), b"x").expect("file written");
        assert_eq!(events_until_sentinel(&mut watcher), [ready("late/f")]);
    }

    #[test]
    fn watcher_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Watcher>();
    }

    #[test]
    fn missing_root_is_an_error() {
        let parent = tempfile::tempdir().expect("a temp dir");
        let error = Watcher::new(&parent.path().join("absent")).expect_err("no root");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn wait_returns_empty_after_timeout() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut watcher = watcher(root.path());
        let start = Instant::now();
        assert_eq!(watcher.wait(Duration::from_millis(50)).expect("wait"), []);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
