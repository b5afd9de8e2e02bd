//! Import at close: a file closed under a plain name is hashed (unless its writer's md5 is
//! complete), then handed to a thread that imports every file closed meanwhile in one batch:
//! it renames them into place on the write node (never replacing a file already there),
//! syncs the write node's filesystem once, and registers them with their copies in one
//! catalog transaction. Until then each stays visible here as a local file; a file the
//! catalog refuses is put back where it was.

use std::fs::File as StdFile;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cairn_catalog::catalog::{NewFile, normalize_path};
use cairn_catalog::model::Has;
use cairn_syncd::importer::Verdict;
use tracing::{info, warn};

use super::write::keep;
use super::{Core, FsError, Result};
use crate::locals::{Local, LocalRef, with_local};
use crate::staged::hash_file;

/// The most files imported in one batch.
const BATCH: usize = 2000;

/// A local file ready to be registered: hashed, its name accepted by the import rules.
struct Ready {
    local: LocalRef,
    path: String,
    acq: String,
    size: u64,
    md5: String,
    mtime: i64,
}

/// The importer thread and its queue.
#[derive(Default)]
pub(super) struct Queue {
    tx: Mutex<Option<Sender<Ready>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Core {
    /// Imports a local file under its plain name: hashes it (unless the writer did), then hands
    /// it to the importer, which renames it into place on the write node, makes it durable and
    /// registers it with its copy. Until then it stays visible here as a local file.
    pub(super) fn import_local(&self, l: &LocalRef, g: &mut Local) -> Result<()> {
        let path = normalize_path(&g.path())?;
        let acq = match self.importer.check(&path) {
            Verdict::Import { acq } => acq,
            Verdict::Skip(why) => {
                let (_, root) = self.write_root()?;
                keep(&root, g)?;
                info!(
                    "Kept {path} on this host without importing it, as {}: {why}.",
                    g.backing.display()
                );
                return Ok(());
            }
        };
        let file = StdFile::open(&g.backing)?;
        let (size, md5) = match g.hashed.take() {
            Some((s, m)) if file.metadata()?.len() == s => (s, m),
            _ => hash_file(&file, &self.cancel)?,
        };
        let mtime = file.metadata()?.mtime();
        drop(file);
        g.importing = true;
        let ready = Ready {
            local: l.clone(),
            path,
            acq,
            size,
            md5,
            mtime,
        };
        let queued = match &*self.imports.tx.lock().expect("import queue") {
            Some(tx) => tx.send(ready).map_err(|e| e.0),
            None => Err(ready),
        };
        if let Err(ready) = queued {
            // No importer thread (tests, or the mount is stopping): import it now.
            self.commit_imports(vec![ready], Some(g));
        }
        Ok(())
    }

    /// Starts the thread that imports closed files in batches: one sync of the write node's
    /// filesystem and one catalog transaction for every file that closed meanwhile.
    pub fn start_importer(self: &Arc<Self>) {
        let (tx, rx) = channel::<Ready>();
        let core = Arc::downgrade(self);
        let handle = std::thread::Builder::new()
            .name("importer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    match core.upgrade() {
                        Some(c) => c.commit_imports(batch, None),
                        None => return,
                    }
                }
            })
            .expect("the importer thread starts");
        *self.imports.tx.lock().expect("import queue") = Some(tx);
        *self.imports.thread.lock().expect("importer") = Some(handle);
    }

    /// Imports what is queued and stops the importer (at unmount): nothing closed is lost.
    pub fn finish_imports(&self) {
        self.imports.tx.lock().expect("import queue").take();
        if let Some(h) = self.imports.thread.lock().expect("importer").take() {
            let _ = h.join();
        }
    }

    /// Renames a batch of hashed files into place, makes them durable, and registers them in
    /// one transaction. `held` is the one local the caller has locked already.
    fn commit_imports(&self, batch: Vec<Ready>, mut held: Option<&mut Local>) {
        let (node, root) = match self.write_root() {
            Ok(x) => x,
            Err(e) => {
                for r in &batch {
                    with_local(&r.local, held.as_deref_mut(), |g| g.importing = false);
                    warn!("Cannot import {}: {e}", r.path);
                }
                return;
            }
        };
        // 1. Into place, under the archive name; a file already there is never replaced.
        let mut moved: Vec<(&Ready, PathBuf, PathBuf)> = Vec::new();
        for r in &batch {
            let dest = root.join(&r.path);
            let outcome = with_local(&r.local, held.as_deref_mut(), |g| {
                if g.gone {
                    g.importing = false;
                    return None;
                }
                let from = g.backing.clone();
                let res = dest
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| rename_noreplace(&from, &dest));
                match res {
                    Ok(()) => Some(from),
                    Err(e) => {
                        g.importing = false;
                        warn!(
                            "Cannot import {}: {} on node {}: {e}; the file stays here as {}",
                            r.path,
                            dest.display(),
                            node.name,
                            from.display()
                        );
                        None
                    }
                }
            });
            if let Some(from) = outcome {
                moved.push((r, from, dest));
            }
        }
        if moved.is_empty() {
            return;
        }
        // 2. Durable before the catalog says so: one file and its directory, or the whole
        //    filesystem once for a batch.
        let synced = if let [(_, _, dest)] = &moved[..] {
            StdFile::open(dest)
                .and_then(|f| f.sync_all())
                .and_then(|()| {
                    dest.parent()
                        .map_or(Ok(()), |p| StdFile::open(p).and_then(|d| d.sync_all()))
                })
        } else {
            cairn_syncd::copyfile::sync_fs(&root)
        };
        // 3. One transaction for the batch; a path archived with other contents is refused
        //    on its own.
        let t = cairn_catalog::units::now();
        let registered = synced.map_err(FsError::from).and_then(|()| {
            self.with_cat(|c| {
                Ok(c.write(|tx| {
                    let mut out = Vec::with_capacity(moved.len());
                    for (r, _, _) in &moved {
                        if let Some(f) = tx.file_by_path(&r.path)?
                            && (f.md5 != r.md5 || f.size != r.size)
                        {
                            out.push(Err(format!(
                                "{} is already archived with other contents (md5 {})",
                                r.path, f.md5
                            )));
                            continue;
                        }
                        let (f, _) = tx.register_file(
                            &NewFile {
                                path: &r.path,
                                acq: &r.acq,
                                size: r.size,
                                md5: &r.md5,
                                mtime: r.mtime,
                            },
                            t,
                        )?;
                        if !tx
                            .copy_on(f.id, node.id)?
                            .is_some_and(|c| c.has == Has::Yes)
                        {
                            let on_disk = Some(r.size.div_ceil(4096) * 4096);
                            tx.record_copy(f.id, node.id, Has::Yes, on_disk, t)?;
                            tx.fire_auto_actions(f.id, node.id, t)?;
                        }
                        out.push(Ok(f.id));
                    }
                    Ok(out)
                })?)
            })
        });
        let outcomes = match registered {
            Ok(o) => o,
            Err(e) => moved
                .iter()
                .map(|_| Err(format!("the catalog refused the import: {e}")))
                .collect(),
        };
        for ((r, from, dest), outcome) in moved.iter().zip(outcomes) {
            with_local(&r.local, held.as_deref_mut(), |g| {
                g.importing = false;
                match outcome {
                    Ok(id) => {
                        info!(
                            "Imported {} ({} bytes, md5 {}) on node {}.",
                            r.path, r.size, r.md5, node.name
                        );
                        g.backing = dest.clone();
                        self.forget_local(g);
                        // Its inode goes on naming the archived file for as long as the
                        // kernel knows it.
                        self.locals.mark_imported(g.ino, id);
                    }
                    Err(why) => {
                        // Put it back where it was: nothing half-done.
                        let _ = std::fs::rename(dest, from);
                        warn!("Cannot import {}: {why}; the file stays here", r.path);
                    }
                }
            });
        }
        cairn_catalog::nudge::nudge(&self.opts.socket);
    }
}

/// Renames `from` to `to`, failing rather than replacing a file already at `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    let a = CString::new(from.as_os_str().as_bytes())?;
    let b = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
