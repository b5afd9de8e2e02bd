//! Opening and reading files: a complete copy on this host is read directly (the kernel reads
//! it itself where FUSE passthrough is offered); otherwise cairnd fetches the file into its
//! cache and reads are answered from the growing file ([`crate::fetch`]).

use std::collections::HashMap;
use std::fs::File as StdFile;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_catalog::model::{Copy, DirId, File, FileId, Has};
use cairn_node::cache::CacheDir;
use cairn_node::copyfile;
use cairn_node::socket::Request;

use super::{Caller, Core, FsError, Ino, Opened, Result};
use crate::fetch::{Fetch, Started, State};
use crate::handles::{Handle, ReadFrom};

/// Fetches running for this mount, one per file however many opens wait for it; and which
/// directories' small files cairnd was asked to fetch ahead.
#[derive(Default)]
pub(super) struct Fetches(Mutex<HashMap<FileId, Arc<Fetch>>>, Mutex<Ahead>);

/// Files at most this large are fetched ahead by cairnd (its `cache::fetch_ahead`).
const AHEAD_MAX_FILE: u64 = 1 << 20;
/// Two fetches in one directory within this time are a program reading its files in turn.
const AHEAD_PAIR: Duration = Duration::from_secs(10);
/// A directory's files are asked for again after this long (new files, evicted ones).
const AHEAD_AGAIN: Duration = Duration::from_secs(60);

/// The mount's side of fetching ahead: the directory of the last small file fetched, and when
/// each directory was asked for.
#[derive(Default)]
pub(super) struct Ahead {
    last: Option<(DirId, Instant)>,
    asked: HashMap<DirId, Instant>,
}

impl Ahead {
    /// Notes a fetch of `file`; true when cairnd should fetch its directory's small files
    /// ahead: the second small file fetched in that directory in a row, not asked lately.
    fn note(&mut self, file: &File) -> bool {
        if file.size > AHEAD_MAX_FILE {
            return false;
        }
        let now = Instant::now();
        let pair = self
            .last
            .replace((file.dir_id, now))
            .is_some_and(|(d, t)| d == file.dir_id && now.duration_since(t) < AHEAD_PAIR);
        if !pair
            || self
                .asked
                .get(&file.dir_id)
                .is_some_and(|t| now.duration_since(*t) < AHEAD_AGAIN)
        {
            return false;
        }
        self.asked
            .retain(|_, t| now.duration_since(*t) < AHEAD_AGAIN);
        self.asked.insert(file.dir_id, now);
        true
    }
}

impl Core {
    /// Opens `ino` for `who`. A file fetched from elsewhere waits for cairnd's first answer
    /// until `stop` says so ([`crate::interrupts`]).
    pub fn open(
        &self,
        who: &Caller,
        ino: u64,
        flags: i32,
        stop: &dyn Fn() -> bool,
    ) -> Result<Opened> {
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if Ino::from(ino).is_dir() {
            return Err(FsError::IsDir);
        }
        if let Some(l) = self.locals.get(ino) {
            return self.open_local(who, l, flags, wants_write);
        }
        let file_id = self.file_id(ino).ok_or(FsError::NotFound)?;
        let (file, copies) = self.with_cat(|c| {
            Ok(c.read(|tx| Ok((tx.file_by_id(file_id)?, tx.copies_of(file_id)?)))?)
        })?;
        if wants_write {
            return Err(FsError::NotPermitted(format!(
                "{} is archived and cannot be changed (set user.cairn.clean to release a copy)",
                file.path
            )));
        }
        if !who.is_root() {
            let a = self.file_attr(file.id, file.size, file.mtime, &file.own);
            if !a.allows(who, crate::attr::READ) {
                return Err(FsError::Access);
            }
            self.search(who, file.dir_id)?;
        }
        if let Some(path) = self.complete_local(&file, &copies) {
            let f = StdFile::open(&path)?;
            if path.starts_with(&self.opts.cache_dir) {
                cairn_node::cache::touch(&f);
            }
            return Ok(self.open_complete(ino, f));
        }
        match self.fetch(&file, stop)? {
            Started::Ready(path) => {
                let f = StdFile::open(&path)?;
                cairn_node::cache::touch(&f);
                Ok(self.open_complete(ino, f))
            }
            Started::Streaming(fetch) => Ok(Opened {
                fh: self.handles.insert(Handle::Stream(fetch, ino)),
                passthrough: None,
                streaming: true,
            }),
        }
    }

