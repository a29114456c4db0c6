//! Real LXC containers on a sandbox that plays the Proxmox host
//! (tests/e2e/sandbox.sh). They need root, LXC, debootstrap and makeself, so
//! they are `#[ignore]`d in a plain `cargo test` and run by `make test` as
//! root (`--include-ignored`), as CI does. Run without root they fail and say
//! why: they never pass without having run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, expect_exit, text, write, FileServer, TempDir};

const V1: &str = "550.54.14";
const V2: &str = "550.90.07";

/// One sandbox at a time: the machine has two cores, and apt inside the
/// containers shares one mirror.
static SERIAL: Mutex<()> = Mutex::new(());

fn sandbox_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/sandbox.sh")
}

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(sandbox_script()).args(args).output().unwrap();
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
        for tool in ["pct", "pvesh"] {
            std::fs::copy(fakes.join(tool), w.join("bin").join(tool)).unwrap();
        }
        write(
            &w.join("storage_root"),
            w.join("root").display().to_string(),
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

    pub fn host_version(&self, version: &str) {
        sh(&["host-version", &self.dir().display().to_string(), version]);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for vmid in &self.vmids {
            let _ = Command::new(sandbox_script())
                .args(["down", &vmid.to_string()])
                .output();
        }
    }
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Scenario 1: a container that does not request NVIDIA is left as it was.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_not_requested_changes_nothing() {
    let mut sb = Sandbox::new("notreq");
    sb.up(9101, false, "web");
    let listing = |sb: &Sandbox| {
        sb.inside_ok(
            9101,
            &["sh", "-c", "find /usr /var /etc /tmp -xdev | sort | md5sum"],
        )
    };
    let before = listing(&sb);
    let out = sb.hook(9101, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert_eq!(sb.attach_calls(), 0);
    assert_eq!(listing(&sb), before);
    assert_eq!(sb.downloads(V1), 0);
    assert_eq!(sb.state(9101), "not-requested");
}

/// Scenarios 2 and 3: fresh install by tag, then a second start that does
/// nothing beyond the check.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_fresh_install_then_up_to_date() {
    let mut sb = Sandbox::new("fresh");
    sb.up(9102, true, "nvidia");
    let out = sb.hook(9102, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sb.inside_ok(
            9102,
            &[
                "nvidia-smi",
                "--query-gpu=driver_version",
                "--format=csv,noheader"
            ]
        )
        .trim(),
        V1
    );
    assert_eq!(
        sb.inside_ok(9102, &["find", "/var/tmp", "/tmp", "-mindepth", "1"])
            .trim(),
        "",
        "nothing left in /var/tmp or /tmp"
    );
    assert!(sb
        .inside_ok(9102, &["head", "-1", "/var/lib/nvidia/log"])
        .contains(&format!("({V1})")));
    let verify = sb.run(&["verify", "9102"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert_eq!(sb.state(9102), "up-to-date");
    assert_eq!(sb.downloads(V1), 1);
    assert_eq!(sb.installer_runs(9102), 1);

    let calls = sb.attach_calls();
    let again = sb.hook(9102, "post-start");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        stderr(&again).contains(&format!("NVIDIA driver {V1} up to date")),
        "{}",
        text(&again)
    );
    assert_eq!(
        sb.attach_calls(),
        calls,
        "no container command on the up-to-date path"
    );
    assert_eq!(sb.downloads(V1), 1, "no second download");
    assert_eq!(sb.installer_runs(9102), 1, "no second installer run");
}

/// Scenario 4: the host driver is upgraded; the next start reinstalls.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_host_upgrade_reinstalls() {
    let mut sb = Sandbox::new("upgrade");
    sb.up(9103, true, "nvidia");
    assert!(sb.hook(9103, "post-start").status.success());
    sb.runfile(V2, "ok");
    sb.host_version(V2);
    let stale = sb.run(&["verify", "9103"]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stderr(&stale).contains("Driver/library version mismatch"),
        "{}",
        text(&stale)
    );
    assert_eq!(sb.state(9103), "mismatch");
    let out = sb.hook(9103, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sb.inside_ok(
            9103,
            &[
                "nvidia-smi",
                "--query-gpu=driver_version",
                "--format=csv,noheader"
            ]
        )
        .trim(),
        V2
    );
    assert!(sb.run(&["verify", "9103"]).status.success());
    assert_eq!(
        sb.inside(
            9103,
            &[
                "test",
                "-e",
                &format!("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{V1}")
            ]
        )
        .status
        .code(),
        Some(1),
        "old library uninstalled"
    );
}

/// Scenario 5, with Debian's real packages: nvidia-smi and libcuda1 from
/// non-free (535.261.03, with their real maintainer scripts, alternatives,
/// diversions and nvidia-installer-cleanup's marker) are reported as what
/// they are, then purged, and nothing of theirs is left that a runfile
/// install trips on.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_debian_nvidia_packages_are_purged_and_leave_nothing_behind() {
    let mut sb = Sandbox::new("apt");
    sb.up(9104, true, "nvidia");
    let debs = PathBuf::from(String::from_utf8(sh(&["debs"]).stdout).unwrap().trim());
    sb.push_debs(9104, &debs);
    // Offline: only the .debs given, no mirror.
    let install = sb.inside(
        9104,
        &[
            "sh",
            "-c",
            "DEBIAN_FRONTEND=noninteractive apt-get -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=- \
             install -y --no-install-recommends /root/debs/*.deb && rm -rf /root/debs",
        ],
    );
    assert!(install.status.success(), "{}", text(&install));
    assert!(sb
        .inside(
            9104,
            &["test", "-e", "/usr/lib/nvidia/alternate-install-present"]
        )
        .status
        .success());
    // Issue 12.8: Debian's packaging, read through /etc/alternatives.
    let out = sb.run(&["status", "--json", "9104"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["container_version"], "535.261.03", "{rows}");
    assert_eq!(rows[0]["state"], "packaged", "{rows}");

    let out = sb.hook(9104, "post-start");
    expect_exit(&out, 0, "purging ");
    let purged = stderr(&out);
    for p in [
        "nvidia-smi",
        "libcuda1",
        "nvidia-installer-cleanup",
        "glx-diversions",
        "nvidia-alternative",
    ] {
        assert!(purged.contains(p), "{p} not purged: {purged}");
    }
    let left = sb.inside_ok(
        9104,
        &[
            "sh",
            "-c",
            "dpkg -l | awk '$1 != \"ii\" && $1 != \"rc\" { next } /nvidia|cuda|glx/ { print $2 }'; \
             ls /usr/lib/nvidia 2>/dev/null; ls /etc/alternatives | grep -E 'nvidia|glx'; \
             dpkg-divert --list | grep -E 'nvidia|mesa-diverted'; true",
        ],
    );
    assert_eq!(left.trim(), "", "left behind: {left}");
    assert!(sb.run(&["verify", "9104"]).status.success());
    assert_eq!(sb.state(9104), "up-to-date");
}

/// Scenario 6: background mode returns at once with its output closed, and
/// the install finishes on its own while `status` says installing.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_background_install() {
    let mut sb = Sandbox::new("bg");
    sb.up(9105, true, "nvidia");
    sb.set("background", json!(true));
    sb.runfile(V1, "slow");
    // output() returns only once every holder of stdout and stderr closed
    // them; the install was still to finish then.
    let out = sb.hook(9105, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(
        sb.state(9105),
        "up-to-date",
        "the hook waited for the install"
    );
    let mut seen_installing = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = sb.state(9105);
        seen_installing |= state == "installing";
        if state == "up-to-date" {
            break;
        }
        assert!(Instant::now() < deadline, "still {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen_installing);
    let log = std::fs::read_to_string(sb.dir().join("log/9105.log")).unwrap();
    assert!(log.contains("installed and verified"), "{log}");
}

/// Scenario 7: concurrent hooks: one installer per container, one download
/// per version.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_concurrent_hooks() {
    let mut sb = Sandbox::new("storm");
    for vmid in 9106..=9109 {
        sb.up(vmid, true, "nvidia");
    }
    let sb = &sb;
    std::thread::scope(|s| {
        let handles: Vec<_> = [9106, 9106, 9107, 9108, 9109]
            .into_iter()
            .map(|vmid| s.spawn(move || sb.hook(vmid, "post-start")))
            .collect();
        for h in handles {
            let out = h.join().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        }
    });
    assert_eq!(sb.downloads(V1), 1, "one download for four containers");
    for vmid in 9106..=9109 {
        assert_eq!(sb.installer_runs(vmid), 1, "CT {vmid}");
        assert_eq!(sb.state(vmid), "up-to-date");
    }
}

/// Scenario 8: failures leave the container working and unmarked, and the
/// next start retries.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_failures_then_retry() {
    let mut sb = Sandbox::new("fail");
    sb.up(9110, true, "nvidia");

    // A runfile pinned to another version: refused before anything runs inside.
    sb.runfile(V2, "ok");
    let pinned = sb.server.url(&format!("NVIDIA-Linux-x86_64-{V2}.run"));
    sb.set("runfile_url", json!(pinned));
    let out = sb.hook(9110, "post-start");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(V1) && stderr(&out).contains(V2),
        "{}",
        text(&out)
    );
    assert_eq!(sb.attach_calls(), 0);
    sb.set(
        "runfile_url",
        json!(sb.server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );

    // A digest mismatch: refused, nothing cached, nothing run inside.
    let good = sb.config["runfile_sha256"][V1].clone();
    sb.config["runfile_sha256"][V1] = json!("0".repeat(64));
    sb.write_config();
    let out = sb.hook(9110, "post-start");
    expect_exit(&out, 1, "sha256 mismatch");
    assert!(!sb
        .dir()
        .join(format!("cache/NVIDIA-Linux-x86_64-{V1}.run"))
        .exists());
    assert_eq!(sb.attach_calls(), 0);
    sb.config["runfile_sha256"][V1] = good;
    sb.write_config();

    // An installer that exits 1.
    sb.runfile(V1, "fail");
    let out = sb.hook(9110, "post-start");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("stand-in failure"),
        "installer log tail in the error: {}",
        text(&out)
    );
    assert_eq!(sb.state(9110), "failed");
    assert!(
        sb.inside(9110, &["true"]).status.success(),
        "the container still works"
    );

    // The next start retries and succeeds (the cache holds the failing
    // runfile's verified digest; the new build has a new one).
    sb.runfile(V1, "ok");
    let out = sb.hook(9110, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.state(9110), "up-to-date");
}

