//! One file per command. What they share, resolving a container in the host
//! context, lives in [`crate::context`].

pub mod devices;
pub mod doctor;
pub mod enable;
pub mod hook;
pub mod install;
pub mod passthrough;
pub mod prefetch;
pub mod status;
pub mod sync;
pub mod verify;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::OutputFormat;
use crate::vmid::Vmid;

/// The value as JSON in the format asked for; None for text.
pub fn json<T: serde::Serialize>(format: OutputFormat, value: &T) -> Result<Option<String>> {
    Ok(match format {
        OutputFormat::Text => None,
        OutputFormat::Json => Some(serde_json::to_string(value)?),
        OutputFormat::JsonPretty => Some(serde_json::to_string_pretty(value)?),
    })
}

/// Runs `work` for each container, reporting a failure on its own line and
/// going on with the next; exit 1 when any failed.
pub fn for_each(vmids: &[Vmid], mut work: impl FnMut(Vmid) -> Result<()>) -> ExitCode {
    let mut failed = false;
    for &vmid in vmids {
        if let Err(e) = work(vmid) {
            eprintln!(
                "pve-nvidia-hook: {}",
                crate::logging::scoped(vmid, &crate::logging::sanitize(&format!("{e:#}")))
            );
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
