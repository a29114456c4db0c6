//! The one thing read from a library's ELF header: its `DT_SONAME`, the name
//! the dynamic loader looks for (`libcuda.so.1`), so that a check can follow
//! that name to the file a workload will load; 64-bit or 32-bit (NVIDIA's
//! installer puts both in place unless told `--no-install-compat32-libs`).

use std::io::{Read, Seek, SeekFrom};

/// Program headers and the dynamic section are small; a library claiming
/// more is not read.
const MAX_TABLE: u64 = 1 << 20;

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_at<R: Read + Seek>(f: &mut R, offset: u64, len: u64) -> Option<Vec<u8>> {
    if len > MAX_TABLE {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0; usize::try_from(len).ok()?];
    f.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// ELF's two classes: a 64-bit library is the native one (x86_64), a
/// 32-bit one is what NVIDIA's installer adds as compatibility libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Elf32,
    Elf64,
}

/// Where the fields are in each class.
struct Layout {
    /// e_phoff, e_phentsize, e_phnum.
    header: (usize, usize, usize),
    /// A program header's size; its p_offset, p_vaddr, p_filesz.
    phdr: (u64, usize, usize, usize),
    /// A dynamic entry's size.
    dyn_size: usize,
    word: fn(&[u8], usize) -> Option<u64>,
}

const ELF64: Layout = Layout {
    header: (32, 54, 56),
    phdr: (56, 8, 16, 32),
    dyn_size: 16,
    word: u64_at,
};

const ELF32: Layout = Layout {
    header: (28, 42, 44),
    phdr: (32, 4, 8, 16),
    dyn_size: 8,
    word: u32_at,
};

/// The class and the SONAME of a little-endian ELF shared object; None
/// for anything else or anything malformed.
pub fn read<R: Read + Seek>(f: &mut R) -> Option<(Class, String)> {
    let header = read_at(f, 0, 64)?;
    if header[..4] != *b"\x7fELF" || header[5] != 1 {
        return None;
    }
    let (class, l) = match header[4] {
        1 => (Class::Elf32, ELF32),
        2 => (Class::Elf64, ELF64),
        _ => return None,
    };
    let phoff = (l.word)(&header, l.header.0)?;
    let (phentsize, phnum) = (u16_at(&header, l.header.1)?, u16_at(&header, l.header.2)?);
    if phentsize < l.phdr.0 {
        return None;
    }
    let phdrs = read_at(f, phoff, phentsize * phnum)?;
    let entry = |i: u64| {
        let at = usize::try_from(i * phentsize).ok()?;
        let kind = u32::from_le_bytes(phdrs.get(at..at + 4)?.try_into().ok()?);
        // p_offset, p_vaddr, p_filesz
        Some((
            kind,
            (l.word)(&phdrs, at + l.phdr.1)?,
            (l.word)(&phdrs, at + l.phdr.2)?,
            (l.word)(&phdrs, at + l.phdr.3)?,
        ))
    };
    let headers: Vec<_> = (0..phnum).filter_map(entry).collect();
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    let &(_, dyn_offset, _, dyn_size) = headers.iter().find(|h| h.0 == PT_DYNAMIC)?;
    let dynamic = read_at(f, dyn_offset, dyn_size)?;
    let (mut strtab, mut soname, mut strsz) = (None, None, None);
    let half = l.dyn_size / 2;
    for tag in dynamic.chunks_exact(l.dyn_size) {
        let (d_tag, d_val) = ((l.word)(tag, 0)?, (l.word)(tag, half)?);
        match d_tag {
            0 => break,
            5 => strtab = Some(d_val),
            10 => strsz = Some(d_val),
            14 => soname = Some(d_val),
            _ => {}
        }
    }
    // DT_STRTAB is an address: find the loaded segment that holds it.
    let strtab = strtab?;
    let &(_, seg_offset, seg_vaddr, _) = headers
        .iter()
        .find(|h| h.0 == PT_LOAD && h.2 <= strtab && strtab < h.2.saturating_add(h.3))?;
    let table = read_at(
        f,
        (strtab - seg_vaddr).checked_add(seg_offset)?,
        strsz?.min(MAX_TABLE),
    )?;
    let name = table.get(usize::try_from(soname?).ok()?..)?;
    let end = name.iter().position(|&b| b == 0)?;
    Some((class, String::from_utf8(name[..end].to_vec()).ok()?))
}

/// The SONAME of a little-endian ELF shared object of either class.
pub fn soname<R: Read + Seek>(f: &mut R) -> Option<String> {
    read(f).map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soname_of_a_system_library() {
        // The C library every test machine has, by its real file.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libc.so.6");
        let mut f = std::fs::File::open(libc).unwrap();
        assert_eq!(soname(&mut f).as_deref(), Some("libc.so.6"));
    }

    /// NVIDIA's 32-bit compatibility libraries are ELF32: their soname
    /// is read too (built here as the stand-in installer builds them).
    #[test]
    fn reads_the_soname_of_a_32_bit_library() {
        let dir = std::env::temp_dir().join(format!("pnh-elf32-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libcuda.so");
        let built = std::process::Command::new("cc")
            .args(["-m32", "-shared", "-nostdlib", "-x", "c", "/dev/null"])
            .arg("-Wl,-soname,libcuda.so.1")
            .arg("-o")
            .arg(&lib)
            .status()
            .unwrap();
        assert!(built.success(), "cc -m32");
        let mut f = std::fs::File::open(&lib).unwrap();
        assert_eq!(
            read(&mut f),
            Some((Class::Elf32, "libcuda.so.1".to_string()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn anything_else_is_none() {
        for bytes in [
            &b""[..],
            b"#!/bin/sh\n",
            b"\x7fELF\x01\x01",
            &[0x7f, b'E', b'L', b'F', 2, 1, 0xff, 0xff],
        ] {
            assert_eq!(soname(&mut std::io::Cursor::new(bytes.to_vec())), None);
        }
    }
}
