//! The last install's result per container, this node's own: what
//! `status` shows as `failed`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::unix_now;
use crate::fsutil;
use crate::vmid::Vmid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastResult {
    pub host_version: String,
    pub ok: bool,
    pub message: String,
    /// What an install that succeeded had to say (a CUDA toolkit refused,
    /// a record moved aside), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
    pub finished_unix: u64,
}

pub struct Results {
    dir: PathBuf,
}

impl Results {
    /// `dir`: `paths.state`, this node's own (what each container's last
    /// install gave, for `status`).
    pub fn new(dir: &Path) -> Results {
        Results {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, vmid: Vmid) -> PathBuf {
        self.dir.join(format!("{vmid}.result.json"))
    }

    /// `outcome`: the warnings of an install that succeeded, or why it failed.
    pub fn record(
        &self,
        vmid: Vmid,
        host_version: &str,
        outcome: Result<&[String], &anyhow::Error>,
    ) -> Result<()> {
        fsutil::ensure_private_dir(&self.dir)?;
        let bounded = |s: &str| crate::logging::bounded(s, crate::logging::DETAIL_MAX);
        let result = LastResult {
            host_version: host_version.to_string(),
            ok: outcome.is_ok(),
            message: match outcome {
                Ok(_) => "installed".to_string(),
                Err(e) => bounded(&format!("{e:#}")),
            },
            warnings: outcome
                .map(|w| w.iter().map(|w| bounded(w)).collect())
                .unwrap_or_default(),
            finished_unix: unix_now(),
        };
        let json = serde_json::to_vec_pretty(&result)?;
        fsutil::write_atomic(&self.path(vmid), &json, 0o600)
    }

    pub fn last(&self, vmid: Vmid) -> Option<LastResult> {
        let text = std::fs::read(self.path(vmid)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}
