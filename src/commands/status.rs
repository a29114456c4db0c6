//! `pve-nvidia-hook status [--json] [--cluster] [<vmid>...]`: one row per
//! container. This node's containers are read now (and what is read is
//! published for the other nodes); with `--cluster`, the other nodes'
//! containers come from the cluster file system (their configs, and what
//! their nodes last published) and Proxmox's API (whether they run).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::cluster::{self, Api};
use crate::container::detect::{self, InstalledDriver};
use crate::context::{Ctx, Lookup};
use crate::decision::{self, Observed, Reason, State};
use crate::kernels::{self, NextBoot};
use crate::logging;
use crate::pipeline;
use crate::published::{self, Seen};
use crate::snippet::is_ours;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

#[derive(Debug, Serialize)]
pub struct Row {
    pub vmid: Vmid,
    pub node: String,
    pub requested: bool,
    pub reason: Option<Reason>,
    /// None: not known (another node's container, the API not answering).
    pub running: Option<bool>,
    pub host_version: Option<String>,
    /// The NVIDIA module the next boot loads, where it differs from the
    /// loaded one (this node's containers only).
    pub host_version_next_boot: Option<String>,
    pub container_version: Option<String>,
    /// None: another node's container that node has not reported.
    pub state: Option<State>,
    /// The hookscript registered on the container, if any.
    pub hookscript: Option<String>,
    /// Why the container's driver is not a clean install, or the last error.
    pub detail: Option<String>,
    /// When another node last reported this container.
    pub reported_unix: Option<u64>,
}

