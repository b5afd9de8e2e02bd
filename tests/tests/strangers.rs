//! A stranger cannot stall a host: real cairnd processes under a flood of half-sent requests,
//! with an open-file limit as low as an old system's. Throughout, `/healthz` answers, a pull
//! keeps moving and completes, and cairnd never runs out of descriptors; connections that
//! hold a half-sent request or sit idle are closed by the server, and a long pull is not.
//!
//! The flood comes from other loopback addresses (127.0.0.2 and up) than the hosts and the
//! probes (127.0.0.1), as a stranger's would from another machine.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use cairn_catalog::model::Has;
use cairn_tests::{Archive, TestHost, big_file, http_get, partial_bytes, wait_until, write_file};

const T: Duration = Duration::from_secs(60);

/// Adds `extra` lines to a host's `[transfer]` table. Before `start`.
fn transfer_config(h: &TestHost, extra: &str) {
    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("[transfer]\n", &format!("[transfer]\n{extra}\n"));
    std::fs::write(&h.config, text).unwrap();
}

/// A TCP connection to `to` from the loopback address `from` (e.g. `[127, 0, 0, 2]`).
fn connect_from(from: [u8; 4], to: &str) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let to: SocketAddrV4 = to.parse().expect("an IPv4 address");
    let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the addresses are valid sockaddr_in
    // structs that live across the calls; the descriptor is owned by the TcpStream at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = addr(from, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = addr(to.ip().octets(), to.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// `count` connections to `to`, spread over the source addresses 127.0.0.N for N in `from`,
/// each holding a request whose headers never end (and no token). Connections the server
/// closes at once stay in the list, closed.
fn flood(to: &str, count: usize, from: std::ops::RangeInclusive<u8>) -> Vec<TcpStream> {
    let sources: Vec<u8> = from.collect();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s =
            connect_from([127, 0, 0, sources[i % sources.len()]], to).expect("the flood connects");
        // The server may have closed it already: a refused connection.
        let _ = s.write_all(b"GET /v1/copy/n1/x HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        held.push(s);
    }
    held
}

