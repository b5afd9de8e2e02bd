use std::time::Duration;

use anyhow::{Result, bail};
use cairn_catalog::model::{Host, JournalReport, Node, NodeStats, RequestState};
use cairn_catalog::replica::{ReplicaStatus, Standby};
use cairn_catalog::units::{format_size, now};
use serde::Serialize;

use crate::Ctx;
use crate::output::{Table, json, opt_size, opt_str, opt_time, size_or_dash, yes_no};

#[derive(Serialize)]
struct HostStatus {
    #[serde(flatten)]
    host: Host,
    /// Its cairnd was seen within three loop intervals (of this machine's config).
    cairnd_up: bool,
}

#[derive(Serialize)]
struct NodeStatus {
    #[serde(flatten)]
    node: Node,
    stats: NodeStats,
    percent_full: Option<f64>,
}

#[derive(Serialize)]
struct Status {
    /// This site's replica (`catalog.replica`), as it answered now.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<ReplicaStatus>,
    /// The standbys streaming from the primary (PostgreSQL), as the primary sees them;
    /// `None` when the primary could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    standbys: Option<Vec<Standby>>,
    hosts: Vec<HostStatus>,
    nodes: Vec<NodeStatus>,
    copy_requests: Vec<(RequestState, u64)>,
    import_requests: Vec<(RequestState, u64)>,
    verifications_pending: u64,
    releases_pending: u64,
    /// Copies finished in the last hour: count and bytes.
    last_hour: (u64, u64),
    /// Files waiting on hosts' nodes to be registered (closed on a mount, or found by cairnd
    /// while the catalog was out of reach): this host's nodes as they are now, the others as
    /// their cairnd last reported.
    journals: Vec<JournalReport>,
    /// Files kept aside under a conflict name (`cairn file conflicts` lists them).
    conflicts: u64,
}

fn gather(ctx: &Ctx) -> Result<Status> {
    let mut cat = ctx.open()?;
    let t = now();
    let up_within = (ctx.config.daemon.interval.0.as_secs() as i64 * 3).max(30);
    let replica = cat.replica_status();
    let standbys = if cat.dialect() == cairn_catalog::db::Dialect::Postgres {
        cat.standbys().ok()
    } else {
        Some(Vec::new())
    };
    let mut status = cat.read(|tx| {
        let hosts = tx
            .hosts()?
            .into_iter()
            .map(|h| HostStatus {
                cairnd_up: h.last_seen.is_some_and(|s| t - s <= up_within),
                host: h,
            })
            .collect();
        let nodes = tx
            .nodes()?
            .into_iter()
            .zip(tx.node_stats(None)?)
            .map(|(node, stats)| NodeStatus {
                percent_full: match (node.avail, node.capacity) {
                    (Some(a), Some(c)) if c > 0 => Some((c - a.min(c)) as f64 * 100.0 / c as f64),
                    _ => None,
                },
                node,
                stats,
            })
            .collect();
        let (verifications_pending, releases_pending) = tx.copy_work_counts()?;
        Ok(Status {
            replica: replica.clone(),
            standbys: standbys.clone(),
            hosts,
            nodes,
            copy_requests: tx.copy_request_counts()?,
            import_requests: tx.import_request_counts()?,
            verifications_pending,
            releases_pending,
            last_hour: tx.transfers_since(t - 3600)?,
            journals: tx.journals_waiting()?,
            conflicts: tx.conflicts(None)?.len() as u64,
        })
    })?;
    local_journals(ctx, &mut status, t);
    Ok(status)
}

/// What waits on this host's own nodes, read from the nodes now: right even while the catalog
/// cannot hear cairnd's report (a cut link, when the lists grow).
fn local_journals(ctx: &Ctx, status: &mut Status, t: i64) {
    let here = ctx.config.host_name();
    for n in &status.nodes {
        let (Some(host), Some(root)) = (&n.node.host, &n.node.root) else {
            continue;
        };
        if *host != here || !std::path::Path::new(root).is_dir() {
            continue;
        }
        let Ok(now) = cairn_node::waiting::on_node(std::path::Path::new(root)) else {
            continue;
        };
        status.journals.retain(|j| j.node != n.node.name);
        if let Some(s) = now.filter(|s| s.files > 0) {
            status.journals.push(JournalReport {
                node: n.node.name.clone(),
                host: Some(here.clone()),
                files: s.files,
                oldest: s.oldest,
                reported_at: t,
            });
        }
    }
    status.journals.sort_by(|a, b| a.node.cmp(&b.node));
}

