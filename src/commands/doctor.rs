//! `pve-nvidia-hook doctor [<vmid>...]`: one line per check, OK/WARN/FAIL with
//! the fix, for the host, each container's config and the running container.
//! Exit 1 when any check fails.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::cluster;
use crate::container::driver::{self, InstalledDriver};
use crate::container::rootfs::Kind;
use crate::container::LxcAttach;
use crate::context::{Ctx, Lookup, Target};
use crate::pipeline;
use crate::snippet::is_ours;
use crate::storage;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub scope: String,
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

/// A host device node of the NVIDIA driver.
struct Node {
    name: String,
    major: u32,
    minor: u32,
    mode: u32,
}

impl Node {
    /// Without these a container cannot use the GPU (uvm: not CUDA).
    fn required(&self) -> bool {
        self.name == "nvidiactl"
            || self.name == "nvidia-uvm"
            || self
                .name
                .strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// Space the runfile needs inside: about 400 MB, plus its extraction.
const TMP_NEEDED: u64 = 1_300_000_000;

struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(
        &mut self,
        scope: &str,
        check: &'static str,
        level: Level,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            scope: scope.to_string(),
            check,
            level,
            detail: detail.into(),
            fix,
        });
    }
}

pub fn run(config: Option<&Path>, args: &DoctorArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let mut report = Report { checks: Vec::new() };
    let nodes = host_nodes(&ctx.config().paths.dev);
    let host = host_checks(&ctx, &nodes, &mut report);
    let lookups: Vec<(Vmid, Result<Lookup>)> = if args.vmids.is_empty() {
        ctx.all_containers()?
            .into_iter()
            .map(|v| (v, ctx.lookup(v)))
            .filter(|(_, l)| matches!(l, Ok(Lookup::Container(t)) if t.request.wanted))
            .collect()
    } else {
        args.vmids.iter().map(|&v| (v, ctx.lookup(v))).collect()
    };
    for (vmid, lookup) in lookups {
        let scope = format!("CT {vmid}");
        match lookup {
            Ok(Lookup::Container(target)) => {
                container_checks(&ctx, &target, host.as_ref(), &nodes, &mut report, &scope)
            }
            Ok(Lookup::Vm) => report.add(
                &scope,
                "config",
                Level::Fail,
                "a virtual machine, not a container",
                None,
            ),
            Ok(Lookup::Missing) => {
                report.add(&scope, "config", Level::Fail, "no such container", None)
            }
            Err(e) => report.add(&scope, "config", Level::Fail, format!("{e:#}"), None),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.checks)?);
    } else {
        for c in &report.checks {
            let level = match c.level {
                Level::Ok => "OK",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!("{level:<4}  {}: {}: {}", c.scope, c.check, c.detail);
            if let Some(fix) = &c.fix {
                println!("      fix: {fix}");
            }
        }
    }
    let failed = report.checks.iter().any(|c| c.level == Level::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn host_checks(ctx: &Ctx, nodes: &[Node], report: &mut Report) -> Option<DriverVersion> {
    let version = match ctx.host.driver_version() {
        Ok(Some((v, _))) => {
            report.add(
                "host",
                "kernel module",
                Level::Ok,
                format!("nvidia {v} loaded"),
                None,
            );
            Some(v)
        }
        Ok(None) => {
            report.add(
                "host",
                "kernel module",
                Level::Fail,
                "no NVIDIA kernel module loaded",
                Some("install the NVIDIA driver on the host and load it (modprobe nvidia)".into()),
            );
            None
        }
        Err(e) => {
            report.add("host", "kernel module", Level::Fail, format!("{e:#}"), None);
            None
        }
    };
    let dev = ctx.config().paths.dev.display().to_string();
    if nodes.iter().any(|n| n.name == "nvidiactl") && nodes.iter().any(|n| n.name == "nvidia0") {
        let list: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} ({}:{})", n.name, n.major, n.minor))
            .collect();
        report.add("host", "device nodes", Level::Ok, list.join(", "), None);
    } else {
        report.add(
            "host",
            "device nodes",
            Level::Fail,
            format!("no {dev}/nvidia0 and {dev}/nvidiactl"),
            Some(
                "run nvidia-smi once on the host (or nvidia-modprobe -c 0) so that the nodes exist"
                    .into(),
            ),
        );
    }
    if nodes.iter().any(|n| n.name == "nvidia-uvm") {
        report.add(
            "host",
            "nvidia-uvm",
            Level::Ok,
            format!("{dev}/nvidia-uvm present"),
            None,
        );
    } else {
        report.add(
            "host",
            "nvidia-uvm",
            Level::Warn,
            format!("{dev}/nvidia-uvm missing: CUDA cannot work in containers"),
            Some("load it at boot: echo nvidia-uvm > /etc/modules-load.d/nvidia-uvm.conf, and create the node with a oneshot unit running nvidia-modprobe -c 0 -u".into()),
        );
    }
    version
}

fn host_nodes(dev: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut visit = |dir: &Path, prefix: &str| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if (prefix.is_empty() && !name.starts_with("nvidia"))
                || !meta.file_type().is_char_device()
            {
                continue;
            }
            nodes.push(Node {
                name: format!("{prefix}{name}"),
                major: rustix::fs::major(meta.rdev()),
                minor: rustix::fs::minor(meta.rdev()),
                mode: meta.mode() & 0o777,
            });
        }
    };
    visit(dev, "");
    visit(&dev.join("nvidia-caps"), "nvidia-caps/");
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

