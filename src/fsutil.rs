//! Host-side files the tool creates or trusts: created without following
//! symlinks, with restrictive modes, and checked for ownership, because the
//! tool runs as root and a file someone else can write is code execution.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

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