fn print(ctx: &Ctx, status: &Status) {
    println!("Catalog: {}", cairn_catalog::db::postgres::redact(&ctx.url));
    if let Some(r) = &status.replica {
        let lag = r
            .lag_seconds
            .map_or_else(|| "lag unknown".to_owned(), |l| format!("lag {l:.1} s"));
        let link = if r.streaming {
            "streaming from the primary"
        } else {
            "not streaming from the primary"
        };
        println!(
            "Replica: {} ({}, {lag}, {link}; max {} s){}",
            r.url,
            r.state,
            r.max_lag_seconds,
            r.reason
                .as_deref()
                .map_or_else(String::new, |why| format!(": {why}"))
        );
    }
    match &status.standbys {
        None => println!("Standbys: the primary could not be asked"),
        Some(s) if s.is_empty() => {}
        Some(standbys) => {
            println!();
            println!("Standbys of the primary:");
            let mut t = Table::new(&["Name", "From", "State", "Behind", "Replay Lag"]);
            for s in standbys {
                t.row(vec![
                    s.name.clone(),
                    opt_str(s.address.as_deref()).into(),
                    s.state
                        .clone()
                        .unwrap_or_else(|| "(grant pg_monitor to see)".into()),
                    s.behind_bytes.map_or_else(|| "-".into(), format_size),
                    s.lag_seconds
                        .map_or_else(|| "-".into(), |l| format!("{l:.3} s")),
                ]);
            }
            t.print();
        }
    }
    println!();
    println!("Hosts:");
    if status.hosts.is_empty() {
        println!("none");
    } else {
        let mut t = Table::new(&["Name", "Address", "cairnd", "Last Seen", "Paused"]);
        for h in &status.hosts {
            t.row(vec![
                h.host.name.clone(),
                opt_str(h.host.address.as_deref()).into(),
                match (h.cairnd_up, h.host.last_seen) {
                    (true, _) => "Up",
                    (false, Some(_)) => "Down",
                    (false, None) => "Never seen",
                }
                .into(),
                opt_time(h.host.last_seen),
                yes_no(h.host.paused).into(),
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
            "% Full",
            "Files",
            "Size",
            "Corrupt",
            "Suspect",
        ]);
        for n in &status.nodes {
            let name = if n.node.paused {
                format!("{} (paused)", n.node.name)
            } else {
                n.node.name.clone()
            };
            t.row(vec![
                name,
                opt_str(n.node.host.as_deref()).into(),
                yes_no(n.node.active).into(),
                opt_size(n.node.avail),
                n.percent_full
                    .map_or_else(|| "-".into(), |p| format!("{p:.1}")),
                n.stats.files.to_string(),
                size_or_dash(n.stats.bytes),
                n.stats.corrupt.to_string(),
                n.stats.suspect.to_string(),
            ]);
        }
        t.print();
    }
    if !status.journals.is_empty() {
        println!();
        println!(
            "Files waiting on nodes to be registered (closed on a mount, or found by cairnd):"
        );
        let mut t = Table::new(&["Node", "Host", "Files", "Oldest Closed", "Reported"]);
        for j in &status.journals {
            t.row(vec![
                j.node.clone(),
                opt_str(j.host.as_deref()).into(),
                j.files.to_string(),
                opt_time(j.oldest),
                opt_time(Some(j.reported_at)),
            ]);
        }
        t.print();
    }
    if status.conflicts > 0 {
        println!();
        println!(
            "Files kept aside as conflicts (their path was archived meanwhile with other \
             contents): {} (`cairn file conflicts` lists them)",
            status.conflicts
        );
    }
    println!();
    println!("Queues:");
    let count = |v: &[(RequestState, u64)], s: RequestState| {
        v.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n)
    };
    let mut t = Table::new(&["Kind", "Pending", "Active", "Failed"]);
    for (kind, v) in [
        ("copy", &status.copy_requests),
        ("import", &status.import_requests),
    ] {
        t.row(vec![
            kind.into(),
            count(v, RequestState::Pending).to_string(),
            count(v, RequestState::Active).to_string(),
            count(v, RequestState::Failed).to_string(),
        ]);
    }
    t.row(vec![
        "verify".into(),
        status.verifications_pending.to_string(),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        "release".into(),
        status.releases_pending.to_string(),
        "-".into(),
        "-".into(),
    ]);
    t.print();
    println!();
    let (n, bytes) = status.last_hour;
    println!(
        "Last hour: {n} copies, {} ({}/s on average)",
        size_or_dash(bytes),
        format_size(bytes / 3600)
    );
}

pub fn run(ctx: &Ctx, watch: bool) -> Result<()> {
    if watch && ctx.json {
        bail!("--watch shows a screen for people; use --json without it");
    }
    if !watch {
        let status = gather(ctx)?;
        if ctx.json {
            return json(&status);
        }
        print(ctx, &status);
        return Ok(());
    }
    loop {
        let status = gather(ctx)?;
        // Clear the screen and go home, then draw: a refresh in place.
        print!("\x1b[2J\x1b[H");
        print(ctx, &status);
        println!("\n(refreshing every 2 s; Ctrl-C to stop)");
        std::thread::sleep(Duration::from_secs(2));
    }
}
