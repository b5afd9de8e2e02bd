//! Who may hold a connection to cairnd's HTTP server, and for how long, so that no client,
//! with or without credentials, can stall a host.
//!
//! Every accepted connection is *admitted* first ([`Connections::admit`]):
//! - at most `max_connections_per_peer` from one peer (an IPv4 address, or an IPv6 /64, which
//!   one client usually holds whole); more are refused;
//! - at most `max_connections` in all, and never so many that fewer than `fd_reserve`
//!   descriptors would be left under the open-file limit for cairnd's own work (counted from
//!   the descriptors it held when the server started, and checked against the number each new
//!   socket gets: Linux hands out the lowest free one). Past either, the newcomer replaces
//!   the connection that has waited longest without a request (a half-sent request or an idle
//!   keep-alive); when every connection is serving a request, the newcomer is refused. A
//!   stranger can fill the table with half-sent requests, but cannot keep a host from
//!   answering the next client, from finishing a transfer, or from opening its own files.
//!
//! An admitted connection is then watched ([`Admitted::watch`]) through its [`Activity`],
//! updated by the reads and writes of its socket ([`Tracked`]) and by the requests it carries
//! ([`Requests::begin`]):
//! - a request whose first byte came (or, over TLS, whose handshake began) more than
//!   `header_timeout` ago and whose headers are not complete: closed;
//! - no request in progress for `idle_timeout`: closed;
//! - a request in progress whose peer has taken none of the response for `idle_timeout`:
//!   closed. A response that moves, however slowly and however long, is never cut, and neither
//!   is one that waits on this host (the catalog, a disk).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tracing::warn;

/// The limits of [`Connections`], from `[transfer]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// `transfer.header_timeout`.
    pub header_timeout: Duration,
    /// `transfer.idle_timeout`.
    pub idle_timeout: Duration,
    /// `transfer.max_connections`.
    pub max_connections: usize,
    /// `transfer.max_connections_per_peer`.
    pub max_per_peer: usize,
    /// Descriptors the connections may hold together: the open-file limit less
    /// `transfer.fd_reserve` and what cairnd held when the server started. `None`: not
    /// checked.
    pub fd_room: Option<usize>,
    /// The highest descriptor number a new connection may have: the open-file limit less
    /// `transfer.fd_reserve`. Linux hands out the lowest free number, so a higher one means
    /// cairnd's other work has eaten into the reserve. `None`: not checked.
    pub max_fd: Option<u64>,
}

/// A peer holding fewer connections than this is not the one filling the table.
const LIGHT_PEER: usize = 8;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its peer holds `max_connections_per_peer` already.
    PerPeer,
    /// The table is full and every connection in it is serving a request.
    Full,
    /// Its descriptor is inside the reserve and every connection is serving a request.
    Descriptors,
}

/// Why an admitted connection was closed by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    HeaderTimeout,
    Idle,
    /// The peer took none of a response for `idle_timeout`.
    Stalled,
    /// Replaced by a newcomer while the table was full.
    Evicted,
}

/// Which peers count as one: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerKey(IpAddr);

impl PeerKey {
    fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(_) => PeerKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => PeerKey(IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())),
            },
        }
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// The connection table and its counters.
pub struct Connections {
    limits: ConnLimits,
    epoch: Instant,
    next_id: AtomicU64,
    table: Mutex<Table>,
    counts: Counts,
    logs: Logs,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    per_peer: HashMap<PeerKey, usize>,
    /// Connections told to close that have not closed yet.
    doomed: usize,
}

struct Entry {
    peer: PeerKey,
    activity: Arc<Activity>,
    doomed: bool,
}

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    refused_per_peer: AtomicU64,
    refused_full: AtomicU64,
    refused_descriptors: AtomicU64,
    closed_header_timeout: AtomicU64,
    closed_idle: AtomicU64,
    closed_stalled: AtomicU64,
    closed_evicted: AtomicU64,
}

/// One log line per kind of trouble per interval, however many connections it happens to.
#[derive(Default)]
struct Logs {
    per_peer: Throttle,
    full: Throttle,
    evicted: Throttle,
    header_timeout: Throttle,
    stalled: Throttle,
}

/// At most one log line per [`Throttle::EVERY`], the first at once, later ones counting what
/// they stand for.
#[derive(Default)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    /// Calls `log` with the number of events not logged since the last line, or counts this
    /// one as not logged.
    pub fn log(&self, log: impl FnOnce(u64)) {
        let mut last = self.last.lock().expect("throttle lock");
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        log(self.skipped.swap(0, Ordering::Relaxed));
    }
}

