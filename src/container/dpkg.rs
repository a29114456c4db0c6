//! The container's dpkg database (`/var/lib/dpkg/status`), read from the
//! host side: which packages are installed, without running the tenant's
//! `dpkg-query`. Every name is checked against Debian's rules before it is
//! used in a command or shown anywhere.

pub const STATUS: &str = "/var/lib/dpkg/status";

/// A large desktop system's status file is a few MiB.
pub const MAX_STATUS: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// `installed`, `config-files`, `half-installed`, ...
    pub state: String,
}

impl Package {
    /// Installed, or removed with its configuration files left (`rc`),
    /// which a purge also clears.
    pub fn present(&self) -> bool {
        self.state != "not-installed"
    }
}

/// Debian Policy 5.6.1: lower-case letters, digits, `+`, `-`, `.`; at least
/// two characters; starting with a letter or digit.
pub fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// Stanzas of `Package:` and `Status: want flag state`; a stanza whose name
/// breaks Debian's rules is dropped (and counted), never passed on.
pub fn parse_status(text: &str) -> (Vec<Package>, usize) {
    let mut packages = Vec::new();
    let mut rejected = 0;
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let (Some(name), Some(status)) = (field("Package"), field("Status")) else {
            continue;
        };
        if !is_package_name(name) {
            rejected += 1;
            continue;
        }
        let state = status.split_whitespace().nth(2).unwrap_or("unknown");
        packages.push(Package {
            name: name.to_string(),
            state: state.to_string(),
        });
    }
    (packages, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debian_names() {
        for ok in [
            "kmod",
            "libnvidia-ml1",
            "g++",
            "libstdc++6",
            "python3.11",
            "0ad",
        ] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "Kmod",
            "-rf",
            "nvidia;rm",
            "nvidia\x1b[2J",
            "pkg:amd64",
            "a b",
            "über",
        ] {
            assert!(!is_package_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn status_file() {
        let text = "Package: kmod\nStatus: install ok installed\nVersion: 30\n\n\
                    Package: libcuda1\nStatus: deinstall ok config-files\n\n\
                    Package: gone\nStatus: purge ok not-installed\n\n\
                    Package: EVIL\x1b]0;x\x07\nStatus: install ok installed\n\n\
                    Description: no package line\n";
        let (packages, rejected) = parse_status(text);
        assert_eq!(rejected, 1);
        let present: Vec<&str> = packages
            .iter()
            .filter(|p| p.present())
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(present, ["kmod", "libcuda1"]);
    }

    proptest! {
        #[test]
        fn whatever_is_accepted_is_a_debian_name(text in "(\\PC{0,30}\n){0,20}") {
            for p in parse_status(&text).0 {
                prop_assert!(is_package_name(&p.name));
            }
        }
    }
}
