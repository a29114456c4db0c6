//! Before NVIDIA's installer runs: a record of an earlier install that it
//! could not read is moved aside, with the backups it names.
//!
//! nvidia-installer reads `/var/lib/nvidia/log` first to say what is
//! installed (`backup.c`, `get_installed_driver_version_and_descr`: `open`,
//! the size in an `int`, the whole file `mmap`ed), then, to uninstall it,
//! again (`read_backup_log_file`: `/var/lib/nvidia` must have mode 0700 and
//! the log 0600 exactly, and every entry must parse). The same from 470 to
//! 590. So a FIFO at the record's path makes it wait for ever, a folder
//! there crashes it (`mmap` fails, and the failure, `MAP_FAILED`, is read
//! as the file), a huge one is mapped and scanned whole, and changed modes
//! or a garbled entry are `ERROR:` lines in its log, which it goes on
//! past: the install then never verifies. Its backups of files it replaced
//! are `/var/lib/nvidia/<number>`, so the whole folder moves, inside the
//! container, by a command there: nothing is written from the host.

use anyhow::Result;

use super::{must, Job, Warning};
use crate::container::confined::{Confined, Kind, ReadError, Status};
use crate::container::detect::{read_record, INSTALLER_RECORD, MAX_RECORD};
use crate::container::ContainerCommand;

/// backup.c's `BACKUP_DIRECTORY`.
const RECORD_DIR: &str = "/var/lib/nvidia";
/// backup.c's `BACKUP_DIRECTORY_PERMS` and `BACKUP_LOG_PERMS`.
const DIR_MODE: u32 = 0o700;
const LOG_MODE: u32 = 0o600;

/// Why NVIDIA's installer could not read the record of the earlier
/// install; None when it can, or when there is none.
pub fn unreadable_record(c: &Confined) -> Result<Option<String>, ReadError> {
    let (Some(dir), Some(log)) = (c.status(RECORD_DIR)?, c.status(INSTALLER_RECORD)?) else {
        return Ok(None);
    };
    if let Some(why) = judge(&dir, &log) {
        return Ok(Some(why));
    }
    Ok(match read_record(c)? {
        Some(Err(garbled)) => Some(garbled),
        _ => None,
    })
}

/// The record's and its folder's `stat`, as backup.c checks them.
fn judge(dir: &Status, log: &Status) -> Option<String> {
    let what = match log.kind {
        Kind::File => None,
        Kind::Dir => Some("a folder"),
        Kind::CharDevice => Some("a device node"),
        _ => Some("a FIFO, a socket or a device node"),
    };
    if let Some(what) = what {
        return Some(format!(
            "{INSTALLER_RECORD} is {what}, not a regular file: a FIFO makes the installer wait for ever, a folder crashes it"
        ));
    }
    if log.size > MAX_RECORD {
        return Some(format!(
            "{INSTALLER_RECORD} has {} bytes, more than any record the installer writes ({MAX_RECORD}); \
             it maps the whole file, its size kept in an int",
            log.size
        ));
    }
    if dir.mode & 0o777 != DIR_MODE {
        return Some(format!(
            "{RECORD_DIR} has mode {:04o}, not the {DIR_MODE:04o} the installer requires",
            dir.mode & 0o777
        ));
    }
    if log.mode & 0o777 != LOG_MODE {
        return Some(format!(
            "{INSTALLER_RECORD} has mode {:04o}, not the {LOG_MODE:04o} the installer requires",
            log.mode & 0o777
        ));
    }
    None
}

/// Moves the record's folder aside when the installer could not read it;
/// the warning that says so.
pub fn set_aside(job: &Job) -> Result<Option<Warning>> {
    let Some(why) = job.root.read(unreadable_record)? else {
        return Ok(None);
    };
    // One install per process: seconds and pid make the name its own.
    let to = format!(
        "{RECORD_DIR}.unreadable-{}-{}",
        crate::state::unix_now(),
        std::process::id()
    );
    must(
        job,
        ContainerCommand::new(&["mv", "--", RECORD_DIR, &to], job.quick()?),
    )?;
    let warning = Warning::RecordMovedAside { why, to };
    log::warn!("{warning}");
    Ok(Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::{confined, tempdir};
    use crate::container::record::test_record;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A root with NVIDIA's record as its installer leaves it.
    fn with_record(tag: &str) -> std::path::PathBuf {
        let d = tempdir(&format!("aside-{tag}"));
        let dir = d.join("var/lib/nvidia");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("log"), test_record("")).unwrap();
        chmod(&dir, 0o700);
        chmod(&dir.join("log"), 0o600);
        d
    }

    fn why(d: &Path) -> Option<String> {
        unreadable_record(&confined(d)).unwrap()
    }

    #[test]
    fn a_record_as_the_installer_writes_it_stays() {
        let d = with_record("ok");
        assert_eq!(why(&d), None);
        std::fs::remove_dir_all(&d).unwrap();
        let none = tempdir("aside-none");
        assert_eq!(why(&none), None, "no record, nothing to move");
        std::fs::remove_dir_all(&none).unwrap();
    }

    /// Each thing backup.c refuses, or crashes or hangs on.
    #[test]
    fn what_the_installer_cannot_read() {
        type Spoil = fn(&Path);
        let cases: [(&str, Spoil, &str); 6] = [
            (
                "fifo",
                |d| {
                    std::fs::remove_file(d.join("var/lib/nvidia/log")).unwrap();
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        d.join("var/lib/nvidia/log"),
                        rustix::fs::FileType::Fifo,
                        rustix::fs::Mode::from_raw_mode(0o600),
                        0,
                    )
                    .unwrap();
                },
                "is a FIFO, a socket or a device node, not a regular file",
            ),
            (
                "folder",
                |d| {
                    std::fs::remove_file(d.join("var/lib/nvidia/log")).unwrap();
                    std::fs::create_dir(d.join("var/lib/nvidia/log")).unwrap();
                },
                "a folder crashes it",
            ),
            (
                "huge",
                |d| {
                    // Sparse: 2 GiB that take no room.
                    let f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(d.join("var/lib/nvidia/log"))
                        .unwrap();
                    f.set_len(2 << 30).unwrap();
                },
                "has 2147483648 bytes",
            ),
            (
                "dirmode",
                |d| chmod(&d.join("var/lib/nvidia"), 0o755),
                "/var/lib/nvidia has mode 0755",
            ),
            (
                "logmode",
                |d| chmod(&d.join("var/lib/nvidia/log"), 0o644),
                "/var/lib/nvidia/log has mode 0644",
            ),
            (
                "garbled",
                |d| {
                    let mut text = test_record("");
                    text.push_str("1: /usr/bin/x\nnot-a-crc\n");
                    std::fs::write(d.join("var/lib/nvidia/log"), text).unwrap();
                },
                "bad CRC",
            ),
        ];
        for (tag, spoil, expected) in cases {
            let d = with_record(tag);
            spoil(&d);
            let found = why(&d).unwrap_or_else(|| panic!("{tag}: not refused"));
            assert!(found.contains(expected), "{tag}: {found}");
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
