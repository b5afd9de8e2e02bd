//! The storage graph: hosts, groups, nodes and the auto-actions between them.

use super::Tx;
use crate::error::{CatalogError, Result};
use crate::model::{
    AutoAction, Group, GroupId, Host, HostId, IoClass, JournalReport, Node, NodeId, NodeKind,
};
use crate::params;

/// Fields of a new node.
#[derive(Debug, Clone, Default)]
pub struct NewNode {
    pub name: String,
    pub group: String,
    pub kind: Option<NodeKind>,
    pub host: Option<String>,
    pub root: Option<String>,
    pub active: bool,
    pub auto_import: bool,
    pub auto_verify: Option<i64>,
    pub max_total: Option<u64>,
    pub min_avail: Option<u64>,
    pub username: Option<String>,
    pub address: Option<String>,
    pub notes: Option<String>,
}

/// Changes to a node; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    pub kind: Option<NodeKind>,
    pub group: Option<String>,
    pub host: Option<Option<String>>,
    pub root: Option<Option<String>>,
    pub active: Option<bool>,
    pub auto_import: Option<bool>,
    pub auto_verify: Option<Option<i64>>,
    pub max_total: Option<Option<u64>>,
    pub min_avail: Option<Option<u64>>,
    pub username: Option<Option<String>>,
    pub address: Option<Option<String>>,
    pub notes: Option<Option<String>>,
}

impl NodeUpdate {
    pub fn is_empty(&self) -> bool {
        self.kind.is_none()
            && self.group.is_none()
            && self.host.is_none()
            && self.root.is_none()
            && self.active.is_none()
            && self.auto_import.is_none()
            && self.auto_verify.is_none()
            && self.max_total.is_none()
            && self.min_avail.is_none()
            && self.username.is_none()
            && self.address.is_none()
            && self.notes.is_none()
    }
}

fn check_name(kind: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "invalid {kind} name {name:?}: use letters, digits, '_', '-' and '.' \
             (not starting with '-'), at most 128 characters"
        )))
    }
}

fn check_root(root: &str) -> Result<()> {
    if root.starts_with('/') {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "invalid node root {root:?}: must be an absolute path"
        )))
    }
}

fn host_query(filter: &str) -> String {
    format!("SELECT {} FROM host h {filter}", Host::COLUMNS)
}

fn group_query(filter: &str) -> String {
    format!("SELECT {} FROM storage_group g {filter}", Group::COLUMNS)
}

fn node_query(filter: &str) -> String {
    format!("SELECT {} FROM {} {filter}", Node::COLUMNS, Node::FROM)
}

