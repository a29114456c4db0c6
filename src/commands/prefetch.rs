//! `pve-nvidia-hook prefetch [VERSION]`: a driver version's runfile,
//! downloaded and verified into the cache ahead of time, by default for the
//! NVIDIA module the next boot loads (see [`kernels`]), so that the installs
//! after a host upgrade's reboot wait for no download. It goes through the
//! installs' own fetcher and cache: on a cluster with a shared cache, one
//! download serves every node.
//!
//! The package's apt hook runs it after each dpkg run (`--after-dpkg`). That
//! returns at once unless the next boot would load another NVIDIA module
//! than the one loaded now, not fetched yet; then it starts the fetch
//! detached (its own unit, or session) and returns: apt never waits for the
//! network, and nothing here ever fails apt.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};

use crate::cli::PrefetchArgs;
use crate::config::Settings;
use crate::context::{Ctx, Lookup};
use crate::kernels::{self, NextBoot};
use crate::version::DriverVersion;
use crate::{detach, logging, pipeline};

pub fn run(config: Option<&Path>, args: &PrefetchArgs) -> Result<ExitCode> {
    // A stopped unit ends its download cleanly (see `cancel`).
    crate::cancel::on_sigterm();
    let ctx = match Ctx::load(config) {
        Ok(ctx) => ctx,
        Err(e) if args.after_dpkg => {
            log::warn!("not prefetching: {e:#}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if args.after_dpkg {
        after_dpkg(&ctx);
        return Ok(ExitCode::SUCCESS);
    }
    let version = match &args.version {
        Some(v) => v.clone(),
        None => match kernels::next_boot(&ctx.config().paths)? {
            NextBoot::Module { kernel, version } => {
                log::info!("the next boot loads kernel {kernel} with NVIDIA {version}");
                version
            }
            NextBoot::NoModule { kernel } => bail!(
                "the next boot loads kernel {kernel}, which has no NVIDIA module (none built \
                 for it?); name the version: pve-nvidia-hook prefetch <version>"
            ),
            NextBoot::NoKernel => bail!(
                "no installed kernel in {}; name the version: pve-nvidia-hook prefetch <version>",
                ctx.config().paths.modules.display()
            ),
        },
    };
    fetch(&ctx, &version)
}

/// Every runfile source this node's containers would fetch `version`
/// from (the global one, and each requesting container's own), once each.
fn fetch(ctx: &Ctx, version: &DriverVersion) -> Result<ExitCode> {
    // Held while fetching: the apt hook starts no second fetch meanwhile.
    let _fetching = ctx.locks.try_prefetch()?;
    let mut failed = 0;
    for settings in sources(ctx, version)? {
        let log_progress = |m: &str| log::info!("{m}");
        let fetcher = ctx.fetcher(&settings, &log_progress);
        match pipeline::driver_runfile(&settings, version, &fetcher) {
            Ok(runfile) => log::info!(
                "{} ({}) is in the cache{}",
                runfile.name,
                logging::size(runfile.size),
                runfile
                    .expected
                    .as_deref()
                    .map(|d| format!(", sha256 {d}"))
                    .unwrap_or_default()
            ),
            Err(e) => {
                log::error!("NVIDIA {version}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(anyhow!(
            "{failed} runfile source(s) for NVIDIA {version} could not be fetched"
        ));
    }
    if let Err(e) = ctx.results.record_prefetched(&version.to_string()) {
        log::warn!("could not record the prefetch: {e:#}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings whose runfile sources differ for `version`: the global
/// ones, and those of each container of this node that requests NVIDIA.
fn sources(ctx: &Ctx, version: &DriverVersion) -> Result<Vec<Settings>> {
    let mut all = vec![ctx.config().global_settings()];
    for vmid in ctx.all_containers()? {
        match ctx.lookup(vmid) {
            Ok(Lookup::Container(t)) if t.request.wanted => all.push(t.settings),
            Ok(_) => {}
            Err(e) => log::debug!("CT {vmid}: {e:#}"),
        }
    }
    let key = |s: &Settings| {
        (
            s.runfile_urls(version),
            s.configured_digest(version),
            s.allow_unverified_download,
        )
    };
    let mut distinct: Vec<Settings> = Vec::new();
    for s in all {
        if !distinct.iter().any(|d| key(d) == key(&s)) {
            distinct.push(s);
        }
    }
    Ok(distinct)
}

/// After a dpkg run: the fetch started in the background when the next
/// boot loads another NVIDIA module than the one loaded now, and it has
/// not been fetched; otherwise nothing, in milliseconds, without the
/// network. Never an error: apt goes on whatever happens here.
fn after_dpkg(ctx: &Ctx) {
    let (kernel, version) = match kernels::next_boot(&ctx.config().paths) {
        Ok(NextBoot::Module { kernel, version }) => (kernel, version),
        Ok(other) => {
            log::debug!("nothing to prefetch: {other:?}");
            return;
        }
        Err(e) => {
            log::warn!("not prefetching: {e:#}");
            return;
        }
    };
    let loaded = ctx.host_version().unwrap_or_else(|e| {
        log::debug!("{e:#}");
        None
    });
    if loaded.as_ref() == Some(&version) {
        log::debug!("the next boot loads the NVIDIA module loaded now ({version})");
        return;
    }
    if ctx
        .results
        .prefetched()
        .is_some_and(|p| p.version == version.to_string())
    {
        log::debug!("NVIDIA {version} was fetched already");
        return;
    }
    if ctx.locks.is_prefetching() {
        log::debug!("a prefetch is running");
        return;
    }
    let now = loaded
        .map(|l| format!(", {l} now"))
        .unwrap_or_else(|| ", none loaded now".into());
    match detach::spawn_prefetch(ctx, &version) {
        Ok(log_file) => log::info!(
            "the next boot loads NVIDIA {version} (kernel {kernel}{now}): fetching its runfile \
             in the background; log: {}",
            log_file.display()
        ),
        Err(e) => log::warn!("could not start fetching NVIDIA {version}: {e:#}"),
    }
}
