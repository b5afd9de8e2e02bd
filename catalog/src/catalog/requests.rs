//! Copy and import requests: what the CLI and mounts ask, and cairnd carries out.
//!
//! A request is carried out once (invariant 4): claiming moves it from `pending` to `active`
//! in one conditional UPDATE, so of two daemons racing for it exactly one wins.

use super::Tx;
use crate::db::Value;
use crate::error::{CatalogError, Result};
use crate::model::{
    CopyRequest, FileId, GroupId, ImportId, ImportRequest, NodeId, RequestId, RequestState,
};
use crate::params;

/// A copy request to create.
#[derive(Debug, Clone, Copy)]
pub struct NewCopyRequest {
    pub file_id: FileId,
    pub from_node: NodeId,
    pub to_group: GroupId,
}

/// Which copy requests a listing selects.
#[derive(Debug, Clone, Default)]
pub struct CopyRequestFilter {
    pub states: Vec<RequestState>,
    /// Requests reading from this node or writing into this node's group.
    pub node: Option<NodeId>,
    pub limit: Option<u64>,
}

fn copy_request_query(filter: &str) -> String {
    format!(
        "SELECT {} FROM {} {filter}",
        CopyRequest::COLUMNS,
        CopyRequest::FROM
    )
}

/// What an import request asks of a node's cairnd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    /// Write the node's marker (`cairn node init`).
    Init,
    /// Import one file (`cairn file import`); with `register_new`, one the catalog does not
    /// know yet too.
    File { register_new: bool },
    /// Import every file below a directory (`cairn node scan`).
    Scan { register_new: bool },
}

