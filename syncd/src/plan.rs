//! The second half of a pass of the main loop: which work is due on this host's available
//! nodes. It only reads the catalog ([`crate::refresh`] made the pass's writes before it).
//!
//! Work is: init, import and scan requests; releases (marked `release_now`, or forced by space
//! pressure, oldest first and only as many as needed) except those refused lately; copies to
//! verify (requested, or older than `auto_verify`); and copy requests into the groups of the
//! available nodes that have a source ([`Sources`]). Small copy requests from one node into
//! one group, to be pulled from another host over HTTP, go together as one task
//! ([`batches`]), to be pulled in one request; local copies stay one task each, so that
//! they run in parallel.

use std::collections::HashSet;

use anyhow::Result;
use cairn_catalog::Catalog;
use cairn_catalog::catalog::CopyWork;
use cairn_catalog::model::{CopyId, CopyRequest, GroupId, Node, NodeId};
use cairn_catalog::rules;
use cairn_catalog::units::{format_size, now};
use tracing::{debug, info};

use crate::nodes::Nodes;
use crate::pullbatch;
use crate::refresh::Refreshed;
use crate::sources::Sources;
use crate::tasks::Task;
use crate::watch::WatchEvent;

/// How much of each kind of work one pass takes: `daemon.workers` × 8 (× 32 for copies, so
/// that each worker can have a full batch of small files).
pub fn batch(workers: usize) -> u64 {
    workers as u64 * 8
}

/// The work that auto-import events call for. Events of a node that is not available, or no
/// longer watched, are dropped.
pub fn events(
    nodes: &Nodes,
    watched: impl Fn(NodeId) -> bool,
    events: Vec<(NodeId, WatchEvent)>,
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
    refused: &HashSet<CopyId>,
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
    let ids: Vec<NodeId> = available.iter().map(|n| n.id).collect();
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
    let groups: Vec<GroupId> = {
        let mut g: Vec<GroupId> = available.iter().map(|n| n.group_id).collect();
        g.sort_unstable();
        g.dedup();
        g
    };
    let mut small = Vec::new();
    let due = cat.read(|tx| tx.due_copy_requests(&groups, t, batch * 32))?;
    let found = sources.for_requests(cat, &due)?;
    for (r, found) in due.into_iter().zip(found) {
        let Some(source) = found.into_iter().next() else {
            continue;
        };
        if r.size <= pullbatch::MAX_FILE && sources.pulled_in_batches(&source) {
            small.push(r);
        } else {
            work.push(Task::Copy { request: r });
        }
    }
    work.extend(batches(small));
    Ok(work)
}

/// Small copy requests grouped by source node and destination group, in batches of at most
/// [`pullbatch::MAX_FILES`] files and [`pullbatch::MAX_BYTES`] bytes, of about equal sizes;
/// a request alone is a single copy.
pub fn batches(small: Vec<CopyRequest>) -> Vec<Task> {
    let mut groups: Vec<((NodeId, GroupId), Vec<CopyRequest>)> = Vec::new();
    for r in small {
        let key = (r.from_node_id, r.to_group_id);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    let mut work = Vec::new();
    for (_, group) in groups {
        let n = group.len();
        let bytes: u64 = group.iter().map(|r| r.size).sum();
        let chunks = n
            .div_ceil(pullbatch::MAX_FILES)
            .max(bytes.div_ceil(pullbatch::MAX_BYTES) as usize)
            .max(1);
        let per_chunk = n.div_ceil(chunks);
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            let mut requests = Vec::with_capacity(per_chunk);
            let mut held = 0;
            while let Some(r) = group.next_if(|r| {
                requests.len() < per_chunk.min(pullbatch::MAX_FILES)
                    && (requests.is_empty() || held + r.size <= pullbatch::MAX_BYTES)
            }) {
                held += r.size;
                requests.push(r);
            }
            work.push(if requests.len() == 1 {
                Task::Copy {
                    request: requests.remove(0),
                }
            } else {
                Task::CopyBatch { requests }
            });
        }
    }
    work
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

#[cfg(test)]
mod tests {
    use cairn_catalog::model::{FileId, RequestId, RequestState};

    use super::*;

    fn request(id: i64, from: i64, to: i64, size: u64) -> CopyRequest {
        CopyRequest {
            id: RequestId(id),
            file_id: FileId(id),
            path: format!("f{id}"),
            size,
            from_node: format!("n{from}"),
            to_group: format!("g{to}"),
            from_node_id: NodeId(from),
            to_group_id: GroupId(to),
            state: RequestState::Pending,
            attempts: 0,
            last_error: None,
            claimed_by: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            bytes: None,
            seconds: None,
        }
    }

    fn shape(work: &[Task]) -> Vec<usize> {
        work.iter().map(|t| t.keys().len()).collect()
    }

    #[test]
    fn small_requests_are_batched_by_source_node_and_destination_group() {
        let mut small: Vec<CopyRequest> = (0..10).map(|i| request(i, 1, 2, 4096)).collect();
        small.push(request(10, 3, 2, 4096));
        small.push(request(11, 1, 4, 4096));
        small.push(request(12, 1, 4, 4096));
        let work = batches(small);
        assert_eq!(shape(&work), vec![10, 1, 2]);
        assert!(matches!(work[1], Task::Copy { .. }), "a request alone");
    }

    #[test]
    fn batches_respect_the_file_and_byte_caps_in_about_equal_parts() {
        let n = pullbatch::MAX_FILES + 10;
        let work = batches((0..n as i64).map(|i| request(i, 1, 2, 4096)).collect());
        assert_eq!(shape(&work), vec![133, 133]);
        let big = pullbatch::MAX_FILE;
        let fit = (pullbatch::MAX_BYTES / big) as usize;
        let work = batches((0..fit as i64 + 1).map(|i| request(i, 1, 2, big)).collect());
        assert_eq!(work.len(), 2);
        assert!(shape(&work).iter().all(|&k| k <= fit), "{:?}", shape(&work));
    }

    #[test]
    fn a_batch_may_start_two_over_the_node_cap_and_a_single_copy_may_not() {
        let running = crate::tasks::Running::default();
        let batch = |first: i64| Task::CopyBatch {
            requests: (first..first + 3).map(|i| request(i, 1, 2, 4096)).collect(),
        };
        let single = Task::Copy {
            request: request(100, 1, 2, 1 << 30),
        };
        for task in [batch(0), batch(10)] {
            assert!(running.may_start(&task, 2));
            running.start(&task);
        }
        assert!(!running.may_start(&single, 2), "the node has its two tasks");
        for first in [20, 30] {
            assert!(running.may_start(&batch(first), 2), "batches on the wire");
            running.start(&batch(first));
        }
        assert!(!running.may_start(&batch(40), 2), "but two more at most");
    }
}
