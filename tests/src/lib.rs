//! End-to-end harness: real processes against real catalogs.
//!
//! - [`Archive`] owns a temp dir with a fresh catalog and runs the real `cairn` CLI. The
//!   catalog is SQLite, or a new PostgreSQL database when `CAIRN_TEST_CATALOG=postgres` (on the
//!   server of `CAIRN_TEST_PG_URL`; see [`test_catalog`]).
//! - [`TestHost`] is one host: its config, node roots and a real `cairnd` process, killed in
//!   `Drop` even when a test fails.
//!
//! - [`Mount`] is a real cairnfs mount of a host's view, unmounted in `Drop`.
//! - [`site::Sites`] is a PostgreSQL primary, a hot standby of it at a distant site and the
//!   link between them ([`proxy::LinkProxy`], a delay each way, cut on command); its archive's
//!   [`Archive::far_host`]s read from the standby and write through the link.
//!
//! The binaries are the workspace's own (`target/<profile>/cairn`, `cairnd`); cargo builds them
//! for the test run because their crates have integration tests of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_node::NodeRoot;

pub mod pki;
pub mod proxy;
pub mod site;

/// Path of a workspace binary built for this test run.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo nextest run --workspace` (or `cargo build \
         --workspace` first)",
        path.display()
    );
    path
}

/// Writes `contents` at `rel` below `root`, creating the directories on the way.
pub fn write_file(root: &Path, rel: &str, contents: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("a path below root")).unwrap();
    std::fs::write(p, contents).unwrap();
}

/// Writes `mib` MiB of varied bytes (not all zeros, so a truncated copy has another md5).
pub fn big_file(path: &Path, mib: usize) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().expect("a file path")).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, b) in block.iter_mut().enumerate().step_by(4096) {
            *b = (i * 131 + j / 4096) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// A TCP port free on 127.0.0.1 right now (bound, then released for the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Bytes of the copy or pull in progress on the node at `root` (its file in `.cairn/tmp/`);
/// 0 when there is none.
pub fn partial_bytes(root: &Path) -> u64 {
    std::fs::read_dir(NodeRoot::new(root).tmp())
        .ok()
        .and_then(|d| d.flatten().next())
        .and_then(|e| e.metadata().ok())
        .map_or(0, |m| m.len())
}

/// Polls `check` until it returns true or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Chooses the end-to-end tests' catalog backend.
pub const CATALOG_ENV: &str = "CAIRN_TEST_CATALOG";

/// A fresh catalog URL for a test: a SQLite file in `dir`, or with `CAIRN_TEST_CATALOG=postgres`
/// a new database on the server of `CAIRN_TEST_PG_URL`, dropped with the returned guard.
pub fn test_catalog(dir: &Path) -> (String, Option<cairn_catalog::testing::TestDatabase>) {
    match std::env::var(CATALOG_ENV).as_deref() {
        Ok("postgres") => {
            let server = std::env::var(cairn_catalog::testing::PG_URL_ENV).unwrap_or_else(|_| {
                panic!(
                    "{CATALOG_ENV}=postgres needs a server in {} (tests/pg.sh run …)",
                    cairn_catalog::testing::PG_URL_ENV
                )
            });
            let db = cairn_catalog::testing::TestDatabase::create(&server);
            (db.url.clone(), Some(db))
        }
        Ok("sqlite") | Err(_) => (format!("sqlite://{}/catalog.db", dir.display()), None),
        Ok(other) => panic!("{CATALOG_ENV}={other:?}: expected sqlite or postgres"),
    }
}

/// A catalog in a temp dir, and the hosts that use it.
pub struct Archive {
    pub dir: tempfile::TempDir,
    /// The catalog, as the test and the hosts next to it reach it.
    pub url: String,
    /// How a distant site reaches it, for [`Archive::far_host`] ([`site::Sites::archive`]).
    pub remote: Option<Remote>,
    /// The PostgreSQL database of this archive, dropped with it.
    _db: Option<cairn_catalog::testing::TestDatabase>,
}

/// The catalog as a distant site reaches it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The primary, through the link.
    pub url: String,
    /// The site's hot standby.
    pub replica: String,
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

impl Archive {
    pub fn new() -> Archive {
        let mut dir = tempfile::tempdir().expect("a temp dir");
        if std::env::var_os("CAIRN_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let (url, db) = test_catalog(dir.path());
        Self::with_catalog(dir, url, db, None)
    }

    /// An archive whose catalog is a new database on the PostgreSQL server at `server`.
    pub fn on_postgres(server: &str) -> Archive {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = cairn_catalog::testing::TestDatabase::create(server);
        Self::with_catalog(dir, db.url.clone(), Some(db), None)
    }

    fn with_catalog(
        dir: tempfile::TempDir,
        url: String,
        db: Option<cairn_catalog::testing::TestDatabase>,
        remote: Option<Remote>,
    ) -> Archive {
        // The shared secret every host of this archive presents to the others, readable by
        // its owner only (cairnd refuses a token file others may read).
        let token = dir.path().join("token");
        std::fs::write(&token, format!("test-token-{}\n", std::process::id())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = Archive {
            dir,
            url,
            remote,
            _db: db,
        };
        let out = a.run_cli(None, &["db", "init"]);
        assert!(
            out.status.success(),
            "db init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        a
    }

    pub fn catalog(&self) -> cairn_catalog::Catalog {
        cairn_catalog::Catalog::open(&self.url).expect("the catalog opens")
    }

    fn run_cli(&self, config: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("cairn"));
        cmd.args(args)
            .env("CAIRN_CATALOG", &self.url)
            .stdin(Stdio::null());
        match config {
            Some(c) => cmd.env("CAIRN_CONFIG", c),
            None => cmd.env("CAIRN_CONFIG", "/dev/null"),
        };
        cmd.output().expect("cairn runs")
    }

    /// Runs `cairn` (as if on no particular host), asserts success, returns stdout.
    pub fn cairn(&self, args: &[&str]) -> String {
        let out = self.run_cli(None, args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// A host named `name` with its own dir, config, socket and lock (not started).
    pub fn host(&self, name: &str) -> TestHost {
        self.host_with(name, "")
    }

    /// Like [`Archive::host`], with `daemon_extra` appended to the config's `[daemon]` table
    /// (e.g. `max_attempts = 1`; an `interval` there replaces the tests' 1 s). The host is
    /// created in the catalog, as an administrator does before its cairnd first starts.
    pub fn host_with(&self, name: &str, daemon_extra: &str) -> TestHost {
        self.host_at(name, daemon_extra, None)
    }

    /// A host at the distant site of [`site::Sites`]: it writes to the primary through the
    /// link and reads from the site's standby, with `catalog_extra` appended to its
    /// `[catalog]` table (e.g. `replica_max_lag = "2s"`).
    pub fn far_host(&self, name: &str, catalog_extra: &str) -> TestHost {
        self.far_host_with(name, catalog_extra, "")
    }

    /// Like [`Archive::far_host`], with `daemon_extra` appended to its `[daemon]` table.
    pub fn far_host_with(&self, name: &str, catalog_extra: &str, daemon_extra: &str) -> TestHost {
        let remote = self
            .remote
            .as_ref()
            .expect("an archive of site::Sites has a distant site");
        self.host_at(
            name,
            daemon_extra,
            Some(format!(
                "url = \"{}\"\nreplica = \"{}\"\n{catalog_extra}",
                remote.url, remote.replica
            )),
        )
    }

    fn host_at(&self, name: &str, daemon_extra: &str, catalog: Option<String>) -> TestHost {
        // Created in the catalog, as an administrator does before its cairnd first starts.
        self.catalog()
            .write(|tx| tx.ensure_host(name))
            .expect("the host is created");
        let catalog = catalog.unwrap_or_else(|| format!("url = \"{}\"\n", self.url));
        let interval = if daemon_extra.contains("interval") {
            ""
        } else {
            "interval = \"1s\"\n"
        };
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let config = dir.join("cairn.toml");
        let address = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            &config,
            format!(
                "[catalog]\n{catalog}[host]\nname = \"{name}\"\n[daemon]\n\
                 {interval}socket = \"{d}/run/cairnd.sock\"\n\
                 lock_file = \"{d}/run/cairnd.lock\"\n{daemon_extra}\n\
                 [transfer]\nlisten = \"{address}\"\nadvertise = \"{address}\"\n\
                 token_file = \"{t}\"\n\
                 [transport]\nwatch = [\"{d}/watch\"]\n\
                 [import]\nacq_depth = 3\n\
                 [cache]\ndir = \"{d}/cache\"\n",
                d = dir.display(),
                t = self.dir.path().join("token").display(),
            ),
        )
        .unwrap();
        TestHost {
            name: name.to_owned(),
            dir,
            config,
            address,
            url: self.url.clone(),
            child: None,
            open_files: None,
        }
    }

    /// `node stats` as (name → (files, bytes)).
    pub fn stats(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let mut cat = self.catalog();
        cat.read(|tx| tx.node_stats(None))
            .unwrap()
            .into_iter()
            .map(|s| (s.node, (s.files, s.bytes)))
            .collect()
    }

    /// The state of the copy of `path` on `node`, if the catalog has one.
    pub fn has(&self, node: &str, path: &str) -> Option<cairn_catalog::model::Has> {
        let mut cat = self.catalog();
        cat.read(|tx| {
            let Some(f) = tx.file_by_path(path)? else {
                return Ok(None);
            };
            let n = tx.node(node)?;
            Ok(tx.copy_on(f.id, n.id)?.map(|c| c.has))
        })
        .unwrap()
    }

    /// Files and bytes healthy on `node`.
    pub fn on(&self, node: &str) -> (u64, u64) {
        self.stats().get(node).copied().unwrap_or((0, 0))
    }

    /// Waits until no copy or import request is pending or active.
    pub fn wait_idle(&self, timeout: Duration) {
        use cairn_catalog::model::RequestState::{Active, Pending};
        wait_until(timeout, "all requests done", || {
            let mut cat = self.catalog();
            cat.read(|tx| {
                let copies = tx.copy_requests(&cairn_catalog::catalog::CopyRequestFilter {
                    states: vec![Pending, Active],
                    ..Default::default()
                })?;
                let imports = tx.import_requests(None, &[Pending, Active])?;
                Ok(copies.is_empty() && imports.is_empty())
            })
            .unwrap()
        });
    }
}

/// One host: a cairnd process and its node roots.
pub struct TestHost {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// `127.0.0.1:port` of this host's cairnd HTTP server.
    pub address: String,
    url: String,
    child: Option<Child>,
    /// The (soft, hard) limit on open files cairnd starts with; `None`: the test's own.
    open_files: Option<(u64, u64)>,
}

impl TestHost {
    /// The root directory for node `node` on this host (created).
    pub fn root(&self, node: &str) -> PathBuf {
        let p = self.dir.join("nodes").join(node);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Creates node `name` on this host, in a group of its own name, with its root under this
    /// host's dir, and asks for its init and activation (`extra`: more `node create` options,
    /// e.g. `--archive`). Returns the root.
    pub fn node(&self, name: &str, extra: &[&str]) -> PathBuf {
        let r = self.root(name);
        let root = format!("--root={}", r.display());
        let host = format!("--host={}", self.name);
        let mut args = vec![
            "node",
            "create",
            name,
            "--create-group",
            &root,
            &host,
            "--init",
            "--activate",
        ];
        args.extend(extra);
        self.cairn(&args);
        r
    }

    /// Caps how fast this host pulls from others (`transfer.max_rate`, e.g. `"4MiB"`), so a
    /// pull is still running when the test acts on it. Before `start`.
    pub fn limit_pulls(&self, rate: &str) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let cfg = cfg.replace(
            "[transfer]\n",
            &format!("[transfer]\nmax_rate = \"{rate}\"\n"),
        );
        std::fs::write(&self.config, cfg).unwrap();
    }

    /// Starts cairnd with these (soft, hard) limits on open files, as an old system or a
    /// unit without `LimitNOFILE=` would. Before `start`.
    pub fn limit_open_files(&mut self, soft: u64, hard: u64) {
        self.open_files = Some((soft, hard));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cairnd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts cairnd and waits until it listens on its socket.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "cairnd of {} already started",
            self.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(bin("cairnd"));
        cmd.arg("--config")
            .arg(&self.config)
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: between fork and exec only setrlimit(2) runs, which is async-signal-safe,
            // on a struct copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("cairnd starts");
        self.child = Some(child);
        let sock = self.dir.join("run/cairnd.sock");
        let log = self.log_path();
        wait_until(Duration::from_secs(20), "cairnd to listen", || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "cairnd of {} exited with {status}: {}",
                    self.name,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            sock.exists()
        });
    }

    /// Runs `cairn` with this host's config (so it nudges this host's cairnd).
    pub fn cairn(&self, args: &[&str]) -> String {
        let out = Command::new(bin("cairn"))
            .args(args)
            .env_remove("CAIRN_CATALOG")
            .env("CAIRN_CONFIG", &self.config)
            .stdin(Stdio::null())
            .output()
            .expect("cairn runs");
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("cairnd running");
        // SAFETY: kill(2) with a pid we spawned and own; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// SIGKILL: the crash case.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A plain HTTP/1.1 GET over a fresh connection, for probing cairnd's server as any client
/// would: returns the status code, the headers (lowercased names) and the body.
pub fn http_get(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).expect("cairnd accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

impl Archive {
    /// The bearer token every host of this archive uses.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// Whether FUSE mounts can be tested here. Without `/dev/fuse` or `fusermount3` a test may
/// skip, saying so loudly — but never in CI (`CI` set), where that is a failure.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but FUSE is not usable (/dev/fuse and fusermount3 are needed; \
             packaging/install-deps.sh installs fuse3)"
        );
        eprintln!(
            "\n*** SKIPPING a cairnfs test: /dev/fuse or fusermount3 is missing here. \
             Install fuse3 (packaging/install-deps.sh). ***\n"
        );
    }
    ok
}

/// Whether the kernel offers FUSE over io_uring to new mounts (the `fuse` module's
/// `enable_uring`, Linux 6.14 and later). With `CAIRN_TEST_IO_URING` set (the io_uring pass of
/// `.ci/run`), it must.
pub fn io_uring_offered() -> bool {
    let on = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y");
    assert!(
        on || std::env::var_os("CAIRN_TEST_IO_URING").is_none(),
        "CAIRN_TEST_IO_URING is set but the kernel does not offer FUSE over io_uring \
         (/sys/module/fuse/parameters/enable_uring is not Y)"
    );
    on
}

/// A cairnfs mount of one host's view, in the foreground; unmounted and stopped in `Drop`.
pub struct Mount {
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl TestHost {
    /// Mounts this host's view of the archive at `<host dir>/mnt`, writing into `write_node`
    /// if given. Waits until the mount is up.
    pub fn mount(&self, write_node: Option<&str>) -> Mount {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        if !config.contains("[fs]") {
            config.push_str("[fs]\nttl = \"100ms\"\n");
            if let Some(n) = write_node {
                config.push_str(&format!("write_node = \"{n}\"\n"));
            }
            std::fs::write(&self.config, config).unwrap();
        }
        let dir = self.dir.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let log = self.dir.join("cairnfs.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(bin("cairnfs"))
            .arg(&dir)
            .arg("--config")
            .arg(&self.config)
            .arg("-f")
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cairnfs starts");
        let start = Instant::now();
        while !is_mounted(&dir) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "cairnfs exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "cairnfs did not mount: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            dir,
            child: Some(child),
            log,
        }
    }
}

/// Whether a cairnfs mount is at `dir` (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let after = l.split(" - ").nth(1).unwrap_or_default();
            let mut f = after.split(' ');
            l.split(' ').nth(4) == Some(&*want.to_string_lossy())
                && f.next().is_some_and(|t| t.starts_with("fuse"))
                && f.next() == Some("cairn")
        })
    })
}

impl Mount {
    /// The cairnfs process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("cairnfs running").id()
    }

    /// `rel` below the mount point.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of extended attribute `user.cairn.NAME` of `rel`, read with getfattr(1).
    pub fn xattr(&self, rel: &str, name: &str) -> Result<String, String> {
        let out = Command::new("getfattr")
            .args(["--only-values", "--absolute-names", "-n"])
            .arg(format!("user.cairn.{name}"))
            .arg(self.path(rel))
            .output()
            .expect("getfattr runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Sets `user.cairn.NAME` of `rel` with setfattr(1); the error text on failure.
    pub fn set_xattr(&self, rel: &str, name: &str, value: &str) -> Result<(), String> {
        let out = Command::new("setfattr")
            .arg("-n")
            .arg(format!("user.cairn.{name}"))
            .arg("-v")
            .arg(value)
            .arg(self.path(rel))
            .output()
            .expect("setfattr runs");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// SIGTERM, then waits for cairnfs to exit; returns its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("cairnfs running");
        // SAFETY: kill(2) with a pid we spawned and own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// Waits for cairnfs to exit by itself (after an unmount from outside).
    pub fn stop_waiting(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("cairnfs running");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "cairnfs did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and the process not reaped: it stays a zombie (as a mount killed a moment ago
    /// whose parent has not yet waited for it) until the returned child is waited for.
    /// Detaches what it left at the mount point.
    pub fn kill9_unreaped(&mut self) -> Child {
        let mut c = self.child.take().expect("cairnfs running");
        let _ = c.kill();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.dir)
            .output();
        c
    }

    /// SIGKILL: the mount goes away mid-operation. Kills cairnfs and detaches what it left at the mount point. Once only: a
    /// later call (or the drop) must not detach the next mount made at the same place.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .output();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .output();
        }
        self.kill9();
    }
}

/// An ext4 filesystem in an image file, mounted with `mount -o loop`; unmounted on drop. For
/// transport disks, and for a write node that fills up.
pub struct LoopDisk {
    pub image: PathBuf,
    /// Where it is mounted; a test that unmounts it itself sets this to `None`.
    pub at: Option<PathBuf>,
}

impl LoopDisk {
    /// An image of `mib` MiB in `dir`, formatted; `None` where `mkfs.ext4` fails.
    pub fn new(dir: &Path, name: &str, mib: u64) -> Option<LoopDisk> {
        let image = dir.join(format!("{name}.img"));
        let ok = Command::new("truncate")
            .args(["-s", &format!("{mib}M")])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-m", "0"])
                .arg(&image)
                .status()
                .is_ok_and(|s| s.success());
        ok.then_some(LoopDisk { image, at: None })
    }

    pub fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.image)
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.at = Some(at.to_owned());
    }

    pub fn umount(&mut self) {
        if let Some(at) = self.at.take() {
            // Retry briefly: a daemon may be between two reads of the disk.
            for _ in 0..50 {
                if Command::new("umount")
                    .arg(&at)
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("cannot unmount {}", at.display());
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if let Some(at) = self.at.take() {
            let _ = Command::new("umount").arg("-l").arg(at).status();
        }
    }
}

/// Whether loop disks can be mounted here (as root). Outside CI, says loudly that the test is
/// skipped; in CI, fails.
pub fn can_mount_loop_disks() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "loop-disk tests need root in CI"
        );
        eprintln!("SKIPPED: loop-disk tests need root to mount loop devices");
    }
    root
}
