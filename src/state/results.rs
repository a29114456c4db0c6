//! The last install's result per container, this node's own: what
//! `status` shows as `failed`, and how many failed in a row (the timer's
//! `sync` backs off on it); and the runfile `prefetch` last fetched.

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
    /// Failed installs in a row for `host_version` (an install abandoned
    /// because its container stopped does not count): how long the timer's
    /// `sync` leaves the container alone.
    #[serde(default)]
    pub failures: u32,
}

impl LastResult {
    /// The result an install's `outcome` (the warnings of one that
    /// succeeded, or why it failed) leaves, after `prev`.
    pub fn after(
        prev: Option<&LastResult>,
        host_version: &str,
        outcome: Result<&[String], &anyhow::Error>,
        now: u64,
    ) -> LastResult {
        let bounded = |s: &str| crate::logging::bounded(s, crate::logging::DETAIL_MAX);
        let failures_before = prev
            .filter(|p| !p.ok && p.host_version == host_version)
            .map_or(0, |p| p.failures);
        let (message, warnings, failures) = match outcome {
            Ok(w) => (
                "installed".to_string(),
                w.iter().map(|w| bounded(w)).collect(),
                0,
            ),
            Err(e) => (
                bounded(&format!("{e:#}")),
                Vec::new(),
                if crate::cancel::is_cancelled(e) {
                    failures_before
                } else {
                    failures_before.saturating_add(1)
                },
            ),
        };
        LastResult {
            host_version: host_version.to_string(),
            ok: outcome.is_ok(),
            message,
            warnings,
            finished_unix: now,
            failures,
        }
    }
}

/// The runfile `prefetch` last fetched for the next boot's module: the
/// apt hook asks the network once per new version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prefetched {
    pub version: String,
    pub at_unix: u64,
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
        let result = LastResult::after(self.last(vmid).as_ref(), host_version, outcome, unix_now());
        self.write(&self.path(vmid), &result)
    }

    pub fn last(&self, vmid: Vmid) -> Option<LastResult> {
        read_json(&self.path(vmid))
    }

    pub fn record_prefetched(&self, version: &str) -> Result<()> {
        let prefetched = Prefetched {
            version: version.to_string(),
            at_unix: unix_now(),
        };
        self.write(&self.dir.join("prefetched.json"), &prefetched)
    }

    pub fn prefetched(&self) -> Option<Prefetched> {
        read_json(&self.dir.join("prefetched.json"))
    }

    fn write(&self, path: &Path, value: &impl Serialize) -> Result<()> {
        fsutil::ensure_private_dir(&self.dir)?;
        fsutil::write_atomic(path, &serde_json::to_vec_pretty(value)?, 0o600)
    }
}

/// A small JSON file of ours; None when it is missing or not one.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 64 * 1024), &mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_for_one_host_version_are_counted() {
        let failed = anyhow::anyhow!("stage runfile: 503");
        let first = LastResult::after(None, "550.54.14", Err(&failed), 100);
        assert_eq!((first.ok, first.failures), (false, 1));
        let second = LastResult::after(Some(&first), "550.54.14", Err(&failed), 200);
        assert_eq!(second.failures, 2);
        let cancelled = anyhow::Error::new(crate::cancel::Cancelled("the container stopped"));
        let third = LastResult::after(Some(&second), "550.54.14", Err(&cancelled), 300);
        assert_eq!(third.failures, 2, "a cancelled install is no failure");
        let other = LastResult::after(Some(&third), "550.90.07", Err(&failed), 400);
        assert_eq!(other.failures, 1, "another host version starts afresh");
        let warned = ["no CUDA toolkit".to_string()];
        let ok = LastResult::after(Some(&other), "550.90.07", Ok(&warned), 500);
        assert_eq!(
            (ok.ok, ok.failures, ok.message.as_str(), ok.warnings.len()),
            (true, 0, "installed", 1)
        );
        // A result written before the count existed reads as none.
        let old: LastResult = serde_json::from_str(
            r#"{"host_version": "550.54.14", "ok": false, "message": "x", "finished_unix": 1}"#,
        )
        .unwrap();
        assert_eq!(old.failures, 0);
    }
}
