//! The binary against a fake host: `paths` point at temporary folders, a
//! fake `lxc-attach` on PATH emulates the container over a directory, and a
//! shell stand-in plays the NVIDIA runfile.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

use crate::support::{self, expect_exit, text, write, FileServer, TempDir};

pub const V1: &str = "550.54.14";
const V2: &str = "550.90.07";

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
        for tool in ["lxc-attach", "lxc-info", "pct", "pvesh"] {
            let target = d.join("bin").join(tool);
            write(
                &target,
                std::fs::read(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/fakes")
                        .join(tool),
                )
                .unwrap(),
            );
            set_mode(&target, 0o755);
        }
        write(&d.join("calls.log"), "");
        // Where this host's storage paths are (for the pct and pvesh stand-ins).
        write(
            &d.join("storage_root"),
            d.join("root").display().to_string(),
        );
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
                },
            }),
            dir,
            inits: std::sync::Mutex::new(Vec::new()),
        };
        host.set_host_version(V1);
        host.runfile(V1, false);
        host.write_config();
        host
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
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
                .replace("@STUBS@", &stub_libraries().display().to_string()),
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

#[test]
fn fresh_install_then_up_to_date_without_any_container_command() {
    let host = FakeHost::new();
    host.container(101, TAGGED);
    let out = host.run(&["101", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    for stage in ["runfile", "cleanup", "dependencies", "driver", "verify"] {
        assert!(
            log.contains(&format!("stage {stage}: done in")),
            "{stage}: {log}"
        );
    }
    assert!(log.contains("CT 101:"), "lines name the container: {log}");
    let ct = host.ct(101);
    assert_eq!(
        std::fs::read_to_string(ct.join("usr/bin/nvidia-smi"))
            .unwrap()
            .trim(),
        V1
    );
    assert!(ct
        .join(format!("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{V1}"))
        .is_file());
    assert_eq!(
        std::fs::read_dir(ct.join("var/tmp")).unwrap().count(),
        0,
        "runfile and its folder removed"
    );
    assert_eq!(host.installer_runs(101), 1);
    let calls = host.calls();
    assert!(
        calls.iter().any(|c| c.starts_with(
            "sh -c umask 077 && cat > \"$1\" pve-nvidia-hook /var/tmp/pve-nvidia-hook."
        )),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.contains("--no-kernel-module")
            && c.contains("--tmpdir /var/tmp/pve-nvidia-hook.")),
        "{calls:?}"
    );
    assert!(
        calls.contains(
            &"apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends kmod"
                .to_string()
        ),
        "{calls:?}"
    );

    let status = host.status_json(101);
    assert_eq!(status["state"], "up-to-date");
    assert_eq!(status["container_version"], V1);
    assert_eq!(status["host_version"], V1);
    assert_eq!(status["requested"], true);
    assert_eq!(status["reason"], "tag");
    assert_eq!(status["vmid"], 101);

    let verify = host.run(&["verify", "101"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    let before = host.calls().len();
    let again = host.run(&["101", "post-start"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("NVIDIA driver {V1} up to date")),
        "{}",
        text(&again)
    );
    assert_eq!(
        host.calls().len(),
        before,
        "up to date: no container command at all"
    );
    assert_eq!(host.installer_runs(101), 1);
}

#[test]
fn host_upgrade_reinstalls_the_new_version() {
    let host = FakeHost::new();
    host.container(102, TAGGED);
    assert!(host.run(&["102", "post-start"]).status.success());
    host.set_host_version(V2);
    host.runfile(V2, false);
    assert_eq!(host.status_json(102)["state"], "mismatch");
    let out = host.run(&["102", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("container has {V1}, host has {V2}")),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(host.ct(102).join("usr/bin/nvidia-smi"))
            .unwrap()
            .trim(),
        V2
    );
    assert_eq!(host.status_json(102)["state"], "up-to-date");
}

#[test]
fn prefix_version_is_not_up_to_date() {
    // The plan's `grep -q` took 550.54 for 550.54.14.
    let host = FakeHost::new();
    let ct = host.container(103, TAGGED);
    let lib = "usr/lib/x86_64-linux-gnu";
    write(
        &ct.join("var/lib/nvidia/log"),
        format!("1.0-55054 (550.54)\nNVIDIA driver\n1: /usr/bin/nvidia-smi\n0\n1: /{lib}/libnvidia-ml.so.550.54\n0\n1: /{lib}/libcuda.so.550.54\n0\n"),
    );
    write(&ct.join(format!("{lib}/libnvidia-ml.so.550.54")), "");
    write(&ct.join(format!("{lib}/libcuda.so.550.54")), "");
    write(&ct.join("usr/bin/nvidia-smi"), "550.54\n");
    assert_eq!(host.status_json(103)["state"], "mismatch");
    assert_eq!(host.status_json(103)["container_version"], "550.54");
    let out = host.run(&["103", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.installer_runs(103), 1);
}

#[test]
fn runfile_of_another_version_is_refused_before_anything_runs() {
    let mut host = FakeHost::new();
    host.container(104, TAGGED);
    let other = host.runfile(V2, false);
    host.set("runfile_url", json!(other));
    let out = host.run(&["install", "104"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(V1) && err.contains(V2) && err.contains("refusing"),
        "{err}"
    );
    assert!(
        host.calls().is_empty(),
        "no container command: {:?}",
        host.calls()
    );
    let status = host.status_json(104);
    assert_eq!(status["state"], "failed");
}

#[test]
fn bad_digest_is_refused_and_never_cached() {
    let mut host = FakeHost::new();
    host.container(105, TAGGED);
    let files = host.path().join("runfiles");
    let server = FileServer::start(&files);
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    host.set("runfile_sha256", json!("0".repeat(64)));
    let out = host.run(&["install", "105"]);
    expect_exit(&out, 1, "sha256 mismatch");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
    let cached = cached_files(&host.path().join("cache"));
    assert!(cached.is_empty(), "{cached:?}");
}

#[test]
fn http_without_configured_digest_is_refused() {
    let mut host = FakeHost::new();
    host.container(106, TAGGED);
    let server = FileServer::start(&host.path().join("runfiles"));
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    let out = host.run(&["install", "106"]);
    expect_exit(&out, 1, "runfile_sha256");
    assert_eq!(server.count(&format!("NVIDIA-Linux-x86_64-{V1}.run")), 0);
}

#[test]
fn download_is_verified_cached_and_shared() {
    let mut host = FakeHost::new();
    host.container(107, TAGGED);
    host.container(108, TAGGED);
    let runfile = host
        .path()
        .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run"));
    let server = FileServer::start(&host.path().join("runfiles"));
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    host.set(
        "runfile_sha256",
        json!({ V1: support::sha256_hex(&runfile) }),
    );
    for vmid in ["107", "108"] {
        let out = host.run(&["107", "post-start"].map(|a| if a == "107" { vmid } else { a }));
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        server.count(&format!("NVIDIA-Linux-x86_64-{V1}.run")),
        1,
        "one download per host"
    );
    let digest = support::sha256_hex(&runfile);
    assert!(host
        .path()
        .join(format!(
            "cache/sha256/{digest}/NVIDIA-Linux-x86_64-{V1}.run"
        ))
        .is_file());
    assert_eq!(host.installer_runs(107), 1);
    assert_eq!(host.installer_runs(108), 1);
}

#[test]
fn distribution_packages_are_purged_and_their_marker_removed() {
    let host = FakeHost::new();
    let ct = host.container(109, TAGGED);
    write(
        &ct.join("var/lib/dpkg/status"),
        "Package: bash\nStatus: install ok installed\n\n\
         Package: nvidia-driver-libs\nStatus: install ok installed\n\n\
         Package: libcuda1\nStatus: deinstall ok config-files\n\n\
         Package: nvidia-container-toolkit\nStatus: install ok installed\n\n\
         Package: nvidia-old\nStatus: purge ok not-installed\n\n",
    );
    write(&ct.join("usr/lib/nvidia/alternate-install-present"), "");
    let out = host.run(&["109", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    let calls = host.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.ends_with("-s purge nvidia-driver-libs libcuda1")),
        "apt's plan is asked first: {calls:?}"
    );
    let purge = calls
        .iter()
        .find(|c| c.contains(" purge -y "))
        .expect("a purge");
    assert!(
        purge.ends_with("purge -y --allow-change-held-packages nvidia-driver-libs libcuda1"),
        "{purge}"
    );
    assert!(!ct.join("usr/lib/nvidia/alternate-install-present").exists());
    assert_eq!(host.installer_runs(109), 1);
}

#[test]
fn clean_container_purges_nothing() {
    let host = FakeHost::new();
    host.container(110, TAGGED);
    let out = host.run(&["110", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no NVIDIA driver packages to purge"));
    assert!(!host.calls().iter().any(|c| c.contains(" purge ")));
}

#[test]
fn failing_installer_is_reported_with_its_log_and_retried_next_start() {
    let host = FakeHost::new();
    host.container(111, TAGGED);
    host.runfile(V1, true);
    let out = host.run(&["111", "post-start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit status 1") && err.contains("Unable to load the kernel module"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(host.ct(111).join("var/tmp"))
            .unwrap()
            .count(),
        0,
        "runfile removed after failure"
    );
    assert_eq!(host.status_json(111)["state"], "failed");
    host.runfile(V1, false);
    let retry = host.run(&["111", "post-start"]);
    assert!(retry.status.success(), "{}", text(&retry));
    assert_eq!(host.status_json(111)["state"], "up-to-date");
}

#[test]
fn missing_device_node_fails_verify_but_does_not_reinstall() {
    let host = FakeHost::new();
    let ct = host.container(112, TAGGED);
    std::fs::remove_file(ct.join("dev/nvidia0")).unwrap();
    let out = host.run(&["112", "post-start"]);
    expect_exit(
        &out,
        1,
        "/dev/nvidia0 (or any /dev/nvidiaN) missing in the container",
    );
    let verify = host.run(&["verify", "112"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("GPU not passed through"),
        "{}",
        text(&verify)
    );
    let again = host.run(&["112", "post-start"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        host.installer_runs(112),
        1,
        "the driver is right; passthrough is the problem"
    );
}

#[test]
fn not_requested_runs_nothing() {
    let host = FakeHost::new();
    let ct = host.container(113, "hostname: web\nostype: debian\n");
    let out = host.run(&["113", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert!(host.calls().is_empty());
    assert!(!ct.join("usr/bin/nvidia-smi").exists());
    assert_eq!(host.status_json(113)["state"], "not-requested");
}

#[test]
fn requested_by_config_or_passthrough() {
    let mut host = FakeHost::new();
    host.container(114, "hostname: a\n");
    host.container(115, "hostname: b\ndev0: /dev/nvidia0,gid=44\n");
    host.container(116, "tags: nvidia\n");
    host.set(
        "containers",
        json!({"114": {"nvidia": true}, "116": {"nvidia": false}}),
    );
    assert_eq!(host.status_json(114)["reason"], "config");
    assert_eq!(host.status_json(115)["reason"], "passthrough");
    assert_eq!(host.status_json(116)["requested"], false);
}

#[test]
fn other_phases_and_unknown_phase_do_nothing() {
    let host = FakeHost::new();
    host.container(117, TAGGED);
    for phase in ["pre-start", "pre-stop", "post-stop"] {
        let out = host.run(&["117", phase]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = host.run(&["117", "mid-start"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown hook phase 'mid-start'"),
        "{}",
        text(&out)
    );
    assert!(host.calls().is_empty());
}

#[test]
fn bad_vmids_are_usage_errors_that_touch_nothing() {
    let host = FakeHost::new();
    for vmid in ["abc", "99", "1000000000", "../101", "", "0101", "１０１"] {
        let out = host.run(&[vmid, "post-start"]);
        assert_eq!(out.status.code(), Some(2), "{vmid}: {}", text(&out));
    }
    assert!(!host.path().join("lock").exists() && !host.path().join("log").exists());
}

#[test]
fn configuration_errors_exit_2_naming_file_and_key() {
    let host = FakeHost::new();
    host.container(118, TAGGED);
    let cases = [
        (
            "{\"background\": false, \"bogus\": 1}",
            "unknown field `bogus`",
        ),
        ("{\"cleanup\": \"yes\"}", "invalid type"),
        ("", "empty"),
        ("{", "EOF"),
        ("{\"runfile_sha256\": \"xyz\"}", "runfile_sha256"),
    ];
    for (content, expected) in cases {
        write(&host.config_path(), content);
        let out = host.run(&["118", "post-start"]);
        assert_eq!(out.status.code(), Some(2), "{content}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected) && err.contains(&host.config_path().display().to_string()),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let missing = support::run(&["status"], None, &host.path().join("nope.json"));
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
}

#[test]
fn a_vm_is_warned_about_and_left_alone() {
    let host = FakeHost::new();
    write(
        &host.path().join("pve/qemu-server/120.conf"),
        "tags: nvidia\n",
    );
    let out = host.run(&["120", "post-start"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("virtual machine"),
        "{}",
        text(&out)
    );
    assert_eq!(host.run(&["install", "120"]).status.code(), Some(2));
}

#[test]
fn no_host_driver_is_a_warning_in_hook_mode_and_an_error_by_hand() {
    let host = FakeHost::new();
    host.container(121, TAGGED);
    std::fs::remove_file(host.path().join("sys/module/nvidia/version")).unwrap();
    // The host's own nvidia-smi would be the last resort: make sure there is none.
    let out = host.run(&["121", "post-start"]);
    expect_exit(&out, 0, "no NVIDIA kernel module");
    assert_eq!(host.run(&["install", "121"]).status.code(), Some(1));
}

#[test]
fn host_version_from_proc_open_module() {
    let host = FakeHost::new();
    host.container(122, TAGGED);
    std::fs::remove_file(host.path().join("sys/module/nvidia/version")).unwrap();
    write(
        &host.path().join("proc/driver/nvidia/version"),
        format!("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {V1}  Release Build  (dvs-builder@U16)  Mon Dec  1 00:00:00 UTC 2025\n"),
    );
    assert_eq!(host.status_json(122)["host_version"], V1);
}

#[test]
fn background_mode_returns_at_once_and_installs_detached() {
    let mut host = FakeHost::new();
    host.container(123, TAGGED);
    host.set("background", json!(true));
    host.slow_runfile(V1, 2);
    let out = host.run(&["123", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // `output()` returned: stdout and stderr were closed by everything the
    // hook started, and the (slow) install had not finished.
    assert_ne!(
        host.status_json(123)["state"],
        "up-to-date",
        "the hook waited for the install"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("install started in the background"),
        "{}",
        text(&out)
    );
    let mut seen_installing = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = host.status_json(123)["state"].as_str().unwrap().to_string();
        seen_installing |= state == "installing";
        if state == "up-to-date" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {state}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen_installing, "status showed installing while it ran");
    let log = std::fs::read_to_string(host.path().join("log/123.log")).unwrap();
    assert!(log.contains("installed and verified"), "{log}");
}

#[test]
fn writable_config_is_refused_in_every_command_and_phase() {
    let host = FakeHost::new();
    host.container(124, TAGGED);
    set_mode(&host.config_path(), 0o666);
    for args in [
        &["install", "124"][..],
        &["124", "post-start"],
        &["status"],
        &["verify", "124"],
    ] {
        let out = host.run(args);
        expect_exit(
            &out,
            2,
            "writable by group or others (mode 666); fix: chmod go-w",
        );
    }
    // pre-start never aborts a start over this tool's own configuration.
    expect_exit(&host.run(&["124", "pre-start"]), 0, "chmod go-w");
    assert!(host.calls().is_empty());
}

#[test]
fn help_and_version() {
    let out = support::run(&["--version"], None, Path::new("/nonexistent"));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pve-nvidia-hook "));
    let out = support::run(&[], None, Path::new("/nonexistent"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_container_without_apt_is_named_by_its_ostype() {
    let host = FakeHost::new();
    let ct = host.container(125, "ostype: alpine\ntags: nvidia\n");
    std::fs::remove_file(ct.join("usr/bin/apt-get")).unwrap();
    std::fs::remove_file(ct.join("var/lib/dpkg/status")).unwrap();
    let out = host.run(&["install", "125"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no apt-get (ostype: alpine)"),
        "{}",
        text(&out)
    );
    assert_eq!(host.installer_runs(125), 0);
}

#[test]
fn where_systemd_runs_the_install_gets_its_own_transient_unit() {
    let mut host = FakeHost::new();
    host.container(126, TAGGED);
    host.set("background", json!(true));
    let d = host.path().to_path_buf();
    write(&d.join("proc/1/comm"), "systemd\n");
    // A systemd-run that records its arguments and starts the command detached
    // with the environment and output the unit properties ask for, as systemd would.
    write(
        &d.join("bin/systemd-run"),
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$@\" > '{}'\nout=$(printf '%s\\n' \"$@\" | sed -n 's/^--property=StandardOutput=append://p')\nwhile [ \"$1\" != -- ]; do case \"$1\" in --setenv=*) export \"${{1#--setenv=}}\" ;; esac; shift; done; shift\nsetsid \"$@\" >> \"$out\" 2>&1 < /dev/null &\n",
            d.join("systemd-run.args").display()
        ),
    );
    set_mode(&d.join("bin/systemd-run"), 0o755);
    let out = host.run(&["126", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let args = std::fs::read_to_string(d.join("systemd-run.args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args[0], "--unit=pve-nvidia-hook-install-126");
    assert!(args.contains(&"--collect"), "{args:?}");
    assert!(
        args.contains(
            &format!(
                "--property=StandardOutput=append:{}",
                d.join("log/126.log").display()
            )
            .as_str()
        ),
        "{args:?}"
    );
    let command = &args[args.iter().position(|a| *a == "--").unwrap() + 1..];
    assert_eq!(command[0], support::BIN);
    assert_eq!(&command[1..4], ["install", "126", "--from-hook"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host.status_json(126)["state"] != "up-to-date" {
        assert!(
            std::time::Instant::now() < deadline,
            "the unit's install never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
