//! The server side of the local unix socket (protocol in `cairn_node::socket`): the CLI and
//! mounts on this host wake cairnd with one line, so a request made here is picked up at once,
//! and cairnfs asks for files to be fetched into the cache (see [`crate::cache`]).

use std::path::Path;
use std::sync::Arc;

use cairn_node::socket::{ProtocolError, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::cache::Fetcher;

/// Serves `socket` (replacing a stale socket file; the instance lock guarantees no other
/// cairnd of this host owns it): a `wake` wakes the main loop, a `fetch` goes to `fetcher`.
pub fn serve(
    socket: &Path,
    wake: Arc<Notify>,
    fetcher: Arc<Fetcher>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
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
            let (wake, fetcher) = (wake.clone(), fetcher.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = match line.parse::<Request>() {
                        Ok(Request::Wake) => {
                            debug!("Nudged: looking for work now.");
                            wake.notify_one();
                            Ok(())
                        }
                        Ok(Request::Fetch(id)) => {
                            crate::cache::serve_fetch(fetcher.clone(), id, &mut write).await
                        }
                        Ok(Request::Ahead(id)) => {
                            crate::cache::fetch_ahead(fetcher.clone(), id);
                            Ok(())
                        }
                        Err(e @ ProtocolError::MalformedFetch) => {
                            let reply = Reply::Error(e.to_string());
                            write.write_all(format!("{reply}\n").as_bytes()).await
                        }
                        Err(ProtocolError::Unknown(_)) => Ok(()),
                    };
                    if answer.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}
