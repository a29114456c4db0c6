//! The container's dpkg database (`/var/lib/dpkg/status`), read from the
//! host side: which packages are installed, without running the tenant's
//! `dpkg-query`. Every name is checked against Debian's rules before it is
//! used in a command or shown anywhere, and what is taken from it is
//! bounded: a tenant's status may list 300,000 packages of any name.

use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

pub const STATUS: &str = "/var/lib/dpkg/status";

/// A large desktop system's status file is a few MiB; it is read as a
/// stream, a line at a time, so this bounds time, not memory.
pub const MAX_STATUS: u64 = 64 << 20;
/// Longer lines (descriptions) are passed over past this.
const MAX_LINE: usize = 4096;

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

/// What is taken from a dpkg status: which of the wanted packages are
/// installed, and the present packages a predicate picks (the driver's, to
/// purge), at most a given number of names with a count of all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Of the wanted packages, those installed.
    pub installed: Vec<String>,
    /// Present (installed, or removed with configuration files left, which
    /// a purge also clears) and picked; the first of them.
    pub picked: Vec<String>,
    pub picked_total: usize,
    /// Stanzas whose name breaks Debian's rules: dropped, never passed on.
    pub rejected: usize,
}

/// Stanzas of `Package:` and `Status: want flag state`, a line at a time.
pub fn summarize(
    status: impl BufRead,
    wanted: &[String],
    pick: impl Fn(&str) -> bool,
    max_picked: usize,
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut stanza = Stanza::default();
    let mut lines = Lines::new(status);
    while let Some(line) = lines.next_line()? {
        if line.is_empty() {
            stanza.end(&mut summary, wanted, &pick, max_picked);
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if let Some(name) = text.strip_prefix("Package:") {
            stanza.name = Some(name.trim().to_string());
        } else if let Some(status) = text.strip_prefix("Status:") {
            stanza.state = status.split_whitespace().nth(2).map(str::to_string);
        }
    }
    stanza.end(&mut summary, wanted, &pick, max_picked);
    Ok(summary)
}

#[derive(Default)]
struct Stanza {
    name: Option<String>,
    state: Option<String>,
}

impl Stanza {
    fn end(
        &mut self,
        summary: &mut Summary,
        wanted: &[String],
        pick: &impl Fn(&str) -> bool,
        max_picked: usize,
    ) {
        let (Some(name), Some(state)) = (self.name.take(), self.state.take()) else {
            return;
        };
        if !is_package_name(&name) {
            summary.rejected += 1;
            return;
        }
        if state == "installed" && wanted.contains(&name) && !summary.installed.contains(&name) {
            summary.installed.push(name.clone());
        }
        if state != "not-installed" && pick(&name) {
            summary.picked_total += 1;
            if summary.picked.len() < max_picked {
                summary.picked.push(name);
            }
        }
    }
}

/// Lines of at most [`MAX_LINE`] bytes (the rest of a longer one dropped).
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Lines<R> {
        Lines {
            reader,
            buf: Vec::with_capacity(256),
        }
    }

    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        self.buf.clear();
        let mut read_any = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            read_any = true;
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = MAX_LINE.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&chunk[..take.min(room)]);
            self.reader.consume(take);
            if done {
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        while self.buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            self.buf.pop();
        }
        Ok(Some(&self.buf))
    }
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
        let wanted = ["kmod".to_string(), "gone".to_string()];
        let s = summarize(text.as_bytes(), &wanted, |_| true, 10).unwrap();
        assert_eq!(s.rejected, 1);
        assert_eq!(s.installed, ["kmod"]);
        assert_eq!(s.picked, ["kmod", "libcuda1"]);
    }

    /// A tenant's status of 300,000 long names: only the first few and a
    /// count come out, and over-long lines are cut, never kept whole.
    #[test]
    fn what_is_taken_is_bounded() {
        let mut text = String::new();
        for i in 0..300_000 {
            text.push_str(&format!(
                "Package: libnvidia-{i}-{}\nStatus: install ok installed\n\n",
                "x".repeat(90)
            ));
        }
        text.push_str(&format!(
            "Package: kmod\nStatus: install ok installed\nDescription: {}\n",
            "y".repeat(1 << 20)
        ));
        let wanted = ["kmod".to_string()];
        let s = summarize(
            text.as_bytes(),
            &wanted,
            |n| n.starts_with("libnvidia-"),
            50,
        )
        .unwrap();
        assert_eq!(s.picked.len(), 50);
        assert_eq!(s.picked_total, 300_000);
        assert_eq!(s.installed, ["kmod"]);
    }

    proptest! {
        #[test]
        fn whatever_is_accepted_is_a_debian_name(text in "(\\PC{0,30}\n){0,20}") {
            let s = summarize(text.as_bytes(), &[], |_| true, 100).unwrap();
            for name in s.picked {
                prop_assert!(is_package_name(&name));
            }
        }
    }
}
