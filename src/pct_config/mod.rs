//! Parser for Proxmox container configs (`/etc/pve/lxc/<vmid>.conf`), after
//! pve-container's `parse_pct_config` (`PVE/LXC/Config.pm`): only the part
//! before the first `[section]` is the current config (`[pve:pending]` and
//! snapshots follow), `#` lines are the URI-escaped description, `lxc.*`
//! keys are raw LXC keys written with `:` or `=`. Its patterns:
//!
//! - `^\[pve:pending\]\s*$`i and `^\[([a-z][a-z0-9_\-]+)\]\s*$`i start a
//!   section (a snapshot's name has two characters at least);
//! - `^(lxc\.[a-z0-9_\-\.]+)(:|\s*=)\s*(.*?)\s*$`: a colon right after the
//!   key, or `=` after optional blanks. `lxc.mount.entry : ...` is neither:
//!   Proxmox warns "unable to parse config" and drops the line;
//! - `^([a-z][a-z_]*\d*):\s*(.+?)\s*$` for its own keys (the last of
//!   duplicates wins).

mod device;
mod edit;

pub use device::Device;
pub use edit::{edit_current, Edit, RawLine};

/// Proxmox's cluster file system refuses files over 1 MiB, so a larger file
/// is not a real config and is not read further.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `key: value` (Proxmox's own keys: `tags`, `dev0`, `ostype`, ...).
    Key { key: String, value: String },
    /// `lxc.key: value` or `lxc.key = value`.
    Lxc { key: String, value: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PctConfig {
    pub description: String,
    pub entries: Vec<Entry>,
    /// Lines that are none of the above; Proxmox warns about and skips them.
    pub skipped_lines: usize,
    /// A `[section]` (snapshot, pending) follows the current config.
    pub sections: bool,
}

/// How a container is given the host's NVIDIA nodes (either way, it
/// counts as wanting the GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// A `devN:` entry passes a `/dev/nvidia*` node.
    Device,
    /// An `lxc.mount.entry` binds a `/dev/nvidia*` node.
    MountEntry,
}

