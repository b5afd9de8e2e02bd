//! The `cairnd` binary's own contract: usage, config errors, one instance per host.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cairnd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairnd"));
    c.stdin(Stdio::null()).env("CAIRN_LOG", "info");
    c
}

/// A catalog with host h1, and a config for h1 whose token file is `<dir>/token` (not
/// written).
fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    cairn_catalog::Catalog::init(&url).unwrap();
    cairn_catalog::Catalog::open(&url)
        .unwrap()
        .write(|tx| tx.create_host("h1", None, None))
        .unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[catalog]\nurl = \"{url}\"\n[host]\nname = \"h1\"\n[daemon]\ninterval = \"1s\"\n\
             socket = \"{d}/cairnd.sock\"\nlock_file = \"{d}/cairnd.lock\"\n\
             [transfer]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{d}/token\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    (dir, config)
}

/// Waits for the socket of a cairnd started in `dir`, then stops it with SIGTERM.
fn wait_and_stop(mut child: std::process::Child, dir: &std::path::Path) {
    let sock = dir.join("cairnd.sock");
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("cairnd exited with {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "cairnd never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_host_name_the_catalog_does_not_know_is_refused_not_added() {
    let (dir, config) = setup();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"h1\"", "name = \"h1-typo\"");
    std::fs::write(&config, text).unwrap();
    let out = cairnd().arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "host \"h1-typo\" (host.name in {}) is not in the catalog",
            config.display()
        )),
        "{err}"
    );
    assert!(err.contains("cairn host create h1-typo"), "{err}");
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let hosts = cairn_catalog::Catalog::open(&url)
        .unwrap()
        .read(|tx| tx.hosts())
        .unwrap();
    let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["h1"], "nothing added");
}

#[test]
fn a_token_file_other_users_may_read_is_refused_until_chmod_600() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, config) = setup();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n").unwrap();
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = cairnd().arg("--config").arg(&config).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "mode {mode:o}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{} (transfer.token_file) is open to other users (mode 0{mode:o}): run `chmod \
                 600 {}`",
                token.display(),
                token.display()
            )),
            "{err}"
        );
    }
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let child = cairnd()
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_and_stop(child, dir.path());
}

#[test]
fn usage_errors_exit_2() {
    let out = cairnd().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage: cairnd"), "{err}");
    assert!(err.contains("--bogus"), "{err}");
}

#[test]
fn version_and_help_exit_0() {
    let out = cairnd().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("cairnd {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = cairnd().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config <FILE>"));
}

#[test]
fn a_config_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, "[daemon]\nworkerz = 3\n").unwrap();
    let out = cairnd().arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workerz"));
}

#[test]
fn a_second_cairnd_for_the_host_refuses_to_start_and_sigterm_exits_0() {
    let (dir, config) = setup();
    let mut first = cairnd()
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.path().join("cairnd.sock");
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "first cairnd never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = cairnd().arg("--config").arg(&config).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another cairnd holds"), "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(err.contains("host h1"), "{err}");
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn with_a_log_dir_cairnd_writes_daily_files() {
    let (dir, config) = setup();
    let logs = dir.path().join("logs");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[daemon]\n",
        &format!(
            "[daemon]\nlog_dir = \"{}\"\nlog_keep_days = 7\n",
            logs.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("cairnd-2001-01-01.log"), "ancient\n").unwrap();
    let mut child = cairnd().arg("--config").arg(&config).spawn().unwrap();
    let today = &cairn_catalog::units::format_time_short(cairn_catalog::units::now())[..10];
    let file = logs.join(format!("cairnd-{today}.log"));
    let start = Instant::now();
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("cairnd start")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no log line in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !logs.join("cairnd-2001-01-01.log").exists(),
        "files past their keep are deleted"
    );
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("cairnd stopped.")
    );
}

#[test]
fn a_tls_key_other_users_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, config) = setup();
    let d = dir.path();
    for f in ["host.pem", "host.key", "ca.pem"] {
        std::fs::write(d.join(f), "not read: the key's mode is checked first\n").unwrap();
    }
    let key = d.join("host.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[transfer]\n",
        &format!(
            "[transfer]\ntls_cert = \"{d}/host.pem\"\ntls_key = \"{d}/host.key\"\n\
             tls_ca = \"{d}/ca.pem\"\n",
            d = d.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let out = cairnd().arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{} (transfer.tls_key) is open to other users (mode 0644): run `chmod 600 {}`",
            key.display(),
            key.display()
        )),
        "{err}"
    );
}
