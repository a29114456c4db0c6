//! The host's NVIDIA device nodes, made before any guest starts.
//!
//! After a boot `/dev/nvidia-uvm` (and `nvidia-modeset`, the `nvidia-caps`
//! nodes) do not exist until something runs `nvidia-smi`: containers then
//! start without CUDA, and a `devN: /dev/nvidia-uvm` entry makes Proxmox
//! refuse the start. `pve-nvidia-hook devices`, run by the package's
//! oneshot unit before `pve-guests.service`, loads `nvidia-uvm` and makes
//! every node NVIDIA's modules offer, through the host's `nvidia-modprobe`
//! where it exists, else itself from what [`kernel`] reads, with NVIDIA's
//! modes and owners. A host without NVIDIA's module is left alone.

mod kernel;
mod make;

pub use kernel::Kernel;
pub use make::{make_nodes, Did, Made};

/// The package's unit that runs `pve-nvidia-hook devices` at boot.
pub const UNIT: &str = "pve-nvidia-hook-devices.service";

/// A device node as NVIDIA's tools make it, named below `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Node {
    /// `/dev/nvidia-uvm (c 511:0, 0666 0:0)`.
    pub fn describe(&self, dev: &std::path::Path) -> String {
        format!(
            "{} (c {}:{}, {:04o} {}:{})",
            dev.join(&self.name).display(),
            self.major,
            self.minor,
            self.mode,
            self.uid,
            self.gid
        )
    }
}

/// Without these a container cannot use the GPU (`nvidia-uvm`: not CUDA);
/// the others (`nvidia-uvm-tools`, `nvidia-modeset`, `nvidia-caps/*`)
/// serve profilers, display and MIG.
pub fn is_required(name: &str) -> bool {
    name == "nvidiactl"
        || name == "nvidia-uvm"
        || name
            .strip_prefix("nvidia")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_nodes() {
        assert!(is_required("nvidia0") && is_required("nvidia12"));
        assert!(is_required("nvidiactl") && is_required("nvidia-uvm"));
        assert!(!is_required("nvidia-uvm-tools") && !is_required("nvidia-modeset"));
        assert!(!is_required("nvidia-caps/nvidia-cap1") && !is_required("nvidia"));
    }
}
