//! A latency-and-cut proxy: the link between two sites, on loopback.
//!
//! [`LinkProxy`] listens on a free port of 127.0.0.1 and forwards every connection to one
//! upstream address, holding each chunk of bytes for a fixed delay in each direction before
//! passing it on, so a round trip through it costs twice the delay plus what the upstream
//! takes. Bandwidth is not limited: a site link is slow to answer, not narrow.
//!
//! [`LinkProxy::cut`] severs the link as a router losing its route would: every forwarded
//! connection is shut down in both directions at once (its ends see a reset or end of file),
//! and connections made while cut are closed as soon as they are accepted.
//! [`LinkProxy::restore`] lets new connections through again; the ones cut stay closed, and
//! clients reconnect as they would after a real outage.
//!
//! Threads, not async: four per forwarded connection (a reader and a delayed writer each way),
//! which is cheap for the tens of connections a test makes, and keeps the delay exact (a
//! chunk is written when its time comes, never batched behind a later one).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP forwarder with a fixed delay each way that can be cut and restored.
pub struct LinkProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    /// One-way delay, in microseconds.
    delay_us: AtomicU64,
    cut: AtomicBool,
    stopping: AtomicBool,
    /// Both sockets of every open forwarded connection, by number, to sever them at a cut.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Connections forwarded since the start.
    forwarded: AtomicU64,
    /// Chunks of bytes forwarded towards the upstream: each is a flight of a client that then
    /// waits for an answer, so about one round trip each.
    flights: AtomicU64,
    /// Armed by [`LinkProxy::lose_reply_after`]: (first, then).
    lose: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl LinkProxy {
    /// Forwards connections made to [`LinkProxy::addr`] to `upstream`, each byte held `one_way`
    /// in each direction.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds a port");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            delay_us: AtomicU64::new(one_way.as_micros() as u64),
            cut: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            forwarded: AtomicU64::new(0),
            flights: AtomicU64::new(0),
            lose: Mutex::new(None),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, s))
            .expect("the proxy's thread starts");
        LinkProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The delay each way.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.shared.delay_us.load(Ordering::Relaxed))
    }

    /// Changes the delay each way, for bytes read from now on.
    pub fn set_delay(&self, one_way: Duration) {
        self.shared
            .delay_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
    }

    /// Severs every forwarded connection and refuses new ones until [`LinkProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.sever_all();
    }

    /// Lets connections through again after a [`LinkProxy::cut`].
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Loses one answer, as a link that fails at the worst moment: on the first connection
    /// that sends bytes containing `first` (say, a value only one transaction carries), the
    /// next bytes it sends containing `then` (say, `COMMIT`) reach the server, and the link is
    /// cut the moment the server's answer comes back, so the client never gets it. Until
    /// [`LinkProxy::restore`]; once.
    pub fn lose_reply_after(&self, first: &[u8], then: &[u8]) {
        *self.shared.lose.lock().expect("proxy lose") = Some((first.to_vec(), then.to_vec()));
    }

    /// Whether the answer armed by [`LinkProxy::lose_reply_after`] was lost.
    pub fn reply_lost(&self) -> bool {
        self.shared.lose.lock().expect("proxy lose").is_none() && self.is_cut()
    }

    /// Connections forwarded so far (including those since closed).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Chunks forwarded towards the upstream so far: about the round trips clients made (a
    /// client that sends and then waits for the answer sends one chunk per round trip).
    pub fn flights(&self) -> u64 {
        self.shared.flights.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn sever_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().expect("proxy connections"));
        for (a, b) in open.into_values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.sever_all();
        // Wake the acceptor with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let id = shared.forwarded.fetch_add(1, Ordering::Relaxed);
        if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
            shared
                .open
                .lock()
                .expect("proxy connections")
                .insert(id, (c3, s3));
        }
        let conn = Arc::new(Conn {
            id,
            shared: shared.clone(),
            marked: AtomicBool::new(false),
            lose_reply: AtomicBool::new(false),
        });
        pump(client, s2, conn.clone(), true);
        pump(server, c2, conn, false);
    }
}

