//! cairnd's registrations waiting for the catalog: files found on a node (by auto-import or a
//! scan) whose registration the catalog could not take when they were found (a cut link to the
//! primary, a catalog down). Kept in a small SQLite database on the node
//! (`.cairn/waiting.db`), next to the files themselves, and registered when the catalog
//! answers again: oldest first, in batches, each once.
//!
//! One row per archive path: size, md5, mtime, acquisition and owner, as the registration
//! would have had them, and when the file was found. A file found again (changed since, or
//! found by a scan after auto-import) replaces its row. A row is removed once the catalog has
//! the file with its copy on the node.
//!
//! Durability: WAL with `synchronous = FULL`, so a noted registration survives a kill of
//! cairnd and a crash of the machine. The mount's journal of closed files
//! ([`crate::journal`]) is another file: the mount holds that one for itself.

use std::path::{Path, PathBuf};

use cairn_catalog::catalog::NewFile;
use cairn_catalog::model::Ownership;
use rusqlite::{Connection, OpenFlags, params};

use crate::journal::Summary;

#[derive(Debug, thiserror::Error)]
#[error("registrations waiting on the node, {path}: {source}")]
pub struct WaitingError {
    path: PathBuf,
    source: rusqlite::Error,
}

pub type Result<T> = std::result::Result<T, WaitingError>;

/// One registration waiting, as it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub file: NewFile,
    /// What the file on the node looked like when it was hashed ([`stamp`]): a file that
    /// looks otherwise by the time the catalog answers is not registered with this md5.
    pub stamp: String,
    /// When it was found (seconds since the epoch).
    pub found_at: i64,
}

