//! Telling the admin, through Proxmox's own notifications.
//!
//! Proxmox VE 8.1+ routes notifications (mail, Gotify, SMTP, webhooks) by
//! the matchers in `/etc/pve/notifications.cfg`. No API call sends one:
//! pve-manager's tools call pve-cluster's `PVE::Notify::notify($severity,
//! $template, $data, $fields)` (vzdump, replication, apt's update check),
//! which proxmox-notify renders from
//! `/usr/share/pve-manager/templates/default/<template>-subject.txt.hbs` and
//! `-body.txt.hbs` (`PVEContext::lookup_template`; the HTML body falls back
//! to the text one). The package ships ours there. So one `perl
//! -MPVE::Notify` reads the event as JSON on its standard input: a constant
//! script, no value of ours in its arguments. The fields `type`,
//! `hostname` and `vmid` are what a matcher `match-field
//! exact:type=pve-nvidia-hook` routes on. Without `PVE::Notify` (before
//! 8.1, plain Debian) root is mailed through `sendmail`, rendered from the
//! same templates; without that, the log alone says it.
//!
//! At most one notification an hour per container and host version (a
//! container whose install fails at every start must not flood the admin),
//! recorded in `<state>/<vmid>.notified.json`. Everything from a container
//! is sanitised and bounded before it is sent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{NotifyMode, Paths};
use crate::logging::{bounded, DETAIL_MAX};
use crate::process::{self, Limits};
use crate::state::{unix_now, Locks};
use crate::version::DriverVersion;
use crate::vmid::Vmid;
use NotSent::{Failed, Missing};

/// The template's name: `pve-nvidia-hook-{subject,body}.txt.hbs`.
pub const TEMPLATE: &str = "pve-nvidia-hook";
const SUBJECT: &str = include_str!("../templates/pve-nvidia-hook-subject.txt.hbs");
const BODY: &str = include_str!("../templates/pve-nvidia-hook-body.txt.hbs");

/// One notification per container and host version within this time.
const QUIET_SECS: u64 = 3600;

/// Long enough for pmxcfs and a mail relay; a notification never holds an
/// install longer.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Proxmox's severities (`PVE::Notify`: info, notice, warning, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// An install succeeded (sent with `notify: all` only).
    Info,
    /// The container cannot be brought to the host's version as it is.
    Warning,
    /// An install failed.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Severity::Info => "NVIDIA driver installed",
            Severity::Warning => "NVIDIA driver not brought to the host's version",
            Severity::Error => "NVIDIA driver install failed",
        }
    }

    fn advice(self, vmid: Vmid) -> String {
        match self {
            Severity::Info => "Nothing to do.".into(),
            Severity::Warning => format!(
                "Nothing is installed until this is changed; `pve-nvidia-hook doctor {vmid}` on the node says what to change."
            ),
            Severity::Error => format!(
                "The container's next start tries again; `pve-nvidia-hook doctor {vmid}` on the node says what stands in the way."
            ),
        }
    }
}

/// Whether `mode` tells the admin of `severity`.
pub fn wanted(mode: NotifyMode, severity: Severity) -> bool {
    match mode {
        NotifyMode::Off => false,
        NotifyMode::Errors => severity != Severity::Info,
        NotifyMode::All => true,
    }
}

/// What happened to one container's driver.
#[derive(Debug, Clone)]
pub struct Event {
    pub vmid: Vmid,
    pub severity: Severity,
    /// The host's module version the install was for, when known.
    pub host_version: Option<DriverVersion>,
    /// What the container had before.
    pub container_version: Option<DriverVersion>,
    /// The install stage that failed.
    pub stage: Option<&'static str>,
    /// The error with its causes, or what was installed. It holds text from
    /// the container (installer output, package names).
    pub detail: String,
    pub log_file: Option<PathBuf>,
}

