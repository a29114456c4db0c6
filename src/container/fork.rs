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
//! it. Its answer is JSON of `T`, read up to EOF, capped. The child ends
//! the pipe as its last act, and the caller takes a whole answer without
//! waiting for the child's exit (the kernel's teardown of a copy of this
//! process): such a child is reaped later, by its pid, which stays its
//! own until then (nothing else in this program waits for any child but
//! its own `std::process::Child`).

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

/// Children not waited for: left behind at their deadline, or done (their
/// answer whole) and on their way out. Reaped once they have ended, at a
/// later call, so that a long-lived caller does not collect zombies; the
/// last ones are reaped by init once the caller exits.
static UNREAPED: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

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
    reap_ended();
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
    // What is left (the kernel's teardown of this copy of the caller) gives
    // way to any other work on this CPU: the caller, woken by the end of
    // the pipe below, runs first. Nothing of the container is held any
    // more (the work's descriptors were closed with it).
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes this process's scheduling policy only; `idle` is a
    // valid sched_param for SCHED_IDLE.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
    // The answer is whole: its pipe ends now, not when this process has
    // been torn down, so that the caller has it without waiting for that.
    // SAFETY: this copy of `answer` is never dropped (the child `_exit`s),
    // so the descriptor is closed once, and nothing uses it after.
    unsafe { libc::close(answer.as_raw_fd()) };
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
    let mut answer = Vec::with_capacity(1024);
    if let Err(e) = read_to_eof(&read, until, max_answer, &mut answer) {
        abandon(pid);
        return Err(e.into_child_error(deadline, pid, max_answer));
    }
    // A whole answer is the child's last act: it has nothing left to do
    // but exit, which the caller does not wait for. Its exit status would
    // say nothing more: a cut answer does not parse.
    let garbled = match serde_json::from_slice::<Answer<T>>(&answer) {
        Ok(Answer::Done(value)) => {
            leave(pid);
            return Ok(value);
        }
        Ok(Answer::Panicked(why)) => {
            leave(pid);
            return Err(ChildError::Died(format!("panicked: {why}")));
        }
        Err(e) => ChildError::Garbled(format!("does not parse: {e}")),
    };
    // No answer, or a cut one: how the child ended says why. Reap it,
    // unless even its exit takes longer than the deadline. Until it is
    // reaped its pid is ours, so the pidfd names it.
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            abandon(pid);
            return Err(fork_error(e));
        }
    };
    if !wait_readable(pidfd.as_fd(), until) {
        abandon(pid);
        return Err(ChildError::TimedOut {
            after: deadline,
            pid: pid.as_raw_nonzero().get() as u32,
        });
    }
    let status = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
        .map_err(fork_error)?;
    let status = status.map(|s| (s.exit_status(), s.terminating_signal()));
    match status {
        Some((Some(0), _)) => Err(garbled),
        Some((Some(code), _)) => Err(ChildError::Died(format!("exited with status {code}"))),
        Some((None, Some(sig))) => Err(ChildError::Died(format!("was killed by signal {sig}"))),
        _ => Err(ChildError::Died("ended in an unknown way".into())),
    }
}

/// A child not waited for, reaped later (see [`UNREAPED`]).
fn leave(pid: Pid) {
    UNREAPED.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// A child past its deadline: sent SIGKILL (its pid is still ours: it is
/// not reaped) and left.
fn abandon(pid: Pid) {
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    leave(pid);
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
    loop {
        if !wait_readable(pipe.as_fd(), until) {
            return Err(ReadFailure::Deadline);
        }
        // Straight into the answer (no buffer of its own to copy from):
        // what the caller touches after the fork, the kernel copies.
        if into.len() == into.capacity() {
            // Room for one byte past `max`, to tell a whole answer of
            // `max` bytes from a larger one.
            let room = (max + 1).saturating_sub(into.len());
            into.reserve(into.len().max(1024).min(room));
        }
        match rustix::io::read(pipe, rustix::buffer::spare_capacity(into)) {
            Ok(0) => return Ok(()),
            Ok(_) if into.len() > max => return Err(ReadFailure::TooLarge),
            Ok(_) => {}
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

/// Reaps children left earlier that have ended since.
fn reap_ended() {
    let mut left = UNREAPED.lock().unwrap_or_else(|p| p.into_inner());
    left.retain(|pid| {
        matches!(
            rustix::process::waitpid(Some(*pid), rustix::process::WaitOptions::NOHANG),
            Ok(None)
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

    /// A whole answer comes back while the child is still being torn down
    /// (here: a quarter GiB of memory), at the lowest priority there is
    /// (SCHED_IDLE), and a later call reaps it.
    #[test]
    fn a_whole_answer_does_not_wait_for_the_childs_exit() {
        let pid = run_in_child(5 * SECOND, 1 << 16, &[], || {
            let big = vec![1u8; 256 << 20];
            std::hint::black_box(&big);
            std::process::id()
        })
        .unwrap();
        let entry = format!("/proc/{pid}");
        let stat =
            std::fs::read_to_string(format!("{entry}/stat")).expect("the child was waited for");
        // Field 41, the scheduling policy, counted after the command name.
        let policy = stat.rsplit_once(") ").unwrap().1.split(' ').nth(38);
        assert_eq!(policy, Some("5"), "SCHED_IDLE: {stat}");
        let started = Instant::now();
        while std::path::Path::new(&entry).exists() {
            assert!(started.elapsed() < 10 * SECOND, "never reaped");
            std::thread::sleep(Duration::from_millis(20));
            run_in_child(5 * SECOND, 1 << 16, &[], || ()).unwrap();
        }
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
