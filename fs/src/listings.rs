//! Directory listings: read from the catalog, kept for `[fs] ttl` and shared by the handles
//! that read them, so that reading a large directory in pieces, or looking up the names just
//! listed, costs no more queries.
//!
//! Invariants:
//! - A listing read before this mount changed the namespace is never kept after the change
//!   (a generation counter, bumped under the cache's lock).
//! - Listings past their TTL are dropped when the cache has doubled since the last prune, so a
//!   fast walk of a large tree, with thousands of listings inside the TTL, stays linear; and
//!   every few seconds by the prefetcher thread ([`Listings::drop_expired`]), so that the
//!   memory of a walk that is over goes back.
//! - The listings kept take at most their share of `[fs] cache_memory`: beyond it the least
//!   recently used go first, however fresh (a walk of millions of files keeps no more).
//! - The kernel keeps its own copy of a listing (FOPEN_KEEP_CACHE) only while the listing's
//!   digest is the one it was last given ([`Listings::served`]), and, while a program stats
//!   what it lists, only if that copy came with the files' attributes. A listing of the
//!   catalog alone carries the directory's listing version, read in the same transaction: while
//!   the catalog still has that version, the kernel's copy holds, which one query tells
//!   ([`Listings::served_version`]) instead of reading the listing again.
//!
//! Two walk heuristics live here too: the read-ahead queue (opening a directory asks for its
//! subdirectories' listings, one level down, so that `find` finds them ready) and the
//! stat-walk detector (a program that looks up files it has just listed, like `du` or
//! `os.walk` + `stat`, gets whole listings with attributes for the next [`STAT_WALK`], kept
//! on by a few files left without attributes late in the window, [`PROBE_FILES`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hashlink::{LinkedHashMap, LruCache};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_catalog::model::DirId;

use crate::attr::{Entry, Kind};

/// Listings kept before those past their TTL are first dropped.
pub const LISTINGS_KEPT: usize = 4096;

/// How long after a program looked up a file it had listed the kernel gets whole listings.
pub const STAT_WALK: Duration = Duration::from_secs(2);

/// Files given as names only in a listing read late in a stat walk, to tell whether the
/// program still stats what it lists (see [`Listings::stat_walk_probe`]).
pub const PROBE_FILES: usize = 8;

/// Subdirectories of an opened directory whose listings are read ahead.
pub const READ_AHEAD: usize = 256;

/// How long after reading ahead below a directory opening it again reads nothing ahead.
pub const READ_AHEAD_AGAIN: Duration = Duration::from_secs(60);

/// Directories whose subdirectories were read ahead lately, remembered (the most recent).
const READ_AHEAD_PARENTS: usize = 4096;

/// A directory's entries, shared by the open handles that read them.
pub type Listing = Arc<DirList>;

/// The entries of a directory (without `.` and `..`): subdirectories first, then files.
#[derive(Debug, Default)]
pub struct DirList {
    pub entries: Vec<Entry>,
    /// The catalog's listing version of the directory these entries were read at, if they
    /// are the catalog's alone (no file or directory of this host's own among them).
    pub version: Option<i64>,
    /// Entry by name, made on the first lookup that uses this listing (a `find` makes none).
    index: OnceLock<HashMap<String, usize>>,
}

impl DirList {
    pub fn new(entries: Vec<Entry>) -> Self {
        DirList {
            entries,
            version: None,
            index: OnceLock::new(),
        }
    }

    /// The catalog's entries of a directory, read at its listing version `version`.
    pub fn versioned(entries: Vec<Entry>, version: i64) -> Self {
        DirList {
            version: Some(version),
            ..DirList::new(entries)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        let index = self.index.get_or_init(|| {
            let mut m = HashMap::with_capacity(self.entries.len());
            for (i, e) in self.entries.iter().enumerate() {
                m.insert(e.name.clone(), i);
            }
            m
        });
        index.get(name).map(|&i| &self.entries[i])
    }

    /// Bytes this listing takes in memory, about (with its name index, once made).
    pub fn bytes(&self) -> usize {
        let names: usize = self.entries.iter().map(|e| e.name.len()).sum();
        let per = std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>() + 48;
        std::mem::size_of::<DirList>() + self.entries.len() * per + 2 * names
    }

    /// A digest of the entries, to tell whether the kernel's copy is still this one.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.entries.hash(&mut h);
        h.finish()
    }
}