/// `GET /healthz` on a fresh connection that must be answered within `timeout`: how long it
/// took, or what went wrong.
fn healthz(address: &str, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&address.parse().unwrap(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    let got = String::from_utf8_lossy(&got);
    if got.starts_with("HTTP/1.1 200") && got.ends_with("ok\n") {
        Ok(start.elapsed())
    } else {
        Err(format!("answered {got:?}"))
    }
}

/// How long the server takes to close `s` (end of stream or reset), reading nothing else;
/// `None` if it is still open after `within`.
fn closed_after(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// The value of the sample `name` (with its labels) in `/metrics` text.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

fn metrics(h: &TestHost, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let (status, _, body) = http_get(&h.address, "/metrics", &headers);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).unwrap()
}

/// Probes `/healthz` every 100 ms while `busy` says so, each with 5 s to answer; panics on the
/// first that is not answered. Returns the slowest answer.
fn probe_while(address: &str, mut busy: impl FnMut() -> bool) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    while busy() {
        match healthz(address, Duration::from_secs(5)) {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => panic!("/healthz not answered during the flood (probe {probes}): {e}"),
        }
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    slowest
}

/// The scenario: 1,100 connections each holding a half-sent request, against a cairnd
/// started with 512 open files (1,024 at most) while another host pulls from it.
#[test]
fn a_flood_of_half_sent_requests_neither_stalls_a_host_nor_starves_it_of_descriptors() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    // The flood must stay for the whole test, so its half-sent requests outlive it.
    transfer_config(&h1, "header_timeout = \"5m\"\nidle_timeout = \"5m\"");
    h1.limit_open_files(512, 1024);
    h2.limit_pulls("4MiB");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    big_file(&r1.join("2025/01/01/big.dat"), 40);
    h1.start();
    h2.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    wait_until(T, "the pull under way", || partial_bytes(&r2) > 4 << 20);

    // 1,100 half-sent requests, opened while /healthz is probed: 600 from one address, over
    // the cap per peer (64), then 500 from ten others (50 each), over the cap in all (512).
    let address = h1.address.clone();
    let flooding = std::thread::spawn(move || {
        let mut held = flood(&address, 600, 2..=2);
        held.extend(flood(&address, 500, 3..=12));
        held
    });
    let slowest = probe_while(&h1.address, || !flooding.is_finished());
    let held = flooding.join().expect("the flood opens");
    assert_eq!(held.len(), 1100);
    eprintln!("slowest /healthz while the flood opened: {slowest:?}");

    // Held: /healthz still answers, the pull still moves, and cairnd still does its own work
    // (an import opens node files) until the pull completes.
    let moved_from = partial_bytes(&r2);
    write_file(&r1, "2025/01/02/during.dat", "imported during the flood\n");
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    let slowest = probe_while(&h1.address, || {
        a.has("n2", "2025/01/01/big.dat") != Some(Has::Yes)
            || a.has("n1", "2025/01/02/during.dat") != Some(Has::Yes)
    });
    eprintln!("slowest /healthz while the flood was held: {slowest:?}");
    assert!(
        moved_from < 40 << 20,
        "the pull was still running when the flood was held ({moved_from} bytes)"
    );
    a.wait_idle(T);
    assert_eq!(a.has("n2", "2025/01/01/big.dat"), Some(Has::Yes));
    let m = metrics(&h1, None);
    drop(held);
    assert_eq!(
        sample(
            &m,
            "cairn_http_connections_refused_total{reason=\"per_peer\"}"
        ),
        600 - 64,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "cairn_http_connections_closed_total{reason=\"evicted\"}"
        ) >= 64 + 500 - 512,
        "{m}"
    );
    assert!(sample(&m, "cairn_http_connections") <= 512, "{m}");

    let (log1, log2) = (h1.log(), h2.log());
    for log in [&log1, &log2] {
        assert!(!log.contains("Too many open files"), "{log}");
    }
    assert!(!log1.contains("no longer available"), "{log1}");
    assert!(
        !log2.contains("broke off"),
        "the pull was never cut: {log2}"
    );
    assert!(
        log1.contains("Open-file limit raised from 512 to 1024."),
        "{log1}"
    );
    assert!(
        log1.contains("it has 64 open, the most one peer may"),
        "{log1}"
    );
}

/// With the connection caps set above what the open-file limit allows, the reserve of
/// descriptors is what keeps cairnd working.
#[test]
fn the_descriptor_reserve_holds_when_the_caps_are_above_the_open_file_limit() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    transfer_config(
        &h1,
        "header_timeout = \"5m\"\nidle_timeout = \"5m\"\nmax_connections = 5000\n\
         max_connections_per_peer = 5000",
    );
    h1.limit_open_files(1024, 1024);
    let r1 = h1.node("n1", &[]);
    h1.start();
    wait_until(T, "n1 initialised", || {
        cairn_node::NodeRoot::new(&r1).marker().exists()
    });
    let address = h1.address.clone();
    let flooding = std::thread::spawn(move || flood(&address, 1100, 2..=2));
    probe_while(&h1.address, || !flooding.is_finished());
    let held = flooding.join().expect("the flood opens");
    // cairnd still opens node files and its catalog.
    write_file(&r1, "2025/01/01/a.dat", "imported during the flood\n");
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    probe_while(&h1.address, || {
        a.has("n1", "2025/01/01/a.dat") != Some(Has::Yes)
    });
    let m = metrics(&h1, None);
    drop(held);
    assert!(
        sample(
            &m,
            "cairn_http_connections_closed_total{reason=\"evicted\"}"
        ) > 0,
        "{m}"
    );
    assert!(sample(&m, "cairn_http_connections") < 1024 - 256, "{m}");
    let log = h1.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("no longer available"), "{log}");
    assert!(
        log.contains("fewer than transfer.max_connections (5000)"),
        "{log}"
    );
    assert!(
        log.contains("as many as the file descriptors above transfer.fd_reserve allow"),
        "{log}"
    );
}

