//! The NVIDIA (or CUDA) runfile: resolved from the configuration, fetched
//! once per host into the cache, verified against a sha256 digest while it
//! streams, and only then renamed into place. A file whose digest does not
//! match never enters the cache.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::state::Locks;

#[derive(Debug, Clone)]
pub struct Runfile {
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
}

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
            bail!("'{url}' is not an https://, http://, file:// URL or an absolute path")
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
            bail!("'{text}' does not end in a file name");
        }
        Ok(name.to_string())
    }
}

pub struct Fetcher<'a> {
    pub cache_dir: &'a Path,
    pub locks: &'a Locks,
    pub allow_unverified: bool,
    /// How long a connection may stall before the attempt is abandoned.
    pub stall_timeout: Duration,
    pub log: &'a dyn Fn(&str),
}

const ATTEMPTS: u32 = 3;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const BAR_EVERY: Duration = Duration::from_millis(200);

enum Attempt {
    NotFound,
    Failed(anyhow::Error),
}

impl Fetcher<'_> {
    /// Gives a verified local copy of the first candidate that exists.
    pub fn obtain(
        &self,
        candidates: &[Source],
        configured_digest: Option<&str>,
    ) -> Result<Runfile> {
        let mut not_found = Vec::new();
        for source in candidates {
            match self.obtain_one(source, configured_digest) {
                Ok(runfile) => return Ok(runfile),
                Err(Attempt::NotFound) => not_found.push(describe(source)),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(anyhow!(
            "runfile not found (404) at {}",
            not_found.join(" nor ")
        ))
    }

    fn obtain_one(&self, source: &Source, configured: Option<&str>) -> Result<Runfile, Attempt> {
        let name = source.file_name().map_err(Attempt::Failed)?;
        let url = match source {
            Source::Local(path) => {
                return self.local(path, &name, configured).map_err(Attempt::Failed)
            }
            Source::Https(u) | Source::Http(u) => u,
        };
        let _guard = self
            .locks
            .download(self.cache_dir, &name)
            .map_err(Attempt::Failed)?;
        let cached = self.cache_dir.join(&name);
        if let Some(runfile) = self
            .reuse(&cached, &name, configured)
            .map_err(Attempt::Failed)?
        {
            return Ok(runfile);
        }
        let expected = match configured {
            Some(d) => Some(d.to_string()),
            None if matches!(source, Source::Https(_)) => {
                self.published_digest(url).map_err(Attempt::Failed)?
            }
            None => None,
        };
        if expected.is_none() && !self.allow_unverified {
            return Err(Attempt::Failed(anyhow!(
                "no trusted sha256 for {url}: {}; set runfile_sha256 in the configuration \
                 (or allow_unverified_download: true to accept it unverified)",
                if matches!(source, Source::Http(_)) {
                    "over plain http only a configured digest counts"
                } else {
                    "NVIDIA publishes no .sha256sum beside it"
                }
            )));
        }
        self.download(url, &cached, &name, expected.as_deref())
    }

    fn local(&self, path: &Path, name: &str, configured: Option<&str>) -> Result<Runfile> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("runfile {}", path.display()))?
            .len();
        if let Some(expected) = configured {
            let actual = hash_file(path)?;
            if actual != expected {
                bail!(
                    "sha256 mismatch for {}: expected {expected}, got {actual}",
                    path.display()
                );
            }
        }
        Ok(Runfile {
            path: path.to_path_buf(),
            name: name.to_string(),
            size,
        })
    }

    /// A cached file counts only with the digest it was verified against
    /// beside it, and only while it still hashes to that digest.
    fn reuse(
        &self,
        cached: &Path,
        name: &str,
        configured: Option<&str>,
    ) -> Result<Option<Runfile>> {
        let digest_file = digest_path(cached);
        let (Ok(meta), Ok(recorded)) = (
            std::fs::symlink_metadata(cached),
            std::fs::read_to_string(&digest_file),
        ) else {
            return Ok(None);
        };
        if !meta.is_file() {
            bail!("{} is not a regular file; remove it", cached.display());
        }
        fsutil::check_trusted(cached)?;
        let recorded = recorded.trim().to_string();
        if configured.is_some_and(|c| c != recorded) {
            (self.log)(&format!(
                "cached {name} has another digest than configured; fetching again"
            ));
            return Ok(None);
        }
        if hash_file(cached)? != recorded {
            (self.log)(&format!(
                "cached {name} no longer matches its digest; fetching again"
            ));
            return Ok(None);
        }
        (self.log)(&format!("using cached {}", cached.display()));
        Ok(Some(Runfile {
            path: cached.to_path_buf(),
            name: name.to_string(),
            size: meta.len(),
        }))
    }

    /// NVIDIA's `<runfile>.sha256sum` (`<hex>  <name>`), None when absent.
    fn published_digest(&self, url: &str) -> Result<Option<String>> {
        let sum_url = format!("{url}.sha256sum");
        let response = match get_with_retries(&self.agent(), &sum_url, self.log) {
            Ok(r) => r,
            Err(Attempt::NotFound) => return Ok(None),
            Err(Attempt::Failed(e)) => return Err(e),
        };
        let mut text = String::new();
        response
            .into_reader()
            .take(4096)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {sum_url}"))?;
        let digest = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{sum_url} does not hold a sha256 digest");
        }
        Ok(Some(digest))
    }

    /// Streams into a temporary name, verifies, then renames into the cache;
    /// on any failure the temporary file is removed.
    fn download(
        &self,
        url: &str,
        cached: &Path,
        name: &str,
        expected: Option<&str>,
    ) -> Result<Runfile, Attempt> {
        let partial = self.cache_dir.join(format!(".{name}.partial"));
        let (actual, size) = self
            .fetch_verified(url, &partial, expected)
            .and_then(|(actual, size)| {
                fsutil::write_atomic(&digest_path(cached), actual.as_bytes(), 0o600)
                    .and_then(|()| {
                        std::fs::rename(&partial, cached)
                            .with_context(|| format!("renaming into {}", cached.display()))
                    })
                    .map(|()| (actual, size))
                    .map_err(Attempt::Failed)
            })
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&partial);
            })?;
        (self.log)(&format!(
            "downloaded {name} ({} MB), sha256 {actual}",
            size / 1_000_000
        ));
        Ok(Runfile {
            path: cached.to_path_buf(),
            name: name.to_string(),
            size,
        })
    }

    /// The file at `partial` with its digest and size, after bounded
    /// attempts; refused when it does not match `expected`.
    fn fetch_verified(
        &self,
        url: &str,
        partial: &Path,
        expected: Option<&str>,
    ) -> Result<(String, u64), Attempt> {
        let mut last_error = None;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                std::thread::sleep(backoff(attempt));
            }
            let response = get_with_retries(&self.agent(), url, self.log)?;
            match self.stream(response, url, partial) {
                Ok((actual, _)) if expected.is_some_and(|e| e != actual) => {
                    return Err(Attempt::Failed(anyhow!(
                        "sha256 mismatch for {url}: expected {}, got {actual}; the file was discarded",
                        expected.unwrap_or_default()
                    )))
                }
                Ok(done) => return Ok(done),
                Err(e) => {
                    (self.log)(&format!(
                        "download of {url} broke off (attempt {attempt}/{ATTEMPTS}): {e:#}"
                    ));
                    last_error = Some(e);
                }
            }
        }
        Err(Attempt::Failed(
            last_error.unwrap_or_else(|| anyhow!("download failed")),
        ))
    }

    fn stream(&self, response: ureq::Response, url: &str, partial: &Path) -> Result<(String, u64)> {
        let total: Option<u64> = response
            .header("Content-Length")
            .and_then(|l| l.parse().ok());
        let _ = std::fs::remove_file(partial);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut reader = response.into_reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done: u64 = 0;
        let started = Instant::now();
        let mut last_report = started;
        // A person watching gets a bar; logs get a line every few seconds.
        let tty = std::io::stderr().is_terminal();
        loop {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("reading {url}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", partial.display()))?;
            done += n as u64;
            if tty && last_report.elapsed() >= BAR_EVERY {
                last_report = Instant::now();
                eprint!("\r{}", bar(done, total, started.elapsed()));
            } else if !tty && last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                (self.log)(&progress(done, total, started.elapsed()));
            }
        }
        if tty {
            eprintln!("\r{}", bar(done, total, started.elapsed()));
        }
        if let Some(total) = total {
            if done != total {
                bail!("{url}: got {done} of {total} bytes");
            }
        }
        out.sync_all()
            .with_context(|| format!("writing {}", partial.display()))?;
        Ok((hex(&hasher.finalize()), done))
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Https(u) | Source::Http(u) => u.clone(),
        Source::Local(p) => p.display().to_string(),
    }
}

