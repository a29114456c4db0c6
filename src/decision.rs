//! The decisions, as pure functions of what was read: is NVIDIA requested for
//! this container, does it need an install, and what `status` calls its state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::container::detect::InstalledDriver;
use crate::pct_config::{Passthrough, PctConfig};
use crate::state::LastResult;
use crate::version::DriverVersion;

/// Why a container counts as (not) requesting the GPU; the first that
/// applies wins, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// `containers."<vmid>".nvidia` in the tool's config (true or false).
    Config,
    /// `features` contains `nvidia` in the Phoenix config.
    Phoenix,
    /// The container's `tags` contain `nvidia`.
    Tag,
    /// A `devN:` or `lxc.mount.entry` passes a `/dev/nvidia*` node.
    Passthrough,
}

impl Reason {
    /// The name `status --json` uses too.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Config => "config",
            Reason::Phoenix => "phoenix",
            Reason::Tag => "tag",
            Reason::Passthrough => "passthrough",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub wanted: bool,
    pub reason: Option<Reason>,
}

/// The tag that requests NVIDIA for a container (and that `enable` adds).
pub const NVIDIA_TAG: &str = "nvidia";

pub fn requested(config_says: Option<bool>, phoenix_says: bool, pct: &PctConfig) -> Request {
    let (wanted, reason) = if let Some(wanted) = config_says {
        (wanted, Some(Reason::Config))
    } else if phoenix_says {
        (true, Some(Reason::Phoenix))
    } else if pct.has_tag(NVIDIA_TAG) {
        (true, Some(Reason::Tag))
    } else if matches!(
        pct.nvidia_passthrough(),
        Some(Passthrough::Device | Passthrough::MountEntry)
    ) {
        (true, Some(Reason::Passthrough))
    } else {
        (false, None)
    };
    Request { wanted, reason }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    UpToDate,
    Install(String),
    /// Leave the container alone, and why: its driver comes from the host,
    /// or what it has cannot be told.
    Skip(String),
}

/// Exact comparison of parsed versions: no substring, no empty-matches-all.
/// Never an install over the host's bind mounts, nor on a guess.
pub fn decide(host: &DriverVersion, installed: &InstalledDriver, force: bool) -> Action {
    match installed {
        InstalledDriver::HostProvided(v) => Action::Skip(format!(
            "the driver{} is bind-mounted from the host (NVIDIA Container Toolkit or LXC's nvidia hook); nothing to install",
            v.as_ref().map(|v| format!(" {v}")).unwrap_or_default()
        )),
        InstalledDriver::Unknown(why) => {
            Action::Skip(format!("cannot tell what is installed, so nothing is: {why}"))
        }
        InstalledDriver::Packaged(v) => Action::Install(format!(
            "the distribution's NVIDIA packages ({v}) are installed; a runfile install of {host} replaces them"
        )),
        InstalledDriver::Installed(v) if v == host && !force => Action::UpToDate,
        InstalledDriver::Installed(v) if v == host => {
            Action::Install(format!("forced reinstall of {v}"))
        }
        InstalledDriver::Installed(v) => {
            Action::Install(format!("container has {v}, host has {host}"))
        }
        InstalledDriver::Absent => Action::Install("no NVIDIA driver in the container".into()),
        InstalledDriver::Broken(why) => Action::Install(why.clone()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    UpToDate,
    Missing,
    Mismatch,
    Installing,
    Failed,
    NotRequested,
    Stopped,
    /// The host's driver is bind-mounted in: left alone.
    HostProvided,
    /// The distribution's packages: replaced at the next start.
    Packaged,
    /// The container's files could not be read.
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::UpToDate => "up-to-date",
            State::Missing => "missing",
            State::Mismatch => "mismatch",
            State::Installing => "installing",
            State::Failed => "failed",
            State::NotRequested => "not-requested",
            State::Stopped => "stopped",
            State::HostProvided => "host-provided",
            State::Packaged => "packaged",
            State::Unknown => "unknown",
        }
    }
}

