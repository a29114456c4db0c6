//! The Proxmox cluster this host belongs to, as its cluster file system
//! (`/etc/pve`, pmxcfs: the same on every node) and Proxmox's API (`pvesh`)
//! show it.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::process::{self, Limits};

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

/// The cluster's nodes: the folders under `<pve>/nodes` (one when standalone).
pub fn nodes(pve: &Path) -> Vec<String> {
    let mut nodes: Vec<String> = std::fs::read_dir(pve.join("nodes"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

pub fn node_count(pve: &Path) -> usize {
    nodes(pve).len().max(1)
}

/// `datacenter.cfg`'s `tag-style`: how `pct set --tags` writes tags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagStyle {
    pub case_sensitive: bool,
}

pub fn tag_style(pve: &Path) -> TagStyle {
    let text = std::fs::read_to_string(pve.join("datacenter.cfg")).unwrap_or_default();
    let style = text
        .lines()
        .find_map(|l| l.strip_prefix("tag-style:"))
        .unwrap_or_default();
    TagStyle {
        case_sensitive: style
            .split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == "case-sensitive" && v == "1"),
    }
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
    fn tag_style_from_datacenter_cfg() {
        let dir = std::env::temp_dir().join(format!("pnh-dc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            !tag_style(&dir).case_sensitive,
            "no file: Proxmox's default"
        );
        std::fs::write(
            dir.join("datacenter.cfg"),
            "keyboard: en-us\ntag-style: ordering=config,case-sensitive=1,shape=full\n",
        )
        .unwrap();
        assert!(tag_style(&dir).case_sensitive);
        std::fs::write(dir.join("datacenter.cfg"), "tag-style: case-sensitive=0\n").unwrap();
        assert!(!tag_style(&dir).case_sensitive);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn node_name_from_the_local_link() {
        let dir = std::env::temp_dir().join(format!("pnh-node-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nodes/pve2")).unwrap();
        std::fs::create_dir_all(dir.join("nodes/pve1")).unwrap();
        std::os::unix::fs::symlink("nodes/pve2", dir.join("local")).unwrap();
        assert_eq!(node_name(&dir), "pve2");
        assert_eq!(nodes(&dir), ["pve1", "pve2"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
