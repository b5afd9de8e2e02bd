//! The typed model: what the catalog's rows mean.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::db::{DbError, Row};

/// Declares a text-backed enum with its database spelling, its display name and parsing.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $db:literal / $show:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The spelling stored in the catalog (and accepted on the command line).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $db),+ }
            }
            /// The spelling shown to people.
            pub fn display_name(self) -> &'static str {
                match self { $($name::$v => $show),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let lower = s.to_ascii_lowercase().replace('-', "_");
                $(if lower == $db { return Ok($name::$v); })+
                Err(format!(
                    "unknown {} {s:?} (expected one of: {})",
                    stringify!($name).to_ascii_lowercase(),
                    [$($db),+].join(", ")
                ))
            }
        }

        impl crate::db::FromValue for $name {
            fn from_value(v: &crate::db::Value) -> Result<Self, DbError> {
                let s = String::from_value(v)?;
                s.parse().map_err(DbError::Decode)
            }
        }

        impl From<$name> for crate::db::Value {
            fn from(v: $name) -> Self {
                crate::db::Value::Text(v.as_str().to_owned())
            }
        }
    };
}

text_enum!(
    /// What a group's nodes are for.
    IoClass {
        Default = "default" / "Default",
        /// Holds only transport nodes: disks carried between sites.
        Transport = "transport" / "Transport",
    }
);

text_enum!(
    /// What a node is.
    NodeKind {
        /// Where data is taken or worked on; copies here do not count as archived.
        Field = "field" / "-",
        /// A copy here counts towards `min_archive_copies`.
        Archive = "archive" / "Archive",
        /// A disk carried between sites.
        Transport = "transport" / "Transport",
    }
);

text_enum!(
    /// Whether a node holds a good copy of a file.
    Has {
        Yes = "yes" / "Healthy",
        /// Could not be checked (I/O error) or delivered wrong bytes once; needs verifying.
        Suspect = "suspect" / "Suspect",
        /// Verified and found wrong; does not count as present.
        Corrupt = "corrupt" / "Corrupt",
        /// Removed, or never arrived.
        No = "no" / "Removed",
    }
);

text_enum!(
    /// What should happen to a copy.
    Wants {
        Keep = "keep" / "Keep",
        /// May be deleted when the node needs space, oldest first (discretionary cleaning).
        ReleaseWhenNeeded = "release_when_needed" / "Release when needed",
        /// Delete as soon as invariant 3 allows.
        ReleaseNow = "release_now" / "Release now",
    }
);

text_enum!(
    /// Where a request is in its life.
    RequestState {
        Pending = "pending" / "Pending",
        Active = "active" / "Active",
        Done = "done" / "Done",
        Failed = "failed" / "Failed",
        Cancelled = "cancelled" / "Cancelled",
    }
);

/// Declares the id of one kind of row: a number that cannot be passed where another kind's
/// id is expected (a copy's id as a file's, a node's as a group's).
macro_rules! id_type {
    ($($(#[$m:meta])* $name:ident),+ $(,)?) => {$(
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                s.parse()
                    .map($name)
                    .map_err(|_| format!("{s:?} is not a number"))
            }
        }

        impl crate::db::FromValue for $name {
            fn from_value(v: &crate::db::Value) -> Result<Self, DbError> {
                <i64 as crate::db::FromValue>::from_value(v).map($name)
            }
        }

        impl From<$name> for crate::db::Value {
            fn from(v: $name) -> Self {
                crate::db::Value::Int(v.0)
            }
        }
    )+};
}

id_type!(
    /// A host's id.
    HostId,
    /// A group's id.
    GroupId,
    /// A node's id.
    NodeId,
    /// An acquisition's id.
    AcqId,
    /// A directory's id.
    DirId,
    /// A file's id.
    FileId,
    /// A copy's id: one file on one node.
    CopyId,
    /// A copy request's id (`AFCR#`).
    RequestId,
    /// An import request's id.
    ImportId,
);

/// Unix time in seconds.
pub type Timestamp = i64;

/// Maps a row (in the column order of the query's `COLUMNS` constant) to a model type.
pub trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, DbError>;
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    pub id: HostId,
    pub name: String,
    /// `host:port` of this host's cairnd HTTP endpoint.
    pub address: Option<String>,
    pub notes: Option<String>,
    pub last_seen: Option<Timestamp>,
    /// Paused: its cairnd starts no new work (queued requests wait).
    pub paused: bool,
}

