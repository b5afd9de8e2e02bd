//! The transfer step, as a trait: how the bytes of a source copy reach a temp file here.
//!
//! A copy on a node of this host is a plain pipelined copy. A copy on another host is pulled
//! from that host's cairnd over HTTP (invariant 5: the receiver runs the transfer), resuming a
//! partial temp file with `Range`, proving who it is with its certificate (mutual TLS) or,
//! over plain HTTP, the archive's token ([`PullAuth`]). Either way the rest of the copy task — md5 check, fsync,
//! rename, record (invariant 2) — is one code path. Small copies from one host can also come
//! several in one request ([`Transfer::fetch_batch`], format in [`crate::pullbatch`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_catalog::config::TlsFiles;
use cairn_catalog::model::{CopyId, NodeId};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::percent::percent_encode;
use crate::pullbatch;
use cairn_node::copyfile::{self, Copied};

/// Where a source copy's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On a node of this host: the file's absolute path.
    Local(PathBuf),
    /// On another host: its cairnd's `host:port`, the node, the archive path and size, and
    /// for rsync the `[user@]address:/root/path` to log in to.
    Remote {
        host: String,
        address: String,
        node: String,
        path: String,
        size: u64,
        rsync: Option<String>,
    },
}

/// A copy to read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub node_id: NodeId,
    pub node: String,
    pub copy_id: CopyId,
    pub location: Location,
}

pub trait Transfer: Send + Sync {
    /// A word for logs: "local copy", "http".
    fn method(&self, source: &Source) -> &'static str;

    /// Writes the source's bytes into `tmp` (created, or resumed where it holds a prefix of
    /// them), fsynced, and returns the whole file's size and md5. Stops with
    /// `ErrorKind::Interrupted` when `cancel` is set.
    fn fetch(&self, source: &Source, tmp: &Path, cancel: &AtomicBool) -> std::io::Result<Copied>;

    /// The host a batched pull of `source` would ask; `None` if `source` is not pulled that
    /// way (a copy on this host, or a pull by rsync).
    fn batch_peer(&self, source: &Source) -> Option<Peer>;

    /// Pulls several small copies from `peer` in one request ([`crate::pullbatch`]), into
    /// memory (a batch holds at most [`crate::pullbatch::MAX_BYTES`]): the caller writes them
    /// where they go. One result per item, in order: an item the peer refused, or that the
    /// stream did not deliver, fails alone. Stops with `ErrorKind::Interrupted` when `cancel`
    /// is set.
    fn fetch_batch(
        &self,
        peer: &Peer,
        items: &[BatchItem],
        cancel: &AtomicBool,
    ) -> Vec<std::io::Result<Fetched>>;
}

/// Another host's cairnd, to pull from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub host: String,
    /// Its `host:port`.
    pub address: String,
}

/// One file of a batched pull: the source copy and its size in the catalog.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub copy_id: CopyId,
    pub size: u64,
}

/// A file of a batched pull as it arrived: its bytes and their md5.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub md5: String,
}

/// How this host proves to others that it is a host of the archive when it pulls.
pub enum PullAuth {
    /// Mutual TLS (`transfer.tls_*`): pulls go over https, trusting only the archive's
    /// authority, and present this host's certificate.
    Certificate,
    /// Plain HTTP: the bearer token of `transfer.token_file`; `None`: this host cannot pull
    /// over HTTP.
    Token(Option<String>),
}

/// The real transfers: local copies and HTTP pulls.
pub struct Puller {
    agent: ureq::Agent,
    /// The remote shell for rsync pulls; `None` pulls over HTTP.
    rsync_rsh: Option<String>,
    auth: PullAuth,
    limiter: Option<RateLimiter>,
    peers: PeerSlots,
    metrics: std::sync::Arc<Metrics>,
}

/// The PEM items of `path`; an error naming the file and its key if it cannot be read.
fn pem_items(path: &Path, key: &str) -> std::io::Result<Vec<ureq::tls::PemItem<'static>>> {
    let pem = std::fs::read(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot read {} ({key}): {e}", path.display()),
        )
    })?;
    ureq::tls::parse_pem(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::other(format!("{} ({key}): {e}", path.display())))
}

fn certificates(path: &Path, key: &str) -> std::io::Result<Vec<ureq::tls::Certificate<'static>>> {
    let certs: Vec<_> = pem_items(path, key)?
        .into_iter()
        .filter_map(|item| match item {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} ({key}) holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The client half of mutual TLS: trust only the archive's authority, present this host's
/// certificate.
fn client_tls(files: TlsFiles<'_>) -> std::io::Result<ureq::tls::TlsConfig> {
    let roots = certificates(files.ca, "transfer.tls_ca")?;
    let chain = certificates(files.cert, "transfer.tls_cert")?;
    let key = pem_items(files.key, "transfer.tls_key")?
        .into_iter()
        .find_map(|item| match item {
            ureq::tls::PemItem::PrivateKey(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{} (transfer.tls_key) holds no private key",
                files.key.display()
            ))
        })?;
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)))
        .build())
}

