use anyhow::Result;
use cairn_catalog::model::{Host, Node, NodeStats, RequestState};
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, json, opt_size, opt_str, opt_time, size_or_dash, yes_no};

#[derive(Serialize)]
struct Status {
    hosts: Vec<Host>,
    nodes: Vec<(Node, NodeStats)>,
    copy_requests: Vec<(RequestState, u64)>,
    import_requests: Vec<(RequestState, u64)>,
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cat = ctx.open()?;
    let status = cat.read(|tx| {
        let hosts = tx.hosts()?;
        let nodes = tx.nodes()?;
        let stats = tx.node_stats(None)?;
        let nodes = nodes.into_iter().zip(stats).collect();
        Ok(Status {
            hosts,
            nodes,
            copy_requests: tx.copy_request_counts()?,
            import_requests: tx.import_request_counts()?,
        })
    })?;
    if ctx.json {
        return json(&status);
    }
    println!("Catalog: {}", ctx.url);
    println!();
    println!("Hosts:");
    if status.hosts.is_empty() {
        println!("none");
    } else {
        let mut t = Table::new(&["Name", "Address", "Last Seen"]);
        for h in &status.hosts {
            t.row(vec![
                h.name.clone(),
                opt_str(h.address.as_deref()).into(),
                opt_time(h.last_seen),
            ]);
        }
        t.print();
    }
    println!();
    println!("Nodes:");
    if status.nodes.is_empty() {
        println!("none");
    } else {
        let mut t = Table::new(&[
            "Name",
            "Host",
            "Active",
            "Available",
            "Files",
            "Size",
            "Corrupt",
            "Suspect",
        ]);
        for (n, s) in &status.nodes {
            t.row(vec![
                n.name.clone(),
                opt_str(n.host.as_deref()).into(),
                yes_no(n.active).into(),
                opt_size(n.avail),
                s.files.to_string(),
                size_or_dash(s.bytes),
                s.corrupt.to_string(),
                s.suspect.to_string(),
            ]);
        }
        t.print();
    }
    for (title, counts) in [
        ("Copy requests", &status.copy_requests),
        ("Import requests", &status.import_requests),
    ] {
        println!();
        println!("{title}:");
        if counts.is_empty() {
            println!("none");
        }
        for (state, n) in counts {
            println!("{}: {n}", state.display_name());
        }
    }
    Ok(())
}
