//! The built package (`make deb`) installed into a clean Debian 12 container
//! of the sandbox, used, removed and purged.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::sandbox::Sandbox;
use crate::support::text;

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

#[test]
#[ignore = "needs root, LXC and the built package; `make test` as root runs it"]
fn package_installs_works_and_leaves_nothing_behind() {
    let deb = deb();
    let mut sb = Sandbox::new("package");
    sb.up(9120, false, "");
    let mut push = Command::new("lxc-attach")
        .args([
            "-n",
            "9120",
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

    // Proxmox's pvesm, for the postinst: where local:snippets/<name> is.
    sb.inside_ok(
        9120,
        &[
            "sh",
            "-c",
            "printf '#!/bin/sh\\n[ \"$1 $2\" = \"path local:snippets/pve-nvidia-hook\" ] && echo /var/lib/vz/snippets/pve-nvidia-hook\\n' > /usr/sbin/pvesm && chmod 755 /usr/sbin/pvesm",
        ],
    );
    let install = sb.inside(
        9120,
        &[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "/root/pve-nvidia-hook.deb",
            "man-db",
        ],
    );
    assert!(install.status.success(), "{}", text(&install));

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
    // The boot unit that makes the device nodes before the guests start:
    // shipped and enabled (deb-systemd-helper; no systemd runs here to
    // start it). Run by hand on this node without NVIDIA's module: one
    // line, nothing touched.
    let unit = sb
        .inside_ok(
            9120,
            &[
                "sh",
                "-c",
                "readlink -f /etc/systemd/system/multi-user.target.wants/pve-nvidia-hook-devices.service",
            ],
        )
        .trim()
        .to_string();
    assert!(
        unit.ends_with("/lib/systemd/system/pve-nvidia-hook-devices.service"),
        "enabled: {unit}"
    );
    let shipped = sb.inside_ok(9120, &["cat", &unit]);
    for line in [
        "Before=pve-guests.service pve-ha-lrm.service lxc.service",
        "After=systemd-modules-load.service systemd-udev-trigger.service",
        "ExecStart=/usr/bin/pve-nvidia-hook devices",
        "WantedBy=multi-user.target",
    ] {
        assert!(shipped.contains(line), "{line} in {shipped}");
    }
    let devices = sb.inside(9120, &["pve-nvidia-hook", "devices"]);
    assert_eq!(devices.status.code(), Some(0), "{}", text(&devices));
    assert!(
        String::from_utf8_lossy(&devices.stderr).contains("no NVIDIA kernel module is loaded"),
        "{}",
        text(&devices)
    );
    // The notification templates, where proxmox-notify looks them up.
    for (name, repo) in [
        (
            "pve-nvidia-hook-subject.txt.hbs",
            include_str!("../../templates/pve-nvidia-hook-subject.txt.hbs"),
        ),
        (
            "pve-nvidia-hook-body.txt.hbs",
            include_str!("../../templates/pve-nvidia-hook-body.txt.hbs"),
        ),
    ] {
        assert_eq!(
            sb.inside_ok(
                9120,
                &[
                    "cat",
                    &format!("/usr/share/pve-manager/templates/default/{name}")
                ]
            ),
            repo
        );
    }
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
            "/etc/systemd/system/multi-user.target.wants/pve-nvidia-hook-devices.service",
        ]
        .iter(),
    ) {
        assert!(
            !sb.inside(9120, &["test", "-e", f]).status.success(),
            "{f} left behind after purge"
        );
    }
}
