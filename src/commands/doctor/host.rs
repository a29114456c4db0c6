//! The host: its kernel module and its NVIDIA device nodes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{Level, Report};
use crate::context::Ctx;
use crate::version::DriverVersion;

/// A host device node of the NVIDIA driver.
pub(super) struct Node {
    pub(super) name: String,
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl Node {
    /// Without these a container cannot use the GPU (uvm: not CUDA).
    pub(super) fn required(&self) -> bool {
        self.name == "nvidiactl"
            || self.name == "nvidia-uvm"
            || self
                .name
                .strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

pub(super) fn checks(ctx: &Ctx, nodes: &[Node], report: &mut Report) -> Option<DriverVersion> {
    let version = match ctx.host.driver_version() {
        Ok(Some((v, source))) => {
            report.add(
                "host",
                "kernel module",
                Level::Ok,
                format!("nvidia {v} loaded (from {source})"),
                None,
            );
            Some(v)
        }
        Ok(None) => {
            report.add(
                "host",
                "kernel module",
                Level::Fail,
                "no NVIDIA kernel module loaded",
                Some("install the NVIDIA driver on the host and load it (modprobe nvidia)".into()),
            );
            None
        }
        Err(e) => {
            report.add("host", "kernel module", Level::Fail, format!("{e:#}"), None);
            None
        }
    };
    let dev = ctx.config().paths.dev.display().to_string();
    if nodes.iter().any(|n| n.name == "nvidiactl") && nodes.iter().any(|n| n.name == "nvidia0") {
        let list: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} ({}:{})", n.name, n.major, n.minor))
            .collect();
        report.add("host", "device nodes", Level::Ok, list.join(", "), None);
    } else {
        report.add(
            "host",
            "device nodes",
            Level::Fail,
            format!("no {dev}/nvidia0 and {dev}/nvidiactl"),
            Some(
                "run nvidia-smi once on the host (or nvidia-modprobe -c 0) so that the nodes exist"
                    .into(),
            ),
        );
    }
    if nodes.iter().any(|n| n.name == "nvidia-uvm") {
        report.add(
            "host",
            "nvidia-uvm",
            Level::Ok,
            format!("{dev}/nvidia-uvm present"),
            None,
        );
    } else {
        report.add(
            "host",
            "nvidia-uvm",
            Level::Warn,
            format!("{dev}/nvidia-uvm missing: CUDA cannot work in containers"),
            Some("load it at boot: echo nvidia-uvm > /etc/modules-load.d/nvidia-uvm.conf, and create the node with a oneshot unit running nvidia-modprobe -c 0 -u".into()),
        );
    }
    version
}

pub(super) fn nodes(dev: &Path) -> Vec<Node> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_nodes() {
        let node = |name: &str| Node {
            name: name.into(),
            major: 195,
            minor: 0,
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        assert!(node("nvidia0").required() && node("nvidia12").required());
        assert!(node("nvidiactl").required() && node("nvidia-uvm").required());
        assert!(!node("nvidia-uvm-tools").required() && !node("nvidia-modeset").required());
        assert!(!node("nvidia-caps/nvidia-cap1").required());
    }
}
