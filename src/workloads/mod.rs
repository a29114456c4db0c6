//! A container's workloads after an install replaced the driver under them:
//! a process that loaded the old libraries keeps them mapped, and fails
//! with "Driver/library version mismatch" until it is restarted. Which
//! processes those are ([`scan`]), named in the log, and restarted as
//! `restart_after_install` says: `none`, `services` (their systemd units
//! inside the container) or `container` (`pct reboot`).

pub mod scan;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::config::RestartAfterInstall;
use crate::container::{ContainerCommand, Exec, LxcAttach};
use crate::context::{Ctx, Target};
use crate::logging;
use crate::pipeline::Origin;
use crate::process::{self, Limits};
use crate::version::DriverVersion;
use crate::vmid::Vmid;

pub use scan::Scan;

/// At most this many services are restarted after one install.
const MAX_RESTARTS: usize = 16;
/// How long a `pct reboot` waits for the start task to let the container's
/// config lock go.
const CONFIG_LOCK_WAIT: Duration = Duration::from_secs(300);
/// A reboot stops the container (Proxmox waits up to a minute before it
/// kills it) and starts it again, hooks included.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What followed an install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterInstall {
    /// The processes that mapped another driver's libraries once the
    /// install was done; the error says why that cannot be told.
    pub found: Result<Scan, String>,
    pub restart: Restarted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarted {
    /// Nothing to restart, or `restart_after_install: none`.
    Nothing,
    /// `services`: the units restarted, those that failed (and why), and
    /// what still maps the old driver afterwards.
    Services {
        done: Vec<String>,
        failed: Vec<(String, String)>,
        without_unit: usize,
        after: Result<Scan, String>,
    },
    /// `container`: `pct reboot`, and how it went.
    Container(Result<(), String>),
    /// Not done, and why.
    Refused(String),
}

