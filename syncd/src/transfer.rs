//! The transfer step, as a trait: how the bytes of a source copy reach a temp file here.
//!
//! Local copies (both nodes on this host) are a plain pipelined copy. Copies from another host
//! (HTTP pull) implement the same trait, so the rest of the copy task — temp file, md5 check,
//! fsync, rename, record (invariant 2) — is one code path for both.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use cairn_catalog::model::Id;

use crate::copyfile::{self, Copied};

/// Where a source copy's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On a node of this host: the file's absolute path.
    Local(PathBuf),
}

/// A copy to read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub node_id: Id,
    pub node: String,
    pub copy_id: Id,
    pub location: Location,
}

pub trait Transfer: Send + Sync {
    /// A word for logs: "local copy", "http".
    fn method(&self) -> &'static str;

    /// Writes the source's bytes into `tmp` (created or resumed), fsynced, and returns their
    /// size and md5. Stops with `ErrorKind::Interrupted` when `cancel` is set.
    fn fetch(&self, source: &Source, tmp: &Path, cancel: &AtomicBool) -> std::io::Result<Copied>;
}

/// Copies between nodes of one host.
#[derive(Debug, Default)]
pub struct LocalTransfer;

impl Transfer for LocalTransfer {
    fn method(&self) -> &'static str {
        "local copy"
    }

    fn fetch(&self, source: &Source, tmp: &Path, cancel: &AtomicBool) -> std::io::Result<Copied> {
        match &source.location {
            Location::Local(path) => copyfile::copy_with_md5(path, tmp, cancel, &mut |_| {}),
        }
    }
}
