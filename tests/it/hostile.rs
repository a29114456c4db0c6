//! Hostile tenants and a hostile network, against the fake host: what the
//! host side does about locks and slots, its own configuration, downloads,
//! what reaches a log or a terminal, and which process is a container's
//! init. (The attacks that need a real container are in `e2e_hostile.rs`.)

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fake_host::{cached_files, set_mode, FakeHost, TAGGED, V1};
use crate::support::{self, expect_exit, text, write, FileServer};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_server(host: &mut FakeHost) -> FileServer {
    let server = FileServer::start(&host.path().join("runfiles"));
    let digest = support::sha256_hex(
        &host
            .path()
            .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run")),
    );
    host.set("runfile_sha256", json!(digest));
    server
}

/// Issue 10.5: a lock folder others can write is refused, and a lock file
/// that is not ours never reads as "installing", whoever holds it.
#[test]
#[ignore = "needs root (chown); `make test` as root runs it"]
fn planted_locks_never_read_as_installing_and_loose_lock_folders_are_refused() {
    let host = FakeHost::new();
    host.container(180, TAGGED);
    let lock = host.path().join("lock");
    std::fs::create_dir_all(&lock).unwrap();
    set_mode(&lock, 0o777);
    let out = host.run(&["install", "180"]);
    expect_exit(&out, 1, "writable by group or others");
    assert_eq!(host.installer_runs(180), 0);

    set_mode(&lock, 0o700);
    let planted = lock.join("180.lock");
    write(&planted, "");
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    // Someone holds it, as /run/lock's first comer could have.
    let mut holder = support::flock_holder(&planted);
    assert_eq!(
        host.status_json(180)["state"],
        "missing",
        "not 'installing'"
    );
    let out = host.run(&["install", "180"]);
    expect_exit(&out, 1, "is not a regular file of ours");
    holder.kill().unwrap();
    holder.wait().unwrap();
    std::fs::remove_file(&planted).unwrap();
    let out = host.run(&["install", "180"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Issue 10: a container is handed no host file: its commands' input is a
/// pipe of ours, not the host's /dev/null (root in a privileged container
/// could chmod what it is handed), and a descriptor the admin's shell
/// leaked reaches no command.
#[test]
fn no_host_file_is_handed_to_a_container() {
    let host = FakeHost::new();
    host.container(189, TAGGED);
    let leaked = host.path().join("host-secret");
    write(&leaked, "secret");
    // The hook as a shell with fd 7 open (no close-on-exec) starts it.
    let hook = host.command(&["install", "189"]);
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg("exec 7<\"$1\"; shift; exec \"$@\"")
        .arg("sh")
        .arg(&leaked)
        .arg(hook.get_program())
        .args(hook.get_args());
    for (key, value) in hook.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    let out = wrapped.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let fds = std::fs::read_to_string(host.path().join("fds.log")).unwrap();
    let input = fds
        .lines()
        .find(|l| l.contains(" 0 -> "))
        .unwrap_or_default();
    assert!(input.contains("pipe:"), "stdin: {input}\n{fds}");
    assert!(!fds.contains("/dev/null"), "{fds}");
    assert!(!fds.contains("host-secret"), "a leaked descriptor: {fds}");
}

/// Issue 10.6: a tenant's slow apt holds no install slot: another
/// container's install goes through while it runs.
#[test]
fn a_slow_apt_holds_no_install_slot() {
    let mut host = FakeHost::new();
    host.set("max_concurrent_installs", json!(1));
    let slow = host.container(181, TAGGED);
    host.container(182, TAGGED);
    write(&slow.join("apt-slow"), "6");
    let host = &host;
    std::thread::scope(|s| {
        let first = s.spawn(move || host.run(&["install", "181"]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !host.calls().iter().any(|c| c.contains(" update -q")) {
            assert!(Instant::now() < deadline, "181 never reached apt");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = host.run(&["install", "182"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(host.installer_runs(182), 1);
        assert_eq!(
            host.installer_runs(181),
            0,
            "182 finished while 181 was still in apt"
        );
        let out = first.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    });
}

/// Issue 10.6: a foreground wait for a slot has a limit; the whole install
/// has a budget.
#[test]
fn slot_waits_and_installs_are_bounded() {
    let mut host = FakeHost::new();
    host.set("max_concurrent_installs", json!(1));
    host.set("slot_wait_secs", json!(1));
    host.container(183, TAGGED);
    host.container(184, TAGGED);
    host.slow_runfile(V1, 5);
    let host_ref = &host;
    std::thread::scope(|s| {
        let holder = s.spawn(move || host_ref.run(&["install", "183"]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !host_ref
            .calls()
            .iter()
            .any(|c| c.contains("--no-kernel-module"))
        {
            assert!(Instant::now() < deadline, "183's installer never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let waited = host_ref.run(&["install", "184"]);
        expect_exit(&waited, 1, "no install slot came free within 1s");
        assert_eq!(host_ref.installer_runs(184), 0);
        assert!(holder.join().unwrap().status.success());
    });

    host.set("install_budget_secs", json!(2));
    let ct = host.container(185, TAGGED);
    write(&ct.join("apt-slow"), "30");
    let started = Instant::now();
    let out = host.run(&["install", "185"]);
    expect_exit(&out, 1, "timed out");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the budget ended it: {:?}",
        started.elapsed()
    );
    assert_eq!(host.installer_runs(185), 0);
}

/// Issue 10.7: the configuration is trusted only as opened: never through a
/// symlink, never in a folder others can change, nor a Phoenix file others
/// can write.
#[test]
fn a_configuration_others_could_have_written_is_never_used() {
    let mut host = FakeHost::new();
    host.container(186, TAGGED);
    let real = host.config_path();
    let link = host.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = support::run(
        &["186", "post-start"],
        Some(&host.path().join("bin")),
        &link,
    );
    expect_exit(&out, 2, "not a regular file");

    let loose = host.path().join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    std::fs::copy(&real, loose.join("config.json")).unwrap();
    set_mode(&loose, 0o777);
    let out = support::run(
        &["status"],
        Some(&host.path().join("bin")),
        &loose.join("config.json"),
    );
    expect_exit(&out, 2, "writable by group or others");

    let phoenix = host.path().join("phoenix_lxc_configs.json");
    write(
        &phoenix,
        r#"{"lxc_configs": {"186": {"features": ["nvidia"]}}}"#,
    );
    set_mode(&phoenix, 0o666);
    host.set("phoenix_config", json!(phoenix));
    let out = host.run(&["186", "post-start"]);
    expect_exit(&out, 2, "phoenix_config");
    assert!(host.calls().is_empty());
}

/// Issue 10.9: downloads are bounded in size and time, and checked against
/// the announced length before anything is written.
#[test]
fn downloads_are_bounded_in_size_and_time() {
    let mut host = FakeHost::new();
    host.container(187, TAGGED);
    let server = with_server(&mut host);
    host.set("max_download_mb", json!(1));
    host.set("download_max_secs", json!(2));
    host.set("download_timeout_secs", json!(5));
    for (fault, expected) in [
        (
            "huge",
            "over max_download_mb (1 MB); refused before writing anything",
        ),
        (
            "endless",
            "sent more than max_download_mb (1 MB); abandoned",
        ),
        ("drip", "took longer than download_max_secs (2s)"),
    ] {
        host.set(
            "runfile_url",
            json!(server.url(&format!(
                "fault/{fault}/NVIDIA-Linux-x86_64-{{version}}.run"
            ))),
        );
        let started = Instant::now();
        let out = host.run(&["install", "187"]);
        expect_exit(&out, 1, expected);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{fault}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            server.count(&format!("fault/{fault}/NVIDIA-Linux-x86_64-{V1}.run")),
            1,
            "{fault}: a limit is final, not retried"
        );
        let cached = cached_files(&host.path().join("cache"));
        assert!(cached.is_empty(), "{fault}: {cached:?}");
    }
    assert!(host.calls().is_empty());
}

/// Issue 10.10: what a container prints, and the names in its dpkg
/// database, reach no terminal or log raw.
#[test]
fn container_output_reaches_no_log_or_terminal_raw() {
    let host = FakeHost::new();
    let ct = host.container(188, TAGGED);
    let status = std::fs::read_to_string(ct.join("var/lib/dpkg/status")).unwrap();
    write(
        &ct.join("var/lib/dpkg/status"),
        format!("{status}Package: nvidia-x\x1b]0;pwned\x07\nStatus: install ok installed\n\n"),
    );
    let out = host.run(&["188", "post-start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out)
            .contains("1 package name(s) in the container's dpkg status break Debian's rules"),
        "{}",
        text(&out)
    );
    assert!(!host.calls().iter().any(|c| c.contains("purge")));
    write(&ct.join("smi-mode"), "escape");
    for out in [host.run(&["verify", "188"]), host.run(&["doctor", "188"])] {
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        assert!(
            !all.iter().any(|&b| b == 0x1b || b == 0x07 || b == b'\r'),
            "control characters got through: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&all).contains("pwned"),
            "{}",
            text(&out)
        );
    }
    let log = std::fs::read(host.path().join("state/188.result.json")).unwrap_or_default();
    assert!(!log.contains(&0x1b));
}

/// Issue 10.11: credentials and query strings never reach a log line.
#[test]
fn urls_are_logged_without_credentials_or_query() {
    let mut host = FakeHost::new();
    host.container(189, TAGGED);
    let server = with_server(&mut host);
    let url = format!(
        "http://admin:s3cret@127.0.0.1:{}/NVIDIA-Linux-x86_64-{{version}}.run?token=hunter2",
        server.port
    );
    host.set("runfile_url", json!(url));
    host.set("download_timeout_secs", json!(1));
    let out = host.run(&["install", "189"]);
    assert!(out.status.success(), "{}", text(&out));
    host.set("runfile_sha256", json!("0".repeat(64)));
    let failed = host.run(&["install", "--force", "189"]);
    expect_exit(&failed, 1, "sha256 mismatch for http://127.0.0.1:");
    for out in [&out, &failed] {
        let shown = text(out);
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2") && !shown.contains("admin@"),
            "{shown}"
        );
    }
    let result = std::fs::read_to_string(host.path().join("state/189.result.json")).unwrap();
    assert!(
        !result.contains("s3cret") && !result.contains("hunter2"),
        "{result}"
    );
}

/// Issue 10.12: the process found as a container's init is that container's
/// (its cgroup, checked after a pidfd holds it), and a container whose init
/// has exited is not read.
#[test]
fn only_the_containers_own_live_init_is_read() {
    let host = FakeHost::new();
    host.container(190, TAGGED);
    let pid = host.init_pid(190);
    // The pid now belongs to another container.
    write(
        &host.path().join(format!("proc/{pid}/cgroup")),
        "0::/lxc/999/ns\n",
    );
    assert_eq!(host.status_json(190)["state"], "stopped");
    let out = host.run(&["190", "post-start"]);
    expect_exit(&out, 0, "not running");
    write(
        &host.path().join(format!("proc/{pid}/cgroup")),
        "0::/lxc/190/ns\n",
    );
    assert_eq!(host.status_json(190)["state"], "missing");
    host.stop(190);
    assert_eq!(host.status_json(190)["state"], "stopped");
    assert!(host.calls().is_empty());
}

/// Issue 10.1: a local runfile is trusted only as opened: a file others can
/// write, or one in a folder others can change, is never run.
#[test]
fn a_local_runfile_others_could_have_changed_is_never_run() {
    let host = FakeHost::new();
    host.container(191, TAGGED);
    let runfile = host
        .path()
        .join(format!("runfiles/NVIDIA-Linux-x86_64-{V1}.run"));
    set_mode(&runfile, 0o666);
    let out = host.run(&["install", "191"]);
    expect_exit(&out, 1, "writable by group or others");
    set_mode(&runfile, 0o644);
    set_mode(&host.path().join("runfiles"), 0o777);
    let out = host.run(&["install", "191"]);
    expect_exit(&out, 1, "folder");
    assert_eq!(host.installer_runs(191), 0);
    set_mode(&host.path().join("runfiles"), 0o755);
    assert!(host.run(&["install", "191"]).status.success());
}
