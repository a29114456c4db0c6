//! `enable --passthrough` and `disable --passthrough` on a fake host: NVIDIA's
//! `/proc` files for two GPUs, their nodes (mknod: root only), the `pct`
//! stand-in as Proxmox behaves (config lock, hotplug of a new devN into a
//! running container, pending changes, pve-container's version), and
//! `doctor` judging what was written.

use std::time::{Duration, Instant};

use crate::fake_host::FakeHost;
use crate::support::{mknod, text, write};

const ROOT_ONLY: &str = "device nodes need root (mknod): run `make test` as root";

/// Two GPUs, nvidiactl, nvidia-modeset, nvidia-uvm and -tools (NVIDIA's
/// default 0666), a render node of the admin's; pure cgroup v2;
/// pve-container `version`; the boot unit enabled.
fn gpu_host(version: &str) -> FakeHost {
    assert!(rustix::process::geteuid().is_root(), "{ROOT_ONLY}");
    let host = FakeHost::new();
    let d = host.path();
    write(
        &d.join("proc/devices"),
        "Character devices:\n  1 mem\n195 nvidia-frontend\n226 drm\n511 nvidia-uvm\n\n",
    );
    for (bus, minor) in [("0000:01:00.0", 0), ("0000:41:00.0", 1)] {
        write(
            &d.join(format!("proc/driver/nvidia/gpus/{bus}/information")),
            format!("Model: \t\t NVIDIA RTX A4000\nDevice Minor: \t {minor}\n"),
        );
    }
    for module in ["nvidia_uvm", "nvidia_modeset"] {
        std::fs::create_dir_all(d.join("sys/module").join(module)).unwrap();
    }
    write(
        &d.join("sys/fs/cgroup/cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    for (name, major, minor) in [
        ("nvidia0", 195, 0),
        ("nvidia1", 195, 1),
        ("nvidiactl", 195, 255),
        ("nvidia-modeset", 195, 254),
        ("nvidia-uvm", 511, 0),
        ("nvidia-uvm-tools", 511, 1),
        ("dri/renderD128", 226, 128),
    ] {
        mknod(&d.join("dev").join(name), 0o666, major, minor);
    }
    write(&d.join("pve-container.version"), version);
    write(
        &d.join("units/pve-nvidia-hook-devices.service"),
        "enabled\n",
    );
    host.tool("dpkg-query");
    host.tool("systemctl");
    host
}

fn conf(host: &FakeHost, vmid: u32) -> String {
    std::fs::read_to_string(host.path().join(format!("pve/lxc/{vmid}.conf"))).unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has(shown: &str, wanted: &str) {
    assert!(shown.contains(wanted), "missing {wanted:?} in:\n{shown}");
}

/// doctor's device checks (devN as Proxmox starts them, what is passed,
/// the cgroup rules, who can open the nodes) say the access is right.
fn doctor_agrees(host: &FakeHost, vmid: u32, access: &str) {
    let shown =
        String::from_utf8_lossy(&host.run(&["doctor", &vmid.to_string()]).stdout).into_owned();
    for check in [
        "devices",
        "passthrough",
        "cgroup keys",
        "cgroup rules",
        "device access",
        "mount entries",
    ] {
        for level in ["WARN", "FAIL"] {
            assert!(
                !shown.contains(&format!("{level}  CT {vmid}: {check}:")),
                "{check}: {shown}"
            );
        }
    }
    has(&shown, &format!("OK    CT {vmid}: cgroup rules: the device rules let the container open the passed nodes"));
    has(&shown, &format!("OK    CT {vmid}: device access: {access}"));
}

/// A running unprivileged container with a video group gets GPU 0 at once
/// (PVE 9 hot-plugs a new devN), to its group; its own render node stays;
/// doctor agrees; a second run changes nothing; disable takes back only
/// ours, which a running container loses at its next start.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn a_running_unprivileged_container_gets_its_gpu_to_its_video_group() {
    let host = gpu_host("6.0.6");
    let root = host.container(
        601,
        "arch: amd64\nostype: debian\ntags: nvidia\nunprivileged: 1\ndev0: /dev/dri/renderD128,gid=104\n",
    );
    write(
        &root.join("etc/group"),
        "root:x:0:\nvideo:x:44:ollama\nrender:x:104:\n",
    );
    let shown = ok(&host.run(&["enable", "--passthrough", "--gpu", "0", "601"]));
    has(
        &shown,
        "CT 601: the nodes go to its group video (gid 44), mode 0660",
    );
    has(&shown, "ran: pct set 601 --dev1 /dev/nvidia0,gid=44,mode=0660 --dev2 /dev/nvidiactl,gid=44,mode=0660 --dev3 /dev/nvidia-modeset,gid=44,mode=0660 --dev4 /dev/nvidia-uvm,gid=44,mode=0660 --dev5 /dev/nvidia-uvm-tools,gid=44,mode=0660\n");
    has(
        &shown,
        "CT 601: dev1, dev2, dev3, dev4, dev5 hot-plugged: the running container has them now",
    );
    has(
        &shown,
        "CT 601: the hook is not registered: `pve-nvidia-hook enable 601` keeps its NVIDIA driver at the host's version",
    );
    let written = conf(&host, 601);
    assert!(!written.contains("[pve:pending]"), "{written}");
    assert!(written
        .contains("dev0: /dev/dri/renderD128,gid=104\ndev1: /dev/nvidia0,gid=44,mode=0660\n"));
    assert!(!written.contains("nvidia1"));
    let record = host.path().join("pve/pve-nvidia-hook/passthrough/601.json");
    assert!(record.is_file());
    doctor_agrees(
        &host,
        601,
        "container root (a mapped uid) and the members of the container's group can open the passed nodes: nvidia-modeset (group 44), nvidia-uvm (group 44)",
    );
    let shown = String::from_utf8_lossy(&host.run(&["doctor", "601"]).stdout).into_owned();
    has(&shown, "OK    CT 601: passthrough: the nodes its GPUs need are passed (not the host's other GPUs: nvidia1)");

    let again = ok(&host.run(&["enable", "--passthrough", "--gpu", "0", "601"]));
    has(&again, "CT 601: its passthrough is already as asked");
    assert_eq!(conf(&host, 601), written);

    let shown = ok(&host.run(&["disable", "--passthrough", "601"]));
    has(
        &shown,
        "ran: pct set 601 --delete dev1,dev2,dev3,dev4,dev5\n",
    );
    has(&shown, "CT 601: dev1, dev2, dev3, dev4, dev5 go at its next start: Proxmox does not take a device from a running container (pct reboot 601)");
    let after = conf(&host, 601);
    has(&after, "[pve:pending]\ndelete: dev1,dev2,dev3,dev4,dev5\n");
    has(&after, "dev0: /dev/dri/renderD128,gid=104\n");
    assert!(!record.exists());
    host.stop(601);
    let shown = ok(&host.run(&["disable", "--passthrough", "601"]));
    has(&shown, "pve-nvidia-hook wrote no passthrough for it");
}

/// --dry-run shows the exact change and makes none; the admin's raw lines
/// for the same nodes stay unless --replace-raw; a stopped container gets
/// it all at its next start; doctor agrees.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn dry_run_and_replace_raw_on_a_stopped_container() {
    let host = gpu_host("6.0.6");
    let raw = "lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.cgroup2.devices.allow: c 511:* rwm\n\
               lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n\
               lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file\n";
    let before = format!("arch: amd64\nostype: debian\n{raw}");
    write(&host.path().join("pve/lxc/602.conf"), &before);
    let shown = ok(&host.run(&["enable", "--passthrough", "--dry-run", "602"]));
    has(&shown, "CT 602: its /etc/group cannot be read (the container is stopped; run this again while it runs to give the nodes to its video group): mode 0666, as NVIDIA makes these nodes on the host");
    has(&shown, "would run: pct set 602 --dev0 /dev/nvidia0,mode=0666 --dev1 /dev/nvidia1,mode=0666 --dev2 /dev/nvidiactl,mode=0666 --dev3 /dev/nvidia-modeset,mode=0666 --dev4 /dev/nvidia-uvm,mode=0666 --dev5 /dev/nvidia-uvm-tools,mode=0666\n");
    has(&shown, "raw lines for the same nodes stay and double up with the devN entries (a node bound twice; rules the devN entries already give): lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file; lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file; lxc.cgroup2.devices.allow: c 195:* rwm; lxc.cgroup2.devices.allow: c 511:* rwm (--replace-raw removes them)");
    has(
        &shown,
        "CT 602: dev0, dev1, dev2, dev3, dev4, dev5 would take effect when it next starts",
    );
    let shown = ok(&host.run(&[
        "enable",
        "--passthrough",
        "--dry-run",
        "--replace-raw",
        "602",
    ]));
    has(&shown, "would edit ");
    has(&shown, "602.conf under its config lock: - lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file; - lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file; - lxc.cgroup2.devices.allow: c 195:* rwm; - lxc.cgroup2.devices.allow: c 511:* rwm\n");
    assert_eq!(conf(&host, 602), before, "a dry run changes nothing");
    assert!(!host
        .path()
        .join("pve/pve-nvidia-hook/passthrough/602.json")
        .exists());
    assert!(!std::fs::read_to_string(host.path().join("pct.log"))
        .unwrap_or_default()
        .contains("set 602"));

    ok(&host.run(&["enable", "--passthrough", "--replace-raw", "602"]));
    let after = conf(&host, 602);
    assert_eq!(
        after,
        "arch: amd64\ndev0: /dev/nvidia0,mode=0666\ndev1: /dev/nvidia1,mode=0666\ndev2: /dev/nvidiactl,mode=0666\ndev3: /dev/nvidia-modeset,mode=0666\ndev4: /dev/nvidia-uvm,mode=0666\ndev5: /dev/nvidia-uvm-tools,mode=0666\nostype: debian\n"
    );
    doctor_agrees(
        &host,
        602,
        "container root and other users can open the passed nodes",
    );
    // disable takes back the devN entries; the replaced lines are not ours
    // to bring back.
    ok(&host.run(&["disable", "--passthrough", "602"]));
    assert_eq!(conf(&host, 602), "arch: amd64\nostype: debian\n");
}

