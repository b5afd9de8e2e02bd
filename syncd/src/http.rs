//! cairnd's HTTP server: other hosts pull this host's copies from it (invariant 5: the
//! receiver runs the transfer).
//!
//! - `GET /v1/copy/{node}/{path}` streams the copy of a registered file that the catalog records
//!   `has = yes` on `node`, a node available on this host; `Range: bytes=N-` (or `N-M`) resumes.
//!   Nothing else under a root is reachable: the path must be a registered file (so no `..`,
//!   no dot files, no `.cairn/`), the final component is opened with `O_NOFOLLOW`, and the
//!   path is resolved by the kernel beneath the node root (no symlinked directory leading
//!   out, [`confined`]).
//! - Who may ask ([`ClientAuth`]): with TLS, hosts holding a certificate from the archive's
//!   authority, checked in the handshake ([`tls`]), and nobody else gets a request in; over
//!   plain HTTP, a copy request must carry `Authorization: Bearer <token>` with the token of
//!   `transfer.token_file`. A refusal is logged with the peer address.
//! - `GET /v1/batch?copies=ID,…` streams several small copies, by copy id, in one response
//!   ([`batch`], format in [`crate::pullbatch`]): each passes the checks of a single pull, and
//!   one that fails them is refused alone.
//! - `GET /healthz` answers `ok`; `GET /metrics` is Prometheus text, with the token if
//!   `transfer.metrics_token`.
//! - No client can stall the server: connections are capped per peer and in all, kept out of
//!   cairnd's reserve of file descriptors, and closed when a request's headers or the peer
//!   take too long ([`conns`]).

pub mod batch;
mod confined;
pub mod conns;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};
use tracing::{info, warn};

use cairn_catalog::Pool;

use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::percent::percent_decode;
use conns::{Connections, RequestGuard, Requests, Throttle, more};

/// How the server knows a client is another host of the archive.
pub enum ClientAuth {
    /// Mutual TLS: the handshake admitted only certificates from the archive's authority.
    Certificate,
    /// Plain HTTP: the bearer token of `transfer.token_file`; `None` refuses every copy
    /// request.
    Token(Option<String>),
}

/// What the server needs: the catalog, this host's available nodes, how clients prove who
/// they are, the counters and the connection table.
pub struct Server {
    pub pool: Arc<Pool>,
    pub nodes: Arc<Nodes>,
    pub auth: ClientAuth,
    /// `transfer.metrics_token`: `/metrics` asks for the token too.
    pub metrics_token: bool,
    pub metrics: Arc<Metrics>,
    pub conns: Arc<Connections>,
}

type ResBody = BoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<ResBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(body.into() + "\n"))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

