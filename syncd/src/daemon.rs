//! The daemon's life: find this host's nodes, find work for them, run it on a bounded pool.
//!
//! Every `daemon.interval`, or at once when nudged (the unix socket, an inotify event, a task
//! finishing), the loop:
//! 1. checks each node of this host: active? root there? marker names this node and catalog?
//!    Only then is the node *available*; its free space goes into the catalog;
//! 2. gathers work for available nodes from the catalog: init/import/scan requests, copy
//!    requests into their groups, copies to verify or release, and auto-import events;
//! 3. dispatches it to at most `daemon.workers` blocking tasks, at most `daemon.node_workers`
//!    per node. Each unit of work has a key, so nothing runs twice at once on this host;
//!    requests are also claimed in the catalog (invariant 4), so no two hosts run one either.
//!
//! On shutdown no new work starts; running tasks see the cancel flag, abort cleanly (temp
//! files removed, requests given back) and the loop waits for them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_catalog::Pool;
use cairn_catalog::catalog::CopyWork;
use cairn_catalog::db::Patience;
use cairn_catalog::model::{Id, Node};
use cairn_catalog::units::now;
use cairn_catalog::{Catalog, Config};
use cairn_node::importer::Importer;
use cairn_node::{NodeRoot, RootState};
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{debug, error, info, warn};

use crate::http::Metrics;
use crate::lock::InstanceLock;
use crate::tasks::{self, Task};
use crate::transfer::{Puller, Transfer};
use crate::watch::{WatchEvent, Watcher};

/// What the tasks share.
pub struct Shared {
    pub config: Config,
    pub host: String,
    pub host_id: Id,
    pub catalog_id: String,
    pub pool: Pool,
    pub importer: Importer,
    pub transfer: Arc<dyn Transfer>,
    /// The bearer token of `transfer.token_file`, if there is one.
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Failed pulls per peer host since its last success: sources on hosts with fewer
    /// failures are tried first.
    pub peer_failures: Mutex<HashMap<String, u32>>,
    /// Copies whose release was refused (invariant 3), and when.
    pub refused: Mutex<HashMap<Id, Instant>>,
    /// Set at shutdown: tasks stop at their next check.
    pub cancel: AtomicBool,
    /// Nodes available now (checked, marker matches), by id.
    pub available: Mutex<HashMap<Id, Node>>,
    /// Every node of this host as of the last pass, available or not: node id → group id.
    pub host_nodes: Mutex<HashMap<Id, Id>>,
    inflight: Mutex<HashMap<tasks::Key, Inflight>>,
    node_load: Mutex<HashMap<Id, usize>>,
    pub wake: Notify,
    /// Files being fetched into the cache for cairnfs.
    pub cache: crate::cache::Cache,
}

struct Inflight {
    started: Instant,
    limit: Duration,
    what: String,
    reported: bool,
}

impl Shared {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn node(&self, id: Id) -> Option<Node> {
        self.available
            .lock()
            .expect("available lock")
            .get(&id)
            .cloned()
    }

    /// Nodes available now.
    pub fn available(&self) -> Vec<Node> {
        self.available
            .lock()
            .expect("available lock")
            .values()
            .cloned()
            .collect()
    }

    /// Whether the unit of work `key` is running on this host now.
    pub fn is_running(&self, key: &tasks::Key) -> bool {
        self.inflight
            .lock()
            .expect("inflight lock")
            .contains_key(key)
    }
}

/// Per-loop state the tasks do not need.
#[derive(Default)]
struct LoopState {
    /// Last reported state per node, so a problem is logged when it starts, not every loop.
    last_state: HashMap<Id, String>,
    watchers: HashMap<Id, WatcherHandle>,
    events: Vec<(Id, WatchEvent)>,
    loops: u64,
    disks: crate::transport::Disks,
}

struct WatcherHandle {
    stop: Arc<AtomicBool>,
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs cairnd until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let host = config.host_name();
    let _lock = InstanceLock::acquire(&config.daemon.lock_file, &host)?;
    let importer = Importer::new(&config.import).context("invalid [import] patterns")?;
    let url = config.catalog.url.clone();
    let host_for_init = host.clone();
    let advertise = config.transfer.advertise.clone();
    let (host_id, catalog_id) = tokio::task::spawn_blocking(move || -> Result<(Id, String)> {
        let mut cat = Catalog::open(&url).context("failed to open the catalog")?;
        let catalog_id = cat.catalog_id()?;
        let (h, created) = cat.write(|tx| tx.ensure_host(&host_for_init))?;
        if created {
            info!("Host \"{}\" added to the catalog.", h.name);
        }
        if let Some(address) = &advertise
            && h.address.as_deref() != Some(address)
        {
            cat.write(|tx| tx.update_host(&h.name, Some(Some(address)), None))?;
            info!("Host \"{}\" now reachable at {address}.", h.name);
        }
        let nodes: Vec<Id> = cat
            .read(|tx| tx.nodes_on_host(h.id))?
            .iter()
            .map(|n| n.id)
            .collect();
        let requeued = cat.write(|tx| tx.requeue_abandoned(&h.name, &nodes))?;
        if requeued > 0 {
            info!("Resuming {requeued} requests left active by an earlier run.");
        }
        Ok((h.id, catalog_id))
    })
    .await??;

