//! The import queue: files settling until they are due, files someone asked for, and files
//! placed that wait for the catalog; [`Queue::next_batch`] hands the importer thread
//! ([`super::import`]) its next batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::locals::LocalRef;

/// The most files imported in one batch.
const BATCH: usize = 2000;

/// The first wait before a failed registration is tried again; it doubles up to
/// [`RETRY_MAX`].
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(500);
/// At most this long between tries, so that what waited is registered within moments of the
/// catalog's return (a link cut for hours costs a try every few seconds).
const RETRY_MAX: Duration = Duration::from_secs(5);

/// While files come due less than this apart (a program's burst of closes), the first waits
/// for the others, until `BATCH` are due (`GATHERED` where files come due at their close, a
/// settle shorter than `GATHER`) or for `GATHER_MAX`: a batch costs a sync of the
/// node and a few round trips to the primary whatever its size, so a burst of `cp -r` goes
/// in a few batches, not in one for every few files. Files that come due while a batch is
/// imported go in the next, up to `BATCH`: batches grow when the import falls behind (a
/// distant primary).
///
/// Kept short, so that the last files of a burst wait little once it ends: a `cp -r` closes
/// a file every few hundred microseconds, and the last batch starts 10 ms after its last
/// close. (At 50 ms and 2,000 files a batch, the import of a `cp -r` of 10,000 small files
/// ended 120 ms after `cp -r` did; and while the importer synced its larger batches'
/// journal rows, the closes that had to write theirs waited.)
const GATHER: Duration = Duration::from_millis(10);
const GATHERED: usize = 500;
const GATHER_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Waiting {
    /// Files settling, by the time they are due (in order but for the few whose wait began
    /// again: those are looked at when due and put back).
    settling: VecDeque<(Instant, LocalRef)>,
    /// When the last file that came due within `GATHER` of its close (a settle shorter than
    /// `GATHER`) closed.
    closed_due: Option<Instant>,
    /// Files someone is waiting for: imported at once.
    pub(super) asked: Vec<LocalRef>,
    /// Files placed, waiting for the catalog.
    pending: Vec<LocalRef>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Directories made here wait for the catalog (a try with or without files).
    dirs: bool,
    /// Unmounting: import what settles now, try what is pending once, and stop.
    pub(super) stopping: bool,
    pub(super) running: bool,
}

/// The import queue and its thread.
#[derive(Default)]
pub(super) struct Queue {
    waiting: Mutex<Waiting>,
    pub(super) wake: Condvar,
    /// Batches ended, and a wake-up for whoever waits for an asked file.
    pub(super) batches: Mutex<u64>,
    pub(super) done: Condvar,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
}

