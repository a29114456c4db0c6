//! Proxmox storage definitions (`<pve>/storage.cfg`) as pve-storage reads
//! them, as far as hookscripts need them: which storages hold snippets, on
//! which nodes, and where a `<storage>:snippets/<name>` volume is on disk.
//!
//! As pve-storage's `parse_config`: `local` (dir, `/var/lib/vz`, with
//! snippets among its content) exists even when the file does not list it;
//! `content-dirs snippets=<dir>` moves the snippets folder; `disable` and
//! `nodes` say where a storage is usable; `is_mountpoint` says it must be
//! mounted. Proxmox's `check_hookscript` itself only looks at the file:
//! `-f` and `-x` at the volume's path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub kind: String,
    pub name: String,
    pub path: Option<PathBuf>,
    pub content: Vec<String>,
    pub shared: bool,
    pub disabled: bool,
    /// None: every node.
    pub nodes: Option<Vec<String>>,
    /// `content-dirs`: content type → folder below `path`.
    pub content_dirs: BTreeMap<String, String>,
    /// `is_mountpoint`: `yes` (the path itself) or another path that must
    /// be a mount point.
    pub is_mountpoint: Option<String>,
}

/// Storage types pve-storage marks shared (@SHARED_STORAGE) that can hold
/// files.
const SHARED_KINDS: [&str; 4] = ["nfs", "cifs", "cephfs", "glusterfs"];

impl Storage {
    fn new(kind: &str, name: &str) -> Storage {
        Storage {
            kind: kind.to_string(),
            name: name.to_string(),
            path: None,
            content: Vec::new(),
            shared: false,
            disabled: false,
            nodes: None,
            content_dirs: BTreeMap::new(),
            is_mountpoint: None,
        }
    }

    pub fn allows_snippets(&self) -> bool {
        self.path.is_some() && self.content.iter().any(|c| c == "snippets")
    }

    /// The snippets folder, its path resolved below `root` (`/` on a host;
    /// a folder per simulated node in the tests).
    pub fn snippet_dir(&self, root: &Path) -> Option<PathBuf> {
        // pve-storage's get_subdir writes "$path/$subdir": a leading `/`
        // stays below the path.
        let sub = self
            .content_dirs
            .get("snippets")
            .map_or("snippets", String::as_str)
            .trim_start_matches('/');
        self.path.as_ref().map(|p| under(root, p).join(sub))
    }

    pub fn snippet_path(&self, root: &Path, name: &str) -> Option<PathBuf> {
        self.snippet_dir(root).map(|d| d.join(name))
    }

    /// One copy for the whole cluster.
    pub fn is_shared(&self) -> bool {
        self.shared || SHARED_KINDS.contains(&self.kind.as_str())
    }

    /// Enabled, and not restricted to other nodes.
    pub fn available_on(&self, node: &str) -> bool {
        !self.disabled
            && self
                .nodes
                .as_ref()
                .is_none_or(|n| n.iter().any(|x| x == node))
    }

    /// A storage that must be mounted is: its mount point is not on the same
    /// file system as the folder above it.
    pub fn is_mounted(&self, root: &Path) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let point = match self.is_mountpoint.as_deref() {
            None | Some("no" | "0") => return true,
            Some("yes" | "1") => under(root, path),
            Some(other) => under(root, Path::new(other)),
        };
        is_mount_point(&point)
    }
}

/// `path` taken as below `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(above))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    here.dev() != above.dev() || here.ino() == above.ino()
}

/// What pve-storage puts in place of a missing (or misconfigured) `local`.
fn injected_local() -> Storage {
    Storage {
        path: Some("/var/lib/vz".into()),
        content: ["backup", "images", "iso", "rootdir", "snippets", "vztmpl"]
            .map(String::from)
            .to_vec(),
        ..Storage::new("dir", "local")
    }
}

