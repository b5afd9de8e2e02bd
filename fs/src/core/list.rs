//! Listings: a directory's entries as the catalog has them (cached for `[fs] ttl` in
//! [`crate::listings`]), merged with this host's own files when served, and the thread that
//! reads listings ahead of a walk.

use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use cairn_catalog::CatalogError;
use cairn_catalog::model::DirId;
use tracing::debug;

use super::{Caller, Core, DirList, Entry, FsError, Ino, Listing, Result};
use crate::attr::READ;
use crate::handles::Handle;
use crate::localdirs::LocalDirs;
use crate::locals::LocalRef;

impl Core {
    /// Opens a directory. The second value says whether the listing is the one this mount
    /// gave for the directory last time, so the kernel may keep its cached copy of it.
    pub fn opendir(&self, who: &Caller, ino: u64) -> Result<(u64, bool)> {
        let dir_id = self.dir_id(ino)?;
        if !who.is_root() {
            let (_, a) = self.dir_entry(dir_id)?;
            if !a.allows(who, READ) {
                return Err(FsError::Access);
            }
            self.search(who, dir_id)?;
        }
        if self.kernel_listing_holds(dir_id) {
            // Its first readdir, if the kernel makes one after all, reads the listing.
            return Ok((self.handles.insert(Handle::dir_unread()), true));
        }
        let list = self.listing(ino, dir_id)?;
        let same = self.listings.served(dir_id, &list);
        self.listings
            .read_ahead(dir_id, &list, |ino| Ino::from(ino).dir_id(self.root_dir));
        Ok((self.handles.insert(Handle::dir(list)), same))
    }

    /// Whether the listing the kernel was last given of `dir_id` still holds, told without
    /// reading it: it was the catalog's alone, nothing of this host's own is in the directory
    /// now, and the catalog's listing version is still the one it was read at (one indexed
    /// read of one row; across a link, none while the listing kept here is fresh). A warm
    /// walk of a tree nobody changes then reads no listing again; and while the catalog is
    /// out of reach, a directory listed before still lists.
    fn kernel_listing_holds(&self, dir_id: DirId) -> bool {
        let Some(version) = self.listings.served_version(dir_id) else {
            return false;
        };
        self.refresh_found(dir_id);
        if !self.locals.in_dir(dir_id).is_empty() || !self.localdirs.in_dir(dir_id).is_empty() {
            return false;
        }
        // Read at this site, the version is worth asking at every `opendir`: a file another
        // host adds shows as soon as the catalog here has it, not after the TTL. Across a
        // link, a listing younger than the TTL is taken as it is.
        let here = self.pool.routing().reads_here();
        if !here && let Some(l) = self.listings.fresh(dir_id) {
            return l.version == Some(version);
        }
        match self.with_cat(|c| Ok(c.read(|tx| tx.dir_listing_version(dir_id))?)) {
            Ok(now) => {
                if here {
                    self.listings.keep_only_version(dir_id, now);
                }
                now == Some(version)
            }
            // While the catalog is out of reach the kernel's copy is the last listing known
            // here, as `Remembered::known` is for attributes: it stays.
            Err(e) => super::catalog_out_of_reach(&e),
        }
    }

    /// The entries of a directory, read once per open and kept, so reading a large directory
    /// in pieces costs one query.
    pub fn readdir(&self, ino: u64, fh: u64) -> Result<Listing> {
        if let Some(list) = self.handles.dir_listing(fh) {
            return Ok(list);
        }
        let dir_id = self.dir_id(ino)?;
        let list = self.listing(ino, dir_id)?;
        self.handles.set_dir_listing(fh, &list);
        Ok(list)
    }