impl Event {
    /// The template data, every value a string; the detail sanitised (no
    /// control characters, no bidirectional overrides) and bounded.
    pub fn data(&self, hostname: &str) -> Map<String, Value> {
        let or = |v: Option<String>, none: &str| v.unwrap_or_else(|| none.to_string());
        let data = json!({
            "title": self.severity.title(),
            "severity": self.severity.as_str(),
            "vmid": self.vmid.to_string(),
            "hostname": hostname,
            "host-version": or(self.host_version.as_ref().map(ToString::to_string), "unknown"),
            "container-version": or(self.container_version.as_ref().map(ToString::to_string), "none"),
            "stage": self.stage.unwrap_or("-"),
            "log-file": or(self.log_file.as_ref().map(|p| bounded(&p.display().to_string(), 512)), "-"),
            "detail": bounded(&self.detail, DETAIL_MAX),
            "advice": self.severity.advice(self.vmid),
        });
        match data {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// The metadata matchers route on, as pve-manager's tools set theirs.
    pub fn fields(&self, hostname: &str) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("type".into(), TEMPLATE.into());
        fields.insert("hostname".into(), hostname.into());
        fields.insert("vmid".into(), self.vmid.to_string().into());
        fields
    }

    fn host_key(&self) -> String {
        self.host_version
            .as_ref()
            .map_or_else(|| "unknown".to_string(), ToString::to_string)
    }
}

/// `{{key}}` replaced by the data's value, in one pass (a value that holds
/// `{{…}}` stays as it is), an unknown key by nothing: Handlebars as
/// proxmox-notify renders plain text, for what these templates use.
pub fn render(template: &str, data: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let key = rest[start + 2..start + len].trim();
        if let Some(Value::String(v)) = data.get(key) {
            out.push_str(v);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// When the admin was last told of a container, and for which host version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Sent {
    host_version: String,
    at_unix: u64,
}

/// Told of this container and host version less than an hour ago. A record
/// from the future (a clock set back) does not silence anything.
fn throttled(last: Option<&Sent>, host_version: &str, now: u64) -> bool {
    last.is_some_and(|l| {
        l.host_version == host_version && now >= l.at_unix && now - l.at_unix < QUIET_SECS
    })
}

/// How the admin was told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivered {
    Proxmox,
    Mail(PathBuf),
    LogOnly,
}

/// The programs that can tell the admin, found where the tool finds every
/// program (the caller's PATH first: that is where tests put stand-ins).
struct Tools {
    perl: Option<PathBuf>,
    sendmail: Option<PathBuf>,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            perl: process::find_program("perl"),
            sendmail: process::find_program("sendmail"),
        }
    }
}

/// Tells the admin of `event` as `mode` says, at most once an hour per
/// container and host version. Never fails: what went wrong is logged.
pub fn notify(mode: NotifyMode, paths: &Paths, locks: &Locks, event: &Event) {
    if !wanted(mode, event.severity) {
        return;
    }
    // One decision at a time on this node: two installs that fail at the
    // same moment tell the admin once.
    let _held = match locks.notify() {
        Ok(held) => held,
        Err(e) => {
            log::warn!("the admin was not notified: {e:#}");
            return;
        }
    };
    let record = paths.state.join(format!("{}.notified.json", event.vmid));
    let last = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Sent>(&b).ok());
    let now = unix_now();
    let host = event.host_key();
    if throttled(last.as_ref(), &host, now) {
        log::info!(
            "the admin was told of this container with host driver {host} less than an hour ago: not notified again"
        );
        return;
    }
    let hostname = crate::cluster::node_name(&paths.pve);
    match deliver(&Tools::find(), event, &hostname) {
        Delivered::Proxmox => log::info!(
            "the admin was notified ({}) through Proxmox's notifications (type {TEMPLATE})",
            event.severity.as_str()
        ),
        Delivered::Mail(sendmail) => log::info!(
            "no PVE::Notify here (Proxmox VE before 8.1?): root was mailed through {}",
            sendmail.display()
        ),
        Delivered::LogOnly => {
            log::warn!("no PVE::Notify and no sendmail here: this log is the only notice")
        }
    }
    let sent = Sent {
        host_version: host,
        at_unix: now,
    };
    let written = crate::fsutil::ensure_private_dir(&paths.state)
        .and_then(|()| crate::fsutil::write_atomic(&record, &serde_json::to_vec(&sent)?, 0o600));
    if let Err(e) = written {
        log::warn!("could not record the notification: {e:#}");
    }
}

