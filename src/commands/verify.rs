//! `pve-nvidia-hook verify <vmid>`: nvidia-smi inside the container against
//! the host's version, exactly (and nvcc when CUDA is configured).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use crate::container::LxcAttach;
use crate::context::Ctx;
use crate::logging;
use crate::pipeline;
use crate::vmid::Vmid;

pub fn run(config: Option<&Path>, vmid: Vmid) -> Result<ExitCode> {
    logging::set_vmid(vmid);
    let ctx = Ctx::load(config)?;
    let target = ctx.container(vmid)?;
    let host = ctx
        .host_version()?
        .ok_or_else(|| anyhow!("no NVIDIA kernel module loaded on the host"))?;
    let root = ctx
        .open_container(vmid)?
        .ok_or_else(|| anyhow!("container is not running"))?;
    let exec = LxcAttach::new(vmid)?;
    let cuda = target.settings.cuda.is_some();
    let reported = pipeline::verify(&exec, &root, &host, &target.settings)?;
    println!(
        "CT {vmid}: nvidia-smi reports {reported}, the host's module is {host}: OK{}",
        if cuda { "; nvcc runs" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
