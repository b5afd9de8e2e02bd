//! The archive tree: directories, acquisitions, files, copies and per-node totals.
//!
//! Every directory row carries its full path (unique), so a path resolves with one indexed
//! query and a prefix selects a subtree as a range. A file's path is immutable (invariant 1),
//! so the denormalised path never goes stale.

use std::collections::HashMap;

use super::Tx;
use crate::db::Value;
use crate::error::{CatalogError, Result};
use crate::md5::is_md5_hex;
use crate::model::{
    Acq, AcqId, ConflictName, Copy, CopyId, Dir, DirId, File, FileId, FileStat, FromRow, GroupId,
    Has, NodeId, NodeStats, Ownership, Wants,
};
use crate::params;

/// Which files a listing selects; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// Files with a copy on this node that is not `has = no`.
    pub node: Option<NodeId>,
    /// Files present (`has = yes`) somewhere in this group.
    pub group: Option<GroupId>,
    pub acq: Option<AcqId>,
    /// Files at or below this path.
    pub path_prefix: Option<String>,
}

/// What narrows a bulk sync, clean or verify; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct CopySelect {
    /// Only files of this acquisition.
    pub acq: Option<AcqId>,
    /// Only files at or below this path.
    pub path_prefix: Option<String>,
    /// Only copies that arrived on the node at or before this time.
    pub added_before: Option<i64>,
}

/// A file that a bulk sync, clean or verify would act on.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncCandidate {
    pub file_id: FileId,
    /// The copy acted on (clean, verify); for a sync, the source copy.
    pub copy_id: CopyId,
    pub path: String,
    pub size: u64,
}

impl FromRow for SyncCandidate {
    fn from_row(r: &crate::db::Row) -> Result<Self, crate::db::DbError> {
        let dir: String = r.get(2)?;
        let name: String = r.get(3)?;
        Ok(SyncCandidate {
            file_id: r.get(0)?,
            copy_id: r.get(1)?,
            path: crate::model::join_path(&dir, &name),
            size: r.get(4)?,
        })
    }
}

impl FromRow for (File, Copy) {
    fn from_row(r: &crate::db::Row) -> Result<Self, crate::db::DbError> {
        let file = File::from_row(r)?;
        let copy = Copy::from_row(&crate::db::Row(r.0[File::NCOLS..].to_vec()))?;
        Ok((file, copy))
    }
}

impl FromRow for NodeStats {
    fn from_row(r: &crate::db::Row) -> Result<Self, crate::db::DbError> {
        Ok(NodeStats {
            node: r.get(0)?,
            max_total: r.get(1)?,
            files: r.get::<Option<u64>>(2)?.unwrap_or(0),
            bytes: r.get::<Option<u64>>(3)?.unwrap_or(0),
            corrupt: r.get::<Option<u64>>(4)?.unwrap_or(0),
            suspect: r.get::<Option<u64>>(5)?.unwrap_or(0),
            missing: r.get::<Option<u64>>(6)?.unwrap_or(0),
        })
    }
}

