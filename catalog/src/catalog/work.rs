//! The queries cairnd uses to find work, finish it, and apply the storage-graph rules.
//!
//! The rules themselves live in [`crate::rules`] as pure functions; these methods gather their
//! inputs and apply their outcome inside the caller's transaction. That is what makes a release
//! safe (invariant 3): the archive-copies check and the `has = no` that commits the deletion are
//! one transaction, so two hosts releasing different copies of one file serialize, and the
//! second sees the first's release.

use std::collections::HashMap;

use super::files::IN_CHUNK;
use super::{Tx, in_list};
use crate::db::{Dialect, Row, Value};
use crate::error::{CatalogError, Result};
use crate::model::{
    Copy, CopyId, CopyRequest, FileId, GroupId, Has, ImportId, ImportRequest, NodeId, NodeKind,
    RequestId, Wants,
};
use crate::params;
use crate::rules::{self, ActionRule, AutoEffect, FileState, NewCopy, OtherCopy, ReleaseRefusal};

/// An auto-action that fired, with the name of the group synced into or node released on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub effect: AutoEffect,
    pub name: String,
}

/// A copy that arrived on its node for a copy request: what [`Tx::record_arrivals`] records.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub request: RequestId,
    pub file_id: FileId,
    pub node_id: NodeId,
    /// Bytes transferred, and how long it took.
    pub bytes: u64,
    pub seconds: f64,
}

/// A copy cairnd should look at (verify or release), with its file's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyWork {
    pub copy: Copy,
    pub path: String,
    pub size: u64,
    pub md5: String,
}

/// A healthy copy of a file and where it is: a candidate source for a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCopy {
    pub copy_id: CopyId,
    pub node_id: NodeId,
    pub node: String,
    pub group_id: GroupId,
    pub active: bool,
    pub host: Option<String>,
    /// The host's cairnd address (`host:port`).
    pub address: Option<String>,
    pub root: Option<String>,
    /// Log-in user and address of the node, for rsync over a remote shell.
    pub login_user: Option<String>,
    pub login_address: Option<String>,
    /// The node or its host is paused: not to be read from now.
    pub paused: bool,
}

/// Rows of (copy id, directory path, file name, a name) as (copy id, the file's path, the
/// name).
fn copies_with_paths(rows: &[Row]) -> Result<Vec<(CopyId, String, String)>> {
    rows.iter()
        .map(|r| {
            let dir: String = r.get(1)?;
            let name: String = r.get(2)?;
            Ok((r.get(0)?, crate::model::join_path(&dir, &name), r.get(3)?))
        })
        .collect()
}

