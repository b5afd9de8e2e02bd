use anyhow::{Result, bail};
use cairn_catalog::catalog::{CopySelect, ImportKind, NewNode, NodeUpdate};
use cairn_catalog::model::{AutoAction, CopyId, Has, IoClass, Node, NodeKind, NodeStats};
use cairn_catalog::units::{format_duration, now};
use cairn_catalog::{Catalog, CatalogError};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::sync::{SyncArgs, totals};
use super::tables::{Side, print_auto_actions, stats_table};
use super::{parse_duration_secs, parse_size};
use crate::Ctx;
use crate::output::{
    Table, confirm, count_size, field, json, on_off, opt_size, opt_str, opt_time, opt_time_short,
    plural, size_or_dash, yes_no,
};

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct KindArgs {
    /// The node is an archive node: its copies count towards `min_archive_copies`
    #[arg(long)]
    archive: bool,
    /// The node is a field node (the default): its copies do not count as archived
    #[arg(long)]
    field: bool,
    /// The node is a transport disk carried between sites
    #[arg(long)]
    transport: bool,
}

impl KindArgs {
    fn kind(&self) -> Option<NodeKind> {
        if self.archive {
            Some(NodeKind::Archive)
        } else if self.transport {
            Some(NodeKind::Transport)
        } else if self.field {
            Some(NodeKind::Field)
        } else {
            None
        }
    }
}

