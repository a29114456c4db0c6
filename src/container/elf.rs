//! The one thing read from a library's ELF header: its `DT_SONAME`, the name
//! the dynamic loader looks for (`libcuda.so.1`), so that a check can follow
//! that name to the file a workload will load.

use std::io::{Read, Seek, SeekFrom};

/// Program headers and the dynamic section are small; a library claiming
/// more is not read.
const MAX_TABLE: u64 = 1 << 20;

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
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

/// The SONAME of a little-endian ELF64 shared object (x86_64, aarch64);
/// None for anything else or anything malformed.
pub fn soname<R: Read + Seek>(f: &mut R) -> Option<String> {
    let header = read_at(f, 0, 64)?;
    // Magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32)?,
        u16_at(&header, 54)?,
        u16_at(&header, 56)?,
    );
    if phentsize < 56 {
        return None;
    }
    let phdrs = read_at(f, phoff, phentsize * phnum)?;
    let entry = |i: u64| {
        let at = usize::try_from(i * phentsize).ok()?;
        let kind = u32::from_le_bytes(phdrs.get(at..at + 4)?.try_into().ok()?);
        // p_offset, p_vaddr, p_filesz
        Some((
            kind,
            u64_at(&phdrs, at + 8)?,
            u64_at(&phdrs, at + 16)?,
            u64_at(&phdrs, at + 32)?,
        ))
    };
    let headers: Vec<_> = (0..phnum).filter_map(entry).collect();
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    let &(_, dyn_offset, _, dyn_size) = headers.iter().find(|h| h.0 == PT_DYNAMIC)?;
    let dynamic = read_at(f, dyn_offset, dyn_size)?;
    let (mut strtab, mut soname, mut strsz) = (None, None, None);
    for tag in dynamic.chunks_exact(16) {
        let (d_tag, d_val) = (u64_at(tag, 0)?, u64_at(tag, 8)?);
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
    String::from_utf8(name[..end].to_vec()).ok()
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
