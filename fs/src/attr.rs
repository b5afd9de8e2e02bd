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
    /// This host's ids of its owner and group.
    pub uid: u32,
    pub gid: u32,
}

impl Attr {
    /// An archived file's attributes: its size and mtime from the catalog, its recorded read
    /// and execute bits (`0444` if none was recorded), never writable.
    pub fn archived(id: Id, size: u64, mtime: i64, mode: Option<u32>, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: file_ino(id),
            kind: Kind::File,
            size,
            mtime: epoch(mtime),
            perm: mode.map_or(0o444, |m| (m & 0o555) as u16),
            uid,
            gid,
        }
    }

    /// The permission bits `mask` (4 read, 2 write, 1 search or execute) that `who` may use on
    /// this entry, by POSIX's rules: the owner's bits for its owner, the group's for a member
    /// of its group, the others' for anyone else; root may read and write anything, and
    /// search or execute what anyone may.
    pub fn allows(&self, who: &crate::ids::Caller, mask: u32) -> bool {
        let any_x = self.kind == Kind::Dir || self.perm & 0o111 != 0;
        if who.is_root() {
            return mask & 1 == 0 || any_x;
        }
        let perm = u32::from(self.perm);
        let bits = if who.uid == self.uid {
            perm >> 6
        } else if who.in_group(self.gid) {
            perm >> 3
        } else {
            perm
        } & 7;
        bits & mask == mask
    }
}

/// Seconds since the epoch as a time.
pub fn epoch(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Permission masks for [`Attr::allows`].
pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const SEARCH: u32 = 1;

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
/// (to answer `stat` while the catalog is out of reach: archived files never change), the
/// times set on directories, which the catalog does not store, and directories with their
/// parents, for the search permission of a path.
#[derive(Default)]
pub struct Remembered {
    known: std::sync::Mutex<std::collections::HashMap<u64, Attr>>,
    dir_mtime: std::sync::Mutex<std::collections::HashMap<u64, SystemTime>>,
    dirs: std::sync::Mutex<std::collections::HashMap<Id, SeenDir>>,
}

/// A directory's parent and attributes, and when they were read.
type SeenDir = (Option<Id>, Attr, std::time::Instant);

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

    /// The mtime set on directory `ino` through this mount, if any.
    pub fn dir_mtime(&self, ino: u64) -> Option<SystemTime> {
        self.dir_mtime.lock().expect("dir mtime").get(&ino).copied()
    }

    pub fn set_dir_mtime(&self, ino: u64, mtime: SystemTime) {
        self.dir_mtime.lock().expect("dir mtime").insert(ino, mtime);
    }

    /// Directory `id`'s parent and attributes, if seen within `ttl`.
    pub fn dir(&self, id: Id, ttl: Duration) -> Option<(Option<Id>, Attr)> {
        let d = self.dirs.lock().expect("dirs");
        d.get(&id)
            .filter(|(_, _, at)| at.elapsed() < ttl)
            .map(|(p, a, _)| (*p, a.clone()))
    }

    /// Keeps directory `id`'s parent and attributes (at most [`KNOWN_LIMIT`]).
    pub fn seen_dir(&self, id: Id, parent: Option<Id>, a: &Attr) {
        let mut d = self.dirs.lock().expect("dirs");
        if d.len() >= KNOWN_LIMIT {
            d.clear();
        }
        d.insert(id, (parent, a.clone(), std::time::Instant::now()));
    }

    /// Forgets what was seen of directory `id` (its mode or owner changed here).
    pub fn forget_dir(&self, id: Id) {
        self.dirs.lock().expect("dirs").remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Caller;

    fn file(perm: u16, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: 9,
            kind: Kind::File,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            perm,
            uid,
            gid,
        }
    }

    fn user(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: u32::MAX,
        }
    }

    #[test]
    fn the_owner_the_group_and_others_get_their_own_bits() {
        let f = file(0o640, 1000, 100);
        assert!(f.allows(&user(1000, 5), READ | WRITE));
        assert!(f.allows(&user(2000, 100), READ));
        assert!(!f.allows(&user(2000, 100), WRITE));
        assert!(!f.allows(&user(3000, 300), READ));
        // The owner's bits count for the owner even when the group's would allow more.
        assert!(!file(0o070, 1000, 100).allows(&user(1000, 100), READ));
    }

    #[test]
    fn root_reads_and_writes_anything_and_executes_what_anyone_may() {
        assert!(file(0o000, 1000, 100).allows(&Caller::ROOT, READ | WRITE));
        assert!(!file(0o644, 1000, 100).allows(&Caller::ROOT, SEARCH));
        assert!(file(0o744, 1000, 100).allows(&Caller::ROOT, SEARCH));
    }

    #[test]
    fn archived_files_keep_read_and_execute_bits_only() {
        assert_eq!(Attr::archived(1, 0, 0, Some(0o754), 0, 0).perm, 0o554);
        assert_eq!(Attr::archived(1, 0, 0, None, 0, 0).perm, 0o444);
    }
}
