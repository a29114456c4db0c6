//! Before the runfile: the distribution's NVIDIA driver packages go, and
//! only what conflicts with a runfile install. The CUDA toolkit from apt
//! (`cuda-toolkit-*`, `cuda-keyring`, `libcudnn*`, `python3-pycuda`, ...)
//! and the NVIDIA Container Toolkit stay. An earlier runfile install is left
//! to NVIDIA's installer, which removes it from its own record and backups.

use anyhow::{bail, Result};

use super::{apt, must, Job};
use crate::container::confined::Kind;
use crate::container::detect::ALTERNATE_INSTALL_MARKER;
use crate::container::dpkg::is_package_name;
use crate::container::ContainerCommand;
use crate::error::refused;

/// The distribution's driver, in Debian's, Ubuntu's and NVIDIA's CUDA
/// repository's names: the libraries and tools a runfile install replaces,
/// the glue that points the loader at them (alternatives, diversions,
/// `nvidia-installer-cleanup`'s marker that makes a silent runfile install
/// abort), and the metapackages that pull them in.
const DRIVER_PREFIXES: [&str; 30] = [
    "nvidia-driver",
    "nvidia-utils-",
    "nvidia-compute-utils-",
    "nvidia-kernel-",
    "nvidia-dkms-",
    "nvidia-headless-",
    "nvidia-open",
    "nvidia-legacy-",
    "nvidia-installer-cleanup",
    "nvidia-support",
    "nvidia-persistenced",
    "nvidia-settings",
    "nvidia-vulkan-",
    "nvidia-egl-",
    "nvidia-opencl-",
    "nvidia-vdpau-driver",
    "nvidia-firmware-",
    "nvidia-cuda-mps",
    "libnvidia-",
    "libcuda1",
    "libnvcuvid",
    "libnvoptix",
    "libgl1-nvidia",
    "libegl-nvidia",
    "libglx-nvidia",
    "libgles-nvidia",
    "glx-alternative-",
    "xserver-xorg-video-nvidia",
    "firmware-nvidia-",
    "cuda-drivers",
];

const DRIVER_NAMES: [&str; 6] = [
    "nvidia-smi",
    "nvidia-alternative",
    "nvidia-modprobe",
    "nvidia-xconfig",
    "glx-diversions",
    "update-glx",
];

/// Not the driver, though their names say NVIDIA: the Container Toolkit.
const KEEP_PREFIXES: [&str; 3] = ["libnvidia-container", "nvidia-container", "nvidia-docker"];

pub fn is_conflicting_package(name: &str) -> bool {
    if KEEP_PREFIXES.iter().any(|k| name.starts_with(k)) {
        return false;
    }
    DRIVER_NAMES.contains(&name)
        || DRIVER_PREFIXES.iter().any(|p| name.starts_with(p))
        || is_driver_metapackage(name)
}

/// `cuda`, `cuda-12-4`, `cuda-runtime-12-4`: NVIDIA's metapackages that
/// depend on `cuda-drivers` (the toolkit is `cuda-toolkit-12-4`, kept).
fn is_driver_metapackage(name: &str) -> bool {
    let versioned = |rest: &str| {
        !rest.is_empty()
            && rest
                .split('-')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    name == "cuda"
        || name.strip_prefix("cuda-").is_some_and(versioned)
        || name.strip_prefix("cuda-runtime-").is_some_and(versioned)
}

pub fn run(job: &Job) -> Result<()> {
    let summary = super::packages(job)?.unwrap_or_default();
    if summary.picked_total > summary.picked.len() {
        bail!(
            "the container's dpkg status lists {} NVIDIA driver packages (a driver has about 40): \
             not purging them; purge the driver's packages yourself, or set \"cleanup\": false",
            summary.picked_total
        );
    }
    let purge = summary.picked;
    if purge.is_empty() {
        log::info!("no NVIDIA driver packages to purge");
    } else {
        refuse_collateral(job, &purge)?;
        log::info!("purging {}", purge.join(" "));
        let mut argv = vec!["purge", "-y", "--allow-change-held-packages"];
        argv.extend(purge.iter().map(String::as_str));
        must(job, apt(job, &argv)?)?;
    }
    remove_remnants(job)
}

/// apt removes whatever depends on a purged package: it must not take a
/// package that is kept (a CUDA toolkit that depends on Debian's libcuda1).
fn refuse_collateral(job: &Job, purge: &[String]) -> Result<()> {
    let mut argv = vec!["-s", "purge"];
    argv.extend(purge.iter().map(String::as_str));
    let out = must(job, apt(job, &argv)?)?;
    let text = out.stdout_text();
    let kept: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match words.next()? {
                "Purg" | "Remv" => words.next(),
                _ => None,
            }
        })
        .filter(|n| is_package_name(n) && !is_conflicting_package(n))
        .collect();
    if !kept.is_empty() {
        return Err(refused(format!(
            "purging the distribution's driver ({}) would also remove {}, which depend on it and are kept; \
             replace them with packages that do not depend on a driver package (NVIDIA's cuda-toolkit-*), \
             or purge the driver yourself, then start the container again",
            some_of(purge),
            some_of(&kept)
        )));
    }
    Ok(())
}

