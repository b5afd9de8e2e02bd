//! The journal's log of closes: a writer's `close` appends one line to a plain file beside the
//! database, and nothing else: no SQLite transaction on `close`'s path, and no wait there for
//! the database, whose commits the importer may be syncing to disk at that moment. The next
//! use of the database takes what the log holds, in one transaction ([`super::Journal`]).
//!
//! Two files take the lines in turn (`journal.log.0`, `journal.log.1`): while the database
//! takes the lines of one, closes go on into the other, and the one taken is cut to nothing
//! afterwards. Each line carries its order (`seq`), and the database keeps the last order it
//! took in the same transaction as the rows: a line is taken once, even when the cut after
//! it never happened (a kill between the two). A line without its end (the machine crashed
//! while it was written: its close had not returned) ends its file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// One close, as the log keeps it until the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Closed {
    pub seq: i64,
    pub closed_at: i64,
    pub staged: String,
    pub path: String,
    pub owner: String,
}

impl Closed {
    fn line(&self) -> String {
        format!(
            "C\t{}\t{}\t{}\t{}\t{}\n",
            self.seq,
            self.closed_at,
            escape(&self.staged),
            escape(&self.path),
            escape(&self.owner)
        )
    }

    fn parse(line: &str) -> Option<Closed> {
        let mut f = line.split('\t');
        if f.next()? != "C" {
            return None;
        }
        let c = Closed {
            seq: f.next()?.parse().ok()?,
            closed_at: f.next()?.parse().ok()?,
            staged: unescape(f.next()?)?,
            path: unescape(f.next()?)?,
            owner: unescape(f.next()?)?,
        };
        f.next().is_none().then_some(c)
    }
}

/// A tab, a newline and a backslash in a name are written `\t`, `\n` and `\\`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(ch) = it.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        out.push(match it.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            _ => return None,
        });
    }
    Some(out)
}

/// One of the two files.
struct Half {
    file: File,
    path: PathBuf,
    /// The length of its whole lines.
    len: u64,
    /// The order of its last line.
    last_seq: i64,
}

impl Half {
    /// Opens (or creates) the file at `path`: the closes of its whole lines, in order, up to
    /// the first line that is not whole (cut off there).
    fn open(path: PathBuf) -> io::Result<(Half, Vec<Closed>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (found, len) = parse(&bytes);
        if len < bytes.len() as u64 {
            file.set_len(len)?;
        }
        let last_seq = found.iter().map(|c| c.seq).max().unwrap_or(0);
        Ok((
            Half {
                file,
                path,
                len,
                last_seq,
            },
            found,
        ))
    }

    fn cut(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }
}

/// The closes of the whole lines at the start of `bytes`, and their length.
fn parse(bytes: &[u8]) -> (Vec<Closed>, u64) {
    let mut found = Vec::new();
    let mut len = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let Some(text) = line.strip_suffix(b"\n") else {
            break;
        };
        let Some(c) = std::str::from_utf8(text).ok().and_then(Closed::parse) else {
            break;
        };
        found.push(c);
        len += line.len() as u64;
    }
    (found, len)
}

/// The two files, and the closes the database has not taken yet.
pub(super) struct Log {
    halves: [Half; 2],
    /// Which file closes go to.
    current: usize,
    /// The closes the database has not taken, in order.
    pending: Vec<Closed>,
    /// One of them was synced to disk (its writer had fsynced the file): the database syncs
    /// its taking of them too.
    durable: bool,
}

/// Closes handed to the database: in order, and whether it syncs its taking of them.
pub(super) struct Taking {
    pub closes: Vec<Closed>,
    pub durable: bool,
}

/// The log's two files, beside `journal` (the database's path).
fn halves(journal: &Path) -> [PathBuf; 2] {
    [
        journal.with_extension("log.0"),
        journal.with_extension("log.1"),
    ]
}

impl Log {
    /// Opens the log beside `journal` (the database's path), with every close its files hold
    /// in order: the caller keeps those the database has not taken, then [`Log::cut_all`].
    pub fn open(journal: &Path) -> io::Result<(Log, Vec<Closed>)> {
        let [p0, p1] = halves(journal);
        let (a, mut found) = Half::open(p0)?;
        let (b, more) = Half::open(p1)?;
        found.extend(more);
        found.sort_by_key(|c| c.seq);
        let log = Log {
            halves: [a, b],
            current: 0,
            pending: Vec::new(),
            durable: false,
        };
        Ok((log, found))
    }

