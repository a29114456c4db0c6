//! Issue 17.4 against a fake host: `prefetch` for the next boot's NVIDIA
//! module and the apt hook's run of it, `status`'s pending reboot, `sync`
//! and its backoff, and the workloads that still map the old driver after
//! an install: named, their services restarted, or the container rebooted
//! once the start task lets it go.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_host::{cached_files, FakeHost, TAGGED, V1, V2};
use crate::support::{self, said, text, write, FileServer};

const V3: &str = "550.100.05";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn runfile(version: &str) -> String {
    format!("NVIDIA-Linux-x86_64-{version}.run")
}

/// The fake host's runfiles over http, each version's digest pinned.
fn serve(host: &mut FakeHost, versions: &[&str], prefix: &str) -> FileServer {
    let server = FileServer::start(&host.path().join("runfiles"));
    let digests: serde_json::Map<String, Value> = versions
        .iter()
        .map(|v| {
            let file = host.path().join("runfiles").join(runfile(v));
            (v.to_string(), json!(support::sha256_hex(&file)))
        })
        .collect();
    host.set("runfile_sha256", Value::Object(digests));
    host.set(
        "runfile_url",
        json!(server.url(&format!("{prefix}NVIDIA-Linux-x86_64-{{version}}.run"))),
    );
    server
}

