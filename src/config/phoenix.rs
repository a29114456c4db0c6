//! A Phoenix Hypervisor `phoenix_lxc_configs.json`, trusted like the
//! configuration: whether it requests NVIDIA for a container, and its URL.

use std::path::Path;

use anyhow::Result;

use super::load::{check_url, read_trusted};
use crate::error::usage;
use crate::vmid::Vmid;

/// A Phoenix Hypervisor `phoenix_lxc_configs.json`: what the original plan's
/// `jq_get_value` read.
#[derive(Debug, Default)]
pub struct PhoenixEntry {
    pub requested: bool,
    pub runfile_url: Option<String>,
}

pub fn read_phoenix(path: &Path, vmid: Vmid) -> Result<PhoenixEntry> {
    let text =
        read_trusted(path).map_err(|e| usage(format!("phoenix_config {}: {e}", path.display())))?;
    let root: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("phoenix_config {}: {e}", path.display())))?;
    let entry = root
        .get("lxc_configs")
        .and_then(|c| c.get(vmid.to_string()));
    let Some(entry) = entry else {
        return Ok(PhoenixEntry::default());
    };
    let requested = entry
        .get("features")
        .and_then(|f| f.as_array())
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("nvidia")));
    let runfile_url = entry
        .get("nvidia_runfile_url")
        .or_else(|| root.get("nvidia_runfile_url"))
        .and_then(|u| u.as_str())
        .map(str::to_owned);
    if let Some(url) = &runfile_url {
        check_url(url).map_err(|e| {
            usage(format!(
                "phoenix_config {}: nvidia_runfile_url: {e:#}",
                path.display()
            ))
        })?;
    }
    Ok(PhoenixEntry {
        requested,
        runfile_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmid(n: u32) -> Vmid {
        Vmid::try_from(n).unwrap()
    }

    #[test]
    fn phoenix_entry_and_root_url() {
        let dir = std::env::temp_dir().join(format!("pnh-phoenix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("phoenix_lxc_configs.json");
        std::fs::write(
            &file,
            r#"{"nvidia_runfile_url": "https://example.com/NVIDIA-Linux-x86_64-550.54.14.run",
                "lxc_configs": {"901": {"features": ["base", "nvidia"]}, "902": {"features": ["docker"]}}}"#,
        )
        .unwrap();
        let e = read_phoenix(&file, vmid(901)).unwrap();
        assert!(e.requested);
        assert_eq!(
            e.runfile_url.as_deref(),
            Some("https://example.com/NVIDIA-Linux-x86_64-550.54.14.run")
        );
        assert!(!read_phoenix(&file, vmid(902)).unwrap().requested);
        assert!(!read_phoenix(&file, vmid(903)).unwrap().requested);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
