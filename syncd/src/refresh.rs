//! The first half of a pass of the main loop: what this host tells the catalog, and what it
//! learns about its own nodes.
//!
//! Transport disks are taken over or let go ([`crate::transport`]); the host's last-seen time
//! is recorded; each node of this host is checked — active? root there? marker names this node
//! and catalog? — and only then is it *available* ([`Nodes`]), with its free space recorded.
//! Auto-import watches start and stop with the nodes that want them. Idle acquisitions are
//! closed, and copies due for a delayed auto-clean are marked for release. Every catalog write
//! of a pass happens here; [`crate::plan`] then only reads.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use cairn_catalog::Catalog;
use cairn_catalog::model::{CopyId, Node, NodeId, Wants};
use cairn_catalog::units::{HumanDuration, now};
use cairn_node::{NodeRoot, RootState};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::nodes::{Host, Nodes};
use crate::standing::Standing;
use crate::tasks::Task;
use crate::watch::{WatchEvent, Watcher};

/// The settings a refresh follows.
pub struct RefreshConfig {
    /// `transport.watch`.
    pub transport_watch: Vec<PathBuf>,
    /// `import.acq_idle`.
    pub acq_idle: Option<HumanDuration>,
}

/// What refreshing remembers between passes.
#[derive(Default)]
pub struct RefreshState {
    /// Last reported state per node, so a problem is logged when it starts, not every loop.
    last_state: HashMap<NodeId, String>,
    /// That the host has no active node was logged (once, until one is active again).
    said_no_active: bool,
    /// That the host is paused was logged (once, until it is resumed).
    said_paused: bool,
    watchers: HashMap<NodeId, WatcherHandle>,
    loops: u64,
    disks: crate::disks::Disks,
    /// Field copies a delayed auto-clean keeps because their group copy failed verification.
    blocked: Standing<CopyId>,
    /// Why the archive-wide gauges of `/metrics` could not be read, while that lasts.
    pub gauges_failure: Standing<()>,
    /// The second of the last write of this host's `last_seen`, of each node's free space,
    /// and of each node's journal report with what it said: a pass in the same second (a
    /// nudge from the mount after each import, a task's end) writes them again only in a
    /// later one, or the report if it changed. (Written at every pass, they were two or
    /// three commits a pass, each waited for by the mount's import.)
    written: HashMap<(Written, Option<NodeId>), (i64, [i64; 2])>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Written {
    LastSeen,
    Space,
    Journal,
}

impl RefreshState {
    /// Whether what `what` writes (saying `says`) is due in second `t` (it is then taken as
    /// written).
    fn due(&mut self, what: Written, node: Option<NodeId>, t: i64, says: [i64; 2]) -> bool {
        self.written.insert((what, node), (t, says)) != Some((t, says))
    }

    /// Whether node `id`'s root is watched for auto-import now.
    pub fn is_watched(&self, id: NodeId) -> bool {
        self.watchers.contains_key(&id)
    }

