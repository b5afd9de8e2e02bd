//! Directories made on this host while the catalog's primary could not take them (a cut link to
//! a distant primary, a locked catalog): `mkdir` does not wait on the link. Such a directory is
//! shown here at once, noted in the journal of the write node (so a restart shows it again),
//! and made in the catalog when the primary answers again, with its owner and mode.
//!
//! Until then it has an id of this mount's own, above [`LOCAL_DIR_BASE`], which no catalog id
//! reaches; files written into it are local files like any other, whose paths go through it.
//! Once the catalog has it, the catalog's id takes over: the local id goes on naming it (for
//! the kernel, which may hold its inode) and resolves to the catalog's.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_catalog::model::{DirId, Ownership};

/// Ids of local directories start here: far above any catalog id, and below `2^62` so that
/// an inode number (`id << 2`) still holds them.
pub const LOCAL_DIR_BASE: DirId = DirId(1 << 58);

/// A directory made here and not yet in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDir {
    pub id: DirId,
    /// Its parent: a catalog directory, or another local one.
    pub parent: DirId,
    pub name: String,
    pub path: String,
    pub own: Ownership,
    /// When it was made (seconds since the epoch).
    pub made: i64,
}

#[derive(Default)]
struct Table {
    dirs: HashMap<DirId, LocalDir>,
    by_name: HashMap<(DirId, String), DirId>,
    by_path: HashMap<String, DirId>,
    /// Local directories the catalog now has, and its id for each.
    real: HashMap<DirId, DirId>,
    next: i64,
}

#[derive(Default)]
pub struct LocalDirs {
    table: Mutex<Table>,
}

impl LocalDirs {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("local dirs")
    }

    /// How many local directories there are, and made ones remembered with the catalog's id.
    pub fn sizes(&self) -> [usize; 2] {
        let t = self.table();
        [t.dirs.len(), t.real.len()]
    }

    /// Whether `id` is a local directory's (not the catalog's).
    pub fn is_local(id: DirId) -> bool {
        id >= LOCAL_DIR_BASE
    }

    /// Adds a directory made here; the one at that path if there is one already.
    pub fn add(
        &self,
        parent: DirId,
        name: &str,
        path: &str,
        own: Ownership,
        made: i64,
    ) -> LocalDir {
        let mut t = self.table();
        if let Some(id) = t.by_path.get(path)
            && let Some(d) = t.dirs.get(id)
        {
            return d.clone();
        }
        let id = DirId(LOCAL_DIR_BASE.0 + t.next);
        t.next += 1;
        let d = LocalDir {
            id,
            parent,
            name: name.to_owned(),
            path: path.to_owned(),
            own,
            made,
        };
        t.by_name.insert((parent, name.to_owned()), id);
        t.by_path.insert(path.to_owned(), id);
        t.dirs.insert(id, d.clone());
        d
    }

    /// The local directory `id`, while the catalog does not have it.
    pub fn get(&self, id: DirId) -> Option<LocalDir> {
        self.table().dirs.get(&id).cloned()
    }

    /// The local directory `name` in directory `parent`.
    pub fn by_name(&self, parent: DirId, name: &str) -> Option<LocalDir> {
        let t = self.table();
        let id = t.by_name.get(&(parent, name.to_owned()))?;
        t.dirs.get(id).cloned()
    }

    /// The local directory at `path`.
    pub fn by_path(&self, path: &str) -> Option<LocalDir> {
        let t = self.table();
        let id = t.by_path.get(path)?;
        t.dirs.get(id).cloned()
    }

    /// The local directories in directory `parent`.
    pub fn in_dir(&self, parent: DirId) -> Vec<LocalDir> {
        let t = self.table();
        if t.dirs.is_empty() {
            return Vec::new();
        }
        t.dirs
            .values()
            .filter(|d| d.parent == parent)
            .cloned()
            .collect()
    }

    /// Those the catalog does not have yet, parents first.
    pub fn pending(&self) -> Vec<LocalDir> {
        let mut v: Vec<LocalDir> = self.table().dirs.values().cloned().collect();
        v.sort_by_key(|d| (d.path.matches('/').count(), d.path.clone()));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.table().dirs.is_empty()
    }

    /// The catalog has local directory `id` now, as `real`.
    pub fn made_in_catalog(&self, id: DirId, real: DirId) {
        let mut t = self.table();
        if let Some(d) = t.dirs.remove(&id) {
            t.by_name.remove(&(d.parent, d.name.clone()));
            t.by_path.remove(&d.path);
        }
        // Its children now hang below the catalog's directory.
        for d in t.dirs.values_mut() {
            if d.parent == id {
                d.parent = real;
            }
        }
        let moved: Vec<((DirId, String), DirId)> = t
            .by_name
            .iter()
            .filter(|((p, _), _)| *p == id)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((_, name), child) in moved {
            t.by_name.remove(&(id, name.clone()));
            t.by_name.insert((real, name), child);
        }
        t.real.insert(id, real);
    }

    /// The catalog's id for a local directory it has now.
    pub fn real(&self, id: DirId) -> Option<DirId> {
        self.table().real.get(&id).copied()
    }

    /// Removes an empty local directory (rmdir).
    pub fn remove(&self, id: DirId) {
        let mut t = self.table();
        if let Some(d) = t.dirs.remove(&id) {
            t.by_name.remove(&(d.parent, d.name));
            t.by_path.remove(&d.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_is_found_until_the_catalog_has_it_then_names_the_catalogs() {
        let ds = LocalDirs::default();
        let a = ds.add(DirId(1), "a", "a", Ownership::default(), 0);
        let b = ds.add(a.id, "b", "a/b", Ownership::default(), 0);
        assert!(LocalDirs::is_local(a.id) && LocalDirs::is_local(b.id));
        assert_eq!(
            ds.add(DirId(1), "a", "a", Ownership::default(), 0).id,
            a.id,
            "one per path"
        );
        assert_eq!(ds.by_name(a.id, "b").map(|d| d.id), Some(b.id));
        assert_eq!(ds.in_dir(DirId(1)).len(), 1);
        assert_eq!(
            ds.pending()
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>(),
            ["a", "a/b"],
            "parents first"
        );
        ds.made_in_catalog(a.id, DirId(77));
        assert_eq!(ds.real(a.id), Some(DirId(77)));
        assert!(ds.get(a.id).is_none() && ds.by_name(DirId(1), "a").is_none());
        assert_eq!(
            ds.get(b.id).unwrap().parent,
            DirId(77),
            "its child hangs below the catalog's"
        );
        assert_eq!(ds.by_name(DirId(77), "b").map(|d| d.id), Some(b.id));
        ds.remove(b.id);
        assert!(ds.is_empty());
    }
}
