//! What `disable --passthrough` removes: what the record names, where the
//! config still holds it exactly as it was written.

use super::plan::pending_deletes;
use super::Record;
use crate::pct_config::{PctConfig, RawLine};

/// What `disable --passthrough` does to one container.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    /// `pct set --delete`: ours, as written.
    pub delete: Vec<String>,
    /// `pct set --revert`: ours, still pending.
    pub revert: Vec<String>,
    /// Raw lines of ours, one copy each.
    pub drop: Vec<RawLine>,
    pub notes: Vec<String>,
}

impl Removal {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.revert.is_empty() && self.drop.is_empty()
    }
}

/// Only what the record names and the config holds exactly as written.
pub fn plan_disable(record: &Record, current: &PctConfig, pending: &PctConfig) -> Removal {
    let mut r = Removal::default();
    let deleting = pending_deletes(pending);
    for (key, value) in &record.devices {
        match (current.get(key), pending.get(key)) {
            (_, Some(pv)) if pv == value => r.revert.push(key.clone()),
            (Some(cv), None) if cv == value && deleting.contains(key) => r
                .notes
                .push(format!("{key}: its removal is already pending")),
            (Some(cv), None) if cv == value => r.delete.push(key.clone()),
            (None, None) => {}
            (now, pend) => r.notes.push(format!(
                "{key} changed since it was written ({}): the admin's now, left as is",
                pend.or(now).unwrap_or_default()
            )),
        }
    }
    let raw_now = current.raw_lines();
    r.drop = record
        .raw
        .iter()
        .filter(|l| raw_now.contains(l))
        .cloned()
        .collect();
    r
}
