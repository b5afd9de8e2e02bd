//! End-to-end tests with real processes. Index of modules:
//!
//! - `concurrency`: several processes writing one catalog at once; eight hosts cleaning one
//!   file (both backends).
//! - `daemon`: cairnd on one host: seed 004's single-host flow, refused roots, crash safety,
//!   racing cleans.
//! - `handoff`: a closed file is never lost: the mount killed after writers closed, the catalog
//!   locked or its WAL unwritable, a name too long for the node.
//! - `hosts`: several hosts pulling from each other over HTTP: seed 004 across three hosts,
//!   resume after a dead source, corrupt remote sources, the HTTP server's refusals, mutual
//!   TLS and the peers it refuses, batched pulls of small files (a corrupt one among them,
//!   the batch endpoint's refusals).
//! - `mount`: cairnfs mounted for real (FUSE), against its catalog and cairnd.
//! - `programs`: real programs writing into the mount (cp, install, rsync, tar, unzip, dd,
//!   the shell, Python's shutil, numpy, h5py, astropy), 20 runs each.
//! - `packaging`: what the package installs matches the programs (cairnfs's described
//!   arguments against its own parser).
//! - `postgres`: PostgreSQL only: wake-ups by NOTIFY, a database restart mid-sync, cairnd
//!   through an outage of the catalog.
//! - `sites`: a distant site with a hot standby of a PostgreSQL primary and a delayed link
//!   that can be cut: reads from the standby, writes to the primary, read-your-writes, a
//!   replica stopped or lagging, TLS to the catalog.
//! - `strangers`: a flood of half-sent requests against a cairnd with few descriptors, the
//!   header and idle timeouts, a long pull left alone.
//! - `structure`: the code's shape: the mount does not link the daemon, no file of the mount
//!   over 800 lines, no import cycle among a crate's modules.
//! - `users`: who may do what on a shared host: real users on a root mount, owners by name,
//!   modes, the admin group.
//! - `transport`: transport disks on loop-mounted ext4 images, taken over when mounted.
//!
//! The end-to-end modules run on SQLite, or on PostgreSQL with `CAIRN_TEST_CATALOG=postgres`
//! (see `tests/pg.sh`).

mod concurrency;
mod daemon;
mod handoff;
mod hosts;
mod mount;
mod packaging;
mod postgres;
mod programs;
mod sites;
mod strangers;
mod structure;
mod transport;
mod users;