fn deliver(tools: &Tools, event: &Event, hostname: &str) -> Delivered {
    let data = event.data(hostname);
    if let Some(perl) = &tools.perl {
        match through_proxmox(perl, event, &data, hostname) {
            Ok(()) => return Delivered::Proxmox,
            Err(Missing) => {}
            Err(Failed(why)) => {
                log::warn!("Proxmox's notification failed: {why}; mailing root instead")
            }
        }
    }
    if let Some(sendmail) = &tools.sendmail {
        match mail_root(sendmail, &data) {
            Ok(()) => return Delivered::Mail(sendmail.clone()),
            Err(why) => log::warn!("mailing root failed: {why}"),
        }
    }
    Delivered::LogOnly
}

enum NotSent {
    /// No `PVE::Notify`: not a Proxmox VE 8.1+ node.
    Missing,
    Failed(String),
}

/// Reads `{severity, template, data, fields}` as JSON, merges the data over
/// Proxmox's common template data (`fqdn`, `cluster-name`) and calls
/// `PVE::Notify::notify` with it.
const PERL_SCRIPT: &str = r#"use strict; use warnings; use JSON::PP;
my $n = JSON::PP->new->utf8->decode(do { local $/; <STDIN> });
my $data = eval { PVE::Notify::common_template_data() } || {};
$data->{$_} = $n->{data}{$_} for keys %{$n->{data}};
PVE::Notify::notify($n->{severity}, $n->{template}, $data, $n->{fields});
"#;

fn through_proxmox(
    perl: &Path,
    event: &Event,
    data: &Map<String, Value>,
    hostname: &str,
) -> Result<(), NotSent> {
    let input = json!({
        "severity": event.severity.as_str(),
        "template": TEMPLATE,
        "data": data,
        "fields": event.fields(hostname),
    })
    .to_string()
    .into_bytes();
    let args = [
        "-MPVE::Notify".to_string(),
        "-e".to_string(),
        PERL_SCRIPT.to_string(),
    ];
    let feed: process::Feed = Box::new(move |w: &mut dyn Write| w.write_all(&input));
    let out = process::run_with(perl, &args, Some(feed), Limits::quick(SEND_TIMEOUT))
        .map_err(|e| Failed(format!("{e:#}")))?;
    if out.success() {
        return Ok(());
    }
    if String::from_utf8_lossy(&out.stderr).contains("Can't locate PVE/Notify.pm") {
        return Err(Missing);
    }
    Err(Failed(format!(
        "{}: {}",
        out.describe_status(),
        out.diagnostic()
    )))
}

