//! The start-time check: which NVIDIA user-space driver a container has,
//! read from its files without starting any program in it, in about a
//! millisecond. The whole check is one read through the [`Probe`]: the
//! installer's record, then every file and symlink in it that workloads
//! read, by kind and target (one `statx` or `readlinkat` each, folders
//! looked up once).

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::confined::{Confined, Folder, Kind, ReadError};
use super::mounts::MountTable;
use super::probe::Probe;
use super::record::{Expect, Record};
use crate::version::{self, DriverVersion};

/// nvidia-installer's record of what it installed.
pub const INSTALLER_RECORD: &str = "/var/lib/nvidia/log";
pub const INSTALLER_LOG: &str = "/var/log/nvidia-installer.log";
/// Left by Debian's nvidia-installer-cleanup: a silent runfile install aborts.
pub const ALTERNATE_INSTALL_MARKER: &str = "/usr/lib/nvidia/alternate-install-present";
/// Where libraries live on Debian/Ubuntu, then other layouts.
pub const LIBRARY_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"];

/// A real record is some tens of KiB.
pub const MAX_RECORD: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstalledDriver {
    /// No installer record and no NVIDIA library.
    Absent,
    /// A runfile installation of this version, everything workloads read
    /// in place.
    Installed(DriverVersion),
    /// Something is there but not a whole runfile installation.
    Broken(String),
    /// The distribution's packages (Debian's alternatives), of this version.
    Packaged(DriverVersion),
    /// The host's own libraries bind-mounted in (NVIDIA Container Toolkit,
    /// LXC's nvidia hook): nothing to install, ever.
    HostProvided(Option<DriverVersion>),
    /// Cannot tell: the files could not be read (an untrusted file system,
    /// a read that timed out, the container stopped).
    Unknown(String),
}

impl InstalledDriver {
    pub fn version(&self) -> Option<&DriverVersion> {
        match self {
            InstalledDriver::Installed(v) | InstalledDriver::Packaged(v) => Some(v),
            InstalledDriver::HostProvided(v) => v.as_ref(),
            _ => None,
        }
    }
}

/// The start-time check through the door: a read that cannot finish is
/// "cannot tell", never "install".
pub fn detect_in(probe: &Probe) -> InstalledDriver {
    probe
        .read(|c| Ok(detect(c)))
        .unwrap_or_else(|e| InstalledDriver::Unknown(e.to_string()))
}

/// An error reading the container: "cannot tell" when the host must not or
/// could not look, "broken" otherwise (a FIFO where the record belongs, a
/// symlink loop).
fn unreadable(e: ReadError) -> InstalledDriver {
    if e.cannot_tell() {
        InstalledDriver::Unknown(e.to_string())
    } else {
        InstalledDriver::Broken(e.to_string())
    }
}

/// The check itself, on the container's files.
pub fn detect(c: &Confined) -> InstalledDriver {
    if let Some(version) = host_provided(c.mounts()) {
        return InstalledDriver::HostProvided(version);
    }
    let record = match read_record(c) {
        Ok(Some(Ok(record))) => record,
        Ok(Some(Err(broken))) => return InstalledDriver::Broken(broken),
        Ok(None) => return without_record(c),
        Err(e) => return unreadable(e),
    };
    let v = &record.version;
    if let Some(name) = record.missing_key_files().first() {
        return InstalledDriver::Broken(format!(
            "installer record of {v} lists no {name}: the install did not finish"
        ));
    }
    let found = c.in_folders(&record.workload_entries(), look);
    // A folder the host must not (or could not) read: cannot tell.
    if let Some(e) = found
        .iter()
        .filter_map(|f| f.as_ref().err())
        .find(|e| e.cannot_tell())
    {
        return InstalledDriver::Unknown(e.to_string());
    }
    let wrong: Vec<String> = found
        .into_iter()
        .filter_map(|f| match f {
            Ok(None) => None,
            Ok(Some(why)) => Some(why),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    match wrong.split_first() {
        None => InstalledDriver::Installed(record.version),
        Some((first, rest)) => InstalledDriver::Broken(format!(
            "installer record says {v} but {first}{}",
            and_more(rest.len())
        )),
    }
}

/// The installer's record, parsed; Ok(None) when there is none, the
/// inner Err when it is there but not one (too large, garbled).
pub fn read_record(c: &Confined) -> Result<Option<Result<Record, String>>, ReadError> {
    let Some((file, size)) = c.open_file(INSTALLER_RECORD)? else {
        return Ok(None);
    };
    if size > MAX_RECORD {
        return Ok(Some(Err(format!(
            "{INSTALLER_RECORD} is larger than {MAX_RECORD} bytes"
        ))));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_RECORD)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::io(INSTALLER_RECORD, e))?;
    Ok(Some(
        Record::parse(&String::from_utf8_lossy(&bytes))
            .map_err(|e| format!("{INSTALLER_RECORD}: {e}")),
    ))
}

/// What is wrong with one recorded path, None when it is as recorded.
fn look(
    folder: Option<&Folder>,
    name: &str,
    path: &str,
    expect: Expect<'_>,
) -> Result<Option<String>, ReadError> {
    let Some(folder) = folder else {
        return Ok(Some(format!("{path} is missing")));
    };
    match expect {
        Expect::File => Ok(match folder.kind(name, path)? {
            Kind::File => None,
            Kind::Missing => Some(format!("{path} is missing")),
            _ => Some(format!("{path} is not a regular file")),
        }),
        Expect::Link(target) => Ok(match folder.link_target(name, path)? {
            Some(t) if t == target => None,
            // Debian's alternatives, or an apt package, repointed it: the
            // loader follows the link, not the record.
            Some(t) => Some(format!(
                "{path} points to {}, not {target}",
                crate::logging::bounded(&t, 200)
            )),
            None if folder.kind(name, path)? == Kind::Missing => Some(format!("{path} is missing")),
            None => Some(format!("{path} is not a symlink")),
        }),
    }
}

pub fn and_more(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    }
}

