//! `verify`'s inspection, also run at the end of every install: every file
//! the installer's record lists that workloads read, by CRC; every symlink,
//! by target; the key libraries by soname (the name a workload's loader
//! follows); the installer's own log for errors it went on past. One read
//! through the [`Probe`], with a deadline of its own and a bound on the
//! bytes it hashes: a tenant's record or files cannot make it run longer.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::confined::{Confined, ReadError};
use super::detect::{and_more, read_record, INSTALLER_LOG, INSTALLER_RECORD};
use super::elf;
use super::probe::Probe;
use super::record::{self, Crc, Record};
use super::vulkan;
use crate::logging::bounded;
use crate::version::DriverVersion;

/// What the installed driver offers workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    pub version: DriverVersion,
    pub capabilities: Capabilities,
    /// Everything that is not as the installer left it, one line each (the
    /// first [`MAX_PROBLEMS`]).
    pub problems: Vec<String>,
    /// Problems beyond those listed.
    pub more_problems: usize,
}

/// A record of a tenant's could list 20,000 problems; a few name the trouble.
const MAX_PROBLEMS: usize = 100;
/// Larger than any file of a driver (the largest, libcuda and the
/// compilers, are some hundred MB).
const MAX_DRIVER_FILE: u64 = 2 << 30;
/// More than a whole driver's files (under 2 GB with every component): a
/// record that lists a file many times, or sparse files of a tenant's,
/// cannot make the inspection read more.
const MAX_HASHED: u64 = 6 << 30;

/// The inspection through the door, within `deadline`.
pub fn inspect(probe: &Probe, deadline: Duration) -> Result<Inspection, ReadError> {
    probe.read_within(deadline, inspect_files)
}

struct Problems {
    listed: Vec<String>,
    more: usize,
}

impl Problems {
    fn push(&mut self, problem: String) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(bounded(&problem, 300));
        } else {
            self.more += 1;
        }
    }
}

