//! cairnd, the per-host daemon: moves, checks and cleans copies for the nodes of one host.
//!
//! The daemon itself is built in a later step (see docs/ARCHITECTURE.md). What exists now is
//! its configuration and catalog check, so that `cairnd` on a host fails with a clear message
//! instead of pretending to work.

use anyhow::{Context, Result, bail};
use cairn_catalog::{Catalog, Config};

/// Checks that the catalog opens for this host, then reports that the daemon is not built.
pub fn run(config: &Config) -> Result<()> {
    Catalog::open(&config.catalog.url).context("failed to open the catalog")?;
    bail!(
        "cairnd for host {:?}: the daemon's work loop is not built yet in this version; \
         requests written by `cairn` stay pending in the catalog",
        config.host_name()
    )
}