/// Scenario 8, last case: the container stops in the middle of the install.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_container_stopped_mid_install() {
    let mut sb = Sandbox::new("stop");
    sb.up(9111, true, "nvidia");
    sb.runfile(V1, "slow");
    let sbr = &sb;
    let out = std::thread::scope(|s| {
        let hook = s.spawn(move || sbr.hook(9111, "post-start"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(sbr.dir().join("attach.log"))
            .unwrap()
            .contains("--no-kernel-module")
        {
            assert!(Instant::now() < deadline, "installer never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(Command::new("lxc-stop")
            .args(["-n", "9111", "-k"])
            .status()
            .unwrap()
            .success());
        hook.join().unwrap()
    });
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(sb.state(9111), "stopped");
    assert!(Command::new("lxc-start")
        .args(["-n", "9111", "-d"])
        .status()
        .unwrap()
        .success());
    sb.runfile(V1, "ok");
    let out = sb.hook(9111, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.state(9111), "up-to-date");
}

/// Scenario 9: no device passthrough: installed once, verify names the
/// missing node, the next start does not reinstall.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_missing_passthrough() {
    let mut sb = Sandbox::new("nodev");
    sb.up(9112, false, "nvidia");
    let out = sb.hook(9112, "post-start");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let verify = sb.run(&["verify", "9112"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stderr(&verify).contains("/dev/nvidia0"),
        "{}",
        text(&verify)
    );
    assert!(
        stderr(&verify).contains("couldn't communicate with the NVIDIA driver"),
        "{}",
        text(&verify)
    );
    let again = sb.hook(9112, "post-start");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(sb.installer_runs(9112), 1);
}

/// CUDA configured: toolkit runfile after the driver, nvcc verified.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_cuda_toolkit() {
    let mut sb = Sandbox::new("cuda");
    sb.up(9113, true, "nvidia");
    let dir = sb.dir().join("runfiles");
    sh(&["cuda-runfile", &dir.display().to_string()]);
    let name = "cuda_12.4.1_550.54.15_linux.run";
    sb.set(
        "cuda",
        json!({"runfile_url": sb.server.url(name), "sha256": support::sha256_hex(&dir.join(name))}),
    );
    let out = sb.hook(9113, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(sb
        .inside_ok(9113, &["/usr/local/cuda/bin/nvcc", "--version"])
        .contains("release 12.4"));
    let verify = sb.run(&["verify", "9113"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("nvcc runs"));
}

/// A container whose previous installation is junk (a looping
/// /var/lib/nvidia, a stray NVML library) ends up with a clean install; a
/// full /var/tmp is detected before the copy and leaves nothing behind.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_junk_remnants_and_full_tmp() {
    let mut sb = Sandbox::new("junk");
    sb.up(9114, true, "nvidia");
    sb.inside_ok(
        9114,
        &["sh", "-c", "ln -s /var/lib/nvidia /var/lib/nvidia && cd /usr/lib/x86_64-linux-gnu && echo junk > libnvidia-ml.so.999.99.99 && ln -s libnvidia-ml.so.999.99.99 libnvidia-ml.so.1"],
    );
    assert_eq!(sb.state(9114), "mismatch");
    let out = sb.hook(9114, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(sb
        .inside(
            9114,
            &[
                "test",
                "-d",
                "/var/lib/nvidia",
                "-a",
                "!",
                "-L",
                "/var/lib/nvidia"
            ]
        )
        .status
        .success());
    assert!(sb.run(&["verify", "9114"]).status.success());

    sb.inside_ok(
        9114,
        &[
            "mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", "/var/tmp",
        ],
    );
    let full = sb.run(&["install", "--force", "9114"]);
    expect_exit(&full, 1, "not enough space in the container's /var/tmp");
    assert_eq!(
        sb.inside_ok(9114, &["find", "/var/tmp", "-mindepth", "1"])
            .trim(),
        ""
    );
    assert!(
        sb.run(&["verify", "9114"]).status.success(),
        "the working install is untouched"
    );
}

/// `enable --now` and `doctor` on a real container, with real character
/// device nodes standing for the host's (mknod: the sandbox's GPU stand-ins
/// are files, which doctor rightly does not count as devices).
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_enable_now_and_doctor() {
    let mut sb = Sandbox::new("doctor");
    sb.up_with(9115, true, "web", &["nouvm"]);
    let w = sb.dir().to_path_buf();
    std::fs::create_dir_all(w.join("devnodes")).unwrap();
    // nvidia-uvm as a host with a restrictive udev rule would have it.
    for (name, major, minor, mode) in [
        ("nvidia0", 195, 0, "0666"),
        ("nvidiactl", 195, 255, "0666"),
        ("nvidia-uvm", 511, 0, "0660"),
    ] {
        let node = w.join("devnodes").join(name);
        let made = Command::new("mknod")
            .args(["-m", mode])
            .arg(&node)
            .args(["c", &major.to_string(), &minor.to_string()])
            .status()
            .unwrap();
        assert!(made.success());
    }

    let before = sb.run(&["doctor", "9115"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    let shown = String::from_utf8_lossy(&before.stdout).into_owned();
    for expected in [
        "OK    host: kernel module: nvidia 550.54.14 loaded",
        "OK    host: nvidia-uvm:",
        "WARN  CT 9115: requested: NVIDIA is not requested",
        "fix: pct set 9115 --tags 'web;nvidia'",
        "FAIL  CT 9115: passthrough: not passed to the container: nvidia-uvm",
        "FAIL  CT 9115: cgroup rules: no rule allows nvidia0, nvidiactl",
        "FAIL  CT 9115: hook: no hookscript registered",
        "OK    CT 9115: running",
        "FAIL  CT 9115: driver: no NVIDIA user-space driver",
        "WARN  CT 9115: node inside: /dev/nvidia0 present but not a character device",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }

    // Installed, but CUDA needs the uvm node the container was not given.
    let enable = sb.run(&["enable", "--now", "9115"]);
    expect_exit(&enable, 1, "/dev/nvidia-uvm missing in the container");
    assert!(
        String::from_utf8_lossy(&enable.stdout).contains(
            "ran: pct set 9115 --hookscript local:snippets/pve-nvidia-hook --tags web;nvidia"
        ),
        "{}",
        text(&enable)
    );
    let conf = w.join("pve/lxc/9115.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text_conf.contains("tags: nvidia;web"),
        "Proxmox sorts tags: {text_conf}"
    );
    text_conf.push_str(
        "dev0: /dev/nvidia-uvm\nlxc.cgroup2.devices.allow: c 195:* rwm\nunprivileged: 1\n",
    );
    std::fs::write(&conf, text_conf.clone()).unwrap();
    let unprivileged = sb.run(&["doctor", "9115"]);
    let shown = String::from_utf8_lossy(&unprivileged.stdout).into_owned();
    assert!(
        shown.contains("WARN  CT 9115: device access: container root (a mapped uid) can open the passed nodes, services running as another user (ollama, plex, jellyfin) cannot open nvidia-uvm"),
        "{shown}"
    );
    std::fs::write(
        &conf,
        text_conf.replace(
            "dev0: /dev/nvidia-uvm\n",
            "dev0: /dev/nvidia-uvm,mode=0666\n",
        ),
    )
    .unwrap();

    let after = sb.run(&["doctor", "--json", "9115"]);
    let checks: Value = serde_json::from_slice(&after.stdout).unwrap();
    // The config is fixed; the node reaches the container at its next
    // start, and doctor says exactly that.
    let fails: Vec<&Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["level"] == "fail")
        .collect();
    assert_eq!(fails.len(), 1, "{fails:#?}");
    assert_eq!(fails[0]["detail"], "/dev/nvidia-uvm missing inside");
    assert!(fails[0]["fix"]
        .as_str()
        .unwrap()
        .contains("pct reboot 9115"));
    assert_eq!(after.status.code(), Some(1), "{}", text(&after));
    let hook = sb.hook(9115, "post-start");
    assert!(
        String::from_utf8_lossy(&hook.stderr).contains("up to date"),
        "{}",
        text(&hook)
    );
}

/// No space in the cache: the download fails cleanly, nothing half-written
/// stays in the cache, nothing ran in the container.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_full_cache() {
    let mut sb = Sandbox::new("fullcache");
    sb.up(9116, true, "nvidia");
    let cache = sb.dir().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12k,mode=0700", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(mounted.success());
    let out = sb.hook(9116, "post-start");
    let left = crate::fake_host::cached_files(&cache);
    let _ = Command::new("umount").arg(&cache).status();
    expect_exit(&out, 1, "refused before writing anything");
    assert_eq!(sb.attach_calls(), 0);
    assert!(left.is_empty(), "{left:?}");
}
