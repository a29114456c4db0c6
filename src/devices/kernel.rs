//! What NVIDIA's kernel modules say about their device nodes, read the way
//! `nvidia-modprobe` reads it (NVIDIA's `nvidia-modprobe-utils.c`):
//! majors from `/proc/devices` (`nvidia_get_chardev_major`), each GPU's
//! minor from `/proc/driver/nvidia/gpus/*/information`, modes and owners
//! from `/proc/driver/nvidia/params` (`init_device_file_parameters`), the
//! capability nodes from `/proc/driver/nvidia/capabilities`
//! (`nvidia_cap_get_device_file_attrs`), and whether a module is loaded from
//! `/sys/module/<name>` (for `nvidia`, its `version`, as everywhere else in
//! this tool, and its `/proc/driver/nvidia`). Parsing is pure; reading goes
//! through the configured `sys` and `proc` roots.

use std::path::{Path, PathBuf};

use super::Node;
use crate::host::read_small;

/// NVIDIA's fixed major for `nvidia<N>`, `nvidiactl` and `nvidia-modeset`
/// (`NV_MAJOR_DEVICE_NUMBER`).
pub const NVIDIA_MAJOR: u32 = 195;
const CTL_MINOR: u32 = 255;
const MODESET_MINOR: u32 = 254;

/// NVIDIA's folders hold a few files per GPU (or GPU instance); more is
/// not NVIDIA's.
const MAX_FILES: usize = 512;

/// Owner, group and mode of nodes, and whether they may be changed at all
/// (`ModifyDeviceFiles: 0` leaves them to the system).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub modify: bool,
}

/// NVIDIA's defaults (`NV_DEVICE_FILE_MODE`, uid and gid 0).
const DEFAULT_PARAMS: Params = Params {
    uid: 0,
    gid: 0,
    mode: 0o666,
    modify: true,
};

impl Params {
    /// `Name: value` lines as NVIDIA writes them (`DeviceFileMode: 438`, in
    /// decimal); unknown names are ignored, a value that is no number or
    /// out of range keeps the default.
    pub fn parse(text: &str) -> Params {
        let mut p = DEFAULT_PARAMS;
        for (name, value) in fields(text) {
            match name {
                "DeviceFileUID" if value != u32::MAX => p.uid = value,
                "DeviceFileGID" if value != u32::MAX => p.gid = value,
                "DeviceFileMode" if value <= 0o777 => p.mode = value,
                "ModifyDeviceFiles" | "DeviceFileModify" => p.modify = value == 1,
                _ => {}
            }
        }
        p
    }
}

/// `Name: <decimal>` lines; others are skipped.
fn fields(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|l| {
        let (name, value) = l.split_once(':')?;
        Some((name.trim(), value.trim().parse().ok()?))
    })
}

/// One capability node: its `/proc` file (what `nvidia-modprobe -f` takes),
/// its minor and its own mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub proc_file: PathBuf,
    pub minor: u32,
    pub params: Params,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    /// `nvidia`, `nvidia_uvm`, `nvidia_modeset` loaded.
    pub nvidia: bool,
    pub uvm: bool,
    pub modeset: bool,
    /// The `Character devices:` section of `/proc/devices`.
    majors: Vec<(u32, String)>,
    gpu_minors: Vec<u32>,
    params: Option<Params>,
    caps: Vec<Cap>,
}

impl Kernel {
    pub fn read(sys: &Path, proc: &Path) -> Kernel {
        let loaded = |module: &str| sys.join("module").join(module).is_dir();
        let text = |path: PathBuf| read_small(&path).ok().flatten();
        let driver = proc.join("driver/nvidia");
        let nvidia = sys.join("module/nvidia/version").is_file() && driver.is_dir();
        Kernel {
            nvidia,
            uvm: loaded("nvidia_uvm"),
            modeset: loaded("nvidia_modeset"),
            majors: text(proc.join("devices"))
                .map(|t| char_majors(&t))
                .unwrap_or_default(),
            gpu_minors: gpu_minors(&driver.join("gpus")),
            params: text(driver.join("params")).map(|t| Params::parse(&t)),
            caps: caps(&driver.join("capabilities")),
        }
    }

    /// The major `/proc/devices` gives a character device's name.
    pub fn major(&self, name: &str) -> Option<u32> {
        self.majors
            .iter()
            .find_map(|(major, n)| (n == name).then_some(*major))
    }

    pub fn gpu_minors(&self) -> &[u32] {
        &self.gpu_minors
    }

    pub fn caps(&self) -> &[Cap] {
        &self.caps
    }

    /// The capability files of the MIG instances of the GPU with this
    /// minor (`gpu<minor>/mig/gi<N>/access`, `.../ci<M>/access`): none
    /// when it is not in MIG mode or has no instance.
    pub fn mig_capabilities(&self, minor: u32) -> usize {
        let gpu = format!("gpu{minor}");
        self.caps
            .iter()
            .filter(|c| {
                let parts: Vec<&str> = c.proc_file.iter().filter_map(|p| p.to_str()).collect();
                parts
                    .windows(3)
                    .any(|w| w[0] == gpu && w[1] == "mig" && w[2].starts_with("gi"))
            })
            .count()
    }

