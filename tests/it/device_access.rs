//! Issue 15.2: what `doctor` says about device access is what Proxmox
//! (pve-container's `update_lxc_config`, `parse_device`) and LXC (its
//! cgroup code) do with the container's config, on the fake host with real
//! device nodes (mknod: root only).

use crate::fake_host::FakeHost;
use crate::support::{mknod, text, write};

/// The host's NVIDIA nodes: nvidia0, nvidiactl (195), nvidia-uvm (511),
/// nvidia-caps/nvidia-cap1 and -cap2 (236, read-only as NVIDIA makes them).
fn host_with_nodes(cgroup_v2: bool) -> FakeHost {
    let host = FakeHost::new();
    let dev = host.path().join("dev");
    for (name, major, minor, mode) in [
        ("nvidia0", 195, 0, 0o666),
        ("nvidiactl", 195, 255, 0o666),
        ("nvidia-uvm", 511, 0, 0o666),
        ("nvidia-caps/nvidia-cap1", 236, 1, 0o400),
        ("nvidia-caps/nvidia-cap2", 236, 2, 0o444),
    ] {
        mknod(&dev.join(name), mode, major, minor);
    }
    let cgroup = host.path().join("sys/fs/cgroup");
    if cgroup_v2 {
        write(
            &cgroup.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
    } else {
        std::fs::create_dir_all(cgroup.join("devices")).unwrap();
    }
    host
}

const BIND: &str = "lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n\
lxc.mount.entry: /dev/nvidiactl dev/nvidiactl none bind,optional,create=file\n\
lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file\n";

fn doctor(host: &FakeHost, vmid: u32, conf: &str) -> String {
    host.container(
        vmid,
        &format!("arch: amd64\nostype: debian\ntags: nvidia\n{conf}"),
    );
    let out = host.run(&["doctor", &vmid.to_string()]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!shown.is_empty(), "{}", text(&out));
    shown
}

fn has(shown: &str, wanted: &str) {
    assert!(shown.contains(wanted), "missing {wanted:?} in:\n{shown}");
}

/// On a pure cgroup v2 host (PVE 8's default, 9's only mode) LXC ignores
/// `lxc.cgroup.devices.allow`; a read-only rule is no read-write one; a
/// deny that is an allow's twin takes it back.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn cgroup_rules_count_as_lxc_applies_them() {
    let host = host_with_nodes(true);
    let shown = doctor(
        &host,
        301,
        &format!(
            "{BIND}lxc.cgroup.devices.allow: c 195:* rwm\nlxc.cgroup.devices.allow: c 511:* rwm\n"
        ),
    );
    has(&shown, "WARN  CT 301: cgroup keys: lxc.cgroup.devices.* lines do nothing here: this host runs pure cgroup v2, and LXC ignores them (\"Ignoring legacy cgroup limits on pure cgroup2 system\")");
    has(&shown, "fix: write them as: lxc.cgroup2.devices.allow: c 195:* rwm; lxc.cgroup2.devices.allow: c 511:* rwm");
    has(&shown, "FAIL  CT 301: cgroup rules: no rule allows nvidia-uvm (c 511:0, read-write), nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write) (the nvidia-uvm major is dynamic and changes between boots)");
    has(
        &shown,
        "lxc.cgroup2.devices.allow: c 511:* rwm; lxc.cgroup2.devices.allow: c 195:* rwm\n",
    );

    let shown = doctor(
        &host,
        302,
        &format!(
            "{BIND}lxc.cgroup2.devices.allow: c 195:* r\nlxc.cgroup2.devices.allow: c 511:* rwm\n"
        ),
    );
    has(&shown, "FAIL  CT 302: cgroup rules: no rule allows nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write)\n");
    has(
        &shown,
        "(above any [section] line): lxc.cgroup2.devices.allow: c 195:* rwm\n",
    );

    let shown = doctor(
        &host,
        303,
        &format!("{BIND}lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.cgroup2.devices.allow: c 511:* rwm\nlxc.cgroup2.devices.deny: c 195:* rwm\n"),
    );
    has(&shown, "FAIL  CT 303: cgroup rules: no rule allows nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write)\n");

    let shown = doctor(
        &host,
        304,
        &format!("{BIND}lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.cgroup2.devices.allow: c 511:* rwm\n"),
    );
    has(
        &shown,
        "OK    CT 304: cgroup rules: the device rules let the container open the passed nodes",
    );

    // A host with v1's devices controller: the reverse.
    let host = host_with_nodes(false);
    let shown = doctor(
        &host,
        305,
        &format!(
            "{BIND}lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.cgroup.devices.allow: c 511:* rwm\n"
        ),
    );
    has(&shown, "WARN  CT 305: cgroup keys: lxc.cgroup2.devices.* lines do nothing here: this host's devices controller is cgroup v1");
    has(&shown, "FAIL  CT 305: cgroup rules: no rule allows nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write)\n");
    has(&shown, "lxc.cgroup.devices.allow: c 195:* rwm\n");
}

