//! `pve-nvidia-hook <vmid> <phase>`: what Proxmox runs. Only post-start does
//! work, and on the up-to-date path it starts no program at all. It never
//! blocks the start: an install runs detached unless `background` is false.
//! A hookscript kept with `enable --chain` runs first, in every phase.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Result;

use crate::container::driver;
use crate::context::{Ctx, Lookup};
use crate::decision::{self, Action};
use crate::process::SAFE_PATH;
use crate::state::Chains;
use crate::vmid::Vmid;
use crate::{detach, logging, storage};

pub fn run(config: Option<&Path>, vmid: Vmid, phase: &str) -> Result<ExitCode> {
    logging::set_vmid(vmid);
    let ctx = match Ctx::load(config) {
        Ok(ctx) => ctx,
        Err(e) if phase != "post-start" => {
            // Never abort a start (or a stop) over this tool's own configuration.
            log::error!("{e:#}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if let Some(code) = run_chained(&ctx, vmid, phase) {
        if code != 0 && phase == "pre-start" {
            log::warn!("chained hookscript vetoed the start (exit status {code})");
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        if code != 0 {
            log::warn!("chained hookscript exited with status {code} in {phase}");
        }
    }
    match phase {
        "post-start" => {}
        "pre-start" | "pre-stop" | "post-stop" => {
            log::debug!("{phase}: nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
        other => {
            log::warn!("unknown hook phase '{}', ignored", other.escape_debug());
            return Ok(ExitCode::SUCCESS);
        }
    }
    let target = match ctx.lookup(vmid)? {
        Lookup::Container(t) => t,
        Lookup::Vm => {
            log::warn!("{vmid} is a virtual machine; this hook is for containers");
            return Ok(ExitCode::SUCCESS);
        }
        Lookup::Missing => {
            log::warn!("no container config for {vmid}; nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if !target.request.wanted {
        log::debug!("NVIDIA not requested");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(host) = ctx.host_version()? else {
        log::warn!("no NVIDIA kernel module loaded on the host; nothing to install");
        return Ok(ExitCode::SUCCESS);
    };
    let root = match ctx.open_container(vmid) {
        Ok(Some(root)) => root,
        Ok(None) => {
            log::warn!("container is not running; nothing to check");
            return Ok(ExitCode::SUCCESS);
        }
        // A container whose files cannot be opened in time is not a reason
        // to fail its start: cannot tell, so nothing is installed.
        Err(e) => {
            log::warn!("cannot tell what is installed, so nothing is: {e:#}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let installed = driver::detect_in(&root);
    drop(root);
    match decision::decide(&host, &installed, false) {
        Action::UpToDate => {
            log::info!("NVIDIA driver {host} up to date");
            Ok(ExitCode::SUCCESS)
        }
        Action::Skip(why) => {
            log::warn!("{why}");
            Ok(ExitCode::SUCCESS)
        }
        Action::Install(reason) => {
            log::info!("install needed: {reason}");
            if !target.settings.background {
                super::install::install(&ctx, &target, &host, false, true)?;
                return Ok(ExitCode::SUCCESS);
            }
            if ctx.locks.is_installing(vmid) {
                log::info!("already installing");
                return Ok(ExitCode::SUCCESS);
            }
            let log_file = detach::spawn_install(&ctx, vmid)?;
            log::info!(
                "install started in the background; log: {}",
                log_file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The hookscript `enable --chain` found on the container, run first with the
/// same two arguments and Proxmox's stdout and stderr. Its exit status, or
/// None when there is none (or it cannot be run: a warning, never a veto of
/// ours).
fn run_chained(ctx: &Ctx, vmid: Vmid, phase: &str) -> Option<i32> {
    let volume = Chains::new(&ctx.config().paths.state).get(vmid)?;
    let path = storage::load(&ctx.config().paths.pve)
        .ok()
        .and_then(|storages| storage::resolve_volume(&storages, &volume));
    let Some(path) = path else {
        log::warn!("chained hookscript {volume}: no such storage or volume; skipped");
        return None;
    };
    let status = Command::new(&path)
        .args([vmid.to_string().as_str(), phase])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(status) => Some(status.code().unwrap_or(1)),
        Err(e) => {
            log::warn!("chained hookscript {}: {e}; skipped", path.display());
            None
        }
    }
}
