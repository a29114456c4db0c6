//! `pve-nvidia-hook <vmid> <phase>`: what Proxmox runs. Only post-start does
//! work, and on the up-to-date path it starts no program at all. It never
//! blocks the start: an install runs detached unless `background` is false.
//! A hookscript kept with `enable --chain` runs first, in every phase, as
//! Proxmox would have run it, whatever became of this tool's own
//! configuration.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{anyhow, bail, Result};

use crate::chain::{self, Chains};
use crate::cli::Phase;
use crate::config::{self, Paths};
use crate::container::detect;
use crate::context::{self, Ctx, Guest, Lookup};
use crate::decision::{self, Action};
use crate::pct_config::PctConfig;
use crate::vmid::Vmid;
use crate::{detach, logging, storage};

pub fn run(config: Option<&Path>, vmid: Vmid, phase: Phase) -> Result<ExitCode> {
    logging::set_vmid(vmid);
    let loaded = Ctx::load(config);
    let fallback;
    let paths = match &loaded {
        Ok(ctx) => &ctx.config().paths,
        Err(e) => {
            // Said at once: a veto below returns; post-start fails with it.
            if phase != Phase::PostStart {
                log::error!("{e:#}");
            }
            fallback = config::paths_anyway(config);
            &fallback
        }
    };
    // The container's config, read once: the chain reads its hookscript,
    // the rest whether NVIDIA is requested.
    let guest = context::read_guest(&paths.pve, vmid);
    // The chain first, whatever became of this tool's configuration: a
    // broken configuration of ours never lets a start through that the
    // site's own script would have vetoed.
    if let Ok(Guest::Container { pct, .. }) = &guest {
        if let Some(code) = chained(paths, vmid, pct, &phase) {
            return Ok(code);
        }
    }
    let ctx = match loaded {
        Ok(ctx) => ctx,
        // Never abort a start (or a stop) over this tool's own configuration.
        Err(_) if phase != Phase::PostStart => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e),
    };
    match phase {
        Phase::PostStart => post_start(&ctx, vmid, guest?),
        Phase::PreStop | Phase::PostStop => {
            stop_install(&ctx, vmid);
            Ok(ExitCode::SUCCESS)
        }
        Phase::PreStart => {
            log::debug!("{phase}: nothing to do");
            Ok(ExitCode::SUCCESS)
        }
        Phase::Other(word) => {
            log::warn!("unknown hook phase '{}', ignored", word.escape_debug());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn post_start(ctx: &Ctx, vmid: Vmid, guest: Guest) -> Result<ExitCode> {
    let target = match ctx.lookup_read(vmid, guest)? {
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
                super::install::install(ctx, &target, &host, false, super::install::Origin::Hook)?;
                return Ok(ExitCode::SUCCESS);
            }
            if ctx.locks.is_installing(vmid) {
                log::info!("already installing");
                return Ok(ExitCode::SUCCESS);
            }
            let log_file = detach::spawn_install(ctx, vmid)?;
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

/// What the chained hookscript means for this phase: the exit status to
/// give Proxmox at once (its veto of a start, or a start aborted because a
/// chain recorded for this container cannot be run), or None to go on.
fn chained(paths: &Paths, vmid: Vmid, pct: &PctConfig, phase: &Phase) -> Option<ExitCode> {
    match run_chained(paths, vmid, pct, phase) {
        Ok(Some(code)) if code != 0 && *phase == Phase::PreStart => {
            log::warn!("chained hookscript vetoed the start (exit status {code})");
            Some(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Ok(Some(code)) if code != 0 => {
            log::warn!("chained hookscript exited with status {code} in {phase}");
            None
        }
        Ok(_) => None,
        // Proxmox would have aborted the start over a hookscript it cannot
        // run; the one we stand in for gets the same.
        Err(e) if *phase == Phase::PreStart => {
            log::error!("chained hookscript: {e:#}; the start is aborted, as Proxmox would have");
            Some(ExitCode::FAILURE)
        }
        Err(e) => {
            log::warn!("chained hookscript: {e:#}; skipped in {phase}");
            None
        }
    }
}

/// The hookscript `enable --chain` kept for this container, found through
/// its hookscript (root's alone: see `chain`), run first with the same two
/// arguments, as Proxmox's `exec_hookscript` runs one: the caller's
/// environment with `LC_ALL=C`, no input, its output in the task log. Its
/// exit status; None when nothing is chained for this container. An error
/// (which aborts `pre-start`) when a chain is named but cannot be run: its
/// record is gone or unreadable, its script is missing or not executable.
fn run_chained(paths: &Paths, vmid: Vmid, pct: &PctConfig, phase: &Phase) -> Result<Option<i32>> {
    let chains = Chains::new(&paths.pve);
    let (token, legacy) = match chain::link(pct) {
        chain::Link::None => return Ok(None),
        chain::Link::Hookscript(token) => (token, false),
        chain::Link::LegacyTag(token) => (token, true),
    };
    let record = match chains.get(&token)? {
        Some(record) if record.vmid == vmid.get() => record,
        // A clone's, or a restore's under a new vmid: that container's
        // script is not run for this one, and its start goes on.
        Some(record) => {
            log::error!(
                "the chain its hookscript names is CT {}'s ({}; a clone, or a restore under a new \
                 vmid): not run for this container. To chain it here too: pve-nvidia-hook enable \
                 --chain {vmid}",
                record.vmid,
                record.chain
            );
            return Ok(None);
        }
        None if legacy => {
            log::error!(
                "the tag {} names no chain record: no chained hookscript is run",
                chain::legacy_tag(&token)
            );
            return Ok(None);
        }
        None => bail!(
            "the chain its hookscript names has no record in {}, so the hookscript it chained \
             cannot be run; set the container's own hookscript again (pct set {vmid} \
             --hookscript <volume>) and run pve-nvidia-hook enable --chain {vmid}",
            chains.dir().display()
        ),
    };
    if legacy {
        log::warn!(
            "chained through the tag {}, as before pve-nvidia-hook 0.3: any user who may edit the \
             container's tags can switch it off; run pve-nvidia-hook enable --chain {vmid} to chain \
             it through the hookscript",
            chain::legacy_tag(&token)
        );
    }
    let path = chain::script_path(
        &storage::load(&paths.pve)?,
        &record.chain,
        &paths.storage_root,
    )?;
    let status = Command::new(&path)
        .args([vmid.to_string(), phase.to_string()])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| anyhow!("script '{}': {e}", record.chain))?;
    Ok(Some(status.code().unwrap_or(1)))
}
