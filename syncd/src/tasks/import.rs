//! Init, import and scan: a node's marker written; files found under a node root registered
//! with their copy there (`Tx::import_copy`), by request, by scan, or on close (auto-import).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use cairn_catalog::Catalog;
use cairn_catalog::catalog::{ImportOutcome, NewFile};
use cairn_catalog::model::{ConflictName, File, Has, ImportId, Node, NodeId};
use cairn_catalog::units::now;
use cairn_node::copyfile;
use cairn_node::importer::Verdict;
use cairn_node::root::{Marker, NodeRoot, RootState};
use cairn_node::waiting::{self, Waiting, WaitingList};
use tracing::{debug, error, info, warn};

use super::{TaskContext, log_effects, node_and_root};
use crate::procfs::{self, OpenWriters};

pub(super) fn init(ctx: &TaskContext, request: ImportId, node_id: NodeId) -> Result<()> {
    with_import_request(ctx, Some(request), |cat| {
        let node = cat.read(|tx| tx.node_by_id(node_id))?;
        match init_node(ctx, &node) {
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
    ctx: &TaskContext,
    request: Option<ImportId>,
    work: impl FnOnce(&mut Catalog) -> Result<Option<String>>,
) -> Result<()> {
    ctx.pool.with(|cat| {
        if let Some(r) = request
            && !cat.write(|tx| tx.claim_import_request(r))?
        {
            return Ok(());
        }
        let error = work(cat)?;
        if let Some(r) = request
            && ctx.is_cancelled()
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

fn init_node(ctx: &TaskContext, node: &Node) -> Result<String> {
    let root = node
        .root
        .as_deref()
        .ok_or_else(|| anyhow!("it has no root (set one with `cairn node modify --root`)"))?;
    let root = NodeRoot::new(root);
    match root.check(&node.name, &ctx.host.catalog_id) {
        RootState::Ready => Ok(format!("Node \"{}\" is already initialised.", node.name)),
        RootState::NotInitialised => {
            root.write_marker(&Marker {
                node: node.name.clone(),
                catalog_id: ctx.host.catalog_id.clone(),
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

pub(super) fn import_request(
    ctx: &TaskContext,
    node_id: NodeId,
    request: Option<ImportId>,
    path: &str,
    register_new: bool,
) -> Result<()> {
    with_import_request(ctx, request, |cat| {
        let (node, root) = node_and_root(ctx, node_id)?;
        let writers = procfs::open_for_writing().ok();
        let outcome = import_one(ctx, cat, &node, &root, path, register_new, writers.as_ref());
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

pub(super) fn auto_import(ctx: &TaskContext, node_id: NodeId, path: &str) -> Result<()> {
    ctx.pool.with(|cat| {
        let (node, root) = node_and_root(ctx, node_id)?;
        match import_one(ctx, cat, &node, &root, path, true, None)? {
            Imported::Skipped(why) => {
                info!("Not importing \"{path}\" on node \"{}\": {why}.", node.name)
            }
            Imported::Yes | Imported::AlreadyThere => {}
        }
        Ok(())
    })
}

fn import_one(
    ctx: &TaskContext,
    cat: &mut Catalog,
    node: &Node,
    root: &Path,
    path: &str,
    register_new: bool,
    writers: Option<&OpenWriters>,
) -> Result<Imported> {
    match examine(ctx, cat, node, root, path, register_new, writers)? {
        Examined::AlreadyThere => Ok(Imported::AlreadyThere),
        Examined::Skip(why) => Ok(Imported::Skipped(why)),
        Examined::New(f) => {
            register(ctx, cat, node, root, std::slice::from_ref(&f))?;
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

/// A file under a node root that the import rules and the disk let through: its catalog
/// facts decide the rest ([`decide`]).
struct Candidate {
    path: String,
    acq: String,
    full: std::path::PathBuf,
    mtime: i64,
    own: cairn_catalog::model::Ownership,
}

/// Looks at one file under a node root: whether to register it, and if not, why.
fn examine(
    ctx: &TaskContext,
    cat: &mut Catalog,
    node: &Node,
    root: &Path,
    path: &str,
    register_new: bool,
    writers: Option<&OpenWriters>,
) -> Result<Examined> {
    let c = match look(ctx, root, path, writers)? {
        Ok(c) => c,
        Err(why) => return Ok(Examined::Skip(why)),
    };
    let mut known = cat.read(|tx| tx.files_at(&[split(&c.path)], node.id))?;
    let at = known.remove(&c.path);
    decide(ctx, c, at, register_new)
}

/// `path` as (directory, name).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// What the disk and the import rules say of one file: a candidate, or why not.
fn look(
    ctx: &TaskContext,
    root: &Path,
    path: &str,
    writers: Option<&OpenWriters>,
) -> Result<std::result::Result<Candidate, String>> {
    let path = match cairn_catalog::catalog::normalize_path(path) {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return Ok(Err("not a file path".into())),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let acq = match ctx.importer.check(&path) {
        Verdict::Import { acq } => acq,
        Verdict::Skip(why) => return Ok(Err(why)),
    };
    let full = root.join(&path);
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("no such file under {}", root.display())));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", full.display())),
    };
    if !meta.file_type().is_file() {
        return Ok(Err("not a regular file".into()));
    }
    let open = match writers {
        Some(w) => w.contains(&full),
        None => procfs::is_open_for_writing(&full).unwrap_or(false),
    };
    if open {
        return Ok(Err(
            "still open for writing; it is imported when closed".into()
        ));
    }
    use std::os::unix::fs::MetadataExt;
    Ok(Ok(Candidate {
        path,
        acq,
        full,
        mtime: meta.mtime(),
        // The node file's owner, group and mode, by name: what every mount shows.
        own: cairn_node::ids::ownership_of(names(), &meta),
    }))
}

/// Decides on a candidate from what the catalog has at its path (the file and its copy on
/// the node), hashing it if it is to be registered.
fn decide(
    ctx: &TaskContext,
    c: Candidate,
    known: Option<(File, Option<Has>)>,
    register_new: bool,
) -> Result<Examined> {
    if let Some((_, Some(Has::Yes))) = &known {
        return Ok(Examined::AlreadyThere);
    }
    if known.is_none() && !register_new {
        return Ok(Examined::Skip(
            "not in the catalog (import with --register-new to add it)".into(),
        ));
    }
    let (size, md5) = copyfile::md5_of(&c.full, &ctx.cancel)
        .with_context(|| format!("cannot read {}", c.full.display()))?;
    if let Some((f, _)) = &known
        && (f.size != size || f.md5 != md5)
    {
        return Ok(Examined::Skip(format!(
            "its contents differ from the registered file ({size} bytes, md5 {md5}; \
             the catalog has {} bytes, md5 {})",
            f.size, f.md5
        )));
    }
    Ok(Examined::New(NewFile {
        path: c.path,
        acq: c.acq,
        size,
        md5,
        mtime: c.mtime,
        own: c.own,
    }))
}

/// This host's user and group names (looked up once each).
fn names() -> &'static cairn_node::ids::Ids {
    static IDS: std::sync::OnceLock<cairn_node::ids::Ids> = std::sync::OnceLock::new();
    IDS.get_or_init(|| cairn_node::ids::Ids::new("nobody"))
}

/// Registers files and their copies on `node` in one transaction, with their auto-actions.
/// Registers files found on a node with their copy there, in one transaction. When the
/// catalog cannot take them (its primary out of reach, say a cut link), they wait on the node
/// ([`WaitingList`]) and are registered by [`replay`] once it answers: nothing found is
/// waited on or lost.
fn register(
    ctx: &TaskContext,
    cat: &mut Catalog,
    node: &Node,
    root: &Path,
    files: &[NewFile],
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    if ctx.outage.holds() {
        // Not worth a wait: the catalog did not answer a moment ago.
        return keep_waiting(
            ctx,
            node,
            root,
            files,
            "its primary did not answer lately",
            false,
        );
    }
    let t = now();
    let outcomes = match cat.write_or_give_up(ctx.outage.patience(), |tx| {
        tx.import_copies(files, node.id, t)
    }) {
        Ok(o) => {
            ctx.outage.answered();
            o
        }
        Err(e) if out_of_reach(&e) => {
            let started = ctx.outage.failed();
            return keep_waiting(ctx, node, root, files, &e.to_string(), started);
        }
        Err(e) => return Err(e.into()),
    };
    for (f, outcome) in files.iter().zip(outcomes) {
        log_outcome(node, f, outcome);
    }
    Ok(())
}

/// How long a replay waits for a catalog out of reach before it leaves the files waiting.
const REGISTER_PATIENCE: Duration = Duration::from_secs(5);

/// Registrations replayed from a node's waiting list at once (one transaction).
const REPLAY_BATCH: usize = 1000;

/// Whether the catalog could not be reached for a write (a cut link, a server down), as
/// opposed to being busy or refusing what was written.
fn out_of_reach(e: &cairn_catalog::CatalogError) -> bool {
    e.is_unreachable()
}

fn keep_waiting(
    ctx: &TaskContext,
    node: &Node,
    root: &Path,
    files: &[NewFile],
    why: &str,
    loud: bool,
) -> Result<()> {
    let stamped: Vec<(NewFile, String)> = files
        .iter()
        .filter_map(|f| {
            let meta = std::fs::metadata(root.join(&f.path)).ok()?;
            Some((f.clone(), waiting::stamp(&meta)))
        })
        .collect();
    WaitingList::open(root)
        .and_then(|mut w| w.note(&stamped, now()))
        .with_context(|| format!("the catalog cannot take them ({why})"))?;
    ctx.registrations_waiting.store(true, Ordering::Relaxed);
    let (n, name) = (stamped.len(), &node.name);
    if loud {
        warn!(
            "Cannot register {n} file(s) on node \"{name}\" now ({why}): they wait on the \
             node (.cairn/waiting.db) and are registered when the catalog answers, as are \
             those found until then."
        );
    } else {
        debug!("{n} file(s) on node \"{name}\" wait for the catalog ({why}).");
    }
    Ok(())
}

fn log_outcome(node: &Node, f: &NewFile, outcome: ImportOutcome) {
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

/// Registers what waits on `node` (oldest first, in batches, each once), until nothing is
/// left or the catalog stops answering. True once nothing waits. A file changed or removed
/// since it was found is not registered as it was (auto-import or a scan finds it again); a
/// path that another host archived meanwhile with other bytes is a conflict: this node's
/// file is kept too, under `NAME.conflict-HOST-N` (see [`ConflictName`]), and registered
/// under that name.
pub(crate) fn replay(ctx: &TaskContext, node: &Node, root: &Path) -> Result<bool> {
    let mut list = WaitingList::open(root)?;
    loop {
        if ctx.is_cancelled() {
            return Ok(false);
        }
        let rows = list.oldest(REPLAY_BATCH)?;
        if rows.is_empty() {
            return Ok(true);
        }
        let (same, changed): (Vec<&Waiting>, Vec<&Waiting>) = rows.iter().partition(|w| {
            std::fs::metadata(root.join(&w.file.path)).is_ok_and(|m| waiting::stamp(&m) == w.stamp)
        });
        for w in &changed {
            info!(
                "\"{}\" on node \"{}\" changed or went away since it was found during the \
                 catalog's outage: not registered as it was then.",
                w.file.path, node.name
            );
        }
        list.done(&changed)?;
        let files: Vec<NewFile> = same.iter().map(|w| w.file.clone()).collect();
        let t = now();
        let outcomes = match ctx.pool.with(|cat| {
            cat.write_or_give_up(REGISTER_PATIENCE, |tx| tx.import_copies(&files, node.id, t))
        }) {
            Ok(o) => {
                ctx.outage.answered();
                o
            }
            Err(e) if out_of_reach(&e) => {
                ctx.outage.failed();
                debug!(
                    "The catalog cannot take what waits on node \"{}\" yet: {e}",
                    node.name
                );
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let mut aside = Vec::new();
        for (w, outcome) in same.iter().zip(outcomes) {
            match outcome {
                ImportOutcome::Conflict { existing } => match keep_aside(ctx, root, &w.file) {
                    Ok(f) => {
                        warn!(
                            "\"{}\" on node \"{}\", found while the catalog was out of \
                                 reach, was archived meanwhile with other contents ({} bytes, \
                                 md5 {}; this one {} bytes, md5 {}): this one is kept as \
                                 \"{}\" (`cairn file conflicts` lists it).",
                            w.file.path,
                            node.name,
                            existing.size,
                            existing.md5,
                            w.file.size,
                            w.file.md5,
                            f.path
                        );
                        aside.push(f);
                    }
                    Err(e) => error!(
                        "\"{}\" on node \"{}\" was archived meanwhile with other \
                             contents, and cannot be kept aside: {e:#}; it stays where it is, \
                             not registered.",
                        w.file.path, node.name
                    ),
                },
                other => log_outcome(node, &w.file, other),
            }
        }
        if !aside.is_empty() {
            ctx.pool
                .with(|cat| register(ctx, cat, node, root, &aside))?;
        }
        list.done(&same)?;
        info!(
            "Registered {} file(s) on node \"{}\" that waited for the catalog.",
            same.len(),
            node.name
        );
    }
}

/// Moves a node file whose path was archived meanwhile with other bytes to a conflict name
/// beside it, never over another file; what it is to be registered as.
fn keep_aside(ctx: &TaskContext, root: &Path, f: &NewFile) -> Result<NewFile> {
    let (dir, name) = split(&f.path);
    let aside = ConflictName::now(name, &ctx.host.name);
    let path = if dir.is_empty() {
        aside
    } else {
        format!("{dir}/{aside}")
    };
    copyfile::rename_noreplace(&root.join(&f.path), &root.join(&path))
        .with_context(|| format!("cannot rename it to {path}"))?;
    Ok(NewFile { path, ..f.clone() })
}

// ---- scan ----

/// Files a scan looks up and registers at once: one read and one transaction each, of a
/// few statements (a PostgreSQL catalog's batch statements take this many at once,
/// `Tx::files_per_statement`), so that a site far from the primary pays a few round trips per
/// 6,000 files.
const SCAN_BATCH: usize = 6000;

pub(super) fn scan(
    ctx: &TaskContext,
    node_id: NodeId,
    request: Option<ImportId>,
    path: &str,
    register_new: bool,
) -> Result<()> {
    with_import_request(ctx, request, |cat| {
        let (node, root) = node_and_root(ctx, node_id)?;
        Ok(
            match scan_tree(ctx, cat, &node, &root, path, register_new) {
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
    ctx: &TaskContext,
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
    files.retain(|p| !have.contains(p));
    let (mut imported, mut skipped) = (0, 0);
    // A batch: one read of what the catalog has at its paths, one transaction to register.
    for chunk in files.chunks(SCAN_BATCH) {
        if ctx.is_cancelled() {
            break;
        }
        let mut candidates = Vec::with_capacity(chunk.len());
        for p in chunk {
            match look(ctx, root, p, writers.as_ref())? {
                Ok(c) => candidates.push(c),
                Err(why) => {
                    info!("Not importing \"{p}\": {why}.");
                    skipped += 1;
                }
            }
        }
        let paths: Vec<(&str, &str)> = candidates.iter().map(|c| split(&c.path)).collect();
        let mut known = cat.read(|tx| tx.files_at(&paths, node.id))?;
        let mut batch = Vec::with_capacity(candidates.len());
        for c in candidates {
            if ctx.is_cancelled() {
                break;
            }
            let path = c.path.clone();
            match decide(ctx, c, known.remove(&path), register_new)? {
                Examined::AlreadyThere => {}
                Examined::Skip(why) => {
                    info!("Not importing \"{path}\": {why}.");
                    skipped += 1;
                }
                Examined::New(f) => batch.push(f),
            }
        }
        imported += batch.len();
        register(ctx, cat, node, root, &batch)?;
    }
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

/// How often the replayer looks for registrations waiting on this host's nodes while some
/// are known to wait, and how many of its looks go by before it looks anyway.
const REPLAY_EVERY: Duration = Duration::from_secs(1);
const REPLAY_LOOK_ANYWAY: u32 = 10;

/// Starts the thread that registers what waits on this host's nodes ([`replay`]) as soon as
/// the catalog answers: within a second of a cut link's return, not at the next pass.
pub fn start_replayer(ctx: std::sync::Arc<TaskContext>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("replayer".into())
        .spawn(move || {
            let mut ticks = 0u32;
            while !ctx.is_cancelled() {
                std::thread::sleep(REPLAY_EVERY);
                ticks += 1;
                // Cleared before the look: what is noted meanwhile sets it again.
                let known = ctx.registrations_waiting.swap(false, Ordering::Relaxed);
                if !known && !ticks.is_multiple_of(REPLAY_LOOK_ANYWAY) {
                    continue;
                }
                let mut left = false;
                for node in ctx.nodes.available() {
                    let Some(root) = node.root.as_deref().map(Path::new) else {
                        continue;
                    };
                    if !WaitingList::peek(root).is_ok_and(|s| s.is_some_and(|s| s.files > 0)) {
                        continue;
                    }
                    match replay(&ctx, &node, root) {
                        Ok(true) => {}
                        Ok(false) => left = true,
                        Err(e) => {
                            left = true;
                            warn!(
                                "Cannot register what waits on node \"{}\": {e:#}",
                                node.name
                            );
                        }
                    }
                }
                if left {
                    ctx.registrations_waiting.store(true, Ordering::Relaxed);
                }
            }
        })?;
    Ok(())
}
