//! Raw `lxc.*` lines: the admin's that the new `devN` entries replace, and
//! the whole passthrough on a Proxmox without `devN`.

use std::collections::BTreeSet;

use super::plan::{mount, open_to_everyone, rule, Facts, Plan};
use super::Group;
use crate::devices::cgroup::{parse_rule, Rule};
use crate::devices::Node;
use crate::pct_config::RawLine;

/// The admin's raw lines for the nodes the devN entries now pass: bind
/// mounts onto those nodes, and allow rules of their majors that no bind
/// left in place still needs. Removed with `--replace-raw`, else said.
pub(super) fn replaced(f: &Facts, wanted: &[&Node], raw_now: &[RawLine], p: &mut Plan) {
    let ours = |l: &RawLine| f.record.is_some_and(|r| r.raw.contains(l));
    let target = |l: &RawLine| -> Option<String> {
        let target = l.value.split_whitespace().nth(1)?;
        Some(target.trim_start_matches('/').to_string())
    };
    let binds: Vec<&RawLine> = raw_now
        .iter()
        .filter(|l| l.key == "lxc.mount.entry" && !ours(l))
        .collect();
    let (replaced_binds, kept_binds): (Vec<&RawLine>, Vec<&RawLine>) =
        binds.into_iter().partition(|l| {
            target(l).is_some_and(|t| wanted.iter().any(|n| t == format!("dev/{}", n.name)))
        });
    // Nodes the container still gets from a bind that stays.
    let still_bound: Vec<&Node> = f
        .present
        .iter()
        .filter(|n| {
            kept_binds
                .iter()
                .any(|l| target(l).is_some_and(|t| t == format!("dev/{}", n.name)))
        })
        .collect();
    let majors: BTreeSet<u32> = wanted.iter().map(|n| n.major).collect();
    let covers = |rule: &Rule, n: &Node| match rule {
        Rule::One {
            allow: true,
            kind: 'a' | 'c',
            major: Some(m),
            minor,
            ..
        } => *m == n.major && minor.is_none_or(|x| x == n.minor),
        _ => false,
    };
    let mut lines: Vec<RawLine> = replaced_binds.into_iter().cloned().collect();
    for l in raw_now {
        let is_allow = l.key == "lxc.cgroup.devices.allow" || l.key == "lxc.cgroup2.devices.allow";
        if !is_allow || ours(l) {
            continue;
        }
        let Some(rule) = parse_rule(true, &l.value, |_| None) else {
            continue;
        };
        let nvidia = matches!(&rule, Rule::One { kind: 'a' | 'c', major: Some(m), .. } if majors.contains(m));
        if nvidia && !still_bound.iter().any(|n| covers(&rule, n)) {
            lines.push(l.clone());
        }
    }
    lines.dedup();
    if lines.is_empty() {
        return;
    }
    let shown: Vec<String> = lines.iter().map(ToString::to_string).collect();
    if f.replace_raw {
        p.notes.push(format!(
            "raw lines the devN entries replace are removed: {}",
            shown.join("; ")
        ));
        p.replace = lines;
    } else {
        p.notes.push(format!(
            "raw lines for the same nodes stay and double up with the devN entries (a node bound twice; rules the devN entries already give): {} (--replace-raw removes them)",
            shown.join("; ")
        ));
    }
}

/// Before PVE 8.1: a bind mount of each host node and its allow rule, as
/// Proxmox's wiki gives them, with today's numbers: the lines wanted.
pub(super) fn raw(f: &Facts, wanted: &[&Node], raw_now: &[RawLine], p: &mut Plan) -> Vec<RawLine> {
    let vmid = f.vmid;
    let mut desired = Vec::new();
    for n in wanted {
        let bind = mount(n);
        let theirs = raw_now.iter().find(|l| {
            l.key == "lxc.mount.entry"
                && **l != bind
                && l.value
                    .split_whitespace()
                    .nth(1)
                    .map(|t| t.trim_start_matches('/'))
                    == Some(&format!("dev/{}", n.name))
        });
        match theirs {
            Some(l) => p.notes.push(format!("{l}: the admin's own, left as is")),
            None => desired.push(bind),
        }
        desired.push(rule(f.layout, n));
    }
    p.notes.push(format!(
        "this Proxmox predates devN (pve-container 5.0.7, PVE 8.1): the nodes are bound with lxc.mount.entry (optional: a missing node does not refuse the start) and allowed with their numbers as they are today; nvidia-uvm's major ({}) can change with the kernel or driver: `pve-nvidia-hook doctor {vmid}` says when, and this command then replaces its own lines",
        wanted.iter().find(|n| n.name == "nvidia-uvm").map_or(0, |n| n.major)
    ));
    if f.replace_raw {
        p.notes.push(
            "--replace-raw: nothing to replace on this Proxmox (its passthrough is raw lines)"
                .into(),
        );
    }
    let closed: Vec<&str> = wanted
        .iter()
        .filter(|n| !open_to_everyone(n) && f.current.unprivileged())
        .map(|n| n.name.as_str())
        .collect();
    if !closed.is_empty() {
        p.notes.push(format!(
            "a bound node keeps the host's owner and mode, and the host's root is nobody in this unprivileged container: it cannot open {} (not 0666 on the host); Proxmox VE 8.1's devN can give them to its group",
            closed.join(", ")
        ));
    } else if let Group::Found { name, .. } = f.group {
        p.notes.push(format!(
            "the nodes keep the host's owner and mode: its {name} group is not used (devN's gid=, PVE 8.1, would)"
        ));
    }
    desired
}
