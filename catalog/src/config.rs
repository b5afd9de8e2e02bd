//! The one config file, `cairn.toml`, typed.
//!
//! One `*Config` struct per section, each with its defaults in `impl Default`, so a file need only
//! name what it changes and a missing default file means "all defaults". Every struct denies
//! unknown keys: a misspelt key is an error naming it, never silently ignored. Values are checked
//! after parsing ([`Config::validate`]) so an error names the key and the bad value.
//! `packaging/cairn.toml` shows every key with its default; a test keeps it in step with this file.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

/// Where the config file is read from when neither `--config` nor [`CONFIG_ENV`] says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cairn/cairn.toml";

/// Environment variable naming the config file; `--config` takes precedence over it.
pub const CONFIG_ENV: &str = "CAIRN_CONFIG";

/// The config file could not be read, parsed or accepted.
///
/// The messages do not repeat their source error; print the chain (anyhow's `{:#}`) to see the
/// io or TOML error, which names the unknown key and its line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} (from {origin}) does not exist", path.display())]
    NotFound { path: PathBuf, origin: &'static str },
    #[error("failed to read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid {key} in {}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub catalog: CatalogConfig,
    pub host: HostConfig,
    pub daemon: DaemonConfig,
    pub transfer: TransferConfig,
    pub fs: FsConfig,
    pub cache: CacheConfig,
    pub transport: TransportConfig,
    pub import: ImportConfig,
    /// The file this config was read from; `None` for built-in defaults.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[catalog]`: where the data index lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Catalog URL: `sqlite:///path/to/catalog.db` or `postgres://user@host/db`; with a
    /// `replica`, the primary, where writes go. Default `"sqlite:///var/lib/cairn/catalog.db"`.
    pub url: String,
    /// A PostgreSQL hot standby of `url` at this site, where reads go (lookups, listings,
    /// planning). `""` in the file means none (`None`). Default: none.
    #[serde(with = "optional_text", skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// A replica further behind the primary than this is not read from while the primary
    /// answers. Default `"30s"`.
    pub replica_max_lag: HumanDuration,
    /// How long a read waits for the replica to replay this process's own latest write before
    /// it asks the primary instead. Default `"1s"`.
    pub replica_wait: HumanDuration,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:///var/lib/cairn/catalog.db".to_owned(),
            replica: None,
            replica_max_lag: HumanDuration(std::time::Duration::from_secs(30)),
            replica_wait: HumanDuration(std::time::Duration::from_secs(1)),
        }
    }
}

/// `[host]`: who this machine is in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// This host's name in the catalog. Default: none, meaning the short hostname
    /// (see [`Config::host_name`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `[daemon]`: cairnd's loop and work queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Time between passes over this host's nodes (woken early by a nudge). Default `"10s"`.
    pub interval: HumanDuration,
    /// Tasks (imports, copies, verifies, releases) run at once, in total. Default 4.
    pub workers: usize,
    /// Tasks run at once on any one node, so one slow disk cannot take every worker. Default 2.
    pub node_workers: usize,
    /// Unix socket where cairnfs and the CLI reach cairnd. Default `"/run/cairn/cairnd.sock"`.
    pub socket: PathBuf,
    /// Copies on archive nodes that must remain, besides the one released, before a copy may
    /// be deleted. Default 2.
    pub min_archive_copies: usize,
    /// Attempts at a request before it is marked failed. Default 10.
    pub max_attempts: u32,
    /// Wait before a failed request is tried again; each further failure doubles it, up to an
    /// hour. Default `"10s"`.
    pub retry_delay: HumanDuration,
    /// Lock held by the running cairnd, so a second one on this host refuses to start.
    /// Default `"/run/cairn/cairnd.lock"`.
    pub lock_file: PathBuf,
    /// Directory for daily log files (`cairnd-YYYY-MM-DD.log`, UTC days). Default: none, and
    /// cairnd logs to stderr (the journal under systemd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<PathBuf>,
    /// Days of daily log files kept in `log_dir`; older ones are deleted. Default `30`.
    pub log_keep_days: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration(std::time::Duration::from_secs(10)),
            workers: 4,
            node_workers: 2,
            socket: PathBuf::from("/run/cairn/cairnd.sock"),
            min_archive_copies: 2,
            max_attempts: 10,
            retry_delay: HumanDuration(std::time::Duration::from_secs(10)),
            lock_file: PathBuf::from("/run/cairn/cairnd.lock"),
            log_dir: None,
            log_keep_days: 30,
        }
    }
}

