//! Copying a file into a node: read once, hash while copying, rename into place.
//!
//! # The invariant
//!
//! A copy arrives under a temporary name in the node's `.cairn/tmp/`, its md5 computed while it
//! is written, is checked against the catalog, fsynced, renamed into place, and only then
//! recorded (DESIGN.md, invariant 2). This module provides the file-system half of that; the
//! caller (cairnd's copy task) runs the steps in order:
//!
//! 1. [`copy_with_md5`] (or [`resume_from_reader`] for a transfer) writes the temporary file and
//!    returns the md5 of the bytes it read, in the same pass. Neither fsyncs the file.
//! 2. The caller compares that md5 with the catalog's.
//! 3. The caller makes the data durable: [`sync_file`] for one copy, or [`sync_fs`] once for a
//!    batch.
//! 4. [`install`] renames the temporary file to its archive name and fsyncs the directory, so
//!    the name is durable before the caller records the copy ([`install_deferred`] renames
//!    without syncing, for a batch followed by one [`sync_fs`]; a batch's files are written
//!    unnamed by [`write_unnamed`] and named by [`install_new`], a link instead of a rename).
//!
//! A crash before the rename leaves only a file in `.cairn/tmp/` (nothing, for an unnamed
//! one); the rename itself is atomic,
//! and, with the caller syncing first, it only ever names a complete, fsynced file. So an
//! archive name holds no copy or a complete one, never a partial file.
//!
//! # The pipeline
//!
//! MD5 is serial and slow (about 0.7 GB/s on one core), and fsync waits for the disk, so a naive
//! read-hash-write loop followed by fsync costs the hash time *plus* the I/O and writeback time.
//! Instead two threads share a small pool of `CHUNK`-sized (8 MiB) buffers, so that one core does
//! nothing but hash while the other moves bytes:
//!
//! ```text
//!  I/O thread                                              calling thread
//!  read chunk k (source: fadvise SEQUENTIAL)
//!  pwrite chunk k (destination)
//!  sync_file_range(WRITE) chunk k
//!  wait for chunk k-2 on disk, drop it from the cache
//!        │
//!        └───────────▶ (buffer k, len) ──────────────▶ check cancel, hash, progress
//!  next buffer ◀────────── buffer returned ◀─────────────┘
//! ```
//!
//! The I/O thread runs ahead of the hashing by at most `BUFFERS` (4) chunks.
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` starts writeback of each chunk as soon as it is
//! written, so the disk works while later chunks are hashed; chunks two behind are waited for and
//! dropped from the page cache, so the final fsync has almost nothing left to wait for and a copy
//! holds at most a few chunks of dirty or cached pages. The md5 is of the very buffers that were
//! written.
//!
//! [`resume_from_reader`] turns this around: its reader (a network stream) and the progress
//! callback need not be `Send`, so the calling thread reads, a second thread hashes and a third
//! writes (the hash, the slowest stage, alone on its thread). [`md5_of`] is the pipeline without
//! a destination. Files smaller than one chunk are handled on the calling thread alone (by
//! [`copy_with_md5`] and [`md5_of`]).
//!
//! Cancellation is checked between chunks and reported as [`io::ErrorKind::Interrupted`]; the
//! temporary file is left for the caller to remove.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};
use std::thread;

use cairn_catalog::md5::Hasher;

/// Size of one pipeline buffer. Big enough that per-chunk costs (syscalls, channel hand-off,
/// `sync_file_range`) vanish, small enough that [`BUFFERS`] of them stay cheap per worker.
const CHUNK: usize = 8 << 20;

/// How far the writeback of a destination may trail its writes: older ranges are waited for
/// and dropped from the page cache (see [`settle`]).
const UNSETTLED: u64 = 2 * CHUNK as u64;

/// Buffers per pipeline: one being hashed, one being read or written, two queued between.
const BUFFERS: usize = 4;

/// Writes into the page cache go in pieces of at most this many bytes. The kernel backs one
/// large write with large folios (a 1 MiB write with 1 MiB folios), and those are slow to come
/// by when free memory is fragmented or has been handed back to a hypervisor: on the project's
/// machine, new files written 1 MiB per call went at 250–330 MB/s, 256 KiB per call at about
/// 3 GB/s.
pub const WRITE_PIECE: usize = 256 << 10;

/// Writes all of `buf` into `file` at `offset`, in pieces of at most [`WRITE_PIECE`].
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut at = offset;
    for piece in buf.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// Creates `path` (truncating what is there) holding `bytes`, written in pieces of at most
/// [`WRITE_PIECE`]; returns it open (for [`drop_cached`] once synced). Not synced.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let file = File::create(path)?;
    write_all_at(&file, bytes, 0)?;
    Ok(file)
}

/// A complete new file not yet under its archive name (see [`write_unnamed`]).
#[derive(Debug)]
pub struct NewFile {
    /// The file, open for writing.
    pub file: File,
    /// Its temporary name, on a file system without unnamed files; `None`: unnamed.
    pub temp: Option<PathBuf>,
}

/// Writes `bytes` into a new file on the file system of `dir`, returned open and not synced.
/// Unnamed (`O_TMPFILE` in `dir`) where the file system allows it: installing it then adds one
/// directory entry ([`install_new`]), where a named temporary file costs three (its creation,
/// and the rename's removal and addition: on this project's ext4, 30% of the receiving
/// cairnd's CPU in a sync of 4 KiB files). A crash leaves nothing to tidy: the file system
/// frees an unnamed file. Elsewhere (no `O_TMPFILE`, or no `/proc/self/fd` to link it by), the file
/// is created at the path `named` makes (its directory made first), as [`write_new`] does.
pub fn write_unnamed(
    dir: &Path,
    named: impl FnOnce() -> io::Result<PathBuf>,
    bytes: &[u8],
) -> io::Result<NewFile> {
    write_unnamed_in(dir, named, bytes, can_link_unnamed())
}

/// [`write_unnamed`], trying an unnamed file only if `unnamed`.
fn write_unnamed_in(
    dir: &Path,
    named: impl FnOnce() -> io::Result<PathBuf>,
    bytes: &[u8],
    unnamed: bool,
) -> io::Result<NewFile> {
    use std::os::unix::fs::OpenOptionsExt;
    if unnamed {
        match OpenOptions::new()
            .write(true)
            .mode(0o666)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) => {
                write_all_at(&file, bytes, 0)?;
                return Ok(NewFile { file, temp: None });
            }
            // No O_TMPFILE on this file system (or kernel): a named file.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let path = named()?;
    let file = write_new(&path, bytes).inspect_err(|_| {
        let _ = fs::remove_file(&path);
    })?;
    Ok(NewFile {
        file,
        temp: Some(path),
    })
}

/// Whether an unnamed file can be given a name: by `/proc/self/fd/N`, which any user may
/// link (`linkat` with `AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH` before Linux 6.10).
fn can_link_unnamed() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// Gives a complete, synced [`NewFile`] its archive name without syncing, for a batch (as
/// [`install_deferred`], whose rename it is for a named one): the parent directories made
/// unless `made` has them. An unnamed file is linked in; over a file already there (a corrupt
/// copy), it is linked at `beside` (a name of this copy's own in the same file system's
/// `.cairn/tmp/`; whatever is there is replaced) and renamed over it, so that the name never
/// goes missing.
pub fn install_new(
    new: &NewFile,
    final_path: &Path,
    beside: &Path,
    made: &mut HashSet<PathBuf>,
) -> io::Result<()> {
    if let Some(temp) = &new.temp {
        return install_deferred(temp, final_path, made);
    }
    make_dir_once(final_path.parent(), made)?;
    match link_unnamed(&new.file, final_path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            match fs::remove_file(beside) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            link_unnamed(&new.file, beside)?;
            fs::rename(beside, final_path).inspect_err(|_| {
                let _ = fs::remove_file(beside);
            })
        }
        r => r,
    }
}

/// Names the unnamed `file` `to` (failing if something is there).
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops the pages of `file` from the page cache, once it is on disk (after a [`sync_fs`]): a
/// batch's files are not read again soon, and the next batch's writes then reuse the same page
/// frames, as a copy's do ([`settle`]). On the project's machine a batch of 16 new files of
/// 1 MiB took 54–66 ms to write without this, 4 ms with it. Advice only: only clean pages are
/// dropped, and a failure changes nothing.
pub fn drop_cached(file: &File) {
    // A length of 0: to the end of the file.
    forget_pages(file, 0, 0);
}

/// What [`copy_with_md5`] and [`resume_from_reader`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Size of the destination file.
    pub bytes: u64,
    /// md5 of the destination file's bytes, as 32 lowercase hex digits.
    pub md5: String,
}

/// Copies `src` into `dst` (created new, truncating; normally a path in `.cairn/tmp/`),
/// computing the md5 of the bytes read in the same pass. `dst` is not fsynced: the caller makes
/// it durable before installing it — [`sync_file`] for one copy, [`sync_fs`] for a batch.
///
/// `cancel` is checked between chunks: once set, this returns [`io::ErrorKind::Interrupted`],
/// leaving `dst` for the caller to remove. `progress` is called after each chunk with the number
/// of bytes hashed so far.
pub fn copy_with_md5(
    src: &Path,
    dst: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Copied> {
    let source = File::open(src)?;
    advise_sequential(&source);
    let target = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    let mut hasher = Hasher::new();
    pump_file(&source, Some(Sink::new(&target, 0)), cancel, &mut |chunk| {
        hasher.update(chunk);
        progress(hasher.len());
    })?;
    Ok(Copied {
        bytes: hasher.len(),
        md5: hasher.finish_hex(),
    })
}

/// Appends everything `reader` yields, up to EOF, to the file `dst` (created if missing) after
/// the bytes it already holds: for resuming a transfer. Like [`copy_with_md5`], it does not
/// fsync.
///
/// The md5 covers the whole file: the bytes already in `dst` are read back and hashed first, so
/// a partial file left by an earlier attempt (or damaged by a crash) is never trusted blindly.
/// `progress` gets the size of the file so far, existing bytes included; cancellation works as
/// in [`copy_with_md5`].
pub fn resume_from_reader(
    dst: &Path,
    reader: &mut dyn Read,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Copied> {
    let target = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dst)?;
    advise_sequential(&target);
    let mut hasher = Hasher::new();
    let existing = pump_file(&target, None, cancel, &mut |chunk| {
        hasher.update(chunk);
        progress(hasher.len());
    })?;
    let hasher = pump_reader(
        reader,
        Sink::new(&target, existing),
        cancel,
        hasher,
        &mut |read| progress(existing + read),
    )?;
    Ok(Copied {
        bytes: hasher.len(),
        md5: hasher.finish_hex(),
    })
}

/// The size and md5 (lowercase hex) of the file at `path`, read in big sequential chunks on one
/// thread while this one hashes. Returns [`io::ErrorKind::Interrupted`] once `cancel` is set.
pub fn md5_of(path: &Path, cancel: &AtomicBool) -> io::Result<(u64, String)> {
    let file = File::open(path)?;
    advise_sequential(&file);
    let mut hasher = Hasher::new();
    pump_file(&file, None, cancel, &mut |chunk| hasher.update(chunk))?;
    Ok((hasher.len(), hasher.finish_hex()))
}

/// Makes the data of the file at `path` durable (fsync).
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Makes everything written to the filesystem holding `path` durable at once (`syncfs`): one
/// call for a batch of small copies instead of an fsync per file and per directory.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path)?;
    // SAFETY: syncfs takes a valid open file descriptor and touches no memory of ours.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves a complete temporary file to its archive name without syncing: for a batch, where
/// the caller calls [`sync_fs`] once after all its renames (and keeps `made`, the
/// directories made or found so far).
pub fn install_deferred(
    tmp: &Path,
    final_path: &Path,
    made: &mut HashSet<PathBuf>,
) -> io::Result<()> {
    make_dir_once(final_path.parent(), made)?;
    fs::rename(tmp, final_path)
}

/// Moves a complete, fsynced temporary file to its archive name.
///
/// Creates missing parent directories (fsyncing the parent of each new one), renames `tmp` to
/// `final_path` (replacing an existing file there, such as a corrupt copy), then fsyncs the
/// directory that holds `final_path`, so the new name survives a crash once this returns.
pub fn install(tmp: &Path, final_path: &Path) -> io::Result<()> {
    let parent = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dirs_durably(parent)?;
    fs::rename(tmp, final_path)?;
    sync_dir(parent)
}

/// Makes directory `dir` and its parents, unless `made` has it (those made or found
/// before, by a caller placing many files in a few directories).
pub fn make_dir_once(dir: Option<&Path>, made: &mut HashSet<PathBuf>) -> io::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    if made.contains(dir) {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    made.insert(dir.to_path_buf());
    Ok(())
}

/// Renames `from` to `to`, failing rather than replacing a file already at `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(from.as_os_str().as_bytes())?;
    let b = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes empty directories from `dir` upward, stopping at (and never removing) `stop_at`.
