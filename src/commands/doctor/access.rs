//! Passing the host's nodes to the container, as Proxmox and LXC do it:
//! `devN` entries (`update_lxc_config`: parsed, their host node stat'ed),
//! `lxc.mount.entry` binds (of a node, or of the `/dev/nvidia-caps`
//! folder); then the cgroup rules that count on this host (`rules`) and
//! who may open the nodes (`ownership`).

use std::path::Path;

use super::cgroup::{Layout, READ, WRITE};
use super::host::Node;
use super::{ownership, rules, Level, Report};
use crate::context::Target;
use crate::pct_config::{Device, PctConfig};

/// Which of the host's nodes the container's config passes, and how.
pub(super) struct Passed {
    pub(super) devices: Vec<Device>,
    /// `lxc.mount.entry` sources (node names, or the `nvidia-caps` folder)
    /// with their options.
    pub(super) mounts: Vec<(String, String)>,
}

impl Passed {
    pub(super) fn device(&self, n: &Node) -> Option<&Device> {
        let path = format!("/dev/{}", n.name);
        self.devices.iter().find(|d| d.path == path)
    }

    fn mounted(&self, n: &Node) -> bool {
        self.mounts.iter().any(|(source, _)| {
            *source == n.name || (source == "nvidia-caps" && n.name.starts_with("nvidia-caps/"))
        })
    }

    pub(super) fn contains(&self, n: &Node) -> bool {
        self.device(n).is_some() || self.mounted(n)
    }
}

/// What a workload opens a node for: `/dev/nvidia-caps/*` read-only (NVIDIA
/// makes them 0400/0444 and the driver opens them so), the others
/// read-write.
pub(super) fn need(n: &Node) -> u8 {
    if n.name.starts_with("nvidia-caps/") {
        READ
    } else {
        READ | WRITE
    }
}

pub(super) fn need_text(n: &Node) -> &'static str {
    if need(n) & WRITE == 0 {
        "read-only"
    } else {
        "read-write"
    }
}

pub(super) fn checks(
    target: &Target,
    nodes: &[Node],
    dev: &Path,
    layout: Layout,
    report: &mut Report,
    scope: &str,
) -> Passed {
    let pct = &target.pct;
    let devices = device_checks(target, dev, report, scope);
    let mounts: Vec<(String, String)> = pct
        .lxc_values("lxc.mount.entry")
        .filter_map(|v| {
            let mut words = v.split_whitespace();
            let source = node_name(words.next()?)?;
            Some((source, words.nth(2).unwrap_or_default().to_string()))
        })
        .collect();
    let passed = Passed { devices, mounts };
    passthrough_check(target, nodes, &passed, report, scope);
    let rigid: Vec<&str> = passed
        .mounts
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
    rules::checks(target, nodes, &passed, layout, report, scope);
    ownership::checks(target.vmid, pct, nodes, &passed, report, scope);
    passed
}

/// Each `devN` as `update_lxc_config` meets it at every start, before any
/// hook: a value `parse_device` refuses, or a host node that does not
/// exist ("Device … does not exist") or is no device, and Proxmox refuses
/// the start. The entries Proxmox accepts.
fn device_checks(target: &Target, dev: &Path, report: &mut Report, scope: &str) -> Vec<Device> {
    let vmid = target.vmid;
    let mut accepted = Vec::new();
    for (key, parsed) in target.pct.devices() {
        let problem = match &parsed {
            Err(e) => Some((
                format!("{key}: {e}"),
                format!("pct set {vmid} --{key} /dev/<node>[,mode=0NNN][,uid=N][,gid=N][,deny-write=1]"),
            )),
            Ok(d) => host_node_problem(d, dev).map(|p| {
                (
                    format!("{key}: {p} on this host"),
                    if d.path == "/dev/nvidia-uvm" {
                        "create it at every boot before guests start (a oneshot unit running nvidia-modprobe -c 0 -u, before pve-guests.service), or bind it instead: lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file".to_string()
                    } else {
                        format!("make {} exist at boot, or remove the entry (pct set {vmid} --delete {key})", d.path)
                    },
                )
            }),
        };
        match problem {
            Some((detail, fix)) => report.add(
                scope,
                "devices",
                Level::Fail,
                format!("{detail}: Proxmox refuses to start the container (update_lxc_config, before any hook runs)"),
                Some(fix),
            ),
            None => accepted.extend(parsed.ok()),
        }
    }
    accepted
}

