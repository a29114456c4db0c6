//! Which of a running container's processes still map another version of
//! the NVIDIA driver's libraries than the host's: after an install replaced
//! them, such a process fails ("Driver/library version mismatch") until it
//! is restarted.
//!
//! Read from the host's `/proc` (the container's own `/proc` is the
//! tenant's, and may say anything), for the processes the kernel lists in
//! the container's cgroups, each checked to still be in them once its
//! `/proc/<pid>` folder is held (a pid may be reused). Everything read is
//! the tenant's text: names are sanitised and bounded, and so is how much is
//! read (processes, bytes per maps file). A process may hold its own memory
//! map's lock for as long as it likes, so the whole reading runs in a child
//! with a deadline, abandoned when it does not answer.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::container::fork;
use crate::host::{cgroups_are_containers, Host};
use crate::logging;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

/// At most this many processes are looked at; more are counted.
pub const MAX_PROCESSES: usize = 4096;
/// At most this many of a container's cgroups are listed.
const MAX_CGROUPS: usize = 1024;
/// Bytes read of one maps file (a large process's map is some hundreds of
/// KB); the rest is counted as cut.
const MAX_MAPS: u64 = 4 << 20;
/// Processes named in full; more are counted.
const MAX_LISTED: usize = 32;
/// Library names kept per process.
const MAX_LIBRARIES: usize = 8;
/// The longest name kept (a file name is at most 255 bytes; escaped, more).
const MAX_NAME: usize = 160;
/// The largest answer the reader sends back.
const MAX_ANSWER: usize = 1 << 20;

/// One process that maps another driver version's libraries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stale {
    /// Its pid on the host.
    pub pid: u32,
    /// Its `comm`, sanitised.
    pub name: String,
    /// The system service it runs in, inside the container, when it runs
    /// in one (a valid unit name, never an option).
    pub unit: Option<String>,
    /// The libraries' file names, sanitised (`libcuda.so.550.54.14 (deleted)`).
    pub libraries: Vec<String>,
}

/// What the search found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// The processes that map another version's libraries, at most
    /// [`MAX_LISTED`].
    pub stale: Vec<Stale>,
    /// Further such processes, not listed.
    pub more_stale: usize,
    /// Processes looked at.
    pub looked_at: usize,
    /// Processes (or cgroups) not looked at: past the bounds.
    pub left_out: usize,
    /// Processes that ended, or left the container, while it was read.
    pub gone: usize,
    /// Maps files longer than what is read of them.
    pub cut: usize,
}

impl Scan {
    pub fn stale_count(&self) -> usize {
        self.stale.len() + self.more_stale
    }

    /// Distinct system units the stale processes run in, in order.
    pub fn units(&self) -> Vec<&str> {
        let mut units: Vec<&str> = Vec::new();
        for unit in self.stale.iter().filter_map(|s| s.unit.as_deref()) {
            if !units.contains(&unit) {
                units.push(unit);
            }
        }
        units
    }
}

/// The container's processes that map another driver version than
/// `current`, read in a child within `deadline`; an error says why it
/// cannot tell.
pub fn scan(
    host: &Host,
    vmid: Vmid,
    current: &DriverVersion,
    deadline: Duration,
) -> Result<Scan, String> {
    fork::run_in_child(deadline, MAX_ANSWER, &[], || scan_here(host, vmid, current))
        .map_err(|e| format!("cannot tell which processes still map the old driver: {e}"))
}

fn scan_here(host: &Host, vmid: Vmid, current: &DriverVersion) -> Scan {
    let pids = host.container_pids(vmid, MAX_CGROUPS, MAX_PROCESSES);
    let mut scan = Scan {
        left_out: pids.left_out + pids.cgroups_left_out,
        ..Scan::default()
    };
    for pid in pids.pids {
        scan.looked_at += 1;
        match look(&host.proc, pid, vmid, current) {
            Look::Gone => scan.gone += 1,
            Look::Seen { stale, cut } => {
                scan.cut += usize::from(cut);
                match stale {
                    Some(s) if scan.stale.len() < MAX_LISTED => scan.stale.push(s),
                    Some(_) => scan.more_stale += 1,
                    None => {}
                }
            }
        }
    }
    scan
}

enum Look {
    Gone,
    Seen { stale: Option<Stale>, cut: bool },
}

