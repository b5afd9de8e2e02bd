//! The units of work cairnd runs: init, import, scan, copy, verify, release, tidy.
//!
//! Each runs on a blocking worker thread with a catalog connection from the pool. Disk work
//! happens outside transactions; each outcome is recorded in one transaction together with the
//! auto-actions it sets off, so a crash between two steps leaves either the old state or the
//! new one — never a copy recorded that is not complete on disk (invariant 2).
//!
//! - [`import`]: init, import (by request or automatic) and scan;
//! - [`copy`]: a copy request, from the choice of destination to the record and auto-actions;
//! - [`pull_batch`]: many small copy requests, pulled from another host in one request and
//!   recorded in one transaction;
//! - [`upkeep`]: verify, release (under the archive-copies rule) and tidy.
//!
//! A task sees only [`TaskContext`]: the catalog pool, this host's nodes, the transfer and the
//! source choice, the limits from the config, and the cancel flag — never the main loop.

mod copy;
mod import;
mod pull_batch;
mod upkeep;

pub use import::start_replayer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use cairn_catalog::Pool;
use cairn_catalog::catalog::{Arrival, CopyWork, Fired};
use cairn_catalog::model::{CopyId, CopyRequest, ImportId, Node, NodeId, RequestId};
use cairn_catalog::rules::AutoEffect;
use cairn_node::importer::Importer;
use tracing::info;

use crate::batch::Batcher;
use crate::metrics::Metrics;
use crate::nodes::{Host, Nodes};
use crate::sources::Sources;
use crate::standing::Standing;
use crate::transfer::Transfer;

/// What a task works on, so the same thing never runs twice at once on this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Init(NodeId),
    Import(NodeId, String),
    Scan(NodeId, String),
    Copy(RequestId),
    /// Verify and release of one copy exclude each other.
    CopyRow(CopyId),
    Tidy(NodeId),
}

#[derive(Debug)]
pub enum Task {
    Init {
        request: ImportId,
        node_id: NodeId,
    },
    Import {
        node_id: NodeId,
        request: Option<ImportId>,
        path: String,
        register_new: bool,
    },
    /// A file closed or moved into place under an auto-import node.
    AutoImport {
        node_id: NodeId,
        path: String,
    },
    Scan {
        node_id: NodeId,
        request: Option<ImportId>,
        path: String,
        register_new: bool,
    },
    Copy {
        request: CopyRequest,
    },
    /// Small copy requests from one node into one group, carried out together
    /// ([`pull_batch`]).
    CopyBatch {
        requests: Vec<CopyRequest>,
    },
    Verify {
        node_id: NodeId,
        copy: CopyWork,
    },
    Release {
        node_id: NodeId,
        copy: CopyWork,
    },
    Tidy {
        node_id: NodeId,
    },
}

impl Task {
    /// Whether the task came from a node's watch (a file closed, a directory made, an
    /// overflow): nothing in the catalog would find it again if it were dropped.
    pub fn from_watch(&self) -> bool {
        matches!(
            self,
            Task::AutoImport { .. } | Task::Scan { request: None, .. }
        )
    }

    /// What this task works on: one key, or one per request of a batch.
    pub fn keys(&self) -> Vec<Key> {
        match self {
            Task::CopyBatch { requests } => requests.iter().map(|r| Key::Copy(r.id)).collect(),
            _ => vec![self.key()],
        }
    }

    fn key(&self) -> Key {
        match self {
            Task::Init { node_id, .. } => Key::Init(*node_id),
            Task::Import { node_id, path, .. } | Task::AutoImport { node_id, path } => {
                Key::Import(*node_id, path.clone())
            }
            Task::Scan { node_id, path, .. } => Key::Scan(*node_id, path.clone()),
            Task::Copy { request } => Key::Copy(request.id),
            Task::CopyBatch { requests } => {
                Key::Copy(requests.first().map_or(RequestId(0), |r| r.id))
            }
            Task::Verify { copy, .. } | Task::Release { copy, .. } => Key::CopyRow(copy.copy.id),
            Task::Tidy { node_id } => Key::Tidy(*node_id),
        }
    }

