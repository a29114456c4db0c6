//! Who may open a passed node inside the container: its owner and mode as
//! Proxmox makes a `devN` node or LXC binds the host's, seen through the
//! container's idmap.

use super::access::{need, Passed};
use super::cgroup::{READ, WRITE};
use super::host::Node;
use super::{Level, Report};
use crate::pct_config::{host_to_container as inside, IdKind, PctConfig};
use crate::vmid::Vmid;

/// Who may open a node in the container: its root, a service running as
/// another user (ollama, plex, jellyfin), and the members of the node's
/// group when that is another than root's (`gid=` of a `video` group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Access {
    pub root: bool,
    pub services: bool,
    pub group: Option<u32>,
}

/// A node's owner and mode as the container sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owned {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
}

/// What the mode bits give container root (uid 0, gid 0) and a service
/// (another uid, not in the node's group), for an open with `need`
/// (READ, WRITE); `None` owner ids are ids the container cannot name
/// (nobody).
pub(super) fn access(node: Owned, need: u8) -> Access {
    let wanted =
        (if need & READ != 0 { 0o4 } else { 0 }) | (if need & WRITE != 0 { 0o2 } else { 0 });
    let bits = |shift: u32| (node.mode >> shift) & wanted == wanted;
    let root = if node.uid == Some(0) {
        bits(6)
    } else if node.gid == Some(0) {
        bits(3)
    } else {
        bits(0)
    };
    Access {
        root,
        services: bits(0),
        group: node.gid.filter(|&g| g != 0 && bits(3)),
    }
}

