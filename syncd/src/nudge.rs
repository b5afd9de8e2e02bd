//! The local unix socket: the CLI and mounts on this host wake cairnd with one line
//! (`cairn_catalog::nudge`), so a request made here is picked up at once, and cairnfs asks
//! for files to be fetched into the cache (`fetch FILE_ID`, see [`crate::cache`]).

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = line.trim();
                    if line == cairn_catalog::nudge::WAKE {
                        debug!("Nudged: looking for work now.");
                        shared.wake.notify_one();
                    } else if let Some(id) = line.strip_prefix("fetch ") {
                        let answer = match id.trim().parse() {
                            Ok(id) => {
                                crate::cache::serve_fetch(shared.clone(), id, &mut write).await
                            }
                            Err(_) => write.write_all(b"error malformed fetch request\n").await,
                        };
                        if answer.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    }))
}
