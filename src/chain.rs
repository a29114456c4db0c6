//! Hookscripts that `enable --chain` kept: our hook runs them first, in
//! every phase, and `disable` puts them back.
//!
//! Only root decides what root runs. A container's `hookscript` is the one
//! setting of its config that only root may change (tags and the
//! description are any user's with `VM.Config.Options`), so that is where
//! the link to a chained hookscript lives: a chained container's hookscript
//! is our snippet under a name of its own, `pve-nvidia-hook.<token>`, and
//! the token names a record in the cluster file system
//! (`<pve>/pve-nvidia-hook/chain/<token>.json`, the same on every node,
//! writable by root alone) that holds the chained script and the vmid it
//! was kept for. The hookscript follows the container wherever Proxmox
//! takes its config (migration, HA recovery, backup and restore, clone,
//! snapshots); a tag or description edit can neither switch the chain off
//! nor point it elsewhere.
//!
//! A record runs only for the vmid it was made for: a clone, or a restore
//! under a new vmid, carries the hookscript but runs nothing chained (it is
//! told how to chain its own). A hookscript that names a record that is
//! gone, or a script that cannot be run, aborts `pre-start`, as Proxmox
//! would for a hookscript of its own.
//!
//! Each node needs the snippet under that name (Proxmox checks it exists
//! before it runs it): `enable` places it on this node, and every node's
//! `sync` places those of every record (and removes those of records that
//! are gone), saying so in `<pve>/pve-nvidia-hook/snippets/<node>`.
//!
//! Before 0.3 the link was a tag, `nvidia-chain-<token>`: such a container
//! still runs its chain (its record names its vmid) until `enable --chain`
//! moves it to the hookscript.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::pct_config::PctConfig;
use crate::snippet::{self, Placing, SNIPPET_NAME};
use crate::state::unix_now;
use crate::storage::{self, Storage};
use crate::vmid::Vmid;
use crate::{cluster, fsutil};

/// The tag that linked a container to its chain before 0.3.
pub const LEGACY_TAG_PREFIX: &str = "nvidia-chain-";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The chained hookscript, `<storage>:snippets/<name>`.
    pub chain: String,
    /// The container it was recorded for, the only one it runs for (a
    /// clone carries the hookscript too).
    pub vmid: u32,
    pub recorded_unix: u64,
    /// The storage that holds our snippet under the chain's name on every
    /// node; None for a record of before 0.3 (linked by a tag).
    #[serde(default)]
    pub storage: Option<String>,
}

pub struct Chains {
    dir: PathBuf,
}

/// Our snippet's name for a chain: `pve-nvidia-hook.<token>`.
pub fn snippet_name(token: &str) -> String {
    format!("{SNIPPET_NAME}.{token}")
}

/// The hookscript volume of a container chained with `token`.
pub fn volume(storage: &str, token: &str) -> String {
    format!("{storage}:snippets/{}", snippet_name(token))
}

/// The token a hookscript volume names: `<storage>:snippets/pve-nvidia-hook.<token>`.
pub fn token_of(volume: &str) -> Option<&str> {
    let (_, name) = storage::parse_snippet_volume(volume)?;
    name.strip_prefix(SNIPPET_NAME)?
        .strip_prefix('.')
        .filter(|t| is_token(t))
}

/// How a container is linked to a chained hookscript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    None,
    /// Through its hookscript (root's).
    Hookscript(String),
    /// Through a tag, as before 0.3, with our plain snippet as hookscript.
    LegacyTag(String),
}

/// The link a container's current config has.
pub fn link(pct: &PctConfig) -> Link {
    let Some(hookscript) = pct.hookscript() else {
        return Link::None;
    };
    if let Some(token) = token_of(hookscript) {
        return Link::Hookscript(token.to_string());
    }
    if !crate::snippet::is_ours(hookscript) {
        return Link::None;
    }
    pct.raw_tags()
        .into_iter()
        .find_map(|t| t.strip_prefix(LEGACY_TAG_PREFIX).map(str::to_owned))
        .filter(|t| is_token(t))
        .map_or(Link::None, Link::LegacyTag)
}

