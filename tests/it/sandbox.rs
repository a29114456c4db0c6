//! The sandbox that plays the Proxmox host for the real-container tests
//! (`e2e*`): tests/e2e/sandbox.sh driven from Rust, one at a time. Those tests
//! need root, LXC, debootstrap and makeself, so they are `#[ignore]`d in a
//! plain `cargo test` and run by `make test` as root (`--include-ignored`),
//! as CI does. Run without root they fail and say why: they never pass
//! without having run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::support::{self, text, write, FileServer, TempDir};

pub const V1: &str = "550.54.14";
pub const V2: &str = "550.90.07";

/// One sandbox at a time: the machine has two cores, and apt inside the
/// containers shares one mirror.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/sandbox.sh")
}

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(script()).args(args).output().unwrap();
    assert!(out.status.success(), "sandbox.sh {args:?}: {}", text(&out));
    out
}

pub struct Sandbox {
    work: TempDir,
    pub server: FileServer,
    pub config: Value,
    vmids: Vec<u32>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Sandbox {
    pub fn new(tag: &str) -> Sandbox {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            rustix::process::geteuid().is_root(),
            "the real-container tests need root (run `make test` as root; a plain `cargo test` leaves them ignored)"
        );
        sh(&["base"]);
        let work = TempDir::new(&format!("e2e-{tag}"));
        let w = work.path();
        let real = support::which("lxc-attach");
        write(
            &w.join("bin/lxc-attach"),
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
                w.join("attach.log").display(),
                real.display()
            ),
        );
        chmod(&w.join("bin/lxc-attach"), 0o755);
        write(&w.join("attach.log"), "");
        // Proxmox's stand-ins, and where this host's /var/lib/vz is.
        let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes");
        for tool in ["pct", "pvesh", "pve_storage.py"] {
            std::fs::copy(fakes.join(tool), w.join("bin").join(tool)).unwrap();
        }
        write(
            &w.join("storage_root"),
            w.join("root").display().to_string(),
        );
        write(
            &w.join("host_dev"),
            w.join("devnodes").display().to_string(),
        );
        sh(&["host-version", &w.display().to_string(), V1]);
        let server = FileServer::start(&w.join("runfiles"));
        let mut sb = Sandbox {
            config: json!({
                "background": false,
                "dependencies": ["kmod"],
                "runfile_url": server.url("NVIDIA-Linux-x86_64-{version}.run"),
                "runfile_sha256": {},
                "paths": {
                    "pve": w.join("pve"), "sys": w.join("sys"),
                    "cache": w.join("cache"), "lock": w.join("lock"), "log": w.join("log"),
                    "dev": w.join("devnodes"), "state": w.join("state"),
                    "local_cache": w.join("cache"),
                    "storage_root": w.join("root"),
                    "modules": w.join("boot/lib/modules"),
                    "kernel_pins": w.join("boot/etc/kernel"),
                    "config_locks": w.join("lock-lxc"),
                },
            }),
            server,
            work,
            vmids: Vec::new(),
            _serial: serial,
        };
        sb.runfile(V1, "ok");
        sb
    }

    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    pub fn write_config(&self) {
        write(
            &self.dir().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        );
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.config[key] = value;
        self.write_config();
    }

    /// Builds the stand-in runfile and records its digest in the config.
    pub fn runfile(&mut self, version: &str, mode: &str) {
        let dir = self.dir().join("runfiles");
        sh(&["runfile", version, &dir.display().to_string(), mode]);
        let digest = support::sha256_hex(&dir.join(format!("NVIDIA-Linux-x86_64-{version}.run")));
        self.config["runfile_sha256"][version] = json!(digest);
        self.write_config();
    }

    pub fn up(&mut self, vmid: u32, gpu: bool, tags: &str) {
        self.up_with(vmid, gpu, tags, &[]);
    }

    /// A container with sandbox options (`fuse`).
    pub fn up_with(&mut self, vmid: u32, gpu: bool, tags: &str, options: &[&str]) {
        self.vmids.push(vmid);
        let gpu = if gpu { "gpu" } else { "nogpu" };
        let dir = self.dir().display().to_string();
        let vmid = vmid.to_string();
        let mut args = vec!["up", vmid.as_str(), dir.as_str(), gpu, tags];
        args.extend_from_slice(options);
        sh(&args);
    }

    /// The container's root file system, as the host sees it.
    pub fn rootfs(&self, vmid: u32) -> PathBuf {
        let out = Command::new("lxc-config")
            .arg("lxc.lxcpath")
            .output()
            .unwrap();
        let lxcpath = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Path::new(&lxcpath).join(vmid.to_string()).join("rootfs")
    }

    pub fn hook(&self, vmid: u32, phase: &str) -> Output {
        self.run(&[&vmid.to_string(), phase])
    }

    pub fn run(&self, args: &[&str]) -> Output {
        support::run(
            args,
            Some(&self.dir().join("bin")),
            &self.dir().join("config.json"),
        )
    }

    /// Copies the .debs of `dir` into the container's /root/debs.
    pub fn push_debs(&self, vmid: u32, dir: &Path) {
        let target = self.rootfs(vmid).join("root/debs");
        std::fs::create_dir_all(&target).unwrap();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".deb") {
                std::fs::copy(e.path(), target.join(e.file_name())).unwrap();
            }
        }
    }

    /// Runs a command inside the container, for the tests' own checks.
    pub fn inside(&self, vmid: u32, argv: &[&str]) -> Output {
        Command::new("lxc-attach")
            .args(["-n", &vmid.to_string(), "--"])
            .args(argv)
            .output()
            .unwrap()
    }

    pub fn inside_ok(&self, vmid: u32, argv: &[&str]) -> String {
        let out = self.inside(vmid, argv);
        assert!(out.status.success(), "{argv:?} in {vmid}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installer runs, counted from outside: nvidia-installer truncates its
    /// own log, so the lxc-attach calls that ran a runfile are counted.
    pub fn installer_runs(&self, vmid: u32) -> usize {
        std::fs::read_to_string(self.dir().join("attach.log"))
            .unwrap()
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-n {vmid} "))
                    && l.contains("/NVIDIA-Linux-x86_64-")
                    && l.contains(".run --silent")
            })
            .count()
    }

    pub fn attach_calls(&self) -> usize {
        std::fs::read_to_string(self.dir().join("attach.log"))
            .unwrap()
            .lines()
            .count()
    }

    pub fn downloads(&self, version: &str) -> usize {
        self.server
            .count(&format!("NVIDIA-Linux-x86_64-{version}.run"))
    }

    pub fn state(&self, vmid: u32) -> String {
        let out = self.run(&["status", "--json", &vmid.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        rows[0]["state"].as_str().unwrap().to_string()
    }

    /// Replaces a program in the container with the tenant's `script`, the
    /// real one kept as `<path>.real`.
    pub fn replace_program(&self, vmid: u32, path: &str, script: &str) {
        let host = self.rootfs(vmid).join(path.trim_start_matches('/'));
        std::fs::rename(&host, format!("{}.real", host.display())).unwrap();
        std::fs::write(&host, script).unwrap();
        chmod(&host, 0o755);
    }

    pub fn restore_program(&self, vmid: u32, path: &str) {
        let host = self.rootfs(vmid).join(path.trim_start_matches('/'));
        std::fs::rename(format!("{}.real", host.display()), &host).unwrap();
    }

    pub fn host_version(&self, version: &str) {
        sh(&["host-version", &self.dir().display().to_string(), version]);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for vmid in &self.vmids {
            let _ = Command::new(script())
                .args(["down", &vmid.to_string()])
                .output();
        }
    }
}

/// The device rules LXC applies on this machine (the sandbox's host): the
/// cgroup2 ones on a pure cgroup v2 host, the v1 ones where a v1 devices
/// controller is mounted; and the other, which it ignores.
pub fn device_rule_keys() -> (&'static str, &'static str) {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        ("lxc.cgroup2.devices", "lxc.cgroup.devices")
    } else {
        ("lxc.cgroup.devices", "lxc.cgroup2.devices")
    }
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