    /// Nodes whose per-node cap this task counts against.
    pub fn nodes(&self) -> Vec<NodeId> {
        match self {
            Task::Init { node_id, .. }
            | Task::Import { node_id, .. }
            | Task::AutoImport { node_id, .. }
            | Task::Scan { node_id, .. }
            | Task::Verify { node_id, .. }
            | Task::Release { node_id, .. }
            | Task::Tidy { node_id } => vec![*node_id],
            Task::Copy { request } => vec![request.from_node_id],
            Task::CopyBatch { requests } => {
                let mut nodes: Vec<NodeId> = requests.iter().map(|r| r.from_node_id).collect();
                nodes.sort_unstable();
                nodes.dedup();
                nodes
            }
        }
    }

    /// How many tasks may be running on each of this task's nodes for it to start:
    /// `node_workers`, and two more for a batch of small files, which spends much of its time
    /// on the wire (a round trip before its first byte) and lands beside the others (its own
    /// unnamed files, `pull_batch::pull_from`). At a 10 ms round trip one batch over
    /// `node_workers` synced 1,000 files of 1 MiB 16% faster than none, and two over synced
    /// 10,000 files of 4 KiB ~12% faster than one (on loopback 0-5%); each holds at most
    /// [`crate::pullbatch::MAX_BYTES`] in memory.
    pub fn node_cap(&self, node_workers: usize) -> usize {
        match self {
            Task::CopyBatch { .. } => node_workers + 2,
            _ => node_workers,
        }
    }

    /// How long this task may take before it is reported as stuck: a minute plus the time its
    /// bytes take at a slow disk's pace.
    pub fn time_limit(&self) -> Duration {
        const SLOW: u64 = 20 * 1024 * 1024;
        let bytes = match self {
            Task::Copy { request } => request.size,
            Task::CopyBatch { requests } => requests.iter().map(|r| r.size).sum(),
            Task::Verify { copy, .. } => copy.size,
            Task::Scan { .. } => 100 * SLOW * 60,
            _ => 0,
        };
        Duration::from_secs(60 + bytes / SLOW)
    }

    pub fn describe(&self) -> String {
        match self {
            Task::Init { node_id, .. } => format!("Init node #{node_id}"),
            Task::Import { node_id, path, .. } | Task::AutoImport { node_id, path } => {
                format!("Import {path} on node #{node_id}")
            }
            Task::Scan { node_id, path, .. } => format!("Scan \"{path}\" on node #{node_id}"),
            Task::Copy { request } => format!(
                "AFCR#{}: {} -> {}",
                request.id, request.from_node, request.to_group
            ),
            Task::CopyBatch { requests } => format!(
                "a batch of {} copy requests from AFCR#{}",
                requests.len(),
                requests.first().map_or(RequestId(0), |r| r.id)
            ),
            Task::Verify { copy, .. } => format!("Check file {} on {}", copy.path, copy.copy.node),
            Task::Release { copy, .. } => {
                format!("Delete copy {} from {}", copy.path, copy.copy.node)
            }
            Task::Tidy { node_id } => format!("Tidy up node #{node_id}"),
        }
    }
}

/// What the tasks work with.
pub struct TaskContext {
    pub host: Arc<Host>,
    pub pool: Arc<Pool>,
    pub nodes: Arc<Nodes>,
    pub importer: Importer,
    pub transfer: Arc<dyn Transfer>,
    pub sources: Arc<Sources>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Units of work running on this host now.
    pub running: Running,
    /// Copies whose release was refused lately.
    pub refused: Refused,
    /// Set at shutdown: tasks stop at their next check.
    pub cancel: Arc<AtomicBool>,
    /// What the copy tasks write to the catalog, in shared transactions ([`Batches`]).
    pub batches: Batches,
    /// Set when files found on a node wait there for the catalog (and at start, for what an
    /// earlier run left): the replayer registers them once it answers.
    pub registrations_waiting: Arc<AtomicBool>,
    /// Whether writes to the catalog fail for want of it (a cut link to the primary).
    pub outage: Outage,
    /// Set when the requests an earlier run left active could not be put back at start (the
    /// catalog's primary out of reach): the first pass the catalog answers does it.
    pub requeue_pending: AtomicBool,
}

