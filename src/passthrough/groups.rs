//! The container's own group for its GPU nodes, from its `/etc/group`.
//!
//! The file is the tenant's: read in the forked reader (the probe), at
//! most [`MAX_GROUP_FILE`] bytes, as glibc's `files` service reads it (the
//! first well-formed line of a name counts, a malformed one is skipped);
//! only two numbers leave the reader. A gid is used only where Proxmox
//! maps it into the container: `map_ct_gid_to_host` leaves an id outside
//! every range unmapped, a host group no one in the container holds.

use serde::{Deserialize, Serialize};

use crate::container::confined::{Confined, ReadError};
use crate::pct_config::{container_to_host, IdKind, IdRange};

/// The most of `/etc/group` read: a site's group file is a few KB; a
/// `video` line past this is not seen.
pub const MAX_GROUP_FILE: u64 = 256 * 1024;

/// The gids of the groups a GPU node may go to, as the container has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    /// `video`: the group of GPU nodes on Debian and Ubuntu (44), which
    /// Ollama's, Plex's and Jellyfin's installers add their users to.
    pub video: Option<u32>,
    /// `render`: the DRM render nodes' group, the same services' other one.
    pub render: Option<u32>,
}

/// Reads the container's `/etc/group` (in the probe's child).
pub fn read_groups(c: &Confined) -> Result<Groups, ReadError> {
    let text = c
        .read_head("/etc/group", MAX_GROUP_FILE)?
        .unwrap_or_default();
    Ok(parse(&text))
}

/// `name:password:gid:members` lines.
fn parse(text: &[u8]) -> Groups {
    let mut groups = Groups::default();
    for line in text.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b':');
        let (Some(name), Some(_), Some(gid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(gid) = decimal(gid) else { continue };
        let slot = match name {
            b"video" => &mut groups.video,
            b"render" => &mut groups.render,
            _ => continue,
        };
        slot.get_or_insert(gid);
    }
    groups
}

/// A gid as written by `groupadd`: decimal digits only, within u32, not
/// `(gid_t) -1`.
fn decimal(field: &[u8]) -> Option<u32> {
    if field.is_empty() || field.len() > 10 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field)
        .ok()?
        .parse()
        .ok()
        .filter(|&g| g != u32::MAX)
}

/// Who a container's GPU nodes go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    /// Its group: `gid=` with mode 0660.
    Found { name: &'static str, gid: u32 },
    /// It has none that can be used; why, when it has one.
    None(Option<String>),
    /// Its files could not be read (it is stopped, or they cannot be
    /// trusted or did not answer): why.
    Unreadable(String),
}

/// `video`, else `render`, when the container has it with a gid Proxmox
/// maps into it (and not root's group, which gives nothing more).
pub fn choose_group(read: Result<Groups, String>, idmap: &[IdRange]) -> Group {
    let groups = match read {
        Ok(g) => g,
        Err(why) => return Group::Unreadable(why),
    };
    let mut refused = Vec::new();
    for (name, gid) in [("video", groups.video), ("render", groups.render)] {
        let Some(gid) = gid else { continue };
        if gid == 0 {
            refused.push(format!("its {name} group is gid 0, root's"));
        } else if container_to_host(idmap, IdKind::Group, gid).is_none() {
            refused.push(format!(
                "its {name} group's gid {gid} is outside the ids Proxmox maps into it"
            ));
        } else {
            return Group::Found { name, gid };
        }
    }
    Group::None((!refused.is_empty()).then(|| refused.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pct_config::PctConfig;

    #[test]
    fn groups_as_glibc_reads_them() {
        let g = parse(b"root:x:0:\nvideo:x:44:ollama,plex\nrender:x:105:\nvideo:x:99:\n");
        assert_eq!(
            g,
            Groups {
                video: Some(44),
                render: Some(105)
            }
        );
        // Hostile lines: skipped, the first well-formed one counts.
        let g = parse(
            b"video:x:-1:\nvideo:x:0x2c:\nvideo:x: 44:\nvideo:x:99999999999:\nvideo:x:4294967295:\nvideo\nvideo:x\n\xff\xfe:x:1:\nvideo:x:4294967294:\x1b[2J\n",
        );
        assert_eq!(g.video, Some(4_294_967_294));
        assert_eq!(g.render, None);
        assert_eq!(parse(b""), Groups::default());
        assert_eq!(parse(&[b'\n'; 4096]), Groups::default());
    }

    #[test]
    fn only_a_group_proxmox_maps_into_the_container() {
        let unprivileged = PctConfig::parse("unprivileged: 1\n").idmap();
        let found = |video, render| choose_group(Ok(Groups { video, render }), &unprivileged);
        assert_eq!(
            found(Some(44), Some(105)),
            Group::Found {
                name: "video",
                gid: 44
            }
        );
        assert_eq!(
            found(None, Some(105)),
            Group::Found {
                name: "render",
                gid: 105
            }
        );
        assert_eq!(
            found(Some(4_294_967_294), Some(105)),
            Group::Found {
                name: "render",
                gid: 105
            },
            "a gid outside the map is a host group: never given"
        );
        let Group::None(Some(why)) = found(Some(70_000), None) else {
            panic!()
        };
        assert!(why.contains("gid 70000 is outside"), "{why}");
        assert_eq!(found(None, None), Group::None(None));
        assert!(matches!(found(Some(0), None), Group::None(Some(_))));
        // A privileged container's gids are the host's: any is its own.
        assert_eq!(
            choose_group(
                Ok(Groups {
                    video: Some(70_000),
                    render: None
                }),
                &[]
            ),
            Group::Found {
                name: "video",
                gid: 70_000
            }
        );
        assert_eq!(
            choose_group(Err("stopped".into()), &unprivileged),
            Group::Unreadable("stopped".into())
        );
    }
}
