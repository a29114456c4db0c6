//! `enable` and `disable`: registering the hook the Proxmox way. The snippet
//! goes to a storage that allows snippets, the hookscript and tags are set
//! with `pct set` (Proxmox's own validation and locking), and a container's
//! existing hookscript is never dropped silently.
//!
//! On a cluster, a container may start on any node, and Proxmox aborts a
//! start whose hookscript does not exist on that node: a shared storage is
//! preferred, and a node-local one is accepted only when every node has the
//! snippet (the package places it in each node's `local` storage).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::chain::{self, Chains};
use crate::cli::{DisableArgs, EnableArgs};
use crate::cluster::{self, Api};
use crate::context::{Ctx, Target};
use crate::decision::NVIDIA_TAG;
use crate::error::usage;
use crate::pct_config::PctConfig;
use crate::process::{self, Limits};
use crate::snippet::{is_ours, SNIPPET, SNIPPET_NAME};
use crate::storage;
use crate::vmid::Vmid;
use crate::{fsutil, logging};

pub fn enable(config: Option<&Path>, args: &EnableArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    // Every vmid is this node's container before anything is written or
    // asked: one on another node is named with its node.
    for &vmid in &args.vmids {
        ctx.container(vmid)?;
    }
    let paths = &ctx.config().paths;
    let node = cluster::node_name(&paths.pve);
    let nodes = cluster::nodes(&paths.pve);
    let storages = storage::load(&paths.pve)?;
    let store = storage::snippet_storage(
        &storages,
        args.storage.as_deref(),
        &node,
        nodes.len(),
        &paths.storage_root,
    )
    .map_err(|e| usage(format!("{e:#}")))?;
    let volume = format!("{}:snippets/{SNIPPET_NAME}", store.name);
    let snippet = store
        .snippet_path(&paths.storage_root, SNIPPET_NAME)
        .ok_or_else(|| anyhow!("storage '{}' has no path", store.name))?;
    place_snippet(&snippet, args.dry_run)?;
    if nodes.len() > 1 {
        check_other_nodes(&nodes, &node, &store, &storages, &volume, args.dry_run)?;
    }
    let chains = Chains::new(&paths.pve);
    let code = super::for_each(&args.vmids, |vmid| {
        enable_one(&ctx, &chains, vmid, &volume, args)
    });
    if !args.dry_run {
        clear_stale_chains(&ctx, &chains, &[]);
    }
    Ok(code)
}

/// On a cluster, a node-local snippet must be on every node the container
/// may start on: refused when a node lacks it; said, with how to make it
/// checkable, when Proxmox's API cannot tell (a storage whose content has no
/// snippets, as the installer writes `local`).
fn check_other_nodes(
    nodes: &[String],
    node: &str,
    store: &storage::Storage,
    storages: &[storage::Storage],
    volume: &str,
    dry_run: bool,
) -> Result<()> {
    if dry_run && store.unlisted().is_none() && !store.is_shared() {
        println!(
            "would check that every node ({}) has {volume}",
            nodes.join(", ")
        );
        return Ok(());
    }
    // A dry run gets here only where no node needs to be asked.
    let presence = cluster::presence(&Api, nodes, node, store, volume);
    if !presence.lacking.is_empty() {
        bail!(
            "{volume} does not exist on {}: Proxmox aborts a start there \
             (after a migration or an HA recovery). Install pve-nvidia-hook on those nodes (its package \
             places the snippet in their local storage), or use a shared storage with snippets (--storage {})",
            presence.lacking.join("; "),
            storage::shared_snippet_storages(storages, node).join("|")
        );
    }
    if let Some(u) = presence.unverified {
        println!("note: {}; {}", u.describe(volume), u.remedy());
    }
    Ok(())
}

