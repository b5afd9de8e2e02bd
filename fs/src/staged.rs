//! A file being written through the mount: its bytes go to a backing file on the write node
//! while their md5 is computed, as long as the writes come in order from byte 0 (what `cp`,
//! `rsync` and `dd` do; writes a little out of order are held back until their turn). The
//! first MiB is hashed on the writer's thread, the rest on a thread of the file's own. A write
//! before the bytes hashed so far drops the inline hash, and the file is read back once at
//! close instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use cairn_catalog::md5::Hasher;
use cairn_syncd::copyfile;

/// Bytes written between two writeback kicks: the final fsync then has little left to do.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Bytes of writes that arrived ahead of their turn (the mount's threads handle one file's
/// writes concurrently, so they come slightly out of order) held for the inline hash; beyond
/// this the file is hashed at close instead.
const REORDER_LIMIT: usize = 64 << 20;

/// The md5 thread of one file.
struct HashPipe {
    tx: SyncSender<Vec<u8>>,
    thread: JoinHandle<Hasher>,
}

/// Bytes hashed on the writer's own thread before the md5 moves to a thread of its own: small
/// files (most of a `cp -r`) cost no thread at all.
const THREAD_AFTER: u64 = 1 << 20;

/// Where a file's inline md5 is computed.
enum Inline {
    Here(Hasher),
    Thread(HashPipe),
}

impl Inline {
    fn update(&mut self, chunk: &[u8]) -> bool {
        match self {
            Inline::Here(h) => {
                h.update(chunk);
                if h.len() > THREAD_AFTER {
                    match HashPipe::new(std::mem::take(h)) {
                        Ok(p) => *self = Inline::Thread(p),
                        Err(_) => return false,
                    }
                }
                true
            }
            Inline::Thread(p) => p.tx.send(chunk.to_vec()).is_ok(),
        }
    }

    fn finish(self) -> Option<Hasher> {
        match self {
            Inline::Here(h) => Some(h),
            Inline::Thread(p) => p.finish(),
        }
    }
}

impl HashPipe {
    /// Goes on from `h`, the md5 of the bytes so far.
    fn new(h: Hasher) -> io::Result<HashPipe> {
        // Enough queued chunks that the writer rarely waits for the hasher.
        let (tx, rx) = sync_channel::<Vec<u8>>(64);
        let thread = std::thread::Builder::new()
            .name("md5".into())
            .spawn(move || {
                let mut h = h;
                for chunk in rx {
                    h.update(&chunk);
                }
                h
            })?;
        Ok(HashPipe { tx, thread })
    }

    fn finish(self) -> Option<Hasher> {
        drop(self.tx);
        self.thread.join().ok()
    }
}

/// The writing side of a staged or local file.
pub struct Writer {
    pub file: File,
    pipe: Option<Inline>,
    /// End of the bytes hashed so far; a write before it ends inline hashing.
    next: u64,
    /// Writes beyond `next`, waiting for the gap before them to be filled.
    ahead: std::collections::BTreeMap<u64, Vec<u8>>,
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
            pipe,
            next: 0,
            ahead: Default::default(),
            ahead_bytes: 0,
            kicked: 0,
            flusher: None,
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(data, offset)?;
        if self.pipe.is_some() {
            if offset == self.next {
                self.hash(data);
                while let Some(chunk) = self.ahead.remove(&self.next) {
                    self.ahead_bytes -= chunk.len();
                    self.hash(&chunk);
                }
            } else if offset > self.next
                && self.ahead_bytes + data.len() <= REORDER_LIMIT
                && !self.ahead.contains_key(&offset)
            {
                self.ahead_bytes += data.len();
                self.ahead.insert(offset, data.to_vec());
            } else {
                self.drop_inline();
            }
        }
        let end = offset + data.len() as u64;
        if end >= self.kicked + WRITEBACK_EVERY {
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
        Ok(data.len())
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
    fn hash(&mut self, chunk: &[u8]) {
        self.next += chunk.len() as u64;
        let ok = self.pipe.as_mut().is_some_and(|p| p.update(chunk));
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

    /// Size and md5 of the whole file: the inline hash when it covers every byte, else the
    /// file read back.
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
