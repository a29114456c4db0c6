//! Issue 18.2 and 18.6: only root decides what root runs. A chained
//! hookscript is linked through the container's hookscript (root's alone),
//! not through tags or the description (any user's with
//! `VM.Config.Options`); `disable` never hands a container another's
//! script; the chain runs whatever became of this tool's configuration.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::fake_host::{set_mode, FakeHost};
use crate::support::{expect_exit, text, write};

/// `local` with snippets, and the site's own hookscript: it logs its
/// calls and vetoes a pre-start.
fn site(host: &FakeHost) -> (PathBuf, PathBuf) {
    write(
        &host.path().join("pve/storage.cfg"),
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n",
    );
    let vz = host.path().join("root/var/lib/vz");
    let calls = host.path().join("site-hook.calls");
    write(
        &vz.join("snippets/site-hook"),
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> '{}'\n[ \"$2\" = pre-start ] && exit 3\nexit 0\n",
            calls.display()
        ),
    );
    set_mode(&vz.join("snippets/site-hook"), 0o755);
    (vz, calls)
}

/// `pct set` as a user allowed to edit options would run it.
fn pct(host: &FakeHost, args: &[&str]) {
    let status = std::process::Command::new(host.path().join("bin/pct"))
        .args(args)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", host.path().join("bin").display()),
        )
        .status()
        .unwrap();
    assert!(status.success(), "pct {args:?}");
}

fn conf(host: &FakeHost, vmid: u32) -> String {
    std::fs::read_to_string(host.path().join(format!("pve/lxc/{vmid}.conf"))).unwrap()
}

