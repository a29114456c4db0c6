//! Issue 15.6: an admin's first contact with the command line: help that
//! starts with the commands and says what a VMID is, Proxmox's
//! `--output-format`, `status --check` for monitoring, `disable --untag`,
//! and a container on another node named with its node.

use serde_json::Value;

use crate::fake_host::{FakeHost, TAGGED};
use crate::support::{expect_exit, text, write};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_puts_the_commands_first_and_says_what_a_vmid_is() {
    let host = FakeHost::new();
    let help = stdout(&host.run(&["--help"]));
    let usage = help
        .find("Usage: pve-nvidia-hook [OPTIONS] <COMMAND>\n")
        .expect(&help);
    let hook = help.find("pve-nvidia-hook <VMID> <PHASE>").expect(&help);
    let commands = help.find("Commands:").expect(&help);
    let hook_mode = help.find("Hookscript mode:").expect(&help);
    assert!(usage < hook && commands < hook_mode, "{help}");
    for command in ["install", "verify", "status", "enable", "disable", "doctor"] {
        let help = stdout(&host.run(&[command, "--help"]));
        assert!(
            help.contains("<VMID>") && help.contains("on this node, as in `pct list`")
                || help.contains("IDs on this node as in `pct list`"),
            "{command}: {help}"
        );
    }
}

#[test]
fn output_format_as_proxmoxs_tools_take_it() {
    let host = FakeHost::new();
    host.container(140, TAGGED);
    // What each row or check is (doctor measures free space each time).
    let shape = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| format!("{} {} {}", i["vmid"], i["scope"], i["check"]))
            .collect()
    };
    for command in ["status", "doctor"] {
        let compact = stdout(&host.run(&[command, "--output-format", "json", "140"]));
        assert_eq!(compact.lines().count(), 1, "{compact}");
        let compact: Value = serde_json::from_str(&compact).unwrap();
        let pretty = stdout(&host.run(&[command, "--output-format", "json-pretty", "140"]));
        assert!(pretty.lines().count() > 1);
        let pretty: Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(shape(&pretty), shape(&compact));
        let alias = stdout(&host.run(&[command, "--json", "140"]));
        assert!(alias.lines().count() > 1, "--json is json-pretty");
        assert_eq!(
            shape(&serde_json::from_str(&alias).unwrap()),
            shape(&compact)
        );
        let shown = stdout(&host.run(&[command, "--output-format", "text", "140"]));
        assert!(serde_json::from_str::<Value>(&shown).is_err(), "{shown}");
        let both = host.run(&[command, "--json", "--output-format", "text", "140"]);
        assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    }
}

#[test]
fn status_check_exits_1_when_a_gpu_container_needs_a_look() {
    let mut host = FakeHost::new();
    host.container(141, TAGGED);
    host.container(142, "hostname: web\n");
    let out = host.run(&["status", "--check"]);
    expect_exit(&out, 1, "check: CT 141 not registered");
    assert!(
        stdout(&out).contains("NOT REGISTERED"),
        "the table is printed all the same"
    );
    assert!(host.run(&["status"]).status.success(), "without --check, 0");
    assert!(host.run(&["enable", "141"]).status.success());
    let out = host.run(&["status", "--check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "missing is what the next start installs: {}",
        text(&out)
    );
    host.runfile(crate::fake_host::V1, true);
    host.set("runfile_sha256", serde_json::json!({}));
    let install = host.run(&["install", "141"]);
    assert_eq!(install.status.code(), Some(1), "{}", text(&install));
    let out = host.run(&["status", "--check", "141"]);
    expect_exit(&out, 1, "check: CT 141 failed");
}

#[test]
fn disable_untag_removes_the_tag_enable_added() {
    let host = FakeHost::new();
    host.container(143, "hostname: a\ntags: ml\n");
    host.container(144, "hostname: b\n");
    for vmid in ["143", "144"] {
        assert!(host.run(&["enable", vmid]).status.success());
    }
    let out = host.run(&["disable", "--untag", "143", "144"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::read_to_string(host.path().join("pct.log")).unwrap();
    assert!(
        log.contains("set 143 --delete hookscript --tags ml\n"),
        "{log}"
    );
    assert!(
        log.contains("set 144 --delete hookscript --delete tags\n"),
        "{log}"
    );
    let conf = std::fs::read_to_string(host.path().join("pve/lxc/143.conf")).unwrap();
    assert!(
        conf.contains("tags: ml\n") && !conf.contains("nvidia"),
        "{conf}"
    );
    // Without --untag the tag stays, and the message says how to remove it.
    assert!(host.run(&["enable", "143"]).status.success());
    let out = host.run(&["disable", "143"]);
    assert!(
        stdout(&out).contains("tag nvidia left in place"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("--untag removes it"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_container_on_another_node_is_named_with_its_node() {
    let host = FakeHost::new();
    host.node_a_of_two();
    let pve = host.path().join("pve");
    write(&pve.join("nodes/b/lxc/102.conf"), TAGGED);
    write(&pve.join("nodes/b/qemu-server/103.conf"), "name: vm\n");
    for args in [
        &["enable", "102"][..],
        &["disable", "102"],
        &["install", "102"],
        &["verify", "102"],
        &["status", "102"],
    ] {
        let out = host.run(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("CT 102 is on node b: run this there") && !err.contains("CT 102: CT 102"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = host.run(&["doctor", "102"]);
    assert!(
        stdout(&out).contains("FAIL  CT 102: config: CT 102 is on node b: run this there"),
        "{}",
        text(&out)
    );
    let out = host.run(&["enable", "103"]);
    expect_exit(
        &out,
        2,
        "103 is a virtual machine on node b, not a container",
    );
    let out = host.run(&["enable", "104"]);
    expect_exit(&out, 2, "no container 104 on this node (a)");
}
