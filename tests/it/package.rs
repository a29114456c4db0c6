//! The built package (`make deb`) installed into a clean Debian 12 container
//! of the sandbox, used, removed and purged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::sandbox::{Sandbox, V2};
use crate::support::{text, write};

fn deb() -> PathBuf {
    let deb = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/deb/pve-nvidia-hook_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.is_file(),
        "{} is missing: run `make deb` (make test does, as root)",
        deb.display()
    );
    deb
}

/// The built package pushed into the container and installed with apt,
/// with a stand-in for Proxmox's `pvesm` (where local:snippets/<name> is)
/// for the postinst.
fn install_package(sb: &Sandbox, vmid: u32) {
    let deb = deb();
    let ct = vmid.to_string();
    let mut push = Command::new("lxc-attach")
        .args([
            "-n",
            &ct,
            "--",
            "sh",
            "-c",
            "cat > /root/pve-nvidia-hook.deb",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    push.stdin
        .as_mut()
        .unwrap()
        .write_all(&std::fs::read(&deb).unwrap())
        .unwrap();
    drop(push.stdin.take());
    assert!(push.wait().unwrap().success());
    sb.inside_ok(
        vmid,
        &[
            "sh",
            "-c",
            "printf '#!/bin/sh\\n[ \"$1 $2\" = \"path local:snippets/pve-nvidia-hook\" ] && echo /var/lib/vz/snippets/pve-nvidia-hook\\n' > /usr/sbin/pvesm && chmod 755 /usr/sbin/pvesm",
        ],
    );
    let install = apt_install(sb, vmid, &["/root/pve-nvidia-hook.deb", "man-db"]);
    assert!(install.status.success(), "{}", text(&install));
}

fn apt_install(sb: &Sandbox, vmid: u32, what: &[&str]) -> std::process::Output {
    let mut argv = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    argv.extend_from_slice(what);
    sb.inside(vmid, &argv)
}

#[test]
#[ignore = "needs root, LXC and the built package; `make test` as root runs it"]
fn package_installs_works_and_leaves_nothing_behind() {
    let mut sb = Sandbox::new("package");
    sb.up(9120, false, "");
    install_package(&sb, 9120);

    let version = sb.inside_ok(9120, &["pve-nvidia-hook", "--version"]);
    assert_eq!(
        version.trim(),
        format!("pve-nvidia-hook {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        sb.inside_ok(9120, &["man", "-w", "pve-nvidia-hook"]).trim(),
        "/usr/share/man/man1/pve-nvidia-hook.1.gz"
    );
    assert!(sb
        .inside_ok(
            9120,
            &[
                "cat",
                "/usr/share/bash-completion/completions/pve-nvidia-hook"
            ]
        )
        .contains("verify"));

    // The postinst placed the snippet in this node's local storage, so a
    // container enabled anywhere in the cluster starts on this node too.
    assert_eq!(
        sb.inside_ok(
            9120,
            &["stat", "-c", "%a", "/var/lib/vz/snippets/pve-nvidia-hook"]
        )
        .trim(),
        "755"
    );
    assert_eq!(
        sb.inside_ok(9120, &["cat", "/var/lib/vz/snippets/pve-nvidia-hook"]),
        include_str!("../../hooks/pve-nvidia-hook")
    );
    // The runtime folder is root's alone (not /run/lock, which is everyone's).
    assert!(sb
        .inside_ok(9120, &["cat", "/usr/lib/tmpfiles.d/pve-nvidia-hook.conf"])
        .contains("d /run/pve-nvidia-hook 0700 root root -"));
    // The snippet as a guest references it, against a config that requests nothing.
    sb.inside_ok(
        9120,
        &[
            "sh",
            "-c",
            "mkdir -p /etc/pve/lxc && echo 'hostname: web' > /etc/pve/lxc/100.conf",
        ],
    );
    let hook = sb.inside(
        9120,
        &["/var/lib/vz/snippets/pve-nvidia-hook", "100", "post-start"],
    );
    assert_eq!(hook.status.code(), Some(0), "{}", text(&hook));
    assert!(hook.stderr.is_empty(), "{}", text(&hook));

    let files = sb.inside_ok(
        9120,
        &[
            "sh",
            "-c",
            "dpkg -L pve-nvidia-hook | while read -r f; do [ -d \"$f\" ] || echo \"$f\"; done",
        ],
    );
    let files: Vec<&str> = files.lines().collect();
    assert!(files.contains(&"/usr/bin/pve-nvidia-hook"), "{files:?}");
    sb.inside_ok(9120, &["sh", "-c", "echo runtime > /var/cache/pve-nvidia-hook/x.run && echo log > /var/log/pve-nvidia-hook/100.log"]);

    let remove = sb.inside(9120, &["dpkg", "-r", "pve-nvidia-hook"]);
    assert!(remove.status.success(), "{}", text(&remove));
    let dangling = sb.inside(
        9120,
        &["/var/lib/vz/snippets/pve-nvidia-hook", "100", "post-start"],
    );
    assert_eq!(
        dangling.status.code(),
        Some(0),
        "the guest still starts: {}",
        text(&dangling)
    );
    assert!(
        String::from_utf8_lossy(&dangling.stderr).contains("is not installed"),
        "{}",
        text(&dangling)
    );
    assert!(
        sb.inside_ok(9120, &["cat", "/etc/pve/lxc/100.conf"])
            .contains("hostname: web"),
        "/etc/pve untouched"
    );

    let purge = sb.inside(9120, &["dpkg", "-P", "pve-nvidia-hook"]);
    assert!(purge.status.success(), "{}", text(&purge));
    for f in files.iter().chain(
        [
            "/var/cache/pve-nvidia-hook",
            "/var/log/pve-nvidia-hook",
            "/var/lib/pve-nvidia-hook",
        ]
        .iter(),
    ) {
        assert!(
            !sb.inside(9120, &["test", "-e", f]).status.success(),
            "{f} left behind after purge"
        );
    }
}

/// Issue 17.4: the package enables the sync timer, and its apt hook, after
/// a host upgrade (a new kernel with the new driver built by DKMS), fetches
/// that driver's runfile in the background: apt returns before the
/// download ends, and a later apt run fetches nothing again.
#[test]
#[ignore = "needs root, LXC and the built package; `make test` as root runs it"]
fn package_enables_the_sync_timer_and_its_apt_hook_fetches_in_the_background() {
    let mut sb = Sandbox::new("package-upgrades");
    sb.runfile(V2, "ok");
    sb.up(9610, false, "");
    install_package(&sb, 9610);
    sb.inside_ok(
        9610,
        &[
            "test",
            "-L",
            "/etc/systemd/system/timers.target.wants/pve-nvidia-hook-sync.timer",
        ],
    );
    for unit in ["pve-nvidia-hook-sync.timer", "pve-nvidia-hook-sync.service"] {
        sb.inside_ok(
            9610,
            &["test", "-f", &format!("/lib/systemd/system/{unit}")],
        );
    }
    assert!(sb
        .inside_ok(9610, &["cat", "/etc/apt/apt.conf.d/80pve-nvidia-hook"])
        .contains("DPkg::Post-Invoke"));

    let root = sb.rootfs(9610);
    let module = root.join("lib/modules/6.8.12-5-pve");
    std::fs::create_dir_all(module.join("kernel")).unwrap();
    write(
        &module.join("updates/dkms/nvidia.ko"),
        format!("name=nvidia\nversion={V2}\n"),
    );
    let modinfo = root.join("usr/local/sbin/modinfo");
    std::fs::create_dir_all(modinfo.parent().unwrap()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/modinfo"),
        &modinfo,
    )
    .unwrap();
    let digest = sb.config["runfile_sha256"][V2].clone();
    write(
        &root.join("etc/pve-nvidia-hook/config.json"),
        serde_json::to_vec(&json!({
            "runfile_url": sb.server.url("fault/slow/NVIDIA-Linux-x86_64-{version}.run"),
            "runfile_sha256": { V2: digest },
        }))
        .unwrap(),
    );
    let fetched = root.join("var/lib/pve-nvidia-hook/prefetched.json");

    let apt = apt_install(&sb, 9610, &["--reinstall", "/root/pve-nvidia-hook.deb"]);
    assert!(apt.status.success(), "{}", text(&apt));
    assert!(
        text(&apt).contains(&format!(
            "the next boot loads NVIDIA {V2} (kernel 6.8.12-5-pve, none loaded now): fetching its runfile in the background"
        )),
        "{}",
        text(&apt)
    );
    assert!(!fetched.exists(), "apt waited for the download");
    let started = Instant::now();
    while !fetched.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no fetch: {}",
            std::fs::read_to_string(root.join("var/log/pve-nvidia-hook/prefetch.log"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let slow = format!("fault/slow/NVIDIA-Linux-x86_64-{V2}.run");
    assert_eq!(sb.server.count(&slow), 1);
    let again = apt_install(&sb, 9610, &["--reinstall", "/root/pve-nvidia-hook.deb"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("fetching"), "{}", text(&again));
    assert_eq!(sb.server.count(&slow), 1, "fetched once");
}