/// Size, inode and modification time to the nanosecond of a node file: what says it is
/// still the file that was hashed (as rsync's quick check, finer).
pub fn stamp(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}.{:09}",
        meta.len(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS waiting (
    path        TEXT NOT NULL PRIMARY KEY,
    acq         TEXT NOT NULL,
    size        INTEGER NOT NULL,
    md5         TEXT NOT NULL,
    mtime       INTEGER NOT NULL,
    owner       TEXT,
    grp         TEXT,
    mode        INTEGER,
    stamp       TEXT NOT NULL,
    found_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS waiting_found ON waiting (found_at, path);";

/// The registrations waiting on one node: opened for each use (cairnd's workers note and
/// replay from several threads; SQLite serialises their writes).
pub struct WaitingList {
    path: PathBuf,
    conn: Connection,
}

impl WaitingList {
    /// Opens (or creates) the list of the node whose root is `root`.
    pub fn open(root: &Path) -> Result<WaitingList> {
        let path = crate::NodeRoot::new(root).waiting();
        let err = |source| WaitingError {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(err)?;
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(WaitingList { path, conn })
    }

    fn err(&self, source: rusqlite::Error) -> WaitingError {
        WaitingError {
            path: self.path.clone(),
            source,
        }
    }

    /// Notes registrations the catalog could not take, each with its file's [`stamp`], found
    /// at `found_at`; a path noted before is replaced.
    pub fn note(&mut self, files: &[(NewFile, String)], found_at: i64) -> Result<()> {
        let path = self.path.clone();
        let err = |source| WaitingError {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO waiting \
                     (path, acq, size, md5, mtime, owner, grp, mode, stamp, found_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(err)?;
            for (f, stamp) in files {
                st.execute(params![
                    f.path,
                    f.acq,
                    f.size as i64,
                    f.md5,
                    f.mtime,
                    f.own.user,
                    f.own.group,
                    f.own.mode,
                    stamp,
                    found_at
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Up to `limit` registrations, the longest waiting first.
    pub fn oldest(&self, limit: usize) -> Result<Vec<Waiting>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {WAITING_COLUMNS} FROM waiting ORDER BY found_at, path LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([limit as i64], waiting_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Removes the rows of `paths` that still say what `noted` said (a row replaced
    /// meanwhile, by a newer find, stays).
    pub fn done(&mut self, noted: &[&Waiting]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| WaitingError {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "DELETE FROM waiting WHERE path = ?1 AND md5 = ?2 AND found_at = ?3",
                )
                .map_err(err)?;
            for w in noted {
                st.execute(params![w.file.path, w.file.md5, w.found_at])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// How many wait, and since when.
    pub fn summary(&self) -> Result<Summary> {
        summary_of(&self.conn).map_err(|e| self.err(e))
    }

    /// How many wait on the node at `root`, read without creating anything; `None` when the
    /// node has no list (nothing ever waited there).
    pub fn peek(root: &Path) -> Result<Option<Summary>> {
        let path = crate::NodeRoot::new(root).waiting();
        if !path.exists() {
            return Ok(None);
        }
        let err = |source| WaitingError {
            path: path.clone(),
            source,
        };
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(err)?;
        summary_of(&conn).map(Some).map_err(err)
    }
}

/// Everything on the node at `root` that waits for the catalog: the files closed on its mount
/// ([`crate::journal`]) and cairnd's registrations ([`WaitingList`]), added up; `None` when
/// the node has neither list.
pub fn on_node(root: &Path) -> std::result::Result<Option<Summary>, String> {
    let mount = crate::journal::Journal::peek(root).map_err(|e| e.to_string())?;
    let daemon = WaitingList::peek(root).map_err(|e| e.to_string())?;
    Ok(match (mount, daemon) {
        (None, None) => None,
        (a, b) => {
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            Some(Summary {
                files: a.files + b.files,
                oldest: a.oldest.into_iter().chain(b.oldest).min(),
            })
        }
    })
}

impl WaitingList {
    /// The registrations waiting on the node at `root` below directory `dir` (`""`: all),
    /// read without creating anything: what a mount shows of them.
    pub fn under(root: &Path, dir: &str) -> Result<Vec<Waiting>> {
        let path = crate::NodeRoot::new(root).waiting();
        let err = |source| WaitingError {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            return Ok(Vec::new());
        }
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(err)?;
        // Paths below `dir/` sort between `dir/` and `dir0` ('0' follows '/').
        let (from, to) = match dir {
            "" => (String::new(), "\u{10ffff}".to_owned()),
            d => (format!("{d}/"), format!("{d}0")),
        };
        let mut st = conn
            .prepare(&format!(
                "SELECT {WAITING_COLUMNS} FROM waiting WHERE path > ?1 AND path < ?2"
            ))
            .map_err(err)?;
        let rows = st.query_map(params![from, to], waiting_row).map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
    }
}

fn summary_of(conn: &Connection) -> rusqlite::Result<Summary> {
    conn.query_row("SELECT COUNT(*), MIN(found_at) FROM waiting", [], |r| {
        Ok(Summary {
            files: r.get::<_, i64>(0)? as u64,
            oldest: r.get(1)?,
        })
    })
}

/// The columns [`waiting_row`] reads, in its order.
const WAITING_COLUMNS: &str = "path, acq, size, md5, mtime, owner, grp, mode, stamp, found_at";

/// A registration as read from a row of [`WAITING_COLUMNS`].
fn waiting_row(r: &rusqlite::Row) -> rusqlite::Result<Waiting> {
    Ok(Waiting {
        file: NewFile {
            path: r.get(0)?,
            acq: r.get(1)?,
            size: r.get::<_, i64>(2)? as u64,
            md5: r.get(3)?,
            mtime: r.get(4)?,
            own: Ownership {
                user: r.get(5)?,
                group: r.get(6)?,
                mode: r.get(7)?,
            },
        },
        stamp: r.get(8)?,
        found_at: r.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, md5: &str) -> NewFile {
        NewFile {
            path: path.into(),
            acq: "acq".into(),
            size: 3,
            md5: md5.into(),
            mtime: 100,
            own: Ownership {
                user: Some("obs".into()),
                group: None,
                mode: Some(0o644),
            },
        }
    }

    #[test]
    fn what_is_noted_survives_a_reopen_and_leaves_once_done() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(".cairn")).unwrap();
        assert_eq!(WaitingList::peek(root.path()).unwrap(), None);
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        {
            let mut w = WaitingList::open(root.path()).unwrap();
            w.note(&[(file("x/2.dat", &a), "s2".into())], 20).unwrap();
            w.note(
                &[
                    (file("x/1.dat", &a), "s1".into()),
                    (file("x/3.dat", &b), "s3".into()),
                ],
                10,
            )
            .unwrap();
        }
        let mut w = WaitingList::open(root.path()).unwrap();
        let all = w.oldest(10).unwrap();
        let paths: Vec<&str> = all.iter().map(|w| w.file.path.as_str()).collect();
        assert_eq!(paths, ["x/1.dat", "x/3.dat", "x/2.dat"], "oldest first");
        assert_eq!(all[0].file, file("x/1.dat", &a));
        assert_eq!(all[0].stamp, "s1");
        assert_eq!(
            WaitingList::peek(root.path()).unwrap(),
            Some(Summary {
                files: 3,
                oldest: Some(10)
            })
        );
        // Found again with other bytes before the first was registered: the newer row stays.
        w.note(&[(file("x/3.dat", &a), "s3'".into())], 30).unwrap();
        w.done(&[&all[0], &all[1]]).unwrap();
        let left: Vec<(String, String)> = w
            .oldest(10)
            .unwrap()
            .into_iter()
            .map(|w| (w.file.path, w.file.md5))
            .collect();
        assert_eq!(
            left,
            [("x/2.dat".into(), a.clone()), ("x/3.dat".into(), a.clone())]
        );
        assert_eq!(w.summary().unwrap().files, 2);
        w.note(
            &[
                (file("x0/9.dat", &a), "s9".into()),
                (file("x/y/4.dat", &a), "s4".into()),
            ],
            40,
        )
        .unwrap();
        let under = |d: &str| -> Vec<String> {
            let mut v: Vec<String> = WaitingList::under(root.path(), d)
                .unwrap()
                .into_iter()
                .map(|w| w.file.path)
                .collect();
            v.sort();
            v
        };
        assert_eq!(under("x"), ["x/2.dat", "x/3.dat", "x/y/4.dat"]);
        assert_eq!(under("x/y"), ["x/y/4.dat"]);
        assert_eq!(under("").len(), 4);
        assert!(under("z").is_empty());
    }
}
