//! `pve-nvidia-hook <vmid> <phase>`: what Proxmox runs. Only post-start does
//! work, and on the up-to-date path it starts no program at all. It never
//! blocks the start: an install runs detached unless `background` is false.
//! A hookscript kept with `enable --chain` runs first, in every phase, as
//! Proxmox would have run it.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{anyhow, Result};

use crate::chain::{self, Chains};
use crate::container::detect;
use crate::context::{Ctx, Lookup, Target};
use crate::decision::{self, Action};
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
    let lookup = match ctx.lookup(vmid) {
        Ok(lookup) => lookup,
        Err(e) if phase != "post-start" => {
            log::error!("{e:#}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if let Lookup::Container(target) = &lookup {
        match run_chained(&ctx, target, phase) {
            Ok(Some(code)) if code != 0 && phase == "pre-start" => {
                log::warn!("chained hookscript vetoed the start (exit status {code})");
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            Ok(Some(code)) if code != 0 => {
                log::warn!("chained hookscript exited with status {code} in {phase}")
            }
            Ok(_) => {}
            // Proxmox would have aborted the start over a hookscript it
            // cannot run; the one we stand in for gets the same.
            Err(e) if phase == "pre-start" => {
                log::error!(
                    "chained hookscript: {e:#}; the start is aborted, as Proxmox would have"
                );
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => log::warn!("chained hookscript: {e:#}; skipped in {phase}"),
        }
    }
    match phase {
        "post-start" => {}
        "pre-stop" | "post-stop" => {
            stop_install(&ctx, vmid);
            return Ok(ExitCode::SUCCESS);
        }
        "pre-start" => {
            log::debug!("{phase}: nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
        other => {
            log::warn!("unknown hook phase '{}', ignored", other.escape_debug());
            return Ok(ExitCode::SUCCESS);
        }
    }
    let target = match lookup {
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
    let installed = detect::detect_in(&root);
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
                super::install::install(&ctx, &target, &host, false, super::install::Origin::Hook)?;
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

/// An install in progress for a container that stops ends: SIGTERM to the
/// process holding its lock, which stops its current program and records
/// why. It would notice the stop by itself, but not before its current
/// wait ends; the stop should not wait for that.
fn stop_install(ctx: &Ctx, vmid: Vmid) {
    let Some(pid) = ctx.locks.holder(vmid, &ctx.config().paths.proc) else {
        return;
    };
    let Some(target) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    match rustix::process::kill_process(target, rustix::process::Signal::TERM) {
        Ok(()) => {
            log::info!("the container is stopping: ending the install in progress (pid {pid})")
        }
        Err(e) => log::warn!("could not end the install in progress (pid {pid}): {e}"),
    }
}

/// The hookscript `enable --chain` kept for this container (the token its
/// tags carry names the record in the cluster file system), run first with
/// the same two arguments, as Proxmox's `exec_hookscript` runs one: the
/// caller's environment with `LC_ALL=C`, no input, its output in the task
/// log. Its exit status; None when there is nothing to run: no chain, or a
/// tag that names no record for this container (tags are not root's, so
/// they never abort a start; logged). An error, as Proxmox would give for
/// its own hookscript, when the recorded script cannot be run: no such
/// storage, missing, not executable.
fn run_chained(ctx: &Ctx, target: &Target, phase: &str) -> Result<Option<i32>> {
    let Some(token) = chain::token(&target.pct) else {
        return Ok(None);
    };
    let pve = &ctx.config().paths.pve;
    let vmid = target.vmid;
    let chains = Chains::new(pve);
    let record = match chains.get(&token) {
        Ok(Some(record)) if record.vmid == vmid.get() => record,
        Ok(Some(record)) => {
            log::error!(
                "the tag {} names CT {}'s chained hookscript, not this container's (a clone, a \
                 restore, or a copied tag): not run. To chain {} here: pct set {vmid} \
                 --hookscript {} && pve-nvidia-hook enable --chain {vmid}",
                chain::tag(&token),
                record.vmid,
                record.chain,
                record.chain
            );
            return Ok(None);
        }
        Ok(None) => {
            log::error!(
                "the tag {} names no chain record in {}: no chained hookscript is run; \
                 run enable --chain again, or remove the tag",
                chain::tag(&token),
                chains.dir().display()
            );
            return Ok(None);
        }
        Err(e) => {
            log::error!("{e:#}: no chained hookscript is run");
            return Ok(None);
        }
    };
    let path = chain::script_path(
        &storage::load(pve)?,
        &record.chain,
        &ctx.config().paths.storage_root,
    )?;
    let status = Command::new(&path)
        .args([vmid.to_string().as_str(), phase])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| anyhow!("script '{}': {e}", record.chain))?;
    Ok(Some(status.code().unwrap_or(1)))
}
