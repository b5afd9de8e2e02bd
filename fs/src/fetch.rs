//! Reads of files with no copy on this host: cairnd fetches them into the cache, and reads are
//! answered from the growing file as soon as their bytes are there.
//!
//! The protocol on cairnd's unix socket (`daemon.socket`) is one request line,
//! `fetch FILE_ID`, answered by `ready`, or `part` then `done` or `error` lines
//! ([`cairn_node::socket`]).
//!
//! One [`Fetch`] per file id is shared by every open of that file; a thread reads the answers
//! and wakes readers waiting for bytes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_catalog::model::FileId;
use cairn_node::copyfile;
use cairn_node::socket::{Reply, Request};
use tracing::{info, warn};

/// How long a read waits for bytes that do not arrive before it fails with EIO.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);
/// How long an open waits for each of cairnd's answer lines.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How often the wait for cairnd's answer looks whether its caller was interrupted.
const ANSWER_TICK: Duration = Duration::from_millis(100);

/// Why a fetch gave no bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    Failed(String),
    /// The caller was interrupted (a signal) while it waited.
    Interrupted,
}

impl FetchError {
    /// The mount's error for a read or open of `what` that got no bytes; a failure is logged.
    pub fn into_fs(self, what: &str) -> crate::error::FsError {
        use crate::error::FsError;
        match self {
            FetchError::Interrupted => FsError::Interrupted,
            FetchError::Failed(why) => {
                warn!("Cannot read {what}: {why}");
                FsError::Unavailable(format!("cannot read {what}: {why}"))
            }
        }
    }
}

impl From<String> for FetchError {
    fn from(why: String) -> FetchError {
        FetchError::Failed(why)
    }
}

impl From<&str> for FetchError {
    fn from(why: &str) -> FetchError {
        FetchError::Failed(why.to_owned())
    }
}

/// Where a fetch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Bytes are arriving in the part file.
    Running,
    /// The whole file arrived and matched its md5.
    Done,
    /// The fetch failed, or the bytes were wrong: reads fail from now on.
    Failed(String),
}

/// One file being fetched by cairnd.
#[derive(Debug)]
pub struct Fetch {
    pub file_id: FileId,
    pub size: u64,
    /// The file the bytes arrive in (held open, so a rename at the end does not matter).
    pub file: std::fs::File,
    state: Mutex<State>,
    changed: Condvar,
}