fn records(host: &FakeHost) -> usize {
    std::fs::read_dir(host.path().join("pve/pve-nvidia-hook/chain"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A record as pve-nvidia-hook 0.2 wrote it (linked by a tag).
fn legacy_record(host: &FakeHost, token: &str, vmid: u32) {
    write(
        &host
            .path()
            .join(format!("pve/pve-nvidia-hook/chain/{token}.json")),
        json!({"chain": "local:snippets/site-hook", "vmid": vmid, "recorded_unix": 1}).to_string(),
    );
}

#[test]
fn a_tag_or_description_edit_neither_switches_a_chain_off_nor_redirects_it() {
    let host = FakeHost::new();
    let (_, calls) = site(&host);
    host.container(181, "hostname: a\nhookscript: local:snippets/site-hook\n");
    let out = host.run(&["enable", "--chain", "181"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    expect_exit(&host.run(&["181", "pre-start"]), 3, "vetoed the start");
    // A user who may edit options: every tag removed, an invalid chain tag
    // put first, a description naming another token.
    pct(&host, &["set", "181", "--delete", "tags"]);
    pct(
        &host,
        &["set", "181", "--tags", "nvidia-chain-000000000000;ml"],
    );
    let edited = format!(
        "#pve-nvidia-hook.000000000000 nvidia-chain-000000000000\n{}",
        conf(&host, 181)
    );
    write(&host.path().join("pve/lxc/181.conf"), edited);
    expect_exit(&host.run(&["181", "pre-start"]), 3, "vetoed the start");
    assert_eq!(
        std::fs::read_to_string(&calls)
            .unwrap()
            .matches("181 pre-start")
            .count(),
        2
    );
}

/// A token in a description (or in another container's tags) keeps no
/// record alive: one no hookscript names is removed once it is old.
#[test]
fn a_description_keeps_no_record_alive() {
    let host = FakeHost::new();
    site(&host);
    legacy_record(&host, "0000000000d5", 183);
    host.container(
        182,
        "#nvidia-chain-0000000000d5 pve-nvidia-hook.0000000000d5\nhostname: b\ntags: nvidia-chain-0000000000d5\n",
    );
    let out = host.run(&["disable", "182"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("removed the stale chain record 0000000000d5 of CT 183"),
        "{}",
        text(&out)
    );
    assert_eq!(records(&host), 0);
}

/// Before 0.3 a copied tag was all it took: `disable` on the container
/// with another's tag gave it that container's script. Now a record made
/// for another vmid is never restored.
#[test]
fn disable_never_restores_another_containers_chain() {
    let host = FakeHost::new();
    site(&host);
    legacy_record(&host, "0000000000e4", 184);
    host.container(
        185,
        "hostname: c\nhookscript: local:snippets/pve-nvidia-hook\ntags: nvidia;nvidia-chain-0000000000e4\n",
    );
    let out = host.run(&["disable", "185"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = conf(&host, 185);
    assert!(!now.contains("hookscript"), "{now}");
    assert!(!now.contains("site-hook"), "{now}");
}

/// Issue 18.6: a configuration of ours that does not load (an unknown key,
/// a file others could write) never lets a start through that the site's
/// script would have vetoed.
#[test]
fn a_broken_configuration_of_ours_still_runs_the_chain() {
    let mut host = FakeHost::new();
    let (_, calls) = site(&host);
    host.container(186, "hostname: d\nhookscript: local:snippets/site-hook\n");
    assert!(host.run(&["enable", "--chain", "186"]).status.success());
    host.set("no_such_key", json!(1));
    let out = host.run(&["186", "pre-start"]);
    expect_exit(&out, 3, "vetoed the start");
    assert!(
        text(&out).contains("unknown field `no_such_key`"),
        "{}",
        text(&out)
    );
    assert!(std::fs::read_to_string(&calls)
        .unwrap()
        .contains("186 pre-start"));
}

/// A container chained by pve-nvidia-hook 0.2 (our plain snippet and a
/// tag) keeps its chain, with a warning, and `enable --chain` moves it to
/// the hookscript under the same token; from then on tags do not matter.
#[test]
fn enable_chain_moves_a_tag_chain_to_the_hookscript() {
    let host = FakeHost::new();
    let (vz, calls) = site(&host);
    legacy_record(&host, "0000000000f6", 187);
    host.container(
        187,
        "hostname: e\nhookscript: local:snippets/pve-nvidia-hook\ntags: nvidia;nvidia-chain-0000000000f6\n",
    );
    let out = host.run(&["187", "pre-start"]);
    expect_exit(&out, 3, "chained through the tag nvidia-chain-0000000000f6");
    let out = host.run(&["enable", "--chain", "187"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = conf(&host, 187);
    assert!(
        now.contains("hookscript: local:snippets/pve-nvidia-hook.0000000000f6"),
        "{now}"
    );
    assert!(!now.contains("nvidia-chain-"), "{now}");
    assert!(Path::new(&vz.join("snippets/pve-nvidia-hook.0000000000f6")).is_file());
    pct(&host, &["set", "187", "--delete", "tags"]);
    expect_exit(&host.run(&["187", "pre-start"]), 3, "vetoed the start");
    assert_eq!(
        std::fs::read_to_string(&calls)
            .unwrap()
            .matches("187 pre-start")
            .count(),
        2
    );
    // disable gives it back its own.
    assert!(host.run(&["disable", "187"]).status.success());
    assert!(conf(&host, 187).contains("hookscript: local:snippets/site-hook"));
}

/// A chained script that cannot be run aborts `pre-start`, as Proxmox
/// aborts a start over a hookscript of its own it cannot run.
#[test]
fn a_chain_that_cannot_be_run_aborts_pre_start() {
    let host = FakeHost::new();
    let (vz, _) = site(&host);
    host.container(188, "hostname: f\nhookscript: local:snippets/site-hook\n");
    assert!(host.run(&["enable", "--chain", "188"]).status.success());
    set_mode(&vz.join("snippets/site-hook"), 0o644);
    expect_exit(&host.run(&["188", "pre-start"]), 1, "is not executable");
    std::fs::remove_file(vz.join("snippets/site-hook")).unwrap();
    expect_exit(&host.run(&["188", "pre-start"]), 1, "does not exist");
    // Other phases only say so.
    expect_exit(&host.run(&["188", "post-stop"]), 0, "does not exist");
}
