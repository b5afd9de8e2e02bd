//! `cairn-sites ONE_WAY_MS`: the two sites of the test harness ([`cairn_tests::site::Sites`])
//! for the benchmark scripts: a PostgreSQL primary, a link `ONE_WAY_MS` each way, and a hot
//! standby at the far end of it. Prints, one per line, `PRIMARY=` (the primary's server URL,
//! direct), `LINK=` (the same through the link) and `STANDBY=` (the standby's), then keeps
//! them until its standard input closes or it gets SIGTERM, and stops them.
//!
//! Used by `tests/bench/remote-site.sh`.

use std::io::Read;
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
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(sites);
}

extern "C" fn on_term(_: libc::c_int) {}
