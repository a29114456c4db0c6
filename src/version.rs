//! NVIDIA driver versions, parsed from every place that reports one.
//!
//! Versions are compared as parsed numbers, exactly: `550.54` is not
//! `550.54.14`, and nothing is ever matched as a substring.

use std::fmt;
use std::str::FromStr;

/// A driver version of two or three numeric parts (`515.76`, `550.54.14`).
/// The parts keep their textual width, since NVIDIA's file names do
/// (`535.104.05`): `Display` gives back exactly what was parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DriverVersion {
    parts: Vec<String>,
}

const MAX_PART_LEN: usize = 6;

impl FromStr for DriverVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('.').collect();
        let valid = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty() && p.len() <= MAX_PART_LEN && p.bytes().all(|b| b.is_ascii_digit())
            });
        if !valid {
            return Err(format!(
                "'{}' is not an NVIDIA driver version (two or three numeric parts, e.g. 550.54.14)",
                s.chars().take(64).collect::<String>().escape_debug()
            ));
        }
        Ok(DriverVersion {
            parts: parts.into_iter().map(str::to_owned).collect(),
        })
    }
}

impl DriverVersion {
    /// The branch: 550 for 550.54.14.
    pub fn major(&self) -> u32 {
        self.parts[0].parse().unwrap_or(0)
    }

