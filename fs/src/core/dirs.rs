//! Directories made through the mount: in the catalog at once when it answers; otherwise made
//! here (noted in the journal, shown at once, empty) and made in the catalog by the import
//! thread when it answers again, when the catalog's directory takes over with the files here
//! in it. A directory the catalog has by then (cairnd registering the files shown in it,
//! another host) is adopted the same way. `rmdir` of either kind.

use std::ffi::OsStr;
use std::sync::Arc;

use cairn_catalog::catalog::normalize_path;
use cairn_catalog::model::{DirId, Ownership};
use cairn_node::NodeRoot;
use cairn_node::journal::Journal;
use tracing::{error, info, warn};

use super::{
    CATALOG_PATIENCE, Caller, Core, DirList, FsError, MKDIR_PATIENCE, Result, catalog_out_of_reach,
    local_dir_row, name_str,
};
use crate::attr::Attr;
use crate::localdirs::{LocalDir, LocalDirs};
use crate::locals::join;

impl Core {
    /// Makes directory `path` here, noted in the journal, because the catalog could not
    /// take it (`why`); the import thread makes it there when the catalog answers.
    pub(super) fn make_local_dir(
        &self,
        parent: DirId,
        name: &str,
        path: &str,
        own: Ownership,
        why: &FsError,
    ) -> Result<LocalDir> {
        let journal = self.journal.as_ref().ok_or(FsError::ReadOnly(
            "this mount is read-only: no [fs] write_node is configured".into(),
        ))?;
        journal
            .dir_made(path, &own)
            .map_err(|e| FsError::Io(std::io::Error::other(e.to_string())))?;
        let d = self
            .localdirs
            .add(parent, name, path, own, cairn_catalog::units::now());
        warn!(
            "The catalog cannot take directory {path} now ({why}): it is made here, and in the \
             catalog when it answers again."
        );
        // Empty: what is looked up in it is not there, without asking anyone.
        self.listings.keep(
            d.id,
            self.listings.generation(),
            &Arc::new(DirList::new(Vec::new())),
        );
        self.imports.dirs_waiting();
        Ok(d)
    }

