//! The host's journal of closed files: what its writer has closed, and where it stands on its
//! way into the catalog, kept in a small SQLite database on the write node
//! (`.cairn/journal.db`), so that a file whose `close` returned survives a kill of the mount,
//! a busy, locked or failing catalog, and a restart.
//!
//! One row per file, keyed by where its bytes were staged (`staged`, relative to the node's
//! root: `.cairn/staging/…`, or `.cairn/kept/…` for a dot file renamed to a plain name):
//!
//! - **closed**: its writer closed it (noted at the writer's `close`, before `close`
//!   returns); the bytes are at `staged`, the file goes to `path`. A rename before import
//!   changes `path`; an unlink removes the row.
//! - **placed**: size, md5, mtime and acquisition are final, and the bytes are moved (or being
//!   moved) to `path` on the node. Written *before* the move, so that after a crash the bytes
//!   are found at one of the two places.
//!
//! A close is first a line appended to the journal's log ([`log`]: `.cairn/journal.log.0`
//! and `.1`), which the next use of the database takes in, in one transaction: a writer's
//! `close` costs one `write`, and never waits for the database (whose commits the importer
//! syncs to disk).
//!
//! A row is removed once the catalog has the file with its copy. Rows belong to the mount
//! process that wrote them (`owner`: pid and start time); a new mount takes over the rows of
//! mounts that are gone.
//!
//! Durability: a line of the log, and a commit of the database (WAL mode, `synchronous =
//! NORMAL`), survive a kill of the process at once, and a crash of the machine once the
//! filesystem is synced — which the import does (one `syncfs` of the node for the bytes,
//! their new names, this log and this database), and which [`Journal::closed`] does itself
//! for a file its writer fsynced (its line synced, and the commit that takes it in).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_catalog::model::Ownership;
use rusqlite::{Connection, OptionalExtension, params};

use crate::procstat::ProcStat;

mod log;
use log::{Closed, Log};

/// Where a journalled file stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub staged: String,
    pub path: String,
    /// The mount process that wrote the row ([`Owner`]).
    pub owner: String,
    /// Final size, md5, mtime and acquisition, once placed.
    pub placed: Option<Placed>,
    /// When its writer closed it (seconds since the epoch).
    pub closed_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// What is registered for a placed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub size: u64,
    pub md5: String,
    pub mtime: i64,
    pub acq: String,
}

/// How many files wait, and since when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    /// When the oldest was closed (seconds since the epoch).
    pub oldest: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, JournalError>;

pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Closes not yet in the database. (Taken after `conn`, when both are.)
    log: Mutex<Log>,
    /// The order of the next close (taken with `log` held: the log's lines are in order).
    next_seq: std::sync::atomic::AtomicI64,
}

