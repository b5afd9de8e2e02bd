//! Waking on the catalog's notifications (PostgreSQL only).
//!
//! The catalog's triggers NOTIFY `cairn_wake` when a request is made anywhere — by the CLI on
//! any machine, a mount, another cairnd's auto-actions — naming the group or node it is for
//! (`group 3`, `node 7`). A thread of cairnd LISTENs on a dedicated connection and wakes the
//! main loop when a notification concerns one of this host's nodes, so a request is picked up
//! within moments instead of at the next `daemon.interval`. On SQLite the local socket nudge
//! (`crate::nudge`) does this job.
//!
//! When the connection drops, the thread reconnects with backoff and wakes the loop once it
//! is back (notifications sent meanwhile were missed); the loop's interval covers the gap.

use std::sync::Arc;
use std::time::Duration;

use cairn_catalog::db::postgres::{self, Heard, Listener};
use tracing::{debug, info, warn};

use crate::daemon::Shared;

/// How often the thread checks whether cairnd is shutting down.
const POLL: Duration = Duration::from_millis(500);

/// Starts the listening thread if the catalog is PostgreSQL. It ends when cairnd shuts down.
pub fn spawn(shared: Arc<Shared>) -> Option<std::thread::JoinHandle<()>> {
    let url = &shared.config.catalog.url;
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
        .spawn(move || listen(&shared, listener));
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            warn!("Not listening for catalog notifications: cannot start a thread: {e}");
            None
        }
    }
}

fn listen(shared: &Shared, mut listener: Listener) {
    let mut delay = Duration::from_millis(100);
    let mut lost = false;
    while !shared.is_cancelled() {
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
                shared.wake.notify_one();
            }
            Ok(Heard::Wake(payloads)) => {
                if payloads.iter().any(|p| concerns(shared, p)) {
                    debug!("Woken by the catalog: {payloads:?}.");
                    shared.wake.notify_one();
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
fn concerns(shared: &Shared, payload: &str) -> bool {
    let Some((kind, id)) = payload.split_once(' ') else {
        return true;
    };
    let Ok(id) = id.parse::<i64>() else {
        return true;
    };
    let known = shared.host_nodes.lock().expect("host nodes lock").clone();
    match kind {
        "group" => known.values().any(|g| *g == id),
        "node" if known.contains_key(&id) => true,
        "node" => shared
            .pool
            .with(|cat| cat.read(|tx| tx.node_by_id(id)))
            .map_or(true, |n| n.host_id == Some(shared.host_id)),
        _ => true,
    }
}
