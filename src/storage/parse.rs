//! `storage.cfg` read as Proxmox reads it: pve-common's
//! `PVE::SectionConfig::parse_config`, then pve-storage's
//! `PVE::Storage::Plugin::parse_config` and `decode_value`.
//!
//! SectionConfig's rules, which a hand-edited file meets:
//! - a line matching `^\s*#` is skipped wherever it is;
//! - a section header is pve-storage's `parse_section_header`,
//!   `^(\S+):\s*(\S+)\s*$` (the type lower-cased); a storage ID that
//!   `parse_storage_id` refuses (`^[a-z][a-z0-9\-\_\.]*[a-z0-9]$`i, two
//!   characters at least) skips its whole section;
//! - an empty line ends a section: an indented line after it belongs to no
//!   section and is ignored;
//! - a key line is `^\s+(\S+)(\s+(.*\S))?\s*$`; a bare boolean key
//!   (`shared`, `disable`) means 1, and a boolean is `1` or `0`, nothing
//!   else (`check_value`, JSONSchema's `check_type`);
//! - a key given twice keeps its first value ("duplicate attribute");
//! - a later section with the same ID replaces the earlier one.
//!
//! Then pve-storage: `local` is forced to a `dir` at `/var/lib/vz` (with
//! snippets among its content) when it is missing, of another type or
//! pointed elsewhere, and never has a `nodes` list; a storage without
//! `content` gets its plugin's default; the types in `@SHARED_STORAGE` are
//! shared.
//!
//! Types pve-storage does not know are skipped by SectionConfig; they are
//! kept here, as a custom plugin (`/usr/share/perl5/PVE/Storage/Custom`) may
//! define them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::Storage;

pub fn parse(text: &str) -> Vec<Storage> {
    // SectionConfig's `$nextline`: comment lines are not lines at all.
    let mut lines = text.split('\n').filter(|l| !is_comment(l));
    let mut storages: Vec<Storage> = Vec::new();
    while let Some(line) = lines.next() {
        if is_false(line) {
            continue;
        }
        let Some((kind, name)) = section_header(line) else {
            continue;
        };
        let valid = storage_id_ok(&name);
        let mut storage = Storage::new(&kind, &name);
        let mut given = BTreeSet::new();
        for line in lines.by_ref() {
            if is_false(line) {
                break;
            }
            let Some((key, value)) = key_line(line) else {
                continue;
            };
            if valid && !given.contains(key) && storage.set(key, value) {
                given.insert(key.to_string());
            }
        }
        // The dir plugin requires a path: without one, check_config refuses
        // the section.
        if !valid || (storage.kind == "dir" && storage.path.is_none()) {
            continue;
        }
        if !given.contains("content") {
            storage.content = default_content(&storage.kind);
        }
        storages.retain(|s| s.name != storage.name);
        storages.push(storage);
    }
    let local_ok = storages.iter().any(|s| {
        s.name == "local" && s.kind == "dir" && s.path.as_deref() == Some(Path::new("/var/lib/vz"))
    });
    if !local_ok {
        storages.retain(|s| s.name != "local");
        storages.insert(0, injected_local());
    }
    if let Some(local) = storages.iter_mut().find(|s| s.name == "local") {
        local.nodes = None;
    }
    storages
}

impl Storage {
    /// One key, as `check_value` and `decode_value` take it; false when
    /// Proxmox refuses the value (the key then stays unset).
    fn set(&mut self, key: &str, value: Option<&str>) -> bool {
        match key {
            "path" => match value {
                Some(v) => self.path = Some(PathBuf::from(v)),
                None => return false,
            },
            "content" => match value {
                Some(v) => {
                    self.content = split_list(v)
                        .filter(|c| *c != "none")
                        .map(String::from)
                        .collect()
                }
                None => return false,
            },
            "shared" => match boolean(value) {
                Some(b) => self.shared = b,
                None => return false,
            },
            "disable" => match boolean(value) {
                Some(b) => self.disabled = b,
                None => return false,
            },
            "nodes" => match value {
                Some(v) => self.nodes = Some(split_list(v).map(String::from).collect()),
                None => return false,
            },
            "is_mountpoint" => match value {
                Some(v) => self.is_mountpoint = Some(v.to_string()),
                None => return false,
            },
            "content-dirs" => match value.and_then(content_dirs) {
                Some(dirs) => self.content_dirs = dirs,
                None => return false,
            },
            _ => return false,
        }
        true
    }
}

