//! A file being written through the mount: its bytes go to a backing file on the write node
//! while their md5 is computed, as long as the writes come in order from byte 0 (what `cp`,
//! `rsync` and `dd` do; writes a little out of order are held back until their turn). The
//! first MiB is hashed on the writer's thread, the rest on a thread of the file's own. A write
//! before the bytes hashed so far drops the inline hash, and the file is read back once at
//! close instead.
//!
//! Writes past the first MiB and aligned to 4 KiB (all but the last of a `cp`) go to the disk
//! with O_DIRECT from a buffer that is then handed to the md5 thread and reused: no page cache
//! is filled for them, so the import's sync has little left to write and no memory is taken
//! from the host.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use cairn_catalog::md5::Hasher;
use cairn_node::copyfile;

/// Bytes written through the page cache between two writeback kicks: the final fsync then
/// has little left to do.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Bytes of writes that arrived ahead of their turn (the mount's threads handle one file's
/// writes concurrently, so they come slightly out of order) held for the inline hash; beyond
/// this the file is hashed at close instead.
const REORDER_LIMIT: usize = 64 << 20;

/// Bytes hashed on the writer's own thread before the md5 moves to a thread of its own: small
/// files (most of a `cp -r`) cost no thread at all.
const THREAD_AFTER: u64 = 1 << 20;

/// Chunks queued for the md5 thread: enough that the writer rarely waits for it.
const QUEUED: usize = 64;

/// Offsets, lengths and buffers of direct writes are multiples of this (the largest logical
/// block size of common disks).
const ALIGN: usize = 4096;

/// Bytes before this offset go through the page cache: small files (most of a `cp -r`) are
/// then synced all at once by their import, cheaper than a disk write each.
const DIRECT_FROM: u64 = 1 << 20;

/// Size of the reused buffers (the mount's largest write).
const BUF: usize = 1 << 20;

/// Bytes in memory that start on an [`ALIGN`] boundary, as O_DIRECT needs.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn with_capacity(cap: usize) -> Aligned {
        let buf = vec![0u8; cap + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Aligned { buf, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.buf.len() - ALIGN
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// Buffers for chunks on their way to the md5 thread, which sends them back when done.
#[derive(Default)]
struct Pool {
    free: Vec<Aligned>,
    back: Option<Receiver<Aligned>>,
}

impl Pool {
    /// A buffer holding a copy of `data`.
    fn copy_of(&mut self, data: &[u8]) -> Aligned {
        let reused = self
            .back
            .as_ref()
            .and_then(|b| b.try_recv().ok())
            .or_else(|| self.free.pop())
            .filter(|b| b.capacity() >= data.len());
        let mut b = reused.unwrap_or_else(|| Aligned::with_capacity(data.len().max(BUF)));
        b.buf[b.start..b.start + data.len()].copy_from_slice(data);
        b.len = data.len();
        b
    }

    fn put(&mut self, b: Aligned) {
        if self.free.len() < 4 {
            self.free.push(b);
        }
    }
}

/// The md5 thread of one file.
struct HashPipe {
    tx: SyncSender<Aligned>,
    thread: JoinHandle<Hasher>,
}

/// Where a file's inline md5 is computed.
enum Inline {
    Here(Hasher),
    Thread(HashPipe),
}

impl HashPipe {
    /// Goes on from `h`, the md5 of the bytes so far; hashed buffers go back to `pool`.
    fn new(h: Hasher, pool: &mut Pool) -> io::Result<HashPipe> {
        let (tx, rx) = sync_channel::<Aligned>(QUEUED);
        let (back_tx, back_rx) = channel::<Aligned>();
        let thread = std::thread::Builder::new()
            .name("md5".into())
            .spawn(move || {
                let mut h = h;
                for chunk in rx {
                    h.update(chunk.bytes());
                    let _ = back_tx.send(chunk);
                }
                h
            })?;
        pool.back = Some(back_rx);
        Ok(HashPipe { tx, thread })
    }

    fn finish(self) -> Option<Hasher> {
        drop(self.tx);
        self.thread.join().ok()
    }
}

/// Bytes for the hasher: borrowed from the request, or already in a buffer of the pool.
enum Chunk<'a> {
    Borrowed(&'a [u8]),
    Owned(Aligned),
}

impl Chunk<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Borrowed(b) => b,
            Chunk::Owned(a) => a.bytes(),
        }
    }

    fn into_owned(self, pool: &mut Pool) -> Aligned {
        match self {
            Chunk::Borrowed(b) => pool.copy_of(b),
            Chunk::Owned(a) => a,
        }
    }
}

