//! Real LXC containers as an operator meets them: the CUDA toolkit, junk
//! left by earlier installs, a full /var/tmp or cache, `enable --now` and
//! `doctor`.

use std::process::Command;

use serde_json::{json, Value};

use crate::sandbox::{device_rule_keys, sh, Sandbox};
use crate::support::{self, expect_exit, mknod, text};
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
        ("nvidia0", 195, 0, 0o666),
        ("nvidiactl", 195, 255, 0o666),
        ("nvidia-uvm", 511, 0, 0o660),
    ] {
        mknod(&w.join("devnodes").join(name), mode, major, minor);
    }

    let before = sb.run(&["doctor", "9115"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    let shown = String::from_utf8_lossy(&before.stdout).into_owned();
    for expected in [
        "OK    host: kernel module: nvidia 550.54.14 loaded (from /sys/module/nvidia/version)",
        "OK    host: nvidia-uvm:",
        "WARN  CT 9115: requested: NVIDIA is not requested",
        "fix: pct set 9115 --tags 'web;nvidia'",
        "FAIL  CT 9115: passthrough: not passed to the container: nvidia-uvm",
        "FAIL  CT 9115: cgroup rules: no rule allows nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write)",
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

    // Installed, but CUDA needs the uvm node the container was not given:
    // a warning, not a failed install.
    let enable = sb.run(&["enable", "--now", "9115"]);
    expect_exit(
        &enable,
        0,
        "installed, but CUDA needs /dev/nvidia-uvm: pass it to the container (pct set 9115 --devN /dev/nvidia-uvm",
    );
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
    // The rules LXC applies on this machine: on a cgroup v1 host a devN's
    // own rule (Proxmox writes it as cgroup2) is ignored too.
    let (rules, _) = device_rule_keys();
    text_conf.push_str(&format!(
        "dev0: /dev/nvidia-uvm\n{rules}.allow: c 195:* rwm\n{rules}.allow: c 511:* rwm\nunprivileged: 1\n"
    ));
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
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "cuda"
                && c["level"] == "warn"
                && c["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("installed, but CUDA needs /dev/nvidia-uvm")),
        "{checks:#}"
    );
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
