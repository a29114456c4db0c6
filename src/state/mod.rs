//! What the tool keeps between its runs on this node: locks and install
//! slots (in its root-only runtime folder, `paths.lock`) and each
//! container's last result (`paths.state`).

mod locks;
mod results;
mod slots;

use std::time::{SystemTime, UNIX_EPOCH};

pub use locks::{config_lock, Locks};
pub use results::{LastResult, Results};

/// Seconds since the epoch, for what is recorded (0 on a clock before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
