//! Requests whose caller got a signal (the kernel's FUSE_INTERRUPT). A request that can wait
//! long — a read of a file whose bytes are still on their way from another host — watches
//! for its interrupt while it waits, and ends with `EINTR`: at once when the signal kills the
//! caller (Ctrl-C or `kill` of a program that does not catch it), and after [`GRACE`] when the
//! caller catches it (Python's Ctrl-C, a timer), so that a handler runs within a moment
//! while a read whose bytes come soon still completes, as on a local disk (programs seldom
//! expect `EINTR` from a file). Without this, a request in the mount is not interrupted by the
//! kernel: its caller waits for the answer, unkillable.
//!
//! The interrupt may come before the request is seen here (it travels apart, and threads race),
//! so an interrupt for a request nobody watches is kept a while for it. A request the kernel
//! makes on its own (read-ahead) gets no interrupt: it ends once the process it reads for is
//! gone or dying, looked at every [`LOOK`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an interrupt that came before its request is kept for it.
const EARLY_KEPT: Duration = Duration::from_secs(10);
/// How long a request whose caller caught the signal may still wait.
pub const GRACE: Duration = Duration::from_secs(1);
/// How often a waiting request looks whether its caller is gone.
const LOOK: Duration = Duration::from_millis(500);
/// How often interrupts kept too long are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

enum Entry {
    /// A request that watches for its interrupt: when it came.
    Watched(Arc<OnceLock<Instant>>),
    /// An interrupt for a request not seen yet (or one that does not watch: a quick one).
    Early(Instant),
}

#[derive(Default)]
pub struct Interrupts {
    by_unique: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// When interrupts kept too long were last dropped: at most once a second (a program
    /// under a profiler gets hundreds of signals a second, each an interrupt).
    pruned: Option<Instant>,
}

/// A request watching for its interrupt, until dropped.
pub struct Watch<'a> {
    owner: &'a Interrupts,
    unique: u64,
    /// The caller (a thread's id).
    pid: u32,
    at: Arc<OnceLock<Instant>>,
    /// Whether the caller was seen to be dying since the interrupt.
    dying: std::cell::Cell<Option<bool>>,
    /// When the caller was last seen alive.
    seen: std::cell::Cell<Instant>,
}

impl Watch<'_> {
    /// Whether the request should end now with `EINTR`.
    pub fn should_stop(&self) -> bool {
        let Some(at) = self.at.get() else {
            if self.seen.get().elapsed() < LOOK {
                return false;
            }
            self.seen.set(Instant::now());
            return fatal_signal_pending(self.pid);
        };
        if at.elapsed() >= GRACE {
            return true;
        }
        let dying = self
            .dying
            .get()
            .unwrap_or_else(|| fatal_signal_pending(self.pid));
        self.dying.set(Some(dying));
        dying
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.owner.lock().entries.remove(&self.unique);
    }
}

impl Interrupts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.by_unique.lock().expect("interrupts")
    }

    /// Request `unique`, made by thread `pid`, watches for its interrupt while the returned
    /// watch lives.
    pub fn watch(&self, unique: u64, pid: u32) -> Watch<'_> {
        let mut t = self.lock();
        let at = Arc::new(OnceLock::new());
        if let Some(Entry::Early(when)) = t.entries.get(&unique) {
            let _ = at.set(*when);
        }
        t.entries.insert(unique, Entry::Watched(at.clone()));
        Watch {
            owner: self,
            unique,
            pid,
            at,
            dying: std::cell::Cell::new(None),
            seen: std::cell::Cell::new(Instant::now()),
        }
    }

    /// The caller of request `unique` got a signal.
    pub fn interrupt(&self, unique: u64) {
        let mut t = self.lock();
        let now = Instant::now();
        if t.pruned
            .is_none_or(|p| now.duration_since(p) >= PRUNE_EVERY)
        {
            t.pruned = Some(now);
            t.entries.retain(|_, e| match e {
                Entry::Early(at) => now.duration_since(*at) < EARLY_KEPT,
                Entry::Watched(_) => true,
            });
        }
        match t.entries.get(&unique) {
            Some(Entry::Watched(at)) => {
                let _ = at.set(now);
            }
            _ => {
                t.entries.insert(unique, Entry::Early(now));
            }
        }
    }
}

