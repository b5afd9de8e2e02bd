//! What every operation on the mount does, with typed results and no FUSE types: the adapter in
//! [`crate::fuse`] only translates. See docs/SEMANTICS.md.
//!
//! [`Core`] is a few owned parts, each with its own lock: the locals table
//! ([`crate::locals`]), the listing cache ([`crate::listings`]), the handle table
//! ([`crate::handles`]), this host's nodes ([`crate::nodes`]), what is remembered of
//! attributes ([`crate::attr::Remembered`]), and the import queue ([`import`]). This file holds
//! the namespace (lookup, attributes, unlink, rename); directories, listings, permissions,
//! reading, writing, importing, recovery and the extended attributes are in the submodules.
//!
//! Lock order: a local's lock, then any part's lock; no part's lock is held while another
//! part's is taken.

mod dirs;
mod found;
mod import;
mod list;
mod perm;
mod queue;
mod read;
mod recover;
mod write;
mod xattr;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use cairn_catalog::model::{Dir, DirId, FileId, Node, Ownership};
use cairn_catalog::{Catalog, Config, Pool};
use cairn_node::NodeRoot;
use cairn_node::importer::Importer;
use tracing::warn;

pub use crate::attr::{Attr, Entry, Kind};
pub use crate::error::{FsError, Result};
pub use crate::ids::Caller;
pub use crate::ino::{Ino, ROOT_INO, file_ino};
pub use crate::listings::{DirList, Listing};
pub use xattr::FILE_XATTRS;

use crate::attr::{Remembered, epoch};
use crate::handles::{Handle, Handles};
use crate::listings::Listings;
use crate::localdirs::{LocalDir, LocalDirs};
use crate::locals::{LocalKind, Locals};
use crate::nodes::HostNodes;
use cairn_node::ids::Ids;
use cairn_node::journal::{Journal, Owner};

/// What an open produced.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// A complete file on a local disk: the adapter may let the kernel read it directly
    /// (FUSE passthrough), keeping this handle only for `release`.
    pub passthrough: Option<std::fs::File>,
    /// Bytes still arriving (a fetch): kept out of the page cache (see `CairnFs::uncached`).
    pub streaming: bool,
}

/// Capacity of this host's nodes, for `statfs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub free: u64,
    pub avail: u64,
}

/// What a `setattr` asks to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    /// The times are "now" (`touch`), which whoever may write sets, not explicit ones.
    pub times_now: bool,
}

/// Settings of one mount.
#[derive(Debug, Clone)]
pub struct Options {
    /// The catalog: its primary, and this site's replica if there is one.
    pub catalog: cairn_catalog::config::CatalogConfig,
    pub host: String,
    pub socket: PathBuf,
    pub cache_dir: PathBuf,
    pub write_node: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub ttl: Duration,
    /// How long a written file stays closed before it is imported (`[fs] settle`).
    pub settle: Duration,
    pub min_archive_copies: usize,
    /// What an owner unknown here shows as (`[fs] unknown_owner`).
    pub unknown_owner: String,
    /// Who besides root may ask for copies to be made or removed (`[fs] admin_group`).
    pub admin_group: String,
    /// Bytes for what the mount remembers of the catalog (`[fs] cache_memory`).
    pub cache_memory: usize,
}

impl Options {
    pub fn from_config(c: &Config) -> Options {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Options {
            catalog: c.catalog.clone(),
            host: c.host_name(),
            socket: c.daemon.socket.clone(),
            cache_dir: c.cache.dir.clone(),
            write_node: c.fs.write_node.clone(),
            uid: c.fs.uid.unwrap_or(uid),
            gid: c.fs.gid.unwrap_or(gid),
            ttl: c.fs.ttl.map(|t| t.0).unwrap_or(Duration::from_secs(1)),
            settle: c.fs.settle.map(|t| t.0).unwrap_or(Duration::from_secs(1)),
            min_archive_copies: c.daemon.min_archive_copies,
            unknown_owner: c
                .fs
                .unknown_owner
                .clone()
                .unwrap_or_else(|| "nobody".into()),
            admin_group: c.fs.admin_group.clone().unwrap_or_else(|| "cairn".into()),
            cache_memory: c.fs.cache_memory.map_or(256 << 20, |b| b.0 as usize),
        }
    }
}

