//! A runfile into the container and run there: a fresh folder under
//! `/var/tmp`, room checked from the runfile's own numbers, the bytes
//! streamed through a pipe (never the host's open file: root in a privileged
//! container could reopen it for writing) and hashed on their way, and the
//! installer run only when that hash is the expected one. The folder goes
//! whatever happened; an install slot is held only for the copy and the run.

use std::io::{Read, Seek, SeekFrom};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::{in_ct, must, Job};
use crate::container::confined::{Kind, ReadError};
use crate::container::detect::{read_record, INSTALLER_LOG};
use crate::container::{vulkan, ContainerCommand};
use crate::logging::size;
use crate::process::last_lines;
use crate::runfile::{hex_digest, Runfile};

/// Working directory for the runfile inside the container: on the root file
/// system (not a tmpfs of limited size) and executable.
const CONTAINER_TMP: &str = "/var/tmp";
const WORKDIR_PREFIX: &str = "/var/tmp/pve-nvidia-hook.";
/// The copy may take this long, plus a second per 10 MB: a reader slower
/// than that is holding the install slot on purpose.
const PUSH_BASE: Duration = Duration::from_secs(120);
const PUSH_RATE: u64 = 10_000_000;
/// Without a size in its header, a runfile needs this many times its own
/// size: itself, its extraction and what it installs.
const SPACE_FACTOR: u64 = 5;

/// How to run one runfile.
pub struct Installer<'a> {
    pub label: &'a str,
    pub args: Vec<String>,
    /// Also name the working folder with `--tmpdir` (nvidia-installer's
    /// flag; TMPDIR is always set).
    pub pass_tmpdir: bool,
}

pub fn push_and_run(job: &Job, runfile: &Runfile, installer: &Installer) -> Result<()> {
    let out = must(
        job,
        ContainerCommand::new(
            &["mktemp", "-d", &format!("{WORKDIR_PREFIX}XXXXXXXX")],
            job.quick()?,
        ),
    )?;
    let dir = out.stdout_text().trim().to_string();
    let well_formed = dir.starts_with(WORKDIR_PREFIX)
        && dir[WORKDIR_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric());
    if !well_formed {
        bail!(
            "mktemp in the container printed an unexpected path '{}'",
            dir.chars().take(100).collect::<String>().escape_debug()
        );
    }
    let result = check_space(job, runfile, &dir).and_then(|()| {
        let slots = job.settings.limits.max_concurrent_installs;
        let wait = if job.foreground {
            job.settings.limits.slot_wait
        } else {
            Duration::MAX
        };
        let _slot = job.locks.install_slot(
            job.vmid,
            slots,
            job.budget.limit(wait)?,
            job.settings.limits.slot_hold,
            || log::info!("waiting for an install slot ({slots} in use)"),
        )?;
        stream_into(job, runfile, &dir)
            .and_then(|target| run_installer(job, runfile, installer, &dir, &target))
    });
    let removed = in_ct(job, &["rm", "-rf", "--", &dir]);
    if !removed.as_ref().is_ok_and(|o| o.success()) {
        log::warn!("could not remove {dir} in the container");
    }
    result
}

/// Room for the runfile, its extraction and what it installs, from the
/// size its makeself header states (or 5× its size), on whichever file
/// systems they land.
fn check_space(job: &Job, runfile: &Runfile, dir: &str) -> Result<()> {
    let payload = runfile
        .stated_payload()
        .unwrap_or(runfile.size.saturating_mul(SPACE_FACTOR - 1) / 2);
    let tmp = format!("{dir}/");
    let ((tmp_free, tmp_fs), (root_free, root_fs)) = job
        .root
        .read(|c| Ok((c.free_and_fs(&tmp)?, c.free_and_fs("/usr")?)))?;
    // Extraction beside the runfile; the installed files on /usr.
    let mut needs = vec![(
        CONTAINER_TMP,
        tmp_free,
        runfile.size + payload + if tmp_fs == root_fs { payload } else { 0 },
    )];
    if tmp_fs != root_fs {
        needs.push(("/usr", root_free, payload));
    }
    for (place, free, needed) in needs {
        if free < needed {
            bail!(
                "not enough space in the container's {place}: {} free, {} needed for {} ({} more); \
                 grow the container's disk (pct resize <vmid> rootfs +{}G)",
                size(free),
                size(needed),
                runfile.name,
                size(needed - free),
                (needed - free) / 1_000_000_000 + 1
            );
        }
    }
    Ok(())
}