pub struct Observed<'a> {
    pub requested: bool,
    /// None when the container does not run.
    pub installed: Option<&'a InstalledDriver>,
    pub host: Option<&'a DriverVersion>,
    pub installing: bool,
    /// The last install for the current host version failed.
    pub last_failed: bool,
}

pub fn state(o: &Observed) -> State {
    let Some(installed) = o.installed else {
        return if o.requested {
            State::Stopped
        } else {
            State::NotRequested
        };
    };
    if !o.requested {
        return State::NotRequested;
    }
    if o.installing {
        return State::Installing;
    }
    match (installed, o.host) {
        (InstalledDriver::HostProvided(_), _) => State::HostProvided,
        (InstalledDriver::Unknown(_), _) => State::Unknown,
        (InstalledDriver::Installed(v), Some(h)) if v == h => State::UpToDate,
        _ if o.last_failed => State::Failed,
        (InstalledDriver::Absent, _) => State::Missing,
        (InstalledDriver::Packaged(_), _) => State::Packaged,
        _ => State::Mismatch,
    }
}

/// Whether the timer's `sync` may start a container's install now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Now,
    /// Its install failed `failures` times in a row for this host version:
    /// not before `at_unix`.
    After {
        at_unix: u64,
        failures: u32,
    },
}

/// The longest the timer leaves a container alone after failures.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// After a failed install for the host's version, `base` (an hour) before
/// the next, doubled after each further failure, at most a day; at once
/// after a success, for another host version, or with no failure counted.
pub fn retry(last: Option<&LastResult>, host: &DriverVersion, now: u64, base: Duration) -> Retry {
    let Some(last) = last.filter(|l| !l.ok && l.failures > 0 && l.host_version == host.to_string())
    else {
        return Retry::Now;
    };
    let wait = base
        .saturating_mul(2u32.saturating_pow(last.failures - 1))
        .min(MAX_RETRY_WAIT);
    let at_unix = last.finished_unix.saturating_add(wait.as_secs());
    if now >= at_unix {
        Retry::Now
    } else {
        Retry::After {
            at_unix,
            failures: last.failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DriverVersion {
        s.parse().unwrap()
    }

    #[test]
    fn request_precedence() {
        let tagged = PctConfig::parse("tags: nvidia\n");
        let plain = PctConfig::parse("hostname: x\n");
        let passed = PctConfig::parse("dev0: /dev/nvidia0\n");
        assert_eq!(
            requested(Some(false), true, &tagged),
            Request {
                wanted: false,
                reason: Some(Reason::Config)
            }
        );
        assert_eq!(
            requested(Some(true), false, &plain).reason,
            Some(Reason::Config)
        );
        assert_eq!(requested(None, true, &plain).reason, Some(Reason::Phoenix));
        assert_eq!(requested(None, false, &tagged).reason, Some(Reason::Tag));
        assert_eq!(
            requested(None, false, &passed).reason,
            Some(Reason::Passthrough)
        );
        assert_eq!(
            requested(None, false, &plain),
            Request {
                wanted: false,
                reason: None
            }
        );
    }

    #[test]
    fn reason_names_match_the_json() {
        for r in [
            Reason::Config,
            Reason::Phoenix,
            Reason::Tag,
            Reason::Passthrough,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn decision_table() {
        let host = v("550.54.14");
        assert_eq!(
            decide(&host, &InstalledDriver::Installed(v("550.54.14")), false),
            Action::UpToDate
        );
        assert!(matches!(
            decide(&host, &InstalledDriver::Installed(v("550.54.14")), true),
            Action::Install(_)
        ));
        // The plan's substring check took 550.54 for 550.54.14.
        assert!(matches!(
            decide(&host, &InstalledDriver::Installed(v("550.54")), false),
            Action::Install(_)
        ));
        assert!(
            matches!(decide(&host, &InstalledDriver::Installed(v("535.104.05")), false), Action::Install(m) if m.contains("535.104.05"))
        );
        assert!(matches!(
            decide(&host, &InstalledDriver::Absent, false),
            Action::Install(_)
        ));
        assert!(matches!(
            decide(&host, &InstalledDriver::Broken("x".into()), false),
            Action::Install(_)
        ));
        assert!(matches!(
            decide(&host, &InstalledDriver::Packaged(v("550.54.14")), false),
            Action::Install(m) if m.contains("distribution")
        ));
        // Never over the host's bind mounts, never on a guess, forced or not.
        for force in [false, true] {
            assert!(matches!(
                decide(&host, &InstalledDriver::HostProvided(Some(v("550.54.14"))), force),
                Action::Skip(m) if m.contains("bind-mounted from the host")
            ));
            assert!(matches!(
                decide(&host, &InstalledDriver::Unknown("timed out".into()), force),
                Action::Skip(m) if m.contains("cannot tell") && m.contains("timed out")
            ));
        }
    }

    #[test]
    fn state_table() {
        let host = v("550.54.14");
        let ok = InstalledDriver::Installed(host.clone());
        let old = InstalledDriver::Installed(v("535.104.05"));
        let base = |installed| Observed {
            requested: true,
            installed,
            host: Some(&host),
            installing: false,
            last_failed: false,
        };
        assert_eq!(state(&base(Some(&ok))), State::UpToDate);
        assert_eq!(state(&base(Some(&old))), State::Mismatch);
        assert_eq!(state(&base(Some(&InstalledDriver::Absent))), State::Missing);
        assert_eq!(state(&base(None)), State::Stopped);
        assert_eq!(
            state(&Observed {
                installing: true,
                ..base(Some(&old))
            }),
            State::Installing
        );
        assert_eq!(
            state(&Observed {
                last_failed: true,
                ..base(Some(&old))
            }),
            State::Failed
        );
        assert_eq!(
            state(&Observed {
                last_failed: true,
                ..base(Some(&ok))
            }),
            State::UpToDate
        );
        assert_eq!(
            state(&Observed {
                requested: false,
                ..base(Some(&ok))
            }),
            State::NotRequested
        );
        assert_eq!(
            state(&Observed {
                host: None,
                ..base(Some(&ok))
            }),
            State::Mismatch
        );
        let provided = InstalledDriver::HostProvided(None);
        assert_eq!(state(&base(Some(&provided))), State::HostProvided);
        let unknown = InstalledDriver::Unknown("timed out".into());
        assert_eq!(state(&base(Some(&unknown))), State::Unknown);
        let packaged = InstalledDriver::Packaged(host.clone());
        assert_eq!(state(&base(Some(&packaged))), State::Packaged);
    }

    #[test]
    fn the_timer_backs_off_an_hour_doubling_per_failure() {
        let hour = Duration::from_secs(3600);
        let result = |ok, failures, host: &str| LastResult {
            host_version: host.into(),
            ok,
            message: "stage runfile: 503".into(),
            warnings: Vec::new(),
            finished_unix: 1000,
            failures,
        };
        let after = |at_unix, failures| Retry::After { at_unix, failures };
        let h = v("550.54.14");
        assert_eq!(retry(None, &h, 0, hour), Retry::Now);
        for (last, now, expected, why) in [
            (
                result(false, 1, "550.54.14"),
                1000 + 3599,
                after(1000 + 3600, 1),
                "an hour",
            ),
            (
                result(false, 1, "550.54.14"),
                1000 + 3600,
                Retry::Now,
                "then at once",
            ),
            (
                result(false, 3, "550.54.14"),
                1000,
                after(1000 + 4 * 3600, 3),
                "doubling",
            ),
            (
                result(false, 40, "550.54.14"),
                1000,
                after(1000 + 24 * 3600, 40),
                "at most a day",
            ),
            (
                result(false, 3, "550.90.07"),
                1000,
                Retry::Now,
                "another host version",
            ),
            (
                result(true, 0, "550.54.14"),
                1000,
                Retry::Now,
                "after a success",
            ),
            (
                result(false, 0, "550.54.14"),
                1000,
                Retry::Now,
                "an abandoned install",
            ),
        ] {
            assert_eq!(retry(Some(&last), &h, now, hour), expected, "{why}");
        }
    }
}
