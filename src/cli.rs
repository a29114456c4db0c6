//! The command line, and nothing else: clap definitions only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::vmid::Vmid;

/// Keeps the NVIDIA user-space driver in Proxmox LXC containers in step with
/// the host's kernel module.
#[derive(Debug, Parser)]
#[command(
    name = "pve-nvidia-hook",
    version,
    override_usage = "pve-nvidia-hook [OPTIONS] <VMID> <PHASE>\n       pve-nvidia-hook [OPTIONS] <COMMAND>",
    after_help = "Hookscript mode: registered with `pct set <vmid> --hookscript local:snippets/pve-nvidia-hook`, \
Proxmox runs it as `pve-nvidia-hook <VMID> <PHASE>`. Only post-start does work: it checks that the \
container's NVIDIA user-space driver matches the host's kernel module and installs it when not, \
in the background. A hookscript kept with `enable --chain` runs first in every phase.\n\n\
Exit status: 0 ok or nothing to do, 1 failure at run time, 2 usage or configuration error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

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
    /// Check the container's driver as workloads meet it: its files, the
    /// host's version from nvidia-smi, the device nodes.
    Verify(VerifyArgs),
    /// Show each container's NVIDIA state.
    Status(StatusArgs),
    /// Register the hook on containers (snippet, hookscript, tag).
    Enable(EnableArgs),
    /// Unregister the hook, restoring a chained hookscript.
    Disable(DisableArgs),
    /// Explain why a GPU is or is not usable in a container.
    Doctor(DoctorArgs),
    /// Load nvidia-uvm and make every NVIDIA device node containers may be
    /// given, with NVIDIA's modes (what pve-nvidia-hook-devices.service runs
    /// at boot, before the guests start).
    Devices,
    /// `<VMID> <PHASE>`: hookscript mode, as Proxmox calls it.
    #[command(external_subcommand)]
    Hook(Vec<String>),
}

/// The two hookscript arguments, validated: the vmid before anything is read.
pub fn hook_args(words: &[String]) -> Result<(Vmid, String), String> {
    match words {
        [vmid, phase] => Ok((vmid.parse()?, phase.clone())),
        _ => Err(format!(
            "hookscript mode takes exactly <VMID> <PHASE>, got {} argument(s); see --help",
            words.len()
        )),
    }
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
    /// Every node's containers: this node's read now, the others' as their
    /// nodes last published them in the cluster file system, whether they
    /// run from Proxmox's API.
    #[arg(long)]
    pub cluster: bool,
    /// Containers to show [default: every container config found].
    pub vmids: Vec<Vmid>,
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    #[arg(required = true)]
    pub vmids: Vec<Vmid>,
    /// Storage for the snippet; it must allow the `snippets` content type
    /// [default: on a cluster a shared one that does, else local].
    #[arg(long)]
    pub storage: Option<String>,
    /// Do not add the `nvidia` tag.
    #[arg(long)]
    pub no_tag: bool,
    /// Keep a container's existing hookscript: ours calls it first, for every
    /// phase, and passes on its exit status for pre-start.
    #[arg(long)]
    pub chain: bool,
    /// Check and install now in running containers, instead of at their next start.
    #[arg(long)]
    pub now: bool,
    /// Print the commands and file changes without making them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    #[arg(required = true)]
    pub vmids: Vec<Vmid>,
    /// Print the commands without running them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print a JSON array of checks instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Containers to check [default: every container that requests NVIDIA].
    pub vmids: Vec<Vmid>,
}