/// Streams the runfile through a pipe into `<dir>/<name>` (a constant shell
/// script; the path arrives as "$1"), hashing exactly the bytes that went
/// in; returns the path when they are the expected ones.
fn stream_into(job: &Job, runfile: &Runfile, dir: &str) -> Result<String> {
    let target = format!("{dir}/{}", runfile.name);
    let mut file = runfile
        .file
        .try_clone()
        .context("opening the runfile again")?;
    file.seek(SeekFrom::Start(0))?;
    let (sent, streamed) = mpsc::sync_channel(1);
    let timeout = job
        .budget
        .limit(PUSH_BASE + Duration::from_secs(runfile.size / PUSH_RATE))?;
    let push = ContainerCommand::new(
        &[
            "sh",
            "-c",
            "umask 077 && cat > \"$1\"",
            "pve-nvidia-hook",
            &target,
        ],
        timeout,
    )
    .feed(Box::new(move |pipe| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            pipe.write_all(&buf[..n])?;
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        let _ = sent.send((hex_digest(hasher), bytes));
        Ok(())
    }));
    let out = must(job, push).context("copying the runfile into the container")?;
    if let Some(Err(e)) = out.fed {
        bail!("copying the runfile into the container: {e}");
    }
    let (digest, bytes) = streamed
        .try_recv()
        .context("copying the runfile into the container: the copy did not finish")?;
    if bytes != runfile.size {
        bail!(
            "copying {}: {bytes} of {} bytes went into the container",
            runfile.name,
            runfile.size
        );
    }
    match &runfile.expected {
        Some(expected) if *expected != digest => {
            runfile.discard();
            bail!(
                "the bytes of {} sent into the container have sha256 {digest}, not {expected}; \
                 the installer was not run, and the cached copy was removed",
                runfile.name
            );
        }
        Some(_) => {}
        None => log::info!(
            "{} has sha256 {digest} (no digest configured)",
            runfile.name
        ),
    }
    let copied = job
        .root
        .read(|c| {
            c.open_file(&target)?
                .map(|(_, size)| size)
                .ok_or_else(|| ReadError::io(&target, rustix::io::Errno::NOENT))
        })
        .with_context(|| {
            format!(
                "the copy of {} in the container cannot be looked at; the installer was not run",
                runfile.name
            )
        })?;
    if copied != runfile.size {
        bail!(
            "the copy of {} in the container has {copied} bytes, not the {} sent: it changed on its way; \
             the installer was not run",
            runfile.name,
            runfile.size
        );
    }
    Ok(target)
}

fn run_installer(
    job: &Job,
    runfile: &Runfile,
    installer: &Installer,
    dir: &str,
    target: &str,
) -> Result<()> {
    let mut argv = vec!["sh".to_string(), target.to_string()];
    argv.extend(installer.args.iter().cloned());
    if installer.pass_tmpdir {
        argv.extend(["--tmpdir".to_string(), dir.to_string()]);
    }
    let label = installer.label;
    log::info!("running {label} installer {}", runfile.name);
    let timeout = job.budget.limit(job.settings.limits.installer_timeout)?;
    let mut cmd = ContainerCommand::new(&argv, timeout).env("TMPDIR", dir);
    cmd.max_stdout = 256 * 1024;
    let out = job.exec.exec(cmd)?;
    if !out.success() {
        bail!(
            "{label} installer {}: {}; output: {}; {}",
            runfile.name,
            out.describe_status(),
            out.diagnostic(),
            installer_log_tail(job)
        );
    }
    Ok(())
}

fn installer_log_tail(job: &Job) -> String {
    match job.root.read(|c| c.read_tail(INSTALLER_LOG, 4096)) {
        Ok(Some(bytes)) => format!(
            "{INSTALLER_LOG}: {}",
            last_lines(&String::from_utf8_lossy(&bytes), 4)
        ),
        _ => format!("{INSTALLER_LOG}: not found"),
    }
}

/// A compute-only install (`--no-opengl-files`) leaves the Vulkan and
/// Vulkan SC loader files naming libraries it did not install (see
/// [`vulkan`]): the loader then fails every application that asks for a
/// device, and loads the implicit layer into each. Such a file goes; one
/// whose library is there stays.
pub fn remove_dangling_loader_files(job: &Job) -> Result<()> {
    let dangling = job.root.read(|c| {
        let Some(Ok(record)) = read_record(c)? else {
            return Ok(Vec::new());
        };
        vulkan::dangling(c, &record, |p| matches!(c.kind(p), Ok(Kind::File)))
    })?;
    if dangling.is_empty() {
        return Ok(());
    }
    for (file, library) in &dangling {
        log::info!("removing {file} (it names {library}, which this install does not have)");
    }
    let mut argv = vec!["rm", "-f", "--"];
    argv.extend(dangling.iter().map(|(file, _)| file.as_str()));
    must(job, ContainerCommand::new(&argv, job.quick()?))?;
    Ok(())
}
