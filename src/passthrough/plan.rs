//! The change `enable --passthrough` makes to one container, and the one
//! `disable --passthrough` undoes, decided from the host's nodes, the
//! container's config (current and pending), its group and what this tool
//! wrote before. Pure: the command gathers the facts and applies the plan.

use std::collections::{BTreeMap, BTreeSet};

use super::raw::{raw, replaced};
use super::{Gpus, Group, Record, Support};
use crate::devices::cgroup::Layout;
use crate::devices::{is_gpu, Node};
use crate::pct_config::{PctConfig, RawLine};
use crate::vmid::Vmid;

/// Proxmox's `$MAX_DEVICES`: `dev0` to `dev255`.
const MAX_DEVICES: usize = 256;

pub struct Facts<'a> {
    pub vmid: Vmid,
    pub current: &'a PctConfig,
    pub pending: &'a PctConfig,
    /// What the loaded modules offer ([`crate::devices::Kernel::offered`]).
    pub offered: &'a [Node],
    /// The host's NVIDIA nodes now ([`crate::devices::present`]).
    pub present: &'a [Node],
    /// GPUs (by minor) with MIG instances, and how many.
    pub mig: &'a [(u32, usize)],
    pub chosen: &'a Gpus,
    pub group: &'a Group,
    pub support: Support,
    pub layout: Layout,
    pub record: Option<&'a Record>,
    pub replace_raw: bool,
}

/// One `devN` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub value: String,
    /// The value it replaces: ours, written earlier.
    pub before: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `pct set --devN`: new entries, and ours changed.
    pub set: Vec<Change>,
    /// `pct set --delete devN`: ours, for nodes no longer chosen.
    pub delete: Vec<String>,
    /// Raw lines that go, every copy: the admin's, replaced (`--replace-raw`).
    pub replace: Vec<RawLine>,
    /// Raw lines of ours that go (one copy each).
    pub drop: Vec<RawLine>,
    /// Raw lines added: root's keys, written in the config file.
    pub add: Vec<RawLine>,
    /// The record after the change.
    pub record: Record,
    /// What the admin is told, in order.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn edits_config_file(&self) -> bool {
        !(self.replace.is_empty() && self.drop.is_empty() && self.add.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// What was asked cannot be: a GPU this host does not have.
    Usage(String),
    /// The host is not ready for it.
    Host(String),
}

pub fn plan(f: &Facts) -> Result<Plan, Refused> {
    let wanted = wanted_nodes(f)?;
    let mut p = Plan {
        record: Record {
            vmid: f.vmid.get(),
            ..f.record.cloned().unwrap_or_default()
        },
        ..Plan::default()
    };
    // Ours: what the record names that the config still holds as written.
    let raw_now = f.current.raw_lines();
    p.record.raw.retain(|l| raw_now.contains(l));
    // The raw lines this plan wants in the config.
    let mut desired = Vec::new();
    match f.support {
        Support::Devices { .. } => {
            devices(f, &wanted, &mut p)?;
            replaced(f, &wanted, &raw_now, &mut p);
            if f.layout == Layout::Legacy {
                // Proxmox writes a devN's rule for cgroup v2 only, which LXC
                // ignores on this host: the rule that counts here.
                desired.extend(wanted.iter().map(|n| rule(f.layout, n)));
            }
        }
        Support::Raw => desired = raw(f, &wanted, &raw_now, &mut p),
    }
    for line in &desired {
        let there = raw_now.contains(line) && !p.replace.contains(line);
        if !there && !p.add.contains(line) {
            p.add.push(line.clone());
        }
    }
    let (stay, go): (Vec<RawLine>, Vec<RawLine>) = p
        .record
        .raw
        .iter()
        .cloned()
        .partition(|l| desired.contains(l));
    p.drop = go;
    p.record.raw = stay;
    p.record.raw.extend(p.add.iter().cloned());
    for &(minor, instances) in f.mig {
        if wanted.iter().any(|n| is_gpu(&n.name) && n.minor == minor) {
            p.notes.push(format!(
                "GPU {minor} is in MIG mode ({instances} instance capabilities): CUDA in the container sees a MIG device only with its /dev/nvidia-caps nodes, which are not passed: they exist only while the instances do (a devN whose node is missing refuses the start); mig/config and mig/monitor would let a tenant reconfigure or watch every tenant's instances"
            ));
        }
    }
    Ok(p)
}

