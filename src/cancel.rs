//! Why an install stops before it is done: the container it installs into
//! stopped or restarted (its init's pidfd turned readable), or the install
//! was asked to stop (SIGTERM: the container's `pre-stop` or `post-stop`
//! phase sends it, as does `systemctl stop` of its unit).
//!
//! An install waits a lot (a download, a slot, the tenant's programs), and
//! nothing of it should outlive the container it was for: every wait asks
//! [`check`] at least every quarter of a second and gives up with a
//! [`Cancelled`] error, which the caller reports as such (it is not a
//! failure of the driver, nor one to notify about).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

static TERMINATED: AtomicBool = AtomicBool::new(false);
static WATCHED: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The install was abandoned; the reason is in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled(pub &'static str);

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "install abandoned: {}", self.0)
    }
}

impl std::error::Error for Cancelled {}

/// Whether `err` (anywhere in its chain) is a cancellation.
pub fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Cancelled>())
}

extern "C" fn on_term(_: libc::c_int) {
    TERMINATED.store(true, Ordering::Relaxed);
}

/// From now on SIGTERM cancels instead of killing: the install stops its
/// current program (its whole process group), records why and exits.
pub fn on_sigterm() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// Cancels when the process that `pidfd` names exits (the container's
/// init), until the guard is dropped.
pub fn watch(pidfd: BorrowedFd<'_>) -> std::io::Result<Watching> {
    let owned = pidfd.try_clone_to_owned()?;
    *WATCHED.lock().unwrap_or_else(|p| p.into_inner()) = Some(owned);
    Ok(Watching(()))
}

/// While it lives, the watched process's exit cancels.
pub struct Watching(());

impl Drop for Watching {
    fn drop(&mut self) {
        *WATCHED.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Ok while the install may go on.
pub fn check() -> Result<(), Cancelled> {
    if TERMINATED.load(Ordering::Relaxed) {
        return Err(Cancelled("asked to stop (the container is stopping)"));
    }
    let watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pidfd) = watched.as_ref() {
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0) {
            return Err(Cancelled("the container stopped or restarted"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::fork::run_in_child;
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// In a child of its own: the watch is process-wide.
    #[test]
    fn a_watched_process_that_exits_cancels() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        let (before, after) = run_in_child(Duration::from_secs(10), 4096, &[pidfd.as_fd()], || {
            let _watching = watch(pidfd.as_fd()).unwrap();
            let before = check().is_ok();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            // The pidfd turns readable once the process has exited.
            let mut after = None;
            for _ in 0..100 {
                if let Err(e) = check() {
                    let err = anyhow::Error::new(e).context("stage driver");
                    after = Some(is_cancelled(&err));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (before, after)
        })
        .unwrap();
        child.wait().unwrap();
        assert!(before);
        assert_eq!(after, Some(true));
    }
}
