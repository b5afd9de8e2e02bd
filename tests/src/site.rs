//! Two sites on one machine: a PostgreSQL primary at the archive, a hot standby of it at a
//! distant site, and the link between them.
//!
//! - [`PgServer`] is a throwaway PostgreSQL server of one test (initdb into a temp dir, a free
//!   port on 127.0.0.1, trust authentication on loopback), stopped and removed in `Drop`.
//! - [`Sites`] is the whole setup of DESIGN.md's "Several sites": the primary (site B, where
//!   [`Archive::url`] reaches it directly), a [`LinkProxy`] in front of it standing for the
//!   link from site A, and a streaming standby at site A made by `pg_basebackup -R` through
//!   that link, so its replication, like site A's writes, pays the link's delay and stops when
//!   the link is cut.
//! - [`Sites::archive`] makes an [`Archive`] whose catalog is a new database on the primary;
//!   hosts made with [`Archive::far_host`] write to the primary through the link and read from
//!   the standby (`[catalog] replica`), hosts made with [`Archive::host`] use the primary
//!   directly.
//!
//! The servers run as the `postgres` user when the tests run as root (initdb refuses root).
//! Without PostgreSQL's server binaries a test using these is skipped, loudly, except in CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::proxy::LinkProxy;
use crate::{Archive, free_port, wait_until};

/// The directory of the newest PostgreSQL server binaries (`initdb`, `pg_ctl`,
/// `pg_basebackup`) under `/usr/lib/postgresql`, if any.
pub fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

/// Whether PostgreSQL servers can be started here; outside CI, says loudly that `test` is
/// skipped when not.
pub fn can_run_servers(test: &str) -> bool {
    if pg_bin().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: PostgreSQL's server binaries are needed in CI (apt-get install postgresql)"
    );
    eprintln!(
        "\n*** SKIPPED {test}: no PostgreSQL server binaries under /usr/lib/postgresql ***\n"
    );
    false
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server program as the cluster's owner (`postgres` when we are root).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(what: &str, out: std::io::Result<Output>) {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory the `postgres` user may use (temp dirs are private to their creator).
fn owned_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    if is_root() {
        check(
            "chown",
            Command::new("chown").arg("postgres:").arg(dir).output(),
        );
    }
}

/// A PostgreSQL server of one test; stopped and removed in `Drop`.
pub struct PgServer {
    /// Holds `data/`, the unix socket and `server.log`.
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl PgServer {
    /// A new primary in `dir` (created), started, with `settings` (`name=value`) on top of
    /// the defaults.
    pub fn primary(dir: &Path, settings: &[&str]) -> PgServer {
        let bin = pg_bin().expect("PostgreSQL server binaries");
        owned_dir(dir);
        check(
            "initdb",
            as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .output(),
        );
        let server = PgServer {
            dir: dir.to_owned(),
            port: free_port(),
            bin,
        };
        server.append_conf(settings);
        server.start();
        server
    }

    /// A hot standby in `dir` (created) of the primary reached at `primary` (a proxy, for a
    /// distant site), made with `pg_basebackup -R` and started.
    pub fn standby(dir: &Path, primary: std::net::SocketAddr, settings: &[&str]) -> PgServer {
        let bin = pg_bin().expect("PostgreSQL server binaries");
        owned_dir(dir);
        check(
            "pg_basebackup",
            as_owner(&bin.join("pg_basebackup"))
                .args(["-h", &primary.ip().to_string()])
                .args(["-p", &primary.port().to_string()])
                .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-D"])
                .arg(dir.join("data"))
                .output(),
        );
        let server = PgServer {
            dir: dir.to_owned(),
            port: free_port(),
            bin,
        };
        server.append_conf(settings);
        server.start();
        server
    }

    fn append_conf(&self, settings: &[&str]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("data/postgresql.conf"))
            .unwrap();
        for s in settings {
            writeln!(f, "{s}").unwrap();
        }
    }

