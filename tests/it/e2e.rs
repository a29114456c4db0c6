//! Real LXC containers through the plan's scenarios: not requested, fresh
//! install, up to date, host upgrade, Debian's packages, background mode,
//! concurrency, failures, a container stopped mid-install, no passthrough.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sandbox::{sh, stderr, Sandbox, V1, V2};
use crate::support::{expect_exit, text};
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
