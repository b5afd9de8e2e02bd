//! A copy request carried out on this host: destination, pre-pull search, space check,
//! source, transfer into `.cairn/tmp/`, md5 check, fsync, the marker checked again, install,
//! record with auto-actions — or a retry with backoff (invariant 2).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_catalog::Catalog;
use cairn_catalog::catalog::Arrival;
use cairn_catalog::model::{
    CopyRequest, File, FileId, Has, IoClass, Node, NodeId, NodeKind, RequestId, RequestState,
};
use cairn_catalog::rules::{self, NodeSpace, TransportCandidate};
use cairn_catalog::units::{format_size, now};
use cairn_node::copyfile;
use cairn_node::root::{Incoming, NodeRoot, RootState};
use cairn_node::temp::TempFile;
use tracing::{debug, error, info, warn};

use super::{TaskContext, log_effects};
use crate::metrics::Metrics;
use crate::transfer::{Location, Source};

pub(super) fn copy(ctx: &TaskContext, r: CopyRequest) -> Result<()> {
    ctx.pool.with(|cat| {
        // Claimed together with the requests other workers claim meanwhile.
        let won = ctx.batches.claims.submit(r.id, |ids| {
            let host = &ctx.host.name;
            let won = cat.write(|tx| tx.claim_copy_requests(&ids, host, now()))?;
            Ok(ids.iter().map(|id| won.contains(id)).collect())
        })?;
        if !won {
            return Ok(());
        }
        info!(
            "Beginning task AFCR#{}: {} -> {}",
            r.id, r.from_node, r.to_group
        );
        let outcome = prepare(ctx, cat, &r).and_then(|p| match p {
            Prepared::Found => Ok(()),
            Prepared::Pull(pull) => pull_one(ctx, cat, &r, *pull),
        });
        settle(ctx, cat, &r, outcome)
    })
}

/// Records how an attempt of claimed request `r` ended: nothing more on success, the request
/// given back if cancelled, a retry (or failure for good) otherwise.
pub(super) fn settle(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
    outcome: Result<(), CopyFailure>,
) -> Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(CopyFailure::Cancelled) => {
            cat.write(|tx| tx.unclaim_copy_request(r.id))?;
            Ok(())
        }
        Err(CopyFailure::Failed(reason)) => retry_later(ctx, cat, r, &reason, false),
        // A source that sent wrong bytes is marked suspect and no longer chosen: the next
        // attempt may start at once, from another copy.
        Err(CopyFailure::BadSource(reason)) => retry_later(ctx, cat, r, &reason, true),
        Err(CopyFailure::Catalog(e)) => Err(e),
    }
}

