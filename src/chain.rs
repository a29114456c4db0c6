//! Hookscripts that `enable --chain` kept: our hook runs them first, in
//! every phase, and `disable` puts them back.
//!
//! A record must follow its container wherever the container's config goes
//! (migration, HA recovery, backup and restore, clone) and belong to no
//! other: Proxmox gives a container no identity beyond its vmid, which a new
//! container can reuse. So the record lives in the cluster file system
//! (`<pve>/pve-nvidia-hook/chain/<token>.json`, the same on every node), and
//! the container carries its token as a tag (`nvidia-chain-<token>`), which
//! Proxmox keeps with its config. A container without the tag has no chain,
//! whatever records exist for its vmid; a record no container carries is
//! stale and removed by `enable`/`disable`.
//!
//! A record runs only for the vmid it was made for. Tags are not root's:
//! a user with `VM.Config.Options` may edit them, while only root may set a
//! hookscript, so a tag copied from another container (or carried by a
//! clone or a restore under a new vmid) must not make root's script for
//! that container run for this one.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::pct_config::PctConfig;
use crate::state::unix_now;
use crate::storage::{self, Storage};
use crate::vmid::Vmid;

pub const TAG_PREFIX: &str = "nvidia-chain-";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The chained hookscript, `<storage>:snippets/<name>`.
    pub chain: String,
    /// The container it was recorded for, the only one it runs for (a
    /// clone carries the tag too).
    pub vmid: u32,
    pub recorded_unix: u64,
}

pub struct Chains {
    dir: PathBuf,
}

/// The token a container's tags carry, if any.
pub fn token(pct: &PctConfig) -> Option<String> {
    pct.raw_tags()
        .into_iter()
        .find_map(|t| t.strip_prefix(TAG_PREFIX).map(str::to_owned))
        .filter(|t| is_token(t))
}

/// Every token named anywhere in a container's config text: its current
/// tags, a snapshot's or a pending change's (a rollback or a pending
/// change brings them back).
pub fn tokens_in(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = text
        .match_indices(TAG_PREFIX)
        .filter_map(|(at, _)| text.get(at + TAG_PREFIX.len()..at + TAG_PREFIX.len() + 12))
        .filter(|t| is_token(t))
        .map(str::to_owned)
        .collect();
    tokens.sort();
    tokens.dedup();
    tokens
}

/// A record younger than this is never stale: `enable` on another node may
/// not have tagged its container yet.
const STALE_AFTER_SECS: u64 = 600;

pub fn tag(token: &str) -> String {
    format!("{TAG_PREFIX}{token}")
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

    /// Records `volume` for `vmid` under a new token; the caller adds the
    /// token's tag to the container.
    pub fn create(&self, vmid: Vmid, volume: &str) -> Result<String> {
        if storage::parse_snippet_volume(volume).is_none() {
            bail!("'{volume}' is not a <storage>:snippets/<name> volume");
        }
        let mut bytes = [0u8; 6];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
            .context("random token")?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let record = Record {
            chain: volume.to_string(),
            vmid: vmid.get(),
            recorded_unix: unix_now(),
        };
        fsutil::ensure_private_dir(&self.dir)
            .with_context(|| "the cluster file system (writes need quorum)")?;
        fsutil::write_atomic(
            &self.path(&token),
            serde_json::to_vec_pretty(&record)?.as_slice(),
            0o600,
        )?;
        Ok(token)
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

    /// Records whose token no container carries (`carried`): left by a
    /// destroyed container, whose vmid may have been reused since. A recent
    /// one counts only when this run released it (`released`: `disable`
    /// took its tag away).
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

    #[test]
    fn records_follow_the_token_not_the_vmid() {
        let pve = std::env::temp_dir().join(format!("pnh-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pve);
        let chains = Chains::new(&pve);
        let vmid: Vmid = "101".parse().unwrap();
        let token = chains.create(vmid, "local:snippets/site-hook").unwrap();
        let tagged = PctConfig::parse(&format!("tags: ml;{}\n", tag(&token)));
        assert_eq!(super::token(&tagged).as_deref(), Some(token.as_str()));
        assert_eq!(
            chains.get(&token).unwrap().unwrap().chain,
            "local:snippets/site-hook"
        );
        // A new container 101 (vmid reused) has no tag: no chain for it.
        assert_eq!(super::token(&PctConfig::parse("tags: ml\n")), None);
        let carried = std::slice::from_ref(&token);
        assert_eq!(chains.stale(carried, &[]), []);
        assert_eq!(
            chains.stale(&[], &[]),
            [],
            "too recent: not yet tagged, perhaps"
        );
        let stale = chains.stale(&[], carried);
        assert_eq!(stale.len(), 1, "released by this run");
        assert_eq!(stale[0].1.as_ref().unwrap().vmid, 101);
        chains.remove(&token).unwrap();
        assert_eq!(chains.get(&token).unwrap(), None);
        assert!(chains.create(vmid, "local:iso/x.iso").is_err());
        assert_eq!(chains.get("../../etc/passwd").unwrap(), None);
        std::fs::remove_dir_all(&pve).unwrap();
    }

    #[test]
    fn tokens_anywhere_in_a_config() {
        let text = "tags: ml;nvidia-chain-0123456789ab\n[snap1]\ntags: nvidia-chain-abcdefabcdef nvidia-chain-XYZ\n[pve:pending]\ntags: nvidia-chain-0123456789ab,x\n";
        assert_eq!(tokens_in(text), ["0123456789ab", "abcdefabcdef"]);
        assert_eq!(tokens_in("tags: nvidia-chain-0123"), Vec::<String>::new());
    }
}
