//! The dynamic loader's cache (`/etc/ld.so.cache`), read as the NVIDIA
//! Container Toolkit reads it to find the driver's libraries
//! (libnvidia-container `src/ldcache.c`, after glibc's `dl-cache.h`): the
//! `glibc-ld.so.cache1.1` table, behind an old `ld.so-1.7.0` one when
//! ldconfig wrote both (glibc before 2.32). Every offset is checked against
//! the file: a tenant writes this file.

pub const PATH: &str = "/etc/ld.so.cache";

/// A cache of hundreds of libraries is some 100 KB; more is not one.
pub const MAX_BYTES: u64 = 16 << 20;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// Magic and version (20), `nlibs`, `len_strings`, 20 more bytes.
const NEW_HEADER: usize = 48;
/// `flags`, `key`, `value`, `osversion` (4 each), `hwcap` (8).
const NEW_ENTRY: usize = 24;
const OLD_ENTRY: usize = 12;

/// `FLAG_ELF` and the architecture bits of an x86-64 library
/// (`FLAG_X8664_LIB64`): what the toolkit selects on this host.
const FLAG_ELF: u32 = 0x0001;
const ARCH_MASK: u32 = 0xff00;
const X8664_LIB64: u32 = 0x0300;

/// One library the cache lists: its soname and the path it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

/// The x86-64 ELF libraries the cache lists, in its order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, &'static str> {
    let mut start = 0;
    if bytes.starts_with(OLD_MAGIC) {
        // The old table: its magic padded to 12, `nlibs`, 12-byte entries;
        // the new table follows, aligned to 8.
        let nlibs = u32_at(bytes, 12).ok_or("truncated")? as usize;
        let end = nlibs
            .checked_mul(OLD_ENTRY)
            .and_then(|n| n.checked_add(16))
            .ok_or("corrupt")?;
        start = end.checked_add(7).ok_or("corrupt")? & !7;
    }
    let table = bytes.get(start..).ok_or("truncated")?;
    if !table.starts_with(NEW_MAGIC) {
        return Err("not a glibc ld.so.cache");
    }
    let nlibs = u32_at(table, 20).ok_or("truncated")? as usize;
    if nlibs.saturating_mul(NEW_ENTRY) > table.len() {
        return Err("more entries than the file holds");
    }
    let mut entries = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let at = NEW_HEADER + i * NEW_ENTRY;
        let (Some(flags), Some(key), Some(value)) = (
            u32_at(table, at),
            u32_at(table, at + 4),
            u32_at(table, at + 8),
        ) else {
            return Err("truncated");
        };
        if flags & FLAG_ELF == 0 || flags & ARCH_MASK != X8664_LIB64 {
            continue;
        }
        // Offsets are from the start of the new table, as glibc writes them.
        let (Some(key), Some(value)) = (c_str(table, key), c_str(table, value)) else {
            return Err("an entry points outside the file");
        };
        entries.push(Entry { key, value });
    }
    Ok(entries)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The NUL-terminated string at `at`, at most a path's length.
fn c_str(bytes: &[u8], at: u32) -> Option<String> {
    let rest = bytes.get(at as usize..)?;
    let len = rest.iter().take(4096).position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&rest[..len]).into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cache as glibc's ldconfig writes it: the new table, optionally
    /// behind an old one (`compat`).
    pub(crate) fn cache(libs: &[(u32, &str, &str)], compat: bool) -> Vec<u8> {
        let mut strings = Vec::new();
        let table_start = NEW_HEADER + libs.len() * NEW_ENTRY;
        let mut entries = Vec::new();
        for (flags, key, value) in libs {
            let k = (table_start + strings.len()) as u32;
            strings.extend_from_slice(key.as_bytes());
            strings.push(0);
            let v = (table_start + strings.len()) as u32;
            strings.extend_from_slice(value.as_bytes());
            strings.push(0);
            for n in [*flags, k, v, 0] {
                entries.extend_from_slice(&n.to_ne_bytes());
            }
            entries.extend_from_slice(&0u64.to_ne_bytes());
        }
        let mut new = NEW_MAGIC.to_vec();
        new.extend_from_slice(&(libs.len() as u32).to_ne_bytes());
        new.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        new.resize(NEW_HEADER, 0);
        new.extend(entries);
        new.extend(strings);
        if !compat {
            return new;
        }
        let mut old = OLD_MAGIC.to_vec();
        old.resize(12, 0);
        old.extend_from_slice(&(libs.len() as u32).to_ne_bytes());
        old.resize(16 + libs.len() * OLD_ENTRY, 0);
        old.resize((old.len() + 7) & !7, 0);
        old.extend(new);
        old
    }

    const LIBS: [(u32, &str, &str); 3] = [
        (
            0x0303,
            "libnvidia-ml.so.1",
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        ),
        (0x0003, "libcuda.so.1", "/usr/lib32/libcuda.so.1"),
        (
            0x0303,
            "libcuda.so.1",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        ),
    ];

    #[test]
    fn both_layouts_and_only_x86_64_libraries() {
        for compat in [false, true] {
            let entries = parse(&cache(&LIBS, compat)).unwrap();
            assert_eq!(
                entries,
                [
                    Entry {
                        key: "libnvidia-ml.so.1".into(),
                        value: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1".into()
                    },
                    Entry {
                        key: "libcuda.so.1".into(),
                        value: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into()
                    },
                ],
                "compat: {compat}"
            );
        }
    }

    #[test]
    fn a_tenants_garbage_is_an_error_not_a_panic() {
        assert!(parse(b"").is_err());
        assert!(parse(b"ld.so-1.7.0\0\xff\xff\xff\xff").is_err());
        let mut huge = cache(&LIBS, false);
        huge[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse(&huge).is_err());
        let mut outside = cache(&LIBS, false);
        outside[NEW_HEADER + 4..NEW_HEADER + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse(&outside).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let mut prefixed = NEW_MAGIC.to_vec();
            prefixed.extend(&bytes);
            let _ = parse(&prefixed);
        }
    }
}
