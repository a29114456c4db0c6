//! The Proxmox cluster this host belongs to, as its cluster file system
//! (`/etc/pve`) shows it.

use std::path::Path;

/// Nodes of the cluster (1 when standalone): the folders under `<pve>/nodes`.
pub fn node_count(pve: &Path) -> usize {
    std::fs::read_dir(pve.join("nodes"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(1)
        .max(1)
}
