//! Writing through the mount: a new file is staged on the write node (`.cairn/staging/`), or
//! kept under `.cairn/kept/PATH` when its name starts with `.`; its md5 is computed as it is
//! written ([`crate::staged`]).
//!
//! When its writer closes it, before `close` returns, the journal notes it
//! ([`crate::journal`]): from then on it survives a kill of the mount. At its last close it
//! settles: for `[fs] settle` it may still be reopened, appended to, truncated, chmod-ed and
//! re-timed, and any of these starts the wait again; then the import queue takes it
//! ([`super::import`]) and it can no longer change. A file whose writer was killed, or one of
//! whose writes failed, is discarded at its last close instead: a truncated file is never
//! archived.

use std::ffi::OsStr;
use std::fs::{File as StdFile, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn_catalog::catalog::normalize_path;
use cairn_catalog::model::DirId;
use cairn_node::NodeRoot;
use cairn_node::importer::Verdict;
use tracing::{info, warn};

use super::{Attr, Caller, Core, FsError, Opened, Result, SetAttr, name_str};
use crate::attr::{READ, WRITE};
use crate::handles::Handle;
use crate::locals::{Local, LocalKind, LocalRef, Stage, join};
use crate::staged::Writer;

/// Numbers staged files of this process (`PID-START-N` under `.cairn/staging/`).
static STAGED_SEQ: AtomicU64 = AtomicU64::new(0);

impl Core {
    pub(super) fn open_local(
        &self,
        who: &Caller,
        l: LocalRef,
        flags: i32,
        wants_write: bool,
    ) -> Result<Opened> {
        let mut g = l.lock().expect("local");
        if !who.is_root() || wants_write {
            let a = g.attr()?;
            let mask = if wants_write { WRITE } else { 0 }
                | if flags & libc::O_ACCMODE != libc::O_WRONLY {
                    READ
                } else {
                    0
                };
            if !a.allows(who, mask) {
                return Err(FsError::Access);
            }
            self.search(who, g.dir_id)?;
        }
        if wants_write && g.writers > 0 && g.writer_uid != Some(who.uid) {
            // No user's write may reach another user's file while that user writes it.
            warn!(
                "uid {} may not write {}: uid {:?} has it open for writing",
                who.uid,
                g.path(),
                g.writer_uid
            );
            return Err(FsError::Access);
        }
        if !wants_write {
            let f = StdFile::open(&g.backing)?;
            let ino = g.ino;
            drop(g);
            return Ok(Opened {
                fh: self.handles.insert(Handle::Plain(f, ino)),
                passthrough: None,
                streaming: false,
            });
        }
        self.write_root()?;
        if g.stage.frozen() {
            return Err(being_archived(&g));
        }
        g.stage = Stage::Writing;
        if g.writer.is_none() {
            let f = OpenOptions::new().read(true).write(true).open(&g.backing)?;
            let len = f.metadata()?.len();
            g.writer = Some(Writer::new(f, len));
        }
        if flags & libc::O_TRUNC != 0
            && let Some(w) = g.writer.as_mut()
        {
            w.file.set_len(0)?;
            w.truncated(0);
        }
        g.hashed = None;
        g.synced = false;
        g.writers += 1;
        g.writer_uid = Some(who.uid);
        drop(g);
        Ok(Opened {
            fh: self.handles.insert(Handle::Write(l)),
            passthrough: None,
            streaming: false,
        })
    }

    pub fn create(
        &self,
        who: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<(Attr, u64)> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?.to_owned();
        let (_, root) = self.write_root()?;
        let parent_attr = self.may_change(who, dir_id)?;
        if self.find(parent, OsStr::new(&name)).is_ok() {
            return Err(FsError::Exists(name));
        }
        let dir_path = self.dir_path(dir_id)?;
        check_name(&root, &dir_path, &name)?;
        let (kind, backing) = if name.starts_with('.') {
            (LocalKind::Kept, kept_path(&root, &dir_path, &name))
        } else {
            let n = STAGED_SEQ.fetch_add(1, Ordering::Relaxed);
            // PID-START-N: a later mount tells the files of a mount that is gone.
            let owner = self.owner.replace(':', "-");
            (
                LocalKind::Staged,
                staging_dir(&root).join(format!("{owner}-{n}")),
            )
        };
        let create = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .open(&backing)
        };
        // Its directory is made when it is missing, not checked for at every create.
        let f = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(backing.parent().unwrap_or(&root))?;
                create()?
            }
            other => other?,
        };
        // The file belongs to its writer, here and, once archived, by name everywhere. (A
        // mount that is not root keeps it as its own.)
        let (_, _, gid) = self.owner_names(who, Some(&parent_attr));
        let mut meta = f.metadata()?;
        if (meta.uid(), meta.gid()) != (who.uid, gid) {
            match std::os::unix::fs::fchown(&f, Some(who.uid), Some(gid)) {
                Ok(()) => meta = f.metadata()?,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let l = self.locals.add(dir_id, &dir_path, &name, kind, backing);
        let attr = {
            let mut g = l.lock().expect("local");
            g.writer = Some(Writer::new(f, 0));
            g.writers = 1;
            g.writer_uid = Some(who.uid);
            g.attr_of(&meta)?
        };
        Ok((attr, self.handles.insert(Handle::Write(l))))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let l = self.handles.writing(fh).ok_or(FsError::BadHandle)?;
        let mut g = l.lock().expect("local");
        g.synced = false;
        let w = g.writer.as_mut().ok_or(FsError::BadHandle)?;
        match w.write(offset, data) {
            Ok(n) => Ok(n),
            Err(e) => {
                let why = format!("a write to {} failed: {e}", g.backing.display());
                spoil(&mut g, why);
                Err(e.into())
            }
        }
    }

    /// `fsync` of a file being written makes its bytes so far durable where they are (a file
    /// kept under a dot name is never imported, so this is its only fsync). Others: nothing
    /// to do, archived files are durable already.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        let Some(l) = self.handles.writing(fh) else {
            return Ok(());
        };
        let mut g = l.lock().expect("local");
        let Some(w) = &g.writer else { return Ok(()) };
        if let Err(e) = w.file.sync_data() {
            let why = format!("fsync of {} failed: {e}", g.backing.display());
            spoil(&mut g, why);
            return Err(e.into());
        }
        g.synced = true;
        Ok(())
    }

    /// A descriptor of `fh` was closed by process `pid`. A writer that is dying from a signal
    /// (killed mid-file) marks the file so that it is not imported. Any other close is a
    /// promise kept from here on: the journal notes the file before `close` returns (synced
    /// to disk when the writer fsynced the file), so that no kill of this mount loses it.
    ///
    /// Should `pid` not tell in time whether it is dying (it is in the middle of an exec),
    /// `stalled` runs on another thread, to finish the flush ([`Core::flush_alive`]) and
    /// answer it; this returns `Ok(false)` then: the caller answers nothing.
    pub fn flush(
        &self,
        fh: u64,
        pid: u32,
        stalled: impl FnOnce() + Send + 'static,
    ) -> Result<bool> {
        let Some(l) = self.handles.writing(fh) else {
            return Ok(true);
        };
        use crate::dying::{Verdict as Closer, check};
        match check(pid, stalled) {
            Closer::Stalled => Ok(false),
            Closer::Dying => {
                let why = format!("its writer (pid {pid}) was killed mid-file");
                spoil(&mut l.lock().expect("local"), why);
                Ok(true)
            }
            Closer::Alive => self.flush_alive(fh).map(|()| true),
        }
    }

    /// The flush of `fh` by a process that is not dying: the file is noted in the journal.
    pub fn flush_alive(&self, fh: u64) -> Result<()> {
        let Some(l) = self.handles.writing(fh) else {
            return Ok(());
        };
        let mut g = l.lock().expect("local");
        if g.kind != LocalKind::Staged || g.spoiled.is_some() || g.gone {
            return Ok(());
        }
        self.journal_closed(&mut g)
    }

    /// Notes in the journal that `g`'s writer closed it.
    fn journal_closed(&self, g: &mut Local) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let key = match &g.journalled {
            Some(k) => k.clone(),
            None => self.journal_key(&g.backing)?,
        };
        j.closed(&key, &g.path(), &self.owner, g.synced)
            .map_err(|e| FsError::Io(io::Error::other(e.to_string())))?;
        g.journalled = Some(key);
        Ok(())
    }

    /// A local's key in the journal: where its bytes are, relative to the write node's root.
    fn journal_key(&self, backing: &Path) -> Result<String> {
        let (_, root) = self.write_root()?;
        Ok(backing
            .strip_prefix(&root)
            .map_err(|_| {
                FsError::Invalid(format!("{} is not on the write node", backing.display()))
            })?
            .to_string_lossy()
            .into_owned())
    }

    /// Takes a local's row out of the journal (unlinked, or kept without import).
    fn journal_dropped(&self, g: &mut Local) {
        if let (Some(j), Some(key)) = (&self.journal, g.journalled.take())
            && let Err(e) = j.dropped(&key)
        {
            warn!("{}: {e}", g.path());
        }
    }

    pub(super) fn close_writer(&self, l: &LocalRef) -> Result<()> {
        let mut g = l.lock().expect("local");
        g.writers = g.writers.saturating_sub(1);
        if g.writers > 0 {
            return Ok(());
        }
        let writer = g.writer.take();
        g.writer_uid = None;
        if g.spoiled.is_some() || g.gone {
            if let Some(why) = &g.spoiled {
                let _ = std::fs::remove_file(&g.backing);
                info!("Discarded {}: {why}.", g.path());
            }
            self.journal_dropped(&mut g);
            self.forget_local(&mut g);
            return Ok(());
        }
        if let Some(w) = writer {
            g.hashed = w.finish_inline()?;
        }
        // Under the name it has now: a rename while it was open (`rsync` renames right after
        // `close`, and the kernel may pass the release on after the rename) takes effect here.
        self.keep_or_settle(&mut g)
    }

    /// A local file with no handle left, under the name it has now: kept on the write node
    /// where that name says (a dot name, or a path the import rules skip), or settling towards
    /// its import.
    fn keep_or_settle(&self, g: &mut Local) -> Result<()> {
        if g.name.starts_with('.') || g.kind == LocalKind::Kept && !self.importable(g) {
            let (_, root) = self.write_root()?;
            keep(&root, g)?;
            self.journal_dropped(g);
            g.stage = Stage::Writing;
            return Ok(());
        }
        g.kind = LocalKind::Staged;
        self.settle(g)
    }

    /// A closed file under a plain name starts to settle; the import queue takes it when it
    /// has stayed closed and unchanged for `[fs] settle`.
    fn settle(&self, g: &mut Local) -> Result<()> {
        if g.journalled.is_none() {
            // Closed without a flush seen here (a rename of a closed kept file): noted now.
            self.journal_closed(g)?;
        }
        let until = Instant::now() + self.opts.settle;
        g.stage = Stage::Settling { until };
        self.imports.settle(g.me(), until);
        Ok(())
    }

    pub(super) fn setattr_local(&self, l: &LocalRef, ch: &SetAttr) -> Result<Attr> {
        let (mode, size, atime, mtime) = (ch.mode, ch.size, ch.atime, ch.mtime);
        let mut g = l.lock().expect("local");
        if g.stage.frozen() {
            // Being archived: as for an archived file, only what changes nothing is accepted.
            let a = g.attr()?;
            if size.is_none_or(|s| s == a.size)
                && mtime.is_none_or(|t| t == a.mtime)
                && atime.is_none_or(|_| mtime.is_some())
                && mode.is_none()
                && ch.uid.is_none_or(|u| u == a.uid)
                && ch.gid.is_none_or(|x| x == a.gid)
            {
                return Ok(a);
            }
            return Err(being_archived(&g));
        }
        if ch.uid.is_some() || ch.gid.is_some() {
            std::os::unix::fs::chown(&g.backing, ch.uid, ch.gid)?;
        }
        if let Some(len) = size {
            g.synced = false;
            match g.writer.as_mut() {
                Some(w) => {
                    w.file.set_len(len)?;
                    w.truncated(len);
                }
                None => {
                    OpenOptions::new()
                        .write(true)
                        .open(&g.backing)?
                        .set_len(len)?;
                    g.hashed = None;
                }
            }
        }
        if let Some(m) = mode {
            std::fs::set_permissions(&g.backing, std::fs::Permissions::from_mode(m & 0o7777))?;
        }
        if atime.is_some() || mtime.is_some() {
            let f = OpenOptions::new().write(true).open(&g.backing)?;
            let mut times = std::fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(t);
            }
            if let Some(t) = mtime {
                times = times.set_modified(t);
            }
            f.set_times(times)?;
        }
        if let Stage::Settling { .. } = g.stage {
            // Changed: it settles again from now.
            let until = Instant::now() + self.opts.settle;
            g.stage = Stage::Settling { until };
            self.imports.settle(g.me(), until);
        }
        Ok(g.attr()?)
    }

    pub(super) fn unlink_local(&self, l: &LocalRef) -> Result<()> {
        let mut g = l.lock().expect("local");
        if g.stage.frozen() {
            return Err(being_archived(&g));
        }
        match std::fs::remove_file(&g.backing) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.journal_dropped(&mut g);
        self.forget_local(&mut g);
        Ok(())
    }

    /// Renames a local file; renamed to a plain name (and closed), it settles and is imported.
    pub(super) fn rename_local(
        &self,
        l: &LocalRef,
        dir_id: DirId,
        dir_path: &str,
        name: &str,
    ) -> Result<()> {
        let mut g = l.lock().expect("local");
        if g.stage.frozen() {
            return Err(being_archived(&g));
        }
        let (_, root) = self.write_root()?;
        check_name(&root, dir_path, name)?;
        self.locals.rename(&mut g, dir_id, dir_path, name);
        if let (Some(j), Some(key)) = (&self.journal, &g.journalled) {
            j.moved(key, &g.path())
                .map_err(|e| FsError::Io(io::Error::other(e.to_string())))?;
        }
        if g.writers > 0 {
            // Still being written: it lands (or is imported) under its new name when closed.
            return Ok(());
        }
        self.keep_or_settle(&mut g)
    }

    fn importable(&self, g: &Local) -> bool {
        normalize_path(&g.path())
            .is_ok_and(|p| matches!(self.importer.check(&p), Verdict::Import { .. }))
    }

    /// Makes the files kept by earlier mounts on this host visible again.
    pub(super) fn load_kept(&self) {
        let Ok((_, root)) = self.write_root() else {
            return;
        };
        let top = NodeRoot::new(&root).kept();
        let mut todo = vec![top.clone()];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() {
                    todo.push(e.path());
                    continue;
                }
                if !t.is_file() {
                    continue;
                }
                let path = e.path();
                let rel = path.strip_prefix(&top).expect("under the kept dir");
                let dir_path = rel
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = e.file_name().to_string_lossy().into_owned();
                // Its directory may have been removed from the catalog meanwhile (it looked
                // empty elsewhere): it is made again, since this host has a file in it.
                let dir = self.resolve_dir(&dir_path);
                match dir {
                    Ok(dir_id) => {
                        self.locals
                            .add(dir_id, &dir_path, &name, LocalKind::Kept, path);
                    }
                    Err(e) => warn!("Cannot show kept file {}: {e}", path.display()),
                }
            }
        }
    }
}