fn bar(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001) / 1e6;
    match total {
        Some(t) if t > 0 => {
            let filled = (done.min(t) * WIDTH / t) as usize;
            format!(
                "[{}{}] {:>3}% {} / {} MB {rate:.1} MB/s",
                "#".repeat(filled),
                " ".repeat(WIDTH as usize - filled),
                done * 100 / t,
                done / 1_000_000,
                t / 1_000_000
            )
        }
        _ => format!("{} MB {rate:.1} MB/s", done / 1_000_000),
    }
}

fn progress(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001) / 1e6;
    match total {
        Some(t) if t > 0 => format!(
            "download: {}% of {} MB at {rate:.1} MB/s",
            done * 100 / t,
            t / 1_000_000
        ),
        _ => format!("download: {} MB at {rate:.1} MB/s", done / 1_000_000),
    }
}

impl Fetcher<'_> {
    fn agent(&self) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout_connect(self.stall_timeout)
            .timeout_read(self.stall_timeout)
            .try_proxy_from_env(true)
            .build()
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1 << (attempt - 1).min(4))
}

/// A request with bounded retries: 404 is an answer, other 4xx are final,
/// 5xx and transport errors are retried with backoff.
fn get_with_retries(
    agent: &ureq::Agent,
    url: &str,
    log: &dyn Fn(&str),
) -> Result<ureq::Response, Attempt> {
    let mut attempt = 1;
    loop {
        let error = match agent.get(url).call() {
            Ok(r) => return Ok(r),
            Err(ureq::Error::Status(404, _)) => return Err(Attempt::NotFound),
            Err(ureq::Error::Status(code, _)) if code < 500 => {
                return Err(Attempt::Failed(anyhow!("{url}: HTTP {code}")))
            }
            Err(ureq::Error::Status(code, _)) => format!("HTTP {code}"),
            Err(ureq::Error::Transport(t)) => match t.message() {
                Some(m) => format!("{}: {m}", t.kind()),
                None => t.kind().to_string(),
            },
        };
        if attempt >= ATTEMPTS {
            return Err(Attempt::Failed(anyhow!(
                "{url}: {error} (after {ATTEMPTS} attempts)"
            )));
        }
        log(&format!("{url}: {error}; retrying"));
        std::thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

fn digest_path(cached: &Path) -> PathBuf {
    let mut name = cached.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    cached.with_file_name(name)
}

pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        assert_eq!(
            Source::parse("https://h/x/a.run?token=1")
                .unwrap()
                .file_name()
                .unwrap(),
            "a.run"
        );
        assert!(Source::parse("https://h/x/").unwrap().file_name().is_err());
        assert!(Source::parse("https://h/x/..")
            .unwrap()
            .file_name()
            .is_err());
    }

    #[test]
    fn progress_texts() {
        let b = bar(50_000_000, Some(100_000_000), Duration::from_secs(5));
        assert!(
            b.starts_with("[###############               ]  50% 50 / 100 MB 10.0 MB/s"),
            "{b}"
        );
        assert_eq!(
            progress(50_000_000, Some(100_000_000), Duration::from_secs(5)),
            "download: 50% of 100 MB at 10.0 MB/s"
        );
        assert_eq!(
            bar(7_000_000, None, Duration::from_secs(1)),
            "7 MB 7.0 MB/s"
        );
    }

    /// Answers 404 for `/missing/...`, the body for anything else, and counts requests.
    fn serve(body: &'static [u8]) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader};
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

    #[test]
    fn falls_back_to_the_next_candidate_on_404_only() {
        let (port, hits) = serve(b"abc");
        let dir = std::env::temp_dir().join(format!("pnh-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let locks = Locks::new(&dir.join("lock"));
        let fetcher = Fetcher {
            cache_dir: &dir.join("cache"),
            locks: &locks,
            allow_unverified: false,
            stall_timeout: Duration::from_secs(5),
            log: &|_| {},
        };
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let url = |p: &str| {
            Source::Http(format!(
                "http://127.0.0.1:{port}/{p}/NVIDIA-Linux-x86_64-550.54.14.run"
            ))
        };
        let got = fetcher
            .obtain(&[url("missing"), url("tesla")], Some(abc))
            .unwrap();
        assert_eq!(std::fs::read(&got.path).unwrap(), b"abc");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Cached and verified: a second install asks no server.
        fetcher
            .obtain(&[url("missing"), url("tesla")], Some(abc))
            .unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        let empty_cache = dir.join("empty");
        let fresh = Fetcher {
            cache_dir: &empty_cache,
            ..fetcher
        };
        let err = fresh
            .obtain(&[url("missing"), url("missing")], Some(abc))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("runfile not found (404) at http://"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hashing() {
        let p = std::env::temp_dir().join(format!("pnh-hash-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(p).unwrap();
    }
}
