//! Writing what the plan says, the way Proxmox's tools change a config,
//! and telling when it reaches the container.

use anyhow::{bail, Result};

use super::{config_text, say};
use crate::context::Ctx;
use crate::passthrough::{Plan, Record, Support};
use crate::pct_config::{edit_current, Edit, PctConfig, RawLine};
use crate::vmid::Vmid;

pub(super) fn stamped(record: &Record) -> Record {
    Record {
        recorded_unix: crate::state::unix_now(),
        ..record.clone()
    }
}

/// Of `intent` (what was ours and what was to be written), what the
/// config holds exactly as written; the planned value of a key first.
pub(super) fn held(
    intent: &Record,
    planned: &Record,
    current: &PctConfig,
    pending: &PctConfig,
) -> Record {
    let holds =
        |key: &str, value: &str| current.get(key) == Some(value) || pending.get(key) == Some(value);
    let mut landed = Record {
        vmid: intent.vmid,
        ..Record::default()
    };
    for (key, value) in planned.devices.iter().chain(&intent.devices) {
        if !landed.devices.contains_key(key) && holds(key, value) {
            landed.devices.insert(key.clone(), value.clone());
        }
    }
    let raw_now = current.raw_lines();
    for line in planned.raw.iter().chain(&intent.raw) {
        if raw_now.contains(line) && !landed.raw.contains(line) {
            landed.raw.push(line.clone());
        }
    }
    landed
}

/// When the change reaches the container: what Proxmox hot-plugs into a
/// running one (a new devN, from pve-container 6.0.4) and what waits for
/// its next start. `after`: the config as it is now (else predicted).
pub(super) fn when(
    vmid: Vmid,
    running: bool,
    support: Support,
    plan: &Plan,
    after: Option<(&PctConfig, &PctConfig)>,
) {
    let next_start = if running {
        format!("at its next start (pct reboot {vmid})")
    } else {
        "when it next starts".to_string()
    };
    let (mut now, mut later): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for c in &plan.set {
        let live = match after {
            Some((current, _)) => current.get(&c.key) == Some(c.value.as_str()),
            None => matches!(support, Support::Devices { hotplug: true }) && c.before.is_none(),
        };
        if running && live {
            now.push(&c.key);
        } else {
            later.push(&c.key);
        }
    }
    later.extend(plan.delete.iter().map(String::as_str));
    let (plugged, would) = match after {
        Some(_) => ("hot-plugged: the running container has them now", ""),
        None => ("would be hot-plugged into the running container", "would "),
    };
    if !now.is_empty() {
        say(vmid, &format!("{} {plugged}", now.join(", ")));
    }
    if !later.is_empty() {
        let why = match support {
            _ if !running => "",
            Support::Devices { hotplug: true } => " (Proxmox hot-plugs only a new devN)",
            _ => " (this Proxmox hot-plugs no devN; pve-container 6.0.4 and later do)",
        };
        say(
            vmid,
            &format!("{} {would}take effect {next_start}{why}", later.join(", ")),
        );
    }
    if plan.edits_config_file() {
        say(
            vmid,
            &format!("the lines in its config file {would}take effect {next_start}"),
        );
    }
}

/// Raw lines changed in this node's config file, under Proxmox's config
/// lock, as only root may; a config locked by a backup, a migration or a
/// snapshot is refused, as Proxmox's `check_lock` refuses it.
pub(super) fn edit_config(
    ctx: &Ctx,
    vmid: Vmid,
    remove_all: &[RawLine],
    remove_one: &[RawLine],
    add: &[RawLine],
) -> Result<()> {
    let paths = &ctx.config().paths;
    let _lock = crate::state::config_lock(&paths.config_locks, vmid)?;
    let path = paths.pve.join(format!("lxc/{vmid}.conf"));
    let text = config_text(ctx, vmid)?;
    if let Some(lock) = PctConfig::parse(&text).get("lock") {
        bail!("CT is locked ({lock})");
    }
    let edited = edit_current(
        &text,
        &Edit {
            remove_all,
            remove_one,
            add,
        },
    );
    if edited != text {
        crate::fsutil::write_atomic(&path, edited.as_bytes(), 0o640)?;
    }
    Ok(())
}
