//! nvidia-installer's record of an installation, `/var/lib/nvidia/log`, as
//! its `backup.c` writes it (the same format from 470 to 590):
//!
//! ```text
//! 1.0-55014403 (550.144.03)                      version
//! NVIDIA Accelerated Graphics Driver for ...     description
//! 1: /usr/bin/nvidia-smi                         installed file
//! 3141592653                                       its CRC
//! 0: /usr/lib/x86_64-linux-gnu/libcuda.so.1      installed symlink
//! libcuda.so.550.144.03                            its target
//! 2: <path> / <target> / <mode uid gid>          backed-up symlink
//! 100: <path> / <crc mode uid gid>               backed-up file (100, 101, ...)
//! ```
//!
//! The installer writes the first two lines before it copies anything and
//! an entry after each file lands: with `--silent` it goes on past a failed
//! copy, leaving that file out, and can exit 0. So a record names what
//! landed, not what a working driver needs; [`Record::missing_key_files`] says
//! whether that is there.

use super::vulkan::is_loader_file;
use crate::version::{self, DriverVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: DriverVersion,
    /// Installed regular files: absolute path and CRC.
    pub files: Vec<(String, u32)>,
    /// Installed symlinks: absolute path and target.
    pub symlinks: Vec<(String, String)>,
}

/// A real record lists a few hundred entries.
const MAX_ENTRIES: usize = 20_000;

/// The files without which no workload runs, by name, for `version`.
pub fn key_names(version: &DriverVersion) -> [String; 3] {
    [
        format!("libnvidia-ml.so.{version}"),
        format!("libcuda.so.{version}"),
        "nvidia-smi".to_string(),
    ]
}

impl Record {
    pub fn parse(text: &str) -> Result<Record, String> {
        let mut lines = text.lines();
        let version = version::from_installer_record(lines.next().unwrap_or_default())?;
        let _description = lines.next();
        let mut record = Record {
            version,
            files: Vec::new(),
            symlinks: Vec::new(),
        };
        let mut count = 0;
        while let Some(line) = lines.next() {
            if line.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries"));
            }
            let (code, path) = line
                .split_once(':')
                .ok_or_else(|| format!("entry {count}: no 'code: path'"))?;
            let code: u32 = code
                .parse()
                .map_err(|_| format!("entry {count}: '{}' is not an entry code", short(code)))?;
            let path = path.trim_start();
            if !path.starts_with('/') || path.chars().any(char::is_control) {
                return Err(format!(
                    "entry {count}: '{}' is not an absolute path",
                    short(path)
                ));
            }
            let mut next = || {
                lines
                    .next()
                    .ok_or_else(|| format!("entry {count} ({}) is cut short", short(path)))
            };
            match code {
                0 => record
                    .symlinks
                    .push((path.to_string(), next()?.to_string())),
                1 => {
                    let crc = next()?
                        .trim()
                        .parse()
                        .map_err(|_| format!("entry {count}: bad CRC for {}", short(path)))?;
                    record.files.push((path.to_string(), crc));
                }
                // Backed-up symlink: target, then mode/uid/gid.
                2 => {
                    next()?;
                    next()?;
                }
                // Backed-up file: CRC, mode, uid, gid on one line.
                n if n >= 100 => {
                    next()?;
                }
                n => return Err(format!("entry {count}: unknown entry code {n}")),
            }
        }
        Ok(record)
    }

    /// The installed file with this name (the record gives absolute paths,
    /// so custom `--*-prefix`/`--*-libdir` arguments are followed).
    pub fn file_named(&self, name: &str) -> Option<&str> {
        self.files
            .iter()
            .map(|(p, _)| p.as_str())
            .find(|p| p.rsplit('/').next() == Some(name))
    }

    /// Key files the record does not list: each missing one means a copy
    /// failed during the install.
    pub fn missing_key_files(&self) -> Vec<String> {
        key_names(&self.version)
            .into_iter()
            .filter(|n| self.file_named(n).is_none())
            .collect()
    }

    /// Whether the OpenGL/GLX libraries were installed (they are not with
    /// `--no-opengl-files`).
    pub fn has_graphics(&self) -> bool {
        self.file_named(&format!("libGLX_nvidia.so.{}", self.version))
            .is_some()
    }

    /// What must be in place for workloads, and what each must be: every
    /// installed file and symlink they may read, except the Vulkan loader
    /// files of a compute-only install (they name libraries
    /// `--no-opengl-files` leaves out, and are removed after the installer;
    /// see [`super::vulkan`]). Files no workload reads (documentation,
    /// manual pages, firmware only the host's kernel loads) are left out: a
    /// tenant who removes them breaks nothing.
    pub fn workload_entries(&self) -> Vec<(&str, Expect<'_>)> {
        let graphics = self.has_graphics();
        self.files
            .iter()
            .map(|(p, _)| (p.as_str(), Expect::File))
            .chain(
                self.symlinks
                    .iter()
                    .map(|(p, t)| (p.as_str(), Expect::Link(t.as_str()))),
            )
            .filter(|(p, _)| is_read_by_workloads(p) && (graphics || !is_loader_file(p)))
            .collect()
    }
}