///
/// Stops at the first directory that is not empty. A directory that is already gone is passed
/// over. Returns the directories removed, deepest first, for logging. `dir` must be `stop_at` or
/// lie under it, without `..`, or this fails with [`io::ErrorKind::InvalidInput`] and removes
/// nothing.
pub fn remove_empty_dirs(dir: &Path, stop_at: &Path) -> io::Result<Vec<PathBuf>> {
    if !dir.starts_with(stop_at) || dir.components().any(|c| c == Component::ParentDir) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not under {}", dir.display(), stop_at.display()),
        ));
    }
    let mut removed = Vec::new();
    let mut current = dir;
    while current != stop_at {
        match fs::remove_dir(current) {
            Ok(()) => removed.push(current.to_path_buf()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if is_not_empty(&e) => break,
            Err(e) => return Err(e),
        }
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    Ok(removed)
}

/// Where a pipeline writes: `file`, from `offset` on.
struct Sink<'a> {
    file: &'a File,
    /// Where the next chunk goes.
    offset: u64,
    /// Bytes before this offset that this sink wrote are on disk and out of the page cache.
    settled: u64,
}

impl<'a> Sink<'a> {
    fn new(file: &'a File, offset: u64) -> Self {
        Self {
            file,
            offset,
            settled: offset,
        }
    }

