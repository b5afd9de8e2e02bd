//! The cairnfs command line: usage errors are clear and exit 2, before anything is mounted.
//! (Mounts themselves are tested end to end in `tests/`.)

use std::process::Command;

fn cairnfs(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairnfs"))
        .args(args)
        .output()
        .expect("cairnfs runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_mountpoint_is_a_usage_error() {
    let (code, err) = cairnfs(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing MOUNTPOINT"), "{err}");
}

#[test]
fn unknown_mount_option_is_named() {
    let (code, err) = cairnfs(&["/mnt", "-o", "rw,frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown mount option \"frobnicate\""), "{err}");
}

#[test]
fn a_mountpoint_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    let db = dir.path().join("c.db");
    std::fs::write(
        &cfg,
        format!("[catalog]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .unwrap();
    let missing = dir.path().join("nowhere");
    let (code, err) = cairnfs(&[
        missing.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "-f",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot mount on {}", missing.display())),
        "{err}"
    );
}
