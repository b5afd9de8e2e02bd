//! What the package installs matches the programs it describes.
//!
//! cairnfs parses its command line itself (the form mount(8) uses); its man page and
//! completions come from `cairn_node::cli::Cairnfs`. These tests hold the two to each other.

use std::process::{Command, Stdio};

use cairn_tests::bin;
use clap::CommandFactory;

fn cairnfs(args: &[&str]) -> std::process::Output {
    Command::new(bin("cairnfs"))
        .args(args)
        .env_remove("CAIRN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("cairnfs runs")
}

#[test]
fn the_cairnfs_man_page_describes_the_options_cairnfs_takes() {
    let help = String::from_utf8(cairnfs(&["--help"]).stdout).unwrap();
    let described = cairn_node::cli::Cairnfs::command();
    let mut flags = Vec::new();
    for arg in described.get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| *l != "help") {
            flags.push(format!("--{long}"));
        }
        if let Some(short) = arg.get_short().filter(|s| *s != 'h') {
            flags.push(format!("-{short}"));
        }
    }
    assert!(flags.len() >= 4, "{flags:?}");
    // Every option cairnfs lists is described.
    for line in help.lines().map(str::trim_start) {
        if let Some(word) = line
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with('-'))
        {
            assert!(flags.iter().any(|f| f == word), "{word} is not described");
        }
    }
    // And cairnfs takes every option described: with a config that does not exist, it fails
    // on the config (1), not on its command line (2).
    for flag in &flags {
        let mut args = vec!["cairn", "/nonexistent/mnt"];
        args.push(flag);
        if !matches!(flag.as_str(), "-f" | "--foreground") {
            args.push(if flag == "-o" {
                "ro,nofail"
            } else {
                "/nonexistent/x.toml"
            });
        }
        if flag != "--config" {
            args.extend(["--config", "/nonexistent/cairn.toml"]);
        }
        let out = cairnfs(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "cairnfs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(cairnfs(&["--bogus", "/mnt"]).status.code(), Some(2));
}
