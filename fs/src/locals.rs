//! Files that exist only on this host: being written through the mount (staged), or kept on
//! the write node without being imported (a dot name, or a path the `[import]` rules skip).
//!
//! The table knows each by inode and by (directory, name); a directory's locals are one range
//! of the name index, so a listing merges them without a scan. An imported local's inode goes
//! on naming its catalog file for as long as the kernel holds a reference to it: the table
//! counts the kernel's references to local inodes (replies that named one, less its FORGETs)
//! and forgets the mapping when they reach zero, so a long-lived mount does not grow with
//! every file written through it.
//!
//! Lock order: a [`Local`]'s own lock may be held while the table's is taken, never the
//! other way round.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use cairn_catalog::model::{DirId, FileId};

use crate::attr::{Attr, Kind};
use crate::ino::Ino;
use crate::staged::Writer;
use cairn_node::journal::Placed;

/// Where a written file stands on its way into the archive (docs/SEMANTICS.md, "A written
/// file's life"). A kept file stays [`Stage::Writing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Open for writing (staged), or kept: its writer may do anything to it.
    Writing,
    /// Closed, and imported once it stays closed and unchanged until `until`: it may be
    /// reopened, appended to, truncated, chmod-ed and re-timed meanwhile.
    Settling { until: Instant },
    /// Taken by the importer: its bytes no longer change; hashed and moved into place.
    Importing,
    /// In place on the write node under its archive name and in the journal, waiting for
    /// the catalog. Archived, as far as this host is concerned.
    Pending,
}

impl Stage {
    /// Whether its bytes, name and attributes are frozen: it is being archived.
    pub fn frozen(self) -> bool {
        matches!(self, Stage::Importing | Stage::Pending)
    }
}

/// Where a file that exists only on this host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// Written under a plain name: imported when its last writer closes it.
    Staged,
    /// A file on the write node that is not imported: a `.` name, or one the `[import]` rules
    /// skip. Renaming it to a plain name imports it.
    Kept,
    /// A file cairnd found on one of this host's nodes (auto-import, scan) and keeps waiting
    /// for the catalog (a cut link): shown read-only, `pending`, until it is registered.
    Found,
}

#[derive(Debug)]
pub struct Local {
    pub ino: u64,
    pub dir_id: DirId,
    pub dir_path: String,
    pub name: String,
    pub kind: LocalKind,
    pub backing: PathBuf,
    pub writer: Option<Writer>,
    pub writers: usize,
    /// Who holds it open for writing: no other user may open it for writing meanwhile.
    pub writer_uid: Option<u32>,
    /// Size and md5 of the backing file as last written through the mount, when known.
    pub hashed: Option<(u64, String)>,
    /// Why its bytes are not to be imported: a writer died by a signal, or a write to the
    /// backing file failed (a full disk). It is discarded at the last close.
    pub spoiled: Option<String>,
    /// Unlinked or imported: the entry only lives on for open handles.
    pub gone: bool,
    pub stage: Stage,
    /// Its key in the journal (where it was staged, relative to the write node's root), once
    /// its writer closed it.
    pub journalled: Option<String>,
    /// Its bytes were fsynced by its writer and not written since.
    pub synced: bool,
    /// Size, md5, mtime and acquisition, once placed.
    pub placed: Option<Placed>,
    /// This local's own reference, to tell it apart from others in a batch.
    me: Weak<Mutex<Local>>,
}

pub type LocalRef = Arc<Mutex<Local>>;

impl Local {
    pub fn me(&self) -> LocalRef {
        self.me.upgrade().expect("a local lives while it is locked")
    }

    /// Its attributes, from the backing file (owned by its writer).
    pub fn attr(&self) -> std::io::Result<Attr> {
        self.attr_of(&std::fs::metadata(&self.backing)?)
    }

