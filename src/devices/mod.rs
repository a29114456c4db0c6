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

pub mod cgroup;
mod kernel;
mod make;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub use kernel::Kernel;
pub use make::{make_nodes, Made};

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

impl Node {
    /// Without it a container cannot use the GPU: [`is_required`].
    pub fn required(&self) -> bool {
        is_required(&self.name)
    }
}

/// The NVIDIA character devices in `dev` now (and in `dev/nvidia-caps`),
/// sorted by name, with their numbers, modes and owners.
pub fn present(dev: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut visit = |dir: &Path, prefix: &str| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if (prefix.is_empty() && !name.starts_with("nvidia"))
                || !meta.file_type().is_char_device()
            {
                continue;
            }
            nodes.push(Node {
                name: format!("{prefix}{name}"),
                major: rustix::fs::major(meta.rdev()),
                minor: rustix::fs::minor(meta.rdev()),
                mode: meta.mode() & 0o777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    };
    visit(dev, "");
    visit(&dev.join("nvidia-caps"), "nvidia-caps/");
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// `systemctl is-enabled` of [`UNIT`] (it reads the unit files; no running
/// systemd is asked): what it prints, empty when the unit is not
/// installed; None without systemctl.
pub fn unit_state() -> Option<anyhow::Result<String>> {
    let systemctl = crate::process::find_program("systemctl")?;
    Some(
        crate::process::run(
            &systemctl,
            &["is-enabled", UNIT],
            crate::process::Limits::quick(std::time::Duration::from_secs(10)),
        )
        .map(|out| out.stdout_text().trim().to_string()),
    )
}

/// Without these a container cannot use the GPU (`nvidia-uvm`: not CUDA);
/// the others (`nvidia-uvm-tools`, `nvidia-modeset`, `nvidia-caps/*`)
/// serve profilers, display and MIG.
pub fn is_required(name: &str) -> bool {
    name == "nvidiactl" || name == "nvidia-uvm" || is_gpu(name)
}

/// A GPU's own node, `nvidia<minor>`.
pub fn is_gpu(name: &str) -> bool {
    name.strip_prefix("nvidia")
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
