//! Making the nodes: the modules loaded and the nodes made through the
//! host's `nvidia-modprobe` (`-c <minor>`, `-u -c 0`, `-m`, `-f <cap>`, as
//! NVIDIA's user-space does), or with `modprobe` where it is missing; then
//! every node checked and, where it is missing or wrong, made or corrected
//! the way `nvidia-modprobe`'s `mknod_helper` does it: a wrong type or
//! number is removed and made again, a wrong mode or owner corrected, and
//! `/dev/char/<major>:<minor>` points at it.
//!
//! `/dev` is root's alone: nothing here races a tenant. Names are NVIDIA's
//! fixed ones, made below a descriptor of the configured `dev` folder.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{is_required, Kernel, Node};
use crate::process::{self, Limits};

/// What was done to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Did {
    Present,
    Made,
    /// Its mode or owner corrected.
    Fixed,
}

impl Did {
    pub fn as_str(self) -> &'static str {
        match self {
            Did::Present => "present",
            Did::Made => "made",
            Did::Fixed => "mode and owner corrected",
        }
    }
}

pub enum Made {
    /// No NVIDIA kernel module: nothing was touched.
    NoModule,
    Nodes {
        results: Vec<(Node, Result<Did>)>,
        /// What did not go as NVIDIA's tool would have it, and was made up
        /// for (a failed `nvidia-modprobe` call, a module that did not load).
        warnings: Vec<String>,
        /// What leaves containers without CUDA.
        problems: Vec<String>,
    },
}

impl Made {
    /// A required node or module is missing.
    pub fn failed(&self) -> bool {
        match self {
            Made::NoModule => false,
            Made::Nodes {
                results, problems, ..
            } => {
                !problems.is_empty()
                    || results
                        .iter()
                        .any(|(n, r)| r.is_err() && is_required(&n.name))
            }
        }
    }
}

/// One program run at boot: a minute is long for any of them.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn make_nodes(sys: &Path, proc: &Path, dev: &Path) -> Result<Made> {
    let mut kernel = Kernel::read(sys, proc);
    if !kernel.nvidia && settle_for_pending_gpu(sys) {
        kernel = Kernel::read(sys, proc);
    }
    if !kernel.nvidia {
        return Ok(Made::NoModule);
    }
    let mut warnings = Vec::new();
    match process::find_program("nvidia-modprobe") {
        Some(tool) => {
            for args in nvidia_modprobe_calls(&kernel) {
                if let Err(why) = run_tool(&tool, &args) {
                    warnings.push(why);
                }
            }
        }
        None => match process::find_program("modprobe") {
            Some(modprobe) => {
                for module in modules_to_load(&kernel) {
                    if let Err(why) = run_tool(&modprobe, &[module.to_string()]) {
                        warnings.push(why);
                    }
                }
            }
            None => warnings.push(
                "neither nvidia-modprobe nor modprobe was found: no module was loaded".into(),
            ),
        },
    }
    let kernel = Kernel::read(sys, proc);
    let mut problems = Vec::new();
    if kernel.major("nvidia-uvm").is_none() {
        problems.push(format!(
            "nvidia-uvm is not loaded (no nvidia-uvm in {}): CUDA cannot work in containers",
            proc.join("devices").display()
        ));
    }
    let dir = open_dir(dev)?;
    let results = kernel
        .nodes()
        .into_iter()
        .map(|node| {
            let did = ensure(&dir, &node).with_context(|| format!("making {}", node.describe(dev)));
            (node, did)
        })
        .collect();
    Ok(Made::Nodes {
        results,
        warnings,
        problems,
    })
}

/// `nvidia-modprobe` as NVIDIA's user-space calls it: the GPUs' nodes and
/// `nvidiactl` (minor 255); `-u -c 0`, which loads `nvidia-uvm` and makes
/// `nvidia-uvm` and `nvidia-uvm-tools`; `-m` for `nvidia-modeset`; `-f`
/// for the capability nodes (at most 256 a call).
fn nvidia_modprobe_calls(kernel: &Kernel) -> Vec<Vec<String>> {
    let mut nodes: Vec<String> = kernel
        .gpu_minors()
        .iter()
        .flat_map(|m| ["-c".to_string(), m.to_string()])
        .collect();
    nodes.extend(["-c".to_string(), "255".to_string()]);
    let mut calls = vec![
        nodes,
        vec!["-u".into(), "-c".into(), "0".into()],
        vec!["-m".into()],
    ];
    for chunk in kernel.caps().chunks(256) {
        calls.push(
            chunk
                .iter()
                .flat_map(|c| ["-f".to_string(), c.proc_file.display().to_string()])
                .collect(),
        );
    }
    calls
}

