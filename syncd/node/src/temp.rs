//! Temporary files that clean up after themselves.

use std::fs;
use std::path::{Path, PathBuf};

/// A temporary file (a copy arriving in `.cairn/tmp/`, a fetch into the cache) that is
/// removed when this guard is dropped, on whatever way out, unless [`TempFile::keep`] says
/// it is installed or worth keeping (a partial pull to resume).
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub fn new(path: PathBuf) -> TempFile {
        TempFile { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the file where it is (or wherever it was renamed to).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_file_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (gone, kept) = (dir.path().join("gone"), dir.path().join("kept"));
        fs::write(&gone, b"x").unwrap();
        fs::write(&kept, b"x").unwrap();
        drop(TempFile::new(gone.clone()));
        assert!(!gone.exists());
        assert_eq!(TempFile::new(kept.clone()).keep(), kept);
        assert!(kept.exists());
        drop(TempFile::new(dir.path().join("never-made")));
    }
}