/// The mount's state; every method is one operation.
pub struct Core {
    pub opts: Options,
    pool: Pool,
    importer: Importer,
    root_dir: DirId,
    nodes: HostNodes,
    locals: Locals,
    localdirs: LocalDirs,
    handles: Handles,
    listings: Listings,
    remembered: Remembered,
    ids: Ids,
    fetches: read::Fetches,
    imports: queue::Queue,
    /// The journal of closed files, on the write node (none on a read-only mount).
    journal: Option<Journal>,
    /// This process, as the journal names the owner of its rows.
    owner: String,
    /// Since when writes to the catalog fail for want of it (a cut link, a locked database):
    /// meanwhile what can wait here does so at once instead of trying first. The import
    /// thread's retries find out when it is back.
    catalog_down: Mutex<Option<Instant>>,
    /// What was last seen of the files cairnd keeps waiting on this host's nodes.
    found: found::FoundCheck,
    /// Where the names of files just imported go, for the kernel to drop (see
    /// [`Core::set_kernel_forgetter`]).
    forgetter: Mutex<Option<std::sync::mpsc::Sender<Forget>>>,
    cancel: AtomicBool,
}

impl Core {
    pub fn new(opts: Options, import: &cairn_catalog::config::ImportConfig) -> Result<Core> {
        // Reads from this site's replica where there is one, writes to the primary; what this
        // mount writes, it reads back at once (the pool waits for the replica, or asks the
        // primary).
        let pool = Pool::routed(
            cairn_catalog::replica::Routing::from_config(&opts.catalog),
            // A busy catalog (another process holding its write lock) is no reason to hold up
            // a program either: closed files wait in the journal meanwhile.
            patience(CATALOG_PATIENCE),
        );
        let root = pool
            .with(|cat| Ok::<_, FsError>(cat.read(|tx| tx.dir_by_path(""))?))?
            .ok_or_else(|| {
                FsError::Invalid("the catalog has no root directory; run `cairn db init`".into())
            })?;
        let importer = Importer::new(import)
            .map_err(|e| FsError::Invalid(format!("invalid [import] pattern: {e}")))?;
        let core = Core {
            // Most of the budget for listings, the rest for attributes.
            listings: Listings::new(opts.ttl, opts.cache_memory / 4 * 3),
            remembered: Remembered::new(opts.cache_memory / 4),
            ids: Ids::new(&opts.unknown_owner),
            opts,
            pool,
            importer,
            root_dir: root.id,
            nodes: HostNodes::default(),
            locals: Locals::default(),
            localdirs: LocalDirs::default(),
            handles: Handles::default(),
            fetches: read::Fetches::default(),
            imports: queue::Queue::default(),
            journal: None,
            owner: Owner::me(),
            catalog_down: Mutex::new(None),
            found: found::FoundCheck::default(),
            forgetter: Mutex::new(None),
            cancel: AtomicBool::new(false),
        };
        let mut core = core;
        if let Some(node) = &core.opts.write_node {
            let n = core.with_cat(|c| Ok(c.read(|tx| tx.node(node))?))?;
            if n.host.as_deref() != Some(core.opts.host.as_str()) {
                return Err(FsError::Invalid(format!(
                    "fs.write_node {node:?} is not a node of this host ({})",
                    core.opts.host
                )));
            }
            // Files are written only where their closing can be remembered.
            if let Ok((_, root)) = core.write_root() {
                let j = Journal::open(&root).map_err(|e| {
                    let busy = e.to_string().contains("locked");
                    FsError::Invalid(if busy {
                        format!(
                            "another cairnfs writes to node {node:?} on this host (its journal \
                             of closed files, {}, is held): one mount per write node",
                            NodeRoot::new(&root).journal().display()
                        )
                    } else {
                        format!("cannot open the journal of closed files: {e}")
                    })
                })?;
                core.journal = Some(j);
            }
        }
        core.recover();
        core.load_kept();
        Ok(core)
    }

