//! `pve-nvidia-hook doctor [<vmid>...]`: one line per check, OK/WARN/FAIL with
//! the fix, for the host, each container's config and the running container.
//! Exit 1 when any check fails.

mod access;
mod cgroup;
mod docker;
mod hook;
mod host;
mod inside;
mod ownership;
mod rules;
mod runfile;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::context::{Ctx, Lookup, Target};
use crate::logging;
use crate::version::DriverVersion;
use crate::vmid::Vmid;
use host::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub scope: String,
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

pub(super) struct Report {
    checks: Vec<Check>,
}

impl Report {
    pub(super) fn add(
        &mut self,
        scope: &str,
        check: &'static str,
        level: Level,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            scope: scope.to_string(),
            check,
            level,
            // What a container said may be in it, and --json prints it as is.
            detail: crate::logging::bounded(&detail.into(), 4 * crate::logging::DETAIL_MAX),
            fix,
        });
    }
}

pub fn run(config: Option<&Path>, args: &DoctorArgs) -> Result<ExitCode> {
    let ctx = Ctx::load(config)?;
    let mut report = Report { checks: Vec::new() };
    let nodes = host::nodes(&ctx.config().paths.dev);
    let host = host::checks(&ctx, &nodes, &mut report);
    let lookups: Vec<(Vmid, Result<Lookup>)> = if args.vmids.is_empty() {
        ctx.all_containers()?
            .into_iter()
            .map(|v| (v, ctx.lookup(v)))
            .filter(|(_, l)| matches!(l, Ok(Lookup::Container(t)) if t.request.wanted))
            .collect()
    } else {
        args.vmids.iter().map(|&v| (v, ctx.lookup(v))).collect()
    };
    let mut asked = runfile::Asked::new();
    for (vmid, lookup) in lookups {
        let scope = format!("CT {vmid}");
        match lookup {
            Ok(Lookup::Container(target)) => {
                container_checks(&ctx, &target, host.as_ref(), &nodes, &mut report, &scope);
                if let Some(host) = &host {
                    runfile::checks(&target, host, &mut asked, &mut report, &scope);
                }
            }
            Ok(Lookup::Vm) => report.add(
                &scope,
                "config",
                Level::Fail,
                "a virtual machine, not a container",
                None,
            ),
            Ok(Lookup::Missing) => {
                report.add(&scope, "config", Level::Fail, ctx.not_here(vmid), None)
            }
            Err(e) => report.add(&scope, "config", Level::Fail, format!("{e:#}"), None),
        }
    }
    if let Some(json) = super::json(args.output.format(), &report.checks)? {
        println!("{json}");
    } else {
        for c in &report.checks {
            let level = match c.level {
                Level::Ok => "OK",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!(
                "{level:<4}  {}: {}: {}",
                c.scope,
                c.check,
                logging::sanitize(&c.detail)
            );
            if let Some(fix) = &c.fix {
                println!("      fix: {}", logging::sanitize(fix));
            }
        }
    }
    let failed = report.checks.iter().any(|c| c.level == Level::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn container_checks(
    ctx: &Ctx,
    target: &Target,
    host: Option<&DriverVersion>,
    nodes: &[Node],
    report: &mut Report,
    scope: &str,
) {
    let vmid = target.vmid;
    match target.request.reason {
        Some(reason) if target.request.wanted => report.add(
            scope,
            "requested",
            Level::Ok,
            format!("yes ({})", reason.as_str()),
            None,
        ),
        _ => report.add(
            scope,
            "requested",
            Level::Warn,
            "NVIDIA is not requested: the hook does nothing here",
            // `--tags` replaces every tag: the container's own are kept.
            Some(format!(
                "pct set {vmid} --tags '{}'",
                target
                    .pct
                    .raw_tags()
                    .into_iter()
                    .chain([crate::decision::NVIDIA_TAG.to_string()])
                    .collect::<Vec<_>>()
                    .join(";")
            )),
        ),
    }

    let paths = &ctx.config().paths;
    let layout = cgroup::layout(&paths.sys);
    let passed = access::checks(target, nodes, &paths.dev, layout, report, scope);
    hook::checks(ctx, target, report, scope);
    inside::checks(ctx, target, host, nodes, &passed, report, scope);
}
