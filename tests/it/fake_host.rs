//! A fake host for the binary: `paths` point at temporary folders, a fake
//! `lxc-attach` on PATH emulates the container over a directory, and a
//! shell stand-in plays the NVIDIA runfile.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

use crate::support::{self, text, write, TempDir};

pub const V1: &str = "550.54.14";
pub const V2: &str = "550.90.07";

pub struct FakeHost {
    pub dir: TempDir,
    pub config: Value,
    /// Each running fake container's init: a real process, so that the
    /// hook's pidfd names something, killed when the host is dropped.
    inits: std::sync::Mutex<Vec<(u32, std::process::Child)>>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        for (_, child) in self.inits.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let dir = TempDir::new("fake");
        let d = dir.path();
        write(&d.join("calls.log"), "");
        // Where this host's storage paths and /dev are (for the pct and
        // pvesh stand-ins).
        write(
            &d.join("storage_root"),
            d.join("root").display().to_string(),
        );
        write(&d.join("host_dev"), d.join("dev").display().to_string());
        let host = FakeHost {
            config: json!({
                "background": false,
                "dependencies": ["kmod"],
                "runfile_url": format!("{}/runfiles/NVIDIA-Linux-x86_64-{{version}}.run", d.display()),
                "paths": {
                    "pve": d.join("pve"), "sys": d.join("sys"), "proc": d.join("proc"),
                    "cache": d.join("cache"), "lock": d.join("lock"), "log": d.join("log"),
                    "dev": d.join("dev"), "state": d.join("state"),
                    "local_cache": d.join("cache"),
                    "storage_root": d.join("root"),
                    "modules": d.join("boot/lib/modules"),
                    "kernel_pins": d.join("boot/etc/kernel"),
                    "config_locks": d.join("lock-lxc"),
                },
            }),
            dir,
            inits: std::sync::Mutex::new(Vec::new()),
        };
        for tool in [
            "lxc-attach",
            "lxc-info",
            "modinfo",
            "pct",
            "pvesh",
            "pve_storage.py",
        ] {
            host.tool(tool);
        }
        host.set_host_version(V1);
        host.runfile(V1, false);
        host.write_config();
        host
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Puts the stand-in `tests/fakes/<name>` on this host's PATH.
    pub fn tool(&self, name: &str) {
        let target = self.path().join("bin").join(name);
        write(
            &target,
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fakes")
                    .join(name),
            )
            .unwrap(),
        );
        set_mode(&target, 0o755);
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.json")
    }

    pub fn write_config(&self) {
        write(
            &self.config_path(),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        );
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.config[key] = value;
        self.write_config();
    }

    pub fn set_host_version(&self, v: &str) {
        write(
            &self.path().join("sys/module/nvidia/version"),
            format!("{v}\n"),
        );
    }

    pub fn runfile(&self, version: &str, fail: bool) -> PathBuf {
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/runfile.sh"),
        )
        .unwrap();
        let fail = if fail {
            "echo 'ERROR: Unable to load the kernel module' >> \"$log\"; exit 1"
        } else {
            ""
        };
        let path = self
            .path()
            .join(format!("runfiles/NVIDIA-Linux-x86_64-{version}.run"));
        write(
            &path,
            template
                .replace("@VERSION@", version)
                .replace("@FAIL@", fail)
                .replace("@STUBS@", &stub_libraries().display().to_string())
                .replace(
                    "@CRC@",
                    &Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/fakes/nvidia-crc")
                        .display()
                        .to_string(),
                ),
        );
        path
    }

    /// A runfile whose installer first sleeps, so that an install in progress
    /// can be seen, interrupted or timed out.
    pub fn slow_runfile(&self, version: &str, secs: u32) {
        let runfile = self.runfile(version, false);
        let slow = std::fs::read_to_string(&runfile).unwrap().replacen(
            "version=",
            &format!("sleep {secs}\nversion="),
            1,
        );
        write(&runfile, slow);
    }

    /// A running container: its config, its root, and the cgroup and /proc
    /// entries through which the hook finds its init: a real process (a
    /// `sleep`), which the fake /proc describes as pid 1 of its namespace in
    /// the container's cgroup, with this machine's mount table.
    pub fn container(&self, vmid: u32, conf: &str) -> PathBuf {
        let d = self.path();
        write(&d.join(format!("pve/lxc/{vmid}.conf")), conf);
        let root = self.ct(vmid);
        for f in ["dev/nvidia0", "dev/nvidiactl", "dev/nvidia-uvm"] {
            write(&root.join(f), "");
        }
        // What NVIDIA's installer looks for, and apt.
        for tool in [
            "usr/bin/apt-get",
            "usr/sbin/ldconfig",
            "usr/bin/grep",
            "usr/bin/dmesg",
            "usr/bin/tail",
            "usr/sbin/modprobe",
            "usr/sbin/rmmod",
            "usr/sbin/lsmod",
            "usr/sbin/depmod",
        ] {
            write(&root.join(tool), "#!/bin/sh\n");
            set_mode(&root.join(tool), 0o755);
        }
        write(
            &root.join("var/lib/dpkg/status"),
            "Package: bash\nStatus: install ok installed\n\n",
        );
        std::fs::create_dir_all(root.join("var/tmp")).unwrap();
        let init = std::process::Command::new("sleep")
            .arg("infinity")
            .spawn()
            .unwrap();
        let pid = init.id();
        self.inits.lock().unwrap().push((vmid, init));
        write(
            &d.join(format!("sys/fs/cgroup/lxc/{vmid}/ns/cgroup.procs")),
            format!("{pid}\n"),
        );
        write(
            &d.join(format!("proc/{pid}/status")),
            format!("Name:\tinit\nNSpid:\t{pid}\t1\n"),
        );
        write(
            &d.join(format!("proc/{pid}/cgroup")),
            format!("0::/lxc/{vmid}/ns\n"),
        );
        std::os::unix::fs::symlink(&root, d.join(format!("proc/{pid}/root"))).unwrap();
        std::os::unix::fs::symlink(
            "/proc/self/mountinfo",
            d.join(format!("proc/{pid}/mountinfo")),
        )
        .unwrap();
        root
    }

    /// An installed kernel (`<modules>/<kernel>/kernel/`), with an NVIDIA
    /// module of `nvidia` (a DKMS build under `updates/dkms` when `dkms`)
    /// that the `modinfo` stand-in reads.
    pub fn kernel(&self, kernel: &str, nvidia: Option<&str>, dkms: bool) {
        let dir = self.path().join("boot/lib/modules").join(kernel);
        std::fs::create_dir_all(dir.join("kernel/drivers")).unwrap();
        if let Some(version) = nvidia {
            let at = if dkms {
                "updates/dkms/nvidia.ko"
            } else {
                "kernel/drivers/video/nvidia.ko"
            };
            write(
                &dir.join(at),
                format!("name=nvidia\nversion={version}\nlicense=NVIDIA\n"),
            );
        }
    }

    /// The fake container's init process.
    pub fn init_pid(&self, vmid: u32) -> u32 {
        self.inits
            .lock()
            .unwrap()
            .iter()
            .find(|(v, _)| *v == vmid)
            .map(|(_, c)| c.id())
            .unwrap()
    }

    /// Stops the container: its init exits.
    pub fn stop(&self, vmid: u32) {
        for (v, child) in self.inits.lock().unwrap().iter_mut() {
            if *v == vmid {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// This fake host as node `a` of a two-node cluster (pmxcfs's links:
    /// `local` and `lxc` lead to nodes/a); node b shows only in the folders.
    pub fn node_a_of_two(&self) {
        let pve = self.path().join("pve");
        for node in ["a", "b"] {
            std::fs::create_dir_all(pve.join(format!("nodes/{node}/lxc"))).unwrap();
        }
        std::os::unix::fs::symlink("nodes/a", pve.join("local")).unwrap();
        std::os::unix::fs::symlink("nodes/a/lxc", pve.join("lxc")).unwrap();
    }

    pub fn ct(&self, vmid: u32) -> PathBuf {
        self.path().join(format!("ct{vmid}"))
    }

    /// The binary as the fake host's Proxmox would start it.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        support::command(args, Some(&self.path().join("bin")), &self.config_path())
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("calls.log"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn installer_runs(&self, vmid: u32) -> usize {
        std::fs::read_to_string(self.ct(vmid).join(".installer-runs"))
            .map(|l| l.lines().count())
            .unwrap_or(0)
    }

    pub fn status_json(&self, vmid: u32) -> Value {
        let out = self.run(&["status", "--json", &vmid.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    }
}

/// Two real ELF shared objects with NVIDIA's sonames (`libnvidia-ml.so.1`,
/// `libcuda.so.1`), built once per test run, for the stand-in installer.
fn stub_libraries() -> &'static Path {
    static STUBS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STUBS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pnh-it-stubs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, soname) in [
            ("libnvidia-ml.so", "libnvidia-ml.so.1"),
            ("libcuda.so", "libcuda.so.1"),
        ] {
            let built = std::process::Command::new("cc")
                .args(["-shared", "-nostdlib", "-x", "c", "/dev/null"])
                .arg(format!("-Wl,-soname,{soname}"))
                .arg("-o")
                .arg(dir.join(file))
                .status()
                .unwrap();
            assert!(built.success(), "cc failed building {file}");
        }
        dir
    })
}

/// Every file in the cache, locks aside.
pub fn cached_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if !p.to_string_lossy().ends_with(".lock") {
                found.push(p);
            }
        }
    }
    found
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub const TAGGED: &str = "arch: amd64\nhostname: gpu\nostype: debian\ntags: ml;nvidia\n";
