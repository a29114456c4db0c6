//! `enable --passthrough` and `disable --passthrough`: the facts gathered
//! (what the host's modules offer and the nodes it has now, pve-container's
//! version, the container's config and its group), the plan
//! ([`crate::passthrough`]) said, and applied the way Proxmox's own tools
//! change a config: `pct set` for `devN` (Proxmox's validation, lock and
//! hotplug), the config file under Proxmox's config lock for raw `lxc.*`
//! lines (root's keys, which `pct set` refuses), and what was written
//! recorded in the cluster file system, before and after.

mod disable;
mod write;

pub use disable::disable;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::EnableArgs;
use crate::context::Ctx;
use crate::devices::{self, cgroup, Kernel, Node, UNIT};
use crate::error::usage;
use crate::passthrough::{self, Facts, Gpus, Plan, Records, Refused, Support};
use crate::pct_config::{parse_pending, PctConfig};
use crate::process::{self, Limits};
use crate::vmid::Vmid;
use write::{edit_config, held, stamped, when};

/// The host as each container's plan sees it.
struct Host {
    offered: Vec<Node>,
    present: Vec<Node>,
    mig: Vec<(u32, usize)>,
    layout: cgroup::Layout,
    support: Support,
}

pub fn enable(config: Option<&Path>, args: &EnableArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    for &vmid in &args.vmids {
        ctx.container(vmid)?;
    }
    let host = host(&ctx)?;
    let records = Records::new(&ctx.config().paths.pve);
    let chosen = args.gpu.clone().unwrap_or(Gpus::All);
    // A GPU this host does not have is a usage error, before any container.
    passthrough::chosen_gpus(&host.offered, &chosen).map_err(refused)?;
    let code = super::for_each(&args.vmids, |vmid| {
        enable_one(&ctx, &host, &records, vmid, &chosen, args)
    });
    boot_unit(host.support);
    Ok(code)
}

fn host(ctx: &Ctx) -> Result<Host> {
    let paths = &ctx.config().paths;
    let kernel = Kernel::read(&paths.sys, &paths.proc);
    if !kernel.nvidia {
        bail!(
            "no NVIDIA kernel module is loaded ({}/module/nvidia/version or {}/driver/nvidia is missing): there is no GPU to pass",
            paths.sys.display(),
            paths.proc.display()
        );
    }
    Ok(Host {
        mig: kernel
            .gpu_minors()
            .iter()
            .map(|&m| (m, kernel.mig_capabilities(m)))
            .filter(|&(_, n)| n > 0)
            .collect(),
        offered: kernel.offered(),
        present: devices::present(&paths.dev),
        layout: cgroup::layout(&paths.sys),
        support: pve_container()?,
    })
}

/// What this node's Proxmox can write, from pve-container's version.
fn pve_container() -> Result<Support> {
    let program = process::find_program("dpkg-query")
        .context("dpkg-query not found: cannot tell pve-container's version")?;
    let out = process::run(
        &program,
        &["-W", "-f", "${Version}", "pve-container"],
        Limits::quick(Duration::from_secs(30)),
    )?;
    let version = out.stdout_text().trim().to_string();
    if !out.success() || version.is_empty() {
        bail!(
            "dpkg-query -W pve-container: {}: is this a Proxmox VE node?",
            out.diagnostic()
        );
    }
    Support::of_pve_container(&version).with_context(|| {
        format!(
            "pve-container's version '{}' cannot be read",
            version.escape_debug()
        )
    })
}

/// This node's config of the container, as text (its pending section and
/// the raw lines are needed as written).
pub(super) fn config_text(ctx: &Ctx, vmid: Vmid) -> Result<String> {
    let node = crate::cluster::node_name(&ctx.config().paths.pve);
    ctx.config_text_on(&node, vmid)?
        .ok_or_else(|| usage(ctx.not_here(vmid)))
}

fn refused(r: Refused) -> anyhow::Error {
    match r {
        Refused::Usage(why) => usage(why),
        Refused::Host(why) => anyhow!(why),
    }
}

pub(super) fn say(vmid: Vmid, text: &str) {
    println!("CT {vmid}: {}", crate::logging::sanitize(text));
}

