//! Transport disks, plugged in like any disk.
//!
//! Every loop, cairnd reads `/proc/self/mountinfo` and looks at the filesystems mounted below
//! the `transport.watch` directories. One whose root carries the marker of a transport node of
//! this catalog is taken over: the node gets this host, the mount point as its root, and is
//! made active — no CLI command needed. When such a disk disappears, its node goes inactive.
//! A marker of another catalog, of a node that is not a transport node, or of a node another
//! host holds active, is reported (once) and the disk is left alone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use cairn_catalog::Catalog;
use cairn_catalog::catalog::NodeUpdate;
use cairn_catalog::model::{NodeId, NodeKind};
use cairn_node::root::{MarkerError, NodeRoot};
use tracing::{info, warn};

use crate::nodes::Host;

/// What detection remembers between loops.
#[derive(Debug, Default)]
pub struct Disks {
    /// Transport nodes this host holds from a mount, and where.
    mounted: HashMap<NodeId, PathBuf>,
    /// Problems already reported, so each is logged once while it lasts.
    reported: HashSet<String>,
}

/// Mount points of this machine, from `/proc/self/mountinfo`.
pub fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or(""), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn watched(mount: &Path, watch: &[PathBuf]) -> bool {
    watch.iter().any(|w| mount != w && mount.starts_with(w))
}

/// One detection pass over the mounts below `watch` (`transport.watch`): takes over newly
/// mounted transport disks, deactivates removed ones.
pub fn detect(host: &Host, watch: &[PathBuf], cat: &mut Catalog, disks: &mut Disks) -> Result<()> {
    if watch.is_empty() {
        return Ok(());
    }
    let mounts: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| watched(m, watch))
        .collect();
    let mut seen_problems = HashSet::new();
    for mp in &mounts {
        let marker = match NodeRoot::new(mp).read_marker() {
            Ok(m) => Ok(m),
            Err(MarkerError::Parse(e)) => Err(e),
            Err(MarkerError::Missing | MarkerError::Io(_)) => continue, // not a cairn disk
        };
        let mut report = |key: String, msg: String| {
            if disks.reported.insert(key.clone()) {
                warn!("{msg}");
            }
            seen_problems.insert(key);
        };
        let Ok(marker) = marker else {
            report(
                format!("unreadable {}", mp.display()),
                format!(
                    "The disk at {} has an unreadable cairn marker; left alone.",
                    mp.display()
                ),
            );
            continue;
        };
        if marker.catalog_id != host.catalog_id {
            report(
                format!("foreign {}", mp.display()),
                format!(
                    "The disk at {} belongs to another catalog ({}); left alone.",
                    mp.display(),
                    marker.catalog_id
                ),
            );
            continue;
        }
        let Some(node) = cat.read(|tx| tx.node_by_name(&marker.node))? else {
            report(
                format!("unknown {}", mp.display()),
                format!(
                    "The disk at {} is node \"{}\", which the catalog no longer has; left alone.",
                    mp.display(),
                    marker.node
                ),
            );
            continue;
        };
        if node.kind != NodeKind::Transport {
            report(
                format!("kind {}", mp.display()),
                format!(
                    "The disk at {} is node \"{}\", not a transport node; not taken over.",
                    mp.display(),
                    node.name
                ),
            );
            continue;
        }
        let here = node.host_id == Some(host.id);
        let mp_str = mp.to_string_lossy().into_owned();
        if here && node.active && node.root.as_deref() == Some(mp_str.as_str()) {
            disks.mounted.insert(node.id, mp.clone());
            continue;
        }
        if node.active && !here {
            report(
                format!("held {}", node.name),
                format!(
                    "Transport disk \"{}\" is mounted at {} but host \"{}\" holds it active: not \
                     taken over (deactivate it there, or `cairn node deactivate {}`).",
                    node.name,
                    mp.display(),
                    node.host.as_deref().unwrap_or("?"),
                    node.name
                ),
            );
            continue;
        }
        let update = NodeUpdate {
            host: Some(Some(host.name.clone())),
            root: Some(Some(mp_str.clone())),
            active: Some(true),
            ..NodeUpdate::default()
        };
        cat.write(|tx| tx.update_node(&node.name, &update))?;
        info!(
            "Transport disk \"{}\" mounted at {}: now active on this host.",
            node.name,
            mp.display()
        );
        disks.mounted.insert(node.id, mp.clone());
    }
    // Problems that went away may be reported again if they come back.
    disks.reported.retain(|k| seen_problems.contains(k));
    // Disks this host held that are no longer mounted.
    let gone: Vec<(NodeId, PathBuf)> = disks
        .mounted
        .iter()
        .filter(|(_, mp)| !mounts.contains(mp))
        .map(|(id, mp)| (*id, mp.clone()))
        .collect();
    for (id, mp) in gone {
        disks.mounted.remove(&id);
        let node = cat.read(|tx| tx.node_by_id(id))?;
        let mp_str = mp.to_string_lossy().into_owned();
        if node.host_id == Some(host.id) && node.root.as_deref() == Some(mp_str.as_str()) {
            let update = NodeUpdate {
                active: Some(false),
                ..NodeUpdate::default()
            };
            cat.write(|tx| tx.update_node(&node.name, &update))?;
            info!(
                "Transport disk \"{}\" unmounted from {}: inactive.",
                node.name,
                mp.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/media/usb\\040disk"), "/media/usb disk");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn only_mounts_below_a_watch_dir_count() {
        let watch = [PathBuf::from("/media")];
        assert!(watched(Path::new("/media/disk1"), &watch));
        assert!(!watched(Path::new("/media"), &watch));
        assert!(!watched(Path::new("/mediax/disk"), &watch));
    }

    #[test]
    fn this_machine_has_a_root_mount() {
        assert!(mount_points().unwrap().iter().any(|m| m == Path::new("/")));
    }
}