    /// The closes in the files beside `journal`, in order, for a reader that is not the mount
    /// (nothing is created or cut).
    pub fn read(journal: &Path) -> io::Result<Vec<Closed>> {
        let mut found = Vec::new();
        for path in halves(journal) {
            match std::fs::read(path) {
                Ok(bytes) => found.extend(parse(&bytes).0),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        found.sort_by_key(|c| c.seq);
        Ok(found)
    }

    /// The file closes go to now (for errors).
    pub fn path(&self) -> &Path {
        &self.halves[self.current].path
    }

    /// Appends `c`, synced to disk before this returns if `durable`. A line written in part
    /// (a full disk) is cut off again, so that the next begins where it began.
    pub fn append(&mut self, c: Closed, durable: bool) -> io::Result<()> {
        let line = c.line();
        let h = &mut self.halves[self.current];
        let r = (&h.file)
            .write_all(line.as_bytes())
            .and_then(|()| if durable { h.file.sync_data() } else { Ok(()) });
        if let Err(e) = r {
            let _ = h.file.set_len(h.len);
            return Err(e);
        }
        h.len += line.len() as u64;
        h.last_seq = c.seq;
        self.durable |= durable;
        self.pending.push(c);
        Ok(())
    }

    /// Whether closes wait for the database.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hands the closes not taken yet to the database. From here, closes go to the other
    /// file if it is empty, so that the one handed over can be cut once it is taken.
    pub fn take(&mut self) -> Taking {
        let other = 1 - self.current;
        if self.halves[other].len == 0 {
            self.current = other;
        }
        Taking {
            closes: std::mem::take(&mut self.pending),
            durable: std::mem::take(&mut self.durable),
        }
    }

    /// The database has every close up to order `seq`: the files to cut now, each holding
    /// none after it and taking no closes, to be cut without this lock held (a cut may wait
    /// for the writeback of the file's pages, and closes would wait for it); then
    /// [`Log::cut_done`]. The file closes go to is cut at a later turn. (A cut that fails
    /// leaves lines the database has: the next open skips them.)
    pub fn taken(&self, seq: i64) -> Vec<(usize, File)> {
        (0..2)
            .filter(|&i| i != self.current)
            .filter(|&i| self.halves[i].len > 0 && self.halves[i].last_seq <= seq)
            .filter_map(|i| self.halves[i].file.try_clone().ok().map(|f| (i, f)))
            .collect()
    }

    /// File `i` of [`Log::taken`] was cut. (No close went to it meanwhile: only a
    /// [`Log::take`] makes it the file closes go to, and the caller takes nothing between.)
    pub fn cut_done(&mut self, i: usize) {
        self.halves[i].len = 0;
    }

    /// The database could not take `t`: its closes wait again, before those appended since.
    pub fn untaken(&mut self, t: Taking) {
        let mut closes = t.closes;
        closes.append(&mut self.pending);
        self.pending = closes;
        self.durable |= t.durable;
    }

    /// Cuts both files: the database has every close they hold (at open).
    pub fn cut_all(&mut self) -> io::Result<()> {
        self.halves[0].cut()?;
        self.halves[1].cut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(seq: i64, path: &str) -> Closed {
        Closed {
            seq,
            closed_at: 1_700_000_000,
            staged: format!(".cairn/staging/1-2-{seq}"),
            path: path.into(),
            owner: "12:34".into(),
        }
    }

    #[test]
    fn names_with_tabs_newlines_and_backslashes_come_back_as_they_were() {
        let c = closed(7, "a\tb/c\nd\\e\\t.dat");
        let line = c.line();
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert_eq!(Closed::parse(line.trim_end_matches('\n')), Some(c));
        assert_eq!(Closed::parse("C\t1\t2\ta\\q\tb\tc"), None, "unknown escape");
        assert_eq!(Closed::parse("C\t1\t2\ta\tb"), None, "a field missing");
    }

    #[test]
    fn a_line_cut_short_ends_the_file_and_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let journal = d.path().join("journal.db");
        let (mut log, found) = Log::open(&journal).unwrap();
        assert!(found.is_empty());
        log.append(closed(1, "a"), false).unwrap();
        log.append(closed(2, "b"), true).unwrap();
        drop(log);
        let half = journal.with_extension("log.0");
        let whole = std::fs::metadata(&half).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&half).unwrap();
        f.write_all(b"C\t3\t17000").unwrap();
        drop(f);
        assert_eq!(Log::read(&journal).unwrap().len(), 2);
        let (_log, found) = Log::open(&journal).unwrap();
        assert_eq!(found, [closed(1, "a"), closed(2, "b")]);
        assert_eq!(std::fs::metadata(&half).unwrap().len(), whole);
    }
}
