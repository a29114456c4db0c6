//! Starting the install so that the start task does not wait for it (and
//! the apt hook's fetch, so that apt does not).
//! Proxmox reads the hook's stdout and stderr until both close, holding the
//! container's config lock (and, at boot, every later guest): the install
//! runs with its output in `<log>/<vmid>.log`, in its own session, or in its
//! own transient systemd unit where systemd runs, so that a restart of the
//! Proxmox daemons does not take it down. The logs hold what a tenant's
//! programs printed and the host's paths: root's alone (a 0700 folder, 0600
//! files, whoever creates them).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::config::Paths;
use crate::context::Ctx;
use crate::fsutil;
use crate::process::{self, Limits};
use crate::version::DriverVersion;
use crate::vmid::Vmid;

/// Where the background install of `vmid` writes.
pub fn log_file(paths: &Paths, vmid: Vmid) -> PathBuf {
    paths.log.join(format!("{vmid}.log"))
}

pub fn spawn_install(ctx: &Ctx, vmid: Vmid) -> Result<PathBuf> {
    let log_file = log_file(&ctx.config().paths, vmid);
    let args = ["install", &vmid.to_string(), "--from-hook"].map(String::from);
    spawn(
        ctx,
        &format!("pve-nvidia-hook-install-{vmid}"),
        &args,
        &log_file,
    )?;
    Ok(log_file)
}

/// The fetch the apt hook starts, so that apt never waits for a download:
/// `prefetch <version>` in its own unit (or session), its output in
/// `<log>/prefetch.log`.
pub fn spawn_prefetch(ctx: &Ctx, version: &DriverVersion) -> Result<PathBuf> {
    let log_file = ctx.config().paths.log.join("prefetch.log");
    let args = ["prefetch", &version.to_string(), "--detached"].map(String::from);
    spawn(ctx, "pve-nvidia-hook-prefetch", &args, &log_file)?;
    Ok(log_file)
}

/// Starts this program with `args` (and our configuration file) so that
/// the caller waits for nothing: in the transient unit `unit` where systemd
/// runs, else in a session of its own, its output appended to `log_file`.
fn spawn(ctx: &Ctx, unit: &str, args: &[String], log_file: &Path) -> Result<()> {
    let paths = &ctx.config().paths;
    fsutil::ensure_root_only_dir(&paths.log)?;
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut args = args.to_vec();
    if let Some(file) = &ctx.loaded.file {
        args.push("--config".into());
        args.push(file.display().to_string());
    }
    if systemd_runs(ctx) {
        if let Some(systemd_run) = process::find_program("systemd-run") {
            let mut unit_args = vec![
                format!("--unit={unit}"),
                "--collect".to_string(),
                "--quiet".to_string(),
                // systemd creates the output file with 0666 less the unit's
                // umask (its default is 0022: readable by every user).
                "--property=UMask=0077".to_string(),
                format!("--property=StandardOutput=append:{}", log_file.display()),
                format!("--property=StandardError=append:{}", log_file.display()),
                format!(
                    "--setenv=PATH={}",
                    std::env::var("PATH").unwrap_or_else(|_| process::SAFE_PATH.into())
                ),
                "--".to_string(),
                exe.display().to_string(),
            ];
            unit_args.extend(args.iter().cloned());
            let out = process::run_with(
                &systemd_run,
                &unit_args,
                None,
                Limits::quick(std::time::Duration::from_secs(30)),
            )?;
            if out.success() {
                return Ok(());
            }
            log::warn!(
                "systemd-run failed ({}); starting it in its own session",
                out.diagnostic()
            );
        }
    }
    let out = fsutil::open_append_nofollow(log_file, 0o600)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .env_clear()
        // Our own PATH: it is where lxc-attach was found for this host.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| process::SAFE_PATH.into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    log::debug!("{unit} is pid {}", child.id());
    Ok(())
}

fn systemd_runs(ctx: &Ctx) -> bool {
    std::fs::read_to_string(ctx.config().paths.proc.join("1/comm"))
        .is_ok_and(|c| c.trim() == "systemd")
}
