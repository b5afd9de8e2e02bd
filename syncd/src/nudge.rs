//! The local unix socket: the CLI and mounts on this host wake cairnd with one line
//! (`cairn_catalog::nudge`), so a request made here is picked up at once.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::daemon::Shared;

/// Listens on `socket` (replacing a stale socket file; the instance lock guarantees no other
/// cairnd of this host owns it) and wakes the main loop on every line received.
pub fn listen(socket: &Path, shared: Arc<Shared>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("Socket accept failed: {e}");
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.trim() == cairn_catalog::nudge::WAKE {
                        debug!("Nudged: looking for work now.");
                        shared.wake.notify_one();
                    }
                }
            });
        }
    }))
}
