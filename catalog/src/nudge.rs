//! Waking the local cairnd at once after a request is written, instead of at its next loop.
//!
//! cairnd listens on a unix socket (`daemon.socket`); a client connects and writes one line.
//! Nudging is best effort: no daemon on this machine, or one that is busy, is not an error —
//! the request is in the catalog and will be found at the next loop anyway.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The line a client sends to wake cairnd.
pub const WAKE: &str = "wake";

/// Tells the cairnd listening on `socket` to look for work now. Returns whether one heard it.
pub fn nudge(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    s.write_all(format!("{WAKE}\n").as_bytes()).is_ok()
}
