use anyhow::Result;
use cairn_catalog::catalog::FileFilter;
use cairn_catalog::model::{Acq, NodeStats};
use cairn_catalog::units::format_time;
use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, field, json, size_or_dash};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List acquisitions with their file counts and sizes
    List,
    /// Show an acquisition and where its files are
    Show { name: String },
}

#[derive(Serialize)]
struct AcqView {
    #[serde(flatten)]
    acq: Acq,
    files: u64,
    bytes: u64,
    /// Per node: how many of the acquisition's files it holds healthy copies of.
    nodes: Vec<NodeStats>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::List => {
            let acqs = cat.read(|tx| tx.acqs())?;
            if ctx.json {
                let views: Vec<_> = acqs
                    .into_iter()
                    .map(|(acq, files, bytes)| AcqView {
                        acq,
                        files,
                        bytes,
                        nodes: Vec::new(),
                    })
                    .collect();
                return json(&views);
            }
            let mut t = Table::new(&["Name", "Files", "Size", "Created"]);
            for (a, files, bytes) in &acqs {
                t.row(vec![
                    a.name.clone(),
                    files.to_string(),
                    size_or_dash(*bytes),
                    format_time(a.created_at),
                ]);
            }
            t.print();
        }
        Command::Show { name } => {
            let view = cat.read(|tx| {
                let acq = tx.acq(&name)?;
                let files = tx.files(&FileFilter {
                    acq: Some(acq.id),
                    ..FileFilter::default()
                })?;
                let mut nodes = Vec::new();
                for n in tx.nodes()? {
                    let on = tx.files_on_node(n.id, Some(acq.id), None)?;
                    let healthy: Vec<_> = on
                        .iter()
                        .filter(|(_, c)| c.has == cairn_catalog::model::Has::Yes)
                        .collect();
                    if on.is_empty() {
                        continue;
                    }
                    nodes.push(NodeStats {
                        node: n.name.clone(),
                        files: healthy.len() as u64,
                        bytes: healthy.iter().map(|(f, _)| f.size).sum(),
                        corrupt: on
                            .iter()
                            .filter(|(_, c)| c.has == cairn_catalog::model::Has::Corrupt)
                            .count() as u64,
                        suspect: on
                            .iter()
                            .filter(|(_, c)| c.has == cairn_catalog::model::Has::Suspect)
                            .count() as u64,
                        missing: 0,
                        max_total: n.max_total,
                    });
                }
                Ok(AcqView {
                    acq,
                    files: files.len() as u64,
                    bytes: files.iter().map(|f| f.size).sum(),
                    nodes,
                })
            })?;
            if ctx.json {
                return json(&view);
            }
            field("Acquisition", &view.acq.name);
            field("Created", format_time(view.acq.created_at));
            field("Files", view.files);
            field("Total Size", size_or_dash(view.bytes));
            println!();
            println!("Copies by node:");
            if view.nodes.is_empty() {
                println!("none");
            } else {
                let mut t = Table::new(&["Node", "Files", "Size", "Complete"]);
                for s in &view.nodes {
                    t.row(vec![
                        s.node.clone(),
                        s.files.to_string(),
                        size_or_dash(s.bytes),
                        if s.files == view.files { "Yes" } else { "No" }.into(),
                    ]);
                }
                t.print();
            }
        }
    }
    Ok(())
}
