//! Which device nodes the container's cgroup lets it open, as LXC and the
//! kernel decide it. Pure functions: the host's layout and the rules in,
//! a verdict per node out.
//!
//! - **Which rules count.** LXC (`cgfsng.c`, lxc 5.0 and 6.0) sets
//!   `lxc.cgroup2.*` limits only on a pure cgroup v2 host ("Ignoring cgroup2
//!   limits on legacy cgroup system") and `lxc.cgroup.*` ones only on a host
//!   with v1 controllers ("Ignoring legacy cgroup limits on pure cgroup2
//!   system"). PVE 8 runs pure v2 by default, PVE 9 only that. Proxmox
//!   writes a `devN`'s rule as `lxc.cgroup2.devices.allow = c M:m rw` (`r`
//!   and a `w` deny with `deny-write=1`, `update_lxc_config`), before the
//!   container's own `lxc.*` lines; LXC's `common.conf` starts from `deny a`.
//! - **cgroup v2** (`cgroup2_devices.c`, a BPF program): `a` alone resets
//!   the list (deny: allow-list, allow: deny-list); a rule equal in type,
//!   numbers and access text to an earlier one flips it; the program tries
//!   the newest rule first, skips deny rules in an allow-list (and allow
//!   rules in a deny-list), and a rule matches when the access asked is
//!   within its own. So `c 195:* r` never lets a read-write open through,
//!   and a `devices.deny` counts only as `a` or as an exact twin of an
//!   allow.
//! - **cgroup v1** (the kernel's `device_cgroup.c`): `a...` resets; in the
//!   default-deny mode an allow adds its access to the exception of the
//!   same type and numbers, a deny takes its access away from it; an open
//!   passes when one exception holds all the access asked.
//! - A rule neither can parse stops the container from starting ("Failed
//!   to parse device rule").

pub(super) use crate::devices::cgroup::{layout, parse_rule, Layout, Rule, READ, WRITE};

/// A character device the container may open with `need` (READ, WRITE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) need: u8,
}

/// Whether the rules, in order, let the container open `req`.
pub(super) fn allows(layout: Layout, rules: &[Rule], req: Request) -> bool {
    match layout {
        Layout::Unified => bpf_allows(rules, req),
        Layout::Legacy => v1_allows(rules, req),
    }
}

fn matches(kind: char, major: Option<u32>, minor: Option<u32>, req: Request) -> bool {
    (kind == 'a' || kind == 'c')
        && major.is_none_or(|m| m == req.major)
        && minor.is_none_or(|m| m == req.minor)
}

/// LXC's BPF device program (`bpf_list_add_device`, `bpf_device_add`,
/// `bpf_program_append_device`).
fn bpf_allows(rules: &[Rule], req: Request) -> bool {
    // common.conf's `lxc.cgroup2.devices.deny = a`.
    let mut deny_list = false;
    // Newest first.
    let mut list: Vec<Rule> = Vec::new();
    // `bpf_device_add`: an allow-list holds no deny rules, a deny-list no
    // allow rules.
    let skipped =
        |deny_list: bool, r: &Rule| matches!(r, Rule::One { allow, .. } if *allow == deny_list);
    for rule in rules {
        match rule {
            Rule::All(allow) => {
                deny_list = *allow;
                list.clear();
            }
            Rule::One {
                allow,
                kind,
                major,
                minor,
                access_text,
                ..
            } => {
                let twin = list.iter_mut().find(|r| {
                    matches!(r, Rule::One { kind: k, major: a, minor: b, access_text: t, .. }
                        if k == kind && a == major && b == minor && t == access_text)
                        && !skipped(deny_list, r)
                });
                match twin {
                    Some(Rule::One { allow: a, .. }) => *a = *allow,
                    _ => list.insert(0, rule.clone()),
                }
            }
        }
    }
    let asked = req.need;
    for rule in &list {
        if let Rule::One {
            allow,
            kind,
            major,
            minor,
            access,
            ..
        } = rule
        {
            if skipped(deny_list, rule) {
                continue;
            }
            if asked & !access == 0 && matches(*kind, *major, *minor, req) {
                return *allow;
            }
        }
    }
    deny_list
}

