//! Issue 12 on real containers: what NVIDIA's installer really does (and the
//! stand-in now does too), NVIDIA's own binaries from Debian's packages, the
//! installer's prerequisites, containers that get the driver from the host,
//! and what `verify` asks for on behalf of workloads.

use std::process::Command;

use serde_json::{json, Value};

use crate::sandbox::{stderr, Sandbox, V1};
use crate::support::{expect_exit, text};

const DEBIAN: &str = "535.261.03";

/// NVIDIA's real nvidia-smi, libnvidia-ml and libcuda (Debian's 535.261.03)
/// go through the install: their ELF sonames lead the loader to them, their
/// CRCs match the record, and the real nvidia-smi fails as it does on nodes
/// that are no GPU's (NVML refuses them: exit 17), which verify reports; the
/// files being right, the next start does not reinstall. (Without nodes, in
/// an unprivileged container, it exits 9: `e2e_cluster`.)
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_nvidias_real_binaries_install_and_fail_as_they_do_without_a_gpu() {
    let mut sb = Sandbox::new("real");
    sb.host_version(DEBIAN);
    sb.runfile(DEBIAN, "real");
    sb.up(9140, true, "nvidia");
    let out = sb.hook(9140, "post-start");
    expect_exit(
        &out,
        1,
        "nvidia-smi in the container: exit status 17: Failed to initialize NVML: GPU access blocked by the operating system",
    );
    assert!(
        !stderr(&out).contains("not whole"),
        "CRCs, sonames and symlinks of the real files passed: {}",
        text(&out)
    );
    let soname = sb.inside_ok(
        9140,
        &["readlink", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"],
    );
    assert_eq!(soname.trim(), format!("libnvidia-ml.so.{DEBIAN}"));
    assert_eq!(sb.state(9140), "up-to-date");
    let verify = sb.run(&["verify", "9140"]);
    expect_exit(&verify, 1, "Failed to initialize NVML");
    let again = sb.hook(9140, "post-start");
    expect_exit(&again, 0, &format!("NVIDIA driver {DEBIAN} up to date"));
    assert_eq!(sb.installer_runs(9140), 1);
}

/// Issue 12.1: the installer goes on past a file it cannot copy and exits 0;
/// the record then lacks it, verify names it, the state is not up to date,
/// and the next start installs again (successfully, once the cause is gone).
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_partial_install_is_never_up_to_date() {
    let mut sb = Sandbox::new("partial");
    sb.up(9141, true, "nvidia");
    let lib = format!("usr/lib/x86_64-linux-gnu/libcuda.so.{V1}");
    let blocked = sb.rootfs(9141).join(&lib);
    std::fs::write(&blocked, "in the way").unwrap();
    let chattr = |flag: &str| {
        let status = Command::new("chattr")
            .arg(flag)
            .arg(&blocked)
            .status()
            .unwrap();
        assert!(status.success(), "chattr {flag}");
    };
    chattr("+i");
    let out = sb.hook(9141, "post-start");
    chattr("-i");
    expect_exit(
        &out,
        1,
        &format!("libcuda.so.{V1} was not installed (the installer went on past a failed copy)"),
    );
    let log = sb.inside_ok(9141, &["cat", "/var/log/nvidia-installer.log"]);
    // files.c's copy_file unlinks what is there first, then
    // continue_after_error takes --silent's default answer.
    for line in [
        format!("ERROR: Unable to delete existing file '/{lib}' (Operation not permitted)"),
        format!("-> The installer has encountered the following error during installation: 'Cannot install /{lib}'.  Would you like to continue installation anyway? (Answer: Continue installation)"),
    ] {
        assert!(log.contains(&line), "{line}: {log}");
    }
    assert!(
        log.contains("is now complete"),
        "the installer finished: {log}"
    );
    assert_ne!(sb.state(9141), "up-to-date");
    // A file it cannot create, every key file landing: the installer's own
    // ERROR fails the install, named.
    let vendors = sb.rootfs(9141).join("etc/OpenCL/vendors");
    std::fs::create_dir_all(&vendors).unwrap();
    let _ = std::fs::remove_file(vendors.join("nvidia.icd"));
    let immutable = |flag: &str| {
        assert!(Command::new("chattr")
            .arg(flag)
            .arg(&vendors)
            .status()
            .unwrap()
            .success());
    };
    immutable("+i");
    let out = sb.hook(9141, "post-start");
    immutable("-i");
    expect_exit(
        &out,
        1,
        "ERROR: Unable to create '/etc/OpenCL/vendors/nvidia.icd' for copying (Operation not permitted)",
    );
    let again = sb.run(&["install", "--force", "9141"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(sb.state(9141), "up-to-date");
    assert_eq!(sb.installer_runs(9141), 3);
}

/// Issue 12.2 and 12.3: the programs NVIDIA's installer requires are checked
/// before it runs, each named with its package; and when the configured
/// dependencies are installed, no apt runs at all (an offline container).
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_prerequisites_are_named_and_installed_dependencies_need_no_apt() {
    let mut sb = Sandbox::new("prereq");
    sb.up(9142, true, "nvidia");
    sb.set("dependencies", json!([]));
    let out = sb.hook(9142, "post-start");
    expect_exit(
        &out,
        1,
        "NVIDIA's installer needs modprobe (package kmod), rmmod (package kmod), lsmod (package kmod), depmod (package kmod) in the container",
    );
    assert_eq!(sb.installer_runs(9142), 0);
    sb.set("dependencies", json!(["kmod"]));
    assert!(sb.hook(9142, "post-start").status.success());
    // Offline from now on: the tenant's apt fails.
    let apt = sb.rootfs(9142).join("usr/bin/apt-get");
    std::fs::write(
        &apt,
        "#!/bin/sh\necho 'E: network unreachable' >&2\nexit 100\n",
    )
    .unwrap();
    let before = std::fs::read_to_string(sb.dir().join("attach.log")).unwrap();
    let out = sb.run(&["install", "--force", "9142"]);
    expect_exit(&out, 0, "dependencies already installed: kmod");
    let after = std::fs::read_to_string(sb.dir().join("attach.log")).unwrap();
    assert!(!after[before.len()..].contains("apt-get"), "{after}");
}

/// Issue 12.7: a container given the host's own driver by bind mounts (the
/// NVIDIA Container Toolkit, LXC's nvidia hook) is left alone.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_driver_bind_mounted_from_the_host_is_left_alone() {
    let mut sb = Sandbox::new("provided");
    sb.up_with(9143, true, "nvidia", &["hostdriver"]);
    let out = sb.hook(9143, "post-start");
    expect_exit(
        &out,
        0,
        &format!("the driver {V1} is bind-mounted from the host"),
    );
    assert_eq!(sb.attach_calls(), 0, "nothing ran in the container");
    assert_eq!(sb.downloads(V1), 0);
    let rows: Value =
        serde_json::from_slice(&sb.run(&["status", "--json", "9143"]).stdout).unwrap();
    assert_eq!(rows[0]["state"], "host-provided", "{rows}");
    assert_eq!(rows[0]["container_version"], V1, "{rows}");
    let out = sb.run(&["install", "--force", "9143"]);
    expect_exit(&out, 1, "bind-mounted from the host");
    // verify checks what workloads get: the host's nvidia-smi, the nodes.
    let verify = sb.run(&["verify", "9143"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("the host's own driver, bind-mounted"));
}

/// Issue 12.9 and 16: verify asks for what workloads need: /dev/nvidia-uvm
/// (CUDA and NVENC need it, nvidia-smi does not; without it the install is
/// whole, and said to lack it: a warning, not a failure), and whichever
/// /dev/nvidiaN the container was given.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_verify_asks_for_what_workloads_need() {
    let mut sb = Sandbox::new("nodes");
    sb.up_with(9144, true, "nvidia", &["nouvm"]);
    let out = sb.hook(9144, "post-start");
    let gap = "installed, but CUDA needs /dev/nvidia-uvm: pass it to the container (pct set 9144 --devN /dev/nvidia-uvm";
    expect_exit(&out, 0, gap);
    assert_eq!(
        sb.state(9144),
        "up-to-date",
        "a passthrough problem, not a reinstall"
    );
    let rows: Value =
        serde_json::from_slice(&sb.run(&["status", "--json", "9144"]).stdout).unwrap();
    assert!(
        rows[0]["detail"].as_str().unwrap_or_default().contains(gap),
        "{rows}"
    );
    let verify = sb.run(&["verify", "9144"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(&format!("CT 9144: warning: {gap}")),
        "{}",
        text(&verify)
    );

    sb.up_with(9145, true, "nvidia", &["gpu1"]);
    let out = sb.hook(9145, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let verify = sb.run(&["verify", "9145"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(!text(&verify).contains("/dev/nvidia0"), "{}", text(&verify));
    let shown = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        shown.contains("CUDA, NVENC, NVDEC, OpenCL; no Vulkan, EGL, GL (compute-only"),
        "{shown}"
    );
    // Compute-only leaves no Vulkan or Vulkan SC loader file naming a
    // library it lacks, and no 32-bit libraries; the GSP firmware lands
    // where the installer puts it, and workloads do not need it.
    for gone in [
        "/etc/vulkan/icd.d/nvidia_icd.json",
        "/etc/vulkan/implicit_layer.d/nvidia_layers.json",
        "/etc/vulkansc/icd.d/nvidia_icd_vksc.json",
        &format!("/usr/lib/libcuda.so.{V1}"),
    ] {
        assert!(
            !sb.inside(9145, &["test", "-e", gone]).status.success(),
            "{gone}"
        );
    }
    let log = std::fs::read_to_string(sb.dir().join("attach.log")).unwrap();
    assert!(
        log.contains("--no-systemd --no-opengl-files --no-install-compat32-libs"),
        "{log}"
    );
    let firmware = format!("/lib/firmware/nvidia/{V1}/gsp_ga10x.bin");
    assert!(sb.inside(9145, &["test", "-f", &firmware]).status.success());
    sb.inside_ok(9145, &["rm", "-r", "/lib/firmware/nvidia"]);
    expect_exit(&sb.hook(9145, "post-start"), 0, "up to date");
}

/// Issue 12.5: compute-only (the default) leaves no Vulkan ICD naming a
/// library it did not install; `graphics: true` installs GL, EGL and GLX
/// with the installer's own libglvnd and keeps the ICD, and verify says
/// which of CUDA, NVENC/NVDEC, Vulkan and EGL/GL the container has.
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_graphics_installs_gl_egl_and_vulkan_whole() {
    let mut sb = Sandbox::new("graphics");
    sb.up(9146, true, "nvidia");
    sb.set("graphics", json!(true));
    let out = sb.hook(9146, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::read_to_string(sb.dir().join("attach.log")).unwrap();
    assert!(log.contains("--install-libglvnd"), "{log}");
    assert!(!log.contains("--no-opengl-files"), "{log}");
    assert!(log.contains("libvulkan1 libx11-6 libxext6"), "{log}");
    assert!(sb
        .inside(9146, &["test", "-e", "/etc/vulkan/icd.d/nvidia_icd.json"])
        .status
        .success());
    assert!(sb
        .inside(
            9146,
            &[
                "test",
                "-e",
                &format!("/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.{V1}")
            ]
        )
        .status
        .success());
    // With the graphics libraries: the Vulkan SC ICD and the implicit
    // layer name what is installed, and stay; so do the 32-bit libraries
    // (ELF32, checked by their sonames too).
    for kept in [
        "/etc/vulkan/implicit_layer.d/nvidia_layers.json",
        "/etc/vulkansc/icd.d/nvidia_icd_vksc.json",
        &format!("/usr/lib/libGLX_nvidia.so.{V1}"),
        &format!("/usr/lib/libcuda.so.{V1}"),
    ] {
        assert!(
            sb.inside(9146, &["test", "-e", kept]).status.success(),
            "{kept}"
        );
    }
    let verify = sb.run(&["verify", "9146"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout)
            .contains("CUDA, NVENC, NVDEC, OpenCL, Vulkan, EGL, GL"),
        "{}",
        text(&verify)
    );
}
