//! The one door through which the host reads a container's files.
//!
//! Each read runs in a child forked for it ([`super::fork`]): the child
//! opens the container's root through its init's `/proc/<pid>` folder,
//! does the confined walk and reads ([`Confined`]), and sends back a small
//! typed answer. Whatever the tenant makes the kernel do with that walk (a
//! lookup queued behind a folder lock it holds through a userfaultfd page,
//! a FUSE request nobody answers), the caller stops waiting at the
//! deadline, leaves the child behind and goes on: "cannot tell".
//!
//! Between reads the caller holds only the init's pidfd and its
//! `/proc/<pid>` folder, neither of which keeps any of the container's
//! file systems alive: a stopped container's volume can be unmounted and
//! deactivated at once.

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::confined::{Confined, ReadError};
use super::fork::{self, ChildError};
use crate::host::Init;

/// The largest answer a read may send back. What crosses is parsed and
/// bounded in the child (a verdict, a list of problems, package names),
/// never a raw file.
const MAX_ANSWER: usize = 4 << 20;

/// A running container's files, read through a forked child each time.
pub struct Probe {
    init: Init,
    /// The init's `/proc/<pid>` folder: once that process has exited it
    /// leads nowhere, whoever reuses its pid.
    proc_dir: OwnedFd,
    deadline: Duration,
    /// An earlier read did not answer: the container is holding the
    /// reader, and every later read fails at once instead of piling up
    /// children.
    stuck: Cell<bool>,
    /// Where a reader left behind is remembered for later runs of the
    /// tool (each start, each `status`), which then do not leave one more.
    marker: Option<PathBuf>,
}

/// A reader left behind: its pid, its start time (so that a reused pid is
/// not taken for it) and the container's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeftBehind {
    pid: u32,
    started: u64,
    init: u32,
}

impl LeftBehind {
    fn parse(text: &str) -> Option<LeftBehind> {
        let mut words = text.split_whitespace();
        Some(LeftBehind {
            pid: words.next()?.parse().ok()?,
            started: words.next()?.parse().ok()?,
            init: words.next()?.parse().ok()?,
        })
    }

    /// The process is still there and has not ended (a zombie has): the
    /// same pid, started at the same time.
    fn is_alive(&self) -> bool {
        matches!(process_state(self.pid), Some((state, started))
            if started == self.started && state != 'Z' && state != 'X')
    }
}

/// A process's state and start time (`/proc/<pid>/stat`, fields 3 and 22).
fn process_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

impl Probe {
    /// The container whose init `init` is, reached through `proc_dir` (its
    /// `/proc/<pid>`, opened while the pidfd showed it alive).
    pub fn new(init: Init, proc_dir: OwnedFd, deadline: Duration) -> Probe {
        Probe {
            init,
            proc_dir,
            deadline,
            stuck: Cell::new(false),
            marker: None,
        }
    }

    /// Remembers a reader left behind in `marker` (a file in a root-only
    /// folder), and starts stuck when an earlier run left one for this
    /// container's init that is still held.
    pub fn remembering(mut self, marker: PathBuf) -> Probe {
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        match LeftBehind::parse(&text) {
            Some(left) if left.init == self.init.pid && left.is_alive() => self.stuck.set(true),
            Some(_) => {
                let _ = std::fs::remove_file(&marker);
            }
            None => {}
        }
        self.marker = Some(marker);
        self
    }

    /// `work` on the container's files, in a child, within the read
    /// deadline (`read_timeout_secs`).
    pub fn read<T, F>(&self, work: F) -> Result<T, ReadError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(&Confined) -> Result<T, ReadError>,
    {
        self.read_within(self.deadline, work)
    }

    /// [`Probe::read`] with a deadline of its own (a whole inspection reads
    /// hundreds of MB).
    pub fn read_within<T, F>(&self, deadline: Duration, work: F) -> Result<T, ReadError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(&Confined) -> Result<T, ReadError>,
    {
        if self.stuck.get() {
            return Err(ReadError::TimedOut(
                "an earlier read of this container's files is still held by it".into(),
            ));
        }
        if !self.init.alive() {
            return Err(ReadError::Stopped);
        }
        let proc_dir = self.proc_dir.as_fd();
        let answer = fork::run_in_child(deadline, MAX_ANSWER, &[proc_dir], || {
            Confined::of_process(proc_dir).and_then(|c| work(&c))
        });
        match answer {
            Ok(result) => result,
            Err(ChildError::TimedOut { after, pid }) => {
                self.stuck.set(true);
                self.remember(pid);
                Err(ReadError::TimedOut(format!(
                    "reading the container's files took longer than {:.1}s; the reader was abandoned",
                    after.as_secs_f64()
                )))
            }
            Err(e) => Err(ReadError::Reader(e.to_string())),
        }
    }

