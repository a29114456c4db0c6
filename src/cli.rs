//! The command line, and nothing else: clap definitions, and Proxmox's own
//! call read without them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::passthrough::Gpus;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

/// Keeps the NVIDIA user-space driver in Proxmox LXC containers in step with
/// the host's kernel module.
#[derive(Debug, Parser)]
#[command(
    name = "pve-nvidia-hook",
    version,
    override_usage = "pve-nvidia-hook [OPTIONS] <COMMAND>\n       pve-nvidia-hook <VMID> <PHASE>    (hookscript mode, as Proxmox runs it)",
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
    /// Register the hook on containers (snippet, hookscript, tag); with
    /// --passthrough, give them the host's GPU as Proxmox's devN entries.
    Enable(EnableArgs),
    /// Unregister the hook, restoring a chained hookscript; with
    /// --passthrough, take back what `enable --passthrough` wrote.
    Disable(DisableArgs),
    /// Explain why a GPU is or is not usable in a container.
    Doctor(DoctorArgs),
    /// Load nvidia-uvm and make every NVIDIA device node containers may be
    /// given, with NVIDIA's modes (what pve-nvidia-hook-devices.service runs
    /// at boot, before the guests start).
    Devices,
    /// Download and verify the driver runfile for VERSION ahead of time, so
    /// that the installs after the next boot wait for no download.
    Prefetch(PrefetchArgs),
    /// Check every running container that requests NVIDIA now, and install
    /// in the background where needed.
    Sync(SyncArgs),
    /// `<VMID> <PHASE>`: hookscript mode, as Proxmox calls it.
    #[command(external_subcommand)]
    Hook(Vec<String>),
}

/// A hookscript phase, as Proxmox names them for containers; any other
/// word is kept, to be warned about and otherwise ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
    Other(String),
}

impl Phase {
    pub fn parse(word: &str) -> Phase {
        match word {
            "pre-start" => Phase::PreStart,
            "post-start" => Phase::PostStart,
            "pre-stop" => Phase::PreStop,
            "post-stop" => Phase::PostStop,
            other => Phase::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::PreStart => "pre-start",
            Phase::PostStart => "post-start",
            Phase::PreStop => "pre-stop",
            Phase::PostStop => "post-stop",
            Phase::Other(word) => word,
        })
    }
}

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
    if matches!(Phase::parse(phase), Phase::Other(_)) {
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
pub fn hook_args(words: &[String]) -> Result<(Vmid, Phase), String> {
    match words {
        [vmid, phase] => Ok((vmid.parse()?, Phase::parse(phase))),
        _ => Err(format!(
            "hookscript mode takes exactly <VMID> <PHASE>, got {} argument(s); see --help",
            words.len()
        )),
    }
}

/// What a `<VMID>` argument is.
const VMID_HELP: &str = "Container ID on this node, as in `pct list`";

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[arg(value_name = "VMID", help = VMID_HELP)]
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
    #[arg(value_name = "VMID", help = VMID_HELP)]
    pub vmid: Vmid,
}

/// `--output-format`, as Proxmox's own tools (pvesh, pvesm, pct) take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    JsonPretty,
}

#[derive(Debug, Args)]
pub struct Output {
    /// Output format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Text)]
    output_format: OutputFormat,
    /// Same as --output-format json-pretty.
    #[arg(long, conflicts_with = "output_format")]
    json: bool,
}

impl Output {
    pub fn format(&self) -> OutputFormat {
        if self.json {
            OutputFormat::JsonPretty
        } else {
            self.output_format
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub output: Output,
    /// For monitoring: exit 1 when a container that requests NVIDIA is
    /// `failed`, `mismatch` or `unknown`, or does not have the hook
    /// registered (each is named on stderr).
    #[arg(long)]
    pub check: bool,
    /// Every node's containers: this node's read now, the others' as their
    /// nodes last published them in the cluster file system, whether they
    /// run from Proxmox's API.
    #[arg(long)]
    pub cluster: bool,
    /// Containers to show, IDs on this node as in `pct list` [default: every
    /// container config found].
    #[arg(value_name = "VMID")]
    pub vmids: Vec<Vmid>,
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    #[arg(required = true, value_name = "VMID", help = VMID_HELP)]
    pub vmids: Vec<Vmid>,
    /// Storage for the snippet: any with a path (Proxmox runs a hookscript
    /// from it whatever its content types) [default: on a cluster a shared
    /// one whose content has snippets, else local].
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
    /// Instead: pass the host's NVIDIA device nodes to the containers as
    /// Proxmox's devN entries (raw lxc lines before PVE 8.1), to their
    /// video group or with a mode that lets their users open them.
    #[arg(long, conflicts_with_all = ["storage", "no_tag", "chain", "now"])]
    pub passthrough: bool,
    /// With --passthrough: the GPUs, by number as in /dev/nvidia<N> [default: all].
    #[arg(long, value_name = "0,1|all", requires = "passthrough")]
    pub gpu: Option<Gpus>,
    /// With --passthrough: remove the raw lxc.mount.entry and
    /// lxc.cgroup*.devices.allow lines for the nodes the devN entries pass.
    #[arg(long, requires = "passthrough")]
    pub replace_raw: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    #[arg(required = true, value_name = "VMID", help = VMID_HELP)]
    pub vmids: Vec<Vmid>,
    /// Also remove the `nvidia` tag (which `enable` adds).
    #[arg(long)]
    pub untag: bool,
    /// Print the commands without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Instead: remove what `enable --passthrough` wrote, and nothing else.
    #[arg(long, conflicts_with = "untag")]
    pub passthrough: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub output: Output,
    /// Containers to check, IDs on this node as in `pct list` [default:
    /// every container that requests NVIDIA].
    #[arg(value_name = "VMID")]
    pub vmids: Vec<Vmid>,
}

#[derive(Debug, Args)]
pub struct PrefetchArgs {
    /// The driver version [default: that of the NVIDIA module the next boot
    /// loads: the pinned kernel's, else the newest installed kernel's]
    pub version: Option<DriverVersion>,
    /// As the package's apt hook runs it after dpkg: only when the next
    /// boot loads another NVIDIA module than the one loaded now, in the
    /// background, never failing.
    #[arg(long, hide = true, conflicts_with = "version")]
    pub after_dpkg: bool,
    /// Set for the fetch the apt hook starts in the background (its output
    /// is a log file).
    #[arg(long, hide = true)]
    pub detached: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// As the timer runs it: a container whose install failed for the
    /// host's version is left alone for sync_retry_secs (an hour), doubled
    /// after each further failure.
    #[arg(long)]
    pub backoff: bool,
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
        for phase in ["pre-start", "post-start", "pre-stop", "post-stop"] {
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
