//! What `make` installs on a machine (`.ci/deps`) and sets up for the
//! sandbox: building needs only what building needs, a Proxmox node's own
//! packages are never touched, and root gets the subordinate ids Proxmox
//! gives it.

use std::path::Path;
use std::process::Command;

use crate::sandbox::{self, Sandbox};
use crate::support::{text, write, TempDir};

fn top() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The packages an `apt-get -s` plan, as `.ci/deps --simulate` prints it,
/// would install.
fn planned(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[test]
fn make_deb_installs_only_what_building_needs() {
    let dry_run = |target: &str| {
        let out = Command::new("make")
            .args(["-n", "-C"])
            .arg(top())
            .arg(target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deb = dry_run("deb");
    assert!(deb.lines().any(|l| l == ".ci/deps build"), "{deb}");
    assert!(!deb.contains(".ci/deps test"), "{deb}");
    assert!(!deb.contains(".ci/deps bench"), "{deb}");
    assert!(dry_run("demo").lines().any(|l| l == ".ci/deps test"));
    assert!(dry_run("bench").lines().any(|l| l == ".ci/deps bench"));
}

/// Issue 15.5: with `uidmap` installed (lxc recommends it; lxc-pve depends
/// on it) LXC maps an unprivileged container's ids through newuidmap, which
/// refuses ids /etc/subuid does not give root. The sandbox gives root what
/// lxc-pve's postinst gives it, only where root has none.
#[test]
#[ignore = "needs root (usermod); `make test` as root runs it"]
fn the_sandbox_gives_root_the_subordinate_ids_proxmox_gives_it() {
    let prefix = TempDir::new("subids");
    let p = prefix.path();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::create_dir_all(p.join("etc")).unwrap();
        std::fs::copy(Path::new("/etc").join(f), p.join("etc").join(f)).unwrap();
    }
    let subids = || {
        let out = Command::new(top().join("tests/e2e/sandbox.sh"))
            .arg("subids")
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A fresh machine: no files at all.
    let said = subids();
    assert!(
        said.contains("giving it 100000-165535 as Proxmox does"),
        "{said}"
    );
    for f in ["subuid", "subgid"] {
        assert_eq!(
            std::fs::read_to_string(p.join("etc").join(f)).unwrap(),
            "root:100000:65536\n"
        );
    }
    // Again: nothing to do, nothing said.
    assert_eq!(subids(), "");
    // An admin's own range for root is left alone (and named).
    write(&p.join("etc/subuid"), "root:200000:65536\n");
    let said = subids();
    assert!(said.contains("do not include 100000-165535"), "{said}");
    assert_eq!(
        std::fs::read_to_string(p.join("etc/subuid")).unwrap(),
        "root:200000:65536\n"
    );
}

/// Issue 15.6: `.ci/deps` on a fresh Debian 12 container, then on a
/// "node" (stand-ins of Proxmox's packages: lxc-pve provides, conflicts with
/// and replaces Debian's lxc), asking apt's plan only (`--simulate`).
#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn ci_deps_builds_with_build_tools_only_and_never_touches_a_nodes_packages() {
    let mut sb = Sandbox::new("ci-deps");
    sb.up(9452, false, "");
    let root = sb.rootfs(9452);
    std::fs::create_dir_all(root.join("root/src/.ci")).unwrap();
    std::fs::copy(top().join(".ci/deps"), root.join("root/src/.ci/deps")).unwrap();
    let deps = |stage: &str| sb.inside(9452, &["/root/src/.ci/deps", stage, "--simulate"]);

    let build = deps("build");
    assert!(build.status.success(), "{}", text(&build));
    let said = String::from_utf8_lossy(&build.stdout).into_owned();
    let plan = planned(&said);
    for p in ["debhelper", "lintian", "gcc", "git"] {
        assert!(plan.iter().any(|x| x == p), "{p} not planned: {said}");
    }
    for p in [
        "lxc",
        "uidmap",
        "debootstrap",
        "makeself",
        "hyperfine",
        "strace",
    ] {
        assert!(!plan.iter().any(|x| x == p), "{p} planned to build: {said}");
    }
    assert!(
        said.contains("would install the Rust toolchain with rustup"),
        "{said}"
    );

    let test = deps("test");
    assert!(test.status.success(), "{}", text(&test));
    let plan = planned(&String::from_utf8_lossy(&test.stdout));
    for p in ["lxc", "uidmap", "debootstrap", "makeself"] {
        assert!(
            plan.iter().any(|x| x == p),
            "{p} not planned to test: {}",
            text(&test)
        );
    }

    // The node.
    let stand_ins = TempDir::new("stand-ins");
    sandbox::sh(&["proxmox-stand-ins", &stand_ins.path().display().to_string()]);
    sb.push_debs(9452, stand_ins.path());
    sb.inside_ok(9452, &["sh", "-c", "dpkg -i /root/debs/*.deb"]);
    let test = deps("test");
    assert!(test.status.success(), "{}", text(&test));
    let said = String::from_utf8_lossy(&test.stdout).into_owned();
    assert!(
        said.contains("not installing lxc: the installed lxc-pve provides or conflicts with it"),
        "{said}"
    );
    let plan = planned(&said);
    assert!(!plan.iter().any(|x| x == "lxc" || x == "liblxc1"), "{said}");
    assert!(plan.iter().any(|x| x == "debootstrap"), "{said}");

    // A plan that would remove an installed package installs nothing: here
    // one that conflicts with what uidmap needs.
    let blocker = TempDir::new("blocker");
    write(
        &blocker.path().join("pkg/DEBIAN/control"),
        "Package: pnh-test-blocker\nVersion: 1\nArchitecture: all\n\
         Maintainer: pve-nvidia-hook tests <pve-nvidia-hook@example.org>\n\
         Conflicts: libsubid4\nDescription: conflicts with libsubid4 (a test's)\n",
    );
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(blocker.path().join("pkg"))
        .arg(root.join("root/blocker.deb"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    sb.inside_ok(9452, &["dpkg", "-i", "/root/blocker.deb"]);
    let test = deps("test");
    assert_eq!(test.status.code(), Some(1), "{}", text(&test));
    assert!(
        String::from_utf8_lossy(&test.stderr).contains("would remove pnh-test-blocker"),
        "{}",
        text(&test)
    );
}
