//! `cairn`, the admin command line: writes requests into the catalog; cairnd carries them out.

mod cmd;
mod docs;
mod output;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use cairn_catalog::{Catalog, Config, Routing};
use clap::Parser;

/// Manage a cairn archive: hosts, storage groups and nodes, files and their copies.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, propagate_version = true)]
struct Cli {
    /// Config file [default: $CAIRN_CONFIG, else /etc/cairn/cairn.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Catalog URL, overriding `catalog.url` of the config (e.g. sqlite:///srv/catalog.db)
    #[arg(long, global = true, value_name = "URL", env = "CAIRN_CATALOG")]
    catalog: Option<String>,
    /// Print JSON instead of tables (listings and shows)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: cmd::Command,
}

/// What every command gets: the config, the catalog URL, output mode.
pub struct Ctx {
    pub config: Config,
    pub url: String,
    /// Where reads and writes go: with `catalog.replica`, reads from this site's standby.
    pub routing: Routing,
    pub json: bool,
}

impl Ctx {
    /// Opens the catalog, checking its schema version. Every catalog a command opens shares
    /// the routing, so a listing after a change in one command shows the change.
    pub fn open(&self) -> Result<Catalog> {
        Catalog::open_routed(&self.routing).context("failed to open the catalog")
    }
}

fn run(cli: Cli) -> Result<()> {
    // Completions and man pages need no config and no catalog.
    match cli.command {
        cmd::Command::Completions { shell, program } => {
            return docs::completions(shell, program, &mut std::io::stdout());
        }
        cmd::Command::GenerateDocs { dir } => return docs::generate(&dir),
        _ => {}
    }
    let config = Config::load(cli.config.as_deref()).context("failed to load the configuration")?;
    // A catalog named on the command line is read and written there, without the config's
    // replica (which is a standby of the config's catalog).
    let routing = match &cli.catalog {
        Some(url) => Routing::primary(url),
        None => Routing::from_config(&config.catalog),
    };
    let url = cli.catalog.unwrap_or_else(|| config.catalog.url.clone());
    let ctx = Ctx {
        config,
        url,
        routing,
        json: cli.json,
    };
    cmd::run(&ctx, cli.command)?;
    // What this command wrote, the next command (and the site's other processes) read from
    // the replica: wait until it is there, briefly.
    if ctx.routing.has_written()
        && let Ok(mut cat) = ctx.open()
    {
        cat.wait_replicated();
    }
    // Wake this machine's cairnd, if one runs here, so a request made here starts at once.
    cairn_node::socket::nudge(&ctx.config.daemon.socket);
    Ok(())
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`cairn file list | head`), instead of panicking on a broken pipe.
    // SAFETY: setting a signal's disposition to the default touches no memory of ours; it is
    // done before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
