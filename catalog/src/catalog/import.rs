//! Registering a file found on a node together with its copy there: what an import does, from
//! the mount (a file closed under its plain name) or from cairnd (an import request, a scan, an
//! auto-import).
//!
//! [`Tx::import_copy`] is the one sequence both run, in the caller's transaction: register the
//! file (or recognise it already registered with the same size and md5), record a `has = yes`
//! copy on the node with its size on disk ([`size_on_disk`]), and fire the auto-actions the new
//! copy sets off. It is idempotent: importing the same file on the same node again changes
//! nothing. A path archived with other contents is refused as an [`ImportOutcome::Conflict`],
//! not as an error, so a batch goes on with its other files (invariant 1: a registered file's
//! bytes never change).

use super::{Fired, NewFile, Tx};
use crate::error::Result;
use crate::model::{File, Has, Id};

/// What [`Tx::import_copy`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportOutcome {
    /// The copy is recorded on the node and its auto-actions fired; the file was registered
    /// now if `new_file` (and its acquisition created if `new_acq`), else it was registered
    /// before with the same size and md5.
    Imported {
        file_id: Id,
        new_file: bool,
        new_acq: bool,
        fired: Vec<Fired>,
    },
    /// The file is registered with the same size and md5 and the node has a healthy copy of it
    /// already: nothing changed.
    AlreadyHere { file_id: Id },
    /// The path is archived with other contents: nothing changed.
    Conflict { existing: File },
}

/// Bytes a file of `size` bytes takes on a node's disk, as recorded in `copy.size_on_node`:
/// whole 4 KiB blocks, as on the usual filesystems (an empty file takes none).
pub fn size_on_disk(size: u64) -> u64 {
    size.div_ceil(4096) * 4096
}

impl Tx<'_> {
    /// Registers `file` with a healthy copy on `node_id` and fires the auto-actions of that
    /// copy; see the module note.
    pub fn import_copy(&mut self, file: &NewFile, node_id: Id, now: i64) -> Result<ImportOutcome> {
        if let Some(existing) = self.file_by_path(&file.path)?
            && (existing.size != file.size || existing.md5 != file.md5)
        {
            return Ok(ImportOutcome::Conflict { existing });
        }
        let new_acq = self.acq_by_name(&file.acq)?.is_none();
        let (registered, new_file) = self.register_file(file, now)?;
        // A scan and an inotify event, or two closes, may race for one file: record it once.
        if self
            .copy_on(registered.id, node_id)?
            .is_some_and(|c| c.has == Has::Yes)
        {
            return Ok(ImportOutcome::AlreadyHere {
                file_id: registered.id,
            });
        }
        self.record_copy(
            registered.id,
            node_id,
            Has::Yes,
            Some(size_on_disk(file.size)),
            now,
        )?;
        let fired = self.fire_auto_actions(registered.id, node_id, now)?;
        Ok(ImportOutcome::Imported {
            file_id: registered.id,
            new_file,
            new_acq,
            fired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_on_disk_is_whole_blocks() {
        assert_eq!(size_on_disk(0), 0);
        assert_eq!(size_on_disk(1), 4096);
        assert_eq!(size_on_disk(4096), 4096);
        assert_eq!(size_on_disk(4097), 8192);
    }
}