    /// Writes `chunk` at the current offset and starts its writeback; then waits for the
    /// writeback of what lies more than [`UNSETTLED`] bytes behind and drops it from the cache.
    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        write_all_at(self.file, chunk, self.offset)?;
        start_writeback(self.file, self.offset, chunk.len());
        self.offset += chunk.len() as u64;
        let behind = self.offset.saturating_sub(UNSETTLED);
        if behind > self.settled {
            settle(self.file, self.settled, behind - self.settled);
            self.settled = behind;
        }
        Ok(())
    }
}

/// Reads `source` from its current position to EOF, writing each chunk to `sink` (if any) and
/// passing it to `inspect`, in order. Returns the number of bytes read.
///
/// Reading and writing run on a second thread, ahead of `inspect` by at most [`BUFFERS`] chunks;
/// `inspect` and the `cancel` check (before each chunk) run on this one. A source smaller than
/// one chunk is handled on this thread alone. On an error no further chunk is inspected; the
/// first error seen here (cancellation) wins over the I/O thread's.
fn pump_file(
    source: &File,
    mut sink: Option<Sink<'_>>,
    cancel: &AtomicBool,
    inspect: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    check_cancel(cancel)?;
    let size = source.metadata()?.len();
    if size < CHUNK as u64 {
        // One buffer, sized so that a file that did not grow is read in one chunk.
        let mut buffer = vec![0; size as usize + 1];
        let mut total = 0;
        loop {
            check_cancel(cancel)?;
            let len = read_full(&mut &*source, &mut buffer)?;
            if let Some(sink) = &mut sink {
                sink.write(&buffer[..len])?;
            }
            inspect(&buffer[..len]);
            total += len as u64;
            if len < buffer.len() {
                return Ok(total);
            }
            // The file grew since its size was read: go on in full chunks.
            buffer.resize(CHUNK, 0);
        }
    }

    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    thread::scope(|scope| {
        let io = scope.spawn(move || -> io::Result<()> {
            let mut allocated = 0;
            loop {
                let Some(mut buffer) = next_buffer(&free_rx, &mut allocated) else {
                    return Ok(()); // this thread stopped inspecting
                };
                let len = read_full(&mut &*source, &mut buffer)?;
                if let Some(sink) = &mut sink {
                    sink.write(&buffer[..len])?;
                }
                if len == 0 || full_tx.send((buffer, len)).is_err() || len < CHUNK {
                    return Ok(());
                }
            }
        });

        let mut total = 0;
        let inspect_result = (|| -> io::Result<()> {
            for (buffer, len) in &full_rx {
                check_cancel(cancel)?;
                inspect(&buffer[..len]);
                total += len as u64;
                // The I/O thread may have finished; then the buffer is simply dropped.
                let _ = free_tx.send(buffer);
            }
            Ok(())
        })();
        // Hang up so that the I/O thread stops at its next hand-off.
        drop(full_rx);
        drop(free_tx);
        let io_result = join(io);
        inspect_result?;
        io_result?;
        Ok(total)
    })
}

