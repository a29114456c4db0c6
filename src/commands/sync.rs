//! `pve-nvidia-hook sync [--backoff]`: every running container of this node
//! that requests NVIDIA, checked now as the hook checks it at a start, and
//! installed in the background where needed (the hook's own detached
//! install: the same slots and budgets). It catches what no hook sees: a
//! container rebooted from inside (no hook phase runs), a host driver
//! reloaded live, an install that failed while the mirror was down.
//!
//! On every node, GPU or not, it first places our snippet under each
//! chained hookscript's name (see `chain`): `enable --chain` on one node
//! waits for the others' `sync`.
//!
//! `pve-nvidia-hook-sync.timer` runs it after the guests' start at boot and
//! every 30 minutes, with `--backoff`: a container whose install failed for
//! the host's version waits (see [`decision::retry`]) instead of failing
//! again every half hour. Run by hand, it tries at once.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::chain::Chains;
use crate::cli::SyncArgs;
use crate::container::detect;
use crate::context::{Ctx, Lookup};
use crate::decision::{self, Action, Retry};
use crate::detach;
use crate::logging::{scoped, utc};
use crate::state::unix_now;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

/// What `sync` did for one container.
#[derive(Debug, PartialEq, Eq)]
enum Synced {
    Stopped,
    UpToDate,
    AlreadyInstalling,
    /// Left alone, and why (its driver is the host's, cannot tell).
    Skipped(String),
    /// Its install failed; the timer tries again after `at_unix`.
    Waiting {
        at_unix: u64,
        failures: u32,
    },
    Started {
        reason: String,
        log: String,
    },
}

pub fn run(config: Option<&Path>, args: &SyncArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    // Every node, GPU or not, holds our snippet under each chain's name: a
    // chained container may start on any of them (see `chain`).
    let paths = &ctx.config().paths;
    let mut failed = false;
    match Chains::new(&paths.pve).place_here(&paths.pve, &paths.storage_root) {
        Ok(changes) => changes.iter().for_each(|c| log::info!("{c}")),
        Err(e) => {
            log::error!("this node's chain snippets: {e:#}");
            failed = true;
        }
    }
    let Some(host) = ctx.host_version()? else {
        log::warn!("no NVIDIA kernel module loaded on the host; no container to bring to it");
        return Ok(exit(failed));
    };
    let now = unix_now();
    for vmid in ctx.all_containers()? {
        match check(&ctx, vmid, &host, args.backoff, now) {
            Ok(None) => {}
            // The timer's runs say only what they did.
            Ok(Some(Synced::Stopped | Synced::UpToDate)) if args.backoff => {}
            Ok(Some(done)) => log::info!("{}", scoped(vmid, &said(&done, &host))),
            Err(e) => {
                log::error!("{}", scoped(vmid, &format!("{e:#}")));
                failed = true;
            }
        }
    }
    Ok(exit(failed))
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What `sync` did for the container; None when it does not request NVIDIA.
fn check(
    ctx: &Ctx,
    vmid: Vmid,
    host: &DriverVersion,
    backoff: bool,
    now: u64,
) -> Result<Option<Synced>> {
    let target = match ctx.lookup(vmid)? {
        Lookup::Container(t) if t.request.wanted => t,
        _ => return Ok(None),
    };
    if ctx.locks.is_installing(vmid) {
        return Ok(Some(Synced::AlreadyInstalling));
    }
    let root = match ctx.open_container(vmid) {
        Ok(Some(root)) => root,
        Ok(None) => return Ok(Some(Synced::Stopped)),
        Err(e) => {
            let why = format!("cannot tell what is installed: {e:#}");
            return Ok(Some(Synced::Skipped(why)));
        }
    };
    let installed = detect::detect_in(&root);
    drop(root);
    let reason = match decision::decide(host, &installed, false) {
        Action::UpToDate => return Ok(Some(Synced::UpToDate)),
        Action::Skip(why) => return Ok(Some(Synced::Skipped(why))),
        Action::Install(reason) => reason,
    };
    if backoff {
        let last = ctx.results.last(vmid);
        let wait = target.settings.limits.sync_retry;
        if let Retry::After { at_unix, failures } = decision::retry(last.as_ref(), host, now, wait)
        {
            return Ok(Some(Synced::Waiting { at_unix, failures }));
        }
    }
    let log = detach::spawn_install(ctx, vmid)?;
    Ok(Some(Synced::Started {
        reason,
        log: log.display().to_string(),
    }))
}

fn said(done: &Synced, host: &DriverVersion) -> String {
    match done {
        Synced::Stopped => "not running: its next start checks it".into(),
        Synced::UpToDate => format!("NVIDIA driver {host} up to date"),
        Synced::AlreadyInstalling => "already installing".into(),
        Synced::Skipped(why) => format!("left alone: {why}"),
        Synced::Waiting { at_unix, failures } => format!(
            "its install of {host} failed {failures} time(s) in a row: the timer tries again \
             after {} (pve-nvidia-hook sync tries now)",
            utc(*at_unix)
        ),
        Synced::Started { reason, log } => {
            format!("install started in the background ({reason}); log: {log}")
        }
    }
}
