//! The admin is told through Proxmox's notifications: the background
//! install (`install <vmid> --from-hook`, what the hook starts) calls
//! `PVE::Notify::notify` once, through a stand-in module that records each
//! call (tests/fakes/perl); without `PVE::Notify`, root is mailed through a
//! `sendmail` stand-in. At most once an hour per container and host version.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::fake_host::{set_mode, FakeHost, TAGGED, V1, V2};
use crate::support::{self, text, write};

/// The stand-in `PVE::Notify`, first on the @INC of the `perl` the tool
/// finds on its PATH; the file its calls are recorded in.
pub fn pve_notify_stand_in(dir: &Path, bin: &Path) -> PathBuf {
    let module = dir.join("perl/PVE/Notify.pm");
    write(
        &module,
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/perl/PVE/Notify.pm"))
            .unwrap(),
    );
    let perl = bin.join("perl");
    write(
        &perl,
        format!(
            "#!/bin/sh\nexec '{}' -I '{}' \"$@\"\n",
            support::which("perl").display(),
            dir.join("perl").display()
        ),
    );
    set_mode(&perl, 0o755);
    dir.join("notifications.jsonl")
}

pub fn recorded(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    name.split('.').next().unwrap().to_string()
}

fn failing(host: &FakeHost, version: &str) {
    host.set_host_version(version);
    host.runfile(version, true);
}