/// The chosen GPUs' nodes and the ones every GPU needs, as they are on the
/// host now. Each must exist with the loaded module's numbers: Proxmox
/// refuses to start a container whose devN node is missing.
fn wanted_nodes<'a>(f: &Facts<'a>) -> Result<Vec<&'a Node>, Refused> {
    let chosen = chosen_gpus(f.offered, f.chosen)?;
    if !f.offered.iter().any(|n| n.name == "nvidia-uvm") {
        return Err(Refused::Host(
            "nvidia-uvm is not loaded, so /dev/nvidia-uvm, which CUDA needs, cannot be passed: load it and make the nodes with `pve-nvidia-hook devices` (and at every boot: systemctl enable pve-nvidia-hook-devices.service)".into(),
        ));
    }
    let mut wanted = Vec::new();
    let mut missing = Vec::new();
    let offered = f.offered.iter().filter(|n| {
        !n.name.starts_with("nvidia-caps/") && (!is_gpu(&n.name) || chosen.contains(&n.minor))
    });
    for o in offered {
        match f.present.iter().find(|p| p.name == o.name) {
            Some(p) if (p.major, p.minor) == (o.major, o.minor) => wanted.push(p),
            Some(p) => missing.push(format!(
                "/dev/{} is {}:{}, the loaded module's is {}:{} (left from another boot)",
                o.name, p.major, p.minor, o.major, o.minor
            )),
            None => missing.push(format!(
                "/dev/{} ({}:{}) does not exist",
                o.name, o.major, o.minor
            )),
        }
    }
    if !missing.is_empty() {
        return Err(Refused::Host(format!(
            "{}: Proxmox refuses to start a container whose devN node is missing on the host, so none is written. Make them now with `pve-nvidia-hook devices`, and at every boot before the guests: systemctl enable pve-nvidia-hook-devices.service",
            missing.join("; ")
        )));
    }
    Ok(wanted)
}

/// The minors of the GPUs chosen, each one the host's.
pub fn chosen_gpus(offered: &[Node], chosen: &Gpus) -> Result<Vec<u32>, Refused> {
    let gpus: Vec<u32> = offered
        .iter()
        .filter(|n| is_gpu(&n.name))
        .map(|n| n.minor)
        .collect();
    if gpus.is_empty() {
        return Err(Refused::Host(
            "NVIDIA's module lists no GPU (/proc/driver/nvidia/gpus): nothing to pass".into(),
        ));
    }
    match chosen {
        Gpus::All => Ok(gpus),
        Gpus::Minors(minors) => match minors.iter().find(|m| !gpus.contains(m)) {
            Some(m) => {
                let list: Vec<String> = gpus
                    .iter()
                    .map(|g| format!("{g} (/dev/nvidia{g})"))
                    .collect();
                Err(Refused::Usage(format!(
                    "no GPU {m} on this host; its GPUs: {}",
                    list.join(", ")
                )))
            }
            None => Ok(minors.clone()),
        },
    }
}

/// NVIDIA makes these nodes 0666 on a host unless told otherwise
/// (`NVreg_DeviceFileMode`): every user may open them, the driver keeps
/// each process's GPU state its own.
pub(super) fn open_to_everyone(n: &Node) -> bool {
    n.mode & 0o006 == 0o006
}

/// The `devN` value for a node: to the container's group (0660), else as
/// open as the host's node (0666 where NVIDIA's default leaves it so),
/// else Proxmox's default, 0660 for the container's root.
fn value(n: &Node, group: &Group) -> String {
    match group {
        Group::Found { gid, .. } => format!("/dev/{},gid={gid},mode=0660", n.name),
        _ if open_to_everyone(n) => format!("/dev/{},mode=0666", n.name),
        _ => format!("/dev/{}", n.name),
    }
}

pub(super) fn rule(layout: Layout, n: &Node) -> RawLine {
    RawLine::new(layout.key("allow"), format!("c {}:{} rw", n.major, n.minor))
}

pub(super) fn mount(n: &Node) -> RawLine {
    RawLine::new(
        "lxc.mount.entry",
        format!("/dev/{0} dev/{0} none bind,optional,create=file", n.name),
    )
}

