//! The hook's registration: the container's hookscript and its snippet on
//! every node the container may start on (Proxmox aborts a start whose
//! hookscript is missing), and a chained hookscript's record and script.

use std::os::unix::fs::MetadataExt;

use super::{Level, Report};
use crate::chain::{self, Chains};
use crate::cluster::{self, Api};
use crate::context::{Ctx, Target};
use crate::snippet::is_ours;
use crate::storage::{self, Storage};

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
    let paths = &ctx.config().paths;
    let storages = match storage::load(&paths.pve) {
        Ok(storages) => storages,
        Err(e) => {
            report.add(scope, "hook", Level::Fail, format!("{e:#}"), None);
            return;
        }
    };
    if let Some(store) = snippet_on_every_node(ctx, vmid, volume, &storages, report, scope) {
        report.add(
            scope,
            "hook",
            Level::Ok,
            format!("{volume} ({})", store.display()),
            None,
        );
    }
    chain_checks(ctx, target, &storages, report, scope);
}

/// The volume as this node and, on a cluster, every other node sees it:
/// this node's file when all is well.
fn snippet_on_every_node(
    ctx: &Ctx,
    vmid: crate::vmid::Vmid,
    volume: &str,
    storages: &[Storage],
    report: &mut Report,
    scope: &str,
) -> Option<std::path::PathBuf> {
    let paths = &ctx.config().paths;
    let Some((store, path)) = storage::resolve_volume(storages, volume, &paths.storage_root) else {
        report.add(
            scope,
            "hook",
            Level::Fail,
            format!("{volume}: no such storage; Proxmox aborts the container's start"),
            Some(format!("pve-nvidia-hook enable {vmid}")),
        );
        return None;
    };
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if !executable {
        report.add(
            scope,
            "hook",
            Level::Fail,
            format!(
                "{} is missing or not executable: Proxmox aborts the container's start on this node",
                path.display()
            ),
            Some(format!("pve-nvidia-hook enable {vmid}")),
        );
        return None;
    }
    let nodes = cluster::nodes(&paths.pve);
    if nodes.len() > 1 {
        let this = cluster::node_name(&paths.pve);
        // Our snippet under a chain's name: each node's `sync` places it.
        let presence = match chain::token_of(volume) {
            Some(token) => Chains::new(&paths.pve).presence(&nodes, &this, store, token),
            None => cluster::presence(&Api, &nodes, &this, store, volume),
        };
        if !presence.lacking.is_empty() {
            report.add(
                scope,
                "cluster",
                Level::Fail,
                format!(
                    "{volume} is missing on {}: the container cannot start there (migration, HA recovery)",
                    presence.lacking.join("; ")
                ),
                Some(format!(
                    "install pve-nvidia-hook on those nodes (its package places the snippet), or move the hook to shared storage: pve-nvidia-hook enable --storage {} {vmid}",
                    storage::shared_snippet_storages(storages, &this).join("|")
                )),
            );
        } else if let Some(u) = presence.unverified {
            report.add(
                scope,
                "cluster",
                Level::Warn,
                u.describe(volume),
                Some(u.remedy()),
            );
        } else {
            let how = if store.is_shared() {
                "on shared storage"
            } else {
                "on node-local storage"
            };
            report.add(
                scope,
                "cluster",
                Level::Ok,
                format!("every node ({}) has {volume} ({how})", nodes.join(", ")),
                None,
            );
        }
    }
    Some(path)
}

/// A chained hookscript: its record (named by the container's hookscript,
/// or before 0.3 by a tag), its script as Proxmox would check it, on every
/// node.
fn chain_checks(
    ctx: &Ctx,
    target: &Target,
    storages: &[Storage],
    report: &mut Report,
    scope: &str,
) {
    let vmid = target.vmid;
    let paths = &ctx.config().paths;
    let chains = Chains::new(&paths.pve);
    let token = match chain::link(&target.pct) {
        chain::Link::None => return,
        chain::Link::Hookscript(token) => token,
        chain::Link::LegacyTag(token) => {
            report.add(
                scope,
                "chained hook",
                Level::Warn,
                format!(
                    "chained through the tag {} (pve-nvidia-hook before 0.3): any user who may edit \
                     the container's tags can switch it off",
                    chain::legacy_tag(&token)
                ),
                Some(format!("pve-nvidia-hook enable --chain {vmid}")),
            );
            token
        }
    };
    let record = match chains.get(&token) {
        Ok(Some(r)) if r.vmid == vmid.get() => r,
        Ok(Some(r)) => {
            report.add(
                scope,
                "chained hook",
                Level::Fail,
                format!(
                    "the chain its hookscript names is CT {}'s ({}; a clone, or a restore under a new \
                     vmid): it never runs for this container",
                    r.vmid, r.chain
                ),
                Some(format!("pve-nvidia-hook enable --chain {vmid} (chains {} for it too)", r.chain)),
            );
            return;
        }
        Ok(None) => {
            report.add(
                scope,
                "chained hook",
                Level::Fail,
                "the chain its hookscript names has no record: pre-start is aborted".to_string(),
                Some(format!(
                    "pct set {vmid} --hookscript <its own hookscript> && pve-nvidia-hook enable --chain {vmid}, \
                     or pve-nvidia-hook disable {vmid}"
                )),
            );
            return;
        }
        Err(e) => {
            report.add(scope, "chained hook", Level::Fail, format!("{e:#}"), None);
            return;
        }
    };
    if let Err(e) = chain::script_path(storages, &record.chain, &paths.storage_root) {
        report.add(
            scope,
            "chained hook",
            Level::Fail,
            format!("{e:#}: pre-start is aborted, as Proxmox would"),
            None,
        );
        return;
    }
    let nodes = cluster::nodes(&paths.pve);
    let presence = match storage::resolve_volume(storages, &record.chain, &paths.storage_root) {
        Some((store, _)) if nodes.len() > 1 => cluster::presence(
            &Api,
            &nodes,
            &cluster::node_name(&paths.pve),
            store,
            &record.chain,
        ),
        _ => cluster::Presence::default(),
    };
    if !presence.lacking.is_empty() {
        report.add(
            scope,
            "chained hook",
            Level::Fail,
            format!(
                "{} is missing on {}: pre-start is aborted there",
                record.chain,
                presence.lacking.join("; ")
            ),
            Some("place it on those nodes, or on a shared storage".into()),
        );
    } else if let Some(u) = presence.unverified {
        report.add(
            scope,
            "chained hook",
            Level::Warn,
            format!(
                "{} runs first in every phase; {}",
                record.chain,
                u.describe(&record.chain)
            ),
            Some(u.fix),
        );
    } else {
        report.add(
            scope,
            "chained hook",
            Level::Ok,
            format!("{} runs first in every phase", record.chain),
            None,
        );
    }
}
