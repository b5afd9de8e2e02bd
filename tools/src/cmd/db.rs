use anyhow::{Context, Result};
use cairn_catalog::Catalog;
use cairn_catalog::schema::SCHEMA_VERSION;
use clap::Subcommand;

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty catalog
    Init,
    /// Apply the migrations an older catalog lacks
    Upgrade,
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    match cmd {
        Command::Init => {
            Catalog::init(&ctx.url).context("failed to initialise the catalog")?;
            println!(
                "Catalog schema version {SCHEMA_VERSION} initialised at {}.",
                cairn_catalog::db::postgres::redact(&ctx.url)
            );
        }
        Command::Upgrade => {
            let (before, after) =
                Catalog::upgrade(&ctx.url).context("failed to upgrade the catalog")?;
            if before == after {
                println!("Catalog is already at schema version {after}.");
            } else {
                println!("Catalog upgraded from schema version {before} to {after}.");
            }
        }
    }
    Ok(())
}
