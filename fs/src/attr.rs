//! What `stat` and a listing show of an entry, before the adapter turns it into FUSE's form.

use std::time::{Duration, SystemTime};

use cairn_catalog::model::Id;

use crate::ino::file_ino;

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

impl Attr {
    /// An archived file's attributes: read-only, its size and mtime from the catalog.
    pub fn archived(id: Id, size: u64, mtime: i64) -> Attr {
        Attr {
            ino: file_ino(id),
            kind: Kind::File,
            size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64),
            perm: 0o444,
        }
    }
}

/// One directory entry with its attributes (for `readdirplus`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: String,
    pub attr: Attr,
}

/// How many archived entries' attributes are kept for outages of the catalog (about 100 bytes
/// each).
const KNOWN_LIMIT: usize = 1 << 20;

/// What this mount remembers of attributes beyond the catalog: archived entries seen lately
/// (to answer `stat` while the catalog is out of reach: archived files never change), and the
/// modes and times set on directories, which the catalog does not store.
#[derive(Default)]
pub struct Remembered {
    known: std::sync::Mutex<std::collections::HashMap<u64, Attr>>,
    dir_meta: std::sync::Mutex<std::collections::HashMap<u64, (u16, SystemTime)>>,
}

impl Remembered {
    /// Keeps the attributes of an archived file or directory (at most [`KNOWN_LIMIT`]).
    pub fn seen(&self, a: &Attr) {
        let mut k = self.known.lock().expect("known");
        if k.len() >= KNOWN_LIMIT {
            k.clear();
        }
        k.insert(a.ino, a.clone());
    }

    /// What was last seen of `ino`.
    pub fn known(&self, ino: u64) -> Option<Attr> {
        self.known.lock().expect("known").get(&ino).cloned()
    }

    /// The mode and mtime set on directory `ino` through this mount, if any.
    pub fn dir_meta(&self, ino: u64) -> Option<(u16, SystemTime)> {
        self.dir_meta.lock().expect("dir meta").get(&ino).copied()
    }

    pub fn set_dir_meta(&self, ino: u64, perm: u16, mtime: SystemTime) {
        self.dir_meta
            .lock()
            .expect("dir meta")
            .insert(ino, (perm, mtime));
    }
}
