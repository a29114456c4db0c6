//! Raw `lxc.*` lines of a container config changed in place, which only
//! root may do: Proxmox's API (and so `pct set`) refuses raw keys. Lines
//! are removed from and added to the current config (before the first
//! `[section]`), every other byte is kept. `write_pct_config` writes the
//! raw keys after Proxmox's own, in their order: a line appended at the
//! end of the current config is where Proxmox's next write puts it too.

use super::{is_section_header, parse_entry, Entry};

/// A raw LXC line, `key: value` (`lxc.key = value` reads the same).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RawLine {
    pub key: String,
    pub value: String,
}

impl RawLine {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> RawLine {
        RawLine {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Display for RawLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.value)
    }
}

/// What to change in the current config.
#[derive(Debug, Default)]
pub struct Edit<'a> {
    /// Every line equal to one of these goes (the admin's own, replaced).
    pub remove_all: &'a [RawLine],
    /// One line each, the last equal one (a line this tool added once;
    /// an equal one the admin added since stays).
    pub remove_one: &'a [RawLine],
    /// Appended at the end of the current config, unless an equal line is
    /// there after the removals.
    pub add: &'a [RawLine],
}

/// The config text with `edit` applied to its current section.
pub fn edit_current(text: &str, edit: &Edit) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let content = |raw: &str| -> String {
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        line.strip_suffix('\r').unwrap_or(line).to_string()
    };
    let end = lines
        .iter()
        .position(|l| is_section_header(&content(l)))
        .unwrap_or(lines.len());
    let entry = |i: usize| -> Option<RawLine> {
        let line = content(lines[i]);
        if line.starts_with('#') {
            return None;
        }
        match parse_entry(&line)? {
            Entry::Lxc { key, value } => Some(RawLine { key, value }),
            Entry::Key { .. } => None,
        }
    };
    let mut keep = vec![true; lines.len()];
    for (i, kept) in keep.iter_mut().enumerate().take(end) {
        if entry(i).is_some_and(|e| edit.remove_all.contains(&e)) {
            *kept = false;
        }
    }
    for wanted in edit.remove_one {
        if let Some(i) = (0..end)
            .rev()
            .find(|&i| keep[i] && entry(i).as_ref() == Some(wanted))
        {
            keep[i] = false;
        }
    }
    let present: Vec<RawLine> = (0..end).filter(|&i| keep[i]).filter_map(entry).collect();
    let mut added: Vec<&RawLine> = Vec::new();
    for line in edit.add {
        if !present.contains(line) && !added.contains(&line) {
            added.push(line);
        }
    }
    // After the last line of the current config that is not blank.
    let at = (0..end)
        .rev()
        .find(|&i| keep[i] && !content(lines[i]).trim().is_empty())
        .map_or(0, |i| i + 1);
    let mut out = String::with_capacity(text.len() + added.len() * 64);
    for (i, line) in lines.iter().enumerate() {
        if i == at {
            push_added(&mut out, &added);
        }
        if keep[i] {
            out.push_str(line);
        }
    }
    if at >= lines.len() {
        push_added(&mut out, &added);
    }
    out
}

fn push_added(out: &mut String, added: &[&RawLine]) {
    if added.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in added {
        out.push_str(&format!("{line}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pct_config::PctConfig;

    const CONF: &str = "\
#GPU box
arch: amd64
dev0: /dev/dri/renderD128,gid=104
lxc.cgroup2.devices.allow: c 195:* rwm
lxc.mount.entry = /dev/nvidia0 dev/nvidia0 none bind,optional,create=file
lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file

[pve:pending]
lxc.cgroup2.devices.allow: c 195:* rwm

[snap1]
lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file
";

    fn line(text: &str) -> RawLine {
        let (k, v) = text.split_once(": ").unwrap();
        RawLine::new(k, v)
    }

    #[test]
    fn only_the_current_section_changes_and_every_other_byte_stays() {
        let bind = line("lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file");
        let rule = line("lxc.cgroup2.devices.allow: c 195:* rwm");
        let added = line("lxc.cgroup.devices.allow: c 195:0 rw");
        let out = edit_current(
            CONF,
            &Edit {
                remove_all: &[bind.clone(), rule.clone()],
                add: std::slice::from_ref(&added),
                ..Edit::default()
            },
        );
        assert_eq!(
            out,
            "#GPU box\narch: amd64\ndev0: /dev/dri/renderD128,gid=104\nlxc.cgroup.devices.allow: c 195:0 rw\n\n[pve:pending]\nlxc.cgroup2.devices.allow: c 195:* rwm\n\n[snap1]\nlxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n",
            "both spellings of the bind go, the pending and snapshot lines stay"
        );
        let again = edit_current(
            &out,
            &Edit {
                add: std::slice::from_ref(&added),
                ..Edit::default()
            },
        );
        assert_eq!(again, out, "a line that is there is not added twice");
        let parsed = PctConfig::parse(&out);
        assert_eq!(
            parsed
                .lxc_values("lxc.cgroup.devices.allow")
                .collect::<Vec<_>>(),
            ["c 195:0 rw"]
        );
    }

    #[test]
    fn one_line_removed_of_two_equal_and_files_without_a_last_newline() {
        let bind = line("lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file");
        let out = edit_current(
            CONF,
            &Edit {
                remove_one: std::slice::from_ref(&bind),
                ..Edit::default()
            },
        );
        assert!(out.contains("lxc.mount.entry = /dev/nvidia0"), "{out}");
        assert_eq!(PctConfig::parse(&out).mount_sources(), ["/dev/nvidia0"]);
        let added = line("lxc.cgroup2.devices.allow: c 511:0 rw");
        assert_eq!(
            edit_current(
                "arch: amd64",
                &Edit {
                    add: std::slice::from_ref(&added),
                    ..Edit::default()
                }
            ),
            "arch: amd64\nlxc.cgroup2.devices.allow: c 511:0 rw\n"
        );
        assert_eq!(
            edit_current(
                "",
                &Edit {
                    add: std::slice::from_ref(&added),
                    ..Edit::default()
                }
            ),
            "lxc.cgroup2.devices.allow: c 511:0 rw\n"
        );
        assert_eq!(
            edit_current(
                "[snap]\narch: amd64\n",
                &Edit {
                    add: std::slice::from_ref(&added),
                    ..Edit::default()
                }
            ),
            "lxc.cgroup2.devices.allow: c 511:0 rw\n[snap]\narch: amd64\n"
        );
    }
}