    /// A complete copy of `file` on this host: a healthy copy on an active node here, or the
    /// cache's checked copy.
    fn complete_local(&self, file: &File, copies: &[Copy]) -> Option<PathBuf> {
        let nodes = self.host_nodes();
        for c in copies.iter().filter(|c| c.has == Has::Yes) {
            if let Some(n) = nodes.iter().find(|n| n.id == c.node_id) {
                let p = Path::new(n.root.as_deref().unwrap_or_default()).join(&file.path);
                if std::fs::metadata(&p).is_ok_and(|m| m.len() == file.size) {
                    return Some(p);
                }
            }
        }
        let cached = CacheDir::new(&self.opts.cache_dir).complete(&file.md5);
        if std::fs::metadata(&cached).is_ok_and(|m| m.len() == file.size) {
            if let Ok(f) = StdFile::open(&cached) {
                cairn_node::cache::touch(&f);
            }
            return Some(cached);
        }
        None
    }

    /// An open of a complete file: passed through to the kernel, unless the inode has
    /// ordinary read opens already (the kernel does not mix the two).
    fn open_complete(&self, ino: u64, f: StdFile) -> Opened {
        if self.handles.has_plain_opens(ino) {
            return Opened {
                fh: self.handles.insert(Handle::Plain(f, ino)),
                passthrough: None,
                streaming: false,
            };
        }
        Opened {
            fh: self.handles.insert(Handle::Passthrough(ino)),
            passthrough: Some(f),
            streaming: false,
        }
    }

    /// The adapter could not pass `fh` through to the kernel: serve its reads here.
    pub fn passthrough_refused(&self, fh: u64, f: StdFile) {
        self.handles.passthrough_refused(fh, f);
    }

    /// The fetch of `file`: the one an earlier open started, or a new one. cairnd is asked
    /// without the table locked (its answer may be slow to come, and the open of another
    /// file must not wait for it); two opens asking at once get the same part file from
    /// cairnd, and the first one recorded serves both.
    fn fetch(&self, file: &File, stop: &dyn Fn() -> bool) -> Result<Started> {
        let started_before = |fetches: &HashMap<FileId, Arc<Fetch>>| {
            fetches
                .get(&file.id)
                .filter(|f| matches!(f.state(), State::Running | State::Done))
                .cloned()
        };
        if let Some(f) = started_before(&self.fetches.0.lock().expect("fetches")) {
            return Ok(Started::Streaming(f));
        }
        if self.fetches.1.lock().expect("ahead").note(file) {
            // Best effort: without it each file is still fetched when it is opened.
            cairn_node::socket::tell(&self.opts.socket, &Request::Ahead(file.id));
        }
        let started = Fetch::start(&self.opts.socket, file.id, file.size, stop)
            .map_err(|e| e.into_fs(&file.path))?;
        if let Started::Streaming(f) = &started {
            let mut fetches = self.fetches.0.lock().expect("fetches");
            if let Some(first) = started_before(&fetches) {
                return Ok(Started::Streaming(first));
            }
            fetches.retain(|_, f| f.state() == State::Running);
            fetches.insert(file.id, f.clone());
        }
        Ok(started)
    }

    /// Reads into `buf` the bytes at `offset` of `fh` (as many as `buf` holds, fewer at the
    /// end of the file) and returns how many. Bytes still on their way from elsewhere are
    /// waited for until `stop` says so ([`crate::interrupts`]).
    pub fn read(
        &self,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<usize> {
        let f = match self.handles.read_from(fh)?.ok_or(FsError::BadHandle)? {
            ReadFrom::File(f) => f,
            ReadFrom::Local(l) => StdFile::open(&l.lock().expect("local").backing)?,
            ReadFrom::Stream(f) => {
                return f
                    .read_at(offset, buf, stop)
                    .map_err(|e| e.into_fs(&format!("file #{}", f.file_id)));
            }
        };
        Ok(copyfile::read_full_at(&f, buf, offset)?)
    }
}
