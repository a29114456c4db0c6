//! `pve-nvidia-hook install <vmid> [--force]`, and the install the hook runs
//! (in the foreground or detached): lock, re-check, pipeline, record.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use crate::cli::InstallArgs;
use crate::container::{driver, LxcAttach};
use crate::context::{Ctx, Target};
use crate::decision::{self, Action};
use crate::logging;
use crate::pipeline::{self, Job};
use crate::runfile::Fetcher;
use crate::version::DriverVersion;

pub fn run(config: Option<&Path>, args: &InstallArgs) -> Result<ExitCode> {
    logging::set_vmid(args.vmid);
    let ctx = Ctx::load(config)?;
    let target = ctx.container(args.vmid)?;
    if !target.request.wanted {
        log::warn!("NVIDIA is not requested for this container; installing because you asked");
    }
    install_for_host(&ctx, &target, args.force)?;
    Ok(ExitCode::SUCCESS)
}

/// The install for the version of the host's loaded module.
pub fn install_for_host(ctx: &Ctx, target: &Target, force: bool) -> Result<()> {
    let host = ctx
        .host_version()?
        .ok_or_else(|| anyhow!("no NVIDIA kernel module loaded on the host; nothing to install"))?;
    install(ctx, target, &host, force)
}

pub fn install(ctx: &Ctx, target: &Target, host: &DriverVersion, force: bool) -> Result<()> {
    let vmid = target.vmid;
    ctx.check_config_trusted()?;
    let Some(_lock) = ctx.locks.try_container(vmid)? else {
        log::info!("already installing");
        return Ok(());
    };
    let slots = target.settings.max_concurrent_installs;
    let _slot = ctx.locks.install_slot(slots, || {
        log::info!("waiting for an install slot ({slots} in use)")
    })?;
    // Decided again under the lock: another install may just have finished.
    let root = ctx
        .open_container(vmid)?
        .ok_or_else(|| anyhow!("container is not running"))?;
    let installed = driver::detect(&root);
    if let Action::Install(reason) = decision::decide(host, &installed, force) {
        log::info!("installing NVIDIA driver {host}: {reason}");
    } else {
        log::info!("NVIDIA driver {host} up to date");
        return Ok(());
    }
    let exec = LxcAttach::new(vmid)?;
    let cache = &ctx.config().paths.cache;
    let log_progress = |m: &str| log::info!("{m}");
    let fetcher = Fetcher {
        cache_dir: cache,
        locks: &ctx.locks,
        allow_unverified: target.settings.allow_unverified_download,
        stall_timeout: std::time::Duration::from_secs(target.settings.download_timeout_secs),
        log: &log_progress,
    };
    let job = Job {
        settings: &target.settings,
        host,
        installed: &installed,
        ostype: target.pct.ostype(),
        exec: &exec,
        root: &root,
        fetcher: &fetcher,
    };
    let outcome = pipeline::run(&job);
    if let Err(e) = ctx.results.record(vmid, &host.to_string(), &outcome) {
        log::warn!("could not record the result: {e:#}");
    }
    outcome.with_context(|| format!("installing NVIDIA driver {host}"))?;
    log::info!("NVIDIA driver {host} installed and verified");
    Ok(())
}
