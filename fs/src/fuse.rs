//! The thin fuser adapter: each method calls [`Core`] and replies, or goes through
//! [`fail`], which logs and maps the error to one errno.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, RequestId, TimeOrNow, WriteFlags,
};
use tracing::{debug, error, info, warn};

use crate::core::{Attr, Caller, Core, DirList, Entry, FsError, Kind, ROOT_INO, SetAttr};
use crate::interrupts::Interrupts;
use crate::listings::PROBE_FILES;

thread_local! {
    /// Each FUSE thread's buffer for the bytes of a read (see [`CairnFs::read`]).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The errno for each error. Exhaustive on purpose: a new variant needs a decision here.
pub fn errno(e: &FsError) -> i32 {
    match e {
        FsError::NotFound => libc::ENOENT,
        FsError::Access => libc::EACCES,
        FsError::Exists(_) => libc::EEXIST,
        FsError::ReadOnly(_) => libc::EROFS,
        FsError::NotPermitted(_) => libc::EPERM,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::NotDir => libc::ENOTDIR,
        FsError::IsDir => libc::EISDIR,
        FsError::Invalid(_) => libc::EINVAL,
        FsError::NoAttr => libc::ENODATA,
        FsError::Unsupported(_) => libc::ENOTSUP,
        // Bytes that cannot be had, or that failed their md5: never silently wrong data.
        FsError::Unavailable(_) => libc::EIO,
        FsError::BadHandle => libc::EBADF,
        FsError::Interrupted => libc::EINTR,
        FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        FsError::Catalog(c) => match c {
            cairn_catalog::CatalogError::NotFound { .. } => libc::ENOENT,
            cairn_catalog::CatalogError::AlreadyExists { .. } => libc::EEXIST,
            cairn_catalog::CatalogError::Invalid(_) => libc::EINVAL,
            // An unknown group or node, or a file with no copy to act on.
            cairn_catalog::CatalogError::Refused(_) => libc::EINVAL,
            // The catalog failing is an I/O error to the program.
            _ => libc::EIO,
        },
    }
}

/// Logs an error at the level it deserves and returns its errno.
fn fail(op: &str, e: FsError) -> Errno {
    let n = errno(&e);
    match &e {
        FsError::NotFound | FsError::Exists(_) | FsError::NoAttr | FsError::NotEmpty => {
            debug!("{op}: {e}")
        }
        FsError::NotDir
        | FsError::IsDir
        | FsError::Unsupported(_)
        | FsError::BadHandle
        | FsError::Interrupted => {
            debug!("{op}: {e}")
        }
        // A user's permissions say no: nothing the mount should shout about.
        FsError::Access => debug!("{op}: {e}"),
        FsError::ReadOnly(_) | FsError::NotPermitted(_) | FsError::Invalid(_) => {
            warn!("{op} refused: {e}")
        }
        FsError::Unavailable(_) | FsError::Io(_) | FsError::Catalog(_) => error!("{op}: {e}"),
    }
    Errno::from_i32(n)
}

/// Who sent a request.
fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

/// A listing as the kernel reads it, from `offset` on: `.` and `..` (offsets 1 and 2), then
/// the entries. Each carries the offset to resume after it.
fn stream<'a>(
    ino: INodeNo,
    list: &'a DirList,
    offset: u64,
) -> impl Iterator<Item = (u64, Cow<'a, Entry>)> {
    let dots = [(1, ino.0, "."), (2, ROOT_INO, "..")]
        .into_iter()
        .filter(move |&(off, _, _)| off > offset)
        .map(|(off, ino, name)| {
            let attr = Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                perm: 0o755,
                uid: 0,
                gid: 0,
            };
            (
                off,
                Cow::Owned(Entry {
                    name: name.into(),
                    attr,
                }),
            )
        });
    let start = (offset as usize).saturating_sub(2).min(list.entries.len());
    let entries = list.entries[start..]
        .iter()
        .enumerate()
        .map(move |(k, e)| ((start + k) as u64 + 3, Cow::Borrowed(e)));
    dots.chain(entries)
}