impl Fetch {
    /// Asks cairnd at `socket` for file `file_id` (of `size` bytes). Returns the complete cached
    /// file at once when it is there, or a fetch whose bytes arrive over time. Waiting for
    /// cairnd's answer ends when `stop` says so.
    pub fn start(
        socket: &Path,
        file_id: FileId,
        size: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Started, FetchError> {
        let mut stream = UnixStream::connect(socket).map_err(|e| {
            format!(
                "cannot reach cairnd at {} to fetch it: {e} (is cairnd running on this host?)",
                socket.display()
            )
        })?;
        stream
            .set_read_timeout(Some(ANSWER_TICK))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("{}\n", Request::Fetch(file_id)).as_bytes())
            .map_err(|e| format!("cannot ask cairnd for it: {e}"))?;
        let mut lines = BufReader::new(stream);
        let line = next_line(&mut lines, stop, Instant::now() + ANSWER_WAIT)?;
        match line.parse::<Reply>() {
            Ok(Reply::Ready(path)) => Ok(Started::Ready(path)),
            Ok(Reply::Part(rest)) => {
                let file = match std::fs::File::open(&rest) {
                    Ok(f) => f,
                    // A small file can arrive, pass its check and take its name before this
                    // open: cairnd's next line says where it is now (or why it failed).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let end = next_line(&mut lines, stop, Instant::now() + ANSWER_WAIT)?;
                        return match end.parse::<Reply>() {
                            Ok(Reply::Done(path)) => Ok(Started::Ready(path)),
                            Ok(Reply::Error(why)) => Err(why.into()),
                            _ => Err(format!(
                                "cannot open the part file {}: {e} (and cairnd then answered \
                                 {end:?})",
                                rest.display()
                            )
                            .into()),
                        };
                    }
                    Err(e) => {
                        return Err(
                            format!("cannot open the part file {}: {e}", rest.display()).into()
                        );
                    }
                };
                let fetch = Arc::new(Fetch {
                    file_id,
                    size,
                    file,
                    state: Mutex::new(State::Running),
                    changed: Condvar::new(),
                });
                let watcher = fetch.clone();
                let _ = lines.get_ref().set_read_timeout(None);
                std::thread::Builder::new()
                    .name(format!("fetch-{file_id}"))
                    .spawn(move || watcher.follow(lines))
                    .map_err(|e| e.to_string())?;
                Ok(Started::Streaming(fetch))
            }
            Ok(Reply::Error(why)) => Err(why.into()),
            _ if line.is_empty() => Err("cairnd closed the connection without an answer".into()),
            _ => Err(format!("cairnd answered {line:?}").into()),
        }
    }

    /// Reads cairnd's answers until the fetch ends; wakes readers on every change.
    fn follow(&self, mut lines: BufReader<UnixStream>) {
        let mut line = String::new();
        let end = loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break State::Failed("cairnd stopped during the fetch".into()),
                Ok(_) => {}
                Err(e) => break State::Failed(format!("lost cairnd during the fetch: {e}")),
            }
            match line.trim_end().parse::<Reply>() {
                Ok(Reply::Done(_)) => break State::Done,
                Ok(Reply::Error(why)) => break State::Failed(why),
                _ => continue,
            }
        };
        match &end {
            State::Done => info!(
                "Fetched file #{} ({} bytes) into the cache.",
                self.file_id, self.size
            ),
            State::Failed(why) => warn!("Fetching file #{} failed: {why}", self.file_id),
            State::Running => {}
        }
        *self.state.lock().expect("fetch state") = end;
        self.changed.notify_all();
    }

    pub fn state(&self) -> State {
        self.state.lock().expect("fetch state").clone()
    }

    /// Reads into `buf` the bytes at `offset` (as many as it holds, fewer at the end of the
    /// file) and returns how many, waiting until they have arrived (or the file is complete),
    /// or until `stop` says so. Fails once the fetch failed, even for bytes
    /// already there: a file that did not match its md5 must not be read at all.
    pub fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<usize, FetchError> {
        let want_end = (offset + buf.len() as u64).min(self.size);
        let mut last_have = 0;
        let mut stalled_since = Instant::now();
        loop {
            let state = self.state();
            if let State::Failed(why) = &state {
                return Err(FetchError::Failed(why.clone()));
            }
            let have = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            // The read that reaches the end of the file waits for the md5 check, so a program
            // that reads it all gets EIO for wrong bytes instead of a clean EOF.
            let ready = if want_end == self.size {
                state == State::Done
            } else {
                have >= want_end
            };
            if ready {
                let n = want_end.saturating_sub(offset) as usize;
                return copyfile::read_full_at(&self.file, &mut buf[..n], offset)
                    .map_err(|e| FetchError::Failed(format!("cannot read the cached bytes: {e}")));
            }
            if have != last_have {
                last_have = have;
                stalled_since = Instant::now();
            } else if stalled_since.elapsed() > STALL_LIMIT {
                return Err(FetchError::Failed(format!(
                    "no bytes arrived for {}s (at byte {have} of {})",
                    STALL_LIMIT.as_secs(),
                    self.size
                )));
            }
            if stop() {
                return Err(FetchError::Interrupted);
            }
            // Bytes land in the file without telling us: look again shortly, or at once when
            // the fetch ends.
            let guard = self.state.lock().expect("fetch state");
            if *guard == State::Running {
                let _ = self
                    .changed
                    .wait_timeout(guard, Duration::from_millis(2))
                    .expect("fetch state");
            }
        }
    }
}

/// The next line of cairnd's answer, without its end: waits until `deadline`, or until `stop`
/// says so (the stream's read timeout is [`ANSWER_TICK`]). Empty if cairnd hung up.
fn next_line(
    lines: &mut BufReader<UnixStream>,
    stop: &dyn Fn() -> bool,
    deadline: Instant,
) -> Result<String, FetchError> {
    let mut line = Vec::new();
    loop {
        match lines.read_until(b'\n', &mut line) {
            // A whole line, or the end.
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if stop() {
                    return Err(FetchError::Interrupted);
                }
                if Instant::now() >= deadline {
                    return Err(
                        format!("cairnd did not answer within {}s", ANSWER_WAIT.as_secs()).into(),
                    );
                }
            }
            Err(e) => return Err(format!("cairnd did not answer: {e}").into()),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// What [`Fetch::start`] found.
#[derive(Debug)]
pub enum Started {
    /// The complete, checked file in the cache.
    Ready(PathBuf),
    Streaming(Arc<Fetch>),
}
