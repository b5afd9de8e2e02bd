//! FUSE over io_uring (Linux 6.14 and later, with the `fuse` module's `enable_uring` set).
//!
//! The kernel keeps one queue of requests per CPU and hands a request to a buffer registered
//! for the CPU its caller runs on. Each [`Slot`] is one such buffer with a ring of its own,
//! served by one thread kept on that CPU: the caller and the thread that answers it share the
//! CPU, and a request's answer and the fetch of the next request are one submission. On a
//! machine where waking a thread on another CPU is slow (a virtual machine whose idle CPUs
//! halt), this is what makes a small request cheap.
//!
//! Each thread has exactly one registered buffer, so a thread busy with a slow request (a read
//! waiting for a remote file) holds no request that another thread could have taken: the
//! kernel gives requests only to buffers that are waiting.
//!
//! Forgets, interrupts and notifications still go through `/dev/fuse`, as do all requests
//! until every queue has a buffer registered.

use std::alloc::Layout;
use std::io;
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::thread::ThreadId;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;

#[path = "uring_wire.rs"]
mod wire;
use wire::*;

/// A page-aligned buffer the kernel reads and writes between our accesses.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> io::Result<Buf> {
        let layout = Layout::from_size_align(len.max(1), page_size::get())
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Buf { ptr, layout })
    }

    fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The threads of one queue (CPU): how many there are, and how many hold a request.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    threads: AtomicUsize,
    held: AtomicUsize,
}

impl Queue {
    pub(crate) fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }
}

/// The most threads a queue grows to. The kernel gives a request only to its caller's CPU's
/// queue: a thread that waits (a read of a file still being fetched from another host) keeps
/// its buffer, and when all of a queue's threads hold one, the queue grows by a thread, so
/// that a program on that CPU is not kept waiting behind it.
pub(crate) const MAX_THREADS: usize = 64;

/// One registered request buffer, its ring, and the queue (CPU) it serves.
pub(crate) struct Slot {
    queue: Arc<Queue>,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// Submissions come from the serving thread and from threads that answer later.
    sq: Mutex<()>,
    header: Buf,
    payload: Buf,
    iov: Box<[libc::iovec; 2]>,
    fd: RawFd,
    qid: u16,
    /// The thread that waits on the ring: an answer made on it is submitted by its next wait.
    /// An answer made on another thread is submitted there (the owner may be the one waiting
    /// for it: a flush answered by the killed-writer check's watchdog). The kernel cancels
    /// what a thread submitted when that thread exits; the owner then registers the buffer
    /// again.
    owner: OnceLock<ThreadId>,
    /// The command to send again should the kernel ask for it (`EAGAIN`, `EINTR`): 0 for the
    /// registration, else the commit of that request.
    last: std::sync::atomic::AtomicU64,
}

// SAFETY: the buffers are written by the kernel while a request is being fetched, read by the
// serving thread once it is, and written by the one answer to that request before it is
// committed; the ring's submission queue is behind `sq`, its completion queue read by the
// serving thread only.
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

impl Drop for Slot {
    /// A slot whose thread ended, or that never got one, serves its queue no more.
    fn drop(&mut self) {
        self.queue.threads.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot(qid {})", self.qid)
    }
}

/// The number of queues the kernel keeps: one per possible CPU.
pub(crate) fn queues() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| cpus_in(&s))
        // SAFETY: sysconf has no preconditions.
        .unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