/// `[transfer]`: cairnd's HTTP endpoint serving this host's copies to other hosts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Address (`host:port`) the HTTP server listens on; `""` in the file serves nothing
    /// (`None`). Port 0 picks a free port (for tests). Default `"0.0.0.0:7070"`.
    #[serde(with = "listen_address")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token that peers present (and that this host presents when it
    /// pulls). Without it, copies are neither served nor pulled. Default `"/etc/cairn/token"`.
    pub token_file: PathBuf,
    /// Most bytes per second this host pulls from other hosts, all pulls together. Default:
    /// none (no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<ByteSize>,
    /// Most pulls running at once from any one other host. Default `2`.
    pub pulls_per_peer: usize,
    /// `host:port` at which other hosts reach this cairnd; recorded as this host's address in
    /// the catalog when cairnd starts. Default: none (set it with `cairn host modify
    /// --address`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// How this host pulls from other hosts: `"http"` (from their cairnd) or `"rsync"` (rsync
    /// over a remote shell, logging in with the source node's username and address). Default
    /// `"http"`.
    pub method: TransferMethod,
    /// The remote shell rsync uses for `method = "rsync"`. Default `"ssh -o BatchMode=yes"`.
    pub rsync_rsh: String,
    /// PEM certificate chain of this host, from the archive's authority: the HTTP server
    /// presents it, and so does this host when it pulls (mutual TLS). With `tls_key` and
    /// `tls_ca` (all three or none), copies are served and pulled over TLS only. Default: none
    /// (plain HTTP with the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`; must not be readable by other users. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) of the archive's authority: the only one trusted for the other
    /// hosts' certificates, both the servers this host pulls from and the clients it serves.
    /// Default: none (plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Most time a client may take to send a request's headers, from its first byte (and,
    /// over TLS, the handshake); then the connection is closed. Default `"10s"`.
    pub header_timeout: HumanDuration,
    /// A connection with no request in progress for this long is closed, and so is one whose
    /// peer has read nothing of its response for this long. A response being sent, however
    /// long, is not idle. Default `"60s"`.
    pub idle_timeout: HumanDuration,
    /// Most HTTP connections open at once. A new one beyond it replaces the connection that
    /// has waited longest without a request, or is refused if every one is serving a
    /// request. Default `512`.
    pub max_connections: usize,
    /// Most HTTP connections open at once from one peer address (one IPv6 /64); more are
    /// refused. Default `64`.
    pub max_connections_per_peer: usize,
    /// File descriptors kept for cairnd's own work (node files, the catalog, the socket):
    /// when fewer than this many remain under its limit, a new HTTP connection is treated as
    /// one beyond `max_connections`. Default `256`.
    pub fd_reserve: usize,
    /// Whether `/metrics` asks for the token (`Authorization: Bearer …`) like a copy over
    /// plain HTTP; over TLS every client already holds a certificate from the archive's
    /// authority. Default `false`.
    pub metrics_token: bool,
}

/// The TLS files of a host (`transfer.tls_cert`, `tls_key`, `tls_ca`), all three set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

impl TransferConfig {
    /// The TLS files when TLS is on (validation makes the three keys all set or all unset).
    pub fn tls(&self) -> Option<TlsFiles<'_>> {
        Some(TlsFiles {
            cert: self.tls_cert.as_deref()?,
            key: self.tls_key.as_deref()?,
            ca: self.tls_ca.as_deref()?,
        })
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 7070))),
            token_file: PathBuf::from("/etc/cairn/token"),
            max_rate: None,
            pulls_per_peer: 2,
            advertise: None,
            method: TransferMethod::Http,
            rsync_rsh: "ssh -o BatchMode=yes".to_owned(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            header_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            idle_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            max_connections: 512,
            max_connections_per_peer: 64,
            fd_reserve: 256,
            metrics_token: false,
        }
    }
}