    let token = read_token(&config.transfer.token_file);
    let metrics = Arc::new(Metrics::default());
    let rsync_rsh = (config.transfer.method == "rsync").then(|| config.transfer.rsync_rsh.clone());
    let transfer = Arc::new(Puller::new(
        rsync_rsh,
        config.transfer.tls_ca.as_deref(),
        token.clone(),
        config.transfer.max_rate.map(|r| r.0),
        config.transfer.pulls_per_peer,
        metrics.clone(),
    )?);
    let shared = Arc::new(Shared {
        pool: Pool::new(&config.catalog.url, Patience::until_stopped()),
        importer,
        transfer,
        token,
        metrics,
        peer_failures: Mutex::new(HashMap::new()),
        refused: Mutex::new(HashMap::new()),
        cancel: AtomicBool::new(false),
        available: Mutex::new(HashMap::new()),
        host_nodes: Mutex::new(HashMap::new()),
        inflight: Mutex::new(HashMap::new()),
        node_load: Mutex::new(HashMap::new()),
        cache: crate::cache::Cache::default(),
        wake: Notify::new(),
        host: host.clone(),
        host_id,
        catalog_id,
        config,
    });
    info!(
        "cairnd start: host \"{host}\", catalog {}, {} workers.",
        cairn_catalog::db::postgres::redact(&shared.config.catalog.url),
        shared.config.daemon.workers
    );
    // PostgreSQL: wake when a request for this host is made anywhere.
    let _listener = crate::listen::spawn(shared.clone());

    let socket = shared.config.daemon.socket.clone();
    let listener = crate::nudge::listen(&socket, shared.clone())
        .with_context(|| format!("failed to listen on {}", socket.display()))?;

    let http = match shared.config.transfer.listen.as_str() {
        "" => None,
        listen => {
            let l = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("failed to listen on {listen} (transfer.listen)"))?;
            info!("Serving copies over HTTP on {}.", l.local_addr()?);
            if shared.token.is_none() {
                warn!(
                    "No transfer token ({} is missing or empty): copies are neither served \
                     to nor pulled from other hosts.",
                    shared.config.transfer.token_file.display()
                );
            }
            let tls = match (
                &shared.config.transfer.tls_cert,
                &shared.config.transfer.tls_key,
            ) {
                (Some(cert), Some(key)) => {
                    info!("Serving over TLS with {}.", cert.display());
                    Some(crate::http::tls_config(cert, key)?)
                }
                _ => None,
            };
            Some(tokio::spawn(crate::http::serve(l, shared.clone(), tls)))
        }
    };

    let workers = Arc::new(Semaphore::new(shared.config.daemon.workers));
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<(Id, WatchEvent)>();
    let mut state = LoopState::default();
    let mut running = tokio::task::JoinSet::new();
    let interval = shared.config.daemon.interval.0;
    let mut next_loop = tokio::time::Instant::now();
    // Work the last pass found but could not start (all workers busy), and when that pass ran:
    // a finished task first starts more of it, and only asks the catalog again once it is
    // used up or older than a moment. Many small copies would otherwise pay a whole pass each.
    let mut backlog: Vec<Task> = Vec::new();
    let mut last_pass = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let mut task_done = false;
        let full = tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next_loop) => true,
            _ = shared.wake.notified() => true,
            Some(ev) = event_rx.recv() => {
                state.events.push(ev);
                while let Ok(ev) = event_rx.try_recv() {
                    state.events.push(ev);
                }
                false
            }
            Some(_) = running.join_next(), if !running.is_empty() => {
                task_done = true;
                true
            }
        };
        if task_done && !backlog.is_empty() && last_pass.elapsed() < Duration::from_millis(500) {
            backlog = dispatch(
                &shared,
                &workers,
                &mut running,
                std::mem::take(&mut backlog),
            );
            continue;
        }
        if full && tokio::time::Instant::now() >= next_loop {
            next_loop = tokio::time::Instant::now() + interval;
        }
        let planned = {
            let shared2 = shared.clone();
            let events = std::mem::take(&mut state.events);
            let event_tx = event_tx.clone();
            let mut st = std::mem::take(&mut state);
            let pass = tokio::task::spawn_blocking(move || {
                let work = plan(&shared2, &mut st, full, events, &event_tx);
                (st, work)
            });
            // A pass waiting for an unreachable catalog must not keep cairnd from stopping.
            tokio::select! {
                r = pass => r,
                _ = &mut shutdown => {
                    shared.pool.stop_waiting();
                    break;
                }
            }
        };
        let work = match planned {
            Ok((st, work)) => {
                state = st;
                work
            }
            Err(e) => {
                error!("Main loop failed: {e}");
                continue;
            }
        };
        let work = match work {
            Ok(w) => w,
            Err(e) => {
                error!("Main loop: {e:#}");
                continue;
            }
        };
        if full {
            last_pass = Instant::now();
            backlog = dispatch(&shared, &workers, &mut running, work);
        } else {
            backlog.extend(dispatch(&shared, &workers, &mut running, work));
        }
        report_stuck(&shared);
    }

    info!(
        "Shutting down: no new work; waiting for {} running tasks.",
        running.len()
    );
    shared.cancel.store(true, Ordering::Relaxed);
    shared.pool.stop_waiting();
    state.watchers.clear();
    while running.join_next().await.is_some() {}
    listener.abort();
    if let Some(h) = http {
        h.abort();
    }
    let _ = std::fs::remove_file(&socket);
    info!("cairnd stopped.");
    Ok(())
}

