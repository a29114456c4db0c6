//! The Proxmox guest id, validated once at the edge so that nothing downstream
//! can turn an argument into a path component it did not expect.

use std::fmt;
use std::str::FromStr;

/// A Proxmox VE guest id: an integer 100..=999999999 written without sign,
/// spaces or leading zeros (Proxmox's own `pve-vmid` format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vmid(u32);

impl Vmid {
    pub const MIN: u32 = 100;
    pub const MAX: u32 = 999_999_999;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for Vmid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = (3..=9).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit())
            && !s.starts_with('0');
        if !well_formed {
            return Err(format!(
                "'{}' is not a Proxmox vmid (an integer {}..={})",
                s.escape_debug(),
                Self::MIN,
                Self::MAX
            ));
        }
        // Three to nine digits without a leading zero always fit the range.
        s.parse().map(Vmid).map_err(|e| format!("'{s}': {e}"))
    }
}

impl TryFrom<u32> for Vmid {
    type Error = String;

    fn try_from(n: u32) -> Result<Self, Self::Error> {
        n.to_string().parse()
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Vmid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_proxmox_range() {
        assert_eq!("100".parse::<Vmid>().unwrap().get(), 100);
        assert_eq!("999999999".parse::<Vmid>().unwrap().get(), 999_999_999);
        assert_eq!("9101".parse::<Vmid>().unwrap().to_string(), "9101");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "99",
            "0100",
            "1000000000",
            "+101",
            "-101",
            " 101",
            "101 ",
            "../101",
            "/101",
            "1e3",
            "１０１",
            "101\n",
            "4294967296999",
        ] {
            assert!(bad.parse::<Vmid>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn try_from_number_checks_range() {
        assert!(Vmid::try_from(99).is_err());
        assert!(Vmid::try_from(100).is_ok());
        assert!(Vmid::try_from(1_000_000_000).is_err());
    }
}
