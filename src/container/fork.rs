//! A piece of work run in a forked child that the caller can abandon.
//!
//! A thread of ours that the kernel puts to sleep uninterruptibly (a lookup
//! queued behind a tenant's `mkdir` whose folder lock is held by a
//! `getdents64` into a userfaultfd page, a FUSE request) cannot be killed,
//! and keeps the whole process alive, and with it the output Proxmox reads
//! to EOF before it lets a start task end. A child process stuck the same
//! way holds nothing of ours: it has no stdio, no lock and no descriptor
//! but its answer pipe and the ones named in `keep`, and the caller stops
//! waiting for it at the deadline, sends it SIGKILL and never waits for it.
//!
//! The child is a plain `fork` (no exec): it sees the caller's memory as it
//! was, so the work may borrow. It logs nothing, prints nothing and takes
//! no lock of the caller's; glibc's fork handlers keep `malloc` usable in
//! it. Its answer is JSON of `T`, read up to EOF, capped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub enum ChildError {
    /// No whole answer within the deadline: the child (this pid) was sent
    /// SIGKILL and left behind (never waited for).
    TimedOut { after: Duration, pid: u32 },
    /// It ended without a whole answer (a signal, a panic, an exit status).
    Died(String),
    /// Its answer was larger than allowed or did not parse.
    Garbled(String),
    /// The pipe, the fork or the pidfd could not be made.
    Fork(io::Error),
}

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildError::TimedOut { after, pid } => write!(
                f,
                "no answer within {:.1}s; the reader (pid {pid}) was abandoned",
                after.as_secs_f64()
            ),
            ChildError::Died(why) => write!(f, "the reader {why}"),
            ChildError::Garbled(why) => write!(f, "the reader's answer {why}"),
            ChildError::Fork(e) => write!(f, "starting the reader: {e}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Answer<T> {
    Done(T),
    Panicked(String),
}

/// Children left behind at their deadline: reaped when they have ended,
/// at a later call, so that a long-lived caller does not collect zombies.
static ABANDONED: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Runs `work` in a child process and returns its answer, or why there is
/// none, within `deadline`. `keep` are the only descriptors (beside the
/// answer pipe) that stay open in the child; its stdio is `/dev/null`.
pub fn run_in_child<T, F>(
    deadline: Duration,
    max_answer: usize,
    keep: &[BorrowedFd<'_>],
    work: F,
) -> Result<T, ChildError>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    reap_abandoned();
    let started = Instant::now();
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(fork_error)?;
    let mut kept: Vec<RawFd> = keep.iter().map(AsRawFd::as_raw_fd).collect();
    kept.push(write.as_raw_fd());
    kept.sort_unstable();
    kept.dedup();
    let parent = rustix::process::getpid();
    // SAFETY: fork has no memory-safety preconditions of its own; what the
    // child may do afterwards is restricted in `child`, which never returns.
    match unsafe { libc::fork() } {
        -1 => Err(ChildError::Fork(io::Error::last_os_error())),
        0 => child(parent, &write, &kept, work),
        pid => {
            drop(write);
            let pid =
                Pid::from_raw(pid).ok_or_else(|| ChildError::Fork(io::Error::other("pid 0")))?;
            parent_side(pid, read, started + deadline, deadline, max_answer)
        }
    }
}

fn fork_error(e: impl Into<io::Error>) -> ChildError {
    ChildError::Fork(e.into())
}

/// The child: die with the parent, stdio onto `/dev/null`, every other
/// descriptor closed, the work under `catch_unwind`, one answer, `_exit`.
fn child<T: Serialize, F: FnOnce() -> T>(
    parent: Pid,
    answer: &OwnedFd,
    kept: &[RawFd],
    work: F,
) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid() != Some(parent) {
        exit(3);
    }
    if detach_stdio_and_close_others(kept).is_err() {
        exit(4);
    }
    let answer_bytes = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(value) => serde_json::to_vec(&Answer::Done(value)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            serde_json::to_vec(&Answer::<T>::Panicked(why))
        }
    };
    let Ok(bytes) = answer_bytes else { exit(5) };
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        match rustix::io::write(answer, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(_) => exit(6),
        }
    }
    exit(0)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once, running no destructor or
    // atexit handler of the parent's copy.
    unsafe { libc::_exit(code) }
}

