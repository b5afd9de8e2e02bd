//! The daemon's life: find this host's nodes, find work for them, run it on a bounded pool.
//!
//! Every `daemon.interval`, or at once when nudged (the unix socket, an inotify event, a task
//! finishing), the loop makes a pass:
//! 1. [`crate::refresh`] checks each node of this host: active? root there? marker names this
//!    node and catalog? Only then is the node *available*; its free space goes into the
//!    catalog. Every catalog write of the pass happens there;
//! 2. [`crate::plan`] reads the work for available nodes from the catalog: init/import/scan
//!    requests, copy requests into their groups, copies to verify or release, and auto-import
//!    events;
//! 3. [`dispatch`] hands it to at most `daemon.workers` blocking tasks, at most
//!    `daemon.node_workers` per node. Each unit of work has a key, so nothing runs twice at
//!    once on this host; requests are also claimed in the catalog (invariant 4), so no two
//!    hosts run one either.
//!
//! The parts get what they need and no more: the tasks a [`TaskContext`], the HTTP server a
//! [`Server`], the socket the wake-up and the [`Fetcher`], the catalog listener a
//! [`Listening`].
//!
//! A pass runs beside the tasks (one at a time): what a finished task frees is filled from
//! the last pass's backlog at once, and the next pass starts when the backlog is used up, so
//! a stream of small batches does not wait on the catalog reads between them.
//!
//! On shutdown no new work starts; running tasks see the cancel flag, abort cleanly (temp
//! files removed, requests given back) and the loop waits for them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_catalog::config::TransferMethod;
use cairn_catalog::db::Patience;
use cairn_catalog::model::{HostId, NodeId};
use cairn_catalog::{Catalog, Config, Pool, Routing};
use cairn_node::cache::CacheDir;
use cairn_node::importer::Importer;
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{debug, error, info, warn};

use crate::cache::Fetcher;
use crate::http::conns::{ConnLimits, Connections};
use crate::http::{ClientAuth, Server};
use crate::lock::InstanceLock;
use crate::metrics::Metrics;
use crate::nodes::{Host, Nodes};
use crate::notify::Listening;
use crate::refresh::{RefreshConfig, RefreshState};
use crate::sources::Sources;
use crate::tasks::{self, Limits, Task, TaskContext};
use crate::transfer::Puller;
use crate::watch::WatchEvent;

