//! Import of closed files: the queue of settling files and the batch that archives them
//! (what an earlier mount left in the journal is taken over by [`super::recover`]).
//!
//! A thread takes every file whose settle time has passed (or that someone asked about, by
//! reading its md5) and archives them in one batch:
//!
//! 1. **freeze**: the file is taken (`Importing`): no writer may open it any more, and it has
//!    none (a file is only taken with no open write handle);
//! 2. **hash** it, unless its writer's inline md5 covers every byte;
//! 3. **journal** its final size, md5 and mtime — before it moves, so that a crash finds its
//!    bytes at one of the two places the journal names;
//! 4. **place** it under its archive name on the write node, never replacing a file there (a
//!    file already there that the catalog does not know makes this one a conflict, kept under
//!    a name that says so);
//! 5. **sync**: one `syncfs` of the node for the whole batch (bytes, names and journal);
//! 6. **register** the batch in one catalog transaction (`Pending` until it succeeds: it is
//!    retried with backoff, and stays visible here meanwhile);
//! 7. **forget** it here and take its row out of the journal.
//!
//! No state has a gap: the file is visible under its name, with its attributes, from `create`
//! to registered, because its backing path changes under its own lock in the same step as the
//! rename on disk.

use std::fs::File as StdFile;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_catalog::catalog::{ImportOutcome, NewFile, normalize_path};
use cairn_catalog::model::{ConflictName, FileId, Node, Ownership};
use cairn_node::importer::Verdict;
use cairn_node::journal::{Journal, Placed};
use tracing::{debug, error, info, warn};

use super::queue::RETRY_FIRST;
use super::write::keep;
use super::{Core, FsError, Result};
use crate::locals::{LocalKind, LocalRef, Stage, join};
use crate::staged::hash_file;

/// How long reading `user.cairn.md5` of a settling file waits for its import.
const ASKED_WAIT: Duration = Duration::from_secs(10);

/// A file the batch places: where it is, where it goes, what is registered.
struct ToPlace {
    local: LocalRef,
    key: String,
    from: PathBuf,
    placed: Placed,
}

/// A file placed, to register.
struct ToRegister {
    local: LocalRef,
    key: String,
    path: String,
    placed: Placed,
}

/// What the catalog said of one file of a batch.
enum Registered {
    Yes(FileId),
    /// The path is archived with other contents.
    Conflict(String),
}

impl Core {
    /// Starts the thread that imports settled files in batches.
    pub fn start_importer(self: &Arc<Self>) {
        let core = Arc::downgrade(self);
        self.imports.lock().running = true;
        let handle = std::thread::Builder::new()
            .name("importer".into())
            .spawn(move || {
                loop {
                    let Some(c) = core.upgrade() else { return };
                    let Some((batch, stopping, retry)) = c.imports.next_batch() else {
                        return;
                    };
                    // While the catalog is not answering, only the retries try it: new files
                    // are made durable here and wait with the others.
                    let ask = retry || stopping || !c.catalog_seems_down();
                    c.import_batch(batch, stopping, ask);
                }
            })
            .expect("the importer thread starts");
        *self.imports.thread.lock().expect("importer") = Some(handle);
        // What an earlier mount left, found by `recover`, is queued already.
        self.imports.wake.notify_one();
    }

    /// Imports what is settling now, tries once more what waits for the catalog, and stops the
    /// importer (at unmount). What the catalog does not take stays in the journal for the
    /// next mount.
    pub fn finish_imports(&self) {
        {
            let mut w = self.imports.lock();
            w.stopping = true;
            self.imports.wake.notify_one();
        }
        if let Some(h) = self.imports.thread.lock().expect("importer").take() {
            let _ = h.join();
        }
    }

    /// Imports `l` now if it is settling, and waits (a while) until it is registered, or its
    /// registration failed and it waits for the catalog. Reading a settling file's md5 does this.
    pub(super) fn import_now(&self, l: &LocalRef) {
        {
            let mut g = l.lock().expect("local");
            if let Stage::Settling { .. } = g.stage {
                g.stage = Stage::Settling {
                    until: Instant::now(),
                };
            } else if g.stage != Stage::Importing {
                return;
            }
        }
        if !self.imports.lock().running {
            self.import_batch(vec![l.clone()], true, true);
            return;
        }
        self.imports.ask(l.clone());
        let deadline = Instant::now() + ASKED_WAIT;
        loop {
            let seen = *self.imports.batches.lock().expect("batches");
            {
                let g = l.lock().expect("local");
                let settled = g.gone || g.stage == Stage::Pending || g.stage == Stage::Writing;
                if settled || Instant::now() >= deadline {
                    return;
                }
            }
            let b = self.imports.batches.lock().expect("batches");
            if *b == seen {
                let _ = self
                    .imports
                    .done
                    .wait_timeout(b, Duration::from_millis(50))
                    .expect("batches");
            }
        }
    }

