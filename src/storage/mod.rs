//! Proxmox storages (`<pve>/storage.cfg`) as pve-storage reads them, as far
//! as hookscripts need them: where a `<storage>:snippets/<name>` volume is on
//! disk, which storages Proxmox's API lists snippets of, on which nodes.
//!
//! What a start needs is only the file: pve-guest-common's
//! `check_hookscript` resolves the volume with `PVE::Storage::path` (the
//! storage's `path` and `content-dirs`, nothing else: neither `content`,
//! `disable` nor `nodes`) and tests `-f` and `-x`. So a storage need not list
//! `snippets` in its content to hold our snippet; the Proxmox installer's
//! `local` does not, and on BTRFS installs it is even `disable`d. Only
//! listing the snippets through the API (`volume_list`) needs both.

mod parse;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use parse::parse;

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
    /// `is_mountpoint`: a boolean (the path itself) or another path that
    /// must be a mount point.
    pub is_mountpoint: Option<String>,
}

/// Storage types pve-storage marks shared (`@SHARED_STORAGE`) that can hold
/// files (GlusterFS until PVE 9 dropped it).
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

    /// `snippets` among its content: what the API's listing and the GUI
    /// need, not what a start needs.
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
        !self.disabled && self.configured_for(node)
    }

    /// Not restricted to other nodes by `nodes`.
    pub fn configured_for(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|n| n.iter().any(|x| x == node))
    }

    /// Why Proxmox's API lists none of this storage's snippets
    /// (`PVE::Storage::volume_list`: the content types it is asked for are
    /// kept only when the storage's content has them, and
    /// `activate_storage` dies for a disabled storage), and the `pvesm set`
    /// that would let it; None when it lists them.
    pub fn unlisted(&self) -> Option<(String, String)> {
        let content = !self.allows_snippets();
        if !content && !self.disabled {
            return None;
        }
        let mut why = Vec::new();
        let mut fix = format!("pvesm set {}", self.name);
        if content {
            why.push(format!(
                "its content, {}, has no snippets",
                self.content.join(",")
            ));
            // `pvesm set --content` replaces the list: keep what is there.
            let keep: Vec<&str> = self
                .content
                .iter()
                .map(String::as_str)
                .chain(["snippets"])
                .collect();
            fix.push_str(&format!(" --content {}", keep.join(",")));
        }
        if self.disabled {
            why.push("it is disabled".to_string());
            fix.push_str(" --delete disable");
        }
        Some((why.join("; "), fix))
    }

    /// A storage that must be mounted is: its mount point is not on the same
    /// file system as the folder above it. `is_mountpoint` is a boolean
    /// (`parse_boolean`: yes/on/true/1, no/off/false/0) or a path.
    pub fn is_mounted(&self, root: &Path) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let point = match self.is_mountpoint.as_deref() {
            None => return true,
            Some(flag) => match parse_boolean(flag) {
                Some(false) => return true,
                Some(true) => under(root, path),
                None => under(root, Path::new(flag)),
            },
        };
        is_mount_point(&point)
    }

    /// Where this node can write the snippet so that a start finds it: a
    /// path, mounted where it must be, configured for this node, and
    /// enabled unless it is `local` (pve-storage forces its path to
    /// /var/lib/vz; a disabled storage elsewhere is not activated, so what
    /// is at its path may not be the storage).
    fn holds_snippets_on(&self, node: &str, root: &Path) -> Result<(), String> {
        if self.path.is_none() {
            return Err(format!(
                "storage '{}' ({}) has no path and cannot hold snippets",
                self.name, self.kind
            ));
        }
        if !self.configured_for(node) {
            return Err(format!(
                "storage '{}' is not available on this node ({node})",
                self.name
            ));
        }
        if self.disabled && self.name != "local" {
            return Err(format!(
                "storage '{}' is disabled on this node ({node}): Proxmox does not activate it, so its path may not be the storage; fix: pvesm set {} --delete disable",
                self.name, self.name
            ));
        }
        if !self.is_mounted(root) {
            return Err(format!(
                "storage '{}' is not mounted on this node",
                self.name
            ));
        }
        Ok(())
    }
}

/// PVE::JSONSchema::parse_boolean.
fn parse_boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
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

