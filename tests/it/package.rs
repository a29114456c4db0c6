//! The built package (`make deb`, on Debian 12) on both releases a Proxmox
//! VE node runs: Debian 12 (Proxmox VE 8) and Debian 13 (Proxmox VE 9), in a
//! clean sandbox container each. Proxmox's packages are not there, so stand-ins
//! named as them meet its Depends (tests/e2e/sandbox.sh proxmox-stand-ins);
//! the package is installed with the README's own command, used, its logs'
//! modes and rotation checked, removed and purged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::sandbox::{self, Sandbox, V2};
use crate::support::{text, write, TempDir};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn deb_name() -> String {
    format!("pve-nvidia-hook_{VERSION}_amd64.deb")
}

fn deb() -> PathBuf {
    let deb = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/deb")
        .join(deb_name());
    assert!(
        deb.is_file(),
        "{} is missing: run `make deb` (make test does, as root)",
        deb.display()
    );
    deb
}

#[test]
#[ignore = "needs root, LXC and the built package; `make test` as root runs it"]
fn package_on_debian_12_proxmox_ve_8_upgrading_the_log_folder() {
    // As 0.2.0's package left it: dpkg keeps an existing folder's mode.
    package_on("bookworm", 9450, Some(0o755));
}

#[test]
#[ignore = "needs root, LXC and the built package; `make test` as root runs it"]
fn package_on_debian_13_proxmox_ve_9() {
    package_on("trixie", 9451, None);
}

/// The package is one for both releases: its changelog names no single one.
#[test]
fn the_changelog_targets_every_release_the_package_is_for() {
    let changelog = include_str!("../../debian/changelog");
    let first = changelog.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("pve-nvidia-hook ({VERSION}) stable;")),
        "{first}"
    );
}

/// The README's install block for a node, as written.
fn readme_node_install() -> String {
    let readme = include_str!("../../README.md");
    let marker = "<!-- the node's install block: tests/it/package.rs runs it as written -->";
    let after = &readme[readme
        .find(marker)
        .expect("the README marks the node's install block")
        + marker.len()..];
    let block = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a sh block follows the marker");
    block[..block.find("```").unwrap()].to_string()
}

/// The highest `GLIBC_x.y` symbol version the binary needs, as (x, y).
fn glibc_needed(binary: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(major_minor)
        .max()
        .expect("the binary links glibc")
}

fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn mode_owner(sb: &Sandbox, vmid: u32, path: &str) -> String {
    sb.inside_ok(vmid, &["stat", "-c", "%a %U:%G", path])
        .trim()
        .to_string()
}

fn packages(sb: &Sandbox, vmid: u32) -> Vec<String> {
    let list = sb.inside_ok(
        vmid,
        &["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
    );
    list.lines().map(String::from).collect()
}

/// A running container with the tool's NVIDIA request, faked on the
/// node as the fake host fakes one (tests/it/fake_host.rs): a real process
/// as its init, described by a /proc and cgroup tree of the config's
/// `paths`, its root a folder with nothing of NVIDIA's. Enough for the hook
/// to decide to install and start the install in the background.
const FAKE_GUEST: &str = r#"set -e
sleep infinity </dev/null >/dev/null 2>&1 &
pid=$!
h=/root/host
mkdir -p $h/sys/module/nvidia $h/sys/fs/cgroup/lxc/101/ns $h/proc/$pid $h/dev \
    $h/guest/var/lib/dpkg /etc/pve/lxc /etc/pve-nvidia-hook
echo 550.54.14 > $h/sys/module/nvidia/version
echo $pid > $h/sys/fs/cgroup/lxc/101/ns/cgroup.procs
printf 'Name:\tinit\nNSpid:\t%s\t1\n' $pid > $h/proc/$pid/status
printf '0::/lxc/101/ns\n' > $h/proc/$pid/cgroup
ln -s $h/guest $h/proc/$pid/root
ln -s /proc/self/mountinfo $h/proc/$pid/mountinfo
printf 'Package: bash\nStatus: install ok installed\n\n' > $h/guest/var/lib/dpkg/status
printf 'ostype: debian\ntags: nvidia\n' > /etc/pve/lxc/101.conf
echo 'hostname: web' > /etc/pve/lxc/100.conf
cat > /etc/pve-nvidia-hook/config.json <<EOF
{"runfile_url": "$h/NVIDIA-Linux-x86_64-{version}.run",
 "paths": {"sys": "$h/sys", "proc": "$h/proc", "dev": "$h/dev"}}
EOF
"#;

/// The node: Proxmox's packages (stand-ins), and Debian's that every node
/// has (pve-manager depends on logrotate; man-db is in its installer's base).
fn proxmox_node(sb: &Sandbox, vmid: u32) {
    let stand_ins = TempDir::new("stand-ins");
    sandbox::sh(&["proxmox-stand-ins", &stand_ins.path().display().to_string()]);
    sb.push_debs(vmid, stand_ins.path());
    let node = apt_get_install(sb, vmid, "/root/debs/*.deb logrotate man-db");
    assert!(node.status.success(), "{}", text(&node));
}

fn apt_get_install(sb: &Sandbox, vmid: u32, what: &str) -> std::process::Output {
    sb.inside(
        vmid,
        &[
            "sh",
            "-c",
            &format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {what}"
            ),
        ],
    )
}

