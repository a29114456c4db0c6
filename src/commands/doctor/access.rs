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

    fn any(&self) -> bool {
        !self.by_device.is_empty() || !self.mount_entries.is_empty()
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
        // Each major once, in the nodes' order (dedup alone keeps a major
        // that comes back after another).
        let mut majors: Vec<u32> = uncovered.iter().map(|n| n.major).collect();
        let mut seen = std::collections::BTreeSet::new();
        majors.retain(|m| seen.insert(*m));
        let names: Vec<&str> = uncovered.iter().map(|n| n.name.as_str()).collect();
        let rules: Vec<String> = majors
            .iter()
            .map(|m| format!("lxc.cgroup2.devices.allow: c {m}:* rwm"))
            .collect();
        let place = if pct.has_sections() {
            " above its first [section] line (snapshots and pending changes follow it; a line below them is not part of the current config)"
        } else {
            " (above any [section] line)"
        };
        report.add(
            scope,
            "cgroup rules",
            Level::Fail,
            format!(
                "no rule allows {} at its current major (the nvidia-uvm major is dynamic and changes between boots)",
                names.join(", ")
            ),
            Some(format!(
                "add to /etc/pve/lxc/{vmid}.conf{place}: {}",
                rules.join("; ")
            )),
        );
    } else if !mount_entries.is_empty() {
        report.add(
            scope,
            "cgroup rules",
            Level::Ok,
            "the bound nodes' current majors are allowed",
            None,
        );
    }
    access_checks(pct, nodes, &passed, report, scope);
    passed
}

/// Who may open a node in the container: its root, and a service running
/// as another user (ollama, plex, jellyfin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Access {
    pub root: bool,
    pub services: bool,
}

/// A node's owner and mode as the container sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owned {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
}

/// What the mode bits give container root (uid 0, gid 0) and a service
/// (another uid, not in the node's group); `None` owner ids are ids the
/// container cannot name (nobody).
pub(super) fn access(node: Owned) -> Access {
    let bits = |shift: u32| (node.mode >> shift) & 0o6 == 0o6;
    let root = if node.uid == Some(0) {
        bits(6)
    } else if node.gid == Some(0) {
        bits(3)
    } else {
        bits(0)
    };
    Access {
        root,
        services: bits(0),
    }
}

/// A host id as the container sees it through its idmap (`u 0 100000
/// 65536`): None when outside every range (it shows as nobody).
fn inside(idmap: &[(char, u32, u32, u32)], kind: char, host: u32) -> Option<u32> {
    if idmap.is_empty() {
        return Some(host);
    }
    idmap
        .iter()
        .find(|(k, _, h, n)| *k == kind && (*h..h.saturating_add(*n)).contains(&host))
        .and_then(|(_, ct, h, _)| ct.checked_add(host - h))
}

/// The container's idmap: Proxmox's default for an unprivileged container
/// (`0 100000 65536`), unless `lxc.idmap` lines say otherwise; none for a
/// privileged one.
fn idmap(pct: &PctConfig) -> Vec<(char, u32, u32, u32)> {
    if pct.get("unprivileged") != Some("1") {
        return Vec::new();
    }
    let custom: Vec<(char, u32, u32, u32)> = pct
        .lxc_values("lxc.idmap")
        .filter_map(|v| {
            let mut w = v.split_whitespace();
            let kind = w.next()?.chars().next()?;
            Some((
                kind,
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
            ))
        })
        .collect();
    if custom.is_empty() {
        vec![('u', 0, 100_000, 65_536), ('g', 0, 100_000, 65_536)]
    } else {
        custom
    }
}

