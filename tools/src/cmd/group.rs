use anyhow::{Result, bail};
use cairn_catalog::model::{AutoAction, Group, IoClass, NodeStats};
use clap::Subcommand;
use serde::Serialize;

use super::sync::SyncArgs;
use super::tables::{Side, print_auto_actions, stats_table};
use crate::Ctx;
use crate::output::{Table, field, json, opt_str};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a storage group
    Create {
        name: String,
        /// I/O class: default, or transport (holds only transport nodes)
        #[arg(long, default_value = "default", value_parser = parse_class)]
        class: IoClass,
        #[arg(long)]
        notes: Option<String>,
    },
    /// List storage groups
    List,
    /// Show a storage group
    Show {
        name: String,
        /// Show file counts and sizes of its nodes
        #[arg(long)]
        node_stats: bool,
        /// Show its auto-actions
        #[arg(long)]
        actions: bool,
        /// Show everything
        #[arg(long)]
        all: bool,
    },
    /// Change a storage group
    Modify {
        name: String,
        #[arg(long, value_parser = parse_class)]
        class: Option<IoClass>,
        #[arg(long)]
        notes: Option<String>,
    },
    /// Copy every new file on NODE into GROUP automatically (auto-sync)
    Autosync {
        group: String,
        node: String,
        /// Only files at or below this path (a mirror that takes a subset)
        #[arg(long, value_name = "PREFIX", conflicts_with = "remove")]
        path: Option<String>,
        /// Stop the auto-sync instead
        #[arg(long)]
        remove: bool,
    },
    /// Copy every file on NODE that GROUP lacks into GROUP
    Sync {
        group: String,
        node: String,
        #[command(flatten)]
        args: SyncArgs,
    },
}

pub fn parse_class(s: &str) -> Result<IoClass, String> {
    s.parse()
}

#[derive(Serialize)]
struct GroupView {
    #[serde(flatten)]
    group: Group,
    nodes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_stats: Option<Vec<NodeStats>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_actions: Option<Vec<AutoAction>>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::Create { name, class, notes } => {
            cat.write(|tx| tx.create_group(&name, class, notes.as_deref()))?;
            println!("Created storage group \"{name}\".");
        }
        Command::List => {
            let groups = cat.read(|tx| {
                let mut out = Vec::new();
                for g in tx.groups()? {
                    let nodes = tx.group_nodes(g.id)?.into_iter().map(|n| n.name).collect();
                    out.push(GroupView {
                        group: g,
                        nodes,
                        node_stats: None,
                        auto_actions: None,
                    });
                }
                Ok(out)
            })?;
            if ctx.json {
                return json(&groups);
            }
            let mut t = Table::new(&["Name", "I/O Class", "Nodes", "Notes"]);
            for g in &groups {
                t.row(vec![
                    g.group.name.clone(),
                    g.group.io_class.display_name().into(),
                    g.nodes.join(", "),
                    opt_str(g.group.notes.as_deref()).into(),
                ]);
            }
            t.print();
        }
        Command::Show {
            name,
            node_stats,
            actions,
            all,
        } => {
            let view = cat.read(|tx| {
                let group = tx.group(&name)?;
                let nodes = tx.group_nodes(group.id)?;
                let ids: Vec<_> = nodes.iter().map(|n| n.id).collect();
                let stats = if node_stats || all {
                    Some(tx.node_stats(Some(&ids))?)
                } else {
                    None
                };
                let acts = if actions || all {
                    Some(tx.auto_actions(Some(group.id), None)?)
                } else {
                    None
                };
                Ok(GroupView {
                    group,
                    nodes: nodes.into_iter().map(|n| n.name).collect(),
                    node_stats: stats,
                    auto_actions: acts,
                })
            })?;
            if ctx.json {
                return json(&view);
            }
            field("Storage Group", &view.group.name);
            field("Notes", opt_str(view.group.notes.as_deref()));
            field("I/O Class", view.group.io_class.display_name());
            println!();
            println!("Nodes:");
            match &view.node_stats {
                Some(stats) if !stats.is_empty() => stats_table(stats, false).print(),
                _ if view.nodes.is_empty() => println!("none"),
                _ => view.nodes.iter().for_each(|n| println!("{n}")),
            }
            if let Some(acts) = &view.auto_actions {
                println!();
                println!("Auto-actions:");
                print_auto_actions(acts, Side::Group);
            }
        }
        Command::Modify { name, class, notes } => {
            if class.is_none() && notes.is_none() {
                bail!("nothing to change for group {name:?}: give --class or --notes");
            }
            let notes = notes
                .as_deref()
                .map(|n| if n.is_empty() { None } else { Some(n) });
            cat.write(|tx| tx.update_group(&name, class, notes))?;
            println!("Group updated.");
        }
        Command::Autosync {
            group,
            node,
            path,
            remove,
        } => {
            let changed = cat.write(|tx| {
                let g = tx.group(&group)?;
                let n = tx.node(&node)?;
                tx.set_autosync(&g, &n, !remove, path.as_deref())
            })?;
            let under = path
                .as_deref()
                .map_or_else(String::new, |p| format!(" (under {p})"));
            match (remove, changed) {
                (false, true) => println!("Auto-sync from \"{node}\" started{under}"),
                (false, false) => println!("Auto-sync from \"{node}\" already running"),
                (true, true) => println!("Auto-sync from \"{node}\" stopped"),
                (true, false) => println!("No auto-sync from \"{node}\" to stop"),
            }
        }
        Command::Sync { group, node, args } => {
            super::sync::run(&mut cat, &node, &group, &args, &ctx.config.daemon.socket)?
        }
    }
    Ok(())
}