/// Options shared by `node sync` and `group sync`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a storage node
    Create {
        name: String,
        /// The group the node belongs to
        #[arg(long, required_unless_present = "create_group")]
        group: Option<String>,
        /// Also create a group of the same name for it
        #[arg(long, conflicts_with = "group")]
        create_group: bool,
        #[command(flatten)]
        kind: KindArgs,
        /// Where the node's tree is mounted on its host (absolute path)
        #[arg(long)]
        root: Option<String>,
        /// The host whose cairnd manages the node (created if new)
        #[arg(long)]
        host: Option<String>,
        /// Import new files written under the root automatically
        #[arg(long)]
        auto_import: bool,
        /// Re-verify copies older than this (e.g. 30d)
        #[arg(long, value_parser = parse_duration_secs, value_name = "AGE")]
        auto_verify: Option<i64>,
        /// Most bytes of copies the node may hold (e.g. 10TiB)
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        max_total: Option<u64>,
        /// Free space that must remain on the node's filesystem (e.g. 50GiB)
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        min_avail: Option<u64>,
        /// Log-in user for remote access to the node (kept for sites that pull by rsync over
        /// ssh; the HTTP transfer does not use it)
        #[arg(long)]
        username: Option<String>,
        /// Log-in address for remote access to the node (see --username)
        #[arg(long)]
        address: Option<String>,
        /// Free-form notes shown by `node show`
        #[arg(long)]
        notes: Option<String>,
        /// Also request initialisation of the node
        #[arg(long)]
        init: bool,
        /// Also activate the node
        #[arg(long)]
        activate: bool,
    },
    /// List storage nodes
    List,
    /// Show a storage node
    Show {
        name: String,
        /// Show file counts and usage
        #[arg(long)]
        stats: bool,
        /// Show its auto-actions
        #[arg(long)]
        actions: bool,
        /// Show everything: stats, pending requests, auto-actions
        #[arg(long)]
        all: bool,
    },
    /// Change a storage node
    Modify {
        name: String,
        #[command(flatten)]
        kind: KindArgs,
        /// Move the node to another group
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        root: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, overrides_with = "no_auto_import")]
        auto_import: bool,
        #[arg(long)]
        no_auto_import: bool,
        #[arg(long, value_parser = parse_duration_secs, value_name = "AGE",
              conflicts_with = "no_auto_verify")]
        auto_verify: Option<i64>,
        #[arg(long)]
        no_auto_verify: bool,
        #[arg(long, value_parser = parse_size, value_name = "SIZE",
              conflicts_with = "no_max_total")]
        max_total: Option<u64>,
        #[arg(long)]
        no_max_total: bool,
        #[arg(long, value_parser = parse_size, value_name = "SIZE",
              conflicts_with = "no_min_avail")]
        min_avail: Option<u64>,
        #[arg(long)]
        no_min_avail: bool,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        notes: Option<String>,
    },
    /// Let the node's host use it (optionally moving it: a transport disk that travelled)
    Activate {
        name: String,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        root: Option<String>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        address: Option<String>,
    },
    /// Stop using the node
    Deactivate { name: String },
    /// Start no new work into or out of the node (queued requests wait)
    Pause { name: String },
    /// Let work into and out of a paused node again
    Resume { name: String },
    /// Ask the node's cairnd to initialise it (write its marker)
    Init { name: String },
    /// Ask the node's cairnd to look for files under PATH
    Scan {
        node: String,
        /// Directory below the node root to scan
        #[arg(default_value = ".")]
        path: String,
        /// Register files the catalog does not know yet
        #[arg(long)]
        register_new: bool,
    },
    /// Ask the node's cairnd to re-check copies against their md5
    Verify {
        node: String,
        /// Every copy on the node
        #[arg(long)]
        all: bool,
        /// Healthy copies
        #[arg(long)]
        healthy: bool,
        /// Corrupt copies (the default, with --suspect)
        #[arg(long)]
        corrupt: bool,
        /// Suspect copies (the default, with --corrupt)
        #[arg(long)]
        suspect: bool,
        /// Only files of this acquisition
        #[arg(long)]
        acq: Option<String>,
        /// Only files at or below this path
        #[arg(long, value_name = "PREFIX")]
        path: Option<String>,
        /// Do not ask for confirmation
        #[arg(long, short = 'f')]
        force: bool,
        /// Follow the work until it is done
        #[arg(long)]
        wait: bool,
    },
    /// Copy every file on NODE that GROUP lacks into GROUP
    Sync {
        node: String,
        group: String,
        #[command(flatten)]
        args: SyncArgs,
    },
    /// Release copies on the node so cairnd deletes them (never below the archive rule)
    Clean {
        node: String,
        /// Delete as soon as allowed (else only when the node needs space)
        #[arg(long)]
        now: bool,
        /// Only files present in this group
        #[arg(long)]
        target: Option<String>,
        /// Only files of this acquisition
        #[arg(long)]
        acq: Option<String>,
        /// Only files at or below this path
        #[arg(long, value_name = "PREFIX")]
        path: Option<String>,
        /// Only copies that have been on the node at least this long (e.g. 30d)
        #[arg(long, value_parser = parse_duration_secs, value_name = "AGE")]
        older_than: Option<i64>,
        /// Keep the copies after all (undo an earlier clean)
        #[arg(long, conflicts_with = "now")]
        cancel: bool,
        /// List the files that would be released
        #[arg(long)]
        show_files: bool,
        /// Do not ask for confirmation
        #[arg(long, short = 'f')]
        force: bool,
        /// Follow the work until it is done
        #[arg(long)]
        wait: bool,
    },
    /// Release a file on NODE automatically once it arrives in GROUP (auto-clean)
    Autoclean {
        node: String,
        group: String,
        /// Release only once the file has been in GROUP this long (e.g. 7d) and its copy there
        /// was md5-verified after it arrived
        #[arg(long, value_parser = parse_duration_secs, value_name = "AGE", conflicts_with = "remove")]
        after: Option<i64>,
        /// Stop the auto-clean instead
        #[arg(long)]
        remove: bool,
    },
    /// File counts and sizes per node
    Stats {
        /// Only these nodes
        nodes: Vec<String>,
        /// Also count corrupt, suspect and missing copies
        #[arg(long)]
        extra_stats: bool,
    },
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::Create {
            name,
            group,
            create_group,
            kind,
            root,
            host,
            auto_import,
            auto_verify,
            max_total,
            min_avail,
            username,
            address,
            notes,
            init,
            activate,
        } => {
            if activate && (host.is_none() || root.is_none()) {
                bail!("node {name:?} cannot be activated without --host and --root");
            }
            let kind = kind.kind();
            let new = NewNode {
                name: name.clone(),
                group: group.unwrap_or_else(|| name.clone()),
                kind,
                host,
                root,
                active: activate,
                auto_import,
                auto_verify,
                max_total,
                min_avail,
                username,
                address,
                notes,
            };
            let (node, host_created) = cat.write(|tx| {
                if create_group {
                    let class = match kind {
                        Some(NodeKind::Transport) => IoClass::Transport,
                        _ => IoClass::Default,
                    };
                    tx.create_group(&new.group, class, None)?;
                }
                let created = tx.create_node(&new)?;
                if init {
                    tx.create_import_request(created.0.id, ".", ImportKind::Init, now())?;
                }
                Ok(created)
            })?;
            if create_group {
                println!("Created storage group \"{}\".", node.group);
            }
            if host_created {
                println!("Created host \"{}\".", opt_str(node.host.as_deref()));
            }
            println!("Created storage node \"{name}\".");
            if init {
                println!("Requested initialisation of Node \"{name}\".");
            }
            if activate {
                println!("Storage node \"{name}\" activated.");
            }
        }
        Command::List => {
            let nodes = cat.read(|tx| tx.nodes())?;
            if ctx.json {
                return json(&nodes);
            }
            let mut t = Table::new(&["Name", "Group", "Type", "Host", "Root", "Active"]);
            for n in &nodes {
                t.row(vec![
                    n.name.clone(),
                    n.group.clone(),
                    n.kind.display_name().into(),
                    opt_str(n.host.as_deref()).into(),
                    opt_str(n.root.as_deref()).into(),
                    yes_no(n.active).into(),
                ]);
            }
            t.print();
        }
        Command::Show {
            name,
            stats,
            actions,
            all,
        } => show(ctx, &mut cat, &name, stats || all, actions || all, all)?,
        Command::Modify {
            name,
            kind,
            group,
            root,
            host,
            auto_import,
            no_auto_import,
            auto_verify,
            no_auto_verify,
            max_total,
            no_max_total,
            min_avail,
            no_min_avail,
            username,
            address,
            notes,
        } => {
            let clear_or = |flag: bool, v: Option<u64>| if flag { Some(None) } else { v.map(Some) };
            let update = NodeUpdate {
                kind: kind.kind(),
                group,
                host: host.map(Some),
                root: root.map(Some),
                active: None,
                auto_import: if no_auto_import {
                    Some(false)
                } else if auto_import {
                    Some(true)
                } else {
                    None
                },
                auto_verify: if no_auto_verify {
                    Some(None)
                } else {
                    auto_verify.map(Some)
                },
                max_total: clear_or(no_max_total, max_total),
                min_avail: clear_or(no_min_avail, min_avail),
                username: username.map(|u| Some(u).filter(|u| !u.is_empty())),
                address: address.map(|a| Some(a).filter(|a| !a.is_empty())),
                notes: notes.map(|n| Some(n).filter(|n| !n.is_empty())),
            };
            if update.is_empty() {
                bail!("nothing to change for node {name:?}: give at least one option (see --help)");
            }
            let (node, host_created) = cat.write(|tx| tx.update_node(&name, &update))?;
            if host_created {
                println!("Created host \"{}\".", opt_str(node.host.as_deref()));
            }
            println!("Node updated.");
        }
        Command::Activate {
            name,
            host,
            root,
            username,
            address,
        } => {
            let update = NodeUpdate {
                host: host.map(Some),
                root: root.map(Some),
                username: username.map(Some),
                address: address.map(Some),
                active: Some(true),
                ..NodeUpdate::default()
            };
            let (was_active, node, host_created) = cat.write(|tx| {
                let before = tx.node(&name)?;
                let (after, created) = tx.update_node(&name, &update)?;
                if after.host.is_none() || after.root.is_none() {
                    return Err(CatalogError::Invalid(format!(
                        "node {name:?} cannot be activated without a host and a root \
                         (give --host and --root)"
                    )));
                }
                Ok((before.active, after, created))
            })?;
            if host_created {
                println!("Created host \"{}\".", opt_str(node.host.as_deref()));
            }
            if was_active && update.host.is_none() && update.root.is_none() {
                println!("Storage node \"{name}\" is already active.");
            } else {
                println!("Storage node \"{name}\" activated.");
            }
        }
        Command::Deactivate { name } => {
            let update = NodeUpdate {
                active: Some(false),
                ..NodeUpdate::default()
            };
            let was_active = cat.write(|tx| {
                let before = tx.node(&name)?;
                tx.update_node(&name, &update)?;
                Ok(before.active)
            })?;
            if was_active {
                println!("Storage node \"{name}\" deactivated.");
            } else {
                println!("Storage node \"{name}\" is already inactive.");
            }
        }
        Command::Pause { name } => {
            if cat.write(|tx| tx.set_node_paused(&name, true))? {
                println!(
                    "Node \"{name}\" paused: no new work into or out of it; queued requests wait."
                );
            } else {
                println!("Node \"{name}\" is already paused.");
            }
        }
        Command::Resume { name } => {
            if cat.write(|tx| tx.set_node_paused(&name, false))? {
                println!("Node \"{name}\" resumed.");
            } else {
                println!("Node \"{name}\" is not paused.");
            }
        }
        Command::Init { name } => {
            let created = cat.write(|tx| {
                let node = tx.node(&name)?;
                tx.create_import_request(node.id, ".", ImportKind::Init, now())
                    .map(|(_, c)| c)
            })?;
            if created {
                println!("Requested initialisation of Node \"{name}\".");
            } else {
                println!("Initialisation of Node \"{name}\" is already requested.");
            }
        }
        Command::Scan {
            node,
            path,
            register_new,
        } => {
            let path = if path == "." {
                ".".to_owned()
            } else {
                let p = cairn_catalog::catalog::normalize_path(&path)?;
                if p.is_empty() { ".".to_owned() } else { p }
            };
            let created = cat.write(|tx| {
                let n = tx.node(&node)?;
                tx.create_import_request(n.id, &path, ImportKind::Scan { register_new }, now())
                    .map(|(_, c)| c)
            })?;
            if created {
                println!("Added request for scan of \"{path}\" on Node \"{node}\".");
            } else {
                println!("A scan of \"{path}\" on Node \"{node}\" is already pending.");
            }
        }
        Command::Verify {
            node,
            all,
            healthy,
            corrupt,
            suspect,
            acq,
            path,
            force,
            wait,
        } => {
            let states: Vec<Has> = if all {
                vec![Has::Yes, Has::Suspect, Has::Corrupt]
            } else if healthy || corrupt || suspect {
                [
                    (healthy, Has::Yes),
                    (suspect, Has::Suspect),
                    (corrupt, Has::Corrupt),
                ]
                .into_iter()
                .filter_map(|(on, h)| on.then_some(h))
                .collect()
            } else {
                vec![Has::Suspect, Has::Corrupt]
            };
            let files = cat.read(|tx| {
                let n = tx.node(&node)?;
                let select = CopySelect {
                    acq: acq.as_deref().map(|a| tx.acq(a)).transpose()?.map(|a| a.id),
                    path_prefix: path.clone(),
                    added_before: None,
                };
                tx.verify_candidates(n.id, &states, &select)
            })?;
            let (n, bytes) = totals(&files);
            if n == 0 {
                println!("No files to verify.");
                return Ok(());
            }
            println!("Would request verification of {}.", count_size(n, bytes));
            if !confirm(force)? {
                println!("Cancelled.");
                return Ok(());
            }
            println!("Requesting verification of {}.", count_size(n, bytes));
            let ids: Vec<_> = files.iter().map(|f| f.copy_id).collect();
            let updated = cat.write(|tx| tx.request_verify(&ids, now()))?;
            println!(
                "Updated {updated} {}.",
                plural(updated as usize, "file", "files")
            );
            if wait {
                cairn_node::socket::nudge(&ctx.config.daemon.socket);
                let sizes: Vec<(CopyId, u64)> = files.iter().map(|f| (f.copy_id, f.size)).collect();
                crate::wait::copy_rows(&mut cat, "verified", &sizes, None, |c| {
                    !c.verify_requested
                })?;
            }
        }
        Command::Sync { node, group, args } => {
            super::sync::run(&mut cat, &node, &group, &args, &ctx.config.daemon.socket)?
        }
        Command::Clean {
            node,
            now: immediately,
            target,
            acq,
            path,
            older_than,
            cancel,
            show_files,
            force,
            wait,
        } => {
            let wants = super::clean_wants(cancel, immediately);
            let files = cat.read(|tx| {
                let n = tx.node(&node)?;
                let target_id = target
                    .as_deref()
                    .map(|g| tx.group(g))
                    .transpose()?
                    .map(|g| g.id);
                let select = CopySelect {
                    acq: acq.as_deref().map(|a| tx.acq(a)).transpose()?.map(|a| a.id),
                    path_prefix: path.clone(),
                    added_before: older_than.map(|age| now() - age),
                };
                tx.clean_candidates(n.id, wants, target_id, &select)
            })?;
            let (n, bytes) = totals(&files);
            let verb = if cancel { "keep" } else { "release" };
            if n == 0 {
                println!("No files to {verb}.");
                return Ok(());
            }
            let colon = if show_files { ":" } else { "." };
            println!("Would {verb} {}{colon}", count_size(n, bytes));
            if show_files {
                files.iter().for_each(|f| println!("{}", f.path));
            }
            if !confirm(force)? {
                println!("Cancelled.");
                return Ok(());
            }
            let ing = if cancel { "Keeping" } else { "Releasing" };
            println!("{ing} {}.", count_size(n, bytes));
            let ids: Vec<_> = files.iter().map(|f| f.copy_id).collect();
            let updated = cat.write(|tx| tx.set_wants(&ids, wants, now()))?;
            println!(
                "Updated {updated} {}.",
                plural(updated as usize, "file", "files")
            );
            if wait && wants == cairn_catalog::model::Wants::ReleaseNow {
                cairn_node::socket::nudge(&ctx.config.daemon.socket);
                let sizes: Vec<(CopyId, u64)> = files.iter().map(|f| (f.copy_id, f.size)).collect();
                // A release the archive rule refuses does not finish: stop once nothing has
                // moved for three loops.
                let stalled = ctx.config.daemon.interval.0 * 3;
                crate::wait::copy_rows(&mut cat, "released", &sizes, Some(stalled), |c| {
                    c.has == Has::No
                })?;
            }
        }
        Command::Autoclean {
            node,
            group,
            after,
            remove,
        } => {
            let changed = cat.write(|tx| {
                let g = tx.group(&group)?;
                let n = tx.node(&node)?;
                tx.set_autoclean(&g, &n, !remove, after)
            })?;
            let delay = after.map_or_else(String::new, |s| {
                format!(
                    " (after {} there, once verified)",
                    format_duration(std::time::Duration::from_secs(s as u64))
                )
            });
            match (remove, changed) {
                (false, true) => println!("Auto-clean trigger: Group \"{group}\" added{delay}"),
                (false, false) => println!("Auto-clean trigger: Group \"{group}\" already set"),
                (true, true) => println!("Auto-clean trigger: Group \"{group}\" removed"),
                (true, false) => println!("No auto-clean trigger for Group \"{group}\" to remove"),
            }
        }
        Command::Stats { nodes, extra_stats } => {
            let stats = cat.read(|tx| {
                if nodes.is_empty() {
                    tx.node_stats(None)
                } else {
                    let mut ids = Vec::new();
                    for n in &nodes {
                        ids.push(tx.node(n)?.id);
                    }
                    tx.node_stats(Some(&ids))
                }
            })?;
            if ctx.json {
                return json(&stats);
            }
            stats_table(&stats, extra_stats).print();
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct NodeView {
    #[serde(flatten)]
    node: Node,
    io_class: IoClass,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<NodeStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_imports: Option<Vec<cairn_catalog::model::ImportRequest>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_outbound: Option<Vec<(String, u64, u64)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_actions: Option<Vec<AutoAction>>,
}

fn show(
    ctx: &Ctx,
    cat: &mut Catalog,
    name: &str,
    stats: bool,
    actions: bool,
    requests: bool,
) -> Result<()> {
    use cairn_catalog::model::RequestState;
    let view = cat.read(|tx| {
        let node = tx.node(name)?;
        let io_class = tx.group(&node.group)?.io_class;
        let st = if stats {
            tx.node_stats(Some(&[node.id]))?.into_iter().next()
        } else {
            None
        };
        let (imports, outbound) = if requests {
            (
                Some(tx.import_requests(Some(node.id), &[RequestState::Pending])?),
                Some(tx.outbound_summary(node.id)?),
            )
        } else {
            (None, None)
        };
        let acts = if actions {
            Some(tx.auto_actions(None, Some(node.id))?)
        } else {
            None
        };
        // Auto-clean triggers name this node too, from the group's side.
        Ok(NodeView {
            node,
            io_class,
            stats: st,
            pending_imports: imports,
            pending_outbound: outbound,
            auto_actions: acts,
        })
    })?;
    if ctx.json {
        return json(&view);
    }
    let n = &view.node;
    field("Storage Node", &n.name);
    field("Storage Group", &n.group);
    field("Active", yes_no(n.active));
    field("Paused", yes_no(n.paused));
    field("Type", n.kind.display_name());
    field("Notes", opt_str(n.notes.as_deref()));
    field("I/O Class", view.io_class.display_name());
    println!();
    field("Daemon Host", opt_str(n.host.as_deref()));
    field("Root", opt_str(n.root.as_deref()));
    field("Log-in Address", opt_str(n.address.as_deref()));
    field("Log-in Username", opt_str(n.username.as_deref()));
    println!();
    field("Auto-Import", on_off(n.auto_import));
    println!(
        "Auto-Verify: {}",
        n.auto_verify.map_or_else(
            || "Off".to_owned(),
            |s| format!(
                "older than {}",
                format_duration(std::time::Duration::from_secs(s as u64))
            )
        )
    );
    field("Max Total", opt_size(n.max_total));
    field("Available", opt_size(n.avail));
    field("Min Available", opt_size(n.min_avail));
    field("Last Checked", opt_time(n.last_checked));
    if let Some(s) = &view.stats {
        println!();
        println!("Stats:");
        println!("    Total Files: {}", s.files);
        println!("    Total Size: {}", size_or_dash(s.bytes));
        println!(
            "    Usage: {}%",
            s.percent_full()
                .map_or_else(|| "-".into(), |p| format!("{p:.1}"))
        );
    }
    if let Some(imports) = &view.pending_imports {
        println!();
        println!("Pending import requests:");
        if imports.is_empty() {
            println!("none");
        }
        let mut t = Table::new(&["Path", "Scan", "Register New", "Request Time"]);
        for r in imports {
            let (path, scan, reg) = if r.init {
                ("[Node Init]".to_owned(), "-", "-")
            } else {
                (r.path.clone(), yes_no(r.scan), yes_no(r.register_new))
            };
            t.row(vec![
                path,
                scan.into(),
                reg.into(),
                opt_time_short(Some(r.created_at)),
            ]);
        }
        if !imports.is_empty() {
            t.print();
        }
    }
    if let Some(outbound) = &view.pending_outbound {
        println!();
        println!("Pending outbound transfers:");
        if outbound.is_empty() {
            println!("none");
        } else {
            let mut t = Table::new(&["Dest. Group", "Request Count", "Total Size"]);
            for (g, count, bytes) in outbound {
                t.row(vec![g.clone(), count.to_string(), size_or_dash(*bytes)]);
            }
            t.print();
        }
    }
    if let Some(acts) = &view.auto_actions {
        println!();
        println!("Auto-actions:");
        print_auto_actions(acts, Side::Node);
    }
    Ok(())
}
