//! What `enable --passthrough` wrote into a container's config, so that
//! `disable --passthrough` removes that and nothing else.
//!
//! The record lives in the cluster file system
//! (`<pve>/pve-nvidia-hook/passthrough/<vmid>.json`), which only root
//! writes and every node sees: the container migrates with its vmid, and
//! its record stays valid. Nothing in the container's config marks our
//! entries: its description and tags are a tenant's to edit
//! (`VM.Config.Options`), while only root may set a `devN` or a raw key,
//! so a mark there would let a tenant have `disable --passthrough`
//! remove its admin's own entries. An entry counts as ours only while
//! the config holds exactly what was written: one changed since is the
//! admin's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::pct_config::RawLine;
use crate::vmid::Vmid;

/// A record is a few dozen lines; a larger file is not ours.
const MAX_RECORD: u64 = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub vmid: u32,
    pub recorded_unix: u64,
    /// `devN` → the value written.
    pub devices: BTreeMap<String, String>,
    /// Raw `lxc.*` lines added (root's keys, written in the config file).
    pub raw: Vec<RawLine>,
}

impl Record {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.raw.is_empty()
    }
}

pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(pve: &Path) -> Records {
        Records {
            dir: pve.join("pve-nvidia-hook/passthrough"),
        }
    }

    pub fn path(&self, vmid: Vmid) -> PathBuf {
        self.dir.join(format!("{vmid}.json"))
    }

    /// The container's record, read only as a trusted file (it decides
    /// what is removed from a config) and checked to name only `devN` keys
    /// and raw `lxc.` lines.
    pub fn get(&self, vmid: Vmid) -> Result<Option<Record>> {
        let path = self.path(vmid);
        let (file, _) = match fsutil::open_trusted(&path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("passthrough record {}", path.display()))
            }
        };
        let mut text = String::new();
        file.take(MAX_RECORD)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        let record: Record = serde_json::from_str(&text)
            .with_context(|| format!("passthrough record {}", path.display()))?;
        let dev_key = |k: &str| {
            k.strip_prefix("dev")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if record.vmid != vmid.get()
            || !record.devices.keys().all(|k| dev_key(k))
            || !record.raw.iter().all(|l| l.key.starts_with("lxc."))
        {
            bail!(
                "passthrough record {}: not a record of CT {vmid}'s devN entries and lxc lines",
                path.display()
            );
        }
        Ok(Some(record))
    }

    /// Writes the record, or removes it when it names nothing.
    pub fn put(&self, record: &Record) -> Result<()> {
        let path = self.dir.join(format!("{}.json", record.vmid));
        if record.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            };
        }
        fsutil::ensure_private_dir(&self.dir)
            .context("the cluster file system (writes need quorum)")?;
        fsutil::write_atomic(&path, &serde_json::to_vec_pretty(record)?, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_what_is_not_ours() {
        let pve = std::env::temp_dir().join(format!("pnh-passthrough-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pve);
        let records = Records::new(&pve);
        let vmid: Vmid = "101".parse().unwrap();
        assert_eq!(records.get(vmid).unwrap(), None);
        let record = Record {
            vmid: 101,
            recorded_unix: 1,
            devices: [("dev3".to_string(), "/dev/nvidia0,mode=0666".to_string())].into(),
            raw: vec![RawLine::new("lxc.cgroup.devices.allow", "c 195:0 rw")],
        };
        records.put(&record).unwrap();
        assert_eq!(records.get(vmid).unwrap(), Some(record.clone()));
        // A record naming another key (a tenant's `hookscript`, say).
        let mut bad = record.clone();
        bad.devices
            .insert("hookscript".into(), "local:snippets/x".into());
        records.put(&bad).unwrap();
        assert!(records.get(vmid).is_err());
        // Another container's record under this name.
        records
            .put(&Record {
                vmid: 101,
                ..record.clone()
            })
            .unwrap();
        std::fs::rename(records.path(vmid), records.path("102".parse().unwrap())).unwrap();
        assert!(records.get("102".parse().unwrap()).is_err());
        records
            .put(&Record {
                vmid: 102,
                ..Record::default()
            })
            .unwrap();
        assert_eq!(
            records.get("102".parse().unwrap()).unwrap(),
            None,
            "an empty record is removed"
        );
        std::fs::remove_dir_all(&pve).unwrap();
    }
}
