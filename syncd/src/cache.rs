//! The cache of files fetched from other hosts for reads through cairnfs (`[cache]`).
//!
//! A file is kept as `<cache.dir>/<md5>` once its whole content matched that md5; while it
//! arrives it is `<md5>.part`, which cairnfs reads as it grows (naming in
//! `cairn_node::cache`, socket protocol in `cairn_node::socket`). One fetch per file runs at a
//! time however many readers wait for it. The cache's size is counted once and then kept in
//! memory; before a fetch that would take it past `cache.max_bytes` by that count, the
//! directory is read again and the least recently used files are evicted until the new one
//! fits with a sixteenth of `max_bytes` to spare (so that a run of small fetches does not read
//! the directory at each); a file some process holds open is never evicted. A directory whose
//! small files a program reads one after another has the rest fetched ahead, in batched
//! pulls ([`fetch_ahead`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use cairn_catalog::Pool;
use cairn_catalog::model::{DirId, File, FileId, Has};
use cairn_catalog::units::{format_size, now};
use cairn_node::cache::CacheDir;
use cairn_node::socket::Reply;
use cairn_node::temp::TempFile;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::sources::{Sources, Wanted};
use crate::transfer::{BatchItem, Peer, Transfer};

/// How a fetch ended (`None` while it runs): the cached file, or why there is none.
type Outcome = Option<Result<PathBuf, String>>;

/// Fetches into the cache for the mount.
pub struct Fetcher {
    pub pool: Arc<Pool>,
    pub dir: CacheDir,
    /// `cache.max_bytes`.
    pub max_bytes: u64,
    pub transfer: Arc<dyn Transfer>,
    pub sources: Arc<Sources>,
    /// Set at shutdown: fetches stop.
    pub cancel: Arc<AtomicBool>,
    /// Fetches in progress, by md5.
    running: Mutex<HashMap<String, (PathBuf, watch::Receiver<Outcome>)>>,
    /// The cache's bytes as of its last count, plus the sizes of the fetches started since
    /// (`None` until the first count): the directory is read again only when a new file
    /// would not fit by this reckoning, not at every fetch.
    used: Mutex<Option<u64>>,
    /// Directories whose small files are being fetched ahead ([`fetch_ahead`]).
    ahead: Mutex<HashSet<DirId>>,
}

impl Fetcher {
    pub fn new(
        pool: Arc<Pool>,
        dir: CacheDir,
        max_bytes: u64,
        transfer: Arc<dyn Transfer>,
        sources: Arc<Sources>,
        cancel: Arc<AtomicBool>,
    ) -> Fetcher {
        Fetcher {
            pool,
            dir,
            max_bytes,
            transfer,
            sources,
            cancel,
            running: Mutex::new(HashMap::new()),
            used: Mutex::new(None),
            ahead: Mutex::new(HashSet::new()),
        }
    }
}

/// Writes one reply line.
async fn reply<W: AsyncWriteExt + Unpin>(out: &mut W, reply: Reply) -> std::io::Result<()> {
    out.write_all(format!("{reply}\n").as_bytes()).await
}

/// Answers one `fetch FILE_ID` request on the local socket (`cairn_node::socket`).
pub async fn serve_fetch<W: AsyncWriteExt + Unpin>(
    fetcher: Arc<Fetcher>,
    file_id: FileId,
    out: &mut W,
) -> std::io::Result<()> {
    let s = fetcher.clone();
    let started = tokio::task::spawn_blocking(move || start(&s, file_id)).await;
    let started = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!("Cannot fetch file #{file_id} for the mount: {e:#}");
            return reply(out, Reply::Error(format!("{e:#}"))).await;
        }
        Err(e) => return reply(out, Reply::Error(e.to_string())).await,
    };
    let (part, mut rx) = match started {
        Started::Ready(path) => return reply(out, Reply::Ready(path)).await,
        Started::Running(part, rx) => (part, rx),
    };
    reply(out, Reply::Part(part)).await?;
    out.flush().await?;
    let end = loop {
        if let Some(end) = rx.borrow().clone() {
            break end;
        }
        if rx.changed().await.is_err() {
            break Err("cairnd stopped the fetch".into());
        }
    };
    let end = match end {
        Ok(path) => Reply::Done(path),
        Err(why) => Reply::Error(why),
    };
    reply(out, end).await
}