    fn remember(&self, pid: u32) {
        let (Some(marker), Some((_, started))) = (&self.marker, process_state(pid)) else {
            return;
        };
        let text = format!("{pid} {started} {}\n", self.init.pid);
        let written = match marker.parent() {
            Some(dir) => crate::fsutil::ensure_private_dir(dir),
            None => Ok(()),
        }
        .and_then(|()| crate::fsutil::write_atomic(marker, text.as_bytes(), 0o600));
        if let Err(e) = written {
            log::debug!("{}: {e:#}", marker.display());
        }
    }

    /// The container's init, to watch it while nothing is being read.
    pub fn init(&self) -> &Init {
        &self.init
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::Kind;
    use std::time::Instant;

    /// A process standing for a container's init: its root is the host's.
    fn probe_of_a_sleeper(deadline: Duration) -> (std::process::Child, Probe) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let init = Init::hold(child.id()).unwrap();
        let proc_dir = rustix::fs::open(
            format!("/proc/{}", child.id()).as_str(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        (child, Probe::new(init, proc_dir, deadline))
    }

    #[test]
    fn reads_come_back_typed_and_a_stopped_init_is_stopped() {
        let (mut child, probe) = probe_of_a_sleeper(Duration::from_secs(5));
        assert_eq!(probe.read(|c| c.kind("/etc")).unwrap(), Kind::Dir);
        assert!(matches!(
            probe.read(|c| c.kind("/proc/self")),
            Err(ReadError::Untrusted(_))
        ));
        let missing = probe.read(|c| c.kind("/nowhere/at/all")).unwrap();
        assert_eq!(missing, Kind::Missing);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(probe.read(|c| c.kind("/etc")), Err(ReadError::Stopped));
    }

    /// A read that does not answer is abandoned at the deadline, and every
    /// later read of that container fails at once.
    #[test]
    fn a_stuck_read_is_abandoned_and_not_repeated() {
        let (mut child, probe) = probe_of_a_sleeper(Duration::from_millis(300));
        let started = Instant::now();
        let err = probe
            .read(|_| -> Result<(), ReadError> {
                std::thread::sleep(Duration::from_secs(30));
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, ReadError::TimedOut(_)), "{err}");
        assert!(err.cannot_tell());
        assert!(started.elapsed() < Duration::from_secs(10));
        let started = Instant::now();
        let again = probe.read(|c| c.kind("/")).unwrap_err();
        assert!(matches!(again, ReadError::TimedOut(_)), "{again}");
        assert!(started.elapsed() < Duration::from_millis(100), "at once");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A later run (each start, each `status`) that finds the reader an
    /// earlier one left behind still held leaves no second one; once that
    /// reader is gone, reads go on.
    #[test]
    fn a_reader_left_behind_is_remembered_by_later_runs() {
        let marker = std::env::temp_dir().join(format!("pnh-stuck-{}", std::process::id()));
        // (That a reader held in the kernel is written down is shown on a
        // real container: e2e_a_lookup_the_tenant_holds_in_the_kernel_holds_no_hook.
        // Here the reader left behind is a process that does not end.)
        let (mut init, probe) = probe_of_a_sleeper(Duration::from_millis(300));
        let mut held = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let (_, started) = process_state(held.id()).unwrap();
        std::fs::write(&marker, format!("{} {started} {}\n", held.id(), init.id())).unwrap();
        let again = |deadline| {
            let init_again = Init::hold(init.id()).unwrap();
            Probe::new(init_again, probe.proc_dir.try_clone().unwrap(), deadline)
                .remembering(marker.clone())
        };
        let next = again(Duration::from_secs(5));
        let started = std::time::Instant::now();
        assert!(matches!(
            next.read(|c| c.kind("/etc")),
            Err(ReadError::TimedOut(_))
        ));
        assert!(started.elapsed() < Duration::from_millis(100), "at once");
        held.kill().unwrap();
        held.wait().unwrap();
        let later = again(Duration::from_secs(5));
        assert_eq!(later.read(|c| c.kind("/etc")), Ok(Kind::Dir));
        assert!(!marker.exists());
        init.kill().unwrap();
        init.wait().unwrap();
    }
}