/// `[fs]`: the cairnfs mount.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// Node (on this host) where files written through the mount land. Default: none, and the
    /// mount is read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_node: Option<String>,
    /// Owner (numeric uid) shown for files and directories whose owner the catalog does not
    /// record (written before owners were recorded). Default: the user who mounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group (numeric gid) shown for files and directories whose group the catalog does not
    /// record. Default: the mounting user's group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// How long the kernel may cache names and attributes, so files imported elsewhere appear
    /// within this time. Default `"1s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// Memory the mount may use for what it remembers of the catalog (listings, attributes):
    /// the least recently used goes first beyond it. Default `"256MiB"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_memory: Option<ByteSize>,
    /// Files and directories whose owner (a user or group name) this host does not know show
    /// as this user and its group. Default `"nobody"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_owner: Option<String>,
    /// Members of this group (and root) may ask for copies to be made or removed through the
    /// mount (`user.cairn.sync`, `user.cairn.clean`). Default `"cairn"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<String>,
    /// How long a file written through the mount must stay closed before it is imported:
    /// until then its writer may reopen, append to, truncate, chmod and re-time it (what `cp
    /// -p`, `install`, `>>` and numpy's `open_memmap` do right after `close`). `"0s"` imports
    /// at close. Default `"1s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle: Option<HumanDuration>,
    /// Take the kernel's requests over io_uring where it offers it (Linux 6.14 and later, once
    /// the `fuse` module's `enable_uring` parameter is set): each is served on the CPU of the
    /// program that made it. Default `true`; `false` keeps to `/dev/fuse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_uring: Option<bool>,
}

/// `[cache]`: where cairnd keeps files fetched from other hosts for cairnfs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache directory. Default `"/var/cache/cairn"`.
    pub dir: PathBuf,
    /// Bytes the cache may hold before the least recently used files are evicted.
    /// Default `"50GiB"`.
    pub max_bytes: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/cache/cairn"),
            max_bytes: ByteSize(50 << 30),
        }
    }
}

/// `[transport]`: sneakernet disks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Directories under which mounted transport disks are looked for.
    /// Default `["/media", "/mnt/transport"]`.
    pub watch: Vec<PathBuf>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            watch: vec![PathBuf::from("/media"), PathBuf::from("/mnt/transport")],
        }
    }
}

/// `[import]`: how imported files are grouped into acquisitions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// Leading path components that name a file's acquisition: 3 makes
    /// `2025/02/21/23/1324.dat` part of `2025/02/21`. Default: none, meaning the file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acq_depth: Option<u32>,
    /// Close an acquisition (no more files expected, so it can be complete) when no file has
    /// been added to it for this long, e.g. `"1d"`. Default: none (close with `cairn acq
    /// close`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acq_idle: Option<HumanDuration>,
    /// Regular expressions over the path below the node root: when any are given, only paths
    /// matching at least one are importable. Default: empty (everything but dot files).
    pub include: Vec<String>,
    /// Regular expressions over the path below the node root: a matching path is never
    /// imported. Default: empty.
    pub exclude: Vec<String>,
}

/// How a host pulls copies from other hosts (`transfer.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMethod {
    /// `GET /v1/copy/…` from the other host's cairnd.
    #[default]
    Http,
    /// rsync over a remote shell (`transfer.rsync_rsh`).
    Rsync,
}

/// Text where `""` means none (`catalog.replica`).
mod optional_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let text = String::deserialize(d)?;
        Ok((!text.trim().is_empty()).then_some(text))
    }
}

/// `transfer.listen`: an address, or `""` for none.
mod listen_address {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{text:?} is not an address like 0.0.0.0:7070")))
    }
}

