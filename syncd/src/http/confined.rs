//! Opening a registered file by its path under a node's root, and nowhere else: the kernel
//! resolves the path beneath the root's directory (`openat2` with `RESOLVE_BENEATH`), so no
//! `..`, absolute symlink or symlinked directory leads out of it, and the final component is
//! opened with `O_NOFOLLOW`. The check is the open itself: nothing can be swapped between a
//! check and the open, and it costs one path walk of the components under the root.
//!
//! A kernel without `openat2` (before 5.6), or a seccomp filter that refuses it, gets the
//! older way: the path opened by name, then refused if its canonical form is not under the
//! root's (one `readlink` per component of both, which a batch of small files felt: a
//! quarter of the serving host's CPU).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a confined open failed.
#[derive(Debug)]
pub enum Refused {
    /// The path leads outside the root.
    Outside,
    /// It cannot be opened (missing, a symlink, unreadable).
    Open(io::Error),
}

/// A node's root, opened once for the files of a request.
pub struct Root {
    path: PathBuf,
    dir: Option<File>,
}

/// `struct open_how` of `linux/openat2.h` (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

impl Root {
    /// The root at `path`; if it cannot be opened as a directory, each open says why.
    pub fn new(path: &Path) -> Root {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .ok();
        Root {
            path: path.to_owned(),
            dir,
        }
    }

    /// Opens `rel` (relative, as registered) for reading, confined to the root.
    pub fn open(&self, rel: &str) -> Result<File, Refused> {
        let Some(dir) = &self.dir else {
            return Err(Refused::Open(
                std::fs::metadata(&self.path)
                    .err()
                    .unwrap_or_else(|| io::Error::other("the root is not a directory")),
            ));
        };
        let name = CString::new(rel.as_bytes())
            .map_err(|_| Refused::Open(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: a valid directory descriptor, a NUL-terminated path and an `open_how` of
        // the size passed; the descriptor returned is owned by the `File` made of it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
            return Ok(unsafe { File::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EXDEV) => Err(Refused::Outside),
            // No `openat2` in this kernel, or a seccomp filter (a container's) that refuses
            // what it does not know with `EPERM`, which a read-only open does not otherwise
            // give: the older way, which gives the real error if there is one.
            Some(libc::ENOSYS | libc::EPERM | libc::E2BIG) => self.open_by_name(rel),
            _ => Err(Refused::Open(e)),
        }
    }

    /// Without `openat2`: open by name, then compare canonical paths.
    fn open_by_name(&self, rel: &str) -> Result<File, Refused> {
        let full = self.path.join(rel);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(Refused::Open)?;
        let real = std::fs::canonicalize(&full).map_err(Refused::Open)?;
        let real_root = std::fs::canonicalize(&self.path).map_err(Refused::Open)?;
        if !real.starts_with(&real_root) {
            return Err(Refused::Outside);
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_outside(r: Result<File, Refused>) -> bool {
        matches!(r, Err(Refused::Outside))
    }

    #[test]
    fn opens_inside_and_refuses_every_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b/f.dat"), b"inside").unwrap();
        std::fs::write(outside.join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("a/rel")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/inner")).unwrap();
        std::os::unix::fs::symlink("b/f.dat", root.join("a/link.dat")).unwrap();
        let r = Root::new(&root);
        check(&root, &|rel| r.open(rel));
        // The older way, for a kernel without `openat2`, refuses the same.
        check(&root, &|rel| r.open_by_name(rel));
        // A root that is not there fails each open, saying so.
        let gone = Root::new(&dir.path().join("gone"));
        match gone.open("a/b/f.dat") {
            Err(Refused::Open(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    fn check(root: &Path, open: &dyn Fn(&str) -> Result<File, Refused>) {
        let outside = root.parent().unwrap().join("outside");
        let r = open;
        let read = |f: File| std::io::read_to_string(f).unwrap();
        assert_eq!(read(r("a/b/f.dat").ok().unwrap()), "inside");
        // A relative symlinked directory that stays inside is followed.
        assert_eq!(read(r("a/inner/f.dat").ok().unwrap()), "inside");
        assert!(refused_outside(r("a/abs/secret")));
        assert!(refused_outside(r("a/rel/secret")));
        assert!(refused_outside(r("../outside/secret")));
        assert!(refused_outside(r(outside.join("secret").to_str().unwrap())));
        // The final component is never a symlink, even to a file inside.
        match r("a/link.dat") {
            Err(Refused::Open(e)) => assert_eq!(e.raw_os_error(), Some(libc::ELOOP)),
            other => panic!("a symlinked file was opened: {:?}", other.map(|_| ())),
        }
        match r("a/b/missing.dat") {
            Err(Refused::Open(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
