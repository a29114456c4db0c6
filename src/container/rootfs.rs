//! Read-only access to a container's root file system from the host,
//! confined to it: every path is resolved with `openat2(RESOLVE_IN_ROOT)`, so
//! a symlink the container planted (`/var/lib/nvidia -> /etc`) resolves
//! inside the container, never to a host file. Reads are bounded in size and
//! only regular files are read (a FIFO would block).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

pub struct RootFs {
    root: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File,
    Dir,
    CharDevice,
    Symlink,
    Other,
}

impl RootFs {
    /// Opens `dir` (e.g. `/proc/<pid>/root`) as the root that every later
    /// path is resolved in.
    pub fn open(dir: &Path) -> Result<RootFs> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening container root {}", dir.display()))?;
        Ok(RootFs { root })
    }

    fn open_in(&self, path: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
        // Not NO_XDEV: a container has mounts of its own (/dev, mpN volumes).
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        // openat2 answers EAGAIN when a rename raced the lookup; retry a little.
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.root,
                path,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            ) {
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                other => return other.map_err(Into::into),
            }
        }
    }

    /// Kind of `path` itself (its last component is not followed).
    pub fn kind(&self, path: &str) -> Kind {
        let Ok(fd) = self.open_in(path, OFlags::PATH | OFlags::NOFOLLOW) else {
            return Kind::Missing;
        };
        match rustix::fs::fstat(&fd) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::CharacterDevice => Kind::CharDevice,
                FileType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            },
            Err(_) => Kind::Missing,
        }
    }

    fn open_regular(&self, path: &str) -> std::io::Result<(File, u64)> {
        let fd = self.open_in(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok((File::from(fd), st.st_size.max(0) as u64))
    }

    /// The first `max` bytes of a regular file; Ok(None) when it is absent.
    pub fn read_head(&self, path: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
        match self.open_regular(path) {
            Ok((f, _)) => {
                let mut buf = Vec::new();
                f.take(max).read_to_end(&mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The last `max` bytes of a regular file; Ok(None) when it is absent.
    pub fn read_tail(&self, path: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
        match self.open_regular(path) {
            Ok((mut f, size)) => {
                f.seek(SeekFrom::Start(size.saturating_sub(max)))?;
                let mut buf = Vec::new();
                f.take(max).read_to_end(&mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The target of a symlink, read without following it; None when `path`
    /// is not a symlink. Only the parent directory is resolved (in the root).
    pub fn read_link(&self, path: &str) -> Option<String> {
        let (dir, name) = path.rsplit_once('/')?;
        let dir_fd = self
            .open_in(
                if dir.is_empty() { "/" } else { dir },
                OFlags::PATH | OFlags::DIRECTORY,
            )
            .ok()?;
        let target = rustix::fs::readlinkat(&dir_fd, name, Vec::new()).ok()?;
        target.into_string().ok().filter(|t| t.len() < 4096)
    }

    pub fn file_size(&self, path: &str) -> Option<u64> {
        self.open_regular(path).ok().map(|(_, size)| size)
    }

    /// Bytes available to root in the file system holding `dir`.
    pub fn free_bytes(&self, dir: &str) -> std::io::Result<u64> {
        let fd = self.open_in(dir, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let st = rustix::fs::fstatvfs(fd.as_fd())?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pnh-rootfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempdir("outside");
        std::fs::write(outside.join("secret"), "host secret").unwrap();
        let root = tempdir("root");
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        symlink(&outside, root.join("var/lib/nvidia")).unwrap();
        symlink(outside.join("secret"), root.join("log")).unwrap();
        symlink("../../../../../../..", root.join("up")).unwrap();
        let fs = RootFs::open(&root).unwrap();
        assert_eq!(fs.read_head("/var/lib/nvidia/secret", 100).unwrap(), None);
        assert_eq!(fs.read_head("/log", 100).unwrap(), None);
        assert_eq!(
            fs.read_head(&format!("/up{}/secret", outside.display()), 100)
                .unwrap(),
            None
        );
        assert_eq!(fs.kind("/var/lib/nvidia"), Kind::Symlink);
        std::fs::remove_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bounded_reads_and_kinds() {
        let root = tempdir("bounded");
        std::fs::write(root.join("big"), vec![b'x'; 100_000]).unwrap();
        let fs = RootFs::open(&root).unwrap();
        assert_eq!(fs.read_head("/big", 10).unwrap().unwrap().len(), 10);
        assert_eq!(fs.read_tail("/big", 10).unwrap().unwrap().len(), 10);
        assert_eq!(fs.kind("/big"), Kind::File);
        assert_eq!(fs.kind("/"), Kind::Dir);
        assert_eq!(fs.kind("/nope"), Kind::Missing);
        assert!(fs.read_head("/", 10).is_err(), "a directory is not read");
        assert!(fs.free_bytes("/").unwrap() > 0);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
