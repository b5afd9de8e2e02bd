//! The cairn catalog: the data index every cairn process shares.
//!
//! - [`Catalog`] opens a catalog by URL and runs named queries in transactions ([`Tx`]),
//!   retrying whole transactions when the database is busy; [`Pool`] shares connections
//!   between the threads of a process; a [`Routing`] sends reads to a hot standby at this
//!   site and writes to the primary ([`replica`]).
//! - [`db`] is the narrow backend interface and its two backends, SQLite and PostgreSQL.
//! - [`schema`] holds the migrations and the version check.
//! - [`rules`] holds the storage-graph rules as plain functions; [`policy`] the sync, clean and
//!   verify a user asks for on files (the CLI and the mount's attributes).
//! - [`config`] is the typed `cairn.toml`; [`units`] parses and prints sizes, durations, times.

pub mod catalog;
pub mod config;
pub mod db;
pub mod error;
pub mod md5;
pub mod md5fast;
pub mod md5lanes;
pub mod model;
pub mod policy;
pub mod pool;
pub mod replica;
pub mod rules;
pub mod schema;
#[doc(hidden)]
pub mod testing;
pub mod units;

pub use catalog::{Catalog, Tx};
pub use config::Config;
pub use error::CatalogError;
pub use pool::Pool;
pub use replica::Routing;
