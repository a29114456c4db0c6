//! The hook's decisions and the command line against a fake host: what is
//! requested, phases, usage and configuration errors, VMs, the host's
//! version, background mode.

use std::path::Path;

use serde_json::json;

use crate::fake_host::{set_mode, FakeHost, TAGGED, V1};
use crate::support::{self, expect_exit, text, write};

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

/// Issue 18.3: the container's pre-stop and post-stop end an install in
/// progress for it (the holder of its install lock, as the kernel's table of
/// locks names it, gets SIGTERM), and say so.
#[test]
fn a_stop_phase_ends_the_install_in_progress() {
    use std::os::unix::process::ExitStatusExt;
    let host = FakeHost::new();
    host.container(118, TAGGED);
    let proc = host.path().join("proc");
    std::fs::create_dir_all(&proc).unwrap();
    std::os::unix::fs::symlink("/proc/locks", proc.join("locks")).unwrap();
    let lock = host.path().join("lock");
    std::fs::create_dir_all(&lock).unwrap();
    set_mode(&lock, 0o700);
    let file = lock.join("118.lock");
    for phase in ["pre-stop", "post-stop"] {
        let mut holder = support::flock_holder(&file);
        let out = host.run(&["118", phase]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "ending the install in progress (pid {})",
                holder.id()
            )),
            "{phase}: {}",
            text(&out)
        );
        let status = holder.wait().unwrap();
        assert_eq!(status.signal(), Some(15), "{phase}: {status:?}");
    }
    // Nothing in progress: nothing said, nothing signalled.
    let out = host.run(&["118", "post-stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("ending"), "{}", text(&out));
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
    // The host's own nvidia-smi would be the last resort: here it finds no
    // driver, as on a host without one (and a GPU machine's real one is
    // not asked).
    let smi = host.path().join("bin/nvidia-smi");
    write(
        &smi,
        "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n",
    );
    set_mode(&smi, 0o755);
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

/// Issue 18.6: what the install printed is root's alone, in a folder only
/// root may enter, also where an older package left the folder 0755.
#[test]
fn the_background_install_log_is_root_only() {
    let mut host = FakeHost::new();
    host.container(127, TAGGED);
    host.set("background", json!(true));
    let log_dir = host.path().join("log");
    std::fs::create_dir_all(&log_dir).unwrap();
    set_mode(&log_dir, 0o755);
    let out = host.run(&["127", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_up_to_date(&host, 127);
    assert_eq!(mode(&log_dir), 0o700);
    assert_eq!(mode(&log_dir.join("127.log")), 0o600);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn wait_up_to_date(host: &FakeHost, vmid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host.status_json(vmid)["state"] != "up-to-date" {
        assert!(
            std::time::Instant::now() < deadline,
            "the background install never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn where_systemd_runs_the_install_gets_its_own_transient_unit() {
    let mut host = FakeHost::new();
    host.container(126, TAGGED);
    host.set("background", json!(true));
    let d = host.path().to_path_buf();
    write(&d.join("proc/1/comm"), "systemd\n");
    // A systemd-run that records its arguments and starts the command detached
    // with the environment and output the unit properties ask for, as systemd
    // would: it creates the output file with 0666 less the unit's UMask, 0022
    // unless set (systemd's exec-invoke.c, setup_output: acquire_path).
    write(
        &d.join("bin/systemd-run"),
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$@\" > '{}'\nout=$(printf '%s\\n' \"$@\" | sed -n 's/^--property=StandardOutput=append://p')\numask 0022\nwhile [ \"$1\" != -- ]; do case \"$1\" in --setenv=*) export \"${{1#--setenv=}}\" ;; --property=UMask=*) umask \"${{1#--property=UMask=}}\" ;; esac; shift; done; shift\nsetsid \"$@\" >> \"$out\" 2>&1 < /dev/null &\n",
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
    wait_up_to_date(&host, 126);
    assert!(args.contains(&"--property=UMask=0077"), "{args:?}");
    assert_eq!(mode(&d.join("log")), 0o700);
    assert_eq!(mode(&d.join("log/126.log")), 0o600);
}
