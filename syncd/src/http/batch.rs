//! `GET /v1/batch?copies=…`: the serving side of a batched pull (the format is in
//! [`crate::pullbatch`]).
//!
//! Each copy of a batch passes the checks of a single pull: a healthy copy, in the catalog,
//! of a node available on this host, opened with `O_NOFOLLOW` and refused if it resolves
//! outside its node's root. A copy that fails them is refused alone (a header with the reason,
//! no bytes); the others are served. The files are read on one blocking thread, one after
//! another, and handed to the connection through a short channel, small ones gathered into
//! chunks of [`CHUNK`] (a wake-up of the connection per file cost more than reading it), so
//! a slow reader holds at most a few chunks or files in memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use tracing::{info, warn};

use cairn_catalog::model::{CopyId, Has};

use super::{ResBody, Server, confined, open_confined};
use crate::metrics::Metrics;
use crate::pullbatch::{Header, MAX_FILE};

/// Small files and headers are sent in chunks of about this many bytes.
const CHUNK: usize = 64 << 10;

/// The response to a batch request for `ids` (already authorised): the files stream as they
/// are read.
pub(super) fn serve(server: Arc<Server>, peer: SocketAddr, ids: Vec<CopyId>) -> Response<ResBody> {
    // Up to eight chunks or large files read ahead of the socket.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || produce(&server, peer, &ids, &tx));
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/x-cairn-batch")
        .body(ChannelBody { rx }.boxed())
        .expect("a valid response")
}

/// A copy the catalog lets this host serve: its node's name and root, and the file.
struct Servable {
    node: String,
    root: PathBuf,
    path: String,
    md5: String,
}

/// Looks up every copy of the batch in one read (a query for the copies, one for their
/// files); each a copy to serve or why not.
fn lookup(server: &Server, ids: &[CopyId]) -> Vec<Result<Servable, String>> {
    let available = server.nodes.available();
    let found = server.pool.with(|cat| {
        cat.read(|tx| {
            let copies = tx.copies_by_ids(ids)?;
            let file_ids: Vec<_> = copies.values().map(|c| c.file_id).collect();
            let files = tx.files_by_ids(&file_ids)?;
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let Some(copy) = copies.get(&id) else {
                    out.push(Err(format!("copy #{id} is not in the catalog")));
                    continue;
                };
                let Some(node) = available.iter().find(|n| n.id == copy.node_id) else {
                    out.push(Err(format!(
                        "node {:?} of copy #{id} is not available on this host",
                        copy.node
                    )));
                    continue;
                };
                if copy.has != Has::Yes {
                    out.push(Err(format!(
                        "copy #{id} on node {:?} is not healthy",
                        copy.node
                    )));
                    continue;
                }
                let Some(f) = files.get(&copy.file_id) else {
                    out.push(Err(format!("the file of copy #{id} is not in the catalog")));
                    continue;
                };
                out.push(Ok(Servable {
                    node: node.name.clone(),
                    root: PathBuf::from(node.root.clone().unwrap_or_default()),
                    path: f.path.clone(),
                    md5: f.md5.clone(),
                }));
            }
            Ok(out)
        })
    });
    match found {
        Ok(found) => found,
        Err(e) => {
            let why = format!("the catalog failed: {e:#}");
            ids.iter().map(|_| Err(why.clone())).collect()
        }
    }
}

/// Reads the whole copy, confined to its root (opened once per batch) like a single pull, if
/// it is small enough.
fn read(c: &Servable, roots: &mut HashMap<PathBuf, confined::Root>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    match cairn_catalog::catalog::normalize_path(&c.path) {
        Ok(p) if p == c.path => {}
        _ => return Err(format!("{:?} is not an archive path", c.path)),
    }
    if !roots.contains_key(&c.root) {
        roots.insert(c.root.clone(), confined::Root::new(&c.root));
    }
    let root = &roots[&c.root];
    let (file, size) = open_confined(root, &c.path, &c.node).map_err(|(_, why)| why)?;
    if size > MAX_FILE {
        return Err(format!(
            "{:?} is {size} B, too large for a batch (at most {MAX_FILE} B)",
            c.path
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {:?}: {e}", c.path))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("{:?} grew too large for a batch", c.path));
    }
    Ok(bytes)
}

/// Sends each file of the batch, or its refusal, in the order asked; stops when the client
/// goes away.
fn produce(
    server: &Server,
    peer: SocketAddr,
    ids: &[CopyId],
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let (mut served, mut refused) = (0usize, 0usize);
    let mut roots = HashMap::new();
    let mut chunk: Vec<u8> = Vec::with_capacity(2 * CHUNK);
    let send = |frame: Vec<u8>, served: usize| {
        let gone = tx.blocking_send(Ok(Bytes::from(frame))).is_err();
        if gone {
            warn!("{peer} left in the middle of a batch ({served} copies sent).");
        }
        !gone
    };
    for (&copy_id, found) in ids.iter().zip(lookup(server, ids)) {
        let (header, bytes) = match found.and_then(|c| read(&c, &mut roots).map(|b| (c, b))) {
            Ok((c, bytes)) => {
                let header = Header::File {
                    copy_id,
                    size: bytes.len() as u64,
                    md5: c.md5,
                };
                served += 1;
                Metrics::add(&server.metrics.copies_served, 1);
                Metrics::add(&server.metrics.bytes_sent, bytes.len() as u64);
                (header, Some(bytes))
            }
            Err(reason) => {
                refused += 1;
                Metrics::add(&server.metrics.requests_refused, 1);
                warn!("Refused copy #{copy_id} of a batch to {peer}: {reason}.");
                (Header::Refused { copy_id, reason }, None)
            }
        };
        chunk.extend_from_slice(header.encode().as_bytes());
        match bytes {
            // A small file joins the chunk; a large one goes as it was read, not copied.
            Some(b) if b.len() < CHUNK => chunk.extend_from_slice(&b),
            Some(b) => {
                let head = std::mem::replace(&mut chunk, Vec::with_capacity(2 * CHUNK));
                if !send(head, served - 1) || !send(b, served) {
                    return;
                }
            }
            None => {}
        }
        if chunk.len() >= CHUNK
            && !send(
                std::mem::replace(&mut chunk, Vec::with_capacity(2 * CHUNK)),
                served,
            )
        {
            return;
        }
    }
    if !chunk.is_empty() && !send(chunk, served) {
        return;
    }
    info!(
        "Served a batch of {served} copies to {peer}{}.",
        if refused > 0 {
            format!(" ({refused} refused)")
        } else {
            String::new()
        }
    );
}

/// A response body fed by the thread that reads the files.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|next| next.map(|r| r.map(Frame::data)))
    }
}
