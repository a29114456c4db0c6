//! Confined reads of a container's files from the host, on the terms of a
//! hostile owner:
//!
//! - every path is resolved inside the container's root (`openat2` with
//!   `RESOLVE_IN_ROOT`), so a planted symlink never leads to a host file;
//! - no path is followed onto a file system the kernel does not serve
//!   locally (a FUSE or network mount of the tenant's: see [`super::mounts`]);
//! - a path is first opened with `O_PATH`, its type checked, and only a
//!   regular file is reopened for reading (through `/proc/self/fd`, so it is
//!   the same inode): a FIFO, a socket or a device node planted where a
//!   record belongs is never opened.
//!
//! These reads are synchronous; [`super::rootfs::RootFs`] runs them on a
//! worker thread with a deadline.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Statx, StatxFlags};
use rustix::io::Errno;

use super::mounts::MountTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File,
    Dir,
    CharDevice,
    Symlink,
    Other,
    /// Could not be looked at: on a file system the host does not read, or
    /// the read timed out.
    Unreadable,
}

/// The synchronous reader, owned by the worker thread of a
/// [`RootFs`](super::rootfs::RootFs).
///
/// A mount's id is reused once the mount is gone: a table read earlier
/// may describe, under the id a path crosses now, a tmpfs the tenant has
/// since unmounted and replaced with its FUSE mount. So a mount is judged
/// by a table read while a descriptor of it is held (an open descriptor
/// keeps the mount, and so its id, alive), and that descriptor is kept for
/// as long as the reader lives: an id judged once means the same mount.
pub struct Confined {
    root: OwnedFd,
    /// The table as it was at open (what is mounted where, for callers).
    mounts: MountTable,
    mountinfo: PathBuf,
    /// Mounts crossed and judged local, held open.
    crossed: RefCell<HashMap<u64, OwnedFd>>,
}

const MAX_LINKS: usize = 40;
const MAX_DIRS: usize = 256;

fn untrusted(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

fn stat(fd: &OwnedFd, mask: StatxFlags) -> io::Result<Statx> {
    // DONT_SYNC: the attributes the kernel has; never a request to a file
    // system's server.
    Ok(rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        mask,
    )?)
}

