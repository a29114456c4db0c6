//! Faults, bad input and hostile containers, against the fake host: the hook
//! never hangs, never says "up to date" when it is not, never reads or
//! writes outside a container's root, never follows a planted symlink on the
//! host, and loses nothing when it is interrupted. (Real-container faults are
//! in e2e*.rs.)

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fake_host::{cached_files, set_mode, FakeHost, TAGGED, V1};
use crate::support::{self, expect_exit, text, write, FileServer};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A record far larger than any the installer writes is read bounded, and
/// moved aside before the installer runs (it would map it whole, its size
/// in an int: backup.c), with the folder of backups it names.
#[test]
fn huge_garbled_installer_record_is_read_bounded_and_moved_aside() {
    let host = FakeHost::new();
    let ct = host.container(130, TAGGED);
    let record = ct.join("var/lib/nvidia/log");
    write(&record, "\u{0}\u{1}garbage that is no version\n");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&record)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let status = host.status_json(130);
    assert_eq!(status["state"], "mismatch");
    assert!(
        status["detail"]
            .as_str()
            .unwrap()
            .contains("/var/lib/nvidia/log"),
        "{status}"
    );
    let out = host.run(&["130", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "/var/lib/nvidia/log has 1073741824 bytes, more than any record the installer writes"
        ) && stderr(&out).contains("was moved aside to /var/lib/nvidia.unreadable-"),
        "{}",
        text(&out)
    );
    let moved: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mv -- /var/lib/nvidia /var/lib/nvidia.unreadable-"))
        .collect();
    assert_eq!(moved.len(), 1, "{:?}", host.calls());
    let aside = ct.join(moved[0].rsplit(' ').next().unwrap().trim_start_matches('/'));
    assert_eq!(std::fs::metadata(aside.join("log")).unwrap().len(), 1 << 30);
    assert!(std::fs::metadata(&record).unwrap().len() < 4096);
    assert_eq!(host.status_json(130)["state"], "up-to-date");
    // Recorded with the result: status says what was done.
    let detail = host.status_json(130)["detail"].to_string();
    assert!(detail.contains("moved aside"), "{detail}");
}

