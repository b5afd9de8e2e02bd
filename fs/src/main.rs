use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

const USAGE: &str = "usage: cairnfs MOUNTPOINT [--config FILE]";

fn main() -> ExitCode {
    let mut config_path: Option<PathBuf> = None;
    let mut mountpoint: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other if mountpoint.is_none() && !other.starts_with('-') => {
                mountpoint = Some(PathBuf::from(other));
            }
            other => {
                eprintln!("cairnfs: unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(mountpoint) = mountpoint else {
        eprintln!("cairnfs: missing MOUNTPOINT\n{USAGE}");
        return ExitCode::from(2);
    };
    let result = cairn_catalog::Config::load(config_path.as_deref())
        .context("failed to load the configuration")
        .and_then(|c| cairn_fs::run(&c, &mountpoint));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
