//! The command line, and nothing else: clap definitions only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::vmid::Vmid;

/// Keeps the NVIDIA user-space driver in Proxmox LXC containers in step with
/// the host's kernel module. Registered as a container's hookscript, Proxmox
/// runs it as `pve-nvidia-hook <vmid> <phase>`.
#[derive(Debug, Parser)]
#[command(
    name = "pve-nvidia-hook",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Hookscript mode: the container's vmid, as Proxmox passes it.
    #[arg(value_name = "VMID")]
    pub vmid: Option<Vmid>,

    /// Hookscript mode: pre-start, post-start, pre-stop or post-stop. Only
    /// post-start does work.
    #[arg(value_name = "PHASE", requires = "vmid")]
    pub phase: Option<String>,

    /// Configuration file [default: /etc/pve-nvidia-hook/config.json; absent means all defaults]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "PVE_NVIDIA_HOOK_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// Log debug detail too.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the install pipeline in the foreground.
    Install(InstallArgs),
    /// Check that nvidia-smi inside the container reports the host's version.
    Verify(VerifyArgs),
    /// Show each container's NVIDIA state.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    pub vmid: Vmid,
    /// Install even when the container is up to date.
    #[arg(long)]
    pub force: bool,
    /// Set by the hook for the detached install it starts.
    #[arg(long, hide = true)]
    pub from_hook: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub vmid: Vmid,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Containers to show [default: every container config found].
    pub vmids: Vec<Vmid>,
}