/// Runs cairnd until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let host_name = config.host_name();
    let _lock = InstanceLock::acquire(&config.daemon.lock_file, &host_name)?;
    let importer = Importer::new(&config.import).context("invalid [import] patterns")?;
    let tls = config.transfer.tls();
    // Over TLS the hosts know each other by certificate; the token is for plain HTTP only.
    let token = match tls {
        Some(files) => {
            check_private(files.key, "transfer.tls_key")?;
            None
        }
        None => read_token(&config.transfer.token_file)?,
    };
    let fd_limit = raise_open_file_limit();
    // Reads from this site's replica when there is one; the pool and the start share what is
    // known of it (and this process's writes).
    let routing = Routing::from_config(&config.catalog);
    let (host, requeue_pending) = register_host(&config, &routing, host_name).await?;
    let host = Arc::new(host);

    let metrics = Arc::new(Metrics::default());
    let rsync_rsh = (config.transfer.method == TransferMethod::Rsync)
        .then(|| config.transfer.rsync_rsh.clone());
    let transfer = Arc::new(Puller::new(
        rsync_rsh,
        tls,
        token.clone(),
        config.transfer.max_rate.map(|r| r.0),
        config.transfer.pulls_per_peer,
        metrics.clone(),
    )?);
    let pool = Arc::new(Pool::routed(routing.clone(), Patience::until_stopped()));
    let nodes = Arc::new(Nodes::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let sources = Arc::new(Sources::new(
        host.name.clone(),
        config.transfer.method,
        nodes.clone(),
        metrics.clone(),
    ));
    let ctx = Arc::new(TaskContext {
        host: host.clone(),
        pool: pool.clone(),
        nodes: nodes.clone(),
        importer,
        transfer: transfer.clone(),
        sources: sources.clone(),
        metrics: metrics.clone(),
        limits: Limits {
            min_archive_copies: config.daemon.min_archive_copies,
            retry_delay: config.daemon.retry_delay.0,
            max_attempts: config.daemon.max_attempts,
        },
        running: tasks::Running::default(),
        refused: tasks::Refused::default(),
        cancel: cancel.clone(),
        batches: tasks::Batches::default(),
        // What an earlier run left waiting on the nodes is registered first.
        registrations_waiting: Arc::new(AtomicBool::new(true)),
        outage: tasks::Outage::default(),
        requeue_pending: AtomicBool::new(requeue_pending),
    });
    tasks::start_replayer(ctx.clone()).context("cannot start the replayer thread")?;
    let fetcher = Arc::new(Fetcher::new(
        pool.clone(),
        CacheDir::new(&config.cache.dir),
        config.cache.max_bytes.0,
        transfer,
        sources.clone(),
        cancel.clone(),
    ));
    info!(
        "cairnd start: host \"{}\", catalog {}{}, {} workers.",
        host.name,
        cairn_catalog::db::postgres::redact(&config.catalog.url),
        config
            .catalog
            .replica
            .as_deref()
            .map_or_else(String::new, |r| format!(
                " (reading from the replica {})",
                cairn_catalog::db::postgres::redact(r)
            )),
        config.daemon.workers
    );
    // PostgreSQL: wake when a request for this host is made anywhere.
    let _listener = crate::notify::spawn(
        &config.catalog.url,
        Listening {
            wake: wake.clone(),
            nodes: nodes.clone(),
            pool: pool.clone(),
            host_id: host.id,
            cancel: cancel.clone(),
        },
    );

    let socket = config.daemon.socket.clone();
    let socket_task = crate::socket::serve(&socket, wake.clone(), fetcher)
        .with_context(|| format!("failed to listen on {}", socket.display()))?;

    let http = match config.transfer.listen {
        None => None,
        Some(listen) => {
            let l = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("failed to listen on {listen} (transfer.listen)"))?;
            info!("Serving copies over HTTP on {}.", l.local_addr()?);
            let (auth, server_tls) = match tls {
                Some(files) => {
                    info!(
                        "Serving over mutual TLS with {}: clients need a certificate from {}.",
                        files.cert.display(),
                        files.ca.display()
                    );
                    (
                        ClientAuth::Certificate,
                        Some(crate::http::tls::server_config(files)?),
                    )
                }
                None => {
                    if token.is_none() {
                        warn!(
                            "No transfer token ({} is missing or empty): copies are neither \
                             served to nor pulled from other hosts.",
                            config.transfer.token_file.display()
                        );
                    }
                    (ClientAuth::Token(token), None)
                }
            };
            let t = &config.transfer;
            // What connections may hold: the limit less the reserve and what is open now.
            let max_fd = fd_limit.map(|limit| limit.saturating_sub(t.fd_reserve as u64));
            let open = open_descriptors();
            let fd_room = max_fd
                .zip(open)
                .map(|(max, open)| max.saturating_sub(open) as usize);
            if let Some(room) = fd_room
                && room < t.max_connections
            {
                warn!(
                    "The open-file limit ({}) less transfer.fd_reserve ({}) and the {} files \
                     open leaves room for {room} connections, fewer than \
                     transfer.max_connections ({}): raise the hard limit (LimitNOFILE= in \
                     the systemd unit).",
                    fd_limit.unwrap_or_default(),
                    t.fd_reserve,
                    open.unwrap_or_default(),
                    t.max_connections
                );
            }
            let conns = Arc::new(Connections::new(ConnLimits {
                header_timeout: t.header_timeout.0,
                idle_timeout: t.idle_timeout.0,
                max_connections: t.max_connections,
                max_per_peer: t.max_connections_per_peer,
                fd_room,
                max_fd,
            }));
            let server = Arc::new(Server {
                pool: pool.clone(),
                nodes: nodes.clone(),
                auth,
                metrics_token: t.metrics_token,
                metrics: metrics.clone(),
                conns,
            });
            Some(tokio::spawn(crate::http::serve(l, server, server_tls)))
        }
    };

    let refresh_config = Arc::new(RefreshConfig {
        transport_watch: config.transport.watch.clone(),
        acq_idle: config.import.acq_idle,
    });
    let node_workers = config.daemon.node_workers;
    let batch = crate::plan::batch(config.daemon.workers);
    let retry_refused = config.daemon.interval.0;
    let workers = Arc::new(Semaphore::new(config.daemon.workers));
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<(NodeId, WatchEvent)>();
    let mut state = Some(RefreshState::default());
    let mut events: Vec<(NodeId, WatchEvent)> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let interval = config.daemon.interval.0;
    let mut next_loop = tokio::time::Instant::now();
    // Work the last pass found but could not start (all workers busy), and when that pass ran:
    // a finished task first starts more of it, and only asks the catalog again once it is
    // used up or older than a moment. Many small copies would otherwise pay a whole pass each.
    let mut backlog: Vec<Task> = Vec::new();
    let mut last_pass = Instant::now();
    // The pass under way, beside the tasks: finished tasks go on starting the backlog while
    // it plans (a pass is 5-20 ms of catalog reads on a busy host, and batches of small files
    // finish every few milliseconds). One at a time; what comes in meanwhile waits for the
    // next: whether it is to be full, and the watches' events.
    let mut planning: Option<Planning> = None;
    let mut want_full = true;
    let mut done_while_planning = false;
    tokio::pin!(shutdown);
    loop {
        let woke = tokio::select! {
            // A pass under way is not waited for: one waiting on an unreachable catalog must
            // not keep cairnd from stopping (`pool.stop_waiting` below lets it give up).
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next_loop) => Woke::Due,
            _ = wake.notified() => Woke::Due,
            Some(ev) = event_rx.recv() => {
                events.push(ev);
                while let Ok(ev) = event_rx.try_recv() {
                    events.push(ev);
                }
                Woke::Events
            }
            Some(_) = running.join_next(), if !running.is_empty() => Woke::TaskDone,
            r = async { (&mut planning.as_mut().expect("a pass under way").handle).await },
                if planning.is_some() => Woke::Planned(Box::new(r)),
        };
        match woke {
            Woke::Due => want_full = true,
            Woke::Events => {}
            Woke::TaskDone => {
                if !backlog.is_empty() && last_pass.elapsed() < Duration::from_millis(500) {
                    let work = std::mem::take(&mut backlog);
                    backlog = dispatch(&ctx, &workers, &mut running, node_workers, work);
                    // Plan ahead once the backlog is used up, while the tasks it started run.
                    want_full |= backlog.is_empty();
                } else if planning.is_some() {
                    // The pass under way may have read the catalog before this task's end: a
                    // pass after it, unless it leaves a backlog (whose end plans again).
                    done_while_planning = true;
                } else {
                    want_full = true;
                }
            }
            Woke::Planned(r) => {
                let done = planning.take().expect("the pass that finished");
                match *r {
                    Err(e) => {
                        error!("Main loop failed: {e}");
                        state = Some(RefreshState::default());
                    }
                    Ok((st, work)) => {
                        state = Some(st);
                        match work {
                            Err(e) => error!("Main loop: {e:#}"),
                            Ok(work) if done.full => {
                                debug!(
                                    "A pass found {} tasks in {:.1?}.",
                                    work.len(),
                                    done.began.elapsed()
                                );
                                record_queue(&metrics, &work);
                                last_pass = done.began;
                                // The pass found the rest of the backlog again in the catalog,
                                // not what the watches found and no worker could take yet:
                                // that is kept, first.
                                let mut work_now: Vec<Task> =
                                    backlog.drain(..).filter(Task::from_watch).collect();
                                work_now.extend(work);
                                backlog =
                                    dispatch(&ctx, &workers, &mut running, node_workers, work_now);
                            }
                            Ok(work) => {
                                let left =
                                    dispatch(&ctx, &workers, &mut running, node_workers, work);
                                backlog.extend(left);
                            }
                        }
                    }
                }
                want_full |= std::mem::take(&mut done_while_planning) && backlog.is_empty();
                ctx.running.report_stuck();
            }
        }
        if planning.is_none() && (want_full || !events.is_empty()) {
            let full = std::mem::take(&mut want_full);
            if full && tokio::time::Instant::now() >= next_loop {
                next_loop = tokio::time::Instant::now() + interval;
            }
            let (ctx, cfg, event_tx) = (ctx.clone(), refresh_config.clone(), event_tx.clone());
            let events = std::mem::take(&mut events);
            let mut st = state.take().expect("the state between passes");
            planning = Some(Planning {
                full,
                began: Instant::now(),
                handle: tokio::task::spawn_blocking(move || {
                    let work = pass(
                        &ctx,
                        &cfg,
                        &mut st,
                        full,
                        events,
                        &event_tx,
                        batch,
                        retry_refused,
                    );
                    (st, work)
                }),
            });
        }
    }

    info!(
        "Shutting down: no new work; waiting for {} running tasks.",
        running.len()
    );
    cancel.store(true, Ordering::Relaxed);
    pool.stop_waiting();
    // A pass still under way (waiting on a catalog out of reach) stops its watches when it
    // ends: its state is dropped with the result no one waits for.
    drop(planning);
    if let Some(st) = &mut state {
        st.stop_watching();
    }
    while running.join_next().await.is_some() {}
    socket_task.abort();
    if let Some(h) = http {
        h.abort();
    }
    let _ = std::fs::remove_file(&socket);
    info!("cairnd stopped.");
    Ok(())
}