    /// Its attributes, from `m`, the metadata of its backing file.
    pub fn attr_of(&self, m: &std::fs::Metadata) -> std::io::Result<Attr> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mut perm = (m.permissions().mode() & 0o7777) as u16;
        if self.stage.frozen() {
            // Being archived: no longer writable, as archived files are not.
            perm &= !0o222;
        }
        Ok(Attr {
            ino: self.ino,
            kind: Kind::File,
            size: m.len(),
            mtime: m.modified()?,
            perm,
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// Its path in the archive.
    pub fn path(&self) -> String {
        join(&self.dir_path, &self.name)
    }
}

/// Runs `f` on a local, locking it unless it is the one the caller holds already.
pub fn with_local<T>(l: &LocalRef, held: Option<&mut Local>, f: impl FnOnce(&mut Local) -> T) -> T {
    match held {
        Some(g) if Arc::ptr_eq(l, &g.me()) => f(g),
        _ => f(&mut l.lock().expect("local")),
    }
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, LocalRef>,
    /// By directory and name, in order, so a directory's locals are one range.
    by_name: BTreeMap<(DirId, String), u64>,
    /// Locals that were imported: their old inode now stands for the catalog file.
    imported: HashMap<u64, FileId>,
    /// How many references the kernel holds to each local inode.
    kernel_refs: HashMap<u64, u64>,
    next: u64,
}

/// This mount's local files.
#[derive(Default)]
pub struct Locals {
    table: Mutex<Table>,
}

impl Locals {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("locals")
    }

    /// How many local files there are, imported ones whose inode still stands, and local
    /// inodes the kernel holds.
    pub fn sizes(&self) -> [usize; 3] {
        let t = self.table();
        [t.by_ino.len(), t.imported.len(), t.kernel_refs.len()]
    }

    pub fn get(&self, ino: u64) -> Option<LocalRef> {
        self.table().by_ino.get(&ino).cloned()
    }

    pub fn by_name(&self, dir_id: DirId, name: &str) -> Option<LocalRef> {
        let t = self.table();
        let ino = t.by_name.get(&(dir_id, name.to_owned()))?;
        t.by_ino.get(ino).cloned()
    }

    /// The local at (`dir_id`, `name`), made if there is none.
    pub fn add(
        &self,
        dir_id: DirId,
        dir_path: &str,
        name: &str,
        kind: LocalKind,
        backing: PathBuf,
    ) -> LocalRef {
        let mut t = self.table();
        if let Some(ino) = t.by_name.get(&(dir_id, name.to_owned()))
            && let Some(l) = t.by_ino.get(ino)
        {
            return l.clone();
        }
        t.next += 1;
        let ino = u64::from(Ino::local(t.next));
        let l = Arc::new_cyclic(|me| {
            Mutex::new(Local {
                ino,
                dir_id,
                dir_path: dir_path.to_owned(),
                name: name.to_owned(),
                kind,
                backing,
                writer: None,
                writers: 0,
                writer_uid: None,
                hashed: None,
                spoiled: None,
                gone: false,
                stage: Stage::Writing,
                journalled: None,
                synced: false,
                placed: None,
                me: me.clone(),
            })
        });
        t.by_ino.insert(ino, l.clone());
        t.by_name.insert((dir_id, name.to_owned()), ino);
        l
    }

    /// Takes a local out of the namespace (unlinked, replaced or imported); it lives on only
    /// while handles hold it.
    pub fn remove(&self, l: &mut Local) {
        let mut t = self.table();
        if t.by_name.get(&(l.dir_id, l.name.clone())) == Some(&l.ino) {
            t.by_name.remove(&(l.dir_id, l.name.clone()));
        }
        l.gone = true;
        if l.writers == 0 {
            t.by_ino.remove(&l.ino);
        }
    }

    /// Gives a local a new directory and name.
    pub fn rename(&self, l: &mut Local, dir_id: DirId, dir_path: &str, name: &str) {
        {
            let mut t = self.table();
            t.by_name.remove(&(l.dir_id, l.name.clone()));
            t.by_name.insert((dir_id, name.to_owned()), l.ino);
        }
        l.dir_id = dir_id;
        l.dir_path = dir_path.to_owned();
        l.name = name.to_owned();
    }

    /// Every local of `kind`.
    pub fn of_kind(&self, kind: LocalKind) -> Vec<LocalRef> {
        // The table's lock is let go before a local's is taken (the order elsewhere is the
        // local's, then the table's).
        let all: Vec<LocalRef> = self.table().by_ino.values().cloned().collect();
        all.into_iter()
            .filter(|l| l.lock().expect("local").kind == kind)
            .collect()
    }

    /// The locals of directory `dir_id`.
    pub fn in_dir(&self, dir_id: DirId) -> Vec<LocalRef> {
        let t = self.table();
        t.by_name
            .range((dir_id, String::new())..)
            .take_while(|((d, _), _)| *d == dir_id)
            .filter_map(|(_, ino)| t.by_ino.get(ino).cloned())
            .collect()
    }

    /// The catalog file an imported local's inode now stands for.
    pub fn imported(&self, ino: u64) -> Option<FileId> {
        self.table().imported.get(&ino).copied()
    }

    /// Local `ino` was imported as catalog file `id`: its inode goes on naming that file
    /// while the kernel knows it. Says whether the kernel knows it.
    pub fn mark_imported(&self, ino: u64, id: FileId) -> bool {
        let mut t = self.table();
        if t.kernel_refs.contains_key(&ino) {
            t.imported.insert(ino, id);
            true
        } else {
            false
        }
    }

    /// The kernel now holds `n` more references to inode `ino` (a reply named it).
    pub fn referenced(&self, ino: u64, n: u64) {
        if Ino::from(ino).is_local() {
            *self.table().kernel_refs.entry(ino).or_default() += n;
        }
    }

    /// The kernel dropped `n` references to inode `ino` (FORGET). A local inode it no longer
    /// knows at all is forgotten here too, once imported: nothing can name it any more.
    pub fn forget(&self, ino: u64, n: u64) {
        if !Ino::from(ino).is_local() {
            return;
        }
        let mut t = self.table();
        let Some(count) = t.kernel_refs.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            t.kernel_refs.remove(&ino);
            t.imported.remove(&ino);
        }
    }
}