/// Records a failed attempt: retried after a growing backoff (at once if `now`), or failed
/// for good after `daemon.max_attempts`.
fn retry_later(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
    reason: &str,
    immediately: bool,
) -> Result<()> {
    let attempts = cat.read(|tx| tx.copy_request(r.id))?.attempts;
    let base = ctx.limits.retry_delay.as_secs().max(1) as i64;
    let delay = if immediately {
        0
    } else {
        backoff(base, attempts)
    };
    let max = ctx.limits.max_attempts;
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

pub(super) enum CopyFailure {
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

/// What a claimed request needs after [`prepare`].
pub(super) enum Prepared {
    /// The pre-pull search found the file in place; it is recorded.
    Found,
    /// A pull to make.
    Pull(Box<Pull>),
}

/// A pull ready to start: the file, where it goes, and the source chosen.
pub(super) struct Pull {
    pub file: File,
    pub dest: Node,
    pub root: PathBuf,
    pub final_path: PathBuf,
    pub source: Source,
    /// The partial pull of an earlier attempt, if one is there (`.part`, for resume).
    pub part: Option<PathBuf>,
    pub t0: Instant,
}

impl Pull {
    /// Whether the destination disk is still the node's (its marker says so).
    pub fn still_there(&self, ctx: &TaskContext) -> bool {
        NodeRoot::new(&self.root).check(&self.dest.name, &ctx.host.catalog_id) == RootState::Ready
    }
}

/// What the preparation of a batch learns once and uses for each of its files.
struct Known {
    /// The space of destination nodes, as known to the requests prepared so far (each counts
    /// the ones before it).
    spaces: HashMap<NodeId, NodeSpace>,
    partials: Partials,
}

/// The steps of a copy before the transfer: destination, pre-pull search, what is in the
/// way, space, source.
pub(super) fn prepare(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
) -> Result<Prepared, CopyFailure> {
    prepare_many(ctx, cat, std::slice::from_ref(r))?
        .pop()
        .expect("one request, one outcome")
}

/// [`prepare`] of each of `requests`, in order, with what they ask of the catalog read
/// together (their files and sources in one transaction), and the destination chosen and its
/// disk checked once per group rather than once per file. Only a catalog failure fails them
/// all.
pub(super) fn prepare_many(
    ctx: &TaskContext,
    cat: &mut Catalog,
    requests: &[CopyRequest],
) -> Result<Vec<Result<Prepared, CopyFailure>>> {
    let ids: Vec<FileId> = requests.iter().map(|r| r.file_id).collect();
    let mut files = cat.read(|tx| tx.files_by_ids(&ids))?;
    let sources = ctx.sources.for_requests(cat, requests)?;
    // A group's destination, and whether its disk is in place, once per batch (a transport
    // group's depends on each file's size: chosen for each; and a failed choice is tried
    // again for the next file).
    let mut dests: HashMap<String, (Node, bool)> = HashMap::new();
    let mut known = Known {
        spaces: HashMap::new(),
        partials: Partials {
            listed: (requests.len() > 1).then(HashMap::new),
        },
    };
    let mut out = Vec::with_capacity(requests.len());
    for (r, found) in requests.iter().zip(sources) {
        let Some(file) = files.remove(&r.file_id) else {
            let gone = cairn_catalog::CatalogError::not_found("file", format!("#{}", r.file_id));
            return Err(gone.into());
        };
        let dest = match dests.get(&r.to_group) {
            Some(d) => Ok(d.clone()),
            None => match choose_destination(ctx, cat, r) {
                Err(CopyFailure::Catalog(e)) => return Err(e),
                Err(f) => Err(f),
                Ok((dest, per_file)) => {
                    let root = PathBuf::from(dest.root.clone().unwrap_or_default());
                    // The destination may be a disk pulled out since the last loop: write
                    // only onto the disk whose marker says it is this node (never into the
                    // empty mount point below it).
                    let ready = NodeRoot::new(&root).check(&dest.name, &ctx.host.catalog_id)
                        == RootState::Ready;
                    if !per_file {
                        dests.insert(r.to_group.clone(), (dest.clone(), ready));
                    }
                    Ok((dest, ready))
                }
            },
        };
        let outcome = match dest {
            Ok((_, false)) => Err(CopyFailure::Cancelled),
            Ok((dest, true)) => prepare_one(ctx, cat, r, file, dest, found, &mut known),
            Err(f) => Err(f),
        };
        if let Err(CopyFailure::Catalog(e)) = outcome {
            return Err(e);
        }
        out.push(outcome);
    }
    Ok(out)
}

/// The partial pulls that earlier attempts left in the destinations' `.cairn/tmp/`.
struct Partials {
    /// For a batch, the names in each of those directories, listed once (`None` in the map:
    /// it could not be listed, each is looked up); `None`: each is looked up. Looking up
    /// each file's (all but always missing) partial took 4% of a receiving cairnd's time in
    /// a sync of small files.
    listed: Option<HashMap<PathBuf, Option<HashSet<OsString>>>>,
}

impl Partials {
    /// The bytes on disk of the partial pull `part`, 0 if there is none.
    fn held(&mut self, part: &Path) -> u64 {
        if let (Some(listed), Some(dir), Some(name)) =
            (&mut self.listed, part.parent(), part.file_name())
        {
            let names = listed
                .entry(dir.to_path_buf())
                .or_insert_with(|| match std::fs::read_dir(dir) {
                    Ok(entries) => entries
                        .map(|e| e.map(|e| e.file_name()))
                        .collect::<std::io::Result<_>>()
                        .ok(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(HashSet::new()),
                    Err(_) => None,
                });
            if names.as_ref().is_some_and(|n| !n.contains(name)) {
                return 0;
            }
        }
        std::fs::metadata(part).map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        })
    }
}

/// [`prepare`]'s steps for one file, its destination chosen (its disk in place) and its
/// sources found (`found`, best first).
fn prepare_one(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
    file: File,
    dest: Node,
    found: Vec<Source>,
    known: &mut Known,
) -> Result<Prepared, CopyFailure> {
    let root = PathBuf::from(dest.root.clone().unwrap_or_default());
    let final_path = root.join(&file.path);
    let t0 = Instant::now();

    // Pre-pull search: the file may be there already (copied by hand, or by an earlier run
    // that stopped before recording it). Nothing at the name, the usual case, is one `lstat`.
    let there = std::fs::symlink_metadata(&final_path).is_ok();
    debug!("Pre-pull search for {} in {}", file.path, dest.name);
    if there
        && let Ok(meta) = std::fs::metadata(&final_path)
        && meta.is_file()
        && meta.len() == file.size
        && let Ok((_, md5)) = copyfile::md5_of(&final_path, &ctx.cancel)
        && md5 == file.md5
    {
        info!(
            "Pre-pull search found {} on node \"{}\": recording it.",
            file.path, dest.name
        );
        record_arrival(ctx, cat, r, &dest, file.size, t0)?;
        return Ok(Prepared::Found);
    }
    // Something else is at the archive name. Overwrite it only if it is this file's own copy
    // gone bad; a file the catalog does not know is not cairn's to touch (invariant 6).
    if there {
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

    // The partial pull of an earlier attempt of this request is its own: its blocks count as
    // free for it, since this attempt resumes it (or removes it before a local copy).
    let part = NodeRoot::new(&root).incoming(Incoming {
        request: r.id,
        resumable: true,
    });
    let held = known.partials.held(&part);
    // The node's space once per batch: asking the catalog sums all the node's copies (when
    // it has a `max_total`).
    let space_now = match known.spaces.get(&dest.id) {
        Some(s) => *s,
        None => node_space(cat, &dest)?,
    };
    let space = space_now.holding(held);
    if let Err(no) = rules::fits(&space, file.size) {
        return Err(CopyFailure::Failed(format!(
            "node \"{}\" has no room: {no}",
            dest.name
        )));
    }
    // What this pull will take counts against the next file of the batch.
    known.spaces.insert(
        dest.id,
        NodeSpace {
            used_by_copies: space_now.used_by_copies + file.size,
            avail: space_now.avail.map(|a| a.saturating_sub(file.size)),
            ..space_now
        },
    );
    let Some(source) = found.into_iter().next() else {
        return Err(CopyFailure::Cancelled);
    };
    Ok(Prepared::Pull(Box::new(Pull {
        file,
        dest,
        root,
        final_path,
        source,
        part: (held > 0).then_some(part),
        t0,
    })))
}

/// Pulls or copies one file on its own: resumable from another host, md5-checked, fsynced,
/// installed and recorded.
pub(super) fn pull_one(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
    pull: Pull,
) -> Result<(), CopyFailure> {
    let still_there = || pull.still_there(ctx);
    let Pull {
        file,
        dest,
        root,
        final_path,
        source,
        part,
        t0: _,
    } = &pull;
    let t0 = pull.t0;
    let remote_host = match &source.location {
        Location::Remote { host, .. } => Some(host.clone()),
        Location::Local(_) => None,
    };
    if let (None, Some(part)) = (&remote_host, part) {
        // A local copy starts over: the partial pull would only take room.
        match std::fs::remove_file(part) {
            Ok(()) => info!(
                "Removed the partial pull of {} on node \"{}\": copying from this host.",
                file.path, dest.name
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("Cannot remove {}: {e}", part.display()),
        }
    }
    // A pull from another host may be resumed, so its temp file (`.part`) outlives a failed
    // attempt; a local copy starts over, and its temp file (`.tmp`) is a leftover once the
    // copy is not running.
    let tmp = NodeRoot::new(root).incoming(Incoming {
        request: r.id,
        resumable: remote_host.is_some(),
    });
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CopyFailure::Failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    // Removed on every way out below, except a resumable partial pull and the installed copy.
    let tmp = TempFile::new(tmp);
    info!(
        "Pulling file {} from node \"{}\"{} using {}",
        file.path,
        source.node,
        remote_host
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default(),
        ctx.transfer.method(source)
    );
    // The copy stops at its next chunk when cairnd shuts down or its request is cancelled.
    let stop = AtomicBool::new(false);
    let withdrawn = AtomicBool::new(false);
    let fetched = std::thread::scope(|s| {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        s.spawn(|| watch_request(ctx, r.id, finished, &stop, &withdrawn));
        let fetched = ctx.transfer.fetch(source, tmp.path(), &stop);
        drop(done);
        fetched
    });
    if withdrawn.load(Ordering::Relaxed) {
        info!(
            "Copy of {} to node \"{}\" stopped: request AFCR#{} was cancelled.",
            file.path, dest.name, r.id
        );
        return Err(CopyFailure::Cancelled);
    }
    let note_peer = |ok: bool| {
        if let Some(h) = &remote_host {
            ctx.sources.note_pull(h, ok);
        }
    };
    let copied = match fetched {
        Ok(c) => c,
        Err(e) => {
            // A partial pull from another host stays in .cairn/tmp, to be resumed with Range;
            // anything else starts over.
            if remote_host.is_some() && !ctx.is_cancelled() {
                tmp.keep();
            }
            if e.kind() == std::io::ErrorKind::Interrupted || ctx.is_cancelled() {
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
        drop(tmp);
        note_peer(false);
        Metrics::add(&ctx.metrics.md5_mismatches, 1);
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
    if ctx.is_cancelled() {
        return Err(CopyFailure::Cancelled);
    }
    // Invariant 2: the bytes are on disk before the copy gets its archive name.
    if let Err(e) = copyfile::sync_file(tmp.path()) {
        return Err(CopyFailure::Failed(format!(
            "cannot fsync {}: {e}",
            tmp.path().display()
        )));
    }
    if !still_there() {
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
    copyfile::install(tmp.path(), final_path).map_err(|e| {
        CopyFailure::Failed(format!(
            "cannot move into place at {}: {e}",
            final_path.display()
        ))
    })?;
    tmp.keep();
    note_peer(true);
    record_arrival(ctx, cat, r, dest, copied.bytes, t0)?;
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
    ctx: &TaskContext,
    id: RequestId,
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
        if ctx.is_cancelled() {
            stop.store(true, Ordering::Relaxed);
            return;
        }
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            let cancelled = ctx
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

/// Records the copy, its request done and the auto-actions it sets off, in one transaction
/// with the copies other workers record meanwhile.
fn record_arrival(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
    dest: &Node,
    bytes: u64,
    t0: Instant,
) -> Result<(), CopyFailure> {
    let arrival = Arrival {
        request: r.id,
        file_id: r.file_id,
        node_id: dest.id,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let effects = ctx.batches.arrivals.submit(arrival, |batch| {
        let t = now();
        Ok(cat.write(|tx| tx.record_arrivals(&batch, t))?)
    })?;
    log_effects(&r.path, &effects);
    Ok(())
}

fn node_space(cat: &mut Catalog, node: &Node) -> Result<NodeSpace> {
    // The sum reads every copy of the node (7.8% of a receiving cairnd's time in a sync of
    // small files into a node of 20,000, and growing with the node): only `max_total` needs
    // it.
    let used = match node.max_total {
        Some(_) => cat.read(|tx| tx.used_by_copies(node.id))?,
        None => 0,
    };
    Ok(NodeSpace {
        used_by_copies: used,
        max_total: node.max_total,
        avail: node.avail,
        capacity: node.capacity,
        min_avail: node.min_avail,
    })
}

/// The node of the destination group on this host that takes the copy: the group's node here,
/// or for a transport group the fullest disk that still fits (then `true`: chosen for this
/// file's size).
fn choose_destination(
    ctx: &TaskContext,
    cat: &mut Catalog,
    r: &CopyRequest,
) -> Result<(Node, bool), CopyFailure> {
    let group = cat.read(|tx| tx.group(&r.to_group))?;
    let here: Vec<Node> = ctx
        .nodes
        .available()
        .into_iter()
        .filter(|n| n.group_id == group.id && !n.paused)
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
        let chosen = rules::choose_transport(&cands, ctx.host.id, r.size)
            .map_err(|e| CopyFailure::Failed(e.to_string()))?;
        let dest = here.into_iter().find(|n| n.id == chosen);
        return Ok((dest.expect("chosen among candidates"), true));
    }
    let mut here = here;
    here.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((here.remove(0), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_finds_the_partial_pulls_its_directory_lists_and_no_others() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("7.part"), vec![1u8; 10_000]).unwrap();
        for listed in [Some(HashMap::new()), None] {
            let batch = listed.is_some();
            let mut partials = Partials { listed };
            assert!(
                partials.held(&tmp.join("7.part")) >= 10_000,
                "batch {batch}: a partial there counts with its blocks"
            );
            assert_eq!(partials.held(&tmp.join("8.part")), 0, "batch {batch}");
            // A directory that is not there (no pull has arrived on the node yet).
            assert_eq!(
                partials.held(&t.path().join("none/9.part")),
                0,
                "batch {batch}"
            );
        }
    }
}
