//! A node's root on disk: where cairn keeps its own things under it, its marker, its space.
//!
//! The layout, written here once and nowhere else:
//!
//! - `<root>/.cairn/node.toml`: the marker written by node init, naming the node and the
//!   catalog it belongs to. cairnd uses a root only when the marker names the node it expects in
//!   the catalog it is connected to: a disk in the wrong slot, or a disk of another archive, is
//!   refused and never written to (invariant 6).
//! - `<root>/.cairn/tmp/`: copies arriving (`copy-ID.tmp` for a local copy, `copy-ID.part` for a
//!   pull from another host, kept for resume), see [`Incoming`]; a batch of small copies pulled
//!   together arrives as unnamed files (`O_TMPFILE` here), or, on a file system without them,
//!   in a directory of its own, `batch-ID/` (ID: its first request), holding a `copy-ID.tmp`
//!   for each, see [`IncomingBatch`].
//! - `<root>/.cairn/staging/`: files being written through the mount.
//! - `<root>/.cairn/kept/`: files the mount keeps on this host without importing them.
//! - `<root>/<archive path>`: the copies.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_catalog::model::RequestId;
use serde::{Deserialize, Serialize};

/// The directory under a node root that holds cairn's own files; never imported or served.
pub const CAIRN_DIR: &str = ".cairn";

/// A node's root directory, and where each part of its layout lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoot {
    root: PathBuf,
}

/// The marker written by node init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub node: String,
    pub catalog_id: String,
}

/// What cairnd found at a node's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootState {
    /// The marker names this node in this catalog.
    Ready,
    /// The root exists but has no marker: it needs `cairn node init`.
    NotInitialised,
    /// The root directory is not there (an unmounted disk, a typo).
    Missing,
    /// The marker names another node or another catalog.
    Foreign(Marker),
    /// The marker exists but cannot be read or parsed.
    Unreadable(String),
}

/// Why a marker could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("no marker")]
    Missing,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
}

/// A copy arriving in `.cairn/tmp/` for copy request `request`. A pull from another host
/// (`resumable`) keeps its temp file across failed attempts, to resume with `Range`; a local
/// copy starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub request: RequestId,
    pub resumable: bool,
}

impl Incoming {
    /// The file name in `.cairn/tmp/`: `copy-ID.part` or `copy-ID.tmp`.
    pub fn file_name(&self) -> String {
        let suffix = if self.resumable { "part" } else { "tmp" };
        format!("copy-{}.{suffix}", self.request)
    }

    /// The copy a name in `.cairn/tmp/` belongs to; `None` for anything else.
    pub fn parse(name: &str) -> Option<Incoming> {
        let rest = name.strip_prefix("copy-")?;
        let (id, resumable) = rest
            .strip_suffix(".part")
            .map(|id| (id, true))
            .or_else(|| rest.strip_suffix(".tmp").map(|id| (id, false)))?;
        Some(Incoming {
            request: id.parse().ok()?,
            resumable,
        })
    }
}

/// A batch of small copies pulled together from another host, on a file system without
/// unnamed files (`O_TMPFILE`), arriving in a directory of its own in `.cairn/tmp/`, named
/// for the batch's first copy request: batches landing at once each create and rename in
/// their own directory rather than wait on one directory's lock, and a batch cut off by a
/// crash leaves one directory, removed whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingBatch {
    pub first: RequestId,
}

impl IncomingBatch {
    /// The directory name in `.cairn/tmp/`: `batch-ID`.
    pub fn dir_name(&self) -> String {
        format!("batch-{}", self.first)
    }

    /// The batch a name in `.cairn/tmp/` belongs to; `None` for anything else.
    pub fn parse(name: &str) -> Option<IncomingBatch> {
        Some(IncomingBatch {
            first: name.strip_prefix("batch-")?.parse().ok()?,
        })
    }
}

