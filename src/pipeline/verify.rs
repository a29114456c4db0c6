//! Verification, at the end of an install and for `verify`: every file the
//! installer's record lists (by CRC), the libraries a workload loads (by
//! soname), `nvidia-smi` inside reporting exactly the host's version, the
//! device nodes workloads open, and `nvcc` when CUDA is configured.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use serde::{Deserialize, Serialize};

use super::{cuda_fit, Warning};
use crate::config::Settings;
use crate::container::confined::{Confined, Kind, ReadError};
use crate::container::detect::{self, InstalledDriver};
use crate::container::inspect::{self, Capabilities};
use crate::container::probe::Probe;
use crate::container::{ContainerCommand, Exec};
use crate::cuda::Fit;
use crate::version::{self, DriverVersion};
use crate::vmid::Vmid;

pub struct Verified {
    pub reported: DriverVersion,
    pub capabilities: Capabilities,
    pub graphics: bool,
    /// The host's driver, bind-mounted: what it offers is the host's.
    pub host_provided: bool,
    /// The driver is whole, but not everything asked for is there: a
    /// node workloads need, a CUDA toolkit the host's driver cannot run.
    pub warnings: Vec<Warning>,
}

impl Verified {
    /// `CUDA, NVENC, NVDEC, OpenCL; no Vulkan, EGL, GL (compute-only: ...)`.
    pub fn capabilities(&self) -> String {
        if self.host_provided {
            return "the host's own driver, bind-mounted".to_string();
        }
        let summary = self.capabilities.summary();
        if self.graphics {
            summary
        } else {
            format!("{summary} (compute-only; \"graphics\": true installs Vulkan, EGL and GL)")
        }
    }
}

/// The whole driver as workloads will meet it; `quick` is each command's
/// limit (in an install, what is left of its budget). A missing
/// `/dev/nvidia-uvm` is a warning: every file is in place, and the next
/// start has nothing to reinstall.
pub fn verify(
    exec: &dyn Exec,
    root: &Probe,
    host: &DriverVersion,
    settings: &Settings,
    vmid: Vmid,
    quick: Duration,
) -> Result<Verified> {
    // The host's own driver, bind-mounted: no record of an install to read;
    // what workloads get is what nvidia-smi and the nodes say.
    if let InstalledDriver::HostProvided(_) = detect::detect_in(root) {
        let reported = verify_driver(exec, root, host, quick)?;
        return Ok(Verified {
            reported,
            capabilities: Capabilities::default(),
            graphics: settings.graphics,
            host_provided: true,
            warnings: passthrough_gap(root, vmid)?.into_iter().collect(),
        });
    }
    let inspection = inspect::inspect(root, settings.limits.verify_timeout)?;
    if &inspection.version != host {
        // What workloads see of it, too.
        let seen = match verify_driver(exec, root, host, quick) {
            Err(e) => format!(" ({e:#})"),
            Ok(_) => String::new(),
        };
        bail!(
            "the container's driver is {}, the host's module is {host}{seen}",
            inspection.version
        );
    }
    if let Some((first, rest)) = inspection.problems.split_first() {
        // A record lists thousands of files: name a few, count the rest.
        const NAMED: usize = 5;
        let more = rest.len() + inspection.more_problems;
        bail!(
            "the installation is not whole: {first}{}{}",
            match more {
                0 => String::new(),
                n => format!(
                    "; and {n} more: {}",
                    rest.iter()
                        .take(NAMED)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            },
            if more > NAMED { "; …" } else { "" }
        );
    }
    let reported = verify_driver(exec, root, host, quick)?;
    let mut warnings: Vec<Warning> = passthrough_gap(root, vmid)?.into_iter().collect();
    match cuda_fit(settings, host)? {
        // Refused before it was downloaded: there is no nvcc to run.
        Some(fit @ Fit::NeedsNewer { .. }) => warnings.extend(Warning::of_cuda(&fit, host)),
        Some(_) => verify_nvcc(exec, quick)?,
        None => {}
    }
    Ok(Verified {
        reported,
        capabilities: inspection.capabilities,
        graphics: settings.graphics,
        host_provided: false,
        warnings,
    })
}

const UVM: &str = "/dev/nvidia-uvm";

/// A node workloads need that the container lacks: `/dev/nvidia-uvm`
/// (CUDA, and NVENC/NVDEC in applications, open it; nvidia-smi does not).
pub fn passthrough_gap(root: &Probe, vmid: Vmid) -> Result<Option<Warning>> {
    Ok((!nodes(root)?.uvm).then(|| Warning::PassthroughGap {
        vmid,
        node: UVM.to_string(),
    }))
}

/// The device nodes workloads open, as the container has them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Nodes {
    ctl: bool,
    /// Any `/dev/nvidiaN` (whichever it was given).
    gpu: bool,
    /// CUDA needs it, nvidia-smi does not.
    uvm: bool,
}

fn nodes(root: &Probe) -> Result<Nodes> {
    Ok(root.read(nodes_in)?)
}

fn nodes_in(c: &Confined) -> Result<Nodes, ReadError> {
    let present = |path: &str| -> Result<bool, ReadError> { Ok(c.kind(path)? != Kind::Missing) };
    let gpu = c.list_dir("/dev", 4096)?.iter().any(|n| {
        n.strip_prefix("nvidia")
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
    });
    Ok(Nodes {
        ctl: present("/dev/nvidiactl")?,
        gpu,
        uvm: present(UVM)?,
    })
}

/// The nodes nvidia-smi needs that the container lacks: `/dev/nvidiactl`
/// and at least one `/dev/nvidiaN`.
fn missing_gpu_nodes(root: &Probe) -> Vec<String> {
    let Ok(nodes) = nodes(root) else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    if !nodes.ctl {
        missing.push("/dev/nvidiactl".to_string());
    }
    if !nodes.gpu {
        missing.push("/dev/nvidia0 (or any /dev/nvidiaN)".to_string());
    }
    missing
}

/// `nvidia-smi` inside reports exactly the host's version. A missing device
/// node is named: that is a passthrough problem, not a reason to reinstall.
pub fn verify_driver(
    exec: &dyn Exec,
    root: &Probe,
    host: &DriverVersion,
    timeout: Duration,
) -> Result<DriverVersion> {
    let out = exec.exec(ContainerCommand::new(
        &[
            "nvidia-smi",
            "--query-gpu=driver_version",
            "--format=csv,noheader",
        ],
        timeout,
    ))?;
    if !out.success() {
        let missing = missing_gpu_nodes(root);
        let why = if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; GPU not passed through: {} missing in the container",
                missing.join(", ")
            )
        };
        bail!(
            "nvidia-smi in the container: {}: {}{why}",
            out.describe_status(),
            out.diagnostic()
        );
    }
    let reported = version::from_nvidia_smi(&out.stdout_text())
        .map_err(|e| anyhow!("nvidia-smi in the container: {e}"))?;
    if &reported != host {
        bail!("nvidia-smi in the container reports {reported}, the host's module is {host}");
    }
    Ok(reported)
}

pub fn verify_nvcc(exec: &dyn Exec, timeout: Duration) -> Result<()> {
    let out = exec.exec(ContainerCommand::new(
        &["/usr/local/cuda/bin/nvcc", "--version"],
        timeout,
    ))?;
    if !out.success() {
        bail!(
            "nvcc in the container: {}: {}",
            out.describe_status(),
            out.diagnostic()
        );
    }
    Ok(())
}