impl PctConfig {
    pub fn parse(text: &str) -> PctConfig {
        let mut conf = PctConfig::default();
        let mut description = Vec::new();
        for raw in text.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if is_section_header(line) {
                conf.sections = true;
                break;
            }
            if let Some(text) = line.strip_prefix('#') {
                description.push(uri_unescape(text));
            } else if line.trim().is_empty() {
                continue;
            } else if let Some(entry) = parse_entry(line) {
                conf.entries.push(entry);
            } else {
                conf.skipped_lines += 1;
            }
        }
        conf.description = description.join("\n");
        conf
    }

    /// The config as Proxmox would write it: the tests check with it that
    /// parsing is lossless for everything it accepts.
    #[cfg(test)]
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.description.is_empty() {
            for line in self.description.split('\n') {
                out.push('#');
                out.push_str(&uri_escape(line));
                out.push('\n');
            }
        }
        for entry in &self.entries {
            match entry {
                Entry::Key { key, value } | Entry::Lxc { key, value } => {
                    out.push_str(key);
                    out.push_str(": ");
                    out.push_str(value);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The last value of a Proxmox key (a later duplicate wins, as in Proxmox).
    pub fn get(&self, wanted: &str) -> Option<&str> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Key { key, value } if key == wanted => Some(value.as_str()),
            _ => None,
        })
    }

    pub fn lxc_values<'a>(&'a self, wanted: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter_map(move |e| match e {
            Entry::Lxc { key, value } if key == wanted => Some(value.as_str()),
            _ => None,
        })
    }

    /// The raw `lxc.*` lines, in order.
    pub fn raw_lines(&self) -> Vec<RawLine> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Lxc { key, value } => Some(RawLine::new(key, value)),
                Entry::Key { .. } => None,
            })
            .collect()
    }

    /// `tags: a;b c,d`, as written (their case kept: a cluster whose
    /// `tag-style` is case-sensitive keeps it).
    pub fn raw_tags(&self) -> Vec<String> {
        self.get("tags")
            .map(|t| {
                t.split(|c: char| c == ';' || c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A tag, in any case (Proxmox lower-cases tags unless told otherwise).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.raw_tags().iter().any(|t| t.eq_ignore_ascii_case(tag))
    }

    /// Snapshot or pending sections follow the current config: a line
    /// added below the first of them is not part of it.
    pub fn has_sections(&self) -> bool {
        self.sections
    }

    /// Paths passed with `devN: [path=]/dev/...[,opt=..]`.
    pub fn device_paths(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Key { key, value } if is_dev_key(key) => device_path(value),
                _ => None,
            })
            .collect()
    }

    /// `devN:` entries (the last of a key given twice), each parsed as
    /// Proxmox's `parse_device` does, or why Proxmox refuses it (and with it
    /// the start), with the key.
    pub fn devices(&self) -> Vec<(String, Result<Device, String>)> {
        let mut keys: Vec<&str> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Key { key, .. } if is_dev_key(key) => Some(key.as_str()),
                _ => None,
            })
            .collect();
        keys.sort_by_key(|k| k[3..].parse::<usize>().unwrap_or(usize::MAX));
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                let value = self.get(key)?;
                let index = key[3..].parse().ok()?;
                Some((key.to_string(), device::parse(index, value)))
            })
            .collect()
    }

    /// The container's id mapping as LXC applies it: none for a privileged
    /// container; its `lxc.idmap` lines when it has any (which alone make it
    /// unprivileged for Proxmox), else Proxmox's default (`u 0 100000
    /// 65536`, `g 0 100000 65536`).
    pub fn idmap(&self) -> Vec<IdRange> {
        if !self.unprivileged() {
            return Vec::new();
        }
        let custom: Vec<IdRange> = self
            .lxc_values("lxc.idmap")
            .filter_map(IdRange::parse)
            .collect();
        if custom.is_empty() {
            [IdKind::User, IdKind::Group]
                .map(|kind| IdRange {
                    kind,
                    container: 0,
                    host: 100_000,
                    count: 65_536,
                })
                .to_vec()
        } else {
            custom
        }
    }

    /// Unprivileged for Proxmox: `unprivileged` set, or any `lxc.idmap`
    /// line (`update_lxc_config`: `$conf->{unprivileged} || $custom_idmap`).
    /// The value as `check_type` reads a boolean; one it refuses stays in
    /// the config as written, and Perl takes it as true unless it is `0`.
    pub fn unprivileged(&self) -> bool {
        let flag = self.get("unprivileged").is_some_and(|v| {
            !matches!(
                v.to_ascii_lowercase().as_str(),
                "0" | "off" | "no" | "false" | ""
            )
        });
        flag || self.lxc_values("lxc.idmap").next().is_some()
    }

    /// Host sources of `lxc.mount.entry` lines (`/dev/nvidia0 dev/nvidia0 none bind,...`).
    pub fn mount_sources(&self) -> Vec<&str> {
        self.lxc_values("lxc.mount.entry")
            .filter_map(|v| v.split_whitespace().next())
            .collect()
    }

    pub fn nvidia_passthrough(&self) -> Option<Passthrough> {
        let is_nvidia = |p: &str| p.starts_with("/dev/nvidia");
        if self.device_paths().into_iter().any(is_nvidia) {
            Some(Passthrough::Device)
        } else if self.mount_sources().into_iter().any(is_nvidia) {
            Some(Passthrough::MountEntry)
        } else {
            None
        }
    }

    pub fn ostype(&self) -> Option<&str> {
        self.get("ostype")
    }

    pub fn hookscript(&self) -> Option<&str> {
        self.get("hookscript")
    }
}

/// The `[pve:pending]` section of a config text, parsed as the current
/// config is: the changes `pct set` could not apply to a running
/// container (they take effect at its next start).
pub fn parse_pending(text: &str) -> PctConfig {
    let mut lines = text.split('\n');
    let found = lines.by_ref().any(|raw| {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        is_section_header(line) && is_pending_header(line)
    });
    if !found {
        return PctConfig::default();
    }
    PctConfig::parse(&lines.collect::<Vec<_>>().join("\n"))
}