/// Whether thread `pid` has a fatal signal pending: one that kills it (the kernel marks each
/// thread of a process being killed with a pending SIGKILL; a signal the program catches does
/// not). A thread that is gone is taken as dying; pid 0 (a caller the kernel could not name
/// in the mount's pid namespace, as from another container) is not: it cannot be looked at.
pub fn fatal_signal_pending(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let kill = 1u64 << (libc::SIGKILL - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|mask| mask & kill != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_reaches_the_request_it_names_whether_before_or_after_it() {
        let i = Interrupts::default();
        let me = std::process::id();
        let w = i.watch(10, me);
        let other = i.watch(12, me);
        assert!(!w.should_stop());
        i.interrupt(10);
        assert!(w.at.get().is_some());
        assert!(
            other.at.get().is_none(),
            "another request is not interrupted"
        );
        // This process is not dying: it stops once the grace is over.
        assert!(!w.should_stop());
        std::thread::sleep(GRACE);
        assert!(w.should_stop());
        // Came first: the request finds it when it starts watching.
        i.interrupt(14);
        assert!(i.watch(14, me).at.get().is_some());
        // A request done (its watch dropped) leaves nothing behind for others.
        drop(w);
        assert!(i.watch(16, me).at.get().is_none());
    }

    #[test]
    fn a_caller_that_is_gone_stops_at_once() {
        let i = Interrupts::default();
        let w = i.watch(1, u32::MAX);
        i.interrupt(1);
        assert!(w.should_stop());
    }

    /// Read-ahead gets no interrupt: it stops within a look once its process is gone.
    #[test]
    fn a_request_for_a_process_that_is_gone_stops_without_an_interrupt() {
        let i = Interrupts::default();
        let alive = i.watch(1, std::process::id());
        let gone = i.watch(2, u32::MAX);
        assert!(!gone.should_stop(), "not looked at before a look's time");
        std::thread::sleep(LOOK);
        assert!(gone.should_stop());
        assert!(!alive.should_stop());
    }

    #[test]
    fn a_running_process_has_no_fatal_signal_pending() {
        assert!(!fatal_signal_pending(std::process::id()));
        assert!(
            fatal_signal_pending(u32::MAX),
            "one that is gone counts as dying"
        );
        assert!(
            !fatal_signal_pending(0),
            "one the kernel could not name is not"
        );
    }

    /// A caller from another pid namespace (pid 0) waits on; interrupted, it stops after the
    /// grace, as one that caught the signal.
    #[test]
    fn a_caller_without_a_pid_stops_only_after_an_interrupt_and_the_grace() {
        let i = Interrupts::default();
        let w = i.watch(1, 0);
        std::thread::sleep(LOOK);
        assert!(!w.should_stop());
        i.interrupt(1);
        assert!(!w.should_stop());
        std::thread::sleep(GRACE);
        assert!(w.should_stop());
    }

    #[test]
    fn interrupts_for_requests_never_watched_do_not_pile_up() {
        let i = Interrupts::default();
        for u in 0..1000 {
            i.interrupt(u);
        }
        assert_eq!(i.lock().entries.len(), 1000);
        let long_ago = Instant::now() - EARLY_KEPT - Duration::from_secs(1);
        i.lock().entries.insert(5000, Entry::Early(long_ago));
        i.interrupt(6000);
        assert!(
            i.lock().entries.contains_key(&5000),
            "dropped at most once a second"
        );
        i.lock().pruned = Some(Instant::now() - PRUNE_EVERY);
        i.interrupt(7000);
        assert!(
            !i.lock().entries.contains_key(&5000),
            "an old one is dropped"
        );
        assert!(i.lock().entries.contains_key(&6000));
        assert!(i.lock().entries.contains_key(&7000));
    }
}