pub fn run(config: Option<&Path>, args: &StatusArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let pve = &ctx.config().paths.pve;
    let this = cluster::node_name(pve);
    let wanted: Vec<(String, Vmid)> = if args.cluster {
        ctx.cluster_containers()?
    } else if args.vmids.is_empty() {
        ctx.all_containers()?
            .into_iter()
            .map(|v| (this.clone(), v))
            .collect()
    } else {
        args.vmids.iter().map(|v| (this.clone(), *v)).collect()
    };
    let wanted: Vec<(String, Vmid)> = wanted
        .into_iter()
        .filter(|(_, v)| args.vmids.is_empty() || args.vmids.contains(v))
        .collect();
    let host = ctx.host_version()?;
    let next_boot = match kernels::next_boot(&ctx.config().paths) {
        Ok(next) => Some(next),
        Err(e) => {
            log::warn!("cannot tell which NVIDIA module the next boot loads: {e:#}");
            None
        }
    };
    let pending = next_boot
        .as_ref()
        .and_then(NextBoot::version)
        .filter(|v| host.as_ref() != Some(*v))
        .map(ToString::to_string);
    let elsewhere = if args.cluster {
        Remote::read(pve)
    } else {
        Remote::default()
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for (node, vmid) in wanted {
        let result = if node == this {
            row(&ctx, vmid, &this, host.as_ref())
        } else {
            remote_row(&ctx, &node, vmid, &elsewhere)
        };
        match result {
            Ok(Some(mut r)) => {
                if node == this {
                    r.host_version_next_boot = pending.clone();
                }
                rows.push(r)
            }
            Ok(None) => {
                eprintln!("pve-nvidia-hook: {}", ctx.not_here(vmid));
                failed = true;
            }
            Err(e) => {
                eprintln!(
                    "pve-nvidia-hook: {}",
                    logging::scoped(vmid, &logging::sanitize(&format!("{e:#}")))
                );
                failed = true;
            }
        }
    }
    publish(&ctx, &this, host.as_ref(), &rows);
    match super::json(args.output.format(), &rows)? {
        Some(json) => println!("{json}"),
        None => {
            print!("{}", table(&rows, args.cluster));
            if let Some(note) = next_boot.and_then(|n| boot_note(host.as_ref(), &n)) {
                println!("{note}");
            }
        }
    }
    let alarms: Vec<String> = rows.iter().filter_map(alarm).collect();
    if args.check && !alarms.is_empty() {
        eprintln!("pve-nvidia-hook: check: {}", alarms.join("; "));
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `status --check`: what a monitor must hear of a container that requests
/// NVIDIA: a state that needs a look, or the hook not registered (it will
/// never install anything).
fn alarm(row: &Row) -> Option<String> {
    if !row.requested {
        return None;
    }
    let mut why = Vec::new();
    if let Some(s @ (State::Failed | State::Mismatch | State::Unknown)) = row.state {
        why.push(s.as_str());
    }
    if !row.hookscript.as_deref().is_some_and(is_ours) {
        why.push("not registered");
    }
    (!why.is_empty()).then(|| format!("CT {} {}", row.vmid, why.join(", ")))
}

/// What this node read of its running GPU containers, for the others.
fn publish(ctx: &Ctx, this: &str, host: Option<&DriverVersion>, rows: &[Row]) {
    let seen = rows
        .iter()
        .filter(|r| r.node == this && r.requested && r.running == Some(true))
        .filter_map(|r| {
            Some((
                r.vmid,
                Seen {
                    state: r.state?,
                    container_version: r.container_version.clone(),
                    detail: r.detail.clone(),
                    at_unix: crate::state::unix_now(),
                },
            ))
        })
        .collect::<Vec<_>>();
    if seen.is_empty() {
        return;
    }
    let pve = &ctx.config().paths.pve;
    if let Err(e) = published::publish(pve, &ctx.locks, this, host, seen) {
        log::debug!("could not publish this node's status: {e:#}");
    }
}

fn row(ctx: &Ctx, vmid: Vmid, node: &str, host: Option<&DriverVersion>) -> Result<Option<Row>> {
    let target = match ctx.lookup(vmid)? {
        Lookup::Container(t) => t,
        Lookup::Vm | Lookup::Missing => return Ok(None),
    };
    let (installed, gap) = match ctx.open_container(vmid) {
        Ok(Some(root)) => {
            let installed = detect::detect_in(&root);
            // Every file in place, a node workloads need not passed: said,
            // not hidden behind "up-to-date".
            let gap = match installed {
                InstalledDriver::Installed(_) | InstalledDriver::HostProvided(_)
                    if target.request.wanted =>
                {
                    pipeline::passthrough_gap(&root, vmid).ok().flatten()
                }
                _ => None,
            };
            (Some(installed), gap)
        }
        Ok(None) => (None, None),
        // Running, but its files cannot be opened in time: cannot tell.
        Err(e) => (Some(InstalledDriver::Unknown(format!("{e:#}"))), None),
    };
    let last = ctx.results.last(vmid);
    let last_failed = last
        .as_ref()
        .is_some_and(|r| !r.ok && host.is_some_and(|h| h.to_string() == r.host_version));
    let state = decision::state(&Observed {
        requested: target.request.wanted,
        installed: installed.as_ref(),
        host,
        installing: ctx.locks.is_installing(vmid),
        last_failed,
    });
    // What the last install for this version had to say (a CUDA toolkit
    // refused, a record moved aside), and the gap as it is now.
    let said: Vec<String> = gap
        .iter()
        .map(ToString::to_string)
        .chain(
            last.as_ref()
                .filter(|r| r.ok && host.is_some_and(|h| h.to_string() == r.host_version))
                .map(|r| r.warnings.clone())
                .unwrap_or_default(),
        )
        .collect();
    let detail = match (&installed, state) {
        (_, State::Failed) => last.map(|r| r.message),
        (_, State::UpToDate | State::HostProvided) if !said.is_empty() => Some(said.join("; ")),
        (Some(InstalledDriver::Broken(why) | InstalledDriver::Unknown(why)), _) => {
            Some(why.clone())
        }
        (Some(InstalledDriver::Packaged(_)), _) => Some(
            "the distribution's packages (replaced by a runfile install at the next start)".into(),
        ),
        (Some(InstalledDriver::HostProvided(_)), _) => {
            Some("bind-mounted from the host; left alone".into())
        }
        _ => None,
    };
    Ok(Some(Row {
        vmid,
        node: node.to_string(),
        requested: target.request.wanted,
        reason: target.request.reason,
        running: Some(installed.is_some()),
        host_version: host.map(|h| h.to_string()),
        host_version_next_boot: None,
        container_version: installed
            .as_ref()
            .and_then(|i| i.version().map(|v| v.to_string())),
        state: Some(state),
        hookscript: target.pct.hookscript().map(str::to_owned),
        detail: detail.map(|d| logging::bounded(&d, logging::DETAIL_MAX)),
        reported_unix: None,
    }))
}

/// What is known of the other nodes: their published files, and the API's
/// list of guests (None when it did not answer).
#[derive(Default)]
struct Remote {
    published: std::collections::BTreeMap<String, published::NodeState>,
    guests: Option<Vec<cluster::Guest>>,
}

impl Remote {
    fn read(pve: &Path) -> Remote {
        Remote {
            published: published::read_all(pve),
            guests: Api.guests().ok(),
        }
    }
}

fn remote_row(ctx: &Ctx, node: &str, vmid: Vmid, remote: &Remote) -> Result<Option<Row>> {
    let target = match ctx.lookup_on(node, vmid)? {
        Lookup::Container(t) => t,
        _ => return Ok(None),
    };
    let running = remote.guests.as_ref().and_then(|g| {
        g.iter()
            .find(|g| g.vmid == vmid.get() && g.kind == "lxc")
            .map(|g| g.status == "running")
    });
    let published = remote.published.get(node);
    let seen = published.and_then(|p| p.containers.get(&vmid.to_string()));
    let state = match (target.request.wanted, running) {
        (false, _) => Some(State::NotRequested),
        (true, Some(false)) => Some(State::Stopped),
        _ => seen.map(|s| s.state),
    };
    Ok(Some(Row {
        vmid,
        node: node.to_string(),
        requested: target.request.wanted,
        reason: target.request.reason,
        running,
        host_version: published.and_then(|p| p.host_version.clone()),
        host_version_next_boot: None,
        container_version: seen.and_then(|s| s.container_version.clone()),
        state,
        hookscript: target.pct.hookscript().map(str::to_owned),
        detail: seen.and_then(|s| s.detail.clone()),
        reported_unix: seen.map(|s| s.at_unix),
    }))
}

/// What the admin should know of this node's next boot: a reboot that
/// changes the NVIDIA module, or leaves none.
fn boot_note(loaded: Option<&DriverVersion>, next: &NextBoot) -> Option<String> {
    match (loaded, next) {
        (Some(now), NextBoot::Module { kernel, version }) if now != version => Some(format!(
            "reboot pending: NVIDIA {now} → {version} (kernel {kernel}); its runfile: \
             pve-nvidia-hook prefetch"
        )),
        (None, NextBoot::Module { kernel, version }) => Some(format!(
            "no NVIDIA module loaded now; the next boot's kernel {kernel} has NVIDIA {version}"
        )),
        (Some(now), NextBoot::NoModule { kernel }) => Some(format!(
            "NVIDIA {now} loaded, but the next boot's kernel {kernel} has no NVIDIA module: \
             after a reboot no container gets a driver (build it for that kernel, e.g. with DKMS)"
        )),
        _ => None,
    }
}

fn table(rows: &[Row], cluster: bool) -> String {
    let dash = || "-".to_string();
    let mut lines = vec![vec![
        "VMID".to_string(),
        "REQUESTED".into(),
        "RUNNING".into(),
        "HOST".into(),
        "CONTAINER".into(),
        "STATE".into(),
        "HOOK".into(),
    ]];
    if cluster {
        lines[0].insert(0, "NODE".into());
    }
    for r in rows {
        let requested = match (r.requested, r.reason) {
            (true, Some(reason)) => format!("yes ({})", reason.as_str()),
            (true, None) => "yes".into(),
            (false, _) => "no".into(),
        };
        let mut line = vec![
            r.vmid.to_string(),
            requested,
            match r.running {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "?".into(),
            },
            r.host_version.clone().unwrap_or_else(dash),
            r.container_version.clone().unwrap_or_else(dash),
            r.state.map_or("not reported", |s| s.as_str()).to_string(),
            match r.hookscript.as_deref() {
                Some(v) if is_ours(v) => "yes".into(),
                Some(_) => "other".into(),
                None if r.requested => "NOT REGISTERED".into(),
                None => "no".into(),
            },
        ];
        if cluster {
            line.insert(0, r.node.clone());
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_reboot_is_said() {
        let v = |s: &str| -> DriverVersion { s.parse().unwrap() };
        let module = |ver: &str| NextBoot::Module {
            kernel: "6.8.12-4-pve".into(),
            version: v(ver),
        };
        assert_eq!(
            boot_note(Some(&v("550.54.14")), &module("550.90.07")).as_deref(),
            Some(
                "reboot pending: NVIDIA 550.54.14 → 550.90.07 (kernel 6.8.12-4-pve); its \
                 runfile: pve-nvidia-hook prefetch"
            )
        );
        assert_eq!(boot_note(Some(&v("550.54.14")), &module("550.54.14")), None);
        assert!(boot_note(None, &module("550.90.07"))
            .unwrap()
            .starts_with("no NVIDIA module loaded now"));
        let none = NextBoot::NoModule {
            kernel: "6.8.12-5-pve".into(),
        };
        assert!(boot_note(Some(&v("550.54.14")), &none)
            .unwrap()
            .contains("has no NVIDIA module"));
        assert_eq!(boot_note(None, &NextBoot::NoKernel), None);
    }

    #[test]
    fn check_alarms_on_what_a_monitor_must_hear() {
        let row = |requested, state, hook: Option<&str>| Row {
            vmid: "101".parse().unwrap(),
            node: "pve1".into(),
            requested,
            reason: None,
            running: Some(true),
            host_version: None,
            host_version_next_boot: None,
            container_version: None,
            state,
            hookscript: hook.map(str::to_owned),
            detail: None,
            reported_unix: None,
        };
        let ours = Some("local:snippets/pve-nvidia-hook");
        for (state, alarmed) in [
            (State::Failed, true),
            (State::Mismatch, true),
            (State::Unknown, true),
            (State::UpToDate, false),
            (State::Missing, false),
            (State::Installing, false),
            (State::Stopped, false),
            (State::Packaged, false),
            (State::HostProvided, false),
        ] {
            assert_eq!(
                alarm(&row(true, Some(state), ours)).is_some(),
                alarmed,
                "{state:?}"
            );
        }
        assert_eq!(
            alarm(&row(true, Some(State::Failed), None)).as_deref(),
            Some("CT 101 failed, not registered")
        );
        assert_eq!(
            alarm(&row(
                true,
                Some(State::UpToDate),
                Some("local:snippets/other")
            ))
            .as_deref(),
            Some("CT 101 not registered")
        );
        assert_eq!(
            alarm(&row(true, None, ours)),
            None,
            "another node's, not reported"
        );
        assert_eq!(alarm(&row(false, Some(State::Failed), None)), None);
    }
}