/// devN as `update_lxc_config` meets it: a node missing on the host, or a
/// value `parse_device` refuses, stops the start before any hook; a
/// `deny-write=1` node is read-only; recommending devN says so.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn devices_as_proxmox_starts_them() {
    let host = host_with_nodes(true);
    std::fs::remove_file(host.path().join("dev/nvidia-uvm")).unwrap();
    let shown = doctor(
        &host,
        311,
        "dev0: /dev/nvidia0,deny-write=1,mode=0666\ndev1: /dev/nvidiactl,mode=666\ndev2: /dev/nvidia-uvm\n",
    );
    has(&shown, "FAIL  CT 311: devices: dev1: format error: mode: value does not match the regex pattern 0[0-7]{3} - got '666': Proxmox refuses to start the container (update_lxc_config, before any hook runs)");
    has(&shown, "FAIL  CT 311: devices: dev2: Device /dev/nvidia-uvm does not exist on this host: Proxmox refuses to start the container");
    has(&shown, "nvidia-modprobe -c 0 -u, before pve-guests.service), or bind it instead: lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file");
    has(&shown, "FAIL  CT 311: cgroup rules: no rule allows nvidia0 (c 195:0, read-write); dev0 has deny-write=1: Proxmox lets the container open /dev/nvidia0 read-only");
    has(&shown, "fix: pct set 311 --dev0 /dev/nvidia0,mode=0666\n");
    has(
        &shown,
        "FAIL  CT 311: passthrough: not passed to the container: nvidiactl",
    );

    has(
        &shown,
        "Proxmox refuses to start a container whose devN node is missing on the host",
    );
}

/// A custom idmap without `unprivileged: 1` is unprivileged for Proxmox;
/// `/dev/nvidia-caps` bound as a folder passes its nodes, which only need
/// reading; `lxc.mount.entry : ...` (a blank before the colon) is dropped
/// by Proxmox, so it passes nothing.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn idmaps_caps_folders_and_lines_proxmox_drops() {
    let host = host_with_nodes(true);
    std::fs::set_permissions(
        host.path().join("dev/nvidia0"),
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )
    .unwrap();
    let rules = "lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.cgroup2.devices.allow: c 511:* rwm\nlxc.cgroup2.devices.allow: c 236:* r\n";
    let shown = doctor(
        &host,
        321,
        &format!("{BIND}{rules}lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 65536\n"),
    );
    has(
        &shown,
        "FAIL  CT 321: device access: container root (a mapped uid) cannot open nvidia0",
    );

    let shown = doctor(
        &host,
        322,
        &format!("{BIND}{rules}lxc.mount.entry: /dev/nvidia-caps dev/nvidia-caps none bind,optional,create=dir\n"),
    );
    has(
        &shown,
        "OK    CT 322: cgroup rules: the device rules let the container open the passed nodes",
    );
    // cap1 is 0400 root's: container root reads it, other users do not.
    has(&shown, "WARN  CT 322: device access: container root can open the passed nodes, services running as another user (ollama, plex, jellyfin) cannot open nvidia-caps/nvidia-cap1, nvidia0\n");

    let shown = doctor(
        &host,
        323,
        &format!(
            "{}{rules}",
            BIND.replacen(
                "lxc.mount.entry: /dev/nvidia0",
                "lxc.mount.entry : /dev/nvidia0",
                1
            )
        ),
    );
    has(
        &shown,
        "FAIL  CT 323: passthrough: not passed to the container: nvidia0\n",
    );
}
