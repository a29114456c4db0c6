//! The command line, and nothing else: clap definitions, and Proxmox's own
//! call read without them.

use std::ffi::OsString;
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
        env = CONFIG_ENV
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
    /// `<VMID> <PHASE>`: hookscript mode, as Proxmox calls it.
    #[command(external_subcommand)]
    Hook(Vec<String>),
}

/// The phases Proxmox runs a container's hookscript in.
const PROXMOX_PHASES: [&str; 4] = ["pre-start", "post-start", "pre-stop", "post-stop"];

/// The environment variable `--config` falls back to.
const CONFIG_ENV: &str = "PVE_NVIDIA_HOOK_CONFIG";

/// Proxmox's own call, `<digits> <phase>` with one of its four phases,
/// read without building clap's parser: that builds every subcommand's
/// arguments and help first, a fifth of the up-to-date hook's own time.
/// What clap makes of the same arguments, [`Cli`] as `Cli::parse` gives
/// it (the test below holds the two together); None for anything else,
/// which clap then reads (an empty `PVE_NVIDIA_HOOK_CONFIG` included: clap
/// refuses it).
pub fn hookscript_call(args: &[OsString], config_env: Option<OsString>) -> Option<Cli> {
    let [_, vmid, phase] = args else {
        return None;
    };
    let (vmid, phase) = (vmid.to_str()?, phase.to_str()?);
    if vmid.is_empty() || !vmid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !PROXMOX_PHASES.contains(&phase) {
        return None;
    }
    let config = match config_env {
        Some(v) if v.is_empty() => return None,
        v => v.map(PathBuf::from),
    };
    Some(Cli {
        command: Some(Command::Hook(vec![vmid.to_string(), phase.to_string()])),
        config,
        verbose: false,
    })
}

/// [`Cli`] from this process's arguments.
pub fn parse() -> Cli {
    let args: Vec<OsString> = std::env::args_os().collect();
    hookscript_call(&args, std::env::var_os(CONFIG_ENV)).unwrap_or_else(|| Cli::parse_from(args))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        std::iter::once("pve-nvidia-hook")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Proxmox's call read without clap is what clap makes of it, with or
    /// without a configuration from the environment (clap reads this
    /// process's, so the bypass is handed the same).
    #[test]
    fn proxmox_calls_read_as_clap_reads_them() {
        let env = std::env::var_os(CONFIG_ENV);
        for phase in PROXMOX_PHASES {
            for vmid in ["101", "9650", "0", "99999999999"] {
                let a = args(&[vmid, phase]);
                let clap = format!("{:?}", Cli::try_parse_from(&a).unwrap());
                let fast = hookscript_call(&a, env.clone()).map(|c| format!("{c:?}"));
                assert_eq!(fast, Some(clap), "{vmid} {phase}");
            }
        }
        let a = args(&["101", "post-start"]);
        let set = hookscript_call(&a, Some("/etc/x.json".into())).unwrap();
        assert_eq!(set.config, Some(PathBuf::from("/etc/x.json")));
        assert!(hookscript_call(&a, Some(OsString::new())).is_none());
    }

    /// Anything but Proxmox's own call is left to clap.
    #[test]
    fn anything_else_goes_to_clap() {
        for words in [
            &["101"][..],
            &["101", "post-start", "x"],
            &["101", "--help"],
            &["101", "start"],
            &["-v", "post-start"],
            &["status", "post-start"],
            &["1o1", "post-start"],
            &["", "post-start"],
            &["install", "101"],
        ] {
            assert!(hookscript_call(&args(words), None).is_none(), "{words:?}");
        }
    }
}
