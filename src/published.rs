//! What each node last knew of its GPU containers, published in the
//! cluster file system (`<pve>/pve-nvidia-hook/nodes/<node>.json`), so that
//! `status --cluster` on any node shows every node's. A node writes its own
//! file only, after an install and when `status` runs there: never on the
//! up-to-date path of a start.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::decision::State;
use crate::fsutil;
use crate::state::{unix_now, Locks};
use crate::version::DriverVersion;
use crate::vmid::Vmid;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub node: String,
    pub host_version: Option<String>,
    pub updated_unix: u64,
    /// By vmid.
    pub containers: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub state: State,
    pub container_version: Option<String>,
    pub detail: Option<String>,
    pub at_unix: u64,
}

fn dir(pve: &Path) -> std::path::PathBuf {
    pve.join("pve-nvidia-hook/nodes")
}

/// Merges what this node saw of some containers into its published file.
pub fn publish(
    pve: &Path,
    locks: &Locks,
    node: &str,
    host: Option<&DriverVersion>,
    seen: impl IntoIterator<Item = (Vmid, Seen)>,
) -> Result<()> {
    let _held = locks.publish()?;
    let path = dir(pve).join(format!("{node}.json"));
    let mut state = read(&path).unwrap_or_else(|| NodeState {
        node: node.to_string(),
        ..NodeState::default()
    });
    state.host_version = host.map(|v| v.to_string());
    state.updated_unix = unix_now();
    for (vmid, mut s) in seen {
        s.detail = s
            .detail
            .map(|d| crate::logging::bounded(&d, crate::logging::DETAIL_MAX));
        state.containers.insert(vmid.to_string(), s);
    }
    fsutil::ensure_private_dir(&dir(pve))
        .context("the cluster file system (writes need quorum)")?;
    fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&state)?, 0o600)
}

fn read(path: &Path) -> Option<NodeState> {
    let (file, _) = fsutil::open_trusted(path).ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every node's published file.
pub fn read_all(pve: &Path) -> BTreeMap<String, NodeState> {
    std::fs::read_dir(dir(pve))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read(&e.path()))
        .map(|s| (s.node.clone(), s))
        .collect()
}