    /// Serves TLS with `pki`'s certificate from now on (restarts the server). A standby made
    /// from this server afterwards serves it too (the files are in the data directory).
    pub fn enable_tls(&self, pki: &crate::pki::Pki) {
        let data = self.dir.join("data");
        std::fs::copy(&pki.cert, data.join("server.crt")).unwrap();
        std::fs::copy(&pki.key, data.join("server.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if is_root() {
            check(
                "chown",
                Command::new("chown")
                    .arg("postgres:")
                    .arg(data.join("server.crt"))
                    .arg(data.join("server.key"))
                    .output(),
            );
        }
        self.append_conf(&[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
        ]);
        self.stop();
        self.start();
    }

    /// Starts the server (again, after [`PgServer::stop`]).
    pub fn start(&self) {
        // fsync off: a test server loses nothing it needs in a crash of the machine.
        check(
            "pg_ctl start",
            as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-h 127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=300",
                    self.port,
                    self.dir.display()
                ))
                .arg("start")
                .output(),
        );
    }

    /// Stops the server (fast: sessions are ended).
    pub fn stop(&self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL of database `db` on this server, as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A superuser session on database `db`.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url(db)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settings of the sites' servers: a lost link is noticed in seconds rather than a minute,
/// and the standby tries again every half second once it is back.
const PRIMARY_SETTINGS: &[&str] = &["wal_sender_timeout = '5s'"];
const STANDBY_SETTINGS: &[&str] = &[
    "wal_receiver_timeout = '5s'",
    "wal_receiver_status_interval = '1s'",
    "wal_retrieve_retry_interval = '500ms'",
    "hot_standby_feedback = on",
];

/// A primary at the archive's site, a standby of it at a distant site, and the link between.
pub struct Sites {
    // Fields drop in this order: the standby, the link, the primary, then their directory.
    /// The distant site's hot standby, replicating through `link`.
    pub standby: PgServer,
    /// The link from the distant site to the primary.
    pub link: LinkProxy,
    pub primary: PgServer,
    _dir: tempfile::TempDir,
}

impl Sites {
    /// The two sites, `one_way` apart (a round trip costs twice that).
    pub fn new(one_way: Duration) -> Sites {
        Sites::build(one_way, None)
    }

    /// Like [`Sites::new`], with both servers serving TLS with `pki`'s certificate.
    pub fn with_tls(one_way: Duration, pki: &crate::pki::Pki) -> Sites {
        Sites::build(one_way, Some(pki))
    }

    fn build(one_way: Duration, tls: Option<&crate::pki::Pki>) -> Sites {
        let dir = tempfile::Builder::new()
            .prefix("cairn-sites.")
            .tempdir()
            .expect("a temp dir");
        owned_dir(dir.path());
        let primary = PgServer::primary(&dir.path().join("primary"), PRIMARY_SETTINGS);
        if let Some(pki) = tls {
            primary.enable_tls(pki);
        }
        let link = LinkProxy::start(primary.addr(), one_way);
        let standby = PgServer::standby(&dir.path().join("standby"), link.addr(), STANDBY_SETTINGS);
        let sites = Sites {
            standby,
            link,
            primary,
            _dir: dir,
        };
        sites.wait_streaming(Duration::from_secs(30));
        sites
    }

    /// The primary's URL for database `db` as the distant site reaches it: through the link.
    pub fn primary_via_link(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.link.port())
    }

    /// Waits until the standby streams from the primary.
    pub fn wait_streaming(&self, timeout: Duration) {
        wait_until(timeout, "the standby to stream from the primary", || {
            self.primary
                .client("postgres")
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .map(|r| r.get::<_, i64>(0) > 0)
                .unwrap_or(false)
        });
    }

    /// Waits until the standby has replayed everything the primary has written so far; the
    /// time it took.
    pub fn wait_replayed(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let target: String = self
            .primary
            .client("postgres")
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        wait_until(
            timeout,
            "the standby to replay the primary's writes",
            || {
                self.standby
                    .client("postgres")
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                        &[&target],
                    )
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false)
            },
        );
        start.elapsed()
    }

    /// Stops replay on the standby (it goes on receiving): a replica falling behind.
    pub fn pause_replay(&self) {
        self.standby
            .client("postgres")
            .batch_execute("SELECT pg_wal_replay_pause()")
            .unwrap();
    }

    pub fn resume_replay(&self) {
        self.standby
            .client("postgres")
            .batch_execute("SELECT pg_wal_replay_resume()")
            .unwrap();
    }

    /// An archive whose catalog is a new database on the primary; see the module note.
    pub fn archive(&self) -> Archive {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = cairn_catalog::testing::TestDatabase::create(&self.primary.url("postgres"));
        let remote = crate::Remote {
            url: self.primary_via_link(&db.name),
            replica: self.standby.url(&db.name),
        };
        let a = Archive::with_catalog(dir, db.url.clone(), Some(db), Some(remote));
        // The schema must be at the standby before a distant host opens the catalog.
        self.wait_replayed(Duration::from_secs(30));
        a
    }
}
