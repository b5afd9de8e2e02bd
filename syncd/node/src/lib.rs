//! What lives on a cairn node and on a host, shared by the mount (`cairnfs`) and the daemon
//! (`cairnd`), so that neither depends on the other (DESIGN.md, "layers point down"):
//!
//! - [`root`]: the layout of a node root (`.cairn/node.toml`, `tmp`, `staging`, `kept`), the
//!   marker and its checks, and the capacity of a root's filesystem;
//! - [`copyfile`]: copying into a node with the md5 in the same pass, fsync and the rename into
//!   place (invariant 2);
//! - [`ids`]: user and group names for the ids of this host, and back (owners are recorded
//!   by name: ids differ between sites);
//! - [`importer`]: which files the `[import]` rules take, and into which acquisition;
//! - [`cli`]: the command lines of cairnd and cairnfs, for cairnd's parser and the man pages;
//! - [`cache`]: how the cache directory names its files, and marking one as used;
//! - [`socket`]: cairnd's local socket protocol, typed, and the nudge that wakes cairnd;
//! - [`journal`]: the host's journal of closed files, kept until the catalog has them;
//! - [`waiting`]: cairnd's registrations of files found on a node while the catalog could not
//!   take them;
//! - [`logfile`]: daily log files;
//! - [`temp`]: a temporary file removed on every way out unless kept.
//!
//! Nothing here runs a thread pool, speaks HTTP or watches with inotify: the mount links it.

pub mod cache;
pub mod cli;
pub mod copyfile;
pub mod ids;
pub mod importer;
pub mod journal;
pub mod logfile;
pub mod procstat;
pub mod root;
pub mod socket;
pub mod temp;
pub mod waiting;

pub use root::{NodeRoot, RootState};
