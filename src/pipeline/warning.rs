//! What an install that succeeded still has to say: the container has the
//! host's driver, but not everything that was asked for, or something was
//! done to it that its admin should know. Each is logged as a warning,
//! recorded with the result (`status` shows it) and returned to the caller,
//! which decides how to tell (a Proxmox notification of severity
//! `warning`, for one).

use serde::Serialize;

use crate::cuda::Fit;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Warning {
    /// The configured CUDA toolkit needs a newer driver than the host's: it
    /// was not downloaded nor installed (the driver was).
    CudaRefused {
        /// `13.0.0`.
        toolkit: String,
        /// NVIDIA's minimum for it: `580`.
        needs: String,
        host: String,
    },
    /// Which driver the configured CUDA toolkit needs cannot be told: it
    /// was installed anyway.
    CudaUnknown { why: String },
    /// NVIDIA's installer could not have read its record: the record and
    /// the backups it names were moved aside before it ran.
    RecordMovedAside { why: String, to: String },
    /// Every file is in place, but a device node workloads need is not in
    /// the container: a passthrough gap, not an install to repeat.
    PassthroughGap { vmid: Vmid, node: String },
}

impl Warning {
    /// Something the container was configured for does not work as it is
    /// (the admin is told with severity `warning`), rather than something
    /// that was done to it.
    pub fn is_shortfall(&self) -> bool {
        matches!(
            self,
            Warning::CudaRefused { .. } | Warning::PassthroughGap { .. }
        )
    }

    /// What a CUDA toolkit's fit with the host's driver has to say.
    pub fn of_cuda(fit: &Fit, host: &DriverVersion) -> Option<Warning> {
        match fit {
            Fit::Runs(_) => None,
            Fit::NeedsNewer { toolkit, minimum } => Some(Warning::CudaRefused {
                toolkit: toolkit.version.clone(),
                needs: minimum.clone(),
                host: host.to_string(),
            }),
            Fit::Unknown(why) => Some(Warning::CudaUnknown { why: why.clone() }),
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::CudaRefused {
                toolkit,
                needs,
                host,
            } => write!(
                f,
                "CUDA toolkit {toolkit} not installed: it needs NVIDIA driver {needs} or newer and \
                 the host's module is {host} (NVIDIA's CUDA compatibility table); upgrade the \
                 host's driver, or configure a toolkit the host's driver runs"
            ),
            Warning::CudaUnknown { why } => write!(f, "CUDA toolkit installed anyway: {why}"),
            Warning::RecordMovedAside { why, to } => write!(
                f,
                "NVIDIA's installer could not have read its record ({why}): /var/lib/nvidia \
                 (the record and the backups it names) was moved aside to {to} before it ran; \
                 files of the earlier install that the new one does not replace stay"
            ),
            Warning::PassthroughGap { vmid, node } => write!(
                f,
                "installed, but CUDA needs {node}: pass it to the container \
                 (pct set {vmid} --devN {node}, or an lxc.mount.entry) and restart it \
                 (pct reboot {vmid}); where the host has no {node}, load nvidia_uvm first \
                 (nvidia-modprobe -u -c=0)"
            ),
        }
    }
}
