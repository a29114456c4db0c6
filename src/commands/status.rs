//! `pve-nvidia-hook status [--json] [<vmid>...]`: one row per container.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::container::driver::{self, InstalledDriver};
use crate::context::{Ctx, Lookup};
use crate::decision::{self, Observed, Reason, State};
use crate::snippet::is_ours;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

#[derive(Debug, Serialize)]
pub struct Row {
    pub vmid: Vmid,
    pub requested: bool,
    pub reason: Option<Reason>,
    pub running: bool,
    pub host_version: Option<DriverVersion>,
    pub container_version: Option<DriverVersion>,
    pub state: State,
    /// The hookscript registered on the container, if any.
    pub hookscript: Option<String>,
    /// Why the container's driver is not a clean install, or the last error.
    pub detail: Option<String>,
}

pub fn run(config: Option<&Path>, args: &StatusArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let vmids = if args.vmids.is_empty() {
        ctx.all_containers()?
    } else {
        args.vmids.clone()
    };
    let host = ctx.host_version()?;
    let mut rows = Vec::new();
    let mut failed = false;
    for vmid in vmids {
        match row(&ctx, vmid, host.as_ref()) {
            Ok(Some(r)) => rows.push(r),
            Ok(None) => {
                eprintln!("pve-nvidia-hook: CT {vmid}: no such container");
                failed = true;
            }
            Err(e) => {
                eprintln!(
                    "pve-nvidia-hook: CT {vmid}: {}",
                    crate::logging::sanitize(&format!("{e:#}"))
                );
                failed = true;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn row(ctx: &Ctx, vmid: Vmid, host: Option<&DriverVersion>) -> Result<Option<Row>> {
    let target = match ctx.lookup(vmid)? {
        Lookup::Container(t) => t,
        Lookup::Vm | Lookup::Missing => return Ok(None),
    };
    let installed = match ctx.open_container(vmid) {
        Ok(root) => root.map(|root| driver::detect_in(&root)),
        // Running, but its files cannot be opened in time: cannot tell.
        Err(e) => Some(InstalledDriver::Unknown(format!("{e:#}"))),
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
    let detail = match (&installed, state) {
        (_, State::Failed) => last.map(|r| r.message),
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
        requested: target.request.wanted,
        reason: target.request.reason,
        running: installed.is_some(),
        host_version: host.cloned(),
        container_version: installed.as_ref().and_then(|i| i.version().cloned()),
        state,
        hookscript: target.pct.hookscript().map(str::to_owned),
        detail,
    }))
}

fn table(rows: &[Row]) -> String {
    let dash = || "-".to_string();
    let mut lines = vec![[
        "VMID".to_string(),
        "REQUESTED".into(),
        "RUNNING".into(),
        "HOST".into(),
        "CONTAINER".into(),
        "STATE".into(),
        "HOOK".into(),
    ]];
    for r in rows {
        let requested = match (r.requested, r.reason) {
            (true, Some(reason)) => format!("yes ({})", reason.as_str()),
            (true, None) => "yes".into(),
            (false, _) => "no".into(),
        };
        lines.push([
            r.vmid.to_string(),
            requested,
            if r.running { "yes".into() } else { "no".into() },
            r.host_version.as_ref().map_or_else(dash, |v| v.to_string()),
            r.container_version
                .as_ref()
                .map_or_else(dash, |v| v.to_string()),
            r.state.as_str().to_string(),
            match r.hookscript.as_deref() {
                Some(v) if is_ours(v) => "yes".into(),
                Some(_) => "other".into(),
                None if r.requested => "NOT REGISTERED".into(),
                None => "no".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..7)
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
