//! `pve-nvidia-hook <vmid> <phase>`: what Proxmox runs. Only post-start does
//! work, and on the up-to-date path it starts no program at all. It never
//! blocks the start: an install runs detached unless `background` is false.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{Ctx, Lookup};
use crate::container::driver;
use crate::decision::{self, Action};
use crate::vmid::Vmid;
use crate::{detach, logging};

pub fn run(config: Option<&Path>, vmid: Vmid, phase: &str) -> Result<ExitCode> {
    logging::set_vmid(vmid);
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
    let ctx = Ctx::load(config)?;
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
    let Some(root) = ctx.open_container(vmid)? else {
        log::warn!("container is not running; nothing to check");
        return Ok(ExitCode::SUCCESS);
    };
    let installed = driver::detect(&root);
    drop(root);
    match decision::decide(&host, &installed, false) {
        Action::UpToDate => {
            log::info!("NVIDIA driver {host} up to date");
            Ok(ExitCode::SUCCESS)
        }
        Action::Install(reason) => {
            log::info!("install needed: {reason}");
            if !target.settings.background {
                return super::install::install(&ctx, &target, &host, false);
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
