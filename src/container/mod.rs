//! The container, and the trust boundary: everything that runs inside it
//! goes through [`Exec`] (`lxc-attach` in production), and everything the
//! host reads of its files goes through one door, [`probe::Probe`]: a child
//! forked for each read, confined to the container's root
//! ([`confined`]), that the caller abandons at a deadline. Nothing is ever
//! written into a container from the host side.
//!
//! What is read: [`detect`] (the start-time check), [`inspect`] (`verify`'s
//! whole inspection), and the parsers of what is read: [`record`]
//! (nvidia-installer's), [`dpkg`], [`elf`], [`mounts`], [`vulkan`] (the
//! loader files the installer writes).

pub mod confined;
pub mod detect;
pub mod dpkg;
pub mod elf;
pub mod fork;
pub mod inspect;
pub mod ldcache;
pub mod mounts;
pub mod probe;
pub mod record;
pub mod vulkan;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{self, Feed, Limits, Output, SAFE_PATH};
use crate::vmid::Vmid;

/// One program to run inside the container, as an argument vector.
pub struct ContainerCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Standard input, written by a thread of ours through a pipe.
    pub feed: Option<Feed>,
    pub timeout: Duration,
    pub max_stdout: usize,
}

impl ContainerCommand {
    pub fn new<S: AsRef<str>>(argv: &[S], timeout: Duration) -> ContainerCommand {
        ContainerCommand {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            env: Vec::new(),
            feed: None,
            timeout,
            max_stdout: 64 * 1024,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn feed(mut self, feed: Feed) -> Self {
        self.feed = Some(feed);
        self
    }

    /// The command as shown in logs and errors: at most [`SHOWN_MAX`]
    /// bytes, so that arguments taken from a container (package names)
    /// never make a line of megabytes.
    pub fn display(&self) -> String {
        let full = self.argv.join(" ");
        if full.len() <= SHOWN_MAX {
            return full;
        }
        let mut end = SHOWN_MAX;
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        format!("{} … ({} arguments)", &full[..end], self.argv.len())
    }
}

/// How much of a command line is shown.
const SHOWN_MAX: usize = 300;

/// The seam between the tool and a container's processes.
pub trait Exec {
    fn exec(&self, cmd: ContainerCommand) -> Result<Output>;
}

/// `lxc-attach -n <vmid>`: what `pct exec` ends in, without the config lock
/// that `pct` would take (the start task holds it while post-start runs).
pub struct LxcAttach {
    program: PathBuf,
    vmid: Vmid,
}

/// Extra time the host side allows beyond the in-container `timeout`, so
/// that the container's own limit fires first and kills the inner process.
const HOST_GRACE: Duration = Duration::from_secs(30);

impl LxcAttach {
    pub fn new(vmid: Vmid) -> Result<LxcAttach> {
        let program = process::find_program("lxc-attach")
            .context("lxc-attach not found (install lxc-pve on Proxmox, lxc elsewhere)")?;
        Ok(LxcAttach { program, vmid })
    }
}

impl Exec for LxcAttach {
    fn exec(&self, cmd: ContainerCommand) -> Result<Output> {
        let mut args = vec![
            "-n".to_string(),
            self.vmid.to_string(),
            "--clear-env".to_string(),
            "--set-var".to_string(),
            format!("PATH={SAFE_PATH}"),
            "--set-var".to_string(),
            "LC_ALL=C".to_string(),
        ];
        for (k, v) in &cmd.env {
            args.push("--set-var".to_string());
            args.push(format!("{k}={v}"));
        }
        // coreutils/busybox `timeout` inside the container kills the inner
        // process: killing lxc-attach on the host alone would leave it running.
        let secs = cmd.timeout.as_secs().max(1).to_string();
        args.extend(["--", "timeout", "-k", "10", &secs].map(String::from));
        args.extend(cmd.argv.iter().cloned());
        let limits = Limits {
            timeout: cmd.timeout + HOST_GRACE,
            max_stdout: cmd.max_stdout,
            max_stderr: 16 * 1024,
        };
        let shown = cmd.display();
        let mut out = process::run_with(&self.program, &args, cmd.feed, limits)
            .with_context(|| format!("CT {}: {shown}", self.vmid))?;
        if out.code == Some(124) {
            out.timed_out = true;
        }
        Ok(out)
    }
}
