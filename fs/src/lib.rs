//! cairnfs, the whole archive as one file system on every host.
//!
//! The FUSE file system is built in a later step (see docs/ARCHITECTURE.md). What exists now
//! is its configuration and catalog check, so that `cairnfs` fails with a clear message instead
//! of pretending to mount.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cairn_catalog::{Catalog, Config};

/// Checks the catalog, then reports that the mount is not built yet.
pub fn run(config: &Config, mountpoint: &Path) -> Result<()> {
    Catalog::open(&config.catalog.url).context("failed to open the catalog")?;
    bail!(
        "cannot mount {}: the cairnfs file system is not built yet in this version",
        mountpoint.display()
    )
}
