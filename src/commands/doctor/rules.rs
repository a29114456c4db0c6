//! The cgroup device rules a container gets, judged as LXC applies them on
//! this host (the model is in `cgroup`): which keys count, which passed
//! nodes the rules let it open, and the lines that would.

use super::access::{need, need_text, node_name, Passed};
use super::cgroup::{self, Layout, Request, Rule, READ, WRITE};
use super::host::Node;
use super::{Level, Report};
use crate::context::Target;
use crate::pct_config::{Entry, PctConfig};

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
        if let Entry::Lxc { key, value } = entry {
            let is_allow = *key == allow;
            if is_allow || *key == deny {
                rules.extend(cgroup::parse_rule(is_allow, value, path));
            }
        }
    }
    rules
}

pub(super) fn checks(
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
    let dead: Vec<String> =
        pct.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Lxc { key, value } if key.starts_with(&format!("{ignored}.")) => Some(
                    format!("{}: {value}", key.replacen(ignored, layout.prefix(), 1)),
                ),
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
    // On v1, a devN node is open only through lines of the config's own
    // (as `enable --passthrough` adds them): said where one is missing.
    if layout == Layout::Legacy && blocked.iter().any(|n| passed.device(n).is_some()) {
        report.add(
            scope,
            "cgroup keys",
            Level::Warn,
            "Proxmox writes a devN's device rule as an lxc.cgroup2 line, which LXC ignores on this host's cgroup v1 layout",
            None,
        );
    }
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
