//! Inside the running container: its driver, the nodes it sees, nvidia-smi
//! (and nvcc), room for an install, and Docker with the NVIDIA Container
//! Toolkit.

use super::access::Passed;
use super::host::Node;
use super::{Level, Report};
use crate::container::confined::Kind;
use crate::container::detect::{self, InstalledDriver};
use crate::container::inspect;
use crate::container::LxcAttach;
use crate::context::{Ctx, Target};
use crate::cuda::Fit;
use crate::pipeline;
use crate::version::DriverVersion;

/// Space the runfile needs inside: about 400 MB, plus its extraction.
const TMP_NEEDED: u64 = 1_300_000_000;

pub(super) fn checks(
    ctx: &Ctx,
    target: &Target,
    host: Option<&DriverVersion>,
    nodes: &[Node],
    passed: &Passed,
    report: &mut Report,
    scope: &str,
) {
    let vmid = target.vmid;
    let root = match ctx.open_container(vmid) {
        Ok(Some(root)) => root,
        Ok(None) => {
            report.add(
                scope,
                "running",
                Level::Warn,
                "stopped: the checks inside need it running",
                Some(format!("pct start {vmid}")),
            );
            return;
        }
        Err(e) => {
            report.add(scope, "running", Level::Fail, format!("{e:#}"), None);
            return;
        }
    };
    report.add(scope, "running", Level::Ok, "yes", None);
    let installed = detect::detect_in(&root);
    match (&installed, host) {
        (InstalledDriver::Installed(v), Some(h)) if v == h => report.add(
            scope,
            "driver",
            Level::Ok,
            format!("{v}, as the host"),
            None,
        ),
        (InstalledDriver::Installed(v), Some(h)) => report.add(
            scope,
            "driver",
            Level::Fail,
            format!("{v}, the host has {h}"),
            Some(format!("pve-nvidia-hook install {vmid}")),
        ),
        (InstalledDriver::Installed(v), None) => report.add(
            scope,
            "driver",
            Level::Warn,
            format!("{v}; the host has none loaded"),
            None,
        ),
        (InstalledDriver::Absent, _) => report.add(
            scope,
            "driver",
            Level::Fail,
            "no NVIDIA user-space driver",
            Some(format!("pve-nvidia-hook install {vmid}")),
        ),
        (InstalledDriver::Broken(why), _) => report.add(
            scope,
            "driver",
            Level::Fail,
            why.clone(),
            Some(format!("pve-nvidia-hook install --force {vmid}")),
        ),
        (InstalledDriver::Packaged(v), _) => report.add(
            scope,
            "driver",
            Level::Warn,
            format!("the distribution's packages ({v}); the next start replaces them with a runfile install"),
            None,
        ),
        (InstalledDriver::HostProvided(v), _) => report.add(
            scope,
            "driver",
            Level::Ok,
            format!(
                "bind-mounted from the host{}; left alone",
                v.as_ref().map(|v| format!(" ({v})")).unwrap_or_default()
            ),
            None,
        ),
        (InstalledDriver::Unknown(why), _) => report.add(
            scope,
            "driver",
            Level::Fail,
            format!("cannot tell: {why}"),
            None,
        ),
    }
    if matches!(installed, InstalledDriver::Installed(_)) {
        match inspect::inspect(&root, target.settings.limits.verify_timeout) {
            Ok(found) if found.problems.is_empty() => report.add(
                scope,
                "installation",
                Level::Ok,
                format!(
                    "every file the installer recorded is in place; {}",
                    found.capabilities.summary()
                ),
                None,
            ),
            Ok(found) => report.add(
                scope,
                "installation",
                Level::Fail,
                found.problems.join("; "),
                Some(format!("pve-nvidia-hook install --force {vmid}")),
            ),
            Err(e) => report.add(scope, "installation", Level::Fail, format!("{e}"), None),
        }
    }
    for node in nodes.iter().filter(|n| n.required() && passed.contains(n)) {
        let path = format!("/dev/{}", node.name);
        match root.read(|c| c.kind(&path)) {
            Err(e) => report.add(scope, "node inside", Level::Warn, format!("{path}: cannot tell: {e}"), None),
            Ok(Kind::CharDevice) => report.add(scope, "node inside", Level::Ok, format!("{path} present"), None),
            Ok(Kind::Missing) => report.add(scope, "node inside", Level::Fail, format!("{path} missing inside"), Some(format!("restart the container (pct reboot {vmid}); if the node appeared on the host after it started, it needs a restart"))),
            Ok(_) => report.add(scope, "node inside", Level::Warn, format!("{path} present but not a character device"), None),
        }
    }
    if matches!(
        installed,
        InstalledDriver::Installed(_) | InstalledDriver::HostProvided(_)
    ) {
        // Installed, and what workloads still need: a warning, not a failure.
        if let Ok(Some(gap)) = pipeline::passthrough_gap(&root, vmid) {
            report.add(scope, "cuda", Level::Warn, gap.to_string(), None);
        }
    }
    let quick = target.settings.limits.command_timeout;
    match (LxcAttach::new(vmid), host) {
        (Ok(exec), Some(host)) => {
            match pipeline::verify_driver(&exec, &root, host, quick) {
                Ok(v) => report.add(scope, "nvidia-smi", Level::Ok, format!("reports {v}"), None),
                Err(e) => report.add(scope, "nvidia-smi", Level::Fail, format!("{e:#}"), None),
            }
            let fit = pipeline::cuda_fit(&target.settings, host).ok().flatten();
            if let Some(refused @ Fit::NeedsNewer { .. }) = &fit {
                if let Some(w) = pipeline::Warning::of_cuda(refused, host) {
                    report.add(scope, "nvcc", Level::Warn, w.to_string(), None);
                }
            } else if target.settings.cuda.is_some() {
                match pipeline::verify_nvcc(&exec, quick) {
                    Ok(()) => report.add(scope, "nvcc", Level::Ok, "runs", None),
                    Err(e) => report.add(
                        scope,
                        "nvcc",
                        Level::Fail,
                        format!("{e:#}"),
                        Some(format!("pve-nvidia-hook install --force {vmid}")),
                    ),
                }
            }
        }
        (Ok(_), None) => report.add(
            scope,
            "nvidia-smi",
            Level::Warn,
            "not run: no host version to compare with",
            None,
        ),
        (Err(e), _) => report.add(scope, "nvidia-smi", Level::Fail, format!("{e:#}"), None),
    }
    match root
        .read(|c| c.free_and_fs("/var/tmp"))
        .map(|(free, _)| free)
    {
        Ok(free) if free >= TMP_NEEDED => report.add(
            scope,
            "free space",
            Level::Ok,
            format!("{} MB free in /var/tmp", free / 1_000_000),
            None,
        ),
        Ok(free) => report.add(
            scope,
            "free space",
            Level::Warn,
            format!(
                "{} MB free in /var/tmp; an install needs about {} MB",
                free / 1_000_000,
                TMP_NEEDED / 1_000_000
            ),
            Some(format!(
                "grow the container's disk (pct resize {vmid} rootfs +2G)"
            )),
        ),
        Err(e) => report.add(
            scope,
            "free space",
            Level::Warn,
            format!("/var/tmp: {e}"),
            None,
        ),
    }
    super::docker::checks(target, &root, host, report, scope);
}