/// The tokens a container's config text keeps alive: every hookscript of
/// any of its sections (current, pending, snapshots: a rollback brings one
/// back), and a legacy tag only for a record made for this very container
/// (`owns(token)`), so that no other container's config, nor any
/// description, keeps a record.
pub fn tokens_in(text: &str, owns: impl Fn(&str) -> bool) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "hookscript" => tokens.extend(token_of(value.trim()).map(str::to_owned)),
            "tags" => tokens.extend(
                value
                    .split([';', ',', ' '])
                    .filter_map(|t| t.trim().strip_prefix(LEGACY_TAG_PREFIX))
                    .filter(|t| is_token(t) && owns(t))
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    tokens.sort();
    tokens.dedup();
    tokens
}

/// A record younger than this is never stale: `enable --chain` may not
/// have set its container's hookscript yet, waiting for the other nodes'
/// `sync` (every 30 minutes) to place the snippet under its name.
const STALE_AFTER_SECS: u64 = 3600;

pub fn legacy_tag(token: &str) -> String {
    format!("{LEGACY_TAG_PREFIX}{token}")
}

fn is_token(t: &str) -> bool {
    t.len() == 12
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Chains {
    pub fn new(pve: &Path) -> Chains {
        Chains {
            dir: pve.join("pve-nvidia-hook/chain"),
        }
    }

    /// Where the records are, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, token: &str) -> PathBuf {
        self.dir.join(format!("{token}.json"))
    }

    /// The record a token names: read only as a trusted file (it decides
    /// what runs as root), its volume checked.
    pub fn get(&self, token: &str) -> Result<Option<Record>> {
        if !is_token(token) {
            return Ok(None);
        }
        let path = self.path(token);
        let (file, _) = match fsutil::open_trusted(&path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("chain record {}", path.display())),
        };
        let mut text = String::new();
        file.take(64 * 1024)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        let record: Record = serde_json::from_str(&text)
            .with_context(|| format!("chain record {}", path.display()))?;
        if storage::parse_snippet_volume(&record.chain).is_none() {
            bail!(
                "chain record {}: '{}' is not a <storage>:snippets/<name> volume",
                path.display(),
                record.chain.escape_debug()
            );
        }
        Ok(Some(record))
    }

    /// Records `volume` for `vmid` under a new token, our snippet for it
    /// to be on `storage`; the caller points the container's hookscript at
    /// [`volume`]`(storage, token)`.
    pub fn create(&self, vmid: Vmid, volume: &str, storage: &str) -> Result<String> {
        let mut bytes = [0u8; 6];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
            .context("random token")?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.put(&token, vmid, volume, storage)?;
        Ok(token)
    }

    /// Writes the record `token` (a new one, or one of before 0.3 moved to
    /// the hookscript link).
    pub fn put(&self, token: &str, vmid: Vmid, volume: &str, storage: &str) -> Result<()> {
        if storage::parse_snippet_volume(volume).is_none() {
            bail!("'{volume}' is not a <storage>:snippets/<name> volume");
        }
        if !is_token(token) {
            bail!("'{token}' is not a chain token");
        }
        let record = Record {
            chain: volume.to_string(),
            vmid: vmid.get(),
            recorded_unix: unix_now(),
            storage: Some(storage.to_string()),
        };
        fsutil::ensure_private_dir(&self.dir)
            .with_context(|| "the cluster file system (writes need quorum)")?;
        fsutil::write_atomic(
            &self.path(token),
            serde_json::to_vec_pretty(&record)?.as_slice(),
            0o600,
        )
    }

    /// Every record, by token (unreadable ones left out); none when there
    /// is no folder of records.
    pub fn all(&self) -> Vec<(String, Record)> {
        self.read_all().unwrap_or_default()
    }

    /// Every record; an error when the folder cannot be read (the cluster
    /// file system is not there), which is not the same as no record.
    fn read_all(&self) -> Result<Vec<(String, Record)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let mut all: Vec<(String, Record)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let token = name.strip_suffix(".json")?.to_string();
                let record = self.get(&token).ok()??;
                Some((token, record))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// [`Chains::place_snippets`] on this node: its storages as
    /// `<pve>/storage.cfg` defines them, their paths under `root`.
    pub fn place_here(&self, pve: &Path, root: &Path) -> Result<Vec<String>> {
        self.place_snippets(&storage::load(pve)?, root, &cluster::node_name(pve))
    }

    /// Our snippet under the name of each record's chain on this node's
    /// storages (where the record's storage is here), and none under the
    /// name of a record that is gone. Written down for the other nodes'
    /// `enable` in `<pve>/pve-nvidia-hook/snippets/<node>`. What changed.
    pub fn place_snippets(
        &self,
        storages: &[Storage],
        root: &Path,
        node: &str,
    ) -> Result<Vec<String>> {
        let records = self.read_all()?;
        let mut changed = Vec::new();
        let mut placed = Vec::new();
        for store in storages.iter().filter(|s| s.available_on(node)) {
            let Some(dir) = store.snippet_dir(root) else {
                continue;
            };
            if !store.is_mounted(root) {
                continue;
            }
            for (token, _) in records
                .iter()
                .filter(|(_, r)| r.storage.as_deref() == Some(store.name.as_str()))
            {
                let path = dir.join(snippet_name(token));
                let placing = snippet::place(&path)?;
                if placing != Placing::Unchanged {
                    changed.push(format!("{} {}", placing.describe(true), path.display()));
                }
                placed.push(token.clone());
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let gone = name
                    .strip_prefix(SNIPPET_NAME)
                    .and_then(|n| n.strip_prefix('.'))
                    .is_some_and(|t| is_token(t) && !records.iter().any(|(r, _)| r == t));
                if gone && std::fs::remove_file(entry.path()).is_ok() {
                    changed.push(format!(
                        "removed {} (its chain record is gone)",
                        entry.path().display()
                    ));
                }
            }
        }
        placed.sort();
        placed.dedup();
        let claims = self.claims_dir();
        fsutil::ensure_private_dir(&claims)
            .with_context(|| "the cluster file system (writes need quorum)")?;
        fsutil::write_atomic(
            &claims.join(node),
            serde_json::to_vec(&placed)?.as_slice(),
            0o600,
        )?;
        Ok(changed)
    }

    fn claims_dir(&self) -> PathBuf {
        self.dir.with_file_name("snippets")
    }

    /// Whether `node` said it has our snippet for `token` (written by its
    /// own [`Chains::place_snippets`]): for a storage whose snippets
    /// Proxmox's API does not list.
    pub fn node_has(&self, node: &str, token: &str) -> bool {
        std::fs::read(self.claims_dir().join(node))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<String>>(&bytes).ok())
            .is_some_and(|tokens| tokens.iter().any(|t| t == token))
    }

    /// Whether each other node has our snippet for `token` on `store`:
    /// asked through Proxmox's API as for any snippet, and where the API
    /// cannot list the storage's snippets, taken from what the node's own
    /// [`Chains::place_snippets`] wrote down.
    pub fn presence(
        &self,
        nodes: &[String],
        this: &str,
        store: &Storage,
        token: &str,
    ) -> cluster::Presence {
        let volume = volume(&store.name, token);
        let mut presence = cluster::presence(&cluster::Api, nodes, this, store, &volume);
        if let Some(unverified) = presence.unverified.take() {
            presence.lacking.extend(
                unverified
                    .nodes
                    .into_iter()
                    .filter(|n| !self.node_has(n, token))
                    .map(|n| format!("{n} (its pve-nvidia-hook sync has not placed it yet)")),
            );
        }
        presence
    }

    /// The record made for `vmid` whose chained script is `volume`, if one
    /// is (so that `enable --chain` run again reuses it).
    pub fn find(&self, vmid: Vmid, volume: &str) -> Option<(String, Record)> {
        self.all()
            .into_iter()
            .find(|(_, r)| r.vmid == vmid.get() && r.chain == volume)
    }

    pub fn remove(&self, token: &str) -> Result<()> {
        if !is_token(token) {
            return Ok(());
        }
        match std::fs::remove_file(self.path(token)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path(token).display()))
            }
            _ => Ok(()),
        }
    }

    /// Records whose token no container's config keeps (`carried`): left by
    /// a destroyed container, whose vmid may have been reused since. A
    /// recent one counts only when this run released it (`released`:
    /// `disable` took its hookscript away).
    pub fn stale(&self, carried: &[String], released: &[String]) -> Vec<(String, Option<Record>)> {
        let now = unix_now();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut stale: Vec<(String, Option<Record>)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let token = name.strip_suffix(".json")?.to_string();
                is_token(&token).then_some(token)
            })
            .filter(|t| !carried.contains(t))
            .map(|t| {
                let record = self.get(&t).ok().flatten();
                (t, record)
            })
            .filter(|(t, record)| {
                released.contains(t)
                    || record
                        .as_ref()
                        .is_none_or(|r| now.saturating_sub(r.recorded_unix) >= STALE_AFTER_SECS)
            })
            .collect();
        stale.sort_by(|a, b| a.0.cmp(&b.0));
        stale
    }
}

