//! The runfile cache, keyed by what the bytes must be:
//!
//! ```text
//! <cache>/sha256/<digest>/<name>             verified against that digest
//! <cache>/unverified/<sha256 of URL>/<name>  allow_unverified_download only,
//!         with <name>.sha256                   the digest as downloaded
//! ```
//!
//! A source that expects a digest only ever looks at `sha256/<digest>`: an
//! unverified download can never stand in for it. On a cluster the cache can
//! be a shared file system (CephFS, NFS): downloads are serialised by flock,
//! written under a name of their own node and process, and renamed into
//! place, so a reader sees no file or a whole one. A node that cannot lock
//! or trust the shared cache uses its own local one.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{hex_digest, Runfile};
use crate::fsutil;
use crate::state::Locks;

pub struct Cache {
    pub dir: PathBuf,
    /// This node's own cache, when `dir` is shared and unusable.
    pub fallback: Option<PathBuf>,
}

/// Where one runfile lives in the cache.
pub struct Slot {
    pub dir: PathBuf,
    pub file: PathBuf,
    /// The digest the bytes must have: the expected one, or the one
    /// recorded when an unverified download was accepted.
    expected: Option<String>,
    recorded: Option<PathBuf>,
}

impl Cache {
    /// The cache to use: the configured one, or this node's own when the
    /// configured one cannot be trusted or locked (a shared file system
    /// without working locks, or with root squashed).
    pub fn usable(&self, locks: &Locks, log: &dyn Fn(&str)) -> Result<Cache> {
        let probe = (|| -> Result<()> {
            fsutil::ensure_private_dir(&self.dir)?;
            drop(locks.download(&self.dir, ".probe.lock")?);
            Ok(())
        })();
        match (probe, &self.fallback) {
            (Ok(()), _) => Ok(Cache {
                dir: self.dir.clone(),
                fallback: None,
            }),
            (Err(e), Some(local)) => {
                log(&format!(
                    "warning: the cache {} is not usable ({e:#}); using this node's {}",
                    self.dir.display(),
                    local.display()
                ));
                fsutil::ensure_private_dir(local)?;
                Ok(Cache {
                    dir: local.clone(),
                    fallback: None,
                })
            }
            (Err(e), None) => Err(e),
        }
    }

    pub fn entry(&self, expected: Option<&str>, url: &str, name: &str) -> Result<Slot> {
        let dir = match expected {
            Some(d) => self.dir.join("sha256").join(d),
            None => {
                let mut h = Sha256::new();
                h.update(url.as_bytes());
                self.dir.join("unverified").join(hex_digest(h))
            }
        };
        fsutil::ensure_private_dir(&dir)?;
        Ok(Slot {
            file: dir.join(name),
            recorded: expected
                .is_none()
                .then(|| dir.join(format!("{name}.sha256"))),
            expected: expected.map(str::to_owned),
            dir,
        })
    }
}

impl Slot {
    /// A temporary name of this node and process, beside the entry.
    pub fn partial(&self) -> PathBuf {
        let node = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
        let name = self.file.file_name().unwrap_or_default().to_string_lossy();
        self.dir
            .join(format!(".partial.{node}.{}.{name}", std::process::id()))
    }

    /// Moves a verified download into place (atomically: a reader on any
    /// node sees no file or the whole one), recording its digest when none
    /// was expected.
    pub fn commit(&self, partial: &Path, digest: &str) -> Result<()> {
        if let Some(recorded) = &self.recorded {
            fsutil::write_atomic(recorded, digest.as_bytes(), 0o600)?;
        }
        std::fs::rename(partial, &self.file)
            .with_context(|| format!("renaming into {}", self.file.display()))
    }

    /// The cached file, opened and trusted, with the digest it must stream
    /// with; None when there is none (yet).
    pub fn reuse(&self, log: &dyn Fn(&str)) -> Result<Option<Runfile>> {
        let expected = match (&self.expected, &self.recorded) {
            (Some(d), _) => d.clone(),
            // Trusted as the runfile is: the digest decides what the
            // runfile's bytes must be.
            (None, Some(recorded)) => match fsutil::open_trusted(recorded) {
                Ok((file, _)) => {
                    let mut digest = String::new();
                    if file.take(128).read_to_string(&mut digest).is_err() {
                        return Ok(None);
                    }
                    digest.trim().to_string()
                }
                Err(_) => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let (file, meta): (File, _) = match fsutil::open_trusted(&self.file) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cached runfile {}; remove it", self.file.display()))
            }
        };
        log(&format!("using cached {}", self.file.display()));
        Ok(Some(Runfile {
            file,
            name: self
                .file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            size: meta.len(),
            expected: Some(expected),
            entry: Some(self.file.clone()),
        }))
    }
}
