//! Passing the host's nodes to the container, as Proxmox and LXC do it:
//! `devN` entries (`update_lxc_config`: parsed, their host node stat'ed, a
//! cgroup2 rule written), `lxc.mount.entry` binds (of a node, or of the
//! `/dev/nvidia-caps` folder), the cgroup rules that count on this host
//! (see `cgroup`), and who may open the nodes, through the idmap of an
//! unprivileged container.

use std::path::Path;

use super::cgroup::{self, Layout, Request, Rule, READ, WRITE};
use super::host::Node;
use super::{Level, Report};
use crate::context::Target;
use crate::pct_config::{Device, PctConfig};

/// Which of the host's nodes the container's config passes, and how.
pub(super) struct Passed {
    devices: Vec<Device>,
    /// `lxc.mount.entry` sources (node names, or the `nvidia-caps` folder)
    /// with their options.
    mounts: Vec<(String, String)>,
}

impl Passed {
    fn device(&self, n: &Node) -> Option<&Device> {
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
fn need(n: &Node) -> u8 {
    if n.name.starts_with("nvidia-caps/") {
        READ
    } else {
        READ | WRITE
    }
}

fn need_text(n: &Node) -> &'static str {
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
    cgroup_checks(target, nodes, &passed, layout, report, scope);
    access_checks(pct, nodes, &passed, report, scope);
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

/// The container's rules that count on this host, in the order LXC applies
/// them: Proxmox's for each `devN` (cgroup2 only), then its own.
fn rules(pct: &PctConfig, passed: &Passed, nodes: &[Node], layout: Layout) -> Vec<Rule> {
    let mut rules = Vec::new();
    if layout == Layout::Unified {
        for d in &passed.devices {
            let Some(n) = nodes.iter().find(|n| format!("/dev/{}", n.name) == d.path) else {
                continue;
            };
            let node = |allow, access: u8, text: &str| Rule::One {
                allow,
                kind: 'c',
                major: Some(n.major),
                minor: Some(n.minor),
                access,
                access_text: text.into(),
            };
            if d.deny_write {
                rules.extend([node(true, READ, "r"), node(false, WRITE, "w")]);
            } else {
                rules.push(node(true, READ | WRITE, "rw"));
            }
        }
    }
    let path = |p: &str| {
        let name = node_name(p)?;
        nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| (n.major, n.minor))
    };
    let (allow, deny) = (layout.key("allow"), layout.key("deny"));
    for entry in &pct.entries {
        if let crate::pct_config::Entry::Lxc { key, value } = entry {
            let is_allow = *key == allow;
            if is_allow || *key == deny {
                rules.extend(cgroup::parse_rule(is_allow, value, path));
            }
        }
    }
    rules
}

fn cgroup_checks(
    target: &Target,
    nodes: &[Node],
    passed: &Passed,
    layout: Layout,
    report: &mut Report,
    scope: &str,
) {
    let vmid = target.vmid;
    let pct = &target.pct;
    let (ignored, warning) = layout.ignored();
    let dead: Vec<String> = pct
        .entries
        .iter()
        .filter_map(|e| match e {
            crate::pct_config::Entry::Lxc { key, value }
                if key.starts_with(&format!("{ignored}.")) =>
            {
                Some(format!(
                    "{}: {value}",
                    key.replacen(ignored, layout.prefix(), 1)
                ))
            }
            _ => None,
        })
        .collect();
    if !dead.is_empty() {
        let host = match layout {
            Layout::Unified => "this host runs pure cgroup v2",
            Layout::Legacy => {
                "this host's devices controller is cgroup v1 (hybrid or legacy layout)"
            }
        };
        report.add(
            scope,
            "cgroup keys",
            Level::Warn,
            format!(
                "{ignored}.* lines do nothing here: {host}, and LXC ignores them (\"{warning}\")"
            ),
            Some(format!("write them as: {}", dead.join("; "))),
        );
    }
    if layout == Layout::Legacy && !passed.devices.is_empty() {
        report.add(
            scope,
            "cgroup keys",
            Level::Warn,
            "Proxmox writes a devN's device rule as an lxc.cgroup2 line, which LXC ignores on this host's cgroup v1 layout",
            None,
        );
    }
    let rules = rules(pct, passed, nodes, layout);
    let blocked: Vec<&Node> = nodes
        .iter()
        .filter(|n| passed.contains(n))
        .filter(|n| {
            let req = Request {
                major: n.major,
                minor: n.minor,
                need: need(n),
            };
            !cgroup::allows(layout, &rules, req)
        })
        .collect();
    if blocked.is_empty() {
        if nodes.iter().any(|n| passed.contains(n)) {
            report.add(
                scope,
                "cgroup rules",
                Level::Ok,
                "the device rules let the container open the passed nodes at their current majors",
                None,
            );
        }
        return;
    }
    let names: Vec<String> = blocked
        .iter()
        .map(|n| format!("{} (c {}:{}, {})", n.name, n.major, n.minor, need_text(n)))
        .collect();
    let mut detail = format!("no rule allows {}", names.join(", "));
    if blocked.iter().any(|n| n.name == "nvidia-uvm") {
        detail.push_str(" (the nvidia-uvm major is dynamic and changes between boots)");
    }
    let mut fixes = Vec::new();
    let mut majors = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    for n in &blocked {
        match passed.device(n) {
            Some(d) if d.deny_write && need(n) & WRITE != 0 => {
                detail.push_str(&format!(
                    "; dev{} has deny-write=1: Proxmox lets the container open /dev/{} read-only",
                    d.index, n.name
                ));
                fixes.push(format!(
                    "pct set {vmid} --dev{} {}",
                    d.index,
                    d.value_without("deny-write")
                ));
            }
            _ => {
                // Each major once, in the nodes' order.
                if majors.insert(n.major) {
                    let access = if blocked
                        .iter()
                        .any(|m| m.major == n.major && need(m) & WRITE != 0)
                    {
                        "rwm"
                    } else {
                        "r"
                    };
                    lines.push(format!("{}: c {}:* {access}", layout.key("allow"), n.major));
                }
            }
        }
    }
    if !lines.is_empty() {
        let place = if pct.has_sections() {
            " above its first [section] line (snapshots and pending changes follow it; a line below them is not part of the current config)"
        } else {
            " (above any [section] line)"
        };
        fixes.push(format!(
            "add to /etc/pve/lxc/{vmid}.conf{place}: {}",
            lines.join("; ")
        ));
    }
    report.add(
        scope,
        "cgroup rules",
        Level::Fail,
        detail,
        Some(fixes.join("; ")),
    );
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
/// (another uid, not in the node's group), for an open with `need`
/// (READ, WRITE); `None` owner ids are ids the container cannot name
/// (nobody).
pub(super) fn access(node: Owned, need: u8) -> Access {
    let wanted =
        (if need & READ != 0 { 0o4 } else { 0 }) | (if need & WRITE != 0 { 0o2 } else { 0 });
    let bits = |shift: u32| (node.mode >> shift) & wanted == wanted;
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

/// The container's idmap: none for a privileged one; its `lxc.idmap` lines
/// when it has any (which alone make it unprivileged for Proxmox), else
/// Proxmox's default (`0 100000 65536`).
fn idmap(pct: &PctConfig) -> Vec<(char, u32, u32, u32)> {
    if !pct.unprivileged() {
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
    let mut root_blocked = Vec::new();
    let mut services_blocked = Vec::new();
    let mut fixes = Vec::new();
    for node in nodes.iter().filter(|n| passed.contains(n)) {
        let path = format!("/dev/{}", node.name);
        let (owned, fix) = match passed.device(node) {
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
                    d.value_without("mode")
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
        let can = access(owned, need(node));
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
    } else if nodes.iter().any(|n| passed.contains(n)) {
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
/// `nvidia-caps/nvidia-cap1`, the folder `/dev/nvidia-caps` →
/// `nvidia-caps`; None for anything that is not NVIDIA's.
fn node_name(path: &str) -> Option<String> {
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
    fn access_as_proxmox_and_lxc_make_the_nodes() {
        let rw = READ | WRITE;
        let dev = |mode| Owned {
            uid: Some(0),
            gid: Some(0),
            mode,
        };
        // devN's default: 0660, container root's.
        assert_eq!(
            access(dev(0o660), rw),
            Access {
                root: true,
                services: false
            }
        );
        assert_eq!(
            access(dev(0o666), rw),
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
            access(bound(0o660), rw),
            Access {
                root: false,
                services: false
            }
        );
        assert_eq!(
            access(bound(0o666), rw),
            Access {
                root: true,
                services: true
            }
        );
        // nvidia-caps nodes are read-only by design: 0444 is all they need.
        assert_eq!(
            access(bound(0o444), READ),
            Access {
                root: true,
                services: true
            }
        );
        assert!(!access(bound(0o444), rw).root);
        // Privileged: host root is container root.
        let privileged = Owned {
            uid: inside(&[], 'u', 0),
            gid: inside(&[], 'g', 0),
            mode: 0o660,
        };
        assert_eq!(
            access(privileged, rw),
            Access {
                root: true,
                services: false
            }
        );
        assert_eq!(inside(&map, 'u', 100_044), Some(44));
    }

    /// Issue 15.2: a custom `lxc.idmap` makes a container unprivileged for
    /// Proxmox without `unprivileged: 1`; its own map counts.
    #[test]
    fn a_custom_idmap_is_unprivileged_and_maps_as_written() {
        let pct = PctConfig::parse("lxc.idmap: u 0 200000 65536\nlxc.idmap: g 0 200000 65536\n");
        let map = idmap(&pct);
        assert_eq!(map, [('u', 0, 200_000, 65_536), ('g', 0, 200_000, 65_536)]);
        assert_eq!(inside(&map, 'u', 0), None, "host root is nobody inside");
        assert!(idmap(&PctConfig::parse("unprivileged: 0\n")).is_empty());
        assert_eq!(idmap(&PctConfig::parse("unprivileged: 1\n")).len(), 2);
    }

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
