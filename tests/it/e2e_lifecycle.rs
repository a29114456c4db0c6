//! Issue 18's points about a container's life around an install, on real
//! containers: a stopped container is let go at once, and no tenant holds
//! the install slots that other containers wait for.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::sandbox::Sandbox;
use crate::support::text;

/// Waits until `path` (a log) contains `needle`; its text.
fn wait_for_log(path: &Path, needle: &str, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            started.elapsed() < limit,
            "no '{needle}' in {} within {limit:?}: {log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An install slot held by someone else, as at a boot where other
/// containers install first.
fn hold_slot(lock_dir: &Path, n: u32) -> OwnedFd {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    std::fs::create_dir_all(lock_dir).unwrap();
    crate::sandbox::chmod(lock_dir, 0o700);
    let fd = rustix::fs::open(
        lock_dir.join(format!("install-slot-{n}.lock")),
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .unwrap();
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).unwrap();
    fd
}

/// Issue 18.3: a container whose root is an ext4 volume of its own, and an
/// install of it waiting for a slot. The container's pre-stop ends the
/// install; a stop without any hook (a crash, `lxc-stop`) ends it too, and
/// nothing of ours keeps the volume: it unmounts as soon as the container
/// is down, as Proxmox's post-stop unmounts it before it deactivates it.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_stopped_container_is_let_go() {
    let mut sb = Sandbox::new("letgo");
    sb.set("background", json!(true));
    sb.set("max_concurrent_installs", json!(1));
    sb.up_with(9162, true, "nvidia", &["volume"]);
    let log = sb.dir().join("log/9162.log");
    let _slot = hold_slot(&sb.dir().join("lock"), 0);

    let out = sb.hook(9162, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for_log(&log, "waiting for an install slot", Duration::from_secs(60));
    // Proxmox runs pre-stop before it stops the container.
    let out = sb.hook(9162, "pre-stop");
    assert!(
        text(&out).contains("ending the install in progress"),
        "{}",
        text(&out)
    );
    wait_for_log(
        &log,
        "install abandoned: asked to stop",
        Duration::from_secs(10),
    );
    assert_ne!(sb.state(9162), "installing");

    // A stop that runs no hook at all: the install sees its init exit.
    let out = sb.hook(9162, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let waited = "waiting for an install slot";
    let started = Instant::now();
    while wait_for_log(&log, waited, Duration::from_secs(60))
        .matches(waited)
        .count()
        < 2
    {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("lxc-stop")
        .args(["-n", "9162", "-k"])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = Instant::now();
    wait_for_log(
        &log,
        "install abandoned: the container stopped",
        Duration::from_secs(10),
    );
    loop {
        let out = Command::new(crate::sandbox::script())
            .args(["umount", "9162"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the volume is still held: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 18.5: a tenant whose `timeout` sleeps when it is handed NVIDIA's
/// runfile (so its copy never ends), and a single install slot. The
/// neighbour's install waits for the tenant no longer than the slot's hold
/// (`slot_hold_secs`), while the tenant's copy goes on outside the cap.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_tenant_holds_an_install_slot_for_a_bounded_time() {
    let mut sb = Sandbox::new("fair");
    sb.set("background", json!(true));
    sb.set("max_concurrent_installs", json!(1));
    sb.set("slot_hold_secs", json!(10));
    sb.up(9165, true, "nvidia");
    sb.up(9166, true, "nvidia");
    sb.replace_program(
        9165,
        "/usr/bin/timeout",
        "#!/bin/sh\ncase \"$*\" in *NVIDIA-Linux-*) exec sleep 100000 ;; esac\n\
         exec /usr/bin/timeout.real \"$@\"\n",
    );
    let tenant_log = sb.dir().join("log/9165.log");
    let out = sb.hook(9165, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for_log(&tenant_log, "stage driver: start", Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    let out = sb.hook(9166, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    while sb.state(9166) != "up-to-date" {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the neighbour still waits after {:?}: {}",
            started.elapsed(),
            std::fs::read_to_string(sb.dir().join("log/9166.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(sb.state(9165), "installing", "the tenant's copy goes on");
    let log = std::fs::read_to_string(&tenant_log).unwrap();
    assert!(log.contains("held an install slot for 10s"), "{log}");
}
