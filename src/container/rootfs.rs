//! A container's files, read from the host on a worker thread with a
//! deadline per call (see [`super::confined`] for how each read is
//! confined): whatever the tenant finds to stall a read, the caller gets
//! "timed out" and goes on.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::confined::{Confined, Kind};

type Work = Box<dyn FnOnce(&Confined) + Send>;

/// A container's files, read on a worker thread with a deadline per call.
/// After one call has timed out the worker is presumed stuck, and every
/// later call fails at once.
pub struct RootFs {
    work: mpsc::Sender<Work>,
    deadline: Duration,
    stuck: AtomicBool,
}

fn timed_out(deadline: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "reading the container's files timed out after {:.1}s",
            deadline.as_secs_f64()
        ),
    )
}

impl RootFs {
    /// Opens the container's root (`/proc/<pid>/root`) with its mount table
    /// (`/proc/<pid>/mountinfo`), within `deadline`.
    pub fn open(root: PathBuf, mountinfo: PathBuf, deadline: Duration) -> io::Result<RootFs> {
        let (work, jobs) = mpsc::channel::<Work>();
        let (ready, opened) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("container-reads".into())
            .spawn(move || {
                let confined = Confined::open(&root, &mountinfo);
                let confined = match confined {
                    Ok(c) => {
                        let _ = ready.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                for job in jobs {
                    job(&confined);
                }
            })?;
        match opened.recv_timeout(deadline) {
            Ok(Ok(())) => Ok(RootFs {
                work,
                deadline,
                stuck: AtomicBool::new(false),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timed_out(deadline)),
        }
    }

    /// Runs `f` on the worker; its result, or "timed out".
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Confined) -> R + Send + 'static,
    ) -> io::Result<R> {
        if self.stuck.load(Ordering::Relaxed) {
            return Err(timed_out(self.deadline));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.work
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| io::Error::other("the container reader is gone"))?;
        rx.recv_timeout(self.deadline).map_err(|_| {
            self.stuck.store(true, Ordering::Relaxed);
            timed_out(self.deadline)
        })
    }

    /// Kind of `path` itself; [`Kind::Unreadable`] when it cannot be told.
    pub fn kind(&self, path: &str) -> Kind {
        let path = path.to_string();
        match self.run(move |c| c.kind(&path)) {
            Ok(Ok(kind)) => kind,
            _ => Kind::Unreadable,
        }
    }

    pub fn read_tail(&self, path: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let path = path.to_string();
        self.run(move |c| c.read_tail(&path, max))?
    }

    pub fn free_bytes(&self, dir: &str) -> io::Result<u64> {
        let dir = dir.to_string();
        self.run(move |c| c.free_bytes(&dir))?
    }

    /// The size of a regular file; an error when absent or anything else.
    pub fn file_size(&self, path: &str) -> io::Result<u64> {
        let path = path.to_string();
        self.run(move |c| match c.open_file(&path)? {
            Some((_, size)) => Ok(size),
            None => Err(io::ErrorKind::NotFound.into()),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::tempdir;

    #[test]
    fn the_worker_answers_and_times_out() {
        let root = tempdir("worker");
        std::fs::write(root.join("f"), "x").unwrap();
        let fs = RootFs::open(
            root.clone(),
            "/proc/self/mountinfo".into(),
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!(fs.kind("/f"), Kind::File);
        let slow = fs.run(|_| std::thread::sleep(Duration::from_secs(3)));
        assert_eq!(slow.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(fs.kind("/f"), Kind::Unreadable, "stuck: fails at once");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