/// `type: name` headers followed by indented `key value` lines.
pub fn parse(text: &str) -> Vec<Storage> {
    let mut storages: Vec<Storage> = Vec::new();
    let mut content_given = false;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            finish(storages.last_mut(), content_given);
            content_given = false;
            if let Some((kind, name)) = line.split_once(':') {
                storages.push(Storage::new(kind.trim(), name.trim()));
            }
            continue;
        }
        let Some(current) = storages.last_mut() else {
            continue;
        };
        let line = line.trim();
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        let list = || {
            value
                .split([',', ' ', ';'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        match key {
            "path" => current.path = Some(PathBuf::from(value)),
            "content" => {
                content_given = true;
                current.content = list();
            }
            "shared" => current.shared = value == "1",
            // A flag: `disable` alone means disabled.
            "disable" => current.disabled = value != "0",
            "nodes" => current.nodes = Some(list()),
            "is_mountpoint" => current.is_mountpoint = Some(value.to_string()),
            "content-dirs" => {
                current.content_dirs = list()
                    .into_iter()
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        (!v.contains("..")).then(|| (k.to_string(), v.to_string()))
                    })
                    .collect()
            }
            _ => {}
        }
    }
    finish(storages.last_mut(), content_given);
    let local_ok = storages.iter().any(|s| {
        s.name == "local" && s.kind == "dir" && s.path.as_deref() == Some(Path::new("/var/lib/vz"))
    });
    if !local_ok {
        storages.retain(|s| s.name != "local");
        storages.insert(0, injected_local());
    }
    if let Some(local) = storages.iter_mut().find(|s| s.name == "local") {
        // pve-storage deletes `nodes` of local: it is on every node.
        local.nodes = None;
    }
    storages
}

/// A dir storage without a `content` line holds images and rootdir (the
/// dir plugin's default).
fn finish(storage: Option<&mut Storage>, content_given: bool) {
    if let Some(s) = storage {
        if !content_given && s.kind == "dir" {
            s.content = vec!["images".into(), "rootdir".into()];
        }
    }
}

pub fn load(pve: &Path) -> Result<Vec<Storage>> {
    let file = pve.join("storage.cfg");
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(parse("")),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Storages this node can write a snippet to, now.
fn usable<'a>(
    storages: &'a [Storage],
    node: &'a str,
    root: &'a Path,
) -> impl Iterator<Item = &'a Storage> {
    storages
        .iter()
        .filter(move |s| s.allows_snippets() && s.available_on(node) && s.is_mounted(root))
}

/// The storage to place the snippet on: the one named, or (None) the
/// first shared one that allows snippets when there are several nodes,
/// else `local`; an error that lists the ones that could hold it.
pub fn snippet_storage(
    storages: &[Storage],
    wanted: Option<&str>,
    node: &str,
    nodes: usize,
    root: &Path,
) -> Result<Storage> {
    let candidates: Vec<&str> = usable(storages, node, root)
        .map(|s| s.name.as_str())
        .collect();
    let listed = if candidates.is_empty() {
        "none allows snippets".to_string()
    } else {
        format!("storages that allow snippets: {}", candidates.join(", "))
    };
    let wanted = match wanted {
        Some(w) => w,
        None => usable(storages, node, root)
            .find(|s| nodes > 1 && s.is_shared() && s.nodes.is_none())
            .map_or("local", |s| s.name.as_str()),
    };
    let Some(s) = storages.iter().find(|s| s.name == wanted) else {
        bail!("no storage '{wanted}' in storage.cfg; {listed}");
    };
    if s.path.is_none() {
        bail!(
            "storage '{wanted}' ({}) has no path and cannot hold snippets; {listed}",
            s.kind
        );
    }
    if !s.allows_snippets() {
        // `pvesm set --content` replaces the list: keep what is there.
        let keep: Vec<&str> = s
            .content
            .iter()
            .map(String::as_str)
            .chain(["snippets"])
            .collect();
        bail!(
            "storage '{wanted}' does not allow snippets (content: {}); fix: pvesm set {wanted} --content {}; {listed}",
            s.content.join(","),
            keep.join(",")
        );
    }
    if !s.available_on(node) {
        bail!(
            "storage '{wanted}' is {} on this node ({node}); {listed}",
            if s.disabled {
                "disabled"
            } else {
                "not available"
            }
        );
    }
    if !s.is_mounted(root) {
        bail!("storage '{wanted}' is not mounted on this node; {listed}");
    }
    Ok(s.clone())
}

/// `<storage>:snippets/<name>` → its storage's name and the file's, as
/// `PVE::Storage::parse_volname` accepts them; None for anything else.
pub fn parse_snippet_volume(volume: &str) -> Option<(&str, &str)> {
    let (storage, rest) = volume.split_once(':')?;
    let name = rest.strip_prefix("snippets/")?;
    let storage_ok = !storage.is_empty()
        && storage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let name_ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    (storage_ok && name_ok).then_some((storage, name))
}

/// `<storage>:snippets/<name>` → the storage and the file, as
/// `PVE::Storage::path` finds it.
pub fn resolve_volume<'a>(
    storages: &'a [Storage],
    volume: &str,
    root: &Path,
) -> Option<(&'a Storage, PathBuf)> {
    let (storage, name) = parse_snippet_volume(volume)?;
    let s = storages.iter().find(|s| s.name == storage)?;
    Some((s, s.snippet_path(root, name)?))
}