fn package_on(release: &str, vmid: u32, prior_log_dir: Option<u32>) {
    let deb = deb();
    let mut sb = Sandbox::new(&format!("package-{release}"));
    let options: &[&str] = if release == "bookworm" {
        &[]
    } else {
        &["release=trixie"]
    };
    sb.up_with(vmid, false, "", options);
    let root = sb.rootfs(vmid);
    let os = sb.inside_ok(
        vmid,
        &["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"],
    );
    assert_eq!(os.trim(), release);

    proxmox_node(&sb, vmid);
    if let Some(mode) = prior_log_dir {
        sb.inside_ok(
            vmid,
            &[
                "install",
                "-d",
                "-m",
                &format!("{mode:o}"),
                "/var/log/pve-nvidia-hook",
            ],
        );
    }

    // The README's command, as written, adds this one package.
    std::fs::copy(&deb, root.join("root").join(deb_name())).unwrap();
    let before = packages(&sb, vmid);
    let install = sb.inside(
        vmid,
        &[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "sh",
            "-ec",
            &format!(
                "cd /root\n{}",
                readme_node_install().replace("apt install", "apt-get install -y")
            ),
        ],
    );
    assert!(install.status.success(), "{}", text(&install));
    let after = packages(&sb, vmid);
    let added: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    let gone: Vec<&String> = before.iter().filter(|p| !after.contains(p)).collect();
    assert_eq!(
        added,
        [&format!("pve-nvidia-hook {VERSION}")],
        "{}",
        text(&install)
    );
    assert!(gone.is_empty(), "the install removed {gone:?}");

    // Built against Debian 12's glibc, it needs none newer than the release's.
    let binary = root.join("usr/bin/pve-nvidia-hook");
    let needed = glibc_needed(&binary);
    let libc = sb.inside_ok(vmid, &["dpkg-query", "-W", "-f", "${Version}", "libc6"]);
    let have = major_minor(libc.trim()).unwrap();
    assert!(
        needed <= have,
        "needs GLIBC_{needed:?}, {release} has {libc}"
    );

    let version = sb.inside_ok(vmid, &["pve-nvidia-hook", "--version"]);
    assert_eq!(version.trim(), format!("pve-nvidia-hook {VERSION}"));
    assert_eq!(
        sb.inside_ok(vmid, &["man", "-w", "pve-nvidia-hook"]).trim(),
        "/usr/share/man/man1/pve-nvidia-hook.1.gz"
    );
    assert!(sb
        .inside_ok(
            vmid,
            &[
                "cat",
                "/usr/share/bash-completion/completions/pve-nvidia-hook"
            ]
        )
        .contains("verify"));

    // The postinst placed the snippet where pvesm says, so a container
    // enabled anywhere in the cluster starts on this node too.
    assert_eq!(
        mode_owner(&sb, vmid, "/var/lib/vz/snippets/pve-nvidia-hook"),
        "755 root:root"
    );
    assert_eq!(
        sb.inside_ok(vmid, &["cat", "/var/lib/vz/snippets/pve-nvidia-hook"]),
        include_str!("../../hooks/pve-nvidia-hook")
    );
    // The runtime folder is root's alone (not /run/lock, which is everyone's).
    assert!(sb
        .inside_ok(vmid, &["cat", "/usr/lib/tmpfiles.d/pve-nvidia-hook.conf"])
        .contains("d /run/pve-nvidia-hook 0700 root root -"));
    // So are the install logs, however the folder was before.
    assert_eq!(
        mode_owner(&sb, vmid, "/var/log/pve-nvidia-hook"),
        "700 root:root"
    );
    // The boot unit that makes the device nodes before the guests start:
    // shipped and enabled (deb-systemd-helper; no systemd runs here to
    // start it). Run by hand on this node without NVIDIA's module: one
    // line, nothing touched.
    let unit = sb
        .inside_ok(
            vmid,
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
    let shipped = sb.inside_ok(vmid, &["cat", &unit]);
    for line in [
        "Before=pve-guests.service pve-ha-lrm.service lxc.service",
        "After=systemd-modules-load.service systemd-udev-trigger.service",
        "ExecStart=/usr/bin/pve-nvidia-hook devices",
        "WantedBy=multi-user.target",
    ] {
        assert!(shipped.contains(line), "{line} in {shipped}");
    }
    // The sync timer (its service runs when it fires) and the apt hook.
    let timer = sb
        .inside_ok(
            vmid,
            &[
                "sh",
                "-c",
                "readlink -f /etc/systemd/system/timers.target.wants/pve-nvidia-hook-sync.timer",
            ],
        )
        .trim()
        .to_string();
    assert!(
        timer.ends_with("/lib/systemd/system/pve-nvidia-hook-sync.timer"),
        "enabled: {timer}"
    );
    let service = sb.inside_ok(vmid, &["cat", &timer.replace(".timer", ".service")]);
    for line in [
        "After=pve-guests.service",
        "ExecStart=/usr/bin/pve-nvidia-hook sync --backoff",
    ] {
        assert!(service.contains(line), "{line} in {service}");
    }
    assert!(sb
        .inside_ok(vmid, &["cat", "/etc/apt/apt.conf.d/80pve-nvidia-hook"])
        .contains("DPkg::Post-Invoke"));
    let devices = sb.inside(vmid, &["pve-nvidia-hook", "devices"]);
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
                vmid,
                &[
                    "cat",
                    &format!("/usr/share/pve-manager/templates/default/{name}")
                ]
            ),
            repo
        );
    }

    // The snippet as a guest references it, for a container that requests nothing.
    sb.inside_ok(vmid, &["sh", "-c", FAKE_GUEST]);
    let hook = sb.inside(
        vmid,
        &["/var/lib/vz/snippets/pve-nvidia-hook", "100", "post-start"],
    );
    assert_eq!(hook.status.code(), Some(0), "{}", text(&hook));
    assert!(hook.stderr.is_empty(), "{}", text(&hook));
    // doctor reads the host and the requesting container (exit 1: no device
    // nodes, no driver, and the hookscript is not registered).
    let doctor = sb.inside(vmid, &["pve-nvidia-hook", "doctor", "101"]);
    assert_eq!(doctor.status.code(), Some(1), "{}", text(&doctor));
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains("nvidia 550.54.14 loaded"),
        "{}",
        text(&doctor)
    );
    assert!(report.contains("CT 101: running: yes"), "{}", text(&doctor));

    // A start of the requesting container: the install runs in the
    // background (its own session: systemd is not this node's init) and
    // fails at once (the stand-ins have no lxc-attach), into a log that is
    // root's alone.
    let hook = sb.inside(
        vmid,
        &["/var/lib/vz/snippets/pve-nvidia-hook", "101", "post-start"],
    );
    assert_eq!(hook.status.code(), Some(0), "{}", text(&hook));
    assert!(
        String::from_utf8_lossy(&hook.stderr).contains("install started in the background"),
        "{}",
        text(&hook)
    );
    let log = root.join("var/log/pve-nvidia-hook/101.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("error: CT 101")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the background install logged nothing: {:?}",
            std::fs::read_to_string(&log)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        mode_owner(&sb, vmid, "/var/log/pve-nvidia-hook/101.log"),
        "600 root:root"
    );
    assert_eq!(
        mode_owner(&sb, vmid, "/var/log/pve-nvidia-hook"),
        "700 root:root"
    );

    // logrotate takes the rules as they are (a 0700 folder of root's needs
    // no `su`), rotates a log past maxsize before its week is out, and
    // creates the next one root's alone.
    logrotate_by_size(&sb, vmid);

    let files = sb.inside_ok(
        vmid,
        &[
            "sh",
            "-c",
            "dpkg -L pve-nvidia-hook | while read -r f; do [ -d \"$f\" ] || echo \"$f\"; done",
        ],
    );
    let files: Vec<&str> = files.lines().collect();
    assert!(files.contains(&"/usr/bin/pve-nvidia-hook"), "{files:?}");
    sb.inside_ok(
        vmid,
        &[
            "sh",
            "-c",
            "echo runtime > /var/cache/pve-nvidia-hook/x.run",
        ],
    );

    let remove = sb.inside(vmid, &["dpkg", "-r", "pve-nvidia-hook"]);
    assert!(remove.status.success(), "{}", text(&remove));
    let dangling = sb.inside(
        vmid,
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
        sb.inside_ok(vmid, &["cat", "/etc/pve/lxc/100.conf"])
            .contains("hostname: web"),
        "/etc/pve untouched"
    );

    let purge = sb.inside(vmid, &["dpkg", "-P", "pve-nvidia-hook"]);
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
            !sb.inside(vmid, &["test", "-e", f]).status.success(),
            "{f} left behind after purge"
        );
    }
    // Nothing but the package went: the node's own packages are all there.
    assert_eq!(packages(&sb, vmid), before);
}