/// disable --passthrough removes what enable wrote and nothing else: the
/// admin's own devN for a node stays (enable said so and left it), an entry
/// of ours the admin changed since is theirs; a PVE 8 container that ran
/// (no hotplug) has ours pending, which disable reverts.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn disable_leaves_the_admins_devn_alone() {
    let host = gpu_host("5.2.0");
    host.container(
        603,
        "arch: amd64\nostype: debian\ndev0: /dev/nvidia0\ndev7: /dev/dri/renderD128\n",
    );
    let shown = ok(&host.run(&["enable", "--passthrough", "603"]));
    has(
        &shown,
        "CT 603: dev0 already passes /dev/nvidia0 (/dev/nvidia0): the admin's own, left as is",
    );
    has(&shown, "take effect at its next start (pct reboot 603) (this Proxmox hot-plugs no devN; pve-container 6.0.4 and later do)");
    let pending = conf(&host, 603);
    has(&pending, "[pve:pending]\ndev1: /dev/nvidia1,mode=0666\n");
    // The admin changes one of ours.
    let edited = pending.replace(
        "dev2: /dev/nvidiactl,mode=0666",
        "dev2: /dev/nvidiactl,mode=0660",
    );
    write(&host.path().join("pve/lxc/603.conf"), &edited);
    let shown = ok(&host.run(&["disable", "--passthrough", "603"]));
    has(&shown, "CT 603: dev2 changed since it was written (/dev/nvidiactl,mode=0660): the admin's now, left as is");
    has(&shown, "ran: pct set 603 --revert dev1,dev3,dev4,dev5\n");
    assert_eq!(
        conf(&host, 603),
        "arch: amd64\ndev0: /dev/nvidia0\ndev7: /dev/dri/renderD128\nostype: debian\n\n[pve:pending]\ndev2: /dev/nvidiactl,mode=0660\n"
    );
}