impl Host {
    pub const COLUMNS: &'static str = "h.id, h.name, h.address, h.notes, h.last_seen, h.paused";
}

impl FromRow for Host {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Host {
            id: r.get(0)?,
            name: r.get(1)?,
            address: r.get(2)?,
            notes: r.get(3)?,
            last_seen: r.get(4)?,
            paused: r.get(5)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub io_class: IoClass,
    pub notes: Option<String>,
}

impl Group {
    pub const COLUMNS: &'static str = "g.id, g.name, g.io_class, g.notes";
}

impl FromRow for Group {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Group {
            id: r.get(0)?,
            name: r.get(1)?,
            io_class: r.get(2)?,
            notes: r.get(3)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub group_id: GroupId,
    pub group: String,
    pub kind: NodeKind,
    pub host_id: Option<HostId>,
    pub host: Option<String>,
    pub root: Option<String>,
    pub active: bool,
    pub auto_import: bool,
    /// Re-verify copies older than this many seconds; `None` is off.
    pub auto_verify: Option<i64>,
    /// Bytes of copies this node may hold at most.
    pub max_total: Option<u64>,
    /// Free bytes that must remain on the filesystem.
    pub min_avail: Option<u64>,
    /// Free bytes last seen by cairnd (statvfs).
    pub avail: Option<u64>,
    /// Filesystem size last seen by cairnd (statvfs).
    pub capacity: Option<u64>,
    pub last_checked: Option<Timestamp>,
    /// Log-in user and address for remote access to the node (sites that pull by rsync over
    /// ssh); the HTTP transfer between cairnd's does not use them.
    pub username: Option<String>,
    pub address: Option<String>,
    pub notes: Option<String>,
    /// Paused: no new work into or out of it (queued requests wait).
    pub paused: bool,
}

impl Node {
    pub const COLUMNS: &'static str = "n.id, n.name, n.group_id, g.name, n.kind, n.host_id, h.name, \
        n.root, n.active, n.auto_import, n.auto_verify, n.max_total, n.min_avail, n.avail, \
        n.capacity, n.last_checked, n.username, n.address, n.notes, n.paused";
    pub const FROM: &'static str = "node n JOIN storage_group g ON g.id = n.group_id \
        LEFT JOIN host h ON h.id = n.host_id";
}

impl FromRow for Node {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Node {
            id: r.get(0)?,
            name: r.get(1)?,
            group_id: r.get(2)?,
            group: r.get(3)?,
            kind: r.get(4)?,
            host_id: r.get(5)?,
            host: r.get(6)?,
            root: r.get(7)?,
            active: r.get(8)?,
            auto_import: r.get(9)?,
            auto_verify: r.get(10)?,
            max_total: r.get(11)?,
            min_avail: r.get(12)?,
            avail: r.get(13)?,
            capacity: r.get(14)?,
            last_checked: r.get(15)?,
            username: r.get(16)?,
            address: r.get(17)?,
            notes: r.get(18)?,
            paused: r.get(19)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Acq {
    pub id: AcqId,
    pub name: String,
    pub created_at: Timestamp,
    /// When the acquisition was closed: no more files are expected. A closed acquisition
    /// whose every file is in a group is complete there.
    pub closed_at: Option<Timestamp>,
}

impl FromRow for Acq {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Acq {
            id: r.get(0)?,
            name: r.get(1)?,
            created_at: r.get(2)?,
            closed_at: r.get(3)?,
        })
    }
}

/// A directory of the archive tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dir {
    pub id: DirId,
    pub parent_id: Option<DirId>,
    pub name: String,
    /// Path from the archive root, `""` for the root itself.
    pub path: String,
    pub created_at: Timestamp,
    pub own: Ownership,
}

impl Dir {
    pub const COLUMNS: &'static str =
        "d.id, d.parent_id, d.name, d.path, d.created_at, d.owner, d.grp, d.mode";
}

impl FromRow for Dir {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Dir {
            id: r.get(0)?,
            parent_id: r.get(1)?,
            name: r.get(2)?,
            path: r.get(3)?,
            created_at: r.get(4)?,
            own: Ownership::from_row_at(r, 5)?,
        })
    }
}