    /// Stops every watch (shutdown).
    pub fn stop_watching(&mut self) {
        self.watchers.clear();
    }
}

struct WatcherHandle {
    stop: Arc<AtomicBool>,
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a refresh found.
pub struct Refreshed {
    /// Tidy-ups of nodes that became available, and catch-up scans of new watches.
    pub work: Vec<Task>,
    /// Active nodes with a root that is not usable: their init requests still get an answer.
    pub uninitialised: Vec<NodeId>,
    /// The host is paused: no new work for any of its nodes.
    pub host_paused: bool,
}

/// Checks this host's nodes and records what the catalog should know; see the module note.
pub fn refresh(
    cat: &mut Catalog,
    host: &Host,
    nodes: &Nodes,
    config: &RefreshConfig,
    st: &mut RefreshState,
    events: &mpsc::UnboundedSender<(NodeId, WatchEvent)>,
    writes: bool,
) -> Result<Refreshed> {
    st.loops += 1;
    let t = now();
    // (A transport disk is taken on by writing to the catalog: not while it cannot be.)
    if writes
        && let Err(e) = crate::disks::detect(host, &config.transport_watch, cat, &mut st.disks)
    {
        warn!("Transport disk detection failed: {e:#}");
    }
    let rows = if writes && st.due(Written::LastSeen, None, t, [0; 2]) {
        cat.write(|tx| {
            tx.touch_host(host.id, t)?;
            tx.nodes_on_host(host.id)
        })?
    } else {
        cat.read(|tx| tx.nodes_on_host(host.id))?
    };
    nodes.set_all(rows.iter().map(|n| (n.id, n.group_id)).collect());
    if rows.iter().all(|n| !n.active) && !st.said_no_active {
        warn!("No active nodes on host ({})!", host.name);
        st.said_no_active = true;
    } else if rows.iter().any(|n| n.active) {
        st.said_no_active = false;
    }
    let mut found = Refreshed {
        work: Vec::new(),
        uninitialised: Vec::new(),
        host_paused: false,
    };
    let mut seen = HashSet::new();
    for node in &rows {
        seen.insert(node.id);
        let (state_word, ready) = node_state(&host.catalog_id, node);
        if st.last_state.get(&node.id) != Some(&state_word) {
            log_node_state(node, &state_word);
            st.last_state.insert(node.id, state_word.clone());
        }
        if !ready && node.active && node.root.is_some() {
            // Not usable, but an init request for it gets an answer (done or why not).
            found.uninitialised.push(node.id);
        }
        let was = nodes.get(node.id).is_some();
        if !ready {
            if was {
                info!("Node \"{}\" no longer available.", node.name);
                nodes.remove(node.id);
            }
            st.watchers.remove(&node.id);
            continue;
        }
        let root = PathBuf::from(node.root.as_deref().unwrap_or("/"));
        let mut fresh = node.clone();
        match NodeRoot::new(&root).space().map(|s| (s.avail, s.total)) {
            Ok((avail, capacity)) => {
                if writes && st.due(Written::Space, Some(node.id), t, [0; 2]) {
                    cat.write(|tx| tx.record_node_space(node.id, avail, capacity, t))?;
                }
                (fresh.avail, fresh.capacity, fresh.last_checked) =
                    (Some(avail), Some(capacity), Some(t));
            }
            Err(e) => warn!(
                "Node \"{}\": cannot read free space of {}: {e}",
                node.name,
                root.display()
            ),
        }
        if writes {
            report_journal(cat, st, node, &root, t)?;
        }
        nodes.insert(fresh);
        if !was {
            found.work.push(Task::Tidy { node_id: node.id });
        }
        // Auto-import: a watcher while the node wants it, with a catch-up scan at start.
        match (node.auto_import, st.watchers.contains_key(&node.id)) {
            (true, false) => match start_watcher(node, &root, events.clone()) {
                Ok(h) => {
                    info!(
                        "Watching node \"{}\" root \"{}\" for auto import.",
                        node.name,
                        root.display()
                    );
                    st.watchers.insert(node.id, h);
                    found.work.push(Task::Scan {
                        node_id: node.id,
                        request: None,
                        path: ".".into(),
                        register_new: true,
                    });
                }
                Err(e) => warn!(
                    "Node \"{}\": cannot watch {}: {e}",
                    node.name,
                    root.display()
                ),
            },
            (false, true) => {
                st.watchers.remove(&node.id);
                info!("Stopped watching node \"{}\".", node.name);
            }
            _ => {}
        }
        if st.loops.is_multiple_of(60) && was {
            found.work.push(Task::Tidy { node_id: node.id });
        }
    }
    // Nodes moved to another host or deleted.
    nodes.retain(|id| seen.contains(&id));
    st.watchers.retain(|id, _| seen.contains(id));
    if !writes {
        // The catalog cannot be written: the nodes and their watches are all there is to do.
        return Ok(found);
    }

    if let Some(idle) = config.acq_idle {
        let secs = idle.0.as_secs() as i64;
        for name in cat.write(|tx| tx.close_idle_acqs(secs, t))? {
            info!("Acquisition \"{name}\" closed: no new file for {idle}.");
        }
    }
    // Paused nodes, and every node of a paused host, get no new work; queued requests wait
    // for the resume.
    found.host_paused = cat.read(|tx| tx.host(&host.name))?.paused;
    if found.host_paused && !st.said_paused {
        info!("Host \"{}\" is paused: no new work.", host.name);
        st.said_paused = true;
    } else if !found.host_paused {
        st.said_paused = false;
    }
    // Delayed auto-clean: release what has been in the target group long enough and was
    // verified there since it arrived. This host verifies its own copies in such a group once
    // they are old enough, so the rule finishes without a `node verify`; a copy that fails
    // keeps the field copy, which is reported.
    let working: Vec<Node> = nodes
        .available()
        .into_iter()
        .filter(|n| !n.paused && !found.host_paused)
        .collect();
    let now_i = std::time::Instant::now();
    let mut blocked_now = HashSet::new();
    for n in &working {
        let unverified = cat.read(|tx| tx.delayed_clean_unverified(n.id, t))?;
        if !unverified.is_empty() {
            let ids: Vec<CopyId> = unverified.iter().map(|(id, ..)| *id).collect();
            cat.write(|tx| tx.request_verify(&ids, t))?;
            for (_, path, field) in &unverified {
                info!(
                    "Delayed auto-clean of node \"{field}\": verifying {path} on {} before \
                     the copy there is released.",
                    n.name
                );
            }
        }
        for (copy_id, path, group) in cat.read(|tx| tx.delayed_clean_due(n.id, t))? {
            cat.write(|tx| tx.set_wants(&[copy_id], Wants::ReleaseNow, t))?;
            info!(
                "Delayed auto-clean: releasing {path} on {} (verified in group \"{group}\").",
                n.name
            );
        }
        for (copy_id, path, group) in cat.read(|tx| tx.delayed_clean_blocked(n.id, t))? {
            blocked_now.insert(copy_id);
            if st.blocked.holds(&copy_id, &group, now_i) {
                warn!(
                    "Delayed auto-clean: keeping {path} on {}: its copy in group \"{group}\" \
                     failed verification. Repair that copy (`cairn file sync`) or clean this \
                     one by hand.",
                    n.name
                );
            }
        }
    }
    st.blocked.retain(|id| blocked_now.contains(id));
    Ok(found)
}

fn node_state(catalog_id: &str, node: &Node) -> (String, bool) {
    if !node.active {
        return ("inactive".into(), false);
    }
    let Some(root) = node.root.as_deref() else {
        return ("no root".into(), false);
    };
    match NodeRoot::new(root).check(&node.name, catalog_id) {
        RootState::Ready => ("ready".into(), true),
        RootState::NotInitialised => ("uninitialised".into(), false),
        RootState::Missing => ("missing".into(), false),
        RootState::Foreign(m) => (
            format!("foreign node \"{}\" of catalog {}", m.node, m.catalog_id),
            false,
        ),
        RootState::Unreadable(e) => (format!("unreadable marker: {e}"), false),
    }
}

fn log_node_state(node: &Node, state: &str) {
    let root = node.root.as_deref().unwrap_or("-");
    let marker = NodeRoot::new(root).marker();
    let marker = marker.display();
    match state {
        "inactive" | "ready" => {}
        "no root" => warn!("Ignoring node \"{}\": it has no root.", node.name),
        "uninitialised" => warn!(
            "Ignoring node \"{}\": not initialised (no {marker}; run `cairn node init {}`).",
            node.name, node.name
        ),
        "missing" => warn!(
            "Ignoring node \"{}\": root \"{root}\" is not there.",
            node.name
        ),
        other if other.starts_with("foreign") => error!(
            "Refusing node \"{}\": the marker at {marker} names {other}; this is not the disk \
             the catalog expects there. Nothing will be written to it.",
            node.name
        ),
        other => error!("Refusing node \"{}\": {other}", node.name),
    }
}

fn start_watcher(
    node: &Node,
    root: &Path,
    tx: mpsc::UnboundedSender<(NodeId, WatchEvent)>,
) -> std::io::Result<WatcherHandle> {
    let mut watcher = Watcher::new(root)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let node_id = node.id;
    let name = node.name.clone();
    std::thread::Builder::new()
        .name(format!("watch-{name}"))
        .spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match watcher.wait(Duration::from_millis(250)) {
                    Ok(events) => {
                        for ev in events {
                            if stop2.load(Ordering::Relaxed) || tx.send((node_id, ev)).is_err() {
                                debug!("Watch thread of node \"{name}\" ends.");
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        warn!("Auto-import watch on node \"{name}\" failed: {e}");
                        let _ = tx.send((node_id, WatchEvent::Overflow));
                        return;
                    }
                }
            }
            debug!("Watch thread of node \"{name}\" ends.");
        })?;
    Ok(WatcherHandle { stop })
}

/// Reports how many files wait on the node to be registered (closed on the mount, or found by
/// cairnd while the catalog was out of reach), so that `cairn status` shows them wherever it
/// runs. A node with neither list has nothing to report.
fn report_journal(
    cat: &mut Catalog,
    st: &mut RefreshState,
    node: &Node,
    root: &Path,
    t: i64,
) -> Result<()> {
    match cairn_node::waiting::on_node(root) {
        Ok(Some(s)) => {
            let files = i64::try_from(s.files).unwrap_or(i64::MAX);
            let says = [files, s.oldest.unwrap_or(-1)];
            if st.due(Written::Journal, Some(node.id), t, says) {
                cat.write(|tx| tx.report_journal(node.id, s.files, s.oldest, t))?;
            }
        }
        Ok(None) => {}
        Err(e) => warn!("Node \"{}\": {e}", node.name),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass writes `last_seen` and a node's free space at most once a second (each node's
    /// on its own), and a node's journal report again in the same second only if it changed.
    #[test]
    fn what_a_pass_writes_is_written_once_a_second() {
        let mut st = RefreshState::default();
        let (a, b) = (Some(NodeId(1)), Some(NodeId(2)));
        let nothing = [0; 2];
        assert!(st.due(Written::LastSeen, None, 100, nothing));
        assert!(!st.due(Written::LastSeen, None, 100, nothing));
        assert!(st.due(Written::Space, a, 100, nothing));
        assert!(st.due(Written::Space, b, 100, nothing));
        assert!(!st.due(Written::Space, a, 100, nothing));
        assert!(st.due(Written::LastSeen, None, 101, nothing));
        assert!(st.due(Written::Space, a, 101, nothing));
        assert!(!st.due(Written::Space, a, 101, nothing));
        // The journal's report again in the same second only if it changed: five files
        // waiting, then none.
        assert!(st.due(Written::Journal, a, 100, [5, 90]));
        assert!(!st.due(Written::Journal, a, 100, [5, 90]));
        assert!(st.due(Written::Journal, a, 100, [0, -1]));
        assert!(!st.due(Written::Journal, a, 100, [0, -1]));
        assert!(st.due(Written::Journal, a, 101, [0, -1]));
    }
}