/// One table, keyed by where the file was staged (no rowid: a close writes one b-tree page).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS closed_file (
    staged      TEXT NOT NULL PRIMARY KEY,
    seq         INTEGER NOT NULL,
    path        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    size        INTEGER,
    md5         TEXT,
    mtime       INTEGER,
    acq         TEXT,
    closed_at   INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_taken (
    one         INTEGER NOT NULL PRIMARY KEY CHECK (one = 1),
    seq         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS made_dir (
    path        TEXT NOT NULL PRIMARY KEY,
    owner       TEXT,
    grp         TEXT,
    mode        INTEGER,
    made_at     INTEGER NOT NULL
) WITHOUT ROWID;";

impl Journal {
    /// Opens (or creates) the journal of the node whose root is `root`, for the one mount
    /// that writes this node: it holds the journal's lock while it lives (SQLite's exclusive
    /// locking mode, so a close costs no file locks), and a second mount of the same write
    /// node waits for it, then gives up. Others read what it publishes ([`Journal::peek`]).
    pub fn open(root: &Path) -> Result<Journal> {
        let path = crate::NodeRoot::new(root).journal();
        let err = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
                path: path.clone(),
                source,
            })?;
        }
        let mut conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(err)?;
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE;")
            .map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(rusqlite::Error::InvalidQuery));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let io = |source| JournalError::Io {
            path: path.with_extension("log.0"),
            source,
        };
        // What the log holds that the database has not taken (the mount that wrote it was
        // killed before the next use of the database) goes in now, synced.
        let (mut log, found) = Log::open(&path).map_err(io)?;
        let taken = log_taken(&conn).map_err(err)?;
        let new: Vec<Closed> = found.into_iter().filter(|c| c.seq > taken).collect();
        if !new.is_empty() {
            take_in(&mut conn, &new, true).map_err(err)?;
        }
        log.cut_all().map_err(io)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM closed_file", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let last = last.max(log_taken(&conn).map_err(err)?);
        Ok(Journal {
            path,
            conn: Mutex::new(conn),
            log: Mutex::new(log),
            next_seq: std::sync::atomic::AtomicI64::new(last + 1),
        })
    }

    /// How many files wait in the journal of the node at `root`, for a process that is not
    /// its mount (cairnd's report): read from the journal itself when no mount holds it,
    /// else from what the mount last published. `None` when the node has no journal.
    pub fn peek(root: &Path) -> Result<Option<Summary>> {
        let path = crate::NodeRoot::new(root).journal();
        if !path.exists() {
            return Ok(None);
        }
        let db = || -> rusqlite::Result<Summary> {
            let conn =
                Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            // A mount holding it answers "busy" at once: its published summary is read.
            conn.busy_timeout(std::time::Duration::ZERO)?;
            let mut s = conn.query_row(
                "SELECT COUNT(*), MIN(closed_at) FROM closed_file",
                [],
                |r| {
                    Ok(Summary {
                        files: r.get::<_, i64>(0)? as u64,
                        oldest: r.get(1)?,
                    })
                },
            )?;
            // Closes the log holds that the database has not taken (a mount killed since).
            // (A journal no mount of this version has opened has no such table, nor a log.)
            let taken = log_taken(&conn).unwrap_or(0);
            let mut seen = std::collections::HashSet::new();
            let mut has = conn.prepare("SELECT 1 FROM closed_file WHERE staged = ?1")?;
            for c in Log::read(&path).unwrap_or_default() {
                if c.seq > taken
                    && seen.insert(c.staged.clone())
                    && !has.exists(params![c.staged])?
                {
                    s.files += 1;
                    s.oldest = Some(s.oldest.map_or(c.closed_at, |o| o.min(c.closed_at)));
                }
            }
            Ok(s)
        };
        match db() {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy)
                ) =>
            {
                let published = summary_file(&path);
                match std::fs::read_to_string(&published) {
                    Ok(text) => Ok(parse_summary(&text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(JournalError::Io {
                        path: published,
                        source,
                    }),
                }
            }
            Err(source) => Err(JournalError::Db { path, source }),
        }
    }

    /// Publishes how many files wait, for [`Journal::peek`] while this mount holds the
    /// journal.
    pub fn publish_summary(&self) -> Result<Summary> {
        let s = self.summary()?;
        let to = summary_file(&self.path);
        let tmp = to.with_extension("summary.tmp");
        let text = format!(
            "{} {}\n",
            s.files,
            s.oldest.map_or("-".to_owned(), |t| t.to_string())
        );
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &to))
            .map_err(|source| JournalError::Io { path: to, source })?;
        Ok(s)
    }

    /// Runs `f` on the database, once it has taken the closes the log holds.
    fn run<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self.conn.lock().expect("journal");
        let err = |source| JournalError::Db {
            path: self.path.clone(),
            source,
        };
        let taking = {
            let mut log = self.log.lock().expect("journal log");
            log.has_pending().then(|| log.take())
        };
        // Closes go on into the log while the database takes these.
        if let Some(t) = taking {
            match take_in(&mut c, &t.closes, t.durable) {
                Ok(()) => {
                    let last = t.closes.last().map_or(0, |c| c.seq);
                    let cut = self.log.lock().expect("journal log").taken(last);
                    for (i, f) in cut {
                        if f.set_len(0).is_ok() {
                            self.log.lock().expect("journal log").cut_done(i);
                        }
                    }
                }
                Err(e) => {
                    self.log.lock().expect("journal log").untaken(t);
                    return Err(err(e));
                }
            }
        }
        f(&mut c).map_err(err)
    }

    /// The writer closed the file staged at `staged`, which goes to `path`: a line of the
    /// log. `durable`: the writer fsynced it, so the line is synced to disk too before the
    /// writer's `close` returns.
    pub fn closed(&self, staged: &str, path: &str, owner: &str, durable: bool) -> Result<()> {
        let mut log = self.log.lock().expect("journal log");
        let c = Closed {
            seq: self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            closed_at: now(),
            staged: staged.to_owned(),
            path: path.to_owned(),
            owner: owner.to_owned(),
        };
        log.append(c, durable).map_err(|source| JournalError::Io {
            path: log.path().to_owned(),
            source,
        })
    }

    /// A closed file was renamed before its import: it goes to `path` now.
    pub fn moved(&self, staged: &str, path: &str) -> Result<()> {
        self.run(|c| {
            c.execute(
                "UPDATE closed_file SET path = ?2 WHERE staged = ?1",
                params![staged, path],
            )
            .map(|_| ())
        })
    }

    /// A closed file was removed, or kept without import: nothing to do for it any more.
    pub fn dropped(&self, staged: &str) -> Result<()> {
        self.run(|c| {
            c.execute("DELETE FROM closed_file WHERE staged = ?1", params![staged])
                .map(|_| ())
        })
    }

    /// Final size, md5 and mtime of files about to be moved to their archive path, in one
    /// transaction, synced to disk before it returns: after a crash, a file is found where
    /// the journal says, before or after its move.
    pub fn placing(&self, files: &[(&str, &Placed)]) -> Result<()> {
        self.run(|c| {
            c.execute_batch("PRAGMA synchronous = FULL")?;
            let r = Self::place_rows(c, files);
            c.execute_batch("PRAGMA synchronous = NORMAL")?;
            r
        })
    }

    fn place_rows(c: &mut Connection, files: &[(&str, &Placed)]) -> rusqlite::Result<()> {
        {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE closed_file SET size = ?2, md5 = ?3, mtime = ?4, acq = ?5
                     WHERE staged = ?1",
                )?;
                for (staged, p) in files {
                    st.execute(params![staged, p.size as i64, p.md5, p.mtime, p.acq])?;
                }
            }
            tx.commit()
        }
    }

    /// A file could not be moved into place: it is back to closed, with the reason.
    pub fn unplaced(&self, staged: &str, why: &str) -> Result<()> {
        self.run(|c| {
            c.execute(
                "UPDATE closed_file SET size = NULL, md5 = NULL, mtime = NULL, acq = NULL,
                     attempts = attempts + 1, last_error = ?2 WHERE staged = ?1",
                params![staged, why],
            )
            .map(|_| ())
        })
    }

    /// An attempt to register these files failed.
    pub fn failed(&self, staged: &[&str], why: &str) -> Result<()> {
        self.run(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE closed_file SET attempts = attempts + 1, last_error = ?2
                     WHERE staged = ?1",
                )?;
                for s in staged {
                    st.execute(params![s, why])?;
                }
            }
            tx.commit()
        })
    }

    /// The catalog has these files: their rows go, in one transaction.
    pub fn done(&self, staged: &[&str]) -> Result<()> {
        self.run(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached("DELETE FROM closed_file WHERE staged = ?1")?;
                for s in staged {
                    st.execute(params![s])?;
                }
            }
            tx.commit()
        })
    }

    /// A directory was made here that the catalog could not take yet (its primary out of
    /// reach): it is made there, with `own`, when it answers again.
    pub fn dir_made(&self, path: &str, own: &Ownership) -> Result<()> {
        self.run(|c| {
            c.prepare_cached(
                "INSERT INTO made_dir (path, owner, grp, mode, made_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (path) DO UPDATE SET owner = excluded.owner, grp = excluded.grp,
                     mode = excluded.mode",
            )?
            .execute(params![
                path,
                own.user,
                own.group,
                own.mode.map(i64::from),
                now()
            ])
            .map(|_| ())
        })
    }

    /// The catalog has directory `path` now (or it was removed here).
    pub fn dir_done(&self, path: &str) -> Result<()> {
        self.run(|c| {
            c.execute("DELETE FROM made_dir WHERE path = ?1", params![path])
                .map(|_| ())
        })
    }

    /// Directories made here and not yet in the catalog, parents first, with their owners
    /// and when they were made.
    pub fn made_dirs(&self) -> Result<Vec<(String, Ownership, i64)>> {
        self.run(|c| {
            let mut st = c.prepare("SELECT path, owner, grp, mode, made_at FROM made_dir")?;
            let mut v: Vec<(String, Ownership, i64)> = st
                .query_map([], |r| {
                    let mode: Option<i64> = r.get(3)?;
                    Ok((
                        r.get(0)?,
                        Ownership {
                            user: r.get(1)?,
                            group: r.get(2)?,
                            mode: mode.map(|m| (m & 0o7777) as u32),
                        },
                        r.get(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            v.sort_by_key(|(p, _, _)| (p.matches('/').count(), p.clone()));
            Ok(v)
        })
    }

    /// Every row, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        self.run(|c| {
            let mut st = c.prepare(
                "SELECT staged, path, owner, size, md5, mtime, acq, closed_at, attempts,
                        last_error
                 FROM closed_file ORDER BY seq",
            )?;
            let rows = st.query_map([], |r| {
                let size: Option<i64> = r.get(3)?;
                let md5: Option<String> = r.get(4)?;
                let mtime: Option<i64> = r.get(5)?;
                let acq: Option<String> = r.get(6)?;
                let placed = match (size, md5, mtime, acq) {
                    (Some(size), Some(md5), Some(mtime), Some(acq)) => Some(Placed {
                        size: size as u64,
                        md5,
                        mtime,
                        acq,
                    }),
                    _ => None,
                };
                Ok(Entry {
                    staged: r.get(0)?,
                    path: r.get(1)?,
                    owner: r.get(2)?,
                    placed,
                    closed_at: r.get(7)?,
                    attempts: r.get(8)?,
                    last_error: r.get(9)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Whether a row for `staged` exists.
    pub fn has(&self, staged: &str) -> Result<bool> {
        self.run(|c| {
            c.query_row(
                "SELECT 1 FROM closed_file WHERE staged = ?1",
                params![staged],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
    }

    /// How many files wait, and since when.
    pub fn summary(&self) -> Result<Summary> {
        self.run(|c| {
            c.query_row(
                "SELECT COUNT(*), MIN(closed_at) FROM closed_file",
                [],
                |r| {
                    Ok(Summary {
                        files: r.get::<_, i64>(0)? as u64,
                        oldest: r.get(1)?,
                    })
                },
            )
        })
    }
}

/// Takes closes from the log into the database, in one transaction with the order of the
/// last (synced to disk before it returns if `durable`). A close of a file the database has
/// already gives its row the path and owner of this close.
fn take_in(c: &mut Connection, closes: &[Closed], durable: bool) -> rusqlite::Result<()> {
    if durable {
        c.execute_batch("PRAGMA synchronous = FULL")?;
    }
    let r = (|| {
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO closed_file (staged, seq, path, owner, closed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (staged) DO UPDATE SET path = excluded.path,
                     owner = excluded.owner",
            )?;
            for x in closes {
                st.execute(params![x.staged, x.seq, x.path, x.owner, x.closed_at])?;
            }
            if let Some(last) = closes.last() {
                tx.execute(
                    "INSERT INTO log_taken (one, seq) VALUES (1, ?1)
                     ON CONFLICT (one) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                    params![last.seq],
                )?;
            }
        }
        tx.commit()
    })();
    if durable {
        c.execute_batch("PRAGMA synchronous = NORMAL")?;
    }
    r
}

/// The order of the last close the database took from the log (0: none).
fn log_taken(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT seq FROM log_taken WHERE one = 1", [], |r| r.get(0))
        .optional()
        .map(|s| s.unwrap_or(0))
}

/// Where a mount publishes its journal's summary: beside the journal.
fn summary_file(journal: &Path) -> PathBuf {
    journal.with_extension("summary")
}

/// `FILES OLDEST` (or `-`) as [`Journal::publish_summary`] writes it.
fn parse_summary(text: &str) -> Option<Summary> {
    let mut it = text.split_whitespace();
    let files = it.next()?.parse().ok()?;
    let oldest = match it.next()? {
        "-" => None,
        t => Some(t.parse().ok()?),
    };
    Some(Summary { files, oldest })
}

/// A mount process, as `PID:START` (its start time in clock ticks after boot, from
/// `/proc/PID/stat`): a pid alone may be taken by another process after a restart.
pub struct Owner;

impl Owner {
    /// This process.
    pub fn me() -> String {
        let pid = std::process::id();
        format!("{pid}:{}", start_time(pid).unwrap_or(0))
    }

    /// Whether the process `owner` names is still running. A mount killed a moment ago is
    /// not, though its pid is still there: exiting, or exited and not yet reaped (a zombie).
    /// (Taken for running, its files closed before the kill stayed in the journal, unseen on
    /// the new mount, until the next mount after that.)
    pub fn alive(owner: &str) -> bool {
        let Some((pid, start)) = owner.split_once(':') else {
            return false;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            return false;
        };
        ProcStat::of(pid).is_some_and(|s| s.start == start && s.running())
    }
}

/// When process `pid` started.
fn start_time(pid: u32) -> Option<u64> {
    ProcStat::of(pid).map(|s| s.start)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(md5: &str) -> Placed {
        Placed {
            size: 3,
            md5: md5.into(),
            mtime: 7,
            acq: "a".into(),
        }
    }

    #[test]
    fn a_closed_file_is_remembered_until_it_is_done() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let me = Owner::me();
        j.closed(".cairn/staging/1", "x/a.dat", &me, false).unwrap();
        j.closed(".cairn/staging/2", "x/b.dat", &me, true).unwrap();
        j.closed(".cairn/staging/1", "x/a.dat", &me, false).unwrap();
        assert_eq!(j.summary().unwrap().files, 2, "a second close is one row");
        j.moved(".cairn/staging/2", "x/c.dat").unwrap();
        j.placing(&[(".cairn/staging/2", &placed("m"))]).unwrap();
        // Reopened (after this one let go): another process reads what this one wrote.
        drop(j);
        let j2 = Journal::open(d.path()).unwrap();
        let e = j2.entries().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].path.as_str(), e[0].placed.is_none()),
            ("x/a.dat", true)
        );
        assert_eq!(e[1].path, "x/c.dat");
        assert_eq!(e[1].placed, Some(placed("m")));
        j2.failed(&[".cairn/staging/2"], "busy").unwrap();
        j2.unplaced(".cairn/staging/2", "exists").unwrap();
        let e = j2.entries().unwrap();
        assert_eq!(
            (
                e[1].attempts,
                e[1].placed.is_none(),
                e[1].last_error.as_deref()
            ),
            (2, true, Some("exists"))
        );
        j2.done(&[".cairn/staging/1"]).unwrap();
        j2.publish_summary().unwrap();
        let own = Ownership {
            user: Some("u".into()),
            group: None,
            mode: Some(0o750),
        };
        j2.dir_made("a/b", &own).unwrap();
        j2.dir_made("a", &Ownership::default()).unwrap();
        let dirs = j2.made_dirs().unwrap();
        assert_eq!(
            dirs.iter().map(|(p, _, _)| p.as_str()).collect::<Vec<_>>(),
            ["a", "a/b"],
            "parents first"
        );
        assert_eq!(dirs[1].1, own);
        j2.dir_done("a").unwrap();
        assert_eq!(j2.made_dirs().unwrap().len(), 1);
        j2.dropped(".cairn/staging/2").unwrap();
        assert_eq!(j2.summary().unwrap(), Summary::default());
    }

    #[test]
    fn another_process_reads_the_summary_the_mount_published_while_it_holds_the_journal() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Journal::peek(d.path()).unwrap(), None, "no journal yet");
        let j = Journal::open(d.path()).unwrap();
        j.closed(".cairn/staging/1", "a", &Owner::me(), false)
            .unwrap();
        j.closed(".cairn/staging/2", "b", &Owner::me(), false)
            .unwrap();
        j.publish_summary().unwrap();
        j.closed(".cairn/staging/3", "c", &Owner::me(), false)
            .unwrap();
        let seen = Journal::peek(d.path()).unwrap().unwrap();
        assert_eq!(seen.files, 2, "what was published, the journal being held");
        drop(j);
        assert_eq!(
            Journal::peek(d.path()).unwrap().unwrap().files,
            3,
            "read itself"
        );
    }

    /// A mount killed before the database took its closes in: the next open of the journal
    /// finds them in the log, and takes each in once, whatever was cut.
    #[test]
    fn closes_only_in_the_log_survive_a_kill_and_are_taken_in_once() {
        let d = tempfile::tempdir().unwrap();
        let journal_db = crate::NodeRoot::new(d.path()).journal();
        let me = Owner::me();
        let j = Journal::open(d.path()).unwrap();
        j.closed(".cairn/staging/1", "a", &me, false).unwrap();
        j.closed(".cairn/staging/2", "b", &me, true).unwrap();
        // As a kill leaves it (nothing used the database since): lines in the log only.
        let lines = std::fs::read_to_string(journal_db.with_extension("log.0")).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        drop(j);
        assert_eq!(Journal::peek(d.path()).unwrap().unwrap().files, 2);
        let j = Journal::open(d.path()).unwrap();
        let paths = |j: &Journal| {
            j.entries()
                .unwrap()
                .into_iter()
                .map(|e| e.path)
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&j), ["a", "b"]);
        for ext in ["log.0", "log.1"] {
            assert_eq!(
                std::fs::metadata(journal_db.with_extension(ext))
                    .unwrap()
                    .len(),
                0,
                "{ext} is cut once its lines are in the database"
            );
        }
        // A kill between the database's taking of a line and the cut of its file: the line
        // is still there at the next open, and must not bring back a row done since.
        j.done(&[".cairn/staging/1"]).unwrap();
        j.moved(".cairn/staging/2", "c").unwrap();
        drop(j);
        std::fs::write(journal_db.with_extension("log.1"), lines).unwrap();
        let j = Journal::open(d.path()).unwrap();
        assert_eq!(paths(&j), ["c"], "lines taken before are not taken again");
        j.closed(".cairn/staging/3", "d", &me, false).unwrap();
        assert_eq!(
            paths(&j),
            ["c", "d"],
            "new closes follow the old ones' order"
        );
    }

    /// While the database takes the log's lines in, closes go on into the other file, and
    /// each file is cut only once the database has every line of it.
    #[test]
    fn closes_go_on_while_the_database_takes_the_log_in() {
        let d = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::open(d.path()).unwrap());
        let me = Owner::me();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (j, me) = (j.clone(), me.clone());
                std::thread::spawn(move || {
                    for i in 0..500 {
                        j.closed(&format!(".cairn/staging/{t}-{i}"), "p", &me, false)
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut looks = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            j.summary().unwrap();
            looks += 1;
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(looks > 0);
        // Killed now: what the database took, and what only the log has, are all there.
        let j = std::sync::Arc::into_inner(j).unwrap();
        drop(j);
        let j = Journal::open(d.path()).unwrap();
        assert_eq!(j.summary().unwrap().files, 2000, "no close lost by a cut");
    }

    #[test]
    fn this_process_is_alive_and_a_gone_or_reused_pid_is_not() {
        let me = Owner::me();
        assert!(Owner::alive(&me));
        let pid = std::process::id();
        assert!(!Owner::alive(&format!("{pid}:1")), "another start time");
        assert!(!Owner::alive(&format!("{}:1", u32::MAX)));
        assert!(!Owner::alive("garbage"));
    }

    /// A mount killed a moment ago, its pid not yet reaped, is not running: a new mount takes
    /// over what it left.
    #[test]
    fn a_killed_process_not_yet_reaped_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let owner = format!("{pid}:{}", start_time(pid).unwrap());
        assert!(Owner::alive(&owner));
        child.kill().unwrap();
        // Not waited for: a zombie once it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!Owner::alive(&owner));
        child.wait().unwrap();
        assert!(!Owner::alive(&owner));
    }
}