/// Access per passthrough kind, as Proxmox and LXC make the nodes: a
/// `devN` node is created by Proxmox with mode 0660 (or `mode=`), owned by
/// the container's uid/gid 0 (or `uid=`/`gid=`), mapped through the idmap;
/// an `lxc.mount.entry` binds the host's node with the host's owner and
/// mode, which an unprivileged container sees through its idmap (host root
/// as nobody).
pub(super) fn checks(
    vmid: Vmid,
    pct: &PctConfig,
    nodes: &[Node],
    passed: &Passed,
    report: &mut Report,
    scope: &str,
) {
    let map = pct.idmap();
    let mut root_blocked = Vec::new();
    let mut services_blocked = Vec::new();
    let mut group_only = Vec::new();
    let mut fixes = Vec::new();
    for node in nodes.iter().filter(|n| passed.contains(n)) {
        let path = format!("/dev/{}", node.name);
        let (owned, fix) = match passed.device(node) {
            Some(d) => (
                Owned {
                    uid: Some(d.uid.unwrap_or(0)),
                    gid: Some(d.gid.unwrap_or(0)),
                    mode: d.mode.unwrap_or(0o660),
                },
                format!(
                    "pct set {vmid} --dev{} {},mode=0666 (or gid=<the service's group>)",
                    d.index,
                    d.value_without("mode")
                ),
            ),
            None => (
                Owned {
                    uid: inside(&map, IdKind::User, node.uid),
                    gid: inside(&map, IdKind::Group, node.gid),
                    mode: node.mode,
                },
                format!(
                    "{path}: pass it as devN with mode=0666 instead of lxc.mount.entry (the host's node is {:o}, {}:{})",
                    node.mode, node.uid, node.gid
                ),
            ),
        };
        let can = access(owned, need(node));
        if !can.root {
            root_blocked.push(node.name.clone());
            fixes.push(fix);
        } else if let (false, Some(gid)) = (can.services, can.group) {
            group_only.push(format!("{} (group {gid})", node.name));
        } else if !can.services {
            services_blocked.push(node.name.clone());
            fixes.push(fix);
        }
    }
    let who = if map.is_empty() {
        "container root"
    } else {
        "container root (a mapped uid)"
    };
    if !root_blocked.is_empty() {
        report.add(
            scope,
            "device access",
            Level::Fail,
            format!("{who} cannot open {}", root_blocked.join(", ")),
            Some(fixes.join("; ")),
        );
    } else if !services_blocked.is_empty() {
        report.add(
            scope,
            "device access",
            Level::Warn,
            format!(
                "{who} can open the passed nodes, services running as another user (ollama, plex, jellyfin) cannot open {}",
                services_blocked.join(", ")
            ),
            Some(fixes.join("; ")),
        );
    } else if !group_only.is_empty() {
        // The admin gave the nodes to a group of the container's: its
        // members can open them, which is the point.
        report.add(
            scope,
            "device access",
            Level::Ok,
            format!(
                "{who} and the members of the container's group can open the passed nodes: {} (other users cannot: add a service's user to that group)",
                group_only.join(", ")
            ),
            None,
        );
    } else if nodes.iter().any(|n| passed.contains(n)) {
        report.add(
            scope,
            "device access",
            Level::Ok,
            format!("{who} and other users can open the passed nodes"),
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_as_proxmox_and_lxc_make_the_nodes() {
        let rw = READ | WRITE;
        let dev = |mode| Owned {
            uid: Some(0),
            gid: Some(0),
            mode,
        };
        // devN's default: 0660, container root's.
        assert_eq!(
            access(dev(0o660), rw),
            Access {
                root: true,
                services: false,
                group: None
            }
        );
        assert_eq!(
            access(dev(0o666), rw),
            Access {
                root: true,
                services: true,
                group: None
            }
        );
        // A host node bound into an unprivileged container: host root is
        // nobody there, only the mode's last digit counts.
        let map = PctConfig::parse("unprivileged: 1\n").idmap();
        let bound = |mode| Owned {
            uid: inside(&map, IdKind::User, 0),
            gid: inside(&map, IdKind::Group, 0),
            mode,
        };
        assert_eq!(bound(0o660).uid, None);
        assert_eq!(
            access(bound(0o660), rw),
            Access {
                root: false,
                services: false,
                group: None
            }
        );
        assert_eq!(
            access(bound(0o666), rw),
            Access {
                root: true,
                services: true,
                group: None
            }
        );
        // nvidia-caps nodes are read-only by design: 0444 is all they need.
        assert_eq!(
            access(bound(0o444), READ),
            Access {
                root: true,
                services: true,
                group: None
            }
        );
        assert!(!access(bound(0o444), rw).root);
        // Privileged: host root is container root.
        let privileged = Owned {
            uid: inside(&[], IdKind::User, 0),
            gid: inside(&[], IdKind::Group, 0),
            mode: 0o660,
        };
        assert_eq!(
            access(privileged, rw),
            Access {
                root: true,
                services: false,
                group: None
            }
        );
        assert_eq!(inside(&map, IdKind::User, 100_044), Some(44));
        // devN with gid= of the container's video group: its members too.
        let video = |mode| Owned {
            uid: Some(0),
            gid: Some(44),
            mode,
        };
        assert_eq!(access(video(0o660), rw).group, Some(44));
        assert!(!access(video(0o660), rw).services);
        assert_eq!(
            access(video(0o640), rw).group,
            None,
            "read-only for the group"
        );
    }

    /// Issue 15.2: a custom `lxc.idmap` makes a container unprivileged for
    /// Proxmox without `unprivileged: 1`; its own map counts.
    #[test]
    fn a_custom_idmap_is_unprivileged_and_maps_as_written() {
        let pct = PctConfig::parse("lxc.idmap: u 0 200000 65536\nlxc.idmap: g 0 200000 65536\n");
        let map = pct.idmap();
        assert_eq!(map.len(), 2);
        assert_eq!(
            (map[0].kind, map[0].host, map[1].kind),
            (IdKind::User, 200_000, IdKind::Group)
        );
        assert_eq!(
            inside(&map, IdKind::User, 0),
            None,
            "host root is nobody inside"
        );
        assert_eq!(inside(&map, IdKind::Group, 200_044), Some(44));
        assert!(PctConfig::parse("unprivileged: 0\n").idmap().is_empty());
        assert_eq!(PctConfig::parse("unprivileged: 1\n").idmap().len(), 2);
    }
}