impl NodeRoot {
    pub fn new(root: impl Into<PathBuf>) -> NodeRoot {
        NodeRoot { root: root.into() }
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where the copy of the file at archive path `path` lives.
    pub fn file(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// `<root>/.cairn`.
    pub fn cairn_dir(&self) -> PathBuf {
        self.root.join(CAIRN_DIR)
    }

    /// `<root>/.cairn/node.toml`.
    pub fn marker(&self) -> PathBuf {
        self.cairn_dir().join("node.toml")
    }

    /// `<root>/.cairn/tmp`: copies arriving.
    pub fn tmp(&self) -> PathBuf {
        self.cairn_dir().join("tmp")
    }

    /// Where copy `incoming` arrives.
    pub fn incoming(&self, incoming: Incoming) -> PathBuf {
        self.tmp().join(incoming.file_name())
    }

    /// The directory where the copies of `batch` arrive (each named as an [`Incoming`]).
    pub fn incoming_batch(&self, batch: IncomingBatch) -> PathBuf {
        self.tmp().join(batch.dir_name())
    }

    /// `<root>/.cairn/staging`: files being written through the mount.
    pub fn staging(&self) -> PathBuf {
        self.cairn_dir().join("staging")
    }

    /// The journal of files closed on this node and not yet registered.
    pub fn journal(&self) -> PathBuf {
        self.cairn_dir().join("journal.db")
    }

    /// cairnd's registrations waiting for the catalog: files it found on this node (by
    /// auto-import or scan) while the catalog could not take them ([`crate::waiting`]).
    pub fn waiting(&self) -> PathBuf {
        self.cairn_dir().join("waiting.db")
    }

    /// `<root>/.cairn/kept`: files the mount keeps on this host without importing them.
    pub fn kept(&self) -> PathBuf {
        self.cairn_dir().join("kept")
    }

    /// Whether `path` (relative to a root, `/`-separated) is in cairn's own area.
    pub fn is_cairn_area(path: &str) -> bool {
        path == CAIRN_DIR
            || path
                .strip_prefix(CAIRN_DIR)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Reads the marker.
    pub fn read_marker(&self) -> Result<Marker, MarkerError> {
        let text = match std::fs::read_to_string(self.marker()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MarkerError::Missing),
            Err(e) => return Err(MarkerError::Io(e)),
        };
        Ok(toml::from_str::<Marker>(&text)?)
    }

    /// Whether the root is there and its marker names `node` of catalog `catalog_id`.
    pub fn check(&self, node: &str, catalog_id: &str) -> RootState {
        if !self.root.is_dir() {
            return RootState::Missing;
        }
        match self.read_marker() {
            Ok(m) if m.node == node && m.catalog_id == catalog_id => RootState::Ready,
            Ok(m) => RootState::Foreign(m),
            Err(MarkerError::Missing) => RootState::NotInitialised,
            Err(e) => RootState::Unreadable(e.to_string()),
        }
    }

    /// Writes the marker (atomically: temp file, fsync, rename) and creates `.cairn/tmp/`.
    pub fn write_marker(&self, marker: &Marker) -> std::io::Result<()> {
        let dir = self.cairn_dir();
        std::fs::create_dir_all(self.tmp())?;
        // Node names are [A-Za-z0-9_.-] and catalog ids hex, so no TOML escaping is needed.
        let text = format!(
            "node = \"{}\"\ncatalog_id = \"{}\"\n",
            marker.node, marker.catalog_id
        );
        let tmp = dir.join("node.toml.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(
                b"# Written by cairnd at node init. Do not edit: cairn refuses a root whose\n",
            )?;
            f.write_all(b"# marker names another node or another catalog.\n")?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.marker())?;
        std::fs::File::open(&dir)?.sync_all()
    }

    /// The capacity of the filesystem holding the root.
    pub fn space(&self) -> std::io::Result<Space> {
        space(&self.root)
    }
}

/// Capacity of the filesystem holding a path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// The filesystem's id: two paths on one filesystem have the same.
    pub fsid: u64,
    pub total: u64,
    pub free: u64,
    /// Free for unprivileged users (without the blocks reserved for root).
    pub avail: u64,
}

