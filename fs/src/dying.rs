//! Whether a process that closes a file of the mount is dying from a signal (its writer was
//! killed mid-file), read from its `/proc/PID/stat` on the closing thread itself.
//!
//! That read can wait for the process: while a process execs, the kernel closes its
//! close-on-exec descriptors holding the process's exec lock, and a read of its stat waits
//! for that lock. A flush that waited for the read would wait for the exec, which waits for
//! the flush (any program that starts a child while it has a file of the mount open for
//! writing would hang). So a watchdog thread looks at the reads under way: one that has not
//! answered within [`PATIENCE`] is taken as "not dying" (a process in the middle of exec is
//! not), and its caller's `stalled` runs on the watchdog thread, to finish the flush and
//! answer it; the read's own answer, when it comes, is dropped.
//!
//! A read that answers (all but always) costs no switch to another thread: the watchdog
//! looks every [`TICK`] while reads come, and sleeps once none came for a while.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use cairn_node::procstat::ProcStat;
use tracing::debug;

/// How long a read of `/proc/PID/stat` may take before it is taken as stalled.
const PATIENCE: Duration = Duration::from_millis(100);
/// How often the watchdog looks while reads come.
const TICK: Duration = Duration::from_millis(10);
/// How long without a read before the watchdog sleeps until the next one.
const IDLE: Duration = Duration::from_secs(1);

/// What the closing process turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exiting because a signal killed it.
    Dying,
    /// Anything else: running, exiting normally, or gone.
    Alive,
    /// The read did not answer in time: `stalled` ran (or runs) on the watchdog thread.
    Stalled,
}

const READING: u8 = 0;
const DONE: u8 = 1;
const STALLED: u8 = 2;

type Stalled = Box<dyn FnOnce() + Send>;

/// One read under way.
struct Read {
    since: Instant,
    state: AtomicU8,
    stalled: Mutex<Option<Stalled>>,
}

struct Watchdog {
    reads: Mutex<Vec<Arc<Read>>>,
    /// The watchdog sleeps until a read wakes it.
    parked: AtomicBool,
    thread: Thread,
}

fn watchdog() -> &'static Watchdog {
    static W: OnceLock<Watchdog> = OnceLock::new();
    W.get_or_init(|| {
        let thread = std::thread::Builder::new()
            .name("proc-watch".into())
            .spawn(|| watch(watchdog()))
            .expect("the /proc watchdog thread starts");
        Watchdog {
            reads: Mutex::new(Vec::new()),
            parked: AtomicBool::new(false),
            thread: thread.thread().clone(),
        }
    })
}

