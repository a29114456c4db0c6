//! The NVIDIA (or CUDA) runfile: where it comes from, a verified copy in the
//! cache ([`cache`]), bounded downloads ([`http`]), and the opened handle
//! the pipeline streams into a container. A runfile is opened once; the
//! bytes streamed from it are hashed on their way and must have the digest
//! it was verified against before any installer runs.

mod cache;
mod http;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::logging::redact_url;
use crate::state::Locks;

pub use cache::Cache;

/// Where a runfile comes from, classified once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Https(String),
    Http(String),
    /// `file://` or an absolute path: the admin's own file.
    Local(PathBuf),
}

impl Source {
    pub fn parse(url: &str) -> Result<Source> {
        if url.starts_with("https://") {
            Ok(Source::Https(url.to_string()))
        } else if url.starts_with("http://") {
            Ok(Source::Http(url.to_string()))
        } else if let Some(path) = url.strip_prefix("file://") {
            Ok(Source::Local(PathBuf::from(path)))
        } else if url.starts_with('/') {
            Ok(Source::Local(PathBuf::from(url)))
        } else {
            bail!(
                "'{}' is not an https://, http://, file:// URL or an absolute path",
                redact_url(url)
            )
        }
    }

    pub fn file_name(&self) -> Result<String> {
        let text = match self {
            Source::Https(u) | Source::Http(u) => {
                u.split(['?', '#']).next().unwrap_or(u).to_string()
            }
            Source::Local(p) => p.to_string_lossy().into_owned(),
        };
        let name = text.rsplit('/').next().unwrap_or_default();
        if name.is_empty() || name == "." || name == ".." {
            bail!("'{}' does not end in a file name", redact_url(&text));
        }
        Ok(name.to_string())
    }

    /// As it may be logged: without credentials or query.
    pub fn shown(&self) -> String {
        match self {
            Source::Https(u) | Source::Http(u) => redact_url(u),
            Source::Local(p) => p.display().to_string(),
        }
    }
}

/// A runfile ready to stream: opened once, with the digest its bytes must
/// have (None only for an admin's local file without a configured digest).
#[derive(Debug)]
pub struct Runfile {
    pub file: File,
    pub name: String,
    pub size: u64,
    pub expected: Option<String>,
    /// The cache entry it was opened from, removed if its bytes turn out
    /// not to be the expected ones.
    entry: Option<PathBuf>,
}

/// How much of a runfile's shell header is searched for its stated size.
const HEADER_BYTES: usize = 64 * 1024;

impl Runfile {
    /// The payload size the makeself header states (`Uncompressed size : N KB`
    /// in NVIDIA's, `Uncompressed size: N KB` in makeself 2.x), in bytes.
    pub fn stated_payload(&self) -> Option<u64> {
        let mut head = vec![0u8; HEADER_BYTES];
        let n = self.file.read_at(&mut head, 0).ok()?;
        let text = String::from_utf8_lossy(&head[..n]);
        let after = text.split("Uncompressed size").nth(1)?;
        let after = after.trim_start().strip_prefix(':')?.trim_start();
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let rest = after[digits.len()..].trim_start();
        if !rest.starts_with("KB") {
            return None;
        }
        digits.parse::<u64>().ok()?.checked_mul(1024)
    }

    /// The bytes that streamed were not the expected ones: a cache entry
    /// they came from is removed, so the next attempt fetches it again.
    pub fn discard(&self) {
        if let Some(entry) = &self.entry {
            let _ = std::fs::remove_file(entry);
        }
    }
}

pub struct Fetcher<'a> {
    pub cache: Cache,
    pub locks: &'a Locks,
    pub allow_unverified: bool,
    pub limits: http::Limits,
    pub log: &'a dyn Fn(&str),
}

pub use http::Limits as DownloadLimits;

/// No candidate has the runfile: each answered 404, or 403, which is how
/// NVIDIA's datacenter path (a CDN over storage) answers for a file it
/// does not have. The caller says what that means.
#[derive(Debug)]
pub struct NotFound {
    /// Each source asked, as it may be shown.
    pub tried: Vec<String>,
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "runfile not found (404 or 403) at {}",
            self.tried.join(" nor ")
        )
    }
}

impl std::error::Error for NotFound {}