fn kind_of(st: &Statx) -> Kind {
    match FileType::from_raw_mode(u32::from(st.stx_mode)) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Opens the file an `O_PATH` descriptor names, for reading: the same inode,
/// whatever has been renamed over its path since.
pub fn reopen(fd: &OwnedFd, flags: OFlags) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        flags | OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn split(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

impl Confined {
    /// `dir` is the container's root (`/proc/<pid>/root`); `mountinfo` its
    /// mount table (`/proc/<pid>/mountinfo`), read once the root is held.
    /// The root itself must be on a local file system.
    pub fn open(dir: &Path, mountinfo: &Path) -> io::Result<Confined> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mounts = MountTable::read(mountinfo)?;
        let id = stat(&root, StatxFlags::MNT_ID)?.stx_mnt_id;
        mounts.check_local(id).map_err(untrusted)?;
        Ok(Confined {
            root,
            mounts,
            mountinfo: mountinfo.to_path_buf(),
            crossed: RefCell::new(HashMap::new()),
        })
    }

    /// Judges the mount `fd` (just crossed into) is on: local, by a table
    /// read now, while `fd` holds it.
    fn judge_mount(&self, fd: &OwnedFd) -> io::Result<()> {
        let id = stat(fd, StatxFlags::MNT_ID)?.stx_mnt_id;
        if self.crossed.borrow().contains_key(&id) {
            return Ok(());
        }
        MountTable::read(&self.mountinfo)?
            .check_local(id)
            .map_err(untrusted)?;
        self.crossed
            .borrow_mut()
            .insert(id, rustix::io::fcntl_dupfd_cloexec(fd, 0)?);
        Ok(())
    }

    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    /// An `O_PATH` descriptor for `path` (its last component followed or
    /// not). The fast path crosses no mount at all; a path that does is
    /// walked a component at a time, crossing only into local file systems.
    fn lookup(&self, path: &str, follow: bool) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH
            | OFlags::CLOEXEC
            | if follow {
                OFlags::empty()
            } else {
                OFlags::NOFOLLOW
            };
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        match openat2(&self.root, path, flags, resolve) {
            Err(e) if e.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
                self.walk(path, follow)
            }
            other => other,
        }
    }

    fn walk(&self, path: &str, follow: bool) -> io::Result<OwnedFd> {
        let mut stack = vec![rustix::io::fcntl_dupfd_cloexec(&self.root, 0)?];
        let mut todo: VecDeque<String> = split(path).map(str::to_owned).collect();
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                // As RESOLVE_IN_ROOT: `..` of the root is the root.
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let dir = &stack[stack.len() - 1];
            let fd = self.step(dir, &name)?;
            let last = todo.is_empty();
            if kind_of(&stat(&fd, StatxFlags::TYPE)?) == Kind::Symlink && (follow || !last) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::LOOP.into());
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                for c in split(&target).rev() {
                    todo.push_front(c.to_owned());
                }
                continue;
            }
            if last {
                return Ok(fd);
            }
            stack.push(fd);
        }
        Ok(rustix::io::fcntl_dupfd_cloexec(&stack[stack.len() - 1], 0)?)
    }

    /// One component below `dir`, its symlink not followed; a mount point is
    /// crossed only into a local file system (the crossing itself asks the
    /// mounted file system nothing: its root is known to the kernel).
    fn step(&self, dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match openat2(dir, name, flags, resolve | ResolveFlags::NO_XDEV) {
            Err(e) if e.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
                let fd = openat2(dir, name, flags, resolve)?;
                self.judge_mount(&fd)?;
                Ok(fd)
            }
            other => other,
        }
    }

    /// Kind of `path` itself (its last component is not followed).
    pub fn kind(&self, path: &str) -> io::Result<Kind> {
        match self.lookup(path, false) {
            Ok(fd) => Ok(kind_of(&stat(&fd, StatxFlags::TYPE)?)),
            Err(e) if is_absent(&e) => Ok(Kind::Missing),
            Err(e) => Err(e),
        }
    }

    /// A regular file opened for reading, and its size; Ok(None) when absent.
    pub fn open_file(&self, path: &str) -> io::Result<Option<(File, u64)>> {
        let fd = match self.lookup(path, true) {
            Ok(fd) => fd,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = stat(&fd, StatxFlags::TYPE | StatxFlags::SIZE)?;
        if kind_of(&st) != Kind::File {
            return Err(io::Error::other(format!(
                "{path} is not a regular file ({:?}); not opened",
                kind_of(&st)
            )));
        }
        Ok(Some((
            File::from(reopen(&fd, OFlags::empty())?),
            st.stx_size,
        )))
    }

    /// The first `max` bytes of a regular file; Ok(None) when it is absent.
    pub fn read_head(&self, path: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some((f, _)) = self.open_file(path)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        f.take(max).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// The last `max` bytes of a regular file; Ok(None) when it is absent.
    pub fn read_tail(&self, path: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some((mut f, size)) = self.open_file(path)? else {
            return Ok(None);
        };
        f.seek(SeekFrom::Start(size.saturating_sub(max)))?;
        let mut buf = Vec::new();
        f.take(max).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// The target of a symlink, read without following it; None when `path`
    /// is not a symlink.
    pub fn read_link(&self, path: &str) -> io::Result<Option<String>> {
        let fd = match self.lookup(path, false) {
            Ok(fd) => fd,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if kind_of(&stat(&fd, StatxFlags::TYPE)?) != Kind::Symlink {
            return Ok(None);
        }
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        Ok(Some(target.to_string_lossy().into_owned()))
    }

    /// The name `path` finally resolves to (symlinks followed inside the
    /// root), e.g. `libnvidia-ml.so.1` → `libnvidia-ml.so.535.261.03`
    /// through Debian's alternatives. None when absent or not a regular file.
    pub fn resolved_name(&self, path: &str) -> io::Result<Option<String>> {
        let mut current = path.to_string();
        for _ in 0..MAX_LINKS {
            match self.read_link(&current)? {
                Some(target) if target.starts_with('/') => current = target,
                Some(target) => {
                    let dir = current.rsplit_once('/').map_or("", |(d, _)| d);
                    current = format!("{dir}/{target}");
                }
                None => {
                    return Ok((self.kind(&current)? == Kind::File)
                        .then(|| current.rsplit('/').next().unwrap_or_default().to_string()))
                }
            }
        }
        Err(Errno::LOOP.into())
    }

    /// Kinds of many paths, each folder looked up once; a file that is a
    /// mount point (bind-mounted over) counts as [`Kind::Other`].
    pub fn kinds(&self, paths: &[&str]) -> Vec<io::Result<Kind>> {
        let mut dirs: HashMap<&str, io::Result<(OwnedFd, u64)>> = HashMap::new();
        paths
            .iter()
            .map(|path| {
                let (dir, name) = match path.rsplit_once('/') {
                    Some((d, n)) if !n.is_empty() && n != "." && n != ".." => (d, n),
                    _ => return self.kind(path),
                };
                // Each folder is held open: a record that names thousands of
                // folders (a driver's has a few dozen) is not one to follow.
                if dirs.len() >= MAX_DIRS && !dirs.contains_key(dir) {
                    return Err(io::Error::other(
                        "the record names more folders than a driver has",
                    ));
                }
                let entry = dirs.entry(dir).or_insert_with(|| {
                    let fd = self.lookup(if dir.is_empty() { "/" } else { dir }, true)?;
                    let id = stat(&fd, StatxFlags::MNT_ID)?.stx_mnt_id;
                    Ok((fd, id))
                });
                let (dirfd, dir_mount) = match entry {
                    Ok(d) => d,
                    Err(e) if is_absent(e) => return Ok(Kind::Missing),
                    Err(e) => return Err(io::Error::new(e.kind(), e.to_string())),
                };
                // A single name below a folder already confined: nothing to
                // escape through; DONT_SYNC asks no file system server.
                match rustix::fs::statx(
                    &*dirfd,
                    name,
                    AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT | AtFlags::STATX_DONT_SYNC,
                    StatxFlags::TYPE | StatxFlags::MNT_ID,
                ) {
                    Ok(st) if st.stx_mnt_id != *dir_mount => Ok(Kind::Other),
                    Ok(st) => Ok(kind_of(&st)),
                    Err(Errno::NOENT | Errno::NOTDIR) => Ok(Kind::Missing),
                    Err(e) => Err(e.into()),
                }
            })
            .collect()
    }

    /// Names in a folder, at most `max` of them.
    pub fn list_dir(&self, path: &str, max: usize) -> io::Result<Vec<String>> {
        let fd = self.lookup(path, true)?;
        let dir = reopen(&fd, OFlags::DIRECTORY)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::new(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
            if names.len() >= max {
                break;
            }
        }
        Ok(names)
    }

    /// Bytes available to root in the file system holding `dir`.
    pub fn free_bytes(&self, dir: &str) -> io::Result<u64> {
        self.free_and_fs(dir).map(|(free, _)| free)
    }

    /// Bytes available to root in the file system holding `dir`, and that
    /// file system's id (to tell whether two folders share one).
    pub fn free_and_fs(&self, dir: &str) -> io::Result<(u64, u64)> {
        let fd = self.lookup(dir, true)?;
        let st = rustix::fs::fstatvfs(fd.as_fd())?;
        Ok((st.f_bavail.saturating_mul(st.f_frsize), st.f_fsid))
    }

    /// A regular file with an execute bit, symlinks followed inside the root.
    pub fn executable(&self, path: &str) -> io::Result<bool> {
        match self.lookup(path, true) {
            Ok(fd) => {
                let st = stat(&fd, StatxFlags::TYPE | StatxFlags::MODE)?;
                Ok(kind_of(&st) == Kind::File && st.stx_mode & 0o111 != 0)
            }
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(n) if n == Errno::NOENT.raw_os_error() || n == Errno::NOTDIR.raw_os_error()
    )
}

fn openat2(dir: &OwnedFd, path: &str, flags: OFlags, resolve: ResolveFlags) -> io::Result<OwnedFd> {
    // openat2 answers EAGAIN when a rename raced the lookup; retry a little.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            other => return other.map_err(Into::into),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pnh-rootfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A folder standing for a container root, with this process's own
    /// mount table (the folder is on one of its mounts).
    pub(crate) fn confined(dir: &Path) -> Confined {
        Confined::open(dir, Path::new("/proc/self/mountinfo")).unwrap()
    }

    /// A mount is judged by the table as it is when the path crosses it,
    /// and once judged it stays held, so its id cannot come to name another.
    #[test]
    fn a_mount_is_judged_when_crossed_and_then_held() {
        let dir = tempdir("mountinfo");
        let table = dir.join("mountinfo");
        let real = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let proc_as = |fstype: &str| -> String {
            real.lines()
                .map(|l| match l.split_once(" - ") {
                    Some((head, tail)) if head.split(' ').nth(4) == Some("/proc") => {
                        let rest = tail.split_once(' ').map_or("", |(_, r)| r);
                        format!("{head} - {fstype} {rest}\n")
                    }
                    _ => format!("{l}\n"),
                })
                .collect()
        };
        // At open, /proc is listed as a tmpfs; by the time a path crosses
        // it, as the tenant's FUSE mount: the later table counts.
        std::fs::write(&table, proc_as("tmpfs")).unwrap();
        let fs = Confined::open(Path::new("/"), &table).unwrap();
        std::fs::write(&table, proc_as("fuse.blackhole")).unwrap();
        let err = fs.kind("/proc/self/status").unwrap_err().to_string();
        assert!(err.contains("fuse.blackhole mount"), "{err}");
        // Judged local while held: a later table changes nothing.
        std::fs::write(&table, proc_as("tmpfs")).unwrap();
        let fs = Confined::open(Path::new("/"), &table).unwrap();
        assert_eq!(fs.kind("/proc/self/status").unwrap(), Kind::File);
        std::fs::write(&table, proc_as("fuse.blackhole")).unwrap();
        assert_eq!(fs.kind("/proc/self/status").unwrap(), Kind::File);
        std::fs::remove_dir_all(&dir).unwrap();
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
        let fs = confined(&root);
        assert_eq!(fs.read_head("/var/lib/nvidia/secret", 100).unwrap(), None);
        assert_eq!(fs.read_head("/log", 100).unwrap(), None);
        assert_eq!(
            fs.read_head(&format!("/up{}/secret", outside.display()), 100)
                .unwrap(),
            None
        );
        assert_eq!(fs.kind("/var/lib/nvidia").unwrap(), Kind::Symlink);
        std::fs::remove_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bounded_reads_and_kinds() {
        let root = tempdir("bounded");
        std::fs::write(root.join("big"), vec![b'x'; 100_000]).unwrap();
        let fs = confined(&root);
        assert_eq!(fs.read_head("/big", 10).unwrap().unwrap().len(), 10);
        assert_eq!(fs.read_tail("/big", 10).unwrap().unwrap().len(), 10);
        assert_eq!(fs.kind("/big").unwrap(), Kind::File);
        assert_eq!(fs.kind("/").unwrap(), Kind::Dir);
        assert_eq!(fs.kind("/nope").unwrap(), Kind::Missing);
        assert!(fs.read_head("/", 10).is_err(), "a directory is not read");
        assert!(fs.free_bytes("/").unwrap() > 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_fifo_is_never_opened() {
        let root = tempdir("fifo");
        let fifo = root.join("record");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let fs = confined(&root);
        // Opening a FIFO for reading would block until a writer comes.
        let err = fs.read_head("/record", 10).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(fs.kind("/record").unwrap(), Kind::Other);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn resolved_names_and_many_kinds() {
        let root = tempdir("names");
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(lib.join("nvidia/current")).unwrap();
        std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        std::fs::write(lib.join("nvidia/current/libnvidia-ml.so.535.261.03"), "elf").unwrap();
        symlink(
            "libnvidia-ml.so.535.261.03",
            lib.join("nvidia/current/libnvidia-ml.so.1"),
        )
        .unwrap();
        symlink(
            "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
            root.join("etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu"),
        )
        .unwrap();
        symlink(
            "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
            lib.join("libnvidia-ml.so.1"),
        )
        .unwrap();
        let fs = confined(&root);
        assert_eq!(
            fs.resolved_name("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
                .unwrap()
                .as_deref(),
            Some("libnvidia-ml.so.535.261.03")
        );
        let kinds: Vec<Kind> = fs
            .kinds(&[
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
                "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03",
                "/usr/lib/x86_64-linux-gnu/missing",
                "/nowhere/missing",
            ])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            kinds,
            [Kind::Symlink, Kind::File, Kind::Missing, Kind::Missing]
        );
        assert_eq!(
            fs.list_dir("/usr/lib/x86_64-linux-gnu/nvidia/current", 10)
                .unwrap()
                .len(),
            2
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
