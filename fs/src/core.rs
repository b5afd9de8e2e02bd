//! What every operation on the mount does, with typed results and no FUSE types: the adapter in
//! [`crate::fuse`] only translates. See docs/SEMANTICS.md.
//!
//! Inode numbers are stable: a catalog directory `d` is `d << 2`, a catalog file `f` is
//! `f << 2 | 1`, and the root is 1. Files that exist only on this host — being written, or
//! named with a leading `.` — get `n << 2 | 2` for as long as this mount lives.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File as StdFile, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cairn_catalog::catalog::{FileFilter, NewFile, normalize_path};
use cairn_catalog::model::{Dir, File, Has, Id, Node, Wants};
use cairn_catalog::{Catalog, CatalogError, Config};
use cairn_node::importer::{Importer, Verdict};
use tracing::{debug, info, warn};

use crate::fetch::{Fetch, Started, State};
use crate::staged::{Writer, hash_file};

pub const ROOT_INO: u64 = 1;
/// Names of our extended attributes, in `listxattr` order.
pub const FILE_XATTRS: &[&str] = &[
    "user.cairn.md5",
    "user.cairn.size",
    "user.cairn.state",
    "user.cairn.copies",
    "user.cairn.requests",
];

/// Why an operation failed. The adapter maps each variant to one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("{0}")]
    ReadOnly(String),
    /// Archived files and directories cannot be changed through the mount.
    #[error("{0}")]
    NotPermitted(String),
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("{0}")]
    Invalid(String),
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute {0:?} is not supported")]
    Unsupported(String),
    /// The bytes cannot be had: no reachable copy, or they did not match the md5.
    #[error("{0}")]
    Unavailable(String),
    #[error("bad file handle")]
    BadHandle,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
}

/// What `stat` shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
}

/// One directory entry with its attributes (for `readdirplus`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: String,
    pub attr: Attr,
}

/// What an open produced.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// A complete file on a local disk: the adapter may let the kernel read it directly
    /// (FUSE passthrough), keeping this handle only for `release`.
    pub passthrough: Option<StdFile>,
}

/// Capacity of this host's nodes, for `statfs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub free: u64,
    pub avail: u64,
}

/// Settings of one mount.
#[derive(Debug, Clone)]
pub struct Options {
    pub catalog_url: String,
    pub host: String,
    pub socket: PathBuf,
    pub cache_dir: PathBuf,
    pub write_node: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub ttl: Duration,
    pub min_archive_copies: usize,
}

impl Options {
    pub fn from_config(c: &Config) -> Options {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Options {
            catalog_url: c.catalog.url.clone(),
            host: c.host_name(),
            socket: c.daemon.socket.clone(),
            cache_dir: c.cache.dir.clone(),
            write_node: c.fs.write_node.clone(),
            uid: c.fs.uid.unwrap_or(uid),
            gid: c.fs.gid.unwrap_or(gid),
            ttl: c.fs.ttl.map(|t| t.0).unwrap_or(Duration::from_secs(1)),
            min_archive_copies: c.daemon.min_archive_copies,
        }
    }
}

/// Where a file that exists only on this host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalKind {
    /// Written under a plain name: imported when its last writer closes it.
    Staged,
    /// A file on the write node that is not imported: a `.` name, or one the `[import]` rules
    /// skip. Renaming it to a plain name imports it.
    Kept,
}

#[derive(Debug)]
struct Local {
    ino: u64,
    dir_id: Id,
    dir_path: String,
    name: String,
    kind: LocalKind,
    backing: PathBuf,
    writer: Option<Writer>,
    writers: usize,
    /// Size and md5 of the backing file as last written through the mount, when known.
    hashed: Option<(u64, String)>,
    /// Why its bytes are not to be imported: a writer died by a signal, or a write to the
    /// backing file failed (a full disk). It is discarded at the last close.
    spoiled: Option<String>,
    /// Unlinked or imported: the entry only lives on for open handles.
    gone: bool,
    /// Closed (or renamed to a plain name) and waiting for the importer.
    importing: bool,
    /// This local's own reference, to tell it apart from others in a batch.
    me: std::sync::Weak<Mutex<Local>>,
}

impl Local {
    fn me(&self) -> LocalRef {
        self.me.upgrade().expect("a local lives while it is locked")
    }
}

/// A local file ready to be registered: hashed, its name accepted by the import rules.
struct Ready {
    local: LocalRef,
    path: String,
    acq: String,
    size: u64,
    md5: String,
    mtime: i64,
}

/// Runs `f` on a local, locking it unless it is the one the caller holds already.
fn with_local<T>(l: &LocalRef, held: Option<&mut Local>, f: impl FnOnce(&mut Local) -> T) -> T {
    match held {
        Some(g) if Arc::ptr_eq(l, &g.me()) => f(g),
        _ => f(&mut l.lock().expect("local")),
    }
}

type LocalRef = Arc<Mutex<Local>>;

/// A directory's entries, shared by the open handles that read them.
type Listing = Arc<DirList>;

/// The entries of a directory (without `.` and `..`): subdirectories first, then files.
#[derive(Debug, Default)]
pub struct DirList {
    pub entries: Vec<Entry>,
    /// Entry by name, made on the first lookup that uses this listing (a `find` makes none).
    index: OnceLock<HashMap<String, usize>>,
}