/// The token in `path`, trimmed; `None` if the file is missing, unreadable or empty.
fn read_token(path: &std::path::Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// One pass over this host's nodes and the catalog: returns the work to dispatch.
fn plan(
    shared: &Arc<Shared>,
    st: &mut LoopState,
    full: bool,
    events: Vec<(Id, WatchEvent)>,
    event_tx: &mpsc::UnboundedSender<(Id, WatchEvent)>,
) -> Result<Vec<Task>> {
    let mut work = Vec::new();
    for (node_id, ev) in events {
        // Events from a watcher stopped since (auto-import switched off) are dropped.
        if shared.node(node_id).is_none() || !st.watchers.contains_key(&node_id) {
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
    if !full {
        return Ok(work);
    }
    st.loops += 1;
    let t = now();
    let cfg = &shared.config;
    shared.pool.with(|cat| -> Result<()> {
        if let Err(e) = crate::transport::detect(shared, cat, &mut st.disks) {
            warn!("Transport disk detection failed: {e:#}");
        }
        let nodes = cat.write(|tx| {
            tx.touch_host(shared.host_id, t)?;
            tx.nodes_on_host(shared.host_id)
        })?;
        *shared.host_nodes.lock().expect("host nodes lock") =
            nodes.iter().map(|n| (n.id, n.group_id)).collect();
        if nodes.iter().all(|n| !n.active) && !st.last_state.contains_key(&0) {
            warn!("No active nodes on host ({})!", shared.host);
            st.last_state.insert(0, "none".into());
        } else if nodes.iter().any(|n| n.active) {
            st.last_state.remove(&0);
        }
        let mut uninitialised = Vec::new();
        let mut seen = HashSet::new();
        for node in &nodes {
            seen.insert(node.id);
            let (state_word, ready) = node_state(shared, node);
            let changed = st.last_state.get(&node.id) != Some(&state_word);
            if changed {
                log_node_state(node, &state_word);
                st.last_state.insert(node.id, state_word.clone());
            }
            if !ready && node.active && node.root.is_some() {
                // Not usable, but an init request for it gets an answer (done or why not).
                uninitialised.push(node.id);
            }
            let was = shared.node(node.id).is_some();
            if !ready {
                if was {
                    info!("Node \"{}\" no longer available.", node.name);
                    shared
                        .available
                        .lock()
                        .expect("available lock")
                        .remove(&node.id);
                }
                st.watchers.remove(&node.id);
                continue;
            }
            let root = PathBuf::from(node.root.as_deref().unwrap_or("/"));
            let mut fresh = node.clone();
            match NodeRoot::new(&root).space().map(|s| (s.avail, s.total)) {
                Ok((avail, capacity)) => {
                    cat.write(|tx| tx.record_node_space(node.id, avail, capacity, t))?;
                    (fresh.avail, fresh.capacity, fresh.last_checked) =
                        (Some(avail), Some(capacity), Some(t));
                }
                Err(e) => warn!(
                    "Node \"{}\": cannot read free space of {}: {e}",
                    node.name,
                    root.display()
                ),
            }
            shared
                .available
                .lock()
                .expect("available lock")
                .insert(node.id, fresh);
            if !was {
                work.push(Task::Tidy { node_id: node.id });
            }
            // Auto-import: a watcher while the node wants it, with a catch-up scan at start.
            match (node.auto_import, st.watchers.contains_key(&node.id)) {
                (true, false) => match start_watcher(node, &root, event_tx.clone()) {
                    Ok(h) => {
                        info!(
                            "Watching node \"{}\" root \"{}\" for auto import.",
                            node.name,
                            root.display()
                        );
                        st.watchers.insert(node.id, h);
                        work.push(Task::Scan {
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
                work.push(Task::Tidy { node_id: node.id });
            }
        }
        // Nodes moved to another host or deleted.
        shared
            .available
            .lock()
            .expect("available lock")
            .retain(|id, _| seen.contains(id));
        st.watchers.retain(|id, _| seen.contains(id));

        if let Some(idle) = cfg.import.acq_idle {
            let idle = idle.0.as_secs() as i64;
            for name in cat.write(|tx| tx.close_idle_acqs(idle, t))? {
                info!(
                    "Acquisition \"{name}\" closed: no new file for {}.",
                    cfg.import.acq_idle.expect("set")
                );
            }
        }
        // Paused nodes, and every node of a paused host, get no new work; queued requests
        // wait for the resume.
        let host_paused = cat.read(|tx| tx.host(&shared.host))?.paused;
        if host_paused && !st.last_state.contains_key(&-1) {
            info!("Host \"{}\" is paused: no new work.", shared.host);
            st.last_state.insert(-1, "paused".into());
        } else if !host_paused {
            st.last_state.remove(&-1);
        }
        let available: Vec<Node> = shared
            .available
            .lock()
            .expect("available lock")
            .values()
            .filter(|n| !n.paused && !host_paused)
            .cloned()
            .collect();
        let ids: Vec<Id> = available.iter().map(|n| n.id).collect();
        let mut import_nodes = ids.clone();
        import_nodes.extend(&uninitialised);
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
        let batch = (cfg.daemon.workers as u64) * 8;
        // A refused release is tried again at the next loop, not at every wake-up: else a
        // refusal, which finishes at once, would wake the loop that dispatches it again.
        shared
            .refused
            .lock()
            .expect("refused lock")
            .retain(|_, at| at.elapsed() < cfg.daemon.interval.0);
        let refused = shared.refused.lock().expect("refused lock").clone();
        for n in &available {
            // Delayed auto-clean: release what has been in the target group long enough and
            // was verified there since it arrived.
            for (copy_id, path, group) in cat.read(|tx| tx.delayed_clean_due(n.id, t))? {
                cat.write(|tx| {
                    tx.set_wants(&[copy_id], cairn_catalog::model::Wants::ReleaseNow, t)
                })?;
                info!(
                    "Delayed auto-clean: releasing {path} on {} (verified in group \"{group}\").",
                    n.name
                );
            }
            let releases = cat
                .read(|tx| tx.copies_to_release(n.id, batch))?
                .into_iter()
                .chain(space_pressure(cat, n)?)
                .filter(|w| !refused.contains_key(&w.copy.id));
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
            if tasks::has_source(cat, shared, &r)? {
                work.push(Task::Copy { request: r });
            }
        }
        Ok(())
    })?;
    let m = &shared.metrics;
    for (gauge, pick) in [
        (
            &m.queue_copy,
            (|t| matches!(t, Task::Copy { .. })) as fn(&Task) -> bool,
        ),
        (&m.queue_import, |t| {
            matches!(
                t,
                Task::Init { .. }
                    | Task::Import { .. }
                    | Task::AutoImport { .. }
                    | Task::Scan { .. }
            )
        }),
        (&m.queue_verify, |t| matches!(t, Task::Verify { .. })),
        (&m.queue_release, |t| matches!(t, Task::Release { .. })),
    ] {
        gauge.store(
            work.iter().filter(|t| pick(t)).count() as u64,
            Ordering::Relaxed,
        );
    }
    Ok(work)
}

/// Discretionary releases when a node is short of space: oldest first, only as much as needed.
fn space_pressure(cat: &mut Catalog, node: &Node) -> Result<Vec<CopyWork>> {
    let (Some(avail), Some(capacity)) = (node.avail, node.capacity) else {
        return Ok(Vec::new());
    };
    let floor = cairn_catalog::rules::MAX_FULL_FRACTION;
    let need_for_fraction = ((capacity as f64 * (1.0 - floor)) as u64).saturating_sub(avail);
    let need_for_min = node.min_avail.map_or(0, |m| m.saturating_sub(avail));
    let need = need_for_fraction.max(need_for_min);
    if need == 0 {
        return Ok(Vec::new());
    }
    let candidates = cat.read(|tx| tx.copies_releasable_when_needed(node.id))?;
    let picked = cairn_catalog::rules::choose_discretionary(
        &candidates
            .iter()
            .map(|c| cairn_catalog::rules::ReleaseCandidate {
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
            cairn_catalog::units::format_size(need),
            picked.len()
        );
    }
    Ok(candidates
        .into_iter()
        .filter(|c| picked.contains(&c.copy.id))
        .collect())
}

fn node_state(shared: &Shared, node: &Node) -> (String, bool) {
    if !node.active {
        return ("inactive".into(), false);
    }
    let Some(root) = node.root.as_deref() else {
        return ("no root".into(), false);
    };
    match NodeRoot::new(root).check(&node.name, &shared.catalog_id) {
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
    match state {
        "inactive" | "ready" => {}
        "no root" => warn!("Ignoring node \"{}\": it has no root.", node.name),
        "uninitialised" => warn!(
            "Ignoring node \"{}\": not initialised (no {root}/.cairn/node.toml; run `cairn node init {}`).",
            node.name, node.name
        ),
        "missing" => warn!(
            "Ignoring node \"{}\": root \"{root}\" is not there.",
            node.name
        ),
        other if other.starts_with("foreign") => error!(
            "Refusing node \"{}\": the marker at {root}/.cairn/node.toml names {other}; \
             this is not the disk the catalog expects there. Nothing will be written to it.",
            node.name
        ),
        other => error!("Refusing node \"{}\": {other}", node.name),
    }
}

fn start_watcher(
    node: &Node,
    root: &std::path::Path,
    tx: mpsc::UnboundedSender<(Id, WatchEvent)>,
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

/// Starts what it can of `work`; returns what is left for lack of a worker or of room on a
/// node.
fn dispatch(
    shared: &Arc<Shared>,
    workers: &Arc<Semaphore>,
    running: &mut tokio::task::JoinSet<()>,
    work: Vec<Task>,
) -> Vec<Task> {
    let cap = shared.config.daemon.node_workers;
    let mut left = Vec::new();
    let mut work = work.into_iter();
    while let Some(task) = work.next() {
        let key = task.key();
        let nodes = task.nodes();
        if shared.is_running(&key) {
            continue;
        }
        {
            let load = shared.node_load.lock().expect("load lock");
            if nodes
                .iter()
                .any(|n| load.get(n).copied().unwrap_or(0) >= cap)
            {
                left.push(task);
                continue;
            }
        }
        let Ok(permit) = workers.clone().try_acquire_owned() else {
            left.push(task);
            left.extend(work);
            return left;
        };
        {
            let mut load = shared.node_load.lock().expect("load lock");
            for n in &nodes {
                *load.entry(*n).or_default() += 1;
            }
        }
        shared.inflight.lock().expect("inflight lock").insert(
            key.clone(),
            Inflight {
                started: Instant::now(),
                limit: task.time_limit(),
                what: task.describe(),
                reported: false,
            },
        );
        let shared2 = shared.clone();
        running.spawn_blocking(move || {
            let what = task.describe();
            debug!("Beginning task {what}");
            if let Err(e) = tasks::run(&shared2, task) {
                error!("Task {what} failed: {e:#}");
            }
            shared2.inflight.lock().expect("inflight lock").remove(&key);
            let mut load = shared2.node_load.lock().expect("load lock");
            for n in &nodes {
                if let Some(c) = load.get_mut(n) {
                    *c = c.saturating_sub(1);
                }
            }
            drop(permit);
        });
    }
    left
}

/// Logs tasks that run far longer than their size explains: a hung disk is reported, not
/// silent.
fn report_stuck(shared: &Shared) {
    let mut inflight = shared.inflight.lock().expect("inflight lock");
    for t in inflight.values_mut() {
        if !t.reported && t.started.elapsed() > t.limit {
            warn!(
                "Task {} has run for {}s, longer than the {}s its size allows: the disk or the \
                 peer may be stuck.",
                t.what,
                t.started.elapsed().as_secs(),
                t.limit.as_secs()
            );
            t.reported = true;
        }
    }
}