/// Who owns a file or directory, by name (user and group ids differ between sites), and its
/// permission bits. `None`: not recorded (written before schema version 4, or by a tool that
/// does not say): a mount shows its `[fs]` owner and the default mode for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ownership {
    pub user: Option<String>,
    pub group: Option<String>,
    /// Permission bits (`0o7777` at most).
    pub mode: Option<u32>,
}

impl Ownership {
    /// The three columns (owner, group, mode) at `i`, `i + 1`, `i + 2`.
    fn from_row_at(r: &Row, i: usize) -> Result<Self, DbError> {
        let mode: Option<i64> = r.get(i + 2)?;
        Ok(Ownership {
            user: r.get(i)?,
            group: r.get(i + 1)?,
            mode: mode.map(|m| (m & 0o7777) as u32),
        })
    }
}

/// A registered file. Immutable once registered (invariant 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct File {
    pub id: FileId,
    pub dir_id: DirId,
    pub name: String,
    /// Path from the archive root, e.g. `2025/02/21/23/1324.dat`.
    pub path: String,
    pub acq: String,
    pub size: u64,
    pub md5: String,
    pub mtime: Timestamp,
    pub registered_at: Timestamp,
    pub own: Ownership,
}

impl File {
    pub const COLUMNS: &'static str = "f.id, f.dir_id, f.name, d.path, a.name, f.size, f.md5, \
         f.mtime, f.registered_at, f.owner, f.grp, f.mode";
    pub const FROM: &'static str =
        "file f JOIN dir d ON d.id = f.dir_id JOIN acq a ON a.id = f.acq_id";
    /// How many columns [`File::COLUMNS`] names: what follows them in a row is another
    /// type's.
    pub const NCOLS: usize = 12;
}

impl FromRow for File {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        let name: String = r.get(2)?;
        let dir: String = r.get(3)?;
        Ok(File {
            id: r.get(0)?,
            dir_id: r.get(1)?,
            path: join_path(&dir, &name),
            name,
            acq: r.get(4)?,
            size: r.get(5)?,
            md5: r.get(6)?,
            mtime: r.get(7)?,
            registered_at: r.get(8)?,
            own: Ownership::from_row_at(r, 9)?,
        })
    }
}

/// What a directory listing shows of a file: no joins, no md5, no path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileStat {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    pub mtime: Timestamp,
    pub own: Ownership,
}

impl FileStat {
    pub const COLUMNS: &'static str = "f.id, f.name, f.size, f.mtime, f.owner, f.grp, f.mode";
}

impl FromRow for FileStat {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(FileStat {
            id: r.get(0)?,
            name: r.get(1)?,
            size: r.get(2)?,
            mtime: r.get(3)?,
            own: Ownership::from_row_at(r, 4)?,
        })
    }
}

/// `dir/name`, or `name` at the root.
pub fn join_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// A file's copy on one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Copy {
    pub id: CopyId,
    pub file_id: FileId,
    pub node_id: NodeId,
    pub node: String,
    pub has: Has,
    pub wants: Wants,
    pub verify_requested: bool,
    pub size_on_node: Option<u64>,
    pub added_at: Timestamp,
    pub verified_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

impl Copy {
    pub const COLUMNS: &'static str = "c.id, c.file_id, c.node_id, cn.name, c.has, c.wants, \
        c.verify_requested, c.size_on_node, c.added_at, c.verified_at, c.updated_at";
    pub const FROM: &'static str = "copy c JOIN node cn ON cn.id = c.node_id";
}

impl FromRow for Copy {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Copy {
            id: r.get(0)?,
            file_id: r.get(1)?,
            node_id: r.get(2)?,
            node: r.get(3)?,
            has: r.get(4)?,
            wants: r.get(5)?,
            verify_requested: r.get(6)?,
            size_on_node: r.get(7)?,
            added_at: r.get(8)?,
            verified_at: r.get(9)?,
            updated_at: r.get(10)?,
        })
    }
}