/// Access per passthrough kind, as Proxmox and LXC make the nodes: a
/// `devN` node is created by Proxmox with mode 0660 (or `mode=`), owned by
/// the container's uid/gid 0 (or `uid=`/`gid=`), mapped through the idmap;
/// an `lxc.mount.entry` binds the host's node with the host's owner and
/// mode, which an unprivileged container sees through its idmap (host root
/// as nobody).
fn access_checks(
    pct: &PctConfig,
    nodes: &[Node],
    passed: &Passed,
    report: &mut Report,
    scope: &str,
) {
    let map = idmap(pct);
    let devices = pct.devices();
    let mut root_blocked = Vec::new();
    let mut services_blocked = Vec::new();
    let mut fixes = Vec::new();
    for node in nodes.iter().filter(|n| passed.contains(n)) {
        let path = format!("/dev/{}", node.name);
        let (owned, fix) = match devices.iter().find(|d| d.path == path) {
            Some(d) => (
                Owned {
                    uid: Some(d.uid.unwrap_or(0)),
                    gid: Some(d.gid.unwrap_or(0)),
                    mode: d.mode.unwrap_or(0o660),
                },
                format!(
                    "pct set {} --dev{} {},mode=0666 (or gid=<the service's group>)",
                    scope.trim_start_matches("CT "),
                    d.index,
                    d.value
                        .split(',')
                        .filter(|o| !o.starts_with("mode="))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ),
            None => (
                Owned {
                    uid: inside(&map, 'u', node.uid),
                    gid: inside(&map, 'g', node.gid),
                    mode: node.mode,
                },
                format!(
                    "{path}: pass it as devN with mode=0666 instead of lxc.mount.entry (the host's node is {:o}, {}:{})",
                    node.mode, node.uid, node.gid
                ),
            ),
        };
        let can = access(owned);
        if !can.root {
            root_blocked.push(node.name.clone());
            fixes.push(fix);
        } else if !can.services {
            services_blocked.push(node.name.clone());
            fixes.push(fix);
        }
    }
    let who = if map.is_empty() {
        "container root"
    } else {
        "container root (a mapped uid)"
    };
    if !root_blocked.is_empty() {
        report.add(
            scope,
            "device access",
            Level::Fail,
            format!("{who} cannot open {}", root_blocked.join(", ")),
            Some(fixes.join("; ")),
        );
    } else if !services_blocked.is_empty() {
        report.add(
            scope,
            "device access",
            Level::Warn,
            format!(
                "{who} can open the passed nodes, services running as another user (ollama, plex, jellyfin) cannot open {}",
                services_blocked.join(", ")
            ),
            Some(fixes.join("; ")),
        );
    } else if passed.any() {
        report.add(
            scope,
            "device access",
            Level::Ok,
            format!("{who} and other users can open the passed nodes"),
            None,
        );
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

fn free_dev_index(pct: &PctConfig) -> usize {
    (0..)
        .find(|i| pct.get(&format!("dev{i}")).is_none())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_as_proxmox_and_lxc_make_the_nodes() {
        let dev = |mode| Owned {
            uid: Some(0),
            gid: Some(0),
            mode,
        };
        // devN's default: 0660, container root's.
        assert_eq!(
            access(dev(0o660)),
            Access {
                root: true,
                services: false
            }
        );
        assert_eq!(
            access(dev(0o666)),
            Access {
                root: true,
                services: true
            }
        );
        // A host node bound into an unprivileged container: host root is
        // nobody there, only the mode's last digit counts.
        let map = vec![('u', 0, 100_000, 65_536), ('g', 0, 100_000, 65_536)];
        let bound = |mode| Owned {
            uid: inside(&map, 'u', 0),
            gid: inside(&map, 'g', 0),
            mode,
        };
        assert_eq!(bound(0o660).uid, None);
        assert_eq!(
            access(bound(0o660)),
            Access {
                root: false,
                services: false
            }
        );
        assert_eq!(
            access(bound(0o666)),
            Access {
                root: true,
                services: true
            }
        );
        // Privileged: host root is container root.
        let privileged = Owned {
            uid: inside(&[], 'u', 0),
            gid: inside(&[], 'g', 0),
            mode: 0o660,
        };
        assert_eq!(
            access(privileged),
            Access {
                root: true,
                services: false
            }
        );
        assert_eq!(inside(&map, 'u', 100_044), Some(44));
    }

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