impl DirList {
    fn new(entries: Vec<Entry>) -> Self {
        DirList {
            entries,
            index: OnceLock::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&Entry> {
        let index = self.index.get_or_init(|| {
            let mut m = HashMap::with_capacity(self.entries.len());
            for (i, e) in self.entries.iter().enumerate() {
                m.insert(e.name.clone(), i);
            }
            m
        });
        index.get(name).map(|&i| &self.entries[i])
    }
}

#[derive(Default)]
struct Locals {
    by_ino: HashMap<u64, LocalRef>,
    /// By directory and name, in order, so a directory's locals are one range.
    by_name: BTreeMap<(Id, String), u64>,
    /// Locals that were imported: their old inode now stands for the catalog file.
    imported: HashMap<u64, Id>,
    next: u64,
}

enum Handle {
    /// Reads from a complete local file (a node copy, the cache, or a local-only file).
    Plain(StdFile, u64),
    /// Reads that go to the kernel directly; nothing to do here but count the open.
    Passthrough(u64),
    Stream(Arc<Fetch>, u64),
    Write(LocalRef),
    Dir(Mutex<Option<Listing>>),
}

/// The mount's state; every method is one operation.
pub struct Core {
    pub opts: Options,
    pool: Mutex<Vec<Catalog>>,
    importer: Importer,
    root_dir: Id,
    host_nodes: RwLock<(Option<Instant>, Vec<Node>)>,
    locals: Mutex<Locals>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Open non-passthrough read handles per inode: the kernel does not mix those with
    /// passthrough opens of the same inode.
    plain_opens: Mutex<HashMap<u64, usize>>,
    fetches: Mutex<HashMap<Id, Arc<Fetch>>>,
    dir_meta: Mutex<HashMap<u64, (u16, SystemTime)>>,
    /// Directory listings, reused for `[fs] ttl` (the kernel caches names as long), dropped
    /// whenever this mount changes the namespace.
    listings: Mutex<HashMap<Id, (Instant, Listing)>>,
    /// Size of `listings` at which those past their TTL are dropped next.
    listings_prune_at: AtomicUsize,
    /// Counts this mount's changes to the namespace: a listing read before a change is not
    /// kept after it.
    generation: AtomicU64,
    /// Directories whose listings the prefetcher should read ahead.
    prefetch: Mutex<Option<std::sync::mpsc::SyncSender<u64>>>,
    /// How many references the kernel holds to each local inode (replies that named it, less
    /// its FORGETs): an imported local's inode is dropped when the kernel drops it.
    local_refs: Mutex<HashMap<u64, u64>>,
    /// When (ms after `started`) a file was last looked up in a listing just read: a program
    /// stats entries after reading their names ([`Core::stat_walk`]).
    stat_walk_seen: AtomicU64,
    started: Instant,
    /// Attributes of archived files and directories seen lately (at most [`KNOWN_LIMIT`]).
    known: Mutex<HashMap<u64, Attr>>,
    /// A digest of the listing last given to the kernel, per directory.
    served: Mutex<HashMap<Id, u64>>,
    next_fh: AtomicU64,
    staged_seq: AtomicU64,
    import_queue: Mutex<Option<std::sync::mpsc::Sender<Ready>>>,
    importer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    cancel: AtomicBool,
}

pub fn file_ino(id: Id) -> u64 {
    (id as u64) << 2 | 1
}

impl Core {
    pub fn new(opts: Options, import: &cairn_catalog::config::ImportConfig) -> Result<Core> {
        let mut cat = open_catalog(&opts.catalog_url)?;
        let root = cat.read(|tx| tx.dir_by_path(""))?.ok_or_else(|| {
            FsError::Invalid("the catalog has no root directory; run `cairn db init`".into())
        })?;
        let importer = Importer::new(import)
            .map_err(|e| FsError::Invalid(format!("invalid [import] pattern: {e}")))?;
        let core = Core {
            opts,
            pool: Mutex::new(vec![cat]),
            importer,
            root_dir: root.id,
            host_nodes: RwLock::new((None, Vec::new())),
            locals: Mutex::new(Locals::default()),
            handles: Mutex::new(HashMap::new()),
            plain_opens: Mutex::new(HashMap::new()),
            fetches: Mutex::new(HashMap::new()),
            dir_meta: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            listings_prune_at: AtomicUsize::new(LISTINGS_KEPT),
            generation: AtomicU64::new(0),
            prefetch: Mutex::new(None),
            stat_walk_seen: AtomicU64::new(0),
            local_refs: Mutex::new(HashMap::new()),
            started: Instant::now(),
            served: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            staged_seq: AtomicU64::new(0),
            import_queue: Mutex::new(None),
            importer_thread: Mutex::new(None),
            cancel: AtomicBool::new(false),
        };
        if let Some(node) = &core.opts.write_node {
            let n = core.with_cat(|c| Ok(c.read(|tx| tx.node(node))?))?;
            if n.host.as_deref() != Some(core.opts.host.as_str()) {
                return Err(FsError::Invalid(format!(
                    "fs.write_node {node:?} is not a node of this host ({})",
                    core.opts.host
                )));
            }
        }
        core.tidy_staging();
        core.load_kept();
        Ok(core)
    }

    /// Stops waits in progress (at unmount).
    pub fn shutdown(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn with_cat<T>(&self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        let taken = self.pool.lock().expect("pool").pop();
        let mut cat = match taken {
            Some(c) => c,
            None => open_catalog(&self.opts.catalog_url)?,
        };
        let out = f(&mut cat);
        self.pool.lock().expect("pool").push(cat);
        out
    }

    // ---- inodes ----

    fn dir_ino(&self, id: Id) -> u64 {
        if id == self.root_dir {
            ROOT_INO
        } else {
            (id as u64) << 2
        }
    }

    fn dir_id(&self, ino: u64) -> Result<Id> {
        match ino {
            ROOT_INO => Ok(self.root_dir),
            i if i & 3 == 0 => Ok((i >> 2) as Id),
            _ => Err(FsError::NotDir),
        }
    }

    fn dir_attr(&self, d: &Dir) -> Attr {
        let ino = self.dir_ino(d.id);
        let (perm, mtime) = self
            .dir_meta
            .lock()
            .expect("dir meta")
            .get(&ino)
            .copied()
            .unwrap_or((
                0o755,
                SystemTime::UNIX_EPOCH + Duration::from_secs(d.created_at.max(0) as u64),
            ));
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime,
            perm,
        }
    }

    fn file_attr(f: &File) -> Attr {
        Self::stat_attr(f.id, f.size, f.mtime)
    }

    /// An archived file's attributes: read-only, its size and mtime from the catalog.
    fn stat_attr(id: Id, size: u64, mtime: i64) -> Attr {
        Attr {
            ino: file_ino(id),
            kind: Kind::File,
            size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64),
            perm: 0o444,
        }
    }

    fn local_attr(l: &Local) -> Result<Attr> {
        let m = std::fs::metadata(&l.backing)?;
        Ok(Attr {
            ino: l.ino,
            kind: Kind::File,
            size: m.len(),
            mtime: m.modified()?,
            perm: (m.permissions().mode() & 0o7777) as u16,
        })
    }

    fn local(&self, ino: u64) -> Option<LocalRef> {
        self.locals
            .lock()
            .expect("locals")
            .by_ino
            .get(&ino)
            .cloned()
    }

    // ---- this host ----

    /// This host's active nodes with a root, refreshed every few seconds (transport disks come
    /// and go).
    fn host_nodes(&self) -> Vec<Node> {
        {
            let g = self.host_nodes.read().expect("host nodes");
            if g.0.is_some_and(|t| t.elapsed() < Duration::from_secs(3)) {
                return g.1.clone();
            }
        }
        let nodes = self
            .with_cat(|c| {
                Ok(c.read(|tx| match tx.host_by_name(&self.opts.host)? {
                    Some(h) => tx.nodes_on_host(h.id),
                    None => Ok(Vec::new()),
                })?)
            })
            .unwrap_or_else(|e| {
                warn!("Cannot read this host's nodes: {e}");
                Vec::new()
            })
            .into_iter()
            .filter(|n| n.active && n.root.is_some())
            .collect::<Vec<_>>();
        *self.host_nodes.write().expect("host nodes") = (Some(Instant::now()), nodes.clone());
        nodes
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

    fn staging_dir(root: &Path) -> PathBuf {
        cairn_node::NodeRoot::new(root).staging()
    }

    /// Where a file this host keeps without importing it (a dot name, or a path the import
    /// rules skip) lives on the write node: `.cairn/kept/PATH`, out of the archive's tree, so
    /// that listing a directory needs nothing but the catalog and this mount's memory.
    fn kept_path(root: &Path, dir_path: &str, name: &str) -> PathBuf {
        cairn_node::NodeRoot::new(root)
            .kept()
            .join(dir_path)
            .join(name)
    }

    /// Moves a local file to its kept place, `.cairn/kept/DIR/NAME`.
    fn keep(root: &Path, g: &mut Local) -> io::Result<()> {
        let dest = Self::kept_path(root, &g.dir_path, &g.name);
        if dest != g.backing {
            std::fs::create_dir_all(dest.parent().unwrap_or(root))?;
            std::fs::rename(&g.backing, &dest)?;
            g.backing = dest;
        }
        g.kind = LocalKind::Kept;
        Ok(())
    }

    /// Makes the files kept by earlier mounts on this host visible again.
    fn load_kept(&self) {
        let Ok((_, root)) = self.write_root() else {
            return;
        };
        let top = cairn_node::NodeRoot::new(&root).kept();
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
                let dir = if dir_path.is_empty() {
                    Ok(self.root_dir)
                } else {
                    self.with_cat(|c| {
                        let found = c.read(|tx| tx.dir_by_path(&dir_path))?;
                        Ok(match found {
                            Some(d) => d.id,
                            None => {
                                let t = cairn_catalog::units::now();
                                c.write(|tx| tx.ensure_dir(&dir_path, t))?
                            }
                        })
                    })
                };
                match dir {
                    Ok(dir_id) => {
                        self.add_local(dir_id, &dir_path, &name, LocalKind::Kept, path);
                    }
                    Err(e) => warn!("Cannot show kept file {}: {e}", path.display()),
                }
            }
        }
    }

    /// Removes staged files left by mounts that are gone (killed mid-write): nothing of theirs
    /// was imported, and nothing will be.
    fn tidy_staging(&self) {
        let Ok((_, root)) = self.write_root() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(Self::staging_dir(&root)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if (!alive || pid == Some(std::process::id())) && std::fs::remove_file(e.path()).is_ok()
            {
                info!(
                    "Removed {}: left by a mount that stopped while it was being written; it \
                     was never imported.",
                    e.path().display()
                );
            }
        }
    }