impl Tx<'_> {
    // ---- hosts ----

    pub fn host_by_name(&mut self, name: &str) -> Result<Option<Host>> {
        self.row(&host_query("WHERE h.name = ?"), params![name])
    }

    pub fn host(&mut self, name: &str) -> Result<Host> {
        self.host_by_name(name)?
            .ok_or_else(|| CatalogError::not_found("host", name))
    }

    pub fn hosts(&mut self) -> Result<Vec<Host>> {
        self.rows(&host_query("ORDER BY h.name"), params![])
    }

    pub fn create_host(
        &mut self,
        name: &str,
        address: Option<&str>,
        notes: Option<&str>,
    ) -> Result<Host> {
        check_name("host", name)?;
        if let Some(a) = address {
            check_address(a)?;
        }
        if self.host_by_name(name)?.is_some() {
            return Err(CatalogError::exists("host", name));
        }
        self.insert::<HostId>(
            "INSERT INTO host (name, address, notes) VALUES (?, ?, ?) RETURNING id",
            params![name, address, notes],
        )?;
        self.host(name)
    }

    /// The host named `name`, created if it does not exist (the flag says whether it was).
    pub fn ensure_host(&mut self, name: &str) -> Result<(Host, bool)> {
        match self.host_by_name(name)? {
            Some(h) => Ok((h, false)),
            None => Ok((self.create_host(name, None, None)?, true)),
        }
    }

    pub fn update_host(
        &mut self,
        name: &str,
        address: Option<Option<&str>>,
        notes: Option<Option<&str>>,
    ) -> Result<Host> {
        let host = self.host(name)?;
        if let Some(a) = address {
            if let Some(a) = a {
                check_address(a)?;
            }
            self.exec(
                "UPDATE host SET address = ? WHERE id = ?",
                params![a, host.id],
            )?;
        }
        if let Some(n) = notes {
            self.exec(
                "UPDATE host SET notes = ? WHERE id = ?",
                params![n, host.id],
            )?;
        }
        self.host(name)
    }

    /// Pauses or resumes a node: a paused node gets no new work into or out of it. Returns
    /// false if it already was in that state.
    pub fn set_node_paused(&mut self, name: &str, paused: bool) -> Result<bool> {
        let node = self.node(name)?;
        Ok(self.exec(
            "UPDATE node SET paused = ? WHERE id = ? AND paused <> ?",
            params![paused, node.id, paused],
        )? > 0)
    }

    /// Pauses or resumes all work of a host's cairnd.
    pub fn set_host_paused(&mut self, name: &str, paused: bool) -> Result<bool> {
        let host = self.host(name)?;
        Ok(self.exec(
            "UPDATE host SET paused = ? WHERE id = ? AND paused <> ?",
            params![paused, host.id, paused],
        )? > 0)
    }

    /// Records that this host's cairnd was alive at `now`.
    pub fn touch_host(&mut self, host_id: HostId, now: i64) -> Result<()> {
        self.exec(
            "UPDATE host SET last_seen = ? WHERE id = ?",
            params![now, host_id],
        )?;
        Ok(())
    }

    // ---- groups ----

    pub fn group_by_name(&mut self, name: &str) -> Result<Option<Group>> {
        self.row(&group_query("WHERE g.name = ?"), params![name])
    }

    pub fn group(&mut self, name: &str) -> Result<Group> {
        self.group_by_name(name)?
            .ok_or_else(|| CatalogError::not_found("group", name))
    }

    pub fn groups(&mut self) -> Result<Vec<Group>> {
        self.rows(&group_query("ORDER BY g.name"), params![])
    }

    pub fn create_group(
        &mut self,
        name: &str,
        io_class: IoClass,
        notes: Option<&str>,
    ) -> Result<Group> {
        check_name("group", name)?;
        if self.group_by_name(name)?.is_some() {
            return Err(CatalogError::exists("group", name));
        }
        self.insert::<GroupId>(
            "INSERT INTO storage_group (name, io_class, notes) VALUES (?, ?, ?) RETURNING id",
            params![name, io_class, notes],
        )?;
        self.group(name)
    }

    pub fn update_group(
        &mut self,
        name: &str,
        io_class: Option<IoClass>,
        notes: Option<Option<&str>>,
    ) -> Result<Group> {
        let group = self.group(name)?;
        if let Some(class) = io_class {
            if class == IoClass::Transport {
                let others: Vec<Node> = self
                    .group_nodes(group.id)?
                    .into_iter()
                    .filter(|n| n.kind != NodeKind::Transport)
                    .collect();
                if let Some(n) = others.first() {
                    return Err(CatalogError::Invalid(format!(
                        "group {name:?} cannot become a transport group: node {:?} is not a \
                         transport node",
                        n.name
                    )));
                }
            }
            self.exec(
                "UPDATE storage_group SET io_class = ? WHERE id = ?",
                params![class, group.id],
            )?;
        }
        if let Some(n) = notes {
            self.exec(
                "UPDATE storage_group SET notes = ? WHERE id = ?",
                params![n, group.id],
            )?;
        }
        self.group(name)
    }

    pub fn group_nodes(&mut self, group_id: GroupId) -> Result<Vec<Node>> {
        self.rows(
            &node_query("WHERE n.group_id = ? ORDER BY n.name"),
            params![group_id],
        )
    }

    // ---- nodes ----

    pub fn node_by_name(&mut self, name: &str) -> Result<Option<Node>> {
        self.row(&node_query("WHERE n.name = ?"), params![name])
    }

    pub fn node(&mut self, name: &str) -> Result<Node> {
        self.node_by_name(name)?
            .ok_or_else(|| CatalogError::not_found("node", name))
    }

    pub fn node_by_id(&mut self, id: NodeId) -> Result<Node> {
        self.row(&node_query("WHERE n.id = ?"), params![id])?
            .ok_or_else(|| CatalogError::not_found("node", format!("#{id}")))
    }

    pub fn nodes(&mut self) -> Result<Vec<Node>> {
        self.rows(&node_query("ORDER BY n.name"), params![])
    }

    pub fn nodes_on_host(&mut self, host_id: HostId) -> Result<Vec<Node>> {
        self.rows(
            &node_query("WHERE n.host_id = ? ORDER BY n.name"),
            params![host_id],
        )
    }

    /// Creates a node. Its host is created when it does not exist yet (the returned flag).
    pub fn create_node(&mut self, new: &NewNode) -> Result<(Node, bool)> {
        check_name("node", &new.name)?;
        if let Some(r) = &new.root {
            check_root(r)?;
        }
        if self.node_by_name(&new.name)?.is_some() {
            return Err(CatalogError::exists("node", &new.name));
        }
        let group = self.group(&new.group)?;
        let kind = new.kind.unwrap_or(match group.io_class {
            IoClass::Transport => NodeKind::Transport,
            IoClass::Default => NodeKind::Field,
        });
        check_kind_in_group(&new.name, kind, &group)?;
        let (host_id, host_created) = match &new.host {
            Some(h) => {
                let (host, created) = self.ensure_host(h)?;
                (Some(host.id), created)
            }
            None => (None, false),
        };
        self.insert::<NodeId>(
            "INSERT INTO node (name, group_id, kind, host_id, root, active, auto_import, \
             auto_verify, max_total, min_avail, username, address, notes) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            params![
                new.name.as_str(),
                group.id,
                kind,
                host_id,
                new.root.as_deref(),
                new.active,
                new.auto_import,
                new.auto_verify,
                new.max_total,
                new.min_avail,
                new.username.as_deref(),
                new.address.as_deref(),
                new.notes.as_deref()
            ],
        )?;
        Ok((self.node(&new.name)?, host_created))
    }

    /// Applies `update` to node `name`. Returns the node and whether a host was created.
    pub fn update_node(&mut self, name: &str, update: &NodeUpdate) -> Result<(Node, bool)> {
        let node = self.node(name)?;
        let group = match &update.group {
            Some(g) => self.group(g)?,
            None => self.group(&node.group)?,
        };
        let kind = update.kind.unwrap_or(node.kind);
        check_kind_in_group(name, kind, &group)?;
        let mut host_created = false;
        let host_id = match &update.host {
            Some(Some(h)) => {
                let (host, created) = self.ensure_host(h)?;
                host_created = created;
                Some(host.id)
            }
            Some(None) => None,
            None => node.host_id,
        };
        let root = match &update.root {
            Some(r) => {
                if let Some(r) = r {
                    check_root(r)?;
                }
                r.clone()
            }
            None => node.root.clone(),
        };
        let pick = |u: &Option<Option<String>>, old: &Option<String>| match u {
            Some(v) => v.clone(),
            None => old.clone(),
        };
        self.exec(
            "UPDATE node SET group_id = ?, kind = ?, host_id = ?, root = ?, active = ?, \
             auto_import = ?, auto_verify = ?, max_total = ?, min_avail = ?, username = ?, \
             address = ?, notes = ? WHERE id = ?",
            params![
                group.id,
                kind,
                host_id,
                root,
                update.active.unwrap_or(node.active),
                update.auto_import.unwrap_or(node.auto_import),
                update.auto_verify.unwrap_or(node.auto_verify),
                update.max_total.unwrap_or(node.max_total),
                update.min_avail.unwrap_or(node.min_avail),
                pick(&update.username, &node.username),
                pick(&update.address, &node.address),
                pick(&update.notes, &node.notes),
                node.id
            ],
        )?;
        Ok((self.node(name)?, host_created))
    }

    /// Records how many closed files wait in node `node_id`'s journal, and since when.
    pub fn report_journal(
        &mut self,
        node_id: NodeId,
        files: u64,
        oldest: Option<i64>,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO journal (node_id, files, oldest, reported_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (node_id) DO UPDATE SET files = excluded.files, \
             oldest = excluded.oldest, reported_at = excluded.reported_at",
            params![node_id, files, oldest, now],
        )?;
        Ok(())
    }

    /// The journals with files waiting, oldest first.
    pub fn journals_waiting(&mut self) -> Result<Vec<JournalReport>> {
        self.rows(
            "SELECT n.name, h.name, j.files, j.oldest, j.reported_at FROM journal j \
             JOIN node n ON n.id = j.node_id LEFT JOIN host h ON h.id = n.host_id \
             WHERE j.files > 0 ORDER BY j.oldest, n.name",
            params![],
        )
    }

    /// Records what cairnd measured on the node's filesystem.
    pub fn record_node_space(
        &mut self,
        node_id: NodeId,
        avail: u64,
        capacity: u64,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "UPDATE node SET avail = ?, capacity = ?, last_checked = ? WHERE id = ?",
            params![avail, capacity, now, node_id],
        )?;
        Ok(())
    }

    // ---- auto-actions ----

    /// Turns auto-sync from `node` into `group` on or off; with `path`, only files at or
    /// below that path are copied. Returns false if nothing changed.
    pub fn set_autosync(
        &mut self,
        group: &Group,
        node: &Node,
        on: bool,
        path: Option<&str>,
    ) -> Result<bool> {
        if on && node.group_id == group.id {
            return Err(CatalogError::Invalid(format!(
                "node {:?} is in group {:?}: auto-sync needs a node outside the group",
                node.name, group.name
            )));
        }
        let path = path
            .map(super::normalize_path)
            .transpose()?
            .filter(|p| !p.is_empty());
        let mut changed = self.set_action(group.id, node.id, "autosync", on)?;
        if on {
            let current: Option<String> = self.scalar(
                "SELECT path_prefix FROM auto_action WHERE group_id = ? AND node_id = ?",
                params![group.id, node.id],
            )?;
            if current != path {
                self.exec(
                    "UPDATE auto_action SET path_prefix = ? WHERE group_id = ? AND node_id = ?",
                    params![path, group.id, node.id],
                )?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Turns auto-clean of `node` when files arrive in `group` on or off; with `after`
    /// (seconds), only once a file has been in `group` that long and its copy there was
    /// verified since it arrived.
    pub fn set_autoclean(
        &mut self,
        group: &Group,
        node: &Node,
        on: bool,
        after: Option<i64>,
    ) -> Result<bool> {
        if on && node.group_id == group.id {
            return Err(CatalogError::Invalid(format!(
                "node {:?} is in group {:?}: auto-clean needs a node outside the group",
                node.name, group.name
            )));
        }
        let mut changed = self.set_action(group.id, node.id, "autoclean", on)?;
        if on {
            let current: Option<i64> = self.scalar(
                "SELECT clean_after FROM auto_action WHERE group_id = ? AND node_id = ?",
                params![group.id, node.id],
            )?;
            if current != after {
                self.exec(
                    "UPDATE auto_action SET clean_after = ? WHERE group_id = ? AND node_id = ?",
                    params![after, group.id, node.id],
                )?;
                changed = true;
            }
        }
        Ok(changed)
    }

    fn set_action(
        &mut self,
        group_id: GroupId,
        node_id: NodeId,
        column: &str,
        on: bool,
    ) -> Result<bool> {
        self.exec(
            "INSERT INTO auto_action (group_id, node_id) VALUES (?, ?) \
             ON CONFLICT (group_id, node_id) DO NOTHING",
            params![group_id, node_id],
        )?;
        let changed = self.exec(
            &format!(
                "UPDATE auto_action SET {column} = ? \
                 WHERE group_id = ? AND node_id = ? AND {column} <> ?"
            ),
            params![on, group_id, node_id, on],
        )?;
        self.exec(
            "DELETE FROM auto_action WHERE autosync = 0 AND autoclean = 0",
            params![],
        )?;
        Ok(changed > 0)
    }

    /// Every auto-action that names `group` or `node` (either may be omitted).
    pub fn auto_actions(
        &mut self,
        group_id: Option<GroupId>,
        node_id: Option<NodeId>,
    ) -> Result<Vec<AutoAction>> {
        let mut sql = format!(
            "SELECT {} FROM {} WHERE 1 = 1",
            AutoAction::COLUMNS,
            AutoAction::FROM
        );
        let mut args = Vec::new();
        if let Some(g) = group_id {
            sql.push_str(" AND aa.group_id = ?");
            args.push(g.into());
        }
        if let Some(n) = node_id {
            sql.push_str(" AND aa.node_id = ?");
            args.push(n.into());
        }
        sql.push_str(" ORDER BY ag.name, an.name");
        self.rows(&sql, &args)
    }
}

fn check_kind_in_group(node: &str, kind: NodeKind, group: &Group) -> Result<()> {
    match (group.io_class, kind) {
        (IoClass::Transport, NodeKind::Transport) | (IoClass::Default, _) => Ok(()),
        (IoClass::Transport, other) => Err(CatalogError::Invalid(format!(
            "node {node:?} cannot be {} {other} node in transport group {:?}: a transport group \
             holds only transport nodes",
            if other == NodeKind::Archive {
                "an"
            } else {
                "a"
            },
            group.name
        ))),
    }
}

fn check_address(a: &str) -> Result<()> {
    let ok = a
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "invalid host address {a:?}: expected HOST:PORT, e.g. alpenhost1:7070"
        )))
    }
}
