//! `pve-nvidia-hook install <vmid> [--force]`, and the install the hook runs
//! (in the foreground or detached) and `sync` starts: lock, re-check,
//! pipeline, record; then the container's workloads that still map the old
//! driver, and the report.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::InstallArgs;
use crate::container::{detect, LxcAttach};
use crate::context::{Ctx, Target};
use crate::decision::{self, Action};
use crate::logging;
pub use crate::pipeline::Origin;
use crate::pipeline::{self, Budget, Job};
use crate::published::{self, Seen};
use crate::version::DriverVersion;
use crate::vmid::Vmid;
use crate::workloads::{self, AfterInstall};
use crate::{cluster, decision::State};

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    UpToDate,
    /// Another process holds the container's install lock.
    AlreadyInstalling,
    Installed {
        host: DriverVersion,
        /// What the container had before.
        from: Option<DriverVersion>,
    },
}

/// The result, for `status --cluster` on the other nodes.
fn publish(ctx: &Ctx, vmid: Vmid, host: &DriverVersion, outcome: &Result<()>) {
    let pve = &ctx.config().paths.pve;
    let seen = Seen {
        state: if outcome.is_ok() {
            State::UpToDate
        } else {
            State::Failed
        },
        container_version: outcome.is_ok().then(|| host.to_string()),
        detail: outcome.as_ref().err().map(|e| format!("{e:#}")),
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
    let origin = if args.from_hook {
        Origin::Background
    } else {
        Origin::Terminal
    };
    install_for_host(&ctx, &target, args.force, origin)?;
    Ok(ExitCode::SUCCESS)
}

/// The install for the version of the host's loaded module.
pub fn install_for_host(ctx: &Ctx, target: &Target, force: bool, origin: Origin) -> Result<Done> {
    let host = ctx
        .host_version()?
        .ok_or_else(|| anyhow!("no NVIDIA kernel module loaded on the host; nothing to install"))?;
    install(ctx, target, &host, force, origin)
}

/// The install, then, once it has let the container go (its lock, the
/// watch on its init: a `pct reboot` runs the container's stop phases,
/// which end any install in progress), what follows a driver replaced
/// under running workloads, and the report.
pub fn install(
    ctx: &Ctx,
    target: &Target,
    host: &DriverVersion,
    force: bool,
    origin: Origin,
) -> Result<Done> {
    let outcome = install_locked(ctx, target, host, force, origin.foreground());
    let after = match &outcome {
        Ok(Done::Installed { host, .. }) => {
            Some(workloads::after_install(ctx, target, host, origin))
        }
        _ => None,
    };
    report_outcome(target.vmid, &outcome, after.as_ref());
    outcome
}

/// The one place an install's outcome is told, once everything it did is
/// known: the log's summary line. The admin's notification (issue 17.3)
/// belongs here too, for a background install, with `after`: the processes
/// that still map the old driver, and what was restarted.
fn report_outcome(vmid: Vmid, outcome: &Result<Done>, after: Option<&AfterInstall>) {
    let Ok(Done::Installed { host, from }) = outcome else {
        return;
    };
    let from = from
        .as_ref()
        .map(|v| format!(" (replacing {v})"))
        .unwrap_or_default();
    let workloads = after.map(AfterInstall::summary).unwrap_or_default();
    log::info!(
        "{}",
        logging::scoped(
            vmid,
            &format!("result: NVIDIA driver {host} installed{from}{workloads}")
        )
    );
}

/// `foreground`: someone waits (a terminal, or a start with `background:
/// false`), so a wait for an install slot is bounded by `slot_wait_secs`.
fn install_locked(
    ctx: &Ctx,
    target: &Target,
    host: &DriverVersion,
    force: bool,
    foreground: bool,
) -> Result<Done> {
    let vmid = target.vmid;
    let settings = &target.settings;
    let budget = Budget::new(settings.limits.install_budget);
    let Some(_lock) = ctx.locks.try_container(vmid)? else {
        log::info!("already installing");
        return Ok(Done::AlreadyInstalling);
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
            return Ok(Done::UpToDate);
        }
        Action::Skip(why) => bail!("not installing: {why}"),
    }
    let exec = LxcAttach::new(vmid)?;
    let log_progress = |m: &str| log::info!("{m}");
    let fetcher = ctx.fetcher(settings, &log_progress);
    let job = Job {
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
    if let Err(e) = ctx.results.record(vmid, &host.to_string(), &outcome) {
        log::warn!("could not record the result: {e:#}");
    }
    publish(ctx, vmid, host, &outcome);
    outcome.with_context(|| format!("installing NVIDIA driver {host}"))?;
    log::info!("NVIDIA driver {host} installed and verified");
    Ok(Done::Installed {
        host: host.clone(),
        from: installed.version().cloned(),
    })
}
