//! `enable --passthrough`: the host's NVIDIA device nodes given to a
//! container the way Proxmox does it, as its own `devN` entries (PVE 8.1
//! and later), or on an older Proxmox as the raw LXC lines it needs.
//!
//! What pve-container does with them, which the plan follows
//! (`PVE/LXC/Config.pm`, `PVE/LXC.pm`, `PVE/API2/LXC/Config.pm`):
//! - `devN: [path=]/dev/X[,mode=0NNN][,uid=N][,gid=N][,deny-write=1]`
//!   (`$dev_desc`, `parse_device`); only root may set one
//!   ("configuring device passthrough is only allowed for root@pam");
//! - at every start `update_lxc_config` stats each node on the host (a
//!   missing one refuses the start, before any hook) and writes its rule
//!   as `lxc.cgroup2.devices.allow = c M:m rw`;
//! - `create_passthrough_device_node` makes the node mode 0660 (or
//!   `mode`), owned by the container's uid/gid 0 (or `uid`/`gid`, which
//!   are the container's ids: `map_ct_gid_to_host` maps them through its
//!   idmap, and leaves an id outside every range unmapped);
//! - a running container gets a new `devN` at once since pve-container
//!   6.0.4 (`device_passthrough_hotplug`); a changed or deleted one waits
//!   in `[pve:pending]` for the next start (`vmconfig_hotplug_pending`:
//!   "don't try to hotplug over existing dev").

mod disable;
mod groups;
mod plan;
mod raw;
mod record;

pub use disable::plan_disable;
pub use groups::{choose_group, read_groups, Group};
pub use plan::{chosen_gpus, plan, Facts, Plan, Refused};
pub use record::{Record, Records};

use std::str::FromStr;

/// Which GPUs a container gets: their device minors (`/dev/nvidia<N>`, as
/// NVIDIA's `/proc/driver/nvidia/gpus/*/information` says "Device Minor").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    All,
    Minors(Vec<u32>),
}

impl FromStr for Gpus {
    type Err = String;

    /// `all`, or minors separated by commas (`0,1`).
    fn from_str(text: &str) -> Result<Gpus, String> {
        if text.eq_ignore_ascii_case("all") {
            return Ok(Gpus::All);
        }
        let mut minors = Vec::new();
        for part in text.split(',') {
            let minor: u32 = part.trim().parse().map_err(|_| {
                format!("'{part}' is no GPU number (0, 1, ... as in /dev/nvidia0, or all)")
            })?;
            if !minors.contains(&minor) {
                minors.push(minor);
            }
        }
        Ok(Gpus::Minors(minors))
    }
}

/// What this node's Proxmox can write, from pve-container's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Before 5.0.7 (PVE 8.1): no `devN`; raw `lxc.*` lines.
    Raw,
    /// `devN`; `hotplug` from 6.0.4 (PVE 9.0): a new one reaches a running
    /// container at once.
    Devices { hotplug: bool },
}

impl Support {
    /// From `dpkg-query -W -f '${Version}' pve-container` (`5.2.0`,
    /// `6.0.4~bpo12`): its leading numbers compared.
    pub fn of_pve_container(version: &str) -> Option<Support> {
        let numbers: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        Some(if numbers < vec![5, 0, 7] {
            Support::Raw
        } else {
            Support::Devices {
                hotplug: numbers >= vec![6, 0, 4],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_and_versions_as_given() {
        assert_eq!("all".parse(), Ok(Gpus::All));
        assert_eq!("1,0,1".parse(), Ok(Gpus::Minors(vec![1, 0])));
        assert!("0,x".parse::<Gpus>().unwrap_err().contains("'x'"));
        assert!("".parse::<Gpus>().is_err());
        for (version, support) in [
            ("5.0.6", Some(Support::Raw)),
            ("4.4-6", Some(Support::Raw)),
            ("5.0.7", Some(Support::Devices { hotplug: false })),
            ("5.2.0", Some(Support::Devices { hotplug: false })),
            ("6.0.3", Some(Support::Devices { hotplug: false })),
            ("6.0.4", Some(Support::Devices { hotplug: true })),
            ("6.1.0~bpo12+1", Some(Support::Devices { hotplug: true })),
            ("", None),
            ("x", None),
        ] {
            assert_eq!(Support::of_pve_container(version), support, "{version}");
        }
    }
}
