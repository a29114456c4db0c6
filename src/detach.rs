//! Starting the install so that the start task does not wait for it.
//! Proxmox reads the hook's stdout and stderr until both close, holding the
//! container's config lock (and, at boot, every later guest): the install
//! runs with its output in `<log>/<vmid>.log`, in its own session, or in its
//! own transient systemd unit where systemd runs, so that a restart of the
//! Proxmox daemons does not take it down. The logs hold what a tenant's
//! programs printed and the host's paths: root's alone (a 0700 folder, 0600
//! files, whoever creates them).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::config::Paths;
use crate::context::Ctx;
use crate::fsutil;
use crate::process::{self, Limits};
use crate::vmid::Vmid;

/// Where the background install of `vmid` writes.
pub fn log_file(paths: &Paths, vmid: Vmid) -> PathBuf {
    paths.log.join(format!("{vmid}.log"))
}

pub fn spawn_install(ctx: &Ctx, vmid: Vmid) -> Result<PathBuf> {
    let paths = &ctx.config().paths;
    fsutil::ensure_root_only_dir(&paths.log)?;
    let log_file = log_file(paths, vmid);
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut args = vec![
        "install".to_string(),
        vmid.to_string(),
        "--from-hook".to_string(),
    ];
    if let Some(file) = &ctx.loaded.file {
        args.push("--config".into());
        args.push(file.display().to_string());
    }
    if systemd_runs(ctx) {
        if let Some(systemd_run) = process::find_program("systemd-run") {
            let mut unit_args = vec![
                format!("--unit=pve-nvidia-hook-install-{vmid}"),
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
                return Ok(log_file);
            }
            log::warn!(
                "systemd-run failed ({}); starting the install in its own session",
                out.diagnostic()
            );
        }
    }
    let out = fsutil::open_append_nofollow(&log_file, 0o600)?;
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
    log::debug!("background install is pid {}", child.id());
    Ok(log_file)
}

fn systemd_runs(ctx: &Ctx) -> bool {
    std::fs::read_to_string(ctx.config().paths.proc.join("1/comm"))
        .is_ok_and(|c| c.trim() == "systemd")
}
