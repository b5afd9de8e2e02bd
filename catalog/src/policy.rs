//! What a user may ask of files' copies: sync them into a group, clean (release) them from a
//! node, verify them on a node — for one file or for every file under a directory. The CLI's
//! `file sync|clean|verify` and the mount's `user.cairn.sync|clean|verify` attributes both
//! come here, so they cannot drift apart.
//!
//! Each function runs inside the caller's transaction and changes nothing but requests:
//! copy requests, a copy's `wants`, its `verify_requested`. cairnd does the work, under the
//! storage-graph rules ([`crate::rules`]); a clean here never deletes anything by itself
//! (invariant 3 is checked when cairnd releases the copy).
//!
//! What cannot be done is a typed [`Refusal`] (through [`CatalogError::Refused`]), and the
//! transaction then changes nothing: an unknown group or node, and — for one file — a file
//! with no copy to act on. A directory passes over the files that cannot take the action.

use crate::catalog::{FileFilter, NewCopyRequest, Tx};
pub use crate::error::Refusal;
use crate::error::{CatalogError, Result};
use crate::model::{CopyId, File, FileId, Has, NodeId, RequestId, Wants};

/// The files an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One file, by id.
    File(FileId),
    /// Every file at or below this directory path (`""`: the whole archive).
    Under(String),
}

/// Where a sync reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncSource<'a> {
    /// This node's healthy copy (`cairn file sync --from`); a node of the target group is
    /// refused.
    Node(&'a str),
    /// Any healthy copy, one on these nodes (this host's) first.
    Best { prefer: &'a [NodeId] },
}

/// A sync to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOrder<'a> {
    /// The group to copy into.
    pub group: &'a str,
    pub from: SyncSource<'a>,
    /// Request a copy even of files the group holds already.
    pub force: bool,
}

/// What [`sync`] asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// New copy requests: (request id, file size).
    pub requested: Vec<(RequestId, u64)>,
    /// Files with an identical request pending already.
    pub pending: u64,
    /// Files the group holds a healthy copy of already (not requested unless forced).
    pub present: u64,
    /// Files with no healthy copy to read from (only a directory passes over these).
    pub no_source: u64,
}

fn refused(r: Refusal) -> CatalogError {
    CatalogError::Refused(r)
}

fn files(tx: &mut Tx<'_>, scope: &Scope) -> Result<Vec<File>> {
    match scope {
        Scope::File(id) => Ok(vec![tx.file_by_id(*id)?]),
        Scope::Under(path) => tx.files(&FileFilter {
            path_prefix: (!path.is_empty()).then(|| path.clone()),
            ..FileFilter::default()
        }),
    }
}

/// Asks for copies of the files in `scope` into `order.group`.
pub fn sync(tx: &mut Tx<'_>, scope: &Scope, order: SyncOrder<'_>, now: i64) -> Result<Synced> {
    let single = matches!(scope, Scope::File(_));
    let source = match order.from {
        SyncSource::Node(name) => Some(
            tx.node_by_name(name)?
                .ok_or_else(|| refused(Refusal::NoSuchNode(name.to_owned())))?,
        ),
        SyncSource::Best { .. } => None,
    };
    let group = tx
        .group_by_name(order.group)?
        .ok_or_else(|| refused(Refusal::NoSuchGroup(order.group.to_owned())))?;
    if let Some(src) = &source
        && src.group_id == group.id
    {
        return Err(refused(Refusal::SameGroup {
            node: src.name.clone(),
            group: group.name.clone(),
        }));
    }
    let members: Vec<NodeId> = tx.group_nodes(group.id)?.iter().map(|n| n.id).collect();
    let mut out = Synced::default();
    let mut wanted = Vec::new();
    for f in files(tx, scope)? {
        let copies = tx.copies_of(f.id)?;
        let healthy: Vec<_> = copies.iter().filter(|c| c.has == Has::Yes).collect();
        let present = healthy.iter().any(|c| members.contains(&c.node_id));
        let from = match (&source, order.from) {
            (Some(src), _) => {
                let has = healthy.iter().any(|c| c.node_id == src.id);
                if !has && single {
                    return Err(refused(Refusal::NoHealthyCopyOn {
                        path: f.path.clone(),
                        node: src.name.clone(),
                    }));
                }
                has.then_some(src.id)
            }
            (None, SyncSource::Best { prefer }) => {
                if present && !order.force {
                    out.present += 1;
                    continue;
                }
                let best = healthy
                    .iter()
                    .find(|c| prefer.contains(&c.node_id))
                    .or_else(|| healthy.first());
                if best.is_none() && single {
                    return Err(refused(Refusal::NoSource {
                        path: f.path.clone(),
                    }));
                }
                best.map(|c| c.node_id)
            }
            (None, SyncSource::Node(_)) => unreachable!("a named source was looked up"),
        };
        let Some(from) = from else {
            out.no_source += 1;
            continue;
        };
        if present && !order.force {
            out.present += 1;
            continue;
        }
        wanted.push((
            NewCopyRequest {
                file_id: f.id,
                from_node: from,
                to_group: group.id,
            },
            f.size,
        ));
    }
    let reqs: Vec<NewCopyRequest> = wanted.iter().map(|(r, _)| *r).collect();
    for (id, (_, size)) in tx
        .create_copy_requests(&reqs, now)?
        .into_iter()
        .zip(&wanted)
    {
        match id {
            Some(id) => out.requested.push((id, *size)),
            None => out.pending += 1,
        }
    }
    Ok(out)
}

/// Sets `wants` on the copies of the files in `scope` on `node` (a release is carried out by
/// cairnd, never below the archive-copies rule). Returns how many copies changed.
pub fn clean(tx: &mut Tx<'_>, scope: &Scope, node: &str, wants: Wants, now: i64) -> Result<u64> {
    let ids = present_copies(tx, scope, node)?;
    tx.set_wants(&ids, wants, now)
}

/// Asks cairnd to check the copies of the files in `scope` on `node` against their md5.
/// Returns how many were not asked already.
pub fn verify(tx: &mut Tx<'_>, scope: &Scope, node: &str, now: i64) -> Result<u64> {
    let ids = present_copies(tx, scope, node)?;
    tx.request_verify(&ids, now)
}

/// The copies on `node` of the files in `scope` that are not gone.
fn present_copies(tx: &mut Tx<'_>, scope: &Scope, node: &str) -> Result<Vec<CopyId>> {
    let nd = tx
        .node_by_name(node)?
        .ok_or_else(|| refused(Refusal::NoSuchNode(node.to_owned())))?;
    let single = matches!(scope, Scope::File(_));
    let mut ids = Vec::new();
    for f in files(tx, scope)? {
        match tx.copy_on(f.id, nd.id)? {
            Some(c) if c.has != Has::No => ids.push(c.id),
            _ if single => {
                return Err(refused(Refusal::NoCopyOn {
                    path: f.path,
                    node: node.to_owned(),
                }));
            }
            _ => {}
        }
    }
    Ok(ids)
}