/// Waits until `done` holds, at most `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn prefetch_fetches_the_next_boots_module_and_the_install_after_the_reboot_downloads_nothing() {
    let mut host = FakeHost::new();
    host.runfile(V2, false);
    let server = serve(&mut host, &[V1, V2], "");
    host.kernel("6.8.12-4-pve", Some(V1), false);
    host.kernel("6.8.12-9-pve", None, false);
    host.kernel("6.8.12-10-pve", Some(V2), true);
    // What a removed kernel leaves behind: DKMS's folder, no kernel/.
    write(
        &host
            .path()
            .join("boot/lib/modules/6.9.1-1-pve/updates/dkms/nvidia.ko"),
        format!("version={V3}\n"),
    );

    let out = host.run(&["prefetch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(
        &out,
        &format!("the next boot loads kernel 6.8.12-10-pve with NVIDIA {V2}"),
    );
    said(&out, &format!("{} (", runfile(V2)));
    said(&out, "is in the cache");
    assert_eq!(server.count(&runfile(V2)), 1);
    let modinfo = std::fs::read_to_string(host.path().join("modinfo.log")).unwrap();
    assert_eq!(
        modinfo.trim(),
        format!(
            "-b {} -k 6.8.12-10-pve -F version nvidia",
            host.path().join("boot").display()
        )
    );
    let again = host.run(&["prefetch"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(
        server.count(&runfile(V2)),
        1,
        "in the cache: no second download"
    );

    // The reboot: the host loads the new module, and the container's
    // install takes the runfile from the cache.
    host.container(101, TAGGED);
    host.set_host_version(V2);
    let install = host.run(&["install", "101"]);
    assert_eq!(install.status.code(), Some(0), "{}", text(&install));
    assert_eq!(host.status_json(101)["container_version"], V2);
    assert_eq!(
        server.count(&runfile(V2)),
        1,
        "the install downloaded nothing"
    );

    // Proxmox's pins: the pinned kernel, and the next-boot pin before it.
    write(
        &host.path().join("boot/etc/kernel/proxmox-boot-pin"),
        "6.8.12-4-pve\n",
    );
    let pinned = host.run(&["prefetch"]);
    said(&pinned, &format!("kernel 6.8.12-4-pve with NVIDIA {V1}"));
    assert_eq!(server.count(&runfile(V1)), 1);
    write(
        &host.path().join("boot/etc/kernel/next-boot-pin"),
        "6.8.12-9-pve\n",
    );
    let none = host.run(&["prefetch"]);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));
    said(&none, "kernel 6.8.12-9-pve, which has no NVIDIA module");
    let named = host.run(&["prefetch", V2]);
    assert_eq!(named.status.code(), Some(0), "{}", text(&named));
    assert_eq!(server.count(&runfile(V2)), 1);
    let bad = host.run(&["prefetch", "550"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

/// A lock held as dpkg holds its own while it runs the Post-Invoke hooks,
/// handed to the hook as dpkg would hand it (no close-on-exec).
fn apt_lock(path: &Path) -> OwnedFd {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE,
        Mode::from_raw_mode(0o600),
    )
    .unwrap();
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).unwrap();
    fd
}

fn after_dpkg(host: &FakeHost, inherit: Option<&OwnedFd>) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = host.command(&["prefetch", "--after-dpkg"]);
    if let Some(fd) = inherit {
        let raw = fd.as_raw_fd();
        // SAFETY: only clears a flag of a descriptor the child inherits.
        unsafe {
            cmd.pre_exec(move || {
                let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
    }
    cmd.output().unwrap()
}

#[test]
fn the_apt_hook_fetches_in_the_background_only_when_the_next_boot_changes_the_module() {
    let mut host = FakeHost::new();
    host.runfile(V2, false);
    // The server answers after 4 s: the hook must not wait for it.
    let server = serve(&mut host, &[V1, V2], "fault/slow/");
    let slow = |v: &str| format!("fault/slow/{}", runfile(v));
    host.kernel("6.8.12-4-pve", Some(V1), true);

    let same = after_dpkg(&host, None);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(same.stderr.is_empty(), "{}", text(&same));
    assert_eq!(server.count(&slow(V1)), 0);
    assert!(!host.path().join("log/prefetch.log").exists());

    // A new kernel, and DKMS built the new driver for it.
    host.kernel("6.8.12-5-pve", Some(V2), true);
    let lock_file = host.path().join("dpkg.lock");
    let lock = apt_lock(&lock_file);
    let started = Instant::now();
    let out = after_dpkg(&host, Some(&lock));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(took < Duration::from_secs(4), "apt waited {took:?}");
    said(
        &out,
        &format!(
            "the next boot loads NVIDIA {V2} (kernel 6.8.12-5-pve, {V1} now): fetching its \
             runfile in the background; log: "
        ),
    );
    // dpkg lets its lock go: nothing of ours holds it.
    drop(lock);
    let again = apt_lock(&lock_file);
    drop(again);
    // Another dpkg run while it fetches starts nothing more.
    std::thread::sleep(Duration::from_millis(1000));
    let meanwhile = after_dpkg(&host, None);
    assert!(meanwhile.stderr.is_empty(), "{}", text(&meanwhile));

    let stamp = host.path().join("state/prefetched.json");
    wait_until(Duration::from_secs(60), "the background fetch", || {
        stamp.exists()
    });
    assert_eq!(server.count(&slow(V2)), 1);
    assert!(cached_files(&host.path().join("cache"))
        .iter()
        .any(|f| f.ends_with(runfile(V2))));
    let log = std::fs::read_to_string(host.path().join("log/prefetch.log")).unwrap();
    assert!(log.contains("is in the cache"), "{log}");
    let after = after_dpkg(&host, None);
    assert!(after.stderr.is_empty(), "{}", text(&after));
    assert_eq!(server.count(&slow(V2)), 1, "fetched once");
}

#[test]
fn status_says_when_a_reboot_changes_the_nvidia_module() {
    let host = FakeHost::new();
    host.container(101, TAGGED);
    host.kernel("6.8.12-4-pve", Some(V1), true);
    let table = |host: &FakeHost| {
        let out = host.run(&["status"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!table(&host).contains("reboot pending"));
    assert_eq!(host.status_json(101)["host_version_next_boot"], Value::Null);
    host.kernel("6.8.12-5-pve", Some(V2), true);
    assert!(
        table(&host).contains(&format!(
            "reboot pending: NVIDIA {V1} → {V2} (kernel 6.8.12-5-pve)"
        )),
        "{}",
        table(&host)
    );
    assert_eq!(host.status_json(101)["host_version_next_boot"], V2);
    // A GPU removed: no module loaded, one on disk.
    std::fs::remove_file(host.path().join("sys/module/nvidia/version")).unwrap();
    assert!(table(&host).contains(&format!(
        "no NVIDIA module loaded now; the next boot's kernel 6.8.12-5-pve has NVIDIA {V2}"
    )));
    let sync = host.run(&["sync"]);
    assert_eq!(sync.status.code(), Some(0), "{}", text(&sync));
    said(&sync, "no NVIDIA kernel module loaded on the host");
    assert!(host.calls().is_empty());
}

/// The container's last result, once no install holds it.
fn settled(host: &FakeHost, vmid: u32, runs: usize) -> Value {
    let result = host.path().join(format!("state/{vmid}.result.json"));
    wait_until(Duration::from_secs(60), "the background install", || {
        host.installer_runs(vmid) == runs
            && result.exists()
            && host.status_json(vmid)["state"] != "installing"
    });
    serde_json::from_slice(&std::fs::read(result).unwrap()).unwrap()
}

#[test]
fn sync_installs_in_the_background_and_the_timer_backs_off_after_a_failure() {
    let host = FakeHost::new();
    host.container(101, TAGGED);
    host.container(102, "hostname: web\n");
    host.container(103, TAGGED);
    host.stop(103);
    host.runfile(V1, true);

    let timer = host.run(&["sync", "--backoff"]);
    assert_eq!(timer.status.code(), Some(0), "{}", text(&timer));
    said(
        &timer,
        "CT 101: install started in the background (no NVIDIA driver in the container); log: ",
    );
    assert!(
        !stderr(&timer).contains("CT 102") && !stderr(&timer).contains("CT 103"),
        "{}",
        text(&timer)
    );
    let failed = settled(&host, 101, 1);
    assert_eq!(
        (failed["ok"].as_bool(), failed["failures"].as_u64()),
        (Some(false), Some(1))
    );

    let waits = host.run(&["sync", "--backoff"]);
    said(
        &waits,
        &format!(
            "CT 101: its install of {V1} failed 1 time(s) in a row: the timer tries again after "
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(host.installer_runs(101), 1, "the timer waits");

    // By hand it tries at once; the mirror is back.
    host.runfile(V1, false);
    let now = host.run(&["sync"]);
    said(&now, "CT 101: install started in the background");
    let ok = settled(&host, 101, 2);
    assert_eq!(
        (ok["ok"].as_bool(), ok["failures"].as_u64()),
        (Some(true), Some(0))
    );
    let quiet = host.run(&["sync", "--backoff"]);
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet));
    let by_hand = host.run(&["sync"]);
    said(&by_hand, &format!("CT 101: NVIDIA driver {V1} up to date"));
    said(&by_hand, "CT 103: not running: its next start checks it");
    assert!(!stderr(&by_hand).contains("CT 102"), "{}", text(&by_hand));
}

/// A process of the fake container as the host's /proc shows it: in the
/// cgroup `below` its `ns`, named `comm`, mapping what `maps` says.
fn process(host: &FakeHost, vmid: u32, pid: u32, below: &str, comm: &str, maps: &str) {
    let d = host.path();
    let cgroup = d.join(format!("sys/fs/cgroup/lxc/{vmid}/ns")).join(below);
    std::fs::create_dir_all(&cgroup).unwrap();
    let procs = cgroup.join("cgroup.procs");
    let listed = std::fs::read_to_string(&procs).unwrap_or_default();
    write(&procs, format!("{listed}{pid}\n"));
    write(
        &d.join(format!("proc/{pid}/cgroup")),
        format!("0::/lxc/{vmid}/ns/{below}\n"),
    );
    write(&d.join(format!("proc/{pid}/comm")), comm);
    write(&d.join(format!("proc/{pid}/maps")), maps);
}

fn mapping(path: &str) -> String {
    format!("7f1e2a000000-7f1e2a400000 r-xp 00000000 fd:01 2099                       {path}\n")
}

const LIB: &str = "/usr/lib/x86_64-linux-gnu";

#[test]
fn processes_that_map_the_old_driver_are_named_and_their_services_restarted() {
    let mut host = FakeHost::new();
    host.container(101, TAGGED);
    assert!(host.run(&["install", "101"]).status.success());
    host.runfile(V2, false);
    host.set_host_version(V2);
    let old = mapping(&format!("{LIB}/libcuda.so.{V1} (deleted)"));
    process(
        &host,
        101,
        900001,
        "system.slice/ollama.service",
        "ollama\n",
        &old,
    );
    process(&host, 101, 900002, ".lxc", "python3\n", &old);
    // The tenant's names: escapes in its name, its library's path, a unit
    // that would be an option.
    process(
        &host,
        101,
        900003,
        "system.slice/--force.service",
        "\u{1b}]0;pwned\u{7}\n",
        &mapping(&format!("/tmp/\u{1b}[2J/libnvidia-ml.so.{V1}")),
    );
    process(
        &host,
        101,
        900004,
        "system.slice/fresh.service",
        "fresh\n",
        &mapping(&format!("{LIB}/libcuda.so.{V2}")),
    );
    // Listed in the container's cgroup, but its pid now names another
    // container's process: never named.
    process(
        &host,
        101,
        900005,
        "system.slice/gone.service",
        "other\n",
        &old,
    );
    write(
        &host.path().join("proc/900005/cgroup"),
        "0::/lxc/102/ns/system.slice/other.service\n",
    );
    // Thousands of processes, deeper down: the search stops at its bound.
    let many = host
        .path()
        .join("sys/fs/cgroup/lxc/101/ns/system.slice/many.service/a/b");
    std::fs::create_dir_all(&many).unwrap();
    let pids: String = (910_000..919_000).map(|p| format!("{p}\n")).collect();
    write(&many.join("cgroup.procs"), pids);
    host.set("restart_after_install", json!("services"));

    let out = host.run(&["install", "101"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = stderr(&out);
    for said in [
        "3 processes still map another NVIDIA driver's libraries (\"Driver/library version mismatch\" until restarted): ".to_string(),
        format!("pid 900001 ollama (ollama.service): libcuda.so.{V1} (deleted)"),
        format!("pid 900002 python3: libcuda.so.{V1} (deleted)"),
        format!("pid 900003 \\u{{1b}}]0;pwned\\u{{7}}: libnvidia-ml.so.{V1}"),
        "not every process was looked at: 4910 left out".to_string(),
        "restarted ollama.service in the container".to_string(),
        "2 processes in no system service of the container: not restarted".to_string(),
        format!("result: NVIDIA driver {V2} installed (replacing {V1}); 3 processes mapped the old driver, 1 service(s) restarted, 2 processes in no service, 3 processes still"),
    ] {
        assert!(log.contains(&said), "{said}: {log}");
    }
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(
        !log.contains("pid 900004") && !log.contains("pid 900005"),
        "{log}"
    );
    let systemctl: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("systemctl"))
        .collect();
    assert_eq!(systemctl, ["systemctl restart ollama.service"]);

    // With the default, they are named and left alone.
    host.set("restart_after_install", json!("none"));
    host.runfile(V3, false);
    host.set_host_version(V3);
    let none = host.run(&["install", "101"]);
    assert_eq!(none.status.code(), Some(0), "{}", text(&none));
    said(
        &none,
        "restart them, or set restart_after_install to \"services\" or \"container\"",
    );
    assert_eq!(
        host.calls()
            .iter()
            .filter(|c| c.starts_with("systemctl"))
            .count(),
        1
    );
}

#[test]
fn the_container_is_rebooted_only_from_the_background_once_the_start_task_lets_it_go() {
    let mut host = FakeHost::new();
    host.container(101, TAGGED);
    assert!(host.run(&["install", "101"]).status.success());
    process(
        &host,
        101,
        900001,
        "system.slice/app.service",
        "app\n",
        &mapping(&format!("{LIB}/libcuda.so.{V1} (deleted)")),
    );
    host.set("restart_after_install", json!("container"));
    let reboots = host.path().join("reboots.log");

    // Inside the hook the start task holds the config lock: never.
    host.runfile(V2, false);
    host.set_host_version(V2);
    let hook = host.run(&["101", "post-start"]);
    assert_eq!(hook.status.code(), Some(0), "{}", text(&hook));
    said(&hook, "not rebooting the container: restart_after_install: container needs the background install");
    assert!(!reboots.exists());

    // In the background: once the start task has let the lock go.
    host.set("background", json!(true));
    host.runfile(V3, false);
    host.set_host_version(V3);
    let lock_dir = host.path().join("lock-lxc");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let start_task = {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        let fd = rustix::fs::open(
            lock_dir.join("pve-config-101.lock"),
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).unwrap();
        fd
    };
    let started = host.run(&["101", "post-start"]);
    said(&started, "install started in the background");
    let log = host.path().join("log/101.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(60), "the wait for the lock", || {
        read().contains("waiting for the task that holds")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !reboots.exists(),
        "rebooted while the start task held the lock"
    );
    drop(start_task);
    wait_until(Duration::from_secs(30), "the reboot", || reboots.exists());
    assert_eq!(std::fs::read_to_string(&reboots).unwrap(), "101\n");
    wait_until(Duration::from_secs(10), "the result line", || {
        read().contains("the container rebooted")
    });
    assert!(read().contains("pct reboot 101"), "{}", read());
}

/// A tenant's process can hold its memory map's lock for as long as it
/// likes: the search gives up at its deadline, the install stands, nothing
/// is restarted on a guess.
#[test]
fn a_process_map_that_never_answers_holds_no_install() {
    let mut host = FakeHost::new();
    host.container(101, TAGGED);
    assert!(host.run(&["install", "101"]).status.success());
    host.runfile(V2, false);
    host.set_host_version(V2);
    process(&host, 101, 900001, "system.slice/app.service", "app\n", "");
    let maps = host.path().join("proc/900001/maps");
    std::fs::remove_file(&maps).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&maps)
        .status()
        .unwrap();
    assert!(made.success());
    host.set("scan_timeout_secs", json!(1));
    host.set("restart_after_install", json!("services"));
    let started = Instant::now();
    let out = host.run(&["install", "101"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(
        &out,
        "cannot tell which processes still map the old driver: no answer within 1.0s",
    );
    said(&out, &format!("result: NVIDIA driver {V2} installed (replacing {V1}); which processes map the old driver could not be told, not restarted: cannot tell what to restart"));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!host.calls().iter().any(|c| c.starts_with("systemctl")));
}

#[test]
fn without_network_the_apt_hook_goes_on_and_the_fetch_fails_in_the_background() {
    let mut host = FakeHost::new();
    host.runfile(V2, false);
    let digest = support::sha256_hex(&host.path().join("runfiles").join(runfile(V2)));
    host.set("runfile_sha256", json!({ V2: digest }));
    // Nothing listens there: every connection is refused.
    host.set(
        "runfile_url",
        json!("http://127.0.0.1:9/NVIDIA-Linux-x86_64-{version}.run"),
    );
    host.kernel("6.8.12-5-pve", Some(V2), true);
    let out = after_dpkg(&host, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(&out, "fetching its runfile in the background");
    let log = host.path().join("log/prefetch.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(60), "the failed fetch", || {
        read().contains("could not be fetched")
    });
    assert!(!host.path().join("state/prefetched.json").exists());
    // Not recorded: the next dpkg run tries again, and so does the admin.
    said(
        &after_dpkg(&host, None),
        "fetching its runfile in the background",
    );
    let by_hand = host.run(&["prefetch"]);
    assert_eq!(by_hand.status.code(), Some(1), "{}", text(&by_hand));
    said(&by_hand, "after 3 attempts");
}

/// `sync` on every node, GPU or not, places our snippet under each chained
/// hookscript's name and removes those of records that are gone: `enable
/// --chain` on another node waits for it.
#[test]
fn sync_places_the_chain_snippets_on_a_node_without_a_gpu() {
    let host = FakeHost::new();
    std::fs::remove_file(host.path().join("sys/module/nvidia/version")).unwrap();
    write(
        &host.path().join("pve/storage.cfg"),
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n",
    );
    write(
        &host
            .path()
            .join("pve/pve-nvidia-hook/chain/0000000000a1.json"),
        json!({"chain": "local:snippets/site-hook", "vmid": 101, "recorded_unix": 1, "storage": "local"})
            .to_string(),
    );
    let snippets = host.path().join("root/var/lib/vz/snippets");
    write(&snippets.join("pve-nvidia-hook.0000000000b2"), "gone\n");
    let out = host.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    said(&out, "no NVIDIA kernel module loaded on the host");
    assert!(snippets.join("pve-nvidia-hook.0000000000a1").is_file());
    assert!(!snippets.join("pve-nvidia-hook.0000000000b2").exists());
    let claims = std::fs::read_dir(host.path().join("pve/pve-nvidia-hook/snippets"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(claims, ["[\"0000000000a1\"]"]);
}