impl Slot {
    /// A buffer for queue `qid` on the connection `fd`, with room for `payload` bytes.
    pub(crate) fn new(fd: RawFd, qid: u16, queue: Arc<Queue>, payload: usize) -> io::Result<Slot> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4)?;
        let header = Buf::new(HEADER_LEN)?;
        let payload = Buf::new(payload)?;
        let iov = Box::new([
            libc::iovec {
                iov_base: header.ptr.cast(),
                iov_len: HEADER_LEN,
            },
            libc::iovec {
                iov_base: payload.ptr.cast(),
                iov_len: payload.len(),
            },
        ]);
        queue.threads.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            queue,
            ring,
            sq: Mutex::new(()),
            header,
            payload,
            iov,
            fd,
            qid,
            owner: OnceLock::new(),
            last: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub(crate) fn qid(&self) -> u16 {
        self.qid
    }

    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    pub(crate) fn payload_len(&self) -> usize {
        self.payload.len()
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    fn command(&self, op: u32, commit_id: u64) -> squeue::Entry128 {
        let mut cmd = [0u8; 80];
        // struct fuse_uring_cmd_req: flags, commit_id, qid.
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut op = opcode::UringCmd80::new(types::Fd(self.fd), op).cmd(cmd);
        if commit_id == 0 {
            op = op.addr(Some(self.iov.as_ptr() as u64));
        }
        let sqe = op.build().user_data(commit_id);
        if commit_id != 0 {
            return sqe;
        }
        // The registration names two iovecs (header, payload) in `len`, which the builder
        // does not set: `len` is the u32 at offset 24 of the SQE.
        // SAFETY: Entry128 is a repr(C) 128-byte SQE.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: as above.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }

    fn push(&self, op: u32, commit_id: u64) -> io::Result<()> {
        self.last.store(commit_id, Ordering::Relaxed);
        self.push_entry(self.command(op, commit_id))
    }

    fn push_entry(&self, sqe: squeue::Entry128) -> io::Result<()> {
        let _g = self.sq.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `sq` makes this the only submission queue in use.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: the SQE points at `iov` and the buffers, which live as long as the slot,
        // and the slot outlives the ring's use (its thread holds it).
        unsafe { sq.push(&sqe) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        sq.sync();
        Ok(())
    }

    fn on_owner(&self) -> bool {
        self.owner.get() == Some(&std::thread::current().id())
    }

    /// Answers request `commit_id` with `bufs` (a `fuse_out_header`, then the reply's data)
    /// and fetches this slot's next request.
    pub(crate) fn reply(&self, commit_id: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let mut out = [0u8; OUT_HEADER_LEN];
        // SAFETY: the payload buffer, which only this answer writes now.
        let payload =
            unsafe { std::slice::from_raw_parts_mut(self.payload.ptr, self.payload.len()) };
        let len = pack(bufs, &mut out, payload).unwrap_or_else(|| {
            log::error!(
                "an answer of more than {} bytes cannot go through io_uring",
                payload.len()
            );
            out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            0
        });
        // SAFETY: the header buffer, which only this answer writes now.
        let header = unsafe { std::slice::from_raw_parts_mut(self.header.ptr, HEADER_LEN) };
        header[..OUT_HEADER_LEN].copy_from_slice(&out);
        header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        self.push(COMMIT_AND_FETCH, commit_id)?;
        self.queue.held.fetch_sub(1, Ordering::Relaxed);
        if !self.on_owner() {
            self.ring.submitter().submit()?;
        }
        Ok(())
    }

    /// Answers request `commit_id` with error `errno` and fetches the next.
    pub(crate) fn fail(&self, commit_id: u64, errno: i32) -> io::Result<()> {
        let mut out = [0u8; OUT_HEADER_LEN];
        out[..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
        out[4..8].copy_from_slice(&(-errno).to_ne_bytes());
        out[8..].copy_from_slice(&commit_id.to_ne_bytes());
        self.reply(commit_id, &[IoSlice::new(&out)])
    }

    /// Serves this slot on the calling thread until the connection ends: registers the buffer,
    /// then hands each request (rebuilt as `/dev/fuse` would have delivered it) and its commit
    /// id to `dispatch`, which answers it through [`Slot::reply`] (now or later).
    ///
    /// `grow` is called when every thread of this slot's queue holds a request.
    pub(crate) fn serve(
        &self,
        grow: impl Fn(),
        mut dispatch: impl FnMut(&[u8], u64) -> bool,
    ) -> io::Result<()> {
        let _ = self.owner.set(std::thread::current().id());
        pin_to_cpu(usize::from(self.qid));
        self.push(REGISTER, 0)?;
        // Aligned for the request parser.
        let mut buf = vec![0u64; (IN_HEADER_LEN + OP_IN_LEN + self.payload.len()).div_ceil(8)];
        loop {
            match self.ring.submitter().submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            // SAFETY: only this thread reads the completion queue.
            let cqe = unsafe { self.ring.completion_shared() }.next();
            let Some(cqe) = cqe else { continue };
            let res = cqe.result();
            if res < 0 {
                match -res {
                    libc::EAGAIN | libc::EINTR => {
                        let last = self.last.load(Ordering::Relaxed);
                        let op = if last == 0 {
                            REGISTER
                        } else {
                            COMMIT_AND_FETCH
                        };
                        self.push(op, last)?;
                        continue;
                    }
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ECANCELED => {
                        // The connection ended, or the thread that submitted the last commit
                        // exited (which cancels it): a registration tells which.
                        if self.last.load(Ordering::Relaxed) == 0 {
                            return Ok(());
                        }
                        self.push(REGISTER, 0)?;
                        continue;
                    }
                    e => return Err(io::Error::from_raw_os_error(e)),
                }
            }
            // SAFETY: the kernel has filled the buffers and waits for our commit.
            let (header, payload) = unsafe {
                (
                    std::slice::from_raw_parts(self.header.ptr, HEADER_LEN),
                    std::slice::from_raw_parts(self.payload.ptr, self.payload.len()),
                )
            };
            // SAFETY: `buf`'s u64s as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8)
            };
            let (len, commit_id) = match unpack(header, payload, bytes) {
                Ok(r) => r,
                Err(e) => {
                    // Answered EIO, so that the buffer takes requests again.
                    log::error!("{e}");
                    let id = u64::from_ne_bytes(
                        header[ENT_COMMIT_ID..ENT_COMMIT_ID + 8].try_into().unwrap(),
                    );
                    self.queue.held.fetch_add(1, Ordering::Relaxed);
                    self.fail(id, libc::EIO)?;
                    continue;
                }
            };
            let held = self.queue.held.fetch_add(1, Ordering::Relaxed) + 1;
            if held >= self.queue.threads.load(Ordering::Relaxed) {
                grow();
            }
            if !dispatch(&bytes[..len], commit_id) {
                return Ok(());
            }
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET on a valid set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is valid for its size.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        // A CPU the kernel could bring up but has not (its queue gets no requests till then).
        log::debug!(
            "could not keep the io_uring thread of CPU {cpu} on it: {}",
            io::Error::last_os_error()
        );
    }
}