impl Puller {
    /// A puller; with `tls`, pulls go over https, trust only the authority `tls.ca` and
    /// present `tls.cert`, and `token` is not used.
    pub fn new(
        rsync_rsh: Option<String>,
        tls: Option<TlsFiles<'_>>,
        token: Option<String>,
        max_rate: Option<u64>,
        pulls_per_peer: usize,
        metrics: std::sync::Arc<Metrics>,
    ) -> std::io::Result<Puller> {
        let (tls_config, auth) = match tls {
            Some(files) => (client_tls(files)?, PullAuth::Certificate),
            None => (
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::Rustls)
                    .build(),
                PullAuth::Token(token),
            ),
        };
        let agent = ureq::Agent::config_builder()
            .tls_config(tls_config)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A read that stalls this long means a dead peer, whatever the file's size.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Puller {
            agent,
            rsync_rsh,
            auth,
            limiter: max_rate.map(RateLimiter::new),
            peers: PeerSlots::new(pulls_per_peer),
            metrics,
        })
    }

    /// The URL scheme and, over plain HTTP, the `Authorization` header of a pull.
    fn credentials(&self) -> std::io::Result<(&'static str, Option<String>)> {
        match &self.auth {
            PullAuth::Certificate => Ok(("https", None)),
            PullAuth::Token(Some(token)) => Ok(("http", Some(format!("Bearer {token}")))),
            PullAuth::Token(None) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "no transfer token on this host (transfer.token_file)",
            )),
        }
    }

    /// The batched pull of `items` from `peer`, pushing one result per item onto `results`
    /// as it arrives; an error ends the stream for the items not yet in `results`.
    fn pull_batch(
        &self,
        peer: &Peer,
        items: &[BatchItem],
        cancel: &AtomicBool,
        results: &mut Vec<std::io::Result<Vec<u8>>>,
    ) -> std::io::Result<()> {
        use std::io::BufRead;
        let (scheme, bearer) = self.credentials()?;
        let _slot = self.peers.acquire(&peer.host, cancel)?;
        let ids: Vec<CopyId> = items.iter().map(|i| i.copy_id).collect();
        let url = format!(
            "{scheme}://{}{}?{}",
            peer.address,
            pullbatch::PATH,
            pullbatch::query(&ids)
        );
        let mut req = self.agent.get(&url);
        if let Some(bearer) = &bearer {
            req = req.header("Authorization", bearer);
        }
        let resp = req.call().map_err(std::io::Error::other)?;
        let host = &peer.host;
        if resp.status().as_u16() != 200 {
            return Err(refusal(host, resp));
        }
        let mut reader = std::io::BufReader::with_capacity(
            256 << 10,
            Counted {
                inner: resp.into_body().into_reader(),
                limiter: self.limiter.as_ref(),
                metrics: &self.metrics,
            },
        );
        let cut = |what: String| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what);
        let mut line = Vec::with_capacity(128);
        for item in items {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            line.clear();
            (&mut reader)
                .take(pullbatch::MAX_HEADER as u64)
                .read_until(b'\n', &mut line)?;
            if line.pop() != Some(b'\n') {
                return Err(cut(format!(
                    "the batch from {host} ended before copy #{}",
                    item.copy_id
                )));
            }
            let header = std::str::from_utf8(&line)
                .ok()
                .and_then(pullbatch::Header::parse)
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{host} sent a batch header we cannot read"),
                    )
                })?;
            if header.copy_id() != item.copy_id {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{host} sent copy #{} where #{} was due",
                        header.copy_id(),
                        item.copy_id
                    ),
                ));
            }
            let size = match header {
                pullbatch::Header::Refused { reason, .. } => {
                    results.push(Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} refused it: {reason}"),
                    )));
                    continue;
                }
                pullbatch::Header::File { size, .. } if size > pullbatch::MAX_FILE => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{host} sent {size} B for copy #{}", item.copy_id),
                    ));
                }
                pullbatch::Header::File { size, .. } => size,
            };
            // Small files: read whole, hashed together once the stream ends (into room
            // reserved, not zeroed first).
            let mut bytes = Vec::with_capacity(size as usize);
            let got = (&mut reader)
                .take(size)
                .read_to_end(&mut bytes)
                .map_err(|e| {
                    cut(format!(
                        "the batch from {host} ended inside copy #{}: {e}",
                        item.copy_id
                    ))
                })?;
            if got as u64 != size {
                return Err(cut(format!(
                    "the batch from {host} ended inside copy #{} ({got} of {size} B)",
                    item.copy_id
                )));
            }
            results.push(Ok(bytes));
        }
        Ok(())
    }

    /// Pulls a copy from another host's cairnd into `tmp`, resuming what `tmp` holds.
    fn pull(
        &self,
        (host, address, node, path, size): (&str, &str, &str, &str, u64),
        tmp: &Path,
        cancel: &AtomicBool,
    ) -> std::io::Result<Copied> {
        let (scheme, bearer) = self.credentials()?;
        let _slot = self.peers.acquire(host, cancel)?;
        let url = format!(
            "{scheme}://{address}/v1/copy/{}/{}",
            percent_encode(node),
            percent_encode(path)
        );
        // A whole-file deadline scaled to its size: a minute, plus the bytes at 1 MiB/s.
        let deadline = Instant::now() + Duration::from_secs(60 + size / (1 << 20));
        let mut tries = 0;
        loop {
            let have = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
            if have > size {
                std::fs::remove_file(tmp)?;
                continue;
            }
            let mut req = self.agent.get(&url);
            if let Some(bearer) = &bearer {
                req = req.header("Authorization", bearer);
            }
            if have > 0 {
                info!("Resuming pull of {path} from {host} at byte {have}.");
                req = req.header("Range", format!("bytes={have}-"));
            }
            let result = req.call().map_err(std::io::Error::other).and_then(|resp| {
                let status = resp.status().as_u16();
                match status {
                    200 | 206 => {}
                    416 if have == size => {}
                    _ => return Err(refusal(host, resp)),
                }
                if status == 200 && have > 0 {
                    // The server sent the whole file: start the temp file over.
                    std::fs::remove_file(tmp)?;
                }
                let mut reader = Counted {
                    inner: resp.into_body().into_reader(),
                    limiter: self.limiter.as_ref(),
                    metrics: &self.metrics,
                };
                copyfile::resume_from_reader(tmp, &mut reader, cancel, &mut |_| {})
            });
            match result {
                Ok(c) => return Ok(c),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e),
                Err(e) => {
                    tries += 1;
                    if tries >= 3 || Instant::now() > deadline {
                        return Err(e);
                    }
                    warn!("Pull of {path} from {host} broke off ({e}); retrying.");
                    std::thread::sleep(Duration::from_millis(500 * tries));
                }
            }
        }
    }
}

