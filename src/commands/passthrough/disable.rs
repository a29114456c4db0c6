//! `disable --passthrough`: what `enable --passthrough` wrote, and
//! nothing else.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::write::edit_config;
use super::{config_text, say};
use crate::cli::DisableArgs;
use crate::context::Ctx;
use crate::passthrough::{self, Record, Records};
use crate::pct_config::{parse_pending, PctConfig};
use crate::vmid::Vmid;

pub fn disable(config: Option<&Path>, args: &DisableArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let records = Records::new(&ctx.config().paths.pve);
    Ok(crate::commands::for_each(&args.vmids, |vmid| {
        disable_one(&ctx, &records, vmid, args.dry_run)
    }))
}

fn disable_one(ctx: &Ctx, records: &Records, vmid: Vmid, dry_run: bool) -> Result<()> {
    ctx.container(vmid)?;
    let Some(record) = records.get(vmid)? else {
        say(
            vmid,
            &format!(
                "pve-nvidia-hook wrote no passthrough for it ({} does not exist): nothing to remove",
                records.path(vmid).display()
            ),
        );
        return Ok(());
    };
    let text = config_text(ctx, vmid)?;
    let (current, pending) = (PctConfig::parse(&text), parse_pending(&text));
    let removal = passthrough::plan_disable(&record, &current, &pending);
    for note in &removal.notes {
        say(vmid, note);
    }
    let mut set = Vec::new();
    if !removal.delete.is_empty() {
        set.extend(["--delete".to_string(), removal.delete.join(",")]);
    }
    if !removal.revert.is_empty() {
        set.extend(["--revert".to_string(), removal.revert.join(",")]);
    }
    let config = ctx.config().paths.pve.join(format!("lxc/{vmid}.conf"));
    let shown: Vec<String> = removal.drop.iter().map(|l| format!("- {l}")).collect();
    if dry_run {
        if !set.is_empty() {
            crate::commands::enable::pct(vmid, &set, true)?;
        }
        if !removal.drop.is_empty() {
            println!(
                "would edit {} under its config lock: {}",
                config.display(),
                shown.join("; ")
            );
        }
        println!("would remove the record {}", records.path(vmid).display());
        return Ok(());
    }
    if !set.is_empty() {
        crate::commands::enable::pct(vmid, &set, false)?;
    }
    if !removal.drop.is_empty() {
        edit_config(ctx, vmid, &[], &removal.drop, &[])?;
        println!(
            "edited {} under its config lock: {}",
            config.display(),
            shown.join("; ")
        );
    }
    records.put(&Record {
        vmid: vmid.get(),
        ..Record::default()
    })?;
    if removal.is_empty() {
        say(
            vmid,
            "nothing written by pve-nvidia-hook is left in its config",
        );
    }
    let after = config_text(ctx, vmid)?;
    let waiting: Vec<&str> = removal
        .delete
        .iter()
        .filter(|k| PctConfig::parse(&after).get(k).is_some())
        .map(String::as_str)
        .collect();
    if !waiting.is_empty() {
        say(
            vmid,
            &format!(
                "{} go at its next start: Proxmox does not take a device from a running container (pct reboot {vmid})",
                waiting.join(", ")
            ),
        );
    }
    if !removal.drop.is_empty() && ctx.open_container(vmid)?.is_some() {
        say(vmid, &format!("the lines removed from its config file count from its next start (pct reboot {vmid})"));
    }
    Ok(())
}
