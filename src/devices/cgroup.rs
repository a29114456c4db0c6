//! Device cgroups as LXC meets them: how the host mounts its cgroups,
//! which decides the rules LXC applies (only `lxc.cgroup2.*` on a pure
//! cgroup v2 host, only `lxc.cgroup.*` where a v1 `devices` controller is
//! mounted), and a rule line as LXC parses it. What the rules then allow
//! is judged in `commands::doctor::cgroup`.

use std::path::Path;

/// How the host mounts its cgroups (under `paths.sys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `fs/cgroup` is the cgroup2 mount: only `lxc.cgroup2.*` counts.
    Unified,
    /// A v1 `devices` hierarchy (hybrid or legacy): only `lxc.cgroup.*`.
    Legacy,
}

impl Layout {
    /// The prefix of the device rules that count on this layout.
    pub fn prefix(self) -> &'static str {
        match self {
            Layout::Unified => "lxc.cgroup2.devices",
            Layout::Legacy => "lxc.cgroup.devices",
        }
    }

    pub fn key(self, what: &str) -> String {
        format!("{}.{what}", self.prefix())
    }

    /// The prefix LXC ignores on this layout, and LXC's warning.
    pub fn ignored(self) -> (&'static str, &'static str) {
        match self {
            Layout::Unified => (
                Layout::Legacy.prefix(),
                "Ignoring legacy cgroup limits on pure cgroup2 system",
            ),
            Layout::Legacy => (
                Layout::Unified.prefix(),
                "Ignoring cgroup2 limits on legacy cgroup system",
            ),
        }
    }
}

/// The host's layout: `cgroup.controllers` at the top of `fs/cgroup` is
/// the unified mount; a `devices` folder there is v1's controller. Neither
/// (no cgroup file system under `sys`): Proxmox's default, unified.
pub fn layout(sys: &Path) -> Layout {
    let top = sys.join("fs/cgroup");
    if !top.join("cgroup.controllers").exists() && top.join("devices").is_dir() {
        Layout::Legacy
    } else {
        Layout::Unified
    }
}

pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
pub const MKNOD: u8 = 4;

/// One `devices.allow` or `devices.deny` line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `a`: everything allowed (true) or denied (false), the list reset.
    All(bool),
    One {
        allow: bool,
        /// `a`, `b` or `c`.
        kind: char,
        major: Option<u32>,
        minor: Option<u32>,
        access: u8,
        /// As written: LXC compares the access as text.
        access_text: String,
    },
}

/// `type major:minor access` as LXC's `device_cgroup_rule_parse` (and the
/// kernel) read it: one blank after the type and after the numbers, `*`
/// for any number, up to three of `r`, `w`, `m`. `path` resolves the
/// `/dev/... access` form LXC accepts for `devices.allow` (None: unknown).
pub fn parse_rule(
    allow: bool,
    value: &str,
    path: impl Fn(&str) -> Option<(u32, u32)>,
) -> Option<Rule> {
    if value == "a" {
        return Some(Rule::All(allow));
    }
    if allow && value.starts_with('/') {
        let (node, access) = value.split_once(' ')?;
        let (major, minor) = path(node)?;
        let (access, access_text) = parse_access(access.trim_start_matches(' '))?;
        return Some(Rule::One {
            allow,
            kind: 'c',
            major: Some(major),
            minor: Some(minor),
            access,
            access_text,
        });
    }
    let mut chars = value.chars();
    let kind = chars.next().filter(|c| "abc".contains(*c))?;
    let rest = chars.as_str();
    let rest = rest.strip_prefix(|c: char| c.is_ascii_whitespace())?;
    let number = |s: &str| -> Option<(Option<u32>, usize)> {
        if s.starts_with('*') {
            return Some((None, 1));
        }
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        Some((Some(s[..end].parse().ok()?), end))
    };
    let (major, used) = number(rest)?;
    let rest = rest[used..].strip_prefix(':')?;
    let (minor, used) = number(rest)?;
    let rest = rest[used..].strip_prefix(|c: char| c.is_ascii_whitespace())?;
    let (access, access_text) = parse_access(rest)?;
    Some(Rule::One {
        allow,
        kind,
        major,
        minor,
        access,
        access_text,
    })
}

/// `device_cgroup_parse_access`: the first three characters, each `r`,
/// `w` or `m`; what follows them is not read.
fn parse_access(text: &str) -> Option<(u8, String)> {
    let mut bits = 0;
    let mut kept = String::new();
    for c in text.chars().take(3) {
        bits |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            '\n' => break,
            _ => return None,
        };
        kept.push(c);
    }
    Some((bits, kept))
}