impl Transfer for Puller {
    fn method(&self, source: &Source) -> &'static str {
        match (&source.location, &self.rsync_rsh) {
            (Location::Local(_), _) => "local copy",
            (Location::Remote { .. }, None) => "http",
            (Location::Remote { .. }, Some(_)) => "rsync",
        }
    }

    fn fetch(&self, source: &Source, tmp: &Path, cancel: &AtomicBool) -> std::io::Result<Copied> {
        match &source.location {
            Location::Local(path) => {
                // A local copy never resumes: start from nothing.
                let _ = std::fs::remove_file(tmp);
                copyfile::copy_with_md5(path, tmp, cancel, &mut |_| {})
            }
            Location::Remote {
                host,
                address,
                node,
                path,
                size,
                rsync,
            } => match (&self.rsync_rsh, rsync) {
                (Some(rsh), Some(spec)) => rsync_pull(rsh, host, spec, *size, tmp, cancel),
                (Some(_), None) => Err(std::io::Error::other(format!(
                    "no rsync login for node {node:?} on {host}"
                ))),
                (None, _) => self.pull((host, address, node, path, *size), tmp, cancel),
            },
        }
    }

    fn batch_peer(&self, source: &Source) -> Option<Peer> {
        match (&source.location, &self.rsync_rsh) {
            (Location::Remote { host, address, .. }, None) => Some(Peer {
                host: host.clone(),
                address: address.clone(),
            }),
            _ => None,
        }
    }

    fn fetch_batch(
        &self,
        peer: &Peer,
        items: &[BatchItem],
        cancel: &AtomicBool,
    ) -> Vec<std::io::Result<Fetched>> {
        let mut results = Vec::with_capacity(items.len());
        if let Err(e) = self.pull_batch(peer, items, cancel, &mut results) {
            // What the stream did not deliver fails with the error that ended it.
            while results.len() < items.len() {
                results.push(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
        }
        // What arrived is hashed in one pass, many files at once.
        let arrived: Vec<&[u8]> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(Vec::as_slice))
            .collect();
        let mut md5s = cairn_catalog::md5::md5_hex_many(&arrived).into_iter();
        results
            .into_iter()
            .map(|r| {
                r.map(|bytes| Fetched {
                    bytes,
                    md5: md5s.next().expect("one md5 per file arrived"),
                })
            })
            .collect()
    }
}

