//! Verify, release and tidy: a copy checked against its md5, a copy deleted under the
//! archive-copies rule (invariant 3), leftovers removed from `.cairn/tmp/`.

use anyhow::Result;
use cairn_catalog::catalog::CopyWork;
use cairn_catalog::model::{Has, NodeId, RequestState};
use cairn_catalog::units::now;
use cairn_node::copyfile;
use cairn_node::root::{Incoming, IncomingBatch, NodeRoot};
use tracing::{debug, error, info, warn};

use super::{Key, TaskContext, node_and_root};
use crate::metrics::Metrics;

// ---- verify ----

pub(super) fn verify(ctx: &TaskContext, node_id: NodeId, w: &CopyWork) -> Result<()> {
    let (node, root) = node_and_root(ctx, node_id)?;
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
        Ok(_) => match copyfile::md5_of(&full, &ctx.cancel) {
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
            Err(_) if ctx.is_cancelled() => return Ok(()),
            Err(e) => {
                warn!(
                    "File {} on node {}: read error: {e}; marking suspect.",
                    w.path, node.name
                );
                Has::Suspect
            }
        },
    };
    ctx.pool.with(|cat| {
        cat.write(|tx| tx.record_verify(w.copy.id, has, now()))?;
        Ok(())
    })
}

// ---- release ----

pub(super) fn release(ctx: &TaskContext, node_id: NodeId, w: &CopyWork) -> Result<()> {
    let (node, root) = node_and_root(ctx, node_id)?;
    let min = ctx.limits.min_archive_copies;
    let outcome = ctx
        .pool
        .with(|cat| cat.write(|tx| tx.try_release(w.copy.id, min, now())))?;
    if let Err(refusal) = outcome {
        Metrics::add(&ctx.metrics.release_refusals, 1);
        let why = refusal.to_string();
        if ctx.refused.insert(w.copy.id, &why) {
            warn!(
                "Not deleting {} on {}: {why}. (Tried again at every pass; said again if the \
                 reason changes, or in an hour.)",
                w.path, node.name
            );
        } else {
            debug!("Not deleting {} on {}: {why}.", w.path, node.name);
        }
        return Ok(());
    }
    ctx.refused.released(w.copy.id);
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

pub(super) fn tidy(ctx: &TaskContext, node_id: NodeId) -> Result<()> {
    let (node, root) = node_and_root(ctx, node_id)?;
    let tmp = NodeRoot::new(&root).tmp();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // A batch's directory: its task's, or left whole by one cut off.
        if let Some(IncomingBatch { first }) = IncomingBatch::parse(&name)
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            if ctx.running.contains(&Key::Copy(first)) {
                continue;
            }
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => info!(
                    "Tidy up {}: removed leftover batch directory {name}",
                    node.name
                ),
                Err(err) => warn!("Tidy up {}: cannot remove {name}: {err}", node.name),
            }
            continue;
        }
        // A temp file of a copy running now, or of a pull from another host waiting to be
        // resumed (`.part`), is not a leftover.
        if let Some(Incoming {
            request: id,
            resumable,
        }) = Incoming::parse(&name)
        {
            let waiting = ctx.running.contains(&Key::Copy(id))
                || (resumable
                    && ctx
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
