//! The cache directory of files fetched from other hosts for reads through cairnfs
//! (`cache.dir`): how its files are named, and how a read marks one as used.
//!
//! cairnd fills it (the fetch and the eviction live in `cairn_syncd::cache`); cairnfs reads
//! from it. A file is `<dir>/<md5>` once its whole content matched that md5; while it arrives
//! it is `<dir>/<md5>.part`, which cairnfs may read as it grows. Eviction takes the least
//! recently used first, by modification time, which [`touch`] sets.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    dir: PathBuf,
}

impl CacheDir {
    pub fn new(dir: impl Into<PathBuf>) -> CacheDir {
        CacheDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The complete, checked file with this md5.
    pub fn complete(&self, md5: &str) -> PathBuf {
        self.dir.join(md5)
    }

    /// The file with this md5 while it arrives.
    pub fn part(&self, md5: &str) -> PathBuf {
        self.dir.join(format!("{md5}.part"))
    }
}

/// Marks a cached file as just used: eviction takes the least recently used first.
pub fn touch(f: &std::fs::File) {
    let _ = f.set_times(std::fs::FileTimes::new().set_modified(SystemTime::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_named_by_its_md5() {
        let c = CacheDir::new("/var/cache/cairn");
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(c.complete(md5), Path::new("/var/cache/cairn").join(md5));
        assert_eq!(
            c.part(md5),
            Path::new("/var/cache/cairn").join(format!("{md5}.part"))
        );
    }

    #[test]
    fn touch_makes_a_file_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        touch(&f);
        let age = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert!(age.elapsed().unwrap().as_secs() < 60);
    }
}