    /// The entries of directory `dir_id` as a program sees them: the catalog's (the cached
    /// listing if it is younger than the TTL) and this host's own files in it.
    pub(super) fn listing(&self, _ino: u64, dir_id: DirId) -> Result<Listing> {
        let archived = self.catalog_listing(dir_id)?;
        self.refresh_found(dir_id);
        let locals = self.locals.in_dir(dir_id);
        let dirs = self.localdirs.in_dir(dir_id);
        if locals.is_empty() && dirs.is_empty() {
            return Ok(archived);
        }
        let mut out = archived.entries.clone();
        self.add_local_dirs(&mut out, dirs);
        self.add_locals(&mut out, locals);
        Ok(Arc::new(DirList::new(out)))
    }

    /// The catalog's entries of directory `dir_id`, kept for the TTL. This host's own files
    /// are not in it (they change without the catalog knowing): a change to them drops no
    /// listing.
    pub(super) fn catalog_listing(&self, dir_id: DirId) -> Result<Listing> {
        if let Some(l) = self.listings.fresh(dir_id) {
            return Ok(l);
        }
        let generation = self.listings.generation();
        let l = Arc::new(self.list_catalog(dir_id)?);
        self.listings.keep(dir_id, generation, &l);
        Ok(l)
    }

    /// Starts the thread that reads listings ahead of a directory walk.
    pub fn start_prefetcher(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(crate::listings::READ_AHEAD * 4);
        let core = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("prefetcher".into())
            .spawn(move || {
                let mut tidied = Instant::now();
                let mut reported = Instant::now();
                loop {
                    let next = rx.recv_timeout(TIDY_EVERY);
                    let Some(c) = core.upgrade() else { return };
                    match next {
                        Ok(ino) => {
                            if let Ok(dir_id) = c.dir_id(ino)
                                && c.listings.fresh(dir_id).is_none()
                                && let Err(e) = c.catalog_listing(dir_id)
                            {
                                debug!("Reading ahead directory inode {ino}: {e}");
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if tidied.elapsed() >= TIDY_EVERY {
                        tidied = Instant::now();
                        c.tidy_memory();
                    }
                    if reported.elapsed() >= REPORT_EVERY {
                        reported = Instant::now();
                        debug!("Memory: {}", c.memory_report());
                    }
                }
            })
            .expect("the prefetcher thread starts");
        self.listings.set_prefetcher(tx);
    }

    /// Gives back the memory of what a walk left: listings past their TTL go, and the
    /// allocator returns the pages they freed to the system (otherwise a mount's resident
    /// memory would stay at the high mark of its largest walk).
    fn tidy_memory(&self) {
        self.listings.drop_expired();
        give_back_freed_memory();
    }

    /// What this mount keeps in memory, counted: for the debug log, to tell what grows.
    pub(super) fn memory_report(&self) -> String {
        let [kept, kept_bytes, served, read_ahead] = self.listings.sizes();
        let [known, dirs, dir_mtimes, paths] = self.remembered.sizes();
        let [locals, imported, kernel_locals] = self.locals.sizes();
        let [local_dirs, made_dirs] = self.localdirs.sizes();
        let [handles, plain_opens] = self.handles.sizes();
        let (sqlite, sqlite_peak) = cairn_catalog::db::sqlite::memory_used();
        format!(
            "listings {kept} ({kept_bytes} B), served {served}, read-ahead {read_ahead}; \
             attributes {known}, directories {dirs}, directory times {dir_mtimes}, paths \
             {paths}; locals {locals}, imported {imported}, held {kernel_locals}; local \
             directories {local_dirs}, made {made_dirs}; handles {handles}, plain reads \
             {plain_opens}; found directories {}; SQLite {sqlite} B (peak {sqlite_peak} B)",
            self.found.size()
        )
    }

    /// Whether listings go to the kernel whole, with attributes ([`Listings::stat_walk`]).
    pub fn stat_walk(&self) -> bool {
        self.listings.stat_walk()
    }

    /// Whether a listing given now leaves a few files without attributes, to tell whether
    /// the stat walk goes on ([`Listings::stat_walk_probe`]).
    pub fn stat_walk_probe(&self) -> bool {
        self.listings.stat_walk_probe()
    }

    /// Whether the replies to directory handle `fh` carry the files' attributes: a stat walk
    /// is on, or was while this handle was read ([`Handles::dir_stat_walk`]).
    pub fn dir_stat_walk(&self, fh: u64) -> bool {
        self.handles.dir_stat_walk(fh, self.stat_walk())
    }

    /// Some files of directory `ino`'s listing went to the kernel as names only: if a program
    /// stats what it lists, that copy is not kept (see [`crate::listings::Listings::served`]).
    pub fn served_names_only(&self, ino: u64) {
        if let Ok(dir_id) = self.dir_id(ino) {
            self.listings.served_names_only(dir_id);
        }
    }

    /// Every entry of a directory, read now: the catalog's and this host's own files.
    pub(super) fn list(&self, ino: u64) -> Result<Vec<Entry>> {
        let dir_id = self.dir_id(ino)?;
        let mut out = self.list_catalog(dir_id)?.entries;
        self.refresh_found(dir_id);
        self.add_local_dirs(&mut out, self.localdirs.in_dir(dir_id));
        self.add_locals(&mut out, self.locals.in_dir(dir_id));
        Ok(out)
    }

    /// The catalog's entries of directory `dir_id`.
    pub(super) fn list_catalog(&self, dir_id: DirId) -> Result<DirList> {
        if LocalDirs::is_local(dir_id) {
            // Made here; the catalog has nothing in it yet.
            return Ok(DirList::default());
        }
        let (version, dirs, files) = self.with_cat(|c| {
            Ok(c.read(|tx| {
                // Empty, or gone (removed from another host).
                let version = tx
                    .dir_listing_version(dir_id)?
                    .ok_or_else(|| CatalogError::not_found("directory", format!("#{dir_id}")))?;
                let (dirs, files) = tx.list_dir_stats(dir_id)?;
                Ok((version, dirs, files))
            })?)
        })?;
        let mut out = Vec::with_capacity(dirs.len() + files.len());
        for d in dirs {
            let attr = self.dir_attr(&d);
            out.push(Entry { name: d.name, attr });
        }
        for f in files {
            out.push(Entry {
                attr: self.file_attr(f.id, f.size, f.mtime, &f.own),
                name: f.name,
            });
        }
        Ok(DirList::versioned(out, version))
    }

    /// Adds the directories made here (not in the catalog yet) to a directory's entries.
    fn add_local_dirs(&self, out: &mut Vec<Entry>, dirs: Vec<crate::localdirs::LocalDir>) {
        for d in dirs {
            if out.iter().any(|e| e.name == d.name) {
                continue;
            }
            let attr = self.dir_attr(&super::local_dir_row(&d));
            out.push(Entry { name: d.name, attr });
        }
    }

    /// Adds files only this host has (being written, or kept on the write node) to a
    /// directory's entries; an archived file of the same name comes first.
    pub(super) fn add_locals(&self, out: &mut Vec<Entry>, locals: Vec<LocalRef>) {
        if locals.is_empty() {
            return;
        }
        let names: std::collections::HashSet<String> = out.iter().map(|e| e.name.clone()).collect();
        for l in locals {
            let l = l.lock().expect("local");
            if names.contains(&l.name) {
                continue;
            }
            if let Ok(attr) = l.attr() {
                out.push(Entry {
                    name: l.name.clone(),
                    attr,
                });
            }
        }
    }
}

/// How often the prefetcher thread drops expired listings and gives memory back.
const TIDY_EVERY: Duration = Duration::from_secs(5);

/// How often what the mount keeps is counted in the debug log.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Returns freed memory to the system: glibc keeps what a thread freed in that thread's arena
/// otherwise.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::core;
    use crate::core::{Caller, ROOT_INO};
    use cairn_catalog::catalog::NewFile;
    use std::ffi::OsStr;

    fn register(c: &Core, path: &str) {
        c.with_cat(|cat| {
            Ok(cat.write(|tx| {
                tx.register_file(
                    &NewFile {
                        path: path.into(),
                        acq: "a".into(),
                        size: 1,
                        md5: "0".repeat(32),
                        mtime: 0,
                        own: Default::default(),
                    },
                    0,
                )
            })?)
        })
        .unwrap();
    }

    /// A mount whose catalog has `a/x.dat`, and directory `a` looked up.
    fn dir_a_with_x() -> (tempfile::TempDir, Core, crate::attr::Attr) {
        let d = tempfile::tempdir().unwrap();
        let c = core(d.path());
        register(&c, "a/x.dat");
        let a = c.lookup(&Caller::ROOT, ROOT_INO, OsStr::new("a")).unwrap();
        (d, c, a)
    }

    fn names(c: &Core, ino: u64, fh: u64) -> Vec<String> {
        let l = c.readdir(ino, fh).unwrap();
        l.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// A warm walk after the TTL reads no listing again while nothing changed in the catalog,
    /// and sees at once what another host added.
    #[test]
    fn the_kernel_keeps_its_listing_while_the_catalog_version_holds() {
        let (_d, c, a) = dir_a_with_x();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(!same, "first listing");
        assert_eq!(names(&c, a.ino, fh), ["x.dat"]);
        c.release_handle(fh).unwrap();

        // As after the TTL: nothing kept here.
        c.listings.changed();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(same, "unchanged in the catalog");
        assert!(
            c.handles.dir_listing(fh).is_none(),
            "known without reading the listing"
        );
        assert_eq!(names(&c, a.ino, fh), ["x.dat"], "read if asked after all");
        c.release_handle(fh).unwrap();

        // Another host adds a file.
        register(&c, "a/y.dat");
        c.listings.changed();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(!same, "the catalog's version moved on");
        assert_eq!(names(&c, a.ino, fh), ["x.dat", "y.dat"]);
        c.release_handle(fh).unwrap();
    }

    /// Where the catalog is read at this site (here SQLite), a file another host adds is
    /// listed at the next `opendir`, the listing's TTL (a minute here) notwithstanding.
    #[test]
    fn another_hosts_file_is_listed_at_once_where_the_catalog_is_read_here() {
        let (_d, c, a) = dir_a_with_x();
        let (fh, _) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert_eq!(names(&c, a.ino, fh), ["x.dat"]);
        c.release_handle(fh).unwrap();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(same, "nothing changed");
        c.release_handle(fh).unwrap();

        register(&c, "a/y.dat");
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(!same, "the kernel's copy is stale");
        assert_eq!(names(&c, a.ino, fh), ["x.dat", "y.dat"]);
        c.release_handle(fh).unwrap();
    }

    /// A copy given as names only (`find`) is not kept once a program stats what it lists
    /// (`du` after `find`): the kernel would look each file up on its own.
    #[test]
    fn a_copy_of_names_only_is_not_kept_for_a_stat_walk() {
        let (_d, c, a) = dir_a_with_x();
        let (fh, _) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        c.readdir(a.ino, fh).unwrap();
        c.served_names_only(a.ino);
        c.release_handle(fh).unwrap();
        c.listings.changed();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(same, "no stat walk: names are what find needs");
        c.release_handle(fh).unwrap();

        // A program stats a file it has listed.
        c.lookup(&Caller::ROOT, a.ino, OsStr::new("x.dat")).unwrap();
        assert!(c.stat_walk());
        c.listings.changed();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(!same, "given again, with attributes");
        c.release_handle(fh).unwrap();
        let (fh, same) = c.opendir(&Caller::ROOT, a.ino).unwrap();
        assert!(same, "and that copy is kept");
        c.release_handle(fh).unwrap();
    }
}