pub fn load(pve: &Path) -> Result<Vec<Storage>> {
    let file = pve.join("storage.cfg");
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(parse("")),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// The storage to place the snippet on: the one named, or (None) the first
/// shared one that lists snippets when there are several nodes, else
/// `local`; an error that lists the ones that could hold it.
pub fn snippet_storage(
    storages: &[Storage],
    wanted: Option<&str>,
    node: &str,
    nodes: usize,
    root: &Path,
) -> Result<Storage> {
    let holds = |s: &&Storage| s.holds_snippets_on(node, root).is_ok();
    let candidates: Vec<&str> = storages
        .iter()
        .filter(holds)
        .map(|s| s.name.as_str())
        .collect();
    let listed = if candidates.is_empty() {
        "none can".to_string()
    } else {
        format!("storages that can hold it: {}", candidates.join(", "))
    };
    let wanted = match wanted {
        Some(w) => w,
        None => storages
            .iter()
            .filter(holds)
            .find(|s| nodes > 1 && s.is_shared() && s.nodes.is_none() && s.unlisted().is_none())
            .map_or("local", |s| s.name.as_str()),
    };
    let Some(s) = storages.iter().find(|s| s.name == wanted) else {
        bail!("no storage '{wanted}' in storage.cfg; {listed}");
    };
    if let Err(e) = s.holds_snippets_on(node, root) {
        bail!("{e}; {listed}");
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
    fn storage_choice_errors_list_candidates() {
        let s = parse(CFG);
        let pick = |wanted: Option<&str>, nodes| snippet_storage(&s, wanted, "pve1", nodes, root());
        assert_eq!(pick(Some("local"), 1).unwrap().name, "local");
        assert_eq!(pick(None, 1).unwrap().name, "local");
        assert_eq!(
            pick(None, 3).unwrap().name,
            "cephfs",
            "a cluster prefers a shared storage that lists snippets"
        );
        // What a start needs is the file at the volume's path: a storage
        // whose content has no snippets holds it all the same.
        assert_eq!(pick(Some("nas"), 1).unwrap().name, "nas");
        let e = pick(Some("local-lvm"), 1).unwrap_err().to_string();
        assert!(
            e.contains("no path") && e.contains("storages that can hold it: local, nas, cephfs"),
            "{e}"
        );
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

    /// storage.cfg as the Proxmox installer writes it
    /// (pve-installer's `Proxmox/Install/StorageConfig.pm`, extracted
    /// verbatim): PVE 9 (commit ec1d5ee, "enable import content type by
    /// default") and PVE 8 (before it), for each disk layout.
    const INSTALLER: [(&str, &str); 8] = [
        (
            "pve9-zfs",
            include_str!("../../tests/data/installer-storage.cfg/pve9-zfs.cfg"),
        ),
        (
            "pve9-btrfs",
            include_str!("../../tests/data/installer-storage.cfg/pve9-btrfs.cfg"),
        ),
        (
            "pve9-lvmthin",
            include_str!("../../tests/data/installer-storage.cfg/pve9-lvmthin.cfg"),
        ),
        (
            "pve9-ext4",
            include_str!("../../tests/data/installer-storage.cfg/pve9-ext4.cfg"),
        ),
        (
            "pve8-zfs",
            include_str!("../../tests/data/installer-storage.cfg/pve8-zfs.cfg"),
        ),
        (
            "pve8-btrfs",
            include_str!("../../tests/data/installer-storage.cfg/pve8-btrfs.cfg"),
        ),
        (
            "pve8-lvmthin",
            include_str!("../../tests/data/installer-storage.cfg/pve8-lvmthin.cfg"),
        ),
        (
            "pve8-ext4",
            include_str!("../../tests/data/installer-storage.cfg/pve8-ext4.cfg"),
        ),
    ];

    #[test]
    fn every_installer_layout_holds_the_snippet_in_local() {
        for (layout, text) in INSTALLER {
            let s = parse(text);
            let local = s.iter().find(|s| s.name == "local").unwrap();
            assert_eq!(
                local.path.as_deref(),
                Some(Path::new("/var/lib/vz")),
                "{layout}"
            );
            assert!(
                !local.allows_snippets(),
                "{layout}: the installer gives local no snippets"
            );
            assert_eq!(local.disabled, layout.ends_with("btrfs"), "{layout}");
            for nodes in [1, 3] {
                let chosen = snippet_storage(&s, None, "pve1", nodes, root()).unwrap();
                assert_eq!(chosen.name, "local", "{layout}");
            }
            assert_eq!(
                resolve_volume(&s, "local:snippets/pve-nvidia-hook", root()).map(|(_, p)| p),
                Some(PathBuf::from("/var/lib/vz/snippets/pve-nvidia-hook")),
                "{layout}"
            );
            // Proxmox's API lists none of local's snippets: say why and how.
            let (why, fix) = local.unlisted().unwrap();
            let content = text
                .lines()
                .nth(2)
                .unwrap()
                .trim()
                .trim_start_matches("content ");
            assert!(
                why.starts_with(&format!("its content, {content}, has no snippets")),
                "{why}"
            );
            let mut expected = format!("pvesm set local --content {content},snippets");
            if local.disabled {
                assert!(why.ends_with("; it is disabled"), "{why}");
                expected.push_str(" --delete disable");
            }
            assert_eq!(fix, expected, "{layout}");
        }
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
