//! `cairn-sites ONE_WAY_MS`: the two sites of the test harness ([`cairn_tests::site::Sites`])
//! for the benchmark scripts: a PostgreSQL primary, a link `ONE_WAY_MS` each way, and a hot
//! standby at the far end of it. Prints, one per line, `PRIMARY=` (the primary's server URL,
//! direct), `LINK=` (the same through the link) and `STANDBY=` (the standby's), then keeps
//! them until its standard input closes or it gets SIGTERM, and stops them. Meanwhile it reads
//! commands, one per line: `cut` severs the link (as [`cairn_tests::proxy::LinkProxy::cut`]),
//! `restore` lets connections through again; each is answered `OK cut` or `OK restore`.
//!
//! Used by `tests/bench/remote-site.sh` and `tests/bench/cut.sh`.

use std::io::{BufRead, Write};
use std::time::Duration;

use cairn_tests::site::Sites;

fn main() {
    let one_way: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: cairn-sites ONE_WAY_MS");
            std::process::exit(2);
        });
    let sites = Sites::new(Duration::from_millis(one_way));
    println!("PRIMARY={}", sites.primary.url("postgres"));
    println!("LINK={}", sites.primary_via_link("postgres"));
    println!("STANDBY={}", sites.standby.url("postgres"));
    println!("READY=1");
    // SIGTERM (or SIGINT) ends the read below as stdin closing does: a handler that does
    // nothing, installed without SA_RESTART, so the read is interrupted.
    // SAFETY: sigaction with a zeroed, then filled, struct and a handler that touches nothing.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_term as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim() {
            "cut" => {
                sites.link.cut();
                "OK cut".to_owned()
            }
            "restore" => {
                sites.link.restore();
                "OK restore".to_owned()
            }
            "" => continue,
            other => format!("unknown command {other:?}: cut or restore"),
        };
        println!("{answer}");
        let _ = std::io::stdout().flush();
    }
    drop(sites);
}

extern "C" fn on_term(_: libc::c_int) {}
