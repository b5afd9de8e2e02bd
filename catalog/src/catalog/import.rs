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
//!
//! [`Tx::import_copies`] does the same for a batch in a fixed number of statements, whatever
//! its size (up to `Tx::files_per_statement` files a statement): the directories and
//! acquisitions it needs, the files already registered and their copies on the node, the new
//! files, the copies, and the auto-actions, each one statement for the whole batch. That is
//! what makes a scan at a site far from the catalog cost a few round trips per batch instead
//! of several per file.

use std::collections::HashMap;

use super::files::{registrable_path, split_path};
use super::{Fired, NewFile, Tx};
use crate::db::Value;
use crate::error::{CatalogError, Result};
use crate::model::{DirId, File, FileId, Has, NodeId};

/// What [`Tx::import_copy`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportOutcome {
    /// The copy is recorded on the node and its auto-actions fired; the file was registered
    /// now if `new_file` (and its acquisition created if `new_acq`), else it was registered
    /// before with the same size and md5.
    Imported {
        file_id: FileId,
        new_file: bool,
        new_acq: bool,
        fired: Vec<Fired>,
    },
    /// The file is registered with the same size and md5 and the node has a healthy copy of it
    /// already: nothing changed.
    AlreadyHere { file_id: FileId },
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
    pub fn import_copy(
        &mut self,
        file: &NewFile,
        node_id: NodeId,
        now: i64,
    ) -> Result<ImportOutcome> {
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

impl Tx<'_> {
    /// [`Tx::import_copy`] for each of `files`, in one pass of batch statements; the outcomes
    /// come in the order of `files`. A path given twice gets the outcome of its first.
    pub fn import_copies(
        &mut self,
        files: &[NewFile],
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<ImportOutcome>> {
        let mut out = Vec::with_capacity(files.len());
        for chunk in files.chunks(self.files_per_statement()) {
            out.extend(self.import_chunk(chunk, node_id, now)?);
        }
        Ok(out)
    }

    fn import_chunk(
        &mut self,
        files: &[NewFile],
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<ImportOutcome>> {
        // The checks register_file makes, for every file, before anything is written.
        let mut paths = Vec::with_capacity(files.len());
        for f in files {
            let path = registrable_path(f)?;
            let (dir, name) = split_path(&path);
            paths.push((dir.to_owned(), name.to_owned(), path.clone()));
        }
        let split: Vec<(&str, &str)> = paths
            .iter()
            .map(|(d, n, _)| (d.as_str(), n.as_str()))
            .collect();
        let mut known = self.files_at(&split, node_id)?;

        // What is new: directories, acquisitions, files.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut new_files: Vec<usize> = Vec::new();
        for (i, (_, _, path)) in paths.iter().enumerate() {
            if first_of.contains_key(path.as_str()) {
                continue;
            }
            first_of.insert(path, i);
            if !known.contains_key(path) {
                new_files.push(i);
            }
        }
        let mut acq_new: HashMap<String, bool> = HashMap::new();
        let mut registered_now: Vec<FileId> = Vec::new();
        if !new_files.is_empty() {
            let dirs: Vec<&str> = new_files.iter().map(|&i| paths[i].0.as_str()).collect();
            let dir_ids = self.ensure_dirs(&dirs, now)?;
            let acqs: Vec<&str> = new_files.iter().map(|&i| files[i].acq.as_str()).collect();
            let acq_ids = self.ensure_acqs(&acqs, now)?;
            let mut args: Vec<Value> = Vec::with_capacity(new_files.len() * 10);
            for &i in &new_files {
                let f = &files[i];
                let (dir, name, _) = &paths[i];
                let dir_id = dir_ids
                    .get(dir)
                    .copied()
                    .ok_or_else(|| CatalogError::Invalid(format!("directory {dir:?} vanished")))?;
                let (acq_id, created) = acq_ids.get(&f.acq).copied().ok_or_else(|| {
                    CatalogError::Invalid(format!("acquisition {:?} vanished", f.acq))
                })?;
                acq_new.entry(f.acq.clone()).or_insert(created);
                args.extend([
                    dir_id.into(),
                    name.as_str().into(),
                    acq_id.into(),
                    f.size.into(),
                    f.md5.as_str().into(),
                    f.mtime.into(),
                    now.into(),
                    f.own.user.as_deref().into(),
                    f.own.group.as_deref().into(),
                    f.own.mode.map(i64::from).into(),
                ]);
            }
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; new_files.len()].join(", ");
            let inserted = self.raw(
                &format!(
                    "INSERT INTO file (dir_id, name, acq_id, size, md5, mtime, registered_at, \
                     owner, grp, mode) VALUES {rows} ON CONFLICT (dir_id, name) DO NOTHING \
                     RETURNING id, dir_id, name"
                ),
                &args,
            )?;
            // What was inserted is known here; a path another import registered meanwhile is
            // read back.
            let mut ids: HashMap<(DirId, String), FileId> = HashMap::with_capacity(inserted.len());
            for r in &inserted {
                ids.insert((r.get(1)?, r.get(2)?), r.get(0)?);
            }
            let mut raced: Vec<(&str, &str)> = Vec::new();
            for &i in &new_files {
                let f = &files[i];
                let (dir, name, path) = &paths[i];
                match ids.get(&(dir_ids[dir], name.clone())) {
                    Some(&id) => {
                        registered_now.push(id);
                        known.insert(
                            path.clone(),
                            (
                                File {
                                    id,
                                    dir_id: dir_ids[dir],
                                    name: name.clone(),
                                    path: path.clone(),
                                    acq: f.acq.clone(),
                                    size: f.size,
                                    md5: f.md5.clone(),
                                    mtime: f.mtime,
                                    registered_at: now,
                                    own: f.own.clone(),
                                },
                                None,
                            ),
                        );
                    }
                    None => raced.push(split[i]),
                }
            }
            if !raced.is_empty() {
                known.extend(self.files_at(&raced, node_id)?);
            }
        }

        // The copies: recorded where the node has none that is healthy.
        let mut outcomes: Vec<Option<ImportOutcome>> = vec![None; files.len()];
        let mut record: Vec<(usize, FileId)> = Vec::new();
        for (i, (_, _, path)) in paths.iter().enumerate() {
            if first_of.get(path.as_str()) != Some(&i) {
                continue;
            }
            let f = &files[i];
            let (existing, has) = known
                .get(path)
                .ok_or_else(|| CatalogError::Invalid(format!("file {path:?} vanished")))?;
            if existing.size != f.size || existing.md5 != f.md5 {
                outcomes[i] = Some(ImportOutcome::Conflict {
                    existing: existing.clone(),
                });
            } else if *has == Some(Has::Yes) {
                outcomes[i] = Some(ImportOutcome::AlreadyHere {
                    file_id: existing.id,
                });
            } else {
                record.push((i, existing.id));
            }
        }
        if !record.is_empty() {
            let copies: Vec<(FileId, NodeId, Option<u64>)> = record
                .iter()
                .map(|&(i, file_id)| (file_id, node_id, Some(size_on_disk(files[i].size))))
                .collect();
            self.record_healthy_copies(&copies, now)?;
            let ids: Vec<FileId> = record.iter().map(|&(_, id)| id).collect();
            let fired = self.fire_auto_actions_for(&ids, node_id, now)?;
            for (&(i, file_id), fired) in record.iter().zip(fired) {
                let new_file = registered_now.contains(&file_id);
                let new_acq = new_file && acq_new.remove(&files[i].acq).unwrap_or(false);
                outcomes[i] = Some(ImportOutcome::Imported {
                    file_id,
                    new_file,
                    new_acq,
                    fired,
                });
            }
        }
        // A path given twice: the outcome of its first.
        for (i, (_, _, path)) in paths.iter().enumerate() {
            if outcomes[i].is_none() {
                let first = first_of[path.as_str()];
                outcomes[i] = outcomes[first].clone();
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every file has an outcome"))
            .collect())
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