fn detach_stdio_and_close_others(kept: &[RawFd]) -> io::Result<()> {
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    drop(null);
    let mut first: u32 = 3;
    for &fd in kept.iter().filter(|fd| **fd >= 3) {
        let fd = fd as u32;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: closes descriptor numbers only; nothing in this process uses
    // those numbers afterwards (the child owns no Rust handle to them that
    // it will touch: the work runs after, on descriptors in `kept`).
    match unsafe { libc::close_range(first, last, 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn parent_side<T: DeserializeOwned>(
    pid: Pid,
    read: OwnedFd,
    until: Instant,
    deadline: Duration,
    max_answer: usize,
) -> Result<T, ChildError> {
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Not waitable through a pidfd: make sure it ends, and reap it
            // when it has (it is our child, so its pid is ours until then).
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            return Err(fork_error(e));
        }
    };
    let abandon = |pidfd: OwnedFd| {
        let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
        ABANDONED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pidfd);
    };
    let mut answer = Vec::new();
    match read_to_eof(&read, until, max_answer, &mut answer) {
        Ok(()) => {}
        Err(e) => {
            abandon(pidfd);
            return Err(e.into_child_error(deadline, pid, max_answer));
        }
    }
    // The answer is whole; the child is on its way out. Reap it, unless
    // even its exit takes longer than the deadline.
    if !wait_readable(pidfd.as_fd(), until) {
        abandon(pidfd);
        return Err(ChildError::TimedOut {
            after: deadline,
            pid: pid.as_raw_nonzero().get() as u32,
        });
    }
    let status = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
        .map_err(fork_error)?;
    let status = status.map(|s| (s.exit_status(), s.terminating_signal()));
    match status {
        Some((Some(0), _)) => {}
        Some((Some(code), _)) => {
            return Err(ChildError::Died(format!("exited with status {code}")))
        }
        Some((None, Some(sig))) => {
            return Err(ChildError::Died(format!("was killed by signal {sig}")))
        }
        _ => return Err(ChildError::Died("ended in an unknown way".into())),
    }
    match serde_json::from_slice::<Answer<T>>(&answer) {
        Ok(Answer::Done(value)) => Ok(value),
        Ok(Answer::Panicked(why)) => Err(ChildError::Died(format!("panicked: {why}"))),
        Err(e) => Err(ChildError::Garbled(format!("does not parse: {e}"))),
    }
}

enum ReadFailure {
    Deadline,
    TooLarge,
    Io(io::Error),
}

impl ReadFailure {
    fn into_child_error(self, deadline: Duration, pid: Pid, max: usize) -> ChildError {
        match self {
            ReadFailure::Deadline => ChildError::TimedOut {
                after: deadline,
                pid: pid.as_raw_nonzero().get() as u32,
            },
            ReadFailure::TooLarge => ChildError::Garbled(format!("is larger than {max} bytes")),
            ReadFailure::Io(e) => ChildError::Fork(e),
        }
    }
}

fn read_to_eof(
    pipe: &OwnedFd,
    until: Instant,
    max: usize,
    into: &mut Vec<u8>,
) -> Result<(), ReadFailure> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if !wait_readable(pipe.as_fd(), until) {
            return Err(ReadFailure::Deadline);
        }
        match rustix::io::read(pipe, &mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) if into.len() + n > max => return Err(ReadFailure::TooLarge),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(e) => return Err(ReadFailure::Io(e.into())),
        }
    }
}

/// True once `fd` is readable (or hung up) before `until`.
fn wait_readable(fd: BorrowedFd<'_>, until: Instant) -> bool {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(timeout) = Timespec::try_from(left) else {
            return false;
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}

/// Reaps children abandoned earlier that have ended since.
fn reap_abandoned() {
    let mut left = ABANDONED.lock().unwrap_or_else(|p| p.into_inner());
    left.retain(|pidfd| {
        !matches!(
            rustix::process::waitid(
                WaitId::PidFd(pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ),
            Ok(Some(_))
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_value_comes_back_and_the_work_may_borrow() {
        let words = ["a".to_string(), "b".to_string()];
        let joined: String = run_in_child(5 * SECOND, 1 << 16, &[], || words.join("+")).unwrap();
        assert_eq!(joined, "a+b");
    }

    #[test]
    fn a_child_past_its_deadline_is_abandoned_in_time() {
        let started = Instant::now();
        let err = run_in_child::<(), _>(Duration::from_millis(300), 1 << 16, &[], || {
            std::thread::sleep(30 * SECOND)
        })
        .unwrap_err();
        assert!(matches!(err, ChildError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < 10 * SECOND, "returned in time");
    }

    #[test]
    fn an_abort_is_a_death_by_signal() {
        let err =
            run_in_child::<(), _>(5 * SECOND, 1 << 16, &[], || std::process::abort()).unwrap_err();
        assert!(
            matches!(&err, ChildError::Died(why) if why.contains("signal 6")),
            "{err}"
        );
    }

    #[test]
    fn a_panic_never_returns_into_the_caller() {
        let err = run_in_child::<(), _>(5 * SECOND, 1 << 16, &[], || panic!("boom")).unwrap_err();
        assert!(
            matches!(&err, ChildError::Died(why) if why.contains("boom")),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_answer_is_garbled() {
        let err = run_in_child(5 * SECOND, 1000, &[], || "x".repeat(100_000)).unwrap_err();
        assert!(matches!(err, ChildError::Garbled(_)), "{err}");
    }

    /// The child keeps no descriptor of the caller's: a pipe whose write
    /// end the caller drops reads EOF at once, while the child still runs.
    #[test]
    fn the_child_keeps_nothing_inherited() {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        let (answered, sleeper) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = answered.send(run_in_child::<(), _>(3 * SECOND, 16, &[], || {
                std::thread::sleep(2 * SECOND)
            }));
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(write);
        let started = Instant::now();
        let mut buf = [0u8; 1];
        assert_eq!(rustix::io::read(&read, &mut buf).unwrap(), 0, "EOF");
        assert!(
            started.elapsed() < SECOND,
            "EOF came while the child still ran"
        );
        assert!(sleeper.recv().unwrap().is_ok());
    }

    #[test]
    fn kept_descriptors_stay_open_in_the_child() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_fd();
        let raw = fd.as_raw_fd();
        let open = run_in_child(5 * SECOND, 1 << 16, &[fd], || {
            // SAFETY: `raw` is `file`'s descriptor, open in the parent for
            // the whole call; the child only asks for its flags.
            rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw) }).is_ok()
        })
        .unwrap();
        assert!(open);
    }
}
