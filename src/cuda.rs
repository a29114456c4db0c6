//! Which host driver a CUDA toolkit runs on, decided from its runfile's name
//! before anything is downloaded.
//!
//! NVIDIA's CUDA compatibility documentation ("Minor Version
//! Compatibility", table "CUDA Toolkit 11.x, 12.x, and 13.x Driver Version
//! Ranges"): from CUDA 11 on, a toolkit runs on any driver of at least its
//! major release's minimum: 13.x needs 580, 12.x 525, 11.x 450 (and the
//! note under that table: 450.80.02, the driver with which the whole 11.x
//! family is minor-version compatible). Before CUDA 11 there was no such
//! compatibility: a toolkit needed at least the driver it shipped with,
//! which its runfile's name gives (`cuda_10.2.89_440.33.01_linux.run`).
//! A toolkit too new for the driver installs fine and then fails every
//! CUDA program ("the provided PTX was compiled with an unsupported
//! toolchain", `cudaErrorInsufficientDriver`).

use crate::version::DriverVersion;

/// The minimum driver of each CUDA major release that has minor-version
/// compatibility, as NVIDIA's table gives it.
const MINIMUM: [(u32, [u32; 3]); 3] = [(13, [580, 0, 0]), (12, [525, 0, 0]), (11, [450, 80, 2])];

/// A CUDA toolkit runfile, as its name describes it:
/// `cuda_<toolkit version>_<bundled driver>_linux.run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolkit {
    /// `12.4.1`.
    pub version: String,
    pub major: u32,
    /// The driver the runfile carries (and never installs: `--toolkit`).
    pub bundled: DriverVersion,
}

impl Toolkit {
    /// From the runfile's name; None when the name does not say.
    pub fn from_runfile_name(name: &str) -> Option<Toolkit> {
        let rest = name.strip_prefix("cuda_")?.strip_suffix(".run")?;
        let mut parts = rest.split('_');
        let (version, bundled, platform) = (parts.next()?, parts.next()?, parts.next()?);
        if platform != "linux" || parts.next().is_some() {
            return None;
        }
        let numbers: Vec<&str> = version.split('.').collect();
        let numeric = (2..=3).contains(&numbers.len())
            && numbers
                .iter()
                .all(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()));
        if !numeric {
            return None;
        }
        Some(Toolkit {
            version: version.to_string(),
            major: numbers[0].parse().ok()?,
            bundled: bundled.parse().ok()?,
        })
    }

    /// The oldest driver this toolkit runs on, shown as NVIDIA's table
    /// shows it (`580`, `450.80.02`); None for a major release newer than
    /// the table.
    fn minimum(&self) -> Option<([u32; 3], String)> {
        if self.major < 11 {
            return Some((self.bundled.numbers(), self.bundled.to_string()));
        }
        MINIMUM
            .iter()
            .find(|(major, _)| *major == self.major)
            .map(|(_, n)| {
                let shown = match n {
                    [major, 0, 0] => major.to_string(),
                    [a, b, c] => format!("{a}.{b}.{c:02}"),
                };
                (*n, shown)
            })
    }
}

/// Whether a CUDA toolkit runs on the host's driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Runs(Toolkit),
    /// It needs a newer driver than the host's: not installed.
    NeedsNewer {
        toolkit: Toolkit,
        minimum: String,
    },
    /// What it needs cannot be told (its name does not say, or its major
    /// release is newer than NVIDIA's table here): installed anyway, and
    /// said.
    Unknown(String),
}

/// The toolkit in the runfile named `name` against the host's driver.
pub fn fit(name: &str, host: &DriverVersion) -> Fit {
    let Some(toolkit) = Toolkit::from_runfile_name(name) else {
        return Fit::Unknown(format!(
            "the name of {} does not say which CUDA version it is (NVIDIA names them \
             cuda_<version>_<driver>_linux.run), so the driver it needs is not known",
            crate::logging::bounded(name, 200)
        ));
    };
    match toolkit.minimum() {
        None => Fit::Unknown(format!(
            "CUDA {} is newer than the releases whose minimum driver this tool knows (11 to 13), \
             so the driver it needs is not known",
            toolkit.major
        )),
        Some((minimum, _)) if host.numbers() >= minimum => Fit::Runs(toolkit),
        Some((_, shown)) => Fit::NeedsNewer {
            toolkit,
            minimum: shown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DriverVersion {
        s.parse().unwrap()
    }

    #[test]
    fn toolkits_from_nvidias_names() {
        let t = Toolkit::from_runfile_name("cuda_12.4.1_550.54.15_linux.run").unwrap();
        assert_eq!((t.version.as_str(), t.major), ("12.4.1", 12));
        assert_eq!(t.bundled, v("550.54.15"));
        for bad in [
            "cuda.run",
            "cuda_12.4.1_linux.run",
            "cuda_12.4.1_550.54.15_linux_sbsa.run",
            "cuda_twelve_550.54.15_linux.run",
            "cuda_12.4.1_550.54.15_linux.sh",
            "toolkit.run",
        ] {
            assert_eq!(Toolkit::from_runfile_name(bad), None, "{bad}");
        }
    }

    /// NVIDIA's table: 13.x needs 580, 12.x 525, 11.x 450.80.02; before
    /// 11, the driver the toolkit shipped with.
    #[test]
    fn the_minimum_driver_of_each_major_release() {
        let cases = [
            ("cuda_13.0.0_580.65.06_linux.run", "570.124.04", Some("580")),
            ("cuda_13.0.0_580.65.06_linux.run", "580.65.06", None),
            ("cuda_13.1.0_590.44.01_linux.run", "580.95.05", None),
            ("cuda_12.8.0_570.86.10_linux.run", "550.54.14", None),
            ("cuda_12.0.0_525.60.13_linux.run", "470.256.02", Some("525")),
            ("cuda_12.0.0_525.60.13_linux.run", "525.53", None),
            ("cuda_11.8.0_520.61.05_linux.run", "470.256.02", None),
            (
                "cuda_11.8.0_520.61.05_linux.run",
                "450.51.06",
                Some("450.80.02"),
            ),
            ("cuda_10.2.89_440.33.01_linux.run", "470.256.02", None),
            (
                "cuda_10.2.89_440.33.01_linux.run",
                "440.31",
                Some("440.33.01"),
            ),
        ];
        for (name, host, needs) in cases {
            match (fit(name, &v(host)), needs) {
                (Fit::Runs(_), None) => {}
                (Fit::NeedsNewer { minimum, .. }, Some(n)) => assert_eq!(minimum, n, "{name}"),
                (other, _) => panic!("{name} on {host}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_toolkit_is_said_to_be_unknown() {
        let host = v("580.95.05");
        assert!(
            matches!(fit("toolkit.run", &host), Fit::Unknown(why) if why.contains("does not say which CUDA version"))
        );
        assert!(
            matches!(fit("cuda_14.0.0_600.10.01_linux.run", &host), Fit::Unknown(why) if why.contains("CUDA 14 is newer"))
        );
    }
}
