//! The host: its kernel module, its NVIDIA device nodes against what the
//! loaded modules offer, and the unit that makes them at boot.

use std::path::Path;

use super::{Level, Report};
use crate::context::Ctx;
use crate::devices::{is_required, Kernel, UNIT};
use crate::version::DriverVersion;

/// What makes the nodes now, and at every boot.
fn make_them() -> Option<String> {
    Some(format!(
        "pve-nvidia-hook devices (at every boot: systemctl enable {UNIT})"
    ))
}

/// A host device node of the NVIDIA driver.
pub(super) use crate::devices::Node;

pub(super) fn checks(ctx: &Ctx, nodes: &[Node], report: &mut Report) -> Option<DriverVersion> {
    let version = match ctx.host.driver_version() {
        Ok(Some((v, source))) => {
            report.add(
                "host",
                "kernel module",
                Level::Ok,
                format!("nvidia {v} loaded (from {source})"),
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
            make_them(),
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
            make_them(),
        );
    }
    against_the_modules(ctx, nodes, report);
    boot_unit(report);
    version
}

/// Every node the loaded modules offer (as NVIDIA's tools would make it:
/// [`Kernel::nodes`]) exists now, with its number; a mode or owner other
/// than NVIDIA's is the admin's choice, said but not failed.
fn against_the_modules(ctx: &Ctx, nodes: &[Node], report: &mut Report) {
    let paths = &ctx.config().paths;
    let kernel = Kernel::read(&paths.sys, &paths.proc);
    if !kernel.nvidia {
        return;
    }
    let wanted = kernel.nodes();
    let (mut failed, mut odd) = (Vec::new(), Vec::new());
    for w in &wanted {
        match nodes.iter().find(|n| n.name == w.name) {
            None if is_required(&w.name) => failed.push(format!("{} missing", w.name)),
            None => odd.push(format!("{} missing", w.name)),
            Some(n) if (n.major, n.minor) != (w.major, w.minor) => failed.push(format!(
                "{} is {}:{}, the loaded module's is {}:{} (left from another boot)",
                w.name, n.major, n.minor, w.major, w.minor
            )),
            Some(n) if (n.mode, n.uid, n.gid) != (w.mode, w.uid, w.gid) => odd.push(format!(
                "{} is {:04o} {}:{}, NVIDIA's is {:04o} {}:{}",
                w.name, n.mode, n.uid, n.gid, w.mode, w.uid, w.gid
            )),
            Some(_) => {}
        }
    }
    let (level, detail) = match (failed.is_empty(), odd.is_empty()) {
        (true, true) => (
            Level::Ok,
            format!(
                "all {} nodes the loaded modules offer exist, with NVIDIA's modes",
                wanted.len()
            ),
        ),
        (true, false) => (Level::Warn, odd.join("; ")),
        (false, _) => (Level::Fail, [failed, odd].concat().join("; ")),
    };
    let fix = (level != Level::Ok).then(make_them).flatten();
    report.add("host", "nodes now", level, detail, fix);
}

/// Whether `pve-nvidia-hook-devices.service` makes the nodes at boot, as
/// `systemctl is-enabled` says (it reads the unit files; no running
/// systemd is asked).
fn boot_unit(report: &mut Report) {
    let Some(state) = crate::devices::unit_state() else {
        report.add(
            "host",
            "boot unit",
            Level::Warn,
            format!("no systemctl: cannot tell whether {UNIT} makes the nodes at boot"),
            None,
        );
        return;
    };
    let (level, detail, fix) = match state.as_deref() {
        Ok("enabled") => (
            Level::Ok,
            format!("{UNIT} is enabled: the nodes are made at every boot, before the guests start"),
            None,
        ),
        Ok(state @ ("disabled" | "masked")) => (
            Level::Warn,
            format!(
                "{UNIT} is {state}: after a boot, nvidia-uvm may be missing until something runs nvidia-smi"
            ),
            Some(if state == "masked" {
                format!("systemctl unmask {UNIT} && systemctl enable --now {UNIT}")
            } else {
                format!("systemctl enable --now {UNIT}")
            }),
        ),
        Ok("") => (
            Level::Warn,
            format!("{UNIT} is not installed (the package ships it)"),
            Some("apt install --reinstall pve-nvidia-hook".into()),
        ),
        Ok(other) => (Level::Warn, format!("{UNIT} is {other}"), None),
        Err(e) => (Level::Warn, format!("systemctl is-enabled {UNIT}: {e:#}"), None),
    };
    report.add("host", "boot unit", level, detail, fix);
}

pub(super) fn nodes(dev: &Path) -> Vec<Node> {
    crate::devices::present(dev)
}
