//! What the Proxmox host knows: the loaded NVIDIA kernel module's version and
//! which process is a running container's init. Everything here reads files
//! under the configured `sys` and `proc` roots; only the last-resort version
//! query runs a program.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{self, Limits};
use crate::version::{self, DriverVersion};
use crate::vmid::Vmid;

/// Where the host's version was read: `doctor` says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    SysModule,
    ProcDriver,
    NvidiaSmi,
}

impl std::fmt::Display for VersionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VersionSource::SysModule => "/sys/module/nvidia/version",
            VersionSource::ProcDriver => "/proc/driver/nvidia/version",
            VersionSource::NvidiaSmi => "nvidia-smi",
        })
    }
}

pub struct Host {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

/// Small kernel files: more than this is not what the kernel writes.
const MAX_KERNEL_FILE: u64 = 64 * 1024;

impl Host {
    pub fn new(sys: &Path, proc: &Path) -> Host {
        Host {
            sys: sys.to_path_buf(),
            proc: proc.to_path_buf(),
        }
    }

    /// The host kernel module's version; Ok(None) when no NVIDIA module is
    /// loaded.
    pub fn driver_version(&self) -> Result<Option<(DriverVersion, VersionSource)>> {
        let sys_file = self.sys.join("module/nvidia/version");
        if let Some(text) = read_small(&sys_file)? {
            let v = version::from_sys_module(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", sys_file.display()))?;
            return Ok(Some((v, VersionSource::SysModule)));
        }
        let proc_file = self.proc.join("driver/nvidia/version");
        if let Some(text) = read_small(&proc_file)? {
            let v = version::from_proc_driver(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", proc_file.display()))?;
            return Ok(Some((v, VersionSource::ProcDriver)));
        }
        let Some(smi) = process::find_program("nvidia-smi") else {
            return Ok(None);
        };
        let out = process::run(
            &smi,
            &["--query-gpu=driver_version", "--format=csv,noheader"],
            Limits::quick(Duration::from_secs(10)),
        )
        .context("running nvidia-smi on the host")?;
        if !out.success() {
            return Ok(None);
        }
        let v = version::from_nvidia_smi(&out.stdout_text())
            .map_err(anyhow::Error::msg)
            .context("host nvidia-smi")?;
        Ok(Some((v, VersionSource::NvidiaSmi)))
    }

    /// The container's init, found through the container's cgroup without
    /// running a program (the process in it that is pid 1 of its own pid
    /// namespace) and held by a pidfd from then on. None when the container
    /// does not run (or its cgroup layout is unknown: the caller then asks
    /// `lxc-info` for a pid and calls [`Host::init_at`]).
    pub fn container_init(&self, vmid: Vmid) -> Option<Init> {
        let cgroup = self.sys.join("fs/cgroup");
        container_cgroup_roots(vmid)
            .iter()
            .map(|r| cgroup.join(r))
            .filter(|p| p.is_dir())
            .find_map(|root| self.find_init_below(&root, vmid))
    }

    /// `pid` as the container's init: a pidfd taken first, then the process
    /// it names checked (pid 1 of its namespace, in the container's cgroup).
    /// From then on [`Init::alive`] tells whether this is still that process:
    /// a pid reused by another container's process is never taken for it.
    pub fn init_at(&self, vmid: Vmid, pid: u32) -> Option<Init> {
        let init = Init::hold(pid)?;
        (self.is_namespace_init(pid) && self.in_container_cgroup(pid, vmid) && init.alive())
            .then_some(init)
    }

    /// `/proc/<pid>/cgroup` places the process in the container's cgroup.
    fn in_container_cgroup(&self, pid: u32, vmid: Vmid) -> bool {
        let Ok(Some(text)) = read_small(&self.proc.join(format!("{pid}/cgroup"))) else {
            return false;
        };
        cgroups_are_containers(&text, vmid)
    }

    /// Breadth-first through at most a few dozen cgroups: a container may
    /// create its own sub-cgroups, and must not make this walk expensive.
    fn find_init_below(&self, root: &Path, vmid: Vmid) -> Option<Init> {
        CgroupWalk::new(root, 64, 3).find_map(|dir| {
            read_pids(&dir)
                .into_iter()
                .find_map(|pid| self.init_at(vmid, pid))
        })
    }

    /// The processes of a running container as the kernel lists them in
    /// its cgroups (one hierarchy: each process is in exactly one cgroup
    /// of it), at most `max_cgroups` cgroups and `max_pids` processes.
    pub fn container_pids(&self, vmid: Vmid, max_cgroups: usize, max_pids: usize) -> Pids {
        let cgroup = self.sys.join("fs/cgroup");
        let Some(root) = container_cgroup_roots(vmid)
            .iter()
            .map(|r| cgroup.join(r))
            .find(|p| p.is_dir())
        else {
            return Pids::default();
        };
        let mut walk = CgroupWalk::new(&root, max_cgroups, 16);
        let mut found = Pids::default();
        for dir in walk.by_ref() {
            for pid in read_pids(&dir) {
                if found.pids.len() < max_pids {
                    found.pids.push(pid);
                } else {
                    found.left_out += 1;
                }
            }
        }
        found.cgroups_left_out = walk.left_out();
        found
    }

    /// True when `pid` is pid 1 of a pid namespace one level below ours.
    pub fn is_namespace_init(&self, pid: u32) -> bool {
        let Ok(Some(status)) = read_small(&self.proc.join(format!("{pid}/status"))) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|ids| ids.split_whitespace().collect::<Vec<_>>())
            .is_some_and(|ids| ids.len() == 2 && ids[1] == "1")
    }

    /// `/proc/<pid>`, held as a folder: it gives the process's root and
    /// mount table for as long as that process lives, and nothing after
    /// (not another process that reuses the pid); it keeps none of its
    /// file systems alive.
    pub fn proc_dir(&self, pid: u32) -> std::io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            self.proc.join(pid.to_string()),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?)
    }
}

