//! Which NVIDIA user-space driver a container has, read from its files
//! without starting any program in it.

use super::rootfs::{Kind, RootFs};
use crate::version::{self, DriverVersion};

/// nvidia-installer's record of what it installed (first line: the version).
pub const INSTALLER_RECORD: &str = "/var/lib/nvidia/log";
pub const INSTALLER_LOG: &str = "/var/log/nvidia-installer.log";
/// Left by distribution packages; a silent runfile install refuses to run.
pub const ALTERNATE_INSTALL_MARKER: &str = "/usr/lib/nvidia/alternate-install-present";
/// Where the runfile puts libraries on Debian/Ubuntu, then other layouts.
pub const LIBRARY_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"];

/// Only the first line of the record is needed; a huge file is not read.
const RECORD_HEAD: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstalledDriver {
    /// No installer record and no NVML library.
    Absent,
    /// The record names this version and its NVML library is in place.
    Installed(DriverVersion),
    /// Something is there but not a consistent runfile installation.
    Broken(String),
}

impl InstalledDriver {
    pub fn version(&self) -> Option<&DriverVersion> {
        match self {
            InstalledDriver::Installed(v) => Some(v),
            _ => None,
        }
    }
}

pub fn detect(root: &RootFs) -> InstalledDriver {
    let record = match root.read_head(INSTALLER_RECORD, RECORD_HEAD) {
        Ok(Some(bytes)) => bytes,
        Ok(None) if root.kind("/var/lib/nvidia") == Kind::Symlink => {
            return InstalledDriver::Broken("/var/lib/nvidia is a symlink".into())
        }
        Ok(None) => {
            return match nvml_library_versions(root).first() {
                Some(v) => InstalledDriver::Broken(format!(
                "libnvidia-ml.so.{v} present without an installer record (distribution packages?)"
            )),
                None => InstalledDriver::Absent,
            }
        }
        Err(e) => return InstalledDriver::Broken(format!("{INSTALLER_RECORD}: {e}")),
    };
    let text = String::from_utf8_lossy(&record);
    let version = match version::from_installer_record(&text) {
        Ok(v) => v,
        Err(e) => return InstalledDriver::Broken(format!("{INSTALLER_RECORD}: {e}")),
    };
    let library = format!("libnvidia-ml.so.{version}");
    let library_present = LIBRARY_DIRS
        .iter()
        .any(|dir| root.kind(&format!("{dir}/{library}")) == Kind::File);
    if !library_present {
        return InstalledDriver::Broken(format!(
            "installer record says {version} but {library} is missing"
        ));
    }
    if root.kind("/usr/bin/nvidia-smi") != Kind::File {
        return InstalledDriver::Broken(format!(
            "installer record says {version} but /usr/bin/nvidia-smi is missing"
        ));
    }
    InstalledDriver::Installed(version)
}

/// Versions of `libnvidia-ml.so.<version>` libraries found by name, checking
/// only the versions a runfile could have left (`libnvidia-ml.so.1` points
/// at one of them).
fn nvml_library_versions(root: &RootFs) -> Vec<DriverVersion> {
    LIBRARY_DIRS
        .iter()
        .filter_map(|dir| {
            let link = root.read_link(&format!("{dir}/libnvidia-ml.so.1"))?;
            version::from_nvml_library_name(link.rsplit('/').next()?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(tag: &str, files: &[(&str, &str)]) -> (std::path::PathBuf, RootFs) {
        let d = std::env::temp_dir().join(format!("pnh-driver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (path, content) in files {
            let p = d.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let fs = RootFs::open(&d).unwrap();
        (d, fs)
    }

    const RECORD: &str = "1.0-5505414 (550.54.14)\nNVIDIA Accelerated Graphics Driver for Linux-x86_64 (550.54.14)\n";

    #[test]
    fn consistent_install() {
        let (d, fs) = root_with(
            "ok",
            &[
                (INSTALLER_RECORD, RECORD),
                ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14", ""),
                ("/usr/bin/nvidia-smi", ""),
            ],
        );
        assert_eq!(
            detect(&fs),
            InstalledDriver::Installed("550.54.14".parse().unwrap())
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn empty_container() {
        let (d, fs) = root_with("empty", &[]);
        assert_eq!(detect(&fs), InstalledDriver::Absent);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn record_without_library_is_broken() {
        let (d, fs) = root_with(
            "nolib",
            &[(INSTALLER_RECORD, RECORD), ("/usr/bin/nvidia-smi", "")],
        );
        assert!(
            matches!(detect(&fs), InstalledDriver::Broken(m) if m.contains("libnvidia-ml.so.550.54.14"))
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn garbled_record_is_broken() {
        let (d, fs) = root_with("garbled", &[(INSTALLER_RECORD, "\u{0}\u{1}\u{2}")]);
        assert!(matches!(detect(&fs), InstalledDriver::Broken(_)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn distribution_library_without_record() {
        let (d, fs) = root_with(
            "distro",
            &[("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.183.01", "")],
        );
        std::os::unix::fs::symlink(
            "libnvidia-ml.so.535.183.01",
            d.join("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
        )
        .unwrap();
        assert!(matches!(detect(&fs), InstalledDriver::Broken(m) if m.contains("535.183.01")));
        std::fs::remove_dir_all(d).unwrap();
    }
}
