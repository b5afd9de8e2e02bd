//! The units of work cairnd runs: init, import, scan, copy, verify, release, tidy.
//!
//! Each runs on a blocking worker thread with a catalog connection from the pool. Disk work
//! happens outside transactions; each outcome is recorded in one transaction together with the
//! auto-actions it sets off, so a crash between two steps leaves either the old state or the
//! new one — never a copy recorded that is not complete on disk (invariant 2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use cairn_catalog::Catalog;
use cairn_catalog::catalog::{CopyWork, Fired, ImportOutcome, NewFile, size_on_disk};
use cairn_catalog::model::{CopyRequest, Has, Id, IoClass, Node, NodeKind, RequestState};
use cairn_catalog::rules::{self, AutoEffect, NodeSpace, TransportCandidate};
use cairn_catalog::units::{format_size, now};
use cairn_node::copyfile;
use cairn_node::importer::Verdict;
use cairn_node::root::{Incoming, Marker, NodeRoot, RootState};
use tracing::{debug, error, info, warn};

use crate::daemon::Shared;
use crate::http::Metrics;
use crate::procfs::{self, OpenWriters};
use crate::transfer::{Location, Source};

/// What a task works on, so the same thing never runs twice at once on this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Init(Id),
    Import(Id, String),
    Scan(Id, String),
    Copy(Id),
    /// Verify and release of one copy exclude each other.
    CopyRow(Id),
    Tidy(Id),
}

#[derive(Debug)]
pub enum Task {
    Init {
        request: Id,
        node_id: Id,
    },
    Import {
        node_id: Id,
        request: Option<Id>,
        path: String,
        register_new: bool,
    },
    /// A file closed or moved into place under an auto-import node.
    AutoImport {
        node_id: Id,
        path: String,
    },
    Scan {
        node_id: Id,
        request: Option<Id>,
        path: String,
        register_new: bool,
    },
    Copy {
        request: CopyRequest,
    },
    Verify {
        node_id: Id,
        copy: CopyWork,
    },
    Release {
        node_id: Id,
        copy: CopyWork,
    },
    Tidy {
        node_id: Id,
    },
}

impl Task {
    pub fn key(&self) -> Key {
        match self {
            Task::Init { node_id, .. } => Key::Init(*node_id),
            Task::Import { node_id, path, .. } | Task::AutoImport { node_id, path } => {
                Key::Import(*node_id, path.clone())
            }
            Task::Scan { node_id, path, .. } => Key::Scan(*node_id, path.clone()),
            Task::Copy { request } => Key::Copy(request.id),
            Task::Verify { copy, .. } | Task::Release { copy, .. } => Key::CopyRow(copy.copy.id),
            Task::Tidy { node_id } => Key::Tidy(*node_id),
        }
    }

    /// Nodes whose per-node cap this task counts against.
    pub fn nodes(&self) -> Vec<Id> {
        match self {
            Task::Init { node_id, .. }
            | Task::Import { node_id, .. }
            | Task::AutoImport { node_id, .. }
            | Task::Scan { node_id, .. }
            | Task::Verify { node_id, .. }
            | Task::Release { node_id, .. }
            | Task::Tidy { node_id } => vec![*node_id],
            Task::Copy { request } => vec![request.from_node_id],
        }
    }

    /// How long this task may take before it is reported as stuck: a minute plus the time its
    /// bytes take at a slow disk's pace.
    pub fn time_limit(&self) -> Duration {
        const SLOW: u64 = 20 * 1024 * 1024;
        let bytes = match self {
            Task::Copy { request } => request.size,
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
            Task::Verify { copy, .. } => format!("Check file {} on {}", copy.path, copy.copy.node),
            Task::Release { copy, .. } => {
                format!("Delete copy {} from {}", copy.path, copy.copy.node)
            }
            Task::Tidy { node_id } => format!("Tidy up node #{node_id}"),
        }
    }
}

pub fn run(shared: &Arc<Shared>, task: Task) -> Result<()> {
    if shared.is_cancelled() {
        return Ok(());
    }
    match task {
        Task::Init { request, node_id } => init(shared, request, node_id),
        Task::Import {
            node_id,
            request,
            path,
            register_new,
        } => import_request(shared, node_id, request, &path, register_new),
        Task::AutoImport { node_id, path } => auto_import(shared, node_id, &path),
        Task::Scan {
            node_id,
            request,
            path,
            register_new,
        } => scan(shared, node_id, request, &path, register_new),
        Task::Copy { request } => copy(shared, request),
        Task::Verify { node_id, copy } => verify(shared, node_id, &copy),
        Task::Release { node_id, copy } => release(shared, node_id, &copy),
        Task::Tidy { node_id } => tidy(shared, node_id),
    }
}

