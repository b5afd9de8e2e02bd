//! End-to-end tests with real processes. Index of modules:
//!
//! - `concurrency`: several processes writing one SQLite catalog at once.
//! - `daemon`: cairnd on one host: seed 004's single-host flow, refused roots, crash safety,
//!   racing cleans.

mod concurrency;
mod daemon;
