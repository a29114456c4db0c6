//! Which NVIDIA user-space driver a container has, read from its files
//! without starting any program in it: [`detect`] at every start (about a
//! millisecond), [`inspect`] for `verify` and the end of an install (every
//! file the record lists, by CRC, and the libraries' sonames).

use std::io::{self, Read};

use super::confined::{Confined, Kind};
use super::elf;
use super::mounts::MountTable;
use super::record::{self, Crc, Record};
use super::rootfs::RootFs;
use crate::version::{self, DriverVersion};

/// nvidia-installer's record of what it installed.
pub const INSTALLER_RECORD: &str = "/var/lib/nvidia/log";
pub const INSTALLER_LOG: &str = "/var/log/nvidia-installer.log";
/// Left by Debian's nvidia-installer-cleanup: a silent runfile install aborts.
pub const ALTERNATE_INSTALL_MARKER: &str = "/usr/lib/nvidia/alternate-install-present";
/// Where libraries live on Debian/Ubuntu, then other layouts.
pub const LIBRARY_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"];

/// A real record is some tens of KiB.
const MAX_RECORD: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstalledDriver {
    /// No installer record and no NVIDIA library.
    Absent,
    /// A runfile installation of this version, every file it lists in place.
    Installed(DriverVersion),
    /// Something is there but not a whole runfile installation.
    Broken(String),
    /// The distribution's packages (Debian's alternatives), of this version.
    Packaged(DriverVersion),
    /// The host's own libraries bind-mounted in (NVIDIA Container Toolkit,
    /// LXC's nvidia hook): nothing to install, ever.
    HostProvided(Option<DriverVersion>),
    /// Cannot tell: the files could not be read (an untrusted file system,
    /// a read that timed out).
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

/// The start-time check, with the reader's deadline: a read that cannot
/// finish is "cannot tell", never "install".
pub fn detect_in(root: &RootFs) -> InstalledDriver {
    root.run(detect)
        .unwrap_or_else(|e| InstalledDriver::Unknown(e.to_string()))
}

/// The start-time check: the installer's record, and every file it lists
/// present with its kind (one `statx` each, folders looked up once).
pub fn detect(c: &Confined) -> InstalledDriver {
    if let Some(version) = host_provided(c.mounts()) {
        return InstalledDriver::HostProvided(version);
    }
    let (record, size) = match c.open_file(INSTALLER_RECORD) {
        Ok(Some((file, size))) if size <= MAX_RECORD => (file, size),
        Ok(Some(_)) => {
            return InstalledDriver::Broken(format!(
                "{INSTALLER_RECORD} is larger than {MAX_RECORD} bytes"
            ))
        }
        Ok(None) => return without_record(c),
        Err(e) => return unreadable(INSTALLER_RECORD, e),
    };
    let mut bytes = Vec::with_capacity(size as usize);
    if let Err(e) = record.take(MAX_RECORD).read_to_end(&mut bytes) {
        return unreadable(INSTALLER_RECORD, e);
    }
    let record = match Record::parse(&String::from_utf8_lossy(&bytes)) {
        Ok(r) => r,
        Err(e) => return InstalledDriver::Broken(format!("{INSTALLER_RECORD}: {e}")),
    };
    let v = &record.version;
    if let Some(name) = record.missing_key_files().first() {
        return InstalledDriver::Broken(format!(
            "installer record of {v} lists no {name}: the install did not finish"
        ));
    }
    let paths = record.required_paths();
    let kinds = c.kinds(&paths);
    // A folder the host must not (or could not) read: cannot tell.
    if let Some((path, Err(e))) = paths
        .iter()
        .zip(&kinds)
        .find(|(_, k)| k.as_ref().is_err_and(cannot_tell))
    {
        return InstalledDriver::Unknown(format!("{path}: {e}"));
    }
    let expected = |path: &str| {
        if record.symlinks.iter().any(|(p, _)| p == path) {
            Kind::Symlink
        } else {
            Kind::File
        }
    };
    let wrong: Vec<String> = paths
        .iter()
        .zip(kinds)
        .filter_map(|(path, kind)| match kind {
            Ok(k) if k == expected(path) => None,
            Ok(Kind::Missing) => Some(format!("{path} is missing")),
            Ok(_) => Some(format!("{path} is not a {}", describe(expected(path)))),
            Err(e) => Some(format!("{path}: {e}")),
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

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Symlink => "symlink",
        _ => "regular file",
    }
}

fn and_more(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    }
}

/// An error reading the container: "cannot tell" when the host must not or
/// could not look (an untrusted file system, a timeout), "broken" otherwise
/// (a FIFO where the record belongs, a symlink loop).
fn unreadable(path: &str, e: io::Error) -> InstalledDriver {
    if cannot_tell(&e) {
        InstalledDriver::Unknown(format!("{path}: {e}"))
    } else {
        InstalledDriver::Broken(format!("{path}: {e}"))
    }
}

fn cannot_tell(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::PermissionDenied
    )
}