/// `dir/name`, or `name` at the top.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ino::file_ino;

    #[test]
    fn an_imported_locals_inode_lives_as_long_as_the_kernel_holds_it() {
        let ls = Locals::default();
        let ino = u64::from(Ino::local(7));
        ls.referenced(ino, 1);
        ls.referenced(ino, 2);
        ls.mark_imported(ino, FileId(42));
        ls.forget(ino, 2);
        assert_eq!(ls.imported(ino), Some(FileId(42)));
        ls.forget(ino, 1);
        assert_eq!(ls.imported(ino), None);
        assert!(ls.table().kernel_refs.is_empty());
        // Archived inodes are not counted.
        ls.referenced(file_ino(FileId(3)), 1);
        assert!(ls.table().kernel_refs.is_empty());
    }

    #[test]
    fn an_inode_the_kernel_never_held_is_not_remembered_after_import() {
        let ls = Locals::default();
        let ino = u64::from(Ino::local(3));
        ls.mark_imported(ino, FileId(42));
        assert_eq!(ls.imported(ino), None);
    }

    #[test]
    fn a_directorys_locals_are_found_by_name_and_listed_together() {
        let ls = Locals::default();
        let a = ls.add(DirId(5), "d", "a", LocalKind::Staged, "/x/a".into());
        ls.add(DirId(5), "d", "b", LocalKind::Kept, "/x/b".into());
        ls.add(DirId(6), "e", "a", LocalKind::Staged, "/x/c".into());
        assert!(Arc::ptr_eq(&ls.by_name(DirId(5), "a").unwrap(), &a));
        assert!(
            Arc::ptr_eq(
                &ls.add(DirId(5), "d", "a", LocalKind::Staged, "/y".into()),
                &a
            ),
            "one local per name"
        );
        let names: Vec<String> = ls
            .in_dir(DirId(5))
            .iter()
            .map(|l| l.lock().unwrap().name.clone())
            .collect();
        assert_eq!(names, ["a", "b"]);
        ls.rename(&mut a.lock().unwrap(), DirId(6), "e", "z");
        assert!(ls.by_name(DirId(5), "a").is_none());
        assert_eq!(ls.in_dir(DirId(6)).len(), 2);
        ls.remove(&mut a.lock().unwrap());
        assert!(a.lock().unwrap().gone);
        assert!(ls.get(a.lock().unwrap().ino).is_none());
    }
}