    /// The parts as numbers, a missing third one as 0: `535.104.05` is
    /// `[535, 104, 5]`. For "at least" questions (which installer options
    /// a release knows, which CUDA toolkit a driver runs), never for
    /// equality, which stays exact.
    pub fn numbers(&self) -> [u32; 3] {
        let mut n = [0; 3];
        for (slot, part) in n.iter_mut().zip(&self.parts) {
            *slot = part.parse().unwrap_or(0);
        }
        n
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

impl serde::Serialize for DriverVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DriverVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `/sys/module/nvidia/version`: the version alone, with a newline.
pub fn from_sys_module(content: &str) -> Result<DriverVersion, String> {
    content.trim().parse()
}

/// First line of `/proc/driver/nvidia/version`, proprietary or open module:
/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 ...`
/// `NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  590.48.01  Release Build ...`
pub fn from_proc_driver(content: &str) -> Result<DriverVersion, String> {
    let first = content.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("NVRM version:")
        .ok_or_else(|| "first line does not start with 'NVRM version:'".to_string())?;
    let (_, after_module) = rest
        .split_once("Kernel Module")
        .ok_or_else(|| "no 'Kernel Module' in the NVRM line".to_string())?;
    after_module
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .ok_or_else(|| format!("no version in '{}'", first.trim()))
}

/// Output of `nvidia-smi --query-gpu=driver_version --format=csv,noheader`:
/// one line per GPU, which must all agree.
pub fn from_nvidia_smi(output: &str) -> Result<DriverVersion, String> {
    let mut found: Option<DriverVersion> = None;
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: DriverVersion = line.parse()?;
        match &found {
            Some(prev) if *prev != v => {
                return Err(format!(
                    "GPUs report different driver versions: {prev} and {v}"
                ))
            }
            _ => found = Some(v),
        }
    }
    found.ok_or_else(|| "nvidia-smi printed no driver version".to_string())
}

/// First line of the installer's record `/var/lib/nvidia/log`. nvidia-installer
/// writes it as `1.0-5505414 (550.54.14)` (a format older installers can read);
/// a bare version is accepted too.
pub fn from_installer_record(content: &str) -> Result<DriverVersion, String> {
    let first = content.lines().next().unwrap_or_default().trim();
    if let Some(inner) = first
        .strip_prefix("1.0-")
        .and_then(|rest| rest.split_once(" ("))
        .and_then(|(_, v)| v.strip_suffix(')'))
    {
        return inner.parse();
    }
    first.parse()
}

/// The variants NVIDIA publishes of one driver's runfile, by the suffix of
/// its name: the whole driver, the same without the 32-bit compatibility
/// libraries (`-no-compat32.run`, which nvidia-installer's
/// `--install-compat32-libs` help names), and the GRID guest driver
/// (`-grid.run`, from NVIDIA's licensing portal only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunfileVariant {
    Whole,
    NoCompat32,
    Grid,
}

const VARIANTS: [(&str, RunfileVariant); 2] = [
    ("-no-compat32", RunfileVariant::NoCompat32),
    ("-grid", RunfileVariant::Grid),
];

/// `NVIDIA-Linux-x86_64-550.54.14.run`, `...-550.54.14-no-compat32.run`
/// or `...-550.54.14-grid.run`: the version and the variant.
pub fn from_runfile_name(name: &str) -> Result<(DriverVersion, RunfileVariant), String> {
    let stem = name
        .strip_prefix("NVIDIA-Linux-x86_64-")
        .and_then(|rest| rest.strip_suffix(".run"))
        .ok_or_else(|| {
            format!(
                "'{}' is not named NVIDIA-Linux-x86_64-<version>[-no-compat32|-grid].run",
                name.chars().take(120).collect::<String>().escape_debug()
            )
        })?;
    let (version, variant) = VARIANTS
        .iter()
        .find_map(|(suffix, variant)| Some((stem.strip_suffix(suffix)?, *variant)))
        .unwrap_or((stem, RunfileVariant::Whole));
    Ok((version.parse()?, variant))
}

/// `libnvidia-ml.so.550.54.14` → the version; other names → None.
pub fn from_nvml_library_name(name: &str) -> Option<DriverVersion> {
    name.strip_prefix("libnvidia-ml.so.")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> DriverVersion {
        s.parse().unwrap()
    }

    #[test]
    fn exact_comparison_not_prefix() {
        assert_ne!(v("550.54"), v("550.54.14"));
        assert_ne!(v("550.54.14"), v("550.54.1"));
        assert_eq!(v("535.104.05"), v("535.104.05"));
        assert_eq!(v("535.104.05").to_string(), "535.104.05");
    }

    #[test]
    fn rejects_non_versions() {
        for bad in [
            "",
            "550",
            "550.54.14.1",
            "550..14",
            "v550.54",
            "550.54.14 ",
            "550.5a",
            "1234567.1",
        ] {
            assert!(bad.parse::<DriverVersion>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sys_module_file() {
        assert_eq!(from_sys_module("550.54.14\n").unwrap(), v("550.54.14"));
        assert!(from_sys_module("").is_err());
    }

    #[test]
    fn proc_proprietary_module() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(from_proc_driver(text).unwrap(), v("550.54.14"));
    }

    #[test]
    fn proc_open_module() {
        let text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  590.48.01  Release Build  (dvs-builder@U16-I3-B03-4-3)  Mon Dec  1 00:00:00 UTC 2025\n";
        assert_eq!(from_proc_driver(text).unwrap(), v("590.48.01"));
    }

    #[test]
    fn proc_two_part_version() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  515.76  Mon Sep 19 2022\n";
        assert_eq!(from_proc_driver(text).unwrap(), v("515.76"));
    }

    #[test]
    fn proc_garbage() {
        assert!(from_proc_driver("").is_err());
        assert!(from_proc_driver("NVRM version: something else\n").is_err());
    }

    #[test]
    fn smi_output() {
        assert_eq!(
            from_nvidia_smi("550.54.14\n550.54.14\n").unwrap(),
            v("550.54.14")
        );
        assert!(from_nvidia_smi("550.54.14\n535.104.05\n").is_err());
        assert!(from_nvidia_smi("").is_err());
        assert!(
            from_nvidia_smi("Failed to initialize NVML: Driver/library version mismatch\n")
                .is_err()
        );
    }

    #[test]
    fn installer_record() {
        assert_eq!(
            from_installer_record("1.0-5505414 (550.54.14)\nNVIDIA Accelerated Graphics Driver for Linux-x86_64 (550.54.14)\n").unwrap(),
            v("550.54.14")
        );
        assert_eq!(
            from_installer_record("550.54.14\n").unwrap(),
            v("550.54.14")
        );
        assert!(from_installer_record("1.0-5505414 (550.54.14\n").is_err());
        assert!(from_installer_record("\0\0junk").is_err());
    }

    #[test]
    fn runfile_names() {
        assert_eq!(
            from_runfile_name("NVIDIA-Linux-x86_64-550.54.14.run").unwrap(),
            (v("550.54.14"), RunfileVariant::Whole)
        );
        assert_eq!(
            from_runfile_name("NVIDIA-Linux-x86_64-515.76.run").unwrap(),
            (v("515.76"), RunfileVariant::Whole)
        );
        assert!(from_runfile_name("NVIDIA-Linux-aarch64-550.54.14.run").is_err());
        assert!(from_runfile_name("NVIDIA-Linux-x86_64-550.54.14-vgpu-kvm.run").is_err());
        assert!(from_runfile_name("NVIDIA-Linux-x86_64-550.54.14-no-compat32-grid.run").is_err());
    }

    /// NVIDIA's own variant names: the driver without its 32-bit libraries,
    /// and the GRID guest driver (a `runfile_url` with `file://` for it).
    #[test]
    fn runfile_variants() {
        assert_eq!(
            from_runfile_name("NVIDIA-Linux-x86_64-550.54.14-no-compat32.run").unwrap(),
            (v("550.54.14"), RunfileVariant::NoCompat32)
        );
        assert_eq!(
            from_runfile_name("NVIDIA-Linux-x86_64-535.183.06-grid.run").unwrap(),
            (v("535.183.06"), RunfileVariant::Grid)
        );
    }

    #[test]
    fn numbers_for_at_least_questions() {
        assert_eq!(v("535.104.05").numbers(), [535, 104, 5]);
        assert_eq!(v("515.76").numbers(), [515, 76, 0]);
        assert!(v("450.80.02").numbers() > v("450.51.06").numbers());
    }

    #[test]
    fn nvml_names() {
        assert_eq!(
            from_nvml_library_name("libnvidia-ml.so.550.54.14"),
            Some(v("550.54.14"))
        );
        assert_eq!(from_nvml_library_name("libnvidia-ml.so.1"), None);
        assert_eq!(
            from_nvml_library_name("libnvidia-ml.so.550.54.14/../.."),
            None
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in "\\PC{0,24}") {
            if let Ok(parsed) = s.parse::<DriverVersion>() {
                prop_assert_eq!(parsed.to_string(), s);
            }
        }

        #[test]
        fn valid_versions_round_trip(a in 0u32..1000, b in 0u32..1000, c in proptest::option::of(0u32..100)) {
            let text = match c { Some(c) => format!("{a}.{b}.{c:02}"), None => format!("{a}.{b}") };
            let parsed: DriverVersion = text.parse().unwrap();
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn readers_never_panic(s in proptest::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&s);
            let _ = from_proc_driver(&text);
            let _ = from_installer_record(&text);
            let _ = from_nvidia_smi(&text);
            let _ = from_runfile_name(&text);
        }
    }
}