impl Fetcher<'_> {
    /// A verified runfile from the first candidate that has it; a
    /// [`NotFound`] error when none does.
    pub fn obtain(&self, candidates: &[Source], configured: Option<&str>) -> Result<Runfile> {
        let mut tried = Vec::new();
        for source in candidates {
            match self.obtain_one(source, configured) {
                Ok(runfile) => return Ok(runfile),
                Err(http::Attempt::NotFound) => tried.push(source.shown()),
                Err(http::Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(NotFound { tried }.into())
    }

    fn obtain_one(
        &self,
        source: &Source,
        configured: Option<&str>,
    ) -> Result<Runfile, http::Attempt> {
        let failed = http::Attempt::Failed;
        let name = source.file_name().map_err(failed)?;
        let url = match source {
            Source::Local(path) => return local(path, &name, configured).map_err(failed),
            Source::Https(u) | Source::Http(u) => u,
        };
        let https = matches!(source, Source::Https(_));
        let agent = http::agent(&self.limits, https);
        let expected = match configured {
            Some(d) => Some(d.to_string()),
            // NVIDIA's .sha256sum counts only over https: over plain http it
            // proves nothing the file itself does not.
            None if https => http::published_digest(&agent, url, self.log)?,
            None => None,
        };
        if expected.is_none() && !self.allow_unverified {
            return Err(failed(
                anyhow!(
                    "no trusted sha256 for {}: {}",
                    source.shown(),
                    if https {
                        "NVIDIA publishes no .sha256sum beside it (the datacenter path, \
                     us.download.nvidia.com/tesla, has none)"
                    } else {
                        "over plain http only a configured digest counts"
                    }
                )
                .context(format!(
                    "pin it: {} (or set allow_unverified_download: true to accept it unverified)",
                    pin_hint(&version_in(&name))
                )),
            ));
        }
        let cache = self.cache.usable(self.locks, self.log).map_err(failed)?;
        let slot = cache
            .entry(expected.as_deref(), url, &name)
            .map_err(failed)?;
        let _lock = self.locks.download(&slot.dir, ".lock").map_err(failed)?;
        if let Some(runfile) = slot.reuse(self.log).map_err(failed)? {
            return Ok(runfile);
        }
        let (digest, size) = http::download(
            &agent,
            url,
            &slot,
            expected.as_deref(),
            &self.limits,
            self.log,
        )?;
        (self.log)(&format!(
            "downloaded {name} ({}), sha256 {digest}",
            crate::logging::size(size)
        ));
        slot.reuse(self.log)
            .map_err(failed)?
            .ok_or_else(|| failed(anyhow!("{} vanished from the cache", slot.file.display())))
    }
}

/// Whether NVIDIA publishes `<url>.sha256sum` (an https source without a
/// configured digest needs it), asked with a short limit.
pub fn publishes_digest(url: &str) -> Result<bool> {
    let limits = limits(Duration::from_secs(10), Duration::from_secs(10), 4096);
    http::exists(&http::agent(&limits, true), &format!("{url}.sha256sum"))
}

/// The setting to write to pin a runfile's digest.
pub fn pin_hint(version: &str) -> String {
    format!(
        "\"runfile_sha256\": {{\"{version}\": \"<the sha256 from NVIDIA's download page>\"}} in the configuration ({} unless --config says otherwise)",
        crate::config::DEFAULT_CONFIG_PATH
    )
}

/// `NVIDIA-Linux-x86_64-550.54.14.run` → `550.54.14`, for the pin hint.
fn version_in(name: &str) -> String {
    crate::version::from_runfile_name(name)
        .map(|(v, _)| v.to_string())
        .unwrap_or_else(|_| "<version>".to_string())
}

/// The admin's own file: opened once, trusted as opened (root's, not
/// writable by others, nor are its folders); its digest, when configured,
/// is what its streamed bytes must have.
fn local(path: &Path, name: &str, configured: Option<&str>) -> Result<Runfile> {
    let (file, meta) =
        fsutil::open_trusted(path).with_context(|| format!("runfile {}", path.display()))?;
    Ok(Runfile {
        file,
        name: name.to_string(),
        size: meta.len(),
        expected: configured.map(str::to_owned),
        entry: None,
    })
}

/// SHA-256 as lower-case hex.
pub fn hex_digest(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Download limits from the configuration.
pub fn limits(stall: Duration, total: Duration, max_bytes: u64) -> DownloadLimits {
    DownloadLimits {
        stall,
        total,
        max_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("/srv/a.run").unwrap(),
            Source::Local("/srv/a.run".into())
        );
        assert_eq!(
            Source::parse("file:///srv/a.run").unwrap(),
            Source::Local("/srv/a.run".into())
        );
        assert!(matches!(
            Source::parse("https://h/x/a.run").unwrap(),
            Source::Https(_)
        ));
        assert!(Source::parse("ftp://h/a.run").is_err());
        let with_token = Source::parse("https://u:pw@h/x/a.run?token=1").unwrap();
        assert_eq!(with_token.file_name().unwrap(), "a.run");
        assert_eq!(with_token.shown(), "https://h/x/a.run");
        assert!(Source::parse("https://h/x/").unwrap().file_name().is_err());
        assert!(Source::parse("https://h/x/..")
            .unwrap()
            .file_name()
            .is_err());
    }

    /// Answers 404 for `/missing/...`, 403 for `/forbidden/...` (as
    /// NVIDIA's datacenter path does for a file it lacks), the body for
    /// anything else, and counts requests.
    fn serve(body: &'static [u8]) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&hits);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut line).unwrap();
                while reader.read_line(&mut String::new()).unwrap_or(0) > 2 {}
                let reply = if line.contains("/missing/") {
                    b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
                } else if line.contains("/forbidden/") {
                    b"HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec()
                } else {
                    let mut r =
                        format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    r.extend_from_slice(body);
                    r
                };
                let _ = stream.write_all(&reply);
            }
        });
        (port, hits)
    }

    fn fetcher<'a>(dir: &Path, locks: &'a Locks, allow_unverified: bool) -> Fetcher<'a> {
        Fetcher {
            cache: Cache {
                dir: dir.join("cache"),
                fallback: None,
            },
            locks,
            allow_unverified,
            limits: limits(Duration::from_secs(5), Duration::from_secs(60), 1 << 20),
            log: &|_| {},
        }
    }

    fn read_all(runfile: &Runfile) -> Vec<u8> {
        let mut buf = vec![0; runfile.size as usize];
        runfile.file.read_at(&mut buf, 0).unwrap();
        buf
    }

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn falls_back_to_the_next_candidate_on_404_only() {
        let (port, hits) = serve(b"abc");
        let dir = std::env::temp_dir().join(format!("pnh-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let locks = Locks::new(&dir.join("lock"));
        let fetcher = fetcher(&dir, &locks, false);
        let url = |p: &str| {
            Source::Http(format!(
                "http://127.0.0.1:{port}/{p}/NVIDIA-Linux-x86_64-550.54.14.run"
            ))
        };
        let got = fetcher
            .obtain(&[url("missing"), url("tesla")], Some(ABC))
            .unwrap();
        assert_eq!(read_all(&got), b"abc");
        assert_eq!(got.expected.as_deref(), Some(ABC));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Cached under its digest: a second install asks no server.
        fetcher
            .obtain(&[url("missing"), url("tesla")], Some(ABC))
            .unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(dir
            .join("cache/sha256")
            .join(ABC)
            .join("NVIDIA-Linux-x86_64-550.54.14.run")
            .is_file());
        let fresh = Fetcher {
            cache: Cache {
                dir: dir.join("empty"),
                fallback: None,
            },
            ..fetcher
        };
        let err = fresh
            .obtain(&[url("missing"), url("missing")], Some(ABC))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("runfile not found (404 or 403) at http://"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A 403 sends the fetcher on to the next source as a 404 does; none
    /// having it is a [`NotFound`] for the caller to explain.
    #[test]
    fn a_403_tries_the_next_source() {
        let (port, _) = serve(b"abc");
        let dir = std::env::temp_dir().join(format!("pnh-403-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let locks = Locks::new(&dir.join("lock"));
        let url = |p: &str| {
            Source::Http(format!(
                "http://127.0.0.1:{port}/{p}/NVIDIA-Linux-x86_64-550.54.14.run"
            ))
        };
        let fetcher = fetcher(&dir, &locks, true);
        let got = fetcher.obtain(&[url("forbidden"), url("public")], None);
        assert_eq!(read_all(&got.unwrap()), b"abc");
        let err = fetcher
            .obtain(&[url("missing"), url("forbidden")], Some(ABC))
            .unwrap_err();
        let missing = err.downcast_ref::<NotFound>().expect("a NotFound");
        assert_eq!(missing.tried.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unverified_download_never_serves_a_source_that_expects_a_digest() {
        let (port, hits) = serve(b"abc");
        let dir = std::env::temp_dir().join(format!("pnh-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let locks = Locks::new(&dir.join("lock"));
        let url = Source::Http(format!(
            "http://127.0.0.1:{port}/NVIDIA-Linux-x86_64-550.54.14.run"
        ));
        let unverified = fetcher(&dir, &locks, true);
        let got = unverified.obtain(std::slice::from_ref(&url), None).unwrap();
        assert_eq!(got.expected.as_deref(), Some(ABC), "recorded as downloaded");
        assert!(dir.join("cache/unverified").is_dir());
        assert!(!dir.join("cache/sha256").exists());
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A container whose source pins the digest does not take it: it is
        // fetched (and verified) into the digest's own entry.
        let pinned = fetcher(&dir, &locks, false);
        pinned
            .obtain(std::slice::from_ref(&url), Some(ABC))
            .unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(dir.join("cache/sha256").join(ABC).is_dir());
        // Without a digest and without allow_unverified_download: refused,
        // with the exact pin to write.
        let err = format!(
            "{:#}",
            pinned.obtain(std::slice::from_ref(&url), None).unwrap_err()
        );
        assert!(
            err.contains("\"runfile_sha256\": {\"550.54.14\": ") && err.contains("plain http"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn payload_size_from_the_header() {
        let dir = std::env::temp_dir().join(format!("pnh-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (header, expected) in [
            (
                "echo \"  Uncompressed size : 1109028 KB\"\n",
                Some(1109028 * 1024),
            ),
            ("\techo Uncompressed size: 42 KB\n", Some(42 * 1024)),
            ("echo Uncompressed size: lots\n", None),
            ("#!/bin/sh\n", None),
        ] {
            let path = dir.join("r.run");
            std::fs::write(&path, format!("#!/bin/sh\n{header}exit 0\n\0\0payload")).unwrap();
            let runfile = Runfile {
                file: File::open(&path).unwrap(),
                name: "r.run".into(),
                size: 0,
                expected: None,
                entry: None,
            };
            assert_eq!(runfile.stated_payload(), expected, "{header}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