/// `^\s*#`.
fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// Perl's truth of a line: `""` and `"0"` end a section.
fn is_false(line: &str) -> bool {
    line.is_empty() || line == "0"
}

/// Perl's `\s`.
fn is_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\x0b'
}

/// `^(\S+):\s*(\S+)\s*$`, the first group greedy: the type is everything
/// up to the last colon that still leaves an ID.
fn section_header(line: &str) -> Option<(String, String)> {
    let line = line.trim_end_matches(is_space);
    let head_end = line.find(is_space).unwrap_or(line.len());
    let (head, rest) = line.split_at(head_end);
    let rest = rest.trim_start_matches(is_space);
    if rest.contains(is_space) {
        return None;
    }
    let (kind, name) = if rest.is_empty() {
        // `type:id` without a blank: the last colon that leaves an ID.
        let at = head
            .char_indices()
            .rev()
            .filter(|&(i, c)| c == ':' && i + 1 < head.len())
            .map(|(i, _)| i)
            .next()?;
        (&head[..at], &head[at + 1..])
    } else {
        (head.strip_suffix(':')?, rest)
    };
    (!kind.is_empty()).then(|| (kind.to_lowercase(), name.to_string()))
}

/// pve-common's `parse_id` for storage IDs.
fn storage_id_ok(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// `^\s+(\S+)(\s+(.*\S))?\s*$`: the key and, when given, its value.
fn key_line(line: &str) -> Option<(&str, Option<&str>)> {
    let body = line.trim_start_matches(is_space);
    if body.len() == line.len() {
        return None;
    }
    let body = body.trim_end_matches(is_space);
    if body.is_empty() {
        return None;
    }
    let key_end = body.find(is_space).unwrap_or(body.len());
    let (key, value) = body.split_at(key_end);
    let value = value.trim_start_matches(is_space);
    Some((key, (!value.is_empty()).then_some(value)))
}

/// A boolean property: bare means 1; then only `1` and `0` pass
/// JSONSchema's type check.
fn boolean(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("1") => Some(true),
        Some("0") => Some(false),
        Some(_) => None,
    }
}

/// PVE::Tools::split_list: on commas, semicolons and blanks.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c == ';' || is_space(c))
        .filter(|s| !s.is_empty())
}

/// `content-dirs type=relative/path,...`: refused whole when one entry is
/// not `verify_dir_override`'s `^([a-z]+)=([^.]*(?:\.?[^.]+)+)$` (no `..`,
/// no trailing dot).
fn content_dirs(value: &str) -> Option<BTreeMap<String, String>> {
    split_list(value)
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let ok = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_lowercase())
                && !v.is_empty()
                && !v.contains("..")
                && !v.ends_with('.');
            ok.then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The plugin's default content (the second element of its `content`
/// plugindata), for the types that can hold files.
fn default_content(kind: &str) -> Vec<String> {
    let types: &[&str] = match kind {
        "dir" | "btrfs" => &["images", "rootdir"],
        "nfs" | "cifs" => &["images"],
        "cephfs" => &["backup"],
        _ => &[],
    };
    types.iter().map(|s| s.to_string()).collect()
}

