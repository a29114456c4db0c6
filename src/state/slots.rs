//! Install slots: how many installs copy and run an installer at once on
//! the host, and in what order containers get to.
//!
//! A slot bounds the host-side burst of an install (the copy of a 400 MB
//! runfile and its extraction, about 1 GB of writes), but both run the
//! tenant's own programs (its `sh` and `cat`, its `timeout`), which can
//! make them last as long as the tenant likes. So an install holds its slot
//! for `slot_hold_secs` at most: past that its copy and installer go on
//! outside the cap, and whatever a tenant's programs do, another
//! container's install waits no longer for them. Waiters are served in the
//! order they came (a ticket each, in `queue/`), except that a container
//! whose install overran its hold goes behind the others for an hour.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::locks::{open_lock, try_lock, Held, Locks};
use crate::vmid::Vmid;

/// How long an overrun keeps a container behind the others.
const PENALTY: Duration = Duration::from_secs(3600);

/// A held install slot; released when dropped, or by itself once it has
/// been held for its limit.
pub struct Slot {
    release: Option<mpsc::Sender<()>>,
    timer: Option<JoinHandle<()>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
    }
}

/// A waiter's place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ticket {
    /// Behind every waiter that is not.
    penalized: bool,
    since_ms: u128,
    vmid: u32,
}

impl Ticket {
    fn parse(vmid: u32, text: &str) -> Option<Ticket> {
        let mut words = text.split_whitespace();
        Some(Ticket {
            since_ms: words.next()?.parse().ok()?,
            penalized: words.next()? == "1",
            vmid,
        })
    }

    fn text(&self) -> String {
        format!("{} {}\n", self.since_ms, u8::from(self.penalized))
    }
}

/// Whether `own` may take a free slot: it is among the first `slots`
/// waiters.
fn may_take(own: &Ticket, mut waiting: Vec<Ticket>, slots: u32) -> bool {
    waiting.sort();
    waiting
        .iter()
        .take(slots as usize)
        .any(|t| t.vmid == own.vmid)
}

impl Locks {
    fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    fn penalty_file(&self, vmid: Vmid) -> PathBuf {
        self.dir.join(format!("overran-{vmid}"))
    }

    /// One of `slots` host-wide install slots, for container `vmid`, in its
    /// turn, waiting at most `wait`; it is let go after `hold` whatever
    /// the install is doing then.
    pub fn install_slot(
        &self,
        vmid: Vmid,
        slots: u32,
        wait: Duration,
        hold: Duration,
        mut waiting: impl FnMut(),
    ) -> Result<Slot> {
        let own = Ticket {
            penalized: self.penalized(vmid),
            since_ms: now_ms(),
            vmid: vmid.get(),
        };
        let queue = self.queue_dir();
        let ticket = open_lock(&queue, &vmid.to_string())?;
        rustix::fs::flock(&ticket, FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("CT {vmid}: another install of it is queued"))?;
        rustix::fs::ftruncate(&ticket, 0)?;
        rustix::io::write(&ticket, own.text().as_bytes())?;
        let _leave = Leave(queue.join(vmid.to_string()));
        let started = Instant::now();
        let mut told = false;
        loop {
            crate::cancel::check()?;
            if may_take(&own, live_tickets(&queue), slots) {
                for n in 0..slots {
                    if let Some(held) = try_lock(&self.dir, &format!("install-slot-{n}.lock"))? {
                        return Ok(self.hold_for(held, vmid, hold));
                    }
                }
            }
            if started.elapsed() >= wait {
                bail!(
                    "no install slot came free within {}s ({slots} in use by other containers); \
                     the next start tries again, or raise max_concurrent_installs",
                    wait.as_secs()
                );
            }
            if !told {
                waiting();
                told = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The slot, let go after `hold` at the latest.
    fn hold_for(&self, held: Held, vmid: Vmid, hold: Duration) -> Slot {
        let (release, released) = mpsc::channel::<()>();
        let overran = self.penalty_file(vmid);
        let timer = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = released.recv_timeout(hold) {
                log::warn!(
                    "held an install slot for {}s (slot_hold_secs): the copy and the installer \
                     go on outside the cap, so that other containers' installs are not held up",
                    hold.as_secs()
                );
                if let Err(e) = crate::fsutil::write_atomic(&overran, b"", 0o600) {
                    log::debug!("{}: {e:#}", overran.display());
                }
            }
            drop(held);
        });
        Slot {
            release: Some(release),
            timer: Some(timer),
        }
    }

    /// The container overran its hold within the last hour.
    fn penalized(&self, vmid: Vmid) -> bool {
        std::fs::symlink_metadata(self.penalty_file(vmid))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < PENALTY)
    }
}

/// Removes the waiter's ticket when it stops waiting, however it stops.
struct Leave(PathBuf);

impl Drop for Leave {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The tickets of waiters that are alive: a ticket whose flock nobody holds
/// is a dead waiter's, and is not counted.
fn live_tickets(queue: &Path) -> Vec<Ticket> {
    let Ok(entries) = std::fs::read_dir(queue) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let vmid: Vmid = entry.file_name().to_str()?.parse().ok()?;
            let fd = open_lock(queue, &vmid.to_string()).ok()?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                Err(Errno::WOULDBLOCK) => {}
                _ => return None,
            }
            let mut buf = [0u8; 64];
            let n = rustix::io::pread(fd.as_fd(), &mut buf, 0).ok()?;
            Ticket::parse(vmid.get(), std::str::from_utf8(&buf[..n]).ok()?)
        })
        .collect()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(vmid: u32, since_ms: u128, penalized: bool) -> Ticket {
        Ticket {
            penalized,
            since_ms,
            vmid,
        }
    }

    #[test]
    fn first_come_first_served_and_an_overrun_goes_behind() {
        let (a, b, c) = (
            ticket(101, 10, false),
            ticket(102, 20, false),
            ticket(103, 5, true),
        );
        let all = vec![a, b, c];
        assert!(may_take(&a, all.clone(), 1));
        assert!(!may_take(&b, all.clone(), 1));
        assert!(
            !may_take(&c, all.clone(), 2),
            "behind the others, though first"
        );
        assert!(may_take(&b, all.clone(), 2));
        assert!(may_take(&c, vec![c], 1));
        assert_eq!(Ticket::parse(101, &a.text()), Some(a));
        assert_eq!(Ticket::parse(103, &c.text()), Some(c));
    }

    /// A slot held past its limit is let go while its holder goes on, and
    /// the holder goes behind the others.
    #[test]
    fn a_slot_is_let_go_after_its_hold() {
        let dir = std::env::temp_dir().join(format!("pnh-slots-{}", std::process::id()));
        let locks = Locks::new(&dir);
        let (a, b): (Vmid, Vmid) = ("101".parse().unwrap(), "102".parse().unwrap());
        let held = locks
            .install_slot(
                a,
                1,
                Duration::from_secs(5),
                Duration::from_millis(300),
                || {},
            )
            .unwrap();
        let started = Instant::now();
        let other = locks
            .install_slot(b, 1, Duration::from_secs(5), Duration::from_secs(60), || {})
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(locks.penalized(a) && !locks.penalized(b));
        drop((held, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