pub struct CairnFs {
    core: Arc<Core>,
    passthrough: AtomicBool,
    /// Whether the kernel lets files opened past the page cache be mapped
    /// (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6): only then are files so opened ([`Self::uncached`]).
    direct_io_mmap: AtomicBool,
    /// Backing files the kernel reads directly, kept until their handle is released.
    backing: Mutex<HashMap<u64, BackingId>>,
    /// Whether to take requests over io_uring where the kernel offers it (`[fs] io_uring`).
    io_uring: bool,
    /// Requests whose callers got a signal.
    interrupts: Interrupts,
}

impl CairnFs {
    /// How a file opened for writing, or one whose bytes are still being fetched, is opened:
    /// past the kernel's page cache of the mount. Writes come straight from the writer's
    /// memory to cairnfs, which sends them on to the disk (see `staged.rs`); each read of a
    /// file being fetched is its caller's own request, which waits for just its own bytes and
    /// ends when the caller is interrupted (`crate::interrupts`), where the page cache's
    /// read-ahead would make readers, and the next open, wait for bytes no one asked for yet.
    /// Not on kernels that would then refuse to `mmap` it (there, a file being fetched is
    /// read through the page cache).
    fn uncached(&self) -> FopenFlags {
        if self.direct_io_mmap.load(Ordering::Relaxed) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    pub fn new(core: Arc<Core>, io_uring: bool) -> CairnFs {
        CairnFs {
            core,
            passthrough: AtomicBool::new(false),
            direct_io_mmap: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
            io_uring,
            interrupts: Interrupts::default(),
        }
    }

    fn ttl(&self, a: &Attr) -> Duration {
        self.core.ttl(a)
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind: match a.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            },
            perm: a.perm,
            nlink: if a.kind == Kind::Dir { 2 } else { 1 },
            uid: a.uid,
            gid: a.gid,
            rdev: 0,
            flags: 0,
            // Programs size their buffers by this: 1 MiB reads and writes of files, but for a
            // directory the usual 4 KiB, since glibc's readdir buffer follows it and the
            // kernel sets up a buffer that large for every readdir request.
            blksize: match a.kind {
                Kind::Dir => 4096,
                Kind::File => 1 << 20,
            },
        }
    }
}