/// Where a container's cgroup is, under `/sys/fs/cgroup`: Proxmox's
/// `lxc/<vmid>` and LXC's `lxc.payload.<vmid>`, on the unified hierarchy
/// (cgroup v2, or v1's `unified`) and v1's `pids`.
fn container_cgroup_roots(vmid: Vmid) -> [String; 6] {
    [
        format!("lxc/{vmid}"),
        format!("lxc.payload.{vmid}"),
        format!("unified/lxc.payload.{vmid}"),
        format!("unified/lxc/{vmid}"),
        format!("pids/lxc.payload.{vmid}"),
        format!("pids/lxc/{vmid}"),
    ]
}

/// The processes of a container's cgroups, as far as they were listed.
#[derive(Debug, Default)]
pub struct Pids {
    pub pids: Vec<u32>,
    /// Processes listed past the bound.
    pub left_out: usize,
    /// Cgroups not looked into (past the bound on cgroups or depth).
    pub cgroups_left_out: usize,
}

/// The pids a cgroup's `cgroup.procs` lists (none when it cannot be read).
fn read_pids(dir: &Path) -> Vec<u32> {
    match read_small(&dir.join("cgroup.procs")) {
        Ok(Some(procs)) => procs
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// A container's cgroup and those below it, breadth-first, bounded: a
/// container may make as many sub-cgroups as it likes. Proxmox's inner
/// cgroup (`ns`, where init is) comes first, then `init.scope`; a cgroup's
/// folder is listed only when the one after it is asked for, so a caller
/// that finds what it wants in `ns` reads nothing more.
struct CgroupWalk {
    queue: std::collections::VecDeque<(PathBuf, usize)>,
    seen: std::collections::HashSet<PathBuf>,
    /// The cgroup returned last, to be listed before the next.
    last: Option<(PathBuf, usize)>,
    max_dirs: usize,
    max_depth: usize,
    visited: usize,
    left_out: usize,
}

impl CgroupWalk {
    fn new(root: &Path, max_dirs: usize, max_depth: usize) -> CgroupWalk {
        CgroupWalk {
            queue: [(root.join("ns"), 1), (root.to_path_buf(), 0)].into(),
            seen: Default::default(),
            last: None,
            max_dirs,
            max_depth,
            visited: 0,
            left_out: 0,
        }
    }

    /// Cgroups found but not visited.
    fn left_out(&self) -> usize {
        self.left_out
            + self
                .queue
                .iter()
                .filter(|(d, _)| !self.seen.contains(d))
                .count()
    }

    fn expand(&mut self, dir: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut subdirs: Vec<_> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        if depth >= self.max_depth {
            self.left_out += subdirs.len();
            return;
        }
        subdirs.sort_by_key(|p| !p.ends_with("ns") && !p.ends_with("init.scope"));
        self.queue
            .extend(subdirs.into_iter().map(|d| (d, depth + 1)));
    }
}

impl Iterator for CgroupWalk {
    type Item = PathBuf;

    fn next(&mut self) -> Option<PathBuf> {
        if let Some((dir, depth)) = self.last.take() {
            self.expand(&dir, depth);
        }
        while let Some((dir, depth)) = self.queue.pop_front() {
            if self.seen.contains(&dir) {
                continue;
            }
            if self.visited >= self.max_dirs {
                self.queue.push_front((dir, depth));
                return None;
            }
            self.visited += 1;
            self.seen.insert(dir.clone());
            self.last = Some((dir.clone(), depth));
            return Some(dir);
        }
        None
    }
}

/// A container's init process, held by a pidfd.
pub struct Init {
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Init {
    /// Process `pid`, held by a pidfd from now on (nothing is checked).
    pub fn hold(pid: u32) -> Option<Init> {
        let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
        Some(Init { pid, pidfd })
    }

    /// The pidfd, to wait for the process to exit.
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.pidfd)
    }

    /// The process the pidfd names has not exited (a pidfd turns readable
    /// when it does).
    pub fn alive(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&now)), Ok(0))
    }
}

