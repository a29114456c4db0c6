//! Downloads, bounded in every way a server could stretch them: bytes (an
//! absolute cap, and the announced length checked against it and against
//! the cache's free space before anything is written), time (a stall limit
//! per read and a total per download), attempts (three), and trust (an
//! https source is never followed to plain http, for the runfile or its
//! `.sha256sum`).

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use super::cache::Slot;
use super::hex_digest;
use crate::logging::{redact_url, size};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection or a read that stalls this long is abandoned.
    pub stall: Duration,
    /// One download (one attempt) takes at most this long.
    pub total: Duration,
    pub max_bytes: u64,
}

pub enum Attempt {
    /// 404, or 403: NVIDIA's datacenter path answers 403 for a file it does
    /// not have, so either sends the fetcher on to the next source.
    NotFound,
    Failed(anyhow::Error),
}

/// An answer that says the file is not there (see [`Attempt::NotFound`]).
fn absent(code: u16) -> bool {
    matches!(code, 403 | 404)
}

const ATTEMPTS: u32 = 3;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const BAR_EVERY: Duration = Duration::from_millis(200);

pub fn agent(limits: &Limits, https_only: bool) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(limits.stall)
        .timeout_read(limits.stall)
        // Also refuses a redirect from https to http.
        .https_only(https_only)
        .try_proxy_from_env(true)
        .build()
}

/// NVIDIA's `<runfile>.sha256sum` (`<hex>  <name>`), None when absent
/// beside a runfile that exists (the datacenter path publishes none);
/// [`Attempt::NotFound`] when the runfile itself is not there either, so
/// that the next source is tried.
pub fn published_digest(
    agent: &ureq::Agent,
    url: &str,
    log: &dyn Fn(&str),
) -> Result<Option<String>, Attempt> {
    let sum_url = format!("{url}.sha256sum");
    let response = match get_with_retries(agent, &sum_url, log) {
        Ok(response) => response,
        Err(Attempt::NotFound) => {
            return match agent.head(url).call() {
                Err(ureq::Error::Status(code, _)) if absent(code) => Err(Attempt::NotFound),
                // Anything else is the download's to report.
                _ => Ok(None),
            };
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    response
        .into_reader()
        .take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", redact_url(&sum_url)))
        .map_err(Attempt::Failed)?;
    let digest = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Attempt::Failed(anyhow!(
            "{} does not hold a sha256 digest",
            redact_url(&sum_url)
        )));
    }
    Ok(Some(digest))
}

/// Whether `url` exists (200: yes, 404 or 403: no), asked once.
pub fn exists(agent: &ureq::Agent, url: &str) -> Result<bool> {
    match agent.head(url).call() {
        Ok(_) => Ok(true),
        Err(ureq::Error::Status(code, _)) if absent(code) => Ok(false),
        Err(ureq::Error::Status(code, _)) => Err(anyhow!("{}: HTTP {code}", redact_url(url))),
        Err(ureq::Error::Transport(t)) => Err(anyhow!(
            "{}: {}",
            redact_url(url),
            t.message()
                .map(str::to_owned)
                .unwrap_or_else(|| t.kind().to_string())
        )),
    }
}