/// " (and N more like it)" for a throttled line, or nothing.
pub fn more(skipped: u64) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(" (and {skipped} more since the last such line)")
    }
}

impl Connections {
    pub fn new(limits: ConnLimits) -> Connections {
        Connections {
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
            counts: Counts::default(),
            logs: Logs::default(),
        }
    }

    /// Admits a connection from `peer` on descriptor `fd`, making room if the table is full
    /// (see the module note), or says why it may not stay. Refusals are counted and logged.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, fd: u64) -> Result<Admitted, Refusal> {
        let key = PeerKey::of(peer);
        let limits = &self.limits;
        let mut table = self.table.lock().expect("connection table lock");
        let from_peer = table.per_peer.get(&key).copied().unwrap_or(0);
        if from_peer >= limits.max_per_peer {
            drop(table);
            Self::count(&self.counts.refused_per_peer);
            self.logs.per_peer.log(|skipped| {
                warn!(
                    "Refused a connection from {key}: it has {from_peer} open, the most one \
                     peer may (transfer.max_connections_per_peer){}.",
                    more(skipped)
                )
            });
            return Err(Refusal::PerPeer);
        }
        let live = table.conns.len() - table.doomed;
        let mut evicted = None;
        // Connections on their way out still hold their descriptors.
        let short_of_fds = limits.fd_room.is_some_and(|room| table.conns.len() >= room)
            || limits.max_fd.is_some_and(|max| fd > max);
        if live >= limits.max_connections || short_of_fds {
            let why = if short_of_fds {
                Refusal::Descriptors
            } else {
                Refusal::Full
            };
            let open = table.conns.len();
            // A peer with few connections is let in even while many evictions are under way:
            // a flood from one address must not keep another client out.
            let light = from_peer < LIGHT_PEER;
            match table.evict_one(light) {
                Some(victim) => evicted = Some((victim, why, open)),
                None => {
                    drop(table);
                    Self::count(match why {
                        Refusal::Descriptors => &self.counts.refused_descriptors,
                        _ => &self.counts.refused_full,
                    });
                    self.logs.full.log(|skipped| {
                        warn!(
                            "Refused a connection from {key}: {live} connections open, none \
                             free to make room ({}){}.",
                            match why {
                                Refusal::Descriptors => {
                                    "no file descriptors left above transfer.fd_reserve"
                                }
                                _ => "transfer.max_connections",
                            },
                            more(skipped)
                        )
                    });
                    return Err(why);
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(self.epoch));
        table.conns.insert(
            id,
            Entry {
                peer: key,
                activity: activity.clone(),
                doomed: false,
            },
        );
        *table.per_peer.entry(key).or_default() += 1;
        drop(table);
        self.counts.open.fetch_add(1, Ordering::Relaxed);
        if let Some((victim, why, open)) = evicted {
            Self::count(&self.counts.closed_evicted);
            self.logs.evicted.log(|skipped| {
                warn!(
                    "{}: closed the connection from {victim} that had waited longest without \
                     a request, for a new one from {key}{}.",
                    match why {
                        Refusal::Descriptors => format!(
                            "{open} HTTP connections open, as many as the file descriptors \
                             above transfer.fd_reserve allow"
                        ),
                        _ => format!("{live} HTTP connections open (transfer.max_connections)"),
                    },
                    more(skipped)
                )
            });
        }
        Ok(Admitted {
            conns: self.clone(),
            id,
            activity,
        })
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self, why: Closed) {
        let counter = match why {
            Closed::HeaderTimeout => &self.counts.closed_header_timeout,
            Closed::Idle => &self.counts.closed_idle,
            Closed::Stalled => &self.counts.closed_stalled,
            // Counted when the victim was chosen.
            Closed::Evicted => return,
        };
        Self::count(counter);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// The connection gauges and counters, as Prometheus text.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP cairn_http_connections HTTP connections open.\n\
             # TYPE cairn_http_connections gauge\n\
             cairn_http_connections {}\n\
             # HELP cairn_http_connections_refused_total HTTP connections refused at once, by \
             reason.\n\
             # TYPE cairn_http_connections_refused_total counter\n\
             cairn_http_connections_refused_total{{reason=\"per_peer\"}} {}\n\
             cairn_http_connections_refused_total{{reason=\"full\"}} {}\n\
             cairn_http_connections_refused_total{{reason=\"descriptors\"}} {}\n\
             # HELP cairn_http_connections_closed_total HTTP connections closed by cairnd, by \
             reason.\n\
             # TYPE cairn_http_connections_closed_total counter\n\
             cairn_http_connections_closed_total{{reason=\"header_timeout\"}} {}\n\
             cairn_http_connections_closed_total{{reason=\"idle\"}} {}\n\
             cairn_http_connections_closed_total{{reason=\"stalled\"}} {}\n\
             cairn_http_connections_closed_total{{reason=\"evicted\"}} {}\n",
            self.open(),
            g(&c.refused_per_peer),
            g(&c.refused_full),
            g(&c.refused_descriptors),
            g(&c.closed_header_timeout),
            g(&c.closed_idle),
            g(&c.closed_stalled),
            g(&c.closed_evicted),
        )
    }
}

impl Table {
    /// Tells a connection to close to make room: of the peer that holds the most, the one
    /// that has waited longest without a request; its peer. `light`: the newcomer's peer holds
    /// few connections, and gets room even while many evictions are under way.
    fn evict_one(&mut self, light: bool) -> Option<PeerKey> {
        // Enough evictions under way: their descriptors are not free yet, so making more room
        // now would only let the newcomers eat the reserve.
        if self.doomed >= 64 && !(light && self.doomed < 64 + 2 * LIGHT_PEER) {
            return None;
        }
        let heaviest = self
            .per_peer
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| *k);
        let pick = |only: Option<PeerKey>, conns: &mut HashMap<u64, Entry>| {
            conns
                .iter_mut()
                .filter(|(_, e)| !e.doomed && only.is_none_or(|k| e.peer == k))
                .filter_map(|(id, e)| e.activity.waiting_since().map(|t| ((t, *id), *id)))
                .min_by_key(|(key, _)| *key)
                .map(|(_, id)| id)
        };
        let id = pick(heaviest, &mut self.conns).or_else(|| pick(None, &mut self.conns))?;
        let victim = self.conns.get_mut(&id).expect("picked from the table");
        victim.doomed = true;
        victim.activity.evicted.store(true, Ordering::Relaxed);
        victim.activity.wake.notify_one();
        self.doomed += 1;
        Some(victim.peer)
    }
}

/// A connection in the table; leaves it when dropped.
pub struct Admitted {
    conns: Arc<Connections>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self.conns.table.lock().expect("connection table lock");
        if let Some(e) = table.conns.remove(&self.id) {
            if e.doomed {
                table.doomed -= 1;
            }
            if let Some(n) = table.per_peer.get_mut(&e.peer) {
                *n -= 1;
                if *n == 0 {
                    table.per_peer.remove(&e.peer);
                }
            }
        }
        self.conns.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admitted {
    /// The connection's socket, its reads and writes recorded.
    pub fn track<IO>(&self, io: IO) -> Tracked<IO> {
        Tracked {
            inner: io,
            activity: self.activity.clone(),
        }
    }

    /// The handle that marks the connection's requests (see [`Requests::begin`]).
    pub fn requests(&self) -> Requests {
        Requests(self.activity.clone())
    }

    /// Completes when the connection must be closed, saying why (counted and, for the
    /// suspicious reasons, logged). `peer` is for the log.
    pub async fn watch(&self, peer: std::net::SocketAddr) -> Closed {
        let limits = self.conns.limits;
        let why = loop {
            if self.activity.evicted.load(Ordering::Relaxed) {
                break Closed::Evicted;
            }
            match self.activity.verdict(&limits) {
                Err(why) => break why,
                Ok(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.activity.wake.notified() => {}
                    }
                }
            }
        };
        self.conns.closed(why);
        let logs = &self.conns.logs;
        match why {
            Closed::HeaderTimeout => logs.header_timeout.log(|skipped| {
                warn!(
                    "Closed the connection from {peer}: no complete request within {:?} \
                     (transfer.header_timeout){}.",
                    limits.header_timeout,
                    more(skipped)
                )
            }),
            Closed::Stalled => logs.stalled.log(|skipped| {
                warn!(
                    "Closed the connection from {peer}: it took nothing of its response for \
                     {:?} (transfer.idle_timeout){}.",
                    limits.idle_timeout,
                    more(skipped)
                )
            }),
            Closed::Idle | Closed::Evicted => {
                tracing::debug!("Closed the connection from {peer}: {why:?}.")
            }
        }
        why
    }
}

/// Marks the requests of one connection.
#[derive(Clone)]
pub struct Requests(Arc<Activity>);

impl Requests {
    /// A request begins: its headers are complete. The connection is busy until the guard
    /// (kept with the response body) is dropped.
    pub fn begin(&self) -> RequestGuard {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        self.0.head_since.store(0, Ordering::Relaxed);
        RequestGuard {
            activity: self.0.clone(),
        }
    }
}

/// A request in progress on a connection (see [`Requests::begin`]).
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        if a.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.idle_since.store(a.now(), Ordering::Relaxed);
            a.blocked_since.store(0, Ordering::Relaxed);
        }
    }
}