/// Checks and normalises an archive path: relative, `/`-separated, no `.`, `..` or empty
/// components. A leading `./` or `/` is dropped.
pub fn normalize_path(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches("./").trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let bad = |why: &str| CatalogError::Invalid(format!("invalid archive path {path:?}: {why}"));
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for part in trimmed.split('/') {
        match part {
            "" => return Err(bad("empty path component")),
            "." | ".." => return Err(bad("'.' and '..' are not allowed")),
            p if p.contains('\0') => return Err(bad("NUL byte")),
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

/// Splits a normalised path into (directory, name).
pub(super) fn split_path(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// `f`'s path, normalized, once `f` passes the checks every registration makes: a file's
/// name (not the archive's root), not a dot name, a well-formed md5.
pub(super) fn registrable_path(f: &NewFile) -> Result<String> {
    let path = normalize_path(&f.path)?;
    let (_, name) = split_path(&path);
    if name.is_empty() {
        return Err(CatalogError::Invalid(
            "cannot register the archive root".into(),
        ));
    }
    if name.starts_with('.') {
        return Err(CatalogError::Invalid(format!(
            "cannot register {path:?}: names starting with '.' are never archived"
        )));
    }
    if !is_md5_hex(&f.md5) {
        return Err(CatalogError::Invalid(format!(
            "invalid md5 {:?} for {path:?}: expected 32 lowercase hex digits",
            f.md5
        )));
    }
    Ok(path)
}

/// SQL restricting `d.path` to a subtree, with its parameters.
fn prefix_clause(prefix: &str, args: &mut Vec<Value>) -> String {
    if prefix.is_empty() {
        return String::new();
    }
    let below = format!("{prefix}/");
    // As a file: its directory and name. A file at the top of the archive is in the root
    // directory, whose path is empty, so its path is not `d.path || '/' || f.name`.
    let (dir, name) = split_path(prefix);
    args.push(prefix.into());
    args.push((below.chars().count() as i64).into());
    args.push(below.into());
    args.push(dir.into());
    args.push(name.into());
    // A prefix names a directory (everything below it) or a single file. Compared with
    // `substr`, not `LIKE`: SQLite's LIKE ignores the case of ASCII letters, PostgreSQL's does
    // not, and paths are case-sensitive.
    " AND (d.path = ? OR substr(d.path, 1, ?) = ? OR (d.path = ? AND f.name = ?))".into()
}

fn file_query(filter: &str) -> String {
    format!("SELECT {} FROM {} {filter}", File::COLUMNS, File::FROM)
}

impl Tx<'_> {
    // ---- directories ----

    pub fn dir_by_path(&mut self, path: &str) -> Result<Option<Dir>> {
        self.row(
            &format!("SELECT {} FROM dir d WHERE d.path = ?", Dir::COLUMNS),
            params![path],
        )
    }

    pub fn dir_by_id(&mut self, id: DirId) -> Result<Option<Dir>> {
        self.row(
            &format!("SELECT {} FROM dir d WHERE d.id = ?", Dir::COLUMNS),
            params![id],
        )
    }

    /// The id of directory `path`, creating it and its parents as needed.
    pub fn ensure_dir(&mut self, path: &str, now: i64) -> Result<DirId> {
        if let Some(d) = self.dir_by_path(path)? {
            return Ok(d.id);
        }
        let (parent, name) = split_path(path);
        let parent_id = self.ensure_dir(parent, now)?;
        self.exec(
            "INSERT INTO dir (parent_id, name, path, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
            params![parent_id, name, path, now],
        )?;
        self.scalar("SELECT id FROM dir WHERE path = ?", params![path])
    }

    /// Makes directory `path` (and its missing parents); a directory it creates gets `own`,
    /// one that exists keeps its own. The directory's id, and whether it was made now.
    ///
    /// Where the parent exists, two statements (the parent, then the directory inserted with
    /// its ownership): `mkdir` at a site far from the primary pays a round trip for each.
    pub fn make_dir(&mut self, path: &str, own: &Ownership, now: i64) -> Result<(DirId, bool)> {
        if path.is_empty() {
            return Ok((self.ensure_dir(path, now)?, false));
        }
        let (parent, name) = split_path(path);
        let parent_id = self.ensure_dir(parent, now)?;
        let made = self.raw(
            "INSERT INTO dir (parent_id, name, path, created_at, owner, grp, mode) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            params![
                parent_id,
                name,
                path,
                now,
                own.user.as_deref(),
                own.group.as_deref(),
                own.mode.map(|m| i64::from(m & 0o7777)),
            ],
        )?;
        match made.first() {
            Some(r) => Ok((r.get(0)?, true)),
            // There already (made meanwhile, or before): it keeps its own.
            None => Ok((
                self.scalar("SELECT id FROM dir WHERE path = ?", params![path])?,
                false,
            )),
        }
    }

    /// Records a directory's owner, group and mode (those given).
    pub fn set_dir_ownership(&mut self, dir_id: DirId, own: &Ownership) -> Result<()> {
        self.set_ownership("dir", dir_id.0, own)
    }

    /// Records an archived file's owner, group and mode (those given). Its bytes never change
    /// (invariant 1); who owns it and who may read it may.
    pub fn set_file_ownership(&mut self, file_id: FileId, own: &Ownership) -> Result<()> {
        self.set_ownership("file", file_id.0, own)
    }

    fn set_ownership(&mut self, table: &str, id: i64, own: &Ownership) -> Result<()> {
        if let Some(u) = &own.user {
            self.exec(
                &format!("UPDATE {table} SET owner = ? WHERE id = ?"),
                params![u.as_str(), id],
            )?;
        }
        if let Some(g) = &own.group {
            self.exec(
                &format!("UPDATE {table} SET grp = ? WHERE id = ?"),
                params![g.as_str(), id],
            )?;
        }
        if let Some(m) = own.mode {
            self.exec(
                &format!("UPDATE {table} SET mode = ? WHERE id = ?"),
                params![i64::from(m & 0o7777), id],
            )?;
        }
        Ok(())
    }

    /// The ids of directories `paths` (normalised), creating them and their parents as
    /// needed: one query for those that exist, and two per level of those that do not.
    pub fn ensure_dirs(&mut self, paths: &[&str], now: i64) -> Result<HashMap<String, DirId>> {
        let mut wanted: Vec<String> = Vec::new();
        for p in paths {
            let mut p = *p;
            loop {
                wanted.push(p.to_owned());
                if p.is_empty() {
                    break;
                }
                p = split_path(p).0;
            }
        }
        wanted.sort();
        wanted.dedup();
        let mut ids = self.dir_ids(&wanted)?;
        let mut missing: Vec<&String> = wanted.iter().filter(|p| !ids.contains_key(*p)).collect();
        // Parents before children: by depth.
        missing.sort_by_key(|p| p.matches('/').count());
        let mut level = 0;
        while !missing.is_empty() {
            let (now_level, rest): (Vec<&String>, Vec<&String>) = missing
                .into_iter()
                .partition(|p| p.matches('/').count() == level);
            missing = rest;
            level += 1;
            if now_level.is_empty() {
                continue;
            }
            let mut args: Vec<Value> = Vec::with_capacity(now_level.len() * 4);
            for p in &now_level {
                let (parent, name) = split_path(p);
                let parent_id = *ids.get(parent).ok_or_else(|| {
                    CatalogError::Invalid(format!("directory {parent:?} vanished"))
                })?;
                args.extend([parent_id.into(), name.into(), p.as_str().into(), now.into()]);
            }
            let rows = vec!["(?, ?, ?, ?)"; now_level.len()].join(", ");
            self.exec(
                &format!(
                    "INSERT INTO dir (parent_id, name, path, created_at) VALUES {rows} \
                     ON CONFLICT DO NOTHING"
                ),
                &args,
            )?;
            let created: Vec<String> = now_level.iter().map(|p| (*p).clone()).collect();
            ids.extend(self.dir_ids(&created)?);
        }
        Ok(ids)
    }

    /// The ids of the directories among `paths` that exist.
    fn dir_ids(&mut self, paths: &[String]) -> Result<HashMap<String, DirId>> {
        let mut ids = HashMap::with_capacity(paths.len());
        for chunk in paths.chunks(IN_CHUNK) {
            let args: Vec<Value> = chunk.iter().map(Value::from).collect();
            for r in self.raw(
                &format!(
                    "SELECT path, id FROM dir WHERE path IN ({})",
                    super::in_list(chunk.len())
                ),
                &args,
            )? {
                ids.insert(r.get(0)?, r.get(1)?);
            }
        }
        Ok(ids)
    }

    /// Subdirectories and files directly in directory `dir_id`, each sorted by name.
    pub fn list_dir(&mut self, dir_id: DirId) -> Result<(Vec<Dir>, Vec<File>)> {
        let files = self.rows(
            &file_query("WHERE f.dir_id = ? ORDER BY f.name"),
            params![dir_id],
        )?;
        Ok((self.subdirs(dir_id)?, files))
    }

    /// The subdirectories and files of directory `dir_id`, by name, with only what a listing
    /// shows of each file (one indexed range each, no joins): the mount's `readdir`.
    pub fn list_dir_stats(&mut self, dir_id: DirId) -> Result<(Vec<Dir>, Vec<FileStat>)> {
        let files = self.rows(
            &format!(
                "SELECT {} FROM file f WHERE f.dir_id = ? ORDER BY f.name",
                FileStat::COLUMNS
            ),
            params![dir_id],
        )?;
        Ok((self.subdirs(dir_id)?, files))
    }

    /// The listing version of directory `dir_id` (`None`: no such directory): it changes
    /// whenever what [`Tx::list_dir_stats`] gives for it changes, so a listing read with its
    /// version still holds while the version is the same.
    pub fn dir_listing_version(&mut self, dir_id: DirId) -> Result<Option<i64>> {
        let rows = self.raw(
            "SELECT listing_version FROM dir WHERE id = ?",
            params![dir_id],
        )?;
        Ok(match rows.first() {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    /// The subdirectories of directory `dir_id`, by name.
    fn subdirs(&mut self, dir_id: DirId) -> Result<Vec<Dir>> {
        self.rows(
            &format!(
                "SELECT {} FROM dir d WHERE d.parent_id = ? ORDER BY d.name",
                Dir::COLUMNS
            ),
            params![dir_id],
        )
    }

    /// The file or directory `name` in directory `dir_id`: the lookup a mount makes.
    pub fn lookup(&mut self, dir_id: DirId, name: &str) -> Result<Option<Result<File, Dir>>> {
        if let Some(f) = self.row::<File>(
            &file_query("WHERE f.dir_id = ? AND f.name = ?"),
            params![dir_id, name],
        )? {
            return Ok(Some(Ok(f)));
        }
        let d = self.row::<Dir>(
            &format!(
                "SELECT {} FROM dir d WHERE d.parent_id = ? AND d.name = ?",
                Dir::COLUMNS
            ),
            params![dir_id, name],
        )?;
        Ok(d.map(Err))
    }

    // ---- acquisitions ----

    pub fn acq_by_name(&mut self, name: &str) -> Result<Option<Acq>> {
        self.row(
            "SELECT id, name, created_at, closed_at FROM acq WHERE name = ?",
            params![name],
        )
    }

    pub fn acq(&mut self, name: &str) -> Result<Acq> {
        self.acq_by_name(name)?
            .ok_or_else(|| CatalogError::not_found("acquisition", name))
    }

    /// Every acquisition with its file count and total size.
    pub fn acqs(&mut self) -> Result<Vec<(Acq, u64, u64)>> {
        let rows = self.raw(
            "SELECT a.id, a.name, a.created_at, a.closed_at, COUNT(f.id), SUM(f.size) FROM acq a \
             LEFT JOIN file f ON f.acq_id = a.id \
             GROUP BY a.id, a.name, a.created_at, a.closed_at ORDER BY a.name",
            params![],
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    Acq::from_row(r)?,
                    r.get::<u64>(4)?,
                    r.get::<Option<u64>>(5)?.unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Closes an acquisition: no more files are expected. False if it was closed already.
    pub fn close_acq(&mut self, name: &str, now: i64) -> Result<bool> {
        let acq = self.acq(name)?;
        Ok(self.exec(
            "UPDATE acq SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
            params![now, acq.id],
        )? > 0)
    }

    /// Closes every open acquisition whose newest file was registered `idle` seconds or more
    /// before `now`. Returns their names.
    pub fn close_idle_acqs(&mut self, idle: i64, now: i64) -> Result<Vec<String>> {
        let rows = self.raw(
            "UPDATE acq SET closed_at = ? WHERE closed_at IS NULL AND id IN \
             (SELECT acq_id FROM file GROUP BY acq_id HAVING MAX(registered_at) <= ?) \
             RETURNING name",
            params![now, now - idle],
        )?;
        rows.iter().map(|r| Ok(r.get(0)?)).collect()
    }

    /// For each group holding any of the acquisition's files: how many of its files have a
    /// healthy copy there. (group name, files), sorted by group.
    pub fn acq_presence(&mut self, acq_id: AcqId) -> Result<Vec<(String, u64)>> {
        let rows = self.raw(
            "SELECT g.name, COUNT(DISTINCT c.file_id) FROM copy c \
             JOIN node n ON n.id = c.node_id JOIN storage_group g ON g.id = n.group_id \
             JOIN file f ON f.id = c.file_id \
             WHERE f.acq_id = ? AND c.has = 'yes' GROUP BY g.name ORDER BY g.name",
            params![acq_id],
        )?;
        rows.iter().map(|r| Ok((r.get(0)?, r.get(1)?))).collect()
    }

    /// The ids of acquisitions `names`, created as needed (the flag says so): at most three
    /// queries however many there are.
    pub fn ensure_acqs(
        &mut self,
        names: &[&str],
        now: i64,
    ) -> Result<HashMap<String, (AcqId, bool)>> {
        let mut names: Vec<&str> = names.to_vec();
        names.sort_unstable();
        names.dedup();
        if let Some(empty) = names.iter().find(|n| n.is_empty()) {
            return Err(CatalogError::Invalid(format!(
                "empty acquisition name {empty:?}"
            )));
        }
        let mut ids: HashMap<String, (AcqId, bool)> = self
            .acq_ids(&names)?
            .into_iter()
            .map(|(n, id)| (n, (id, false)))
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !ids.contains_key(*n))
            .collect();
        for chunk in missing.chunks(IN_CHUNK) {
            let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
            for n in chunk {
                args.extend([(*n).into(), now.into()]);
            }
            let rows = vec!["(?, ?)"; chunk.len()].join(", ");
            self.exec(
                &format!("INSERT INTO acq (name, created_at) VALUES {rows} ON CONFLICT DO NOTHING"),
                &args,
            )?;
            for (n, id) in self.acq_ids(chunk)? {
                ids.insert(n, (id, true));
            }
        }
        Ok(ids)
    }

    fn acq_ids(&mut self, names: &[&str]) -> Result<HashMap<String, AcqId>> {
        let mut ids = HashMap::with_capacity(names.len());
        for chunk in names.chunks(IN_CHUNK) {
            let args: Vec<Value> = chunk.iter().map(|n| Value::from(*n)).collect();
            for r in self.raw(
                &format!(
                    "SELECT name, id FROM acq WHERE name IN ({})",
                    super::in_list(chunk.len())
                ),
                &args,
            )? {
                ids.insert(r.get(0)?, r.get(1)?);
            }
        }
        Ok(ids)
    }

    /// The id of acquisition `name`, created if needed; the flag says whether it was.
    pub fn ensure_acq(&mut self, name: &str, now: i64) -> Result<(AcqId, bool)> {
        if name.is_empty() {
            return Err(CatalogError::Invalid("empty acquisition name".into()));
        }
        if let Some(a) = self.acq_by_name(name)? {
            return Ok((a.id, false));
        }
        let id = self.insert(
            "INSERT INTO acq (name, created_at) VALUES (?, ?) RETURNING id",
            params![name, now],
        )?;
        Ok((id, true))
    }

    // ---- files ----

    pub fn file_by_path(&mut self, path: &str) -> Result<Option<File>> {
        let path = normalize_path(path)?;
        let (dir, name) = split_path(&path);
        self.row(
            &file_query("WHERE d.path = ? AND f.name = ?"),
            params![dir, name],
        )
    }

    pub fn file(&mut self, path: &str) -> Result<File> {
        self.file_by_path(path)?
            .ok_or_else(|| CatalogError::not_found("file", path))
    }

    pub fn file_by_id(&mut self, id: FileId) -> Result<File> {
        self.row(&file_query("WHERE f.id = ?"), params![id])?
            .ok_or_else(|| CatalogError::not_found("file", format!("#{id}")))
    }

    /// The files of `ids` that are registered, by id, in one query per `IN_CHUNK` ids.
    pub fn files_by_ids(&mut self, ids: &[FileId]) -> Result<HashMap<FileId, File>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let args: Vec<Value> = chunk.iter().map(|i| Value::from(*i)).collect();
            let sql = file_query(&format!("WHERE f.id IN ({})", super::in_list(chunk.len())));
            for f in self.rows::<File>(&sql, &args)? {
                found.insert(f.id, f);
            }
        }
        Ok(found)
    }

    /// The files registered at `paths` (normalised, as `(directory, name)`), with the copy
    /// each has on `node_id` if any: what an import needs to know of a batch, in one query
    /// per `Tx::files_per_statement` paths (in at most 200 directories).
    pub fn files_at(
        &mut self,
        paths: &[(&str, &str)],
        node_id: NodeId,
    ) -> Result<HashMap<String, (File, Option<Has>)>> {
        // Names grouped by directory: `(d.path = ? AND f.name IN (…)) OR …`, whose depth is the
        // number of directories (SQLite allows an expression 1,000 deep).
        let mut by_dir: Vec<(&str, Vec<&str>)> = Vec::new();
        let mut sorted: Vec<(&str, &str)> = paths.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for (dir, name) in sorted {
            match by_dir.last_mut() {
                Some((d, names)) if *d == dir => names.push(name),
                _ => by_dir.push((dir, vec![name])),
            }
        }
        let mut found = HashMap::with_capacity(paths.len());
        let per_statement = self.files_per_statement();
        let mut groups = by_dir.as_slice();
        while !groups.is_empty() {
            // As many directories as fit in one statement.
            let (mut n_dirs, mut n_names) = (0, 0);
            while n_dirs < groups.len()
                && n_dirs < 200
                && (n_dirs == 0 || n_names + groups[n_dirs].1.len() <= per_statement)
            {
                n_names += groups[n_dirs].1.len();
                n_dirs += 1;
            }
            let (chunk, rest) = groups.split_at(n_dirs);
            groups = rest;
            let mut args: Vec<Value> = vec![node_id.into()];
            let mut terms = Vec::with_capacity(chunk.len());
            for (dir, names) in chunk {
                args.push((*dir).into());
                args.extend(names.iter().map(|n| Value::from(*n)));
                terms.push(format!(
                    "(d.path = ? AND f.name IN ({}))",
                    super::in_list(names.len())
                ));
            }
            let rows = self.raw(
                &format!(
                    "SELECT {}, c.has FROM {} LEFT JOIN copy c ON c.file_id = f.id \
                     AND c.node_id = ? WHERE {}",
                    File::COLUMNS,
                    File::FROM,
                    terms.join(" OR ")
                ),
                &args,
            )?;
            for r in rows {
                let file = File::from_row(&r)?;
                let has: Option<Has> = r.get(File::NCOLS)?;
                found.insert(file.path.clone(), (file, has));
            }
        }
        Ok(found)
    }

    /// Registers a new file. Returns the file and whether it was new: registering the same
    /// path again with the same size and md5 is harmless, with different contents an error
    /// (a registered file's bytes never change, invariant 1).
    pub fn register_file(&mut self, f: &NewFile, now: i64) -> Result<(File, bool)> {
        let mut cache = RegisterCache::default();
        let (id, created) = self.register_file_cached(f, now, &mut cache)?;
        Ok((self.file_by_id(id)?, created))
    }

    /// Registers many files in this transaction (the bulk path of a scan or a benchmark).
    pub fn register_files(&mut self, files: &[NewFile], now: i64) -> Result<Vec<FileId>> {
        let mut cache = RegisterCache::default();
        files
            .iter()
            .map(|f| {
                self.register_file_cached(f, now, &mut cache)
                    .map(|(id, _)| id)
            })
            .collect()
    }

    fn register_file_cached(
        &mut self,
        f: &NewFile,
        now: i64,
        cache: &mut RegisterCache,
    ) -> Result<(FileId, bool)> {
        let path = registrable_path(f)?;
        let (dir, name) = split_path(&path);
        let dir_id = match cache.dirs.get(dir) {
            Some(id) => *id,
            None => {
                let id = self.ensure_dir(dir, now)?;
                cache.dirs.insert(dir.to_owned(), id);
                id
            }
        };
        let acq_id = match cache.acqs.get(&f.acq) {
            Some(id) => *id,
            None => {
                let (id, _) = self.ensure_acq(&f.acq, now)?;
                cache.acqs.insert(f.acq.clone(), id);
                id
            }
        };
        let inserted = self.raw(
            "INSERT INTO file (dir_id, name, acq_id, size, md5, mtime, registered_at, owner, \
             grp, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (dir_id, name) DO NOTHING RETURNING id",
            params![
                dir_id,
                name,
                acq_id,
                f.size,
                &f.md5,
                f.mtime,
                now,
                f.own.user.as_deref(),
                f.own.group.as_deref(),
                f.own.mode.map(i64::from)
            ],
        )?;
        if let Some(r) = inserted.first() {
            return Ok((r.get(0)?, true));
        }
        let existing = self.raw(
            "SELECT id, size, md5 FROM file WHERE dir_id = ? AND name = ?",
            params![dir_id, name],
        )?;
        let r = existing
            .first()
            .ok_or_else(|| CatalogError::Invalid(format!("file {path:?} vanished")))?;
        let (size, md5): (u64, String) = (r.get(1)?, r.get(2)?);
        if size != f.size || md5 != f.md5 {
            return Err(CatalogError::Invalid(format!(
                "file {path:?} is already registered with different contents \
                 ({size} bytes, md5 {md5}); registered files never change"
            )));
        }
        Ok((r.get(0)?, false))
    }

    /// Files kept aside under a conflict name ([`ConflictName`]) at or below `prefix`, sorted
    /// by path, each with what its name says and the file archived at the name it was written
    /// under (`None` if that one is gone since).
    pub fn conflicts(
        &mut self,
        prefix: Option<&str>,
    ) -> Result<Vec<(File, ConflictName, Option<File>)>> {
        let mut args = vec![Value::from("%.conflict-%")];
        let mut sql = file_query("WHERE f.name LIKE ?");
        if let Some(p) = prefix {
            sql.push_str(&prefix_clause(&normalize_path(p)?, &mut args));
        }
        sql.push_str(" ORDER BY d.path, f.name");
        let kept: Vec<File> = self.rows(&sql, &args)?;
        let mut out = Vec::new();
        for f in kept {
            // LIKE also takes other cases, and names that only look like one.
            let Some(c) = ConflictName::parse(&f.name) else {
                continue;
            };
            let original = match f.path.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{}", c.original),
                None => c.original.clone(),
            };
            let other = self.file_by_path(&original)?;
            out.push((f, c, other));
        }
        Ok(out)
    }

    /// Files selected by `filter`, sorted by path.
    pub fn files(&mut self, filter: &FileFilter) -> Result<Vec<File>> {
        let mut args = Vec::new();
        let mut sql = file_query("WHERE 1 = 1");
        if let Some(n) = filter.node {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM copy c WHERE c.file_id = f.id AND c.node_id = ? \
                 AND c.has <> 'no')",
            );
            args.push(n.into());
        }
        if let Some(g) = filter.group {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM copy c JOIN node gn ON gn.id = c.node_id \
                 WHERE c.file_id = f.id AND c.has = 'yes' AND gn.group_id = ?)",
            );
            args.push(g.into());
        }
        if let Some(a) = filter.acq {
            sql.push_str(" AND f.acq_id = ?");
            args.push(a.into());
        }
        if let Some(p) = &filter.path_prefix {
            let p = normalize_path(p)?;
            sql.push_str(&prefix_clause(&p, &mut args));
        }
        sql.push_str(" ORDER BY d.path, f.name");
        self.rows(&sql, &args)
    }

    /// Files with their copy on `node_id` (any state but `no`), sorted by path.
    pub fn files_on_node(
        &mut self,
        node_id: NodeId,
        acq: Option<AcqId>,
        prefix: Option<&str>,
    ) -> Result<Vec<(File, Copy)>> {
        let mut args: Vec<Value> = vec![node_id.into()];
        let mut sql = format!(
            "SELECT {}, {} FROM {} JOIN copy c ON c.file_id = f.id \
             JOIN node cn ON cn.id = c.node_id WHERE c.node_id = ? AND c.has <> 'no'",
            File::COLUMNS,
            Copy::COLUMNS,
            File::FROM
        );
        if let Some(a) = acq {
            sql.push_str(" AND f.acq_id = ?");
            args.push(a.into());
        }
        if let Some(p) = prefix {
            let p = normalize_path(p)?;
            sql.push_str(&prefix_clause(&p, &mut args));
        }
        sql.push_str(" ORDER BY d.path, f.name");
        self.rows(&sql, &args)
    }

    // ---- copies ----

    pub fn copies_of(&mut self, file_id: FileId) -> Result<Vec<Copy>> {
        self.rows(
            &format!(
                "SELECT {} FROM {} WHERE c.file_id = ? ORDER BY cn.name",
                Copy::COLUMNS,
                Copy::FROM
            ),
            params![file_id],
        )
    }

    pub fn copy_on(&mut self, file_id: FileId, node_id: NodeId) -> Result<Option<Copy>> {
        self.row(
            &format!(
                "SELECT {} FROM {} WHERE c.file_id = ? AND c.node_id = ?",
                Copy::COLUMNS,
                Copy::FROM
            ),
            params![file_id, node_id],
        )
    }

    pub fn copy_by_id(&mut self, id: CopyId) -> Result<Option<Copy>> {
        self.row(
            &format!(
                "SELECT {} FROM {} WHERE c.id = ?",
                Copy::COLUMNS,
                Copy::FROM
            ),
            params![id],
        )
    }

    /// The copies of `ids` that are in the catalog, by id, in one query per `IN_CHUNK` ids.
    pub fn copies_by_ids(&mut self, ids: &[CopyId]) -> Result<HashMap<CopyId, Copy>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let args: Vec<Value> = chunk.iter().map(|i| Value::from(*i)).collect();
            let sql = format!(
                "SELECT {} FROM {} WHERE c.id IN ({})",
                Copy::COLUMNS,
                Copy::FROM,
                super::in_list(chunk.len())
            );
            for c in self.rows::<Copy>(&sql, &args)? {
                found.insert(c.id, c);
            }
        }
        Ok(found)
    }

    /// Records that `node_id` holds a copy of `file_id` in state `has` (a new copy wants
    /// `keep`). Returns the copy id.
    pub fn record_copy(
        &mut self,
        file_id: FileId,
        node_id: NodeId,
        has: Has,
        size_on_node: Option<u64>,
        now: i64,
    ) -> Result<CopyId> {
        self.insert(
            &format!("{} RETURNING id", record_copies_sql(1)),
            params![file_id, node_id, has, size_on_node, now, now, now],
        )
    }

    /// [`Tx::record_copy`] with `has = yes` for many copies, `(file, node, size on node)`, in
    /// one statement per `Tx::files_per_statement`; a pair given twice is recorded once.
    pub fn record_healthy_copies(
        &mut self,
        copies: &[(FileId, NodeId, Option<u64>)],
        now: i64,
    ) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let copies: Vec<&(FileId, NodeId, Option<u64>)> = copies
            .iter()
            .filter(|(f, n, _)| seen.insert((*f, *n)))
            .collect();
        for chunk in copies.chunks(self.files_per_statement()) {
            let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
            for &&(file_id, node_id, size) in chunk {
                args.extend([
                    file_id.into(),
                    node_id.into(),
                    Has::Yes.into(),
                    size.into(),
                    now.into(),
                    now.into(),
                    now.into(),
                ]);
            }
            self.exec(&record_copies_sql(chunk.len()), &args)?;
        }
        Ok(())
    }

    /// Records the outcome of checking a copy against its md5: its new state, when it was
    /// checked, and that the check asked for (if any) is done.
    pub fn record_verify(&mut self, copy_id: CopyId, has: Has, now: i64) -> Result<()> {
        self.exec(
            "UPDATE copy SET has = ?, verified_at = ?, verify_requested = 0, updated_at = ? \
             WHERE id = ?",
            params![has, now, now, copy_id],
        )?;
        Ok(())
    }

    /// Sets `wants` on the given copies. Returns how many changed.
    pub fn set_wants(&mut self, copy_ids: &[CopyId], wants: Wants, now: i64) -> Result<u64> {
        let mut n = 0;
        for id in copy_ids {
            n += self.exec(
                "UPDATE copy SET wants = ?, updated_at = ? WHERE id = ? AND wants <> ?",
                params![wants, now, *id, wants],
            )?;
        }
        Ok(n)
    }

    /// Asks cairnd to verify the given copies. Returns how many were not already asked.
    pub fn request_verify(&mut self, copy_ids: &[CopyId], now: i64) -> Result<u64> {
        let mut n = 0;
        for id in copy_ids {
            n += self.exec(
                "UPDATE copy SET verify_requested = 1, updated_at = ? \
                 WHERE id = ? AND verify_requested = 0",
                params![now, *id],
            )?;
        }
        Ok(n)
    }

    /// Files with a healthy copy on `node_id` that are absent (no `has = yes` copy) from
    /// `group_id` and, if given, from `target_group`: what `node sync` would copy.
    pub fn sync_candidates(
        &mut self,
        node_id: NodeId,
        group_id: GroupId,
        target_group: Option<GroupId>,
        select: &CopySelect,
    ) -> Result<Vec<SyncCandidate>> {
        let mut args: Vec<Value> = vec![node_id.into(), group_id.into()];
        let mut sql = String::from(
            "SELECT f.id, c.id, d.path, f.name, f.size FROM copy c \
             JOIN file f ON f.id = c.file_id JOIN dir d ON d.id = f.dir_id \
             WHERE c.node_id = ? AND c.has = 'yes' \
             AND NOT EXISTS (SELECT 1 FROM copy c2 JOIN node n2 ON n2.id = c2.node_id \
                 WHERE c2.file_id = c.file_id AND c2.has = 'yes' AND n2.group_id = ?)",
        );
        if let Some(t) = target_group {
            sql.push_str(
                " AND NOT EXISTS (SELECT 1 FROM copy c3 JOIN node n3 ON n3.id = c3.node_id \
                 WHERE c3.file_id = c.file_id AND c3.has = 'yes' AND n3.group_id = ?)",
            );
            args.push(t.into());
        }
        self.select_copies(sql, args, select)
    }

    /// Copies on `node_id` that `node clean` would release: not removed, not already
    /// wanting `wants`, and (with `target_group`) present in that group.
    pub fn clean_candidates(
        &mut self,
        node_id: NodeId,
        wants: Wants,
        target_group: Option<GroupId>,
        select: &CopySelect,
    ) -> Result<Vec<SyncCandidate>> {
        let mut args: Vec<Value> = vec![node_id.into(), wants.into()];
        let mut sql = String::from(
            "SELECT f.id, c.id, d.path, f.name, f.size FROM copy c \
             JOIN file f ON f.id = c.file_id JOIN dir d ON d.id = f.dir_id \
             WHERE c.node_id = ? AND c.has <> 'no' AND c.wants <> ?",
        );
        if let Some(t) = target_group {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM copy c3 JOIN node n3 ON n3.id = c3.node_id \
                 WHERE c3.file_id = c.file_id AND c3.has = 'yes' AND n3.group_id = ?)",
            );
            args.push(t.into());
        }
        self.select_copies(sql, args, select)
    }

    /// Copies on `node_id` whose state is one of `states`: what `node verify` would check.
    pub fn verify_candidates(
        &mut self,
        node_id: NodeId,
        states: &[Has],
        select: &CopySelect,
    ) -> Result<Vec<SyncCandidate>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<Value> = vec![node_id.into()];
        let marks = vec!["?"; states.len()].join(", ");
        args.extend(states.iter().map(|h| Value::from(*h)));
        let sql = format!(
            "SELECT f.id, c.id, d.path, f.name, f.size FROM copy c \
             JOIN file f ON f.id = c.file_id JOIN dir d ON d.id = f.dir_id \
             WHERE c.node_id = ? AND c.has IN ({marks})"
        );
        self.select_copies(sql, args, select)
    }

    /// Runs a candidates query (over `copy c`, `file f`, `dir d`) narrowed by `select`.
    fn select_copies(
        &mut self,
        mut sql: String,
        mut args: Vec<Value>,
        select: &CopySelect,
    ) -> Result<Vec<SyncCandidate>> {
        if let Some(a) = select.acq {
            sql.push_str(" AND f.acq_id = ?");
            args.push(a.into());
        }
        if let Some(p) = &select.path_prefix {
            let p = normalize_path(p)?;
            sql.push_str(&prefix_clause(&p, &mut args));
        }
        if let Some(t) = select.added_before {
            sql.push_str(" AND c.added_at <= ?");
            args.push(t.into());
        }
        sql.push_str(" ORDER BY d.path, f.name");
        self.rows(&sql, &args)
    }

    // ---- totals ----

    /// File counts and sizes per node (all nodes, or those named), sorted by node name.
    pub fn node_stats(&mut self, node_ids: Option<&[NodeId]>) -> Result<Vec<NodeStats>> {
        let mut args = Vec::new();
        let mut filter = String::new();
        if let Some(ids) = node_ids {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            filter = format!("WHERE n.id IN ({})", vec!["?"; ids.len()].join(", "));
            args.extend(ids.iter().map(|i| Value::from(*i)));
        }
        // One pass over the copy table per node; `files`/`bytes` count healthy copies only:
        // a corrupt copy does not provide the data, so it is not "on" the node.
        let sql = format!(
            "SELECT n.name, n.max_total, s.files, s.bytes, s.corrupt, s.suspect, s.missing \
             FROM node n LEFT JOIN (SELECT c.node_id AS node_id, \
                 SUM(CASE WHEN c.has = 'yes' THEN 1 ELSE 0 END) AS files, \
                 SUM(CASE WHEN c.has = 'yes' THEN f.size ELSE 0 END) AS bytes, \
                 SUM(CASE WHEN c.has = 'corrupt' THEN 1 ELSE 0 END) AS corrupt, \
                 SUM(CASE WHEN c.has = 'suspect' THEN 1 ELSE 0 END) AS suspect, \
                 SUM(CASE WHEN c.has = 'no' AND c.wants = 'keep' THEN 1 ELSE 0 END) AS missing \
                 FROM copy c JOIN file f ON f.id = c.file_id GROUP BY c.node_id) s \
             ON s.node_id = n.id {filter} ORDER BY n.name"
        );
        self.rows(&sql, &args)
    }
}