/// Streams `url` into a temporary name beside `slot`, hashing on the way,
/// refuses it unless it has the `expected` digest, then moves it into
/// place; the temporary file is removed on any failure. Its digest and size.
pub fn download(
    agent: &ureq::Agent,
    url: &str,
    slot: &Slot,
    expected: Option<&str>,
    limits: &Limits,
    log: &dyn Fn(&str),
) -> Result<(String, u64), Attempt> {
    let shown = redact_url(url);
    let partial = slot.partial();
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            std::thread::sleep(backoff(attempt));
        }
        let response = get_with_retries(agent, url, log)?;
        let result = stream(response, &shown, &partial, slot, limits, log);
        match result {
            Ok((actual, _)) if expected.is_some_and(|e| e != actual) => {
                let _ = std::fs::remove_file(&partial);
                return Err(Attempt::Failed(anyhow!(
                    "sha256 mismatch for {shown}: expected {}, got {actual}; the file was discarded",
                    expected.unwrap_or_default()
                )));
            }
            Ok((actual, size)) => {
                return slot
                    .commit(&partial, &actual)
                    .map(|()| (actual, size))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&partial);
                        Attempt::Failed(e)
                    })
            }
            // Over a limit: trying again changes nothing.
            Err(Stream::Refused(e)) => {
                let _ = std::fs::remove_file(&partial);
                return Err(Attempt::Failed(e));
            }
            Err(Stream::BrokeOff(e)) => {
                let _ = std::fs::remove_file(&partial);
                log(&format!(
                    "download of {shown} broke off (attempt {attempt}/{ATTEMPTS}): {e:#}"
                ));
                last_error = Some(e);
            }
        }
    }
    Err(Attempt::Failed(
        last_error.unwrap_or_else(|| anyhow!("download failed")),
    ))
}

enum Stream {
    /// Against a limit or the cache: final.
    Refused(anyhow::Error),
    /// The connection failed part-way: worth another attempt.
    BrokeOff(anyhow::Error),
}