/// What a connection is doing, in milliseconds since the table's epoch (plus one, so that 0
/// means "not set"). Atomics, because every read and write of the socket updates it.
pub struct Activity {
    epoch: Instant,
    /// Requests whose headers are complete and whose response is not yet all sent.
    busy: AtomicU32,
    /// When the connection last became free of requests (or opened).
    idle_since: AtomicU64,
    /// The first byte of a request whose headers are not complete yet; 0: none.
    head_since: AtomicU64,
    /// Since when a write has been waiting for the peer to take bytes; 0: not waiting.
    blocked_since: AtomicU64,
    evicted: AtomicBool,
    /// Wakes the watcher: evicted, or a request has begun to arrive (a nearer deadline).
    wake: Notify,
}

impl Activity {
    fn new(epoch: Instant) -> Activity {
        let a = Activity {
            epoch,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        };
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// When the connection began to wait without a request in progress; `None` while busy.
    fn waiting_since(&self) -> Option<u64> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(match self.head_since.load(Ordering::Relaxed) {
            0 => self.idle_since.load(Ordering::Relaxed),
            t => t,
        })
    }

    /// `Ok(time until the next look)`, or why to close the connection now.
    fn verdict(&self, limits: &ConnLimits) -> Result<Duration, Closed> {
        let now = self.now();
        let left = |since: u64, limit: Duration, why: Closed| {
            let passed = Duration::from_millis(now.saturating_sub(since));
            limit
                .checked_sub(passed)
                .filter(|d| !d.is_zero())
                .ok_or(why)
        };
        if self.busy.load(Ordering::Relaxed) > 0 {
            return match self.blocked_since.load(Ordering::Relaxed) {
                0 => Ok(limits.idle_timeout),
                since => left(since, limits.idle_timeout, Closed::Stalled),
            };
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => left(
                self.idle_since.load(Ordering::Relaxed),
                limits.idle_timeout,
                Closed::Idle,
            ),
            since => left(since, limits.header_timeout, Closed::HeaderTimeout),
        }
    }

