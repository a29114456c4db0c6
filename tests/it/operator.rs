//! `enable`, `disable`, chained hookscripts and `doctor`, against the fake
//! host with a fake `pct` that records its arguments and edits the config.

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};

use crate::fake_host::{set_mode, FakeHost, TAGGED};
use crate::support::{expect_exit, text, write};

const SNIPPET: &str = include_str!("../../hooks/pve-nvidia-hook");

/// Proxmox's storage.cfg; `local` is /var/lib/vz, which the fake host
/// keeps under its storage root.
fn with_storage(host: &FakeHost) -> std::path::PathBuf {
    write(
        &host.path().join("pve/storage.cfg"),
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n\nlvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\ndir: isos\n\tpath /srv/isos\n\tcontent iso\n",
    );
    host.path().join("root/var/lib/vz")
}

fn pct_log(host: &FakeHost) -> Vec<String> {
    std::fs::read_to_string(host.path().join("pct.log"))
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn enable_places_snippet_registers_and_tags_idempotently() {
    let host = FakeHost::new();
    let vz = with_storage(&host);
    host.container(160, "hostname: a\ntags: ml\n");
    let out = host.run(&["enable", "160"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snippet = vz.join("snippets/pve-nvidia-hook");
    assert_eq!(std::fs::read_to_string(&snippet).unwrap(), SNIPPET);
    assert_eq!(
        std::fs::metadata(&snippet).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        pct_log(&host),
        ["set 160 --hookscript local:snippets/pve-nvidia-hook --tags ml;nvidia"]
    );
    assert!(
        stdout(&out).contains("takes effect at its next start"),
        "{}",
        text(&out)
    );
    let status = host.status_json(160);
    assert_eq!(status["hookscript"], "local:snippets/pve-nvidia-hook");
    assert_eq!(status["reason"], "tag");

    let again = host.run(&["enable", "160"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        stdout(&again).contains("CT 160: already enabled"),
        "{}",
        text(&again)
    );
    assert_eq!(pct_log(&host).len(), 1, "no second pct call");
}

#[test]
fn enable_dry_run_changes_nothing() {
    let host = FakeHost::new();
    let vz = with_storage(&host);
    host.container(161, "hostname: a\n");
    let out = host.run(&["enable", "--dry-run", "--no-tag", "161"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains(&format!(
            "would write {}/snippets/pve-nvidia-hook (mode 0755)",
            vz.display()
        )),
        "{shown}"
    );
    assert!(
        shown.contains("would run: pct set 161 --hookscript local:snippets/pve-nvidia-hook"),
        "{shown}"
    );
    assert!(!vz.exists());
    assert!(pct_log(&host).is_empty());
}

/// A start needs the file at the volume's path, nothing else
/// (`check_hookscript`): a storage whose content has no snippets holds it;
/// one without a path, or none at all, is refused, naming those that can.
#[test]
fn enable_on_a_storage_without_snippets_content_and_refusals_list_candidates() {
    let host = FakeHost::new();
    with_storage(&host);
    host.container(162, TAGGED);
    for (storage, expected) in [("local-lvm", "no path"), ("nope", "no storage 'nope'")] {
        let out = host.run(&["enable", "--storage", storage, "162"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected) && err.contains("storages that can hold it: local, isos"),
            "{err}"
        );
    }
    assert!(pct_log(&host).is_empty());
    let out = host.run(&["enable", "--storage", "isos", "162"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(host
        .path()
        .join("root/srv/isos/snippets/pve-nvidia-hook")
        .is_file());
    assert_eq!(
        pct_log(&host),
        ["set 162 --hookscript isos:snippets/pve-nvidia-hook"]
    );
}

#[test]
fn an_existing_hookscript_is_kept_only_with_chain_and_restored_by_disable() {
    let host = FakeHost::new();
    let vz = with_storage(&host);
    host.container(163, "hostname: a\nhookscript: local:snippets/site-hook\n");
    let calls = host.path().join("site-hook.calls");
    write(
        &vz.join("snippets/site-hook"),
        format!("#!/bin/sh\necho \"$1 $2\" >> '{}'\n[ \"$2\" = pre-start ] && [ -e '{}' ] && exit 3\nexit 0\n", calls.display(), host.path().join("veto").display()),
    );
    std::fs::set_permissions(
        vz.join("snippets/site-hook"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let refused = host.run(&["enable", "163"]);
    expect_exit(&refused, 1, "--chain");
    assert!(pct_log(&host).is_empty());

    let out = host.run(&["enable", "--chain", "163"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Our snippet under the chain's name: the link is the hookscript.
    let hookscript = host.status_json(163)["hookscript"]
        .as_str()
        .unwrap()
        .to_string();
    let token = hookscript
        .strip_prefix("local:snippets/pve-nvidia-hook.")
        .expect("a chained hookscript")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(vz.join(format!("snippets/pve-nvidia-hook.{token}"))).unwrap(),
        include_str!("../../hooks/pve-nvidia-hook")
    );

    // Our hook calls it first, for every phase, and passes on a pre-start veto.
    for phase in ["pre-start", "post-start", "pre-stop", "post-stop"] {
        assert!(host.run(&["163", phase]).status.success(), "{phase}");
    }
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "163 pre-start\n163 post-start\n163 pre-stop\n163 post-stop\n"
    );
    write(&host.path().join("veto"), "");
    let vetoed = host.run(&["163", "pre-start"]);
    assert_eq!(vetoed.status.code(), Some(3), "{}", text(&vetoed));

    // The record is in the cluster file system, named by the token the
    // container's hookscript carries.
    let record = host
        .path()
        .join(format!("pve/pve-nvidia-hook/chain/{token}.json"));
    assert!(record.is_file());

    let out = host.run(&["disable", "163"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        pct_log(&host).last().unwrap(),
        "set 163 --hookscript local:snippets/site-hook"
    );
    assert_eq!(
        host.status_json(163)["hookscript"],
        "local:snippets/site-hook"
    );
    assert!(!record.exists());
    assert!(
        !vz.join(format!("snippets/pve-nvidia-hook.{token}"))
            .exists(),
        "this node's snippet under the chain's name went with its record"
    );
}

/// Issue 11.2: a vmid reused by a new container never inherits the chain
/// of the destroyed one, and the stale record is cleared.
#[test]
fn a_reused_vmid_never_runs_or_restores_another_containers_chain() {
    let host = FakeHost::new();
    let vz = with_storage(&host);
    host.container(169, "hostname: old\nhookscript: local:snippets/site-hook\n");
    let calls = host.path().join("site-hook.calls");
    write(
        &vz.join("snippets/site-hook"),
        format!("#!/bin/sh\necho \"$1 $2\" >> '{}'\n", calls.display()),
    );
    std::fs::set_permissions(
        vz.join("snippets/site-hook"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(host.run(&["enable", "--chain", "169"]).status.success());
    // Destroyed, and a new container 169 created, the hook set by hand.
    write(
        &host.path().join("pve/lxc/169.conf"),
        "hostname: new\ntags: nvidia\nhookscript: local:snippets/pve-nvidia-hook\n",
    );
    assert!(host.run(&["169", "pre-start"]).status.success());
    assert!(
        !calls.exists(),
        "the old container's hookscript ran for the new one"
    );
    // A record made minutes ago may belong to an `enable` on another node
    // that has not tagged its container yet: kept.
    assert!(host.run(&["disable", "169"]).status.success());
    assert_eq!(chain_records(&host).len(), 1);
    age_chain_records(&host);
    let out = host.run(&["disable", "169"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("removed the stale chain record")
            && stdout(&out).contains("of CT 169 (local:snippets/site-hook)"),
        "{}",
        text(&out)
    );
    assert!(chain_records(&host).is_empty());
}

fn chain_records(host: &FakeHost) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(host.path().join("pve/pve-nvidia-hook/chain"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Makes every chain record an hour old.
fn age_chain_records(host: &FakeHost) {
    for path in chain_records(host) {
        let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let then = record["recorded_unix"].as_u64().unwrap() - 3600;
        record["recorded_unix"] = then.into();
        write(&path, record.to_string());
    }
}

/// A clone, or a restore under a new vmid, carries another container's
/// chained hookscript: that container's script never runs for it (its
/// start goes on), `disable` never gives it that script, and `enable
/// --chain` chains the script for it too. A hookscript that names a chain
/// whose record is gone aborts `pre-start`, as Proxmox would.
#[test]
fn a_chain_runs_only_for_the_container_it_was_made_for() {
    let host = FakeHost::new();
    let vz = with_storage(&host);
    host.container(171, "hostname: a\nhookscript: local:snippets/site-hook\n");
    let calls = host.path().join("site-hook.calls");
    write(
        &vz.join("snippets/site-hook"),
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> '{}'\nexit 3\n",
            calls.display()
        ),
    );
    set_mode(&vz.join("snippets/site-hook"), 0o755);
    assert!(host.run(&["enable", "--chain", "171"]).status.success());
    let conf = std::fs::read_to_string(host.path().join("pve/lxc/171.conf")).unwrap();
    // The clone: the same config under another vmid.
    host.container(172, &conf);
    let out = host.run(&["172", "pre-start"]);
    expect_exit(&out, 0, "is CT 171's (local:snippets/site-hook");
    assert!(!calls.exists(), "CT 171's hookscript ran for CT 172");
    let doctor = host.run(&["doctor", "172"]);
    assert!(
        stdout(&doctor)
            .contains("FAIL  CT 172: chained hook: the chain its hookscript names is CT 171's"),
        "{}",
        text(&doctor)
    );
    // Its own container still gets it, veto included.
    expect_exit(&host.run(&["171", "pre-start"]), 3, "vetoed the start");
    // disable on the clone does not give it CT 171's script.
    let out = host.run(&["disable", "--dry-run", "172"]);
    assert!(
        stdout(&out).contains("would run: pct set 172 --delete hookscript"),
        "{}",
        text(&out)
    );
    // The clone chains it for itself, as the log line says.
    let out = host.run(&["enable", "--chain", "172"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    expect_exit(&host.run(&["172", "pre-start"]), 3, "vetoed the start");
    assert!(std::fs::read_to_string(&calls)
        .unwrap()
        .contains("172 pre-start"));
    assert_ne!(
        host.status_json(171)["hookscript"],
        host.status_json(172)["hookscript"],
        "a record of its own"
    );
    // The records gone: the start is aborted (the hookscript names a chain
    // that cannot be run), as Proxmox aborts it for a hookscript it cannot run.
    for path in chain_records(&host) {
        std::fs::remove_file(path).unwrap();
    }
    expect_exit(&host.run(&["171", "pre-start"]), 1, "has no record");
    expect_exit(&host.run(&["171", "post-start"]), 0, "has no record");
}

/// `disable` on one node of a cluster never clears the chain record of a
/// container on another node (its config is under nodes/<other>/lxc, which
/// this node's /etc/pve/lxc does not show), nor one that only a snapshot
/// names; a record no config names is cleared.
#[test]
fn chain_records_of_other_nodes_and_snapshots_are_kept() {
    let host = FakeHost::new();
    with_storage(&host);
    let pve = host.path().join("pve");
    for node in ["a", "b"] {
        std::fs::create_dir_all(pve.join(format!("nodes/{node}/lxc"))).unwrap();
    }
    std::os::unix::fs::symlink("nodes/a", pve.join("local")).unwrap();
    std::os::unix::fs::symlink("nodes/a/lxc", pve.join("lxc")).unwrap();
    let record = |token: &str, vmid: u32| {
        write(
            &pve.join(format!("pve-nvidia-hook/chain/{token}.json")),
            json!({"chain": "local:snippets/site-hook", "vmid": vmid, "recorded_unix": 1})
                .to_string(),
        );
    };
    record("0000000000b1", 173);
    record("0000000000a2", 174);
    record("0000000000dd", 175);
    write(
        &pve.join("nodes/b/lxc/173.conf"),
        "hostname: on-b\nhookscript: local:snippets/pve-nvidia-hook.0000000000b1\n",
    );
    host.container(
        174,
        "hostname: a\ntags: nvidia\n\n[before]\nhookscript: local:snippets/pve-nvidia-hook.0000000000a2\n",
    );
    let out = host.run(&["disable", "174"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut left: Vec<String> = chain_records(&host)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["0000000000a2.json", "0000000000b1.json"],
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("removed the stale chain record 0000000000dd of CT 175"));
}

#[test]
fn disable_without_chain_deletes_the_hookscript() {
    let host = FakeHost::new();
    with_storage(&host);
    host.container(164, TAGGED);
    assert!(host.run(&["enable", "164"]).status.success());
    let out = host.run(&["disable", "164"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        pct_log(&host).last().unwrap(),
        "set 164 --delete hookscript"
    );
    assert_eq!(host.status_json(164)["hookscript"], Value::Null);
    assert!(host.run(&["disable", "164"]).status.success(), "idempotent");
}

#[test]
fn enable_now_installs_in_a_running_container() {
    let host = FakeHost::new();
    with_storage(&host);
    host.container(165, "hostname: a\n");
    let out = host.run(&["enable", "--now", "165"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(host.installer_runs(165), 1);
    assert_eq!(host.status_json(165)["state"], "up-to-date");
}

#[test]
fn status_table_marks_unregistered_hooks() {
    let host = FakeHost::new();
    with_storage(&host);
    host.container(166, TAGGED);
    host.container(167, "hostname: web\n");
    let out = host.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = stdout(&out);
    let row = |vmid: &str| {
        table
            .lines()
            .find(|l| l.starts_with(vmid))
            .unwrap()
            .to_string()
    };
    assert!(row("166").ends_with("NOT REGISTERED"), "{table}");
    assert!(row("167").ends_with("no"), "{table}");
    assert!(table.lines().next().unwrap().split_whitespace().eq([
        "VMID",
        "REQUESTED",
        "RUNNING",
        "HOST",
        "CONTAINER",
        "STATE",
        "HOOK"
    ]));
}

#[test]
fn doctor_without_a_host_driver_fails_with_fixes() {
    let host = FakeHost::new();
    with_storage(&host);
    host.container(168, TAGGED);
    std::fs::remove_file(host.path().join("sys/module/nvidia/version")).unwrap();
    let out = host.run(&["doctor", "168"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("FAIL  host: kernel module: no NVIDIA kernel module loaded"),
        "{shown}"
    );
    assert!(
        shown.contains("FAIL  CT 168: hook: no hookscript registered"),
        "{shown}"
    );
    assert!(shown.contains("fix: pve-nvidia-hook enable 168"), "{shown}");
    let json = host.run(&["doctor", "--json", "168"]);
    let checks: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .all(|c| ["ok", "warn", "fail"].contains(&c["level"].as_str().unwrap())));
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["scope"] == "CT 168" && c["check"] == "hook" && c["level"] == "fail"));
}

/// Issue 12.1 and 12.10: doctor reads the whole installation (every file
/// the record lists, by CRC) and says what the driver offers; it says ahead
/// of time whether the runfile for the host's version will be accepted.
#[test]
fn doctor_checks_the_whole_installation_and_the_runfiles_digest() {
    let mut host = FakeHost::new();
    with_storage(&host);
    let ct = host.container(170, TAGGED);
    assert!(host.run(&["170", "post-start"]).status.success());
    let shown = stdout(&host.run(&["doctor", "170"]));
    assert!(
        shown.contains("OK    CT 170: installation: every file the installer recorded is in place; CUDA; no NVENC"),
        "{shown}"
    );
    assert!(
        shown.contains("OK    CT 170: runfile:") && shown.contains("is the admin's own file"),
        "{shown}"
    );
    // A library changed in place: the start-time check (names and kinds)
    // cannot see it; doctor and verify do.
    let lib = ct.join(format!(
        "usr/lib/x86_64-linux-gnu/libcuda.so.{}",
        crate::fake_host::V1
    ));
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&lib, bytes).unwrap();
    let out = host.run(&["doctor", "170"]);
    assert!(
        stdout(&out).contains(&format!(
            "FAIL  CT 170: installation: /usr/lib/x86_64-linux-gnu/libcuda.so.{} changed since it was installed",
            crate::fake_host::V1
        )),
        "{}",
        text(&out)
    );
    expect_exit(
        &host.run(&["verify", "170"]),
        1,
        "changed since it was installed",
    );

    host.set(
        "runfile_url",
        serde_json::json!("http://127.0.0.1:9/NVIDIA-Linux-x86_64-{version}.run"),
    );
    let shown = stdout(&host.run(&["doctor", "170"]));
    assert!(
        shown.contains("FAIL  CT 170: runfile: plain http without a pinned digest: the install of 550.54.14 will be refused"),
        "{shown}"
    );
    assert!(
        shown.contains("fix: \"runfile_sha256\": {\"550.54.14\": \"<the sha256 from NVIDIA's download page>\"}"),
        "{shown}"
    );
    host.set(
        "runfile_sha256",
        serde_json::json!({"550.54.14": "ab".repeat(32)}),
    );
    assert!(stdout(&host.run(&["doctor", "170"]))
        .contains("OK    CT 170: runfile: the digest of 550.54.14 is pinned"));
}
