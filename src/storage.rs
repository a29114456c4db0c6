//! Proxmox storage definitions (`<pve>/storage.cfg`) as far as hookscripts
//! need them: which storages hold snippets, and where a
//! `<storage>:snippets/<name>` volume lives on disk.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub kind: String,
    pub name: String,
    pub path: Option<PathBuf>,
    pub content: Vec<String>,
    pub shared: bool,
}

impl Storage {
    pub fn allows_snippets(&self) -> bool {
        self.path.is_some() && self.content.iter().any(|c| c == "snippets")
    }

    pub fn snippet_path(&self, name: &str) -> Option<PathBuf> {
        self.path.as_ref().map(|p| p.join("snippets").join(name))
    }

    /// Directory storages live on each node; network ones are shared.
    pub fn is_shared(&self) -> bool {
        self.shared || matches!(self.kind.as_str(), "nfs" | "cifs" | "cephfs" | "glusterfs")
    }
}

/// What Proxmox assumes when `storage.cfg` does not exist.
fn default_local() -> Storage {
    Storage {
        kind: "dir".into(),
        name: "local".into(),
        path: Some("/var/lib/vz".into()),
        content: ["iso", "vztmpl", "backup"].map(String::from).to_vec(),
        shared: false,
    }
}

/// `type: name` headers followed by indented `key value` lines.
pub fn parse(text: &str) -> Vec<Storage> {
    let mut storages: Vec<Storage> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            if let Some((kind, name)) = line.split_once(':') {
                storages.push(Storage {
                    kind: kind.trim().to_string(),
                    name: name.trim().to_string(),
                    path: None,
                    content: Vec::new(),
                    shared: false,
                });
            }
            continue;
        }
        let Some(current) = storages.last_mut() else {
            continue;
        };
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("path"), Some(p)) => current.path = Some(PathBuf::from(p)),
            (Some("content"), Some(c)) => {
                current.content = c.split(',').map(|s| s.trim().to_string()).collect()
            }
            (Some("shared"), Some(v)) => current.shared = v == "1",
            _ => {}
        }
    }
    storages
}

pub fn load(pve: &Path) -> Result<Vec<Storage>> {
    let file = pve.join("storage.cfg");
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![default_local()]),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// The storage to place the snippet on, or an error that lists the ones
/// that could hold it.
pub fn snippet_storage(storages: &[Storage], wanted: &str) -> Result<Storage> {
    let candidates: Vec<&str> = storages
        .iter()
        .filter(|s| s.allows_snippets())
        .map(|s| s.name.as_str())
        .collect();
    let listed = if candidates.is_empty() {
        "none allows snippets".to_string()
    } else {
        format!("storages that allow snippets: {}", candidates.join(", "))
    };
    match storages.iter().find(|s| s.name == wanted) {
        Some(s) if s.allows_snippets() => Ok(s.clone()),
        Some(s) if s.path.is_none() => bail!("storage '{wanted}' ({}) has no path and cannot hold snippets; {listed}", s.kind),
        Some(s) => bail!(
            "storage '{wanted}' does not allow snippets (content: {}); fix: pvesm set {wanted} --content {},snippets; {listed}",
            s.content.join(","),
            s.content.join(",")
        ),
        None => bail!("no storage '{wanted}' in storage.cfg; {listed}"),
    }
}

/// `<storage>:snippets/<name>` → the file, when the storage has a path.
pub fn resolve_volume(storages: &[Storage], volume: &str) -> Option<PathBuf> {
    let (storage, rest) = volume.split_once(':')?;
    let name = rest.strip_prefix("snippets/")?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    storages
        .iter()
        .find(|s| s.name == storage)?
        .snippet_path(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n\n\
lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n\
nfs: nas\n\texport /tank\n\tpath /mnt/pve/nas\n\tserver 10.0.0.5\n\tcontent backup\n";

    #[test]
    fn parses_proxmox_storage_cfg() {
        let s = parse(CFG);
        assert_eq!(s.len(), 3);
        assert!(s[0].allows_snippets() && !s[0].is_shared());
        assert!(!s[1].allows_snippets());
        assert!(s[2].is_shared());
        assert_eq!(
            resolve_volume(&s, "local:snippets/pve-nvidia-hook"),
            Some(PathBuf::from("/var/lib/vz/snippets/pve-nvidia-hook"))
        );
        assert_eq!(resolve_volume(&s, "local:snippets/../x"), None);
        assert_eq!(resolve_volume(&s, "local:iso/x"), None);
    }

    #[test]
    fn storage_choice_errors_list_candidates() {
        let s = parse(CFG);
        assert_eq!(snippet_storage(&s, "local").unwrap().name, "local");
        let e = snippet_storage(&s, "nas").unwrap_err().to_string();
        assert!(
            e.contains("pvesm set nas --content backup,snippets") && e.contains("local"),
            "{e}"
        );
        let e = snippet_storage(&s, "local-lvm").unwrap_err().to_string();
        assert!(e.contains("no path"), "{e}");
        assert!(snippet_storage(&s, "nope")
            .unwrap_err()
            .to_string()
            .contains("no storage 'nope'"));
    }

    #[test]
    fn default_local_has_no_snippets() {
        assert!(!default_local().allows_snippets());
    }
}