    /// Every node NVIDIA's tools would make now, with their modes and
    /// owners: `nvidia<N>` per GPU and `nvidiactl` (and `nvidia-modeset`
    /// once its module is loaded) at major 195 with the driver's params;
    /// `nvidia-uvm` and `nvidia-uvm-tools` at the dynamic major, 0666 root;
    /// `nvidia-caps/nvidia-cap<M>` with each capability's own mode. Nodes
    /// whose params forbid changes are not listed: they are the system's.
    pub fn nodes(&self) -> Vec<Node> {
        self.listed(false)
    }

    /// Every node the loaded modules offer, with the numbers they have
    /// now, whoever makes them (`ModifyDeviceFiles: 0` leaves them to the
    /// system): what a container may be given.
    pub fn offered(&self) -> Vec<Node> {
        self.listed(true)
    }

    fn listed(&self, systems_too: bool) -> Vec<Node> {
        let mut nodes = Vec::new();
        if !self.nvidia {
            return nodes;
        }
        let node = |name: String, major, minor, p: Params| Node {
            name,
            major,
            minor,
            mode: p.mode,
            uid: p.uid,
            gid: p.gid,
        };
        let params = self.params.unwrap_or(DEFAULT_PARAMS);
        if params.modify || systems_too {
            for &minor in &self.gpu_minors {
                nodes.push(node(format!("nvidia{minor}"), NVIDIA_MAJOR, minor, params));
            }
            nodes.push(node("nvidiactl".into(), NVIDIA_MAJOR, CTL_MINOR, params));
            if self.modeset {
                nodes.push(node(
                    "nvidia-modeset".into(),
                    NVIDIA_MAJOR,
                    MODESET_MINOR,
                    params,
                ));
            }
        }
        if let Some(uvm) = self.major("nvidia-uvm") {
            // No params file: NVIDIA's defaults (`nvidia_uvm_mknod`).
            nodes.push(node("nvidia-uvm".into(), uvm, 0, DEFAULT_PARAMS));
            nodes.push(node("nvidia-uvm-tools".into(), uvm, 1, DEFAULT_PARAMS));
        }
        if let Some(major) = self.major("nvidia-caps") {
            for cap in self.caps.iter().filter(|c| c.params.modify || systems_too) {
                nodes.push(node(
                    format!("nvidia-caps/nvidia-cap{}", cap.minor),
                    major,
                    cap.minor,
                    cap.params,
                ));
            }
        }
        nodes
    }
}

/// The `Character devices:` section of `/proc/devices`: `major name` lines
/// up to the blank line that ends it.
pub fn char_majors(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .skip_while(|l| l.trim() != "Character devices:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let major = words.next()?.parse().ok()?;
            Some((major, words.next()?.to_string()))
        })
        .collect()
}

/// `Device Minor: N` of each `gpus/<bus id>/information`, sorted; minors
/// that would name `nvidiactl` or `nvidia-modeset` are not a GPU's.
fn gpu_minors(dir: &Path) -> Vec<u32> {
    let mut minors: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .take(MAX_FILES)
        .filter_map(|e| read_small(&e.path().join("information")).ok().flatten())
        .filter_map(|t| {
            t.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                (name.trim() == "Device Minor")
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
        })
        .filter(|m| *m < MODESET_MINOR)
        .collect();
    minors.sort_unstable();
    minors.dedup();
    minors
}