fn look(proc: &Path, pid: u32, vmid: Vmid, current: &DriverVersion) -> Look {
    // Held from here on: once that process has ended, reads through it
    // fail, whoever gets its pid.
    let Ok(dir) = rustix::fs::open(
        proc.join(pid.to_string()),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Look::Gone;
    };
    let Some((cgroup, _)) = read_at(&dir, "cgroup", 64 * 1024) else {
        return Look::Gone;
    };
    if !cgroups_are_containers(&cgroup, vmid) {
        return Look::Gone;
    }
    let Some((maps, cut)) = read_at(&dir, "maps", MAX_MAPS) else {
        return Look::Gone;
    };
    let libraries = stale_libraries(&maps, current);
    if libraries.is_empty() {
        return Look::Seen { stale: None, cut };
    }
    let name = read_at(&dir, "comm", 64)
        .map(|(c, _)| logging::bounded(c.trim_end_matches('\n'), MAX_NAME))
        .unwrap_or_default();
    Look::Seen {
        stale: Some(Stale {
            pid,
            name,
            unit: unit_of(&cgroup, vmid),
            libraries,
        }),
        cut,
    }
}

/// A file of a `/proc/<pid>` folder, at most `max` bytes, and whether
/// there was more.
fn read_at(dir: &OwnedFd, name: &str, max: u64) -> Option<(String, bool)> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ok()?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    let cut = bytes.len() as u64 > max;
    bytes.truncate(max as usize);
    Some((String::from_utf8_lossy(&bytes).into_owned(), cut))
}

/// The file names of the NVIDIA driver libraries a maps text shows
/// mapped, of another version than `current`: sanitised, bounded, each
/// once, with the kernel's ` (deleted)` where it says so.
pub fn stale_libraries(maps: &str, current: &DriverVersion) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in maps.lines() {
        let Some(path) = mapped_path(line) else {
            continue;
        };
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (path, false),
        };
        let name = path.rsplit('/').next().unwrap_or_default();
        match driver_library_version(name) {
            Some(v) if &v != current => {}
            _ => continue,
        }
        let shown = logging::bounded(
            &format!("{name}{}", if deleted { " (deleted)" } else { "" }),
            MAX_NAME,
        );
        if !found.contains(&shown) {
            if found.len() == MAX_LIBRARIES {
                break;
            }
            found.push(shown);
        }
    }
    found
}

/// The path of a maps line (`start-end perms offset dev inode   path`),
/// None for an anonymous mapping.
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        rest = &rest[end..];
    }
    let path = rest.trim_start();
    path.starts_with('/').then_some(path)
}

/// The driver version an NVIDIA driver library's file name carries
/// (`libcuda.so.550.54.14`, `libnvidia-ml.so.550.54.14`,
/// `libGLX_nvidia.so.550.54.14`); None for any other file, the Container
/// Toolkit's `libnvidia-container.so.1.17.8` among them.
pub fn driver_library_version(name: &str) -> Option<DriverVersion> {
    const PREFIXES: [&str; 12] = [
        "libnvidia-",
        "libcuda.so.",
        "libcudadebugger.so.",
        "libnvcuvid.so.",
        "libnvoptix.so.",
        "libGLX_nvidia.so.",
        "libEGL_nvidia.so.",
        "libGLESv1_CM_nvidia.so.",
        "libGLESv2_nvidia.so.",
        "libvdpau_nvidia.so.",
        "libnvidia-ml.so.",
        "libOpenCL_nvidia.so.",
    ];
    if !PREFIXES.iter().any(|p| name.starts_with(p)) || name.starts_with("libnvidia-container") {
        return None;
    }
    let (_, version) = name.rsplit_once(".so.")?;
    version.parse().ok()
}

/// The system service a process runs in inside the container, from its
/// cgroup on the host (`0::/lxc/<vmid>/ns/system.slice/ollama.service`):
/// the first `.service` below `system.slice` and its sub-slices. A user's
/// services (under `user.slice`) and scopes are none: `systemctl restart`
/// of that name would restart something else, or nothing.
pub fn unit_of(cgroup: &str, vmid: Vmid) -> Option<String> {
    let inner = [format!("/lxc/{vmid}/ns/"), format!("/lxc.payload.{vmid}/")];
    // The unified hierarchy first: v1's name=systemd only where there is
    // no v2 path below the container's own.
    let mut lines: Vec<&str> = cgroup.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    lines.into_iter().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let below = inner.iter().find_map(|p| path.strip_prefix(p.as_str()))?;
        let mut parts = below.split('/');
        if parts.next()? != "system.slice" {
            return None;
        }
        let unit = parts.find(|p| !p.ends_with(".slice"))?;
        (unit.ends_with(".service") && is_unit_name(unit)).then(|| unit.to_string())
    })
}