/// What cairnd knows of the catalog's primary being out of reach: after a write failed for
/// want of it, for [`Outage::HOLD`] what can wait does so without a try (files found on a node
/// wait there, passes plan nothing), and the next try gives up at once if it fails again. A
/// write that works ends it.
#[derive(Debug, Default)]
pub struct Outage {
    since: Mutex<Option<(Instant, Instant)>>,
}

impl Outage {
    /// How long after a failed write nothing that can wait tries again.
    pub const HOLD: Duration = Duration::from_secs(5);
    /// How long a write waits for a primary not known to be out of reach.
    pub const PATIENCE: Duration = Duration::from_secs(5);

    /// A write failed for want of the catalog; true if that starts an outage.
    pub fn failed(&self) -> bool {
        let mut g = self.since.lock().expect("outage lock");
        let now = Instant::now();
        let started = g.is_none();
        let first = g.map_or(now, |(first, _)| first);
        *g = Some((first, now));
        started
    }

    /// A write worked; the time the outage lasted, if there was one.
    pub fn answered(&self) -> Option<Duration> {
        self.since
            .lock()
            .expect("outage lock")
            .take()
            .map(|(first, _)| first.elapsed())
    }

    /// Whether a write failed for want of the catalog within [`Outage::HOLD`].
    pub fn holds(&self) -> bool {
        self.since
            .lock()
            .expect("outage lock")
            .is_some_and(|(_, last)| last.elapsed() < Self::HOLD)
    }

    /// How long the next write may wait for the catalog: [`Outage::PATIENCE`], or nothing
    /// during an outage (one try).
    pub fn patience(&self) -> Duration {
        match *self.since.lock().expect("outage lock") {
            Some(_) => Duration::ZERO,
            None => Self::PATIENCE,
        }
    }
}

/// Whether the catalog failed for want of it (out of reach, down, held), as opposed to
/// refusing what was asked.
pub fn out_of_reach(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<cairn_catalog::CatalogError>().is_some_and(
            |e| matches!(e, cairn_catalog::CatalogError::Db(db) if db.breaks_connection()),
        )
    })
}

/// The copy tasks' claims and records, each written together with those of other tasks that
/// come at the same time (group commit, [`Batcher`]): at a site far from the catalog a
/// transaction costs round trips whatever it carries.
#[derive(Default)]
pub struct Batches {
    /// Copy requests to claim; whether this host won each.
    pub claims: Batcher<RequestId, bool>,
    /// Copies arrived; the auto-actions each set off.
    pub arrivals: Batcher<Arrival, Vec<Fired>>,
}

impl TaskContext {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// The `[daemon]` settings the tasks follow.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Healthy archive copies a release must leave (invariant 3).
    pub min_archive_copies: usize,
    /// Delay before the first retry of a failed copy; it doubles, up to an hour.
    pub retry_delay: Duration,
    /// Attempts before a copy request fails for good.
    pub max_attempts: u32,
}

/// The units of work running on this host, and the load they put on each node.
#[derive(Default)]
pub struct Running {
    inflight: Mutex<HashMap<Key, Inflight>>,
    node_load: Mutex<HashMap<NodeId, usize>>,
}

struct Inflight {
    started: Instant,
    limit: Duration,
    what: String,
    reported: bool,
}

impl Running {
    /// Whether the unit of work `key` is running on this host now.
    pub fn contains(&self, key: &Key) -> bool {
        self.inflight
            .lock()
            .expect("inflight lock")
            .contains_key(key)
    }

    /// Whether `task` may start: none of its nodes is at its cap ([`Task::node_cap`] of
    /// `node_workers`).
    pub fn may_start(&self, task: &Task, node_workers: usize) -> bool {
        let cap = task.node_cap(node_workers);
        let load = self.node_load.lock().expect("load lock");
        task.nodes()
            .iter()
            .all(|n| load.get(n).copied().unwrap_or(0) < cap)
    }

    /// Records that `task` starts.
    pub fn start(&self, task: &Task) {
        let mut load = self.node_load.lock().expect("load lock");
        for n in task.nodes() {
            *load.entry(n).or_default() += 1;
        }
        drop(load);
        let mut inflight = self.inflight.lock().expect("inflight lock");
        for (i, key) in task.keys().into_iter().enumerate() {
            inflight.insert(
                key,
                Inflight {
                    started: Instant::now(),
                    limit: task.time_limit(),
                    what: task.describe(),
                    // A batch is reported once, by its first key.
                    reported: i > 0,
                },
            );
        }
    }

