//! `pve-nvidia-hook devices`: what `pve-nvidia-hook-devices.service` runs
//! at boot, before `pve-guests.service`: `nvidia-uvm` loaded and every
//! NVIDIA device node made (see [`crate::devices`]). One line per node in
//! the journal; a host without NVIDIA's module gets one line and exit 0.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::context::Ctx;
use crate::devices::{self, is_required, Made};

pub fn run(config: Option<&Path>) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let paths = &ctx.config().paths;
    let made = devices::make_nodes(&paths.sys, &paths.proc, &paths.dev)?;
    match &made {
        Made::NoModule => log::warn!(
            "no NVIDIA kernel module is loaded ({} or {} is missing): the device nodes are left alone",
            paths.sys.join("module/nvidia/version").display(),
            paths.proc.join("driver/nvidia").display()
        ),
        Made::Nodes {
            results,
            warnings,
            problems,
        } => {
            for w in warnings {
                log::warn!("{w}");
            }
            for (node, did) in results {
                match did {
                    Ok(did) => log::info!("{}: {}", node.describe(&paths.dev), did.as_str()),
                    Err(e) if is_required(&node.name) => log::error!("{e:#}"),
                    Err(e) => log::warn!("{e:#}"),
                }
            }
            for p in problems {
                log::error!("{p}");
            }
        }
    }
    Ok(if made.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