impl Config {
    /// Parses and validates config text; `origin` is the file it came from, named in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        config.source = Some(origin.to_owned());
        config.validate()?;
        Ok(config)
    }

    /// Loads the config from `explicit` (`--config`), else `$CAIRN_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`]. A named file must exist; a missing default file means defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(explicit, std::env::var_os(CONFIG_ENV))
    }

    fn load_with_env(
        explicit: Option<&Path>,
        env: Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let (path, origin) = match (explicit, env) {
            (Some(path), _) => (path.to_owned(), Some("--config")),
            (None, Some(path)) if !path.is_empty() => (PathBuf::from(path), Some(CONFIG_ENV)),
            _ => (PathBuf::from(DEFAULT_CONFIG_PATH), None),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return match origin {
                    Some(origin) => Err(ConfigError::NotFound { path, origin }),
                    None => Ok(Config::default()),
                };
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_toml(&text, &path)
    }

    /// Checks values that parse but make no sense; the error names the key and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: self
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("built-in defaults")),
            key,
            reason,
        };
        let at_least_one = |key: &'static str, value: u64| {
            if value == 0 {
                Err(invalid(key, "must be at least 1, got 0".to_owned()))
            } else {
                Ok(())
            }
        };
        let url = &self.catalog.url;
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err(invalid(
                "catalog.url",
                format!("{url:?} is neither sqlite:///path nor postgres://…"),
            ));
        }
        if let Some(replica) = &self.catalog.replica {
            if !crate::db::postgres::is_postgres_url(replica) {
                return Err(invalid(
                    "catalog.replica",
                    format!(
                        "{:?} is not a postgres:// URL: a replica is a PostgreSQL hot standby",
                        crate::db::postgres::redact(replica)
                    ),
                ));
            }
            if !crate::db::postgres::is_postgres_url(url) {
                return Err(invalid(
                    "catalog.replica",
                    "a replica needs a PostgreSQL catalog.url (a SQLite catalog has none)"
                        .to_owned(),
                ));
            }
        }
        if let Some(name) = &self.host.name
            && name.trim().is_empty()
        {
            return Err(invalid("host.name", format!("{name:?} is empty")));
        }
        let daemon = &self.daemon;
        if daemon.interval.0.is_zero() {
            let got = daemon.interval.to_string();
            return Err(invalid(
                "daemon.interval",
                format!("must be more than 0, got {got:?}"),
            ));
        }
        at_least_one("daemon.workers", daemon.workers as u64)?;
        at_least_one("daemon.node_workers", daemon.node_workers as u64)?;
        at_least_one(
            "daemon.min_archive_copies",
            daemon.min_archive_copies as u64,
        )?;
        at_least_one("daemon.max_attempts", u64::from(daemon.max_attempts))?;
        at_least_one(
            "transfer.pulls_per_peer",
            self.transfer.pulls_per_peer as u64,
        )?;
        if let Some(rate) = self.transfer.max_rate {
            at_least_one("transfer.max_rate", rate.0)?;
        }
        if let Some(a) = &self.transfer.advertise
            && !a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        {
            return Err(invalid(
                "transfer.advertise",
                format!("{a:?} is not HOST:PORT, e.g. alpenhost1:7070"),
            ));
        }
        let transfer = &self.transfer;
        let tls = [
            ("transfer.tls_cert", transfer.tls_cert.is_some()),
            ("transfer.tls_key", transfer.tls_key.is_some()),
            ("transfer.tls_ca", transfer.tls_ca.is_some()),
        ];
        if tls.iter().any(|(_, set)| *set)
            && let Some((missing, _)) = tls.iter().find(|(_, set)| !set)
        {
            return Err(invalid(
                missing,
                "tls_cert, tls_key and tls_ca go together (mutual TLS): give all three or none"
                    .to_owned(),
            ));
        }
        for (key, d) in [
            ("transfer.header_timeout", transfer.header_timeout),
            ("transfer.idle_timeout", transfer.idle_timeout),
        ] {
            if d.0.is_zero() {
                return Err(invalid(
                    key,
                    format!("must be more than 0, got {:?}", d.to_string()),
                ));
            }
        }
        at_least_one("transfer.max_connections", transfer.max_connections as u64)?;
        at_least_one(
            "transfer.max_connections_per_peer",
            transfer.max_connections_per_peer as u64,
        )?;
        if let Some(node) = &self.fs.write_node
            && node.trim().is_empty()
        {
            return Err(invalid("fs.write_node", format!("{node:?} is empty")));
        }
        if let Some(depth) = self.import.acq_depth {
            at_least_one("import.acq_depth", u64::from(depth))?;
        }
        for (key, patterns) in [
            ("import.include", &self.import.include),
            ("import.exclude", &self.import.exclude),
        ] {
            for p in patterns {
                if let Err(e) = regex_lite::Regex::new(p) {
                    return Err(invalid(
                        key,
                        format!("{p:?} is not a valid regular expression: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// This host's name in the catalog: `[host] name`, else the short hostname (the kernel's
    /// hostname cut at the first `.`), else `"localhost"`.
    pub fn host_name(&self) -> String {
        if let Some(name) = &self.host.name {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|full| short_hostname(&full))
            .unwrap_or_else(|| "localhost".to_owned())
    }
}

/// `full` up to its first `.`, without surrounding whitespace; `None` if that is empty.
fn short_hostname(full: &str) -> Option<String> {
    let short = full.trim().split('.').next().unwrap_or_default();
    (!short.is_empty()).then(|| short.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;
    use test_case::test_case;

    const EXAMPLE: &str = include_str!("../../packaging/cairn.toml");

    fn origin() -> &'static Path {
        Path::new("/etc/cairn/cairn.toml")
    }

    /// The error and all its sources, joined as anyhow's `{:#}` prints them.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(e) = source {
            text = format!("{text}: {e}");
            source = e.source();
        }
        text
    }

    fn parse_error(text: &str) -> String {
        chain(&Config::from_toml(text, origin()).unwrap_err())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.catalog.url, "sqlite:///var/lib/cairn/catalog.db");
        assert_eq!(c.catalog.replica, None);
        assert_eq!(c.catalog.replica_max_lag.0, Duration::from_secs(30));
        assert_eq!(c.catalog.replica_wait.0, Duration::from_secs(1));
        assert_eq!(c.host.name, None);
        assert_eq!(c.daemon.interval, HumanDuration(Duration::from_secs(10)));
        assert_eq!(c.daemon.workers, 4);
        assert_eq!(c.daemon.node_workers, 2);
        assert_eq!(c.daemon.socket, Path::new("/run/cairn/cairnd.sock"));
        assert_eq!(c.daemon.min_archive_copies, 2);
        assert_eq!(c.daemon.max_attempts, 10);
        assert_eq!(c.daemon.lock_file, Path::new("/run/cairn/cairnd.lock"));
        assert_eq!(c.transfer.listen, Some("0.0.0.0:7070".parse().unwrap()));
        assert_eq!(c.transfer.token_file, Path::new("/etc/cairn/token"));
        assert_eq!(c.transfer.header_timeout.0, Duration::from_secs(10));
        assert_eq!(c.transfer.idle_timeout.0, Duration::from_secs(60));
        assert_eq!(c.transfer.max_connections, 512);
        assert_eq!(c.transfer.max_connections_per_peer, 64);
        assert_eq!(c.transfer.fd_reserve, 256);
        assert!(!c.transfer.metrics_token);
        assert_eq!(c.transfer.tls(), None);
        assert_eq!(c.fs.write_node, None);
        assert_eq!(c.cache.dir, Path::new("/var/cache/cairn"));
        assert_eq!(c.cache.max_bytes, ByteSize(50 * 1024 * 1024 * 1024));
        assert_eq!(
            c.transport.watch,
            [Path::new("/media"), Path::new("/mnt/transport")]
        );
        assert_eq!(c.import.acq_depth, None);
        assert_eq!(c.source, None);
        c.validate().unwrap();
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::from_toml("", origin()).unwrap();
        assert_eq!(
            config,
            Config {
                source: Some(origin().to_owned()),
                ..Config::default()
            }
        );
    }

    #[test]
    fn the_design_example_parses() {
        let text = r#"
            [catalog]
            url = "postgres://cairn@db.site/cairn"
            [host]
            name = "alpenhost1"
            [daemon]
            interval = "10s"
            workers = 4
            socket = "/run/cairn/cairnd.sock"
            min_archive_copies = 2
            max_attempts = 10
            [transfer]
            listen = "0.0.0.0:7070"
            token_file = "/etc/cairn/token"
            [fs]
            write_node = "demo_storage1"
            [cache]
            dir = "/var/cache/cairn"
            max_bytes = "50GiB"
            [transport]
            watch = ["/media", "/mnt/transport"]
            [import]
            acq_depth = 3
        "#;
        let config = Config::from_toml(text, origin()).unwrap();
        assert_eq!(config.catalog.url, "postgres://cairn@db.site/cairn");
        assert_eq!(config.host_name(), "alpenhost1");
        assert_eq!(config.fs.write_node.as_deref(), Some("demo_storage1"));
        assert_eq!(config.import.acq_depth, Some(3));
        assert_eq!(config.daemon, DaemonConfig::default());
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let config =
            Config::from_toml("[daemon]\nworkers = 8\n[cache]\nmax_bytes = 1024", origin())
                .unwrap();
        assert_eq!(config.daemon.workers, 8);
        assert_eq!(config.daemon.node_workers, 2);
        assert_eq!(config.cache.max_bytes, ByteSize(1024));
        assert_eq!(config.cache.dir, Path::new("/var/cache/cairn"));
    }

    #[test_case("[daemon]\nintervall = \"5s\"", "intervall"; "unknown key")]
    #[test_case("[deamon]\nworkers = 2", "deamon"; "unknown section")]
    #[test_case("workers = 2", "workers"; "key outside its section")]
    #[test_case("[daemon]\ninterval = \"5x\"", r#"interval = "5x""#; "bad duration names the key")]
    #[test_case("[daemon]\ninterval = \"5x\"", r#"invalid duration "5x": unknown unit "x""#; "bad duration says why")]
    #[test_case("[daemon]\ninterval = 10", r#"invalid duration "10": missing unit"#; "bare number duration")]
    #[test_case("[cache]\nmax_bytes = \"12XB\"", r#"invalid size "12XB": unknown unit "XB""#; "bad size")]
    #[test_case("[cache]\nmax_bytes = -1", r#"invalid size "-1": must not be negative"#; "negative size")]
    #[test_case("[daemon]\nworkers = -1", "workers = -1"; "negative count")]
    #[test_case("[daemon]\nworkers = \"4\"", "workers = \"4\""; "count as string")]
    #[test_case("[catalog]\nurl = ", "line 2"; "malformed toml")]
    #[test_case("[transfer]\nlisten = \"nowhere\"", r#""nowhere" is not an address like 0.0.0.0:7070"#; "bad listen address")]
    #[test_case("[transfer]\nmethod = \"ftp\"", "unknown variant `ftp`, expected `http` or `rsync`"; "unknown transfer method")]
    fn parse_errors_name_the_problem(text: &str, expected: &str) {
        let error = parse_error(text);
        assert!(
            error.starts_with("invalid config file /etc/cairn/cairn.toml: "),
            "{error}"
        );
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }

    #[test_case(
        "[daemon]\nworkers = 0",
        "invalid daemon.workers in /etc/cairn/cairn.toml: must be at least 1, got 0"
    )]
    #[test_case(
        "[daemon]\nnode_workers = 0",
        "invalid daemon.node_workers in /etc/cairn/cairn.toml: must be at least 1, got 0"
    )]
    #[test_case(
        "[daemon]\nmin_archive_copies = 0",
        "invalid daemon.min_archive_copies in /etc/cairn/cairn.toml: must be at least 1, got 0"
    )]
    #[test_case(
        "[daemon]\nmax_attempts = 0",
        "invalid daemon.max_attempts in /etc/cairn/cairn.toml: must be at least 1, got 0"
    )]
    #[test_case(
        "[daemon]\ninterval = \"0ms\"",
        r#"invalid daemon.interval in /etc/cairn/cairn.toml: must be more than 0, got "0s""#
    )]
    #[test_case("[catalog]\nurl = \"mysql://db/cairn\"", r#"invalid catalog.url in /etc/cairn/cairn.toml: "mysql://db/cairn" is neither sqlite:///path nor postgres://…"#)]
    #[test_case(
        "[catalog]\nurl = \"postgres://db/cairn\"\nreplica = \"sqlite:///r.db\"",
        r#"invalid catalog.replica in /etc/cairn/cairn.toml: "sqlite:///r.db" is not a postgres:// URL: a replica is a PostgreSQL hot standby"#
    )]
    #[test_case(
        "[catalog]\nreplica = \"postgres://standby/cairn\"",
        "invalid catalog.replica in /etc/cairn/cairn.toml: a replica needs a PostgreSQL catalog.url (a SQLite catalog has none)"
    )]
    #[test_case(
        "[fs]\nwrite_node = \"\"",
        r#"invalid fs.write_node in /etc/cairn/cairn.toml: "" is empty"#
    )]
    #[test_case(
        "[host]\nname = \" \"",
        r#"invalid host.name in /etc/cairn/cairn.toml: " " is empty"#
    )]
    #[test_case(
        "[transfer]\ntls_cert = \"c.pem\"\ntls_key = \"c.key\"",
        "invalid transfer.tls_ca in /etc/cairn/cairn.toml: tls_cert, tls_key and tls_ca go \
         together (mutual TLS): give all three or none"
    )]
    #[test_case(
        "[transfer]\ntls_ca = \"ca.pem\"",
        "invalid transfer.tls_cert in /etc/cairn/cairn.toml: tls_cert, tls_key and tls_ca go \
         together (mutual TLS): give all three or none"
    )]
    #[test_case(
        "[transfer]\nheader_timeout = \"0s\"",
        r#"invalid transfer.header_timeout in /etc/cairn/cairn.toml: must be more than 0, got "0s""#
    )]
    #[test_case(
        "[transfer]\nidle_timeout = \"0s\"",
        r#"invalid transfer.idle_timeout in /etc/cairn/cairn.toml: must be more than 0, got "0s""#
    )]
    #[test_case(
        "[transfer]\nmax_connections = 0",
        "invalid transfer.max_connections in /etc/cairn/cairn.toml: must be at least 1, got 0"
    )]
    #[test_case(
        "[transfer]\nmax_connections_per_peer = 0",
        "invalid transfer.max_connections_per_peer in /etc/cairn/cairn.toml: must be at least 1, \
         got 0"
    )]
    #[test_case(
        "[import]\nacq_depth = 0",
        "invalid import.acq_depth in /etc/cairn/cairn.toml: must be at least 1, got 0"
    )]
    fn invalid_values_name_key_and_value(text: &str, expected: &str) {
        assert_eq!(parse_error(text), expected);
    }

    #[test_case("sqlite:///var/lib/cairn/catalog.db")]
    #[test_case("sqlite::memory:")]
    #[test_case("postgres://cairn@db.site/cairn")]
    #[test_case("postgresql://cairn@db.site:5432/cairn")]
    fn catalog_urls_accepted(url: &str) {
        Config::from_toml(&format!("[catalog]\nurl = {url:?}"), origin()).unwrap();
    }

    #[test]
    fn load_prefers_explicit_then_env_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.toml");
        let from_env = dir.path().join("env.toml");
        std::fs::write(&explicit, "[daemon]\nworkers = 7").unwrap();
        std::fs::write(&from_env, "[daemon]\nworkers = 9").unwrap();

        let config = Config::load_with_env(Some(&explicit), Some(from_env.clone().into())).unwrap();
        assert_eq!((config.daemon.workers, config.source), (7, Some(explicit)));

        let config = Config::load_with_env(None, Some(from_env.clone().into())).unwrap();
        assert_eq!((config.daemon.workers, config.source), (9, Some(from_env)));
    }

    #[test]
    fn named_files_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let error = Config::load_with_env(Some(&missing), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "config file {} (from --config) does not exist",
                missing.display()
            )
        );
        let error = Config::load_with_env(None, Some(missing.clone().into())).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "config file {} (from CAIRN_CONFIG) does not exist",
                missing.display()
            )
        );
    }

    #[test]
    fn unreadable_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory exists but cannot be read as a file.
        let error = Config::load_with_env(Some(dir.path()), None).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
    }

    #[test]
    fn missing_default_file_means_defaults() {
        // Only meaningful where no real config is installed.
        if !Path::new(DEFAULT_CONFIG_PATH).exists() {
            assert_eq!(
                Config::load_with_env(None, None).unwrap(),
                Config::default()
            );
            assert_eq!(
                Config::load_with_env(None, Some(OsString::new())).unwrap(),
                Config::default()
            );
        }
    }

    #[test_case("alpenhost1\n", Some("alpenhost1"))]
    #[test_case("node7.cluster.example.org\n", Some("node7"))]
    #[test_case("\n", None)]
    #[test_case(".example.org", None)]
    fn short_hostnames(full: &str, expected: Option<&str>) {
        assert_eq!(short_hostname(full).as_deref(), expected);
    }

    #[test]
    fn host_name_falls_back_to_the_short_hostname() {
        let name = Config::default().host_name();
        assert!(
            !name.is_empty() && !name.contains('.') && !name.contains('\n'),
            "{name:?}"
        );
    }

    #[test]
    fn an_empty_listen_address_serves_nothing_and_round_trips() {
        let config =
            Config::from_toml("[transfer]\nlisten = \"\"\nmethod = \"rsync\"", origin()).unwrap();
        assert_eq!(config.transfer.listen, None);
        assert_eq!(config.transfer.method, TransferMethod::Rsync);
        let back: Config = toml::Table::try_from(&config).unwrap().try_into().unwrap();
        assert_eq!(back.transfer, config.transfer);
    }

    #[test]
    fn serializes_back_to_the_same_config() {
        let mut config = Config::from_toml(EXAMPLE, origin()).unwrap();
        config.host.name = Some("alpenhost1".to_owned());
        config.cache.max_bytes = ByteSize(49_950_000_000);
        config.daemon.interval = HumanDuration(Duration::from_millis(1500));
        let table = toml::Table::try_from(&config).unwrap();
        let back: Config = table.try_into().unwrap();
        assert_eq!(
            back,
            Config {
                source: None,
                ..config
            }
        );
    }

    #[test]
    fn example_file_is_the_defaults() {
        let config = Config::from_toml(EXAMPLE, Path::new("packaging/cairn.toml")).unwrap();
        assert_eq!(
            config,
            Config {
                source: config.source.clone(),
                ..Config::default()
            }
        );
    }

    /// Lines `# key = value` in the example show a key whose default is "unset"; uncommented,
    /// they must parse too.
    fn uncomment_optional_keys(text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            let uncommented = line.strip_prefix("# ").filter(|rest| {
                rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
            });
            out.push_str(uncommented.unwrap_or(line));
            out.push('\n');
        }
        out
    }

    fn keys(table: &toml::Table) -> BTreeSet<String> {
        table
            .iter()
            .flat_map(|(section, value)| {
                let keys = value.as_table().expect("every top-level key is a section");
                keys.keys().map(move |key| format!("{section}.{key}"))
            })
            .collect()
    }

    #[test]
    fn example_file_shows_every_key() {
        let full = Config {
            host: HostConfig {
                name: Some("h".to_owned()),
            },
            fs: FsConfig {
                write_node: Some("n".to_owned()),
                uid: Some(1),
                gid: Some(1),
                ttl: Some(HumanDuration(std::time::Duration::from_secs(1))),
                settle: Some(HumanDuration(std::time::Duration::from_secs(1))),
                unknown_owner: Some("nobody".into()),
                cache_memory: Some(ByteSize(256 << 20)),
                admin_group: Some("cairn".into()),
                io_uring: Some(true),
            },
            catalog: CatalogConfig {
                replica: Some("postgres://r/db".to_owned()),
                ..CatalogConfig::default()
            },
            daemon: DaemonConfig {
                log_dir: Some(PathBuf::from("l")),
                ..DaemonConfig::default()
            },
            transfer: TransferConfig {
                max_rate: Some(ByteSize(1)),
                advertise: Some("h:1".to_owned()),
                tls_cert: Some(PathBuf::from("c")),
                tls_key: Some(PathBuf::from("k")),
                tls_ca: Some(PathBuf::from("a")),
                ..TransferConfig::default()
            },
            import: ImportConfig {
                acq_depth: Some(1),
                acq_idle: Some(HumanDuration(std::time::Duration::from_secs(60))),
                ..ImportConfig::default()
            },
            ..Config::default()
        };
        let expected = keys(&toml::Table::try_from(&full).unwrap());

        // A replica needs a PostgreSQL catalog.
        let uncommented = uncomment_optional_keys(EXAMPLE).replace(
            "url = \"sqlite:///var/lib/cairn/catalog.db\"",
            "url = \"postgres://db/cairn\"",
        );
        let config = Config::from_toml(&uncommented, Path::new("packaging/cairn.toml")).unwrap();
        assert!(config.host.name.is_some() && config.fs.write_node.is_some());
        assert!(config.import.acq_depth.is_some());
        let shown = keys(&toml::from_str(&uncommented).unwrap());
        assert_eq!(shown, expected, "packaging/cairn.toml must show every key");
    }
}
