//! Per-container locks and the last install's result. "Installing" is never a
//! file that can go stale: it is an flock held by a live process, released by
//! the kernel when that process dies, however it dies.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::vmid::Vmid;

pub struct Locks {
    dir: PathBuf,
}

/// A held flock, released when dropped (or by the kernel when its holder
/// dies, however it dies).
pub struct Held {
    _fd: OwnedFd,
}

impl Locks {
    pub fn new(dir: &Path) -> Locks {
        Locks {
            dir: dir.to_path_buf(),
        }
    }

    /// The container's install lock, or None when another process holds it.
    ///
    /// `status` looks with a shared lock for an instant; an install that
    /// comes at that instant tries a little longer before it concludes that
    /// another install holds it.
    pub fn try_container(&self, vmid: Vmid) -> Result<Option<Held>> {
        let name = format!("{vmid}.lock");
        for _ in 0..20 {
            if let Some(held) = try_lock(&self.dir, &name)? {
                return Ok(Some(held));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        try_lock(&self.dir, &name)
    }

    /// True while some process holds the container's install lock. Only a
    /// lock file of ours, in our private folder, counts: a file someone else
    /// planted never reads as "installing".
    pub fn is_installing(&self, vmid: Vmid) -> bool {
        if fsutil::check_trusted(&self.dir).is_err() {
            return false;
        }
        let path = self.dir.join(format!("{vmid}.lock"));
        let Ok(fd) = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        if !is_ours(&fd) {
            return false;
        }
        matches!(
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared),
            Err(Errno::WOULDBLOCK)
        )
    }

    /// One of `slots` host-wide install slots, waiting at most `limit` for a
    /// free one. The slots bound how many installers run at once (each
    /// extracts ~1 GB); they are held only around the copy and the installer.
    pub fn install_slot(
        &self,
        slots: u32,
        limit: Duration,
        mut waiting: impl FnMut(),
    ) -> Result<Held> {
        let started = Instant::now();
        let mut told = false;
        loop {
            for n in 0..slots {
                if let Some(held) = try_lock(&self.dir, &format!("install-slot-{n}.lock"))? {
                    return Ok(held);
                }
            }
            if started.elapsed() >= limit {
                bail!(
                    "no install slot came free within {}s ({slots} in use by other containers); \
                     the next start tries again, or raise max_concurrent_installs",
                    limit.as_secs()
                );
            }
            if !told {
                waiting();
                told = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Serialises this node's writers of its published status.
    pub fn publish(&self) -> Result<Held> {
        self.exclusive("publish.lock")
    }

    /// Serialises deciding and recording a notification to the admin (at
    /// most one an hour per container and host version).
    pub fn notify(&self) -> Result<Held> {
        self.exclusive("notify.lock")
    }

    fn exclusive(&self, name: &str) -> Result<Held> {
        let fd = open_lock(&self.dir, name)?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {name}"))?;
        Ok(Held { _fd: fd })
    }

    /// Serialises downloads of one cache entry, also between nodes when the
    /// cache is on a shared file system (flock works on NFS and CephFS).
    pub fn download(&self, dir: &Path, name: &str) -> Result<Held> {
        let fd = open_lock(dir, name)?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", dir.join(name).display()))?;
        Ok(Held { _fd: fd })
    }
}

/// The lock `name` in `dir`, or None when someone holds it.
fn try_lock(dir: &Path, name: &str) -> Result<Option<Held>> {
    let fd = open_lock(dir, name)?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Held { _fd: fd })),
        Err(Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("locking {}", dir.join(name).display())),
    }
}

/// A lock file in a private folder: never through a symlink planted at its
/// name, never a file that is not ours.
fn open_lock(dir: &Path, name: &str) -> Result<OwnedFd> {
    fsutil::ensure_private_dir(dir)?;
    let path = dir.join(name);
    let fd = rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("opening lock {}", path.display()))?;
    if !is_ours(&fd) {
        bail!(
            "{} is not a regular file of ours; remove it",
            path.display()
        );
    }
    Ok(fd)
}

fn is_ours(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_uid == rustix::process::geteuid().as_raw()
    })
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

    pub fn record(&self, vmid: Vmid, host_version: &str, outcome: &Result<()>) -> Result<()> {
        fsutil::ensure_private_dir(&self.dir)?;
        let result = LastResult {
            host_version: host_version.to_string(),
            ok: outcome.is_ok(),
            message: match outcome {
                Ok(()) => "installed".to_string(),
                Err(e) => crate::logging::bounded(&format!("{e:#}"), crate::logging::DETAIL_MAX),
            },
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
/// Seconds since the epoch, for what is recorded (0 on a clock before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