enum Started {
    Ready(PathBuf),
    Running(PathBuf, watch::Receiver<Outcome>),
}

fn start(fetcher: &Arc<Fetcher>, file_id: FileId) -> Result<Started> {
    let file = fetcher
        .pool
        .with(|cat| cat.read(|tx| tx.file_by_id(file_id)))
        .with_context(|| format!("no file #{file_id} in the catalog"))?;
    let cache = &fetcher.dir;
    let dir = cache.path();
    let done = cache.complete(&file.md5);
    if std::fs::metadata(&done).is_ok_and(|m| m.len() == file.size) {
        if let Ok(f) = std::fs::File::open(&done) {
            cairn_node::cache::touch(&f);
        }
        return Ok(Started::Ready(done));
    }
    let max = fetcher.max_bytes;
    if file.size > max {
        return Err(anyhow!(
            "{} ({}) is larger than the whole cache (cache.max_bytes = {})",
            file.path,
            format_size(file.size),
            format_size(max)
        ));
    }
    let mut running = fetcher.running.lock().expect("cache lock");
    if let Some((part, rx)) = running.get(&file.md5)
        && rx.borrow().is_none()
    {
        return Ok(Started::Running(part.clone(), rx.clone()));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
    make_room(fetcher, file.size, &running);
    let part = cache.part(&file.md5);
    // A part file left by an earlier fetch is resumed: its bytes are hashed again at the end.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .with_context(|| format!("cannot create {}", part.display()))?;
    let (tx, rx) = watch::channel(None);
    running.insert(file.md5.clone(), (part.clone(), rx.clone()));
    drop(running);
    let s = fetcher.clone();
    let p = part.clone();
    std::thread::Builder::new()
        .name(format!("cache-{file_id}"))
        .spawn(move || {
            let end = fetch(&s, &file, &p, &done).map_err(|e| {
                warn!("Fetch of {} for the mount failed: {e:#}", file.path);
                format!("{e:#}")
            });
            let _ = tx.send(Some(end));
        })
        .context("cannot start the fetch")?;
    Ok(Started::Running(part, rx))
}

/// Pulls `file` into `part` from the best source, checks its md5, and names it `done`.
fn fetch(fetcher: &Fetcher, file: &File, part: &Path, done: &Path) -> Result<PathBuf> {
    // Removed on every way out but the rename into place.
    let part = TempFile::new(part.to_owned());
    let sources = sources_of(fetcher, file)?;
    if sources.is_empty() {
        return Err(anyhow!(
            "no reachable copy of {}: no active node with a healthy copy on a host with a \
             known cairnd address",
            file.path
        ));
    }
    let mut last = None;
    for src in sources {
        let started = Instant::now();
        match fetcher.transfer.fetch(&src, part.path(), &fetcher.cancel) {
            Ok(c) if c.md5 == file.md5 && c.bytes == file.size => {
                std::fs::rename(part.path(), done)
                    .with_context(|| format!("cannot rename {}", part.path().display()))?;
                part.keep();
                info!(
                    "Cached {} from node {} ({}, {:.1}s) for the mount.",
                    file.path,
                    src.node,
                    format_size(c.bytes),
                    started.elapsed().as_secs_f64()
                );
                return Ok(done.to_path_buf());
            }
            Ok(c) => {
                // Readers may have seen these bytes: the fetch fails (EIO) rather than
                // retrying into the same file, and the source is marked for verification.
                drop(part);
                if let Err(e) = fetcher
                    .pool
                    .with(|cat| cat.write(|tx| tx.mark_copy(src.copy_id, Has::Suspect, now())))
                {
                    warn!(
                        "Could not mark the copy of {} on node {} suspect: {e}",
                        file.path, src.node
                    );
                }
                return Err(anyhow!(
                    "the copy of {} on node {} does not match the catalog ({} bytes, md5 {}; \
                     expected {} bytes, md5 {}); it is now marked suspect",
                    file.path,
                    src.node,
                    c.bytes,
                    c.md5,
                    file.size,
                    file.md5
                ));
            }
            Err(e) => {
                warn!(
                    "Fetching {} from node {} for the mount failed: {e}",
                    file.path, src.node
                );
                last = Some(anyhow!("from node {}: {e}", src.node));
            }
        }
    }
    drop(part);
    Err(last
        .unwrap_or_else(|| anyhow!("no source"))
        .context(format!("cannot fetch {}", file.path)))
}

/// Counts `size` more bytes in the cache, evicting first if they would not fit in
/// `cache.max_bytes` by the count kept: down to a sixteenth below what they need, so that the
/// next fetches do not each read the directory again.
fn make_room(
    fetcher: &Fetcher,
    size: u64,
    running: &HashMap<String, (PathBuf, watch::Receiver<Outcome>)>,
) {
    let max = fetcher.max_bytes;
    let keep = max.saturating_sub(size);
    let mut used = fetcher.used.lock().expect("cache use");
    *used = Some(
        match *used {
            Some(u) if u <= keep => u,
            _ => evict(fetcher.dir.path(), keep.saturating_sub(max / 16), running),
        } + size,
    );
}

/// Files at most this large are fetched ahead ([`fetch_ahead`]).
const AHEAD_MAX_FILE: u64 = 1 << 20;
/// At most this many files, and bytes (and a quarter of `cache.max_bytes`), are fetched ahead
/// at a time for one directory.
const AHEAD_FILES: usize = 2000;
const AHEAD_BYTES: u64 = 256 << 20;
/// Files of one batched pull when fetching ahead.
const AHEAD_BATCH: usize = 250;

/// A batch of files fetched ahead from one host.
type PeerBatch = (Peer, Vec<(File, BatchItem)>);

/// The mount reads the files of `file_id`'s directory one after another, each a fetch of its
/// own (a round trip to another host, or several): fetches that directory's other small files
/// into the cache now, in batched pulls from the hosts that have them, each checked against
/// its md5 before it takes its name in the cache. Runs on a thread of its own, one per
/// directory at a time; what fails here is fetched on its own when it is opened.
pub fn fetch_ahead(fetcher: Arc<Fetcher>, file_id: FileId) {
    let spawned = std::thread::Builder::new()
        .name(format!("ahead-{file_id}"))
        .spawn(move || {
            if let Err(e) = ahead(&fetcher, file_id) {
                warn!("Fetching ahead the files beside file #{file_id} failed: {e:#}");
            }
        });
    if let Err(e) = spawned {
        warn!("Cannot fetch ahead the files beside file #{file_id}: {e}");
    }
}

fn ahead(fetcher: &Fetcher, file_id: FileId) -> Result<()> {
    let (file, listed) = fetcher.pool.with(|cat| {
        cat.read(|tx| {
            let file = tx.file_by_id(file_id)?;
            let (_, files) = tx.list_dir(file.dir_id)?;
            Ok((file, files))
        })
    })?;
    if !fetcher
        .ahead
        .lock()
        .expect("fetching ahead")
        .insert(file.dir_id)
    {
        return Ok(());
    }
    let result = ahead_in(fetcher, &file, listed);
    fetcher
        .ahead
        .lock()
        .expect("fetching ahead")
        .remove(&file.dir_id);
    result
}

fn ahead_in(fetcher: &Fetcher, file: &File, mut listed: Vec<File>) -> Result<()> {
    let started = Instant::now();
    // The files after this one by name first (the order of `ls` and of a glob), then the
    // ones before; small ones not in the cache and not being fetched.
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let at = listed.partition_point(|f| f.name <= file.name);
    listed.rotate_left(at);
    let cache = &fetcher.dir;
    let running: HashSet<String> = fetcher
        .running
        .lock()
        .expect("cache lock")
        .keys()
        .cloned()
        .collect();
    // A quarter of the cache at most: what is fetched ahead must not push out what was read.
    let budget = AHEAD_BYTES.min(fetcher.max_bytes / 4);
    let (mut files, mut bytes) = (0, 0);
    let mut by_peer: HashMap<String, PeerBatch> = HashMap::new();
    for f in listed {
        if files >= AHEAD_FILES || bytes + f.size > budget {
            break;
        }
        if f.id == file.id
            || f.size > AHEAD_MAX_FILE
            || running.contains(&f.md5)
            || std::fs::metadata(cache.complete(&f.md5)).is_ok()
        {
            continue;
        }
        let sources = sources_of(fetcher, &f)?;
        // A copy on this host is read where it is; only what another host has is fetched.
        let Some(src) = sources.first() else { continue };
        let Some(peer) = fetcher.transfer.batch_peer(src) else {
            continue;
        };
        let item = BatchItem {
            copy_id: src.copy_id,
            size: f.size,
        };
        files += 1;
        bytes += f.size;
        by_peer
            .entry(peer.host.clone())
            .or_insert_with(|| (peer, Vec::new()))
            .1
            .push((f, item));
    }
    if files == 0 {
        return Ok(());
    }
    make_room(fetcher, bytes, &fetcher.running.lock().expect("cache lock"));
    let mut fetched = 0;
    for (peer, wanted) in by_peer.into_values() {
        for batch in wanted.chunks(AHEAD_BATCH) {
            let items: Vec<BatchItem> = batch.iter().map(|(_, item)| item.clone()).collect();
            let results = fetcher.transfer.fetch_batch(&peer, &items, &fetcher.cancel);
            for ((f, _), got) in batch.iter().zip(results) {
                // Anything but the catalog's bytes is left to the file's own fetch, which
                // tries another source and marks this one.
                let Ok(got) = got else { continue };
                if got.md5 != f.md5 || got.bytes.len() as u64 != f.size {
                    continue;
                }
                let done = cache.complete(&f.md5);
                let tmp = TempFile::new(done.with_extension("ahead"));
                if std::fs::write(tmp.path(), &got.bytes)
                    .and_then(|()| std::fs::rename(tmp.path(), &done))
                    .is_ok()
                {
                    tmp.keep();
                    fetched += 1;
                }
            }
        }
    }
    info!(
        "Fetched ahead {fetched} of {files} small files beside {} ({}, {:.1}s) for the mount.",
        file.path,
        format_size(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where `file`'s bytes can be had, best first (`sources.rs`, as for copies).
fn sources_of(fetcher: &Fetcher, file: &File) -> Result<Vec<crate::transfer::Source>> {
    let wanted = Wanted {
        file_id: file.id,
        path: &file.path,
        size: file.size,
    };
    Ok(fetcher
        .pool
        .with(|cat| fetcher.sources.for_file(cat, wanted, None, None, false))?)
}

/// Removes the least recently used cached files until at most `keep` bytes remain, never one
/// that is open or being fetched. Returns the bytes that remain.
fn evict(
    dir: &Path,
    keep: u64,
    running: &HashMap<String, (PathBuf, watch::Receiver<Outcome>)>,
) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    e.path(),
                )
            })
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if total <= keep {
        return total;
    }
    let busy: HashSet<PathBuf> = running.values().map(|(p, _)| p.clone()).collect();
    let open = crate::procfs::open_under(dir);
    files.sort();
    for (_, len, path) in files {
        if total <= keep {
            break;
        }
        if busy.contains(&path) || open.contains(&path) {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            info!(
                "Evicted {} ({}) from the cache.",
                path.display(),
                format_size(len)
            );
        }
    }
    if total > keep {
        warn!(
            "The cache holds {} in files that are in use; it exceeds cache.max_bytes until \
             they are closed.",
            format_size(total)
        );
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_takes_the_least_recently_used_and_spares_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        let mk = |name: &str, age: u64| {
            let p = d.join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - std::time::Duration::from_secs(age))
                .unwrap();
            p
        };
        let oldest = mk("a", 300);
        let open = mk("b", 200);
        let newer = mk("c", 100);
        let newest = mk("d", 0);
        let _held = std::fs::File::open(&open).unwrap();
        assert_eq!(evict(&d, 200, &HashMap::new()), 200);
        assert!(!oldest.exists(), "the least recently used goes first");
        assert!(open.exists(), "an open file is never evicted");
        assert!(!newer.exists());
        assert!(newest.exists(), "eviction stops once the rest fits");
    }
}
