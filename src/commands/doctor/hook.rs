//! The hook's registration: the container's hookscript, its snippet, and
//! on a cluster the nodes that need it.

use std::os::unix::fs::MetadataExt;

use super::{Level, Report};
use crate::cluster;
use crate::context::{Ctx, Target};
use crate::snippet::is_ours;
use crate::storage;

pub(super) fn checks(ctx: &Ctx, target: &Target, report: &mut Report, scope: &str) {
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