/// What pve-storage puts in place of a missing (or misconfigured) `local`.
fn injected_local() -> Storage {
    Storage {
        path: Some("/var/lib/vz".into()),
        content: ["backup", "images", "iso", "rootdir", "snippets", "vztmpl"]
            .map(String::from)
            .to_vec(),
        ..Storage::new("dir", "local")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_line_ends_a_section() {
        let s = parse("dir: a1\n\tpath /srv/a\n\n\tcontent snippets\n");
        let a = s.iter().find(|s| s.name == "a1").unwrap();
        assert_eq!(
            a.content,
            ["images", "rootdir"],
            "the content line is in no section"
        );
        // A line of blanks is no empty line: it is ignored, the section goes on.
        let s = parse("dir: a1\n\tpath /srv/a\n \t\n\tcontent snippets\n");
        assert_eq!(
            s.iter().find(|s| s.name == "a1").unwrap().content,
            ["snippets"]
        );
        // Comment lines are skipped wherever they are.
        let s = parse("dir: a1\n\tpath /srv/a\n# note\n  # indented note\n\tcontent snippets\n");
        assert_eq!(
            s.iter().find(|s| s.name == "a1").unwrap().content,
            ["snippets"]
        );
    }

    #[test]
    fn booleans_bare_keys_and_duplicates_as_sectionconfig() {
        let s = parse(
            "nfs: n1\n\tpath /mnt/pve/n1\n\tshared\n\tcontent snippets\n\tcontent iso\n\n\
             dir: d1\n\tpath /srv/d1\n\tdisable yes\n\tshared 0\n\n\
             dir: d2\n\tpath /srv/d2\n\tdisable\n\tpath /srv/other\n\n\
             dir: d3\n\tpath /srv/d3\n\tdisable maybe\n\tdisable 1\n",
        );
        let get = |n: &str| s.iter().find(|s| s.name == n).unwrap();
        assert!(get("n1").shared, "a bare `shared` is 1");
        assert_eq!(
            get("n1").content,
            ["snippets"],
            "the first of duplicate keys wins"
        );
        assert!(
            !get("d1").disabled,
            "`disable yes` fails the boolean check: not set"
        );
        assert!(!get("d1").shared);
        assert!(get("d2").disabled);
        assert_eq!(get("d2").path.as_deref(), Some(Path::new("/srv/d2")));
        assert!(
            get("d3").disabled,
            "a refused value leaves the key free for a later one"
        );
    }

    #[test]
    fn headers_and_ids_as_pve_storage_parses_them() {
        assert_eq!(
            section_header("dir: local"),
            Some(("dir".into(), "local".into()))
        );
        assert_eq!(
            section_header("DIR:local  "),
            Some(("dir".into(), "local".into()))
        );
        assert_eq!(section_header("dir: a b"), None);
        assert_eq!(section_header(" dir: a"), None);
        assert_eq!(section_header("dir:"), None);
        assert_eq!(section_header("a:b:c"), Some(("a:b".into(), "c".into())));
        // A bad ID skips its section, keys and all; the next one is read.
        let s = parse("dir: x\n\tpath /srv/x\n\tcontent snippets\ndir: -bad\n\tpath /b\n\ndir: ok2\n\tpath /srv/ok\n");
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["local", "ok2"]);
        // A later section with the same ID replaces the earlier one.
        let s = parse("dir: d1\n\tpath /one\n\ndir: d1\n\tpath /two\n");
        let d1: Vec<&Storage> = s.iter().filter(|s| s.name == "d1").collect();
        assert_eq!(d1.len(), 1);
        assert_eq!(d1[0].path.as_deref(), Some(Path::new("/two")));
    }

    #[test]
    fn plugin_defaults_and_content_dirs() {
        let s = parse(
            "nfs: nas\n\tpath /mnt/pve/nas\n\n\
             cephfs: cfs\n\tpath /mnt/pve/cfs\n\tcontent-dirs snippets=../x\n\n\
             dir: d1\n\tpath /srv/d1\n\tcontent none\n\tcontent-dirs snippets=hooks,iso=isos\n",
        );
        let get = |n: &str| s.iter().find(|s| s.name == n).unwrap();
        assert_eq!(get("nas").content, ["images"]);
        assert!(get("nas").is_shared());
        assert_eq!(get("cfs").content, ["backup"]);
        assert!(get("cfs").content_dirs.is_empty(), "`..` is refused");
        assert!(get("d1").content.is_empty());
        assert_eq!(get("d1").content_dirs["snippets"], "hooks");
    }
}