/// What a recorded path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    File,
    /// A symlink with exactly this target: workloads follow it.
    Link(&'a str),
}

/// Folders whose files no workload reads: the installer's documentation
/// and manual pages, desktop entries and icons, the GSP firmware (loaded by
/// the host's kernel, never from a container) and systemd units.
const NOT_READ_BY_WORKLOADS: [&str; 9] = [
    "/usr/share/doc/",
    "/usr/share/man/",
    "/usr/share/applications/",
    "/usr/share/pixmaps/",
    "/lib/firmware/",
    "/usr/lib/firmware/",
    "/lib/systemd/",
    "/usr/lib/systemd/",
    "/etc/systemd/",
];

pub fn is_read_by_workloads(path: &str) -> bool {
    !NOT_READ_BY_WORKLOADS
        .iter()
        .any(|dir| path.starts_with(dir))
}

/// `.../vulkan/icd.d/nvidia_icd.json`: what makes Vulkan available.
pub fn is_vulkan_icd(path: &str) -> bool {
    path.ends_with(".json") && path.contains("/vulkan/icd.d/")
}

fn short(s: &str) -> String {
    s.chars().take(80).flat_map(char::escape_debug).collect()
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, MSB first, initial value !0, no
/// final xor): nvidia-installer's `crc.c`, which the record's CRCs use.
pub struct Crc {
    value: u32,
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

impl Default for Crc {
    fn default() -> Self {
        Crc { value: !0 }
    }
}

impl Crc {
    /// The CRC nvidia-installer records for a file of `len` bytes whose
    /// running CRC is `self` (it writes 0 for an empty file).
    pub fn of_file(&self, len: u64) -> u32 {
        if len == 0 {
            0
        } else {
            self.value
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.value = (self.value << 8) ^ CRC_TABLE[((self.value >> 24) as u8 ^ b) as usize];
        }
    }

    #[cfg(test)]
    pub fn value(&self) -> u32 {
        self.value
    }
}

/// A record of NVIDIA's form for 550.54.14 with its three key files, and
/// `extra` entries, for the tests of what reads records.
#[cfg(test)]
pub(crate) fn test_record(extra: &str) -> String {
    const LIB: &str = "/usr/lib/x86_64-linux-gnu";
    format!(
        "1.0-5505414 (550.54.14)\nNVIDIA Accelerated Graphics Driver for Linux-x86_64\n\
         1: /usr/bin/nvidia-smi\n1\n1: {LIB}/libnvidia-ml.so.550.54.14\n2\n\
         1: {LIB}/libcuda.so.550.54.14\n3\n{extra}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub const REAL: &str = "1.0-55014403 (550.144.03)
NVIDIA Accelerated Graphics Driver for Linux-x86_64
100: /usr/lib/x86_64-linux-gnu/libEGL_nvidia.so.0
2918474162 100644 0 0
2: /usr/lib/x86_64-linux-gnu/libcuda.so.1
libcuda.so.535.0
120777 0 0
1: /usr/bin/nvidia-smi
3141592653
1: /usr/lib/x86_64-linux-gnu/libcuda.so.550.144.03
1234567890
1: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.144.03
42
1: /etc/vulkan/icd.d/nvidia_icd.json
7
0: /usr/lib/x86_64-linux-gnu/libcuda.so.1
libcuda.so.550.144.03
";

    #[test]
    fn parses_nvidia_installer_records() {
        let r = Record::parse(REAL).unwrap();
        assert_eq!(r.version.to_string(), "550.144.03");
        assert_eq!(r.files.len(), 4);
        assert_eq!(r.files[0], ("/usr/bin/nvidia-smi".to_string(), 3141592653));
        assert_eq!(
            r.symlinks,
            [(
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1".to_string(),
                "libcuda.so.550.144.03".to_string()
            )]
        );
        assert!(r.missing_key_files().is_empty());
        assert!(!r.has_graphics());
        let entries = r.workload_entries();
        assert!(!entries
            .iter()
            .any(|(p, _)| *p == "/etc/vulkan/icd.d/nvidia_icd.json"));
        assert_eq!(entries.len(), 4);
        assert!(entries.contains(&(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            Expect::Link("libcuda.so.550.144.03")
        )));
    }

    #[test]
    fn a_failed_copy_leaves_a_key_file_out() {
        let partial = REAL.replace(
            "1: /usr/lib/x86_64-linux-gnu/libcuda.so.550.144.03\n1234567890\n",
            "",
        );
        let r = Record::parse(&partial).unwrap();
        assert_eq!(r.missing_key_files(), ["libcuda.so.550.144.03"]);
    }

    #[test]
    fn header_only_record_misses_everything() {
        let r = Record::parse("1.0-55014403 (550.144.03)\nNVIDIA driver\n").unwrap();
        assert_eq!(r.missing_key_files().len(), 3);
    }

    #[test]
    fn graphics_installs_keep_their_icd() {
        let r = Record::parse(&format!(
            "{REAL}1: /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.550.144.03\n5\n"
        ))
        .unwrap();
        assert!(r.has_graphics());
        assert!(r
            .workload_entries()
            .contains(&("/etc/vulkan/icd.d/nvidia_icd.json", Expect::File)));
    }

    /// A compute-only install's Vulkan and Vulkan SC loader files (ICDs and
    /// the implicit layer) are removed when they dangle: not required.
    #[test]
    fn compute_only_loader_files_are_not_required() {
        let r = Record::parse(&format!(
            "{REAL}1: /etc/vulkan/implicit_layer.d/nvidia_layers.json\n8\n\
             1: /etc/vulkansc/icd.d/nvidia_icd_vksc.json\n9\n"
        ))
        .unwrap();
        assert!(!r
            .workload_entries()
            .iter()
            .any(|(p, _)| p.ends_with(".json")));
        let graphics = Record::parse(&format!(
            "{REAL}1: /etc/vulkan/implicit_layer.d/nvidia_layers.json\n8\n\
             1: /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.550.144.03\n5\n"
        ))
        .unwrap();
        assert!(graphics.workload_entries().contains(&(
            "/etc/vulkan/implicit_layer.d/nvidia_layers.json",
            Expect::File
        )));
    }

    #[test]
    fn documentation_is_not_what_workloads_read() {
        let r = Record::parse(&format!(
            "{REAL}1: /usr/share/doc/NVIDIA_GLX-1.0/README.txt\n5\n\
             1: /usr/share/man/man1/nvidia-smi.1.gz\n6\n\
             1: /lib/firmware/nvidia/550.144.03/gsp_ga10x.bin\n7\n"
        ))
        .unwrap();
        assert_eq!(r.files.len(), 7);
        assert_eq!(r.workload_entries().len(), 4);
    }

    #[test]
    fn malformed_records() {
        for (text, expected) in [
            ("", "not an NVIDIA driver version"),
            (
                "1.0-1 (550.54.14)\nx\n1: relative\n5\n",
                "not an absolute path",
            ),
            ("1.0-1 (550.54.14)\nx\n1: /a\n", "cut short"),
            ("1.0-1 (550.54.14)\nx\n1: /a\nnot-a-crc\n", "bad CRC"),
            ("1.0-1 (550.54.14)\nx\n7: /a\nx\n", "unknown entry code 7"),
            ("1.0-1 (550.54.14)\nx\nno colon\n", "no 'code: path'"),
            (
                "1.0-1 (550.54.14)\nx\n1: /a\x1b[2J\n5\n",
                "not an absolute path",
            ),
        ] {
            let err = Record::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn crc_is_nvidia_installers() {
        // CRC-32/MPEG-2 check value.
        let mut c = Crc::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0x0376_E6E7);
        assert_eq!(c.of_file(9), 0x0376_E6E7);
        assert_eq!(Crc::default().of_file(0), 0, "an empty file records 0");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let text = format!("1.0-1 (550.54.14)\nd\n{}", String::from_utf8_lossy(&bytes));
            let _ = Record::parse(&text);
        }
    }
}