/// Every capability file below `dir` (`mig/config`, `mig/monitor`,
/// `gpu<N>/mig/gi<M>/access`, `.../ci<K>/access`): a file with a
/// `DeviceFileMinor`.
fn caps(dir: &Path) -> Vec<Cap> {
    let mut found = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if found.len() >= MAX_FILES {
                return found;
            }
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() && depth < 6 => todo.push((path, depth + 1)),
                Ok(t) if t.is_file() => {
                    let Some(text) = read_small(&path).ok().flatten() else {
                        continue;
                    };
                    let Some(minor) =
                        fields(&text).find_map(|(n, v)| (n == "DeviceFileMinor").then_some(v))
                    else {
                        continue;
                    };
                    found.push(Cap {
                        proc_file: path,
                        minor,
                        params: Params::parse(&text),
                    });
                }
                _ => {}
            }
        }
    }
    found.sort_by_key(|c| c.minor);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_DEVICES: &str = "Character devices:\n  1 mem\n195 nvidia-frontend\n234 nvidia-caps\n511 nvidia-uvm\n\nBlock devices:\n  8 sd\n511 nvidia-uvm-block\n";

    #[test]
    fn majors_come_from_the_character_section_only() {
        let majors = char_majors(PROC_DEVICES);
        assert_eq!(majors.len(), 4);
        let k = Kernel {
            majors,
            ..Kernel::default()
        };
        assert_eq!(k.major("nvidia-uvm"), Some(511));
        assert_eq!(k.major("nvidia-caps"), Some(234));
        assert_eq!(k.major("nvidia-uvm-block"), None, "a block device");
        assert_eq!(k.major("nvidia"), None, "names match whole");
    }

    #[test]
    fn params_as_nvidia_writes_them() {
        let p = Params::parse(
            "ResmanDebugLevel: 4294967295\nRegistryDwords: \"\"\nDeviceFileUID: 0\nDeviceFileGID: 44\nDeviceFileMode: 432\nModifyDeviceFiles: 1\n",
        );
        assert_eq!(
            p,
            Params {
                uid: 0,
                gid: 44,
                mode: 0o660,
                modify: true
            }
        );
        assert!(!Params::parse("ModifyDeviceFiles: 0\n").modify);
        assert_eq!(
            Params::parse("DeviceFileMode: 99999\nDeviceFileUID: 4294967295\n"),
            DEFAULT_PARAMS,
            "out of range keeps NVIDIA's default"
        );
    }

    fn kernel() -> Kernel {
        Kernel {
            nvidia: true,
            uvm: true,
            modeset: true,
            majors: char_majors(PROC_DEVICES),
            gpu_minors: vec![0, 1],
            params: Some(Params {
                gid: 44,
                mode: 0o660,
                ..DEFAULT_PARAMS
            }),
            caps: vec![Cap {
                proc_file: "/proc/driver/nvidia/capabilities/mig/config".into(),
                minor: 1,
                params: Params {
                    mode: 0o400,
                    ..DEFAULT_PARAMS
                },
            }],
        }
    }

    #[test]
    fn every_node_nvidias_tools_make_with_their_modes() {
        let shown: Vec<String> = kernel()
            .nodes()
            .iter()
            .map(|n| {
                format!(
                    "{} {}:{} {:o} {}:{}",
                    n.name, n.major, n.minor, n.mode, n.uid, n.gid
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "nvidia0 195:0 660 0:44",
                "nvidia1 195:1 660 0:44",
                "nvidiactl 195:255 660 0:44",
                "nvidia-modeset 195:254 660 0:44",
                "nvidia-uvm 511:0 666 0:0",
                "nvidia-uvm-tools 511:1 666 0:0",
                "nvidia-caps/nvidia-cap1 234:1 400 0:0",
            ]
        );
    }

    #[test]
    fn no_module_no_nodes_and_the_systems_nodes_left_alone() {
        let k = Kernel {
            nvidia: false,
            ..kernel()
        };
        assert!(k.nodes().is_empty());
        let mut k = kernel();
        k.params = Some(Params {
            modify: false,
            ..DEFAULT_PARAMS
        });
        k.modeset = false;
        let names: Vec<String> = k.nodes().into_iter().map(|n| n.name).collect();
        assert_eq!(
            names,
            ["nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps/nvidia-cap1"],
            "ModifyDeviceFiles: 0 leaves nvidia<N> and nvidiactl to the system"
        );
        assert_eq!(
            k.offered().len(),
            6,
            "but they are offered, to pass to containers"
        );
        let k = Kernel {
            majors: vec![(195, "nvidia".into())],
            ..kernel()
        };
        assert!(
            !k.nodes().iter().any(|n| n.name.starts_with("nvidia-uvm")),
            "no uvm major, no uvm nodes"
        );
    }

    #[test]
    fn minors_and_caps_read_from_nvidias_files() {
        let d = crate::container::confined::tests::tempdir("kernel-files");
        for (bus, minor) in [("0000:81:00.0", 1), ("0000:01:00.0", 0)] {
            std::fs::create_dir_all(d.join(format!("driver/nvidia/gpus/{bus}"))).unwrap();
            std::fs::write(
                d.join(format!("driver/nvidia/gpus/{bus}/information")),
                format!("Model: \t\t NVIDIA H100\nIRQ:   \t\t 42\nDevice Minor: \t {minor}\n"),
            )
            .unwrap();
        }
        let mig = d.join("driver/nvidia/capabilities/gpu0/mig/gi1");
        std::fs::create_dir_all(&mig).unwrap();
        std::fs::write(
            mig.join("access"),
            "DeviceFileMinor: 12\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
        )
        .unwrap();
        std::fs::write(
            d.join("driver/nvidia/capabilities/not-a-cap"),
            "something else\n",
        )
        .unwrap();
        let k = Kernel::read(&d.join("nosys"), &d);
        assert_eq!(k.gpu_minors(), [0, 1]);
        assert_eq!(k.caps().len(), 1);
        assert_eq!(k.caps()[0].minor, 12);
        assert_eq!(k.caps()[0].params.mode, 0o444);
        assert_eq!((k.mig_capabilities(0), k.mig_capabilities(1)), (1, 0));
        assert!(!k.nvidia, "no <sys>/module/nvidia/version");
        std::fs::create_dir_all(d.join("sys/module/nvidia")).unwrap();
        std::fs::write(d.join("sys/module/nvidia/version"), "550.54.14\n").unwrap();
        assert!(Kernel::read(&d.join("sys"), &d).nvidia);
        assert!(
            !Kernel::read(&d.join("sys"), &d.join("sys")).nvidia,
            "a /proc without the driver's folder is not one with NVIDIA's module"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
