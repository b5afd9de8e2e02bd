//! Open file and directory handles.
//!
//! A handle is what the kernel's file handle number stands for here: a complete file read
//! here, a file the kernel reads itself (FUSE passthrough), a file streaming in through
//! cairnd's cache, a local file open for writing, or an open directory with its listing.
//!
//! The kernel does not mix passthrough and ordinary opens of one inode, so the table counts
//! the ordinary read opens per inode: while one is open, a new open of that inode is served
//! here too.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::fetch::Fetch;
use crate::listings::Listing;
use crate::locals::LocalRef;

pub enum Handle {
    /// Reads from a complete local file (a node copy, the cache, or a local-only file).
    Plain(File, u64),
    /// Reads that go to the kernel directly; nothing to do here but count the open.
    Passthrough(u64),
    Stream(Arc<Fetch>, u64),
    Write(LocalRef),
    Dir(Mutex<DirHandle>),
}

/// An open directory: the listing it reads from, once read, and whether its reader stats
/// what it lists (then every later reply of it carries the files' attributes).
pub struct DirHandle {
    listing: Option<Listing>,
    stat_walk: bool,
}

impl Handle {
    /// A directory handle reading `listing`.
    pub fn dir(listing: Listing) -> Handle {
        Handle::Dir(Mutex::new(DirHandle {
            listing: Some(listing),
            stat_walk: false,
        }))
    }

    /// A directory handle whose listing is read at its first readdir, if any comes (the
    /// kernel may serve it all from its own copy).
    pub fn dir_unread() -> Handle {
        Handle::Dir(Mutex::new(DirHandle {
            listing: None,
            stat_walk: false,
        }))
    }
}

/// Where a read handle's bytes come from.
pub enum ReadFrom {
    File(File),
    Stream(Arc<Fetch>),
    /// A local file open for writing, read through its backing file.
    Local(LocalRef),
}

pub struct Handles {
    table: Mutex<HashMap<u64, Handle>>,
    /// Open non-passthrough read handles per inode.
    plain_opens: Mutex<HashMap<u64, usize>>,
    next_fh: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            table: Mutex::new(HashMap::new()),
            plain_opens: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl Handles {
    /// How many handles are open, and inodes with plain reads open.
    pub fn sizes(&self) -> [usize; 2] {
        [
            self.table.lock().expect("handles").len(),
            self.plain_opens.lock().expect("plain opens").len(),
        ]
    }

    /// Adds a handle; returns its number. Ordinary reads of an inode are counted.
    pub fn insert(&self, h: Handle) -> u64 {
        if let Handle::Plain(_, ino) | Handle::Stream(_, ino) = &h {
            *self
                .plain_opens
                .lock()
                .expect("plain opens")
                .entry(*ino)
                .or_default() += 1;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.table.lock().expect("handles").insert(fh, h);
        fh
    }

    /// Takes handle `fh` out of the table (at release).
    pub fn remove(&self, fh: u64) -> Option<Handle> {
        let h = self.table.lock().expect("handles").remove(&fh);
        if let Some(Handle::Plain(_, ino) | Handle::Stream(_, ino)) = &h {
            let mut p = self.plain_opens.lock().expect("plain opens");
            if let Some(n) = p.get_mut(ino) {
                *n -= 1;
                if *n == 0 {
                    p.remove(ino);
                }
            }
        }
        h
    }

    /// Whether inode `ino` has ordinary read opens (so a new open must not pass through).
    pub fn has_plain_opens(&self, ino: u64) -> bool {
        self.plain_opens
            .lock()
            .expect("plain opens")
            .get(&ino)
            .is_some_and(|n| *n > 0)
    }

    /// The adapter could not pass `fh` through to the kernel: its reads are served here.
    pub fn passthrough_refused(&self, fh: u64, f: File) {
        let mut hs = self.table.lock().expect("handles");
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

    /// The local file a write handle writes.
    pub fn writing(&self, fh: u64) -> Option<LocalRef> {
        match self.table.lock().expect("handles").get(&fh) {
            Some(Handle::Write(l)) => Some(l.clone()),
            _ => None,
        }
    }

    /// Where the reads of `fh` come from; `None` for a handle that is not read here.
    pub fn read_from(&self, fh: u64) -> std::io::Result<Option<ReadFrom>> {
        Ok(match self.table.lock().expect("handles").get(&fh) {
            Some(Handle::Plain(f, _)) => Some(ReadFrom::File(f.try_clone()?)),
            Some(Handle::Stream(f, _)) => Some(ReadFrom::Stream(f.clone())),
            Some(Handle::Write(l)) => Some(ReadFrom::Local(l.clone())),
            Some(Handle::Passthrough(_)) | Some(Handle::Dir(_)) | None => None,
        })
    }

    /// The listing an open directory handle holds, if it has read one.
    pub fn dir_listing(&self, fh: u64) -> Option<Listing> {
        match self.table.lock().expect("handles").get(&fh) {
            Some(Handle::Dir(d)) => d.lock().expect("dir handle").listing.clone(),
            _ => None,
        }
    }

    /// Keeps `list` with directory handle `fh`, for its next reads.
    pub fn set_dir_listing(&self, fh: u64, list: &Listing) {
        if let Some(Handle::Dir(d)) = self.table.lock().expect("handles").get(&fh) {
            d.lock().expect("dir handle").listing = Some(list.clone());
        }
    }

    /// Whether directory handle `fh` is read by a program that stats what it lists: once
    /// `now` (a stat walk is on) has been true for it, it stays true for the handle's life, so
    /// a long listing (`ls -l` of 500,000 files) keeps its attributes to the end.
    pub fn dir_stat_walk(&self, fh: u64, now: bool) -> bool {
        match self.table.lock().expect("handles").get(&fh) {
            Some(Handle::Dir(d)) => {
                let mut d = d.lock().expect("dir handle");
                d.stat_walk |= now;
                d.stat_walk
            }
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_reads_are_counted_until_released() {
        let hs = Handles::default();
        let f = tempfile::tempfile().unwrap();
        let a = hs.insert(Handle::Plain(f.try_clone().unwrap(), 9));
        let b = hs.insert(Handle::Passthrough(9));
        assert_ne!(a, b);
        assert!(hs.has_plain_opens(9));
        hs.remove(a);
        assert!(!hs.has_plain_opens(9));
        hs.passthrough_refused(b, f);
        assert!(hs.has_plain_opens(9), "a refused passthrough reads here");
        assert!(matches!(hs.read_from(b), Ok(Some(ReadFrom::File(_)))));
        hs.remove(b);
        assert!(!hs.has_plain_opens(9));
        assert!(hs.remove(b).is_none());
    }

    #[test]
    fn a_directory_handle_read_during_a_stat_walk_keeps_its_attributes_to_the_end() {
        let hs = Handles::default();
        let list: Listing = Arc::new(crate::listings::DirList::new(Vec::new()));
        let d = hs.insert(Handle::dir(list.clone()));
        let other = hs.insert(Handle::dir(list));
        assert!(!hs.dir_stat_walk(d, false), "no stat walk yet");
        assert!(hs.dir_stat_walk(d, true));
        assert!(
            hs.dir_stat_walk(d, false),
            "the walk's flag went off; this handle keeps it"
        );
        assert!(!hs.dir_stat_walk(other, false), "another handle does not");
        hs.remove(d);
        assert!(
            !hs.dir_stat_walk(d, false),
            "a closed handle answers for now only"
        );
    }
}
