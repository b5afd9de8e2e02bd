//! cairnd, the per-host daemon: carries out what the catalog asks of the nodes of one host —
//! initialise, import (by request, by scan, and automatically on close), copy between nodes,
//! verify, release, tidy — and fires the auto-actions that each new copy sets off.
//!
//! [`run`] is the whole daemon; `main.rs` only parses arguments, sets up logging and turns
//! SIGTERM into the shutdown future. See [`daemon`] for the loop and [`tasks`] for the work.

pub mod cache;
pub mod daemon;
pub mod http;
pub mod listen;
pub mod lock;
pub mod nudge;
pub mod procfs;
pub mod tasks;
pub mod transfer;
pub mod transport;
pub mod watch;

pub use daemon::run;