/// Without `nvidia-modprobe`, the modules behind the dynamic nodes.
fn modules_to_load(kernel: &Kernel) -> Vec<&'static str> {
    [
        ("nvidia-uvm", kernel.uvm),
        ("nvidia-modeset", kernel.modeset),
    ]
    .into_iter()
    .filter(|(_, loaded)| !loaded)
    .map(|(m, _)| m)
    .collect()
}

fn run_tool(tool: &Path, args: &[String]) -> std::result::Result<(), String> {
    let shown = format!("{} {}", tool.display(), args.join(" "));
    match process::run_with(tool, args, None, Limits::quick(TOOL_TIMEOUT)) {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{shown}`: {}{}",
            out.describe_status(),
            match out.diagnostic() {
                d if d.is_empty() => String::new(),
                d => format!(": {d}"),
            }
        )),
        Err(e) => Err(format!("`{shown}`: {e:#}")),
    }
}

/// udev loads `nvidia` for a GPU by its modalias while the node boots: a
/// GPU bound to no driver yet may still get it, so udev's queue is waited
/// for (`udevadm settle`), once. A GPU bound to another driver (`vfio-pci`,
/// passed to a VM) is not waited for. True when it waited.
fn settle_for_pending_gpu(sys: &Path) -> bool {
    if !gpu_awaiting_driver(sys) {
        return false;
    }
    let Some(udevadm) = process::find_program("udevadm") else {
        return false;
    };
    let args = ["settle".to_string(), "--timeout=60".to_string()];
    if let Err(why) = run_tool(&udevadm, &args) {
        log::warn!("{why}");
    }
    true
}

/// An NVIDIA display device (vendor 0x10de, class 0x03xxxx) with no driver.
fn gpu_awaiting_driver(sys: &Path) -> bool {
    let text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    std::fs::read_dir(sys.join("bus/pci/devices"))
        .into_iter()
        .flatten()
        .flatten()
        .take(4096)
        .any(|e| {
            let d = e.path();
            text(&d.join("vendor")).trim() == "0x10de"
                && text(&d.join("class")).trim().starts_with("0x03")
                && !d.join("driver").exists()
        })
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))
}

/// What a name holds now, as far as the decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    char_device: bool,
    rdev: (u32, u32),
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Present,
    Fix,
    Replace,
    Make,
}

/// `mknod_helper`'s decision: the right device with the right mode and
/// owner is left; a wrong mode or owner is corrected; anything else at the
/// name (a file, a symlink, another device) is replaced.
fn step(found: Option<Found>, node: &Node) -> Step {
    match found {
        None => Step::Make,
        Some(f) if !f.char_device || f.rdev != (node.major, node.minor) => Step::Replace,
        Some(f) if f.mode == node.mode && f.uid == node.uid && f.gid == node.gid => Step::Present,
        Some(_) => Step::Fix,
    }
}

fn ensure(dev: &OwnedFd, node: &Node) -> Result<Did> {
    let (dir, name) = match node.name.split_once('/') {
        Some((sub, name)) => (subdir(dev, sub)?, name),
        None => (dev.try_clone()?, node.name.as_str()),
    };
    let found = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Some(Found {
            char_device: FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice,
            rdev: (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)),
            mode: st.st_mode & 0o777,
            uid: st.st_uid,
            gid: st.st_gid,
        }),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(e).context("looking at it"),
    };
    let did = match step(found, node) {
        Step::Present => Did::Present,
        Step::Fix => Did::Fixed,
        Step::Replace => {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty())
                .context("removing what is there (not this device)")?;
            mknod(&dir, name, node)?;
            Did::Made
        }
        Step::Make => {
            mknod(&dir, name, node)?;
            Did::Made
        }
    };
    if did != Did::Present {
        if let Err(e) = set_mode_and_owner(&dir, name, node) {
            if did == Did::Made {
                let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
            }
            return Err(e);
        }
    }
    char_link(dev, node);
    Ok(did)
}

fn mknod(dir: &OwnedFd, name: &str, node: &Node) -> Result<()> {
    rustix::fs::mknodat(
        dir,
        name,
        FileType::CharacterDevice,
        Mode::from_raw_mode(node.mode),
        rustix::fs::makedev(node.major, node.minor),
    )
    .context("mknod")
}

/// The mode exactly (mknod's is cut by the umask) and the owner. The name
/// was just seen to be a device node in a folder only root can change.
fn set_mode_and_owner(dir: &OwnedFd, name: &str, node: &Node) -> Result<()> {
    rustix::fs::chmodat(dir, name, Mode::from_raw_mode(node.mode), AtFlags::empty())
        .context("chmod")?;
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(node.uid)),
        Some(rustix::fs::Gid::from_raw(node.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .context("chown")
}

/// `nvidia-caps`, made 0755 root's when missing, as `nvidia_cap_mknod`
/// makes it.
fn subdir(dev: &OwnedFd, name: &str) -> Result<OwnedFd> {
    match rustix::fs::mkdirat(dev, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {
            rustix::fs::chmodat(dev, name, Mode::from_raw_mode(0o755), AtFlags::empty())?;
            rustix::fs::chownat(
                dev,
                name,
                Some(rustix::fs::Uid::ROOT),
                Some(rustix::fs::Gid::ROOT),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        Err(Errno::EXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("mkdir {name}")),
    }
    rustix::fs::openat(
        dev,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {name}"))
}

/// `/dev/char/<major>:<minor>` → `../<name>`, as `symlink_char_dev` makes
/// it (systemd and runc find devices by number there). Best effort: a
/// host without `/dev/char` has none.
fn char_link(dev: &OwnedFd, node: &Node) {
    let Ok(chars) = rustix::fs::openat(
        dev,
        "char",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let link = format!("{}:{}", node.major, node.minor);
    let _ = rustix::fs::unlinkat(&chars, link.as_str(), AtFlags::empty());
    if let Err(e) = rustix::fs::symlinkat(format!("../{}", node.name), &chars, link.as_str()) {
        log::debug!("/dev/char/{link}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            name: "nvidia-uvm".into(),
            major: 511,
            minor: 0,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn what_is_at_the_name_decides_as_nvidia_modprobe_does() {
        let right = Found {
            char_device: true,
            rdev: (511, 0),
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        assert_eq!(step(None, &node()), Step::Make);
        assert_eq!(step(Some(right), &node()), Step::Present);
        assert_eq!(
            step(
                Some(Found {
                    mode: 0o660,
                    ..right
                }),
                &node()
            ),
            Step::Fix
        );
        assert_eq!(step(Some(Found { gid: 44, ..right }), &node()), Step::Fix);
        assert_eq!(
            step(
                Some(Found {
                    rdev: (510, 0),
                    ..right
                }),
                &node()
            ),
            Step::Replace,
            "last boot's uvm major"
        );
        assert_eq!(
            step(
                Some(Found {
                    char_device: false,
                    ..right
                }),
                &node()
            ),
            Step::Replace,
            "a file or a symlink at the name"
        );
    }

    #[test]
    fn nvidia_modprobe_is_called_as_nvidias_user_space_calls_it() {
        let d = crate::container::confined::tests::tempdir("modprobe-calls");
        for (bus, minor) in [("0000:01:00.0", 0), ("0000:41:00.0", 1)] {
            let g = d.join(format!("driver/nvidia/gpus/{bus}"));
            std::fs::create_dir_all(&g).unwrap();
            std::fs::write(g.join("information"), format!("Device Minor: {minor}\n")).unwrap();
        }
        let mig = d.join("driver/nvidia/capabilities/mig");
        std::fs::create_dir_all(&mig).unwrap();
        std::fs::write(
            mig.join("config"),
            "DeviceFileMinor: 1\nDeviceFileMode: 256\n",
        )
        .unwrap();
        let kernel = Kernel::read(&d, &d);
        let calls: Vec<String> = nvidia_modprobe_calls(&kernel)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            calls,
            [
                "-c 0 -c 1 -c 255".to_string(),
                "-u -c 0".to_string(),
                "-m".to_string(),
                format!("-f {}", mig.join("config").display()),
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_a_gpu_without_a_driver_is_waited_for() {
        let d = crate::container::confined::tests::tempdir("pending-gpu");
        let pci = d.join("bus/pci/devices");
        let device = |name: &str, vendor: &str, class: &str, driver: bool| {
            let p = pci.join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(p.join("class"), format!("{class}\n")).unwrap();
            if driver {
                std::fs::create_dir_all(p.join("driver")).unwrap();
            }
        };
        device("0000:00:02.0", "0x8086", "0x030000", false);
        device("0000:01:00.1", "0x10de", "0x040300", false);
        device("0000:02:00.0", "0x10de", "0x030200", true);
        assert!(!gpu_awaiting_driver(&d), "audio, other vendors, vfio-pci");
        device("0000:03:00.0", "0x10de", "0x030000", false);
        assert!(gpu_awaiting_driver(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