/// Accepts connections (over TLS when `tls` is given) until the task is aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let accept_failed = Throttle::default();
    let handshake_failed = Arc::new(Throttle::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                accept_failed.log(|skipped| warn!("HTTP accept failed: {e}{}", more(skipped)));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match server.conns.admit(peer.ip(), stream.as_raw_fd() as u64) {
            Ok(a) => a,
            Err(_) => {
                if acceptor.is_none() {
                    // A word for a plain-HTTP client, if its socket takes it at once; the
                    // connection closes as `stream` drops either way.
                    let _ = stream.try_write(
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
                          Content-Length: 0\r\n\r\n",
                    );
                }
                continue;
            }
        };
        // Without this, Nagle's algorithm holds a small body back until the client's delayed
        // ACK of the headers: 40 ms per small file.
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let acceptor = acceptor.clone();
        let handshake_failed = handshake_failed.clone();
        tokio::spawn(async move {
            let requests = admitted.requests();
            let io = admitted.track(stream);
            let connection = async {
                match acceptor {
                    None => serve_connection(io, peer, server, requests).await,
                    Some(acceptor) => match acceptor.accept(io).await {
                        Ok(tls) => serve_connection(tls, peer, server, requests).await,
                        Err(e) => {
                            Metrics::add(&server.metrics.requests_refused, 1);
                            handshake_failed.log(|skipped| {
                                warn!(
                                    "Refused a connection from {peer}: TLS handshake failed: \
                                     {e}{}.",
                                    more(skipped)
                                )
                            });
                        }
                    },
                }
            };
            // Whichever ends first: the connection, or its time (the socket closes as the
            // other future drops).
            tokio::select! {
                _ = connection => {}
                _ = admitted.watch(peer) => {}
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, peer: SocketAddr, server: Arc<Server>, requests: Requests)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        // The headers are complete: the connection is busy until the response is all sent.
        let request = requests.begin();
        let server = server.clone();
        async move {
            let resp = handle(req, peer, server).await;
            Ok::<_, Infallible>(resp.map(|body| Guarded {
                body,
                _request: request,
            }))
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
    {
        tracing::debug!("HTTP connection from {peer}: {e}");
    }
}

/// A response body that keeps its request counted as in progress until it is all sent (or
/// given up).
struct Guarded {
    body: ResBody,
    _request: RequestGuard,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    server: Arc<Server>,
) -> Response<ResBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => return text(StatusCode::OK, "ok"),
        "/metrics" => {
            if server.metrics_token
                && let Err(why) = check_token(&server, &req)
            {
                return refuse(&server, peer, StatusCode::UNAUTHORIZED, &path, why);
            }
            let mut body = server.metrics.render() + &server.conns.render();
            body.push_str(&Metrics::render_replica(
                server.pool.replica_status().as_ref(),
            ));
            return text(StatusCode::OK, body.trim_end());
        }
        _ => {}
    }
    if path == crate::pullbatch::PATH {
        if let Err(why) = check_token(&server, &req) {
            return refuse(&server, peer, StatusCode::UNAUTHORIZED, &path, why);
        }
        let Some(ids) = req.uri().query().and_then(crate::pullbatch::parse_query) else {
            return refuse(
                &server,
                peer,
                StatusCode::BAD_REQUEST,
                &path,
                &format!(
                    "not a list of copy ids (copies=ID,…, at most {})",
                    crate::pullbatch::MAX_FILES
                ),
            );
        };
        return batch::serve(server, peer, ids);
    }
    let Some(rest) = path.strip_prefix("/v1/copy/") else {
        return refuse(
            &server,
            peer,
            StatusCode::NOT_FOUND,
            &path,
            "no such endpoint",
        );
    };
    if let Err(why) = check_token(&server, &req) {
        return refuse(&server, peer, StatusCode::UNAUTHORIZED, &path, why);
    }
    let decoded = match percent_decode(rest) {
        Some(d) => d,
        None => return refuse(&server, peer, StatusCode::BAD_REQUEST, &path, "bad escape"),
    };
    let Some((node, file_path)) = decoded.split_once('/') else {
        return refuse(&server, peer, StatusCode::NOT_FOUND, &path, "no file path");
    };
    let (node, file_path) = (node.to_owned(), file_path.to_owned());
    let range = req
        .headers()
        .get(RANGE)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let server2 = server.clone();
    let opened = tokio::task::spawn_blocking(move || open_copy(&server2, &node, &file_path)).await;
    let (file, size, shown) = match opened {
        Ok(Ok(o)) => o,
        Ok(Err((status, why))) => return refuse(&server, peer, status, &path, &why),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (start, end) = match range.as_deref().map(|r| parse_range(r, size)) {
        None => (0, size),
        Some(Some(r)) => r,
        Some(None) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(CONTENT_RANGE, format!("bytes */{size}"))
                .body(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .expect("a valid response");
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        use tokio::io::AsyncSeekExt;
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        info!("Serving {shown} to {peer} from byte {start} (resume).");
    } else {
        info!("Serving {shown} to {peer}.");
    }
    Metrics::add(&server.metrics.copies_served, 1);
    let mut resp = Response::builder()
        .header(CONTENT_LENGTH, end - start)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("Accept-Ranges", "bytes");
    if range.is_some() {
        resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
            CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
        );
    }
    let body = if req.method() == Method::HEAD {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    } else {
        FileBody {
            file,
            remaining: end - start,
            buf: vec![0; 256 * 1024],
            metrics: server.metrics.clone(),
        }
        .boxed()
    };
    resp.body(body).expect("a valid response")
}

fn refuse(
    server: &Server,
    peer: SocketAddr,
    status: StatusCode,
    path: &str,
    why: &str,
) -> Response<ResBody> {
    Metrics::add(&server.metrics.requests_refused, 1);
    warn!("Refused {path} to {peer}: {why} ({}).", status.as_u16());
    text(status, why)
}

/// Whether `req` comes from a host of the archive: always, over mutual TLS; over plain HTTP,
/// if it carries the token.
fn check_token(server: &Server, req: &Request<Incoming>) -> Result<(), &'static str> {
    let token = match &server.auth {
        ClientAuth::Certificate => return Ok(()),
        ClientAuth::Token(Some(token)) => token,
        ClientAuth::Token(None) => return Err("this host has no transfer token configured"),
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("missing bearer token")?;
    // Compare in constant time: no early exit on the first differing byte.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err("wrong bearer token")
    }
}

type Refusal = (StatusCode, String);

/// Opens the copy of `path` on `node` if the catalog says this host may serve it.
fn open_copy(
    server: &Server,
    node: &str,
    path: &str,
) -> Result<(std::fs::File, u64, String), Refusal> {
    let not_found = |why: String| (StatusCode::NOT_FOUND, why);
    match cairn_catalog::catalog::normalize_path(path) {
        Ok(p) if p == path => {}
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("{path:?} is not an archive path"),
            ));
        }
    }
    let n = server
        .nodes
        .available()
        .into_iter()
        .find(|n| n.name == node)
        .ok_or_else(|| not_found(format!("node {node:?} is not available on this host")))?;
    let root = PathBuf::from(n.root.clone().unwrap_or_default());
    let file = server
        .pool
        .with(|cat| {
            cat.read(|tx| {
                let Some(f) = tx.file_by_path(path)? else {
                    return Ok(None);
                };
                let copy = tx.copy_on(f.id, n.id)?;
                Ok(Some((f, copy)))
            })
        })
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let (f, copy) = file.ok_or_else(|| not_found(format!("{path:?} is not a registered file")))?;
    if copy.map(|c| c.has) != Some(cairn_catalog::model::Has::Yes) {
        return Err(not_found(format!(
            "no healthy copy of {path:?} on node {node:?}"
        )));
    }
    let (file, size) = open_confined(&confined::Root::new(&root), &f.path, node)?;
    Ok((file, size, format!("{} of {node}", f.path)))
}

