//! Our hookscript snippet: the file Proxmox runs, and how a container's
//! `hookscript` volume is recognised as ours.

pub const SNIPPET_NAME: &str = "pve-nvidia-hook";
pub const SNIPPET: &str = include_str!("../hooks/pve-nvidia-hook");

/// A volume naming our snippet, on whichever storage.
pub fn is_ours(volume: &str) -> bool {
    volume.ends_with(&format!(":snippets/{SNIPPET_NAME}"))
}