/// Shared storages that allow snippets on `node`, to name in a fix.
pub fn shared_snippet_storages(storages: &[Storage], node: &str) -> Vec<String> {
    let shared: Vec<String> = storages
        .iter()
        .filter(|s| s.allows_snippets() && s.is_shared() && s.available_on(node))
        .map(|s| s.name.clone())
        .collect();
    if shared.is_empty() {
        vec!["<a shared storage with snippets content>".to_string()]
    } else {
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n\n\
lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n\
nfs: nas\n\texport /tank\n\tpath /mnt/pve/nas\n\tserver 10.0.0.5\n\tcontent backup\n\n\
cephfs: cephfs\n\tpath /mnt/pve/cephfs\n\tcontent snippets,iso\n\tcontent-dirs snippets=hooks/pve\n\n\
dir: scratch\n\tpath /srv/scratch\n\tcontent snippets\n\tnodes pve2\n\n\
dir: old\n\tpath /srv/old\n\tcontent snippets\n\tdisable\n";

    fn root() -> &'static Path {
        Path::new("/")
    }

    #[test]
    fn parses_proxmox_storage_cfg() {
        let s = parse(CFG);
        assert_eq!(s.len(), 6);
        assert!(s[0].allows_snippets() && !s[0].is_shared());
        assert!(!s[1].allows_snippets());
        assert!(s[2].is_shared());
        assert_eq!(
            resolve_volume(&s, "local:snippets/pve-nvidia-hook", root()).map(|(_, p)| p),
            Some(PathBuf::from("/var/lib/vz/snippets/pve-nvidia-hook"))
        );
        assert_eq!(
            resolve_volume(&s, "cephfs:snippets/x", root()).map(|(_, p)| p),
            Some(PathBuf::from("/mnt/pve/cephfs/hooks/pve/x")),
            "content-dirs moves the snippets folder"
        );
        assert!(resolve_volume(&s, "local:snippets/../x", root()).is_none());
        assert!(resolve_volume(&s, "local:iso/x", root()).is_none());
        assert!(s[4].available_on("pve2") && !s[4].available_on("pve1"));
        assert!(s[5].disabled && !s[5].available_on("pve1"));
    }

    #[test]
    fn local_is_there_even_when_the_file_does_not_say_so() {
        for text in [
            "",
            "nfs: nas\n\tpath /mnt/pve/nas\n\tcontent snippets\n",
            "dir: local\n\tpath /elsewhere\n",
        ] {
            let s = parse(text);
            let local = s.iter().find(|s| s.name == "local").unwrap();
            assert_eq!(
                local.path.as_deref(),
                Some(Path::new("/var/lib/vz")),
                "{text}"
            );
            assert!(local.allows_snippets(), "{text}");
        }
        // A dir storage without a content line holds images and rootdir.
        let s = parse("dir: local\n\tpath /var/lib/vz\n");
        assert_eq!(s[0].content, ["images", "rootdir"]);
        assert!(!s[0].allows_snippets());
    }

    #[test]
    fn storage_choice_errors_list_candidates_and_keep_content() {
        let s = parse(CFG);
        let pick = |wanted: Option<&str>, nodes| snippet_storage(&s, wanted, "pve1", nodes, root());
        assert_eq!(pick(Some("local"), 1).unwrap().name, "local");
        assert_eq!(pick(None, 1).unwrap().name, "local");
        assert_eq!(
            pick(None, 3).unwrap().name,
            "cephfs",
            "a cluster prefers a shared storage"
        );
        let e = pick(Some("nas"), 1).unwrap_err().to_string();
        assert!(
            e.contains("pvesm set nas --content backup,snippets") && e.contains("local, cephfs"),
            "{e}"
        );
        assert!(pick(Some("local-lvm"), 1)
            .unwrap_err()
            .to_string()
            .contains("no path"));
        assert!(pick(Some("nope"), 1)
            .unwrap_err()
            .to_string()
            .contains("no storage 'nope'"));
        assert!(pick(Some("old"), 1)
            .unwrap_err()
            .to_string()
            .contains("disabled"));
        assert!(pick(Some("scratch"), 1)
            .unwrap_err()
            .to_string()
            .contains("not available"));
    }

    #[test]
    fn an_unmounted_storage_is_no_place_to_write() {
        let dir = std::env::temp_dir().join(format!("pnh-mnt-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("mnt/pve/nas")).unwrap();
        let s = parse("dir: nas\n\tpath /mnt/pve/nas\n\tcontent snippets\n\tis_mountpoint yes\n");
        let nas = s.iter().find(|s| s.name == "nas").unwrap();
        assert!(!nas.is_mounted(&dir));
        let e = snippet_storage(&s, Some("nas"), "pve1", 1, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not mounted"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