/// Where a chained hookscript is, checked as Proxmox's `check_hookscript`
/// checks its own before a start: the storage exists, the file exists
/// (symlinks followed) and is executable. Nothing stricter: a script
/// Proxmox would run is run, wherever the admin keeps it.
pub fn script_path(storages: &[Storage], volume: &str, storage_root: &Path) -> Result<PathBuf> {
    let Some((_, path)) = storage::resolve_volume(storages, volume, storage_root) else {
        bail!(
            "storage '{}' does not exist",
            volume.split(':').next().unwrap_or_default()
        );
    };
    let meta = std::fs::metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .with_context(|| format!("script '{volume}' does not exist"))?;
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("script '{volume}' is not executable");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let pve = std::env::temp_dir().join(format!("pnh-chain-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pve);
        pve
    }

    /// The link is the hookscript, root's alone: tags and the description
    /// neither switch a chain off nor point it elsewhere.
    #[test]
    fn the_link_is_the_hookscript_not_a_tag() {
        let chained = volume("local", "0123456789ab");
        assert_eq!(chained, "local:snippets/pve-nvidia-hook.0123456789ab");
        assert_eq!(token_of(&chained), Some("0123456789ab"));
        assert_eq!(token_of("local:snippets/pve-nvidia-hook"), None);
        assert_eq!(token_of("local:snippets/pve-nvidia-hook.0123"), None);
        let conf = |text: &str| link(&PctConfig::parse(text));
        assert_eq!(
            conf(&format!(
                "hookscript: {chained}\ntags: nvidia-chain-abcdefabcdef\n"
            )),
            Link::Hookscript("0123456789ab".into()),
            "a tag names nothing once the hookscript does"
        );
        assert_eq!(
            conf(&format!("hookscript: {chained}\n")),
            Link::Hookscript("0123456789ab".into())
        );
        // Before 0.3: our plain snippet and the tag.
        assert_eq!(
            conf(
                "hookscript: local:snippets/pve-nvidia-hook\ntags: ml;nvidia-chain-abcdefabcdef\n"
            ),
            Link::LegacyTag("abcdefabcdef".into())
        );
        // A tag on a container whose hookscript is not ours links nothing.
        assert_eq!(
            conf("hookscript: local:snippets/site\ntags: nvidia-chain-abcdefabcdef\n"),
            Link::None
        );
        assert_eq!(conf("tags: nvidia-chain-abcdefabcdef\n"), Link::None);
    }

    /// What keeps a record: hookscripts of any section; a legacy tag only in
    /// its own container's config; never a description.
    #[test]
    fn tokens_that_keep_a_record() {
        let text = "#pve-nvidia-hook.111111111111 nvidia-chain-222222222222\n\
                    hookscript: local:snippets/pve-nvidia-hook.0123456789ab\n\
                    tags: ml;nvidia-chain-abcdefabcdef;nvidia-chain-333333333333\n\
                    [snap1]\nhookscript: cephfs:snippets/pve-nvidia-hook.fedcba987654\n";
        let own = |t: &str| t == "abcdefabcdef";
        assert_eq!(
            tokens_in(text, own),
            ["0123456789ab", "abcdefabcdef", "fedcba987654"]
        );
    }

    #[test]
    fn records_name_their_container_and_storage() {
        let pve = scratch("records");
        let chains = Chains::new(&pve);
        let vmid: Vmid = "101".parse().unwrap();
        let token = chains
            .create(vmid, "local:snippets/site-hook", "local")
            .unwrap();
        let record = chains.get(&token).unwrap().unwrap();
        assert_eq!(record.chain, "local:snippets/site-hook");
        assert_eq!(
            (record.vmid, record.storage.as_deref()),
            (101, Some("local"))
        );
        assert_eq!(
            chains.find(vmid, "local:snippets/site-hook").unwrap().0,
            token
        );
        assert!(chains
            .find("102".parse().unwrap(), "local:snippets/site-hook")
            .is_none());
        let kept = std::slice::from_ref(&token);
        assert_eq!(chains.stale(kept, &[]), []);
        assert_eq!(
            chains.stale(&[], &[]),
            [],
            "too recent: not yet linked, perhaps"
        );
        let stale = chains.stale(&[], kept);
        assert_eq!(stale.len(), 1, "released by this run");
        chains.remove(&token).unwrap();
        assert_eq!(chains.get(&token).unwrap(), None);
        assert!(chains.create(vmid, "local:iso/x.iso", "local").is_err());
        assert_eq!(chains.get("../../etc/passwd").unwrap(), None);
        std::fs::remove_dir_all(&pve).unwrap();
    }

    /// Each node places our snippet under each record's name where the
    /// record's storage is, removes those of records that are gone, and
    /// says which it has.
    #[test]
    fn snippets_follow_the_records() {
        let pve = scratch("snippets");
        let root = pve.join("root");
        std::fs::create_dir_all(root.join("var/lib/vz/snippets")).unwrap();
        let stale = root.join("var/lib/vz/snippets/pve-nvidia-hook.aaaaaaaaaaaa");
        std::fs::write(&stale, "old").unwrap();
        let site = root.join("var/lib/vz/snippets/site-hook");
        std::fs::write(&site, "#!/bin/sh\n").unwrap();
        let storages =
            storage::parse("dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n");
        let chains = Chains::new(&pve);
        let vmid: Vmid = "101".parse().unwrap();
        let token = chains
            .create(vmid, "local:snippets/site-hook", "local")
            .unwrap();
        let changes = chains.place_snippets(&storages, &root, "pve1").unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        let placed = root.join(format!("var/lib/vz/snippets/{}", snippet_name(&token)));
        assert_eq!(
            std::fs::read_to_string(&placed).unwrap(),
            crate::snippet::SNIPPET
        );
        assert!(!stale.exists() && site.exists());
        assert!(chains.node_has("pve1", &token) && !chains.node_has("pve2", &token));
        assert_eq!(
            chains.place_snippets(&storages, &root, "pve1").unwrap(),
            Vec::<String>::new()
        );
        chains.remove(&token).unwrap();
        chains.place_snippets(&storages, &root, "pve1").unwrap();
        assert!(!placed.exists());
        std::fs::remove_dir_all(&pve).unwrap();
    }
}
