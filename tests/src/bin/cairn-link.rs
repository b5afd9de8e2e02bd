//! `cairn-link UPSTREAM ONE_WAY_MS`: the test harness's latency proxy
//! ([`cairn_tests::proxy::LinkProxy`]) for the benchmark scripts: forwards connections made to
//! the port it prints (`PORT=…`) to `UPSTREAM` (`host:port`), each byte held `ONE_WAY_MS`
//! each way, until its standard input closes.
//!
//! Used by `tests/bench/hosts.sh` for pulls between hosts 10 ms apart.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_tests::proxy::LinkProxy;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(upstream), Some(one_way)) = (
        args.next().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.next().and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: cairn-link UPSTREAM(host:port) ONE_WAY_MS");
        std::process::exit(2);
    };
    let link = LinkProxy::start(upstream, Duration::from_millis(one_way));
    println!("PORT={}", link.port());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(link);
}