/// The inspection itself, on the container's files.
pub fn inspect_files(c: &Confined) -> Result<Inspection, ReadError> {
    let record = match read_record(c)? {
        Some(Ok(record)) => record,
        Some(Err(broken)) => {
            return Err(ReadError::io(
                INSTALLER_RECORD,
                std::io::Error::other(broken),
            ))
        }
        None => return Err(ReadError::io(INSTALLER_RECORD, rustix::io::Errno::NOENT)),
    };
    let mut problems = Problems {
        listed: Vec::new(),
        more: 0,
    };
    for n in record.missing_key_files() {
        problems.push(format!(
            "{n} was not installed (the installer went on past a failed copy)"
        ));
    }
    let mut present = HashSet::new();
    let mut seen = HashSet::new();
    let mut hashed = 0u64;
    for (path, crc) in &record.files {
        if !record::is_read_by_workloads(path) || !seen.insert(path.as_str()) {
            continue;
        }
        match file_crc(c, path, MAX_HASHED - hashed.min(MAX_HASHED)) {
            Ok(Some((actual, size))) => {
                hashed += size;
                if actual == *crc {
                    present.insert(path.as_str());
                } else {
                    problems.push(format!("{path} changed since it was installed"));
                }
            }
            // Removed after a compute-only install: see `vulkan`.
            Ok(None) if vulkan::is_loader_file(path) && !record.has_graphics() => {}
            Ok(None) => problems.push(format!("{path} is missing")),
            Err(e) if e.cannot_tell() => return Err(e),
            Err(e) => problems.push(e.to_string()),
        }
    }
    for (path, target) in &record.symlinks {
        if !record::is_read_by_workloads(path) || !seen.insert(path.as_str()) {
            continue;
        }
        match c.read_link(path) {
            Ok(Some(t)) if t == *target => {}
            Ok(Some(t)) => problems.push(format!(
                "{path} points to {}, not {target}",
                bounded(&t, 200)
            )),
            Ok(None) => problems.push(format!("{path} is missing or not a symlink")),
            Err(e) if e.cannot_tell() => return Err(e),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let v = &record.version;
    for lib in ["libcuda.so", "libnvidia-ml.so"] {
        let name = format!("{lib}.{v}");
        // The native library and, where they were installed, its 32-bit
        // compatibility copy.
        let copies = record
            .files
            .iter()
            .map(|(p, _)| p.as_str())
            .filter(|p| p.rsplit('/').next() == Some(name.as_str()))
            .collect::<BTreeSet<_>>();
        for path in copies {
            if let Some(problem) = loader_problem(c, path) {
                problems.push(problem);
            }
        }
    }
    for (file, library) in vulkan::dangling(c, &record, |p| present.contains(p))? {
        problems.push(format!(
            "{file} names {library}, which this install does not have: Vulkan applications fail"
        ));
    }
    if let Some(errors) = installer_errors(c)? {
        problems.push(errors);
    }
    let capabilities = Capabilities::of(&record, |p| present.contains(p));
    Ok(Inspection {
        version: record.version,
        capabilities,
        problems: problems.listed,
        more_problems: problems.more,
    })
}

/// nvidia-installer's CRC of a regular file and its size; None when absent.
fn file_crc(c: &Confined, path: &str, budget: u64) -> Result<Option<(u32, u64)>, ReadError> {
    let Some((f, size)) = c.open_file(path)? else {
        return Ok(None);
    };
    let too_large =
        |why: &str| ReadError::io(path, std::io::Error::other(format!("{size} bytes, {why}")));
    if size > MAX_DRIVER_FILE {
        return Err(too_large("larger than any file of a driver"));
    }
    if size > budget {
        return Err(too_large(
            "more than is left to hash of what a whole driver has",
        ));
    }
    let mut f = f.take(size);
    let mut crc = Crc::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ReadError::io(path, e))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
    }
    Ok(Some((crc.of_file(size), size)))
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
    let soname = bounded(&soname, 200);
    match c.resolved_name(&format!("{dir}/{soname}")) {
        Ok(Some(found)) if found == name => None,
        Ok(Some(found)) => Some(format!(
            "{dir}/{soname} leads to {}, not {name}: workloads load another library",
            bounded(&found, 200)
        )),
        _ => Some(format!(
            "{dir}/{soname} (the soname of {name}) is missing: workloads cannot load it"
        )),
    }
}

/// `ERROR:` lines of the installer's log: with --silent it goes on past
/// them and still exits 0.
pub fn installer_errors(c: &Confined) -> Result<Option<String>, ReadError> {
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
            bounded(first, 300),
            and_more(errors.len() - 1)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::{confined, tempdir};

    const LIB: &str = "/usr/lib/x86_64-linux-gnu";

    use crate::container::record::test_record as record;

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

    /// A record that lists one changed file 5,000 times: it is read, and
    /// named, once.
    #[test]
    fn duplicate_entries_are_read_once() {
        let d = tempdir("inspect-dup");
        let text = "x".repeat(1000);
        let mut extra = String::new();
        for _ in 0..5000 {
            extra.push_str("1: /usr/bin/big\n12345\n");
        }
        let rec = record(&extra);
        std::fs::create_dir_all(d.join("var/lib/nvidia")).unwrap();
        std::fs::write(d.join("var/lib/nvidia/log"), rec).unwrap();
        std::fs::create_dir_all(d.join("usr/bin")).unwrap();
        std::fs::write(d.join("usr/bin/big"), &text).unwrap();
        let c = confined(&d);
        let found = inspect_files(&c).unwrap();
        let named = found
            .problems
            .iter()
            .filter(|p| p.contains("/usr/bin/big changed"))
            .count();
        assert_eq!(named, 1, "{:?}", found.problems);
        assert_eq!(found.more_problems, 0);
        std::fs::remove_dir_all(d).unwrap();
    }
}
