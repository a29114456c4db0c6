//! A container's mount table, as the kernel shows it in its init's
//! `/proc/<pid>/mountinfo` (never from the container's own files).
//!
//! The host reads a container's files only on file systems the kernel serves
//! from local storage. A FUSE or network mount belongs to whoever serves it:
//! a tenant's FUSE daemon can take a request and never answer, and the
//! reading thread then waits in the kernel, out of reach of any signal.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;

/// One line of mountinfo: `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    pub id: u64,
    /// The path inside the container where it is mounted.
    pub point: Cow<'a, str>,
    pub fstype: Cow<'a, str>,
}

/// The table as the kernel wrote it, and where each mount's fields are in
/// it: parsed without a copy per mount (a container's table can hold
/// thousands), a mount point unescaped only when it is looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    text: Vec<u8>,
    mounts: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: u64,
    point: Range<usize>,
    fstype: Range<usize>,
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
    /// Bytes, not text: a mount point is whatever name a tenant gave it.
    pub fn read_from(file: File) -> io::Result<MountTable> {
        // The kernel writes it a page at a time; one container's is a few KiB.
        let mut text = Vec::with_capacity(16 * 1024);
        file.take(MAX_MOUNTINFO).read_to_end(&mut text)?;
        Ok(MountTable::from_bytes(text))
    }

    /// Lines that do not parse are skipped: the kernel writes this file, so
    /// they do not occur, and nothing read here is trusted beyond its type.
    #[cfg(test)]
    pub fn parse(text: &str) -> MountTable {
        MountTable::from_bytes(text.as_bytes().to_vec())
    }

    fn from_bytes(text: Vec<u8>) -> MountTable {
        let mut mounts = Vec::new();
        let mut at = 0;
        for line in text.split(|b| *b == b'\n') {
            mounts.extend(parse_line(line, at));
            at += line.len() + 1;
        }
        MountTable { text, mounts }
    }

    fn mount(&self, e: &Entry) -> Mount<'_> {
        Mount {
            id: e.id,
            point: unescape(&self.text[e.point.clone()]),
            fstype: String::from_utf8_lossy(&self.text[e.fstype.clone()]),
        }
    }

    pub fn by_id(&self, id: u64) -> Option<Mount<'_>> {
        self.mounts
            .iter()
            .find(|m| m.id == id)
            .map(|e| self.mount(e))
    }

    /// Whether the mount's file system is one the kernel serves locally;
    /// why not when it is not.
    pub fn check_local(&self, id: u64) -> Result<(), String> {
        match self.by_id(id) {
            Some(m) if is_local_fstype(&m.fstype) => Ok(()),
            Some(m) => Err(format!(
                "{} is a {} mount; the host does not read it",
                m.point, m.fstype
            )),
            None => Err(format!("mount {id} is not in the container's mount table")),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Mount<'_>> {
        self.mounts.iter().map(|e| self.mount(e))
    }
}

/// The mount's id, and where its mount point (field 5) and file system
/// type (the field after the optional fields' ` - `) are, `at` being where
/// the line starts. One pass over the line: the fields hold no space.
fn parse_line(line: &[u8], at: usize) -> Option<Entry> {
    let mut fields = line.split(|b| *b == b' ');
    let id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let point = fields.nth(3)?;
    let fstype = fields.skip_while(|f| *f != b"-").nth(1)?;
    // Both are slices of `line`: where they start in it.
    let range = |field: &[u8]| {
        let start = at + (field.as_ptr() as usize - line.as_ptr() as usize);
        start..start + field.len()
    };
    Some(Entry {
        id,
        point: range(point),
        fstype: range(fstype),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; a name
/// that is not UTF-8 is shown with replacement characters.
fn unescape(field: &[u8]) -> Cow<'_, str> {
    if !field.contains(&b'\\') {
        return String::from_utf8_lossy(field);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match (field[i], octal) {
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
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
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
        assert_eq!(t.by_id(1080).unwrap().point, "/dev/nvidia0");
        assert!(t.check_local(1071).is_ok());
        assert!(t.check_local(1072).is_ok());
        let fuse = t.check_local(1090).unwrap_err();
        assert!(
            fuse.contains("/var/lib/nvidia is a fuse.evil mount"),
            "{fuse}"
        );
        assert!(t.check_local(7).unwrap_err().contains("not in the"));
    }

    /// A tenant names its mount points as it likes: a name that is not
    /// UTF-8 leaves the rest of the table readable.
    #[test]
    fn a_mount_point_that_is_not_utf8_is_read() {
        let dir = std::env::temp_dir().join(format!("pnh-mountinfo-{}", std::process::id()));
        std::fs::write(
            &dir,
            b"1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /mnt/\xff\xfe rw - fuse.evil evil rw\n",
        )
        .unwrap();
        let t = MountTable::read_from(File::open(&dir).unwrap()).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert!(t.check_local(1).is_ok());
        let fuse = t.check_local(2).unwrap_err();
        assert!(
            fuse.contains("/mnt/\u{fffd}\u{fffd} is a fuse.evil mount"),
            "{fuse}"
        );
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