/// No record: the distribution's packages, a stray library, or nothing.
fn without_record(c: &Confined) -> InstalledDriver {
    match c.kind("/var/lib/nvidia") {
        Ok(Kind::Symlink) => return InstalledDriver::Broken("/var/lib/nvidia is a symlink".into()),
        Err(e) => return unreadable("/var/lib/nvidia", e),
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
                    None => InstalledDriver::Broken(format!("{link} leads to {name}")),
                }
            }
            Ok(None) => {}
            Err(e) => return unreadable(&link, e),
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
    let names: Vec<&str> = mounts
        .iter()
        .map(|m| m.point.as_str())
        .filter(|p| {
            *p == "/usr/bin/nvidia-smi"
                || p.rsplit('/').next().is_some_and(|n| {
                    n.starts_with("libnvidia-ml.so.") || n.starts_with("libcuda.so.")
                })
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(names.iter().find_map(|p| {
        let name = p.rsplit('/').next()?;
        version::from_nvml_library_name(name)
            .or_else(|| name.strip_prefix("libcuda.so.")?.parse().ok())
    }))
}

/// What the installed driver offers workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub cuda: bool,
    pub nvenc: bool,
    pub nvdec: bool,
    pub opencl: bool,
    pub vulkan: bool,
    pub egl: bool,
    pub gl: bool,
}

impl Capabilities {
    fn of(record: &Record, present: impl Fn(&str) -> bool) -> Capabilities {
        let v = &record.version;
        let has = |name: String| record.file_named(&name).is_some_and(&present);
        let icd = record
            .files
            .iter()
            .any(|(p, _)| record::is_vulkan_icd(p) && present(p));
        Capabilities {
            cuda: has(format!("libcuda.so.{v}")),
            nvenc: has(format!("libnvidia-encode.so.{v}")),
            nvdec: has(format!("libnvcuvid.so.{v}")),
            opencl: has(format!("libnvidia-opencl.so.{v}")),
            gl: has(format!("libGLX_nvidia.so.{v}")),
            egl: has(format!("libEGL_nvidia.so.{v}")),
            vulkan: icd && has(format!("libGLX_nvidia.so.{v}")),
        }
    }

    /// `CUDA, NVENC, NVDEC, OpenCL; no Vulkan, EGL, GL`.
    pub fn summary(&self) -> String {
        let all = [
            ("CUDA", self.cuda),
            ("NVENC", self.nvenc),
            ("NVDEC", self.nvdec),
            ("OpenCL", self.opencl),
            ("Vulkan", self.vulkan),
            ("EGL", self.egl),
            ("GL", self.gl),
        ];
        let has: Vec<&str> = all.iter().filter(|(_, b)| *b).map(|(n, _)| *n).collect();
        let not: Vec<&str> = all.iter().filter(|(_, b)| !*b).map(|(n, _)| *n).collect();
        match (has.is_empty(), not.is_empty()) {
            (_, true) => has.join(", "),
            (true, _) => format!("no {}", not.join(", ")),
            _ => format!("{}; no {}", has.join(", "), not.join(", ")),
        }
    }
}

/// The whole installation, as `verify` and the end of an install see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub version: DriverVersion,
    pub capabilities: Capabilities,
    /// Everything that is not as the installer left it, one line each.
    pub problems: Vec<String>,
    /// Vulkan ICD files present that name a library not installed.
    pub dangling_icds: Vec<String>,
}

