//! Group commit: what workers write to the catalog at about the same time goes in one
//! transaction.
//!
//! A [`Batcher`] takes items from any number of worker threads. The first to arrive while no
//! batch is being written becomes the leader: it takes every item waiting (its own and those
//! that came meanwhile), writes them in one call, and hands each waiter its result. Items that
//! arrive while a batch is in flight wait for it to end and go in the next one, led by one of
//! them. So an item never waits for a timer: alone, it is written at once, as before; under
//! load, a transaction carries as many items as arrived during the previous one. At a site
//! far from the catalog, where a transaction costs several round trips whatever its size, that
//! turns one transaction per copy into one per batch of copies.
//!
//! A failed write fails every item of its batch, each with the same error (the catalog has
//! already retried it whole while busy or cut off).

use std::sync::{Condvar, Mutex};

/// Items of type `I` written in batches, each giving back an `O`. Only the leader's `write`
/// runs: every submitter must pass one that writes any batch the same way.
pub struct Batcher<I, O> {
    state: Mutex<State<I, O>>,
    done: Condvar,
}

struct State<I, O> {
    /// Items waiting for the next batch, with their tickets.
    waiting: Vec<(u64, I)>,
    /// Results not yet picked up, by ticket.
    results: Vec<(u64, Result<O, String>)>,
    /// A batch is being written.
    writing: bool,
    next_ticket: u64,
}

impl<I, O> Default for Batcher<I, O> {
    fn default() -> Self {
        Batcher {
            state: Mutex::new(State {
                waiting: Vec::new(),
                results: Vec::new(),
                writing: false,
                next_ticket: 0,
            }),
            done: Condvar::new(),
        }
    }
}

impl<I, O> Batcher<I, O> {
    /// Writes `item`, in a batch with whatever other items are waiting, through `write`
    /// (which gets the batch and returns one result per item, in order). Returns this item's
    /// result.
    pub fn submit(
        &self,
        item: I,
        write: impl FnOnce(Vec<I>) -> anyhow::Result<Vec<O>>,
    ) -> anyhow::Result<O> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push((ticket, item));
        // A submitter leads at most one batch, the one that takes its own item.
        let mut write = Some(write);
        loop {
            if let Some(i) = st.results.iter().position(|(t, _)| *t == ticket) {
                let (_, result) = st.results.swap_remove(i);
                return result.map_err(anyhow::Error::msg);
            }
            if !st.writing
                && !st.waiting.is_empty()
                && let Some(write) = write.take()
            {
                // Lead the next batch.
                st.writing = true;
                let batch = std::mem::take(&mut st.waiting);
                drop(st);
                let (tickets, items): (Vec<u64>, Vec<I>) = batch.into_iter().unzip();
                let n = items.len();
                // A panic in `write` must not leave the others waiting for ever.
                let written =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(items)))
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the batch's write panicked")));
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.writing = false;
                match written {
                    Ok(outs) if outs.len() == n => {
                        st.results
                            .extend(tickets.into_iter().zip(outs.into_iter().map(Ok)));
                    }
                    Ok(outs) => {
                        let e = format!("a batch of {n} gave {} results", outs.len());
                        st.results
                            .extend(tickets.into_iter().map(|t| (t, Err(e.clone()))));
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        st.results
                            .extend(tickets.into_iter().map(|t| (t, Err(e.clone()))));
                    }
                }
                self.done.notify_all();
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_item_alone_is_written_at_once() {
        let b = Batcher::<u32, u32>::default();
        assert_eq!(
            b.submit(3, |v| Ok(v.iter().map(|x| x * 2).collect()))
                .unwrap(),
            6
        );
    }

    #[test]
    fn items_arriving_during_a_write_share_the_next_one() {
        let b = Arc::new(Batcher::<u32, u32>::default());
        let writes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (b, writes) = (b.clone(), writes.clone());
                std::thread::spawn(move || {
                    b.submit(i, |v| {
                        writes.fetch_add(1, Ordering::SeqCst);
                        // A slow transaction: the others pile up meanwhile.
                        std::thread::sleep(Duration::from_millis(50));
                        Ok(v.iter().map(|x| x + 100).collect())
                    })
                    .unwrap()
                })
            })
            .collect();
        let mut got: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            (100..116).collect::<Vec<_>>(),
            "each gets its own result"
        );
        let n = writes.load(Ordering::SeqCst);
        assert!(n < 16, "{n} writes for 16 items");
    }

    #[test]
    fn a_failed_write_fails_every_item_of_its_batch() {
        let b = Batcher::<u32, u32>::default();
        let err = b
            .submit(1, |_| Err(anyhow::anyhow!("the catalog said no")))
            .unwrap_err();
        assert!(err.to_string().contains("the catalog said no"));
        assert_eq!(b.submit(2, Ok).unwrap(), 2, "the next batch works");
    }
}
