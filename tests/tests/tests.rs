//! End-to-end tests with real processes. Index of modules:
//!
//! - `concurrency`: several processes writing one SQLite catalog at once.
//! - `daemon`: cairnd on one host: seed 004's single-host flow, refused roots, crash safety,
//!   racing cleans.
//! - `hosts`: several hosts pulling from each other over HTTP: seed 004 across three hosts,
//!   resume after a dead source, corrupt remote sources, the HTTP server's refusals.

//! - `transport`: transport disks on loop-mounted ext4 images, taken over when mounted.

mod concurrency;
mod daemon;
mod hosts;
mod mount;
mod transport;
