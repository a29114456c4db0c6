//! Issue 16 against the fake host: NVIDIA's installer and CUDA as they are.
//! `installer_args` adds to the required flags and is checked against
//! nvidia-installer's own option table; a CUDA toolkit the host's driver
//! cannot run is refused before it is fetched; a passthrough gap is a
//! warning; NVIDIA's `-no-compat32` runfile is accepted.

use serde_json::json;

use crate::fake_host::{FakeHost, TAGGED, V1};
use crate::support::{expect_exit, text, write};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The installer's command line, as the fake container saw it run.
fn installer_call(host: &FakeHost) -> String {
    host.calls()
        .into_iter()
        .find(|c| c.starts_with("sh /var/tmp/") && c.contains("/NVIDIA-Linux-x86_64-"))
        .unwrap_or_default()
}

#[test]
fn installer_args_add_to_the_flags_every_install_needs() {
    let mut host = FakeHost::new();
    host.container(160, TAGGED);
    host.set("installer_args", json!(["--no-nvidia-modprobe"]));
    let out = host.run(&["160", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let call = installer_call(&host);
    for flag in [
        "--silent",
        "--no-kernel-module",
        "--no-systemd",
        "--no-opengl-files",
        "--no-install-compat32-libs",
        "--no-nvidia-modprobe",
    ] {
        assert!(call.split(' ').any(|a| a == flag), "{flag} missing: {call}");
    }
}

/// An option nvidia-installer does not know (option_table.h, 470 to 590)
/// is a configuration error naming the key: exit 2, before anything runs.
#[test]
fn an_option_the_installer_does_not_know_is_refused_at_configuration() {
    let mut host = FakeHost::new();
    host.container(161, TAGGED);
    host.set(
        "containers",
        json!({"161": {"installer_args": ["--no-kernel-module", "--no-such-option"]}}),
    );
    let out = host.run(&["status", "161"]);
    expect_exit(
        &out,
        2,
        "containers.\"161\".installer_args: '--no-such-option' is not an nvidia-installer option",
    );
    let out = host.run(&["install", "161"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

/// CUDA 13 needs driver 580 (NVIDIA's CUDA compatibility table); the host
/// runs 550: the toolkit is neither fetched nor installed, the driver is,
/// and the install says so as a warning: in its log, in `status`, in
/// `verify` (which then runs no nvcc).
#[test]
fn a_cuda_toolkit_the_hosts_driver_cannot_run_is_refused_before_it_is_fetched() {
    let mut host = FakeHost::new();
    host.container(162, TAGGED);
    // No such file: fetching it would fail the install.
    let toolkit = host.path().join("runfiles/cuda_13.0.0_580.65.06_linux.run");
    host.set("cuda", json!({ "runfile_url": toolkit }));
    let out = host.run(&["162", "post-start"]);
    let refused = format!(
        "CUDA toolkit 13.0.0 not installed: it needs NVIDIA driver 580 or newer and the host's module is {V1}"
    );
    expect_exit(&out, 0, &refused);
    assert!(
        stderr(&out).contains("installed and verified, with 1 warning"),
        "{}",
        text(&out)
    );
    assert_eq!(host.installer_runs(162), 1, "the driver is installed");
    assert!(!host.calls().iter().any(|c| c.contains("cuda_13")));
    let status = host.status_json(162);
    assert_eq!(status["state"], "up-to-date");
    assert!(
        status["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&refused),
        "{status}"
    );
    let verify = host.run(&["verify", "162"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let shown = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        shown.contains(&format!("CT 162: warning: {refused}")) && !shown.contains("nvcc runs"),
        "{shown}"
    );
}

/// A toolkit whose name does not say its CUDA version: which driver it
/// needs is not known; it is installed, and that is said.
#[test]
fn a_cuda_toolkit_of_unknown_version_is_installed_and_said() {
    let mut host = FakeHost::new();
    host.container(163, TAGGED);
    let toolkit = host.path().join("runfiles/toolkit.run");
    write(
        &toolkit,
        "#!/bin/sh\nmkdir -p \"$FAKE_ROOT/usr/local/cuda/bin\"\n\
         printf '#!/bin/sh\\n' > \"$FAKE_ROOT/usr/local/cuda/bin/nvcc\"\n\
         chmod 755 \"$FAKE_ROOT/usr/local/cuda/bin/nvcc\"\n",
    );
    host.set(
        "cuda",
        json!({ "runfile_url": toolkit, "installer_args": ["--silent", "--toolkit"] }),
    );
    let out = host.run(&["163", "post-start"]);
    expect_exit(
        &out,
        0,
        "CUDA toolkit installed anyway: the name of toolkit.run does not say which CUDA version it is",
    );
    assert!(host.ct(163).join("usr/local/cuda/bin/nvcc").is_file());
}

/// Every file in place, no /dev/nvidia-uvm in the container: installed,
/// with a warning naming the fix; the next start does not reinstall, and
/// `status` and `doctor` say it.
#[test]
fn a_passthrough_gap_is_a_warning_not_a_failed_install() {
    let host = FakeHost::new();
    let ct = host.container(164, TAGGED);
    std::fs::remove_file(ct.join("dev/nvidia-uvm")).unwrap();
    let out = host.run(&["164", "post-start"]);
    let gap = "installed, but CUDA needs /dev/nvidia-uvm: pass it to the container (pct set 164 --devN /dev/nvidia-uvm";
    expect_exit(&out, 0, gap);
    let status = host.status_json(164);
    assert_eq!(status["state"], "up-to-date");
    assert!(
        status["detail"].as_str().unwrap_or_default().contains(gap),
        "{status}"
    );
    let verify = host.run(&["verify", "164"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(&format!("CT 164: warning: {gap}")),
        "{}",
        text(&verify)
    );
    let again = host.run(&["164", "post-start"]);
    expect_exit(&again, 0, "up to date");
    assert_eq!(host.installer_runs(164), 1);
    // Passed at last: the gap is gone from status without another install.
    write(&ct.join("dev/nvidia-uvm"), "");
    assert_eq!(host.status_json(164)["detail"], serde_json::Value::Null);
}

/// NVIDIA's own variant without the 32-bit libraries, by its own name.
#[test]
fn nvidias_no_compat32_runfile_is_accepted() {
    let mut host = FakeHost::new();
    host.container(165, TAGGED);
    let whole = host
        .path()
        .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run"));
    let variant = host
        .path()
        .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}-no-compat32.run"));
    std::fs::rename(&whole, &variant).unwrap();
    host.set(
        "runfile_url",
        json!(format!(
            "{}/runfiles/NVIDIA-Linux-x86_64-{{version}}-no-compat32.run",
            host.path().display()
        )),
    );
    let out = host.run(&["165", "post-start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(installer_call(&host).contains("-no-compat32.run"));
}