/// Whether a writer's aligned writes go to the disk directly.
enum Direct {
    Untried,
    Open(File),
    No,
}

/// The writing side of a staged or local file.
pub struct Writer {
    pub file: File,
    /// The same file opened with O_DIRECT, for aligned writes: opened at the first write that
    /// could go direct (most files are small, and never do); never where the filesystem has
    /// no direct I/O (tmpfs) or refused it once.
    direct: Direct,
    pipe: Option<Inline>,
    pool: Pool,
    /// End of the bytes hashed so far; a write before it ends inline hashing.
    next: u64,
    /// Writes beyond `next`, waiting for the gap before them to be filled.
    ahead: BTreeMap<u64, Aligned>,
    ahead_bytes: usize,
    /// Where writeback was last started.
    kicked: u64,
    /// Starts writeback of the ranges it is sent, off the writer's thread: starting it can
    /// block while the disk's queue is full, and the writer should not wait for the disk.
    flusher: Option<SyncSender<(u64, u64)>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("inline_md5", &self.pipe.is_some())
            .field("direct", &matches!(self.direct, Direct::Open(_)))
            .field("next", &self.next)
            .finish()
    }
}

impl Writer {
    /// A writer for `file`, which holds `len` bytes now; inline hashing only starts on an
    /// empty file.
    pub fn new(file: File, len: u64) -> Writer {
        let pipe = (len == 0).then(|| Inline::Here(Hasher::new()));
        Writer {
            file,
            direct: Direct::Untried,
            pipe,
            pool: Pool::default(),
            next: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            kicked: 0,
            flusher: None,
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<usize> {
        let chunk = match self.write_direct(offset, data)? {
            Some(buf) => Chunk::Owned(buf),
            None => {
                cairn_node::copyfile::write_all_at(&self.file, data, offset)?;
                self.kick(offset + data.len() as u64);
                Chunk::Borrowed(data)
            }
        };
        if self.pipe.is_some() {
            if offset == self.next {
                self.hash(chunk);
                while let Some(b) = self.ahead.remove(&self.next) {
                    self.ahead_bytes -= b.len;
                    self.hash(Chunk::Owned(b));
                }
            } else if offset > self.next
                && self.ahead_bytes + data.len() <= REORDER_LIMIT
                && !self.ahead.contains_key(&offset)
            {
                self.ahead_bytes += data.len();
                let b = chunk.into_owned(&mut self.pool);
                self.ahead.insert(offset, b);
            } else {
                self.drop_inline();
                if let Chunk::Owned(b) = chunk {
                    self.pool.put(b);
                }
            }
        } else if let Chunk::Owned(b) = chunk {
            // Not hashed inline (any more): the buffer serves the next direct write.
            self.pool.put(b);
        }
        Ok(data.len())
    }

    /// The O_DIRECT twin of the file, opened the first time it is asked for.
    fn direct(&mut self) -> Option<&File> {
        if let Direct::Untried = self.direct {
            self.direct = on_local_disk(&self.file)
                .then(|| {
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                        .ok()
                })
                .flatten()
                .map_or(Direct::No, Direct::Open);
        }
        match &self.direct {
            Direct::Open(f) => Some(f),
            Direct::Untried | Direct::No => None,
        }
    }

    #[cfg(test)]
    fn goes_direct(&mut self) -> bool {
        self.direct().is_some()
    }

    /// Writes an aligned chunk with O_DIRECT from a pool buffer, which it returns for the
    /// hasher. `None`: this write goes through the page cache instead.
    fn write_direct(&mut self, offset: u64, data: &[u8]) -> io::Result<Option<Aligned>> {
        let aligned = offset >= DIRECT_FROM
            && offset.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN);
        if !aligned || data.is_empty() {
            return Ok(None);
        }
        if self.direct().is_none() {
            return Ok(None);
        }
        let buf = self.pool.copy_of(data);
        let Direct::Open(direct) = &self.direct else {
            unreachable!("opened just above")
        };
        match direct.write_all_at(buf.bytes(), offset) {
            Ok(()) => Ok(Some(buf)),
            // This filesystem wants another alignment, or no direct writes after all.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = Direct::No;
                self.pool.put(buf);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts writeback of what went through the page cache, every [`WRITEBACK_EVERY`].
    fn kick(&mut self, end: u64) {
        if end < self.kicked + WRITEBACK_EVERY {
            return;
        }
        if self.flusher.is_none() {
            self.flusher = self.file.try_clone().ok().and_then(flusher);
        }
        match &self.flusher {
            // A full queue means the disk is behind anyway: skip this kick.
            Some(f) => {
                let _ = f.try_send((self.kicked, end - self.kicked));
            }
            None => start_writeback(&self.file, self.kicked, end - self.kicked),
        }
        self.kicked = end;
    }

    /// The file was truncated to `len`: inline hashing survives only a truncation to 0 of a
    /// file whose bytes were all hashed in order so far.
    pub fn truncated(&mut self, len: u64) {
        if len == 0 {
            self.drop_inline();
            self.pipe = Some(Inline::Here(Hasher::new()));
            self.next = 0;
            self.kicked = 0;
        } else if len != self.next || !self.ahead.is_empty() {
            self.drop_inline();
        }
    }

    /// Hashes the next bytes in order.
    fn hash(&mut self, chunk: Chunk) {
        self.next += chunk.bytes().len() as u64;
        let ok = match self.pipe.as_mut() {
            None => false,
            Some(Inline::Here(h)) => {
                h.update(chunk.bytes());
                if let Chunk::Owned(b) = chunk {
                    self.pool.put(b);
                }
                if h.len() > THREAD_AFTER {
                    match HashPipe::new(std::mem::take(h), &mut self.pool) {
                        Ok(p) => {
                            self.pipe = Some(Inline::Thread(p));
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    true
                }
            }
            Some(Inline::Thread(p)) => {
                let b = chunk.into_owned(&mut self.pool);
                p.tx.send(b).is_ok()
            }
        };
        if !ok {
            self.drop_inline();
        }
    }

    fn drop_inline(&mut self) {
        if let Some(p) = self.pipe.take() {
            let _ = p.finish();
        }
        self.ahead.clear();
        self.ahead_bytes = 0;
    }

    /// Size and md5 of the whole file when the inline hash covers every byte; `None` when the
    /// file must be read back for its md5 (writes out of order, or a file reopened).
    pub fn finish_inline(mut self) -> io::Result<Option<(u64, String)>> {
        let len = self.file.metadata()?.len();
        let complete = self.ahead.is_empty();
        let inline = self
            .pipe
            .take()
            .and_then(Inline::finish)
            .filter(|_| complete);
        Ok(match inline {
            Some(h) if h.len() == len && self.next == len => Some((len, h.finish_hex())),
            _ => None,
        })
    }

    /// Size and md5 of the whole file: the inline hash when it covers every byte, else the
    /// file read back.
    #[cfg(test)]
    pub fn finish(mut self, cancel: &AtomicBool) -> io::Result<(File, u64, String)> {
        let len = self.file.metadata()?.len();
        let complete = self.ahead.is_empty();
        let inline = self
            .pipe
            .take()
            .and_then(Inline::finish)
            .filter(|_| complete);
        let (size, md5) = match inline {
            Some(h) if h.len() == len && self.next == len => (len, h.finish_hex()),
            _ => {
                tracing::debug!("Writes were not in order: reading the file back for its md5.");
                hash_file(&self.file, cancel)?
            }
        };
        Ok((self.file, size, md5))
    }
}

impl Inline {
    fn finish(self) -> Option<Hasher> {
        match self {
            Inline::Here(h) => Some(h),
            Inline::Thread(p) => p.finish(),
        }
    }
}

/// Whether `file` is on a local disk filesystem (ext4, XFS, btrfs), where a direct write goes
/// straight to the device. Elsewhere (NFS, tmpfs, FUSE) writes keep the page cache, which lets
/// a network filesystem have several writes in flight.
fn on_local_disk(file: &File) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    // SAFETY: fstatfs writes into the zeroed struct we pass; the descriptor is valid while
    // `file` is borrowed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    let t = st.f_type as i64;
    [EXT4, XFS, BTRFS].contains(&t)
}

/// Size and md5 of an open file, read from its start.
pub fn hash_file(file: &File, cancel: &AtomicBool) -> io::Result<(u64, String)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    loop {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok((h.len(), h.finish_hex()))
}

/// Starts writeback of a range without waiting for it ([`copyfile::start_writeback`]).
fn start_writeback(file: &File, offset: u64, len: u64) {
    if let Ok(len) = usize::try_from(len) {
        copyfile::start_writeback(file, offset, len);
    }
}

/// A thread that starts writeback of the ranges sent to it, until the sender is dropped.
fn flusher(file: File) -> Option<SyncSender<(u64, u64)>> {
    let (tx, rx) = sync_channel::<(u64, u64)>(16);
    std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || {
            for (offset, len) in rx {
                start_writeback(&file, offset, len);
            }
        })
        .ok()?;
    Some(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(bytes: &[u8]) -> String {
        cairn_catalog::md5::md5_hex(bytes)
    }

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, Writer::new(f, 0))
    }

    #[test]
    fn sequential_writes_are_hashed_inline() {
        let (_d, mut w) = writer();
        // Past THREAD_AFTER, so the md5 moves to its own thread on the way.
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        for (i, chunk) in data.chunks(65536).enumerate() {
            w.write(i as u64 * 65536, chunk).unwrap();
        }
        assert!(
            matches!(w.pipe, Some(Inline::Thread(_))),
            "in-order writes keep the inline hash, on a thread once the file is large"
        );
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (data.len() as u64, md5(&data)));
    }

    /// Whether `dir` is on ext4, XFS or btrfs (where writers go direct), by `df`'s word.
    fn has_direct_io(dir: &std::path::Path) -> bool {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir)
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout);
        ["ext2/ext3", "xfs", "btrfs"].contains(&t.trim())
    }

    #[test]
    fn aligned_writes_go_direct_and_mixed_writes_keep_every_byte() {
        let (d, mut w) = writer();
        assert_eq!(w.goes_direct(), has_direct_io(d.path()), "{w:?}");
        let data: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i * 31 + i / 777) as u8)
            .collect();
        let mut chunks: Vec<(u64, &[u8])> = Vec::new();
        // 1 MiB aligned chunks, a few odd-sized ones in between, and the 2nd and 3rd swapped.
        let mut off = 0;
        for len in [1 << 20, 1 << 20, 1 << 20, 1000, 3096, 1 << 20] {
            chunks.push((off, &data[off as usize..off as usize + len]));
            off += len as u64;
        }
        chunks.push((off, &data[off as usize..]));
        chunks.swap(1, 2);
        for (off, c) in &chunks {
            w.write(*off, c).unwrap();
        }
        // A rewrite of bytes written directly, through the page cache: the file has the new
        // bytes and the md5 is read back.
        let mut want = data.clone();
        want[8192..8200].copy_from_slice(b"REWRITE!");
        w.write(8192, b"REWRITE!").unwrap();
        let (f, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (want.len() as u64, md5(&want)));
        let mut back = vec![0u8; want.len()];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back == want, "the file holds exactly what was written");
    }

    #[test]
    fn files_on_tmpfs_keep_the_page_cache() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let mut w = Writer::new(f, 0);
        assert!(!w.goes_direct(), "{w:?}");
    }

    #[test]
    fn aligned_writes_in_order_are_hashed_inline() {
        let (_d, mut w) = writer();
        let data: Vec<u8> = (0..(3 << 20) + 12345u32)
            .map(|i| (i ^ (i >> 9)) as u8)
            .collect();
        for (i, c) in data.chunks(1 << 20).enumerate() {
            w.write((i << 20) as u64, c).unwrap();
        }
        assert!(matches!(w.pipe, Some(Inline::Thread(_))), "{w:?}");
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (data.len() as u64, md5(&data)));
    }

    #[test]
    fn writes_slightly_out_of_order_are_still_hashed_inline() {
        let (_d, mut w) = writer();
        w.write(5, b"world").unwrap();
        w.write(10, b"!").unwrap();
        w.write(0, b"hello").unwrap();
        assert!(w.pipe.is_some());
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (11, md5(b"helloworld!")));
    }

    #[test]
    fn a_write_before_the_hashed_bytes_falls_back_to_reading() {
        let (_d, mut w) = writer();
        w.write(0, b"hello").unwrap();
        w.write(0, b"J").unwrap();
        assert!(w.pipe.is_none());
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (5, md5(b"Jello")));
    }

    #[test]
    fn a_gap_left_at_close_is_hashed_from_the_file() {
        let (_d, mut w) = writer();
        w.write(5, b"world").unwrap();
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (10, md5(b"\0\0\0\0\0world")));
    }

    #[test]
    fn writes_in_reverse_order_give_the_right_md5() {
        let (_d, mut w) = writer();
        w.write(5, b"world").unwrap();
        w.write(0, b"hello").unwrap();
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (10, md5(b"helloworld")));
    }

    #[test]
    fn rewriting_from_zero_after_truncation_is_hashed_inline() {
        let (_d, mut w) = writer();
        w.write(0, b"first try").unwrap();
        w.file.set_len(0).unwrap();
        w.truncated(0);
        w.write(0, b"second").unwrap();
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (6, md5(b"second")));
    }

    #[test]
    fn truncation_shorter_than_written_falls_back_to_reading() {
        let (_d, mut w) = writer();
        w.write(0, b"abcdef").unwrap();
        w.file.set_len(3).unwrap();
        w.truncated(3);
        let (_, size, sum) = w.finish(&AtomicBool::new(false)).unwrap();
        assert_eq!((size, sum), (3, md5(b"abc")));
    }
}