/// Reads a small (kernel) file; Ok(None) when it does not exist.
pub(crate) fn read_small(path: &Path) -> Result<Option<String>> {
    match std::fs::File::open(path) {
        Ok(f) => {
            // Kernel files report no size: room for one read, not a dozen.
            let mut text = String::with_capacity(8 * 1024);
            f.take(MAX_KERNEL_FILE)
                .read_to_string(&mut text)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `/proc/<pid>/cgroup`'s text places the process in the container's
/// cgroup (`lxc/<vmid>/...` as Proxmox lays it out, `lxc.payload.<vmid>` as
/// LXC does).
pub(crate) fn cgroups_are_containers(text: &str, vmid: Vmid) -> bool {
    let vmid = vmid.to_string();
    let payload = format!("lxc.payload.{vmid}");
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        // Anchored at the top: container 101 may make itself a cgroup
        // `/lxc/101/ns/lxc/102`, which is not container 102's.
        .any(|path| {
            let mut parts = path.split('/').skip_while(|p| p.is_empty());
            match parts.next() {
                Some("lxc") => parts.next() == Some(vmid.as_str()),
                Some(top) => top == payload,
                None => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_cgroup_is_anchored_at_the_top() {
        let ct = |n: u32| Vmid::try_from(n).unwrap();
        assert!(cgroups_are_containers("0::/lxc/101/ns\n", ct(101)));
        assert!(cgroups_are_containers(
            "12:pids:/lxc/101/ns/init.scope\n0::/lxc/101/ns\n",
            ct(101)
        ));
        assert!(cgroups_are_containers("0::/lxc.payload.101\n", ct(101)));
        assert!(!cgroups_are_containers("0::/lxc/101/ns/lxc/102\n", ct(102)));
        assert!(!cgroups_are_containers("0::/lxc/1011/ns\n", ct(101)));
        assert!(!cgroups_are_containers(
            "0::/lxc.payload.101/lxc.payload.102\n",
            ct(102)
        ));
        assert!(!cgroups_are_containers("0::/\n", ct(101)));
    }
}