    fn on_read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0
            && self
                .head_since
                .compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn on_write(&self, progress: bool) {
        if progress {
            self.blocked_since.store(0, Ordering::Relaxed);
        } else {
            let _ = self.blocked_since.compare_exchange(
                0,
                self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// A connection's socket whose reads and writes update its [`Activity`].
pub struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.record(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO> Tracked<IO> {
    fn record(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) => self.activity.on_write(*n > 0),
            Poll::Pending => self.activity.on_write(false),
            Poll::Ready(Err(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_peer: usize) -> ConnLimits {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections,
            max_per_peer,
            fd_room: Some(50),
            max_fd: Some(1000),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peers_are_addresses_and_ipv6_slash_64s() {
        assert_eq!(PeerKey::of(ip("192.0.2.7")), PeerKey(ip("192.0.2.7")));
        assert_eq!(
            PeerKey::of(ip("::ffff:192.0.2.7")),
            PeerKey(ip("192.0.2.7"))
        );
        assert_eq!(
            PeerKey::of(ip("2001:db8:1:2:aaaa::1")),
            PeerKey::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            PeerKey::of(ip("2001:db8:1:2::1")),
            PeerKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            PeerKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn a_peer_past_its_cap_is_refused_and_others_are_not() {
        let conns = Arc::new(Connections::new(limits(100, 2)));
        let a = conns.admit(ip("10.0.0.1"), 10).unwrap();
        let _b = conns.admit(ip("10.0.0.1"), 11).unwrap();
        assert_eq!(
            conns.admit(ip("10.0.0.1"), 12).err(),
            Some(Refusal::PerPeer)
        );
        let _c = conns.admit(ip("10.0.0.2"), 12).unwrap();
        drop(a);
        let _d = conns
            .admit(ip("10.0.0.1"), 13)
            .expect("room again once one closed");
        assert_eq!(conns.open(), 3);
    }

    #[test]
    fn a_full_table_makes_room_by_closing_the_longest_waiting_connection() {
        let conns = Arc::new(Connections::new(limits(2, 10)));
        let oldest = conns.admit(ip("10.0.0.1"), 10).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let busy_older = conns.admit(ip("10.0.0.2"), 11).unwrap();
        let _req = busy_older.requests().begin();
        let newcomer = conns.admit(ip("10.0.0.3"), 12).unwrap();
        assert!(oldest.activity.evicted.load(Ordering::Relaxed));
        assert!(!busy_older.activity.evicted.load(Ordering::Relaxed));
        // Full again (the evicted one no longer counts): the first newcomer, now the longest
        // waiting without a request, makes room in its turn.
        let _again = conns.admit(ip("10.0.0.4"), 13).unwrap();
        assert!(newcomer.activity.evicted.load(Ordering::Relaxed));
        assert_eq!(conns.counts.closed_evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_flooding_peer_gives_up_its_connections_and_cannot_keep_another_out() {
        let conns = Arc::new(Connections::new(limits(100, 1000)));
        let mut held = Vec::new();
        let mut fd = 10;
        // A quiet client first, then a flood from one address that fills the table and
        // keeps many evictions under way.
        let quiet = conns.admit(ip("10.0.0.9"), fd).unwrap();
        for _ in 0..200 {
            fd += 1;
            if let Ok(a) = conns.admit(ip("10.0.0.1"), fd) {
                held.push(a);
            }
        }
        assert!(
            !quiet.activity.evicted.load(Ordering::Relaxed),
            "the flood makes room from its own connections"
        );
        assert!(
            conns.admit(ip("10.0.0.1"), fd + 1).is_err(),
            "more evictions under way than allowed: the flooding peer is refused"
        );
        let other = conns
            .admit(ip("10.0.0.2"), fd + 2)
            .expect("another client gets in all the same");
        assert!(!other.activity.evicted.load(Ordering::Relaxed));
    }

    #[test]
    fn a_table_of_busy_connections_refuses_newcomers() {
        let conns = Arc::new(Connections::new(limits(1, 10)));
        let a = conns.admit(ip("10.0.0.1"), 10).unwrap();
        let _req = a.requests().begin();
        assert_eq!(conns.admit(ip("10.0.0.2"), 11).err(), Some(Refusal::Full));
    }

    #[test]
    fn connections_as_many_as_the_descriptors_above_the_reserve_make_a_full_table() {
        let conns = Arc::new(Connections::new(limits(100, 100)));
        let held: Vec<_> = (0..50)
            .map(|i| conns.admit(ip("10.0.0.1"), 10 + i).unwrap())
            .collect();
        let _requests: Vec<_> = held.iter().map(|a| a.requests().begin()).collect();
        assert_eq!(
            conns.admit(ip("10.0.0.2"), 60).err(),
            Some(Refusal::Descriptors)
        );
    }

    #[test]
    fn a_descriptor_inside_the_reserve_counts_as_a_full_table() {
        let conns = Arc::new(Connections::new(limits(100, 100)));
        let a = conns.admit(ip("10.0.0.1"), 999).unwrap();
        let _req = a.requests().begin();
        assert_eq!(
            conns.admit(ip("10.0.0.2"), 1001).err(),
            Some(Refusal::Descriptors)
        );
        let idle = conns.admit(ip("10.0.0.3"), 1000).unwrap();
        let _newcomer = conns.admit(ip("10.0.0.2"), 1001).unwrap();
        assert!(idle.activity.evicted.load(Ordering::Relaxed));
    }

    #[test]
    fn verdicts_follow_the_connection_through_a_request() {
        let l = ConnLimits {
            header_timeout: Duration::from_millis(30),
            idle_timeout: Duration::from_millis(60),
            ..limits(10, 10)
        };
        let a = Arc::new(Activity::new(Instant::now()));
        assert!(a.verdict(&l).unwrap() > Duration::from_millis(30), "idle");
        a.on_read();
        assert!(
            a.verdict(&l).unwrap() <= Duration::from_millis(30),
            "a head began"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(a.verdict(&l), Err(Closed::HeaderTimeout));
        // Headers complete: busy, and no time limit while the response moves or waits on us.
        a.busy.fetch_add(1, Ordering::Relaxed);
        a.head_since.store(0, Ordering::Relaxed);
        let request = RequestGuard {
            activity: a.clone(),
        };
        std::thread::sleep(Duration::from_millis(70));
        assert!(a.verdict(&l).is_ok());
        a.on_write(false);
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(a.verdict(&l), Err(Closed::Stalled), "the peer took nothing");
        a.on_write(true);
        assert!(a.verdict(&l).is_ok());
        // Done: idle from now on.
        drop(request);
        assert!(a.verdict(&l).is_ok());
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(a.verdict(&l), Err(Closed::Idle));
    }
}
