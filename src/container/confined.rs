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
//! These reads are synchronous and may sleep in the kernel for as long as
//! the tenant likes: they run only in a child that [`super::probe::Probe`]
//! forks and can abandon.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Statx, StatxFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::mounts::MountTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Missing,
    File,
    Dir,
    CharDevice,
    Symlink,
    Other,
}

/// What `stat` says of a path, symlinks followed as a program's `open`
/// follows them: its kind, permission bits and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub kind: Kind,
    /// The permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
}

/// Why a container's file could not be read: what crosses the door
/// ([`super::probe::Probe`]), so that the caller decides with a `match`
/// between "cannot tell" and "broken".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadError {
    /// On a file system the host does not read (a tenant's FUSE mount, a
    /// network file system) or a mount the container's table does not show.
    Untrusted(String),
    /// No answer within the deadline (or an earlier read of this container
    /// did not answer): the reader was abandoned.
    TimedOut(String),
    /// Where a regular file belongs something else is (a FIFO, a device
    /// node, a folder): never opened.
    NotRegular { path: String, kind: Kind },
    /// The container's init exited: it stopped or restarted.
    Stopped,
    /// Any other error of the file system, with the path.
    Io { path: String, error: String },
    /// The reader ended without a usable answer.
    Reader(String),
}

impl ReadError {
    /// The host must not, or could not, look: nothing can be concluded
    /// about what is there (as opposed to something there being wrong).
    pub fn cannot_tell(&self) -> bool {
        !matches!(self, ReadError::NotRegular { .. } | ReadError::Io { .. })
    }