// ---- init ----

fn init(shared: &Arc<Shared>, request: Id, node_id: Id) -> Result<()> {
    with_import_request(shared, Some(request), |cat| {
        let node = cat.read(|tx| tx.node_by_id(node_id))?;
        match init_node(shared, &node) {
            Ok(msg) => {
                info!("{msg}");
                Ok(None)
            }
            Err(e) => {
                error!("Cannot initialise node \"{}\": {e:#}", node.name);
                Ok(Some(format!("{e:#}")))
            }
        }
    })
}

/// Runs `work` for an import request (or for no request: an auto-import or catch-up scan).
/// The request is claimed first — another worker or host may have won it — and ends `done`,
/// or `failed` with the reason `work` returns.
fn with_import_request(
    shared: &Shared,
    request: Option<Id>,
    work: impl FnOnce(&mut Catalog) -> Result<Option<String>>,
) -> Result<()> {
    shared.pool.with(|cat| {
        if let Some(r) = request
            && !cat.write(|tx| tx.claim_import_request(r))?
        {
            return Ok(());
        }
        let error = work(cat)?;
        if let Some(r) = request
            && shared.is_cancelled()
        {
            // Stopped part-way: the request runs again at the next start.
            cat.write(|tx| tx.unclaim_import_request(r))?;
        } else if let Some(r) = request {
            cat.write(|tx| tx.finish_import_request(r, error.as_deref(), now()))?;
            if error.is_none() {
                info!("Completed import request #{r}.");
            }
        }
        Ok(())
    })
}

fn init_node(shared: &Shared, node: &Node) -> Result<String> {
    let root = node
        .root
        .as_deref()
        .ok_or_else(|| anyhow!("it has no root (set one with `cairn node modify --root`)"))?;
    let root = NodeRoot::new(root);
    match root.check(&node.name, &shared.catalog_id) {
        RootState::Ready => Ok(format!("Node \"{}\" is already initialised.", node.name)),
        RootState::NotInitialised => {
            root.write_marker(&Marker {
                node: node.name.clone(),
                catalog_id: shared.catalog_id.clone(),
            })
            .with_context(|| format!("cannot write the marker under {}", root.path().display()))?;
            Ok(format!("Node \"{}\" initialised.", node.name))
        }
        RootState::Missing => Err(anyhow!("root \"{}\" is not there", root.path().display())),
        RootState::Foreign(m) => Err(anyhow!(
            "root \"{}\" already holds the marker of node \"{}\" of catalog {}",
            root.path().display(),
            m.node,
            m.catalog_id
        )),
        RootState::Unreadable(e) => Err(anyhow!(
            "the marker under {} is unreadable: {e}",
            root.path().display()
        )),
    }
}

// ---- import ----

/// What importing one path came to.
#[derive(Debug, PartialEq, Eq)]
enum Imported {
    /// Registered (new file or a copy of a known one).
    Yes,
    /// The node already had a healthy copy.
    AlreadyThere,
    Skipped(String),
}

fn node_and_root(shared: &Shared, node_id: Id) -> Result<(Node, PathBuf)> {
    let node = shared
        .node(node_id)
        .ok_or_else(|| anyhow!("node #{node_id} is no longer available"))?;
    let root = PathBuf::from(node.root.clone().unwrap_or_default());
    Ok((node, root))
}

fn import_request(
    shared: &Arc<Shared>,
    node_id: Id,
    request: Option<Id>,
    path: &str,
    register_new: bool,
) -> Result<()> {
    with_import_request(shared, request, |cat| {
        let (node, root) = node_and_root(shared, node_id)?;
        let writers = procfs::open_for_writing().ok();
        let outcome = import_one(
            shared,
            cat,
            &node,
            &root,
            path,
            register_new,
            writers.as_ref(),
        );
        Ok(match outcome {
            Ok(Imported::Skipped(why)) => {
                info!("Not importing \"{path}\" on node \"{}\": {why}.", node.name);
                Some(why)
            }
            Ok(_) => None,
            Err(e) => {
                error!(
                    "Import of \"{path}\" on node \"{}\" failed: {e:#}",
                    node.name
                );
                Some(format!("{e:#}"))
            }
        })
    })
}

