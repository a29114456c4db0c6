//! Issue 15.2 in real containers: what `doctor` says about a container's
//! device rules and idmap is what the kernel then does when the container
//! opens the node. The sandbox's host is this machine, whose cgroup layout
//! (`paths.sys` links its /sys/fs) decides which rules LXC applies; the
//! nodes are real character devices (195:0, no driver behind them: an open
//! the cgroup lets through fails with ENXIO, one it stops with EPERM).

use crate::sandbox::{chmod, device_rule_keys, Sandbox};
use crate::support::{mknod, write};

/// Opens /dev/nvidia0 inside, read-write (`<>`) or read-only (`<`), and
/// says how it went: the shell's error text.
fn open(sb: &Sandbox, vmid: u32, redirect: &str) -> String {
    let out = sb.inside(
        vmid,
        &[
            "sh",
            "-c",
            &format!("exec 3{redirect}/dev/nvidia0 && echo opened"),
        ],
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_device_rules_and_idmaps_do_what_doctor_says() {
    let mut sb = Sandbox::new("devices");
    let devnodes = sb.dir().join("devnodes");
    for (name, minor) in [("nvidia0", 0), ("nvidiactl", 255)] {
        mknod(&devnodes.join(name), 0o666, 195, minor);
    }
    // The key that counts here, and the one LXC ignores.
    let (counts, ignored) = device_rule_keys();
    let cases: [(u32, String, &str, &str); 4] = [
        (9400, format!("{ignored}.allow = c 195:* rwm\n"), "Operation not permitted", "FAIL  CT 9400: cgroup rules: no rule allows nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write)"),
        (9401, format!("{counts}.allow = c 195:* r\n"), "Operation not permitted", "FAIL  CT 9401: cgroup rules: no rule allows nvidia0 (c 195:0, read-write), nvidiactl (c 195:255, read-write)"),
        (9402, format!("{counts}.allow = c 195:* rwm\n{counts}.deny = c 195:* rwm\n"), "Operation not permitted", "FAIL  CT 9402: cgroup rules: no rule allows nvidia0"),
        (9403, format!("{counts}.allow = c 195:* rwm\n"), "No such device or address", "OK    CT 9403: cgroup rules: the device rules let the container open the passed nodes"),
    ];
    for (vmid, rules, kernel, said) in &cases {
        let raw = sb.dir().join(format!("raw-{vmid}"));
        write(&raw, rules);
        let raw = format!("raw={}", raw.display());
        sb.up_with(*vmid, true, "nvidia", &["nouvm", "realnodes", &raw]);
        let opened = open(&sb, *vmid, "<>");
        assert!(opened.contains(kernel), "CT {vmid} ({rules}): {opened}");
        let shown =
            String::from_utf8_lossy(&sb.run(&["doctor", &vmid.to_string()]).stdout).into_owned();
        assert!(shown.contains(said), "CT {vmid} ({rules}): {shown}");
    }
    // A read-only rule lets a read-only open through.
    assert!(open(&sb, 9401, "<").contains("No such device or address"));
    let shown = String::from_utf8_lossy(&sb.run(&["doctor", "9400"]).stdout).into_owned();
    assert!(
        shown.contains(&format!(
            "WARN  CT 9400: cgroup keys: {ignored}.* lines do nothing here"
        )),
        "{shown}"
    );

    // lxc.idmap lines alone make the container unprivileged: host root's
    // 0660 node is closed to container root, and doctor knows.
    chmod(&devnodes.join("nvidia0"), 0o660);
    let raw = sb.dir().join("raw-9404");
    write(&raw, format!("{counts}.allow = c 195:* rwm\n"));
    let raw = format!("raw={}", raw.display());
    sb.up_with(9404, true, "nvidia", &["nouvm", "realnodes", "idmap", &raw]);
    let conf = std::fs::read_to_string(sb.dir().join("pve/lxc/9404.conf")).unwrap();
    assert!(!conf.contains("unprivileged"), "{conf}");
    assert!(open(&sb, 9404, "<>").contains("Permission denied"));
    let shown = String::from_utf8_lossy(&sb.run(&["doctor", "9404"]).stdout).into_owned();
    assert!(
        shown.contains(
            "FAIL  CT 9404: device access: container root (a mapped uid) cannot open nvidia0"
        ),
        "{shown}"
    );
}
