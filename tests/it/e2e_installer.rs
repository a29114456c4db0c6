//! Issue 16 on real containers, with the stand-in installer doing what
//! NVIDIA's does (read from its sources): systemd units and
//! `systemctl daemon-reload` where systemd is installed but not running, a
//! record of an earlier install it cannot read, and a distribution's whole
//! libglvnd.

use serde_json::{json, Value};

use crate::sandbox::{sh, Sandbox, V1};
use crate::support::{expect_exit, text};

const LIB: &str = "usr/lib/x86_64-linux-gnu";

/// A container with systemd installed, not running it (its init is not
/// systemd, as in many LXC templates' first boot, or a sandbox):
/// without `--no-systemd` NVIDIA's installer puts its suspend units in and
/// `systemctl daemon-reload` fails, an ERROR in its log that verification
/// then finds for ever. The hook passes `--no-systemd`; a configuration that
/// asks for `--systemd` gets the installer's own ERROR, named.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_systemd_installed_but_not_running_gets_no_units() {
    let mut sb = Sandbox::new("systemd");
    sb.up(9550, true, "nvidia");
    sb.set("dependencies", json!(["kmod", "systemd"]));
    let out = sb.hook(9550, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(sb
        .inside(9550, &["test", "-x", "/usr/bin/systemctl"])
        .status
        .success());
    let log = sb.inside_ok(9550, &["cat", "/var/log/nvidia-installer.log"]);
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!sb
        .inside(
            9550,
            &[
                "test",
                "-e",
                "/usr/lib/systemd/system/nvidia-suspend.service"
            ]
        )
        .status
        .success());
    assert!(std::fs::read_to_string(sb.dir().join("attach.log"))
        .unwrap()
        .contains("--no-systemd"));
    // Asked for: the units go in, and systemd, not running, fails the reload.
    sb.set("installer_args", json!(["--systemd"]));
    let out = sb.run(&["install", "--force", "9550"]);
    expect_exit(
        &out,
        1,
        "ERROR: Failed to execute `/usr/bin/systemctl daemon-reload`: System has not been booted with systemd as init system (PID 1). Can't operate.",
    );
    assert!(sb
        .inside(
            9550,
            &[
                "test",
                "-f",
                "/usr/lib/systemd/system/nvidia-suspend.service"
            ]
        )
        .status
        .success());
}

/// NVIDIA's installer reads its record of the earlier install before it
/// installs (backup.c): a folder where the record belongs crashes it, and
/// modes other than 0700/0600 are ERRORs it goes on past when it
/// uninstalls the earlier driver itself. Such a record is moved aside
/// first, with its folder of backups, inside the container; the install
/// succeeds and says so.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_record_the_installer_cannot_read_is_moved_aside() {
    let mut sb = Sandbox::new("aside");
    sb.up(9551, true, "nvidia");
    assert!(sb.hook(9551, "post-start").status.success());
    let root = sb.rootfs(9551);
    let nvidia = root.join("var/lib/nvidia");
    let aside = |sb: &Sandbox| -> Vec<String> {
        sb.inside_ok(
            9551,
            &[
                "sh",
                "-c",
                "ls -d /var/lib/nvidia.unreadable-* 2>/dev/null || true",
            ],
        )
        .lines()
        .map(str::to_owned)
        .collect()
    };

    // A folder where the record belongs: mmap fails, the installer crashes.
    std::fs::remove_file(nvidia.join("log")).unwrap();
    std::fs::create_dir(nvidia.join("log")).unwrap();
    let out = sb.run(&["install", "--force", "9551"]);
    expect_exit(
        &out,
        0,
        "NVIDIA's installer could not have read its record (/var/lib/nvidia/log is a folder, not a regular file",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("installed and verified, with 1 warning"),
        "{}",
        text(&out)
    );
    let moved = aside(&sb);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(sb
        .inside(9551, &["test", "-d", &format!("{}/log", moved[0])])
        .status
        .success());
    let rows: Value =
        serde_json::from_slice(&sb.run(&["status", "--json", "9551"]).stdout).unwrap();
    assert_eq!(rows[0]["state"], "up-to-date", "{rows}");
    assert!(
        rows[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("moved aside to /var/lib/nvidia.unreadable-"),
        "{rows}"
    );

    // Modes changed (a restore that did not keep them), and no
    // nvidia-uninstall: the installer uninstalls from the record itself.
    sb.inside_ok(9551, &["chmod", "755", "/var/lib/nvidia"]);
    sb.inside_ok(9551, &["rm", "/usr/bin/nvidia-uninstall"]);
    let out = sb.hook(9551, "post-start");
    expect_exit(
        &out,
        0,
        "/var/lib/nvidia has mode 0755, not the 0700 the installer requires",
    );
    let log = sb.inside_ok(9551, &["cat", "/var/log/nvidia-installer.log"]);
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(aside(&sb).len(), 2);
    assert_eq!(sb.installer_runs(9551), 3);
}

/// Graphics with a distribution's whole libglvnd (Debian's layout: each
/// library behind its soname link): the installer's own check finds it,
/// so the hook does not force `--install-libglvnd` and the container's
/// libraries stay the distribution's.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_whole_libglvnd_is_left_to_the_distribution() {
    let mut sb = Sandbox::new("glvnd");
    sb.up(9552, true, "nvidia");
    let lib = sb.rootfs(9552).join(LIB);
    for (name, real) in [
        ("libGLdispatch.so.0", "libGLdispatch.so.0.0.0"),
        ("libGLX.so.0", "libGLX.so.0.0.0"),
        ("libEGL.so.1", "libEGL.so.1.1.0"),
        ("libGL.so.1", "libGL.so.1.7.0"),
        ("libOpenGL.so.0", "libOpenGL.so.0.0.0"),
    ] {
        sh(&["stub-lib", &lib.join(real).display().to_string(), name]);
        std::os::unix::fs::symlink(real, lib.join(name)).unwrap();
    }
    sb.set("graphics", json!(true));
    let out = sb.hook(9552, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the container's libglvnd is whole"),
        "{}",
        text(&out)
    );
    let attach = std::fs::read_to_string(sb.dir().join("attach.log")).unwrap();
    assert!(!attach.contains("--install-libglvnd"), "{attach}");
    let glx = sb.inside_ok(9552, &["readlink", &format!("/{LIB}/libGLX.so.0")]);
    assert_eq!(
        glx.trim(),
        "libGLX.so.0.0.0",
        "the distribution's, untouched"
    );
    assert!(sb
        .inside(
            9552,
            &["test", "-f", &format!("/{LIB}/libGLX_nvidia.so.{V1}")]
        )
        .status
        .success());
    let log = sb.inside_ok(9552, &["cat", "/var/log/nvidia-installer.log"]);
    assert!(
        log.contains("Will not install libglvnd libraries."),
        "{log}"
    );
    let verify = sb.run(&["verify", "9552"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
}
