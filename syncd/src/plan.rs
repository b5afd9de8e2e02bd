//! The second half of a pass of the main loop: which work is due on this host's available
//! nodes. It only reads the catalog ([`crate::refresh`] made the pass's writes before it).
//!
//! Work is: init, import and scan requests; releases (marked `release_now`, or forced by space
//! pressure, oldest first and only as many as needed) except those refused lately; copies to
//! verify (requested, or older than `auto_verify`); and copy requests into the groups of the
//! available nodes that have a source ([`Sources`]).

use std::collections::HashSet;

use anyhow::Result;
use cairn_catalog::Catalog;
use cairn_catalog::catalog::CopyWork;
use cairn_catalog::model::{Id, Node};
use cairn_catalog::rules;
use cairn_catalog::units::{format_size, now};
use tracing::{debug, info};

use crate::nodes::Nodes;
use crate::refresh::Refreshed;
use crate::sources::Sources;
use crate::tasks::Task;
use crate::watch::WatchEvent;

/// How much of each kind of work one pass takes: `daemon.workers` × 8 (× 32 for copies).
pub fn batch(workers: usize) -> u64 {
    workers as u64 * 8
}

/// The work that auto-import events call for. Events of a node that is not available, or no
/// longer watched, are dropped.
pub fn events(
    nodes: &Nodes,
    watched: impl Fn(Id) -> bool,
    events: Vec<(Id, WatchEvent)>,
) -> Vec<Task> {
    let mut work = Vec::new();
    for (node_id, ev) in events {
        if nodes.get(node_id).is_none() || !watched(node_id) {
            debug!("Dropping watch event {ev:?} of node #{node_id}: not watched now.");
            continue;
        }
        debug!("Watch event {ev:?} on node #{node_id}.");
        work.push(match ev {
            WatchEvent::FileReady(p) => Task::AutoImport {
                node_id,
                path: p.to_string_lossy().into_owned(),
            },
            WatchEvent::DirCreated(p) => Task::Scan {
                node_id,
                request: None,
                path: p.to_string_lossy().into_owned(),
                register_new: true,
            },
            WatchEvent::Overflow => Task::Scan {
                node_id,
                request: None,
                path: ".".into(),
                register_new: true,
            },
        });
    }
    work
}

/// The due work of this host's available nodes, from the catalog.
pub fn plan(
    cat: &mut Catalog,
    nodes: &Nodes,
    refreshed: &Refreshed,
    refused: &HashSet<Id>,
    sources: &Sources,
    batch: u64,
) -> Result<Vec<Task>> {
    let t = now();
    let mut work = Vec::new();
    let available: Vec<Node> = nodes
        .available()
        .into_iter()
        .filter(|n| !n.paused && !refreshed.host_paused)
        .collect();
    let ids: Vec<Id> = available.iter().map(|n| n.id).collect();
    let mut import_nodes = ids.clone();
    import_nodes.extend(&refreshed.uninitialised);
    for r in cat.read(|tx| tx.due_import_requests(&import_nodes))? {
        let task = if r.init {
            Task::Init {
                request: r.id,
                node_id: r.node_id,
            }
        } else if !ids.contains(&r.node_id) {
            continue;
        } else if r.scan {
            Task::Scan {
                node_id: r.node_id,
                request: Some(r.id),
                path: r.path.clone(),
                register_new: r.register_new,
            }
        } else {
            Task::Import {
                node_id: r.node_id,
                request: Some(r.id),
                path: r.path.clone(),
                register_new: r.register_new,
            }
        };
        work.push(task);
    }
    for n in &available {
        let releases = cat
            .read(|tx| tx.copies_to_release(n.id, batch))?
            .into_iter()
            .chain(space_pressure(cat, n)?)
            .filter(|w| !refused.contains(&w.copy.id));
        for w in releases {
            work.push(Task::Release {
                node_id: n.id,
                copy: w,
            });
        }
        for w in cat.read(|tx| tx.copies_to_verify(n.id, n.auto_verify, t, batch))? {
            work.push(Task::Verify {
                node_id: n.id,
                copy: w,
            });
        }
    }
    let groups: Vec<Id> = {
        let mut g: Vec<Id> = available.iter().map(|n| n.group_id).collect();
        g.sort_unstable();
        g.dedup();
        g
    };
    for r in cat.read(|tx| tx.due_copy_requests(&groups, t, batch * 4))? {
        if sources.has_source(cat, &r)? {
            work.push(Task::Copy { request: r });
        }
    }
    Ok(work)
}

/// Discretionary releases when a node is short of space: oldest first, only as much as needed.
fn space_pressure(cat: &mut Catalog, node: &Node) -> Result<Vec<CopyWork>> {
    let (Some(avail), Some(capacity)) = (node.avail, node.capacity) else {
        return Ok(Vec::new());
    };
    let floor = rules::MAX_FULL_FRACTION;
    let need_for_fraction = ((capacity as f64 * (1.0 - floor)) as u64).saturating_sub(avail);
    let need_for_min = node.min_avail.map_or(0, |m| m.saturating_sub(avail));
    let need = need_for_fraction.max(need_for_min);
    if need == 0 {
        return Ok(Vec::new());
    }
    let candidates = cat.read(|tx| tx.copies_releasable_when_needed(node.id))?;
    let picked = rules::choose_discretionary(
        &candidates
            .iter()
            .map(|c| rules::ReleaseCandidate {
                copy_id: c.copy.id,
                size: c.size,
                added_at: c.copy.added_at,
            })
            .collect::<Vec<_>>(),
        need,
    );
    if !picked.is_empty() {
        info!(
            "Node \"{}\" needs {} more free space: releasing {} copies.",
            node.name,
            format_size(need),
            picked.len()
        );
    }
    Ok(candidates
        .into_iter()
        .filter(|c| picked.contains(&c.copy.id))
        .collect())
}
