//! Tables that `node` and `group` commands both print: node stats and auto-actions.

use cairn_catalog::model::{AutoAction, NodeStats};
use cairn_catalog::units::format_duration;

use crate::output::{Table, size_or_dash};

/// The `node stats` table.
pub fn stats_table(stats: &[NodeStats], extra: bool) -> Table {
    let mut headers = vec!["Name", "File Count", "Total Size", "% Full"];
    if extra {
        headers.extend(["Corrupt Files", "Suspect Files", "Missing Files"]);
    }
    let mut t = Table::new(&headers);
    let count = |n: u64| {
        if n == 0 {
            "-".to_owned()
        } else {
            n.to_string()
        }
    };
    for s in stats {
        let mut row = vec![
            s.node.clone(),
            s.files.to_string(),
            size_or_dash(s.bytes),
            s.percent_full()
                .map_or_else(|| "-".into(), |p| format!("{p:.1}")),
        ];
        if extra {
            row.extend([count(s.corrupt), count(s.suspect), count(s.missing)]);
        }
        t.row(row);
    }
    t
}

/// Prints auto-actions seen from a group (which nodes feed it) or from a node.
pub fn print_auto_actions(actions: &[AutoAction], side: Side) {
    if actions.is_empty() {
        println!("none");
        return;
    }
    let mut t = match side {
        Side::Group => Table::new(&["Node", "Action", "Trigger"]),
        Side::Node => Table::new(&["Group", "Action", "Trigger"]),
    };
    for a in actions {
        let other = match side {
            Side::Group => a.node.clone(),
            Side::Node => a.group.clone(),
        };
        if a.autosync {
            let node = match side {
                Side::Group => "that node",
                Side::Node => "this node",
            };
            let trigger = match &a.path_prefix {
                None => format!("File added to {node}"),
                Some(p) => format!("File added to {node} under {p}"),
            };
            t.row(vec![other.clone(), "Auto-sync".into(), trigger]);
        }
        if a.autoclean {
            let group = match side {
                Side::Group => "this group",
                Side::Node => "that group",
            };
            let trigger = match a.clean_after {
                None => format!("File added to {group}"),
                Some(s) => format!(
                    "File in {group} for {}, verified",
                    format_duration(std::time::Duration::from_secs(s as u64))
                ),
            };
            t.row(vec![other.clone(), "Auto-clean".into(), trigger]);
        }
    }
    t.print();
}

/// Which end of an auto-action a listing is seen from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Group,
    Node,
}