/// The first names of a list, and how many more: a line stays a line.
fn some_of<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 10;
    let shown: Vec<&str> = names.iter().take(SHOWN).map(AsRef::as_ref).collect();
    match names.len().saturating_sub(SHOWN) {
        0 => shown.join(" "),
        more => format!("{} and {more} more", shown.join(" ")),
    }
}

/// What the installer trips on and no package owns any more: the marker
/// that makes a silent install abort, and a `/var/lib/nvidia` that is not a
/// folder (a symlink would have the installer write through it). A folder
/// with an earlier install's record is the installer's to clean up.
fn remove_remnants(job: &Job) -> Result<()> {
    let (marker, folder) = job.root.read(|c| {
        Ok((
            c.kind(ALTERNATE_INSTALL_MARKER)?,
            c.kind("/var/lib/nvidia")?,
        ))
    })?;
    let mut remnants = Vec::new();
    if marker != Kind::Missing {
        remnants.push(ALTERNATE_INSTALL_MARKER);
    }
    if !matches!(folder, Kind::Missing | Kind::Dir) {
        remnants.push("/var/lib/nvidia");
    }
    if remnants.is_empty() {
        return Ok(());
    }
    log::info!("removing {}", remnants.join(" "));
    let mut argv = vec!["rm", "-rf", "--"];
    argv.extend(remnants);
    must(job, ContainerCommand::new(&argv, job.quick()?))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_driver_conflicts() {
        for p in [
            "nvidia-driver",
            "nvidia-driver-libs",
            "nvidia-driver-535",
            "nvidia-utils-535",
            "libnvidia-ml1",
            "libnvidia-compute-535",
            "nvidia-smi",
            "libcuda1",
            "libcuda1-i386",
            "xserver-xorg-video-nvidia",
            "nvidia-alternative",
            "nvidia-installer-cleanup",
            "nvidia-legacy-check",
            "glx-alternative-nvidia",
            "glx-alternative-mesa",
            "glx-diversions",
            "update-glx",
            "cuda-drivers",
            "cuda-drivers-535",
            "cuda",
            "cuda-12-4",
            "cuda-runtime-12-4",
            "libnvcuvid1",
            "nvidia-vulkan-icd",
        ] {
            assert!(is_conflicting_package(p), "{p}");
        }
        for p in [
            "nvidia-container-toolkit",
            "libnvidia-container1",
            "libnvidia-container-tools",
            "nvidia-docker2",
            "cuda-toolkit-12-4",
            "cuda-keyring",
            "cuda-compiler-12-4",
            "cuda-libraries-12-4",
            "libcudnn9-cuda-12",
            "python3-pycuda",
            "nvidia-cuda-toolkit",
            "nvidia-cuda-dev",
            "bash",
            "libc6",
        ] {
            assert!(!is_conflicting_package(p), "{p}");
        }
    }
}
