//! `pve-nvidia-hook verify <vmid>`: the whole installation against the
//! host's version: every file the record lists, the libraries' sonames,
//! nvidia-smi inside, the device nodes, nvcc when CUDA is configured; and
//! what the driver offers (CUDA, NVENC/NVDEC, OpenCL, Vulkan, EGL/GL). A
//! passthrough gap or a CUDA toolkit the host's driver cannot run is a
//! warning line, not a failure.

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
    let verified = pipeline::verify(
        &exec,
        &root,
        &host,
        &target.settings,
        vmid,
        target.settings.limits.command_timeout,
    )?;
    let nvcc_ran = cuda
        && !verified
            .warnings
            .iter()
            .any(|w| matches!(w, pipeline::Warning::CudaRefused { .. }));
    println!(
        "CT {vmid}: nvidia-smi reports {}, the host's module is {host}: OK{}; {}",
        verified.reported,
        if nvcc_ran { "; nvcc runs" } else { "" },
        verified.capabilities()
    );
    // The driver is whole: what it still lacks is said, and is no failure.
    for w in &verified.warnings {
        println!("CT {vmid}: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
