use anyhow::{Result, bail};
use cairn_catalog::catalog::{FileFilter, ImportKind, normalize_path};
use cairn_catalog::model::{Copy, File, Has, Wants};
use cairn_catalog::policy::{self, Scope, SyncOrder, SyncSource};
use cairn_catalog::units::{format_size, format_time, now};
use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, field, json, opt_size, opt_str};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a file: size, md5, acquisition, copies
    Show { path: String },
    /// List files
    List {
        /// Files with a copy on this node
        #[arg(long)]
        node: Option<String>,
        /// Files present in this group
        #[arg(long)]
        group: Option<String>,
        /// Files of this acquisition
        #[arg(long)]
        acq: Option<String>,
        /// Files at or below this path
        #[arg(long, value_name = "PREFIX")]
        path: Option<String>,
        /// Size, md5, registration time (and the copy's state with --node)
        #[arg(long)]
        details: bool,
    },
    /// The state of a file's copy on a node
    State { path: String, node: String },
    /// Ask NODE's cairnd to import PATH (relative to the node root)
    Import {
        path: String,
        node: String,
        /// Register the file if the catalog does not know it yet
        #[arg(long)]
        register_new: bool,
    },
    /// Ask for a copy of a file from a node into a group
    Sync {
        path: String,
        /// The node to copy from
        #[arg(long)]
        from: String,
        /// The group to copy into
        #[arg(long)]
        to: String,
        /// Request it even if the group has the file already
        #[arg(long, short = 'f')]
        force: bool,
        /// Follow the copy until it is done or failed
        #[arg(long)]
        wait: bool,
    },
    /// Release a file's copy on a node so cairnd deletes it (never below the archive rule)
    Clean {
        path: String,
        #[arg(long)]
        node: String,
        /// Delete as soon as allowed (else only when the node needs space)
        #[arg(long)]
        now: bool,
        /// Keep the copy after all (undo an earlier clean)
        #[arg(long, conflicts_with = "now")]
        cancel: bool,
    },
    /// Ask NODE's cairnd to re-check a file's copy against its md5
    Verify { path: String, node: String },
    /// Where a file's copies are
    Where { path: String },
    /// Files kept aside because their path was archived meanwhile with other contents
    /// (NAME.conflict-HOST-N), with the file archived at that path
    Conflicts {
        /// Only at or below this path
        #[arg(long, value_name = "PREFIX")]
        path: Option<String>,
    },
}

#[derive(Serialize)]
struct ConflictView {
    /// Where this host's file is archived now.
    kept_as: String,
    /// The path it was written to.
    path: String,
    host: String,
    kept_at: i64,
    size: u64,
    md5: String,
    /// The file archived at `path` (none if it is gone since).
    archived: Option<File>,
}

#[derive(Serialize)]
struct FileView {
    #[serde(flatten)]
    file: File,
    copies: Vec<Copy>,
}

#[derive(Serialize)]
struct CopyState {
    path: String,
    node: String,
    has: Option<Has>,
    wants: Option<Wants>,
    verify_requested: bool,
}