    pub fn mkdir(&self, who: &Caller, parent: u64, name: &OsStr, mode: u32) -> Result<Attr> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?.to_owned();
        self.write_root()?;
        let parent_attr = self.may_change(who, dir_id)?;
        if self.find(parent, OsStr::new(&name)).is_ok() {
            return Err(FsError::Exists(name));
        }
        let parent_dir = self.dir_by_id(dir_id)?;
        let path = normalize_path(&join(&parent_dir.path, &name))?;
        // A directory's name may start with '.' (only a file's keeps it out of the archive,
        // as in cairnd's import), but not be the node's own area.
        if NodeRoot::is_cairn_area(&path) {
            return Err(FsError::Invalid(format!(
                "{path:?} is the name of cairn's own area on every node"
            )));
        }
        let t = cairn_catalog::units::now();
        let (user, group, _) = self.owner_names(who, Some(&parent_attr));
        let own = Ownership {
            user,
            group,
            mode: Some(mode & 0o7777),
        };
        let down = FsError::Catalog(cairn_catalog::CatalogError::Db(
            cairn_catalog::db::DbError::Disconnected(
                "its writes failed lately and have not worked since".into(),
            ),
        ));
        let made = if self.catalog_seems_down() && self.journal.is_some() {
            // Not worth a wait for a catalog that is not answering.
            Err(down)
        } else if LocalDirs::is_local(dir_id) {
            // Its parent is not in the catalog yet: neither is it.
            Err(FsError::Catalog(cairn_catalog::CatalogError::Db(
                cairn_catalog::db::DbError::Disconnected(format!(
                    "its parent {} is not in the catalog yet",
                    parent_dir.path
                )),
            )))
        } else {
            self.with_cat(|c| {
                // With a journal to fall back on, a catalog out of reach is not waited for.
                let wait = match self.journal {
                    Some(_) => MKDIR_PATIENCE,
                    None => CATALOG_PATIENCE,
                };
                Ok(c.write_or_give_up(wait, |tx| {
                    let (id, _) = tx.make_dir(&path, &own, t)?;
                    tx.dir_by_id(id)
                })?)
            })
        };
        if let Err(e) = &made
            && catalog_out_of_reach(e)
        {
            self.catalog_answered(false);
        }
        let d = match made {
            Ok(d) => d.ok_or(FsError::NotFound)?,
            // `mkdir` does not wait on the link: the directory is made here for now.
            Err(e) if catalog_out_of_reach(&e) && self.journal.is_some() => {
                let d = self.make_local_dir(dir_id, &name, &path, own, &e)?;
                return Ok(self.dir_attr(&local_dir_row(&d)));
            }
            Err(e) => return Err(e),
        };
        self.listings.changed_dir(dir_id);
        // A directory just made is empty: what is looked up in it (`cp -r` filling it) is
        // not there, without asking the catalog.
        self.listings.keep(
            d.id,
            self.listings.generation(),
            &Arc::new(DirList::new(Vec::new())),
        );
        Ok(self.dir_attr(&d))
    }

    pub fn rmdir(&self, who: &Caller, parent: u64, name: &OsStr) -> Result<()> {
        let dir_id = self.dir_id(parent)?;
        let name = name_str(name)?;
        let parent_attr = self.may_change(who, dir_id)?;
        if let Some(d) = self.localdirs.by_name(dir_id, name) {
            // Made here, not in the catalog yet: removed here, and from the journal.
            Self::sticky_allows(who, &parent_attr, &self.dir_attr(&local_dir_row(&d)))?;
            if !self.locals.in_dir(d.id).is_empty() || !self.localdirs.in_dir(d.id).is_empty() {
                return Err(FsError::NotEmpty);
            }
            self.localdirs.remove(d.id);
            if let Some(j) = &self.journal {
                let _ = j.dir_done(&d.path);
            }
            return Ok(());
        }
        let found = self.with_cat(|c| Ok(c.read(|tx| tx.lookup(dir_id, name))?))?;
        let d = match found {
            Some(Err(d)) => d,
            Some(Ok(_)) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        };
        Self::sticky_allows(who, &parent_attr, &self.dir_attr(&d))?;
        if !self.list(self.dir_ino(d.id))?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        let removed = self.with_cat(|c| Ok(c.write(|tx| tx.remove_empty_dir(d.id))?))?;
        if !removed {
            return Err(FsError::NotEmpty);
        }
        self.listings.changed_dir(dir_id);
        self.listings.changed_dir(d.id);
        if let Ok((_, root)) = self.write_root() {
            let _ = std::fs::remove_dir(root.join(&d.path));
            let _ = std::fs::remove_dir(NodeRoot::new(&root).kept().join(&d.path));
        }
        Ok(())
    }

    /// Makes in the catalog, with their owners and modes, the directories made here while it
    /// could not take them, in one transaction; the catalog's ids then take over.
    pub(super) fn make_dirs_in_catalog(&self) -> Result<()> {
        let pending = self.localdirs.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let t = cairn_catalog::units::now();
        let made = self.with_cat(|c| {
            Ok(c.write(|tx| {
                pending
                    .iter()
                    .map(|d| Ok(tx.make_dir(&d.path, &d.own, t)?.0))
                    .collect::<cairn_catalog::error::Result<Vec<DirId>>>()
            })?)
        });
        match &made {
            Ok(_) => self.catalog_answered(true),
            Err(e) if catalog_out_of_reach(e) => self.catalog_answered(false),
            Err(_) => {}
        }
        let ids = made?;
        for (d, real) in pending.iter().zip(ids) {
            self.adopt_dir(d, real);
            info!("Directory {} made here is in the catalog now.", d.path);
        }
        Ok(())
    }

    /// Directory `d`, made here (or shown for files cairnd keeps waiting), is the catalog's
    /// `real` now: the catalog's takes over, with the files here in it.
    pub(super) fn adopt_dir(&self, d: &LocalDir, real: DirId) {
        if let Some(j) = &self.journal {
            let _ = j.dir_done(&d.path);
        }
        self.localdirs.made_in_catalog(d.id, real);
        // Its files (not archived yet) now sit in the catalog's directory.
        for l in self.locals.in_dir(d.id) {
            let mut g = l.lock().expect("local");
            let (dir_path, name) = (g.dir_path.clone(), g.name.clone());
            self.locals.rename(&mut g, real, &dir_path, &name);
        }
        self.listings.changed_dir(d.parent);
        self.listings.changed_dir(d.id);
        self.remembered.forget_dir(d.id);
    }

    /// Shows again the directories an earlier mount made here while the catalog could not take
    /// them, unless the catalog has them by now.
    pub(super) fn recover_dirs(&self, journal: &Journal) {
        let dirs = match journal.made_dirs() {
            Ok(d) => d,
            Err(e) => {
                error!("Cannot read the directories made here from the journal: {e}");
                return;
            }
        };
        for (path, own, made) in dirs {
            let known = self.with_cat(|c| Ok(c.read(|tx| tx.dir_by_path(&path))?));
            if let Ok(Some(_)) = known {
                let _ = journal.dir_done(&path);
                continue;
            }
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            match self.resolve_dir(parent) {
                Ok(parent_id) => {
                    let d = self.localdirs.add(parent_id, name, &path, own, made);
                    info!(
                        "Directory {} made here earlier waits for the catalog.",
                        d.path
                    );
                    self.imports.dirs_waiting();
                }
                Err(e) => error!("Cannot show directory {path} again: {e}"),
            }
        }
    }
}
