//! The command tree, after alpenhorn's: one module per group of subcommands.

mod acq;
mod db;
mod file;
mod group;
mod host;
mod node;
mod request;
mod status;
mod sync;
mod tables;
mod transport;

use anyhow::Result;
use clap::Subcommand;

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the catalog
    #[command(subcommand)]
    Db(db::Command),
    /// Hosts: the machines that run a cairnd
    #[command(subcommand)]
    Host(host::Command),
    /// Storage groups: where copies are wanted
    #[command(subcommand)]
    Group(group::Command),
    /// Storage nodes: the disks and trees that hold copies
    #[command(subcommand)]
    Node(node::Command),
    /// Archived files and their copies
    #[command(subcommand)]
    File(file::Command),
    /// Acquisitions: the units files are grouped in
    #[command(subcommand)]
    Acq(acq::Command),
    /// Copy and import requests
    #[command(subcommand)]
    Request(request::Command),
    /// Transport disks: the sneakernet
    #[command(subcommand)]
    Transport(transport::Command),
    /// One screen on the whole archive: hosts, nodes, queues, recent transfers
    Status {
        /// Refresh the screen in place every 2 seconds
        #[arg(long)]
        watch: bool,
    },
    /// Print the shell completions of cairn (or of cairnd, cairnfs), e.g.
    /// `cairn completions bash > ~/.local/share/bash-completion/completions/cairn`
    Completions {
        shell: clap_complete::Shell,
        /// The program to complete
        #[arg(long, value_enum, default_value_t = crate::docs::Program::Cairn)]
        program: crate::docs::Program,
    },
    /// Write the man pages and shell completions of cairn, cairnd and cairnfs into DIR
    /// (`man/`, `completions/bash|zsh|fish/`), as the package installs them
    #[command(hide = true)]
    GenerateDocs {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

pub fn run(ctx: &Ctx, cmd: Command) -> Result<()> {
    match cmd {
        Command::Db(c) => db::run(ctx, c),
        Command::Host(c) => host::run(ctx, c),
        Command::Group(c) => group::run(ctx, c),
        Command::Node(c) => node::run(ctx, c),
        Command::File(c) => file::run(ctx, c),
        Command::Acq(c) => acq::run(ctx, c),
        Command::Request(c) => request::run(ctx, c),
        Command::Transport(c) => transport::run(ctx, c),
        Command::Status { watch } => status::run(ctx, watch),
        // Answered before the config is loaded (main.rs).
        Command::Completions { .. } | Command::GenerateDocs { .. } => {
            unreachable!("handled by crate::docs")
        }
    }
}

/// What `clean` asks for a copy: keep it after all (`--cancel`), delete it as soon as allowed
/// (`--now`), or let it go when space is needed.
pub fn clean_wants(cancel: bool, now: bool) -> cairn_catalog::model::Wants {
    use cairn_catalog::model::Wants;
    if cancel {
        Wants::Keep
    } else if now {
        Wants::ReleaseNow
    } else {
        Wants::ReleaseWhenNeeded
    }
}

/// clap value parser for sizes: `50GiB`, `10 GB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    cairn_catalog::units::parse_size(s).map_err(|e| e.to_string())
}

/// clap value parser for durations: `10s`, `7d`, `1h30m`; as seconds.
pub fn parse_duration_secs(s: &str) -> Result<i64, String> {
    let d = cairn_catalog::units::parse_duration(s).map_err(|e| e.to_string())?;
    i64::try_from(d.as_secs()).map_err(|_| format!("duration {s:?} is too long"))
}