fn enable_one(
    ctx: &Ctx,
    chains: &Chains,
    vmid: Vmid,
    volume: &str,
    args: &EnableArgs,
) -> Result<()> {
    let target = ctx.container(vmid)?;
    let mut tags = target.pct.raw_tags();
    let before = tags.clone();
    let mut set = Vec::new();
    match target.pct.hookscript() {
        Some(current) if is_ours(current) && current == volume => {}
        Some(current) if is_ours(current) => {
            set.extend(["--hookscript".to_string(), volume.to_string()]);
        }
        Some(other) if args.chain => {
            if args.dry_run {
                println!("would record CT {vmid}'s hookscript {other} in the cluster file system and tag the container with its token: ours calls it first for every phase");
            } else {
                let token = chains.create(vmid, other)?;
                // A clone's or a restore's tag names another container's
                // record: the new one replaces it.
                tags.retain(|t| !t.starts_with(chain::TAG_PREFIX));
                tags.push(chain::tag(&token));
                println!("CT {vmid}: kept hookscript {other} (tag {}): pve-nvidia-hook calls it first for every phase, on every node", chain::tag(&token));
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
    if !args.no_tag && !target.pct.has_tag(NVIDIA_TAG) {
        tags.push(NVIDIA_TAG.into());
    }
    if tags != before {
        // `pct set --tags` replaces all tags: the container's own are kept,
        // as written (Proxmox applies the cluster's tag-style to them).
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
    super::install::install_for_host(ctx, target, false, true).map(drop)
}

pub fn disable(config: Option<&Path>, args: &DisableArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let chains = Chains::new(&ctx.config().paths.pve);
    let mut released = Vec::new();
    let code = super::for_each(&args.vmids, |vmid| {
        released.extend(disable_one(&ctx, &chains, vmid, args)?);
        Ok(())
    });
    if !args.dry_run {
        clear_stale_chains(&ctx, &chains, &released);
    }
    Ok(code)
}

/// The chain token the container no longer carries, if any: its record
/// goes once no other container (a clone, a restored copy) carries it.
fn disable_one(
    ctx: &Ctx,
    chains: &Chains,
    vmid: Vmid,
    args: &DisableArgs,
) -> Result<Option<String>> {
    let target = ctx.container(vmid)?;
    let token = chain::token(&target.pct);
    let ours = target.pct.hookscript().is_some_and(is_ours);
    let mut set = Vec::new();
    match target.pct.hookscript() {
        Some(_) if ours => {
            let record = match &token {
                Some(t) => Some(chains.get(t)?.ok_or_else(|| {
                    anyhow!(
                        "its tag {} names no chain record: the hookscript it had cannot be restored; \
                         set it yourself (pct set {vmid} --hookscript <volume>) and remove the tag",
                        chain::tag(t)
                    )
                })?),
                None => None,
            };
            set = match &record {
                Some(r) => vec!["--hookscript".to_string(), r.chain.clone()],
                None => vec!["--delete".to_string(), "hookscript".to_string()],
            };
        }
        Some(other) => {
            println!("CT {vmid}: hookscript is {other}, not pve-nvidia-hook: left alone")
        }
        None => println!("CT {vmid}: not enabled"),
    }
    // The chain tag goes with our hookscript; `nvidia` when asked.
    let chain_tag = token.as_ref().filter(|_| ours).map(|t| chain::tag(t));
    let drop = |t: &str| {
        chain_tag.as_deref() == Some(t) || (args.untag && t.eq_ignore_ascii_case(NVIDIA_TAG))
    };
    if target.pct.raw_tags().iter().any(|t| drop(t)) {
        set.extend(without_tags(&target.pct, drop));
    }
    if !set.is_empty() {
        pct(vmid, &set, args.dry_run)?;
    }
    if target.pct.has_tag(NVIDIA_TAG) && !args.untag {
        println!(
            "CT {vmid}: tag nvidia left in place (it only marks the container; the hook is gone; --untag removes it)"
        );
    }
    Ok(token.filter(|_| ours))
}

/// `--tags` without some tags (or `--delete tags` when none is left).
fn without_tags(pct: &PctConfig, drop: impl Fn(&str) -> bool) -> Vec<String> {
    let rest: Vec<String> = pct.raw_tags().into_iter().filter(|t| !drop(t)).collect();
    if rest.is_empty() {
        vec!["--delete".into(), "tags".into()]
    } else {
        vec!["--tags".into(), rest.join(";")]
    }
}

/// Chain records no container carries any more (destroyed, perhaps with its
/// vmid reused since): removed, so that nothing can ever run them. A token
/// counts as carried when any section of any container's config on any
/// node names it (a snapshot rollback brings its tags back); when a config
/// cannot be read, nothing is removed.
fn clear_stale_chains(ctx: &Ctx, chains: &Chains, released: &[String]) {
    let Ok(all) = ctx.cluster_containers() else {
        return;
    };
    let mut carried = Vec::new();
    for (node, vmid) in &all {
        match ctx.config_text_on(node, *vmid) {
            Ok(Some(text)) => carried.extend(chain::tokens_in(&text)),
            // Gone since it was listed (destroyed, or migrating): cannot
            // tell what it carries.
            Ok(None) | Err(_) => return,
        }
    }
    for (token, record) in chains.stale(&carried, released) {
        if chains.remove(&token).is_ok() {
            println!(
                "removed the stale chain record {token}{} (no container carries its tag)",
                record
                    .map(|r| format!(" of CT {} ({})", r.vmid, r.chain))
                    .unwrap_or_default()
            );
        }
    }
}

/// Writes the snippet when it is missing or differs: a temporary file beside
/// it, then a rename, so that a start never runs half a snippet.
fn place_snippet(path: &Path, dry_run: bool) -> Result<()> {
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

pub(super) fn pct(vmid: Vmid, set: &[String], dry_run: bool) -> Result<()> {
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
