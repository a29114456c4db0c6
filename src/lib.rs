//! pve-nvidia-hook: a Proxmox VE hookscript that installs the NVIDIA
//! user-space driver matching the host's kernel module into LXC containers.
//!
//! Data flows one way: `cli` → `config` → `decision` → `pipeline`. The
//! modules are the crate's own; the binary needs [`cli`], [`run`],
//! [`report_error`] and [`is_usage`], the benchmark [`bench`].

mod cancel;
mod chain;
pub mod cli;
mod cluster;
mod commands;
mod config;
mod container;
mod context;
mod cuda;
mod decision;
mod detach;
mod devices;
mod error;
mod fsutil;
mod host;
mod kernels;
mod logging;
mod notify;
mod passthrough;
mod pct_config;
mod pipeline;
mod process;
mod published;
mod runfile;
mod snippet;
mod state;
mod storage;
mod version;
mod vmid;
mod workloads;

use std::process::ExitCode;

pub use error::is_usage;
pub use logging::report_error;

/// The container door's parts, timed one by one by `examples/probe-cost.rs`
/// (`make bench`). Not an interface to build on.
#[doc(hidden)]
pub mod bench {
    pub use crate::container::detect::detect_in;
    pub use crate::container::fork::run_in_child;
    pub use crate::container::probe::Probe;
    pub use crate::host::{Host, Init};
}

use anyhow::Result;

use cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    process::close_inherited_on_exec();
    let quiet = matches!(
        cli.command,
        Some(Command::Status(_) | Command::Verify(_) | Command::Doctor(_))
    );
    // A background run's stderr is a log file.
    let detached = matches!(&cli.command, Some(Command::Install(a)) if a.from_hook)
        || matches!(&cli.command, Some(Command::Prefetch(a)) if a.detached);
    logging::init(logging::Options {
        verbose: cli.verbose,
        quiet,
        timestamps: detached,
    });
    match cli.command {
        Some(Command::Install(args)) => commands::install::run(cli.config.as_deref(), &args),
        Some(Command::Verify(args)) => commands::verify::run(cli.config.as_deref(), args.vmid),
        Some(Command::Status(args)) => commands::status::run(cli.config.as_deref(), &args),
        Some(Command::Enable(args)) if args.passthrough => {
            commands::passthrough::enable(cli.config.as_deref(), &args)
        }
        Some(Command::Enable(args)) => commands::enable::enable(cli.config.as_deref(), &args),
        Some(Command::Disable(args)) if args.passthrough => {
            commands::passthrough::disable(cli.config.as_deref(), &args)
        }
        Some(Command::Disable(args)) => commands::enable::disable(cli.config.as_deref(), &args),
        Some(Command::Doctor(args)) => commands::doctor::run(cli.config.as_deref(), &args),
        Some(Command::Prefetch(args)) => commands::prefetch::run(cli.config.as_deref(), &args),
        Some(Command::Sync(args)) => commands::sync::run(cli.config.as_deref(), &args),
        Some(Command::Devices) => commands::devices::run(cli.config.as_deref()),
        Some(Command::Hook(words)) => {
            let (vmid, phase) = cli::hook_args(&words).map_err(error::usage)?;
            commands::hook::run(cli.config.as_deref(), vmid, phase)
        }
        None => Err(error::usage(
            "expected <VMID> <PHASE> (hookscript mode) or a command; see --help",
        )),
    }
}
