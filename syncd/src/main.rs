use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    let mut config_path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: cairnd [--config FILE]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("cairnd: unexpected argument {other:?}\nusage: cairnd [--config FILE]");
                return ExitCode::from(2);
            }
        }
    }
    let result = cairn_catalog::Config::load(config_path.as_deref())
        .context("failed to load the configuration")
        .and_then(|c| cairn_syncd::run(&c));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