/// A request to copy a file from a node into a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyRequest {
    pub id: RequestId,
    pub file_id: FileId,
    pub path: String,
    pub size: u64,
    pub from_node: String,
    pub to_group: String,
    pub from_node_id: NodeId,
    pub to_group_id: GroupId,
    pub state: RequestState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub claimed_by: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

impl CopyRequest {
    pub const COLUMNS: &'static str = "r.id, r.file_id, d.path, f.name, f.size, rn.name, rg.name, \
        r.state, r.attempts, r.last_error, r.claimed_by, r.created_at, r.started_at, \
        r.finished_at, r.bytes, r.seconds, r.from_node, r.to_group";
    pub const FROM: &'static str = "copy_request r JOIN file f ON f.id = r.file_id \
        JOIN dir d ON d.id = f.dir_id JOIN node rn ON rn.id = r.from_node \
        JOIN storage_group rg ON rg.id = r.to_group";
}

impl FromRow for CopyRequest {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        let dir: String = r.get(2)?;
        let name: String = r.get(3)?;
        Ok(CopyRequest {
            id: r.get(0)?,
            file_id: r.get(1)?,
            path: join_path(&dir, &name),
            size: r.get(4)?,
            from_node: r.get(5)?,
            to_group: r.get(6)?,
            state: r.get(7)?,
            attempts: r.get(8)?,
            last_error: r.get(9)?,
            claimed_by: r.get(10)?,
            created_at: r.get(11)?,
            started_at: r.get(12)?,
            finished_at: r.get(13)?,
            bytes: r.get(14)?,
            seconds: r.get(15)?,
            from_node_id: r.get(16)?,
            to_group_id: r.get(17)?,
        })
    }
}

/// A request to initialise a node, import one path, or scan a tree for new files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportRequest {
    pub id: ImportId,
    pub node_id: NodeId,
    pub node: String,
    pub path: String,
    pub scan: bool,
    pub register_new: bool,
    /// Node initialisation is a kind of import request (as in alpenhorn).
    pub init: bool,
    pub state: RequestState,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

impl ImportRequest {
    pub const COLUMNS: &'static str = "i.id, inn.name, i.path, i.scan, i.register_new, i.init, \
        i.state, i.last_error, i.created_at, i.finished_at, i.node_id";
    pub const FROM: &'static str = "import_request i JOIN node inn ON inn.id = i.node_id";
}

impl FromRow for ImportRequest {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(ImportRequest {
            id: r.get(0)?,
            node: r.get(1)?,
            path: r.get(2)?,
            scan: r.get(3)?,
            register_new: r.get(4)?,
            init: r.get(5)?,
            state: r.get(6)?,
            last_error: r.get(7)?,
            created_at: r.get(8)?,
            finished_at: r.get(9)?,
            node_id: r.get(10)?,
        })
    }
}

/// Auto-actions between a group and a node outside it.
///
/// - autosync: a file added to `node` is copied into `group`.
/// - autoclean: a file added to `group` is released from `node`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoAction {
    pub group_id: GroupId,
    pub group: String,
    pub node_id: NodeId,
    pub node: String,
    pub autosync: bool,
    pub autoclean: bool,
    /// For auto-clean: seconds the file must have been in the group, with its copy there
    /// verified since it arrived, before the node's copy is released. `None`: at once.
    pub clean_after: Option<i64>,
    /// For auto-sync: only files at or below this path are copied. `None`: every file.
    pub path_prefix: Option<String>,
}

impl AutoAction {
    pub const COLUMNS: &'static str = "aa.group_id, ag.name, aa.node_id, an.name, aa.autosync, aa.autoclean, aa.clean_after, aa.path_prefix";
    pub const FROM: &'static str = "auto_action aa JOIN storage_group ag ON ag.id = aa.group_id \
        JOIN node an ON an.id = aa.node_id";
}

impl FromRow for AutoAction {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(AutoAction {
            group_id: r.get(0)?,
            group: r.get(1)?,
            node_id: r.get(2)?,
            node: r.get(3)?,
            autosync: r.get(4)?,
            autoclean: r.get(5)?,
            clean_after: r.get(6)?,
            path_prefix: r.get(7)?,
        })
    }
}

/// Closed files waiting in a write node's journal on its host to be registered, as last
/// reported by the mount or cairnd there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalReport {
    pub node: String,
    pub host: Option<String>,
    pub files: u64,
    /// When the oldest of them was closed.
    pub oldest: Option<Timestamp>,
    pub reported_at: Timestamp,
}