/// One forwarded connection, forgotten (its sockets closed) when both directions have ended.
struct Conn {
    id: u64,
    shared: Arc<Shared>,
    /// This connection sent the first pattern of [`LinkProxy::lose_reply_after`].
    marked: AtomicBool,
    /// Its next answer is lost, and the link cut.
    lose_reply: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared
            .open
            .lock()
            .expect("proxy connections")
            .remove(&self.id);
    }
}

impl Conn {
    /// Looks at bytes this connection's client sends, for [`LinkProxy::lose_reply_after`].
    fn watch(&self, bytes: &[u8]) {
        let mut lose = self.shared.lose.lock().expect("proxy lose");
        let Some((first, then)) = &*lose else {
            return;
        };
        let has = |p: &[u8]| bytes.windows(p.len()).any(|w| w == p);
        if !self.marked.load(Ordering::SeqCst) {
            if has(first) {
                self.marked.store(true, Ordering::SeqCst);
            }
        } else if has(then) {
            self.lose_reply.store(true, Ordering::SeqCst);
            *lose = None;
        }
    }
}

/// Forwards bytes from `from` to `to`, each chunk the proxy's delay after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, conn: Arc<Conn>, upstream: bool) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_shared = conn.shared.clone();
    let reader_conn = conn.clone();
    let _ = std::thread::Builder::new()
        .name("proxy-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if upstream {
                            reader_shared.flights.fetch_add(1, Ordering::Relaxed);
                            reader_conn.watch(&buf[..n]);
                        }
                        let delay =
                            Duration::from_micros(reader_shared.delay_us.load(Ordering::Relaxed));
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            // Dropping `tx` tells the writer: nothing more after what is queued.
        });
    let _ = std::thread::Builder::new()
        .name("proxy-write".into())
        .spawn(move || {
            for (due, bytes) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if !upstream && conn.lose_reply.swap(false, Ordering::SeqCst) {
                    // The answer the client waits for is lost with the link.
                    conn.shared.cut.store(true, Ordering::SeqCst);
                    conn.shared.sever_all();
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                if conn.shared.cut.load(Ordering::SeqCst) || to.write_all(&bytes).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(s: &mut TcpStream) -> Duration {
        let t = Instant::now();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        t.elapsed()
    }

    #[test]
    fn a_round_trip_takes_twice_the_delay() {
        let p = LinkProxy::start(echo(), Duration::from_millis(20));
        let mut s = TcpStream::connect(p.addr()).unwrap();
        s.set_nodelay(true).unwrap();
        for _ in 0..3 {
            let rtt = round_trip(&mut s);
            assert!(
                rtt >= Duration::from_millis(40) && rtt < Duration::from_millis(90),
                "{rtt:?}"
            );
        }
    }

    #[test]
    fn a_cut_severs_connections_and_refuses_new_ones_until_restored() {
        let p = LinkProxy::start(echo(), Duration::from_millis(1));
        let mut s = TcpStream::connect(p.addr()).unwrap();
        round_trip(&mut s);
        p.cut();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"ping");
        let mut buf = [0u8; 4];
        assert!(
            s.read_exact(&mut buf).is_err(),
            "a cut connection carries nothing"
        );
        let mut again = TcpStream::connect(p.addr()).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = again.write_all(b"ping");
        assert!(again.read_exact(&mut buf).is_err(), "refused while cut");
        p.restore();
        let mut s = TcpStream::connect(p.addr()).unwrap();
        round_trip(&mut s);
        assert_eq!(p.forwarded(), 2);
    }

    #[test]
    fn large_transfers_keep_their_order() {
        let p = LinkProxy::start(echo(), Duration::from_millis(2));
        let mut s = TcpStream::connect(p.addr()).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let d2 = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == data);
    }
}