    // ---- namespace ----

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?;
        let local = self
            .locals
            .lock()
            .expect("locals")
            .by_name
            .get(&(dir_id, name.to_owned()))
            .copied();
        let local = local.and_then(|ino| self.local(ino));
        // A file being written here shadows nothing and nothing shadows it; a file merely
        // kept on the write node yields to an archived one of the same name (cairnd may have
        // just copied it there).
        if let Some(l) = &local {
            let g = l.lock().expect("local");
            if g.kind == LocalKind::Staged || g.writers > 0 || g.importing {
                return Self::local_attr(&g);
            }
        }
        // A program that stats what it has just listed: answer from that listing, which is
        // no older than the kernel may keep the names anyway.
        if local.is_none()
            && let Some(e) = self
                .fresh_listing(dir_id)
                .and_then(|l| l.get(name).filter(|e| e.attr.ino & 3 != 2).cloned())
        {
            if e.attr.kind == Kind::File {
                let now = self.started.elapsed().as_millis() as u64 + 1;
                self.stat_walk_seen.store(now, Ordering::Relaxed);
            }
            self.remember(&e.attr);
            return Ok(e.attr);
        }
        let found = self.with_cat(|c| Ok(c.read(|tx| tx.lookup(dir_id, name))?))?;
        if found.is_some()
            && let Some(l) = &local
        {
            self.forget_local(&mut l.lock().expect("local"));
        }
        match found {
            Some(Ok(f)) => {
                let a = Self::file_attr(&f);
                self.remember(&a);
                Ok(a)
            }
            Some(Err(d)) => {
                let a = self.dir_attr(&d);
                self.remember(&a);
                Ok(a)
            }
            None if local.is_some() => {
                Self::local_attr(&local.expect("checked").lock().expect("local"))
            }
            None => Err(FsError::NotFound),
        }
    }

    fn add_local(
        &self,
        dir_id: Id,
        dir_path: &str,
        name: &str,
        kind: LocalKind,
        backing: PathBuf,
    ) -> LocalRef {
        let mut ls = self.locals.lock().expect("locals");
        if let Some(ino) = ls.by_name.get(&(dir_id, name.to_owned()))
            && let Some(l) = ls.by_ino.get(ino)
        {
            return l.clone();
        }
        ls.next += 1;
        let ino = ls.next << 2 | 2;
        let l = Arc::new(Mutex::new(Local {
            ino,
            dir_id,
            dir_path: dir_path.to_owned(),
            name: name.to_owned(),
            kind,
            backing,
            writer: None,
            writers: 0,
            hashed: None,
            spoiled: None,
            gone: false,
            importing: false,
            me: std::sync::Weak::new(),
        }));
        l.lock().expect("local").me = Arc::downgrade(&l);
        ls.by_ino.insert(ino, l.clone());
        ls.by_name.insert((dir_id, name.to_owned()), ino);
        l
    }

    fn forget_local(&self, l: &mut Local) {
        self.changed();
        let mut ls = self.locals.lock().expect("locals");
        if ls.by_name.get(&(l.dir_id, l.name.clone())) == Some(&l.ino) {
            ls.by_name.remove(&(l.dir_id, l.name.clone()));
        }
        l.gone = true;
        if l.writers == 0 {
            ls.by_ino.remove(&l.ino);
        }
    }

    /// The kernel now holds `n` more references to inode `ino` (a reply named it).
    pub fn referenced(&self, ino: u64, n: u64) {
        if ino & 3 == 2 {
            *self
                .local_refs
                .lock()
                .expect("local refs")
                .entry(ino)
                .or_default() += n;
        }
    }

    /// The kernel dropped `n` references to inode `ino` (FORGET). A local inode it no longer
    /// knows at all is forgotten here too, once imported: nothing can name it any more.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino & 3 != 2 {
            return;
        }
        let mut refs = self.local_refs.lock().expect("local refs");
        let Some(count) = refs.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            refs.remove(&ino);
            self.locals.lock().expect("locals").imported.remove(&ino);
        }
    }

    fn dir_by_id(&self, id: Id) -> Result<Dir> {
        self.with_cat(|c| Ok(c.read(|tx| tx.dir_by_id(id))?))?
            .ok_or(FsError::NotFound)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        if ino == ROOT_INO || ino & 3 <= 1 {
            let fresh = if ino != ROOT_INO && ino & 3 == 1 {
                self.with_cat(|c| Ok(c.read(|tx| tx.file_by_id((ino >> 2) as Id))?))
                    .map(|f| Self::file_attr(&f))
            } else {
                self.dir_id(ino)
                    .and_then(|id| self.dir_by_id(id))
                    .map(|d| self.dir_attr(&d))
            };
            return match fresh {
                Ok(a) => {
                    self.remember(&a);
                    Ok(a)
                }
                // The catalog is out of reach: what was seen of an archived file or a
                // directory still holds (archived files never change).
                Err(e @ FsError::Catalog(_)) => self
                    .known
                    .lock()
                    .expect("known")
                    .get(&ino)
                    .cloned()
                    .ok_or(e),
                Err(e) => Err(e),
            };
        }
        if let Some(l) = self.local(ino) {
            return Self::local_attr(&l.lock().expect("local"));
        }
        if let Some(id) = self
            .locals
            .lock()
            .expect("locals")
            .imported
            .get(&ino)
            .copied()
        {
            let f = self.with_cat(|c| Ok(c.read(|tx| tx.file_by_id(id))?))?;
            let mut a = Self::file_attr(&f);
            a.ino = ino;
            return Ok(a);
        }
        Err(FsError::NotFound)
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles").insert(fh, h);
        fh
    }

    /// Opens a directory. The second value says whether the listing is the one this mount
    /// gave for the directory last time, so the kernel may keep its cached copy of it.
    pub fn opendir(&self, ino: u64) -> Result<(u64, bool)> {
        let dir_id = self.dir_id(ino)?;
        let list = self.listing(ino, dir_id)?;
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            list.entries.hash(&mut h);
            h.finish()
        };
        let same = self.served.lock().expect("served").insert(dir_id, digest) == Some(digest);
        self.read_ahead(&list);
        Ok((self.new_fh(Handle::Dir(Mutex::new(Some(list)))), same))
    }

    /// The entries of a directory, read once per open and kept, so reading a large directory
    /// in pieces costs one query.
    pub fn readdir(&self, ino: u64, fh: u64) -> Result<Listing> {
        {
            let hs = self.handles.lock().expect("handles");
            if let Some(Handle::Dir(cached)) = hs.get(&fh)
                && let Some(list) = &*cached.lock().expect("dir handle")
            {
                return Ok(list.clone());
            }
        }
        let dir_id = self.dir_id(ino)?;
        let list = self.listing(ino, dir_id)?;
        let hs = self.handles.lock().expect("handles");
        if let Some(Handle::Dir(cached)) = hs.get(&fh) {
            *cached.lock().expect("dir handle") = Some(list.clone());
        }
        Ok(list)
    }

    /// The entries of directory `dir_id`: the cached listing if it is younger than the TTL.
    fn listing(&self, ino: u64, dir_id: Id) -> Result<Listing> {
        if let Some(l) = self.fresh_listing(dir_id) {
            return Ok(l);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let l = Arc::new(DirList::new(self.list(ino)?));
        self.keep_listing(dir_id, generation, &l);
        Ok(l)
    }

    /// Keeps a listing for the TTL, unless this mount changed the namespace since it was
    /// read. Listings past their TTL are dropped once there are many.
    fn keep_listing(&self, dir_id: Id, generation: u64, l: &Listing) {
        let mut ls = self.listings.lock().expect("listings");
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        // Pruned when it has doubled since the last time, so a fast walk of a large tree
        // (thousands of listings within the TTL) does not scan them all at every insert.
        if ls.len() >= self.listings_prune_at.load(Ordering::Relaxed) {
            ls.retain(|_, (at, _)| at.elapsed() < self.opts.ttl);
            let next = (ls.len() * 2).max(LISTINGS_KEPT);
            self.listings_prune_at.store(next, Ordering::Relaxed);
        }
        ls.insert(dir_id, (Instant::now(), l.clone()));
    }

    /// Asks the prefetcher to read the listings of a directory's subdirectories (at most
    /// [`READ_AHEAD`]) that this mount has not listed yet, so that a first walk like `find`
    /// or `ls -R` finds them ready. Only one level: what is read ahead triggers nothing
    /// further until a program opens it; and a directory listed again and again (`ls` in a
    /// loop) reads nothing ahead after the first time.
    fn read_ahead(&self, list: &DirList) {
        let q = self.prefetch.lock().expect("prefetch");
        let Some(tx) = &*q else { return };
        let new: Vec<u64> = {
            let listed = self.listings.lock().expect("listings");
            list.entries
                .iter()
                .filter(|e| e.attr.kind == Kind::Dir)
                .filter(|e| {
                    self.dir_id(e.attr.ino)
                        .is_ok_and(|id| !listed.contains_key(&id))
                })
                .take(READ_AHEAD)
                .map(|e| e.attr.ino)
                .collect()
        };
        for ino in new {
            if tx.try_send(ino).is_err() {
                break;
            }
        }
    }

    /// Starts the thread that reads listings ahead of a directory walk.
    pub fn start_prefetcher(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(READ_AHEAD * 4);
        let core = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("prefetcher".into())
            .spawn(move || {
                while let Ok(ino) = rx.recv() {
                    let Some(c) = core.upgrade() else { return };
                    if let Ok(dir_id) = c.dir_id(ino)
                        && c.fresh_listing(dir_id).is_none()
                        && let Err(e) = c.listing(ino, dir_id)
                    {
                        debug!("Reading ahead directory inode {ino}: {e}");
                    }
                }
            })
            .expect("the prefetcher thread starts");
        *self.prefetch.lock().expect("prefetch") = Some(tx);
    }

    /// Whether a program has been looking up files it had listed without their attributes,
    /// in the last [`STAT_WALK`]: `du` or `os.walk` and `stat` going through a tree. Listings
    /// are then given to the kernel whole, with every file's attributes.
    pub fn stat_walk(&self) -> bool {
        let seen = self.stat_walk_seen.load(Ordering::Relaxed);
        seen != 0
            && self.started.elapsed().as_millis() as u64 <= seen + STAT_WALK.as_millis() as u64
    }

    fn fresh_listing(&self, dir_id: Id) -> Option<Listing> {
        self.listings
            .lock()
            .expect("listings")
            .get(&dir_id)
            .filter(|(at, _)| at.elapsed() < self.opts.ttl)
            .map(|(_, l)| l.clone())
    }

    /// Keeps the attributes of an archived file or directory, to answer `stat` with while the
    /// catalog is out of reach.
    fn remember(&self, a: &Attr) {
        let mut k = self.known.lock().expect("known");
        if k.len() >= KNOWN_LIMIT {
            k.clear();
        }
        k.insert(a.ino, a.clone());
    }

    /// Forgets cached listings after this mount changed the namespace.
    fn changed(&self) {
        let mut ls = self.listings.lock().expect("listings");
        self.generation.fetch_add(1, Ordering::AcqRel);
        ls.clear();
    }

    fn list(&self, ino: u64) -> Result<Vec<Entry>> {
        let dir_id = self.dir_id(ino)?;
        let (dirs, files) = self.with_cat(|c| {
            Ok(c.read(|tx| {
                let (dirs, files) = tx.list_dir_stats(dir_id)?;
                if dirs.is_empty() && files.is_empty() {
                    // Empty, or gone (removed from another host).
                    tx.dir_by_id(dir_id)?.ok_or_else(|| {
                        CatalogError::not_found("directory", format!("#{dir_id}"))
                    })?;
                }
                Ok((dirs, files))
            })?)
        })?;
        let mut out = Vec::with_capacity(dirs.len() + files.len());
        for d in dirs {
            let attr = self.dir_attr(&d);
            out.push(Entry { name: d.name, attr });
        }
        for f in files {
            out.push(Entry {
                attr: Self::stat_attr(f.id, f.size, f.mtime),
                name: f.name,
            });
        }
        // Files only this host has: being written, or kept on the write node. An archived
        // file of the same name comes first.
        let locals: Vec<LocalRef> = {
            let ls = self.locals.lock().expect("locals");
            ls.by_name
                .range((dir_id, String::new())..)
                .take_while(|((d, _), _)| *d == dir_id)
                .filter_map(|(_, ino)| ls.by_ino.get(ino).cloned())
                .collect()
        };
        if !locals.is_empty() {
            let names: HashSet<String> = out.iter().map(|e| e.name.clone()).collect();
            for l in locals {
                let l = l.lock().expect("local");
                if names.contains(&l.name) {
                    continue;
                }
                if let Ok(attr) = Self::local_attr(&l) {
                    out.push(Entry {
                        name: l.name.clone(),
                        attr,
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn release_handle(&self, fh: u64) -> Result<()> {
        let h = self.handles.lock().expect("handles").remove(&fh);
        match h {
            None => Err(FsError::BadHandle),
            Some(Handle::Plain(_, ino)) | Some(Handle::Stream(_, ino)) => {
                let mut p = self.plain_opens.lock().expect("plain opens");
                if let Some(n) = p.get_mut(&ino) {
                    *n -= 1;
                    if *n == 0 {
                        p.remove(&ino);
                    }
                }
                Ok(())
            }
            Some(Handle::Passthrough(_)) | Some(Handle::Dir(_)) => Ok(()),
            Some(Handle::Write(l)) => self.close_writer(&l),
        }
    }

    // ---- reading ----

    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if ino == ROOT_INO || ino & 3 == 0 {
            return Err(FsError::IsDir);
        }
        if let Some(l) = self.local(ino) {
            return self.open_local(l, flags, wants_write);
        }
        let file_id = match ino & 3 {
            1 => (ino >> 2) as Id,
            _ => match self.locals.lock().expect("locals").imported.get(&ino) {
                Some(id) => *id,
                None => return Err(FsError::NotFound),
            },
        };
        let (file, copies) = self.with_cat(|c| {
            Ok(c.read(|tx| Ok((tx.file_by_id(file_id)?, tx.copies_of(file_id)?)))?)
        })?;
        if wants_write {
            return Err(FsError::NotPermitted(format!(
                "{} is archived and cannot be changed (set user.cairn.clean to release a copy)",
                file.path
            )));
        }
        let complete = self.complete_local(&file, &copies);
        if let Some(path) = complete {
            let f = StdFile::open(&path)?;
            if path.starts_with(&self.opts.cache_dir) {
                cairn_node::cache::touch(&f);
            }
            return Ok(self.open_complete(ino, f));
        }
        let fetch = self.fetch(&file)?;
        match fetch {
            Started::Ready(path) => {
                let f = StdFile::open(&path)?;
                cairn_node::cache::touch(&f);
                Ok(self.open_complete(ino, f))
            }
            Started::Streaming(fetch) => {
                *self
                    .plain_opens
                    .lock()
                    .expect("plain opens")
                    .entry(ino)
                    .or_default() += 1;
                Ok(Opened {
                    fh: self.new_fh(Handle::Stream(fetch, ino)),
                    passthrough: None,
                })
            }
        }
    }

    /// A complete copy of `file` on this host: a healthy copy on an active node here, or the
    /// cache's checked copy.
    fn complete_local(
        &self,
        file: &File,
        copies: &[cairn_catalog::model::Copy],
    ) -> Option<PathBuf> {
        let nodes = self.host_nodes();
        for c in copies.iter().filter(|c| c.has == Has::Yes) {
            if let Some(n) = nodes.iter().find(|n| n.id == c.node_id) {
                let p = Path::new(n.root.as_deref().unwrap_or_default()).join(&file.path);
                if std::fs::metadata(&p).is_ok_and(|m| m.len() == file.size) {
                    return Some(p);
                }
            }
        }
        let cached = cairn_node::cache::CacheDir::new(&self.opts.cache_dir).complete(&file.md5);
        if std::fs::metadata(&cached).is_ok_and(|m| m.len() == file.size) {
            if let Ok(f) = StdFile::open(&cached) {
                cairn_node::cache::touch(&f);
            }
            return Some(cached);
        }
        None
    }

    fn open_complete(&self, ino: u64, f: StdFile) -> Opened {
        let mut plain = self.plain_opens.lock().expect("plain opens");
        if plain.get(&ino).copied().unwrap_or(0) > 0 {
            *plain.entry(ino).or_default() += 1;
            drop(plain);
            return Opened {
                fh: self.new_fh(Handle::Plain(f, ino)),
                passthrough: None,
            };
        }
        drop(plain);
        Opened {
            fh: self.new_fh(Handle::Passthrough(ino)),
            passthrough: Some(f),
        }
    }

    /// The adapter could not pass `fh` through to the kernel: serve its reads here.
    pub fn passthrough_refused(&self, fh: u64, f: StdFile) {
        let mut hs = self.handles.lock().expect("handles");
        if let Some(Handle::Passthrough(ino)) = hs.get(&fh) {
            let ino = *ino;
            hs.insert(fh, Handle::Plain(f, ino));
            *self
                .plain_opens
                .lock()
                .expect("plain opens")
                .entry(ino)
                .or_default() += 1;
        }
    }

    fn fetch(&self, file: &File) -> Result<Started> {
        let mut fetches = self.fetches.lock().expect("fetches");
        if let Some(f) = fetches.get(&file.id) {
            if f.state() != State::Running && !matches!(f.state(), State::Done) {
                fetches.remove(&file.id);
            } else {
                return Ok(Started::Streaming(f.clone()));
            }
        }
        let started = Fetch::start(&self.opts.socket, file.id, file.size).map_err(|why| {
            warn!("Cannot read {}: {why}", file.path);
            FsError::Unavailable(format!("cannot read {}: {why}", file.path))
        })?;
        if let Started::Streaming(f) = &started {
            fetches.retain(|_, f| f.state() == State::Running);
            fetches.insert(file.id, f.clone());
        }
        Ok(started)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        enum Src {
            File(StdFile),
            Stream(Arc<Fetch>),
        }
        let src = {
            let hs = self.handles.lock().expect("handles");
            match hs.get(&fh) {
                Some(Handle::Plain(f, _)) => Src::File(f.try_clone()?),
                Some(Handle::Stream(f, _)) => Src::Stream(f.clone()),
                Some(Handle::Write(l)) => {
                    Src::File(StdFile::open(&l.lock().expect("local").backing)?)
                }
                Some(Handle::Passthrough(_)) | Some(Handle::Dir(_)) | None => {
                    return Err(FsError::BadHandle);
                }
            }
        };
        match src {
            Src::File(f) => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], offset + got as u64)? {
                        0 => break,
                        n => got += n,
                    }
                }
                buf.truncate(got);
                Ok(buf)
            }
            Src::Stream(f) => f.read_at(offset, size as usize).map_err(|why| {
                warn!("Read of file #{} failed: {why}", f.file_id);
                FsError::Unavailable(why)
            }),
        }
    }

    // ---- writing ----

    fn open_local(&self, l: LocalRef, flags: i32, wants_write: bool) -> Result<Opened> {
        let mut g = l.lock().expect("local");
        if !wants_write {
            let f = StdFile::open(&g.backing)?;
            let ino = g.ino;
            drop(g);
            *self
                .plain_opens
                .lock()
                .expect("plain opens")
                .entry(ino)
                .or_default() += 1;
            return Ok(Opened {
                fh: self.new_fh(Handle::Plain(f, ino)),
                passthrough: None,
            });
        }
        self.write_root()?;
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
        g.writers += 1;
        drop(g);
        Ok(Opened {
            fh: self.new_fh(Handle::Write(l)),
            passthrough: None,
        })
    }

    pub fn create(&self, parent: u64, name: &OsStr, mode: u32) -> Result<(Attr, u64)> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?.to_owned();
        let (_, root) = self.write_root()?;
        if self.lookup(parent, OsStr::new(&name)).is_ok() {
            return Err(FsError::Exists(name));
        }
        let dir = self.dir_by_id(dir_id)?;
        let (kind, backing) = if name.starts_with('.') {
            let p = Self::kept_path(&root, &dir.path, &name);
            std::fs::create_dir_all(p.parent().unwrap_or(&root))?;
            (LocalKind::Kept, p)
        } else {
            let staging = Self::staging_dir(&root);
            std::fs::create_dir_all(&staging)?;
            let n = self.staged_seq.fetch_add(1, Ordering::Relaxed);
            (
                LocalKind::Staged,
                staging.join(format!("{}-{n}", std::process::id())),
            )
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&backing)?;
        let l = self.add_local(dir_id, &dir.path, &name, kind, backing);
        self.changed();
        let attr = {
            let mut g = l.lock().expect("local");
            g.writer = Some(Writer::new(f, 0));
            g.writers = 1;
            Self::local_attr(&g)?
        };
        Ok((attr, self.new_fh(Handle::Write(l))))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let l = match self.handles.lock().expect("handles").get(&fh) {
            Some(Handle::Write(l)) => l.clone(),
            Some(_) => return Err(FsError::BadHandle),
            None => return Err(FsError::BadHandle),
        };
        let mut g = l.lock().expect("local");
        let w = g.writer.as_mut().ok_or(FsError::BadHandle)?;
        match w.write(offset, data) {
            Ok(n) => Ok(n),
            Err(e) => {
                let why = format!("a write to {} failed: {e}", g.backing.display());
                Self::spoil(&mut g, why);
                Err(e.into())
            }
        }
    }

    /// Marks a local's bytes as not to be imported, saying why once.
    fn spoil(g: &mut Local, why: String) {
        if g.spoiled.is_none() {
            warn!(
                "{}: {why}; the file will not be imported.",
                join(&g.dir_path, &g.name)
            );
            g.spoiled = Some(why);
        }
    }

    /// `fsync` of a file being written makes its bytes so far durable where they are (a file
    /// kept under a dot name is never imported, so this is its only fsync). Others: nothing
    /// to do, archived files are durable already.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        let l = match self.handles.lock().expect("handles").get(&fh) {
            Some(Handle::Write(l)) => l.clone(),
            _ => return Ok(()),
        };
        let mut g = l.lock().expect("local");
        let Some(w) = &g.writer else { return Ok(()) };
        if let Err(e) = w.file.sync_data() {
            let why = format!("fsync of {} failed: {e}", g.backing.display());
            Self::spoil(&mut g, why);
            return Err(e.into());
        }
        Ok(())
    }

    /// A descriptor of `fh` was closed by process `pid`. A writer that is dying from a signal
    /// (killed mid-file) marks the file so that it is not imported.
    pub fn flush(&self, fh: u64, pid: u32) {
        let l = match self.handles.lock().expect("handles").get(&fh) {
            Some(Handle::Write(l)) => l.clone(),
            _ => return,
        };
        if killed_by_signal(pid) {
            let mut g = l.lock().expect("local");
            Self::spoil(
                &mut g,
                format!("its writer (pid {pid}) was killed mid-file"),
            );
        }
    }

    fn close_writer(&self, l: &LocalRef) -> Result<()> {
        let mut g = l.lock().expect("local");
        g.writers = g.writers.saturating_sub(1);
        if g.writers > 0 {
            return Ok(());
        }
        let writer = g.writer.take();
        if g.spoiled.is_some() || g.gone {
            if let Some(why) = &g.spoiled {
                let _ = std::fs::remove_file(&g.backing);
                info!("Discarded {}: {why}.", join(&g.dir_path, &g.name));
            }
            self.forget_local(&mut g);
            return Ok(());
        }
        if let Some(w) = writer {
            let (_file, size, md5) = w.finish(&self.cancel)?;
            g.hashed = Some((size, md5));
        }
        if g.name.starts_with('.') {
            // Still a temporary name: keep it on the write node.
            if g.kind == LocalKind::Staged {
                let (_, root) = self.write_root()?;
                Self::keep(&root, &mut g)?;
            }
            return Ok(());
        }
        self.import_local(l, &mut g)
    }

    /// Imports a local file under its plain name: hashes it (unless the writer did), then hands
    /// it to the importer, which renames it into place on the write node, makes it durable and
    /// registers it with its copy. Until then it stays visible here as a local file.
    fn import_local(&self, l: &LocalRef, g: &mut Local) -> Result<()> {
        let path = join(&g.dir_path, &g.name);
        let path = normalize_path(&path)?;
        let acq = match self.importer.check(&path) {
            Verdict::Import { acq } => acq,
            Verdict::Skip(why) => {
                let (_, root) = self.write_root()?;
                Self::keep(&root, g)?;
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
        let queued = match &*self.import_queue.lock().expect("import queue") {
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
        let (tx, rx) = std::sync::mpsc::channel::<Ready>();
        let core = Arc::downgrade(self);
        let handle = std::thread::Builder::new()
            .name("importer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < 2000 {
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
        *self.import_queue.lock().expect("import queue") = Some(tx);
        *self.importer_thread.lock().expect("importer") = Some(handle);
    }

    /// Imports what is queued and stops the importer (at unmount): nothing closed is lost.
    pub fn finish_imports(&self) {
        self.import_queue.lock().expect("import queue").take();
        if let Some(h) = self.importer_thread.lock().expect("importer").take() {
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
            cairn_node::copyfile::sync_fs(&root)
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
                                path: r.path.clone(),
                                acq: r.acq.clone(),
                                size: r.size,
                                md5: r.md5.clone(),
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
                        let refs = self.local_refs.lock().expect("local refs");
                        if refs.contains_key(&g.ino) {
                            let mut ls = self.locals.lock().expect("locals");
                            ls.imported.insert(g.ino, id);
                        }
                    }
                    Err(why) => {
                        // Put it back where it was: nothing half-done.
                        let _ = std::fs::rename(dest, from);
                        warn!("Cannot import {}: {why}; the file stays here", r.path);
                    }
                }
            });
        }
        cairn_node::socket::nudge(&self.opts.socket);
    }

    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<Attr> {
        if ino == ROOT_INO || ino & 3 == 0 {
            let d = self.dir_by_id(self.dir_id(ino)?)?;
            let mut a = self.dir_attr(&d);
            if size.is_some() {
                return Err(FsError::IsDir);
            }
            // Directories have no stored mode or time: accept the change for this mount's
            // lifetime, so `cp -a` and `rsync -a` finish without errors.
            if let Some(m) = mode {
                a.perm = (m & 0o7777) as u16;
            }
            if let Some(t) = mtime {
                a.mtime = t;
            }
            self.dir_meta
                .lock()
                .expect("dir meta")
                .insert(a.ino, (a.perm, a.mtime));
            // Listings hold the old mode and time (lookups are answered from them).
            self.changed();
            return Ok(a);
        }
        if let Some(l) = self.local(ino) {
            let mut g = l.lock().expect("local");
            if let Some(len) = size {
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
            return Self::local_attr(&g);
        }
        let a = self.getattr(ino)?;
        // Modes of archived files are fixed (0444); a chmod is accepted and changes nothing,
        // so `rsync -a` and `cp -p` over an archived tree do not fail. Setting the recorded
        // time again is no change either. Size and other times are.
        if size.is_none_or(|s| s == a.size)
            && mtime.is_none_or(|t| t == a.mtime)
            && atime.is_none_or(|_| mtime.is_some())
        {
            return Ok(a);
        }
        Err(FsError::NotPermitted(
            "archived files cannot be changed (set user.cairn.clean to release a copy)".into(),
        ))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?.to_owned();
        self.write_root()?;
        if self.lookup(parent, OsStr::new(&name)).is_ok() {
            return Err(FsError::Exists(name));
        }
        if name.starts_with('.') {
            return Err(FsError::Invalid(format!(
                "directory names starting with '.' are not archived: {name:?}"
            )));
        }
        let parent_dir = self.dir_by_id(dir_id)?;
        let path = normalize_path(&join(&parent_dir.path, &name))?;
        let t = cairn_catalog::units::now();
        let d = self.with_cat(|c| {
            Ok(c.write(|tx| {
                let id = tx.ensure_dir(&path, t)?;
                tx.dir_by_id(id)
            })?)
        })?;
        let d = d.ok_or(FsError::NotFound)?;
        self.changed();
        Ok(self.dir_attr(&d))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?;
        let found = self.with_cat(|c| Ok(c.read(|tx| tx.lookup(dir_id, name))?))?;
        let d = match found {
            Some(Err(d)) => d,
            Some(Ok(_)) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        };
        if !self.list(self.dir_ino(d.id))?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        let removed = self.with_cat(|c| Ok(c.write(|tx| tx.remove_empty_dir(d.id))?))?;
        if !removed {
            return Err(FsError::NotEmpty);
        }
        self.changed();
        if let Ok((_, root)) = self.write_root() {
            let _ = std::fs::remove_dir(root.join(&d.path));
            let _ = std::fs::remove_dir(cairn_node::NodeRoot::new(&root).kept().join(&d.path));
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let dir_id = self.dir_id(parent)?;
        let name_s = name_str(name)?;
        let a = self.lookup(parent, name)?;
        match a.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File if a.ino & 3 == 1 => {
                return Err(FsError::NotPermitted(format!(
                    "{name_s} is archived and cannot be removed through the mount \
                     (set user.cairn.clean=NODE to release a copy)"
                )));
            }
            Kind::File => {}
        }
        let l = self.local(a.ino).ok_or(FsError::NotFound)?;
        let mut g = l.lock().expect("local");
        debug_assert_eq!(g.dir_id, dir_id);
        match std::fs::remove_file(&g.backing) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_local(&mut g);
        Ok(())
    }

    pub fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) -> Result<()> {
        let new_dir_id = self.dir_id(newparent)?;
        let newname = name_str(newname)?.to_owned();
        let a = self.lookup(parent, name)?;
        let Some(l) = (a.kind == Kind::File).then(|| self.local(a.ino)).flatten() else {
            return Err(FsError::NotPermitted(format!(
                "{} is archived and cannot be renamed",
                name.to_string_lossy()
            )));
        };
        // The target: a local file is replaced; an archived one cannot be.
        if let Ok(t) = self.lookup(newparent, OsStr::new(&newname)) {
            if t.ino == a.ino {
                return Ok(());
            }
            match self.local(t.ino) {
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
        let mut g = l.lock().expect("local");
        if g.importing {
            return Err(FsError::Io(io::Error::from_raw_os_error(libc::EBUSY)));
        }
        {
            let mut ls = self.locals.lock().expect("locals");
            ls.by_name.remove(&(g.dir_id, g.name.clone()));
            ls.by_name.insert((new_dir_id, newname.clone()), g.ino);
        }
        g.dir_id = new_dir_id;
        g.dir_path = new_dir.path.clone();
        g.name = newname.clone();
        self.changed();
        if g.writers > 0 {
            // Still being written: it lands (or is imported) under its new name when closed.
            return Ok(());
        }
        if newname.starts_with('.') || g.kind == LocalKind::Kept && !self.importable(&g) {
            let (_, root) = self.write_root()?;
            Self::keep(&root, &mut g)?;
            return Ok(());
        }
        self.import_local(&l, &mut g)
    }

    fn importable(&self, g: &Local) -> bool {
        normalize_path(&join(&g.dir_path, &g.name))
            .is_ok_and(|p| matches!(self.importer.check(&p), Verdict::Import { .. }))
    }

    // ---- extended attributes ----

    pub fn listxattr(&self, ino: u64) -> Result<Vec<String>> {
        if ino == ROOT_INO || ino & 3 == 0 {
            let d = self.dir_by_id(self.dir_id(ino)?)?;
            let is_acq = self.with_cat(|c| Ok(c.read(|tx| tx.acq_by_name(&d.path))?))?;
            return Ok(is_acq
                .map(|_| vec!["user.cairn.complete".to_owned()])
                .unwrap_or_default());
        }
        if self.local(ino).is_some() {
            return Ok(vec!["user.cairn.size".into(), "user.cairn.state".into()]);
        }
        self.getattr(ino)?;
        Ok(FILE_XATTRS.iter().map(|s| s.to_string()).collect())
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let name = name.to_string_lossy();
        let Some(key) = name.strip_prefix("user.cairn.") else {
            // The mount keeps no security labels, ACLs or other namespaces' attributes. Saying
            // so, rather than "no such attribute", lets `ls -l` stop asking for them on every
            // file (it remembers a file system that does not support them).
            return Err(if name.starts_with("user.") {
                FsError::NoAttr
            } else {
                FsError::Unsupported(name.into_owned())
            });
        };
        if ino == ROOT_INO || ino & 3 == 0 {
            let d = self.dir_by_id(self.dir_id(ino)?)?;
            if key != "complete" {
                return Err(FsError::NoAttr);
            }
            return self.completeness(&d).map(String::into_bytes);
        }
        if let Some(l) = self.local(ino) {
            // A file just closed is being imported: give it a moment. (`close` returns before
            // the kernel tells the mount, so a writer may still count briefly.)
            let deadline = Instant::now() + Duration::from_secs(2);
            let settle = Instant::now() + Duration::from_millis(200);
            loop {
                let g = l.lock().expect("local");
                let busy = g.importing || (g.writers > 0 && Instant::now() < settle);
                if g.gone || !busy || Instant::now() > deadline {
                    break;
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(5));
            }
            let g = l.lock().expect("local");
            if !g.gone {
                return match key {
                    "size" => Ok(Self::local_attr(&g)?.size.to_string().into_bytes()),
                    "state" => Ok(if g.kind == LocalKind::Staged && g.writers > 0 {
                        b"staged".to_vec()
                    } else {
                        b"unimported".to_vec()
                    }),
                    _ => Err(FsError::NoAttr),
                };
            }
        }
        let file_id = match ino & 3 {
            1 => (ino >> 2) as Id,
            _ => *self
                .locals
                .lock()
                .expect("locals")
                .imported
                .get(&ino)
                .ok_or(FsError::NotFound)?,
        };
        let (file, copies, requests) = self.with_cat(|c| {
            Ok(c.read(|tx| {
                let f = tx.file_by_id(file_id)?;
                let copies = tx.copies_of(file_id)?;
                let reqs = tx.open_requests_for_file(file_id)?;
                Ok((f, copies, reqs))
            })?)
        })?;
        let v = match key {
            "md5" => file.md5.clone(),
            "size" => file.size.to_string(),
            "copies" => copies
                .iter()
                .filter(|c| c.has != Has::No)
                .map(|c| format!("{}={}", c.node, c.has.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            "requests" => requests
                .iter()
                .map(|r| format!("{}:{}", r.to_group, r.state.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            "state" => self.state(&file, &copies).to_owned(),
            _ => return Err(FsError::NoAttr),
        };
        Ok(v.into_bytes())
    }

    fn state(&self, file: &File, copies: &[cairn_catalog::model::Copy]) -> &'static str {
        let nodes = self.host_nodes();
        let here = |c: &&cairn_catalog::model::Copy| nodes.iter().any(|n| n.id == c.node_id);
        if copies.iter().filter(here).any(|c| c.has == Has::Yes) {
            return "local";
        }
        if std::fs::metadata(
            cairn_node::cache::CacheDir::new(&self.opts.cache_dir).complete(&file.md5),
        )
        .is_ok_and(|m| m.len() == file.size)
        {
            return "cached";
        }
        if copies.iter().filter(here).any(|c| c.has == Has::Corrupt) {
            return "corrupt";
        }
        if copies.iter().filter(here).any(|c| c.has == Has::Suspect) {
            return "suspect";
        }
        if copies.iter().any(|c| c.has == Has::Yes) {
            return "remote";
        }
        "missing"
    }

    /// `user.cairn.complete` of an acquisition's directory: `open` until it is closed, then
    /// `GROUP=yes|no` for every group holding any of its files.
    fn completeness(&self, d: &Dir) -> Result<String> {
        self.with_cat(|c| {
            Ok(c.read(|tx| {
                let Some(acq) = tx.acq_by_name(&d.path)? else {
                    return Err(CatalogError::not_found("acquisition", d.path.clone()));
                };
                if acq.closed_at.is_none() {
                    return Ok("open".to_owned());
                }
                let total = tx
                    .files(&FileFilter {
                        acq: Some(acq.id),
                        ..Default::default()
                    })?
                    .len() as u64;
                Ok(tx
                    .acq_presence(acq.id)?
                    .into_iter()
                    .map(|(g, n)| format!("{g}={}", if n == total { "yes" } else { "no" }))
                    .collect::<Vec<_>>()
                    .join(" "))
            })?)
        })
        .map_err(|e| match e {
            FsError::Catalog(CatalogError::NotFound { .. }) => FsError::NoAttr,
            e => e,
        })
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8]) -> Result<()> {
        let name = name.to_string_lossy().into_owned();
        let Some(key) = name.strip_prefix("user.cairn.") else {
            return Err(FsError::Unsupported(name));
        };
        let value = std::str::from_utf8(value)
            .map_err(|_| FsError::Invalid(format!("{name}: the value is not UTF-8")))?
            .trim_end_matches(['\n', '\0'])
            .trim();
        let action = match key {
            "sync" if !value.is_empty() && !value.contains(' ') => Action::Sync(value.to_owned()),
            "clean" => match value.split_whitespace().collect::<Vec<_>>()[..] {
                [node] => Action::Clean(node.to_owned(), Wants::ReleaseWhenNeeded),
                [node, "now"] => Action::Clean(node.to_owned(), Wants::ReleaseNow),
                _ => {
                    return Err(FsError::Invalid(format!(
                        "{name}: expected \"NODE\" or \"NODE now\", got {value:?}"
                    )));
                }
            },
            "verify" if !value.is_empty() && !value.contains(' ') => {
                Action::Verify(value.to_owned())
            }
            "sync" | "verify" => {
                return Err(FsError::Invalid(format!(
                    "{name}: expected one {} name, got {value:?}",
                    if key == "sync" { "group" } else { "node" }
                )));
            }
            "md5" | "size" | "state" | "copies" | "requests" | "complete" => {
                return Err(FsError::NotPermitted(format!("{name} is read-only")));
            }
            _ => return Err(FsError::Unsupported(name)),
        };
        if self.local(ino).is_some() {
            return Err(FsError::NotPermitted(
                "this file is not archived yet; it can be synced or cleaned once imported".into(),
            ));
        }
        let scope = if ino == ROOT_INO || ino & 3 == 0 {
            Scope::Dir(self.dir_by_id(self.dir_id(ino)?)?.path)
        } else if ino & 3 == 1 {
            Scope::File((ino >> 2) as Id)
        } else {
            match self.locals.lock().expect("locals").imported.get(&ino) {
                Some(id) => Scope::File(*id),
                None => return Err(FsError::NotFound),
            }
        };
        let local_nodes: Vec<Id> = self.host_nodes().iter().map(|n| n.id).collect();
        let t = cairn_catalog::units::now();
        let n =
            self.with_cat(|c| Ok(c.write(|tx| apply(tx, &scope, &action, &local_nodes, t))?))?;
        info!("Set {name}={value:?}: {n} file(s) affected.");
        cairn_node::socket::nudge(&self.opts.socket);
        Ok(())
    }

    // ---- capacity ----

    pub fn statfs(&self) -> Space {
        let mut s = Space::default();
        let mut seen = std::collections::HashSet::new();
        for n in self.host_nodes() {
            let root = n.root.unwrap_or_default();
            let Ok(st) = cairn_node::root::space(Path::new(&root)) else {
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

enum Scope {
    File(Id),
    Dir(String),
}

enum Action {
    Sync(String),
    Clean(String, Wants),
    Verify(String),
}

/// Applies an xattr request to every file in `scope`, in one transaction. Unknown names and
/// a single file that cannot take the action are errors (EINVAL), and then nothing changes.
fn apply(
    tx: &mut cairn_catalog::catalog::Tx<'_>,
    scope: &Scope,
    action: &Action,
    local_nodes: &[Id],
    now: i64,
) -> cairn_catalog::error::Result<u64> {
    let invalid = |m: String| CatalogError::Invalid(m);
    let files = match scope {
        Scope::File(id) => vec![tx.file_by_id(*id)?],
        Scope::Dir(path) => tx.files(&FileFilter {
            path_prefix: (!path.is_empty()).then(|| path.clone()),
            ..Default::default()
        })?,
    };
    let single = matches!(scope, Scope::File(_));
    let mut n = 0;
    match action {
        Action::Sync(group) => {
            let g = tx
                .group_by_name(group)?
                .ok_or_else(|| invalid(format!("no group named {group:?}")))?;
            let members: Vec<Id> = tx.group_nodes(g.id)?.iter().map(|n| n.id).collect();
            for f in &files {
                let copies = tx.copies_of(f.id)?;
                let healthy: Vec<_> = copies.iter().filter(|c| c.has == Has::Yes).collect();
                if healthy.iter().any(|c| members.contains(&c.node_id)) {
                    continue;
                }
                let src = healthy
                    .iter()
                    .find(|c| local_nodes.contains(&c.node_id))
                    .or_else(|| healthy.first());
                let Some(src) = src else {
                    if single {
                        return Err(invalid(format!(
                            "{} has no healthy copy to sync from",
                            f.path
                        )));
                    }
                    continue;
                };
                tx.create_copy_request(
                    cairn_catalog::catalog::NewCopyRequest {
                        file_id: f.id,
                        from_node: src.node_id,
                        to_group: g.id,
                    },
                    now,
                )?;
                n += 1;
            }
        }
        Action::Clean(node, wants) => {
            let ids = present_copies(tx, &files, node, single)?;
            n = tx.set_wants(&ids, *wants, now)?;
        }
        Action::Verify(node) => {
            let ids = present_copies(tx, &files, node, single)?;
            n = tx.request_verify(&ids, now)?;
        }
    }
    Ok(n)
}

/// How many archived entries' attributes are kept for outages of the catalog (about 100 bytes
/// each).
const KNOWN_LIMIT: usize = 1 << 20;

/// Listings kept before those past their TTL are first dropped.
const LISTINGS_KEPT: usize = 4096;

/// How long after a program looked up a file it had listed the kernel gets whole listings.
const STAT_WALK: Duration = Duration::from_secs(2);

/// Subdirectories of an opened directory whose listings are read ahead.
const READ_AHEAD: usize = 256;

/// How long an operation on the mount waits for an unreachable catalog before it fails with
/// EIO: a program on the mount should get an error, not hang, while a site's link is down.
const CATALOG_PATIENCE: Duration = Duration::from_secs(2);

fn open_catalog(url: &str) -> Result<Catalog> {
    let mut cat = Catalog::open(url)?;
    cat.set_patience(cairn_catalog::db::Patience::new(CATALOG_PATIENCE));
    Ok(cat)
}

/// The copies of `files` on node `node` that are not gone. An unknown node is an error, and so
/// is a `single` file without such a copy.
fn present_copies(
    tx: &mut cairn_catalog::catalog::Tx<'_>,
    files: &[File],
    node: &str,
    single: bool,
) -> cairn_catalog::error::Result<Vec<Id>> {
    let nd = tx
        .node_by_name(node)?
        .ok_or_else(|| CatalogError::Invalid(format!("no node named {node:?}")))?;
    let mut ids = Vec::new();
    for f in files {
        match tx.copy_on(f.id, nd.id)? {
            Some(c) if c.has != Has::No => ids.push(c.id),
            _ if single => {
                return Err(CatalogError::Invalid(format!(
                    "{} has no copy on node {node:?}",
                    f.path
                )));
            }
            _ => {}
        }
    }
    Ok(ids)
}

fn name_str(name: &OsStr) -> Result<&str> {
    let s = std::str::from_utf8(name.as_bytes())
        .map_err(|_| FsError::Invalid(format!("file name {name:?} is not UTF-8")))?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') {
        return Err(FsError::Invalid(format!("invalid file name {s:?}")));
    }
    Ok(s)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
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

/// Whether process `pid` is exiting because a signal killed it: its file descriptors are
/// being closed by the kernel, not by the program.
fn killed_by_signal(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    const PF_EXITING: u64 = 0x4;
    let flags = fields
        .get(9 - 3)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    let exit_code = fields
        .get(52 - 3)
        .and_then(|f| f.parse::<i64>().ok())
        .unwrap_or(0);
    flags & PF_EXITING != 0 && exit_code & 0x7f != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_keep_kinds_apart() {
        assert_eq!(file_ino(7) & 3, 1);
        assert_ne!(file_ino(7), 7 << 2);
        assert_eq!(file_ino(7) >> 2, 7);
    }

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
    fn core(dir: &Path) -> Core {
        let url = format!("sqlite://{}/catalog.db", dir.display());
        Catalog::init(&url).unwrap();
        let opts = Options {
            catalog_url: url,
            host: "h1".into(),
            socket: dir.join("cairnd.sock"),
            cache_dir: dir.join("cache"),
            write_node: None,
            uid: 0,
            gid: 0,
            ttl: Duration::from_secs(60),
            min_archive_copies: 1,
        };
        Core::new(opts, &Default::default()).unwrap()
    }

    #[test]
    fn a_listing_read_before_a_change_is_not_kept_after_it() {
        let d = tempfile::tempdir().unwrap();
        let c = core(d.path());
        let l = Arc::new(DirList::new(Vec::new()));
        let before = c.generation.load(Ordering::Acquire);
        c.changed();
        c.keep_listing(c.root_dir, before, &l);
        assert!(
            c.fresh_listing(c.root_dir).is_none(),
            "stale: read before the change"
        );
        c.keep_listing(c.root_dir, c.generation.load(Ordering::Acquire), &l);
        assert!(c.fresh_listing(c.root_dir).is_some());
    }

    #[test]
    fn looking_up_files_just_listed_answers_from_the_listing_and_marks_a_stat_walk() {
        let d = tempfile::tempdir().unwrap();
        let c = core(d.path());
        assert!(!c.stat_walk());
        // Not in the catalog: only the listing can answer.
        let entry = Entry {
            name: "x.dat".into(),
            attr: Core::stat_attr(4242, 17, 0),
        };
        let l = Arc::new(DirList::new(vec![entry]));
        c.keep_listing(c.root_dir, c.generation.load(Ordering::Acquire), &l);
        let a = c.lookup(ROOT_INO, OsStr::new("x.dat")).unwrap();
        assert_eq!((a.ino, a.size), (file_ino(4242), 17));
        assert!(c.stat_walk());
        assert!(matches!(
            c.lookup(ROOT_INO, OsStr::new("y.dat")),
            Err(FsError::NotFound)
        ));
    }

    #[test]
    fn an_imported_locals_inode_lives_as_long_as_the_kernel_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let c = core(d.path());
        let ino = 7 << 2 | 2;
        c.referenced(ino, 1);
        c.referenced(ino, 2);
        c.locals.lock().unwrap().imported.insert(ino, 42);
        c.forget(ino, 2);
        assert_eq!(c.locals.lock().unwrap().imported.get(&ino), Some(&42));
        c.forget(ino, 1);
        assert!(c.locals.lock().unwrap().imported.is_empty());
        assert!(c.local_refs.lock().unwrap().is_empty());
        // Archived inodes are not counted.
        c.referenced(file_ino(3), 1);
        assert!(c.local_refs.lock().unwrap().is_empty());
    }

    #[test]
    fn many_fresh_listings_are_kept_and_pruning_waits_until_they_have_doubled() {
        let d = tempfile::tempdir().unwrap();
        let c = core(d.path());
        let l = Arc::new(DirList::new(Vec::new()));
        let g = c.generation.load(Ordering::Acquire);
        for id in 0..(LISTINGS_KEPT as Id + 10) {
            c.keep_listing(id + 1000, g, &l);
        }
        assert!(
            c.fresh_listing(1000).is_some(),
            "fresh listings are not dropped"
        );
        assert_eq!(c.listings.lock().unwrap().len(), LISTINGS_KEPT + 10);
        assert_eq!(
            c.listings_prune_at.load(Ordering::Relaxed),
            2 * LISTINGS_KEPT,
            "the next scan waits until twice as many"
        );
    }

    #[test]
    fn a_listing_answers_lookups_of_its_names() {
        let attr = |ino| Attr {
            ino,
            kind: Kind::File,
            size: ino,
            mtime: SystemTime::UNIX_EPOCH,
            perm: 0o444,
        };
        let l = DirList::new(
            ["b", "a", "c"]
                .iter()
                .zip([5, 9, 13])
                .map(|(n, i)| Entry {
                    name: n.to_string(),
                    attr: attr(i),
                })
                .collect(),
        );
        assert_eq!(l.get("a").map(|e| e.attr.ino), Some(9));
        assert_eq!(l.get("c").map(|e| e.attr.size), Some(13));
        assert!(l.get("d").is_none());
    }

    #[test]
    fn a_running_process_is_not_killed() {
        assert!(!killed_by_signal(std::process::id()));
    }

    #[test]
    fn a_missing_process_is_not_killed() {
        assert!(!killed_by_signal(u32::MAX));
    }
}
