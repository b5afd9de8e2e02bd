use anyhow::Result;
use cairn_catalog::model::{Node, NodeKind, NodeStats};
use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, json, opt_size, opt_str, size_or_dash, yes_no};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every transport disk: where it is, how full, what it carries and for where
    Status,
}

#[derive(Serialize)]
struct Disk {
    #[serde(flatten)]
    node: Node,
    stats: Option<NodeStats>,
    /// Pending copies from this disk, per destination group: (group, files, bytes).
    bound_for: Vec<(String, u64, u64)>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::Status => {
            let disks = cat.read(|tx| {
                let mut out = Vec::new();
                for node in tx
                    .nodes()?
                    .into_iter()
                    .filter(|n| n.kind == NodeKind::Transport)
                {
                    let stats = tx.node_stats(Some(&[node.id]))?.into_iter().next();
                    let bound_for = tx.outbound_summary(node.id)?;
                    out.push(Disk {
                        node,
                        stats,
                        bound_for,
                    });
                }
                Ok(out)
            })?;
            if ctx.json {
                return json(&disks);
            }
            if disks.is_empty() {
                println!("No transport disks.");
                return Ok(());
            }
            let mut t = Table::new(&[
                "Disk",
                "Group",
                "Host",
                "Root",
                "Active",
                "Available",
                "% Full",
                "Files",
                "Size",
                "Bound For",
            ]);
            for d in &disks {
                let n = &d.node;
                let full = match (n.avail, n.capacity) {
                    (Some(a), Some(c)) if c > 0 => {
                        format!("{:.1}", (c - a.min(c)) as f64 * 100.0 / c as f64)
                    }
                    _ => "-".into(),
                };
                let (files, bytes) = d.stats.as_ref().map_or((0, 0), |s| (s.files, s.bytes));
                let bound = if d.bound_for.is_empty() {
                    "-".to_owned()
                } else {
                    d.bound_for
                        .iter()
                        .map(|(g, n, b)| format!("{g}: {n} ({})", size_or_dash(*b)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                t.row(vec![
                    n.name.clone(),
                    n.group.clone(),
                    opt_str(n.host.as_deref()).into(),
                    opt_str(n.root.as_deref()).into(),
                    yes_no(n.active).into(),
                    opt_size(n.avail),
                    full,
                    files.to_string(),
                    size_or_dash(bytes),
                    bound,
                ]);
            }
            t.print();
        }
    }
    Ok(())
}
