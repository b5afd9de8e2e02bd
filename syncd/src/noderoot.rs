//! A node's root on disk: its marker, its temp area, its free space.
//!
//! `<root>/.cairn/node.toml` names the node and the catalog it belongs to. cairnd uses a root
//! only when the marker names the node it expects in the catalog it is connected to: a disk in
//! the wrong slot, or a disk of another archive, is refused and never written to (invariant 6).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

pub fn marker_path(root: &Path) -> PathBuf {
    root.join(".cairn").join("node.toml")
}

pub fn tmp_dir(root: &Path) -> PathBuf {
    root.join(".cairn").join("tmp")
}

pub fn check_root(root: &Path, node: &str, catalog_id: &str) -> RootState {
    if !root.is_dir() {
        return RootState::Missing;
    }
    let text = match std::fs::read_to_string(marker_path(root)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return RootState::NotInitialised,
        Err(e) => return RootState::Unreadable(e.to_string()),
    };
    match toml::from_str::<Marker>(&text) {
        Ok(m) if m.node == node && m.catalog_id == catalog_id => RootState::Ready,
        Ok(m) => RootState::Foreign(m),
        Err(e) => RootState::Unreadable(e.to_string()),
    }
}

/// Writes the marker (atomically: temp file, fsync, rename) and creates `.cairn/tmp/`.
pub fn write_marker(root: &Path, marker: &Marker) -> std::io::Result<()> {
    let dir = root.join(".cairn");
    std::fs::create_dir_all(tmp_dir(root))?;
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
    std::fs::rename(&tmp, marker_path(root))?;
    std::fs::File::open(&dir)?.sync_all()
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
        let root = dir.path();
        assert_eq!(check_root(&root.join("nope"), "n", "c"), RootState::Missing);
        assert_eq!(check_root(root, "n", "c"), RootState::NotInitialised);
        let m = Marker {
            node: "n".into(),
            catalog_id: "c".into(),
        };
        write_marker(root, &m).unwrap();
        assert!(tmp_dir(root).is_dir());
        assert_eq!(check_root(root, "n", "c"), RootState::Ready);
        assert_eq!(
            check_root(root, "other", "c"),
            RootState::Foreign(m.clone())
        );
        assert_eq!(check_root(root, "n", "other"), RootState::Foreign(m));
        std::fs::write(marker_path(root), "garbage = [").unwrap();
        assert!(matches!(
            check_root(root, "n", "c"),
            RootState::Unreadable(_)
        ));
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