/// What woke the main loop.
enum Woke {
    /// The loop's interval is up, or a CLI on this host asked for a pass.
    Due,
    /// The watches found files.
    Events,
    /// A task finished.
    TaskDone,
    /// The pass under way finished: the refresh state back, and the work it found.
    Planned(Box<std::result::Result<Passed, tokio::task::JoinError>>),
}

/// A pass running beside the tasks.
struct Planning {
    /// It plans from the catalog (not only from the watches' events).
    full: bool,
    began: Instant,
    handle: tokio::task::JoinHandle<Passed>,
}

/// What a pass hands back: the refresh state, and the work it found.
type Passed = (RefreshState, Result<Vec<Task>>);

/// Finds this host in the catalog (an administrator creates hosts: a name the catalog does not
/// know is a mistake, not a new host), records its address (`transfer.advertise`), and
/// requeues the requests an earlier run of it left active.
async fn register_host(config: &Config, routing: &Routing, name: String) -> Result<(Host, bool)> {
    let routing = routing.clone();
    let advertise = config.transfer.advertise.clone();
    let origin = match (&config.host.name, &config.source) {
        (Some(_), Some(file)) => format!("host.name in {}", file.display()),
        (Some(_), None) => "host.name".to_owned(),
        (None, Some(file)) => format!(
            "the short hostname, as {} sets no host.name",
            file.display()
        ),
        (None, None) => "the short hostname, as no config file sets host.name".to_owned(),
    };
    tokio::task::spawn_blocking(move || -> Result<(Host, bool)> {
        let mut cat = Catalog::open_routed(&routing).context("failed to open the catalog")?;
        let catalog_id = cat.catalog_id()?;
        let Some(h) = cat.read(|tx| tx.host_by_name(&name))? else {
            anyhow::bail!(
                "host \"{name}\" ({origin}) is not in the catalog: create it with `cairn host \
                 create {name}` (with --address HOST:PORT for pulls over HTTP), or set host.name \
                 to a host the catalog has (`cairn host list`)"
            );
        };
        // A start during a cut link does not wait for the primary: what must be written
        // waits for the first pass it answers.
        let wait = tasks::Outage::PATIENCE;
        if let Some(address) = &advertise
            && h.address.as_deref() != Some(address)
        {
            match cat.write_or_give_up(wait, |tx| {
                tx.update_host(&h.name, Some(Some(address)), None)
            }) {
                Ok(_) => info!("Host \"{}\" now reachable at {address}.", h.name),
                Err(e) if e.is_unreachable() => warn!(
                    "Cannot record this host's address {address} now ({e}); it is recorded at \
                     the next start."
                ),
                Err(e) => return Err(e.into()),
            }
        }
        let requeue_pending = match requeue(&mut cat, &h.name, h.id, wait) {
            Ok(()) => false,
            Err(e) if e.is_unreachable() => {
                warn!(
                    "Cannot put back the requests an earlier run left active now ({e}): the \
                     first pass the catalog answers does it."
                );
                true
            }
            Err(e) => return Err(e.into()),
        };
        Ok((
            Host {
                name: h.name,
                id: h.id,
                catalog_id,
            },
            requeue_pending,
        ))
    })
    .await?
}

