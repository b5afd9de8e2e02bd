use anyhow::{Result, bail};
use cairn_catalog::catalog::CopyRequestFilter;
use cairn_catalog::model::{CopyRequest, ImportRequest, RequestId, RequestState};
use cairn_catalog::units::{format_size, now};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, json, opt_str, opt_time_short, plural};

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Pending requests
    #[arg(long)]
    pending: bool,
    /// Requests being carried out
    #[arg(long)]
    active: bool,
    /// Failed requests
    #[arg(long)]
    failed: bool,
    /// Done requests
    #[arg(long)]
    done: bool,
    /// Requests in any state
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List copy and import requests (default: pending, active and failed)
    List {
        #[command(flatten)]
        states: StateArgs,
        /// Requests reading from or writing to this node
        #[arg(long)]
        node: Option<String>,
        /// At most this many copy requests
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Put a failed or cancelled copy request back in the queue
    Retry {
        /// The request id (from `request list`)
        #[arg(required_unless_present = "failed")]
        id: Option<RequestId>,
        /// Every failed copy request
        #[arg(long, conflicts_with = "id")]
        failed: bool,
    },
    /// Cancel a pending or active copy request
    Cancel { id: RequestId },
}

#[derive(Serialize)]
struct Listing {
    copy_requests: Vec<CopyRequest>,
    import_requests: Vec<ImportRequest>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::List {
            states,
            node,
            limit,
        } => {
            let wanted: Vec<RequestState> = if states.all {
                Vec::new()
            } else {
                let picked: Vec<_> = [
                    (states.pending, RequestState::Pending),
                    (states.active, RequestState::Active),
                    (states.failed, RequestState::Failed),
                    (states.done, RequestState::Done),
                ]
                .into_iter()
                .filter_map(|(on, s)| on.then_some(s))
                .collect();
                if picked.is_empty() {
                    vec![
                        RequestState::Pending,
                        RequestState::Active,
                        RequestState::Failed,
                    ]
                } else {
                    picked
                }
            };
            let listing = cat.read(|tx| {
                let node_id = node
                    .as_deref()
                    .map(|n| tx.node(n))
                    .transpose()?
                    .map(|n| n.id);
                let copy_requests = tx.copy_requests(&CopyRequestFilter {
                    states: wanted.clone(),
                    node: node_id,
                    limit,
                })?;
                let import_requests = tx.import_requests(node_id, &wanted)?;
                Ok(Listing {
                    copy_requests,
                    import_requests,
                })
            })?;
            if ctx.json {
                return json(&listing);
            }
            println!("Copy requests:");
            if listing.copy_requests.is_empty() {
                println!("none");
            } else {
                let mut t = Table::new(&[
                    "ID",
                    "File",
                    "Size",
                    "From",
                    "To Group",
                    "State",
                    "Attempts",
                    "Created",
                    "Moved",
                    "Took",
                    "Last Error",
                ]);
                for r in &listing.copy_requests {
                    t.row(vec![
                        r.id.to_string(),
                        r.path.clone(),
                        format_size(r.size),
                        r.from_node.clone(),
                        r.to_group.clone(),
                        r.state.display_name().into(),
                        r.attempts.to_string(),
                        opt_time_short(Some(r.created_at)),
                        r.bytes.map_or_else(|| "-".into(), format_size),
                        r.seconds.map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
                        opt_str(r.last_error.as_deref()).into(),
                    ]);
                }
                t.print();
            }
            println!();
            println!("Import requests:");
            if listing.import_requests.is_empty() {
                println!("none");
            } else {
                let mut t = Table::new(&[
                    "ID",
                    "Node",
                    "Path",
                    "Kind",
                    "Register New",
                    "State",
                    "Created",
                    "Last Error",
                ]);
                for r in &listing.import_requests {
                    let kind = if r.init {
                        "init"
                    } else if r.scan {
                        "scan"
                    } else {
                        "import"
                    };
                    t.row(vec![
                        r.id.to_string(),
                        r.node.clone(),
                        if r.init { "-".into() } else { r.path.clone() },
                        kind.into(),
                        match (r.init, r.register_new) {
                            (true, _) => "-",
                            (false, true) => "Yes",
                            (false, false) => "No",
                        }
                        .into(),
                        r.state.display_name().into(),
                        opt_time_short(Some(r.created_at)),
                        opt_str(r.last_error.as_deref()).into(),
                    ]);
                }
                t.print();
            }
        }
        Command::Retry { id, failed } => {
            if id.is_none() && !failed {
                bail!("give a request id or --failed");
            }
            let n = cat.write(|tx| tx.retry_copy_requests(id))?;
            println!(
                "Requeued {n} copy {}.",
                plural(n as usize, "request", "requests")
            );
        }
        Command::Cancel { id } => {
            cat.write(|tx| tx.cancel_copy_request(id, now()))?;
            println!("Cancelled copy request #{id}.");
        }
    }
    Ok(())
}
