//! The bounded walk over this host's processes: their descriptors are read on a thread of the
//! walk's own, so a process whose `/proc` entries do not answer cannot hold the caller.
//!
//! Why: reading `/proc/PID/fd/*` of a process stuck in the kernel can block for as long as it
//! stays stuck (a process in `execve` of a file on a hung FUSE mount holds the lock that
//! `readlink` there takes; stalls of 30 to 100 s were seen). A blocked system call cannot be
//! cancelled, so the walk leaves it to a thread it can walk away from.
//!
//! How:
//! - One reader thread reads the processes in turn and reports each. The caller waits for a
//!   process at most [`Limits::per_process`] from when the reader began it.
//! - A process that does not answer in time is passed over and logged once, with its pid. Its
//!   reader thread is left blocked; the process is recorded as stuck, and a new reader thread
//!   goes on with the next process. While it is stuck, later walks pass over it at once, so a
//!   stuck process ties up one thread however many walks there are. When the blocked read
//!   returns, the thread ends and the process is read again by the next walk.
//! - A walk never holds its caller longer than [`Limits::walk`]; the processes it has not read
//!   by then are passed over (logged once until a walk completes again).
//! - At most [`Limits::max_stuck`] threads are left blocked: with that many, a walk passes over
//!   the processes it has not read rather than risk another.
//!
//! A process passed over is counted ([`Found::passed_over`]): a file it holds open is not seen.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Where a walk reads processes from: `/proc` ([`super::Proc`]), or a stand-in in tests.
pub(super) trait ProcReader: Send + Sync + 'static {
    /// The ids of this host's processes. Listing `/proc` takes no lock of any process, so it is
    /// read on the caller's thread.
    fn pids(&self) -> io::Result<Vec<u32>>;

    /// What each of `pid`'s descriptors links to, as (descriptor, link). Fails with
    /// `PermissionDenied` when this process may not read them; with another error when the
    /// process is gone.
    fn links(&self, pid: u32) -> io::Result<Vec<(OsString, PathBuf)>>;

    /// The open flags of `pid`'s descriptor `fd`, `None` when they cannot be read.
    fn flags(&self, pid: u32, fd: &OsStr) -> Option<u32>;
}

/// What a walk looks for.
#[derive(Debug, Clone)]
pub(super) enum Want {
    /// Every file open for writing.
    Writers,
    /// Whether this file is open for writing; the walk stops at the first writer.
    Writer(PathBuf),
    /// Every file below this directory, open in any mode.
    Under(PathBuf),
}

/// What a walk found.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// The files, as `/proc` names them.
    pub(super) paths: HashSet<PathBuf>,
    /// Processes whose descriptors this process may not read.
    pub(super) unreadable: usize,
    /// Processes passed over because they did not answer in time.
    pub(super) passed_over: usize,
}

/// How long a walk waits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// How long one process may take before it is passed over (default 1 s; reading a
    /// process's descriptors normally takes microseconds).
    pub(super) per_process: Duration,
    /// The longest a walk holds its caller (default 5 s).
    pub(super) walk: Duration,
    /// How many reader threads may be left blocked on stuck processes (default 16).
    pub(super) max_stuck: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_process: Duration::from_secs(1),
            walk: Duration::from_secs(5),
            max_stuck: 16,
        }
    }
}

/// Processes whose reader thread is blocked, with when it began; shared with those threads,
/// which take their process out when their read returns.
type Stuck = Arc<Mutex<HashMap<u32, Instant>>>;

/// Walks processes within [`Limits`], remembering which are stuck between walks.
pub(super) struct Walker {
    reader: Arc<dyn ProcReader>,
    limits: Limits,
    stuck: Stuck,
    /// Whether the last walk that ended stopped short (logged once until one completes).
    cut_short: AtomicBool,
}

/// Why a walk stopped before it had read every process.
enum Short {
    Bound,
    TooManyStuck,
}

impl Walker {
    pub(super) fn new(reader: Arc<dyn ProcReader>, limits: Limits) -> Self {
        Walker {
            reader,
            limits,
            stuck: Stuck::default(),
            cut_short: AtomicBool::new(false),
        }
    }