/// `get_device_mode_and_rdev`: the node must exist on the host and be a
/// device.
fn host_node_problem(d: &Device, dev: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let host = dev.join(d.path.trim_start_matches("/dev/"));
    match std::fs::metadata(&host) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("Device {} does not exist", d.path))
        }
        Err(e) => Some(format!("Error accessing device {}: {e}", d.path)),
        Ok(m) if !m.file_type().is_char_device() && !m.file_type().is_block_device() => {
            Some(format!("{} is not a device", d.path))
        }
        Ok(_) => None,
    }
}

fn passthrough_check(
    target: &Target,
    nodes: &[Node],
    passed: &Passed,
    report: &mut Report,
    scope: &str,
) {
    let vmid = target.vmid;
    // One GPU is enough: a container given some of the host's GPUs
    // (`enable --passthrough --gpu 0`) is one admin's choice.
    let is_gpu = |n: &Node| crate::devices::is_gpu(&n.name);
    let a_gpu = nodes.iter().any(|n| is_gpu(n) && passed.contains(n));
    let missing: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.required() && !passed.contains(n) && !(a_gpu && is_gpu(n)))
        .collect();
    let others: Vec<&str> = nodes
        .iter()
        .filter(|n| is_gpu(n) && !passed.contains(n))
        .map(|n| n.name.as_str())
        .collect();
    if nodes.is_empty() {
        report.add(
            scope,
            "passthrough",
            Level::Warn,
            "the host has no NVIDIA device nodes to compare with",
            None,
        );
    } else if missing.is_empty() && others.is_empty() {
        report.add(
            scope,
            "passthrough",
            Level::Ok,
            "every NVIDIA node of the host is passed",
            None,
        );
    } else if missing.is_empty() {
        report.add(
            scope,
            "passthrough",
            Level::Ok,
            format!(
                "the nodes its GPUs need are passed (not the host's other GPUs: {})",
                others.join(", ")
            ),
            None,
        );
    } else {
        let free = free_dev_index(&target.pct);
        let fix = missing
            .iter()
            .enumerate()
            .map(|(i, n)| format!("pct set {vmid} --dev{} /dev/{}", free + i, n.name))
            .collect::<Vec<_>>()
            .join("; ");
        let names: Vec<&str> = missing.iter().map(|n| n.name.as_str()).collect();
        report.add(
            scope,
            "passthrough",
            Level::Fail,
            format!("not passed to the container: {}", names.join(", ")),
            Some(format!(
                "{fix} (PVE 8.1+), then restart it. Proxmox refuses to start a container whose devN node is missing on the host; /dev/nvidia-uvm exists only once nvidia-uvm is loaded and its node made, so create it at boot (nvidia-modprobe -c 0 -u) or bind it with lxc.mount.entry and `optional`"
            )),
        );
    }
}

/// `/dev/nvidia0` → `nvidia0`, `/dev/nvidia-caps/nvidia-cap1` →
/// `nvidia-caps/nvidia-cap1`, the folder `/dev/nvidia-caps` →
/// `nvidia-caps`; None for anything that is not NVIDIA's.
pub(super) fn node_name(path: &str) -> Option<String> {
    let (dir, base) = path.trim_end_matches('/').rsplit_once('/')?;
    if !base.starts_with("nvidia") {
        return None;
    }
    Some(if dir.ends_with("/nvidia-caps") {
        format!("nvidia-caps/{base}")
    } else {
        base.to_string()
    })
}

fn free_dev_index(pct: &PctConfig) -> usize {
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
        assert_eq!(
            node_name("/dev/nvidia-caps/").as_deref(),
            Some("nvidia-caps")
        );
        assert_eq!(node_name("/dev/dri/renderD128"), None);
    }
}
