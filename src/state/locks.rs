//! Locks: "installing" is never a file that can go stale: it is an flock
//! held by a live process, released by the kernel when that process dies,
//! however it dies. All of them live in the tool's own root-only folder.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::fsutil;
use crate::vmid::Vmid;

pub struct Locks {
    pub(super) dir: PathBuf,
}

const PREFETCH_LOCK: &str = "prefetch.lock";

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
        self.is_held(&format!("{vmid}.lock"))
    }

    /// Held by a `prefetch` for as long as it fetches; None when another
    /// holds it.
    pub fn try_prefetch(&self) -> Result<Option<Held>> {
        try_lock(&self.dir, PREFETCH_LOCK)
    }

    /// True while a `prefetch` fetches.
    pub fn is_prefetching(&self) -> bool {
        self.is_held(PREFETCH_LOCK)
    }

    fn is_held(&self, name: &str) -> bool {
        if fsutil::check_trusted(&self.dir).is_err() {
            return false;
        }
        let path = self.dir.join(name);
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

    /// The process that holds the container's install lock, as the
    /// kernel's table of locks (`/proc/locks` under `proc`) says; None when
    /// none does. Only a lock file of ours counts.
    pub fn holder(&self, vmid: Vmid, proc: &Path) -> Option<u32> {
        if fsutil::check_trusted(&self.dir).is_err() {
            return None;
        }
        let st = rustix::fs::lstat(self.dir.join(format!("{vmid}.lock"))).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || st.st_uid != rustix::process::geteuid().as_raw()
        {
            return None;
        }
        let file = std::fs::File::open(proc.join("locks")).ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, 4 << 20), &mut text).ok()?;
        let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        flock_writer(&text, major, minor, st.st_ino)
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
        // Another node or process may download for an hour: wait, but as
        // an install waits (see `cancel`).
        loop {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Held { _fd: fd }),
                Err(Errno::WOULDBLOCK | Errno::INTR) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("locking {}", dir.join(name).display()))
                }
            }
            crate::cancel::check()?;
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A container's config lock as Proxmox takes it (pve-guest-common's
/// `lock_config`: an flock on `<dir>/pve-config-<vmid>.lock`, given up
/// after 10 s), for a change `pct set` cannot make.
pub fn config_lock(dir: &Path, vmid: Vmid) -> Result<Held> {
    let name = format!("pve-config-{vmid}.lock");
    let fd = open_lock(dir, &name)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Held { _fd: fd }),
            Err(Errno::WOULDBLOCK | Errno::INTR) if std::time::Instant::now() < deadline => {}
            Err(Errno::WOULDBLOCK | Errno::INTR) => bail!(
                "can't lock file '{}' - got timeout",
                dir.join(&name).display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("locking {}", dir.join(&name).display()))
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid holding an exclusive `flock` on the file (`major:minor:inode`)
/// in the text of `/proc/locks`: `1: FLOCK  ADVISORY  WRITE 4711 fd:01:1234 0 EOF`
/// (waiters are the lines with `->`).
fn flock_writer(text: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    let file = format!("{major:02x}:{minor:02x}:{inode}");
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().skip(1);
        match (words.next()?, words.next()?, words.next()?) {
            ("FLOCK", "ADVISORY", "WRITE") => {}
            _ => return None,
        }
        let pid = words.next()?.parse().ok()?;
        (words.next()? == file).then_some(pid)
    })
}

/// The lock `name` in `dir`, or None when someone holds it.
pub(super) fn try_lock(dir: &Path, name: &str) -> Result<Option<Held>> {
    let fd = open_lock(dir, name)?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Held { _fd: fd })),
        Err(Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("locking {}", dir.join(name).display())),
    }
}

/// A lock file in a private folder: never through a symlink planted at its
/// name, never a file that is not ours.
pub(super) fn open_lock(dir: &Path, name: &str) -> Result<OwnedFd> {
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

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn the_writer_of_a_file_in_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 4711 fd:01:1234 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4712 fd:01:1234 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 99 fd:01:777 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 5 fd:01:888 0 EOF\n";
        assert_eq!(flock_writer(text, 0xfd, 1, 1234), Some(4711));
        assert_eq!(flock_writer(text, 0xfd, 1, 777), None, "a reader");
        assert_eq!(flock_writer(text, 0xfd, 1, 888), None, "not a flock");
        assert_eq!(flock_writer(text, 0xfd, 2, 1234), None, "another device");
    }

    /// The lock as the kernel lists it for this very process.
    #[test]
    fn the_holder_of_a_container_lock_is_found() {
        let dir = std::env::temp_dir().join(format!("pnh-holder-{}", std::process::id()));
        let locks = Locks::new(&dir);
        let vmid: Vmid = "101".parse().unwrap();
        assert_eq!(locks.holder(vmid, Path::new("/proc")), None);
        let held = locks.try_container(vmid).unwrap().unwrap();
        assert_eq!(
            locks.holder(vmid, Path::new("/proc")),
            Some(std::process::id())
        );
        drop(held);
        assert_eq!(locks.holder(vmid, Path::new("/proc")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