impl Tx<'_> {
    /// Copies on `node_id` that a delayed auto-clean releases at `now`: still wanted, of files
    /// that have had a healthy copy in the rule's group for at least its delay, verified since
    /// it arrived. Returns (copy id, path, group name).
    pub fn delayed_clean_due(
        &mut self,
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<(CopyId, String, String)>> {
        let rows = self.raw(
            "SELECT c.id, d.path, f.name, g.name FROM auto_action aa \
             JOIN storage_group g ON g.id = aa.group_id \
             JOIN copy c ON c.node_id = aa.node_id \
             JOIN file f ON f.id = c.file_id JOIN dir d ON d.id = f.dir_id \
             WHERE aa.node_id = ? AND aa.autoclean = 1 AND aa.clean_after IS NOT NULL \
             AND c.has <> 'no' AND c.wants = 'keep' \
             AND EXISTS (SELECT 1 FROM copy c2 JOIN node n2 ON n2.id = c2.node_id \
                 WHERE c2.file_id = c.file_id AND n2.group_id = aa.group_id \
                 AND c2.has = 'yes' AND c2.added_at <= ? - aa.clean_after \
                 AND c2.verified_at > c2.added_at)",
            params![node_id, now],
        )?;
        copies_with_paths(&rows)
    }

    /// Copies on `node_id` that a delayed auto-clean of another node waits on: healthy, in the
    /// rule's group for at least its delay, not verified since they arrived and not yet asked
    /// to be, of files whose copy on the rule's node is still kept. Without a verification
    /// nothing would release those field copies, so cairnd asks for one. Returns (copy id,
    /// path, the field node's name).
    pub fn delayed_clean_unverified(
        &mut self,
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<(CopyId, String, String)>> {
        let rows = self.raw(
            "SELECT c2.id, d.path, f.name, MIN(fld.name) FROM copy c2 \
             JOIN node n2 ON n2.id = c2.node_id \
             JOIN auto_action aa ON aa.group_id = n2.group_id \
             JOIN node fld ON fld.id = aa.node_id \
             JOIN copy c ON c.node_id = aa.node_id AND c.file_id = c2.file_id \
             JOIN file f ON f.id = c2.file_id JOIN dir d ON d.id = f.dir_id \
             WHERE c2.node_id = ? AND c2.has = 'yes' AND c2.verify_requested = 0 \
             AND (c2.verified_at IS NULL OR c2.verified_at <= c2.added_at) \
             AND aa.autoclean = 1 AND aa.clean_after IS NOT NULL \
             AND c2.added_at <= ? - aa.clean_after \
             AND c.has <> 'no' AND c.wants = 'keep' \
             GROUP BY c2.id, d.path, f.name ORDER BY c2.id",
            params![node_id, now],
        )?;
        copies_with_paths(&rows)
    }

    /// Copies on `node_id` that a delayed auto-clean keeps because their file's copies in the
    /// rule's group, old enough, are all corrupt or suspect (none healthy there). Returns
    /// (copy id, path, group name).
    pub fn delayed_clean_blocked(
        &mut self,
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<(CopyId, String, String)>> {
        let rows = self.raw(
            "SELECT c.id, d.path, f.name, g.name FROM auto_action aa \
             JOIN storage_group g ON g.id = aa.group_id \
             JOIN copy c ON c.node_id = aa.node_id \
             JOIN file f ON f.id = c.file_id JOIN dir d ON d.id = f.dir_id \
             WHERE aa.node_id = ? AND aa.autoclean = 1 AND aa.clean_after IS NOT NULL \
             AND c.has <> 'no' AND c.wants = 'keep' \
             AND EXISTS (SELECT 1 FROM copy c2 JOIN node n2 ON n2.id = c2.node_id \
                 WHERE c2.file_id = c.file_id AND n2.group_id = aa.group_id \
                 AND c2.has IN ('corrupt', 'suspect') AND c2.added_at <= ? - aa.clean_after) \
             AND NOT EXISTS (SELECT 1 FROM copy c3 JOIN node n3 ON n3.id = c3.node_id \
                 WHERE c3.file_id = c.file_id AND n3.group_id = aa.group_id \
                 AND c3.has = 'yes') \
             ORDER BY c.id",
            params![node_id, now],
        )?;
        copies_with_paths(&rows)
    }

    /// Every healthy copy of `file_id`, with its node's host and that host's address.
    pub fn source_copies(&mut self, file_id: FileId) -> Result<Vec<SourceCopy>> {
        Ok(self
            .source_copies_of(&[file_id])?
            .remove(&file_id)
            .unwrap_or_default())
    }

    /// [`Tx::source_copies`] of many files, in one query per `IN_CHUNK` files; a file
    /// without a healthy copy has no entry.
    pub fn source_copies_of(
        &mut self,
        file_ids: &[FileId],
    ) -> Result<HashMap<FileId, Vec<SourceCopy>>> {
        let mut found: HashMap<FileId, Vec<SourceCopy>> = HashMap::new();
        for chunk in file_ids.chunks(IN_CHUNK) {
            let ids: Vec<Value> = chunk.iter().map(|i| Value::from(*i)).collect();
            let rows = self.raw(
                &format!(
                    "SELECT c.id, n.id, n.name, n.group_id, n.active, h.name, h.address, \
                     n.root, n.username, n.address, n.paused + COALESCE(h.paused, 0), \
                     c.file_id FROM copy c \
                     JOIN node n ON n.id = c.node_id LEFT JOIN host h ON h.id = n.host_id \
                     WHERE c.file_id IN ({}) AND c.has = 'yes' ORDER BY c.file_id, n.name",
                    in_list(chunk.len())
                ),
                &ids,
            )?;
            for r in &rows {
                found.entry(r.get(11)?).or_default().push(SourceCopy {
                    copy_id: r.get(0)?,
                    node_id: r.get(1)?,
                    node: r.get(2)?,
                    group_id: r.get(3)?,
                    active: r.get(4)?,
                    host: r.get(5)?,
                    address: r.get(6)?,
                    root: r.get(7)?,
                    login_user: r.get(8)?,
                    login_address: r.get(9)?,
                    paused: r.get(10)?,
                });
            }
        }
        Ok(found)
    }

    /// Pending copy requests into `groups` that are due at `now`, oldest first.
    pub fn due_copy_requests(
        &mut self,
        groups: &[GroupId],
        now: i64,
        limit: u64,
    ) -> Result<Vec<CopyRequest>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<Value> = groups.iter().map(|g| Value::from(*g)).collect();
        args.push(now.into());
        args.push(limit.into());
        self.rows(
            &format!(
                "SELECT {} FROM {} WHERE r.state = 'pending' AND r.to_group IN ({}) \
                 AND r.not_before <= ? ORDER BY r.id LIMIT ?",
                CopyRequest::COLUMNS,
                CopyRequest::FROM,
                in_list(groups.len())
            ),
            &args,
        )
    }

    /// Pending import requests (init, import, scan) of `nodes`, oldest first.
    pub fn due_import_requests(&mut self, nodes: &[NodeId]) -> Result<Vec<ImportRequest>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<Value> = nodes.iter().map(|n| Value::from(*n)).collect();
        self.rows(
            &format!(
                "SELECT {} FROM {} WHERE i.state = 'pending' AND i.node_id IN ({}) ORDER BY i.id",
                ImportRequest::COLUMNS,
                ImportRequest::FROM,
                in_list(nodes.len())
            ),
            &args,
        )
    }

    /// Claims a pending import request (pending → active). True if this caller won it.
    pub fn claim_import_request(&mut self, id: ImportId) -> Result<bool> {
        Ok(self.exec(
            "UPDATE import_request SET state = 'active' WHERE id = ? AND state = 'pending'",
            params![id],
        )? == 1)
    }

    /// Gives a claimed import request back (cairnd stopped before it was done).
    pub fn unclaim_import_request(&mut self, id: ImportId) -> Result<()> {
        self.exec(
            "UPDATE import_request SET state = 'pending' WHERE id = ? AND state = 'active'",
            params![id],
        )?;
        Ok(())
    }

    /// Ends an import request: `done`, or `failed` with the reason.
    pub fn finish_import_request(
        &mut self,
        id: ImportId,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let state = if error.is_some() { "failed" } else { "done" };
        self.exec(
            "UPDATE import_request SET state = ?, last_error = ?, finished_at = ? WHERE id = ?",
            params![state, error, now, id],
        )?;
        Ok(())
    }

    /// Ends a copy request as done, with what it moved.
    pub fn finish_copy_request(
        &mut self,
        id: RequestId,
        bytes: u64,
        seconds: f64,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "UPDATE copy_request SET state = 'done', finished_at = ?, bytes = ?, seconds = ?, \
             last_error = NULL WHERE id = ? AND state = 'active'",
            params![now, bytes, seconds, id],
        )?;
        Ok(())
    }

    /// Records a failed attempt: back to `pending` until `not_before`, or `failed` once
    /// `max_attempts` attempts have been made. Returns true if the request is now failed.
    pub fn fail_copy_request(
        &mut self,
        id: RequestId,
        error: &str,
        max_attempts: u32,
        not_before: i64,
        now: i64,
    ) -> Result<bool> {
        let attempts: u32 = self.scalar(
            "SELECT attempts FROM copy_request WHERE id = ?",
            params![id],
        )?;
        let failed = attempts >= max_attempts;
        if failed {
            self.exec(
                "UPDATE copy_request SET state = 'failed', last_error = ?, finished_at = ? \
                 WHERE id = ? AND state = 'active'",
                params![error, now, id],
            )?;
        } else {
            self.exec(
                "UPDATE copy_request SET state = 'pending', last_error = ?, not_before = ? \
                 WHERE id = ? AND state = 'active'",
                params![error, not_before, id],
            )?;
        }
        Ok(failed)
    }

    /// Gives a claimed request back without counting the attempt (shutdown, or no local
    /// source after all).
    pub fn unclaim_copy_request(&mut self, id: RequestId) -> Result<()> {
        self.exec(
            "UPDATE copy_request SET state = 'pending', claimed_by = NULL, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
             WHERE id = ? AND state = 'active'",
            params![id],
        )?;
        Ok(())
    }

    /// Requests this host left active when it stopped (a crash): back to pending.
    pub fn requeue_abandoned(&mut self, host: &str, node_ids: &[NodeId]) -> Result<u64> {
        let mut n = self.exec(
            "UPDATE copy_request SET state = 'pending', claimed_by = NULL \
             WHERE state = 'active' AND claimed_by = ?",
            params![host],
        )?;
        if !node_ids.is_empty() {
            let args: Vec<Value> = node_ids.iter().map(|i| Value::from(*i)).collect();
            n += self.exec(
                &format!(
                    "UPDATE import_request SET state = 'pending' \
                     WHERE state = 'active' AND node_id IN ({})",
                    in_list(node_ids.len())
                ),
                &args,
            )?;
        }
        Ok(n)
    }

    fn copy_work(&mut self, filter: &str, args: &[Value]) -> Result<Vec<CopyWork>> {
        let rows = self.raw(
            &format!(
                "SELECT {}, d.path, f.name, f.size, f.md5 FROM {} \
                 JOIN file f ON f.id = c.file_id JOIN dir d ON d.id = f.dir_id {filter}",
                Copy::COLUMNS,
                Copy::FROM
            ),
            args,
        )?;
        use crate::model::FromRow;
        rows.iter()
            .map(|r| {
                let dir: String = r.get(11)?;
                let name: String = r.get(12)?;
                Ok(CopyWork {
                    copy: Copy::from_row(r)?,
                    path: crate::model::join_path(&dir, &name),
                    size: r.get(13)?,
                    md5: r.get(14)?,
                })
            })
            .collect()
    }

    /// Copies on `node_id` to verify: asked for, or (with `auto_verify` seconds) last checked
    /// longer ago than that.
    pub fn copies_to_verify(
        &mut self,
        node_id: NodeId,
        auto_verify: Option<i64>,
        now: i64,
        limit: u64,
    ) -> Result<Vec<CopyWork>> {
        match auto_verify {
            Some(age) => self.copy_work(
                "WHERE c.node_id = ? AND c.has <> 'no' AND (c.verify_requested = 1 OR \
                 COALESCE(c.verified_at, c.added_at) < ?) ORDER BY c.id LIMIT ?",
                params![node_id, now - age, limit],
            ),
            None => self.copy_work(
                "WHERE c.node_id = ? AND c.has <> 'no' AND c.verify_requested = 1 \
                 ORDER BY c.id LIMIT ?",
                params![node_id, limit],
            ),
        }
    }

    /// Copies on `node_id` released for deletion as soon as allowed.
    pub fn copies_to_release(&mut self, node_id: NodeId, limit: u64) -> Result<Vec<CopyWork>> {
        self.copy_work(
            "WHERE c.node_id = ? AND c.has <> 'no' AND c.wants = 'release_now' \
             ORDER BY c.id LIMIT ?",
            params![node_id, limit],
        )
    }

    /// Copies on `node_id` that may go when space is needed, oldest first.
    pub fn copies_releasable_when_needed(&mut self, node_id: NodeId) -> Result<Vec<CopyWork>> {
        self.copy_work(
            "WHERE c.node_id = ? AND c.has <> 'no' AND c.wants = 'release_when_needed' \
             ORDER BY c.added_at, c.id",
            params![node_id],
        )
    }

    /// The copy of the file at `path` on `node_id`, if the catalog has one.
    pub fn copy_work_at(&mut self, node_id: NodeId, path: &str) -> Result<Option<CopyWork>> {
        let Some(file) = self.file_by_path(path)? else {
            return Ok(None);
        };
        Ok(self
            .copy_work(
                "WHERE c.node_id = ? AND c.file_id = ?",
                params![node_id, file.id],
            )?
            .into_iter()
            .next())
    }

    /// Bytes of the healthy copies on a node (what counts against `max_total`).
    pub fn used_by_copies(&mut self, node_id: NodeId) -> Result<u64> {
        let v: Option<u64> = self.scalar(
            "SELECT SUM(f.size) FROM copy c JOIN file f ON f.id = c.file_id \
             WHERE c.node_id = ? AND c.has IN ('yes', 'suspect')",
            params![node_id],
        )?;
        Ok(v.unwrap_or(0))
    }

    /// Sets a copy's state (e.g. `suspect` after it delivered wrong bytes).
    pub fn mark_copy(&mut self, copy_id: CopyId, has: Has, now: i64) -> Result<()> {
        self.exec(
            "UPDATE copy SET has = ?, updated_at = ? WHERE id = ?",
            params![has, now, copy_id],
        )?;
        Ok(())
    }

    /// Releases a copy if invariant 3 allows: at least `min_archive_copies` *other* healthy
    /// copies on archive nodes and no pending request reading from it. On success the copy is
    /// recorded `has = no` in this transaction; the caller deletes the bytes after commit.
    pub fn try_release(
        &mut self,
        copy_id: CopyId,
        min_archive_copies: usize,
        now: i64,
    ) -> Result<Result<(), ReleaseRefusal>> {
        let copy = self
            .row::<Copy>(
                &format!(
                    "SELECT {} FROM {} WHERE c.id = ?",
                    Copy::COLUMNS,
                    Copy::FROM
                ),
                params![copy_id],
            )?
            .ok_or_else(|| CatalogError::not_found("copy", format!("#{copy_id}")))?;
        let others = self.other_copies(copy.file_id)?;
        let pending = self.pending_reads(copy.file_id, copy.node_id)? as usize;
        if let Err(refusal) = rules::may_release(copy.node_id, &others, pending, min_archive_copies)
        {
            return Ok(Err(refusal));
        }
        self.exec(
            "UPDATE copy SET has = 'no', verify_requested = 0, updated_at = ? WHERE id = ?",
            params![now, copy_id],
        )?;
        Ok(Ok(()))
    }

    fn other_copies(&mut self, file_id: FileId) -> Result<Vec<OtherCopy>> {
        let rows = self.raw(
            "SELECT c.node_id, n.kind, c.has FROM copy c JOIN node n ON n.id = c.node_id \
             WHERE c.file_id = ?",
            params![file_id],
        )?;
        rows.iter()
            .map(|r| {
                Ok(OtherCopy {
                    node_id: r.get(0)?,
                    node_kind: r.get::<NodeKind>(1)?,
                    has: r.get(2)?,
                })
            })
            .collect()
    }

    /// Records copies that arrived for their requests: each copy healthy on its node, its
    /// request done (unless cancelled meanwhile), and the auto-actions it sets off — what
    /// cairnd records when a pull ends, for a batch of pulls in a fixed number of statements
    /// (plus the auto-actions' per destination node). What each arrival set off, in order.
    pub fn record_arrivals(&mut self, arrivals: &[Arrival], now: i64) -> Result<Vec<Vec<Fired>>> {
        let copies: Vec<(FileId, NodeId, Option<u64>)> = arrivals
            .iter()
            .map(|a| (a.file_id, a.node_id, Some(super::size_on_disk(a.bytes))))
            .collect();
        self.record_healthy_copies(&copies, now)?;
        if self.backend.dialect() == Dialect::Sqlite {
            // In process, a kept statement per request costs microseconds. The one statement
            // per batch below (two `CASE` terms per request) is prepared anew for each batch,
            // its text being the batch's size: parsing it was 7.5% of a receiving cairnd's
            // time in a sync of small files. (At a distant PostgreSQL each statement is a
            // round trip: one for the batch.)
            for a in arrivals {
                self.exec(
                    "UPDATE copy_request SET state = 'done', finished_at = ?, last_error = NULL, \
                     bytes = ?, seconds = ? WHERE state = 'active' AND id = ?",
                    params![now, a.bytes, a.seconds, a.request],
                )?;
            }
        } else {
            for chunk in arrivals.chunks(IN_CHUNK) {
                let mut args: Vec<Value> = vec![now.into()];
                for a in chunk {
                    args.extend([a.request.into(), a.bytes.into()]);
                }
                for a in chunk {
                    args.extend([a.request.into(), a.seconds.into()]);
                }
                args.extend(chunk.iter().map(|a| Value::from(a.request)));
                let bytes = " WHEN ? THEN CAST(? AS BIGINT)".repeat(chunk.len());
                let seconds = " WHEN ? THEN CAST(? AS DOUBLE PRECISION)".repeat(chunk.len());
                self.exec(
                    &format!(
                        "UPDATE copy_request SET state = 'done', finished_at = ?, \
                         last_error = NULL, bytes = CASE id{bytes} END, \
                         seconds = CASE id{seconds} END WHERE state = 'active' AND id IN ({})",
                        in_list(chunk.len())
                    ),
                    &args,
                )?;
            }
        }
        let mut fired: Vec<Vec<Fired>> = vec![Vec::new(); arrivals.len()];
        // A file arriving twice on one node (two requests into one group) fires once.
        let mut by_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (i, a) in arrivals.iter().enumerate() {
            if seen.insert((a.file_id, a.node_id)) {
                by_node.entry(a.node_id).or_default().push(i);
            }
        }
        for (node_id, idx) in by_node {
            let files: Vec<FileId> = idx.iter().map(|&i| arrivals[i].file_id).collect();
            for (i, f) in idx
                .into_iter()
                .zip(self.fire_auto_actions_for(&files, node_id, now)?)
            {
                fired[i] = f;
            }
        }
        Ok(fired)
    }

    /// Applies the auto-actions a new healthy copy of `file_id` on `node_id` sets off:
    /// copy requests into auto-synced groups, releases of auto-cleaned upstream copies.
    /// Returns what it did.
    pub fn fire_auto_actions(
        &mut self,
        file_id: FileId,
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<Fired>> {
        Ok(self
            .fire_auto_actions_for(&[file_id], node_id, now)?
            .pop()
            .unwrap_or_default())
    }

    /// [`Tx::fire_auto_actions`] for new healthy copies of each of `file_ids` on `node_id`, in
    /// a fixed number of statements: one when no rule concerns the node, else one per kind of
    /// fact the rules need and one per kind of effect. What each file set off, in order.
    pub fn fire_auto_actions_for(
        &mut self,
        file_ids: &[FileId],
        node_id: NodeId,
        now: i64,
    ) -> Result<Vec<Vec<Fired>>> {
        let mut fired: Vec<Vec<Fired>> = vec![Vec::new(); file_ids.len()];
        if file_ids.is_empty() {
            return Ok(fired);
        }
        // The node's group and the rules that concern it, in one query (a row with no rule
        // when there is none).
        let rows = self.raw(
            // A delayed auto-clean does not fire on arrival; see `delayed_clean_due`.
            "SELECT n.group_id, aa.group_id, aa.node_id, aa.autosync, \
             CASE WHEN aa.autoclean = 1 AND aa.clean_after IS NULL THEN 1 ELSE 0 END, \
             aa.path_prefix FROM node n LEFT JOIN auto_action aa \
             ON (aa.node_id = n.id AND aa.autosync = 1) \
             OR (aa.group_id = n.group_id AND aa.autoclean = 1) WHERE n.id = ?",
            params![node_id],
        )?;
        let group_id: GroupId = rows
            .first()
            .ok_or_else(|| CatalogError::not_found("node", format!("#{node_id}")))?
            .get(0)?;
        let mut rules = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(rule_group) = r.get::<Option<GroupId>>(1)? else {
                continue;
            };
            rules.push((
                ActionRule {
                    group_id: rule_group,
                    node_id: r.get(2)?,
                    autosync: r.get::<bool>(3)?,
                    autoclean: r.get(4)?,
                },
                r.get::<Option<String>>(5)?,
            ));
        }
        if rules.is_empty() {
            return Ok(fired);
        }
        // The facts the rules look at, for every file at once.
        let mut present: HashMap<FileId, Vec<GroupId>> = HashMap::new();
        let mut requested: HashMap<FileId, Vec<GroupId>> = HashMap::new();
        let mut copies: HashMap<FileId, Vec<(NodeId, Has, Wants)>> = HashMap::new();
        let mut paths: HashMap<FileId, String> = HashMap::new();
        let need_paths = rules.iter().any(|(_, p)| p.is_some());
        for chunk in file_ids.chunks(self.files_per_statement()) {
            let ids: Vec<Value> = chunk.iter().map(|i| Value::from(*i)).collect();
            let list = in_list(chunk.len());
            for r in self.raw(
                &format!(
                    "SELECT DISTINCT c.file_id, n.group_id FROM copy c \
                     JOIN node n ON n.id = c.node_id WHERE c.file_id IN ({list}) \
                     AND c.has = 'yes'"
                ),
                &ids,
            )? {
                present.entry(r.get(0)?).or_default().push(r.get(1)?);
            }
            for r in self.raw(
                &format!(
                    "SELECT DISTINCT file_id, to_group FROM copy_request \
                     WHERE file_id IN ({list}) AND state IN ('pending', 'active')"
                ),
                &ids,
            )? {
                requested.entry(r.get(0)?).or_default().push(r.get(1)?);
            }
            for r in self.raw(
                &format!("SELECT file_id, node_id, has, wants FROM copy WHERE file_id IN ({list})"),
                &ids,
            )? {
                copies.entry(r.get(0)?).or_default().push((
                    r.get(1)?,
                    r.get::<Has>(2)?,
                    r.get::<Wants>(3)?,
                ));
            }
            if need_paths {
                for r in self.raw(
                    &format!(
                        "SELECT f.id, d.path, f.name FROM file f JOIN dir d ON d.id = f.dir_id \
                         WHERE f.id IN ({list})"
                    ),
                    &ids,
                )? {
                    let dir: String = r.get(1)?;
                    let name: String = r.get(2)?;
                    paths.insert(r.get(0)?, crate::model::join_path(&dir, &name));
                }
            }
        }
        let mut effects: Vec<(usize, AutoEffect)> = Vec::new();
        for (i, file_id) in file_ids.iter().enumerate() {
            let path = paths.get(file_id).map(String::as_str).unwrap_or_default();
            let file_rules: Vec<ActionRule> = rules
                .iter()
                .map(|(rule, prefix)| {
                    // The file's path matters only to an auto-sync restricted to a prefix.
                    let in_prefix = prefix.as_deref().is_none_or(|p| {
                        path == p
                            || path
                                .strip_prefix(p)
                                .is_some_and(|rest| rest.starts_with('/'))
                    });
                    ActionRule {
                        autosync: rule.autosync && in_prefix,
                        ..*rule
                    }
                })
                .collect();
            let state = FileState {
                present_in_groups: present.remove(file_id).unwrap_or_default(),
                requested_into_groups: requested.remove(file_id).unwrap_or_default(),
                copies_on_nodes: copies.remove(file_id).unwrap_or_default(),
            };
            for e in rules::auto_effects(&NewCopy { node_id, group_id }, &file_rules, &state) {
                effects.push((i, e));
            }
        }
        if effects.is_empty() {
            return Ok(fired);
        }
        // What the effects are called, for the caller's log.
        let mut group_names: HashMap<GroupId, String> = HashMap::new();
        let mut node_names: HashMap<NodeId, String> = HashMap::new();
        for (_, e) in &effects {
            match *e {
                AutoEffect::Sync { to_group, .. } if !group_names.contains_key(&to_group) => {
                    let name = self.scalar(
                        "SELECT name FROM storage_group WHERE id = ?",
                        params![to_group],
                    )?;
                    group_names.insert(to_group, name);
                }
                AutoEffect::Release { node_id } if !node_names.contains_key(&node_id) => {
                    let name =
                        self.scalar("SELECT name FROM node WHERE id = ?", params![node_id])?;
                    node_names.insert(node_id, name);
                }
                _ => {}
            }
        }
        let mut syncs: Vec<Value> = Vec::new();
        let mut releases: HashMap<NodeId, Vec<FileId>> = HashMap::new();
        for &(i, e) in &effects {
            let name = match e {
                AutoEffect::Sync {
                    from_node,
                    to_group,
                } => {
                    syncs.extend([
                        file_ids[i].into(),
                        from_node.into(),
                        to_group.into(),
                        now.into(),
                    ]);
                    group_names[&to_group].clone()
                }
                AutoEffect::Release { node_id } => {
                    releases.entry(node_id).or_default().push(file_ids[i]);
                    node_names[&node_id].clone()
                }
            };
            fired[i].push(Fired { effect: e, name });
        }
        // The rules asked only for groups no request is going into (`requested` above), so
        // these are new requests, as create_copy_request would make them.
        for chunk in syncs.chunks(4 * IN_CHUNK) {
            let rows = vec!["(?, ?, ?, 'pending', ?)"; chunk.len() / 4].join(", ");
            self.exec(
                &format!(
                    "INSERT INTO copy_request (file_id, from_node, to_group, state, created_at) \
                     VALUES {rows}"
                ),
                chunk,
            )?;
        }
        for (node, files) in releases {
            for chunk in files.chunks(IN_CHUNK) {
                let mut args: Vec<Value> = vec![now.into(), node.into()];
                args.extend(chunk.iter().map(|i| Value::from(*i)));
                self.exec(
                    &format!(
                        "UPDATE copy SET wants = 'release_now', updated_at = ? \
                         WHERE node_id = ? AND file_id IN ({})",
                        in_list(chunk.len())
                    ),
                    &args,
                )?;
            }
        }
        Ok(fired)
    }
}
