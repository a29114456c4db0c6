//! The kernels installed on this node, and the NVIDIA module the next boot
//! loads with them.
//!
//! Which kernel boots next is Proxmox's choice, as proxmox-kernel-helper's
//! `proxmox-boot/functions` makes it: the one pinned for the next boot only
//! (`next-boot-pin`), else the pinned one (`proxmox-boot-pin`), both in
//! `/etc/kernel` (`proxmox-boot-tool kernel pin [--next-boot]`), else the
//! newest by version (`sort --version-sort` of Proxmox's names,
//! `6.8.12-4-pve`): grub's and systemd-boot's default entry. A kernel counts
//! as installed while its package's `kernel/` folder is there; a removed
//! one can leave DKMS's `updates/` behind.
//!
//! Its NVIDIA module is the one `modinfo -k <kernel> nvidia` finds through
//! the kernel's `modules.dep`, as modprobe resolves it at boot: a DKMS
//! build (`updates/dkms/nvidia.ko`) before a runfile's `kernel/` one.

use std::cmp::Ordering;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::Paths;
use crate::process::{self, Limits};
use crate::version::DriverVersion;

/// What the next boot loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextBoot {
    /// No installed kernel under `paths.modules`.
    NoKernel,
    /// The kernel that boots next has no NVIDIA module (DKMS built none
    /// for it, or the driver was installed for another kernel only).
    NoModule { kernel: String },
    Module {
        kernel: String,
        version: DriverVersion,
    },
}

impl NextBoot {
    pub fn version(&self) -> Option<&DriverVersion> {
        match self {
            NextBoot::Module { version, .. } => Some(version),
            _ => None,
        }
    }
}

/// The kernel the next boot loads, and its NVIDIA module's version.
pub fn next_boot(paths: &Paths) -> Result<NextBoot> {
    let kernels = installed(&paths.modules)?;
    let pin = |name: &str| read_pin(&paths.kernel_pins.join(name));
    let (next, pinned) = (pin("next-boot-pin"), pin("proxmox-boot-pin"));
    let Some(kernel) = choose(&kernels, next.as_deref(), pinned.as_deref()) else {
        return Ok(NextBoot::NoKernel);
    };
    let kernel = kernel.to_string();
    Ok(match module_version(paths, &kernel)? {
        Some(version) => NextBoot::Module { kernel, version },
        None => NextBoot::NoModule { kernel },
    })
}

/// The kernel that boots next among `installed`: the next-boot pin, else
/// the pin, else the newest; a pin naming a kernel that is not installed
/// counts as none (the boot loader falls back to its default entry).
pub fn choose<'a>(
    installed: &'a [String],
    next_pin: Option<&str>,
    pin: Option<&str>,
) -> Option<&'a str> {
    let find = |name: Option<&str>| {
        let name = name?;
        installed.iter().find(|k| *k == name).map(String::as_str)
    };
    find(next_pin).or_else(|| find(pin)).or_else(|| {
        installed
            .iter()
            .max_by(|a, b| version_cmp(a, b))
            .map(String::as_str)
    })
}

/// `sort --version-sort` for kernel names: runs of digits compare as
/// numbers, everything else byte by byte (`6.8.12-10-pve` after
/// `6.8.12-9-pve`, `6.11.0-1-pve` after both).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                let (na, nb) = (trim_zeros(na), trim_zeros(nb));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => (a, b) = (&a[1..], &b[1..]),
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b'0').count();
    &s[n..]
}

/// At most this many entries of `paths.modules` are looked at.
const MAX_KERNELS: usize = 256;

/// The installed kernels: folders of `modules` with a well-formed name and
/// the `kernel/` folder their package ships.
fn installed(modules: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(modules) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", modules.display())),
    };
    Ok(entries
        .flatten()
        .take(MAX_KERNELS)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_kernel_name(name) && modules.join(name).join("kernel").is_dir())
        .collect())
}

/// A kernel release as `uname -r` prints one (`6.8.12-4-pve`,
/// `6.1.0-28-amd64`): it is passed to `modinfo -k`, so never an option.
pub fn is_kernel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
}

/// The kernel a pin file names (its first line), if any.
fn read_pin(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let name = text.lines().next()?.trim();
    is_kernel_name(name).then(|| name.to_string())
}

/// The version of the NVIDIA module that `kernel` loads; None when it has
/// none.
pub fn module_version(paths: &Paths, kernel: &str) -> Result<Option<DriverVersion>> {
    if !is_kernel_name(kernel) {
        bail!("'{}' is not a kernel release", kernel.escape_debug());
    }
    let root = paths
        .modules_root()
        .and_then(Path::to_str)
        .ok_or_else(|| anyhow!("paths.modules does not end in lib/modules"))?;
    let modinfo = process::find_program("modinfo").ok_or_else(|| {
        anyhow!("modinfo not found (package kmod): cannot tell which NVIDIA module kernel {kernel} loads")
    })?;
    let out = process::run(
        &modinfo,
        &["-b", root, "-k", kernel, "-F", "version", "nvidia"],
        Limits::quick(Duration::from_secs(10)),
    )?;
    if !out.success() {
        if String::from_utf8_lossy(&out.stderr).contains("not found") {
            return Ok(None);
        }
        bail!(
            "modinfo -k {kernel} nvidia: {}: {}",
            out.describe_status(),
            out.diagnostic()
        );
    }
    let text = out.stdout_text();
    let first = text.lines().next().unwrap_or_default().trim();
    first
        .parse()
        .map(Some)
        .map_err(|e| anyhow!("modinfo -k {kernel} nvidia: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_newest_kernel_by_version_unless_pinned() {
        let k = names(&[
            "6.8.12-9-pve",
            "6.8.12-10-pve",
            "6.5.13-6-pve",
            "6.8.4-2-pve",
        ]);
        assert_eq!(choose(&k, None, None), Some("6.8.12-10-pve"));
        assert_eq!(choose(&k, None, Some("6.5.13-6-pve")), Some("6.5.13-6-pve"));
        assert_eq!(
            choose(&k, Some("6.8.4-2-pve"), Some("6.5.13-6-pve")),
            Some("6.8.4-2-pve"),
            "the next-boot pin wins"
        );
        assert_eq!(
            choose(&k, Some("6.2.16-20-pve"), None),
            Some("6.8.12-10-pve"),
            "a pin of a removed kernel counts as none"
        );
        assert_eq!(choose(&[], None, None), None);
        let k = names(&["6.8.12-4-pve", "6.11.0-1-pve", "6.14.8-2-pve"]);
        assert_eq!(choose(&k, None, None), Some("6.14.8-2-pve"));
    }

    #[test]
    fn version_sort_as_gnu_sort_orders_kernels() {
        let mut k = vec![
            "6.8.12-10-pve",
            "6.1.0-28-amd64",
            "6.8.12-9-pve",
            "6.11.0-1-pve",
            "5.15.158-2-pve",
        ];
        k.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            k,
            [
                "5.15.158-2-pve",
                "6.1.0-28-amd64",
                "6.8.12-9-pve",
                "6.8.12-10-pve",
                "6.11.0-1-pve"
            ]
        );
    }

    #[test]
    fn kernel_names_are_never_options() {
        for good in ["6.8.12-4-pve", "6.1.0-28-amd64", "5.10.0+1"] {
            assert!(is_kernel_name(good), "{good}");
        }
        for bad in ["-k", "--help", "6.8 x", "", "../6.8", "6.8/x", "pve-6.8"] {
            assert!(!is_kernel_name(bad), "{bad}");
        }
    }
}
