//! Where a file can be read from: the choice of a source copy for a copy request or a fetch
//! into the cache, and the record of pulls that failed per peer host.
//!
//! Sources come best first: the requested node if it is on this host, other copies on this
//! host, then copies on other hosts — those with the fewest failed pulls since their last
//! success first. A pull from another host needs its cairnd's address (HTTP) or a login and a
//! root (rsync). A transport disk takes copies only from the host it is plugged into.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_catalog::Catalog;
use cairn_catalog::catalog::SourceCopy;
use cairn_catalog::config::TransferMethod;
use cairn_catalog::error::Result;
use cairn_catalog::model::{CopyRequest, FileId, GroupId, IoClass, NodeId};

use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::transfer::{Location, Source};

/// The file a source is wanted for.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub file_id: FileId,
    pub path: &'a str,
    pub size: u64,
}

/// Source choice for this host.
pub struct Sources {
    host: String,
    method: TransferMethod,
    nodes: Arc<Nodes>,
    metrics: Arc<Metrics>,
    /// Failed pulls per peer host since its last success.
    peer_failures: Mutex<HashMap<String, u32>>,
}

impl Sources {
    pub fn new(
        host: String,
        method: TransferMethod,
        nodes: Arc<Nodes>,
        metrics: Arc<Metrics>,
    ) -> Sources {
        Sources {
            host,
            method,
            nodes,
            metrics,
            peer_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a copy from `source` can go in a batched pull: from another host, over HTTP
    /// (a copy on this host, or a pull by rsync, goes alone).
    pub fn pulled_in_batches(&self, source: &Source) -> bool {
        matches!(source.location, Location::Remote { .. }) && self.method == TransferMethod::Http
    }

    /// Where a requested file can be read from, best first.
    pub fn for_request(&self, cat: &mut Catalog, r: &CopyRequest) -> Result<Vec<Source>> {
        Ok(self
            .for_requests(cat, std::slice::from_ref(r))?
            .pop()
            .unwrap_or_default())
    }

    /// [`Sources::for_request`] of each of `requests`, read in one transaction (a query per
    /// destination group, and one for the copies of all their files).
    pub fn for_requests(
        &self,
        cat: &mut Catalog,
        requests: &[CopyRequest],
    ) -> Result<Vec<Vec<Source>>> {
        let (local_only, copies) = cat.read(|tx| {
            let mut transport: HashMap<&str, bool> = HashMap::new();
            let mut local_only = Vec::with_capacity(requests.len());
            for r in requests {
                let t = match transport.get(r.to_group.as_str()) {
                    Some(t) => *t,
                    None => {
                        let t = tx.group(&r.to_group)?.io_class == IoClass::Transport;
                        transport.insert(&r.to_group, t);
                        t
                    }
                };
                local_only.push(t);
            }
            let ids: Vec<FileId> = requests.iter().map(|r| r.file_id).collect();
            Ok((local_only, tx.source_copies_of(&ids)?))
        })?;
        Ok(requests
            .iter()
            .zip(local_only)
            .map(|(r, local_only)| {
                let wanted = Wanted {
                    file_id: r.file_id,
                    path: &r.path,
                    size: r.size,
                };
                // A transport disk takes copies only from the host it is plugged into.
                self.rank(
                    copies.get(&r.file_id).cloned().unwrap_or_default(),
                    wanted,
                    Some(r.to_group_id),
                    Some(r.from_node_id),
                    local_only,
                )
            })
            .collect())
    }

    /// Where a file can be read from, best first: `preferred` if it is here, other copies here,
    /// then copies on other hosts (unless `local_only`), fewest recent failures first. Copies in
    /// `exclude_group` (the destination of a copy) are not sources.
    pub fn for_file(
        &self,
        cat: &mut Catalog,
        wanted: Wanted<'_>,
        exclude_group: Option<GroupId>,
        preferred: Option<NodeId>,
        local_only: bool,
    ) -> Result<Vec<Source>> {
        let copies = cat.read(|tx| tx.source_copies(wanted.file_id))?;
        Ok(self.rank(copies, wanted, exclude_group, preferred, local_only))
    }

    /// `copies` of a file ranked as [`Sources::for_file`] says.
    fn rank(
        &self,
        copies: Vec<SourceCopy>,
        Wanted { path, size, .. }: Wanted<'_>,
        exclude_group: Option<GroupId>,
        preferred: Option<NodeId>,
        local_only: bool,
    ) -> Vec<Source> {
        let failures = self
            .peer_failures
            .lock()
            .expect("peer failures lock")
            .clone();
        let mut ranked: Vec<((u8, u32, bool), Source)> = Vec::new();
        for c in copies
            .into_iter()
            .filter(|c| Some(c.group_id) != exclude_group && !c.paused)
        {
            let requested = Some(c.node_id) != preferred;
            if let Some(n) = self.nodes.get(c.node_id) {
                let full = PathBuf::from(n.root.unwrap_or_default()).join(path);
                ranked.push((
                    (0, 0, requested),
                    Source {
                        node_id: c.node_id,
                        node: c.node,
                        copy_id: c.copy_id,
                        location: Location::Local(full),
                    },
                ));
            } else if let (false, true, Some(host)) = (local_only, c.active, c.host.clone())
                && host != self.host
            {
                // A pull over HTTP needs the host's cairnd address; one over rsync, a login.
                let rsync = c.root.as_deref().map(|root| {
                    let at = c.login_address.clone().unwrap_or_else(|| host.clone());
                    let user = c
                        .login_user
                        .as_deref()
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default();
                    format!("{user}{at}:{}", Path::new(root).join(path).display())
                });
                let usable = match self.method {
                    TransferMethod::Rsync => rsync.is_some(),
                    TransferMethod::Http => c.address.is_some(),
                };
                if !usable {
                    continue;
                }
                let fails = failures.get(&host).copied().unwrap_or(0);
                ranked.push((
                    (1, fails, requested),
                    Source {
                        node_id: c.node_id,
                        node: c.node.clone(),
                        copy_id: c.copy_id,
                        location: Location::Remote {
                            host,
                            address: c.address.unwrap_or_default(),
                            node: c.node,
                            path: path.to_owned(),
                            size,
                            rsync,
                        },
                    },
                ));
            }
        }
        ranked.sort_by_key(|(k, _)| *k);
        ranked.into_iter().map(|(_, s)| s).collect()
    }

    /// Records how a pull from peer `host` went: a failure puts its copies behind other
    /// hosts' until a pull from it succeeds again.
    pub fn note_pull(&self, host: &str, ok: bool) {
        let mut f = self.peer_failures.lock().expect("peer failures lock");
        if ok {
            f.remove(host);
        } else {
            *f.entry(host.to_owned()).or_default() += 1;
        }
        let m = &self.metrics;
        Metrics::add(if ok { &m.pulls_ok } else { &m.pulls_failed }, 1);
    }
}
