//! `make bench`'s micro-benchmark of the door through which the hook reads
//! a container's files, step by step, each timed alone in one process:
//!
//! - `fork`: a bare `fork`, the child `_exit`ing at once, reaped: what the
//!   kernel charges for copying this process;
//! - `run_in_child`: the door's mechanism with an empty closure (pipe,
//!   fork, the child's setup, its answer, the reaping);
//! - `probe`: a read through the container's [`Probe`] that does nothing
//!   (the child also opens the container's root and reads its mount
//!   table);
//! - `detect`: the up-to-date check itself, as the hook makes it.
//!
//! `probe-cost PID [PROC] [RUNS]`: PID is the container's init, PROC the
//! folder holding its `/proc` entry (default `/proc`). Prints one line per
//! step: name, median, p5 and p95 in microseconds.

use std::time::{Duration, Instant};

use pve_nvidia_hook::bench::{detect_in, run_in_child, Host, Init, Probe};

const DEADLINE: Duration = Duration::from_secs(5);

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(pid), proc) = (args.next().and_then(|a| a.parse().ok()), args.next()) else {
        eprintln!("usage: probe-cost PID [PROC] [RUNS]");
        std::process::exit(2);
    };
    let proc = proc.unwrap_or_else(|| "/proc".into());
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let host = Host::new("/sys".as_ref(), proc.as_ref());
    let probe = || {
        let init = Init::hold(pid).expect("the init's pidfd");
        let dir = host.proc_dir(pid).expect("the init's /proc folder");
        Probe::new(init, dir, DEADLINE)
    };
    let installed = detect_in(&probe());
    eprintln!("probe-cost: the container has {installed:?}");

    time("fork", runs, || {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                let mut status = 0;
                // SAFETY: waits for the child just made; status is ours.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
    });
    time("run_in_child", runs, || {
        run_in_child(DEADLINE, 1024, &[], || ()).expect("an empty closure's answer")
    });
    let p = probe();
    time("probe", runs, || p.read(|_| Ok(())).expect("an empty read"));
    time("detect", runs, || {
        assert_eq!(detect_in(&p), installed);
    });
}

fn time(name: &str, runs: usize, mut step: impl FnMut()) {
    for _ in 0..runs / 10 {
        step();
    }
    let mut took: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            step();
            started.elapsed()
        })
        .collect();
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!("{name} {:.1} {:.1} {:.1}", at(0.5), at(0.05), at(0.95));
}