fn stream(
    response: ureq::Response,
    shown: &str,
    partial: &std::path::Path,
    slot: &Slot,
    limits: &Limits,
    log: &dyn Fn(&str),
) -> Result<(String, u64), Stream> {
    let refused = Stream::Refused;
    let total: Option<u64> = response
        .header("Content-Length")
        .and_then(|l| l.parse().ok());
    if let Some(total) = total {
        if total > limits.max_bytes {
            return Err(refused(anyhow!(
                "{shown} is {}, over max_download_mb ({}); refused before writing anything",
                size(total),
                size(limits.max_bytes)
            )));
        }
        let free = free_bytes(&slot.dir).map_err(refused)?;
        if total > free {
            return Err(refused(anyhow!(
                "{shown} is {} but {} has {} free; refused before writing anything",
                size(total),
                slot.dir.display(),
                size(free)
            )));
        }
    }
    let _ = std::fs::remove_file(partial);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .with_context(|| format!("creating {}", partial.display()))
        .map_err(refused)?;
    let mut reader = response.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    let started = Instant::now();
    let mut last_report = started;
    // A person watching gets a bar; logs get a line every few seconds.
    let tty = std::io::stderr().is_terminal();
    loop {
        crate::cancel::check().map_err(|c| refused(c.into()))?;
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {shown}"))
            .map_err(Stream::BrokeOff)?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > limits.max_bytes {
            return Err(refused(anyhow!(
                "{shown} sent more than max_download_mb ({}); abandoned",
                size(limits.max_bytes)
            )));
        }
        if started.elapsed() > limits.total {
            return Err(refused(anyhow!(
                "{shown} took longer than download_max_secs ({}s); abandoned after {}",
                limits.total.as_secs(),
                size(done)
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", partial.display()))
            .map_err(refused)?;
        if tty && last_report.elapsed() >= BAR_EVERY {
            last_report = Instant::now();
            eprint!("\r{}", bar(done, total, started.elapsed()));
        } else if !tty && last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            log(&progress(done, total, started.elapsed()));
        }
    }
    if tty {
        eprintln!("\r{}", bar(done, total, started.elapsed()));
    }
    if let Some(total) = total {
        if done != total {
            return Err(Stream::BrokeOff(anyhow!(
                "{shown}: got {done} of {total} bytes"
            )));
        }
    }
    out.sync_all()
        .with_context(|| format!("writing {}", partial.display()))
        .map_err(refused)?;
    Ok((hex_digest(hasher), done))
}

fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    let st =
        rustix::fs::statvfs(dir).with_context(|| format!("free space in {}", dir.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
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

fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1 << (attempt - 1).min(4))
}

/// A request with bounded retries: 404 and 403 are answers, other 4xx and a
/// redirect to plain http are final, 5xx and transport errors are retried
/// with backoff.
fn get_with_retries(
    agent: &ureq::Agent,
    url: &str,
    log: &dyn Fn(&str),
) -> Result<ureq::Response, Attempt> {
    let shown = redact_url(url);
    let mut attempt = 1;
    loop {
        let error = match agent.get(url).call() {
            Ok(r) => return Ok(r),
            Err(ureq::Error::Status(code, _)) if absent(code) => return Err(Attempt::NotFound),
            Err(ureq::Error::Status(code, _)) if code < 500 => {
                return Err(Attempt::Failed(anyhow!("{shown}: HTTP {code}")))
            }
            Err(ureq::Error::Status(code, _)) => format!("HTTP {code}"),
            Err(ureq::Error::Transport(t))
                if t.kind() == ureq::ErrorKind::InsecureRequestHttpsOnly =>
            {
                return Err(Attempt::Failed(anyhow!(
                    "{shown}: redirected to plain http; refused (an https source stays https)"
                )))
            }
            Err(ureq::Error::Transport(t)) => match t.message() {
                Some(m) => format!("{}: {m}", t.kind()),
                None => t.kind().to_string(),
            },
        };
        if attempt >= ATTEMPTS {
            return Err(Attempt::Failed(anyhow!(
                "{shown}: {error} (after {ATTEMPTS} attempts)"
            )));
        }
        log(&format!("{shown}: {error}; retrying"));
        std::thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_source_is_never_followed_to_plain_http() {
        // A redirect target is a request like any other: the https-only
        // agent of an https source refuses it before connecting.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let limits = Limits {
            stall: Duration::from_secs(2),
            total: Duration::from_secs(2),
            max_bytes: 1,
        };
        let err = match get_with_retries(
            &agent(&limits, true),
            &format!("http://127.0.0.1:{port}/a.run"),
            &|_| {},
        ) {
            Err(Attempt::Failed(e)) => e.to_string(),
            _ => panic!("a plain http request was made"),
        };
        assert!(err.contains("redirected to plain http; refused"), "{err}");
        assert!(listener.accept().is_err(), "nothing connected");
    }

    /// Answers each request on `listener` with the status `answer` gives
    /// for its request line.
    fn serve(listener: std::net::TcpListener, answer: fn(&str) -> u16) {
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut reader, &mut line);
                loop {
                    let mut header = String::new();
                    match std::io::BufRead::read_line(&mut reader, &mut header) {
                        Ok(n) if n > 2 => {}
                        _ => break,
                    }
                }
                let code = answer(&line);
                let _ = std::io::Write::write_all(
                    &mut &stream,
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
    }

    #[test]
    fn no_published_digest_beside_a_runfile_that_exists() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        serve(listener, |line| {
            if line.contains("/tesla/") {
                // NVIDIA's datacenter path: 403 for what it does not have.
                403
            } else if line.contains(".sha256sum") || line.contains("/gone.run") {
                404
            } else {
                200
            }
        });
        let limits = Limits {
            stall: Duration::from_secs(5),
            total: Duration::from_secs(5),
            max_bytes: 1,
        };
        let agent = agent(&limits, false);
        assert!(matches!(
            published_digest(&agent, &format!("{base}/here.run"), &|_| {}),
            Ok(None)
        ));
        assert!(matches!(
            published_digest(&agent, &format!("{base}/gone.run"), &|_| {}),
            Err(Attempt::NotFound)
        ));
        // Not a missing digest to pin, but a missing runfile: the next source.
        assert!(matches!(
            published_digest(&agent, &format!("{base}/tesla/gone.run"), &|_| {}),
            Err(Attempt::NotFound)
        ));
        assert!(!exists(&agent, &format!("{base}/tesla/gone.run")).unwrap());
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
}
