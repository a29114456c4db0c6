//! `pve-nvidia-hook install <vmid> [--force]`, and the install the hook runs
//! (in the foreground or detached): lock, re-check, pipeline, record.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::InstallArgs;
use crate::container::{detect, LxcAttach};
use crate::context::{Ctx, Target};
use crate::decision::{self, Action};
use crate::logging;
use crate::pipeline::{self, Budget, Installed, Job, Warning};
use crate::published::{self, Seen};
use crate::runfile::{self, Cache, Fetcher};
use crate::version::DriverVersion;
use crate::vmid::Vmid;
use crate::{cluster, decision::State};

/// The result, for `status --cluster` on the other nodes.
fn publish(
    ctx: &Ctx,
    vmid: Vmid,
    host: &DriverVersion,
    outcome: Result<&[String], &anyhow::Error>,
) {
    let pve = &ctx.config().paths.pve;
    let seen = Seen {
        state: if outcome.is_ok() {
            State::UpToDate
        } else {
            State::Failed
        },
        container_version: outcome.is_ok().then(|| host.to_string()),
        detail: match outcome {
            Ok([]) => None,
            Ok(warnings) => Some(warnings.join("; ")),
            Err(e) => Some(format!("{e:#}")),
        },
        at_unix: crate::state::unix_now(),
    };
    let node = cluster::node_name(pve);
    if let Err(e) = published::publish(pve, &ctx.locks, &node, Some(host), [(vmid, seen)]) {
        log::debug!("could not publish the result: {e:#}");
    }
}

pub fn run(config: Option<&Path>, args: &InstallArgs) -> Result<ExitCode> {
    logging::set_vmid(args.vmid);
    // The container's pre-stop or post-stop ends this install (see `cancel`).
    crate::cancel::on_sigterm();
    let ctx = Ctx::load(config)?;
    let target = ctx.container(args.vmid)?;
    if !target.request.wanted {
        log::warn!("NVIDIA is not requested for this container; installing because you asked");
    }
    install_for_host(&ctx, &target, args.force, !args.from_hook)?;
    Ok(ExitCode::SUCCESS)
}

/// The install for the version of the host's loaded module.
pub fn install_for_host(
    ctx: &Ctx,
    target: &Target,
    force: bool,
    foreground: bool,
) -> Result<Installed> {
    let host = ctx
        .host_version()?
        .ok_or_else(|| anyhow!("no NVIDIA kernel module loaded on the host; nothing to install"))?;
    install(ctx, target, &host, force, foreground)
}

/// `foreground`: someone waits (a terminal, or a start with `background:
/// false`), so a wait for an install slot is bounded by `slot_wait_secs`.
///
/// Ok is the host's driver installed and verified; its
/// [`Installed::warnings`] say what the container still lacks (a CUDA
/// toolkit refused, a passthrough gap) or what was done to it (a record
/// moved aside). They are logged, and recorded with the result.
pub fn install(
    ctx: &Ctx,
    target: &Target,
    host: &DriverVersion,
    force: bool,
    foreground: bool,
) -> Result<Installed> {
    let vmid = target.vmid;
    let settings = &target.settings;
    let budget = Budget::new(settings.limits.install_budget);
    let Some(_lock) = ctx.locks.try_container(vmid)? else {
        log::info!("already installing");
        return Ok(Installed::default());
    };
    // Decided again under the lock: another install may just have finished.
    let root = ctx
        .open_container(vmid)?
        .ok_or_else(|| anyhow!("container is not running"))?;
    // Nothing of this install outlives the container it is for.
    let _watching = crate::cancel::watch(root.init().pidfd())
        .with_context(|| format!("CT {vmid}: watching its init"))?;
    let installed = detect::detect_in(&root);
    match decision::decide(host, &installed, force) {
        Action::Install(reason) => log::info!("installing NVIDIA driver {host}: {reason}"),
        Action::UpToDate => {
            log::info!("NVIDIA driver {host} up to date");
            return Ok(Installed::default());
        }
        Action::Skip(why) => bail!("not installing: {why}"),
    }
    let exec = LxcAttach::new(vmid)?;
    let paths = &ctx.config().paths;
    let log_progress = |m: &str| log::info!("{m}");
    let fetcher = Fetcher {
        cache: Cache {
            dir: paths.cache.clone(),
            fallback: (paths.local_cache != paths.cache).then(|| paths.local_cache.clone()),
        },
        locks: &ctx.locks,
        allow_unverified: settings.allow_unverified_download,
        limits: runfile::limits(
            settings.limits.download_timeout,
            settings.limits.download_max,
            settings.limits.max_download,
        ),
        log: &log_progress,
    };
    let job = Job {
        vmid,
        settings,
        host,
        installed: &installed,
        ostype: target.pct.ostype(),
        exec: &exec,
        root: &root,
        fetcher: &fetcher,
        locks: &ctx.locks,
        budget,
        foreground,
    };
    let outcome = pipeline::run(&job);
    if let Err(e) = &outcome {
        if crate::cancel::is_cancelled(e) {
            log::warn!("{e:#}");
        }
    }
    // A passthrough gap is not recorded: `status` reads it live, and it
    // goes when the node is passed, without another install.
    let warnings: Vec<String> = outcome
        .as_ref()
        .map(|i| {
            i.warnings
                .iter()
                .filter(|w| !matches!(w, Warning::PassthroughGap { .. }))
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let shown = outcome.as_ref().map(|_| warnings.as_slice());
    if let Err(e) = ctx.results.record(vmid, &host.to_string(), shown) {
        log::warn!("could not record the result: {e:#}");
    }
    publish(ctx, vmid, host, shown);
    let installed = outcome.with_context(|| format!("installing NVIDIA driver {host}"))?;
    match installed.warnings.len() {
        0 => log::info!("NVIDIA driver {host} installed and verified"),
        n => log::warn!(
            "NVIDIA driver {host} installed and verified, with {n} warning{} (above)",
            if n == 1 { "" } else { "s" }
        ),
    }
    Ok(installed)
}
