//! This host in the catalog, and its nodes as the last pass of the main loop found them.
//!
//! A node is *available* when it is active, its root is there and its marker names it in this
//! catalog (see [`crate::plan`]): only available nodes are read from, written to or served.
//! Tasks, the HTTP server and the source choice read this table; only the main loop's pass
//! changes it.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_catalog::model::{GroupId, HostId, Node, NodeId};

/// Who this cairnd is in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub id: HostId,
    /// The catalog's identity, which node markers must name.
    pub catalog_id: String,
}

/// This host's nodes.
#[derive(Debug, Default)]
pub struct Nodes {
    /// Nodes available now, by id.
    available: Mutex<HashMap<NodeId, Node>>,
    /// Every node of this host as of the last pass, available or not: node id → group id.
    all: Mutex<HashMap<NodeId, GroupId>>,
}

impl Nodes {
    /// The available node `id`, if it is.
    pub fn get(&self, id: NodeId) -> Option<Node> {
        self.lock().get(&id).cloned()
    }

    /// Nodes available now.
    pub fn available(&self) -> Vec<Node> {
        self.lock().values().cloned().collect()
    }

    /// Marks `node` available, with its latest row.
    pub fn insert(&self, node: Node) {
        self.lock().insert(node.id, node);
    }

    /// Marks node `id` unavailable; returns whether it was available.
    pub fn remove(&self, id: NodeId) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// Keeps only the nodes for which `keep` holds.
    pub fn retain(&self, mut keep: impl FnMut(NodeId) -> bool) {
        self.lock().retain(|id, _| keep(*id));
    }

    /// Every node of this host: node id → group id.
    pub fn all(&self) -> HashMap<NodeId, GroupId> {
        self.all.lock().expect("host nodes lock").clone()
    }

    pub fn set_all(&self, all: HashMap<NodeId, GroupId>) {
        *self.all.lock().expect("host nodes lock") = all;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Node>> {
        self.available.lock().expect("available lock")
    }
}