impl Queue {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().expect("import queue")
    }

    /// `l` settles until `until`. Once unmounting, nothing new is taken: what closes now
    /// stays in the journal for the next mount.
    pub(super) fn settle(&self, l: LocalRef, until: Instant) {
        let mut w = self.lock();
        if w.stopping {
            return;
        }
        // The importer wakes by itself when the first file settling comes due, and looks
        // again then (or once it has imported what it has): it is woken only for a file due
        // before that. (Woken at every close, it cost a switch to the importer per file.)
        let sooner = w.settling.front().is_none_or(|(due, _)| until < *due);
        let now = Instant::now();
        if until <= now + GATHER {
            w.closed_due = Some(now);
        }
        w.settling.push_back((until, l));
        if sooner {
            self.wake.notify_one();
        }
    }

    /// Directories made here wait for the catalog: they are tried with the next retry.
    pub(super) fn dirs_waiting(&self) {
        let mut w = self.lock();
        if !w.dirs && !w.stopping {
            w.dirs = true;
            if w.retry_at.is_none() {
                w.retry_at = Some(Instant::now() + RETRY_FIRST);
            }
            self.wake.notify_one();
        }
    }

    /// Someone waits for `l`: it is imported now.
    /// A file an earlier mount left: registered next (`pending`: placed already) or imported
    /// next. (The import thread, not started yet, finds it.)
    pub(super) fn recovered(&self, l: LocalRef, pending: bool) {
        let mut w = self.lock();
        if pending {
            w.pending.push(l);
        } else {
            w.asked.push(l);
        }
    }

    pub(super) fn ask(&self, l: LocalRef) {
        let mut w = self.lock();
        w.asked.push(l);
        self.wake.notify_one();
    }

    /// The next batch: files due, asked for, or pending and due for a retry. Waits until
    /// there is one; `None` once stopping and nothing is left. With it: whether it is the last
    /// (unmounting), and whether it is a retry of what waits for the catalog.
    pub(super) fn next_batch(&self) -> Option<(Vec<LocalRef>, bool, bool)> {
        let mut w = self.lock();
        let mut gathering: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // The first file due waits for those coming due just behind it, as long as they
            // keep coming (GATHER apart at most, GATHER_MAX in all): one batch (one sync, one
            // transaction) for a program's burst of files, not one each. Behind it: a file
            // settling that comes due within GATHER, or, with a settle shorter than GATHER
            // (files come due as they close), the next to close, as long as the last closed
            // less than GATHER ago. (Without the latter, each batch took the few files that
            // had closed during the last, and a `cp -r` made thousands of batches.)
            if !w.stopping
                && w.asked.is_empty()
                && w.settling.front().is_some_and(|(due, _)| *due <= now)
            {
                let started = *gathering.get_or_insert(now);
                // Smaller batches only where files come due as they close: with a settle,
                // the last batch waits for its files' settle anyway, and more batches during
                // a copy are more syncs of the node beside it (`cp -r` returned 17 % later).
                let enough = if w.closed_due.is_some_and(|c| now < c + GATHER_MAX) {
                    GATHERED
                } else {
                    BATCH
                };
                let due_now = w
                    .settling
                    .iter()
                    .take(enough)
                    .take_while(|(due, _)| *due <= now)
                    .count();
                let next = w.settling.iter().map(|(d, _)| *d).find(|d| *d > now);
                let until = [
                    next.filter(|next| *next <= now + GATHER),
                    w.closed_due.map(|c| c + GATHER).filter(|t| *t > now),
                ]
                .into_iter()
                .flatten()
                .min();
                if let Some(until) = until
                    && due_now < enough
                    && until <= started + GATHER_MAX
                {
                    w = self
                        .wake
                        .wait_timeout(w, until.saturating_duration_since(now))
                        .expect("import queue")
                        .0;
                    continue;
                }
            }
            let mut batch: Vec<LocalRef> = std::mem::take(&mut w.asked);
            while batch.len() < BATCH
                && let Some((due, _)) = w.settling.front()
                && (*due <= now || w.stopping)
            {
                let (_, l) = w.settling.pop_front().expect("a front");
                batch.push(l);
            }
            let due = w.stopping || w.retry_at.is_none_or(|t| t <= now);
            let retry = (!w.pending.is_empty() || w.dirs) && due;
            if retry {
                batch.append(&mut w.pending);
                if w.stopping {
                    // Unmounting: one last try, then the journal keeps them.
                    w.dirs = false;
                }
            }
            if !batch.is_empty() || retry {
                return Some((batch, w.stopping, retry));
            }
            if w.stopping {
                return None;
            }
            let next = [
                w.settling.front().map(|(t, _)| *t),
                w.retry_at.filter(|_| !w.pending.is_empty() || w.dirs),
            ]
            .into_iter()
            .flatten()
            .min();
            w = match next {
                Some(t) => {
                    self.wake
                        .wait_timeout(w, t.saturating_duration_since(now))
                        .expect("import queue")
                        .0
                }
                None => self.wake.wait(w).expect("import queue"),
            };
        }
    }

    /// Files that could not be registered: tried again after the backoff (once unmounting,
    /// they stay in the journal for the next mount).
    pub(super) fn retry_later(&self, ls: Vec<LocalRef>) {
        self.finished();
        let mut w = self.lock();
        if w.stopping {
            return;
        }
        Self::back_off(&mut w);
        w.pending.extend(ls);
    }

    /// A try of the catalog failed: the next waits longer.
    pub(super) fn backoff(&self) {
        Self::back_off(&mut self.lock());
    }

    fn back_off(w: &mut Waiting) {
        w.backoff = if w.backoff.is_zero() {
            RETRY_FIRST
        } else {
            (w.backoff * 2).min(RETRY_MAX)
        };
        w.retry_at = Some(Instant::now() + w.backoff);
    }

    /// Files placed while the catalog is not answering: they wait with the others for the
    /// next retry, without a try of their own.
    pub(super) fn wait_for_catalog(&self, ls: Vec<LocalRef>) {
        let mut w = self.lock();
        self.finished();
        if w.stopping {
            return;
        }
        if w.retry_at.is_none() {
            w.retry_at = Some(Instant::now() + RETRY_FIRST);
        }
        w.pending.extend(ls);
    }

    pub(super) fn succeeded(&self) {
        let mut w = self.lock();
        w.backoff = Duration::ZERO;
        w.retry_at = None;
        w.dirs = false;
        drop(w);
        self.finished();
    }

    /// A batch ended: whoever waits for a file looks again.
    pub(super) fn finished(&self) {
        *self.batches.lock().expect("batches") += 1;
        self.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locals::{LocalKind, Locals};
    use cairn_catalog::model::DirId;
    use std::sync::Arc;

    fn files(n: usize) -> Vec<LocalRef> {
        let ls = Locals::default();
        (0..n)
            .map(|i| {
                let name = format!("f{i}");
                ls.add(DirId(5), "d", &name, LocalKind::Staged, "/x".into())
            })
            .collect()
    }

    /// With no settle, files come due as they close: a program's burst of closes (here 1 ms
    /// apart) still goes in one batch, not in one for each few files closed during the
    /// last. (Two or three if the closing thread is held up more than `GATHER` on a busy
    /// machine; one for each file or two without the gathering.)
    #[test]
    fn a_burst_of_closes_with_no_settle_goes_in_one_batch() {
        const N: usize = 30;
        let q = Arc::new(Queue::default());
        let closer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for l in files(N) {
                    q.settle(l, Instant::now());
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let mut batches = Vec::new();
        while batches.iter().sum::<usize>() < N {
            let (batch, stopping, retry) = q.next_batch().expect("a batch");
            assert!(!stopping && !retry);
            batches.push(batch.len());
        }
        closer.join().unwrap();
        assert!(batches.len() <= 3, "batches of {batches:?}");
    }

    /// A file that closes while the importer waits with nothing to do wakes it.
    #[test]
    fn a_file_closed_into_an_empty_queue_wakes_the_importer() {
        let q = Arc::new(Queue::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let importer = {
            let q = q.clone();
            std::thread::spawn(move || tx.send(q.next_batch().map(|b| b.0.len())).unwrap())
        };
        std::thread::sleep(Duration::from_millis(100));
        let l = files(1).pop().unwrap();
        q.settle(l, Instant::now() + Duration::from_millis(10));
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(Some(1)), "the importer was not woken");
        importer.join().unwrap();
    }
}
