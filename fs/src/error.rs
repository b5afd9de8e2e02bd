//! Why an operation on the mount failed. The adapter maps each variant to one errno
//! ([`crate::fuse::errno`], an exhaustive match).

use std::io;

use cairn_catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    /// The caller's permissions do not allow it (the mode bits, POSIX's rules).
    #[error("permission denied")]
    Access,
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("{0}")]
    ReadOnly(String),
    /// Archived files and directories cannot be changed through the mount.
    #[error("{0}")]
    NotPermitted(String),
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("{0}")]
    Invalid(String),
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute {0:?} is not supported")]
    Unsupported(String),
    /// The bytes cannot be had: no reachable copy, or they did not match the md5.
    #[error("{0}")]
    Unavailable(String),
    #[error("bad file handle")]
    BadHandle,
    /// The caller got a signal while the request waited ([`crate::interrupts`]).
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;