fn auto_import(shared: &Arc<Shared>, node_id: Id, path: &str) -> Result<()> {
    shared.pool.with(|cat| {
        let (node, root) = node_and_root(shared, node_id)?;
        match import_one(shared, cat, &node, &root, path, true, None)? {
            Imported::Skipped(why) => {
                info!("Not importing \"{path}\" on node \"{}\": {why}.", node.name)
            }
            Imported::Yes | Imported::AlreadyThere => {}
        }
        Ok(())
    })
}

fn import_one(
    shared: &Shared,
    cat: &mut Catalog,
    node: &Node,
    root: &Path,
    path: &str,
    register_new: bool,
    writers: Option<&OpenWriters>,
) -> Result<Imported> {
    match examine(shared, cat, node, root, path, register_new, writers)? {
        Examined::AlreadyThere => Ok(Imported::AlreadyThere),
        Examined::Skip(why) => Ok(Imported::Skipped(why)),
        Examined::New(f) => {
            register(cat, node, std::slice::from_ref(&f))?;
            Ok(Imported::Yes)
        }
    }
}

/// What looking at one file under a node root found.
enum Examined {
    /// A file to register, its md5 computed.
    New(NewFile),
    /// The node has a healthy copy of it already.
    AlreadyThere,
    /// Not to be imported, and why.
    Skip(String),
}

/// Looks at one file under a node root: whether to register it, and if not, why.
fn examine(
    shared: &Shared,
    cat: &mut Catalog,
    node: &Node,
    root: &Path,
    path: &str,
    register_new: bool,
    writers: Option<&OpenWriters>,
) -> Result<Examined> {
    let path = match cairn_catalog::catalog::normalize_path(path) {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return Ok(Examined::Skip("not a file path".into())),
        Err(e) => return Ok(Examined::Skip(e.to_string())),
    };
    let acq = match shared.importer.check(&path) {
        Verdict::Import { acq } => acq,
        Verdict::Skip(why) => return Ok(Examined::Skip(why)),
    };
    let full = root.join(&path);
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Examined::Skip(format!(
                "no such file under {}",
                root.display()
            )));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", full.display())),
    };
    if !meta.file_type().is_file() {
        return Ok(Examined::Skip("not a regular file".into()));
    }
    let open = match writers {
        Some(w) => w.contains(&full),
        None => procfs::is_open_for_writing(&full).unwrap_or(false),
    };
    if open {
        return Ok(Examined::Skip(
            "still open for writing; it is imported when closed".into(),
        ));
    }
    let known = cat.read(|tx| {
        let Some(f) = tx.file_by_path(&path)? else {
            return Ok(None);
        };
        let copy = tx.copy_on(f.id, node.id)?;
        Ok(Some((f, copy)))
    })?;
    if let Some((_, Some(c))) = &known
        && c.has == Has::Yes
    {
        return Ok(Examined::AlreadyThere);
    }
    if known.is_none() && !register_new {
        return Ok(Examined::Skip(
            "not in the catalog (import with --register-new to add it)".into(),
        ));
    }
    let (size, md5) = copyfile::md5_of(&full, &shared.cancel)
        .with_context(|| format!("cannot read {}", full.display()))?;
    if let Some((f, _)) = &known
        && (f.size != size || f.md5 != md5)
    {
        return Ok(Examined::Skip(format!(
            "its contents differ from the registered file ({size} bytes, md5 {md5}; \
             the catalog has {} bytes, md5 {})",
            f.size, f.md5
        )));
    }
    use std::os::unix::fs::MetadataExt;
    Ok(Examined::New(NewFile {
        path,
        acq,
        size,
        md5,
        mtime: meta.mtime(),
    }))
}

/// Registers files and their copies on `node` in one transaction, with their auto-actions.
fn register(cat: &mut Catalog, node: &Node, files: &[NewFile]) -> Result<()> {
    let t = now();
    let outcomes = cat.write(|tx| {
        files
            .iter()
            .map(|f| tx.import_copy(f, node.id, t))
            .collect::<cairn_catalog::error::Result<Vec<_>>>()
    })?;
    for (f, outcome) in files.iter().zip(outcomes) {
        match outcome {
            ImportOutcome::Imported {
                new_file,
                new_acq,
                fired,
                ..
            } => {
                if new_acq {
                    info!("Acquisition \"{}\" added to DB.", f.acq);
                }
                if new_file {
                    info!("File \"{}\" added to DB.", f.path);
                }
                info!(
                    "Imported file copy \"{}\" on node \"{}\".",
                    f.path, node.name
                );
                log_effects(&f.path, &fired);
            }
            ImportOutcome::AlreadyHere { .. } => {}
            ImportOutcome::Conflict { existing } => warn!(
                "Not importing \"{}\" on node \"{}\": it is already archived with other \
                 contents ({} bytes, md5 {}).",
                f.path, node.name, existing.size, existing.md5
            ),
        }
    }
    Ok(())
}

