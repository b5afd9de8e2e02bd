//! cairnd, the per-host daemon: carries out what the catalog asks of the nodes of one host —
//! initialise, import (by request, by scan, and automatically on close), copy between nodes,
//! verify, release, tidy — and fires the auto-actions that each new copy sets off.
//!
//! [`run`] is the whole daemon; `main.rs` only parses arguments, sets up logging and turns
//! SIGTERM into the shutdown future. See [`daemon`] for the loop, [`refresh`] and [`plan`] for
//! a pass, and [`tasks`] for the work. What lives on a node (its layout, the copy pipeline, the
//! importer, the socket protocol) is in the `cairn-node` crate, shared with cairnfs.

pub mod batch;
pub mod cache;
pub mod daemon;
pub mod disks;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod nodes;
pub mod notify;
pub mod percent;
pub mod plan;
pub mod procfs;
pub mod pullbatch;
pub mod refresh;
pub mod socket;
pub mod sources;
pub mod standing;
pub mod tasks;
pub mod transfer;
pub mod watch;

pub use daemon::run;