    /// Reads every process for `want`, within the limits. Fails only when the list of
    /// processes cannot be read, or no reader thread can be started.
    pub(super) fn walk(&self, want: Want) -> io::Result<Found> {
        let started = Instant::now();
        let deadline = started + self.limits.walk;
        let patience = self.limits.per_process;
        let mut found = Found::default();
        let mut pids = self.reader.pids()?;
        let listed = pids.len();
        {
            let stuck = self.stuck.lock().expect("stuck lock");
            pids.retain(|pid| !stuck.contains_key(pid));
        }
        found.passed_over = listed - pids.len();
        let single = matches!(want, Want::Writer(_));
        let job = Arc::new(Job {
            pids,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            want,
        });
        let (tx, rx) = mpsc::channel();
        let mut done = 0; // processes reported or passed over
        let mut reader: Option<Arc<Slot>> = None;
        let mut short = None;
        while done < job.pids.len() {
            let slot = match &reader {
                Some(slot) => Arc::clone(slot),
                None if self.stuck.lock().expect("stuck lock").len() >= self.limits.max_stuck => {
                    short = Some(Short::TooManyStuck);
                    break;
                }
                None => {
                    let slot = self.start(&job, tx.clone())?;
                    reader = Some(Arc::clone(&slot));
                    slot
                }
            };
            let now = Instant::now();
            if now >= deadline {
                short = Some(Short::Bound);
                break;
            }
            let until = slot
                .reading()
                .map_or(now + patience, |(_, since)| since + patience)
                .min(deadline);
            match rx.recv_timeout(until.saturating_duration_since(now)) {
                Ok(outcome) => {
                    done += 1;
                    found.add(outcome);
                    if single && !found.paths.is_empty() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(pid) = slot.abandon(patience, &self.stuck) {
                        warn!(
                            "Passing over process {pid} in the walk of /proc: its open files did \
                             not answer within {patience:?} (a process stuck in the kernel, such \
                             as on a hung FUSE or NFS mount, holds them); a file it has open is \
                             not seen as open until it answers."
                        );
                        found.passed_over += 1;
                        done += 1;
                        reader = None;
                    }
                }
                // Unreachable while `tx` is held here; ends the walk rather than spin.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        job.stop.store(true, Ordering::Relaxed);
        // Reports already sent count, even when the walk stopped short.
        for outcome in rx.try_iter() {
            done += 1;
            found.add(outcome);
        }
        if let Some(why) = short {
            // The process being read when time ran out is left to its thread, as a stuck one.
            if let Some(slot) = &reader {
                slot.abandon(Duration::ZERO, &self.stuck);
            }
            let left = job.pids.len() - done;
            found.passed_over += left;
            if !self.cut_short.swap(true, Ordering::Relaxed) {
                let why = match why {
                    Short::Bound => format!("its bound of {:?}", self.limits.walk),
                    Short::TooManyStuck => format!(
                        "{} readers are already blocked on stuck processes",
                        self.limits.max_stuck
                    ),
                };
                warn!(
                    "The walk of /proc stopped after {:.1?} with {left} processes not read \
                     ({why}); a file they have open is not seen as open. Said once until a walk \
                     reads every process.",
                    started.elapsed()
                );
            }
        } else if !single && found.passed_over == 0 && self.cut_short.swap(false, Ordering::Relaxed)
        {
            info!("The walk of /proc reads every process again.");
        }
        Ok(found)
    }

    /// Starts a reader thread on `job`.
    fn start(&self, job: &Arc<Job>, tx: mpsc::Sender<Outcome>) -> io::Result<Arc<Slot>> {
        let slot = Arc::new(Slot::default());
        let reader = Reader {
            source: Arc::clone(&self.reader),
            job: Arc::clone(job),
            slot: Arc::clone(&slot),
            stuck: Arc::clone(&self.stuck),
            patience: self.limits.per_process,
            tx,
        };
        thread::Builder::new()
            .name("proc-walk".into())
            .spawn(move || reader.run())?;
        Ok(slot)
    }
}

impl Found {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Files(files) => self.paths.extend(files),
            Outcome::Unreadable => self.unreadable += 1,
        }
    }
}

/// One walk's processes, shared by its reader threads.
struct Job {
    pids: Vec<u32>,
    /// The index of the next process to read.
    next: AtomicUsize,
    /// Set when the walk is over: readers take no more processes.
    stop: AtomicBool,
    want: Want,
}

