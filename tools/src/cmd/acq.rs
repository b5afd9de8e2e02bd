use anyhow::Result;
use cairn_catalog::model::Acq;
use cairn_catalog::units::{format_time, now};
use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, field, json, opt_time, size_or_dash};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List acquisitions with their file counts and sizes
    List {
        /// Only the acquisitions complete in GROUP: closed, with every file healthy there
        #[arg(long, value_name = "GROUP")]
        complete_in: Option<String>,
        /// With --complete-in: every acquisition, with its files in GROUP and whether it is
        /// complete there
        #[arg(long, requires = "complete_in")]
        all: bool,
    },
    /// Show an acquisition and, per group, whether it is complete there
    Show { name: String },
    /// Close an acquisition: no more files are expected, so it can be complete
    Close { name: String },
}

#[derive(Serialize)]
struct AcqView {
    #[serde(flatten)]
    acq: Acq,
    files: u64,
    bytes: u64,
    /// Per group: files with a healthy copy there, and whether the (closed) acquisition is
    /// complete there.
    groups: Vec<Presence>,
}

#[derive(Serialize)]
struct Presence {
    group: String,
    files: u64,
    complete: bool,
}

fn presence(acq: &Acq, files: u64, per_group: Vec<(String, u64)>) -> Vec<Presence> {
    per_group
        .into_iter()
        .map(|(group, n)| Presence {
            group,
            files: n,
            complete: acq.closed_at.is_some() && n == files,
        })
        .collect()
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::List { complete_in, all } => {
            let views = cat.read(|tx| {
                if let Some(g) = &complete_in {
                    tx.group(g)?;
                }
                let mut out = Vec::new();
                for (acq, files, bytes) in tx.acqs()? {
                    let per_group = tx.acq_presence(acq.id)?;
                    let groups = presence(&acq, files, per_group);
                    let complete_there =
                        |g: &str| groups.iter().any(|p| p.group == g && p.complete);
                    if let Some(g) = &complete_in
                        && !all
                        && !complete_there(g)
                    {
                        continue;
                    }
                    out.push(AcqView {
                        acq,
                        files,
                        bytes,
                        groups,
                    });
                }
                Ok(out)
            })?;
            if ctx.json {
                return json(&views);
            }
            match &complete_in {
                None => {
                    let mut t = Table::new(&["Name", "Files", "Size", "Created", "Closed"]);
                    for v in &views {
                        t.row(vec![
                            v.acq.name.clone(),
                            v.files.to_string(),
                            size_or_dash(v.bytes),
                            format_time(v.acq.created_at),
                            opt_time(v.acq.closed_at),
                        ]);
                    }
                    t.print();
                }
                Some(g) => {
                    let mut t = Table::new(&["Name", "Files", &format!("In {g}"), "Complete"]);
                    for v in &views {
                        let here = v.groups.iter().find(|p| &p.group == g);
                        t.row(vec![
                            v.acq.name.clone(),
                            v.files.to_string(),
                            here.map_or(0, |p| p.files).to_string(),
                            if here.is_some_and(|p| p.complete) {
                                "Yes"
                            } else {
                                "No"
                            }
                            .into(),
                        ]);
                    }
                    t.print();
                }
            }
        }
        Command::Show { name } => {
            let view = cat.read(|tx| {
                let acq = tx.acq(&name)?;
                let (files, bytes) = tx
                    .acqs()?
                    .into_iter()
                    .find(|(a, _, _)| a.id == acq.id)
                    .map_or((0, 0), |(_, f, b)| (f, b));
                let groups = presence(&acq, files, tx.acq_presence(acq.id)?);
                Ok(AcqView {
                    acq,
                    files,
                    bytes,
                    groups,
                })
            })?;
            if ctx.json {
                return json(&view);
            }
            field("Acquisition", &view.acq.name);
            field("Created", format_time(view.acq.created_at));
            field(
                "Closed",
                view.acq.closed_at.map_or_else(|| "No".into(), format_time),
            );
            field("Files", view.files);
            field("Total Size", size_or_dash(view.bytes));
            println!();
            println!("Copies by group:");
            if view.groups.is_empty() {
                println!("none");
            } else {
                let mut t = Table::new(&["Group", "Files", "Complete"]);
                for p in &view.groups {
                    t.row(vec![
                        p.group.clone(),
                        p.files.to_string(),
                        if p.complete { "Yes" } else { "No" }.into(),
                    ]);
                }
                t.print();
            }
        }
        Command::Close { name } => {
            if cat.write(|tx| tx.close_acq(&name, now()))? {
                println!("Acquisition \"{name}\" closed.");
            } else {
                println!("Acquisition \"{name}\" was already closed.");
            }
        }
    }
    Ok(())
}
