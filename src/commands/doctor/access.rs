//! Passing the host's nodes to the container: passthrough entries, cgroup
//! rules for their current majors, and access for unprivileged containers.

use super::host::Node;
use super::{Level, Report};
use crate::context::Target;
use crate::pct_config::PctConfig;

/// Which of the host's nodes the container's config passes.
pub(super) struct Passed {
    by_device: Vec<String>,
    mount_entries: Vec<(String, String)>,
}

impl Passed {
    pub(super) fn contains(&self, n: &Node) -> bool {
        self.by_device.contains(&n.name) || self.mount_entries.iter().any(|(s, _)| *s == n.name)
    }
}

pub(super) fn checks(target: &Target, nodes: &[Node], report: &mut Report, scope: &str) -> Passed {
    let vmid = target.vmid;
    let pct = &target.pct;
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
    let passed = Passed {
        by_device,
        mount_entries,
    };
    let mount_entries = &passed.mount_entries;
    let missing: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.required() && !passed.contains(n))
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
            .filter(|n| {
                passed.contains(n) && n.mode & 0o006 != 0o006 && !device_grants_access(pct, &n.name)
            })
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

    passed
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

fn device_grants_access(pct: &PctConfig, name: &str) -> bool {
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
        assert_eq!(node_name("/dev/dri/renderD128"), None);
    }
}