/// What the kernel was last given of a directory's listing.
#[derive(Clone, Copy, PartialEq)]
struct Served {
    digest: u64,
    /// The catalog's listing version it was read at (see [`DirList::version`]).
    version: Option<i64>,
    /// Some files came without their attributes (the kernel has no inode for them).
    names_only: bool,
}

/// A listing kept, with when it was read and the bytes it takes.
struct Kept {
    at: Instant,
    list: Listing,
    bytes: usize,
}

/// The listings kept, least recently used first, and the bytes they take.
#[derive(Default)]
struct Cache {
    kept: LinkedHashMap<DirId, Kept>,
    bytes: usize,
}

impl Cache {
    fn remove(&mut self, id: &DirId) {
        if let Some(k) = self.kept.remove(id) {
            self.bytes -= k.bytes;
        }
    }
}

/// The cache of listings, with the walk heuristics.
pub struct Listings {
    ttl: Duration,
    /// Bytes the kept listings may take.
    budget: usize,
    cache: Mutex<Cache>,
    /// Size of `cache` at which those past their TTL are dropped next.
    prune_at: AtomicUsize,
    /// Counts this mount's changes to the namespace: a listing read before a change is not
    /// kept after it.
    generation: AtomicU64,
    /// What the kernel was last given of each directory's listing (the most recent ones).
    served: Mutex<LruCache<DirId, Served>>,
    /// Directory inodes whose listings the prefetcher should read ahead.
    prefetch: Mutex<Option<SyncSender<u64>>>,
    /// When the subdirectories of each directory were last read ahead (the most recent).
    read_ahead_at: Mutex<LruCache<DirId, Instant>>,
    /// When (ms after `started`) a file was last looked up in a listing just read.
    stat_walk_seen: AtomicU64,
    started: Instant,
}