#[test]
fn planted_symlinks_never_lead_the_host_outside_the_container() {
    let host = FakeHost::new();
    let ct = host.container(131, TAGGED);
    // A host folder that looks like a perfect installation of the host's version.
    let bait = host.path().join("host-side");
    write(&bait.join("log"), format!("1.0-5505414 ({V1})\n"));
    write(&bait.join(format!("libnvidia-ml.so.{V1}")), "");
    std::fs::create_dir_all(ct.join("var/lib")).unwrap();
    symlink(&bait, ct.join("var/lib/nvidia")).unwrap();
    std::fs::create_dir_all(ct.join("usr/lib")).unwrap();
    symlink(&bait, ct.join("usr/lib/x86_64-linux-gnu")).unwrap();
    write(&ct.join("usr/bin/nvidia-smi"), V1);
    let status = host.status_json(131);
    assert_ne!(
        status["state"], "up-to-date",
        "the host's files were read as the container's: {status}"
    );
    // The fake installer writes from the host side, so the container's own
    // library folder goes back to normal before the install (a real one
    // would write through the container's symlink, inside it).
    std::fs::remove_file(ct.join("usr/lib/x86_64-linux-gnu")).unwrap();
    let out = host.run(&["131", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        bait.join("log").is_file(),
        "cleanup inside the container never touched the host folder"
    );
    assert_eq!(host.status_json(131)["state"], "up-to-date");
}

#[test]
fn nvidia_smi_printing_junk_or_hanging_is_an_error_within_the_limit() {
    let mut host = FakeHost::new();
    host.set("command_timeout_secs", json!(2));
    let ct = host.container(132, TAGGED);
    assert!(host.run(&["132", "post-start"]).status.success());
    write(&ct.join("smi-mode"), "junk");
    let junk = host.run(&["verify", "132"]);
    expect_exit(&junk, 1, "not an NVIDIA driver version");
    assert!(
        stderr(&junk).len() < 4096,
        "bounded: {} bytes",
        stderr(&junk).len()
    );
    write(&ct.join("smi-mode"), "hang");
    let hang = host.run(&["verify", "132"]);
    expect_exit(&hang, 1, "timed out");
}

#[test]
fn hanging_installer_is_killed_at_its_limit() {
    let mut host = FakeHost::new();
    host.set("installer_timeout_secs", json!(2));
    host.container(133, TAGGED);
    host.slow_runfile(V1, 1000);
    let out = host.run(&["install", "133"]);
    expect_exit(&out, 1, "timed out and was killed");
    assert_eq!(
        std::fs::read_dir(host.ct(133).join("var/tmp"))
            .unwrap()
            .count(),
        0,
        "runfile removed"
    );
}

#[test]
fn writable_cache_is_refused() {
    let host = FakeHost::new();
    host.container(134, TAGGED);
    std::fs::create_dir_all(host.path().join("cache")).unwrap();
    set_mode(&host.path().join("cache"), 0o777);
    let server = FileServer::start(&host.path().join("runfiles"));
    let mut host = host;
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    host.set(
        "runfile_sha256",
        json!(support::sha256_hex(
            &host
                .path()
                .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run"))
        )),
    );
    let out = host.run(&["install", "134"]);
    expect_exit(&out, 1, "chmod go-w");
    assert!(host.calls().is_empty());
    assert_eq!(server.count(&format!("NVIDIA-Linux-x86_64-{V1}.run")), 0);
}

#[test]
fn planted_symlinks_at_lock_and_log_files_are_not_followed() {
    let mut host = FakeHost::new();
    host.container(135, TAGGED);
    let victim = host.path().join("victim");
    std::fs::create_dir_all(host.path().join("lock")).unwrap();
    symlink(&victim, host.path().join("lock/135.lock")).unwrap();
    let out = host.run(&["install", "135"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!victim.exists(), "the lock symlink was followed");

    host.container(136, TAGGED);
    host.set("background", json!(true));
    std::fs::create_dir_all(host.path().join("log")).unwrap();
    symlink(&victim, host.path().join("log/136.log")).unwrap();
    let out = host.run(&["136", "post-start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!victim.exists(), "the log symlink was followed");
}

#[test]
fn children_get_a_clean_environment_and_a_fixed_path() {
    let host = FakeHost::new();
    host.container(137, TAGGED);
    let out = host
        .command(&["137", "post-start"])
        .env("LD_LIBRARY_PATH", "/nonexistent/evil")
        .env("SECRET_TOKEN", "hunter2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let env = std::fs::read_to_string(host.path().join("env.log")).unwrap();
    assert!(
        !env.contains("LD_LIBRARY_PATH") && !env.contains("SECRET_TOKEN"),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|l| l == "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{env}"
    );
}

#[test]
fn leftovers_of_a_reboot_or_sigkill_never_read_as_installing() {
    let host = FakeHost::new();
    host.container(138, TAGGED);
    write(&host.path().join("lock/138.lock"), "");
    write(
        &host.path().join("state/138.result.json"),
        r#"{"host_version": "535.104.05", "ok": false, "message": "old", "finished_unix": 1}"#,
    );
    assert_eq!(host.status_json(138)["state"], "missing");
    assert!(host.run(&["138", "post-start"]).status.success());
    assert_eq!(host.status_json(138)["state"], "up-to-date");
}

#[test]
fn sigkill_in_the_middle_then_the_next_start_retries() {
    let host = FakeHost::new();
    host.container(139, TAGGED);
    host.slow_runfile(V1, 3);
    let mut child = host
        .command(&["install", "139"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !host
        .calls()
        .iter()
        .any(|c| c.contains("--no-kernel-module"))
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host.status_json(139)["state"], "installing");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(
        host.status_json(139)["state"],
        "installing",
        "the lock died with its holder"
    );
    // The killed install's installer (3 s, in a session of its own) runs
    // out before the retry, as an orphan would on a host.
    std::thread::sleep(Duration::from_secs(3));
    host.runfile(V1, false);
    let out = host.run(&["139", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.status_json(139)["state"], "up-to-date");
}

#[test]
fn download_faults_are_retried_then_reported_and_leave_no_partial_file() {
    let mut host = FakeHost::new();
    host.container(140, TAGGED);
    host.set("download_timeout_secs", json!(1));
    let server = FileServer::start(&host.path().join("runfiles"));
    let digest = support::sha256_hex(
        &host
            .path()
            .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run")),
    );
    host.set("runfile_sha256", json!(digest));
    for (fault, expected) in [
        ("truncate", "closed before all bytes"),
        ("500", "HTTP 500"),
        ("hang", "after 3 attempts"),
    ] {
        host.set(
            "runfile_url",
            json!(server.url(&format!(
                "fault/{fault}/NVIDIA-Linux-x86_64-{{version}}.run"
            ))),
        );
        let out = host.run(&["install", "140"]);
        assert_eq!(out.status.code(), Some(1), "{fault}: {}", text(&out));
        assert!(stderr(&out).contains(expected), "{fault}: {}", text(&out));
        assert_eq!(
            server.count(&format!("fault/{fault}/NVIDIA-Linux-x86_64-{V1}.run")),
            3,
            "{fault}: bounded retries"
        );
        let cached = cached_files(&host.path().join("cache"));
        assert!(cached.is_empty(), "{fault}: {cached:?}");
    }
    assert!(host.calls().is_empty());
}

#[test]
fn twenty_hooks_for_ten_containers_at_once() {
    let host = FakeHost::new();
    let vmids: Vec<u32> = (141..151).collect();
    for &v in &vmids {
        host.container(v, TAGGED);
    }
    let host = &host;
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = vmids
            .iter()
            .chain(vmids.iter())
            .map(|&v| s.spawn(move || host.run(&[&v.to_string(), "post-start"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outputs {
        assert_eq!(out.status.code(), Some(0), "{}", text(out));
        assert!(!stderr(out).contains("error"), "{}", text(out));
    }
    for &v in &vmids {
        assert_eq!(host.installer_runs(v), 1, "CT {v}");
    }
}

#[test]
fn bad_container_configs() {
    let host = FakeHost::new();
    host.container(151, TAGGED);
    write(
        &host.path().join("pve/lxc/151.conf"),
        format!("tags: nvidia\ndescription: {}\n", "x".repeat(10 << 20)),
    );
    let out = host.run(&["151", "post-start"]);
    expect_exit(&out, 1, "larger than");
    assert!(host.calls().is_empty());

    host.container(152, "");
    write(
        &host.path().join("pve/lxc/152.conf"),
        b"\xff\xfe\x00junk\r\ntags: gpu,nvidia\r\n\x01\x02",
    );
    assert_eq!(host.status_json(152)["reason"], "tag");

    host.container(153, "");
    write(
        &host.path().join("pve/lxc/153.conf"),
        "[snap]\ntags: nvidia\n",
    );
    assert_eq!(host.status_json(153)["requested"], false);
}
