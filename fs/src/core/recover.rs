//! What an earlier mount of this write node left: closed files in the journal not yet
//! registered are shown again and imported, directories made here are shown again, and staged
//! files no journal row names (their writers never closed them) are removed.

use std::path::Path;
use std::time::Instant;

use cairn_node::journal::Owner;
use tracing::{error, info};

use super::Core;
use super::import::publish;
use super::write::staging_dir;
use crate::locals::{LocalKind, Stage};

impl Core {
    /// Takes over what earlier mounts of this write node left in the journal (closed files
    /// not yet registered: they are shown again and imported), and removes staged files that
    /// no journal row names: their writers never closed them.
    pub(super) fn recover(&self) {
        let (Some(journal), Ok((_, root))) = (&self.journal, self.write_root()) else {
            return;
        };
        let entries = match journal.entries() {
            Ok(e) => e,
            Err(e) => {
                error!("Cannot read the journal of closed files: {e}");
                return;
            }
        };
        self.recover_dirs(journal);
        let mut named = std::collections::HashSet::new();
        for e in entries {
            named.insert(e.staged.clone());
            if e.owner != self.owner && Owner::alive(&e.owner) {
                continue;
            }
            let staged = root.join(&e.staged);
            let dest = root.join(&e.path);
            let (backing, stage) = if staged.exists() {
                (
                    staged,
                    Stage::Settling {
                        until: Instant::now(),
                    },
                )
            } else if e.placed.is_some() && dest.exists() {
                (dest, Stage::Pending)
            } else {
                error!(
                    "{} was closed on this host but its bytes are gone (neither {} nor {} \
                     exists); it cannot be imported.",
                    e.path,
                    staged.display(),
                    dest.display()
                );
                let _ = journal.dropped(&e.staged);
                continue;
            };
            if let Err(err) = journal.closed(&e.staged, &e.path, &self.owner, false) {
                error!("{err}");
                continue;
            }
            let (dir_path, name) = match e.path.rsplit_once('/') {
                Some((d, n)) => (d.to_owned(), n.to_owned()),
                None => (String::new(), e.path.clone()),
            };
            let dir = self.resolve_dir(&dir_path);
            let dir_id = match dir {
                Ok(d) => d,
                Err(err) => {
                    error!(
                        "Cannot show {} again: {err}; it stays in the journal.",
                        e.path
                    );
                    continue;
                }
            };
            let l = self
                .locals
                .add(dir_id, &dir_path, &name, LocalKind::Staged, backing);
            let mut g = l.lock().expect("local");
            g.stage = stage;
            g.journalled = Some(e.staged.clone());
            g.placed = e.placed.clone();
            g.hashed = e.placed.as_ref().map(|p| (p.size, p.md5.clone()));
            drop(g);
            info!(
                "Found {} in the journal (closed by an earlier mount, not yet registered): it \
                 is imported now.",
                e.path
            );
            self.imports.recovered(l, stage == Stage::Pending);
        }
        self.tidy_staging(&root, &named);
        publish(journal);
    }

    /// Removes staged files that no journal row names and whose mount is gone: their writers
    /// never closed them, so nothing of theirs was promised.
    fn tidy_staging(&self, root: &Path, named: &std::collections::HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(staging_dir(root)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = format!(".cairn/staging/{name}");
            if named.contains(&key) {
                continue;
            }
            let parts: Vec<&str> = name.split('-').collect();
            let alive = match parts[..] {
                [pid, start, _] => {
                    let owner = format!("{pid}:{start}");
                    owner != self.owner && Owner::alive(&owner)
                }
                // Named by an older mount: PID-N.
                [pid, _] => pid.parse::<u32>().is_ok_and(|p| {
                    p != std::process::id() && Path::new(&format!("/proc/{p}")).exists()
                }),
                _ => true,
            };
            if !alive && std::fs::remove_file(e.path()).is_ok() {
                info!(
                    "Removed {}: its writer never closed it (its mount stopped while it was \
                     being written); it was never imported.",
                    e.path().display()
                );
            }
        }
    }
}