/// Finds the container's processes that still map another driver than
/// `host` and restarts them as the container's `restart_after_install`
/// says; everything is logged.
pub fn after_install(
    ctx: &Ctx,
    target: &Target,
    host: &DriverVersion,
    origin: Origin,
) -> AfterInstall {
    let vmid = target.vmid;
    let deadline = target.settings.limits.scan_timeout;
    let started = Instant::now();
    let found = scan::scan(&ctx.host, vmid, host, deadline);
    if let Ok(s) = &found {
        log::debug!(
            "looked at {} processes in {:.1} ms",
            s.looked_at,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    match &found {
        Ok(s) if s.stale_count() == 0 => {
            log::info!("no process in the container maps another NVIDIA driver's libraries")
        }
        Ok(s) => log::warn!(
            "{} another NVIDIA driver's libraries (\"Driver/library version mismatch\" \
             until restarted): {}",
            still_map(s.stale_count()),
            listing(s)
        ),
        Err(why) => log::warn!("{why}"),
    }
    if let Ok(s) = &found {
        if s.left_out > 0 || s.cut > 0 {
            log::warn!(
                "not every process was looked at: {} left out (more than {} processes or \
                 cgroups), {} memory map(s) read only in part",
                s.left_out,
                scan::MAX_PROCESSES,
                s.cut
            );
        }
    }
    let restart = match (&found, target.settings.restart_after_install) {
        (Ok(s), _) if s.stale_count() == 0 => Restarted::Nothing,
        (_, RestartAfterInstall::Nothing) => {
            if found.is_ok() {
                log::info!(
                    "restart them, or set restart_after_install to \"services\" or \"container\""
                );
            }
            Restarted::Nothing
        }
        (Err(_), _) => Restarted::Refused("cannot tell what to restart".into()),
        (Ok(s), RestartAfterInstall::Services) => restart_services(ctx, target, host, s),
        (Ok(_), RestartAfterInstall::Container) => reboot(ctx, vmid, origin),
    };
    AfterInstall { found, restart }
}

impl AfterInstall {
    /// One clause for the install's summary line ("" when nothing maps
    /// the old driver).
    pub fn summary(&self) -> String {
        let stale = match &self.found {
            Ok(s) if s.stale_count() == 0 => return String::new(),
            Ok(s) => format!("; {} mapped the old driver", processes(s.stale_count())),
            Err(_) => "; which processes map the old driver could not be told".to_string(),
        };
        let restart = match &self.restart {
            Restarted::Nothing => String::new(),
            Restarted::Services {
                done,
                failed,
                without_unit,
                after,
            } => {
                let mut clause = format!(", {} service(s) restarted", done.len());
                if !failed.is_empty() {
                    let _ = write!(clause, ", {} failed", failed.len());
                }
                if *without_unit > 0 {
                    let _ = write!(clause, ", {} in no service", processes(*without_unit));
                }
                match after {
                    Ok(s) if s.stale_count() > 0 => {
                        let _ = write!(clause, ", {} still", processes(s.stale_count()));
                    }
                    Ok(_) => {}
                    Err(_) => clause.push_str(", then cannot tell"),
                }
                clause
            }
            Restarted::Container(Ok(())) => ", the container rebooted".into(),
            Restarted::Container(Err(_)) => ", its reboot failed".into(),
            Restarted::Refused(why) => format!(", not restarted: {why}"),
        };
        stale + &restart
    }
}

fn processes(n: usize) -> String {
    match n {
        1 => "1 process".into(),
        n => format!("{n} processes"),
    }
}

/// "1 process still maps", "3 processes still map".
fn still_map(n: usize) -> String {
    format!(
        "{} still map{}",
        processes(n),
        if n == 1 { "s" } else { "" }
    )
}

/// `pid 4242 ollama (ollama.service): libcuda.so.550.54.14 (deleted); …`
fn listing(s: &Scan) -> String {
    let mut out = String::new();
    for (i, p) in s.stale.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(out, "pid {} {}", p.pid, p.name);
        if let Some(unit) = &p.unit {
            let _ = write!(out, " ({unit})");
        }
        let _ = write!(out, ": {}", p.libraries.join(", "));
    }
    if s.more_stale > 0 {
        let _ = write!(out, "; and {} more", s.more_stale);
    }
    out
}

/// `systemctl restart <unit>` inside the container for each system service
/// a stale process runs in (an argument vector; the names checked as unit
/// names), then a second look.
fn restart_services(ctx: &Ctx, target: &Target, host: &DriverVersion, found: &Scan) -> Restarted {
    let without_unit = found.stale.iter().filter(|s| s.unit.is_none()).count() + found.more_stale;
    if without_unit > 0 {
        log::warn!(
            "{} in no system service of the container: not restarted",
            processes(without_unit)
        );
    }
    let exec = match LxcAttach::new(target.vmid) {
        Ok(e) => e,
        Err(e) => return Restarted::Refused(format!("{e:#}")),
    };
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let units = found.units();
    for unit in units.iter().take(MAX_RESTARTS) {
        match restart_unit(&exec, unit, target.settings.limits.command_timeout) {
            Ok(()) => {
                log::info!("restarted {unit} in the container");
                done.push(unit.to_string());
            }
            Err(e) => {
                let why = format!("{e:#}");
                log::warn!("could not restart {unit} in the container: {why}");
                failed.push((unit.to_string(), why));
            }
        }
    }
    if units.len() > MAX_RESTARTS {
        log::warn!(
            "{} more service(s) not restarted (at most {MAX_RESTARTS} at a time)",
            units.len() - MAX_RESTARTS
        );
    }
    let after = scan::scan(
        &ctx.host,
        target.vmid,
        host,
        target.settings.limits.scan_timeout,
    );
    match &after {
        Ok(s) if s.stale_count() == 0 => {
            log::info!("after the restarts, no process maps another NVIDIA driver's libraries")
        }
        Ok(s) => log::warn!(
            "after the restarts, {} another NVIDIA driver's libraries: {}",
            still_map(s.stale_count()),
            listing(s)
        ),
        Err(why) => log::warn!("after the restarts: {why}"),
    }
    Restarted::Services {
        done,
        failed,
        without_unit,
        after,
    }
}

fn restart_unit(exec: &dyn Exec, unit: &str, timeout: Duration) -> Result<()> {
    if !scan::is_unit_name(unit) {
        bail!("'{}' is not a unit name", logging::sanitize(unit));
    }
    let out = exec.exec(ContainerCommand::new(
        &["systemctl", "restart", unit],
        timeout,
    ))?;
    if !out.success() {
        bail!("{}: {}", out.describe_status(), out.diagnostic());
    }
    Ok(())
}

/// `pct reboot <vmid>`, which takes the container's config lock: never
/// from inside the hook (the start task holds that lock and waits for the
/// hook), and only once the start task has let it go.
fn reboot(ctx: &Ctx, vmid: Vmid, origin: Origin) -> Restarted {
    if origin == Origin::Hook {
        let why =
            "restart_after_install: container needs the background install (background: true); \
                   the start task holds the container's config lock while this hook runs";
        log::warn!("not rebooting the container: {why}");
        return Restarted::Refused(why.into());
    }
    let lock = ctx
        .config()
        .paths
        .config_locks
        .join(format!("pve-config-{vmid}.lock"));
    let result = wait_for_config_lock(&lock, CONFIG_LOCK_WAIT).and_then(|()| {
        log::info!("rebooting the container (restart_after_install: container): pct reboot {vmid}");
        let pct = process::find_program("pct").ok_or_else(|| anyhow!("pct not found"))?;
        let out = process::run(
            &pct,
            &["reboot", &vmid.to_string()],
            Limits::quick(REBOOT_TIMEOUT),
        )?;
        if !out.success() {
            bail!(
                "pct reboot {vmid}: {}: {}",
                out.describe_status(),
                out.diagnostic()
            );
        }
        Ok(())
    });
    match &result {
        Ok(()) => log::info!("the container was rebooted"),
        Err(e) => log::warn!("could not reboot the container: {e:#}"),
    }
    Restarted::Container(result.map_err(|e| format!("{e:#}")))
}

/// Waits until nobody holds Proxmox's config lock of the container (a
/// start task still finishing), at most `limit`. The lock is only looked
/// at: taken for an instant with a shared lock, never created.
fn wait_for_config_lock(lock: &Path, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let mut told = false;
    loop {
        if !held(lock) {
            return Ok(());
        }
        if started.elapsed() >= limit {
            bail!(
                "{} was still held after {}s: not rebooting while a task holds the container",
                lock.display(),
                limit.as_secs()
            );
        }
        if !told {
            log::info!("waiting for the task that holds {} to end", lock.display());
            told = true;
        }
        crate::cancel::check()?;
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn held(lock: &Path) -> bool {
    let Ok(fd) = rustix::fs::open(
        lock,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared).is_err()
}
