//! `node sync NODE GROUP` and `group sync GROUP NODE`: copies of every file that is healthy on
//! a node and absent from a group, requested in bulk.

use anyhow::Result;
use cairn_catalog::catalog::{CopySelect, NewCopyRequest, SyncCandidate};
use cairn_catalog::units::now;
use cairn_catalog::{Catalog, CatalogError};
use clap::Args;

use crate::output::{confirm, count_size, plural};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Skip files already present in this group (the final destination behind a transport
    /// group)
    #[arg(long)]
    target: Option<String>,
    /// Only files of this acquisition
    #[arg(long)]
    acq: Option<String>,
    /// Only files at or below this path
    #[arg(long, value_name = "PREFIX")]
    path: Option<String>,
    /// List the files that would be synced
    #[arg(long)]
    show_files: bool,
    /// Do not ask for confirmation
    #[arg(long, short = 'f')]
    force: bool,
    /// Follow the copies until they are done or failed
    #[arg(long)]
    wait: bool,
}

/// How many files, and their bytes.
pub fn totals(files: &[SyncCandidate]) -> (usize, u64) {
    (files.len(), files.iter().map(|f| f.size).sum())
}

/// `node sync NODE GROUP` and `group sync GROUP NODE`: request copies of every file that is
/// healthy on NODE and absent from GROUP (and from `--target`).
pub fn run(
    cat: &mut Catalog,
    node: &str,
    group: &str,
    args: &SyncArgs,
    socket: &std::path::Path,
) -> Result<()> {
    let (src, dst, files) = cat.read(|tx| {
        let src = tx.node(node)?;
        let dst = tx.group(group)?;
        if src.group_id == dst.id {
            return Err(CatalogError::Invalid(format!(
                "node {node:?} is in group {group:?} already: nothing to sync into itself"
            )));
        }
        let target = args.target.as_deref().map(|g| tx.group(g)).transpose()?;
        let select = CopySelect {
            acq: args
                .acq
                .as_deref()
                .map(|a| tx.acq(a))
                .transpose()?
                .map(|a| a.id),
            path_prefix: args.path.clone(),
            added_before: None,
        };
        let files = tx.sync_candidates(src.id, dst.id, target.map(|g| g.id), &select)?;
        Ok((src, dst, files))
    })?;
    let (n, bytes) = totals(&files);
    if n == 0 {
        println!("No files to sync.");
        return Ok(());
    }
    let what = format!(
        "{} from Node \"{}\" to Group \"{}\"",
        count_size(n, bytes),
        src.name,
        dst.name
    );
    if args.show_files {
        println!("Would sync {what}:");
        files.iter().for_each(|f| println!("{}", f.path));
    } else {
        println!("Would sync {what}.");
    }
    if !confirm(args.force)? {
        println!("Cancelled.");
        return Ok(());
    }
    println!("Syncing {what}.");
    let t = now();
    let reqs: Vec<NewCopyRequest> = files
        .iter()
        .map(|f| NewCopyRequest {
            file_id: f.file_id,
            from_node: src.id,
            to_group: dst.id,
        })
        .collect();
    let ids = cat.write(|tx| tx.create_copy_requests(&reqs, t))?;
    let created: Vec<_> = ids
        .into_iter()
        .zip(&files)
        .filter_map(|(id, f)| id.map(|id| (id, f.size)))
        .collect();
    let added = created.len();
    println!(
        "Added {added} new copy {}.",
        plural(added, "request", "requests")
    );
    if added < n {
        println!("{} already requested.", n - added);
    }
    if args.wait && added > 0 {
        // Wake this machine's cairnd now: the nudge after the command would come too late.
        cairn_node::socket::nudge(socket);
        crate::wait::copies(cat, &created)?;
    }
    Ok(())
}
