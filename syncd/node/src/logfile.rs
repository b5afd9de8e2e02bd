//! Daily log files: `daemon.log_dir/cairnd-YYYY-MM-DD.log` (UTC days), one per day, those older
//! than `daemon.log_keep_days` deleted when a new day's file is opened.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_catalog::units::{format_time_short, now};

/// The log directory and today's open file.
pub struct DailyLog {
    dir: PathBuf,
    keep_days: u32,
    current: Mutex<Option<(String, File)>>,
}

/// A handle that `tracing_subscriber` writes one event through.
pub struct DailyWriter(Arc<DailyLog>);

fn today(at: i64) -> String {
    format_time_short(at)[..10].to_owned()
}

impl DailyLog {
    /// Opens (creating) the directory and today's file, and deletes files past their keep.
    pub fn open(dir: &Path, keep_days: u32) -> std::io::Result<Arc<DailyLog>> {
        std::fs::create_dir_all(dir)?;
        let log = Arc::new(DailyLog {
            dir: dir.to_owned(),
            keep_days,
            current: Mutex::new(None),
        });
        log.file_for(now())?;
        Ok(log)
    }

    pub fn writer(self: &Arc<Self>) -> DailyWriter {
        DailyWriter(self.clone())
    }

    fn path(&self, day: &str) -> PathBuf {
        self.dir.join(format!("cairnd-{day}.log"))
    }

    /// Makes sure the open file is the one of the day of `at`; on a new day, prunes.
    fn file_for(&self, at: i64) -> std::io::Result<()> {
        let day = today(at);
        let mut cur = self.current.lock().expect("log lock");
        if cur.as_ref().is_some_and(|(d, _)| *d == day) {
            return Ok(());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&day))?;
        *cur = Some((day, file));
        drop(cur);
        self.prune(at);
        Ok(())
    }

    /// Deletes daily files older than `keep_days` before `at`.
    fn prune(&self, at: i64) {
        let cutoff = today(at - i64::from(self.keep_days) * 86_400);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let day = name
                .strip_prefix("cairnd-")
                .and_then(|s| s.strip_suffix(".log"));
            // Dates compare as text: YYYY-MM-DD.
            if day.is_some_and(|d| d.len() == 10 && d < cutoff.as_str()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Write for DailyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.file_for(now())?;
        let mut cur = self.0.current.lock().expect("log lock");
        match cur.as_mut() {
            Some((_, f)) => f.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut cur = self.0.current.lock().expect("log lock");
        cur.as_mut().map_or(Ok(()), |(_, f)| f.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_todays_file_and_prunes_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cairnd-2000-01-01.log"), "old\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a log\n").unwrap();
        let recent = today(now() - 86_400);
        std::fs::write(
            dir.path().join(format!("cairnd-{recent}.log")),
            "yesterday\n",
        )
        .unwrap();
        let log = DailyLog::open(dir.path(), 30).unwrap();
        log.writer().write_all(b"hello\n").unwrap();
        let today_file = dir.path().join(format!("cairnd-{}.log", today(now())));
        assert_eq!(std::fs::read_to_string(today_file).unwrap(), "hello\n");
        assert!(
            !dir.path().join("cairnd-2000-01-01.log").exists(),
            "past its keep"
        );
        assert!(
            dir.path().join(format!("cairnd-{recent}.log")).exists(),
            "within its keep"
        );
        assert!(dir.path().join("notes.txt").exists(), "not ours");
    }
}
