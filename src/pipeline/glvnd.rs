//! Whether a graphics install needs the installer's own libglvnd.
//!
//! NVIDIA's installer asks libglvnd's `check-libglvnd-install.sh` (shipped
//! in the runfile's `libglvnd_install_checker`; `files.c`,
//! `run_libglvnd_script` and `check_libglvnd_files`): without
//! `libGLdispatch.so.0` libglvnd is "not installed" and the installer puts
//! its own in; with it, `libGLX.so.0`, `libEGL.so.1` and the entry points
//! `libOpenGL.so.0` and `libGL.so.1` must load too, or it is "partial".
//! For a partial one, `--silent` takes the default answer: abort the
//! installation when an essential library is missing, leave libglvnd
//! alone when only the optional `libOpenGL.so.0` is (`library_is_optional`).
//!
//! So the hook forces `--install-libglvnd` only where libglvnd is absent
//! or an essential library is missing: a whole distribution libglvnd is
//! left to the distribution (overwritten, dpkg would later put its own
//! back behind the installer's record). "Present" is read from the
//! container's files, without running anything there: the name resolves,
//! in a folder the loader searches, to a 64-bit ELF library whose soname
//! is that name.

use anyhow::Result;

use super::Job;
use crate::container::confined::{Confined, ReadError};
use crate::container::elf::{self, Class};

/// What the installer's check loads, essential first.
const ESSENTIAL: [&str; 4] = [
    "libGLdispatch.so.0",
    "libGLX.so.0",
    "libEGL.so.1",
    "libGL.so.1",
];
const OPTIONAL: &str = "libOpenGL.so.0";

/// Where the loader finds native libraries on the distributions the
/// installer supports (Debian's and Ubuntu's multiarch folder first).
const LOADER_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];

/// The libglvnd libraries the container lacks, essential ones only.
fn missing_essential(c: &Confined) -> Result<Vec<String>, ReadError> {
    let mut missing = Vec::new();
    for name in ESSENTIAL {
        if !present(c, name)? {
            missing.push(name.to_string());
        }
    }
    Ok(missing)
}

fn present(c: &Confined, name: &str) -> Result<bool, ReadError> {
    for dir in LOADER_DIRS {
        let path = format!("{dir}/{name}");
        let mut file = match c.open_file(&path) {
            Ok(Some((file, _))) => file,
            Err(e) if e.cannot_tell() => return Err(e),
            // Absent, or something else than a file: not there for the loader.
            _ => continue,
        };
        if elf::read(&mut file)
            .is_some_and(|(class, soname)| class == Class::Elf64 && soname == name)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the installer must be told `--install-libglvnd`: the
/// container's libglvnd is absent or lacks an essential library.
pub fn needs_installers_own(job: &Job) -> Result<bool> {
    let missing = job.root.read(missing_essential)?;
    if missing.is_empty() {
        log::info!(
            "the container's libglvnd is whole ({}, {OPTIONAL} optional): the installer leaves it in place",
            ESSENTIAL.join(", ")
        );
        return Ok(false);
    }
    log::info!(
        "the container's libglvnd lacks {}: the installer brings its own (--install-libglvnd)",
        missing.join(", ")
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::{confined, tempdir};
    use std::path::Path;

    fn stub(path: &Path, soname: &str, bits: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let built = std::process::Command::new("cc")
            .args([bits, "-shared", "-nostdlib", "-x", "c", "/dev/null"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(path)
            .status()
            .unwrap();
        assert!(built.success());
    }

    /// Debian's libglvnd: real files behind soname links.
    #[test]
    fn a_whole_libglvnd_absent_and_partial() {
        let d = tempdir("glvnd");
        let lib = d.join("usr/lib/x86_64-linux-gnu");
        assert_eq!(missing_essential(&confined(&d)).unwrap(), ESSENTIAL);
        for name in ESSENTIAL {
            stub(&lib.join(format!("{name}.0.0")), name, "-m64");
            std::os::unix::fs::symlink(format!("{name}.0.0"), lib.join(name)).unwrap();
        }
        assert!(missing_essential(&confined(&d)).unwrap().is_empty());
        // libOpenGL is optional: its absence changes nothing.
        assert!(!lib.join(OPTIONAL).exists());
        // A library that is not 64-bit, or not the one its name says, is
        // not there for the loader.
        std::fs::remove_file(lib.join("libEGL.so.1.0.0")).unwrap();
        stub(&lib.join("libEGL.so.1.0.0"), "libEGL.so.1", "-m32");
        std::fs::remove_file(lib.join("libGL.so.1")).unwrap();
        std::fs::write(lib.join("libGL.so.1"), "not a library").unwrap();
        assert_eq!(
            missing_essential(&confined(&d)).unwrap(),
            ["libEGL.so.1", "libGL.so.1"]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