/// Puts back the requests an earlier run of this host left active, giving up after `wait` on
/// a catalog out of reach.
fn requeue(
    cat: &mut Catalog,
    host: &str,
    host_id: HostId,
    wait: Duration,
) -> cairn_catalog::error::Result<()> {
    cat.giving_up_after(wait, |cat| {
        let nodes: Vec<NodeId> = cat
            .read(|tx| tx.nodes_on_host(host_id))?
            .iter()
            .map(|n| n.id)
            .collect();
        let requeued = cat.write(|tx| tx.requeue_abandoned(host, &nodes))?;
        if requeued > 0 {
            info!("Resuming {requeued} requests left active by an earlier run.");
        }
        Ok(())
    })
}

/// The token in `path`, trimmed; `None` if the file is missing or empty. A file that other
/// users may read is refused: the token lets anyone pull every copy.
fn read_token(path: &Path) -> Result<Option<String>> {
    let t = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read the transfer token {} (transfer.token_file)",
                    path.display()
                )
            });
        }
    };
    check_private(path, "transfer.token_file")?;
    let t = t.trim();
    Ok((!t.is_empty()).then(|| t.to_owned()))
}

/// Refuses a secret (`key` names its config key) that users other than its owner may read or
/// change.
fn check_private(path: &Path, key: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {} ({key})", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} ({key}) is open to other users (mode {:04o}): run `chmod 600 {}`, and replace \
             the secret if someone else may have read it",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// How many files this process has open; `None` if `/proc` cannot tell.
fn open_descriptors() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Raises this process's soft limit on open files to its hard limit, so that connections
/// and node files do not run out at the usual 1024. Returns the soft limit now in force;
/// `None` if it is unknown or unlimited.
fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is involved.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        warn!(
            "Cannot read the open-file limit: {}.",
            std::io::Error::last_os_error()
        );
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let was = lim.rlim_cur;
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
            info!("Open-file limit raised from {was} to {}.", lim.rlim_cur);
        } else {
            warn!(
                "Cannot raise the open-file limit from {was} to {}: {}.",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// One pass: the work of auto-import events, and on a full pass the refresh of this host's
/// nodes (the writes) and then the plan (the reads).
#[allow(clippy::too_many_arguments)]
fn pass(
    ctx: &TaskContext,
    config: &RefreshConfig,
    st: &mut RefreshState,
    full: bool,
    events: Vec<(NodeId, WatchEvent)>,
    event_tx: &mpsc::UnboundedSender<(NodeId, WatchEvent)>,
    batch: u64,
    retry_refused: Duration,
) -> Result<Vec<Task>> {
    let mut work = crate::plan::events(&ctx.nodes, |id| st.is_watched(id), events);
    // While the catalog's primary is out of reach, what the watches found goes on (its files
    // wait on the nodes); the planning waits.
    if !full {
        return Ok(work);
    }
    if ctx.outage.holds() {
        work.extend(refresh_nodes(ctx, config, st, event_tx));
        return Ok(work);
    }
    let patience = ctx.outage.patience();
    let planned = ctx.pool.with(|cat| {
        cat.giving_up_after(patience, |cat| {
            plan_pass(ctx, cat, config, st, event_tx, batch, retry_refused)
        })
    });
    match planned {
        Ok(mut planned) => {
            if let Some(lasted) = ctx.outage.answered() {
                info!(
                    "The catalog answers again after {:.0?}: planning resumes.",
                    lasted
                );
            }
            work.append(&mut planned);
            Ok(work)
        }
        Err(e) if tasks::out_of_reach(&e) => {
            if ctx.outage.failed() {
                warn!(
                    "The catalog cannot be reached ({e:#}): cairnd plans no new work until it \
                     answers; files that auto-import and scans find wait on their nodes, and \
                     copies already under way go on."
                );
            }
            work.extend(refresh_nodes(ctx, config, st, event_tx));
            Ok(work)
        }
        Err(e) => Err(e),
    }
}

/// While the catalog's primary is out of reach: this host's nodes as the replica has them,
/// available and watched (a cairnd started during a cut link), with nothing written.
fn refresh_nodes(
    ctx: &TaskContext,
    config: &RefreshConfig,
    st: &mut RefreshState,
    event_tx: &mpsc::UnboundedSender<(NodeId, WatchEvent)>,
) -> Vec<Task> {
    let refreshed = ctx.pool.with(|cat| {
        cat.giving_up_after(Duration::ZERO, |cat| {
            crate::refresh::refresh(cat, &ctx.host, &ctx.nodes, config, st, event_tx, false)
        })
    });
    match refreshed {
        Ok(r) => r.work,
        Err(e) => {
            debug!("Cannot read this host's nodes during the outage: {e:#}");
            Vec::new()
        }
    }
}

/// The catalog's part of a full pass: the refresh of this host's nodes, the gauges, and the
/// work planned.
fn plan_pass(
    ctx: &TaskContext,
    cat: &mut cairn_catalog::Catalog,
    config: &RefreshConfig,
    st: &mut RefreshState,
    event_tx: &mpsc::UnboundedSender<(NodeId, WatchEvent)>,
    batch: u64,
    retry_refused: Duration,
) -> Result<Vec<Task>> {
    if ctx.requeue_pending.load(Ordering::Relaxed) {
        requeue(cat, &ctx.host.name, ctx.host.id, tasks::Outage::PATIENCE)?;
        ctx.requeue_pending.store(false, Ordering::Relaxed);
    }
    let mut refreshed =
        crate::refresh::refresh(cat, &ctx.host, &ctx.nodes, config, st, event_tx, true)?;
    let mut work = std::mem::take(&mut refreshed.work);
    let observed = ctx
        .metrics
        .observe(cat, &ctx.nodes.available(), ctx.limits.min_archive_copies);
    match observed {
        Ok(()) => st.gauges_failure.clear(&()),
        Err(e) => {
            let why = format!("{e:#}");
            if st.gauges_failure.holds(&(), &why, Instant::now()) {
                warn!("Cannot read the archive's gauges for /metrics: {why}");
            }
        }
    }
    // A refused release is tried again at the next loop, not at every wake-up.
    let refused = ctx.refused.recent(retry_refused);
    work.extend(crate::plan::plan(
        cat,
        &ctx.nodes,
        &refreshed,
        &refused,
        &ctx.sources,
        batch,
    )?);
    Ok(work)
}

/// The queue gauges of `/metrics`: the work the last pass found, by kind.
fn record_queue(metrics: &Metrics, work: &[Task]) {
    for (gauge, pick) in [
        (
            &metrics.queue_copy,
            (|t| matches!(t, Task::Copy { .. } | Task::CopyBatch { .. })) as fn(&Task) -> bool,
        ),
        (&metrics.queue_import, |t| {
            matches!(
                t,
                Task::Init { .. }
                    | Task::Import { .. }
                    | Task::AutoImport { .. }
                    | Task::Scan { .. }
            )
        }),
        (&metrics.queue_verify, |t| matches!(t, Task::Verify { .. })),
        (&metrics.queue_release, |t| {
            matches!(t, Task::Release { .. })
        }),
    ] {
        // A batch counts as the requests it holds.
        gauge.store(
            work.iter()
                .filter(|t| pick(t))
                .map(|t| t.keys().len())
                .sum::<usize>() as u64,
            Ordering::Relaxed,
        );
    }
}

/// Starts what it can of `work`; returns what is left for lack of a worker or of room on a
/// node (at most `node_workers` tasks per node).
fn dispatch(
    ctx: &Arc<TaskContext>,
    workers: &Arc<Semaphore>,
    running: &mut tokio::task::JoinSet<()>,
    node_workers: usize,
    work: Vec<Task>,
) -> Vec<Task> {
    let mut left = Vec::new();
    let mut work = work.into_iter();
    while let Some(task) = work.next() {
        let keys = task.keys();
        if keys.iter().any(|k| ctx.running.contains(k)) {
            continue;
        }
        if !ctx.running.may_start(&task, node_workers) {
            left.push(task);
            continue;
        }
        let Ok(permit) = workers.clone().try_acquire_owned() else {
            left.push(task);
            left.extend(work);
            return left;
        };
        ctx.running.start(&task);
        let nodes = task.nodes();
        let ctx2 = ctx.clone();
        running.spawn_blocking(move || {
            let what = task.describe();
            debug!("Beginning task {what}");
            if let Err(e) = tasks::run(&ctx2, task) {
                error!("Task {what} failed: {e:#}");
            }
            ctx2.running.finish(&keys, &nodes);
            drop(permit);
        });
    }
    left
}