/// What a reader thread is doing, seen by the walk.
#[derive(Default)]
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    /// The process being read, and since when.
    reading: Option<(u32, Instant)>,
    /// The walk went on without this thread: it ends after its current read.
    abandoned: bool,
}

impl Slot {
    fn reading(&self) -> Option<(u32, Instant)> {
        self.0.lock().expect("slot lock").reading
    }

    /// Leaves the thread to its read if it has been reading one process for at least
    /// `patience`: records the process as stuck and returns its pid.
    fn abandon(&self, patience: Duration, stuck: &Stuck) -> Option<u32> {
        let mut state = self.0.lock().expect("slot lock");
        let (pid, since) = state.reading?;
        if since.elapsed() < patience {
            return None;
        }
        state.abandoned = true;
        stuck.lock().expect("stuck lock").insert(pid, since);
        Some(pid)
    }
}

/// A reader thread.
struct Reader {
    source: Arc<dyn ProcReader>,
    job: Arc<Job>,
    slot: Arc<Slot>,
    stuck: Stuck,
    patience: Duration,
    tx: mpsc::Sender<Outcome>,
}

impl Reader {
    fn run(self) {
        while !self.job.stop.load(Ordering::Relaxed) {
            let i = self.job.next.fetch_add(1, Ordering::Relaxed);
            let Some(&pid) = self.job.pids.get(i) else {
                return;
            };
            let since = Instant::now();
            self.slot.0.lock().expect("slot lock").reading = Some((pid, since));
            let outcome = read_process(&*self.source, pid, &self.job.want);
            {
                let mut state = self.slot.0.lock().expect("slot lock");
                if state.abandoned {
                    self.stuck.lock().expect("stuck lock").remove(&pid);
                    let took = since.elapsed();
                    if took >= self.patience {
                        info!("Process {pid} answered the walk of /proc again, after {took:.1?}.");
                    }
                    return;
                }
                state.reading = None;
            }
            if self.tx.send(outcome).is_err() {
                return; // the walk is over
            }
        }
    }
}

/// What one process holds.
enum Outcome {
    /// The files it has open that the walk wants.
    Files(Vec<PathBuf>),
    /// Its descriptors may not be read by this process.
    Unreadable,
}