fn time(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Every listing as readdirplus; which entries carry attributes is decided per listing
        // (`readdirplus`), not by the kernel's guess (FUSE_READDIRPLUS_AUTO), which asks for
        // attributes in the first reply of a listing only when a program reads it whole first.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok()
        {
            self.direct_io_mmap.store(true, Ordering::Relaxed);
        }
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            let _ = config.set_max_stack_depth(2);
            self.passthrough.store(true, Ordering::Relaxed);
        } else {
            warn!("This kernel offers no FUSE passthrough: local files are read through cairnfs.");
        }
        // Requests over io_uring, served on the CPU of the program that makes them, where the
        // kernel offers it (Linux 6.14 and later, with the fuse module's `enable_uring` set).
        if self.io_uring {
            match config.add_capabilities(InitFlags::FUSE_OVER_IO_URING) {
                Ok(()) => info!("The kernel offers FUSE over io_uring: asked for it."),
                Err(_) => debug!(
                    "This kernel does not offer FUSE over io_uring (the fuse module's \
                     enable_uring): requests come through /dev/fuse."
                ),
            }
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.shutdown();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(&caller(req), parent.0, name) {
            Ok(a) => {
                // Counted before the reply: the kernel may forget it as soon as it has it.
                self.core.referenced(a.ino, 1);
                reply.entry(&self.ttl(&a), &self.attr(&a), Generation(0))
            }
            Err(e) => reply.error(fail("lookup", e)),
        }
    }

    fn interrupt(&self, _req: &Request, unique: RequestId) -> bool {
        self.interrupts.interrupt(unique.0);
        true
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(fail("getattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let now = |t: &Option<TimeOrNow>| matches!(t, Some(TimeOrNow::Now));
        let ch = SetAttr {
            mode,
            uid,
            gid,
            size,
            times_now: now(&atime) || now(&mtime),
            atime: time(atime),
            mtime: time(mtime),
        };
        match self.core.setattr(&caller(req), ino.0, &ch) {
            Ok(a) => reply.attr(&self.ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(fail("setattr", e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.core.mkdir(&caller(req), parent.0, name, mode & !umask) {
            Ok(a) => reply.entry(&self.ttl(&a), &self.attr(&a), Generation(0)),
            Err(e) => reply.error(fail("mkdir", e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.core.unlink(&caller(req), parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.core.rmdir(&caller(req), parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .core
            .rename(&caller(req), parent.0, name, newparent.0, newname)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let watch = self.interrupts.watch(req.unique().0, req.pid());
        let stop = || watch.should_stop();
        let opened = match self.core.open(&caller(req), ino.0, flags.0, &stop) {
            Ok(o) => o,
            Err(e) => return reply.error(fail("open", e)),
        };
        let Some(file) = opened.passthrough else {
            let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
            let how = if writing || opened.streaming {
                self.uncached()
            } else {
                FopenFlags::empty()
            };
            return reply.opened(FileHandle(opened.fh), how);
        };
        if self.passthrough.load(Ordering::Relaxed) {
            match reply.open_backing(&file) {
                Ok(id) => {
                    reply.opened_passthrough(FileHandle(opened.fh), FopenFlags::empty(), &id);
                    self.backing.lock().expect("backing").insert(opened.fh, id);
                    return;
                }
                Err(e) => {
                    warn!("FUSE passthrough refused ({e}); reading through cairnfs instead.");
                    self.passthrough.store(false, Ordering::Relaxed);
                }
            }
        }
        self.core.passthrough_refused(opened.fh, file);
        reply.opened(FileHandle(opened.fh), FopenFlags::empty());
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let watch = self.interrupts.watch(req.unique().0, req.pid());
        // Into this thread's buffer, kept from read to read: a new one for each request was
        // memory to map, zero and unmap again, 128 KiB at a time: half the mount's CPU
        // time when reading a file being fetched (BENCHMARKS.md).
        READ_BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            match self.core.read(fh.0, offset, buf, &|| watch.should_stop()) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(fail("read", e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fail("write", e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Answered here, or by the watchdog should the writer not tell in time whether it
        // is dying (see `cairn_fs::dying`).
        let answer = |reply: ReplyEmpty, r: crate::core::Result<()>| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("flush", e)),
        };
        let slot = Arc::new(Mutex::new(Some(reply)));
        let stalled = {
            let (core, slot) = (self.core.clone(), slot.clone());
            move || {
                let r = core.flush_alive(fh.0);
                if let Some(reply) = slot.lock().expect("flush reply").take() {
                    answer(reply, r);
                }
            }
        };
        // Answered by the watchdog (`Ok(false)`): it may still be finishing the flush, and
        // the caller's close must not return before that.
        let r = self.core.flush(fh.0, req.pid(), stalled);
        if !matches!(r, Ok(false))
            && let Some(reply) = slot.lock().expect("flush reply").take()
        {
            answer(reply, r.map(|_| ()));
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.lock().expect("backing").remove(&fh.0);
        match self.core.release_handle(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("release", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.core.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsync", e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(&caller(req), ino.0) {
            // The kernel caches the listing; it keeps that copy only while it is unchanged.
            Ok((fh, same)) => reply.opened(
                FileHandle(fh),
                if same {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::FOPEN_CACHE_DIR
                },
            ),
            Err(e) => reply.error(fail("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.core.readdir(ino.0, fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(fail("readdir", e)),
        };
        for (off, e) in stream(ino, &list, offset) {
            if reply.add(INodeNo(e.attr.ino), off, file_type(e.attr.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    /// Every listing comes this way (FUSE_DO_READDIRPLUS without the kernel's AUTO mode).
    /// Directories always come with their attributes: a walk descends into them, and the
    /// kernel then needs no lookup for each. Files come with theirs while a program is
    /// stat-ing what it lists (`du`, `ls -l`, Python's `os.walk` + `stat`, [`Core::stat_walk`]):
    /// the kernel then answers each `stat` from what the listing gave it. Otherwise (`find`,
    /// `ls`) a file comes as a name, a type and an inode number only (node id 0, the
    /// vendored fuser's patch): the kernel makes no inode for it, as after a plain readdir.
    /// Such a program's first `stat` of a listed file (a lookup) starts a stat walk; the
    /// lookups of the rest of that first listing are what it costs. Late in the walk's
    /// window a few files of a reply come as names only again, so that a program still
    /// stat-ing looks them up and keeps the walk on ([`Core::stat_walk_probe`]). Once a stat
    /// walk has been on while a directory handle is read, the rest of that handle's replies
    /// carry attributes, however long it takes to read (`ls -l` of 500,000 files).
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.core.readdir(ino.0, fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(fail("readdirplus", e)),
        };
        let stat_walk = self.core.dir_stat_walk(fh.0);
        let mut probes = if stat_walk && self.core.stat_walk_probe() {
            PROBE_FILES
        } else {
            0
        };
        let mut names_only = false;
        for (off, e) in stream(ino, &list, offset) {
            // `.` and `..` are the kernel's own: it takes no reference to them.
            let file = e.attr.kind == Kind::File;
            let mut with_attrs = off > 2 && (!file || stat_walk);
            if with_attrs && file && probes > 0 {
                with_attrs = false;
                probes -= 1;
            }
            let a = self.attr(&e.attr);
            if reply.add(
                INodeNo(if with_attrs { e.attr.ino } else { 0 }),
                off,
                &e.name,
                &self.ttl(&e.attr),
                &a,
                Generation(0),
            ) {
                break;
            }
            // The kernel takes a reference to each entry it is given attributes of.
            if with_attrs {
                self.core.referenced(e.attr.ino, 1);
            } else {
                names_only |= off > 2;
            }
        }
        if names_only {
            self.core.served_names_only(ino.0);
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _ = self.core.release_handle(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        const B: u64 = 4096;
        reply.statfs(
            s.total / B,
            s.free / B,
            s.avail / B,
            0,
            0,
            B as u32,
            255,
            B as u32,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.core.setxattr(&caller(req), ino.0, name, value) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("setxattr", e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.core.getxattr(&caller(req), ino.0, name) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(fail("getxattr", e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(&caller(req), ino.0) {
            Ok(names) => {
                let mut v = Vec::new();
                for n in names {
                    v.extend_from_slice(n.as_bytes());
                    v.push(0);
                }
                xattr_reply(reply, size, &v)
            }
            Err(e) => reply.error(fail("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let e = if name.to_string_lossy().starts_with("user.cairn.") {
            FsError::NotPermitted(format!("{} cannot be removed", name.to_string_lossy()))
        } else {
            FsError::NoAttr
        };
        reply.error(fail("removexattr", e));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // F_OK (0) asks only whether the entry exists.
        let mask = (mask.bits() & 7) as u32;
        let ok = if mask == 0 {
            self.core.getattr(ino.0).map(|_| ())
        } else {
            self.core.access(&caller(req), ino.0, mask)
        };
        match ok {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("access", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .core
            .create(&caller(req), parent.0, name, mode & !umask)
        {
            Ok((a, fh)) => {
                self.core.referenced(a.ino, 1);
                reply.created(
                    &self.ttl(&a),
                    &self.attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    self.uncached(),
                )
            }
            Err(e) => reply.error(fail("create", e)),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(v);
    }
}
