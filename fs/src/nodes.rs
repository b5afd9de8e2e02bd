//! This host's nodes as the mount sees them: the active ones with a root, read from the
//! catalog and reused for a few seconds (transport disks come and go).

use std::sync::RwLock;
use std::time::{Duration, Instant};

use cairn_catalog::model::Node;

/// How long the list of this host's nodes is reused.
const REFRESH: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct HostNodes {
    cache: RwLock<Option<(Instant, Vec<Node>)>>,
}

impl HostNodes {
    /// This host's active nodes with a root: the cached list, or `load`'s when it is older
    /// than [`REFRESH`].
    pub fn get(&self, load: impl FnOnce() -> Vec<Node>) -> Vec<Node> {
        if let Some((at, nodes)) = &*self.cache.read().expect("host nodes")
            && at.elapsed() < REFRESH
        {
            return nodes.clone();
        }
        let nodes: Vec<Node> = load()
            .into_iter()
            .filter(|n| n.active && n.root.is_some())
            .collect();
        *self.cache.write().expect("host nodes") = Some((Instant::now(), nodes.clone()));
        nodes
    }
}