    /// Records that the task of `keys` on `nodes` ended.
    pub fn finish(&self, keys: &[Key], nodes: &[NodeId]) {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        for key in keys {
            inflight.remove(key);
        }
        drop(inflight);
        let mut load = self.node_load.lock().expect("load lock");
        for n in nodes {
            if let Some(c) = load.get_mut(n) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Logs tasks that run far longer than their size explains: a hung disk is reported, not
    /// silent.
    pub fn report_stuck(&self) {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        for t in inflight.values_mut() {
            if !t.reported && t.started.elapsed() > t.limit {
                tracing::warn!(
                    "Task {} has run for {}s, longer than the {}s its size allows: the disk or \
                     the peer may be stuck.",
                    t.what,
                    t.started.elapsed().as_secs(),
                    t.limit.as_secs()
                );
                t.reported = true;
            }
        }
    }
}

/// Copies whose release was refused (invariant 3), and when: a refused release is tried again
/// at the next loop, not at every wake-up, else a refusal, which finishes at once, would wake
/// the loop that dispatches it again. A refusal that stands is logged when it starts or
/// changes, and hourly while it lasts ([`Standing`]), not at every pass.
#[derive(Default)]
pub struct Refused {
    at: Mutex<HashMap<CopyId, Instant>>,
    said: Standing<CopyId>,
}

impl Refused {
    /// Records that the release of `copy_id` was refused for `why`; true when that is news
    /// worth a log line.
    pub fn insert(&self, copy_id: CopyId, why: &str) -> bool {
        let now = Instant::now();
        self.at.lock().expect("refused lock").insert(copy_id, now);
        self.said.holds(&copy_id, why, now)
    }

    /// The release of `copy_id` went through.
    pub fn released(&self, copy_id: CopyId) {
        self.said.clear(&copy_id);
    }

    /// Forgets refusals older than `age`; returns the copies refused more recently.
    pub fn recent(&self, age: Duration) -> std::collections::HashSet<CopyId> {
        let mut r = self.at.lock().expect("refused lock");
        r.retain(|_, at| at.elapsed() < age);
        r.keys().copied().collect()
    }
}

pub fn run(ctx: &TaskContext, task: Task) -> Result<()> {
    if ctx.is_cancelled() {
        return Ok(());
    }
    match task {
        Task::Init { request, node_id } => import::init(ctx, request, node_id),
        Task::Import {
            node_id,
            request,
            path,
            register_new,
        } => import::import_request(ctx, node_id, request, &path, register_new),
        Task::AutoImport { node_id, path } => import::auto_import(ctx, node_id, &path),
        Task::Scan {
            node_id,
            request,
            path,
            register_new,
        } => import::scan(ctx, node_id, request, &path, register_new),
        Task::Copy { request } => copy::copy(ctx, request),
        Task::CopyBatch { requests } => pull_batch::copy_batch(ctx, requests),
        Task::Verify { node_id, copy } => upkeep::verify(ctx, node_id, &copy),
        Task::Release { node_id, copy } => upkeep::release(ctx, node_id, &copy),
        Task::Tidy { node_id } => upkeep::tidy(ctx, node_id),
    }
}

/// The node `node_id` if it is available now, and its root.
pub(crate) fn node_and_root(ctx: &TaskContext, node_id: NodeId) -> Result<(Node, PathBuf)> {
    let node = ctx
        .nodes
        .get(node_id)
        .ok_or_else(|| anyhow!("node #{node_id} is no longer available"))?;
    let root = PathBuf::from(node.root.clone().unwrap_or_default());
    Ok((node, root))
}

pub(crate) fn log_effects(path: &str, fired: &[Fired]) {
    for f in fired {
        match f.effect {
            AutoEffect::Sync { .. } => {
                info!(
                    "Auto-sync: requested copy of \"{path}\" into group \"{}\".",
                    f.name
                )
            }
            AutoEffect::Release { .. } => {
                info!("Auto-clean: released \"{path}\" on node \"{}\".", f.name)
            }
        }
    }
}