/// Every file the record lists, by CRC; every symlink, by target; the key
/// libraries by soname (the name a workload's loader follows); the
/// installer's own log for errors it went on past. Each file is read with
/// its own deadline.
pub fn inspect(root: &RootFs) -> io::Result<Inspection> {
    let text = root.run(|c| c.read_head(INSTALLER_RECORD, MAX_RECORD))??;
    let text = text.ok_or_else(|| io::Error::other(format!("no {INSTALLER_RECORD}")))?;
    let record = Record::parse(&String::from_utf8_lossy(&text))
        .map_err(|e| io::Error::other(format!("{INSTALLER_RECORD}: {e}")))?;
    let mut problems: Vec<String> = record
        .missing_key_files()
        .into_iter()
        .map(|n| format!("{n} was not installed (the installer went on past a failed copy)"))
        .collect();
    let mut present = Vec::new();
    for (path, crc) in &record.files {
        let p = path.clone();
        match root.run(move |c| file_crc(c, &p))? {
            Ok(Some(actual)) if actual == *crc => present.push(path.clone()),
            Ok(Some(_)) => problems.push(format!("{path} changed since it was installed")),
            Ok(None) if record::is_vulkan_icd(path) && !record.has_graphics() => {}
            Ok(None) => problems.push(format!("{path} is missing")),
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    for (path, target) in &record.symlinks {
        let p = path.clone();
        match root.run(move |c| c.read_link(&p))? {
            Ok(Some(t)) if t == *target => {}
            Ok(Some(t)) => problems.push(format!("{path} points to {t}, not {target}")),
            Ok(None) => problems.push(format!("{path} is missing or not a symlink")),
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    let v = record.version.clone();
    for lib in ["libcuda.so", "libnvidia-ml.so"] {
        let name = format!("{lib}.{v}");
        if let Some(path) = record.file_named(&name).map(str::to_owned) {
            if let Some(problem) = root.run(move |c| loader_problem(c, &path))? {
                problems.push(problem);
            }
        }
    }
    let dangling_icds: Vec<String> = record
        .dangling_icds()
        .into_iter()
        .filter(|p| present.iter().any(|q| q == p))
        .map(str::to_owned)
        .collect();
    for icd in &dangling_icds {
        problems.push(format!(
            "{icd} names libGLX_nvidia.so.0, which this compute-only install does not have: Vulkan applications fail"
        ));
    }
    if let Some(errors) = root.run(installer_errors)?? {
        problems.push(errors);
    }
    let capabilities = Capabilities::of(&record, |p| present.iter().any(|q| q == p));
    Ok(Inspection {
        version: record.version,
        capabilities,
        problems,
        dangling_icds,
    })
}

/// Larger than any file of a driver (the largest, libcuda and the
/// compilers, are some hundred MB): a sparse file of the tenant's would
/// keep the reader busy long past its deadline.
const MAX_DRIVER_FILE: u64 = 4 << 30;

fn file_crc(c: &Confined, path: &str) -> io::Result<Option<u32>> {
    let Some((f, size)) = c.open_file(path)? else {
        return Ok(None);
    };
    if size > MAX_DRIVER_FILE {
        return Err(io::Error::other(format!(
            "{size} bytes, larger than any file of a driver"
        )));
    }
    let mut f = f.take(size);
    let mut crc = Crc::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
    }
    Ok(Some(crc.of_file(size)))
}

/// The library's soname (`libcuda.so.1`) must lead, in its folder, to the
/// library itself: that is the file a workload loads.
fn loader_problem(c: &Confined, path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/')?;
    let soname = match c.open_file(path) {
        Ok(Some((mut f, _))) => elf::soname(&mut f),
        _ => return None,
    };
    let Some(soname) = soname else {
        return Some(format!("{path} is not a shared library with a soname"));
    };
    match c.resolved_name(&format!("{dir}/{soname}")) {
        Ok(Some(found)) if found == name => None,
        Ok(Some(found)) => Some(format!(
            "{dir}/{soname} leads to {found}, not {name}: workloads load another library"
        )),
        _ => Some(format!(
            "{dir}/{soname} (the soname of {name}) is missing: workloads cannot load it"
        )),
    }
}

/// `ERROR:` lines of the installer's log: with --silent it goes on past
/// them and still exits 0.
fn installer_errors(c: &Confined) -> io::Result<Option<String>> {
    let Some(tail) = c.read_tail(INSTALLER_LOG, 64 * 1024)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&tail);
    let errors: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    Ok(errors.first().map(|first| {
        format!(
            "{INSTALLER_LOG}: {}{}",
            first.chars().take(300).collect::<String>(),
            and_more(errors.len() - 1)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::{confined, tempdir};

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

    fn record(extra: &str) -> String {
        format!(
            "1.0-5505414 (550.54.14)\nNVIDIA Accelerated Graphics Driver for Linux-x86_64\n\
             1: /usr/bin/nvidia-smi\n1\n1: {LIB}/libnvidia-ml.so.550.54.14\n2\n\
             1: {LIB}/libcuda.so.550.54.14\n3\n{extra}"
        )
    }

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
    fn capabilities_read_from_the_record() {
        let r = Record::parse(&record(&format!(
            "1: {LIB}/libnvidia-encode.so.550.54.14\n4\n1: {LIB}/libnvcuvid.so.550.54.14\n5\n1: /etc/vulkan/icd.d/nvidia_icd.json\n6\n"
        )))
        .unwrap();
        let caps = Capabilities::of(&r, |_| true);
        assert_eq!(
            caps.summary(),
            "CUDA, NVENC, NVDEC; no OpenCL, Vulkan, EGL, GL"
        );
        let none = Capabilities::of(&r, |_| false);
        assert_eq!(
            none.summary(),
            "no CUDA, NVENC, NVDEC, OpenCL, Vulkan, EGL, GL"
        );
    }
}
