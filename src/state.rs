//! Per-container locks and the last install's result. "Installing" is never a
//! file that can go stale: it is an flock held by a live process, released by
//! the kernel when that process dies, however it dies.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::vmid::Vmid;

pub struct Locks {
    dir: PathBuf,
}

impl Locks {
    pub fn new(dir: &Path) -> Locks {
        Locks {
            dir: dir.to_path_buf(),
        }
    }

    /// The container's install lock, or None when another process holds it.
    pub fn try_container(&self, vmid: Vmid) -> Result<Option<fslock::LockFile>> {
        let mut lock = open_lock(&self.dir, &format!("{vmid}.lock"))?;
        Ok(lock.try_lock().context("locking")?.then_some(lock))
    }

    /// True while some process holds the container's install lock.
    pub fn is_installing(&self, vmid: Vmid) -> bool {
        let path = self.dir.join(format!("{vmid}.lock"));
        if !path.is_file() {
            return false;
        }
        match fslock::LockFile::open(&path) {
            Ok(mut lock) => !lock.try_lock().unwrap_or(true),
            Err(_) => false,
        }
    }

    /// One of `slots` host-wide install slots, waiting for a free one. The
    /// slots bound how many installers run at once (each extracts ~1 GB).
    pub fn install_slot(&self, slots: u32, mut waiting: impl FnMut()) -> Result<fslock::LockFile> {
        let mut locks = (0..slots)
            .map(|n| open_lock(&self.dir, &format!("install-slot-{n}.lock")))
            .collect::<Result<Vec<_>>>()?;
        let mut told = false;
        loop {
            for n in 0..locks.len() {
                if locks[n].try_lock().context("locking install slot")? {
                    return Ok(locks.swap_remove(n));
                }
            }
            if !told {
                waiting();
                told = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Serialises downloads of one file: the second installer waits, then
    /// finds the verified file in the cache.
    pub fn download(&self, cache_dir: &Path, name: &str) -> Result<fslock::LockFile> {
        let mut lock = open_lock(cache_dir, &format!(".{name}.lock"))?;
        lock.lock().context("locking download")?;
        Ok(lock)
    }
}

/// A lock file in a private folder, created by us first: fslock's own open
/// would follow a symlink planted at its name.
fn open_lock(dir: &Path, name: &str) -> Result<fslock::LockFile> {
    fsutil::ensure_private_dir(dir)?;
    let path = dir.join(name);
    drop(fsutil::open_append_nofollow(&path, 0o600)?);
    fslock::LockFile::open(&path).with_context(|| format!("opening lock {}", path.display()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastResult {
    pub host_version: String,
    pub ok: bool,
    pub message: String,
    pub finished_unix: u64,
}

pub struct Results {
    dir: PathBuf,
}

impl Results {
    pub fn new(log_dir: &Path) -> Results {
        Results {
            dir: log_dir.to_path_buf(),
        }
    }

    fn path(&self, vmid: Vmid) -> PathBuf {
        self.dir.join(format!("{vmid}.result.json"))
    }

    pub fn record(&self, vmid: Vmid, host_version: &str, outcome: &Result<()>) -> Result<()> {
        fsutil::ensure_private_dir(&self.dir)?;
        let result = LastResult {
            host_version: host_version.to_string(),
            ok: outcome.is_ok(),
            message: match outcome {
                Ok(()) => "installed".to_string(),
                Err(e) => format!("{e:#}"),
            },
            finished_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&result)?;
        fsutil::write_atomic(&self.path(vmid), &json, 0o600)
    }

    pub fn last(&self, vmid: Vmid) -> Option<LastResult> {
        let text = std::fs::read(self.path(vmid)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Hookscripts that `enable --chain` found on a container: ours calls them
/// first, for every phase; `disable` puts them back.
pub struct Chains {
    dir: PathBuf,
}

impl Chains {
    pub fn new(state_dir: &Path) -> Chains {
        Chains {
            dir: state_dir.join("chain"),
        }
    }

    fn path(&self, vmid: Vmid) -> PathBuf {
        self.dir.join(vmid.to_string())
    }

    /// The chained volume (`<storage>:snippets/<name>`), if any.
    pub fn get(&self, vmid: Vmid) -> Option<String> {
        let text = std::fs::read_to_string(self.path(vmid)).ok()?;
        let volume = text.trim();
        is_snippet_volume(volume).then(|| volume.to_string())
    }

    pub fn set(&self, vmid: Vmid, volume: &str) -> Result<()> {
        if !is_snippet_volume(volume) {
            anyhow::bail!("'{volume}' is not a <storage>:snippets/<name> volume");
        }
        fsutil::ensure_private_dir(&self.dir)?;
        fsutil::write_atomic(&self.path(vmid), format!("{volume}\n").as_bytes(), 0o600)
    }

    pub fn remove(&self, vmid: Vmid) -> Result<()> {
        match std::fs::remove_file(self.path(vmid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path(vmid).display()))
            }
            _ => Ok(()),
        }
    }
}

fn is_snippet_volume(volume: &str) -> bool {
    volume.split_once(':').is_some_and(|(storage, rest)| {
        !storage.is_empty()
            && storage
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && rest
                .strip_prefix("snippets/")
                .is_some_and(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
    })
}
