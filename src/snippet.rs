//! Our hookscript snippet: the file Proxmox runs, how a container's
//! `hookscript` volume is recognised as ours, and placing it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::fsutil;

pub const SNIPPET_NAME: &str = "pve-nvidia-hook";
pub const SNIPPET: &str = include_str!("../hooks/pve-nvidia-hook");

/// A volume naming our snippet, on whichever storage, under its own name
/// or a chain's (`pve-nvidia-hook.<token>`, see `chain`).
pub fn is_ours(volume: &str) -> bool {
    crate::storage::parse_snippet_volume(volume).is_some_and(|(_, name)| {
        name == SNIPPET_NAME
            || name
                .strip_prefix(SNIPPET_NAME)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// What placing the snippet at a path did, or would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placing {
    /// It is there, as it should be.
    Unchanged,
    Write,
    Update,
}

impl Placing {
    /// `wrote`, `updated` (or, not done, `would write`...).
    pub fn describe(self, done: bool) -> &'static str {
        match (self, done) {
            (Placing::Unchanged, _) => "kept",
            (Placing::Write, true) => "wrote",
            (Placing::Write, false) => "would write",
            (Placing::Update, true) => "updated",
            (Placing::Update, false) => "would update",
        }
    }
}

/// What [`place`] would do at `path`.
pub fn placing(path: &Path) -> Placing {
    let current = std::fs::read(path).ok();
    let executable = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 == 0o111);
    match current {
        Some(bytes) if bytes == SNIPPET.as_bytes() && executable => Placing::Unchanged,
        Some(_) => Placing::Update,
        None => Placing::Write,
    }
}

/// Our snippet at `path`, atomically and executable, where it is missing
/// or not ours as it should be; its folder made if needed.
pub fn place(path: &Path) -> Result<Placing> {
    let placing = placing(path);
    if placing != Placing::Unchanged {
        let dir = path.parent().context("snippet path has no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fsutil::write_atomic(path, SNIPPET.as_bytes(), 0o755)?;
    }
    Ok(placing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_under_its_name_or_a_chains() {
        assert!(is_ours("local:snippets/pve-nvidia-hook"));
        assert!(is_ours("cephfs:snippets/pve-nvidia-hook.0123456789ab"));
        assert!(!is_ours("local:snippets/pve-nvidia-hook-site"));
        assert!(!is_ours("local:snippets/site-hook"));
        assert!(!is_ours("local:iso/pve-nvidia-hook"));
    }
}