    /// Archives a batch of files: see the module's note for the steps. Directories made here
    /// while the catalog could not take them go first. Unless `ask`, the catalog is not
    /// asked: the files are placed and made durable, and wait for the next retry.
    fn import_batch(&self, batch: Vec<LocalRef>, force: bool, mut ask: bool) {
        if ask
            && !self.localdirs.is_empty()
            && let Err(e) = self.make_dirs_in_catalog()
        {
            warn!(
                "The catalog cannot take the directories made here yet ({e}); they and the \
                 files in them wait, and are tried again."
            );
            self.imports.dirs_waiting();
            self.imports.backoff();
            // The files are placed and made durable all the same, and wait with them.
            ask = false;
            if batch.is_empty() {
                self.imports.finished();
                return;
            }
        }
        if batch.is_empty() {
            self.imports.succeeded();
            return;
        }
        let (node, root) = match self.write_root() {
            Ok(x) => x,
            Err(e) => {
                warn!("Cannot import {} file(s) now: {e}", batch.len());
                self.requeue_all(batch);
                return;
            }
        };
        let Some(journal) = &self.journal else {
            return;
        };
        let now = Instant::now();
        let mut place = Vec::new();
        let mut register = Vec::new();
        for l in batch {
            let mut g = l.lock().expect("local");
            if g.gone {
                continue;
            }
            match g.stage {
                Stage::Settling { until } if until <= now || force => g.stage = Stage::Importing,
                Stage::Settling { until } => {
                    drop(g);
                    self.imports.settle(l, until);
                    continue;
                }
                // Placed: only its registration is left (again, after a failure or a conflict).
                Stage::Pending | Stage::Importing if g.placed.is_some() => {
                    if let (Some(key), Some(placed)) = (g.journalled.clone(), g.placed.clone()) {
                        let path = g.path();
                        drop(g);
                        register.push(ToRegister {
                            local: l,
                            key,
                            path,
                            placed,
                        });
                    }
                    continue;
                }
                // Reopened for writing meanwhile: it settles again at its next close. (A
                // pending file without its placement cannot be: placing sets both.)
                Stage::Writing | Stage::Importing | Stage::Pending => continue,
            }
            let Some(key) = g.journalled.clone() else {
                g.stage = Stage::Writing;
                continue;
            };
            let (from, path, hashed) = (g.backing.clone(), g.path(), g.hashed.clone());
            drop(g);
            match self.prepare(&root, &l, &path, &from, hashed) {
                Ok(Some(placed)) => place.push(ToPlace {
                    local: l,
                    key,
                    from,
                    placed,
                }),
                Ok(None) => {}
                Err(e) => {
                    warn!("Cannot import {path} yet: {e}; it is tried again shortly.");
                    self.back_to_settling(&l);
                }
            }
        }
        if !place.is_empty() {
            let rows: Vec<(&str, &Placed)> =
                place.iter().map(|p| (p.key.as_str(), &p.placed)).collect();
            if let Err(e) = journal.placing(&rows) {
                error!(
                    "Cannot import {} file(s): {e}; they are tried again shortly.",
                    rows.len()
                );
                for p in place {
                    self.back_to_settling(&p.local);
                }
                return;
            }
            let mut dirs = std::collections::HashSet::new();
            for p in place {
                if let Some(r) = self.place(journal, &root, &node, p, &mut dirs) {
                    register.push(r);
                }
            }
        }
        if register.is_empty() {
            return;
        }
        self.register(journal, &root, &node, register, ask);
    }

    /// Hashes a file taken for import and checks its name against the import rules. `None`:
    /// the rules keep it here without importing it.
    fn prepare(
        &self,
        root: &Path,
        l: &LocalRef,
        path: &str,
        from: &Path,
        hashed: Option<(u64, String)>,
    ) -> Result<Option<Placed>> {
        let norm = normalize_path(path)?;
        let acq = match self.importer.check(&norm) {
            Verdict::Import { acq } => acq,
            Verdict::Skip(why) => {
                let mut g = l.lock().expect("local");
                keep(root, &mut g)?;
                if let (Some(j), Some(key)) = (&self.journal, g.journalled.take()) {
                    let _ = j.dropped(&key);
                }
                g.kind = LocalKind::Kept;
                g.stage = Stage::Writing;
                info!(
                    "Kept {path} on this host without importing it, as {}: {why}.",
                    g.backing.display()
                );
                return Ok(None);
            }
        };
        let file = StdFile::open(from)?;
        let meta = file.metadata()?;
        let (size, md5) = match hashed {
            Some((s, m)) if meta.len() == s => (s, m),
            _ => hash_file(&file, &self.cancel)?,
        };
        Ok(Some(Placed {
            size,
            md5,
            mtime: meta.mtime(),
            acq,
        }))
    }