/// Pulls `spec` (`[user@]address:/path`) into `tmp` with rsync over `rsh`, resuming a partial
/// `tmp`, then hashes the result: rsync's own checks do not replace the catalog's md5.
fn rsync_pull(
    rsh: &str,
    host: &str,
    spec: &str,
    size: u64,
    tmp: &Path,
    cancel: &AtomicBool,
) -> std::io::Result<Copied> {
    let mut child = std::process::Command::new("rsync")
        .args(["--partial", "--append-verify", "--inplace", "-e", rsh])
        .arg(spec)
        .arg(tmp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run rsync: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(60 + size / (1 << 20));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let stop = cancel.load(std::sync::atomic::Ordering::Relaxed);
        if stop || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if stop {
                std::io::ErrorKind::Interrupted.into()
            } else {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("rsync from {host} timed out"),
                )
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(std::io::Error::other(format!(
            "rsync from {host} failed ({status}): {}",
            err.trim()
        )));
    }
    let (bytes, md5) = copyfile::md5_of(tmp, cancel)?;
    Ok(Copied { bytes, md5 })
}

/// Counts received bytes and applies the host-wide rate limit.
struct Counted<'a, R> {
    inner: R,
    limiter: Option<&'a RateLimiter>,
    metrics: &'a Metrics,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(l) = self.limiter {
            l.take(n as u64);
        }
        Metrics::add(&self.metrics.bytes_received, n as u64);
        Ok(n)
    }
}

/// A token bucket shared by all pulls of this host (`transfer.max_rate`).
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(Instant, f64)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            rate: bytes_per_sec as f64,
            state: Mutex::new((Instant::now(), bytes_per_sec as f64)),
        }
    }

    /// Accounts for `n` bytes, sleeping as long as needed to stay under the rate.
    pub fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().expect("limiter lock");
            let now = Instant::now();
            // Refill, at most one second's worth of burst.
            s.1 = (s.1 + now.duration_since(s.0).as_secs_f64() * self.rate).min(self.rate);
            s.0 = now;
            s.1 -= n as f64;
            if s.1 < 0.0 { -s.1 / self.rate } else { 0.0 }
        };
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

/// At most `per_peer` pulls at once from one host (`transfer.pulls_per_peer`).
struct PeerSlots {
    per_peer: usize,
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

struct Slot<'a> {
    slots: &'a PeerSlots,
    host: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().expect("peer slots lock");
        if let Some(n) = busy.get_mut(&self.host) {
            *n = n.saturating_sub(1);
        }
        self.slots.freed.notify_all();
    }
}

impl PeerSlots {
    fn new(per_peer: usize) -> PeerSlots {
        PeerSlots {
            per_peer,
            busy: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self, host: &str, cancel: &AtomicBool) -> std::io::Result<Slot<'_>> {
        let mut busy = self.busy.lock().expect("peer slots lock");
        loop {
            let n = busy.entry(host.to_owned()).or_default();
            if *n < self.per_peer {
                *n += 1;
                return Ok(Slot {
                    slots: self,
                    host: host.to_owned(),
                });
            }
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            busy = self
                .freed
                .wait_timeout(busy, Duration::from_millis(200))
                .expect("peer slots lock")
                .0;
        }
    }
}

/// The error for an answer that is not the bytes asked for: our credentials refused (401),
/// or another status, with the start of what the source said.
fn refusal(host: &str, resp: ureq::http::Response<ureq::Body>) -> std::io::Error {
    let status = resp.status().as_u16();
    if status == 401 {
        return std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{host} refused our credentials (401)"),
        );
    }
    let mut body = String::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(300)
        .read_to_string(&mut body);
    std::io::Error::other(format!("{host} answered {status}: {}", body.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_holds_the_rate() {
        let l = RateLimiter::new(1 << 20);
        let start = Instant::now();
        for _ in 0..20 {
            l.take(128 << 10); // 2.5 MiB in all, 1 MiB of it free burst
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn peer_slots_cap_concurrent_pulls() {
        let slots = PeerSlots::new(2);
        let cancel = AtomicBool::new(false);
        let a = slots.acquire("h2", &cancel).unwrap();
        let _b = slots.acquire("h2", &cancel).unwrap();
        let _other = slots.acquire("h3", &cancel).unwrap();
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            slots.acquire("h2", &cancel).is_err(),
            "a third pull from h2 waits"
        );
        drop(a);
        cancel.store(false, std::sync::atomic::Ordering::Relaxed);
        slots.acquire("h2", &cancel).expect("a freed slot");
    }
}
