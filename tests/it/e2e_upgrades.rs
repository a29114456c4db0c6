//! Issue 17.4 on real containers: `sync` brings a container that was
//! restarted without any hook to the host's driver, the timer's `sync`
//! backs off after a failed install, and the processes that still map the
//! old driver's libraries after an install are named, hostile names
//! escaped, and their service restarted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::sandbox::{sh, stderr, Sandbox, V1, V2};
use crate::support::{said, text};

const V3: &str = "550.100.05";

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn smi(sb: &Sandbox, vmid: u32) -> String {
    let out = sb.inside(
        vmid,
        &[
            "nvidia-smi",
            "--query-gpu=driver_version",
            "--format=csv,noheader",
        ],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The background install's state once it has ended.
fn settled(sb: &Sandbox, vmid: u32) -> String {
    let mut state = String::new();
    wait_until(Duration::from_secs(180), "the background install", || {
        state = sb.state(vmid);
        state != "installing" && state != "mismatch" && state != "missing"
    });
    state
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_sync_brings_a_container_restarted_without_a_hook_to_the_host_driver() {
    let mut sb = Sandbox::new("sync");
    sb.up(9601, true, "nvidia");
    let out = sb.hook(9601, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(smi(&sb, 9601), V1);

    // The host's driver reloaded live, and the container rebooted from
    // inside: no hook phase runs for either.
    sb.runfile(V2, "ok");
    sb.host_version(V2);
    sh(&["reboot-inside", "9601"]);
    assert_eq!(sb.state(9601), "mismatch");
    let out = sb.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(
        &out,
        &format!(
            "CT 9601: install started in the background (container has {V1}, host has {V2}); log: "
        ),
    );
    assert_eq!(settled(&sb, 9601), "up-to-date");
    assert_eq!(smi(&sb, 9601), V2);
    assert!(sb.run(&["verify", "9601"]).status.success());
    let log = std::fs::read_to_string(sb.dir().join("log/9601.log")).unwrap();
    assert!(
        log.contains(&format!(
            "result: NVIDIA driver {V2} installed (replacing {V1})"
        )),
        "{log}"
    );
    // Up to date: the timer's run says nothing, and starts nothing.
    let calls = sb.attach_calls();
    let quiet = sb.run(&["sync", "--backoff"]);
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet));
    assert_eq!(sb.attach_calls(), calls);
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_the_timer_backs_off_after_a_failed_install_and_a_sync_by_hand_tries_at_once() {
    let mut sb = Sandbox::new("backoff");
    sb.runfile(V1, "fail");
    sb.up(9603, true, "nvidia");
    let out = sb.run(&["sync", "--backoff"]);
    said(&out, "CT 9603: install started in the background");
    assert_eq!(settled(&sb, 9603), "failed");
    assert_eq!(sb.installer_runs(9603), 1);

    let waits = sb.run(&["sync", "--backoff"]);
    assert_eq!(waits.status.code(), Some(0), "{}", text(&waits));
    said(
        &waits,
        &format!(
            "CT 9603: its install of {V1} failed 1 time(s) in a row: the timer tries again after "
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sb.installer_runs(9603), 1, "the timer left it alone");

    // The mirror is back; by hand, sync tries at once.
    sb.runfile(V1, "ok");
    let now = sb.run(&["sync"]);
    said(&now, "CT 9603: install started in the background");
    assert_eq!(settled(&sb, 9603), "up-to-date");
    assert_eq!(sb.installer_runs(9603), 2);
    assert_eq!(smi(&sb, 9603), V1);
}

/// The cgroup of the container's processes on the host: cgroup v2's, or
/// v1's unified hierarchy.
fn container_cgroup(vmid: u32) -> PathBuf {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|root| Path::new(root).join(format!("lxc/{vmid}/ns")))
        .find(|p| p.is_dir())
        .expect("the container's cgroup")
}

/// The host pid of the container's process `pid` (as the container numbers it).
fn host_pid(vmid: u32, pid: &str) -> u32 {
    let cgroup = container_cgroup(vmid);
    let mut found = None;
    let mut dirs = vec![cgroup];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for host in procs.lines() {
            let status =
                std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|ids| ids.split_whitespace().last());
            if inner == Some(pid) {
                found = host.parse().ok();
            }
        }
    }
    found.unwrap_or_else(|| panic!("no host pid for pid {pid} of CT {vmid}"))
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_processes_still_mapping_the_old_driver_are_named_and_their_service_restarted() {
    let mut sb = Sandbox::new("stale");
    sb.up(9605, true, "nvidia");
    assert!(sb.hook(9605, "post-start").status.success());
    let lib = "/usr/lib/x86_64-linux-gnu";
    // A workload that loaded the driver (libcuda preloaded), as a service
    // of the container's systemd would run it; a systemctl that records
    // what it is asked and restarts it.
    let app = sb.inside_ok(
        9605,
        &[
            "sh",
            "-c",
            &format!(
                "LD_PRELOAD={lib}/libcuda.so.1 setsid sleep 100000 </dev/null >/dev/null 2>&1 & \
                 echo $! | tee /run/gpu-app.pid"
            ),
        ],
    );
    sb.inside_ok(
        9605,
        &[
            "sh",
            "-c",
            "printf '#!/bin/sh\\necho \"$*\" >> /var/log/systemctl.log\\n[ \"$1 $2\" = \"restart gpu-app.service\" ] && kill \"$(cat /run/gpu-app.pid)\"\\nexit 0\\n' > /usr/local/bin/systemctl && chmod 755 /usr/local/bin/systemctl",
        ],
    );
    let app_pid = host_pid(9605, app.trim());
    let service = container_cgroup(9605).join("system.slice/gpu-app.service");
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(service.join("cgroup.procs"), app_pid.to_string()).unwrap();
    // The tenant's: a program and a library named with escape sequences,
    // and a thousand more processes.
    sb.inside_ok(
        9605,
        &[
            "sh",
            "-c",
            &format!(
                "n=$(printf '\\033]0;pwned\\007'); cp /usr/bin/sleep \"/tmp/$n\" && \
                 cp {lib}/libcuda.so.{V1} \"/tmp/libnvidia-$n.so.1.2.3\" && \
                 LD_PRELOAD=\"/tmp/libnvidia-$n.so.1.2.3\" setsid \"/tmp/$n\" 100000 </dev/null >/dev/null 2>&1 & \
                 i=0; while [ $i -lt 1000 ]; do setsid sleep 100000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done"
            ),
        ],
    );

    sb.runfile(V2, "ok");
    sb.host_version(V2);
    let out = sb.run(&["install", "9605"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(
        &out,
        "2 processes still map another NVIDIA driver's libraries (\"Driver/library version mismatch\" until restarted): ",
    );
    said(
        &out,
        &format!("pid {app_pid} sleep (gpu-app.service): libcuda.so.{V1} (deleted)"),
    );
    said(
        &out,
        "\\u{1b}]0;pwned\\u{7}: libnvidia-\\u{1b}]0;pwned\\u{7}.so.1.2.3",
    );
    said(&out, "restart them, or set restart_after_install");
    assert!(!stderr(&out).contains('\u{1b}'), "{}", text(&out));
    assert!(
        !stderr(&out).contains("not every process"),
        "{}",
        text(&out)
    );

    sb.set("restart_after_install", json!("services"));
    sb.runfile(V3, "ok");
    sb.host_version(V3);
    let out = sb.run(&["install", "9605"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(&out, "restarted gpu-app.service in the container");
    said(
        &out,
        "1 process in no system service of the container: not restarted",
    );
    said(
        &out,
        "after the restarts, 1 process still maps another NVIDIA driver's libraries: ",
    );
    assert!(
        !stderr(&out).contains(&format!("after the restarts, 1 process still maps another NVIDIA driver's libraries: pid {app_pid}")),
        "{}",
        text(&out)
    );
    assert_eq!(
        sb.inside_ok(9605, &["cat", "/var/log/systemctl.log"]),
        "restart gpu-app.service\n"
    );
    // Killed by the restart (a zombie at most: the sandbox's init reaps nothing).
    let maps = std::fs::read_to_string(format!("/proc/{app_pid}/maps")).unwrap_or_default();
    assert!(maps.is_empty(), "the workload was restarted: {maps}");
}
