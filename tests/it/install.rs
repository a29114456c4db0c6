//! The install pipeline against a fake host: fresh install, upgrade, exact
//! versions, runfile digests and the cache, distribution packages, a failing
//! installer, a missing device node.

use serde_json::json;

use crate::fake_host::{cached_files, FakeHost, TAGGED, V1, V2};
use crate::support::{self, expect_exit, text, write, FileServer};

#[test]
fn fresh_install_then_up_to_date_without_any_container_command() {
    let host = FakeHost::new();
    host.container(101, TAGGED);
    let out = host.run(&["101", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    for stage in ["runfile", "cleanup", "dependencies", "driver", "verify"] {
        assert!(
            log.contains(&format!("stage {stage}: done in")),
            "{stage}: {log}"
        );
    }
    assert!(log.contains("CT 101:"), "lines name the container: {log}");
    let ct = host.ct(101);
    assert_eq!(
        std::fs::read_to_string(ct.join("usr/bin/nvidia-smi"))
            .unwrap()
            .trim(),
        V1
    );
    assert!(ct
        .join(format!("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{V1}"))
        .is_file());
    assert_eq!(
        std::fs::read_dir(ct.join("var/tmp")).unwrap().count(),
        0,
        "runfile and its folder removed"
    );
    assert_eq!(host.installer_runs(101), 1);
    let calls = host.calls();
    assert!(
        calls.iter().any(|c| c.starts_with(
            "sh -c umask 077 && cat > \"$1\" pve-nvidia-hook /var/tmp/pve-nvidia-hook."
        )),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.contains("--no-kernel-module")
            && c.contains("--tmpdir /var/tmp/pve-nvidia-hook.")),
        "{calls:?}"
    );
    assert!(
        calls.contains(
            &"apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends kmod"
                .to_string()
        ),
        "{calls:?}"
    );

    let status = host.status_json(101);
    assert_eq!(status["state"], "up-to-date");
    assert_eq!(status["container_version"], V1);
    assert_eq!(status["host_version"], V1);
    assert_eq!(status["requested"], true);
    assert_eq!(status["reason"], "tag");
    assert_eq!(status["vmid"], 101);

    let verify = host.run(&["verify", "101"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    let before = host.calls().len();
    let again = host.run(&["101", "post-start"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("NVIDIA driver {V1} up to date")),
        "{}",
        text(&again)
    );
    assert_eq!(
        host.calls().len(),
        before,
        "up to date: no container command at all"
    );
    assert_eq!(host.installer_runs(101), 1);
}

#[test]
fn host_upgrade_reinstalls_the_new_version() {
    let host = FakeHost::new();
    host.container(102, TAGGED);
    assert!(host.run(&["102", "post-start"]).status.success());
    host.set_host_version(V2);
    host.runfile(V2, false);
    assert_eq!(host.status_json(102)["state"], "mismatch");
    let out = host.run(&["102", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("container has {V1}, host has {V2}")),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(host.ct(102).join("usr/bin/nvidia-smi"))
            .unwrap()
            .trim(),
        V2
    );
    assert_eq!(host.status_json(102)["state"], "up-to-date");
}

#[test]
fn prefix_version_is_not_up_to_date() {
    // The plan's `grep -q` took 550.54 for 550.54.14.
    let host = FakeHost::new();
    let ct = host.container(103, TAGGED);
    let lib = "usr/lib/x86_64-linux-gnu";
    write(
        &ct.join("var/lib/nvidia/log"),
        format!("1.0-55054 (550.54)\nNVIDIA driver\n1: /usr/bin/nvidia-smi\n0\n1: /{lib}/libnvidia-ml.so.550.54\n0\n1: /{lib}/libcuda.so.550.54\n0\n"),
    );
    write(&ct.join(format!("{lib}/libnvidia-ml.so.550.54")), "");
    write(&ct.join(format!("{lib}/libcuda.so.550.54")), "");
    write(&ct.join("usr/bin/nvidia-smi"), "550.54\n");
    assert_eq!(host.status_json(103)["state"], "mismatch");
    assert_eq!(host.status_json(103)["container_version"], "550.54");
    let out = host.run(&["103", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.installer_runs(103), 1);
}

#[test]
fn runfile_of_another_version_is_refused_before_anything_runs() {
    let mut host = FakeHost::new();
    host.container(104, TAGGED);
    let other = host.runfile(V2, false);
    host.set("runfile_url", json!(other));
    let out = host.run(&["install", "104"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(V1) && err.contains(V2) && err.contains("refusing"),
        "{err}"
    );
    assert!(
        host.calls().is_empty(),
        "no container command: {:?}",
        host.calls()
    );
    let status = host.status_json(104);
    assert_eq!(status["state"], "failed");
}

#[test]
fn bad_digest_is_refused_and_never_cached() {
    let mut host = FakeHost::new();
    host.container(105, TAGGED);
    let files = host.path().join("runfiles");
    let server = FileServer::start(&files);
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    host.set("runfile_sha256", json!("0".repeat(64)));
    let out = host.run(&["install", "105"]);
    expect_exit(&out, 1, "sha256 mismatch");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
    let cached = cached_files(&host.path().join("cache"));
    assert!(cached.is_empty(), "{cached:?}");
}

#[test]
fn http_without_configured_digest_is_refused() {
    let mut host = FakeHost::new();
    host.container(106, TAGGED);
    let server = FileServer::start(&host.path().join("runfiles"));
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    let out = host.run(&["install", "106"]);
    expect_exit(&out, 1, "runfile_sha256");
    assert_eq!(server.count(&format!("NVIDIA-Linux-x86_64-{V1}.run")), 0);
}

#[test]
fn download_is_verified_cached_and_shared() {
    let mut host = FakeHost::new();
    host.container(107, TAGGED);
    host.container(108, TAGGED);
    let runfile = host
        .path()
        .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run"));
    let server = FileServer::start(&host.path().join("runfiles"));
    host.set(
        "runfile_url",
        json!(server.url("NVIDIA-Linux-x86_64-{version}.run")),
    );
    host.set(
        "runfile_sha256",
        json!({ V1: support::sha256_hex(&runfile) }),
    );
    for vmid in ["107", "108"] {
        let out = host.run(&["107", "post-start"].map(|a| if a == "107" { vmid } else { a }));
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        server.count(&format!("NVIDIA-Linux-x86_64-{V1}.run")),
        1,
        "one download per host"
    );
    let digest = support::sha256_hex(&runfile);
    assert!(host
        .path()
        .join(format!(
            "cache/sha256/{digest}/NVIDIA-Linux-x86_64-{V1}.run"
        ))
        .is_file());
    assert_eq!(host.installer_runs(107), 1);
    assert_eq!(host.installer_runs(108), 1);
}

#[test]
fn distribution_packages_are_purged_and_their_marker_removed() {
    let host = FakeHost::new();
    let ct = host.container(109, TAGGED);
    write(
        &ct.join("var/lib/dpkg/status"),
        "Package: bash\nStatus: install ok installed\n\n\
         Package: nvidia-driver-libs\nStatus: install ok installed\n\n\
         Package: libcuda1\nStatus: deinstall ok config-files\n\n\
         Package: nvidia-container-toolkit\nStatus: install ok installed\n\n\
         Package: nvidia-old\nStatus: purge ok not-installed\n\n",
    );
    write(&ct.join("usr/lib/nvidia/alternate-install-present"), "");
    let out = host.run(&["109", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    let calls = host.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.ends_with("-s purge nvidia-driver-libs libcuda1")),
        "apt's plan is asked first: {calls:?}"
    );
    let purge = calls
        .iter()
        .find(|c| c.contains(" purge -y "))
        .expect("a purge");
    assert!(
        purge.ends_with("purge -y --allow-change-held-packages nvidia-driver-libs libcuda1"),
        "{purge}"
    );
    assert!(!ct.join("usr/lib/nvidia/alternate-install-present").exists());
    assert_eq!(host.installer_runs(109), 1);
}

#[test]
fn clean_container_purges_nothing() {
    let host = FakeHost::new();
    host.container(110, TAGGED);
    let out = host.run(&["110", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no NVIDIA driver packages to purge"));
    assert!(!host.calls().iter().any(|c| c.contains(" purge ")));
}

#[test]
fn failing_installer_is_reported_with_its_log_and_retried_next_start() {
    let host = FakeHost::new();
    host.container(111, TAGGED);
    host.runfile(V1, true);
    let out = host.run(&["111", "post-start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit status 1") && err.contains("Unable to load the kernel module"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(host.ct(111).join("var/tmp"))
            .unwrap()
            .count(),
        0,
        "runfile removed after failure"
    );
    assert_eq!(host.status_json(111)["state"], "failed");
    host.runfile(V1, false);
    let retry = host.run(&["111", "post-start"]);
    assert!(retry.status.success(), "{}", text(&retry));
    assert_eq!(host.status_json(111)["state"], "up-to-date");
}

#[test]
fn missing_device_node_fails_verify_but_does_not_reinstall() {
    let host = FakeHost::new();
    let ct = host.container(112, TAGGED);
    std::fs::remove_file(ct.join("dev/nvidia0")).unwrap();
    let out = host.run(&["112", "post-start"]);
    expect_exit(
        &out,
        1,
        "/dev/nvidia0 (or any /dev/nvidiaN) missing in the container",
    );
    let verify = host.run(&["verify", "112"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("GPU not passed through"),
        "{}",
        text(&verify)
    );
    let again = host.run(&["112", "post-start"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        host.installer_runs(112),
        1,
        "the driver is right; passthrough is the problem"
    );
}