fn is_pending_header(line: &str) -> bool {
    line.trim_end_matches(|c: char| c.is_ascii_whitespace())
        .eq_ignore_ascii_case("[pve:pending]")
}

/// `^\[pve:pending\]\s*$`i or `^\[([a-z][a-z0-9_\-]+)\]\s*$`i.
fn is_section_header(line: &str) -> bool {
    let Some(name) = line
        .trim_end_matches(|c: char| c.is_ascii_whitespace())
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
    else {
        return false;
    };
    is_pending_header(line)
        || (name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn parse_entry(line: &str) -> Option<Entry> {
    if let Some(rest) = line.strip_prefix("lxc.") {
        let key_end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)))
            .unwrap_or(rest.len());
        if key_end == 0 {
            return None;
        }
        let (key, after) = line.split_at(4 + key_end);
        // `(:|\s*=)`: a colon only right after the key.
        let value = after
            .strip_prefix(':')
            .or_else(|| after.trim_start().strip_prefix('='))?;
        return Some(Entry::Lxc {
            key: key.to_string(),
            value: value.trim().to_string(),
        });
    }
    let (key, value) = line.split_once(':')?;
    let value = value.trim();
    if !is_pve_key(key) || value.is_empty() {
        return None;
    }
    Some(Entry::Key {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// `[a-z][a-z_]*\d*`, Proxmox's key pattern.
fn is_pve_key(key: &str) -> bool {
    let letters = key.trim_end_matches(|c: char| c.is_ascii_digit());
    letters.starts_with(|c: char| c.is_ascii_lowercase())
        && letters.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

fn is_dev_key(key: &str) -> bool {
    key.strip_prefix("dev")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn device_path(value: &str) -> Option<&str> {
    value
        .split(',')
        .find_map(|item| match item.split_once('=') {
            Some(("path", path)) => Some(path),
            Some(_) => None,
            None => Some(item),
        })
}

fn uri_unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
fn uri_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | ':' | '\r' | '\n' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    User,
    Group,
}

/// One `lxc.idmap` range: `u 0 100000 65536` maps the container's uids
/// from 0 onto the host's from 100000, 65536 of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub kind: IdKind,
    pub container: u32,
    pub host: u32,
    pub count: u32,
}

impl IdRange {
    fn parse(value: &str) -> Option<IdRange> {
        let mut words = value.split_whitespace();
        let kind = match words.next()? {
            "u" => IdKind::User,
            "g" => IdKind::Group,
            _ => return None,
        };
        Some(IdRange {
            kind,
            container: words.next()?.parse().ok()?,
            host: words.next()?.parse().ok()?,
            count: words.next()?.parse().ok()?,
        })
    }
}

/// A host id as the container sees it through its idmap: None outside
/// every range (it shows as nobody); as is for a privileged container.
pub fn host_to_container(map: &[IdRange], kind: IdKind, host: u32) -> Option<u32> {
    if map.is_empty() {
        return Some(host);
    }
    map.iter()
        .find(|r| r.kind == kind && (r.host..r.host.saturating_add(r.count)).contains(&host))
        .and_then(|r| r.container.checked_add(host - r.host))
}

/// A container's id on the host, as `map_ct_id_to_host` maps it: None
/// outside every range, where Proxmox would use the id unmapped (a host
/// id, which no one in the container holds); as is for a privileged one.
pub fn container_to_host(map: &[IdRange], kind: IdKind, id: u32) -> Option<u32> {
    if map.is_empty() {
        return Some(id);
    }
    map.iter()
        .find(|r| {
            r.kind == kind && (r.container..r.container.saturating_add(r.count)).contains(&id)
        })
        .and_then(|r| r.host.checked_add(id - r.container))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GPU_CT: &str = "\
#Ollama on the A4000%3A do not migrate
#owner%3A ml-team 100%25
arch: amd64
cores: 8
dev0: /dev/nvidia0,gid=44,mode=0666
dev1: path=/dev/nvidiactl
dev2: /dev/nvidia-uvm
features: nesting=1
hostname: ollama
hookscript: local:snippets/pve-nvidia-hook
memory: 16384
net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth
ostype: debian
rootfs: local-lvm:vm-101-disk-0,size=64G
tags: ml;Nvidia
unprivileged: 1
lxc.cgroup2.devices.allow: c 195:* rwm
lxc.cgroup2.devices.allow = c 511:* rwm

[pve:pending]
tags: other

[before-upgrade]
tags: nvidia
dev0: /dev/nvidia1
snaptime: 1700000000
";

    #[test]
    fn real_world_gpu_container() {
        let c = PctConfig::parse(GPU_CT);
        assert_eq!(
            c.description,
            "Ollama on the A4000: do not migrate\nowner: ml-team 100%"
        );
        assert_eq!(c.raw_tags(), ["ml", "Nvidia"]);
        assert!(c.has_tag("nvidia"));
        assert_eq!(
            c.device_paths(),
            ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]
        );
        assert_eq!(c.nvidia_passthrough(), Some(Passthrough::Device));
        let devices: Vec<Device> = c.devices().into_iter().map(|(_, d)| d.unwrap()).collect();
        assert_eq!(devices[0].mode, Some(0o666));
        assert_eq!(devices[0].gid, Some(44));
        assert_eq!(
            (devices[1].index, devices[1].path.as_str()),
            (1, "/dev/nvidiactl")
        );
        assert_eq!(devices[2].mode, None);
        assert!(c.unprivileged());
        assert_eq!(c.ostype(), Some("debian"));
        assert_eq!(c.hookscript(), Some("local:snippets/pve-nvidia-hook"));
        assert_eq!(
            c.lxc_values("lxc.cgroup2.devices.allow")
                .collect::<Vec<_>>(),
            ["c 195:* rwm", "c 511:* rwm"]
        );
        assert_eq!(c.skipped_lines, 0);
    }

    #[test]
    fn pending_and_snapshot_sections_are_not_current() {
        let c = PctConfig::parse(
            "hostname: plain\n[pve:pending]\ntags: nvidia\n[snap1]\ndev0: /dev/nvidia0\n",
        );
        assert!(!c.has_tag("nvidia"));
        assert_eq!(c.nvidia_passthrough(), None);
    }

    /// Issue 15.2: Proxmox's own patterns, not looser ones.
    #[test]
    fn lines_proxmox_drops_or_reads_differently() {
        let c = PctConfig::parse(
            "lxc.mount.entry : /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n\
             lxc.mount.entry = /dev/nvidiactl dev/nvidiactl none bind,optional,create=file\n\
             lxc.: x\n\
             LXC.idmap: u 0 100000 65536\n\
             [a]\n\
             tags: nvidia\n",
        );
        assert_eq!(
            c.mount_sources(),
            ["/dev/nvidiactl"],
            "a blank before the colon: dropped"
        );
        assert_eq!(c.skipped_lines, 4);
        assert!(!c.unprivileged(), "upper-case lxc keys are no lxc keys");
        assert!(
            c.has_tag("nvidia"),
            "`[a]` is too short to be a snapshot's name"
        );
        assert!(!c.has_sections());
        let c = PctConfig::parse("hostname: a\n[PVE:Pending]\ntags: nvidia\n");
        assert!(
            c.has_sections() && !c.has_tag("nvidia"),
            "the pending header is case-insensitive"
        );
        // A custom idmap makes the container unprivileged without the key.
        assert!(PctConfig::parse("lxc.idmap: u 0 200000 65536\n").unprivileged());
        for (flag, unprivileged) in [
            ("1", true),
            ("yes", true),
            ("0", false),
            ("off", false),
            ("2", true),
        ] {
            let c = PctConfig::parse(&format!("unprivileged: {flag}\n"));
            assert_eq!(c.unprivileged(), unprivileged, "{flag}");
        }
        // A devN given twice: the last one, as Proxmox keeps it.
        let c = PctConfig::parse("dev0: /dev/nvidia0\ndev0: /dev/nvidia1,mode=666\n");
        let devices = c.devices();
        assert_eq!(devices.len(), 1);
        assert!(devices[0].1.as_ref().unwrap_err().contains("0[0-7]{3}"));
    }

    #[test]
    fn the_pending_section_and_idmaps_as_proxmox_reads_them() {
        let text = "dev0: /dev/nvidia0\nunprivileged: 1\n\n[PVE:pending]\ndev1: /dev/nvidiactl,mode=0666\ndelete: dev0\n[snap1]\ndev2: /dev/nvidia1\n";
        let pending = parse_pending(text);
        assert_eq!(pending.get("dev1"), Some("/dev/nvidiactl,mode=0666"));
        assert_eq!(pending.get("delete"), Some("dev0"));
        assert_eq!(pending.get("dev2"), None, "a snapshot is not pending");
        assert_eq!(parse_pending("dev0: /dev/nvidia0\n"), PctConfig::default());
        let map = PctConfig::parse(text).idmap();
        assert_eq!(container_to_host(&map, IdKind::Group, 44), Some(100_044));
        assert_eq!(container_to_host(&map, IdKind::Group, 70_000), None);
        assert_eq!(host_to_container(&map, IdKind::Group, 100_044), Some(44));
        assert_eq!(host_to_container(&map, IdKind::User, 0), None);
        let privileged = PctConfig::parse("arch: amd64\n").idmap();
        assert!(privileged.is_empty());
        assert_eq!(container_to_host(&privileged, IdKind::Group, 44), Some(44));
        let custom =
            PctConfig::parse("lxc.idmap: g 0 200000 1000\nlxc.idmap: g 1000 1000 1\n").idmap();
        assert_eq!(container_to_host(&custom, IdKind::Group, 1000), Some(1000));
        assert_eq!(container_to_host(&custom, IdKind::Group, 1001), None);
    }

    #[test]
    fn only_snapshot_sections() {
        let c = PctConfig::parse("[snap1]\ntags: nvidia\n");
        assert!(c.entries.is_empty());
    }

    #[test]
    fn mount_entry_passthrough() {
        let c = PctConfig::parse(
            "lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n\
             lxc.mount.entry = /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file\n",
        );
        assert_eq!(c.mount_sources(), ["/dev/nvidia0", "/dev/nvidia-uvm"]);
        assert_eq!(c.nvidia_passthrough(), Some(Passthrough::MountEntry));
    }

    #[test]
    fn non_nvidia_devices_do_not_count() {
        let c = PctConfig::parse("dev0: /dev/dri/renderD128,gid=104\nlxc.mount.entry: /dev/net dev/net none bind,create=dir\n");
        assert_eq!(c.nvidia_passthrough(), None);
    }

    #[test]
    fn tag_separators_and_case() {
        for line in [
            "tags: a;nvidia",
            "tags: a,nvidia",
            "tags: a nvidia",
            "tags: NVIDIA",
        ] {
            assert!(PctConfig::parse(line).has_tag("nvidia"), "{line}");
        }
        assert!(!PctConfig::parse("tags: nvidia-old;gpu").has_tag("nvidia"));
    }

    #[test]
    fn crlf_no_trailing_newline_duplicates_and_junk() {
        let c = PctConfig::parse("tags: a\r\nJUNK LINE\r\n\u{0}\u{1}binary\r\ntags: nvidia");
        assert!(c.has_tag("nvidia"), "the later duplicate wins");
        assert_eq!(c.skipped_lines, 2);
    }

    #[test]
    fn render_round_trip_of_real_file() {
        let c = PctConfig::parse(GPU_CT);
        assert!(c.has_sections());
        let again = PctConfig::parse(&c.render());
        assert_eq!(
            (&again.entries, &again.description),
            (&c.entries, &c.description)
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(text in "(\\PC{0,40}\n){0,12}") {
            let parsed = PctConfig::parse(&text);
            let again = PctConfig::parse(&parsed.render());
            prop_assert_eq!(again.entries, parsed.entries);
            prop_assert_eq!(again.description, parsed.description);
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PctConfig::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