/// systemd's unit name rules (`unit_name_is_valid`): at most 255 bytes of
/// `[A-Za-z0-9:_.\\-@]`, a non-empty prefix; never starting with `-`, so
/// never taken for an option.
pub fn is_unit_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".service") else {
        return false;
    };
    name.len() <= 255
        && !stem.is_empty()
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\-@".contains(&b))
        && !stem.starts_with('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DriverVersion {
        s.parse().unwrap()
    }

    fn ct(n: u32) -> Vmid {
        Vmid::try_from(n).unwrap()
    }

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1311                       /usr/bin/python3.11
7f1e2a000000-7f1e2a400000 r-xp 00000000 fd:01 2099                       /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14 (deleted)
7f1e2a400000-7f1e2a600000 r--p 00400000 fd:01 2099                       /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14 (deleted)
7f1e2b000000-7f1e2b100000 r-xp 00000000 fd:01 2100                       /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.90.07
7f1e2c000000-7f1e2c100000 r-xp 00000000 fd:01 2200                       /usr/lib/x86_64-linux-gnu/libnvidia-container.so.1.17.8
7f1e2d000000-7f1e2d100000 r-xp 00000000 fd:01 2300                       /usr/local/cuda/lib64/libcudart.so.12.4.127
7f1e2e000000-7f1e2e100000 rw-p 00000000 00:00 0 
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_other_versions_of_the_drivers_own_libraries_are_stale() {
        assert_eq!(
            stale_libraries(MAPS, &v("550.90.07")),
            ["libcuda.so.550.54.14 (deleted)"]
        );
        assert!(stale_libraries(MAPS, &v("550.54.14"))
            .iter()
            .any(|l| l == "libnvidia-ml.so.550.90.07"));
        assert!(stale_libraries("", &v("550.90.07")).is_empty());
        assert_eq!(
            driver_library_version("libGLX_nvidia.so.535.261.03"),
            Some(v("535.261.03"))
        );
        for other in [
            "libnvidia-container.so.1.17.8",
            "libcudart.so.12.4.127",
            "libnvidia-ml.so.1",
            "libGLX.so.0",
            "libcuda.so.12",
        ] {
            assert_eq!(driver_library_version(other), None, "{other}");
        }
    }

    #[test]
    fn hostile_names_in_maps_are_escaped_and_bounded() {
        let long = "x".repeat(5000);
        let maps = format!(
            "1-2 r-xp 0 fd:01 1 /tmp/\u{1b}]0;pwned\u{7}/libcuda.so.1.2.3\n\
             1-2 r-xp 0 fd:01 1 /tmp/libnvidia-{long}.so.1.2.3\n\
             1-2 r-xp 0 fd:01 1 /tmp/a b/libnvidia-ml.so.9.9 (deleted)\n"
        );
        let found = stale_libraries(&maps, &v("550.90.07"));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found
            .iter()
            .all(|l| l.len() <= MAX_NAME && !l.contains('\u{1b}')));
        assert_eq!(found[2], "libnvidia-ml.so.9.9 (deleted)");
        let many: String = (0..100)
            .map(|i| format!("1-2 r-xp 0 fd:01 1 /l/libnvidia-x{i}.so.1.2.{i}\n"))
            .collect();
        assert_eq!(stale_libraries(&many, &v("550.90.07")).len(), MAX_LIBRARIES);
    }

    #[test]
    fn the_unit_is_a_system_service_of_the_container() {
        let of = |text: &str| unit_of(text, ct(101));
        assert_eq!(
            of("0::/lxc/101/ns/system.slice/ollama.service\n").as_deref(),
            Some("ollama.service")
        );
        assert_eq!(
            of("0::/lxc/101/ns/system.slice/system-getty.slice/getty@tty1.service\n").as_deref(),
            Some("getty@tty1.service")
        );
        assert_eq!(
            of("0::/lxc/101/ns/system.slice/docker.service/payload\n").as_deref(),
            Some("docker.service")
        );
        assert_eq!(
            of("9:name=systemd:/lxc/101/ns/system.slice/app.service\n0::/lxc/101/ns/.lxc\n")
                .as_deref(),
            Some("app.service"),
            "v1's name=systemd where v2 names none"
        );
        for none in [
            "0::/lxc/101/ns/user.slice/user-0.slice/user@0.service/app.slice/a.service\n",
            "0::/lxc/101/ns/system.slice/docker-0123.scope\n",
            "0::/lxc/101/ns/init.scope\n",
            "0::/lxc/101/ns\n",
            "0::/lxc/102/ns/system.slice/other.service\n",
            "0::/lxc/101/ns/lxc/102/ns/system.slice/x.service\n",
            "0::/lxc/101/ns/system.slice/--force.service\n",
            "0::/lxc/101/ns/system.slice/a;reboot.service\n",
            "0::/lxc/101/ns/system.slice/\u{1b}[2J.service\n",
            "0::/lxc/101/ns/system.slice/.service\n",
        ] {
            assert_eq!(of(none), None, "{none:?}");
        }
        assert!(is_unit_name("foo-bar_baz@1:x\\x2d.service"));
        assert!(!is_unit_name(&format!("{}.service", "a".repeat(250))));
    }
}
