//! Docker with the NVIDIA Container Toolkit inside a real unprivileged
//! container: doctor says what the toolkit needs there (features,
//! `no-cgroups`) and finds the driver's libraries in the container's real
//! `/etc/ld.so.cache` (written by ldconfig when the driver was installed),
//! as libnvidia-container does. The toolkit's programs are stand-ins (no
//! NVIDIA repository here); its configuration file is NVIDIA's as shipped.

use crate::sandbox::{Sandbox, V1};
use crate::support::text;

/// `/etc/nvidia-container-runtime/config.toml` as nvidia-container-toolkit
/// installs it: `no-cgroups` commented out (false).
const SHIPPED_CONFIG: &str = r#"#accept-nvidia-visible-devices-as-volume-mounts = false
#accept-nvidia-visible-devices-envvar-when-unprivileged = true
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"

[nvidia-container-cli]
#debug = "/var/log/nvidia-container-toolkit.log"
environment = []
#feature = []
ldcache = "/etc/ld.so.cache"
ldconfig = "@/sbin/ldconfig"
load-kmods = true
#no-cgroups = false
#path = "/usr/bin/nvidia-container-cli"
#root = "/run/nvidia/driver"
#user = "root:video"

[nvidia-container-runtime]
#debug = "/var/log/nvidia-container-runtime.log"
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]
"#;

fn doctor(sb: &Sandbox, vmid: &str) -> (Option<i32>, String) {
    let out = sb.run(&["doctor", vmid]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_doctor_says_what_docker_with_the_toolkit_needs_in_an_unprivileged_container() {
    let mut sb = Sandbox::new("docker");
    sb.up_with(9501, true, "nvidia", &["unprivileged"]);
    let out = sb.hook(9501, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, before) = doctor(&sb, "9501");
    assert!(
        !["docker", "toolkit", "container toolkit"]
            .iter()
            .any(|c| before.contains(&format!("CT 9501: {c}"))),
        "no Docker, nothing said: {before}"
    );

    sb.inside_ok(
        9501,
        &[
            "sh",
            "-c",
            "for p in /usr/bin/dockerd /usr/bin/nvidia-container-cli /usr/bin/nvidia-container-runtime; do \
             printf '#!/bin/sh\\n' > $p && chmod 755 $p; done && mkdir -p /etc/nvidia-container-runtime && \
             cat > /etc/nvidia-container-runtime/config.toml",
        ],
    );
    let config = sb
        .rootfs(9501)
        .join("etc/nvidia-container-runtime/config.toml");
    std::fs::write(&config, SHIPPED_CONFIG).unwrap();
    let (code, shown) = doctor(&sb, "9501");
    assert_eq!(code, Some(1), "{shown}");
    for line in [
        "OK    CT 9501: container toolkit: the NVIDIA Container Toolkit is installed (nvidia-container-cli, its runtime)".to_string(),
        "FAIL  CT 9501: docker features: nesting=1, keyctl=1 not set".to_string(),
        "      fix: pct set 9501 --features nesting=1,keyctl=1 (as root@pam), then pct reboot 9501".to_string(),
        "FAIL  CT 9501: toolkit no-cgroups: no-cgroups is not true".to_string(),
        "      fix: pct exec 9501 -- nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place".to_string(),
        format!("OK    CT 9501: toolkit libraries: libnvidia-ml.so, libcuda.so at {V1} in /etc/ld.so.cache, and video (NVENC, NVDEC)"),
    ] {
        assert!(shown.contains(&line), "{line:?} in\n{shown}");
    }

    // The fixes, as doctor gave them (nvidia-ctk's edit done by hand here).
    let fixed = SHIPPED_CONFIG.replace("#no-cgroups = false", "no-cgroups = true");
    std::fs::write(&config, fixed).unwrap();
    let conf = sb.dir().join("pve/lxc/9501.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("features: nesting=1,keyctl=1\n");
    std::fs::write(&conf, text).unwrap();
    let (_, shown) = doctor(&sb, "9501");
    for line in [
        "OK    CT 9501: docker features: nesting=1, keyctl=1 set",
        "OK    CT 9501: toolkit no-cgroups: no-cgroups = true in /etc/nvidia-container-runtime/config.toml",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }

    // A loader cache that no longer lists the driver (ldconfig run after
    // the libraries went): the toolkit would mount nothing.
    sb.inside_ok(
        9501,
        &[
            "sh",
            "-c",
            "mkdir /root/away && mv /usr/lib/x86_64-linux-gnu/libcuda.so* /root/away && ldconfig",
        ],
    );
    let (_, shown) = doctor(&sb, "9501");
    assert!(
        shown.contains("FAIL  CT 9501: toolkit libraries: libcuda.so is not in /etc/ld.so.cache: the toolkit mounts none of it into Docker's containers"),
        "{shown}"
    );
}