    /// Sets where the files just imported go, for a thread of the mount to tell the kernel
    /// that the inode they were written under is gone (FUSE_NOTIFY_DELETE: the kernel drops
    /// the name and, once no program has it open, the inode, and sends its FORGET). A written
    /// file's inode goes on naming the archived file for as long as the kernel holds it, and
    /// the kernel keeps an unused inode cached until it is short of memory: without this the
    /// mount would keep a little for every file ever written through it. The next look at
    /// the name finds the archived file, with the inode number every host gives it. Sent
    /// from a thread of its own: the kernel takes the directory's lock to drop a name, which
    /// a request being answered may hold.
    pub fn set_kernel_forgetter(&self, tx: std::sync::mpsc::Sender<Forget>) {
        *self.forgetter.lock().expect("forgetter") = Some(tx);
    }

    /// Tells the kernel these inodes are gone (see [`Core::set_kernel_forgetter`]).
    fn kernel_forget(&self, gone: Vec<Forget>) {
        if gone.is_empty() {
            return;
        }
        if let Some(tx) = &*self.forgetter.lock().expect("forgetter") {
            for g in gone {
                let _ = tx.send(g);
            }
        }
    }

    /// Stops waits in progress (at unmount).
    pub fn shutdown(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `f` with a catalog connection of the pool (one that a database failure broke is
    /// not reused, so the mount recovers by itself).
    fn with_cat<T>(&self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        self.pool.with(f)
    }

    // ---- inodes ----

    fn dir_ino(&self, id: DirId) -> u64 {
        Ino::dir(id, self.root_dir).into()
    }

    /// The directory inode `ino` stands for: a catalog directory, or one made here while the
    /// catalog could not take it (the catalog's id once it has it).
    fn dir_id(&self, ino: u64) -> Result<DirId> {
        let id = Ino::from(ino)
            .dir_id(self.root_dir)
            .ok_or(FsError::NotDir)?;
        Ok(match LocalDirs::is_local(id) {
            true => self.localdirs.real(id).unwrap_or(id),
            false => id,
        })
    }

    /// A directory's attributes: its recorded owner and mode (`0755` and `[fs] uid`/`gid`
    /// where none is recorded), and the time set through this mount, else its creation's.
    fn dir_attr(&self, d: &Dir) -> Attr {
        let ino = self.dir_ino(d.id);
        let mtime = self
            .remembered
            .dir_mtime(ino)
            .unwrap_or_else(|| epoch(d.created_at));
        let (uid, gid) = self.owner_ids(&d.own);
        let a = Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime,
            perm: d.own.mode.map_or(0o755, |m| (m & 0o7777) as u16),
            uid,
            gid,
        };
        self.remembered.seen_dir(d.id, d.parent_id, &a);
        self.remembered.seen_dir_path(d.id, &d.path);
        a
    }

    /// Directory `id`'s path in the archive.
    fn dir_path(&self, id: DirId) -> Result<String> {
        match self.remembered.dir_path(id) {
            Some(p) => Ok(p),
            None => Ok(self.dir_by_id(id)?.path),
        }
    }

    /// An archived file's attributes.
    fn file_attr(&self, id: FileId, size: u64, mtime: i64, own: &Ownership) -> Attr {
        let (uid, gid) = self.owner_ids(own);
        Attr::archived(id, size, mtime, own.mode, uid, gid)
    }

    /// The catalog file inode `ino` stands for: an archived file's, or an imported local's.
    fn file_id(&self, ino: u64) -> Option<FileId> {
        match Ino::from(ino) {
            Ino::File(id) => Some(id),
            Ino::Local(n) => self.locals.imported(n),
            Ino::Root | Ino::Dir(_) => None,
        }
    }

    /// How long the kernel may keep a name and its attributes. An archived file never
    /// changes, and a directory's attributes hardly do: those are kept long. A file that
    /// exists only here (being written, or kept under a dot name) changes, and uses `[fs] ttl`.
    /// New names need no TTL: lookups that fail are not cached, and listings are refreshed
    /// after `[fs] ttl` (see [`Core::opendir`]).
    pub fn ttl(&self, a: &Attr) -> Duration {
        if Ino::from(a.ino).is_local() {
            self.opts.ttl
        } else {
            ARCHIVED_TTL.max(self.opts.ttl)
        }
    }

    // ---- this host ----

    /// This host's active nodes with a root, refreshed every few seconds.
    fn host_nodes(&self) -> Vec<Node> {
        self.nodes.get(|| {
            self.with_cat(|c| {
                Ok(c.read(|tx| match tx.host_by_name(&self.opts.host)? {
                    Some(h) => tx.nodes_on_host(h.id),
                    None => Ok(Vec::new()),
                })?)
            })
            .unwrap_or_else(|e| {
                warn!("Cannot read this host's nodes: {e}");
                Vec::new()
            })
        })
    }

    fn write_root(&self) -> Result<(Node, PathBuf)> {
        let Some(name) = &self.opts.write_node else {
            return Err(FsError::ReadOnly(
                "this mount is read-only: no [fs] write_node is configured".into(),
            ));
        };
        let node = self
            .host_nodes()
            .into_iter()
            .find(|n| &n.name == name)
            .ok_or_else(|| {
                FsError::ReadOnly(format!(
                    "write node {name:?} is not active on this host, so nothing can be written"
                ))
            })?;
        let root = PathBuf::from(node.root.clone().unwrap_or_default());
        Ok((node, root))
    }

    // ---- namespace ----

    /// Takes a local out of the namespace. Its directory's catalog listing is read again
    /// (the file may be archived now).
    fn forget_local(&self, l: &mut crate::locals::Local) {
        self.listings.changed_dir(l.dir_id);
        self.locals.remove(l);
    }

    /// Looks `name` up in directory `parent`, for `who`, who must be able to search the path
    /// to it.
    pub fn lookup(&self, who: &Caller, parent: u64, name: &OsStr) -> Result<Attr> {
        self.search(who, self.dir_id(parent)?)?;
        self.find(parent, name)
    }

    /// Looks `name` up in directory `parent`.
    fn find(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?;
        self.refresh_found(dir_id);
        let local = self.locals.by_name(dir_id, name);
        // A file being written here shadows nothing and nothing shadows it; a file merely
        // kept on the write node yields to an archived one of the same name (cairnd may have
        // just copied it there).
        if let Some(l) = &local {
            let g = l.lock().expect("local");
            if g.kind == LocalKind::Staged || g.writers > 0 {
                return Ok(g.attr()?);
            }
        }
        // A directory made here while the catalog could not take it, unless the catalog has
        // one there by now (cairnd registering the files shown in it, another host): then
        // the catalog's takes over.
        if local.is_none()
            && let Some(d) = self.localdirs.by_name(dir_id, name)
        {
            if !LocalDirs::is_local(dir_id)
                && let Ok(Some(Err(real))) =
                    self.with_cat(|c| Ok(c.read(|tx| tx.lookup(dir_id, name))?))
            {
                self.adopt_dir(&d, real.id);
                let a = self.dir_attr(&real);
                self.remembered.seen(&a);
                return Ok(a);
            }
            return Ok(self.dir_attr(&local_dir_row(&d)));
        }
        // A fresh listing of the directory answers, either way: a program that stats what it
        // has just listed, or a name that is not there (`cp -r` looks up every name it is
        // about to create). It is no older than the kernel may keep names anyway.
        if local.is_none()
            && let Some(l) = self.listings.fresh(dir_id)
        {
            let Some(e) = l.get(name).cloned() else {
                return Err(FsError::NotFound);
            };
            if e.attr.kind == Kind::File {
                self.listings.looked_up_listed_file();
            }
            self.remembered.seen(&e.attr);
            return Ok(e.attr);
        }
        // The catalog has nothing below a directory it does not have yet.
        let found = if LocalDirs::is_local(dir_id) {
            None
        } else {
            self.with_cat(|c| Ok(c.read(|tx| tx.lookup(dir_id, name))?))?
        };
        if found.is_some()
            && let Some(l) = &local
        {
            self.forget_local(&mut l.lock().expect("local"));
        }
        match found {
            Some(Ok(f)) => {
                // A file of a directory the kernel was given names of, looked up: a program
                // stats what it lists, after the listing's TTL (`ls -l` of a large directory).
                if self.listings.was_served(dir_id) {
                    self.listings.looked_up_listed_file();
                }
                let a = self.file_attr(f.id, f.size, f.mtime, &f.own);
                self.remembered.seen(&a);
                Ok(a)
            }
            Some(Err(d)) => {
                let a = self.dir_attr(&d);
                self.remembered.seen(&a);
                Ok(a)
            }
            None => match local {
                Some(l) => Ok(l.lock().expect("local").attr()?),
                None => Err(FsError::NotFound),
            },
        }
    }

    /// The kernel now holds `n` more references to inode `ino` (a reply named it).
    pub fn referenced(&self, ino: u64, n: u64) {
        self.locals.referenced(ino, n);
    }

    /// The kernel dropped `n` references to inode `ino` (FORGET): what is kept of it goes
    /// once the kernel holds it no more.
    pub fn forget(&self, ino: u64, n: u64) {
        if Ino::from(ino).is_local() {
            self.locals.forget(ino, n);
        } else {
            // The kernel counts lookups; a FORGET is for all it holds of the inode.
            self.remembered.forget(ino);
        }
    }

    fn dir_by_id(&self, id: DirId) -> Result<Dir> {
        if LocalDirs::is_local(id) {
            if let Some(real) = self.localdirs.real(id) {
                return self.dir_by_id(real);
            }
            let d = self.localdirs.get(id).ok_or(FsError::NotFound)?;
            return Ok(local_dir_row(&d));
        }
        self.with_cat(|c| Ok(c.read(|tx| tx.dir_by_id(id))?))?
            .ok_or(FsError::NotFound)
    }

    /// Where directory `path` is: the catalog's, or one made here; made if there is none (here,
    /// when the catalog cannot take it now). For a file found again at a restart.
    fn resolve_dir(&self, path: &str) -> Result<DirId> {
        if path.is_empty() {
            return Ok(self.root_dir);
        }
        if let Some(d) = self.localdirs.by_path(path) {
            return Ok(d.id);
        }
        if let Some(d) = self.with_cat(|c| Ok(c.read(|tx| tx.dir_by_path(path))?))? {
            return Ok(d.id);
        }
        let t = cairn_catalog::units::now();
        match self.with_cat(|c| Ok(c.write(|tx| tx.ensure_dir(path, t))?)) {
            Ok(id) => Ok(id),
            Err(e) if catalog_out_of_reach(&e) && self.journal.is_some() => {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                let parent_id = self.resolve_dir(parent)?;
                Ok(self
                    .make_local_dir(parent_id, name, path, Ownership::default(), &e)?
                    .id)
            }
            Err(e) => Err(e),
        }
    }

    /// Notes whether a write to the catalog just worked.
    fn catalog_answered(&self, ok: bool) {
        let mut d = self.catalog_down.lock().expect("catalog down");
        match (ok, *d) {
            (true, _) => *d = None,
            (false, None) => *d = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// Whether writes to the catalog failed lately for want of it, and no write has worked
    /// since.
    fn catalog_seems_down(&self) -> bool {
        self.catalog_down.lock().expect("catalog down").is_some()
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let fresh = match Ino::from(ino) {
            Ino::File(id) => self
                .with_cat(|c| Ok(c.read(|tx| tx.file_by_id(id))?))
                .map(|f| self.file_attr(f.id, f.size, f.mtime, &f.own)),
            Ino::Root | Ino::Dir(_) => self
                .dir_id(ino)
                .and_then(|id| self.dir_by_id(id))
                .map(|d| self.dir_attr(&d)),
            Ino::Local(n) => {
                if let Some(l) = self.locals.get(n) {
                    return Ok(l.lock().expect("local").attr()?);
                }
                let Some(id) = self.locals.imported(n) else {
                    return Err(FsError::NotFound);
                };
                let f = self.with_cat(|c| Ok(c.read(|tx| tx.file_by_id(id))?))?;
                let mut a = self.file_attr(f.id, f.size, f.mtime, &f.own);
                a.ino = ino;
                return Ok(a);
            }
        };
        match fresh {
            Ok(a) => {
                self.remembered.seen(&a);
                Ok(a)
            }
            // The catalog is out of reach: what was seen of an archived file or a directory
            // still holds (archived files never change).
            Err(e @ FsError::Catalog(_)) => self.remembered.known(ino).ok_or(e),
            Err(e) => Err(e),
        }
    }

    pub fn release_handle(&self, fh: u64) -> Result<()> {
        match self.handles.remove(fh) {
            None => Err(FsError::BadHandle),
            Some(Handle::Write(l)) => self.close_writer(&l),
            Some(_) => Ok(()),
        }
    }

    pub fn unlink(&self, who: &Caller, parent: u64, name: &OsStr) -> Result<()> {
        let name_s = name_str(name)?;
        let parent_attr = self.may_change(who, self.dir_id(parent)?)?;
        let a = self.find(parent, name)?;
        Self::sticky_allows(who, &parent_attr, &a)?;
        match (a.kind, Ino::from(a.ino)) {
            (Kind::Dir, _) => return Err(FsError::IsDir),
            (Kind::File, Ino::Local(_)) => {}
            (Kind::File, _) => {
                return Err(FsError::NotPermitted(format!(
                    "{name_s} is archived and cannot be removed through the mount \
                     (set user.cairn.clean=NODE to release a copy)"
                )));
            }
        }
        let l = self.locals.get(a.ino).ok_or(FsError::NotFound)?;
        self.unlink_local(&l)
    }

    pub fn rename(
        &self,
        who: &Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<()> {
        let new_dir_id = self.dir_id(newparent)?;
        let newname = name_str(newname)?.to_owned();
        let from_dir = self.may_change(who, self.dir_id(parent)?)?;
        let to_dir = self.may_change(who, new_dir_id)?;
        let a = self.find(parent, name)?;
        Self::sticky_allows(who, &from_dir, &a)?;
        let Some(l) = (a.kind == Kind::File)
            .then(|| self.locals.get(a.ino))
            .flatten()
        else {
            return Err(FsError::NotPermitted(format!(
                "{} is archived and cannot be renamed",
                name.to_string_lossy()
            )));
        };
        // The target: a local file is replaced; an archived one cannot be.
        if let Ok(t) = self.find(newparent, OsStr::new(&newname)) {
            if t.ino == a.ino {
                return Ok(());
            }
            Self::sticky_allows(who, &to_dir, &t)?;
            match self.locals.get(t.ino) {
                Some(tl) if t.kind == Kind::File => {
                    let mut tg = tl.lock().expect("local");
                    let _ = std::fs::remove_file(&tg.backing);
                    self.forget_local(&mut tg);
                }
                _ => {
                    return Err(FsError::NotPermitted(format!(
                        "{newname} is archived and cannot be replaced"
                    )));
                }
            }
        }
        let new_dir = self.dir_by_id(new_dir_id)?;
        self.rename_local(&l, new_dir_id, &new_dir.path, &newname)
    }

    // ---- capacity ----

    pub fn statfs(&self) -> Space {
        let mut s = Space::default();
        let mut seen = std::collections::HashSet::new();
        for n in self.host_nodes() {
            let root = n.root.unwrap_or_default();
            let Ok(st) = cairn_node::root::space(std::path::Path::new(&root)) else {
                continue;
            };
            // Two nodes on one filesystem count once.
            if !seen.insert(st.fsid) {
                continue;
            }
            s.total += st.total;
            s.free += st.free;
            s.avail += st.avail;
        }
        s
    }
}

/// A name the kernel should drop, and the inode it names that is gone.
pub struct Forget {
    pub parent: u64,
    pub ino: u64,
    pub name: String,
}

/// How long the kernel keeps archived names and attributes.
const ARCHIVED_TTL: Duration = Duration::from_secs(3600);

/// How long an operation on the mount waits for an unreachable catalog before it fails with
/// EIO: a program on the mount should get an error, not hang, while a site's link is down.
const CATALOG_PATIENCE: Duration = Duration::from_secs(2);

/// How long `mkdir` waits for an unreachable or locked catalog when it can make the directory
/// here instead: long enough to get past a stale connection, not to hold up a `cp -r`.
const MKDIR_PATIENCE: Duration = Duration::from_millis(250);

/// The mount's patience with its catalog: `wait` for a server out of reach or a database
/// held by another process.
fn patience(wait: Duration) -> cairn_catalog::db::Patience {
    cairn_catalog::db::Patience::new(wait).with_busy(wait)
}

/// Whether a catalog error means it cannot be reached or is held by another process (a cut
/// link, a busy or failing database), as opposed to a refusal: what waits is kept here.
fn catalog_out_of_reach(e: &FsError) -> bool {
    matches!(e, FsError::Catalog(cairn_catalog::CatalogError::Db(db)) if db.breaks_connection())
}

/// A directory made here, as the catalog would have it.
fn local_dir_row(d: &LocalDir) -> Dir {
    Dir {
        id: d.id,
        parent_id: Some(d.parent),
        name: d.name.clone(),
        path: d.path.clone(),
        created_at: d.made,
        own: d.own.clone(),
    }
}

fn name_str(name: &OsStr) -> Result<&str> {
    let s = std::str::from_utf8(name.as_bytes())
        .map_err(|_| FsError::Invalid(format!("file name {name:?} is not UTF-8")))?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') {
        return Err(FsError::Invalid(format!("invalid file name {s:?}")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn names_are_checked() {
        assert!(name_str(OsStr::new("a.dat")).is_ok());
        assert!(matches!(
            name_str(OsStr::new("..")),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            name_str(OsStr::from_bytes(b"\xff")),
            Err(FsError::Invalid(_))
        ));
    }

    /// A core on a fresh SQLite catalog, with no write node.
    pub(super) fn core(dir: &Path) -> Core {
        let url = format!("sqlite://{}/catalog.db", dir.display());
        Catalog::init(&url).unwrap();
        let opts = Options {
            catalog: cairn_catalog::config::CatalogConfig {
                url,
                ..Default::default()
            },
            host: "h1".into(),
            socket: dir.join("cairnd.sock"),
            cache_dir: dir.join("cache"),
            write_node: None,
            uid: 0,
            gid: 0,
            ttl: Duration::from_secs(60),
            settle: Duration::ZERO,
            min_archive_copies: 1,
            unknown_owner: "nobody".into(),
            admin_group: "cairn".into(),
            cache_memory: 64 << 20,
        };
        Core::new(opts, &Default::default()).unwrap()
    }

    #[test]
    fn looking_up_files_just_listed_answers_from_the_listing_and_marks_a_stat_walk() {
        let d = tempfile::tempdir().unwrap();
        let c = core(d.path());
        assert!(!c.stat_walk());
        // Not in the catalog: only the listing can answer.
        let entry = Entry {
            name: "x.dat".into(),
            attr: Attr::archived(FileId(4242), 17, 0, None, 0, 0),
        };
        let l = std::sync::Arc::new(DirList::new(vec![entry]));
        c.listings.keep(c.root_dir, c.listings.generation(), &l);
        let a = c
            .lookup(&Caller::ROOT, ROOT_INO, OsStr::new("x.dat"))
            .unwrap();
        assert_eq!((a.ino, a.size), (file_ino(FileId(4242)), 17));
        assert!(c.stat_walk());
        assert!(matches!(
            c.lookup(&Caller::ROOT, ROOT_INO, OsStr::new("y.dat")),
            Err(FsError::NotFound)
        ));
    }
}
