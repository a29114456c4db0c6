//! Running a host program: a clean environment with a fixed PATH, argument
//! vectors only (never a shell string), bounded output capture and a time
//! limit after which its whole process group is killed. Every program starts
//! in a session of its own: without a controlling terminal, nothing it
//! starts (in a container, too) can open the admin's terminal as `/dev/tty`.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The PATH every child gets, whatever the caller's environment holds.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Bytes of stdout kept (the start); the rest is read and dropped.
    pub max_stdout: usize,
    /// Bytes of stderr kept (the end, where errors are).
    pub max_stderr: usize,
}

impl Limits {
    pub fn quick(timeout: Duration) -> Limits {
        Limits {
            timeout,
            max_stdout: 64 * 1024,
            max_stderr: 16 * 1024,
        }
    }
}

/// Writes a child's standard input from a thread of ours; what it writes is
/// the child's only way to our data (never an open file of the host's).
pub type Feed = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

#[derive(Debug)]
pub struct Output {
    /// None when the process died from a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// How feeding standard input ended, when there was a [`Feed`].
    pub fed: Option<io::Result<()>>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last lines of stderr (or stdout when stderr is empty), on one
    /// line, for error messages.
    pub fn diagnostic(&self) -> String {
        let source = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        last_lines(&String::from_utf8_lossy(source), 3)
    }

    pub fn describe_status(&self) -> String {
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => "timed out and was killed".to_string(),
            (_, Some(c), _) => format!("exit status {c}"),
            (_, None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".to_string(),
        }
    }
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .join(" | ")
        .chars()
        .filter(|c| !c.is_control())
        .take(600)
        .collect()
}

/// Finds a program on the caller's PATH (that is where an admin, and a test,
/// put the tools), falling back to the fixed PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let caller = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&caller)
        .chain(std::env::split_paths(SAFE_PATH))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Descriptors this process inherited without close-on-exec (a shell may
/// leak some) get it, so that none reaches a program it starts, and through
/// `lxc-attach` a container. Called first thing: one system call.
pub fn close_inherited_on_exec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets a flag on descriptors 3 and up.
    unsafe {
        libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32);
    }
}

pub fn run(program: &Path, args: &[&str], limits: Limits) -> Result<Output> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_with(program, &args, None, limits)
}

pub fn run_with(
    program: &Path,
    args: &[String],
    feed: Option<Feed>,
    limits: Limits,
) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LC_ALL", "C")
        // Never the host's /dev/null: a container's root (host root in a
        // privileged one) could fchmod or fchown what it is handed. A pipe
        // of ours is nothing to anyone; without input, it is closed at once.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours. A
    // new session is also a new process group, which kill_group relies on.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = capture(child.stdout.take(), limits.max_stdout, false);
    let stderr = capture(child.stderr.take(), limits.max_stderr, true);
    let started = Instant::now();
    let feeder = match (feed, child.stdin.take()) {
        (Some(feed), Some(stdin)) => {
            let deadline = started + limits.timeout;
            Some(std::thread::spawn(move || {
                let mut pipe = DeadlineWriter::new(stdin, deadline)?;
                feed(&mut pipe)
                // Dropping the pipe here is the child's end of input.
            }))
        }
        // Dropping the pipe is the end of input.
        _ => None,
    };

    let mut poll = Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            break status;
        }
        if let Err(cancelled) = crate::cancel::check() {
            kill_group(child.id());
            let _ = child.wait();
            return Err(cancelled.into());
        }
        if started.elapsed() >= limits.timeout {
            timed_out = true;
            kill_group(child.id());
            break child.wait().context("waiting for killed child")?;
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(Duration::from_millis(50));
    };
    // The feeder ends by the deadline at the latest, whoever holds the pipe.
    let fed = feeder.map(|f| {
        f.join()
            .unwrap_or_else(|_| Err(io::Error::other("the input feeder panicked")))
    });
    // A grandchild may still hold the pipes open; give the readers a moment,
    // then take what they have.
    let until = Instant::now() + OUTPUT_GRACE;
    let out = Output {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: stdout.finish(until),
        stderr: stderr.finish(until),
        fed,
    };
    Ok(out)
}

/// A pipe written without blocking past a deadline: a reader that stops
/// reading (a tenant's `cat` that sleeps) cannot hold the writer.
struct DeadlineWriter {
    pipe: std::process::ChildStdin,
    deadline: Instant,
}

impl DeadlineWriter {
    fn new(pipe: std::process::ChildStdin, deadline: Instant) -> io::Result<DeadlineWriter> {
        let flags = rustix::fs::fcntl_getfl(&pipe)?;
        rustix::fs::fcntl_setfl(&pipe, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(DeadlineWriter { pipe, deadline })
    }
}

impl Write for DeadlineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            match self.pipe.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the reader stopped reading",
                ));
            }
            let wait = Timespec::try_from(left.min(Duration::from_secs(1)))
                .map_err(|_| io::Error::other("bad timeout"))?;
            let mut fds = [PollFd::new(&self.pipe, PollFlags::OUT)];
            match poll(&mut fds, Some(&wait)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
}

/// How long the output of a program that has exited is still read: a
/// process it left behind (a tenant's daemon) may hold the pipe open for
/// ever; then the pipe is closed on it.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

impl Capture {
    /// What was read by `until` (the program's exit and the grace period).
    fn finish(self, until: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(Instant::now()));
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn capture<R>(reader: Option<R>, max: usize, keep_tail: bool) -> Capture
where
    R: Read + AsFd + Send + 'static,
{
    let buf = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = std::sync::mpsc::channel();
    let (shared, stopped) = (Arc::clone(&buf), Arc::clone(&stop));
    std::thread::spawn(move || {
        if let Some(mut reader) = reader {
            let mut chunk = [0u8; 16 * 1024];
            // Woken every 100 ms to see whether the caller has given up on
            // the rest; the pipe is dropped (closed) when it has.
            let tick = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            while !stopped.load(Ordering::Relaxed) {
                let mut fds = [rustix::event::PollFd::new(
                    &reader,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, Some(&tick)) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut b = shared.lock().unwrap_or_else(|p| p.into_inner());
                if keep_tail {
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > max {
                        let excess = b.len() - max;
                        b.drain(..excess);
                    }
                } else if b.len() < max {
                    let room = max - b.len();
                    b.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(());
    });
    Capture { buf, done, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process the program left behind holds its output pipe: the output
    /// is taken after the grace period and the pipe closed on it, so that
    /// its next write fails (no reader thread of ours reads on for ever).
    #[test]
    fn a_pipe_held_by_a_leftover_process_is_closed_after_the_grace() {
        let marker = std::env::temp_dir().join(format!("pnh-late-{}", std::process::id()));
        let script = format!(
            "(sleep 4; echo late; touch '{}') & echo early",
            marker.display()
        );
        let started = Instant::now();
        let out = run(
            Path::new("/bin/sh"),
            &["-c", &script],
            Limits::quick(Duration::from_secs(30)),
        )
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "waited for the leftover"
        );
        assert_eq!(out.stdout_text().trim(), "early");
        std::thread::sleep(Duration::from_secs(6));
        assert!(
            !marker.exists(),
            "the leftover could still write to our pipe"
        );
    }
}
