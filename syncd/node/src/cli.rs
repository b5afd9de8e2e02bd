//! The command lines of a host's two programs, `cairnd` and `cairnfs`, as clap describes them.
//!
//! cairnd parses its arguments with [`Cairnd`]. `cairn` generates the man pages and shell
//! completions of all three programs from these and its own definition (`cairn completions
//! SHELL --program cairnd`), so what the package installs is what the programs accept.
//!
//! cairnfs parses its command line itself, in the form mount(8) uses (`cairnfs SOURCE DIR -o
//! OPTIONS`, `-oOPTIONS` glued or apart, fstab options passed through); [`Cairnfs`] describes
//! the same arguments for its man page and completions, and a test in `tools/` holds the two
//! to each other through `cairnfs --help`.

use std::path::PathBuf;

use clap::{Parser, ValueHint};

const FILES_AND_ENVIRONMENT: &str = "\
Files:
  /etc/cairn/cairn.toml    the configuration (every key: /usr/share/doc/cairn/cairn.toml)
  /var/lib/cairn/          the embedded SQLite catalog, by default
  /var/cache/cairn/        files fetched from other hosts for the mount
  /run/cairn/              cairnd's socket and instance lock

Environment:
  CAIRN_CONFIG   the configuration file, when --config is not given
  CAIRN_LOG      the log level and filter, e.g. \"info\" (the default) or \"debug\"";

/// The cairn daemon of this host: imports, copies, verifies and cleans its nodes' copies
#[derive(Debug, Parser)]
#[command(
    name = "cairnd",
    version,
    long_about = "cairnd carries out what the catalog asks of this host's storage nodes: it \
        initialises nodes, imports files, copies files into its nodes (from other nodes of this \
        host, or pulled from other hosts over HTTP or rsync), serves its copies to other hosts, \
        verifies copies against their md5, deletes released copies under the archive-copies \
        rule, and fires the auto-sync and auto-clean rules that each new copy sets off. One \
        cairnd runs per host, in the foreground; SIGTERM stops it cleanly.\n\n\
        Exit status: 0 after a clean stop, 1 when it cannot start or fails, 2 for a bad \
        command line.",
    after_long_help = FILES_AND_ENVIRONMENT
)]
pub struct Cairnd {
    /// The configuration file [default: $CAIRN_CONFIG, else /etc/cairn/cairn.toml]
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,
}

/// The cairn archive mounted as one file system
#[derive(Debug, Parser)]
#[command(
    name = "cairnfs",
    long_about = "cairnfs mounts the whole archive at MOUNTPOINT: every file of the catalog in one \
        tree, wherever its copies are. Copies on this host are read from their disk; other \
        files are fetched by this host's cairnd into its cache. With [fs] write_node set, files \
        written into the mount are archived when they are closed. It also mounts with `mount -t fuse.cairnfs cairn \
        MOUNTPOINT -o config=FILE`, or from an fstab line. Unmount with `umount MOUNTPOINT`.",
    after_long_help = FILES_AND_ENVIRONMENT
)]
pub struct Cairnfs {
    /// [SOURCE] MOUNTPOINT: SOURCE is ignored (mount(8) passes one)
    #[arg(
        value_name = "MOUNTPOINT",
        num_args = 1..=2,
        required = true,
        value_hint = ValueHint::DirPath
    )]
    pub paths: Vec<PathBuf>,
    /// The configuration file [default: $CAIRN_CONFIG, else /etc/cairn/cairn.toml]; also
    /// -o config=FILE
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Mount options, comma-separated: allow_other, allow_root, auto_unmount, ro, config=FILE;
    /// fstab options (_netdev, nofail, …) are accepted
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground, logging to stderr (otherwise cairnfs returns once mounted and
    /// logs to daemon.log_dir, if set)
    #[arg(short = 'f', long)]
    pub foreground: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definitions_are_consistent() {
        Cairnd::command().debug_assert();
        Cairnfs::command().debug_assert();
    }

    #[test]
    fn cairnfs_takes_what_mount_passes_it() {
        let a = Cairnfs::try_parse_from([
            "cairnfs",
            "cairn",
            "/archive",
            "-o",
            "rw,config=/etc/cairn/cairn.toml",
        ])
        .unwrap();
        assert_eq!(a.paths.len(), 2);
        assert_eq!(a.options, ["rw,config=/etc/cairn/cairn.toml"]);
        assert!(Cairnfs::try_parse_from(["cairnfs"]).is_err());
    }
}
