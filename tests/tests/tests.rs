//! End-to-end tests with real processes. Index of modules:
//!
//! - `concurrency`: several processes writing one SQLite catalog at once.

mod concurrency;
