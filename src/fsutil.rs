//! Host-side files the tool creates or trusts: created without following
//! symlinks, with restrictive modes, and checked for ownership, because the
//! tool runs as root and a file someone else can write is code execution.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags};

/// Creates `dir` (and parents) with mode 0700 when missing, and checks that it
/// is a real directory owned by us that nobody else can write.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    check_trusted(dir)
}

/// A folder only root may read (install logs): [`ensure_private_dir`], then
/// narrowed to 0700 where it is wider (version 0.2.0's package made the log
/// folder 0755). Not for `/etc/pve`: pmxcfs refuses any mode but its own.
pub fn ensure_root_only_dir(dir: &Path) -> Result<()> {
    ensure_private_dir(dir)?;
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    let st = rustix::fs::fstat(&fd).with_context(|| format!("reading {}", dir.display()))?;
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::RWXU)
            .with_context(|| format!("making {} root's alone (chmod 0700)", dir.display()))?;
    }
    Ok(())
}

/// The file or directory must not be a symlink, must be owned by our user,
/// and must not be writable by group or others.
pub fn check_trusted(path: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "{} is a symlink; refusing to trust it (replace it with a real {})",
            path.display(),
            kind(&meta)
        );
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        bail!(
            "{} is owned by uid {}, not {}; fix: chown {} {}",
            path.display(),
            meta.uid(),
            euid,
            euid,
            path.display()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by group or others (mode {:o}); fix: chmod go-w {}",
            path.display(),
            meta.permissions().mode() & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// Opens a file that decides what root runs (the configuration, a local
/// runfile, a chained hookscript) once, and trusts it only as opened: the
/// last component is not followed, the opened file must be a regular file
/// owned by root (or us) that group and others cannot write, and so must be
/// every folder above it, up to `/` (a sticky folder such as `/tmp` may be
/// writable by others: they cannot rename what is not theirs).
pub fn open_trusted(path: &Path) -> std::io::Result<(File, std::fs::Metadata)> {
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other(
            "not a regular file (a symlink, a FIFO or a device is not trusted)",
        ));
    }
    let file = File::from(reopen_for_reading(&fd)?);
    let meta = file.metadata()?;
    trusted_owner_and_mode(&meta).map_err(std::io::Error::other)?;
    // The folders as they are now, found from the opened file itself.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap_or_else(|_| path.to_path_buf());
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::symlink_metadata(dir)?;
        let sticky = meta.mode() & 0o1000 != 0;
        if !meta.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a folder",
                dir.display()
            )));
        }
        trusted_owner_and_mode(&meta)
            .or_else(|e| {
                if sticky && meta.uid() == 0 {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| std::io::Error::other(format!("folder {}: {e}", dir.display())))?;
    }
    Ok((file, meta))
}

fn reopen_for_reading(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok(rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Owned by root or by us, not writable by group or others.
fn trusted_owner_and_mode(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "owned by uid {}, not root; fix: chown root",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o}); fix: chmod go-w",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "directory"
    } else {
        "file"
    }
}

/// Opens (creating with `mode` when missing) a file for appending, refusing
/// to follow a symlink planted at its name.
pub fn open_append_nofollow(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Replaces `path` atomically: writes a fresh temporary file beside it
/// (`create_new` never follows a symlink), then renames it over.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