impl Tx<'_> {
    /// Creates a pending copy request unless an equal one is already pending or active.
    /// Returns the new id, or `None` when it was already requested.
    pub fn create_copy_request(
        &mut self,
        req: NewCopyRequest,
        now: i64,
    ) -> Result<Option<RequestId>> {
        Ok(self.create_copy_requests(&[req], now)?.pop().flatten())
    }

    /// [`Tx::create_copy_request`] for many requests, in a few statements rather than two
    /// per request (a `node sync` of 10,000 files spent 50 ms on them): one lookup of the
    /// requests already pending or active per chunk of files, and one `INSERT` per chunk of
    /// new ones. Returns, for each request in order, its new id, or `None` when it was
    /// already requested (by an earlier request or an equal one earlier in `reqs`).
    pub fn create_copy_requests(
        &mut self,
        reqs: &[NewCopyRequest],
        now: i64,
    ) -> Result<Vec<Option<RequestId>>> {
        use std::collections::{HashMap, HashSet};
        type Key = (FileId, NodeId, GroupId);
        let key = |r: &NewCopyRequest| (r.file_id, r.from_node, r.to_group);
        let mut taken: HashSet<Key> = HashSet::with_capacity(reqs.len());
        for chunk in reqs.chunks(super::files::IN_CHUNK) {
            let args: Vec<Value> = chunk.iter().map(|r| Value::from(r.file_id)).collect();
            for row in self.raw(
                &format!(
                    "SELECT file_id, from_node, to_group FROM copy_request \
                     WHERE file_id IN ({}) AND state IN ('pending', 'active')",
                    super::in_list(chunk.len())
                ),
                &args,
            )? {
                taken.insert((row.get(0)?, row.get(1)?, row.get(2)?));
            }
        }
        // The new ones, each once, in order.
        let new: Vec<&NewCopyRequest> = reqs.iter().filter(|r| taken.insert(key(r))).collect();
        let mut ids: HashMap<Key, RequestId> = HashMap::with_capacity(new.len());
        for chunk in new.chunks(super::files::IN_CHUNK) {
            let mut args: Vec<Value> = Vec::with_capacity(4 * chunk.len());
            for r in chunk {
                args.extend([
                    r.file_id.into(),
                    r.from_node.into(),
                    r.to_group.into(),
                    now.into(),
                ]);
            }
            let rows = vec!["(?, ?, ?, 'pending', ?)"; chunk.len()].join(", ");
            for row in self.raw(
                &format!(
                    "INSERT INTO copy_request (file_id, from_node, to_group, state, created_at) \
                     VALUES {rows} RETURNING id, file_id, from_node, to_group"
                ),
                &args,
            )? {
                ids.insert((row.get(1)?, row.get(2)?, row.get(3)?), row.get(0)?);
            }
        }
        // `remove`: a request equal to an earlier one of `reqs` gets `None`.
        Ok(reqs.iter().map(|r| ids.remove(&key(r))).collect())
    }

    pub fn copy_request(&mut self, id: RequestId) -> Result<CopyRequest> {
        self.row(&copy_request_query("WHERE r.id = ?"), params![id])?
            .ok_or_else(|| CatalogError::not_found("copy request", format!("#{id}")))
    }

    /// Copy requests selected by `filter`, oldest first.
    pub fn copy_requests(&mut self, filter: &CopyRequestFilter) -> Result<Vec<CopyRequest>> {
        let mut args: Vec<Value> = Vec::new();
        let mut sql = copy_request_query("WHERE 1 = 1");
        if !filter.states.is_empty() {
            sql.push_str(&format!(
                " AND r.state IN ({})",
                vec!["?"; filter.states.len()].join(", ")
            ));
            args.extend(filter.states.iter().map(|s| Value::from(*s)));
        }
        if let Some(n) = filter.node {
            sql.push_str(
                " AND (r.from_node = ? OR r.to_group = (SELECT group_id FROM node WHERE id = ?))",
            );
            args.push(n.into());
            args.push(n.into());
        }
        sql.push_str(" ORDER BY r.id");
        if let Some(l) = filter.limit {
            sql.push_str(" LIMIT ?");
            args.push(l.into());
        }
        self.rows(&sql, &args)
    }

    /// Number of pending or active requests reading from the copy of `file_id` on `node_id`.
    pub fn pending_reads(&mut self, file_id: FileId, node_id: NodeId) -> Result<u64> {
        self.scalar(
            "SELECT COUNT(*) FROM copy_request WHERE file_id = ? AND from_node = ? \
             AND state IN ('pending', 'active')",
            params![file_id, node_id],
        )
    }

    /// Pending/active copy requests from `node_id` grouped by destination group:
    /// (group name, count, total bytes).
    pub fn outbound_summary(&mut self, node_id: NodeId) -> Result<Vec<(String, u64, u64)>> {
        let rows = self.raw(
            "SELECT g.name, COUNT(*), SUM(f.size) FROM copy_request r \
             JOIN storage_group g ON g.id = r.to_group JOIN file f ON f.id = r.file_id \
             WHERE r.from_node = ? AND r.state IN ('pending', 'active') \
             GROUP BY g.name ORDER BY g.name",
            params![node_id],
        )?;
        rows.iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get::<Option<u64>>(2)?.unwrap_or(0))))
            .collect()
    }

    /// Claims a pending request for `host` (pending → active). True if this caller won it.
    pub fn claim_copy_request(&mut self, id: RequestId, host: &str, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE copy_request SET state = 'active', claimed_by = ?, started_at = ?, \
             attempts = attempts + 1 WHERE id = ? AND state = 'pending' AND not_before <= ?",
            params![host, now, id, now],
        )?;
        Ok(n == 1)
    }

    /// [`Tx::claim_copy_request`] for several requests in one statement; returns those this
    /// caller won.
    pub fn claim_copy_requests(
        &mut self,
        ids: &[RequestId],
        host: &str,
        now: i64,
    ) -> Result<Vec<RequestId>> {
        let mut won = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(super::files::IN_CHUNK) {
            let mut args: Vec<Value> = vec![host.into(), now.into(), now.into()];
            args.extend(chunk.iter().map(|i| Value::from(*i)));
            for r in self.raw(
                &format!(
                    "UPDATE copy_request SET state = 'active', claimed_by = ?, started_at = ?, \
                     attempts = attempts + 1 WHERE state = 'pending' AND not_before <= ? \
                     AND id IN ({}) RETURNING id",
                    super::in_list(chunk.len())
                ),
                &args,
            )? {
                won.push(r.get(0)?);
            }
        }
        Ok(won)
    }

    /// Puts failed requests back in the queue with their attempts reset. `None` retries every
    /// failed request. Returns how many were requeued.
    pub fn retry_copy_requests(&mut self, id: Option<RequestId>) -> Result<u64> {
        match id {
            Some(id) => {
                let req = self.copy_request(id)?;
                if !matches!(req.state, RequestState::Failed | RequestState::Cancelled) {
                    return Err(CatalogError::Invalid(format!(
                        "copy request #{id} is {}, only failed or cancelled requests can be \
                         retried",
                        req.state
                    )));
                }
                self.exec(
                    "UPDATE copy_request SET state = 'pending', attempts = 0, not_before = 0, \
                     finished_at = NULL WHERE id = ?",
                    params![id],
                )
            }
            None => self.exec(
                "UPDATE copy_request SET state = 'pending', attempts = 0, not_before = 0, \
                 finished_at = NULL WHERE state = 'failed'",
                params![],
            ),
        }
    }

    /// Cancels a pending or active request.
    pub fn cancel_copy_request(&mut self, id: RequestId, now: i64) -> Result<()> {
        let req = self.copy_request(id)?;
        if !matches!(req.state, RequestState::Pending | RequestState::Active) {
            return Err(CatalogError::Invalid(format!(
                "copy request #{id} is {}, only pending or active requests can be cancelled",
                req.state
            )));
        }
        self.exec(
            "UPDATE copy_request SET state = 'cancelled', finished_at = ? WHERE id = ?",
            params![now, id],
        )?;
        Ok(())
    }

    /// Copy request counts by state.
    pub fn copy_request_counts(&mut self) -> Result<Vec<(RequestState, u64)>> {
        let rows = self.raw(
            "SELECT state, COUNT(*) FROM copy_request GROUP BY state ORDER BY state",
            params![],
        )?;
        rows.iter().map(|r| Ok((r.get(0)?, r.get(1)?))).collect()
    }

    /// Files with fewer than `min` healthy copies on archive nodes: below the archive rule
    /// (new files on their way to the archive included).
    pub fn files_below_archive_rule(&mut self, min: u64) -> Result<u64> {
        self.scalar(
            "SELECT COUNT(*) FROM file f WHERE (SELECT COUNT(*) FROM copy c \
             JOIN node n ON n.id = c.node_id \
             WHERE c.file_id = f.id AND c.has = 'yes' AND n.kind = 'archive') < ?",
            params![min],
        )
    }

    /// Copies waiting to be verified, and copies released for deletion but still there.
    pub fn copy_work_counts(&mut self) -> Result<(u64, u64)> {
        let verify = self.scalar(
            "SELECT COUNT(*) FROM copy WHERE verify_requested = 1 AND has <> 'no'",
            params![],
        )?;
        let release = self.scalar(
            "SELECT COUNT(*) FROM copy WHERE wants = 'release_now' AND has <> 'no'",
            params![],
        )?;
        Ok((verify, release))
    }

    /// Copy requests finished as done since `since`: (count, bytes moved).
    pub fn transfers_since(&mut self, since: i64) -> Result<(u64, u64)> {
        let rows = self.raw(
            "SELECT COUNT(*), SUM(bytes) FROM copy_request WHERE state = 'done' \
             AND finished_at >= ?",
            params![since],
        )?;
        let r = rows
            .first()
            .ok_or_else(|| CatalogError::Invalid("no totals".into()))?;
        Ok((r.get(0)?, r.get::<Option<u64>>(1)?.unwrap_or(0)))
    }

    // ---- import requests ----

    /// Import request counts by state (node initialisations included).
    pub fn import_request_counts(&mut self) -> Result<Vec<(RequestState, u64)>> {
        let rows = self.raw(
            "SELECT state, COUNT(*) FROM import_request GROUP BY state ORDER BY state",
            params![],
        )?;
        rows.iter().map(|r| Ok((r.get(0)?, r.get(1)?))).collect()
    }

    /// Creates an import request of `kind` for `path` on a node. An identical pending request
    /// is reused. Returns (id, created).
    pub fn create_import_request(
        &mut self,
        node_id: NodeId,
        path: &str,
        kind: ImportKind,
        now: i64,
    ) -> Result<(ImportId, bool)> {
        let (scan, register_new, init) = match kind {
            ImportKind::Init => (false, false, true),
            ImportKind::File { register_new } => (false, register_new, false),
            ImportKind::Scan { register_new } => (true, register_new, false),
        };
        let dup = self.raw(
            "SELECT id FROM import_request WHERE node_id = ? AND path = ? AND scan = ? \
             AND register_new = ? AND init = ? AND state = 'pending'",
            params![node_id, path, scan, register_new, init],
        )?;
        if let Some(r) = dup.first() {
            return Ok((r.get(0)?, false));
        }
        let id = self.insert(
            "INSERT INTO import_request (node_id, path, scan, register_new, init, state, \
             created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?) RETURNING id",
            params![node_id, path, scan, register_new, init, now],
        )?;
        Ok((id, true))
    }

    /// Import requests of a node (all nodes if `None`) in the given states, oldest first.
    pub fn import_requests(
        &mut self,
        node_id: Option<NodeId>,
        states: &[RequestState],
    ) -> Result<Vec<ImportRequest>> {
        let mut args: Vec<Value> = Vec::new();
        let mut sql = format!(
            "SELECT {} FROM {} WHERE 1 = 1",
            ImportRequest::COLUMNS,
            ImportRequest::FROM
        );
        if let Some(n) = node_id {
            sql.push_str(" AND i.node_id = ?");
            args.push(n.into());
        }
        if !states.is_empty() {
            sql.push_str(&format!(
                " AND i.state IN ({})",
                vec!["?"; states.len()].join(", ")
            ));
            args.extend(states.iter().map(|s| Value::from(*s)));
        }
        sql.push_str(" ORDER BY i.id");
        self.rows(&sql, &args)
    }
}