/// The same text as Proxmox would render, mailed to root.
fn mail_root(sendmail: &Path, data: &Map<String, Value>) -> Result<(), String> {
    // A header is one line of ASCII: the rendered subject is sanitised
    // already, and anything else is replaced.
    let subject: String = render(SUBJECT, data)
        .replace('\n', " ")
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    let message = format!(
        "To: root\nSubject: {subject}\nAuto-Submitted: auto-generated\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n{}",
        render(BODY, data)
    )
    .into_bytes();
    let args = ["-i".to_string(), "--".to_string(), "root".to_string()];
    let feed: process::Feed = Box::new(move |w: &mut dyn Write| w.write_all(&message));
    match process::run_with(sendmail, &args, Some(feed), Limits::quick(SEND_TIMEOUT)) {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(format!("{}: {}", out.describe_status(), out.diagnostic())),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(severity: Severity) -> Event {
        Event {
            vmid: Vmid::try_from(101).unwrap(),
            severity,
            host_version: Some("550.54.14".parse().unwrap()),
            container_version: Some("535.261.03".parse().unwrap()),
            stage: Some("driver"),
            detail: "installing NVIDIA driver 550.54.14: stage driver: exit status 1".into(),
            log_file: Some("/var/log/pve-nvidia-hook/101.log".into()),
        }
    }

    #[test]
    fn what_each_setting_tells() {
        use NotifyMode::*;
        use Severity::*;
        for (mode, severity, told) in [
            (Errors, Error, true),
            (Errors, Warning, true),
            (Errors, Info, false),
            (All, Info, true),
            (All, Error, true),
            (Off, Error, false),
            (Off, Warning, false),
        ] {
            assert_eq!(wanted(mode, severity), told, "{mode:?} {severity:?}");
        }
    }

    #[test]
    fn once_an_hour_per_container_and_host_version() {
        let sent = Sent {
            host_version: "550.54.14".into(),
            at_unix: 10_000,
        };
        assert!(!throttled(None, "550.54.14", 10_000));
        assert!(throttled(Some(&sent), "550.54.14", 10_000));
        assert!(throttled(Some(&sent), "550.54.14", 10_000 + 3599));
        assert!(!throttled(Some(&sent), "550.54.14", 10_000 + 3600));
        assert!(
            !throttled(Some(&sent), "550.90.07", 10_001),
            "another host version is news"
        );
        assert!(
            !throttled(Some(&sent), "550.54.14", 9_000),
            "a record from the future silences nothing"
        );
    }

    /// Every variable the shipped templates use is in the data, and the
    /// subject is one line, as proxmox-notify needs it.
    #[test]
    fn the_shipped_templates_render_from_the_data() {
        let data = event(Severity::Error).data("pve1");
        for template in [SUBJECT, BODY] {
            let mut rest = template;
            while let Some(start) = rest.find("{{") {
                let end = rest[start..].find("}}").unwrap();
                let key = rest[start + 2..start + end].trim();
                assert!(data.contains_key(key), "{key} is not in the data");
                rest = &rest[start + end + 2..];
            }
        }
        assert_eq!(
            render(SUBJECT, &data).trim(),
            "NVIDIA driver install failed: CT 101 on pve1"
        );
        let body = render(BODY, &data);
        for line in [
            "Host kernel module:  550.54.14",
            "Container driver:    535.261.03",
            "Stage:               driver",
            "Log:                 /var/log/pve-nvidia-hook/101.log",
        ] {
            assert!(body.contains(line), "{line:?} in {body}");
        }
        assert_eq!(
            serde_json::to_value(event(Severity::Error).fields("pve1")).unwrap(),
            json!({"type": "pve-nvidia-hook", "hostname": "pve1", "vmid": "101"})
        );
    }

    /// A tenant's text (installer output, file names) reaches the admin
    /// without anything a terminal or a mail reader acts on, bounded, and
    /// never rendered as a template.
    #[test]
    fn container_text_is_sanitised_bounded_and_not_a_template() {
        let mut e = event(Severity::Error);
        e.detail = format!(
            "ERROR: \x1b]0;pwned\x07\x1b[2J{{{{title}}}}\nBcc: victim@example.org\u{202e}txt{}",
            "A".repeat(20_000)
        );
        let data = e.data("pve1");
        let detail = data["detail"].as_str().unwrap();
        assert!(detail.len() <= DETAIL_MAX, "{}", detail.len());
        assert!(!detail.chars().any(|c| c.is_control()), "{detail:?}");
        assert!(detail.contains("\\u{1b}]0;pwned\\u{7}") && detail.contains("\\u{202e}"));
        let body = render(BODY, &data);
        assert!(body.contains("{{title}}"), "a value is not rendered again");
        assert!(
            !body.contains("\nBcc:"),
            "no line of the tenant's starts a line"
        );
    }

    #[test]
    fn without_pve_notify_root_is_mailed_and_without_sendmail_the_log_says_it() {
        let d = crate::container::confined::tests::tempdir("notify-mail");
        let sendmail = d.join("sendmail");
        std::fs::write(
            &sendmail,
            format!(
                "#!/bin/sh\necho \"$*\" > '{0}/args'\ncat > '{0}/mail'\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &sendmail,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let e = event(Severity::Warning);
        let tools = Tools {
            perl: None,
            sendmail: Some(sendmail.clone()),
        };
        assert_eq!(deliver(&tools, &e, "pve1"), Delivered::Mail(sendmail));
        assert_eq!(
            std::fs::read_to_string(d.join("args")).unwrap().trim(),
            "-i -- root"
        );
        let mail = std::fs::read_to_string(d.join("mail")).unwrap();
        assert!(
            mail.starts_with("To: root\nSubject: NVIDIA driver not brought to the host's version: CT 101 on pve1\n"),
            "{mail}"
        );
        assert!(mail.contains("\n\nNVIDIA driver not brought"), "{mail}");
        let none = Tools {
            perl: None,
            sendmail: None,
        };
        assert_eq!(deliver(&none, &e, "pve1"), Delivered::LogOnly);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
