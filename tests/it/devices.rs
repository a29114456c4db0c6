//! `pve-nvidia-hook devices` (what the boot unit runs) and doctor's host
//! checks on a fake host: NVIDIA's `/proc` and `/sys` files as the modules
//! write them, stand-ins for `nvidia-modprobe`, `modprobe`, `udevadm` and
//! `systemctl`. Making device nodes needs root (mknod), as on a host.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::fake_host::FakeHost;
use crate::support::{text, write};

const ROOT_ONLY: &str = "making device nodes needs root: run `make test` as root";

/// NVIDIA's files for two GPUs and a MIG capability, as the modules write
/// them; `uvm`: nvidia-uvm is loaded already.
fn nvidia_proc(host: &FakeHost, uvm: bool) {
    let d = host.path();
    let uvm_line = if uvm { "511 nvidia-uvm\n" } else { "" };
    write(
        &d.join("proc/devices"),
        format!("Character devices:\n  1 mem\n195 nvidia-frontend\n234 nvidia-caps\n{uvm_line}\nBlock devices:\n  8 sd\n"),
    );
    write(
        &d.join("proc/driver/nvidia/params"),
        "ResmanDebugLevel: 4294967295\nDeviceFileUID: 0\nDeviceFileGID: 44\nDeviceFileMode: 432\nModifyDeviceFiles: 1\n",
    );
    for (bus, minor) in [("0000:01:00.0", 0), ("0000:41:00.0", 1)] {
        write(
            &d.join(format!("proc/driver/nvidia/gpus/{bus}/information")),
            format!("Model: \t\t NVIDIA H100 PCIe\nDevice Minor: \t {minor}\n"),
        );
    }
    write(
        &d.join("proc/driver/nvidia/capabilities/mig/config"),
        "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n",
    );
    if uvm {
        std::fs::create_dir_all(d.join("sys/module/nvidia_uvm")).unwrap();
    }
    std::fs::create_dir_all(d.join("dev/char")).unwrap();
}

/// `name c major:minor mode uid:gid` of every node below the fake `dev`.
fn nodes(dev: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["", "nvidia-caps"] {
        for e in std::fs::read_dir(dev.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let m = e.metadata().unwrap();
            if m.file_type().is_char_device() {
                found.push(format!(
                    "{} c {}:{} {:o} {}:{}",
                    Path::new(sub).join(e.file_name()).display(),
                    rustix::fs::major(m.rdev()),
                    rustix::fs::minor(m.rdev()),
                    m.mode() & 0o777,
                    m.uid(),
                    m.gid()
                ));
            }
        }
    }
    found.sort();
    found
}

fn calls(host: &FakeHost) -> Vec<String> {
    host.calls()
        .into_iter()
        .filter(|c| {
            ["nvidia-modprobe", "modprobe", "udevadm"]
                .iter()
                .any(|t| c.starts_with(&format!("{t} ")))
        })
        .collect()
}

const NVIDIAS_NODES: [&str; 7] = [
    "nvidia-caps/nvidia-cap1 c 234:1 400 0:0",
    "nvidia-modeset c 195:254 660 0:44",
    "nvidia-uvm c 511:0 666 0:0",
    "nvidia-uvm-tools c 511:1 666 0:0",
    "nvidia0 c 195:0 660 0:44",
    "nvidia1 c 195:1 660 0:44",
    "nvidiactl c 195:255 660 0:44",
];

/// A node without NVIDIA's module (a host whose GPU goes to a VM, or none):
/// one line, exit 0, nothing loaded or made. As a systemd unit's stderr
/// (JOURNAL_STREAM names it), the line carries the journal's warning
/// priority and goes nowhere else.
#[test]
fn a_host_without_nvidias_module_is_left_alone_with_one_line() {
    let host = FakeHost::new();
    nvidia_proc(&host, false);
    std::fs::remove_dir_all(host.path().join("sys/module/nvidia")).unwrap();
    for tool in ["nvidia-modprobe", "modprobe", "udevadm"] {
        host.tool(tool);
    }
    let journal = host.path().join("journal");
    let stream = std::fs::File::create(&journal).unwrap();
    let st = rustix::fs::fstat(&stream).unwrap();
    let out = host
        .command(&["devices"])
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .stderr(stream)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(
        lines,
        format!(
            "<4>pve-nvidia-hook: warning: no NVIDIA kernel module is loaded ({0}/sys/module/nvidia/version or {0}/proc/driver/nvidia is missing): the device nodes are left alone\n",
            host.path().display()
        )
    );
    assert!(calls(&host).is_empty(), "{:?}", calls(&host));
    assert!(nodes(&host.path().join("dev")).is_empty());
}