/// Keys queued for deletion in `[pve:pending]`.
pub(super) fn pending_deletes(pending: &PctConfig) -> Vec<String> {
    pending
        .get("delete")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

fn devices(f: &Facts, wanted: &[&Node], p: &mut Plan) -> Result<(), Refused> {
    // Every devN as it will be at the next start: the pending value over
    // the current one, none where a delete is queued.
    let deleting = pending_deletes(f.pending);
    let mut latest: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let mut used: BTreeSet<usize> = BTreeSet::new();
    for (key, parsed) in f.current.devices().into_iter().chain(f.pending.devices()) {
        used.extend(key[3..].parse::<usize>().ok());
        let (value, path) = match parsed {
            Ok(d) => (d.value.clone(), Some(d.path)),
            Err(_) => (
                f.pending
                    .get(&key)
                    .or(f.current.get(&key))
                    .unwrap_or_default()
                    .to_string(),
                None,
            ),
        };
        latest.insert(key, (value, path));
    }
    for key in &deleting {
        if f.pending.get(key).is_none() {
            latest.remove(key);
        }
    }
    p.record
        .devices
        .retain(|k, v| latest.get(k).is_some_and(|(now, _)| now == v));
    let mut next = (0..MAX_DEVICES).filter(|i| !used.contains(i));
    let mut given = Vec::new();
    for n in wanted {
        let path = format!("/dev/{}", n.name);
        let value = value(n, f.group);
        given.push(path.clone());
        let same: Vec<(&String, &String)> = latest
            .iter()
            .filter(|(_, (_, p))| p.as_deref() == Some(path.as_str()))
            .map(|(k, (v, _))| (k, v))
            .collect();
        if same.iter().any(|(_, v)| **v == value) {
            continue;
        }
        if let Some((key, before)) = same
            .iter()
            .find(|(k, v)| p.record.devices.get(*k) == Some(*v))
        {
            p.set.push(Change {
                key: key.to_string(),
                value: value.clone(),
                before: Some(before.to_string()),
            });
            p.record.devices.insert(key.to_string(), value);
            continue;
        }
        if let Some((key, v)) = same.first() {
            p.notes.push(format!(
                "{key} already passes {path} ({v}): the admin's own, left as is"
            ));
            continue;
        }
        let Some(index) = next.next() else {
            return Err(Refused::Host(format!(
                "no devN is free (Proxmox allows dev0 to dev{})",
                MAX_DEVICES - 1
            )));
        };
        let key = format!("dev{index}");
        p.set.push(Change {
            key: key.clone(),
            value: value.clone(),
            before: None,
        });
        p.record.devices.insert(key, value);
    }
    p.notes.push(access_note(wanted, f.group));
    let gone: Vec<String> = p
        .record
        .devices
        .iter()
        .filter(|(k, _)| {
            // Keys set by this plan are not in `latest`.
            latest
                .get(*k)
                .is_some_and(|(_, path)| path.as_ref().is_none_or(|path| !given.contains(path)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        p.record.devices.remove(&key);
        p.delete.push(key);
    }
    Ok(())
}

/// Who can open the nodes in the container, and why.
fn access_note(wanted: &[&Node], group: &Group) -> String {
    let why = match group {
        Group::Found { name, gid } => {
            return format!(
                "the nodes go to its group {name} (gid {gid}), mode 0660: its root and the group's members can open them (a service's user joins it with usermod -aG {name} <user>)"
            )
        }
        Group::None(None) => "it has no video or render group".to_string(),
        Group::None(Some(why)) => why.clone(),
        Group::Unreadable(why) => format!(
            "its /etc/group cannot be read ({why}; run this again while it runs to give the nodes to its video group)"
        ),
    };
    match wanted.iter().find(|n| !open_to_everyone(n)) {
        None => format!(
            "{why}: mode 0666, as NVIDIA makes these nodes on the host (NVreg_DeviceFileMode's default: every user may open them, and the driver keeps each process's GPU state its own): every user in the container can open them"
        ),
        Some(n) => format!(
            "{why}, and this host's /dev/{} is not open to every user (mode {:04o}): only the container's root can open the nodes",
            n.name, n.mode
        ),
    }
}

#[cfg(test)]
mod tests;