/// Marks a local's bytes as not to be imported, saying why once.
fn spoil(g: &mut Local, why: String) {
    if g.spoiled.is_none() {
        warn!("{}: {why}; the file will not be imported.", g.path());
        g.spoiled = Some(why);
    }
}

/// The error for a change to a file that is being archived.
pub(super) fn being_archived(g: &Local) -> FsError {
    FsError::NotPermitted(format!(
        "{} is being archived and can no longer be changed",
        g.path()
    ))
}

/// The longest name a node's filesystem takes (NAME_MAX).
const NAME_MAX: usize = 255;

/// Refuses, at `create` or `rename`, a name the archive could not take later: too long for
/// the write node's filesystem (ENAMETOOLONG), or not a valid archive path (EINVAL). A
/// write accepted is never dropped at import.
fn check_name(root: &Path, dir_path: &str, name: &str) -> Result<()> {
    let too_long = || FsError::Io(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    if name.len() > NAME_MAX {
        return Err(too_long());
    }
    let path = join(dir_path, name);
    if NodeRoot::new(root).kept().join(&path).as_os_str().len() >= libc::PATH_MAX as usize {
        return Err(too_long());
    }
    if !name.starts_with('.') {
        normalize_path(&path)?;
    }
    Ok(())
}

pub(super) fn staging_dir(root: &Path) -> PathBuf {
    NodeRoot::new(root).staging()
}

/// Where a file this host keeps without importing it (a dot name, or a path the import rules
/// skip) lives on the write node: `.cairn/kept/PATH`, out of the archive's tree, so that
/// listing a directory needs nothing but the catalog and this mount's memory.
fn kept_path(root: &Path, dir_path: &str, name: &str) -> PathBuf {
    NodeRoot::new(root).kept().join(dir_path).join(name)
}

/// Moves a local file to its kept place, `.cairn/kept/DIR/NAME`.
pub(super) fn keep(root: &Path, g: &mut Local) -> io::Result<()> {
    let dest = kept_path(root, &g.dir_path, &g.name);
    if dest != g.backing {
        std::fs::create_dir_all(dest.parent().unwrap_or(root))?;
        std::fs::rename(&g.backing, &dest)?;
        g.backing = dest;
    }
    g.kind = LocalKind::Kept;
    Ok(())
}