fn watch(w: &Watchdog) {
    let mut last_seen = Instant::now();
    loop {
        let due: Vec<Arc<Read>> = {
            let reads = w.reads.lock().expect("reads");
            if reads.is_empty() {
                if last_seen.elapsed() >= IDLE {
                    // Set under the lock: a read added after it finds the watchdog parked
                    // and wakes it.
                    w.parked.store(true, Ordering::SeqCst);
                    drop(reads);
                    std::thread::park();
                    last_seen = Instant::now();
                    continue;
                }
                Vec::new()
            } else {
                last_seen = Instant::now();
                reads
                    .iter()
                    .filter(|r| r.since.elapsed() >= PATIENCE)
                    .cloned()
                    .collect()
            }
        };
        for r in due {
            if r.state
                .compare_exchange(READING, STALLED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
                && let Some(f) = r.stalled.lock().expect("stalled").take()
            {
                debug!(
                    "A closing process's /proc stat did not answer within {PATIENCE:?} (it \
                     is in an exec): its flush goes on as a live writer's."
                );
                f();
            }
        }
        std::thread::sleep(TICK);
    }
}

/// Whether process `pid` is exiting because a signal killed it (its file descriptors are
/// being closed by the kernel, not by the program). `stalled` runs on the watchdog thread if
/// the answer takes longer than [`PATIENCE`]; the verdict is then [`Verdict::Stalled`].
pub fn check(pid: u32, stalled: impl FnOnce() + Send + 'static) -> Verdict {
    check_with(|| read_killed_by_signal(pid), stalled)
}

fn check_with(read: impl FnOnce() -> bool, stalled: impl FnOnce() + Send + 'static) -> Verdict {
    let w = watchdog();
    let r = Arc::new(Read {
        since: Instant::now(),
        state: AtomicU8::new(READING),
        stalled: Mutex::new(Some(Box::new(stalled))),
    });
    w.reads.lock().expect("reads").push(r.clone());
    if w.parked.swap(false, Ordering::SeqCst) {
        w.thread.unpark();
    }
    let dying = read();
    w.reads
        .lock()
        .expect("reads")
        .retain(|x| !Arc::ptr_eq(x, &r));
    if r.state
        .compare_exchange(READING, DONE, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Verdict::Stalled;
    }
    if dying {
        Verdict::Dying
    } else {
        Verdict::Alive
    }
}

/// `/proc/PID/stat` of the processes that closed files last, kept open: a program that
/// closes thousands of files costs one open of it, not one for each (the open and the close
/// were nearly half of each check's cost). A descriptor names its process, not its number: once the
/// process is gone its reads fail, and the number is opened again (a new process may have it).
static OPEN: Mutex<Vec<(u32, Arc<std::fs::File>)>> = Mutex::new(Vec::new());
/// How many processes' stat files are kept open.
const KEPT_OPEN: usize = 8;

/// The read of `/proc/PID/stat`: the process is exiting (`PF_EXITING`) with a signal's exit
/// code. A process that is gone, or a stat that cannot be read, is not dying.
fn read_killed_by_signal(pid: u32) -> bool {
    let kept = {
        let open = OPEN.lock().expect("open stats");
        open.iter().find(|(p, _)| *p == pid).map(|(_, f)| f.clone())
    };
    if let Some(f) = kept {
        if let Some(dying) = read_stat(&f) {
            return dying;
        }
        OPEN.lock()
            .expect("open stats")
            .retain(|(_, g)| !Arc::ptr_eq(g, &f));
    }
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(dying) = read_stat(&f) else {
        return false;
    };
    let mut open = OPEN.lock().expect("open stats");
    if !open.iter().any(|(p, _)| *p == pid) {
        if open.len() >= KEPT_OPEN {
            open.remove(0);
        }
        open.push((pid, Arc::new(f)));
    }
    dying
}

/// Reads a process's stat from the start; `None` if it cannot be read (the process is gone),
/// or does not fit the buffer (never seen: the line is a few hundred bytes).
fn read_stat(f: &std::fs::File) -> Option<bool> {
    // Into a buffer on the stack (the line is a few hundred bytes): `read_to_string` would
    // first `statx` the file for a size hint, and grow a string, at every close. One read:
    // the kernel gives the whole line at once, and a second read (to see the end) would
    // have it make the line again only to skip past it.
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 2048];
    let len = loop {
        match f.read_at(&mut buf, 0) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other.ok()?,
        }
    };
    if len == 0 || len == buf.len() {
        return None;
    }
    let stat = std::str::from_utf8(&buf[..len]).ok()?;
    Some(ProcStat::parse(stat).is_some_and(|s| s.killed_by_signal()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_running_process_is_alive() {
        assert_eq!(
            check(std::process::id(), || panic!("not stalled")),
            Verdict::Alive
        );
    }

    /// A process's stat stays open while it closes files; once the process is gone its
    /// number is read again (it is not dying, and a process that gets the number next is
    /// read, not the old one).
    #[test]
    fn a_process_that_is_gone_is_read_again() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(check(pid, || panic!("not stalled")), Verdict::Alive);
        assert!(OPEN.lock().unwrap().iter().any(|(p, _)| *p == pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(check(pid, || panic!("not stalled")), Verdict::Alive);
        assert!(!OPEN.lock().unwrap().iter().any(|(p, _)| *p == pid));
    }

    #[test]
    fn a_missing_process_is_alive() {
        assert_eq!(check(u32::MAX, || panic!("not stalled")), Verdict::Alive);
    }

    /// A read that does not answer (a process in exec) is answered for by the watchdog, once,
    /// within a moment; what the read says afterwards counts for nothing.
    #[test]
    fn a_stalled_read_is_answered_by_the_watchdog() {
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let r = ran.clone();
        let t0 = Instant::now();
        let verdict = check_with(
            || {
                // Waits until the watchdog has answered, as a stat read waits for the exec
                // that waits for that answer.
                rx.recv_timeout(Duration::from_secs(10)).unwrap();
                true
            },
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            },
        );
        assert_eq!(verdict, Verdict::Stalled);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(t0.elapsed() >= PATIENCE, "{:?}", t0.elapsed());

        // The next reads answer at once; the watchdog stays out of them.
        for _ in 0..100 {
            assert_eq!(
                check_with(|| true, || panic!("not stalled")),
                Verdict::Dying
            );
        }
    }
}
