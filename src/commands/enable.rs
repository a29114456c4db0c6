//! `enable` and `disable`: registering the hook the Proxmox way. The snippet
//! goes to a storage that allows snippets, the hookscript and tags are set
//! with `pct set` (Proxmox's own validation and locking), and a container's
//! existing hookscript is never dropped silently.
//!
//! On a cluster, a container may start on any node, and Proxmox aborts a
//! start whose hookscript does not exist on that node: a shared storage is
//! preferred, and a node-local one is accepted only when every node has the
//! snippet (the package places it in each node's `local` storage). A
//! chained container's hookscript is our snippet under the chain's name
//! (see `chain`): its hookscript is switched only once every node has it.

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
use crate::logging;
use crate::pct_config::PctConfig;
use crate::process::{self, Limits};
use crate::snippet::{self, is_ours, Placing, SNIPPET_NAME};
use crate::storage;
use crate::vmid::Vmid;

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
    let place = Place {
        store: &store,
        storages: &storages,
        node: &node,
        nodes: &nodes,
        volume: &volume,
        root: &paths.storage_root,
    };
    let code = super::for_each(&args.vmids, |vmid| {
        enable_one(&ctx, &chains, vmid, &place, args)
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

/// Where the hook goes: the storage for the snippet and this node's view
/// of the cluster.
struct Place<'a> {
    store: &'a storage::Storage,
    storages: &'a [storage::Storage],
    node: &'a str,
    nodes: &'a [String],
    /// Our snippet's volume on that storage.
    volume: &'a str,
    /// Where storage paths are (`paths.storage_root`).
    root: &'a Path,
}

fn enable_one(
    ctx: &Ctx,
    chains: &Chains,
    vmid: Vmid,
    place: &Place,
    args: &EnableArgs,
) -> Result<()> {
    let target = ctx.container(vmid)?;
    let mut tags = target.pct.raw_tags();
    let before = tags.clone();
    let hookscript = match (target.pct.hookscript(), chain::link(&target.pct)) {
        (None, _) => Some(place.volume.to_string()),
        // Chained before 0.3 through a tag: moved to the hookscript,
        // which only root may change.
        (Some(_), chain::Link::LegacyTag(token)) => {
            tags.retain(|t| *t != chain::legacy_tag(&token));
            match chains.get(&token)? {
                Some(r) if r.vmid == vmid.get() => {
                    println!("CT {vmid}: its chained hookscript {} moves from the tag {} to the hookscript", r.chain, chain::legacy_tag(&token));
                    Some(chained(chains, vmid, &r.chain, Some(&token), place, args.dry_run)?)
                }
                _ => Some(place.volume.to_string()),
            }
        }
        (Some(_), chain::Link::Hookscript(token)) => match chains.get(&token)? {
            Some(r) if r.vmid == vmid.get() => {
                println!("CT {vmid}: chained hookscript {} runs first in every phase", r.chain);
                None
            }
            // A clone's, or a restore's under a new vmid: that record is
            // another container's.
            Some(r) if args.chain => {
                Some(chained(chains, vmid, &r.chain, None, place, args.dry_run)?)
            }
            Some(r) => bail!(
                "its hookscript names CT {}'s chained hookscript {} (a clone, or a restore under a new vmid), \
                 which never runs for this container: rerun with --chain to chain {} for it too",
                r.vmid,
                r.chain,
                r.chain
            ),
            None => bail!(
                "its hookscript names a chain whose record is gone, so the hookscript it chained \
                 is unknown: set it again (pct set {vmid} --hookscript <volume>), then enable --chain {vmid}"
            ),
        },
        (Some(current), _) if is_ours(current) => {
            (current != place.volume).then(|| place.volume.to_string())
        }
        (Some(other), _) if args.chain => Some(chained(chains, vmid, other, None, place, args.dry_run)?),
        (Some(other), _) => bail!(
            "already has hookscript {other}, and a guest has only one. Rerun with --chain to keep it \
             (pve-nvidia-hook then calls it first for every phase and passes on its exit status for \
             pre-start), or remove it first (pct set {vmid} --delete hookscript)"
        ),
    };
    let mut set = Vec::new();
    if let Some(volume) = hookscript {
        set.extend(["--hookscript".to_string(), volume]);
    }
    if !args.no_tag && !target.pct.has_tag(NVIDIA_TAG) {
        tags.push(NVIDIA_TAG.into());
    }
    if tags != before {
        // `pct set --tags` replaces all tags: the container's own are kept,
        // as written (Proxmox applies the cluster's tag-style to them).
        set.extend(tags_option(&tags));
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

/// The hookscript that chains `script` for `vmid`: a record (this
/// container's for that script if it has one, the token of a record of
/// before 0.3 when moving one), our snippet under its name here, and on
/// every other node before the container's hookscript may name it.
fn chained(
    chains: &Chains,
    vmid: Vmid,
    script: &str,
    legacy: Option<&str>,
    place: &Place,
    dry_run: bool,
) -> Result<String> {
    if dry_run {
        println!(
            "would record CT {vmid}'s hookscript {script} in {} and give the container our snippet \
             under a name of its own: ours calls it first for every phase",
            chains.dir().display()
        );
        return Ok(format!(
            "{}:snippets/{SNIPPET_NAME}.<token>",
            place.store.name
        ));
    }
    let token = match (legacy, chains.find(vmid, script)) {
        (Some(token), _) => token.to_string(),
        (None, Some((token, _))) => token,
        (None, None) => chains.create(vmid, script, &place.store.name)?,
    };
    // Written again: the storage, and a fresh date (a record waiting for
    // the other nodes is not stale).
    chains.put(&token, vmid, script, &place.store.name)?;
    for change in chains.place_snippets(place.storages, place.root, place.node)? {
        println!("{change}");
    }
    if place.nodes.len() > 1 {
        let presence = chains.presence(place.nodes, place.node, place.store, &token);
        if !presence.lacking.is_empty() {
            bail!(
                "{} is not on {} yet, and Proxmox aborts a start where a hookscript is missing: \
                 run `pve-nvidia-hook sync` on those nodes (their pve-nvidia-hook-sync timer does it \
                 within 30 minutes), then run this again; until then CT {vmid} keeps its hookscript {script}",
                chain::volume(&place.store.name, &token),
                presence.lacking.join("; ")
            );
        }
    }
    println!(
        "CT {vmid}: kept hookscript {script}: pve-nvidia-hook calls it first for every phase, on every node \
         (record {})",
        chains.dir().join(format!("{token}.json")).display()
    );
    Ok(chain::volume(&place.store.name, &token))
}

fn run_now(ctx: &Ctx, target: &Target) -> Result<()> {
    logging::set_vmid(target.vmid);
    super::install::install_for_host(ctx, target, false, super::install::Origin::Terminal).map(drop)
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

/// The chain token the container no longer names, if any: its record goes
/// once no config (a snapshot, a clone) names it. Only a record made for
/// this very container is ever restored as its hookscript.
fn disable_one(
    ctx: &Ctx,
    chains: &Chains,
    vmid: Vmid,
    args: &DisableArgs,
) -> Result<Option<String>> {
    let target = ctx.container(vmid)?;
    let link = chain::link(&target.pct);
    let mut set = Vec::new();
    let mut released = None;
    let mut legacy_tag = None;
    match (target.pct.hookscript(), &link) {
        (Some(_), chain::Link::Hookscript(token) | chain::Link::LegacyTag(token)) => {
            if let chain::Link::LegacyTag(_) = link {
                legacy_tag = Some(chain::legacy_tag(token));
            }
            set = match chains.get(token)? {
                Some(r) if r.vmid == vmid.get() => vec!["--hookscript".to_string(), r.chain],
                Some(r) => {
                    println!(
                        "CT {vmid}: its hookscript names CT {}'s chained hookscript (a clone, or a restore \
                         under a new vmid): that one is not given to this container; its hookscript is removed",
                        r.vmid
                    );
                    vec!["--delete".to_string(), "hookscript".to_string()]
                }
                None => {
                    println!(
                        "CT {vmid}: its chain record is gone, so the hookscript it chained cannot be put back: \
                         its hookscript is removed (set your own: pct set {vmid} --hookscript <volume>)"
                    );
                    vec!["--delete".to_string(), "hookscript".to_string()]
                }
            };
            released = Some(token.clone());
        }
        (Some(current), _) if is_ours(current) => {
            set = vec!["--delete".to_string(), "hookscript".to_string()];
        }
        (Some(other), _) => {
            println!("CT {vmid}: hookscript is {other}, not pve-nvidia-hook: left alone")
        }
        (None, _) => println!("CT {vmid}: not enabled"),
    }
    // A chain tag of before 0.3 goes with our hookscript; `nvidia` when asked.
    let drop = |t: &str| {
        legacy_tag.as_deref() == Some(t) || (args.untag && t.eq_ignore_ascii_case(NVIDIA_TAG))
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
    Ok(released)
}

/// `--tags` without some tags (or `--delete tags` when none is left).
fn without_tags(pct: &PctConfig, drop: impl Fn(&str) -> bool) -> Vec<String> {
    let rest: Vec<String> = pct.raw_tags().into_iter().filter(|t| !drop(t)).collect();
    tags_option(&rest)
}

/// `pct set`'s options that make the tags exactly these.
fn tags_option(tags: &[String]) -> Vec<String> {
    if tags.is_empty() {
        vec!["--delete".into(), "tags".into()]
    } else {
        vec!["--tags".into(), tags.join(";")]
    }
}

/// Chain records no container's config names any more (destroyed, perhaps
/// with its vmid reused since): removed, so that nothing can ever run them,
/// and with them this node's snippets under their names. A token counts
/// when a hookscript of any section of any container's config on any node
/// names it (a snapshot rollback brings it back), or a tag of before 0.3 of
/// the very container its record was made for; when a config cannot be
/// read, nothing is removed.
fn clear_stale_chains(ctx: &Ctx, chains: &Chains, released: &[String]) {
    let Ok(all) = ctx.cluster_containers() else {
        return;
    };
    let mut carried = Vec::new();
    for (node, vmid) in &all {
        match ctx.config_text_on(node, *vmid) {
            Ok(Some(text)) => carried.extend(chain::tokens_in(&text, |token| {
                chains
                    .get(token)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.vmid == vmid.get())
            })),
            // Gone since it was listed (destroyed, or migrating): cannot
            // tell what it carries.
            Ok(None) | Err(_) => return,
        }
    }
    let mut removed = false;
    for (token, record) in chains.stale(&carried, released) {
        if chains.remove(&token).is_ok() {
            removed = true;
            println!(
                "removed the stale chain record {token}{} (no container names it)",
                record
                    .map(|r| format!(" of CT {} ({})", r.vmid, r.chain))
                    .unwrap_or_default()
            );
        }
    }
    if removed {
        let paths = &ctx.config().paths;
        match chains.place_here(&paths.pve, &paths.storage_root) {
            Ok(changes) => changes.iter().for_each(|c| println!("{c}")),
            Err(e) => log::warn!("this node's chain snippets: {e:#}"),
        }
    }
}

/// Writes the snippet when it is missing or differs (a temporary file
/// beside it, then a rename, so that a start never runs half a snippet).
fn place_snippet(path: &Path, dry_run: bool) -> Result<()> {
    let placing = if dry_run {
        snippet::placing(path)
    } else {
        snippet::place(path)?
    };
    if placing != Placing::Unchanged {
        let mode = if dry_run { " (mode 0755)" } else { "" };
        println!("{} {}{mode}", placing.describe(!dry_run), path.display());
    }
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
