//! Files that cairnd found on this host's nodes (auto-import, scans) and keeps waiting for the
//! catalog (`cairn_node::waiting`: a cut link to the primary): shown on this host's mount
//! meanwhile, read-only and `pending` with their md5, in directories made here for them when
//! the catalog does not have those yet; dropped once the catalog has them, or once they no
//! longer wait.
//!
//! Whether anything waits is looked up at most once a second (a small SQLite read per node);
//! a directory's waiting files at most once a second per directory, and only while something
//! waits.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_catalog::model::DirId;
use cairn_node::journal::Placed;
use cairn_node::waiting::{Waiting, WaitingList};
use tracing::debug;

use super::Core;
use crate::locals::{LocalKind, Stage};

/// How long what is known of the waiting files holds.
const FRESH: Duration = Duration::from_secs(1);

/// What this mount last saw of cairnd's waiting files.
#[derive(Default)]
pub(crate) struct FoundCheck {
    /// When the nodes were last looked at, and whether anything waited.
    any: Mutex<Option<(Instant, bool)>>,
    /// When each directory's waiting files were last shown.
    dirs: Mutex<HashMap<DirId, Instant>>,
    /// Whether any such file is shown now (so that nothing is looked through otherwise).
    shown: AtomicBool,
}

impl FoundCheck {
    /// How many directories' waiting files were looked at recently.
    pub(crate) fn size(&self) -> usize {
        self.dirs.lock().expect("found").len()
    }
}

impl Core {
    /// Whether any of this host's nodes has files waiting for the catalog (what was seen at
    /// most a second ago).
    fn anything_found(&self) -> bool {
        if let Some((at, any)) = *self.found.any.lock().expect("found")
            && at.elapsed() < FRESH
        {
            return any;
        }
        let any = self.host_nodes().iter().any(|n| {
            n.root.as_deref().is_some_and(|r| {
                WaitingList::peek(std::path::Path::new(r))
                    .is_ok_and(|s| s.is_some_and(|s| s.files > 0))
            })
        });
        *self.found.any.lock().expect("found") = Some((Instant::now(), any));
        if !any {
            self.found.dirs.lock().expect("found").clear();
        }
        any
    }

    /// Shows in directory `dir_id` the files cairnd keeps waiting for the catalog, and the
    /// directories they are in; drops those the catalog has now or that no longer wait.
    pub(super) fn refresh_found(&self, dir_id: DirId) {
        if !self.anything_found() {
            // Nothing waits any more: every file shown so is the catalog's now, or gone.
            if self.found.shown.swap(false, Ordering::Relaxed) {
                for l in self.locals.of_kind(LocalKind::Found) {
                    self.forget_local(&mut l.lock().expect("local"));
                }
            }
            return;
        }
        {
            let mut dirs = self.found.dirs.lock().expect("found");
            if dirs.get(&dir_id).is_some_and(|t| t.elapsed() < FRESH) {
                return;
            }
            dirs.insert(dir_id, Instant::now());
        }
        let Ok(dir) = self.dir_by_id(dir_id) else {
            return;
        };
        let skip = if dir.path.is_empty() {
            0
        } else {
            dir.path.len() + 1
        };
        let mut files: HashMap<String, (PathBuf, Waiting)> = HashMap::new();
        let mut subdirs = BTreeSet::new();
        for node in self.host_nodes() {
            let Some(root) = node.root.as_deref().map(PathBuf::from) else {
                continue;
            };
            let rows = match WaitingList::under(&root, &dir.path) {
                Ok(r) => r,
                Err(e) => {
                    debug!("{e}");
                    continue;
                }
            };
            for w in rows {
                let rest = w.file.path[skip..].to_owned();
                match rest.split_once('/') {
                    Some((sub, _)) => {
                        subdirs.insert(sub.to_owned());
                    }
                    None => {
                        files.insert(rest, (root.join(&w.file.path), w));
                    }
                }
            }
        }
        let archived = self.catalog_listing(dir_id).ok();
        let in_catalog = |name: &str| archived.as_ref().is_some_and(|l| l.get(name).is_some());
        let mut made = false;
        for sub in subdirs {
            if in_catalog(&sub) || self.localdirs.by_name(dir_id, &sub).is_some() {
                continue;
            }
            let path = if dir.path.is_empty() {
                sub.clone()
            } else {
                format!("{}/{sub}", dir.path)
            };
            self.localdirs.add(
                dir_id,
                &sub,
                &path,
                Default::default(),
                cairn_catalog::units::now(),
            );
            made = true;
        }
        if made {
            // Made in the catalog by the import thread once it answers (cairnd makes it too
            // when it registers the files).
            self.imports.dirs_waiting();
        }
        for l in self.locals.in_dir(dir_id) {
            let mut g = l.lock().expect("local");
            if g.kind == LocalKind::Found && (!files.contains_key(&g.name) || in_catalog(&g.name)) {
                self.forget_local(&mut g);
            }
        }
        for (name, (backing, w)) in files {
            if in_catalog(&name) || self.locals.by_name(dir_id, &name).is_some() {
                continue;
            }
            self.found.shown.store(true, Ordering::Relaxed);
            let l = self
                .locals
                .add(dir_id, &dir.path, &name, LocalKind::Found, backing);
            let mut g = l.lock().expect("local");
            g.stage = Stage::Pending;
            g.hashed = Some((w.file.size, w.file.md5.clone()));
            g.placed = Some(Placed {
                size: w.file.size,
                md5: w.file.md5,
                mtime: w.file.mtime,
                acq: w.file.acq,
            });
        }
    }
}