fn container_checks(
    ctx: &Ctx,
    target: &Target,
    host: Option<&DriverVersion>,
    nodes: &[Node],
    report: &mut Report,
    scope: &str,
) {
    let vmid = target.vmid;
    let pct = &target.pct;
    match target.request.reason {
        Some(reason) if target.request.wanted => report.add(
            scope,
            "requested",
            Level::Ok,
            format!("yes ({})", reason.as_str()),
            None,
        ),
        _ => report.add(
            scope,
            "requested",
            Level::Warn,
            "NVIDIA is not requested: the hook does nothing here",
            Some(format!("pct set {vmid} --tags nvidia")),
        ),
    }

    // Passthrough, by node name (config paths are /dev/<name>).
    let name_of = |p: &str| node_name(p);
    let by_device: Vec<String> = pct.device_paths().into_iter().filter_map(name_of).collect();
    let mount_entries: Vec<(String, String)> = pct
        .lxc_values("lxc.mount.entry")
        .filter_map(|v| {
            let mut words = v.split_whitespace();
            let source = name_of(words.next()?)?;
            Some((source, words.nth(2).unwrap_or_default().to_string()))
        })
        .collect();
    let passed =
        |n: &Node| by_device.contains(&n.name) || mount_entries.iter().any(|(s, _)| *s == n.name);
    let missing: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.required() && !passed(n))
        .collect();
    if nodes.is_empty() {
        report.add(
            scope,
            "passthrough",
            Level::Warn,
            "the host has no NVIDIA device nodes to compare with",
            None,
        );
    } else if missing.is_empty() {
        report.add(
            scope,
            "passthrough",
            Level::Ok,
            "every NVIDIA node of the host is passed",
            None,
        );
    } else {
        let fix = missing
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "pct set {vmid} --dev{} /dev/{}",
                    free_dev_index(pct) + i,
                    n.name
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let names: Vec<&str> = missing.iter().map(|n| n.name.as_str()).collect();
        report.add(
            scope,
            "passthrough",
            Level::Fail,
            format!("not passed to the container: {}", names.join(", ")),
            Some(format!("{fix} (PVE 8.1+), then restart it")),
        );
    }
    let rigid: Vec<&str> = mount_entries
        .iter()
        .filter(|(_, options)| !options.split(',').any(|o| o == "optional"))
        .map(|(s, _)| s.as_str())
        .collect();
    if !rigid.is_empty() {
        report.add(
            scope,
            "mount entries",
            Level::Warn,
            format!(
                "without `optional`: {} (a missing node then stops the container from starting)",
                rigid.join(", ")
            ),
            Some("add ,optional to those lxc.mount.entry options".into()),
        );
    }

    // Nodes bound with lxc.mount.entry need cgroup rules for their current
    // majors (devN entries get theirs from Proxmox).
    let allowed: Vec<String> = pct
        .lxc_values("lxc.cgroup2.devices.allow")
        .chain(pct.lxc_values("lxc.cgroup.devices.allow"))
        .map(str::to_owned)
        .collect();
    let covers = |n: &Node| {
        allowed.iter().any(|rule| {
            let mut w = rule.split_whitespace();
            match (w.next(), w.next()) {
                (Some("a"), _) => true,
                (Some("c"), Some(spec)) => {
                    spec == format!("{}:*", n.major)
                        || spec == format!("{}:{}", n.major, n.minor)
                        || spec == "*:*"
                }
                _ => false,
            }
        })
    };
    let uncovered: Vec<&Node> = nodes
        .iter()
        .filter(|n| mount_entries.iter().any(|(s, _)| *s == n.name) && !covers(n))
        .collect();
    if !uncovered.is_empty() {
        let mut majors: Vec<u32> = uncovered.iter().map(|n| n.major).collect();
        majors.dedup();
        let names: Vec<&str> = uncovered.iter().map(|n| n.name.as_str()).collect();
        let rules: Vec<String> = majors
            .iter()
            .map(|m| format!("lxc.cgroup2.devices.allow: c {m}:* rwm"))
            .collect();
        report.add(scope, "cgroup rules", Level::Fail, format!("no rule allows {} at its current major (the nvidia-uvm major is dynamic and changes between boots)", names.join(", ")), Some(format!("add to /etc/pve/lxc/{vmid}.conf: {}", rules.join("; "))));
    } else if !mount_entries.is_empty() {
        report.add(
            scope,
            "cgroup rules",
            Level::Ok,
            "the bound nodes' current majors are allowed",
            None,
        );
    }
    if pct.get("unprivileged") == Some("1") {
        let blocked: Vec<&str> = nodes
            .iter()
            .filter(|n| passed(n) && n.mode & 0o006 != 0o006 && !device_grants_access(pct, &n.name))
            .map(|n| n.name.as_str())
            .collect();
        if blocked.is_empty() {
            report.add(
                scope,
                "unprivileged access",
                Level::Ok,
                "container root can open the passed nodes",
                None,
            );
        } else {
            report.add(
                scope,
                "unprivileged access",
                Level::Fail,
                format!(
                    "container root (a mapped uid) cannot open {}",
                    blocked.join(", ")
                ),
                Some("pass them as devN with mode=0666 (or gid=/uid= of a mapped user)".into()),
            );
        }
    }

    hook_checks(ctx, target, report, scope);

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
    let installed = driver::detect(&root);
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
    }
    for node in nodes.iter().filter(|n| n.required() && passed(n)) {
        let path = format!("/dev/{}", node.name);
        match root.kind(&path) {
            Kind::CharDevice => report.add(scope, "node inside", Level::Ok, format!("{path} present"), None),
            Kind::Missing => report.add(scope, "node inside", Level::Fail, format!("{path} missing inside"), Some(format!("restart the container (pct reboot {vmid}); if the node appeared on the host after it started, it needs a restart"))),
            _ => report.add(scope, "node inside", Level::Warn, format!("{path} present but not a character device"), None),
        }
    }
    let quick = Duration::from_secs(target.settings.command_timeout_secs);
    match (LxcAttach::new(vmid), host) {
        (Ok(exec), Some(host)) => {
            match pipeline::verify_driver(&exec, &root, host, quick) {
                Ok(v) => report.add(scope, "nvidia-smi", Level::Ok, format!("reports {v}"), None),
                Err(e) => report.add(scope, "nvidia-smi", Level::Fail, format!("{e:#}"), None),
            }
            if target.settings.cuda.is_some() {
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
    match root.free_bytes("/var/tmp") {
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
}

fn hook_checks(ctx: &Ctx, target: &Target, report: &mut Report, scope: &str) {
    let vmid = target.vmid;
    let Some(volume) = target.pct.hookscript() else {
        report.add(
            scope,
            "hook",
            Level::Fail,
            "no hookscript registered: the driver is not kept up to date",
            Some(format!("pve-nvidia-hook enable {vmid}")),
        );
        return;
    };
    if !is_ours(volume) {
        report.add(
            scope,
            "hook",
            Level::Fail,
            format!("hookscript is {volume}, not pve-nvidia-hook"),
            Some(format!("pve-nvidia-hook enable --chain {vmid}")),
        );
        return;
    }
    let storages = storage::load(&ctx.config().paths.pve).unwrap_or_default();
    let Some(path) = storage::resolve_volume(&storages, volume) else {
        report.add(
            scope,
            "hook",
            Level::Fail,
            format!("{volume}: no such storage"),
            Some(format!("pve-nvidia-hook enable {vmid}")),
        );
        return;
    };
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if !executable {
        report.add(
            scope,
            "hook",
            Level::Fail,
            format!("{} is missing or not executable", path.display()),
            Some(format!("pve-nvidia-hook enable {vmid}")),
        );
        return;
    }
    report.add(
        scope,
        "hook",
        Level::Ok,
        format!("{volume} ({})", path.display()),
        None,
    );
    let shared = storages
        .iter()
        .find(|s| volume.starts_with(&format!("{}:", s.name)))
        .is_some_and(|s| s.is_shared());
    if !shared && cluster::node_count(&ctx.config().paths.pve) > 1 {
        report.add(scope, "cluster", Level::Warn, format!("{} is on node-local storage; this node has it", path.display()), Some("make sure every node this container may start on has the snippet (run pve-nvidia-hook enable there too)".into()));
    }
}

/// `/dev/nvidia0` → `nvidia0`, `/dev/nvidia-caps/nvidia-cap1` →
/// `nvidia-caps/nvidia-cap1`; None for anything that is not an NVIDIA node.
fn node_name(path: &str) -> Option<String> {
    let (dir, base) = path.rsplit_once('/')?;
    if !base.starts_with("nvidia") {
        return None;
    }
    Some(if dir.ends_with("/nvidia-caps") {
        format!("nvidia-caps/{base}")
    } else {
        base.to_string()
    })
}

fn device_grants_access(pct: &crate::pct_config::PctConfig, name: &str) -> bool {
    pct.entries.iter().any(|e| match e {
        crate::pct_config::Entry::Key { key, value } if key.starts_with("dev") => {
            value.contains(&format!("/dev/{name}"))
                && value
                    .split(',')
                    .any(|o| o == "mode=0666" || o.starts_with("uid=") || o.starts_with("gid="))
        }
        _ => false,
    })
}

fn free_dev_index(pct: &crate::pct_config::PctConfig) -> usize {
    (0..)
        .find(|i| pct.get(&format!("dev{i}")).is_none())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(node_name("/dev/nvidia0").as_deref(), Some("nvidia0"));
        assert_eq!(
            node_name("/dev/nvidia-caps/nvidia-cap1").as_deref(),
            Some("nvidia-caps/nvidia-cap1")
        );
        assert_eq!(node_name("/dev/dri/renderD128"), None);
    }

    #[test]
    fn required_nodes() {
        let node = |name: &str| Node {
            name: name.into(),
            major: 195,
            minor: 0,
            mode: 0o666,
        };
        assert!(node("nvidia0").required() && node("nvidia12").required());
        assert!(node("nvidiactl").required() && node("nvidia-uvm").required());
        assert!(!node("nvidia-uvm-tools").required() && !node("nvidia-modeset").required());
        assert!(!node("nvidia-caps/nvidia-cap1").required());
    }
}
