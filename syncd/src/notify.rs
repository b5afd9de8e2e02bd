//! Waking on the catalog's notifications (PostgreSQL only).
//!
//! The catalog's triggers NOTIFY `cairn_wake` when a request is made anywhere — by the CLI on
//! any machine, a mount, another cairnd's auto-actions — naming the group or node it is for
//! (`group 3`, `node 7`). A thread of cairnd LISTENs on a dedicated connection and wakes the
//! main loop when a notification concerns one of this host's nodes, so a request is picked up
//! within moments instead of at the next `daemon.interval`. On SQLite the local socket nudge
//! (`crate::socket`) does this job.
//!
//! With a replica at this site (`catalog.replica`), the thread also asks the primary where its
//! log stands when it hears something, and the pass that follows reads at least that fresh
//! (`Routing::read_at_least`): a request announced by a notification is not missed because
//! the replica had not replayed it yet.
//!
//! When the connection drops, the thread reconnects with backoff and wakes the loop once it
//! is back (notifications sent meanwhile were missed); the loop's interval covers the gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_catalog::Pool;
use cairn_catalog::db::postgres::{self, Heard, Listener};
use cairn_catalog::model::{GroupId, HostId, NodeId};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::nodes::Nodes;

/// What the listening thread needs: whom to wake, and how to tell this host's work.
pub struct Listening {
    pub wake: Arc<Notify>,
    pub nodes: Arc<Nodes>,
    pub pool: Arc<Pool>,
    pub host_id: HostId,
    /// Set at shutdown: the thread ends.
    pub cancel: Arc<AtomicBool>,
}

/// How often the thread checks whether cairnd is shutting down.
const POLL: Duration = Duration::from_millis(500);

/// Starts the listening thread if the catalog is PostgreSQL. It ends when cairnd shuts down.
pub fn spawn(url: &str, l: Listening) -> Option<std::thread::JoinHandle<()>> {
    if !postgres::is_postgres_url(url) {
        return None;
    }
    let listener = match Listener::new(url) {
        Ok(l) => l,
        Err(e) => {
            warn!("Not listening for catalog notifications: {e}");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("cairn-listen".into())
        .spawn(move || listen(&l, listener));
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            warn!("Not listening for catalog notifications: cannot start a thread: {e}");
            None
        }
    }
}

fn listen(l: &Listening, mut listener: Listener) {
    let mut delay = Duration::from_millis(100);
    let mut lost = false;
    while !l.cancel.load(Ordering::Relaxed) {
        match listener.wait(POLL) {
            Ok(Heard::Nothing) => {}
            Ok(Heard::Connected) => {
                if lost {
                    info!(
                        "Listening for requests on the catalog at {} again.",
                        listener.url()
                    );
                } else {
                    debug!("Listening for requests on the catalog.");
                }
                lost = false;
                delay = Duration::from_millis(100);
                l.wake.notify_one();
            }
            Ok(Heard::Wake(payloads)) => {
                if payloads.iter().any(|p| concerns(l, p)) {
                    debug!("Woken by the catalog: {payloads:?}.");
                    // With a replica, the pass must read what the notification announced,
                    // which may not be replayed there yet: reads wait for the primary's
                    // position now (one round trip to it), as after a write of our own.
                    if l.pool.routing().has_replica()
                        && let Some(lsn) = listener.position()
                    {
                        l.pool.routing().read_at_least(lsn);
                    }
                    l.wake.notify_one();
                }
            }
            Err(e) => {
                if !lost {
                    warn!("{e}; reconnecting.");
                    lost = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether a notification is about work for this host: a copy into the group of one of its
/// nodes, or something for one of its nodes. A node created since the last pass is looked up.
fn concerns(l: &Listening, payload: &str) -> bool {
    let Some((kind, id)) = payload.split_once(' ') else {
        return true;
    };
    let Ok(id) = id.parse::<i64>() else {
        return true;
    };
    let known = l.nodes.all();
    match kind {
        "group" => known.values().any(|g| *g == GroupId(id)),
        "node" if known.contains_key(&NodeId(id)) => true,
        "node" => l
            .pool
            .with(|cat| cat.read(|tx| tx.node_by_id(NodeId(id))))
            .map_or(true, |n| n.host_id == Some(l.host_id)),
        _ => true,
    }
}