impl Listings {
    /// Listings kept for `ttl`, taking at most `budget` bytes.
    pub fn new(ttl: Duration, budget: usize) -> Listings {
        Listings {
            ttl,
            budget,
            cache: Mutex::new(Cache::default()),
            prune_at: AtomicUsize::new(LISTINGS_KEPT),
            generation: AtomicU64::new(0),
            // A few words and a key each; a small share of the budget.
            served: Mutex::new(LruCache::new((budget / 16 / 64).max(1024))),
            prefetch: Mutex::new(None),
            read_ahead_at: Mutex::new(LruCache::new(READ_AHEAD_PARENTS)),
            stat_walk_seen: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// How many listings are kept and the bytes they take, and how many directories' served
    /// digests and read-ahead times are remembered.
    pub fn sizes(&self) -> [usize; 4] {
        let (kept, bytes) = {
            let c = self.cache.lock().expect("listings");
            (c.kept.len(), c.bytes)
        };
        [
            kept,
            bytes,
            self.served.lock().expect("served").len(),
            self.read_ahead_at.lock().expect("read ahead").len(),
        ]
    }

    /// The listing of `dir_id` if it is younger than the TTL.
    pub fn fresh(&self, dir_id: DirId) -> Option<Listing> {
        let mut c = self.cache.lock().expect("listings");
        let k = c.kept.to_back(&dir_id)?;
        (k.at.elapsed() < self.ttl).then(|| k.list.clone())
    }

    /// The generation to pass to [`Listings::keep`] for a listing about to be read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps a listing for the TTL, unless this mount changed the namespace since it was
    /// read (at `generation`).
    pub fn keep(&self, dir_id: DirId, generation: u64, l: &Listing) {
        let mut c = self.cache.lock().expect("listings");
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if c.kept.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.drop_expired_in(&mut c);
            let next = (c.kept.len() * 2).max(LISTINGS_KEPT);
            self.prune_at.store(next, Ordering::Relaxed);
        }
        c.remove(&dir_id);
        let bytes = l.bytes();
        c.bytes += bytes;
        c.kept.insert(
            dir_id,
            Kept {
                at: Instant::now(),
                list: l.clone(),
                bytes,
            },
        );
        // Within the budget: the least recently used go first (the one just kept last).
        while c.bytes > self.budget && c.kept.len() > 1 {
            let Some((_, k)) = c.kept.pop_front() else {
                break;
            };
            c.bytes -= k.bytes;
        }
    }

    /// Drops the listings past their TTL: the walk that read them is over, and their memory
    /// goes back. Returns how many went.
    pub fn drop_expired(&self) -> usize {
        self.drop_expired_in(&mut self.cache.lock().expect("listings"))
    }

    fn drop_expired_in(&self, c: &mut Cache) -> usize {
        let ttl = self.ttl;
        let stale: Vec<DirId> = c
            .kept
            .iter()
            .filter(|(_, k)| k.at.elapsed() >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            c.remove(id);
        }
        stale.len()
    }

    /// Forgets the listing kept of directory `dir_id` unless it was read at listing version
    /// `version` (the catalog's now): another host changed the directory since.
    pub fn keep_only_version(&self, dir_id: DirId, version: Option<i64>) {
        let mut c = self.cache.lock().expect("listings");
        if c.kept
            .get(&dir_id)
            .is_some_and(|k| k.list.version != version)
        {
            c.remove(&dir_id);
        }
    }

    /// Forgets the listing of directory `dir_id`: this mount changed it in the catalog. A
    /// listing of any directory read meanwhile is not kept (it may predate the change).
    pub fn changed_dir(&self, dir_id: DirId) {
        let mut c = self.cache.lock().expect("listings");
        self.generation.fetch_add(1, Ordering::AcqRel);
        c.remove(&dir_id);
    }

    /// Forgets every listing: this mount changed what many of them show (a directory's mode,
    /// which its parent's listing shows).
    pub fn changed(&self) {
        let mut c = self.cache.lock().expect("listings");
        self.generation.fetch_add(1, Ordering::AcqRel);
        c.kept.clear();
        c.bytes = 0;
    }

    /// Records that the kernel was given `list` for `dir_id`; says whether it is the same as
    /// the one it was given last time (so it may keep its cached copy). While a program stats
    /// what it lists, a copy given without the files' attributes is not kept: the kernel
    /// would ask for each file's attributes one by one.
    pub fn served(&self, dir_id: DirId, list: &DirList) -> bool {
        let digest = list.digest();
        let mut served = self.served.lock().expect("served");
        let before = served.get(&dir_id).copied();
        let same =
            before.is_some_and(|b| b.digest == digest && !(b.names_only && self.stat_walk()));
        served.insert(
            dir_id,
            Served {
                digest,
                version: list.version,
                // A copy the kernel keeps has what it had; a new one has what comes next.
                names_only: same && before.is_some_and(|b| b.names_only),
            },
        );
        same
    }

    /// The catalog's listing version of what the kernel was last given for `dir_id`, if that
    /// was the catalog's listing alone and it may still keep it (see [`Listings::served`]).
    pub fn served_version(&self, dir_id: DirId) -> Option<i64> {
        let s = *self.served.lock().expect("served").peek(&dir_id)?;
        if s.names_only && self.stat_walk() {
            return None;
        }
        s.version
    }

    /// The kernel was given some files of `dir_id`'s listing as names only.
    pub fn served_names_only(&self, dir_id: DirId) {
        if let Some(s) = self.served.lock().expect("served").peek_mut(&dir_id) {
            s.names_only = true;
        }
    }

    /// Whether the kernel was given a listing of `dir_id` (among the last ones it was given).
    pub fn was_served(&self, dir_id: DirId) -> bool {
        self.served.lock().expect("served").peek(&dir_id).is_some()
    }

    /// A file just listed was looked up: a program stats entries after reading their names.
    pub fn looked_up_listed_file(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.stat_walk_seen.store(now, Ordering::Relaxed);
    }

    /// Whether a program has been looking up files it had listed without their attributes,
    /// in the last [`STAT_WALK`]: `du` or `os.walk` and `stat` going through a tree. Listings
    /// are then given to the kernel whole, with every file's attributes.
    pub fn stat_walk(&self) -> bool {
        let seen = self.stat_walk_seen.load(Ordering::Relaxed);
        seen != 0
            && self.started.elapsed().as_millis() as u64 <= seen + STAT_WALK.as_millis() as u64
    }

    /// Whether a listing given now should carry a few files as names only ([`PROBE_FILES`]):
    /// a stat walk is on, and half its window has gone by without a lookup of a listed file.
    /// While every listing comes with attributes the kernel answers each `stat` itself, and
    /// nothing here would tell `du` going on from `find` starting: a program that stats what
    /// it lists looks those few up, which keeps the stat walk on; `find` does not, and the
    /// walk ends at the end of the window. Without it the window would close in the middle
    /// of a `du` and a whole directory's files would be looked up one by one to open it
    /// again.
    pub fn stat_walk_probe(&self) -> bool {
        let seen = self.stat_walk_seen.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let window = STAT_WALK.as_millis() as u64;
        seen != 0 && now <= seen + window && now > seen + window / 2
    }

    /// Sets where read-ahead requests go (the prefetcher thread's queue).
    pub fn set_prefetcher(&self, tx: SyncSender<u64>) {
        *self.prefetch.lock().expect("prefetch") = Some(tx);
    }

    /// Asks the prefetcher to read the listings of the subdirectories of directory `parent`
    /// (at most [`READ_AHEAD`], from its listing `list`) that this mount has not listed yet.
    /// Only one level: what is read ahead triggers nothing further until a program opens it.
    /// And once in [`READ_AHEAD_AGAIN`] for each directory: one listed again and again (`ls`
    /// in a loop) would otherwise read ahead, at each listing, every subdirectory whose
    /// listing read ahead the time before had expired unused, and hold them all until they
    /// expire again. `dir_id` maps an entry's inode to its directory id.
    pub fn read_ahead(&self, parent: DirId, list: &DirList, dir_id: impl Fn(u64) -> Option<DirId>) {
        let q = self.prefetch.lock().expect("prefetch");
        let Some(tx) = &*q else { return };
        {
            let mut at = self.read_ahead_at.lock().expect("read ahead");
            if at
                .get(&parent)
                .is_some_and(|t| t.elapsed() < READ_AHEAD_AGAIN)
            {
                return;
            }
            at.insert(parent, Instant::now());
        }
        let new: Vec<u64> = {
            let listed = &self.cache.lock().expect("listings").kept;
            list.entries
                .iter()
                .filter(|e| e.attr.kind == Kind::Dir)
                .filter(|e| dir_id(e.attr.ino).is_some_and(|id| !listed.contains_key(&id)))
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cache.lock().unwrap().kept.len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.cache.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::Attr;
    use cairn_catalog::model::FileId;
    use std::time::SystemTime;

    #[test]
    fn a_listing_read_before_a_change_is_not_kept_after_it() {
        let c = Listings::new(Duration::from_secs(60), 1 << 30);
        let l = Arc::new(DirList::new(Vec::new()));
        let before = c.generation();
        c.changed();
        c.keep(DirId(1), before, &l);
        assert!(c.fresh(DirId(1)).is_none(), "stale: read before the change");
        c.keep(DirId(1), c.generation(), &l);
        assert!(c.fresh(DirId(1)).is_some());
    }

    #[test]
    fn many_fresh_listings_are_kept_and_pruning_waits_until_they_have_doubled() {
        let c = Listings::new(Duration::from_secs(60), 1 << 30);
        let l = Arc::new(DirList::new(Vec::new()));
        let g = c.generation();
        for id in 0..(LISTINGS_KEPT as i64 + 10) {
            c.keep(DirId(id + 1000), g, &l);
        }
        assert!(
            c.fresh(DirId(1000)).is_some(),
            "fresh listings are not dropped"
        );
        assert_eq!(c.len(), LISTINGS_KEPT + 10);
        assert_eq!(
            c.prune_at.load(Ordering::Relaxed),
            2 * LISTINGS_KEPT,
            "the next scan waits until twice as many"
        );
    }

    #[test]
    fn listings_stay_within_their_budget_least_recently_used_first() {
        let big = |n: usize| {
            Arc::new(DirList::new(
                (0..n)
                    .map(|i| Entry {
                        name: format!("file-{i:06}.dat"),
                        attr: Attr::archived(FileId(i as i64 + 1), 1, 0, None, 0, 0),
                    })
                    .collect(),
            ))
        };
        let one = big(1000);
        let c = Listings::new(Duration::from_secs(60), one.bytes() * 3);
        let g = c.generation();
        c.keep(DirId(1), g, &one);
        c.keep(DirId(2), g, &big(1000));
        c.keep(DirId(3), g, &big(1000));
        assert!(c.fresh(DirId(1)).is_some(), "used: now the most recent");
        c.keep(DirId(4), g, &big(1000));
        assert_eq!(c.len(), 3);
        assert!(c.fresh(DirId(2)).is_none(), "the least recently used went");
        assert!(c.fresh(DirId(1)).is_some() && c.fresh(DirId(4)).is_some());
        assert!(c.bytes() <= one.bytes() * 3);
        c.changed();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn listings_past_their_ttl_are_dropped_when_tidied_and_fresh_ones_stay() {
        let c = Listings::new(Duration::from_millis(200), 1 << 30);
        let g = c.generation();
        c.keep(DirId(1), g, &Arc::new(DirList::new(Vec::new())));
        c.keep(DirId(2), g, &Arc::new(DirList::new(Vec::new())));
        std::thread::sleep(Duration::from_millis(250));
        c.keep(DirId(3), g, &Arc::new(DirList::new(Vec::new())));
        assert_eq!(c.drop_expired(), 2);
        assert_eq!(c.len(), 1);
        assert!(c.fresh(DirId(3)).is_some());
        assert_eq!(c.drop_expired(), 0);
    }

    #[test]
    fn a_directory_listed_again_and_again_reads_ahead_once() {
        let c = Listings::new(Duration::from_millis(1), 1 << 30);
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD * 4);
        c.set_prefetcher(tx);
        let sub = |i: u64| Entry {
            name: format!("d{i}"),
            attr: Attr {
                ino: i << 2,
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                perm: 0o755,
                uid: 0,
                gid: 0,
            },
        };
        let parent = DirList::new((1..=3).map(sub).collect());
        let ids = |ino: u64| Some(DirId((ino >> 2) as i64));
        c.read_ahead(DirId(100), &parent, ids);
        assert_eq!(
            rx.try_iter().count(),
            3,
            "the first listing reads its subdirectories"
        );
        // What was read ahead expired unused; the parent is listed again.
        std::thread::sleep(Duration::from_millis(5));
        c.drop_expired();
        c.read_ahead(DirId(100), &parent, ids);
        assert_eq!(rx.try_iter().count(), 0, "nothing again so soon");
        c.read_ahead(DirId(200), &parent, ids);
        assert_eq!(rx.try_iter().count(), 3, "another directory reads ahead");
    }

    #[test]
    fn a_listing_answers_lookups_of_its_names() {
        let attr = |ino| Attr {
            ino,
            kind: Kind::File,
            size: ino,
            mtime: SystemTime::UNIX_EPOCH,
            perm: 0o444,
            uid: 0,
            gid: 0,
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
    fn the_kernel_keeps_its_copy_only_of_an_unchanged_listing() {
        let c = Listings::new(Duration::from_secs(60), 1 << 30);
        let a = DirList::new(Vec::new());
        assert!(!c.served(DirId(1), &a), "first time");
        assert!(c.served(DirId(1), &a));
        let b = DirList::new(vec![Entry {
            name: "x".into(),
            attr: Attr::archived(FileId(3), 1, 0, None, 0, 0),
        }]);
        assert!(!c.served(DirId(1), &b));
    }
}