fn log_effects(path: &str, fired: &[Fired]) {
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

// ---- scan ----

fn scan(
    shared: &Arc<Shared>,
    node_id: Id,
    request: Option<Id>,
    path: &str,
    register_new: bool,
) -> Result<()> {
    with_import_request(shared, request, |cat| {
        let (node, root) = node_and_root(shared, node_id)?;
        Ok(
            match scan_tree(shared, cat, &node, &root, path, register_new) {
                Ok((imported, skipped)) => {
                    debug!(
                        "Scan of \"{path}\" on \"{}\": {imported} imported, {skipped} skipped.",
                        node.name
                    );
                    None
                }
                Err(e) => {
                    error!("Scan of \"{path}\" on node \"{}\" failed: {e:#}", node.name);
                    Some(format!("{e:#}"))
                }
            },
        )
    })
}

fn scan_tree(
    shared: &Shared,
    cat: &mut Catalog,
    node: &Node,
    root: &Path,
    path: &str,
    register_new: bool,
) -> Result<(usize, usize)> {
    let rel = if path == "." {
        String::new()
    } else {
        cairn_catalog::catalog::normalize_path(path)?
    };
    info!("Scanning \"{path}\" on \"{}\" for new files.", node.name);
    let start = root.join(&rel);
    if !start.is_dir() {
        return Err(anyhow!(
            "\"{path}\" is not a directory under {}",
            root.display()
        ));
    }
    let have: std::collections::HashSet<String> = cat
        .read(|tx| tx.files_on_node(node.id, None, (!rel.is_empty()).then_some(rel.as_str())))?
        .into_iter()
        .filter(|(_, c)| c.has == Has::Yes)
        .map(|(f, _)| f.path)
        .collect();
    let writers = procfs::open_for_writing().ok();
    let mut files = Vec::new();
    walk(root, &start, &mut files)?;
    files.sort();
    let (mut imported, mut skipped) = (0, 0);
    let mut batch = Vec::new();
    for p in files {
        if shared.is_cancelled() {
            break;
        }
        if have.contains(&p) {
            continue;
        }
        match examine(shared, cat, node, root, &p, register_new, writers.as_ref())? {
            Examined::AlreadyThere => {}
            Examined::Skip(why) => {
                info!("Not importing \"{p}\": {why}.");
                skipped += 1;
            }
            Examined::New(f) => batch.push(f),
        }
        if batch.len() >= 256 {
            imported += batch.len();
            register(cat, node, &std::mem::take(&mut batch))?;
        }
    }
    imported += batch.len();
    register(cat, node, &batch)?;
    Ok((imported, skipped))
}

/// Files below `dir`, as paths relative to `root`; skips `.cairn/` at the root.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            if dir == root && e.file_name() == cairn_node::root::CAIRN_DIR {
                continue;
            }
            debug!(
                "Scanning \"{}\".",
                p.strip_prefix(root).unwrap_or(&p).display()
            );
            walk(root, &p, out)?;
        } else if ft.is_file()
            && let Ok(rel) = p.strip_prefix(root)
        {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

// ---- copy ----

/// Whether this host can carry out a copy request now: it has a node of the destination group
/// (the caller checked) and a source — a healthy copy on one of its own available nodes, or on
/// an active node of another host whose cairnd address is known.
pub fn has_source(cat: &mut Catalog, shared: &Shared, r: &CopyRequest) -> Result<bool> {
    Ok(!sources(cat, shared, r)?.is_empty())
}

/// Where a requested file can be read from, best first: the requested node if it is here,
/// other copies here, then copies on other hosts, fewest recent failures first.
fn sources(cat: &mut Catalog, shared: &Shared, r: &CopyRequest) -> Result<Vec<Source>> {
    let group = cat.read(|tx| tx.group(&r.to_group))?;
    // A transport disk takes copies only from the host it is plugged into.
    let local_only = group.io_class == IoClass::Transport;
    file_sources(
        cat,
        shared,
        (r.file_id, &r.path, r.size),
        Some(r.to_group_id),
        Some(r.from_node_id),
        local_only,
    )
}

/// Where a file can be read from, best first: `preferred` if it is here, other copies here,
/// then copies on other hosts (unless `local_only`), fewest recent failures first. Copies in
/// `exclude_group` (the destination of a copy) are not sources.
pub fn file_sources(
    cat: &mut Catalog,
    shared: &Shared,
    (file_id, path, size): (Id, &str, u64),
    exclude_group: Option<Id>,
    preferred: Option<Id>,
    local_only: bool,
) -> Result<Vec<Source>> {
    let copies = cat.read(|tx| tx.source_copies(file_id))?;
    let failures = shared
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
        if let Some(n) = shared.node(c.node_id) {
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
            && host != shared.host
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
            let usable = if shared.config.transfer.method == "rsync" {
                rsync.is_some()
            } else {
                c.address.is_some()
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
    Ok(ranked.into_iter().map(|(_, s)| s).collect())
}

fn copy(shared: &Arc<Shared>, r: CopyRequest) -> Result<()> {
    shared.pool.with(|cat| {
        if !cat.write(|tx| tx.claim_copy_request(r.id, &shared.host, now()))? {
            return Ok(());
        }
        info!(
            "Beginning task AFCR#{}: {} -> {}",
            r.id, r.from_node, r.to_group
        );
        match copy_claimed(shared, cat, &r) {
            Ok(()) => Ok(()),
            Err(CopyFailure::Cancelled) => {
                cat.write(|tx| tx.unclaim_copy_request(r.id))?;
                Ok(())
            }
            Err(CopyFailure::Failed(reason)) => retry_later(shared, cat, &r, &reason, false),
            // A source that sent wrong bytes is marked suspect and no longer chosen: the next
            // attempt may start at once, from another copy.
            Err(CopyFailure::BadSource(reason)) => retry_later(shared, cat, &r, &reason, true),
            Err(CopyFailure::Catalog(e)) => Err(e),
        }
    })
}

/// Records a failed attempt: retried after a growing backoff (at once if `now`), or failed
/// for good after `daemon.max_attempts`.
fn retry_later(
    shared: &Shared,
    cat: &mut Catalog,
    r: &CopyRequest,
    reason: &str,
    immediately: bool,
) -> Result<()> {
    let attempts = cat.read(|tx| tx.copy_request(r.id))?.attempts;
    let base = shared.config.daemon.retry_delay.0.as_secs().max(1) as i64;
    let delay = if immediately {
        0
    } else {
        backoff(base, attempts)
    };
    let max = shared.config.daemon.max_attempts;
    let failed = cat.write(|tx| tx.fail_copy_request(r.id, reason, max, now() + delay, now()))?;
    if failed {
        error!("AFCR#{} failed after {attempts} attempts: {reason}", r.id);
    } else {
        warn!(
            "AFCR#{} attempt {attempts} failed: {reason}; retrying in {delay}s.",
            r.id
        );
    }
    Ok(())
}

/// Seconds before retry number `attempts`: `base` doubling, capped at an hour.
fn backoff(base: i64, attempts: u32) -> i64 {
    (base << attempts.saturating_sub(1).min(12)).min(3600)
}

enum CopyFailure {
    Cancelled,
    Failed(String),
    /// The source delivered wrong bytes (it is marked suspect now).
    BadSource(String),
    Catalog(anyhow::Error),
}

impl From<anyhow::Error> for CopyFailure {
    fn from(e: anyhow::Error) -> Self {
        CopyFailure::Catalog(e)
    }
}

impl From<cairn_catalog::CatalogError> for CopyFailure {
    fn from(e: cairn_catalog::CatalogError) -> Self {
        CopyFailure::Catalog(e.into())
    }
}

fn copy_claimed(shared: &Shared, cat: &mut Catalog, r: &CopyRequest) -> Result<(), CopyFailure> {
    let file = cat.read(|tx| tx.file_by_id(r.file_id))?;
    let dest = choose_destination(shared, cat, r)?;
    let root = PathBuf::from(dest.root.clone().unwrap_or_default());
    // The destination may be a disk pulled out since the last loop: write only onto the disk
    // whose marker says it is this node (never into the empty mount point below it).
    let still_there =
        || NodeRoot::new(&root).check(&dest.name, &shared.catalog_id) == RootState::Ready;
    if !still_there() {
        return Err(CopyFailure::Cancelled);
    }
    let final_path = root.join(&file.path);
    let t0 = Instant::now();

    // Pre-pull search: the file may be there already (copied by hand, or by an earlier run
    // that stopped before recording it).
    debug!("Pre-pull search for {} in {}", file.path, dest.name);
    if let Ok(meta) = std::fs::metadata(&final_path)
        && meta.is_file()
        && meta.len() == file.size
        && let Ok((_, md5)) = copyfile::md5_of(&final_path, &shared.cancel)
        && md5 == file.md5
    {
        info!(
            "Pre-pull search found {} on node \"{}\": recording it.",
            file.path, dest.name
        );
        record_arrival(cat, r, &dest, file.size, t0)?;
        return Ok(());
    }
    // Something else is at the archive name. Overwrite it only if it is this file's own copy
    // gone bad; a file the catalog does not know is not cairn's to touch (invariant 6).
    if std::fs::symlink_metadata(&final_path).is_ok() {
        let ours = cat
            .read(|tx| tx.copy_on(file.id, dest.id))?
            .is_some_and(|c| c.has != Has::No);
        if !ours {
            return Err(CopyFailure::Failed(format!(
                "{} is in the way on node \"{}\": a file the catalog does not know, left alone",
                final_path.display(),
                dest.name
            )));
        }
    }

    let space = node_space(cat, &dest)?;
    if let Err(no) = rules::fits(&space, file.size) {
        return Err(CopyFailure::Failed(format!(
            "node \"{}\" has no room: {no}",
            dest.name
        )));
    }
    let Some(source) = sources(cat, shared, r)?.into_iter().next() else {
        return Err(CopyFailure::Cancelled);
    };
    let remote_host = match &source.location {
        Location::Remote { host, .. } => Some(host.clone()),
        Location::Local(_) => None,
    };
    // A pull from another host may be resumed, so its temp file (`.part`) outlives a failed
    // attempt; a local copy starts over, and its temp file (`.tmp`) is a leftover once the
    // copy is not running.
    let tmp = NodeRoot::new(&root).incoming(Incoming {
        request: r.id,
        resumable: remote_host.is_some(),
    });
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CopyFailure::Failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    info!(
        "Pulling file {} from node \"{}\"{} using {}",
        file.path,
        source.node,
        remote_host
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default(),
        shared.transfer.method(&source)
    );
    // The copy stops at its next chunk when cairnd shuts down or its request is cancelled.
    let stop = AtomicBool::new(false);
    let withdrawn = AtomicBool::new(false);
    let fetched = std::thread::scope(|s| {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        s.spawn(|| watch_request(shared, r.id, finished, &stop, &withdrawn));
        let fetched = shared.transfer.fetch(&source, &tmp, &stop);
        drop(done);
        fetched
    });
    if withdrawn.load(Ordering::Relaxed) {
        let _ = std::fs::remove_file(&tmp);
        info!(
            "Copy of {} to node \"{}\" stopped: request AFCR#{} was cancelled.",
            file.path, dest.name, r.id
        );
        return Err(CopyFailure::Cancelled);
    }
    let note_peer = |ok: bool| {
        if let Some(h) = &remote_host {
            let mut f = shared.peer_failures.lock().expect("peer failures lock");
            if ok {
                f.remove(h);
            } else {
                *f.entry(h.clone()).or_default() += 1;
            }
            let m = &shared.metrics;
            Metrics::add(if ok { &m.pulls_ok } else { &m.pulls_failed }, 1);
        }
    };
    let copied = match fetched {
        Ok(c) => c,
        Err(e) => {
            // A partial pull from another host stays in .cairn/tmp, to be resumed with Range;
            // anything else starts over.
            if remote_host.is_none() || shared.is_cancelled() {
                let _ = std::fs::remove_file(&tmp);
            }
            if e.kind() == std::io::ErrorKind::Interrupted || shared.is_cancelled() {
                info!("Pull of {} aborted: shutting down.", file.path);
                return Err(CopyFailure::Cancelled);
            }
            note_peer(false);
            return Err(CopyFailure::Failed(format!(
                "cannot copy from node \"{}\": {e}",
                source.node
            )));
        }
    };
    if copied.md5 != file.md5 || copied.bytes != file.size {
        let _ = std::fs::remove_file(&tmp);
        note_peer(false);
        Metrics::add(&shared.metrics.md5_mismatches, 1);
        cat.write(|tx| tx.mark_copy(source.copy_id, Has::Suspect, now()))?;
        error!(
            "Pull of {} from node \"{}\" gave wrong bytes ({} B, md5 {}; expected {} B, md5 {}): \
             copy there marked suspect.",
            file.path, source.node, copied.bytes, copied.md5, file.size, file.md5
        );
        return Err(CopyFailure::BadSource(format!(
            "md5 mismatch from node \"{}\" (marked suspect)",
            source.node
        )));
    }
    if shared.is_cancelled() {
        let _ = std::fs::remove_file(&tmp);
        return Err(CopyFailure::Cancelled);
    }
    // Invariant 2: the bytes are on disk before the copy gets its archive name.
    if let Err(e) = copyfile::sync_file(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(CopyFailure::Failed(format!(
            "cannot fsync {}: {e}",
            tmp.display()
        )));
    }
    if !still_there() {
        let _ = std::fs::remove_file(&tmp);
        return Err(CopyFailure::Failed(format!(
            "node \"{}\" went away during the copy (its disk is no longer at {})",
            dest.name,
            root.display()
        )));
    }
    if let Some(parent) = final_path.parent()
        && !parent.exists()
    {
        info!("Creating directory \"{}\".", parent.display());
    }
    copyfile::install(&tmp, &final_path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CopyFailure::Failed(format!(
            "cannot move into place at {}: {e}",
            final_path.display()
        ))
    })?;
    note_peer(true);
    record_arrival(cat, r, &dest, copied.bytes, t0)?;
    let secs = t0.elapsed().as_secs_f64();
    info!(
        "Pull of {} complete. Transferred {} in {:.1}s [{}/s]",
        file.path,
        format_size(copied.bytes),
        secs,
        format_size((copied.bytes as f64 / secs.max(1e-3)) as u64)
    );
    Ok(())
}

/// Sets `stop` when cairnd shuts down or copy request `id` is cancelled (and then
/// `withdrawn` too), until `finished` says the copy is over. The catalog is asked once a
/// second.
fn watch_request(
    shared: &Shared,
    id: Id,
    finished: std::sync::mpsc::Receiver<()>,
    stop: &AtomicBool,
    withdrawn: &AtomicBool,
) {
    const TICK: Duration = Duration::from_millis(100);
    let mut asked = Instant::now();
    loop {
        match finished.recv_timeout(TICK) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if shared.is_cancelled() {
            stop.store(true, Ordering::Relaxed);
            return;
        }
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            let cancelled = shared
                .pool
                .with(|cat| cat.read(|tx| tx.copy_request(id)))
                .is_ok_and(|q| q.state == RequestState::Cancelled);
            if cancelled {
                withdrawn.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

fn record_arrival(
    cat: &mut Catalog,
    r: &CopyRequest,
    dest: &Node,
    bytes: u64,
    t0: Instant,
) -> Result<(), CopyFailure> {
    let t = now();
    let effects = cat.write(|tx| {
        tx.record_copy(r.file_id, dest.id, Has::Yes, Some(size_on_disk(bytes)), t)?;
        tx.finish_copy_request(r.id, bytes, t0.elapsed().as_secs_f64(), t)?;
        tx.fire_auto_actions(r.file_id, dest.id, t)
    })?;
    log_effects(&r.path, &effects);
    Ok(())
}

fn node_space(cat: &mut Catalog, node: &Node) -> Result<NodeSpace> {
    let used = cat.read(|tx| tx.used_by_copies(node.id))?;
    Ok(NodeSpace {
        used_by_copies: used,
        max_total: node.max_total,
        avail: node.avail,
        capacity: node.capacity,
        min_avail: node.min_avail,
    })
}

/// The node of the destination group on this host that takes the copy: the group's node here,
/// or for a transport group the fullest disk that still fits.
fn choose_destination(
    shared: &Shared,
    cat: &mut Catalog,
    r: &CopyRequest,
) -> Result<Node, CopyFailure> {
    let group = cat.read(|tx| tx.group(&r.to_group))?;
    let here: Vec<Node> = shared
        .available
        .lock()
        .expect("available lock")
        .values()
        .filter(|n| n.group_id == group.id && !n.paused)
        .cloned()
        .collect();
    if here.is_empty() {
        return Err(CopyFailure::Cancelled);
    }
    if group.io_class == IoClass::Transport {
        let mut cands = Vec::new();
        for n in &here {
            cands.push(TransportCandidate {
                node_id: n.id,
                name: n.name.clone(),
                host_id: n.host_id,
                active: n.active && n.kind == NodeKind::Transport,
                space: node_space(cat, n)?,
            });
        }
        let chosen = rules::choose_transport(&cands, shared.host_id, r.size)
            .map_err(|e| CopyFailure::Failed(e.to_string()))?;
        return Ok(here
            .into_iter()
            .find(|n| n.id == chosen)
            .expect("chosen among candidates"));
    }
    let mut here = here;
    here.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(here.remove(0))
}

// ---- verify ----

fn verify(shared: &Arc<Shared>, node_id: Id, w: &CopyWork) -> Result<()> {
    let (node, root) = node_and_root(shared, node_id)?;
    let full = root.join(&w.path);
    info!("Checking copy \"{}\" on node {}.", w.path, node.name);
    let has = match std::fs::metadata(&full) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error!("File {} on node {} is missing!", w.path, node.name);
            Has::No
        }
        Err(e) => {
            warn!(
                "File {} on node {}: cannot stat: {e}; marking suspect.",
                w.path, node.name
            );
            Has::Suspect
        }
        Ok(m) if m.len() != w.size => {
            error!(
                "File {} on node {} is corrupt! Size: {}; expected: {}",
                w.path,
                node.name,
                m.len(),
                w.size
            );
            Has::Corrupt
        }
        Ok(_) => match copyfile::md5_of(&full, &shared.cancel) {
            Ok((_, md5)) if md5 == w.md5 => {
                info!("File {} on node {} is A-OK!", w.path, node.name);
                Has::Yes
            }
            Ok((_, md5)) => {
                error!(
                    "File {} on node {} is corrupt! MD5: {md5}; expected: {}",
                    w.path, node.name, w.md5
                );
                Has::Corrupt
            }
            Err(_) if shared.is_cancelled() => return Ok(()),
            Err(e) => {
                warn!(
                    "File {} on node {}: read error: {e}; marking suspect.",
                    w.path, node.name
                );
                Has::Suspect
            }
        },
    };
    shared.pool.with(|cat| {
        cat.write(|tx| tx.record_verify(w.copy.id, has, now()))?;
        Ok(())
    })
}

// ---- release ----

fn release(shared: &Arc<Shared>, node_id: Id, w: &CopyWork) -> Result<()> {
    let (node, root) = node_and_root(shared, node_id)?;
    let min = shared.config.daemon.min_archive_copies;
    let outcome = shared
        .pool
        .with(|cat| cat.write(|tx| tx.try_release(w.copy.id, min, now())))?;
    if let Err(refusal) = outcome {
        warn!("Not deleting {} on {}: {refusal}.", w.path, node.name);
        shared
            .refused
            .lock()
            .expect("refused lock")
            .insert(w.copy.id, Instant::now());
        return Ok(());
    }
    let full = root.join(&w.path);
    match std::fs::remove_file(&full) {
        Ok(()) => info!("Removed file copy {} on {}", w.path, node.name),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!("File copy {} on {} was already gone", w.path, node.name)
        }
        Err(e) => {
            error!(
                "Cannot remove {}: {e} (the catalog no longer counts it)",
                full.display()
            );
            return Ok(());
        }
    }
    if let Some(parent) = full.parent() {
        match copyfile::remove_empty_dirs(parent, &root) {
            Ok(dirs) => {
                for d in dirs {
                    info!("Removed directory {} on {}", d.display(), node.name);
                }
            }
            Err(e) => warn!("Cannot tidy directories above {}: {e}", full.display()),
        }
    }
    Ok(())
}

// ---- tidy ----

fn tidy(shared: &Arc<Shared>, node_id: Id) -> Result<()> {
    let (node, root) = node_and_root(shared, node_id)?;
    let tmp = NodeRoot::new(&root).tmp();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // A temp file of a copy running now, or of a pull from another host waiting to be
        // resumed (`.part`), is not a leftover.
        if let Some(Incoming {
            request: id,
            resumable,
        }) = Incoming::parse(&name)
        {
            let waiting = shared.is_running(&Key::Copy(id))
                || (resumable
                    && shared
                        .pool
                        .with(|cat| cat.read(|tx| tx.copy_request(id)))
                        .is_ok_and(|r| {
                            matches!(r.state, RequestState::Pending | RequestState::Active)
                        }));
            if waiting {
                continue;
            }
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => info!("Tidy up {}: removed leftover temp file {name}", node.name),
            Err(err) => warn!("Tidy up {}: cannot remove {name}: {err}", node.name),
        }
    }
    Ok(())
}