fn enable_one(
    ctx: &Ctx,
    host: &Host,
    records: &Records,
    vmid: Vmid,
    chosen: &Gpus,
    args: &EnableArgs,
) -> Result<()> {
    let text = config_text(ctx, vmid)?;
    let (current, pending) = (PctConfig::parse(&text), parse_pending(&text));
    // Its group, read in a child through the one door to a container's
    // files; a stopped container's files are not mounted.
    let probe = ctx.open_container(vmid)?;
    let running = probe.is_some();
    let groups = match &probe {
        Some(p) => p.read(passthrough::read_groups).map_err(|e| e.to_string()),
        None => Err("the container is stopped".to_string()),
    };
    drop(probe);
    let group = passthrough::choose_group(groups, &current.idmap());
    let record = records.get(vmid)?;
    let plan = passthrough::plan(&Facts {
        vmid,
        current: &current,
        pending: &pending,
        offered: &host.offered,
        present: &host.present,
        mig: &host.mig,
        chosen,
        group: &group,
        support: host.support,
        layout: host.layout,
        record: record.as_ref(),
        replace_raw: args.replace_raw,
    })
    .map_err(refused)?;
    for note in &plan.notes {
        say(vmid, note);
    }
    let set = pct_args(&plan);
    if set.is_empty() && !plan.edits_config_file() {
        say(vmid, "its passthrough is already as asked");
        if !args.dry_run && record.as_ref() != Some(&plan.record) {
            records.put(&stamped(&plan.record))?;
        }
        return Ok(());
    }
    let config = ctx.config().paths.pve.join(format!("lxc/{vmid}.conf"));
    if args.dry_run {
        if !set.is_empty() {
            super::enable::pct(vmid, &set, true)?;
        }
        if plan.edits_config_file() {
            println!(
                "would edit {} under its config lock: {}",
                config.display(),
                shown_edit(&plan)
            );
        }
        println!(
            "would record what was written in {}",
            records.path(vmid).display()
        );
        when(vmid, running, host.support, &plan, None);
        return Ok(());
    }
    // Recorded before it is written: a run cut short leaves nothing of
    // ours unknown to `disable --passthrough`. An entry of ours being
    // changed keeps its old value here until the new one has landed.
    let mut intent = record.clone().unwrap_or_default();
    intent.vmid = vmid.get();
    for (key, value) in &plan.record.devices {
        intent
            .devices
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    intent.raw.extend(plan.add.iter().cloned());
    records.put(&stamped(&intent))?;
    let applied = (|| {
        if !set.is_empty() {
            super::enable::pct(vmid, &set, false)?;
        }
        if plan.edits_config_file() {
            edit_config(ctx, vmid, &plan.replace, &plan.drop, &plan.add)?;
            println!(
                "edited {} under its config lock: {}",
                config.display(),
                shown_edit(&plan)
            );
        }
        Ok::<(), anyhow::Error>(())
    })();
    // What the config holds now of what was ours or planned.
    let after = config_text(ctx, vmid)?;
    let (now, now_pending) = (PctConfig::parse(&after), parse_pending(&after));
    let landed = held(&intent, &plan.record, &now, &now_pending);
    records.put(&stamped(&landed))?;
    applied?;
    println!(
        "recorded in {}: `pve-nvidia-hook disable --passthrough {vmid}` removes exactly this",
        records.path(vmid).display()
    );
    when(
        vmid,
        running,
        host.support,
        &plan,
        Some((&now, &now_pending)),
    );
    if !now.hookscript().is_some_and(crate::snippet::is_ours) {
        say(
            vmid,
            &format!("the hook is not registered: `pve-nvidia-hook enable {vmid}` keeps its NVIDIA driver at the host's version"),
        );
    }
    Ok(())
}

/// `pct set` options: the devN values, then the deletes.
fn pct_args(plan: &Plan) -> Vec<String> {
    let mut args: Vec<String> = plan
        .set
        .iter()
        .flat_map(|c| [format!("--{}", c.key), c.value.clone()])
        .collect();
    if !plan.delete.is_empty() {
        args.extend(["--delete".to_string(), plan.delete.join(",")]);
    }
    args
}

fn shown_edit(plan: &Plan) -> String {
    let gone = plan
        .replace
        .iter()
        .chain(&plan.drop)
        .map(|l| format!("- {l}"));
    let added = plan.add.iter().map(|l| format!("+ {l}"));
    gone.chain(added).collect::<Vec<_>>().join("; ")
}

/// Proxmox refuses to start a container whose devN node is missing: the
/// nodes must be made at every boot before the guests start.
fn boot_unit(support: Support) {
    let state = match devices::unit_state() {
        Some(Ok(state)) if state == "enabled" => return,
        Some(Ok(state)) if state.is_empty() => "not installed".to_string(),
        Some(Ok(state)) => state,
        Some(Err(e)) => format!("of unknown state ({e:#})"),
        None => "of unknown state (no systemctl)".to_string(),
    };
    let then = match support {
        Support::Devices { .. } => "Proxmox then refuses to start these containers",
        Support::Raw => "these containers then start without CUDA",
    };
    log::warn!(
        "{UNIT} is {state}: after the next boot /dev/nvidia-uvm and the other nodes exist only once something makes them, and {then}; make them at every boot: systemctl enable {UNIT}"
    );
}
