//! What the installer needs in the container before it runs: the configured
//! apt packages (none fetched when dpkg says they are all there, so a
//! container without network access whose tools are in place installs
//! fine), then the programs NVIDIA's installer looks up and refuses to run
//! without, checked from the host side.

use anyhow::{bail, Result};

use super::{apt, must, Job};
use crate::container::confined::Kind;
use crate::process::SAFE_PATH;
use crate::version::DriverVersion;

/// nvidia-installer's `find_system_utils` and `find_module_utils` (misc.c),
/// required even with `--no-kernel-module`, with the Debian package that
/// provides each.
const REQUIRED: [(&str, &str); 8] = [
    ("ldconfig", "libc-bin"),
    ("grep", "grep"),
    ("dmesg", "util-linux"),
    ("tail", "coreutils"),
    ("modprobe", "kmod"),
    ("rmmod", "kmod"),
    ("lsmod", "kmod"),
    ("depmod", "kmod"),
];

/// Before 510 (470 is still shipped for older GPUs) the installer also
/// required these.
const REQUIRED_BEFORE_510: [(&str, &str); 4] = [
    ("ldd", "libc-bin"),
    ("cut", "coreutils"),
    ("tr", "coreutils"),
    ("sed", "sed"),
];

pub fn required_programs(version: &DriverVersion) -> Vec<(&'static str, &'static str)> {
    let mut programs = REQUIRED.to_vec();
    if version.major() < 510 {
        programs.extend(REQUIRED_BEFORE_510);
    }
    programs
}

pub fn run(job: &Job) -> Result<()> {
    let wanted = job.settings.all_dependencies();
    if !wanted.is_empty() {
        install(job, &wanted)?;
    }
    prerequisites(job)
}

fn install(job: &Job, wanted: &[String]) -> Result<()> {
    let packages = super::packages(job)?;
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|d| !packages.iter().any(|p| p.installed.contains(d)))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        log::info!("dependencies already installed: {}", wanted.join(" "));
        return Ok(());
    }
    let has_apt = job.root.read(|c| c.kind("/usr/bin/apt-get"))? == Kind::File;
    if packages.is_none() || !has_apt {
        bail!(
            "the container has no apt-get (ostype: {}); install {} yourself, or set \"dependencies\" to what the container already has",
            job.ostype.unwrap_or("unknown"),
            missing.join(" ")
        );
    }
    must(job, apt(job, &["update", "-q"])?)?;
    let mut argv = vec!["install", "-y", "-q", "--no-install-recommends"];
    argv.extend(missing);
    must(job, apt(job, &argv)?)?;
    Ok(())
}

/// Every program the installer will look for, as an executable file in the
/// container (symlinks followed inside it): one error naming all that are
/// missing and their packages.
fn prerequisites(job: &Job) -> Result<()> {
    let programs = required_programs(job.host);
    let names: Vec<&'static str> = programs.iter().map(|(p, _)| *p).collect();
    let found = job.root.read(|c| {
        Ok(names
            .iter()
            .map(|name| {
                // Where nvidia-installer looks: the PATH it runs with (ours,
                // fixed), which holds its own list (/bin:/usr/bin:/sbin:/usr/sbin).
                SAFE_PATH
                    .split(':')
                    .any(|dir| c.executable(&format!("{dir}/{name}")).unwrap_or(false))
            })
            .collect::<Vec<bool>>())
    })?;
    let missing: Vec<String> = programs
        .iter()
        .zip(found)
        .filter(|(_, found)| !found)
        .map(|((p, pkg), _)| format!("{p} (package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "NVIDIA's installer needs {} in the container and stops without: install them, or add their packages to \"dependencies\"",
            missing.join(", ")
        );
    }
    Ok(())
}