/// Reads `reader` to EOF on this thread; a second thread hashes each chunk into `hasher`, a
/// third writes it to `sink`, in order. Returns the hasher, having seen every byte read.
/// `progress` gets the bytes read so far, on this thread.
///
/// This is [`pump_file`] turned around for readers that cannot move to another thread (a network
/// stream). The hash has a thread of its own: MD5 is the slowest stage, and reading a socket on
/// the same thread made a 1 GiB pull wait for both. Checks `cancel` before each read. The first
/// error (cancellation or reading first, else writing) is returned; after it no more chunks are
/// read or written. A stream that ends within its first chunk (a small file) is hashed and
/// written on this thread: starting two threads cost more than such a file.
fn pump_reader(
    reader: &mut dyn Read,
    mut sink: Sink<'_>,
    cancel: &AtomicBool,
    mut hasher: Hasher,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Hasher> {
    check_cancel(cancel)?;
    let mut first = vec![0; CHUNK];
    let len = read_full(reader, &mut first)?;
    progress(len as u64);
    if len < CHUNK {
        hasher.update(&first[..len]);
        sink.write(&first[..len])?;
        return Ok(hasher);
    }
    let (read_tx, read_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (hashed_tx, hashed_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    // The first chunk, read above, goes first.
    read_tx
        .send((first, len))
        .expect("the hashing thread's queue has room");
    thread::scope(|scope| {
        let hashing = scope.spawn(move || -> Hasher {
            for (buffer, len) in read_rx {
                hasher.update(&buffer[..len]);
                if hashed_tx.send((buffer, len)).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            hasher
        });
        let writer = scope.spawn(move || -> io::Result<()> {
            for (buffer, len) in hashed_rx {
                sink.write(&buffer[..len])?;
                // The reader may have stopped; then the buffer is simply dropped.
                let _ = free_tx.send(buffer);
            }
            Ok(())
        });

        let read_result = (|| -> io::Result<()> {
            let mut allocated = 1;
            let mut total = len as u64;
            loop {
                check_cancel(cancel)?;
                let Some(mut buffer) = next_buffer(&free_rx, &mut allocated) else {
                    return Ok(()); // the writer failed; its error is reported below
                };
                let len = read_full(reader, &mut buffer)?;
                if len == 0 {
                    return Ok(());
                }
                total += len as u64;
                progress(total);
                if read_tx.send((buffer, len)).is_err() || len < CHUNK {
                    return Ok(());
                }
            }
        })();
        // Hang up so the others finish what is queued (or stop at an error) and return.
        drop(read_tx);
        let hasher = join(hashing);
        let write_result = join(writer);
        read_result?;
        write_result?;
        Ok(hasher)
    })
}

/// A buffer for the next chunk: a returned one, a new one while fewer than [`BUFFERS`] exist,
/// else the next one returned. `None` once the other end hung up.
fn next_buffer(free: &Receiver<Vec<u8>>, allocated: &mut usize) -> Option<Vec<u8>> {
    match free.try_recv() {
        Ok(buffer) => return Some(buffer),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    if *allocated < BUFFERS {
        *allocated += 1;
        return Some(vec![0; CHUNK]);
    }
    free.recv().ok()
}

/// Waits for a pipeline thread, passing on its panic.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Fills `buf` from `file` at `offset`, stopping early only at the end of the file. Returns
/// the bytes read. Retries reads interrupted by a signal.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Fills `buffer` from `reader`, stopping early only at EOF. Returns the bytes read.
fn read_full(reader: &mut dyn Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn check_cancel(cancel: &AtomicBool) -> io::Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"))
    } else {
        Ok(())
    }
}

fn is_not_empty(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::DirectoryNotEmpty
        || matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST))
}

/// Creates `dir` and its missing ancestors; once created, fsyncs the parent of each new
/// directory so the new entries are durable. A directory created concurrently by someone else
/// counts as existing.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = dir;
    while !current.is_dir() {
        missing.push(current);
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent,
            _ => break,
        }
    }
    let mut to_sync = Vec::new();
    for new_dir in missing.into_iter().rev() {
        match fs::create_dir(new_dir) {
            Ok(()) => to_sync.push(new_dir.parent().unwrap_or(Path::new("."))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new_dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    for parent in to_sync {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Tells the kernel `file` will be read sequentially, so it reads ahead further. Advice only:
/// a failure changes nothing but speed, so it is ignored.
fn advise_sequential(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is valid for the
        // duration of the call because `file` is borrowed.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Starts writeback of the `len` bytes just written at `offset` without waiting for it, so the
/// final fsync has little left to do. Advice only: on failure the fsync does all the work.
pub fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is valid for
        // the duration of the call because `file` is borrowed.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Waits until `len` bytes of `file` at `offset`, written earlier, are on disk, then drops them
/// from the page cache.
///
/// This bounds the dirty and cached pages a big copy leaves behind to [`UNSETTLED`] bytes: the
/// final fsync has almost nothing left to do, cancelling never waits for a gigabyte of dirty
/// pages, an archive file written once does not push hotter data out of the cache, and the
/// kernel keeps reusing the same few page frames, which on this project's virtual machines
/// doubled the speed of a 1 GiB copy. A disk slower than hashing makes the I/O thread wait here,
/// which the final fsync would have made the copy wait for anyway. Advice only: on failure the
/// fsync does the work.
fn settle(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        let fd = file.as_raw_fd();
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is valid for
        // the duration of the call because `file` is borrowed.
        if unsafe { libc::sync_file_range(fd, offset, len, flags) } == 0 {
            forget_pages(file, offset, len);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Drops the cached pages of `len` bytes of `file` from `offset` (to its end if `len` is 0).
/// Advice only: only clean pages are dropped, so no data can be lost even if the range were
/// not on disk.
fn forget_pages(file: &File, offset: libc::off_t, len: libc::off_t) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is valid for
        // the duration of the call because `file` is borrowed.
        let _ = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_catalog::md5::md5_hex;

    #[test]
    fn a_write_in_pieces_writes_every_byte_where_it_belongs() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let data: Vec<u8> = (0..3 * WRITE_PIECE + 17).map(|i| (i % 251) as u8).collect();
        write_new(&path, &data).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        // At an offset, over what is there.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        write_all_at(&file, &[7u8; WRITE_PIECE + 1], 5).unwrap();
        let back = fs::read(&path).unwrap();
        assert_eq!(&back[..5], &data[..5]);
        assert!(back[5..WRITE_PIECE + 6].iter().all(|&b| b == 7));
        assert_eq!(&back[WRITE_PIECE + 6..], &data[WRITE_PIECE + 6..]);
        write_new(&path, b"short").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"short", "truncated");
    }

    #[test]
    fn a_new_file_is_unnamed_until_installed_and_then_replaces_what_is_there() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let named = || -> io::Result<PathBuf> { panic!("a named file where unnamed ones work") };
        let new = write_unnamed(&tmp, named, b"first").unwrap();
        assert_eq!(new.temp, None);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "no name yet");
        let (final_path, beside) = (t.path().join("a/b/f.dat"), tmp.join("copy-1.tmp"));
        let mut made = HashSet::new();
        install_new(&new, &final_path, &beside, &mut made).unwrap();
        assert_eq!(fs::read(&final_path).unwrap(), b"first");
        // Over a file already there (a corrupt copy), and a leftover at `beside`.
        fs::write(&beside, b"leftover").unwrap();
        let second = write_unnamed(&tmp, named, b"second").unwrap();
        install_new(&second, &final_path, &beside, &mut made).unwrap();
        assert_eq!(fs::read(&final_path).unwrap(), b"second");
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "nothing left beside"
        );
    }

    #[test]
    fn without_unnamed_files_a_new_file_is_named_then_renamed() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let temp = tmp.join("batch-1/copy-1.tmp");
        let named = || {
            fs::create_dir_all(temp.parent().unwrap())?;
            Ok(temp.clone())
        };
        let new = write_unnamed_in(&tmp, named, b"bytes", false).unwrap();
        assert_eq!(new.temp.as_deref(), Some(temp.as_path()));
        assert_eq!(fs::read(&temp).unwrap(), b"bytes");
        let final_path = t.path().join("x/f.dat");
        let mut made = HashSet::new();
        install_new(&new, &final_path, &tmp.join("copy-1.tmp"), &mut made).unwrap();
        assert_eq!(fs::read(&final_path).unwrap(), b"bytes");
        assert!(!temp.exists());
    }

    #[test]
    fn a_directory_is_made_once_per_caller() {
        let t = tempfile::tempdir().unwrap();
        let mut made = HashSet::new();
        let d = t.path().join("a/b");
        make_dir_once(Some(&d), &mut made).unwrap();
        assert!(d.is_dir(), "made with its parents");
        fs::remove_dir(&d).unwrap();
        make_dir_once(Some(&d), &mut made).unwrap();
        assert!(!d.exists(), "not looked at again");
        make_dir_once(Some(&t.path().join("a/c")), &mut made).unwrap();
        assert!(t.path().join("a/c").is_dir());
        make_dir_once(None, &mut made).unwrap();
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    fn copy_case(len: usize) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let data = pattern(len);
        fs::write(&src, &data).unwrap();
        let mut seen = Vec::new();
        let copied =
            copy_with_md5(&src, &dst, &AtomicBool::new(false), &mut |n| seen.push(n)).unwrap();
        let expected = Copied {
            bytes: len as u64,
            md5: md5_hex(&data),
        };
        assert_eq!(copied, expected);
        assert!(fs::read(&dst).unwrap() == data, "copy differs from source");
        assert!(seen.is_sorted(), "progress went backwards: {seen:?}");
        if len > 0 {
            assert_eq!(seen.last(), Some(&(len as u64)));
        }
        assert_eq!(
            md5_of(&dst, &AtomicBool::new(false)).unwrap(),
            (expected.bytes, expected.md5)
        );
    }

    #[test]
    fn copies_empty_file() {
        copy_case(0);
    }

    #[test]
    fn copies_small_file() {
        copy_case(12_345);
    }

    #[test]
    fn copies_exactly_one_chunk() {
        copy_case(CHUNK);
    }

    #[test]
    fn copies_multi_chunk_file() {
        copy_case(9 * (1 << 20) + 3);
    }

    #[test]
    fn copies_more_chunks_than_buffers() {
        copy_case(CHUNK * (BUFFERS + 2) + 17);
    }

    #[test]
    fn copy_truncates_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::write(&src, b"short").unwrap();
        fs::write(&dst, vec![7; 100_000]).unwrap();
        let copied = copy_with_md5(&src, &dst, &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert_eq!(copied.bytes, 5);
        assert_eq!(fs::read(&dst).unwrap(), b"short");
    }

    #[test]
    fn cancelled_copy_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::write(&src, pattern(3 * CHUNK)).unwrap();
        let err = copy_with_md5(&src, &dst, &AtomicBool::new(true), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        let err = md5_of(&src, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn cancel_during_copy_stops_between_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let len = (BUFFERS + 3) * CHUNK;
        fs::write(&src, pattern(len)).unwrap();
        let cancel = AtomicBool::new(false);
        let mut calls = 0;
        let err = copy_with_md5(&src, &dst, &cancel, &mut |_| {
            calls += 1;
            cancel.store(true, Ordering::Relaxed);
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(calls, 1);
        // The writer runs ahead of the hashing by at most BUFFERS chunks.
        let written = fs::metadata(&dst).unwrap().len();
        assert!(
            written <= ((BUFFERS + 1) * CHUNK) as u64,
            "{written} bytes written"
        );
    }

    #[test]
    fn missing_source_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = copy_with_md5(
            &dir.path().join("nope"),
            &dir.path().join("dst"),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// A reader that yields its data in small, uneven pieces, like a network stream.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(65_537);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn resume_completes_partial_file_with_full_md5() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("partial");
        let data = pattern(2 * CHUNK + 1000);
        // Tails longer than a chunk, exactly one, shorter (hashed without the pipeline's
        // threads), and none.
        let tails = [data.len() - CHUNK, data.len() - 1000];
        for done in [
            0,
            1,
            3 << 20,
            CHUNK,
            CHUNK + 5,
            tails[0],
            tails[1],
            data.len(),
        ] {
            fs::write(&dst, &data[..done]).unwrap();
            let mut seen = Vec::new();
            let copied = resume_from_reader(
                &dst,
                &mut Trickle(&data[done..]),
                &AtomicBool::new(false),
                &mut |n| seen.push(n),
            )
            .unwrap();
            assert_eq!(copied.bytes, data.len() as u64, "resumed at {done}");
            assert_eq!(copied.md5, md5_hex(&data), "resumed at {done}");
            assert!(
                fs::read(&dst).unwrap() == data,
                "resumed at {done}: bytes differ"
            );
            assert_eq!(seen.last(), Some(&(data.len() as u64)));
        }
    }

    /// A reader that fails after yielding `good` bytes, like a dropped connection.
    struct Broken(usize);

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn resume_reports_reader_error() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("partial");
        for good in [10, CHUNK + 10] {
            fs::write(&dst, b"abc").unwrap();
            let err = resume_from_reader(
                &dst,
                &mut Broken(good),
                &AtomicBool::new(false),
                &mut |_| {},
            )
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        }
    }

    #[test]
    fn resume_creates_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("new");
        let copied =
            resume_from_reader(&dst, &mut &b"abc"[..], &AtomicBool::new(false), &mut |_| {})
                .unwrap();
        assert_eq!(copied.md5, md5_hex(b"abc"));
        assert_eq!(fs::read(&dst).unwrap(), b"abc");
    }

    #[test]
    fn install_creates_parents_and_replaces_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp1");
        let target = dir.path().join("a/b/c/file.dat");
        fs::write(&tmp, b"first").unwrap();
        install(&tmp, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert!(!tmp.exists());

        fs::write(&tmp, b"second").unwrap();
        install(&tmp, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert!(!tmp.exists());
    }

    #[test]
    fn install_into_existing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp1");
        fs::write(&tmp, b"x").unwrap();
        install(&tmp, &dir.path().join("file")).unwrap();
        assert_eq!(fs::read(dir.path().join("file")).unwrap(), b"x");
    }

    #[test]
    fn install_does_not_replace_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp1");
        fs::write(&tmp, b"x").unwrap();
        fs::create_dir_all(dir.path().join("d/inside")).unwrap();
        install(&tmp, &dir.path().join("d")).unwrap_err();
        assert!(tmp.exists());
    }

    #[test]
    fn remove_empty_dirs_stops_at_non_empty_dir() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/keep"), b"").unwrap();
        let removed = remove_empty_dirs(&root.join("a/b/c"), root).unwrap();
        assert_eq!(removed, vec![root.join("a/b/c"), root.join("a/b")]);
        assert!(root.join("a/keep").exists());
    }

    #[test]
    fn remove_empty_dirs_stops_at_stop_at() {
        let root = tempfile::tempdir().unwrap();
        let node = root.path().join("node");
        fs::create_dir_all(node.join("x/y")).unwrap();
        let removed = remove_empty_dirs(&node.join("x/y"), &node).unwrap();
        assert_eq!(removed, vec![node.join("x/y"), node.join("x")]);
        assert!(node.is_dir());
        assert!(remove_empty_dirs(&node, &node).unwrap().is_empty());
        assert!(node.is_dir());
    }

    #[test]
    fn remove_empty_dirs_passes_over_missing_dir() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fs::create_dir_all(root.join("a")).unwrap();
        let removed = remove_empty_dirs(&root.join("a/gone"), root).unwrap();
        assert_eq!(removed, vec![root.join("a")]);
    }

    #[test]
    fn remove_empty_dirs_refuses_dir_outside_stop_at() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("a")).unwrap();
        fs::create_dir_all(root.path().join("b")).unwrap();
        let err = remove_empty_dirs(&root.path().join("a"), &root.path().join("b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err =
            remove_empty_dirs(&root.path().join("b/../a"), &root.path().join("b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(root.path().join("a").is_dir());
    }
}