#[test]
fn half_sent_and_idle_connections_are_closed_but_a_long_pull_is_not() {
    let a = Archive::new();
    let mut h1 = a.host("h1");
    let mut h2 = a.host("h2");
    transfer_config(
        &h1,
        "header_timeout = \"2s\"\nidle_timeout = \"3s\"\nmetrics_token = true",
    );
    // 12 MiB at 2 MiB/s: a pull of 6 s, longer than either timeout.
    h2.limit_pulls("2MiB");
    let r1 = h1.node("n1", &[]);
    let r2 = h2.node("n2", &[]);
    big_file(&r1.join("2025/01/01/big.dat"), 12);
    h1.start();
    h2.start();
    h1.cairn(&["node", "scan", "n1", "--register-new"]);
    a.wait_idle(T);
    h2.cairn(&["node", "sync", "n1", "n2", "--force"]);
    let pull_began = Instant::now();

    let to = h1.address.as_str();
    let open =
        |what: &str| connect_from([127, 0, 0, 2], to).unwrap_or_else(|e| panic!("{what}: {e}"));
    // Headers begun and never finished: closed after header_timeout.
    let mut half = open("half-sent");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Headers dribbled a byte at a time, each within the idle timeout: still closed once the
    // headers have taken header_timeout.
    let mut dribble = open("dribbled");
    let dribbler = std::thread::spawn({
        let mut s = dribble.try_clone().unwrap();
        move || {
            for b in b"GET /healthz HTTP/1.1\r\nHost: a-very-slow-client\r\n" {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    // Nothing sent at all: closed after idle_timeout, not header_timeout.
    let mut silent = open("silent");
    // A request answered, then nothing: the keep-alive connection is closed after
    // idle_timeout.
    let mut kept = open("keep-alive");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );

    let took = closed_after(&mut half, Duration::from_secs(15)).expect("half-sent closed");
    assert!(
        took > Duration::from_millis(1500),
        "closed after {took:?}, before header_timeout"
    );
    let took = closed_after(&mut dribble, Duration::from_secs(15)).expect("dribbled closed");
    assert!(
        took < Duration::from_secs(5),
        "dribbled headers held on for {took:?}"
    );
    dribbler.join().unwrap();
    assert_eq!(
        closed_after(&mut silent, Duration::from_millis(200)),
        None,
        "a silent connection outlives header_timeout"
    );
    closed_after(&mut silent, Duration::from_secs(15)).expect("silent closed");
    closed_after(&mut kept, Duration::from_secs(15)).expect("idle keep-alive closed");

    // The pull, longer than both timeouts, went through in one piece.
    wait_until(T, "the pull to complete", || {
        a.has("n2", "2025/01/01/big.dat") == Some(Has::Yes)
    });
    assert!(
        pull_began.elapsed() > Duration::from_secs(4),
        "the pull took {:?}: not longer than the timeouts",
        pull_began.elapsed()
    );
    assert_eq!(partial_bytes(&r2), 0);
    let log2 = h2.log();
    assert!(!log2.contains("broke off"), "the pull was cut: {log2}");
    assert!(!log2.contains("attempt 1 failed"), "{log2}");

    // /metrics asks for the token (metrics_token), and counts what was closed.
    let (status, _, _) = http_get(&h1.address, "/metrics", &[]);
    assert_eq!(status, 401);
    let m = metrics(&h1, Some(&a.token()));
    assert!(
        sample(
            &m,
            "cairn_http_connections_closed_total{reason=\"header_timeout\"}"
        ) >= 2,
        "{m}"
    );
    assert!(
        sample(&m, "cairn_http_connections_closed_total{reason=\"idle\"}") >= 2,
        "{m}"
    );
    let log1 = h1.log();
    assert!(
        log1.contains("no complete request within 2s (transfer.header_timeout)"),
        "{log1}"
    );
}
