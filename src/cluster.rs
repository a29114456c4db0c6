//! The Proxmox cluster this host belongs to, as its cluster file system
//! (`/etc/pve`, pmxcfs: the same on every node) and Proxmox's API (`pvesh`)
//! show it.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::process::{self, Limits};
use crate::storage::Storage;

/// This node's name: pmxcfs links `<pve>/local` to `nodes/<name>`; without
/// it (no cluster file system), the host's name.
pub fn node_name(pve: &Path) -> String {
    std::fs::read_link(pve.join("local"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| {
            let uname = rustix::system::uname();
            let host = uname.nodename().to_string_lossy();
            host.split('.').next().unwrap_or_default().to_string()
        })
}

/// The cluster's nodes: the members pmxcfs lists in `<pve>/.members`
/// (corosync's node list); without one, the folders under `<pve>/nodes`.
/// The folders alone are not enough: `pvecm delnode` leaves a removed
/// node's folder behind.
pub fn nodes(pve: &Path) -> Vec<String> {
    let mut nodes = members(pve).unwrap_or_else(|| {
        std::fs::read_dir(pve.join("nodes"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    });
    nodes.sort();
    nodes
}

#[derive(Deserialize)]
struct Members {
    nodelist: Option<std::collections::BTreeMap<String, serde::de::IgnoredAny>>,
}

/// `.members`' node list; None without one (a standalone node's has none).
fn members(pve: &Path) -> Option<Vec<String>> {
    let text = std::fs::read(pve.join(".members")).ok()?;
    let members: Members = serde_json::from_slice(&text).ok()?;
    Some(members.nodelist?.into_keys().collect())
}

/// Where `volume` (on `store`) stands on the nodes other than `this`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// Nodes a start would abort on, each with why.
    pub lacking: Vec<String>,
    /// Nodes Proxmox's API cannot answer for.
    pub unverified: Option<Unverified>,
}

/// Nodes whose copy cannot be checked the way Proxmox lists content, why,
/// and the `pvesm set` that would let it be.
#[derive(Debug, PartialEq, Eq)]
pub struct Unverified {
    pub nodes: Vec<String>,
    pub storage: String,
    pub why: String,
    pub fix: String,
}

impl Unverified {
    pub fn describe(&self, volume: &str) -> String {
        format!(
            "{volume} is unverified on {}: Proxmox's API lists no snippets of storage '{}' ({})",
            self.nodes.join(", "),
            self.storage,
            self.why
        )
    }

    pub fn remedy(&self) -> String {
        format!(
            "install pve-nvidia-hook on every node (its package places the snippet there); to let pve-nvidia-hook check it: {}",
            self.fix
        )
    }
}

/// The volume on each other node: a storage not configured for a node is
/// not there (its `nodes` list); a shared one is the same everywhere; a
/// node-local one is asked through Proxmox's API, what that node's storage
/// lists, unless the API lists none of its snippets (then unverified).
pub fn presence(
    api: &Api,
    nodes: &[String],
    this: &str,
    store: &Storage,
    volume: &str,
) -> Presence {
    let mut presence = Presence::default();
    let mut unverified = Vec::new();
    for n in nodes.iter().filter(|n| *n != this) {
        if !store.configured_for(n) {
            presence.lacking.push(format!(
                "{n} (storage {} is not configured for it)",
                store.name
            ));
        } else if store.is_shared() {
            continue;
        } else if store.unlisted().is_some() {
            unverified.push(n.clone());
        } else {
            match api.snippets(n, &store.name) {
                Ok(volids) if volids.iter().any(|v| v == volume) => {}
                Ok(_) => presence.lacking.push(n.clone()),
                Err(e) => presence.lacking.push(format!("{n} (cannot ask it: {e:#})")),
            }
        }
    }
    if let (false, Some((why, fix))) = (unverified.is_empty(), store.unlisted()) {
        presence.unverified = Some(Unverified {
            nodes: unverified,
            storage: store.name.clone(),
            why,
            fix,
        });
    }
    presence
}

/// Proxmox's API through `pvesh`, which proxies a request for another node
/// to that node.
pub struct Api;

#[derive(Debug, Deserialize)]
struct Content {
    volid: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Guest {
    pub vmid: u32,
    pub node: String,
    pub status: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Api {
    fn get(&self, path: &str, extra: &[&str]) -> Result<String> {
        let pvesh = process::find_program("pvesh")
            .ok_or_else(|| anyhow!("pvesh not found: is this a Proxmox VE node?"))?;
        let mut args = vec!["get", path];
        args.extend_from_slice(extra);
        args.extend(["--output-format", "json"]);
        let out = process::run(&pvesh, &args, Limits::quick(Duration::from_secs(30)))?;
        if !out.success() {
            bail!(
                "pvesh get {path}: {}: {}",
                out.describe_status(),
                out.diagnostic()
            );
        }
        Ok(out.stdout_text())
    }

    /// The snippets a node sees on a storage (`volid`s).
    pub fn snippets(&self, node: &str, storage: &str) -> Result<Vec<String>> {
        let path = format!("/nodes/{node}/storage/{storage}/content");
        let text = self.get(&path, &["--content", "snippets"])?;
        let items: Vec<Content> =
            serde_json::from_str(&text).with_context(|| format!("pvesh get {path}"))?;
        Ok(items.into_iter().map(|c| c.volid).collect())
    }

    /// Every guest of the cluster, with its node and whether it runs.
    pub fn guests(&self) -> Result<Vec<Guest>> {
        let text = self.get("/cluster/resources", &["--type", "vm"])?;
        serde_json::from_str(&text).context("pvesh get /cluster/resources")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_from_the_local_link() {
        let dir = std::env::temp_dir().join(format!("pnh-node-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nodes/pve2")).unwrap();
        std::fs::create_dir_all(dir.join("nodes/pve1")).unwrap();
        std::os::unix::fs::symlink("nodes/pve2", dir.join("local")).unwrap();
        assert_eq!(node_name(&dir), "pve2");
        assert_eq!(nodes(&dir), ["pve1", "pve2"]);
        // pve3 was removed (its folder stays behind); pmxcfs lists the members.
        std::fs::create_dir_all(dir.join("nodes/pve3")).unwrap();
        std::fs::write(
            dir.join(".members"),
            r#"{"nodename": "pve2", "version": 7, "cluster": {"name": "c", "version": 3, "nodes": 2, "quorate": 1},
"nodelist": {"pve1": {"id": 1, "online": 1, "ip": "10.0.0.1"}, "pve2": {"id": 2, "online": 0, "ip": "10.0.0.2"}}}"#,
        )
        .unwrap();
        assert_eq!(nodes(&dir), ["pve1", "pve2"]);
        std::fs::write(
            dir.join(".members"),
            r#"{"nodename": "pve2", "version": 0}"#,
        )
        .unwrap();
        assert_eq!(
            nodes(&dir),
            ["pve1", "pve2", "pve3"],
            "standalone: no node list"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