/// The capacity of the filesystem holding `path` (statvfs).
pub fn space(path: &Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right size; statvfs fills it completely on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let f = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok(Space {
        fsid: st.f_fsid as u64,
        total: st.f_blocks as u64 * f,
        free: st.f_bfree as u64 * f,
        avail: st.f_bavail as u64 * f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        assert_eq!(
            NodeRoot::new(dir.path().join("nope")).check("n", "c"),
            RootState::Missing
        );
        assert_eq!(root.check("n", "c"), RootState::NotInitialised);
        let m = Marker {
            node: "n".into(),
            catalog_id: "c".into(),
        };
        root.write_marker(&m).unwrap();
        assert!(root.tmp().is_dir());
        assert_eq!(root.check("n", "c"), RootState::Ready);
        assert_eq!(root.check("other", "c"), RootState::Foreign(m.clone()));
        assert_eq!(root.check("n", "other"), RootState::Foreign(m));
        std::fs::write(root.marker(), "garbage = [").unwrap();
        assert!(matches!(root.check("n", "c"), RootState::Unreadable(_)));
    }

    #[test]
    fn the_layout_is_under_dot_cairn() {
        let root = NodeRoot::new("/data");
        assert_eq!(root.marker(), Path::new("/data/.cairn/node.toml"));
        assert_eq!(root.tmp(), Path::new("/data/.cairn/tmp"));
        assert_eq!(root.staging(), Path::new("/data/.cairn/staging"));
        assert_eq!(root.kept(), Path::new("/data/.cairn/kept"));
        assert_eq!(root.file("2025/x.dat"), Path::new("/data/2025/x.dat"));
        assert!(NodeRoot::is_cairn_area(".cairn"));
        assert!(NodeRoot::is_cairn_area(".cairn/tmp/x"));
        assert!(!NodeRoot::is_cairn_area(".cairnish/x"));
        assert!(!NodeRoot::is_cairn_area("a/.cairn/x"));
    }

    #[test]
    fn incoming_batch_names_round_trip() {
        let b = IncomingBatch {
            first: RequestId(42),
        };
        assert_eq!(IncomingBatch::parse(&b.dir_name()), Some(b));
        assert_eq!(
            NodeRoot::new("/r").incoming_batch(b),
            Path::new("/r/.cairn/tmp/batch-42")
        );
        for other in [
            "batch-",
            "batch-x",
            "copy-42.tmp",
            "batch-42.tmp",
            "xbatch-42",
        ] {
            assert_eq!(IncomingBatch::parse(other), None, "{other}");
        }
        assert_eq!(Incoming::parse("batch-42"), None);
    }

    #[test]
    fn incoming_names_round_trip() {
        for incoming in [
            Incoming {
                request: RequestId(12),
                resumable: true,
            },
            Incoming {
                request: RequestId(7),
                resumable: false,
            },
        ] {
            assert_eq!(Incoming::parse(&incoming.file_name()), Some(incoming));
        }
        assert_eq!(
            NodeRoot::new("/r").incoming(Incoming {
                request: RequestId(3),
                resumable: true
            }),
            Path::new("/r/.cairn/tmp/copy-3.part")
        );
        for other in [
            "copy-x.part",
            "copy-3.partial",
            "node.toml.tmp",
            "copy-.tmp",
        ] {
            assert_eq!(Incoming::parse(other), None, "{other}");
        }
    }

    #[test]
    fn space_reports_a_filesystem() {
        let s = space(Path::new("/")).unwrap();
        assert!(
            s.total > 0 && s.avail <= s.free && s.free <= s.total,
            "{s:?}"
        );
        assert_eq!(space(Path::new("/usr")).unwrap().fsid == s.fsid, {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/usr").unwrap().dev() == std::fs::metadata("/").unwrap().dev()
        });
    }
}