/// Through the host's nvidia-modprobe, called as NVIDIA's user-space calls
/// it; every node then has NVIDIA's modes (the driver's params: 0660, group
/// 44), and a second run changes nothing. doctor agrees, and says whether
/// the boot unit is enabled.
#[test]
#[ignore = "needs root; `make test` as root runs it"]
fn nodes_are_made_through_nvidia_modprobe_with_nvidias_modes() {
    assert!(rustix::process::geteuid().is_root(), "{ROOT_ONLY}");
    let host = FakeHost::new();
    nvidia_proc(&host, false);
    host.tool("nvidia-modprobe");
    host.tool("systemctl");
    let dev = host.path().join("dev");

    let out = host.run(&["devices"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cap = host
        .path()
        .join("proc/driver/nvidia/capabilities/mig/config");
    assert_eq!(
        calls(&host),
        [
            "nvidia-modprobe -c 0 -c 1 -c 255".to_string(),
            "nvidia-modprobe -u -c 0".to_string(),
            "nvidia-modprobe -m".to_string(),
            format!("nvidia-modprobe -f {}", cap.display()),
        ]
    );
    assert_eq!(nodes(&dev), NVIDIAS_NODES);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "{}/nvidia-uvm (c 511:0, 0666 0:0): present",
            dev.display()
        )),
        "{said}"
    );
    assert_eq!(
        std::fs::read_link(dev.join("char/195:255")).unwrap(),
        Path::new("../nvidiactl")
    );

    let again = host.run(&["devices"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(nodes(&dev), NVIDIAS_NODES);

    let doctor = String::from_utf8_lossy(&host.run(&["doctor"]).stdout).into_owned();
    assert!(
        doctor.contains("OK    host: nodes now: all 7 nodes the loaded modules offer exist, with NVIDIA's modes"),
        "{doctor}"
    );
    assert!(
        doctor.contains("WARN  host: boot unit: pve-nvidia-hook-devices.service is not installed"),
        "{doctor}"
    );
    write(
        &host.path().join("units/pve-nvidia-hook-devices.service"),
        "enabled",
    );
    let doctor = String::from_utf8_lossy(&host.run(&["doctor"]).stdout).into_owned();
    assert!(
        doctor.contains("OK    host: boot unit: pve-nvidia-hook-devices.service is enabled"),
        "{doctor}"
    );
}

/// Without nvidia-modprobe: the modules loaded with modprobe, the majors
/// read from /proc/devices, each node made with NVIDIA's modes; a stale
/// file and a node with another mode are corrected. While udev is still
/// binding the GPU at boot (no driver yet), its queue is waited for first.
#[test]
#[ignore = "needs root; `make test` as root runs it"]
fn without_nvidia_modprobe_nodes_come_from_proc_devices() {
    assert!(rustix::process::geteuid().is_root(), "{ROOT_ONLY}");
    assert!(
        crate::support::find_on_safe_path("nvidia-modprobe").is_none(),
        "this machine has a real nvidia-modprobe: the stand-in modprobe would not be used"
    );
    let host = FakeHost::new();
    nvidia_proc(&host, false);
    host.tool("modprobe");
    host.tool("udevadm");
    let d = host.path();
    // udev has not bound the GPU yet: the module is still to come.
    std::fs::remove_dir_all(d.join("sys/module/nvidia")).unwrap();
    write(&d.join("udev-pending"), "550.54.14\n");
    for (attr, value) in [("vendor", "0x10de"), ("class", "0x030200")] {
        write(
            &d.join(format!("sys/bus/pci/devices/0000:01:00.0/{attr}")),
            value,
        );
    }
    let dev = d.join("dev");
    write(&dev.join("nvidia-uvm"), "left by a script\n");
    assert!(std::process::Command::new("mknod")
        .args(["-m", "0600"])
        .arg(dev.join("nvidia0"))
        .args(["c", "195", "0"])
        .status()
        .unwrap()
        .success());

    let out = host.run(&["devices"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        calls(&host),
        [
            "udevadm settle --timeout=60",
            "modprobe nvidia-uvm",
            "modprobe nvidia-modeset"
        ]
    );
    let expected: Vec<String> = NVIDIAS_NODES
        .iter()
        .map(|n| n.replace("511:", "509:"))
        .collect();
    assert_eq!(nodes(&dev), expected, "the stand-in modprobe gave uvm 509");
    let said = String::from_utf8_lossy(&out.stderr);
    for line in [
        format!("{}/nvidia-uvm (c 509:0, 0666 0:0): made", dev.display()),
        format!(
            "{}/nvidia0 (c 195:0, 0660 0:44): mode and owner corrected",
            dev.display()
        ),
    ] {
        assert!(said.contains(&line), "{line:?} in {said}");
    }
}

/// nvidia-uvm that cannot be loaded leaves containers without CUDA: the
/// unit fails (exit 1) and says why, after making what it can.
#[test]
#[ignore = "needs root; `make test` as root runs it"]
fn a_uvm_module_that_does_not_load_fails_the_unit() {
    assert!(rustix::process::geteuid().is_root(), "{ROOT_ONLY}");
    let host = FakeHost::new();
    nvidia_proc(&host, false);
    host.tool("nvidia-modprobe");
    write(&host.path().join("nvidia-modprobe.fail"), "");
    let out = host.run(&["devices"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("nvidia-modprobe -u -c 0`: exit status 1: NVIDIA: stand-in failure"),
        "{said}"
    );
    assert!(said.contains("nvidia-uvm is not loaded"), "{said}");
    let made = nodes(&host.path().join("dev"));
    assert!(
        made.contains(&"nvidiactl c 195:255 660 0:44".to_string()),
        "made by us when nvidia-modprobe failed: {made:?}"
    );
}

/// doctor, with no node made yet: says which ones the loaded modules offer
/// and lack, and what makes them; the boot unit's state from systemctl.
#[test]
fn doctor_says_which_nodes_are_missing_and_whether_the_unit_is_enabled() {
    let host = FakeHost::new();
    nvidia_proc(&host, true);
    host.tool("systemctl");
    write(
        &host.path().join("units/pve-nvidia-hook-devices.service"),
        "disabled",
    );
    let out = host.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    for line in [
        "FAIL  host: nodes now: nvidia0 missing; nvidia1 missing; nvidiactl missing; nvidia-uvm missing; nvidia-uvm-tools missing; nvidia-caps/nvidia-cap1 missing",
        "      fix: pve-nvidia-hook devices (at every boot: systemctl enable pve-nvidia-hook-devices.service)",
        "WARN  host: boot unit: pve-nvidia-hook-devices.service is disabled: after a boot, nvidia-uvm may be missing until something runs nvidia-smi",
        "      fix: systemctl enable --now pve-nvidia-hook-devices.service",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }
}
