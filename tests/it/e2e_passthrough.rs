//! `enable --passthrough` on real containers: the devN entries it writes,
//! made into nodes as Proxmox makes them at a start (`sandbox.sh restart`),
//! let the container's users open them: the members of its video group,
//! or everyone where it has none; `disable --passthrough` takes them back.

use std::process::{Command, Output};

use crate::sandbox::{sh, Sandbox};
use crate::support::{self, mknod, text, write};

/// The tool as on a host with NVIDIA's module: in a mount namespace of
/// its own, the sandbox's NVIDIA files are bound over `/proc/driver` and
/// `/proc/devices` (the machine's own are left alone).
fn run(sb: &Sandbox, args: &[&str]) -> Output {
    let w = sb.dir();
    let tool = support::command(args, Some(&w.join("bin")), &w.join("config.json"));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0/driver" /proc/driver && mount --bind "$0/devices" /proc/devices && exec "$@""#)
        .arg(w.join("proc"))
        .arg(tool.get_program())
        .args(tool.get_args());
    for (key, value) in tool.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.output().unwrap()
}

fn shown(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    // The transcript in docs/COMMANDS.md comes from here (--nocapture).
    eprintln!("{shown}");
    shown
}

fn has(shown: &str, wanted: &str) {
    assert!(shown.contains(wanted), "missing {wanted:?} in:\n{shown}");
}

/// Whether `user` opens every node read-write in the container, as CUDA
/// opens them (shown for the transcript in docs/COMMANDS.md).
fn opens(sb: &Sandbox, vmid: u32, user: &str) -> bool {
    let script = "for n in nvidia0 nvidiactl nvidia-uvm nvidia-uvm-tools; do exec 3<>/dev/$n || exit 1; exec 3>&-; done; echo opened all four";
    let out = sb.inside(vmid, &["su", "-s", "/bin/sh", user, "-c", script]);
    eprintln!(
        "# pct exec {vmid} -- su -s /bin/sh {user} -c '{script}'\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_passthrough_lets_the_containers_users_open_the_nodes() {
    let mut sb = Sandbox::new("passthrough");
    let w = sb.dir().to_path_buf();
    // The host: NVIDIA's files for one GPU with nvidia-uvm loaded, its
    // nodes (real ones: pct and doctor check them), PVE 9's pve-container,
    // the boot unit enabled.
    write(
        &w.join("proc/devices"),
        "Character devices:\n  1 mem\n195 nvidia-frontend\n511 nvidia-uvm\n\n",
    );
    write(
        &w.join("proc/driver/nvidia/gpus/0000:01:00.0/information"),
        "Model: \t\t NVIDIA RTX A4000\nDevice Minor: \t 0\n",
    );
    std::fs::create_dir_all(w.join("sys/module/nvidia_uvm")).unwrap();
    for (name, major, minor) in [
        ("nvidia0", 195, 0),
        ("nvidiactl", 195, 255),
        ("nvidia-uvm", 511, 0),
        ("nvidia-uvm-tools", 511, 1),
    ] {
        mknod(&w.join("devnodes").join(name), 0o666, major, minor);
    }
    write(&w.join("pve-container.version"), "6.0.6");
    write(
        &w.join("units/pve-nvidia-hook-devices.service"),
        "enabled\n",
    );
    let fakes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes");
    for tool in ["dpkg-query", "systemctl"] {
        std::fs::copy(fakes.join(tool), w.join("bin").join(tool)).unwrap();
    }

    // An unprivileged container (Proxmox's default) with Debian's video
    // group (44), a service user in it and one not.
    sb.up_with(9701, false, "nvidia", &["unprivileged"]);
    sb.inside_ok(9701, &["useradd", "-M", "-G", "video", "ollama"]);
    sb.inside_ok(9701, &["useradd", "-M", "web"]);
    let out = shown(&run(&sb, &["enable", "--passthrough", "--dry-run", "9701"]));
    has(&out, "would run: pct set 9701 --dev0 /dev/nvidia0,gid=44,mode=0660 --dev1 /dev/nvidiactl,gid=44,mode=0660 --dev2 /dev/nvidia-uvm,gid=44,mode=0660 --dev3 /dev/nvidia-uvm-tools,gid=44,mode=0660\n");
    let out = shown(&run(&sb, &["enable", "--passthrough", "9701"]));
    has(&out, "CT 9701: dev0, dev1, dev2, dev3 hot-plugged");
    sh(&["restart", "9701", &w.display().to_string()]);
    let stat = sb.inside_ok(9701, &["stat", "-c", "%a %U %G", "/dev/nvidia0"]);
    eprintln!("# pct exec 9701 -- stat -c '%a %U %G' /dev/nvidia0\n{stat}");
    assert_eq!(stat, "660 root video\n");
    assert!(opens(&sb, 9701, "ollama"), "a member of video opens them");
    assert!(!opens(&sb, 9701, "web"), "another user does not");
    assert!(opens(&sb, 9701, "root"));
    let doctor = String::from_utf8_lossy(&run(&sb, &["doctor", "9701"]).stdout).into_owned();
    eprintln!("{doctor}");
    for check in [
        "devices",
        "passthrough",
        "cgroup keys",
        "cgroup rules",
        "device access",
    ] {
        assert!(
            !doctor.contains(&format!("FAIL  CT 9701: {check}:"))
                && !doctor.contains(&format!("WARN  CT 9701: {check}:")),
            "{check}: {doctor}"
        );
    }
    has(&doctor, "OK    CT 9701: device access: container root (a mapped uid) and the members of the container's group can open the passed nodes");

    let out = shown(&run(&sb, &["disable", "--passthrough", "9701"]));
    has(&out, "go at its next start");
    sh(&["restart", "9701", &w.display().to_string()]);
    assert!(!sb
        .inside(9701, &["test", "-e", "/dev/nvidia0"])
        .status
        .success());

    // Without a video group: NVIDIA's host mode, 0666, for every user.
    sb.up_with(9702, false, "nvidia", &["unprivileged"]);
    sb.inside_ok(9702, &["groupdel", "video"]);
    sb.inside_ok(9702, &["useradd", "-M", "web"]);
    let out = shown(&run(&sb, &["enable", "--passthrough", "9702"]));
    has(&out, "CT 9702: it has no video or render group: mode 0666");
    sh(&["restart", "9702", &w.display().to_string()]);
    assert!(opens(&sb, 9702, "web"));
}