/// A file to register, as an import found it: what the mount and cairnd's importers hand the
/// catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewFile {
    /// The archive path (relative, `/`-separated).
    pub path: String,
    /// The acquisition it belongs to (from the `[import]` rules).
    pub acq: String,
    pub size: u64,
    /// 32 lowercase hex digits.
    pub md5: String,
    /// Modification time, unix seconds.
    pub mtime: i64,
    /// Its owner, group and mode, when the importer knows them.
    pub own: Ownership,
}

/// Most values in one `IN (…)` list or multi-row `VALUES` of the batch queries, in any
/// database (an import's statements take `Tx::files_per_statement`): within both
/// databases' limits on parameters, and few enough distinct statement texts to cache.
pub(crate) const IN_CHUNK: usize = 1000;

#[derive(Default)]
struct RegisterCache {
    dirs: HashMap<String, DirId>,
    acqs: HashMap<String, AcqId>,
}

/// The one statement that records copies (a copy registered, pulled, or found on a node):
/// `rows` rows of (file, node, has, size on node, now, now, now), each a new copy that wants
/// `keep`, or an existing one made so.
fn record_copies_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, 'keep', ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO copy (file_id, node_id, has, wants, size_on_node, added_at, verified_at, \
         updated_at) VALUES {values} \
         ON CONFLICT (file_id, node_id) DO UPDATE SET has = excluded.has, wants = 'keep', \
         verify_requested = 0, size_on_node = excluded.size_on_node, \
         added_at = excluded.added_at, verified_at = excluded.verified_at, \
         updated_at = excluded.updated_at"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_accepts_relative_paths() {
        assert_eq!(
            normalize_path("2025/02/21/meta.txt").unwrap(),
            "2025/02/21/meta.txt"
        );
        assert_eq!(normalize_path("./2025/02/").unwrap(), "2025/02");
        assert_eq!(normalize_path("/2025").unwrap(), "2025");
        assert_eq!(normalize_path("").unwrap(), "");
    }

    proptest::proptest! {
        #[test]
        fn normalize_keeps_clean_relative_paths(
            parts in proptest::collection::vec("[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", 1..6)
        ) {
            let path = parts.join("/");
            proptest::prop_assert_eq!(normalize_path(&path).unwrap(), path.clone());
            proptest::prop_assert_eq!(normalize_path(&format!("/{path}")).unwrap(), path.clone());
            proptest::prop_assert_eq!(normalize_path(&format!("./{path}/")).unwrap(), path);
        }

        #[test]
        fn normalize_never_lets_dot_dot_through(
            parts in proptest::collection::vec("[a-z]{1,4}|\\.\\.|\\.", 1..6)
        ) {
            let path = parts.join("/");
            if let Ok(p) = normalize_path(&path) {
                proptest::prop_assert!(p.split('/').all(|c| c != ".." && c != "."), "{}", p);
            }
        }
    }

    #[test]
    fn normalize_rejects_escapes_and_empty_components() {
        for bad in ["a/../b", "a//b", "a/./b", "..", "a/\0"] {
            let err = normalize_path(bad).unwrap_err().to_string();
            assert!(err.contains("invalid archive path"), "{bad}: {err}");
        }
    }
}
