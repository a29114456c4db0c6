//! pve-nvidia-hook: a Proxmox VE hookscript that installs the NVIDIA
//! user-space driver matching the host's kernel module into LXC containers.
//!
//! Data flows one way: [`cli`] → [`config`] → [`decision`] → [`pipeline`].

pub mod cancel;
pub mod chain;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod container;
pub mod context;
pub mod cuda;
pub mod decision;
pub mod detach;
pub mod devices;
pub mod error;
pub mod fsutil;
pub mod host;
pub mod kernels;
pub mod logging;
pub mod notify;
pub mod passthrough;
pub mod pct_config;
pub mod pipeline;
pub mod process;
pub mod published;
pub mod runfile;
pub mod snippet;
pub mod state;
pub mod storage;
pub mod version;
pub mod vmid;
pub mod workloads;

use std::process::ExitCode;

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