fn logrotate_by_size(sb: &Sandbox, vmid: u32) {
    let dir = sb.rootfs(vmid).join("var/log/pve-nvidia-hook");
    write(&dir.join("102.log"), vec![b'x'; 11 << 20]);
    sandbox::chmod(&dir.join("102.log"), 0o600);
    // A state file that saw the log rotated an hour ago: weekly alone would
    // leave it for six days more.
    let an_hour_ago = sb.inside_ok(
        vmid,
        &["date", "-d", "1 hour ago", "+%Y-%-m-%-d-%-H:%-M:%-S"],
    );
    write(
        &sb.rootfs(vmid).join("root/logrotate.state"),
        format!(
            "logrotate state -- version 2\n\"/var/log/pve-nvidia-hook/102.log\" {}\n",
            an_hour_ago.trim()
        ),
    );
    let rotate = sb.inside(
        vmid,
        &[
            "logrotate",
            "-v",
            "-s",
            "/root/logrotate.state",
            "/etc/logrotate.d/pve-nvidia-hook",
        ],
    );
    assert!(rotate.status.success(), "{}", text(&rotate));
    assert!(
        !String::from_utf8_lossy(&rotate.stderr).contains("insecure permissions"),
        "{}",
        text(&rotate)
    );
    assert_eq!(
        mode_owner(sb, vmid, "/var/log/pve-nvidia-hook/102.log.1"),
        "600 root:root",
        "{}",
        text(&rotate)
    );
    assert_eq!(
        mode_owner(sb, vmid, "/var/log/pve-nvidia-hook/102.log"),
        "600 root:root"
    );
    assert_eq!(
        std::fs::metadata(dir.join("102.log")).unwrap().len(),
        0,
        "a fresh log after the rotation"
    );
}

/// Issue 17.4: after a host upgrade (a new kernel with the new driver built
/// by DKMS), the package's apt hook fetches that driver's runfile in the
/// background: apt returns before the download ends, and a later apt run
/// fetches nothing again.
#[test]
#[ignore = "needs root, LXC and the built package; `make test` as root runs it"]
fn package_apt_hook_fetches_the_next_boots_driver_in_the_background() {
    let mut sb = Sandbox::new("package-upgrades");
    sb.runfile(V2, "ok");
    sb.up(9610, false, "");
    proxmox_node(&sb, 9610);
    std::fs::copy(deb(), sb.rootfs(9610).join("root").join(deb_name())).unwrap();
    let reinstall = format!("--reinstall /root/{}", deb_name());
    let install = apt_get_install(&sb, 9610, &format!("/root/{}", deb_name()));
    assert!(install.status.success(), "{}", text(&install));

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

    let apt = apt_get_install(&sb, 9610, &reinstall);
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
    let again = apt_get_install(&sb, 9610, &reinstall);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("fetching"), "{}", text(&again));
    assert_eq!(sb.server.count(&slow), 1, "fetched once");
}