/// No record: the distribution's packages, a stray library, or nothing.
fn without_record(c: &Confined) -> InstalledDriver {
    match c.kind("/var/lib/nvidia") {
        Ok(Kind::Symlink) => return InstalledDriver::Broken("/var/lib/nvidia is a symlink".into()),
        Err(e) => return unreadable(e),
        Ok(_) => {}
    }
    for dir in LIBRARY_DIRS {
        let link = format!("{dir}/libnvidia-ml.so.1");
        match c.resolved_name(&link) {
            Ok(Some(name)) => {
                return match version::from_nvml_library_name(&name) {
                    Some(v) if is_packaged(c) => InstalledDriver::Packaged(v),
                    Some(v) => InstalledDriver::Broken(format!(
                        "libnvidia-ml.so.{v} present without an installer record"
                    )),
                    None => InstalledDriver::Broken(format!(
                        "{link} leads to {}",
                        crate::logging::bounded(&name, 200)
                    )),
                }
            }
            Ok(None) => {}
            Err(e) => return unreadable(e),
        }
    }
    InstalledDriver::Absent
}

/// Debian's packaging: the `nvidia` alternative points the libraries at
/// `/usr/lib/nvidia/current`.
fn is_packaged(c: &Confined) -> bool {
    matches!(c.kind("/etc/alternatives/nvidia"), Ok(Kind::Symlink))
}