/// The kernel's cgroup v1 devices controller (`devcgroup_update_access`,
/// `dev_exception_add`/`_rm`, `match_exception`).
fn v1_allows(rules: &[Rule], req: Request) -> bool {
    // common.conf's `lxc.cgroup.devices.deny = a`.
    let mut allow_all = false;
    // Exceptions: (kind, major, minor, access).
    let mut exceptions: Vec<(char, Option<u32>, Option<u32>, u8)> = Vec::new();
    for rule in rules {
        match rule {
            Rule::All(allow) => {
                allow_all = *allow;
                exceptions.clear();
            }
            Rule::One {
                allow,
                kind,
                major,
                minor,
                access,
                ..
            } => {
                // `a *:* rwm` is `a` to the kernel: the first character decides.
                if *kind == 'a' {
                    allow_all = *allow;
                    exceptions.clear();
                    continue;
                }
                let same = |e: &&mut (char, Option<u32>, Option<u32>, u8)| {
                    e.0 == *kind && e.1 == *major && e.2 == *minor
                };
                if *allow != allow_all {
                    match exceptions.iter_mut().find(same) {
                        Some(e) => e.3 |= access,
                        None => exceptions.push((*kind, *major, *minor, *access)),
                    }
                } else {
                    if let Some(e) = exceptions.iter_mut().find(same) {
                        e.3 &= !access;
                    }
                    exceptions.retain(|e| e.3 != 0);
                }
            }
        }
    }
    let hit = |partial: bool| {
        exceptions.iter().any(|&(kind, major, minor, access)| {
            let covers = if partial {
                req.need & access != 0
            } else {
                req.need & !access == 0
            };
            kind == 'c' && matches(kind, major, minor, req) && covers
        })
    };
    if allow_all {
        !hit(true)
    } else {
        hit(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::cgroup::MKNOD;

    fn rules(lines: &[(&str, &str)]) -> Vec<Rule> {
        lines
            .iter()
            .map(|(what, value)| {
                parse_rule(*what == "allow", value, |p| {
                    (p == "/dev/nvidia0").then_some((195, 0))
                })
                .unwrap_or_else(|| panic!("{value}"))
            })
            .collect()
    }

    const RW: Request = Request {
        major: 195,
        minor: 0,
        need: READ | WRITE,
    };
    const R: Request = Request {
        major: 195,
        minor: 0,
        need: READ,
    };

    #[test]
    fn rules_as_lxc_parses_them() {
        assert_eq!(parse_rule(false, "a", |_| None), Some(Rule::All(false)));
        let one = parse_rule(true, "c 195:* rwm", |_| None).unwrap();
        assert!(matches!(
            one,
            Rule::One {
                kind: 'c',
                major: Some(195),
                minor: None,
                access: 7,
                ..
            }
        ));
        assert!(
            parse_rule(true, "c 195:* rwmx", |_| None).is_some(),
            "past three, nothing is read"
        );
        for bad in [
            "c  195:* rwm",
            "c 195:*",
            "x 195:* rwm",
            "c 195:* rx",
            "c 19a:0 r",
            "c195:0 r",
        ] {
            assert_eq!(parse_rule(true, bad, |_| None), None, "{bad}");
        }
        assert_eq!(
            rules(&[("allow", "/dev/nvidia0 rw")])[0],
            Rule::One {
                allow: true,
                kind: 'c',
                major: Some(195),
                minor: Some(0),
                access: 3,
                access_text: "rw".into()
            }
        );
    }

    #[test]
    fn cgroup2_as_lxcs_bpf_program_decides() {
        let v2 = |lines: &[(&str, &str)], req| allows(Layout::Unified, &rules(lines), req);
        assert!(!v2(&[], RW), "common.conf denies everything first");
        assert!(v2(&[("allow", "c 195:* rwm")], RW));
        assert!(
            !v2(&[("allow", "c 195:* r")], RW),
            "read-only is not read-write"
        );
        assert!(v2(&[("allow", "c 195:* r")], R));
        assert!(v2(&[("allow", "c *:* rw")], RW));
        assert!(v2(&[("allow", "a *:* rwm")], RW));
        assert!(!v2(&[("allow", "b 195:* rwm")], RW));
        // A deny counts as `a`, or as an exact twin of an allow.
        assert!(!v2(
            &[("allow", "c 195:* rwm"), ("deny", "c 195:* rwm")],
            RW
        ));
        assert!(!v2(&[("allow", "c 195:* rwm"), ("deny", "a")], RW));
        assert!(
            v2(&[("allow", "c 195:* rwm"), ("deny", "c 195:* w")], RW),
            "a partial deny is skipped"
        );
        assert!(v2(
            &[
                ("allow", "c 195:* rwm"),
                ("deny", "c 195:* rwm"),
                ("allow", "c 195:* rwm")
            ],
            RW
        ));
        // Proxmox's devN with deny-write=1: `r`, and a `w` deny.
        assert!(!v2(&[("allow", "c 195:0 r"), ("deny", "c 195:0 w")], RW));
        assert!(v2(&[("allow", "c 195:0 r"), ("deny", "c 195:0 w")], R));
        // `allow a`: everything but what a later deny holds all of (the
        // program matches a rule only when it has all the access asked).
        assert!(v2(&[("allow", "a")], RW));
        assert!(!v2(&[("allow", "a"), ("deny", "c 195:* rw")], RW));
        assert!(v2(
            &[("allow", "a"), ("deny", "c 195:* rw")],
            Request {
                major: 195,
                minor: 0,
                need: WRITE | MKNOD
            }
        ));
        assert!(!v2(
            &[("allow", "a"), ("deny", "c 195:* w")],
            Request { need: WRITE, ..RW }
        ));
        assert!(v2(&[("allow", "a"), ("deny", "c 195:* w")], RW));
    }

    #[test]
    fn cgroup1_as_the_kernels_exceptions_decide() {
        let v1 = |lines: &[(&str, &str)], req| allows(Layout::Legacy, &rules(lines), req);
        assert!(!v1(&[], RW));
        assert!(v1(&[("allow", "c 195:* rwm")], RW));
        assert!(!v1(&[("allow", "c 195:* r")], RW));
        assert!(
            v1(&[("allow", "c 195:* r"), ("allow", "c 195:* w")], RW),
            "access adds up"
        );
        assert!(
            !v1(&[("allow", "c 195:* rwm"), ("deny", "c 195:* w")], RW),
            "a deny takes access away"
        );
        assert!(v1(&[("allow", "c 195:* rwm"), ("deny", "c 195:* w")], R));
        assert!(
            v1(&[("allow", "c 195:* rwm"), ("deny", "c 195:0 w")], RW),
            "only the same numbers"
        );
        assert!(
            v1(&[("allow", "a *:* rwm")], RW),
            "`a...` is all, to the kernel"
        );
    }

    #[test]
    fn layout_from_the_cgroup_mount() {
        let dir = std::env::temp_dir().join(format!("pnh-cgroup-{}", std::process::id()));
        let top = dir.join("fs/cgroup");
        std::fs::create_dir_all(top.join("devices")).unwrap();
        assert_eq!(
            layout(&dir),
            Layout::Legacy,
            "hybrid: v1 devices, cgroup2 under unified/"
        );
        std::fs::write(top.join("cgroup.controllers"), "cpu io memory\n").unwrap();
        assert_eq!(layout(&dir), Layout::Unified);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            layout(&dir),
            Layout::Unified,
            "nothing to tell: Proxmox's default"
        );
    }
}