/// An install that fails sends one `error` with the fields a matcher
/// routes on and the data the template names; a second failure within the
/// hour sends nothing more; a new host version is news.
#[test]
fn a_failed_install_is_one_error_an_hour_per_container_and_host_version() {
    let host = FakeHost::new();
    let sent = pve_notify_stand_in(host.path(), &host.path().join("bin"));
    host.container(101, TAGGED);
    failing(&host, V1);

    let out = host.run(&["install", "101", "--from-hook"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let calls = recorded(&sent);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call["severity"], "error");
    assert_eq!(call["template"], "pve-nvidia-hook");
    assert_eq!(
        call["fields"],
        json!({"type": "pve-nvidia-hook", "hostname": hostname(), "vmid": "101"})
    );
    let data = &call["data"];
    assert_eq!(data["vmid"], "101");
    assert_eq!(data["host-version"], V1);
    assert_eq!(data["container-version"], "none");
    assert_eq!(data["stage"], "driver");
    assert_eq!(data["title"], "NVIDIA driver install failed");
    assert_eq!(
        data["log-file"],
        host.path().join("log/101.log").display().to_string()
    );
    assert!(
        data["detail"]
            .as_str()
            .unwrap()
            .contains("Unable to load the kernel module"),
        "{data}"
    );
    assert_eq!(
        data["fqdn"], "stand-in.example.org",
        "merged over Proxmox's common template data"
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("the admin was notified (error) through Proxmox's notifications"));

    let again = host.run(&["install", "101", "--from-hook"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert_eq!(recorded(&sent).len(), 1, "no second notification");
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("less than an hour ago: not notified again"),
        "{}",
        text(&again)
    );

    failing(&host, V2);
    let upgraded = host.run(&["install", "101", "--from-hook"]);
    assert_eq!(upgraded.status.code(), Some(1), "{}", text(&upgraded));
    let calls = recorded(&sent);
    assert_eq!(calls.len(), 2, "another host version: {calls:?}");
    assert_eq!(calls[1]["data"]["host-version"], V2);
}

/// The hook itself, and an install by hand, never notify: someone is
/// watching their output.
#[test]
fn only_the_background_install_notifies() {
    let host = FakeHost::new();
    let sent = pve_notify_stand_in(host.path(), &host.path().join("bin"));
    host.container(102, TAGGED);
    failing(&host, V1);
    let hook = host.run(&["102", "post-start"]);
    assert_eq!(hook.status.code(), Some(1), "{}", text(&hook));
    let by_hand = host.run(&["install", "102"]);
    assert_eq!(by_hand.status.code(), Some(1), "{}", text(&by_hand));
    assert!(recorded(&sent).is_empty());
}

/// `notify: all` adds an `info` for a successful install; `off` sends
/// nothing, not even for a failure.
#[test]
fn the_notify_setting_decides_what_is_told() {
    let mut host = FakeHost::new();
    let sent = pve_notify_stand_in(host.path(), &host.path().join("bin"));
    host.container(103, TAGGED);
    host.set("notify", json!("all"));
    let out = host.run(&["install", "103", "--from-hook"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = recorded(&sent);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["severity"], "info");
    assert_eq!(calls[0]["data"]["title"], "NVIDIA driver installed");
    let up_to_date = host.run(&["install", "103", "--from-hook"]);
    assert_eq!(up_to_date.status.code(), Some(0), "{}", text(&up_to_date));
    assert_eq!(recorded(&sent).len(), 1, "nothing was done: nothing told");

    host.set("notify", json!("off"));
    host.container(104, TAGGED);
    failing(&host, V2);
    let out = host.run(&["install", "104", "--from-hook"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(recorded(&sent).len(), 1);
}

/// A container whose files cannot be read is not brought to the host's
/// version: a `warning`, not an install failure.
#[test]
fn a_container_that_cannot_be_read_is_a_warning() {
    let host = FakeHost::new();
    let sent = pve_notify_stand_in(host.path(), &host.path().join("bin"));
    let root = host.container(105, TAGGED);
    std::fs::rename(&root, host.path().join("elsewhere")).unwrap();
    let out = host.run(&["install", "105", "--from-hook"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let calls = recorded(&sent);
    assert_eq!(calls.len(), 1, "{}", text(&out));
    assert_eq!(calls[0]["severity"], "warning");
    assert_eq!(
        calls[0]["data"]["title"],
        "NVIDIA driver not brought to the host's version"
    );
    assert!(
        calls[0]["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot tell what is installed, so nothing is"),
        "{}",
        calls[0]["data"]
    );
}

/// What the container's installer wrote reaches the notification without
/// a control character or a bidirectional override.
#[test]
fn a_tenants_installer_output_is_sanitised_in_the_notification() {
    let host = FakeHost::new();
    let sent = pve_notify_stand_in(host.path(), &host.path().join("bin"));
    host.container(106, TAGGED);
    let runfile = host.runfile(V1, true);
    let hostile = std::fs::read_to_string(&runfile).unwrap().replace(
        "echo 'ERROR: Unable to load the kernel module' >> \"$log\"",
        r#"printf 'ERROR: \033]0;pwned\007\033[2J \342\200\256gnp.exe\nBcc: victim@example.org\n' >> "$log""#,
    );
    write(&runfile, hostile);
    let out = host.run(&["install", "106", "--from-hook"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let calls = recorded(&sent);
    let detail = calls[0]["data"]["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("pwned"), "{detail}");
    assert!(detail.contains("\\u{202e}gnp.exe | Bcc:"), "{detail}");
    assert!(
        !detail.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{detail:?}"
    );
}

/// Without PVE::Notify (Proxmox VE before 8.1, plain Debian: this
/// machine's own perl), root is mailed through sendmail, rendered from the
/// shipped templates.
#[test]
fn without_pve_notify_root_is_mailed() {
    let host = FakeHost::new();
    let bin = host.path().join("bin");
    write(
        &bin.join("sendmail"),
        format!(
            "#!/bin/sh\necho \"$*\" >> '{0}/sendmail.args'\ncat >> '{0}/mail'\n",
            host.path().display()
        ),
    );
    set_mode(&bin.join("sendmail"), 0o755);
    host.container(107, TAGGED);
    failing(&host, V1);
    let out = host.run(&["install", "107", "--from-hook"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no PVE::Notify here"),
        "{}",
        text(&out)
    );
    let mail = std::fs::read_to_string(host.path().join("mail")).unwrap();
    assert!(
        mail.starts_with(&format!(
            "To: root\nSubject: NVIDIA driver install failed: CT 107 on {}\n",
            hostname()
        )),
        "{mail}"
    );
    assert!(mail.contains("Stage:               driver"), "{mail}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("sendmail.args"))
            .unwrap()
            .trim(),
        "-i -- root"
    );
}

/// PVE::Notify that fails (pmxcfs not answering): said in the log, and
/// root is mailed instead.
#[test]
fn a_failing_pve_notify_falls_back_to_mail() {
    let host = FakeHost::new();
    let sent = pve_notify_stand_in(host.path(), &host.path().join("bin"));
    // The stand-in cannot write its record: it dies, as PVE::Notify does.
    std::fs::create_dir_all(&sent).unwrap();
    let bin = host.path().join("bin");
    write(
        &bin.join("sendmail"),
        format!("#!/bin/sh\ncat >> '{}/mail'\n", host.path().display()),
    );
    set_mode(&bin.join("sendmail"), 0o755);
    host.container(108, TAGGED);
    failing(&host, V1);
    let out = host.run(&["install", "108", "--from-hook"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Proxmox's notification failed: exit status")
            && said.contains("mailing root instead"),
        "{said}"
    );
    assert!(std::fs::read_to_string(host.path().join("mail"))
        .unwrap()
        .contains("Subject: NVIDIA driver install failed: CT 108"));
}