    pub fn io(path: &str, e: impl Into<io::Error>) -> ReadError {
        ReadError::Io {
            path: path.to_string(),
            error: e.into().to_string(),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Untrusted(why) => f.write_str(why),
            ReadError::TimedOut(why) => write!(f, "timed out: {why}"),
            ReadError::NotRegular { path, kind } => {
                write!(f, "{path} is not a regular file ({kind:?}); not opened")
            }
            ReadError::Stopped => f.write_str("the container stopped while it was read"),
            ReadError::Io { path, error } => write!(f, "{path}: {error}"),
            ReadError::Reader(why) => write!(f, "reading the container's files: {why}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// A lookup's failure before a path is put to it.
enum Fault {
    Os(Errno),
    Untrusted(String),
}

impl From<Errno> for Fault {
    fn from(e: Errno) -> Fault {
        Fault::Os(e)
    }
}

impl Fault {
    fn is_absent(&self) -> bool {
        matches!(self, Fault::Os(Errno::NOENT | Errno::NOTDIR))
    }

    fn at(self, path: &str) -> ReadError {
        match self {
            Fault::Os(e) => ReadError::io(path, e),
            Fault::Untrusted(why) => ReadError::Untrusted(format!("{path}: {why}")),
        }
    }
}

/// The synchronous reader, made in the child that
/// [`Probe`](super::probe::Probe) forks for each read.
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
    /// The folder the table is read from (the init's `/proc/<pid>`: once
    /// that process has exited, it reads nothing) and the file's name.
    table_dir: OwnedFd,
    table_name: String,
    /// Mounts crossed and judged local, held open. (Ordered maps here:
    /// a hashed one would ask the kernel for random keys in every reader.)
    crossed: RefCell<BTreeMap<u64, OwnedFd>>,
}

const MAX_LINKS: usize = 40;
const MAX_DIRS: usize = 256;

fn stat(fd: &OwnedFd, mask: StatxFlags) -> Result<Statx, Errno> {
    // DONT_SYNC: the attributes the kernel has; never a request to a file
    // system's server.
    rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC, mask)
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

fn open_dir(at: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        at,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Confined {
    /// The files of the process whose `/proc/<pid>` folder `proc_dir` is (a
    /// container's init): its root (`root`) and mount table (`mountinfo`).
    /// Once that process has exited, [`ReadError::Stopped`].
    pub fn of_process(proc_dir: BorrowedFd<'_>) -> Result<Confined, ReadError> {
        let stopped = |e: Errno| match e {
            Errno::NOENT | Errno::SRCH => ReadError::Stopped,
            e => ReadError::io("/proc/<pid>/root", e),
        };
        let root = open_dir(proc_dir, "root").map_err(stopped)?;
        let table_dir = rustix::io::fcntl_dupfd_cloexec(proc_dir, 0)
            .map_err(|e| ReadError::io("/proc/<pid>", e))?;
        Confined::new(root, table_dir, "mountinfo")
    }

    /// `dir` as a container's root, with the mount table in `table` (a
    /// mountinfo file). The root itself must be on a local file system.
    #[cfg(test)]
    pub fn open(dir: &std::path::Path, table: &std::path::Path) -> Result<Confined, ReadError> {
        let shown = dir.display().to_string();
        let root = open_dir(rustix::fs::CWD, &shown).map_err(|e| ReadError::io(&shown, e))?;
        let (table_dir, name) = match (table.parent(), table.file_name()) {
            (Some(d), Some(n)) => (d, n.to_string_lossy().into_owned()),
            _ => return Err(ReadError::io(&table.display().to_string(), Errno::INVAL)),
        };
        let table_dir = open_dir(rustix::fs::CWD, &table_dir.display().to_string())
            .map_err(|e| ReadError::io(&table_dir.display().to_string(), e))?;
        Confined::new(root, table_dir, &name)
    }

    fn new(root: OwnedFd, table_dir: OwnedFd, table_name: &str) -> Result<Confined, ReadError> {
        let mounts = read_table(&table_dir, table_name)?;
        let id = stat(&root, StatxFlags::MNT_ID)
            .map_err(|e| ReadError::io("/", e))?
            .stx_mnt_id;
        mounts.check_local(id).map_err(ReadError::Untrusted)?;
        Ok(Confined {
            root,
            mounts,
            table_dir,
            table_name: table_name.to_string(),
            crossed: RefCell::new(BTreeMap::new()),
        })
    }

    /// Judges the mount `fd` (just crossed into) is on: local, by a table
    /// read now, while `fd` holds it.
    fn judge_mount(&self, fd: &OwnedFd) -> Result<(), Fault> {
        let id = stat(fd, StatxFlags::MNT_ID)?.stx_mnt_id;
        if self.crossed.borrow().contains_key(&id) {
            return Ok(());
        }
        read_table(&self.table_dir, &self.table_name)
            .map_err(|e| Fault::Untrusted(e.to_string()))?
            .check_local(id)
            .map_err(Fault::Untrusted)?;
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
    fn lookup(&self, path: &str, follow: bool) -> Result<OwnedFd, Fault> {
        let flags = OFlags::PATH
            | OFlags::CLOEXEC
            | if follow {
                OFlags::empty()
            } else {
                OFlags::NOFOLLOW
            };
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        match openat2(&self.root, path, flags, resolve) {
            Err(Errno::XDEV) => self.walk(path, follow),
            other => Ok(other?),
        }
    }

    fn walk(&self, path: &str, follow: bool) -> Result<OwnedFd, Fault> {
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
    fn step(&self, dir: &OwnedFd, name: &str) -> Result<OwnedFd, Fault> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match openat2(dir, name, flags, resolve | ResolveFlags::NO_XDEV) {
            Err(Errno::XDEV) => {
                let fd = openat2(dir, name, flags, resolve)?;
                self.judge_mount(&fd)?;
                Ok(fd)
            }
            other => Ok(other?),
        }
    }

    /// `path` looked up; Ok(None) when it does not exist.
    fn find(&self, path: &str, follow: bool) -> Result<Option<OwnedFd>, ReadError> {
        match self.lookup(path, follow) {
            Ok(fd) => Ok(Some(fd)),
            Err(f) if f.is_absent() => Ok(None),
            Err(f) => Err(f.at(path)),
        }
    }

    /// Kind of `path` itself (its last component is not followed).
    pub fn kind(&self, path: &str) -> Result<Kind, ReadError> {
        match self.find(path, false)? {
            Some(fd) => Ok(kind_of(
                &stat(&fd, StatxFlags::TYPE).map_err(|e| ReadError::io(path, e))?,
            )),
            None => Ok(Kind::Missing),
        }
    }

    /// What `stat` says of `path` (symlinks followed inside the root);
    /// Ok(None) when it is absent. Nothing is opened: a FIFO is looked at,
    /// never waited on.
    pub fn status(&self, path: &str) -> Result<Option<Status>, ReadError> {
        let Some(fd) = self.find(path, true)? else {
            return Ok(None);
        };
        let st = stat(&fd, StatxFlags::TYPE | StatxFlags::MODE | StatxFlags::SIZE)
            .map_err(|e| ReadError::io(path, e))?;
        Ok(Some(Status {
            kind: kind_of(&st),
            mode: u32::from(st.stx_mode) & 0o7777,
            size: st.stx_size,
        }))
    }

    /// A regular file opened for reading, and its size; Ok(None) when absent.
    pub fn open_file(&self, path: &str) -> Result<Option<(File, u64)>, ReadError> {
        let Some(fd) = self.find(path, true)? else {
            return Ok(None);
        };
        let st =
            stat(&fd, StatxFlags::TYPE | StatxFlags::SIZE).map_err(|e| ReadError::io(path, e))?;
        if kind_of(&st) != Kind::File {
            return Err(ReadError::NotRegular {
                path: path.to_string(),
                kind: kind_of(&st),
            });
        }
        let file = reopen(&fd, OFlags::empty()).map_err(|e| ReadError::io(path, e))?;
        Ok(Some((File::from(file), st.stx_size)))
    }

    /// The first `max` bytes of a regular file; Ok(None) when it is absent.
    pub fn read_head(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let Some((f, _)) = self.open_file(path)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        f.take(max)
            .read_to_end(&mut buf)
            .map_err(|e| ReadError::io(path, e))?;
        Ok(Some(buf))
    }

    /// The last `max` bytes of a regular file; Ok(None) when it is absent.
    pub fn read_tail(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let Some((mut f, size)) = self.open_file(path)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(size.saturating_sub(max)))
            .and_then(|_| f.take(max).read_to_end(&mut buf))
            .map_err(|e| ReadError::io(path, e))?;
        Ok(Some(buf))
    }

    /// The target of a symlink, read without following it; None when `path`
    /// is not a symlink.
    pub fn read_link(&self, path: &str) -> Result<Option<String>, ReadError> {
        let Some(fd) = self.find(path, false)? else {
            return Ok(None);
        };
        let io = |e: Errno| ReadError::io(path, e);
        if kind_of(&stat(&fd, StatxFlags::TYPE).map_err(io)?) != Kind::Symlink {
            return Ok(None);
        }
        let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(io)?;
        Ok(Some(target.to_string_lossy().into_owned()))
    }

    /// The name `path` finally resolves to (symlinks followed inside the
    /// root), e.g. `libnvidia-ml.so.1` → `libnvidia-ml.so.535.261.03`
    /// through Debian's alternatives. None when absent or not a regular file.
    pub fn resolved_name(&self, path: &str) -> Result<Option<String>, ReadError> {
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
        Err(ReadError::io(path, Errno::LOOP))
    }

    /// Kinds of many paths, each folder looked up once; a file that is a
    /// mount point (bind-mounted over) counts as [`Kind::Other`].
    #[cfg(test)]
    pub fn kinds(&self, paths: &[&str]) -> Vec<Result<Kind, ReadError>> {
        let items: Vec<(&str, ())> = paths.iter().map(|p| (*p, ())).collect();
        self.in_folders(&items, |folder, name, path, ()| match folder {
            Some(f) => f.kind(name, path),
            None => Ok(Kind::Missing),
        })
    }

    /// `each(folder, name, path, item)` for every `(path, item)`, each
    /// folder looked up once and held while the list is gone through
    /// (`folder` is None where it does not exist).
    pub fn in_folders<X: Copy, T>(
        &self,
        items: &[(&str, X)],
        each: impl Fn(Option<&Folder>, &str, &str, X) -> Result<T, ReadError>,
    ) -> Vec<Result<T, ReadError>> {
        let mut folders: BTreeMap<&str, Result<Option<Folder>, ReadError>> = BTreeMap::new();
        items
            .iter()
            .map(|&(path, item)| {
                let (dir, name) = match path.rsplit_once('/') {
                    Some((d, n)) if !n.is_empty() && n != "." && n != ".." => (d, n),
                    _ => return Err(ReadError::io(path, Errno::INVAL)),
                };
                // Each folder is held open: a record that names thousands of
                // folders (a driver's has a few dozen) is not one to follow.
                if folders.len() >= MAX_DIRS && !folders.contains_key(dir) {
                    return Err(ReadError::io(
                        path,
                        io::Error::other("the record names more folders than a driver has"),
                    ));
                }
                let folder = folders.entry(dir).or_insert_with(|| {
                    let shown = if dir.is_empty() { "/" } else { dir };
                    let Some(fd) = self.find(shown, true)? else {
                        return Ok(None);
                    };
                    let mount = stat(&fd, StatxFlags::MNT_ID)
                        .map_err(|e| ReadError::io(shown, e))?
                        .stx_mnt_id;
                    Ok(Some(Folder { fd, mount }))
                });
                match folder {
                    Ok(f) => each(f.as_ref(), name, path, item),
                    Err(e) => Err(e.clone()),
                }
            })
            .collect()
    }

    /// Names in a folder, at most `max` of them.
    pub fn list_dir(&self, path: &str, max: usize) -> Result<Vec<String>, ReadError> {
        let io = |e: io::Error| ReadError::io(path, e);
        let Some(fd) = self.find(path, true)? else {
            return Err(ReadError::io(path, Errno::NOENT));
        };
        let dir = reopen(&fd, OFlags::DIRECTORY).map_err(io)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::new(dir).map_err(|e| io(e.into()))? {
            let name = entry
                .map_err(|e| io(e.into()))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
            if names.len() >= max {
                break;
            }
        }
        Ok(names)
    }

    /// Bytes available to root in the file system holding `dir`, and that
    /// file system's id (to tell whether two folders share one).
    pub fn free_and_fs(&self, dir: &str) -> Result<(u64, u64), ReadError> {
        let Some(fd) = self.find(dir, true)? else {
            return Err(ReadError::io(dir, Errno::NOENT));
        };
        let st = rustix::fs::fstatvfs(fd.as_fd()).map_err(|e| ReadError::io(dir, e))?;
        Ok((st.f_bavail.saturating_mul(st.f_frsize), st.f_fsid))
    }

    /// A regular file with an execute bit, symlinks followed inside the root.
    pub fn executable(&self, path: &str) -> Result<bool, ReadError> {
        let Some(fd) = self.find(path, true)? else {
            return Ok(false);
        };
        let st =
            stat(&fd, StatxFlags::TYPE | StatxFlags::MODE).map_err(|e| ReadError::io(path, e))?;
        Ok(kind_of(&st) == Kind::File && st.stx_mode & 0o111 != 0)
    }
}

/// A folder of the container, confined, and the mount it is on: a name
/// below it is looked at without any further resolution.
pub struct Folder {
    fd: OwnedFd,
    mount: u64,
}

impl Folder {
    /// Kind of `name` in this folder, not followed; a mount point (a file
    /// bind-mounted over) counts as [`Kind::Other`]. `path` is for errors.
    pub fn kind(&self, name: &str, path: &str) -> Result<Kind, ReadError> {
        // A single name below a folder already confined: nothing to escape
        // through; DONT_SYNC asks no file system server.
        match rustix::fs::statx(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT | AtFlags::STATX_DONT_SYNC,
            StatxFlags::TYPE | StatxFlags::MNT_ID,
        ) {
            Ok(st) if st.stx_mnt_id != self.mount => Ok(Kind::Other),
            Ok(st) => Ok(kind_of(&st)),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(Kind::Missing),
            Err(e) => Err(ReadError::io(path, e)),
        }
    }

    /// The target of the symlink `name` in this folder; None when it is
    /// missing or not a symlink.
    pub fn link_target(&self, name: &str, path: &str) -> Result<Option<String>, ReadError> {
        match rustix::fs::readlinkat(&self.fd, name, Vec::new()) {
            Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::INVAL) => Ok(None),
            Err(e) => Err(ReadError::io(path, e)),
        }
    }
}

fn read_table(dir: &OwnedFd, name: &str) -> Result<MountTable, ReadError> {
    let file = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| match e {
            Errno::NOENT | Errno::SRCH => ReadError::Stopped,
            e => ReadError::io(name, e),
        })?;
    MountTable::read_from(File::from(file)).map_err(|e| ReadError::io(name, e))
}

fn openat2(
    dir: &OwnedFd,
    path: &str,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    // openat2 answers EAGAIN when a rename raced the lookup; retry a little.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

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
        assert!(fs.free_and_fs("/").unwrap().0 > 0);
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