impl FromRow for JournalReport {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(JournalReport {
            node: r.get(0)?,
            host: r.get(1)?,
            files: r.get(2)?,
            oldest: r.get(3)?,
            reported_at: r.get(4)?,
        })
    }
}

/// Per-node totals, as `node stats` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStats {
    pub node: String,
    /// Copies with `has = yes` or `suspect` (present, as far as the catalog knows).
    pub files: u64,
    pub bytes: u64,
    pub corrupt: u64,
    pub suspect: u64,
    /// Copies expected (`wants = keep`) but recorded `has = no`.
    pub missing: u64,
    pub max_total: Option<u64>,
}

impl NodeStats {
    /// Percent of `max_total` used, if a maximum is set.
    pub fn percent_full(&self) -> Option<f64> {
        self.max_total
            .filter(|m| *m > 0)
            .map(|m| self.bytes as f64 * 100.0 / m as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::ConflictName;

    #[test]
    fn a_conflict_name_says_whose_file_and_what_it_was_called() {
        let n = ConflictName::make("f.dat", "site-b-1", 1765000000123456789);
        assert_eq!(n, "f.dat.conflict-site-b-1-1765000000123456789");
        assert_eq!(
            ConflictName::parse(&n),
            Some(ConflictName {
                original: "f.dat".into(),
                host: "site-b-1".into(),
                at_ns: 1765000000123456789,
            })
        );
        // A name kept aside twice keeps both marks; the last says whose.
        let twice = ConflictName::make(&n, "h2", 7);
        assert_eq!(ConflictName::parse(&twice).unwrap().original, n);
        for other in [
            "f.dat",
            ".conflict-h-1",
            "f.conflict-h-",
            "f.conflict--1",
            "f.conflict-h-12x",
            "f.conflict-h",
        ] {
            assert_eq!(ConflictName::parse(other), None, "{other}");
        }
    }

    use super::*;

    #[test]
    fn file_ncols_counts_file_columns() {
        assert_eq!(File::COLUMNS.split(',').count(), File::NCOLS);
    }

    #[test]
    fn enums_round_trip_and_reject_unknown() {
        for h in Has::ALL {
            assert_eq!(h.as_str().parse::<Has>().unwrap(), *h);
        }
        assert_eq!("Release-Now".parse::<Wants>().unwrap(), Wants::ReleaseNow);
        let err = "sometimes".parse::<Wants>().unwrap_err();
        assert!(
            err.contains("\"sometimes\"") && err.contains("release_now"),
            "{err}"
        );
    }

    #[test]
    fn join_path_at_root_and_below() {
        assert_eq!(join_path("", "a.dat"), "a.dat");
        assert_eq!(join_path("2025/02", "a.dat"), "2025/02/a.dat");
    }
}

/// The name under which a host keeps its file when the path it wrote was archived meanwhile
/// with other contents (by another host, or a file the catalog did not know on its write
/// node): `NAME.conflict-HOST-NANOS`, in the same directory. Both files stay archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictName {
    /// The name the host wrote.
    pub original: String,
    /// The host whose file was kept aside.
    pub host: String,
    /// When it was kept aside, in nanoseconds since the epoch.
    pub at_ns: u64,
}

impl ConflictName {
    const MARK: &'static str = ".conflict-";

    /// The name for `host`'s file `name`, kept aside at `at_ns`.
    pub fn make(name: &str, host: &str, at_ns: u64) -> String {
        format!("{name}{}{host}-{at_ns}", Self::MARK)
    }

    /// The name for `host`'s file `name`, kept aside now.
    pub fn now(name: &str, host: &str) -> String {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::make(name, host, t)
    }

    /// What a conflict name says; `None` for any other name.
    pub fn parse(name: &str) -> Option<ConflictName> {
        let i = name.rfind(Self::MARK)?;
        let (host, at) = name[i + Self::MARK.len()..].rsplit_once('-')?;
        if i == 0 || host.is_empty() || at.is_empty() || !at.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(ConflictName {
            original: name[..i].to_owned(),
            host: host.to_owned(),
            at_ns: at.parse().ok()?,
        })
    }
}