/// Reads one process's descriptors for `want` (on a reader thread: this may block).
fn read_process(source: &dyn ProcReader, pid: u32, want: &Want) -> Outcome {
    let links = match source.links(pid) {
        Ok(links) => links,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Outcome::Unreadable,
        // The process exited (or is a zombie without a table): nothing open.
        Err(_) => return Outcome::Files(Vec::new()),
    };
    let writes = |fd: &OsStr| source.flags(pid, fd).is_some_and(super::is_write_mode);
    let mut files = Vec::new();
    for (fd, link) in links {
        let Some(path) = super::file_path(link) else {
            continue;
        };
        let wanted = match want {
            Want::Writers => writes(&fd),
            Want::Writer(only) => *only == path && writes(&fd),
            Want::Under(dir) => path.starts_with(dir),
        };
        if wanted {
            files.push(path);
            if matches!(want, Want::Writer(_)) {
                break;
            }
        }
    }
    Outcome::Files(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;

    /// Processes in memory: each holds one file open for writing, `/p/<pid>`; those in
    /// `blocked` do not answer until released, those in `slow` take that long.
    #[derive(Default)]
    struct Fake {
        pids: Vec<u32>,
        blocked: HashSet<u32>,
        slow: Duration,
        released: Mutex<bool>,
        wake: Condvar,
        reads: Mutex<HashMap<u32, usize>>,
    }

    impl Fake {
        fn new(pids: impl IntoIterator<Item = u32>) -> Self {
            Fake {
                pids: pids.into_iter().collect(),
                ..Fake::default()
            }
        }

        fn release(&self) {
            *self.released.lock().unwrap() = true;
            self.wake.notify_all();
        }

        fn reads_of(&self, pid: u32) -> usize {
            self.reads.lock().unwrap().get(&pid).copied().unwrap_or(0)
        }
    }

    impl ProcReader for Fake {
        fn pids(&self) -> io::Result<Vec<u32>> {
            Ok(self.pids.clone())
        }

        fn links(&self, pid: u32) -> io::Result<Vec<(OsString, PathBuf)>> {
            *self.reads.lock().unwrap().entry(pid).or_default() += 1;
            if self.blocked.contains(&pid) {
                let released = self.released.lock().unwrap();
                drop(self.wake.wait_while(released, |r| !*r).unwrap());
            }
            thread::sleep(self.slow);
            Ok(vec![("3".into(), format!("/p/{pid}").into())])
        }

        fn flags(&self, _pid: u32, _fd: &OsStr) -> Option<u32> {
            Some(libc::O_WRONLY as u32)
        }
    }

    fn paths(found: &Found) -> Vec<String> {
        let mut out: Vec<String> = found
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.sort();
        out
    }

    fn limits(per_process_ms: u64, walk_ms: u64) -> Limits {
        Limits {
            per_process: Duration::from_millis(per_process_ms),
            walk: Duration::from_millis(walk_ms),
            max_stuck: 16,
        }
    }

    #[test]
    fn a_process_that_does_not_answer_is_passed_over_and_the_others_are_read() {
        let fake = Arc::new(Fake {
            blocked: HashSet::from([2]),
            ..Fake::new([1, 2, 3])
        });
        let walker = Walker::new(fake.clone(), limits(500, 5_000));

        let started = Instant::now();
        let found = walker.walk(Want::Writers).expect("walk");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(paths(&found), ["/p/1", "/p/3"]);
        assert_eq!(found.passed_over, 1);

        // While it is stuck, the next walk passes over it at once, without another reader.
        let started = Instant::now();
        let found = walker.walk(Want::Writers).expect("walk");
        let took = started.elapsed();
        assert!(took < Duration::from_millis(400), "{took:?}");
        assert_eq!(paths(&found), ["/p/1", "/p/3"]);
        assert_eq!(found.passed_over, 1);
        assert_eq!(fake.reads_of(2), 1);

        // Once it answers, it is read again.
        fake.release();
        let until = Instant::now() + Duration::from_secs(10);
        while !walker.stuck.lock().unwrap().is_empty() {
            assert!(Instant::now() < until, "the blocked reader never ended");
            thread::sleep(Duration::from_millis(5));
        }
        let found = walker.walk(Want::Writers).expect("walk");
        assert_eq!(paths(&found), ["/p/1", "/p/2", "/p/3"]);
        assert_eq!(found.passed_over, 0);
    }

    #[test]
    fn a_walk_never_holds_its_caller_longer_than_its_bound() {
        let fake = Arc::new(Fake {
            slow: Duration::from_millis(40),
            ..Fake::new(1..=100)
        });
        let walker = Walker::new(fake, limits(1_000, 200));
        let started = Instant::now();
        let found = walker.walk(Want::Writers).expect("walk");
        let took = started.elapsed();
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert!(!found.paths.is_empty() && found.paths.len() < 100);
        assert_eq!(found.paths.len() + found.passed_over, 100);
        assert!(found.paths.contains(&PathBuf::from("/p/1")));
    }

    #[test]
    fn no_more_readers_are_left_blocked_than_allowed() {
        let fake = Arc::new(Fake {
            blocked: HashSet::from([2, 3]),
            ..Fake::new([1, 2, 3, 4])
        });
        let walker = Walker::new(
            fake.clone(),
            Limits {
                max_stuck: 1,
                ..limits(50, 5_000)
            },
        );
        let found = walker.walk(Want::Writers).expect("walk");
        assert_eq!(paths(&found), ["/p/1"]);
        assert_eq!(found.passed_over, 3);
        assert_eq!(
            fake.reads_of(3),
            0,
            "no reader is risked on another process"
        );
        fake.release();
    }

    #[test]
    fn looking_for_one_writer_stops_at_it() {
        let fake = Arc::new(Fake {
            blocked: HashSet::from([3]),
            ..Fake::new([1, 2, 3])
        });
        let walker = Walker::new(fake.clone(), limits(5_000, 5_000));
        let started = Instant::now();
        let found = walker.walk(Want::Writer("/p/2".into())).expect("walk");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(paths(&found), ["/p/2"]);
        fake.release();
    }

    #[test]
    fn files_under_a_directory_are_those_below_it() {
        let fake = Arc::new(Fake::new([1, 2]));
        let walker = Walker::new(fake, limits(1_000, 5_000));
        let found = walker.walk(Want::Under("/p/2".into())).expect("walk");
        assert_eq!(paths(&found), ["/p/2"]);
    }
}
