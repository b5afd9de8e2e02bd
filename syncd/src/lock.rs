//! One cairnd per host: an exclusive `flock` on `daemon.lock_file`, held for the daemon's life.
//! The holder writes its pid and host name into the file, so a second instance can say who
//! holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cairnd holds {path} ({holder}); only one may run per host")]
    Held { path: PathBuf, holder: String },
    #[error("cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while the daemon runs; the lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(path: &Path, host: &str) -> Result<InstanceLock, LockError> {
        let open_err = |source| LockError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        // SAFETY: the fd is valid for the life of `file`; flock does not touch memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                path: path.to_owned(),
                holder: if holder.is_empty() {
                    "unknown holder".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        file.set_len(0).map_err(open_err)?;
        file.rewind().map_err(open_err)?;
        writeln!(file, "pid {} host {host}", std::process::id()).map_err(open_err)?;
        Ok(InstanceLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_told_who_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/cairnd.lock");
        let first = InstanceLock::acquire(&path, "alpenhost1").unwrap();
        let err = InstanceLock::acquire(&path, "alpenhost1").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("alpenhost1"), "{msg}");
        drop(first);
        InstanceLock::acquire(&path, "alpenhost1").expect("free again after drop");
    }
}