fn state_words(c: &Copy) -> String {
    let mut s = c.has.display_name().to_owned();
    s.push(' ');
    s.push_str(match c.wants {
        Wants::Keep => "Keep",
        Wants::ReleaseWhenNeeded => "Release-when-needed",
        Wants::ReleaseNow => "Release-now",
    });
    if c.verify_requested {
        s.push_str(" Verify-requested");
    }
    s
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::Show { path } => {
            let view = cat.read(|tx| {
                let file = tx.file(&path)?;
                let copies = tx.copies_of(file.id)?;
                Ok(FileView { file, copies })
            })?;
            if ctx.json {
                return json(&view);
            }
            let f = &view.file;
            field("Name", &f.name);
            field("Acquisition", &f.acq);
            field("Path", &f.path);
            field("Size", format_size(f.size));
            println!("MD5 Hash: {}", f.md5);
            field("Registered", format_time(f.registered_at));
            println!();
            println!("Copies:");
            print_copies(&view.copies);
        }
        Command::List {
            node,
            group,
            acq,
            path,
            details,
        } => {
            let (files, copies) = cat.read(|tx| {
                let node_id = node
                    .as_deref()
                    .map(|n| tx.node(n))
                    .transpose()?
                    .map(|n| n.id);
                let group_id = group
                    .as_deref()
                    .map(|g| tx.group(g))
                    .transpose()?
                    .map(|g| g.id);
                let acq_id = acq.as_deref().map(|a| tx.acq(a)).transpose()?.map(|a| a.id);
                match (node_id, group_id) {
                    (Some(n), None) => {
                        let pairs = tx.files_on_node(n, acq_id, path.as_deref())?;
                        let (f, c): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
                        Ok((f, Some(c)))
                    }
                    _ => {
                        let filter = FileFilter {
                            node: node_id,
                            group: group_id,
                            acq: acq_id,
                            path_prefix: path.clone(),
                        };
                        Ok((tx.files(&filter)?, None))
                    }
                }
            })?;
            if ctx.json {
                return match copies {
                    Some(c) => json(
                        &files
                            .into_iter()
                            .zip(c)
                            .map(|(file, copy)| FileView {
                                file,
                                copies: vec![copy],
                            })
                            .collect::<Vec<_>>(),
                    ),
                    None => json(&files),
                };
            }
            if !details {
                files
                    .iter()
                    .for_each(|f| println!("{}", crate::output::escape_controls(&f.path)));
                return Ok(());
            }
            let mut headers = vec!["File", "Size", "MD5 Hash", "Registration Time"];
            if copies.is_some() {
                headers.extend(["State", "Size on Node"]);
            }
            let mut t = Table::new(&headers);
            for (i, f) in files.iter().enumerate() {
                let mut row = vec![
                    f.path.clone(),
                    format_size(f.size),
                    f.md5.clone(),
                    format_time(f.registered_at),
                ];
                if let Some(c) = copies.as_ref().and_then(|c| c.get(i)) {
                    row.push(c.has.display_name().into());
                    row.push(opt_size(c.size_on_node));
                }
                t.row(row);
            }
            t.print();
        }
        Command::State { path, node } => {
            let (file, copy) = cat.read(|tx| {
                let file = tx.file(&path)?;
                let n = tx.node(&node)?;
                let copy = tx.copy_on(file.id, n.id)?;
                Ok((file, copy))
            })?;
            if ctx.json {
                return json(&CopyState {
                    path: file.path,
                    node,
                    has: copy.as_ref().map(|c| c.has),
                    wants: copy.as_ref().map(|c| c.wants),
                    verify_requested: copy.as_ref().is_some_and(|c| c.verify_requested),
                });
            }
            match copy {
                Some(c) => println!("{}", state_words(&c)),
                None => println!("Absent"),
            }
        }
        Command::Import {
            path,
            node,
            register_new,
        } => {
            let p = normalize_path(&path)?;
            if p.is_empty() {
                bail!(
                    "invalid path {path:?}: name a file below the node root (or use `node scan`)"
                );
            }
            let created = cat.write(|tx| {
                let n = tx.node(&node)?;
                tx.create_import_request(n.id, &p, ImportKind::File { register_new }, now())
            })?;
            match created {
                (_, true) => println!("Added new import request."),
                (id, false) => println!("An identical import request is already pending (#{id})."),
            }
        }
        Command::Sync {
            path,
            from,
            to,
            force,
            wait,
        } => {
            let synced = cat.write(|tx| {
                let file = tx.file(&path)?;
                let order = SyncOrder {
                    group: &to,
                    from: SyncSource::Node(&from),
                    force,
                };
                policy::sync(tx, &Scope::File(file.id), order, now())
            })?;
            if synced.present > 0 {
                println!(
                    "File \"{path}\" is already in Group \"{to}\"; nothing requested \
                     (--force to copy anyway)."
                );
            } else if synced.requested.is_empty() {
                println!("An identical request is already pending.");
            } else {
                println!("Request submitted.");
                if wait {
                    cairn_node::socket::nudge(&ctx.config.daemon.socket);
                    crate::wait::copies(&mut cat, &synced.requested)?;
                }
            }
        }
        Command::Clean {
            path,
            node,
            now: immediately,
            cancel,
        } => {
            let wants = super::clean_wants(cancel, immediately);
            let file_path = cat.write(|tx| {
                let file = tx.file(&path)?;
                policy::clean(tx, &Scope::File(file.id), &node, wants, now())?;
                Ok(file.path)
            })?;
            match wants {
                Wants::ReleaseNow => {
                    println!("Released \"{file_path}\" for immediate removal on Node \"{node}\".")
                }
                Wants::ReleaseWhenNeeded => println!(
                    "Released \"{file_path}\" for discretionary removal on Node \"{node}\"."
                ),
                Wants::Keep => println!("Keeping \"{file_path}\" on Node \"{node}\"."),
            }
        }
        Command::Verify { path, node } => {
            let file_path = cat.write(|tx| {
                let file = tx.file(&path)?;
                policy::verify(tx, &Scope::File(file.id), &node, now())?;
                Ok(file.path)
            })?;
            println!("Requested verification of \"{file_path}\" on Node \"{node}\".");
        }
        Command::Conflicts { path } => {
            let found = cat.read(|tx| tx.conflicts(path.as_deref()))?;
            let views: Vec<ConflictView> = found
                .into_iter()
                .map(|(f, c, other)| ConflictView {
                    path: match f.path.rsplit_once('/') {
                        Some((dir, _)) => format!("{dir}/{}", c.original),
                        None => c.original.clone(),
                    },
                    kept_as: f.path,
                    host: c.host,
                    kept_at: (c.at_ns / 1_000_000_000) as i64,
                    size: f.size,
                    md5: f.md5,
                    archived: other,
                })
                .collect();
            if ctx.json {
                return json(&views);
            }
            if views.is_empty() {
                println!("No conflicts.");
                return Ok(());
            }
            let mut t = Table::new(&[
                "Path",
                "Kept as",
                "Host",
                "When",
                "Size",
                "md5",
                "Archived at the path",
            ]);
            for v in &views {
                t.row(vec![
                    v.path.clone(),
                    v.kept_as.clone(),
                    v.host.clone(),
                    format_time(v.kept_at),
                    format_size(v.size),
                    v.md5.clone(),
                    v.archived.as_ref().map_or_else(
                        || "(gone)".to_owned(),
                        |a| format!("{}, md5 {}", format_size(a.size), a.md5),
                    ),
                ]);
            }
            t.print();
        }
        Command::Where { path } => {
            let (file, rows) = cat.read(|tx| {
                let file = tx.file(&path)?;
                let mut rows = Vec::new();
                for c in tx.copies_of(file.id)? {
                    let n = tx.node_by_id(c.node_id)?;
                    rows.push((c, n));
                }
                Ok((file, rows))
            })?;
            if ctx.json {
                return json(&FileView {
                    file,
                    copies: rows.into_iter().map(|(c, _)| c).collect(),
                });
            }
            if rows.is_empty() {
                println!("No copies of \"{}\".", file.path);
                return Ok(());
            }
            let mut t = Table::new(&["Node", "Group", "Host", "Type", "State"]);
            for (c, n) in &rows {
                t.row(vec![
                    n.name.clone(),
                    n.group.clone(),
                    opt_str(n.host.as_deref()).into(),
                    n.kind.display_name().into(),
                    state_words(c),
                ]);
            }
            t.print();
        }
    }
    Ok(())
}

fn print_copies(copies: &[Copy]) {
    if copies.is_empty() {
        println!("none");
        return;
    }
    let mut t = Table::new(&["Node", "State", "Added"]);
    for c in copies {
        t.row(vec![
            c.node.clone(),
            state_words(c),
            format_time(c.added_at),
        ]);
    }
    t.print();
}
