//! The admin told through Proxmox's notifications, on a real container:
//! the hook starts the install in the background, the install fails, and
//! the stand-in `PVE::Notify` records one `error`; the next start fails
//! again within the hour and nothing more is sent.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::notify::{pve_notify_stand_in, recorded};
use crate::sandbox::{Sandbox, V1};
use crate::support::text;

/// Waits until the background install's log says `line`.
fn wait_for_log(sb: &Sandbox, vmid: u32, line: &str) -> String {
    let log = sb.dir().join(format!("log/{vmid}.log"));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(line) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the background install never said {line:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root and LXC; `make test` as root runs it"]
fn e2e_a_failed_background_install_notifies_once_an_hour() {
    let mut sb = Sandbox::new("notify");
    let sent = pve_notify_stand_in(sb.dir(), &sb.dir().join("bin"));
    sb.up(9500, true, "nvidia");
    sb.set("background", json!(true));
    sb.runfile(V1, "fail");

    let out = sb.hook(9500, "post-start");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = wait_for_log(&sb, 9500, "the admin was notified (error)");
    let calls = recorded(&sent);
    assert_eq!(calls.len(), 1, "{calls:?}\n{log}");
    let call = &calls[0];
    assert_eq!(call["severity"], "error");
    assert_eq!(call["template"], "pve-nvidia-hook");
    assert_eq!(call["fields"]["type"], "pve-nvidia-hook");
    assert_eq!(call["fields"]["vmid"], "9500");
    assert!(!call["fields"]["hostname"].as_str().unwrap().is_empty());
    assert_eq!(call["data"]["vmid"], "9500");
    assert_eq!(call["data"]["host-version"], V1);
    assert_eq!(call["data"]["stage"], "driver");
    assert_eq!(
        call["data"]["log-file"],
        sb.dir().join("log/9500.log").display().to_string()
    );
    assert!(
        call["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("stand-in failure"),
        "{call}"
    );
    assert_eq!(sb.state(9500), "failed");

    // The next start, within the hour: the install fails again, silently.
    let again = sb.hook(9500, "post-start");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    wait_for_log(&sb, 9500, "less than an hour ago: not notified again");
    assert_eq!(recorded(&sent).len(), 1, "no second notification");
}
