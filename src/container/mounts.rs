//! A container's mount table, as the kernel shows it in its init's
//! `/proc/<pid>/mountinfo` (never from the container's own files).
//!
//! The host reads a container's files only on file systems the kernel serves
//! from local storage. A FUSE or network mount belongs to whoever serves it:
//! a tenant's FUSE daemon can take a request and never answer, and the
//! reading thread then waits in the kernel, out of reach of any signal.

use std::fs::File;
use std::io::{self, Read};

/// One line of mountinfo: `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// The path inside the container where it is mounted.
    pub point: String,
    pub fstype: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    mounts: Vec<Mount>,
}

/// File systems whose reads the kernel answers from local storage or memory.
/// Everything else (fuse.*, nfs, cifs, 9p, ceph, overlay stacked on who knows
/// what, autofs, ...) is not read from the host side.
const LOCAL_FSTYPES: [&str; 16] = [
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "devtmpfs", "ramfs", "f2fs", "jfs",
    "reiserfs", "bcachefs", "squashfs", "erofs", "vfat",
];

pub fn is_local_fstype(fstype: &str) -> bool {
    LOCAL_FSTYPES.contains(&fstype)
}

/// mountinfo of a container with hundreds of mounts is a few hundred KiB.
const MAX_MOUNTINFO: u64 = 4 << 20;

impl MountTable {
    /// The table in a mountinfo file (`/proc/<pid>/mountinfo`), opened.
    pub fn read_from(file: File) -> io::Result<MountTable> {
        // The kernel writes it a page at a time; one container's is a few KiB.
        let mut text = String::with_capacity(16 * 1024);
        file.take(MAX_MOUNTINFO).read_to_string(&mut text)?;
        Ok(MountTable::parse(&text))
    }

    /// Lines that do not parse are skipped: the kernel writes this file, so
    /// they do not occur, and nothing read here is trusted beyond its type.
    pub fn parse(text: &str) -> MountTable {
        let mounts = text.lines().filter_map(parse_line).collect();
        MountTable { mounts }
    }

    pub fn by_id(&self, id: u64) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.id == id)
    }

    /// The mount whose file system the kernel serves locally, or why not.
    pub fn check_local(&self, id: u64) -> Result<&Mount, String> {
        match self.by_id(id) {
            Some(m) if is_local_fstype(&m.fstype) => Ok(m),
            Some(m) => Err(format!(
                "{} is a {} mount; the host does not read it",
                m.point, m.fstype
            )),
            None => Err(format!("mount {id} is not in the container's mount table")),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mount> {
        self.mounts.iter()
    }
}

fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let id = head.next()?.parse().ok()?;
    let _parent = head.next()?;
    let _dev = head.next()?;
    let _root = head.next()?;
    let point = unescape(head.next()?);
    let fstype = tail.split(' ').next()?.to_string();
    Some(Mount { id, point, fstype })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match (bytes[i], octal) {
            (b'\\', Some(n)) if n <= 0xff => {
                out.push(n as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LXC: &str = "\
1071 1052 0:74 / / rw,relatime master:449 - ext4 /dev/mapper/pve-vm--101--disk--0 rw
1072 1071 0:76 / /dev rw,nosuid,nodev - tmpfs none rw,size=492k,mode=755,uid=100000,gid=100000
1080 1072 0:5 /nvidia0 /dev/nvidia0 rw,nosuid - devtmpfs udev rw,size=16359708k
1090 1071 0:99 / /var/lib/nvidia rw,nosuid,nodev,relatime - fuse.evil evil rw,user_id=0,group_id=0
1091 1071 254:0 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14 ro,nosuid,nodev - ext4 /dev/sda1 rw
1092 1071 0:80 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_lxc_mountinfo() {
        let t = MountTable::parse(LXC);
        assert_eq!(t.iter().count(), 6);
        assert_eq!(t.by_id(1071).unwrap().fstype, "ext4");
        assert_eq!(t.by_id(1092).unwrap().point, "/mnt/with space");
        assert!(t.check_local(1071).is_ok());
        assert!(t.check_local(1072).is_ok());
        let fuse = t.check_local(1090).unwrap_err();
        assert!(
            fuse.contains("/var/lib/nvidia is a fuse.evil mount"),
            "{fuse}"
        );
        assert!(t.check_local(7).unwrap_err().contains("not in the"));
    }

    #[test]
    fn junk_lines_are_skipped() {
        let t = MountTable::parse("junk\n12 1 0:1 / / rw - ext4 x rw\n\u{0}\u{1}\n - \n");
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn only_local_file_systems_are_read() {
        for t in ["ext4", "zfs", "xfs", "tmpfs", "btrfs"] {
            assert!(is_local_fstype(t), "{t}");
        }
        for t in [
            "fuse",
            "fuse.sshfs",
            "fuseblk",
            "nfs",
            "nfs4",
            "cifs",
            "9p",
            "ceph",
            "overlay",
            "autofs",
            "proc",
        ] {
            assert!(!is_local_fstype(t), "{t}");
        }
    }
}
