//! What `stat` and a listing show of an entry, before the adapter turns it into FUSE's form.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hashlink::LruCache;

use cairn_catalog::model::{DirId, FileId};

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
    pub fn archived(
        id: FileId,
        size: u64,
        mtime: i64,
        mode: Option<u32>,
        uid: u32,
        gid: u32,
    ) -> Attr {
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

/// Bytes an entry of these caches takes, about: the attributes, the key, and the map's own.
const ENTRY_BYTES: usize = std::mem::size_of::<Attr>() + 64;

/// What this mount remembers of attributes beyond the catalog: archived entries seen lately
/// (to answer `stat` while the catalog is out of reach: archived files never change), the
/// times set on directories, which the catalog does not store, and directories with their
/// parents, for the search permission of a path. Each is a least-recently-used cache within
/// its share of `[fs] cache_memory`; what is kept of an inode goes when the kernel forgets it.
pub struct Remembered {
    known: Mutex<LruCache<u64, Attr>>,
    dir_mtime: Mutex<LruCache<u64, SystemTime>>,
    dirs: Mutex<LruCache<DirId, SeenDir>>,
    /// Directories' paths (a directory keeps its path for good: they cannot be renamed).
    paths: Mutex<LruCache<DirId, String>>,
}

/// A directory's parent and attributes, and when they were read.
type SeenDir = (Option<DirId>, Attr, std::time::Instant);

impl Remembered {
    /// Caches within `bytes` in all.
    pub fn new(bytes: usize) -> Remembered {
        let entries = |share: usize| (bytes / share / ENTRY_BYTES).max(64);
        Remembered {
            // Two thirds for archived entries, a third for directories; directory times are
            // few (those set through this mount).
            known: Mutex::new(LruCache::new(entries(3) * 2)),
            dirs: Mutex::new(LruCache::new(entries(3))),
            dir_mtime: Mutex::new(LruCache::new(entries(64))),
            paths: Mutex::new(LruCache::new(entries(6))),
        }
    }

    /// How many entries each cache holds: archived attributes, directories, directory
    /// times, directory paths.
    pub fn sizes(&self) -> [usize; 4] {
        [
            self.known.lock().expect("known").len(),
            self.dirs.lock().expect("dirs").len(),
            self.dir_mtime.lock().expect("dir mtimes").len(),
            self.paths.lock().expect("paths").len(),
        ]
    }

    /// Keeps the attributes of an archived file or directory.
    pub fn seen(&self, a: &Attr) {
        self.known.lock().expect("known").insert(a.ino, a.clone());
    }

    /// What was last seen of `ino`.
    pub fn known(&self, ino: u64) -> Option<Attr> {
        self.known.lock().expect("known").get(&ino).cloned()
    }

    /// The kernel forgot inode `ino`: nothing of it is kept any more (a directory's
    /// attributes and path are read again should it be looked up again).
    pub fn forget(&self, ino: u64) {
        self.known.lock().expect("known").remove(&ino);
        if let crate::ino::Ino::Dir(id) = crate::ino::Ino::from(ino) {
            self.forget_dir(id);
            self.paths.lock().expect("paths").remove(&id);
        }
    }

    /// The mtime set on directory `ino` through this mount, if any.
    pub fn dir_mtime(&self, ino: u64) -> Option<SystemTime> {
        self.dir_mtime.lock().expect("dir mtime").get(&ino).copied()
    }

    pub fn set_dir_mtime(&self, ino: u64, mtime: SystemTime) {
        self.dir_mtime.lock().expect("dir mtime").insert(ino, mtime);
    }

    /// Directory `id`'s parent and attributes, if seen within `ttl`.
    pub fn dir(&self, id: DirId, ttl: Duration) -> Option<(Option<DirId>, Attr)> {
        let mut d = self.dirs.lock().expect("dirs");
        d.get(&id)
            .filter(|(_, _, at)| at.elapsed() < ttl)
            .map(|(p, a, _)| (*p, a.clone()))
    }

    /// Keeps directory `id`'s parent and attributes.
    pub fn seen_dir(&self, id: DirId, parent: Option<DirId>, a: &Attr) {
        self.dirs
            .lock()
            .expect("dirs")
            .insert(id, (parent, a.clone(), std::time::Instant::now()));
    }

    /// Directory `id`'s path, if seen.
    pub fn dir_path(&self, id: DirId) -> Option<String> {
        self.paths.lock().expect("paths").get(&id).cloned()
    }

    pub fn seen_dir_path(&self, id: DirId, path: &str) {
        let mut p = self.paths.lock().expect("paths");
        if p.get(&id).is_none() {
            p.insert(id, path.to_owned());
        }
    }

    /// Forgets what was seen of directory `id` (its mode or owner changed here).
    pub fn forget_dir(&self, id: DirId) {
        self.dirs.lock().expect("dirs").remove(&id);
    }

    #[cfg(test)]
    fn known_len(&self) -> usize {
        self.known.lock().unwrap().len()
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

    impl Attr {
        fn with_ino(mut self, ino: u64) -> Attr {
            self.ino = ino;
            self
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
    fn what_is_remembered_stays_within_its_budget_least_recently_used_first() {
        let r = Remembered::new(64 * ENTRY_BYTES * 3);
        for i in 0..1000 {
            r.seen(&file(0o444, i, 0).with_ino(i as u64));
        }
        assert_eq!(r.known_len(), 128, "two thirds of the budget");
        assert!(r.known(999).is_some() && r.known(0).is_none());
        r.forget(999);
        assert!(r.known(999).is_none(), "forgotten with the kernel's inode");
    }

    /// What is kept of a directory goes when the kernel forgets its inode: a mount holds
    /// what the kernel holds, not every directory it ever walked.
    #[test]
    fn a_directory_is_forgotten_with_the_kernels_inode() {
        let r = Remembered::new(64 * ENTRY_BYTES * 3);
        let (id, other) = (DirId(7), DirId(8));
        let ino = u64::from(crate::ino::Ino::Dir(id));
        for d in [id, other] {
            r.seen_dir(d, Some(DirId(1)), &file(0o755, 0, 0).with_ino(ino));
            r.seen_dir_path(d, &format!("p{}", d.0));
        }
        let ttl = Duration::from_secs(60);
        assert!(r.dir(id, ttl).is_some() && r.dir_path(id).is_some());
        r.forget(ino);
        assert!(r.dir(id, ttl).is_none(), "its attributes");
        assert!(r.dir_path(id).is_none(), "its path");
        assert_eq!(r.dir_path(other).as_deref(), Some("p8"), "not another's");
        assert!(r.dir(other, ttl).is_some());
    }

    #[test]
    fn archived_files_keep_read_and_execute_bits_only() {
        assert_eq!(
            Attr::archived(FileId(1), 0, 0, Some(0o754), 0, 0).perm,
            0o554
        );
        assert_eq!(Attr::archived(FileId(1), 0, 0, None, 0, 0).perm, 0o444);
    }
}
