//! A test certificate authority and a server certificate signed by it, made with openssl(1):
//! for cairnd's HTTPS pulls and for TLS to a PostgreSQL catalog.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `ca.pem` (the authority), `host.pem` and `host.key` (the server's), in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new authority in `dir` (created) and a server certificate with the subject
    /// alternative names `san` (e.g. `IP:127.0.0.1,DNS:localhost`); `None` where openssl
    /// fails.
    pub fn new(dir: &Path, san: &str) -> Option<Pki> {
        std::fs::create_dir_all(dir).ok()?;
        let run = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        };
        std::fs::write(dir.join("san.ext"), format!("subjectAltName={san}\n")).ok()?;
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cairn test CA",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "host.key",
            "-out",
            "host.csr",
            "-subj",
            "/CN=cairn test server",
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            "host.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "host.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])?;
        Some(Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("host.pem"),
            key: dir.join("host.key"),
        })
    }

    /// Like [`Pki::new`]; where openssl cannot make one, says loudly that `test` is skipped
    /// (and fails in CI).
    pub fn or_skip(dir: &Path, san: &str, test: &str) -> Option<Pki> {
        let pki = Pki::new(dir, san);
        if pki.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: openssl(1) is needed for the TLS tests in CI"
            );
            eprintln!("SKIPPED {test}: openssl(1) could not make a test certificate authority");
        }
        pki
    }
}
