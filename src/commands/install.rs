//! `pve-nvidia-hook install <vmid> [--force]`, and the install the hook runs
//! (in the foreground or detached) and `sync` starts: lock, re-check,
//! pipeline, record; then the container's workloads that still map the old
//! driver. The detached one (never the hook itself) tells the admin how it
//! went.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};

use crate::cli::InstallArgs;
use crate::container::{detect, LxcAttach};
use crate::context::{Ctx, Target};
use crate::decision::{self, Action};
use crate::error::{is_refused, Refused};
use crate::notify::{self, Event, Severity};
pub use crate::pipeline::Origin;
use crate::pipeline::{self, Budget, Job, Stage, Warning};
use crate::published::{self, Seen};
use crate::version::DriverVersion;
use crate::vmid::Vmid;
use crate::workloads::{self, AfterInstall};
use crate::{cluster, decision::State, detach, logging};

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
        /// What the container still lacks (a CUDA toolkit refused, a
        /// passthrough gap) or what was done to it (a record moved aside).
        warnings: Vec<Warning>,
        /// What followed: the processes that still mapped the old driver,
        /// and what was restarted (None until that was looked at).
        after: Option<Box<AfterInstall>>,
    },
}

/// The context of an install's error: the versions it was between, for
/// the admin's notification ("installing NVIDIA driver 550.54.14: …").
#[derive(Debug, Clone)]
pub struct Installing {
    pub host: DriverVersion,
    pub container: Option<DriverVersion>,
}

impl fmt::Display for Installing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "installing NVIDIA driver {}", self.host)
    }
}

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
    let origin = if args.from_hook {
        Origin::Background
    } else {
        Origin::Terminal
    };
    let outcome = install_for_host(&ctx, &target, args.force, origin);
    if args.from_hook {
        tell_the_admin(&ctx, args.vmid, &outcome);
    }
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// The notification for an install that ran in the background (the hook's,
/// and `sync`'s): an error when it failed, a warning when the container
/// cannot be brought to the host's version as it is, and, with `notify:
/// all`, an info when it installed. Nothing for an install that had nothing
/// to do. The processes that still map the old driver are in its detail.
pub fn tell_the_admin(ctx: &Ctx, vmid: Vmid, outcome: &Result<Done>) {
    let paths = &ctx.config().paths;
    if let Some(event) = event(vmid, outcome, Some(detach::log_file(paths, vmid))) {
        notify::notify(ctx.config().notify, paths, &ctx.locks, &event);
    }
}

