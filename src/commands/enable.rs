//! `enable` and `disable`: registering the hook the Proxmox way. The snippet
//! goes to a storage that allows snippets, the hookscript and tag are set
//! with `pct set` (Proxmox's own validation and locking), and a container's
//! existing hookscript is never dropped silently.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::{DisableArgs, EnableArgs};
use crate::context::{Ctx, Target};
use crate::error::usage;
use crate::process::{self, Limits};
use crate::snippet::{is_ours, SNIPPET, SNIPPET_NAME};
use crate::state::Chains;
use crate::vmid::Vmid;
use crate::{cluster, storage};
use crate::{fsutil, logging};

pub fn enable(config: Option<&Path>, args: &EnableArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let storages = storage::load(&ctx.config().paths.pve)?;
    let store =
        storage::snippet_storage(&storages, &args.storage).map_err(|e| usage(format!("{e:#}")))?;
    let volume = format!("{}:snippets/{SNIPPET_NAME}", store.name);
    let snippet = store
        .snippet_path(SNIPPET_NAME)
        .ok_or_else(|| anyhow!("storage '{}' has no path", store.name))?;
    place_snippet(&snippet, args.dry_run)?;
    if !store.is_shared() && cluster::node_count(&ctx.config().paths.pve) > 1 {
        println!(
            "note: {} is node-local storage: the snippet must exist on every node these containers may start on",
            store.name
        );
    }
    let chains = Chains::new(&ctx.config().paths.state);
    Ok(super::for_each(&args.vmids, |vmid| {
        enable_one(&ctx, &chains, vmid, &volume, args)
    }))
}

fn enable_one(
    ctx: &Ctx,
    chains: &Chains,
    vmid: Vmid,
    volume: &str,
    args: &EnableArgs,
) -> Result<()> {
    let target = ctx.container(vmid)?;
    let mut set = Vec::new();
    match target.pct.hookscript() {
        Some(current) if is_ours(current) => {}
        Some(other) if args.chain => {
            if args.dry_run {
                println!("would record CT {vmid}'s hookscript {other}: ours calls it first for every phase");
            } else {
                chains.set(vmid, other)?;
                println!("CT {vmid}: kept hookscript {other}: pve-nvidia-hook calls it first for every phase");
            }
            set.extend(["--hookscript".to_string(), volume.to_string()]);
        }
        Some(other) => bail!(
            "already has hookscript {other}, and a guest has only one. Rerun with --chain to keep it \
             (pve-nvidia-hook then calls it first for every phase and passes on its exit status for \
             pre-start), or remove it first (pct set {vmid} --delete hookscript)"
        ),
        None => set.extend(["--hookscript".to_string(), volume.to_string()]),
    }
    if !args.no_tag && !target.pct.has_tag("nvidia") {
        let mut tags = target.pct.tags();
        tags.push("nvidia".into());
        set.extend(["--tags".to_string(), tags.join(";")]);
    }
    if set.is_empty() {
        println!("CT {vmid}: already enabled");
    } else {
        pct(vmid, &set, args.dry_run)?;
    }
    if args.dry_run {
        return Ok(());
    }
    if ctx.open_container(vmid)?.is_some() {
        if args.now {
            run_now(ctx, &target)?;
        } else {
            println!(
                "CT {vmid} is running: the hook takes effect at its next start \
                 (or now: pve-nvidia-hook enable --now {vmid})"
            );
        }
    }
    Ok(())
}

fn run_now(ctx: &Ctx, target: &Target) -> Result<()> {
    logging::set_vmid(target.vmid);
    super::install::install_for_host(ctx, target, false, true)
}

pub fn disable(config: Option<&Path>, args: &DisableArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let chains = Chains::new(&ctx.config().paths.state);
    Ok(super::for_each(&args.vmids, |vmid| {
        disable_one(&ctx, &chains, vmid, args.dry_run)
    }))
}

fn disable_one(ctx: &Ctx, chains: &Chains, vmid: Vmid, dry_run: bool) -> Result<()> {
    let target = ctx.container(vmid)?;
    match target.pct.hookscript() {
        Some(current) if is_ours(current) => {
            match chains.get(vmid) {
                Some(previous) => pct(vmid, &["--hookscript".into(), previous], dry_run)?,
                None => pct(vmid, &["--delete".into(), "hookscript".into()], dry_run)?,
            }
            if !dry_run {
                chains.remove(vmid)?;
            }
        }
        Some(other) => {
            println!("CT {vmid}: hookscript is {other}, not pve-nvidia-hook: left alone")
        }
        None => println!("CT {vmid}: not enabled"),
    }
    if target.pct.has_tag("nvidia") {
        println!(
            "CT {vmid}: tag nvidia left in place (it only marks the container; the hook is gone)"
        );
    }
    Ok(())
}

/// Writes the snippet when it is missing or differs: a temporary file beside
/// it, then a rename, so that a start never runs half a snippet.
fn place_snippet(path: &PathBuf, dry_run: bool) -> Result<()> {
    let current = std::fs::read(path).ok();
    let executable = std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o111 == 0o111
    });
    if current.as_deref() == Some(SNIPPET.as_bytes()) && executable {
        return Ok(());
    }
    let (what, done) = if current.is_some() {
        ("update", "updated")
    } else {
        ("write", "wrote")
    };
    if dry_run {
        println!("would {what} {} (mode 0755)", path.display());
        return Ok(());
    }
    let dir = path.parent().context("snippet path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fsutil::write_atomic(path, SNIPPET.as_bytes(), 0o755)?;
    println!("{done} {}", path.display());
    Ok(())
}

fn pct(vmid: Vmid, set: &[String], dry_run: bool) -> Result<()> {
    let mut argv = vec!["set".to_string(), vmid.to_string()];
    argv.extend(set.iter().cloned());
    let shown = format!("pct {}", argv.join(" "));
    if dry_run {
        println!("would run: {shown}");
        return Ok(());
    }
    let program =
        process::find_program("pct").context("pct not found: is this a Proxmox VE host?")?;
    let out = process::run_with(
        &program,
        &argv,
        None,
        Limits::quick(Duration::from_secs(60)),
    )?;
    if !out.success() {
        bail!("{shown}: {}: {}", out.describe_status(), out.diagnostic());
    }
    println!("ran: {shown}");
    Ok(())
}
