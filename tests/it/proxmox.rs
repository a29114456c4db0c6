//! What Proxmox itself does, followed (issue 11), against the fake host and
//! its `pct` stand-in that makes Proxmox's checks: chained hookscripts run
//! as `exec_hookscript` runs them, storage.cfg as pve-storage reads it, tags
//! as `pct set` writes them, config sections.

use crate::fake_host::{set_mode, FakeHost, TAGGED};
use crate::support::{expect_exit, mknod, text, write};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pct_log(host: &FakeHost) -> Vec<String> {
    std::fs::read_to_string(host.path().join("pct.log"))
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// Snippets of `local` (/var/lib/vz under the fake host's storage root).
fn snippets(host: &FakeHost) -> std::path::PathBuf {
    host.path().join("root/var/lib/vz/snippets")
}

fn site_hook(host: &FakeHost, body: &str) -> std::path::PathBuf {
    let path = snippets(host).join("site-hook");
    write(&path, format!("#!/bin/sh\n{body}\n"));
    set_mode(&path, 0o755);
    path
}

/// Issue 11.3: a chained hookscript runs as Proxmox runs one: the caller's
/// environment plus LC_ALL=C; one that is missing or not executable vetoes
/// pre-start as Proxmox would have; one Proxmox would run is run (as
/// Proxmox checks it: `-f` and `-x`, nothing stricter).
#[test]
fn a_chained_hookscript_runs_as_proxmox_runs_it_or_vetoes_like_proxmox() {
    let host = FakeHost::new();
    host.container(200, "hostname: a\nhookscript: local:snippets/site-hook\n");
    let seen = host.path().join("site-hook.env");
    let script = site_hook(
        &host,
        &format!(
            "env > '{}'\necho \"$1 $2\" >> '{}'",
            seen.display(),
            seen.display()
        ),
    );
    assert!(host.run(&["enable", "--chain", "200"]).status.success());
    let out = host
        .command(&["200", "pre-start"])
        .env("PVE_LOG_ID", "pve-guests")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(
        env.contains("PVE_LOG_ID=pve-guests"),
        "the caller's environment: {env}"
    );
    assert!(env.lines().any(|l| l == "LC_ALL=C"), "{env}");
    assert!(env.ends_with("200 pre-start\n"), "{env}");

    set_mode(&script, 0o777);
    expect_exit(&host.run(&["200", "pre-start"]), 0, "");
    assert!(
        std::fs::read_to_string(&seen)
            .unwrap()
            .ends_with("200 pre-start\n"),
        "run, as Proxmox would run it"
    );
    for (break_it, expected) in [
        (
            "mode 0644",
            "script 'local:snippets/site-hook' is not executable",
        ),
        (
            "missing",
            "script 'local:snippets/site-hook' does not exist",
        ),
    ] {
        match break_it {
            "mode 0644" => set_mode(&script, 0o644),
            _ => std::fs::remove_file(&script).unwrap(),
        }
        let vetoed = host.run(&["200", "pre-start"]);
        expect_exit(&vetoed, 1, expected);
        assert!(
            String::from_utf8_lossy(&vetoed.stderr)
                .contains("the start is aborted, as Proxmox would have"),
            "{}",
            text(&vetoed)
        );
        // Other phases only warn, as Proxmox does.
        expect_exit(&host.run(&["200", "post-stop"]), 0, expected);
    }
}

/// Issue 11.4: storage.cfg as Proxmox reads it: `local` with snippets
/// exists without the file; `content-dirs` moves the snippets folder; a
/// storage that is disabled, not on this node or not mounted is no place to
/// write.
#[test]
fn storages_as_pve_storage_reads_them() {
    let host = FakeHost::new();
    host.container(201, TAGGED);
    // No storage.cfg at all: Proxmox's own `local`, snippets included.
    let out = host.run(&["enable", "201"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(snippets(&host).join("pve-nvidia-hook").is_file());

    host.container(202, TAGGED);
    write(
        &host.path().join("pve/storage.cfg"),
        "dir: hooks\n\tpath /srv/hooks\n\tcontent iso,snippets\n\tcontent-dirs snippets=pve/snips\n\n\
         dir: off\n\tpath /srv/off\n\tcontent snippets\n\tdisable\n\n\
         dir: elsewhere\n\tpath /srv/elsewhere\n\tcontent snippets\n\tnodes some-other-node\n\n\
         dir: usb\n\tpath /mnt/usb\n\tcontent snippets\n\tis_mountpoint yes\n\n\
         dir: isos\n\tpath /srv/isos\n\tcontent iso,vztmpl\n",
    );
    let out = host.run(&["enable", "--storage", "hooks", "202"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(host
        .path()
        .join("root/srv/hooks/pve/snips/pve-nvidia-hook")
        .is_file());
    assert!(pct_log(&host)
        .last()
        .unwrap()
        .contains("--hookscript hooks:snippets/pve-nvidia-hook"));
    for (storage, expected) in [
        ("off", "storage 'off' is disabled on this node"),
        (
            "elsewhere",
            "storage 'elsewhere' is not available on this node",
        ),
        ("usb", "storage 'usb' is not mounted on this node"),
    ] {
        std::fs::create_dir_all(host.path().join("root/mnt/usb")).unwrap();
        let out = host.run(&["enable", "--storage", storage, "202"]);
        expect_exit(&out, 2, expected);
    }
}

/// Issue 11.5: `pct set --tags` replaces every tag: enable passes the
/// container's own, as written, so a cluster whose tag-style is
/// case-sensitive keeps their case; doctor's fix merges too.
#[test]
fn tags_are_merged_and_keep_their_case_where_the_cluster_keeps_it() {
    let host = FakeHost::new();
    host.container(203, "hostname: a\ntags: ML;Prod\n");
    write(
        &host.path().join("pve/datacenter.cfg"),
        "tag-style: case-sensitive=1\n",
    );
    assert!(host.run(&["enable", "203"]).status.success());
    let conf = std::fs::read_to_string(host.path().join("pve/lxc/203.conf")).unwrap();
    assert!(conf.contains("tags: ML;Prod;nvidia"), "{conf}");

    host.container(204, "hostname: b\ntags: ML;Prod\n");
    write(&host.path().join("pve/datacenter.cfg"), "keyboard: en-us\n");
    assert!(host.run(&["enable", "204"]).status.success());
    let conf = std::fs::read_to_string(host.path().join("pve/lxc/204.conf")).unwrap();
    assert!(
        conf.contains("tags: ml;nvidia;prod"),
        "Proxmox's default: {conf}"
    );

    host.container(205, "hostname: c\ntags: web;db\n");
    let out = host.run(&["doctor", "205"]);
    assert!(
        stdout(&out).contains("fix: pct set 205 --tags 'web;db;nvidia'"),
        "{}",
        text(&out)
    );
}

/// Issue 11.6: a fix that adds a line to a container's config says where:
/// above its first [section], or the line is not part of the current config.
#[test]
#[ignore = "needs root (mknod); `make test` as root runs it"]
fn config_fixes_say_to_stay_above_the_sections() {
    let host = FakeHost::new();
    mknod(&host.path().join("dev/nvidia0"), 0o600, 195, 0);
    host.container(
        206,
        "tags: nvidia\nlxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n\n[before-upgrade]\ntags: old\n",
    );
    let out = host.run(&["doctor", "206"]);
    assert!(
        stdout(&out).contains("add to /etc/pve/lxc/206.conf above its first [section] line"),
        "{}",
        text(&out)
    );
}

/// Issue 15.1: every storage.cfg the Proxmox installer writes (its own
/// texts, tests/data/installer-storage.cfg): `local` has no snippets in its
/// content, and on BTRFS it is disabled, yet Proxmox runs a hookscript from
/// it (`check_hookscript`: the volume's path, `-f`, `-x`). `enable` places
/// the snippet and registers local:snippets/pve-nvidia-hook; on a cluster,
/// where Proxmox's API lists none of local's snippets, the other nodes are
/// said to be unverified, with the `pvesm set` that makes them checkable,
/// never missing; doctor agrees.
#[test]
fn enable_works_on_every_storage_cfg_the_installer_writes() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/installer-storage.cfg");
    let mut layouts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    layouts.sort();
    assert_eq!(layouts.len(), 8);
    for layout in layouts {
        let cfg = std::fs::read_to_string(&layout).unwrap();
        let name = layout.file_stem().unwrap().to_string_lossy().into_owned();
        let content = cfg
            .lines()
            .nth(2)
            .unwrap()
            .trim()
            .strip_prefix("content ")
            .unwrap();
        for cluster in [false, true] {
            let host = FakeHost::new();
            if cluster {
                host.node_a_of_two();
            }
            write(&host.path().join("pve/storage.cfg"), &cfg);
            host.container(101, "arch: amd64\nhostname: gpu\nostype: debian\n");
            let out = host.run(&["enable", "101"]);
            assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
            assert!(snippets(&host).join("pve-nvidia-hook").is_file(), "{name}");
            assert_eq!(
                pct_log(&host),
                ["set 101 --hookscript local:snippets/pve-nvidia-hook --tags nvidia"],
                "{name}"
            );
            let mut fix = format!("pvesm set local --content {content},snippets");
            if name.ends_with("btrfs") {
                fix.push_str(" --delete disable");
            }
            let said = stdout(&out);
            let doctor = stdout(&host.run(&["doctor", "101"]));
            if cluster {
                assert!(
                    said.contains(&format!("note: local:snippets/pve-nvidia-hook is unverified on b: Proxmox's API lists no snippets of storage 'local' (its content, {content}, has no snippets"))
                        && said.contains(&format!("to let pve-nvidia-hook check it: {fix}\n")),
                    "{name}: {said}"
                );
                assert!(
                    doctor.contains(
                        "WARN  CT 101: cluster: local:snippets/pve-nvidia-hook is unverified on b"
                    ) && doctor.contains(&format!("to let pve-nvidia-hook check it: {fix}\n")),
                    "{name}: {doctor}"
                );
            } else {
                assert!(!said.contains("unverified"), "{name}: {said}");
                assert!(!doctor.contains("cluster:"), "{name}: {doctor}");
            }
            assert!(
                doctor.contains("OK    CT 101: hook: local:snippets/pve-nvidia-hook ("),
                "{name}: {doctor}"
            );
        }
    }
}