/// Opens the registered file `path` under `root` (of `node`), confined to it
/// ([`confined`]). Returns the file and its size.
fn open_confined(
    root: &confined::Root,
    path: &str,
    node: &str,
) -> Result<(std::fs::File, u64), Refusal> {
    let not_found = |why: String| (StatusCode::NOT_FOUND, why);
    let file = root.open(path).map_err(|e| match e {
        confined::Refused::Outside => (
            StatusCode::FORBIDDEN,
            format!("{path:?} leads outside the root of node {node:?}"),
        ),
        confined::Refused::Open(e) => not_found(format!("cannot open the copy: {e}")),
    })?;
    let size = file.metadata().map_err(|e| not_found(e.to_string()))?.len();
    Ok((file, size))
}

/// `bytes=N-` or `bytes=N-M` → (start, end exclusive); `None` if unsatisfiable.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        size
    } else {
        b.trim().parse::<u64>().ok()?.checked_add(1)?.min(size)
    };
    (start < end || (start == 0 && size == 0)).then_some((start, end))
}

/// Streams a file's remaining bytes as response frames.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
    metrics: Arc<Metrics>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (this.buf.len() as u64).min(this.remaining) as usize;
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the copy is shorter than announced",
                    ))));
                }
                this.remaining -= n as u64;
                Metrics::add(&this.metrics.bytes_sent, n as u64);
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 10)));
        assert_eq!(parse_range("bytes=4-5", 10), Some((4, 6)));
        assert_eq!(parse_range("bytes=4-99", 10), Some((4, 10)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=-5", 10), None);
        assert_eq!(parse_range("items=0-", 10), None);
    }
}