/// The host's driver bind-mounted in, file by file, as the NVIDIA Container
/// Toolkit and LXC's nvidia hook do: its version from the libraries' names.
pub fn host_provided(mounts: &MountTable) -> Option<Option<DriverVersion>> {
    let mut found = None;
    for m in mounts.iter() {
        let name = m.point.rsplit('/').next().unwrap_or_default();
        if m.point != "/usr/bin/nvidia-smi"
            && !name.starts_with("libnvidia-ml.so.")
            && !name.starts_with("libcuda.so.")
        {
            continue;
        }
        let version = version::from_nvml_library_name(name)
            .or_else(|| name.strip_prefix("libcuda.so.")?.parse().ok());
        // The first mount that names a version gives it.
        found = Some(found.flatten().or(version));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::{confined, tempdir};
    use crate::container::confined::Confined;

    fn root_with(tag: &str, files: &[(&str, &str)]) -> (std::path::PathBuf, Confined) {
        let d = tempdir(&format!("driver-{tag}"));
        for (path, content) in files {
            let p = d.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let c = confined(&d);
        (d, c)
    }

    const LIB: &str = "/usr/lib/x86_64-linux-gnu";

    use crate::container::record::test_record as record;

    fn installed(extra: &str) -> Vec<(&'static str, String)> {
        vec![
            (INSTALLER_RECORD, record(extra)),
            ("/usr/bin/nvidia-smi", String::new()),
            (
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14",
                String::new(),
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14",
                String::new(),
            ),
        ]
    }

    fn with<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        files.iter().map(|(p, c)| (*p, c.as_str())).collect()
    }

    #[test]
    fn whole_install() {
        let files = installed("");
        let (d, c) = root_with("ok", &with(&files));
        assert_eq!(
            detect(&c),
            InstalledDriver::Installed("550.54.14".parse().unwrap())
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn empty_container() {
        let (d, c) = root_with("empty", &[]);
        assert_eq!(detect(&c), InstalledDriver::Absent);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_listed_file_missing_is_broken() {
        let files = installed(&format!("1: {LIB}/libnvidia-encode.so.550.54.14\n4\n"));
        let (d, c) = root_with("nolib", &with(&files));
        assert!(
            matches!(detect(&c), InstalledDriver::Broken(m) if m.contains("libnvidia-encode.so.550.54.14 is missing")),
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_failed_copy_of_libcuda_is_broken() {
        let mut files = installed("");
        files[0].1 = files[0]
            .1
            .replace(&format!("1: {LIB}/libcuda.so.550.54.14\n3\n"), "");
        files.pop();
        let (d, c) = root_with("nocuda", &with(&files));
        assert!(
            matches!(detect(&c), InstalledDriver::Broken(m) if m.contains("lists no libcuda.so.550.54.14"))
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_removed_compute_only_icd_is_not_missing() {
        let files = installed("1: /etc/vulkan/icd.d/nvidia_icd.json\n5\n");
        let (d, c) = root_with("icd", &with(&files));
        assert!(matches!(detect(&c), InstalledDriver::Installed(_)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn garbled_record_is_broken() {
        let (d, c) = root_with("garbled", &[(INSTALLER_RECORD, "\u{0}\u{1}\u{2}")]);
        assert!(matches!(detect(&c), InstalledDriver::Broken(_)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn debian_packages_through_alternatives() {
        let (d, c) = root_with(
            "debian",
            &[(
                "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03",
                "",
            )],
        );
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, d.join(at.trim_start_matches('/'))).unwrap()
        };
        std::fs::create_dir_all(d.join("etc/alternatives")).unwrap();
        link(
            "libnvidia-ml.so.535.261.03",
            "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
        );
        link(
            "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
            "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
        );
        link("/usr/lib/nvidia/current", "/etc/alternatives/nvidia");
        link(
            "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        );
        assert_eq!(
            detect(&c),
            InstalledDriver::Packaged("535.261.03".parse().unwrap())
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bind_mounts_from_the_host() {
        let t = MountTable::parse(
            "1 0 0:1 / / rw - ext4 x rw\n\
             2 1 0:1 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14 ro - ext4 x rw\n\
             3 1 0:1 /usr/bin/nvidia-smi /usr/bin/nvidia-smi ro - ext4 x rw\n",
        );
        assert_eq!(host_provided(&t), Some(Some("550.54.14".parse().unwrap())));
        assert_eq!(
            host_provided(&MountTable::parse("1 0 0:1 / / rw - ext4 x rw\n")),
            None
        );
    }

    #[test]
    fn a_repointed_symlink_is_not_up_to_date() {
        let mut files = installed(&format!("0: {LIB}/libcuda.so.1\nlibcuda.so.550.54.14\n"));
        files.push(("/usr/share/doc/NVIDIA_GLX-1.0/README.txt", String::new()));
        let (d, c) = root_with("links", &with(&files));
        let lib = d.join(LIB.trim_start_matches('/'));
        std::os::unix::fs::symlink("libcuda.so.550.54.14", lib.join("libcuda.so.1")).unwrap();
        assert!(matches!(detect(&c), InstalledDriver::Installed(_)));
        // Debian's alternatives (an apt package) take the name over.
        std::fs::remove_file(lib.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/libcuda.so.1", lib.join("libcuda.so.1"))
            .unwrap();
        assert!(
            matches!(detect(&c), InstalledDriver::Broken(m) if m.contains("libcuda.so.1 points to /etc/alternatives/libcuda.so.1")),
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn removed_documentation_breaks_nothing() {
        let files = installed(
            "1: /usr/share/doc/NVIDIA_GLX-1.0/README.txt\n7\n1: /usr/share/man/man1/nvidia-smi.1.gz\n8\n",
        );
        let (d, c) = root_with("docs", &with(&files));
        assert!(matches!(detect(&c), InstalledDriver::Installed(_)));
        std::fs::remove_dir_all(d).unwrap();
    }
}