/// Before PVE 8.1 (no devN): raw lines with today's numbers, written in the
/// config file under Proxmox's config lock (waited for while a `pct`
/// holds it; refused while a backup locks the container); disable removes
/// exactly those lines.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn before_pve_8_1_raw_lines_under_the_config_lock() {
    let host = gpu_host("5.0.6");
    let admin = "lxc.cgroup2.devices.allow: c 10:200 rwm\n";
    write(
        &host.path().join("pve/lxc/604.conf"),
        format!("arch: amd64\nostype: debian\n{admin}\n[snap]\narch: amd64\n"),
    );
    let lock_dir = host.path().join("lock-lxc");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock = std::fs::File::create(lock_dir.join("pve-config-604.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(lock);
    });
    let started = Instant::now();
    let shown = ok(&host.run(&["enable", "--passthrough", "--gpu", "1", "604"]));
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "it waited for the lock"
    );
    holder.join().unwrap();
    has(
        &shown,
        "this Proxmox predates devN (pve-container 5.0.7, PVE 8.1)",
    );
    has(&shown, "nvidia-uvm's major (511) can change");
    let written = conf(&host, 604);
    assert_eq!(
        written,
        format!("arch: amd64\nostype: debian\n{admin}lxc.mount.entry: /dev/nvidia1 dev/nvidia1 none bind,optional,create=file\nlxc.cgroup2.devices.allow: c 195:1 rw\nlxc.mount.entry: /dev/nvidiactl dev/nvidiactl none bind,optional,create=file\nlxc.cgroup2.devices.allow: c 195:255 rw\nlxc.mount.entry: /dev/nvidia-modeset dev/nvidia-modeset none bind,optional,create=file\nlxc.cgroup2.devices.allow: c 195:254 rw\nlxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file\nlxc.cgroup2.devices.allow: c 511:0 rw\nlxc.mount.entry: /dev/nvidia-uvm-tools dev/nvidia-uvm-tools none bind,optional,create=file\nlxc.cgroup2.devices.allow: c 511:1 rw\n\n[snap]\narch: amd64\n")
    );
    assert!(!std::fs::read_to_string(host.path().join("pct.log"))
        .unwrap_or_default()
        .contains("--dev"));
    doctor_agrees(
        &host,
        604,
        "container root and other users can open the passed nodes",
    );

    write(
        &host.path().join("pve/lxc/604.conf"),
        written.replacen("arch: amd64\n", "arch: amd64\nlock: backup\n", 1),
    );
    let out = host.run(&["disable", "--passthrough", "604"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    has(
        &String::from_utf8_lossy(&out.stderr),
        "CT is locked (backup)",
    );
    write(&host.path().join("pve/lxc/604.conf"), &written);
    ok(&host.run(&["disable", "--passthrough", "604"]));
    assert_eq!(
        conf(&host, 604),
        format!("arch: amd64\nostype: debian\n{admin}\n[snap]\narch: amd64\n")
    );
}

/// A node the loaded modules offer but the host lacks now (nvidia-uvm-tools
/// before anything made it): refused, nothing written, the admin told how
/// to make the nodes at every boot; so is a GPU the host does not have; a
/// boot unit that is not enabled is warned about.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn a_missing_host_node_refuses_before_anything_is_written() {
    let host = gpu_host("6.0.6");
    let before = "arch: amd64\nostype: debian\n";
    write(&host.path().join("pve/lxc/605.conf"), before);
    std::fs::remove_file(host.path().join("dev/nvidia-uvm-tools")).unwrap();
    let out = host.run(&["enable", "--passthrough", "605"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    has(&String::from_utf8_lossy(&out.stderr), "/dev/nvidia-uvm-tools (511:1) does not exist: Proxmox refuses to start a container whose devN node is missing on the host, so none is written. Make them now with `pve-nvidia-hook devices`, and at every boot before the guests: systemctl enable pve-nvidia-hook-devices.service");
    assert_eq!(conf(&host, 605), before);
    assert!(!host
        .path()
        .join("pve/pve-nvidia-hook/passthrough/605.json")
        .exists());

    mknod(&host.path().join("dev/nvidia-uvm-tools"), 0o666, 511, 1);
    let out = host.run(&["enable", "--passthrough", "--gpu", "2", "605"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    has(
        &String::from_utf8_lossy(&out.stderr),
        "no GPU 2 on this host; its GPUs: 0 (/dev/nvidia0), 1 (/dev/nvidia1)",
    );

    write(
        &host.path().join("units/pve-nvidia-hook-devices.service"),
        "disabled\n",
    );
    let out = host.run(&["enable", "--passthrough", "605"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    has(&String::from_utf8_lossy(&out.stderr), "pve-nvidia-hook-devices.service is disabled: after the next boot /dev/nvidia-uvm and the other nodes exist only once something makes them, and Proxmox then refuses to start these containers; make them at every boot: systemctl enable pve-nvidia-hook-devices.service");
}

/// The container's /etc/group is the tenant's: a FIFO there is never
/// opened, a video gid outside the ids Proxmox maps into it (a host group)
/// is never written, a video line past the bound is not seen; the nodes
/// then get NVIDIA's host mode, 0666.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn a_hostile_etc_group_never_reaches_the_config() {
    let host = gpu_host("6.0.6");
    let conf_text = "arch: amd64\nostype: debian\nunprivileged: 1\n";
    let root = host.container(606, conf_text);
    std::fs::create_dir_all(root.join("etc")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("etc/group"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let shown = ok(&host.run(&["enable", "--passthrough", "--dry-run", "--gpu", "0", "606"]));
    has(&shown, "its /etc/group cannot be read (/etc/group is not a regular file (Other); not opened; run this again");
    has(&shown, "--dev0 /dev/nvidia0,mode=0666 ");

    std::fs::remove_file(root.join("etc/group")).unwrap();
    write(&root.join("etc/group"), "video:x:100044:\nrender:x:0:\n");
    let shown = ok(&host.run(&["enable", "--passthrough", "--dry-run", "--gpu", "0", "606"]));
    has(&shown, "its video group's gid 100044 is outside the ids Proxmox maps into it; its render group is gid 0, root's: mode 0666");
    assert!(!shown.contains("gid="), "{shown}");

    let mut big = "x:x:1:\n".repeat(40_000);
    big.push_str("video:x:44:\n");
    write(&root.join("etc/group"), big);
    let shown = ok(&host.run(&["enable", "--passthrough", "--gpu", "0", "606"]));
    has(&shown, "it has no video or render group: mode 0666");
    assert!(!conf(&host, 606).contains("gid="));
}

/// `--gpu` and `--replace-raw` belong to `--passthrough`, which is no
/// hook registration: the flags of that are refused with it (exit 2).
#[test]
fn passthrough_flags_go_together_and_alone() {
    let host = FakeHost::new();
    for args in [
        &["enable", "--gpu", "0", "101"][..],
        &["enable", "--replace-raw", "101"],
        &["enable", "--passthrough", "--chain", "101"],
        &["enable", "--passthrough", "--now", "101"],
        &["disable", "--passthrough", "--untag", "101"],
        &["enable", "--passthrough", "--gpu", "0,x", "101"],
    ] {
        let out = host.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

/// A run that fails (Proxmox refuses a locked container) loses nothing of
/// what was ours: entries it was to change keep their recorded values
/// while the config holds them, and disable takes them back later.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn a_failed_change_keeps_what_was_ours_recorded() {
    let host = gpu_host("6.0.6");
    let root = host.container(607, "arch: amd64\nostype: debian\n");
    ok(&host.run(&["enable", "--passthrough", "--gpu", "0", "607"]));
    let ours = conf(&host, 607);
    assert!(ours.contains("dev0: /dev/nvidia0,mode=0666\n"), "{ours}");
    // Now it has a video group: a change of each of ours, refused, as the
    // container is locked by a backup.
    write(&root.join("etc/group"), "video:x:44:\n");
    write(
        &host.path().join("pve/lxc/607.conf"),
        ours.replacen("arch: amd64\n", "arch: amd64\nlock: backup\n", 1),
    );
    let out = host.run(&["enable", "--passthrough", "--gpu", "0", "607"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    has(
        &String::from_utf8_lossy(&out.stderr),
        "CT is locked (backup)",
    );
    write(&host.path().join("pve/lxc/607.conf"), &ours);
    host.stop(607);
    let shown = ok(&host.run(&["disable", "--passthrough", "607"]));
    has(
        &shown,
        "ran: pct set 607 --delete dev0,dev1,dev2,dev3,dev4\n",
    );
    assert_eq!(conf(&host, 607), "arch: amd64\nostype: debian\n");
}