    /// Moves a file to its archive path on the node (a conflict name if a file the catalog
    /// does not know is there). `None` if it could not be moved: it settles again.
    fn place(
        &self,
        journal: &Journal,
        root: &Path,
        node: &Node,
        p: ToPlace,
        dirs: &mut std::collections::HashSet<PathBuf>,
    ) -> Option<ToRegister> {
        let mut g = p.local.lock().expect("local");
        let mut path = g.path();
        let mut tries = 0;
        loop {
            let dest = root.join(&path);
            let res = cairn_node::copyfile::make_dir_once(dest.parent(), dirs)
                .and_then(|()| cairn_node::copyfile::rename_noreplace(&p.from, &dest));
            match res {
                Ok(()) => {
                    // Still `Importing` while its registration runs; `Pending` if that fails.
                    g.backing = dest;
                    g.hashed = Some((p.placed.size, p.placed.md5.clone()));
                    g.placed = Some(p.placed.clone());
                    drop(g);
                    return Some(ToRegister {
                        local: p.local,
                        key: p.key,
                        path,
                        placed: p.placed,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 5 => {
                    // Something the catalog does not know is at that name on the node: this
                    // file is kept, under a name that says why.
                    tries += 1;
                    let new = ConflictName::now(&g.name, &self.opts.host);
                    warn!(
                        "{} is on node {} already and is not this file; this file is kept as \
                         {new} in the same directory.",
                        path, node.name
                    );
                    let (dir_id, dir_path) = (g.dir_id, g.dir_path.clone());
                    self.locals.rename(&mut g, dir_id, &dir_path, &new);
                    path = g.path();
                    let _ = journal.moved(&p.key, &path);
                }
                Err(e) => {
                    let why = format!(
                        "cannot move it to {} on node {}: {e}",
                        dest.display(),
                        node.name
                    );
                    warn!("Cannot import {path} yet: {why}; it is tried again shortly.");
                    let _ = journal.unplaced(&p.key, &why);
                    drop(g);
                    self.back_to_settling(&p.local);
                    return None;
                }
            }
        }
    }

    /// Makes placed files durable, then registers them in one transaction (unless `ask` is
    /// false: then they wait for the next retry).
    fn register(
        &self,
        journal: &Journal,
        root: &Path,
        node: &Node,
        files: Vec<ToRegister>,
        ask: bool,
    ) {
        let synced = if let [f] = &files[..] {
            let dest = root.join(&f.path);
            StdFile::open(&dest)
                .and_then(|f| f.sync_all())
                .and_then(|()| {
                    dest.parent()
                        .map_or(Ok(()), |p| StdFile::open(p).and_then(|d| d.sync_all()))
                })
        } else {
            cairn_node::copyfile::sync_fs(root)
        };
        if !ask && synced.is_ok() {
            for f in &files {
                f.local.lock().expect("local").stage = Stage::Pending;
            }
            debug!(
                "{} file(s) placed on node {} wait for the catalog with the others.",
                files.len(),
                node.name
            );
            self.imports
                .wait_for_catalog(files.into_iter().map(|f| f.local).collect());
            // cairnd's report and /metrics read what waits from the summary.
            publish(journal);
            return;
        }
        // Who wrote each file (the staged file belongs to its writer), by name.
        let owners: Vec<Ownership> = files
            .iter()
            .map(|f| {
                std::fs::metadata(root.join(&f.path))
                    .map(|m| cairn_node::ids::ownership_of(&self.ids, &m))
                    .unwrap_or_default()
            })
            .collect();
        let t = cairn_catalog::units::now();
        let outcome = synced.map_err(FsError::from).and_then(|()| {
            self.with_cat(|c| {
                Ok(c.write(|tx| {
                    // One transaction, a fixed number of statements for the whole batch (few
                    // round trips to a distant primary).
                    let news: Vec<NewFile> = files
                        .iter()
                        .zip(&owners)
                        .map(|(f, own)| NewFile {
                            path: f.path.clone(),
                            acq: f.placed.acq.clone(),
                            size: f.placed.size,
                            md5: f.placed.md5.clone(),
                            mtime: f.placed.mtime,
                            own: own.clone(),
                        })
                        .collect();
                    let out: Vec<Registered> = tx
                        .import_copies(&news, node.id, t)?
                        .into_iter()
                        .map(|o| match o {
                            ImportOutcome::Imported { file_id, .. }
                            | ImportOutcome::AlreadyHere { file_id } => Registered::Yes(file_id),
                            ImportOutcome::Conflict { existing } => {
                                Registered::Conflict(existing.md5)
                            }
                        })
                        .collect();
                    Ok(out)
                })?)
            })
        });
        match &outcome {
            Ok(_) => self.catalog_answered(true),
            Err(e) if super::catalog_out_of_reach(e) => self.catalog_answered(false),
            Err(_) => {}
        }
        let outcomes = match outcome {
            Ok(o) => o,
            Err(e) => {
                let why = format!("the catalog did not take them: {e}");
                warn!(
                    "Cannot register {} file(s) yet ({why}); they stay on node {} and in \
                     the journal, and are tried again.",
                    files.len(),
                    node.name
                );
                let keys: Vec<&str> = files.iter().map(|f| f.key.as_str()).collect();
                let _ = journal.failed(&keys, &why);
                publish(journal);
                for f in &files {
                    f.local.lock().expect("local").stage = Stage::Pending;
                }
                self.imports
                    .retry_later(files.into_iter().map(|f| f.local).collect());
                return;
            }
        };
        let mut done = Vec::new();
        let mut again = Vec::new();
        let mut forget = Vec::new();
        for (f, o) in files.into_iter().zip(outcomes) {
            match o {
                Registered::Yes(id) => {
                    let mut g = f.local.lock().expect("local");
                    info!(
                        "Imported {} ({} bytes, md5 {}) on node {}.",
                        f.path, f.placed.size, f.placed.md5, node.name
                    );
                    g.journalled = None;
                    self.forget_local(&mut g);
                    // Its inode goes on naming the archived file for as long as the kernel
                    // knows it; the kernel is told it is gone.
                    if self.locals.mark_imported(g.ino, id) {
                        forget.push(super::Forget {
                            parent: self.dir_ino(g.dir_id),
                            ino: g.ino,
                            name: g.name.clone(),
                        });
                    }
                    done.push(f.key);
                }
                Registered::Conflict(theirs) => {
                    // Archived meanwhile with other bytes (from another host): this file is
                    // kept too, under a name that says so.
                    let mut g = f.local.lock().expect("local");
                    let new = ConflictName::now(&g.name, &self.opts.host);
                    let dest = root.join(join(&g.dir_path, &new));
                    match cairn_node::copyfile::rename_noreplace(&g.backing, &dest) {
                        Ok(()) => {
                            warn!(
                                "{} was archived meanwhile with other contents (md5 {theirs}); \
                                 this host's file (md5 {}) is kept as {new} in the same \
                                 directory.",
                                f.path, f.placed.md5
                            );
                            let (dir_id, dir_path) = (g.dir_id, g.dir_path.clone());
                            self.locals.rename(&mut g, dir_id, &dir_path, &new);
                            g.backing = dest;
                            let _ = journal.moved(&f.key, &g.path());
                        }
                        Err(e) => warn!("Cannot keep {} aside: {e}", f.path),
                    }
                    drop(g);
                    again.push(f.local);
                }
            }
        }
        let keys: Vec<&str> = done.iter().map(String::as_str).collect();
        if let Err(e) = journal.done(&keys) {
            // They are in the catalog: a later mount finds them registered and only drops
            // the rows.
            warn!("{e}");
        }
        publish(journal);
        self.imports.succeeded();
        self.kernel_forget(forget);
        if !again.is_empty() {
            let mut w = self.imports.lock();
            w.asked.extend(again);
            self.imports.wake.notify_one();
        }
        cairn_node::socket::nudge(&self.opts.socket);
    }

    /// A file that could not be taken now settles again and is tried after a while.
    fn back_to_settling(&self, l: &LocalRef) {
        let until = Instant::now() + RETRY_FIRST.max(self.opts.settle);
        let mut g = l.lock().expect("local");
        if !g.gone {
            g.stage = Stage::Settling { until };
            drop(g);
            self.imports.settle(l.clone(), until);
        }
    }

    fn requeue_all(&self, batch: Vec<LocalRef>) {
        let (pending, settling): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|l| l.lock().expect("local").stage == Stage::Pending);
        for l in settling {
            self.back_to_settling(&l);
        }
        if !pending.is_empty() {
            self.imports.retry_later(pending);
        }
    }
}

/// Publishes how many files wait in the journal, for cairnd's report (`cairn status`).
pub(super) fn publish(journal: &Journal) {
    if let Err(e) = journal.publish_summary() {
        warn!("{e}");
    }
}
