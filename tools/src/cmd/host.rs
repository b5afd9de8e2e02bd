use anyhow::{Result, bail};
use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, field, json, opt_str, opt_time};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a host
    Create {
        name: String,
        /// HOST:PORT where this host's cairnd serves copies (e.g. alpenhost1:7070)
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        notes: Option<String>,
    },
    /// List hosts
    List,
    /// Show one host and its nodes
    Show { name: String },
    /// Start no new work on the host's cairnd (queued requests wait)
    Pause { name: String },
    /// Let a paused host's cairnd work again
    Resume { name: String },
    /// Change a host
    Modify {
        name: String,
        /// HOST:PORT where this host's cairnd serves copies
        #[arg(long, conflicts_with = "no_address")]
        address: Option<String>,
        /// Clear the address
        #[arg(long)]
        no_address: bool,
        #[arg(long)]
        notes: Option<String>,
    },
}

#[derive(Serialize)]
struct HostView {
    #[serde(flatten)]
    host: cairn_catalog::model::Host,
    nodes: Vec<String>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    let mut cat = ctx.open()?;
    match cmd {
        Command::Create {
            name,
            address,
            notes,
        } => {
            cat.write(|tx| tx.create_host(&name, address.as_deref(), notes.as_deref()))?;
            println!("Created host \"{name}\".");
        }
        Command::List => {
            let hosts = cat.read(|tx| {
                let hosts = tx.hosts()?;
                let mut out = Vec::new();
                for h in hosts {
                    let nodes = tx
                        .nodes_on_host(h.id)?
                        .into_iter()
                        .map(|n| n.name)
                        .collect();
                    out.push(HostView { host: h, nodes });
                }
                Ok(out)
            })?;
            if ctx.json {
                return json(&hosts);
            }
            let mut t = Table::new(&["Name", "Address", "Nodes", "Last Seen"]);
            for h in &hosts {
                t.row(vec![
                    h.host.name.clone(),
                    opt_str(h.host.address.as_deref()).to_owned(),
                    h.nodes.len().to_string(),
                    opt_time(h.host.last_seen),
                ]);
            }
            t.print();
        }
        Command::Show { name } => {
            let view = cat.read(|tx| {
                let host = tx.host(&name)?;
                let nodes = tx
                    .nodes_on_host(host.id)?
                    .into_iter()
                    .map(|n| n.name)
                    .collect();
                Ok(HostView { host, nodes })
            })?;
            if ctx.json {
                return json(&view);
            }
            field("Host", &view.host.name);
            field("Address", opt_str(view.host.address.as_deref()));
            field("Notes", opt_str(view.host.notes.as_deref()));
            field("Last Seen", opt_time(view.host.last_seen));
            println!("Nodes:");
            if view.nodes.is_empty() {
                println!("none");
            }
            for n in &view.nodes {
                println!("{n}");
            }
        }
        Command::Pause { name } => {
            if cat.write(|tx| tx.set_host_paused(&name, true))? {
                println!(
                    "Host \"{name}\" paused: its cairnd starts no new work; queued requests wait."
                );
            } else {
                println!("Host \"{name}\" is already paused.");
            }
        }
        Command::Resume { name } => {
            if cat.write(|tx| tx.set_host_paused(&name, false))? {
                println!("Host \"{name}\" resumed.");
            } else {
                println!("Host \"{name}\" is not paused.");
            }
        }
        Command::Modify {
            name,
            address,
            no_address,
            notes,
        } => {
            let address = if no_address {
                Some(None)
            } else {
                address.as_deref().map(Some)
            };
            let notes = notes
                .as_deref()
                .map(|n| if n.is_empty() { None } else { Some(n) });
            if address.is_none() && notes.is_none() {
                bail!(
                    "nothing to change for host {name:?}: give --address, --no-address or --notes"
                );
            }
            cat.write(|tx| tx.update_host(&name, address, notes))?;
            println!("Host updated.");
        }
    }
    Ok(())
}