fn event(
    vmid: Vmid,
    outcome: &Result<Done>,
    log_file: Option<std::path::PathBuf>,
) -> Option<Event> {
    match outcome {
        Ok(Done::Installed {
            host,
            from,
            warnings,
            after,
        }) => Some(Event {
            vmid,
            // Installed, but not all the container asked for works: it is
            // not brought to the host's version as it is configured.
            severity: if warnings.iter().any(Warning::is_shortfall) {
                Severity::Warning
            } else {
                Severity::Info
            },
            host_version: Some(host.clone()),
            container_version: from.clone(),
            stage: None,
            detail: std::iter::once(format!(
                "NVIDIA driver {host} installed and verified{}",
                after
                    .as_deref()
                    .map(AfterInstall::summary)
                    .unwrap_or_default()
            ))
            .chain(warnings.iter().map(ToString::to_string))
            .collect::<Vec<_>>()
            .join("; "),
            log_file,
        }),
        Ok(Done::UpToDate | Done::AlreadyInstalling) => None,
        Err(e) => {
            let at = e.downcast_ref::<Installing>();
            Some(Event {
                vmid,
                severity: if is_refused(e) {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                host_version: at.map(|a| a.host.clone()),
                container_version: at.and_then(|a| a.container.clone()),
                stage: e.downcast_ref::<Stage>().map(|s| s.0),
                detail: format!("{e:#}"),
                log_file,
            })
        }
    }
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
/// under running workloads, and the summary line.
pub fn install(
    ctx: &Ctx,
    target: &Target,
    host: &DriverVersion,
    force: bool,
    origin: Origin,
) -> Result<Done> {
    match install_locked(ctx, target, host, force, origin.foreground())? {
        Done::Installed {
            host,
            from,
            warnings,
            ..
        } => {
            let after = workloads::after_install(ctx, target, &host, origin);
            let replacing = from
                .as_ref()
                .map(|v| format!(" (replacing {v})"))
                .unwrap_or_default();
            log::info!(
                "result: NVIDIA driver {host} installed{replacing}{}",
                after.summary()
            );
            Ok(Done::Installed {
                host,
                from,
                warnings,
                after: Some(Box::new(after)),
            })
        }
        other => Ok(other),
    }
}

/// `foreground`: someone waits (a terminal, or a start with `background:
/// false`), so a wait for an install slot is bounded by `slot_wait_secs`.
///
/// Ok is the host's driver installed and verified; its
/// [`Installed::warnings`] say what the container still lacks (a CUDA
/// toolkit refused, a passthrough gap) or what was done to it (a record
/// moved aside). They are logged, and recorded with the result.
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
    let root = match ctx.open_container(vmid) {
        Ok(Some(root)) => root,
        Ok(None) => bail!("container is not running"),
        Err(e) => {
            return Err(e.context(Refused(
                "cannot read the container's files, so nothing is installed".into(),
            )))
        }
    };
    // Nothing of this install outlives the container it is for.
    let _watching = crate::cancel::watch(root.init().pidfd())
        .map_err(|e| anyhow!("CT {vmid}: watching its init: {e}"))?;
    let installed = detect::detect_in(&root);
    let attempt = Installing {
        host: host.clone(),
        container: installed.version().cloned(),
    };
    match decision::decide(host, &installed, force) {
        Action::Install(reason) => log::info!("installing NVIDIA driver {host}: {reason}"),
        Action::UpToDate => {
            log::info!("NVIDIA driver {host} up to date");
            return Ok(Done::UpToDate);
        }
        Action::Skip(why) => return Err(anyhow!(Refused(why)).context(attempt)),
    }
    let exec = LxcAttach::new(vmid)?;
    let log_progress = |m: &str| log::info!("{m}");
    let fetcher = ctx.fetcher(settings, &log_progress);
    let job = Job {
        vmid,
        settings,
        host,
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
    let from = attempt.container.clone();
    let installed = outcome.map_err(|e| e.context(attempt))?;
    match installed.warnings.len() {
        0 => log::info!("NVIDIA driver {host} installed and verified"),
        n => log::warn!(
            "NVIDIA driver {host} installed and verified, with {n} warning{} (above)",
            if n == 1 { "" } else { "s" }
        ),
    }
    Ok(Done::Installed {
        host: host.clone(),
        from,
        warnings: installed.warnings,
        after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DriverVersion {
        s.parse().unwrap()
    }

    fn installed(warnings: Vec<Warning>) -> Result<Done> {
        Ok(Done::Installed {
            host: v("570.153.02"),
            from: Some(v("550.54.14")),
            warnings,
            after: None,
        })
    }

    fn told(outcome: &Result<Done>) -> Event {
        event(Vmid::try_from(101).unwrap(), outcome, None).expect("an event")
    }

    #[test]
    fn an_install_with_nothing_missing_is_news_only() {
        assert_eq!(told(&installed(vec![])).severity, Severity::Info);
        let aside = Warning::RecordMovedAside {
            why: "it is 2147483648 bytes".into(),
            to: "/var/lib/nvidia.unreadable-1".into(),
        };
        let e = told(&installed(vec![aside]));
        assert_eq!(e.severity, Severity::Info);
        assert!(e.detail.contains("moved aside"), "{}", e.detail);
    }

    #[test]
    fn a_cuda_toolkit_refused_or_a_passthrough_gap_is_a_warning() {
        let cuda = Warning::CudaRefused {
            toolkit: "13.0.0".into(),
            needs: "580".into(),
            host: "570.153.02".into(),
        };
        let e = told(&installed(vec![cuda]));
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.host_version, Some(v("570.153.02")));
        assert_eq!(e.container_version, Some(v("550.54.14")));
        assert!(e
            .detail
            .contains("CUDA toolkit 13.0.0 not installed: it needs NVIDIA driver 580"));
        let gap = Warning::PassthroughGap {
            vmid: Vmid::try_from(101).unwrap(),
            node: "/dev/nvidia-uvm".into(),
        };
        assert_eq!(told(&installed(vec![gap])).severity, Severity::Warning);
    }

    #[test]
    fn a_packaged_driver_it_may_not_replace_is_a_warning_and_a_failed_stage_an_error() {
        let attempt = Installing {
            host: v("570.153.02"),
            container: Some(v("535.183.01")),
        };
        let refused = Err(crate::error::refused(
            "purging the distribution's driver would also remove cuda-toolkit-12-4",
        )
        .context(Stage("cleanup"))
        .context(attempt.clone()));
        let e = told(&refused);
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.container_version, Some(v("535.183.01")));
        assert_eq!(e.stage, Some("cleanup"));

        let failed = Err(anyhow!("installer exited with status 1")
            .context(Stage("driver"))
            .context(attempt));
        let e = told(&failed);
        assert_eq!(e.severity, Severity::Error);
        assert_eq!(e.stage, Some("driver"));
        assert_eq!(e.host_version, Some(v("570.153.02")));
    }

    #[test]
    fn nothing_done_is_not_told() {
        let vmid = Vmid::try_from(101).unwrap();
        assert!(event(vmid, &Ok(Done::UpToDate), None).is_none());
        assert!(event(vmid, &Ok(Done::AlreadyInstalling), None).is_none());
    }
}
