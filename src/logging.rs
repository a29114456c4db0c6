//! One line per event, tagged with the container, to syslog (facility
//! daemon, ident `pve-nvidia-hook`) and to stderr, which Proxmox shows in the
//! start task's log. Without a syslog socket, stderr alone.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

use crate::vmid::Vmid;

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

struct Logger {
    syslog: Option<Mutex<Syslog>>,
    timestamps: bool,
    /// Bytes logged so far by this process: see [`VOLUME`].
    written: AtomicUsize,
    /// The line that says the log ends here was written.
    ended: AtomicBool,
    /// stderr is the journal (a systemd unit's): each line carries its
    /// priority, and syslog, which would repeat it there, is not written.
    journal: bool,
}

/// The longest line logged: a line is one event, and what an event quotes
/// from a container (a program's output, a list of names) is cut here.
pub const LINE_MAX: usize = 64 * 1024;
/// What one process (a hook run, an install) logs at most: a real install
/// logs a few KiB. Past it, only warnings and errors, up to [`VOLUME_HARD`],
/// then nothing but one line that says so.
const VOLUME: usize = 1 << 20;
const VOLUME_HARD: usize = VOLUME + (256 << 10);

static VMID: OnceLock<Vmid> = OnceLock::new();
static INSTALLED: OnceLock<()> = OnceLock::new();

pub struct Options {
    pub verbose: bool,
    /// Quiet by default (warnings only): for `status`, `verify` and
    /// `doctor`, whose answer is their output.
    pub quiet: bool,
    /// Prefix stderr lines with a UTC timestamp (the background install's
    /// stderr is a log file).
    pub timestamps: bool,
}

pub fn init(opts: Options) {
    let formatter = Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: "pve-nvidia-hook".into(),
        pid: std::process::id(),
    };
    let journal = stderr_is_journal();
    let logger = Logger {
        syslog: if journal {
            None
        } else {
            syslog::unix(formatter).ok().map(Mutex::new)
        },
        timestamps: opts.timestamps,
        written: AtomicUsize::new(0),
        ended: AtomicBool::new(false),
        journal,
    };
    let level = match (opts.verbose, opts.quiet) {
        (true, _) => LevelFilter::Debug,
        (false, true) => LevelFilter::Warn,
        (false, false) => LevelFilter::Info,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
        let _ = INSTALLED.set(());
    }
}

/// Every later line names this container.
pub fn set_vmid(vmid: Vmid) {
    let _ = VMID.set(vmid);
}

/// Reports a fatal error through the logger when there is one.
/// `CT <vmid>: <text>`, once: an error may already name its container.
pub fn scoped(vmid: Vmid, text: &str) -> String {
    let prefix = format!("CT {vmid}: ");
    // "CT 102 is on node pve2: ..." names the container already.
    if text.starts_with(&prefix) || text.starts_with(&format!("CT {vmid} ")) {
        text.to_string()
    } else {
        prefix + text
    }
}

pub fn report_error(err: &anyhow::Error) {
    if INSTALLED.get().is_some() {
        log::error!("{err:#}");
    } else {
        eprintln!("pve-nvidia-hook: error: {}", sanitize(&format!("{err:#}")));
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = bounded(&record.args().to_string(), LINE_MAX);
        let mut line = match VMID.get() {
            Some(vmid) => scoped(*vmid, &text),
            None => text,
        };
        let total = self.written.fetch_add(line.len(), Ordering::Relaxed) + line.len();
        match admit(total, record.level() <= Level::Warn) {
            Admit::Line => {}
            Admit::Drop if !self.ended.swap(true, Ordering::Relaxed) => {
                line = format!(
                    "this process has logged over {} KiB; later lines are left out",
                    VOLUME >> 10
                );
            }
            Admit::Drop => return,
        }
        if let Some(syslog) = &self.syslog {
            if let Ok(mut s) = syslog.lock() {
                let _ = match record.level() {
                    Level::Error => s.err(&line),
                    Level::Warn => s.warning(&line),
                    Level::Info => s.info(&line),
                    Level::Debug | Level::Trace => s.debug(&line),
                };
            }
        }
        let level = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        let stamp = if self.timestamps {
            format!("{} ", utc_now())
        } else {
            String::new()
        };
        let priority = if self.journal {
            journal_priority(record.level())
        } else {
            ""
        };
        // One write per line: lines of processes that share the log file
        // (the install's) are never interleaved.
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("{priority}{stamp}pve-nvidia-hook: {level}{line}\n").as_bytes());
    }

    fn flush(&self) {}
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Line,
    Drop,
}

/// Whether a line that brings this process's log to `total` bytes is
/// written: within [`VOLUME`] every line, past it warnings and errors up to
/// [`VOLUME_HARD`].
fn admit(total: usize, serious: bool) -> Admit {
    if total <= VOLUME || (serious && total <= VOLUME_HARD) {
        Admit::Line
    } else {
        Admit::Drop
    }
}

/// systemd names the stream it connects a unit's stderr to in
/// `JOURNAL_STREAM` (`<device>:<inode>`); only when stderr is that very
/// stream (not a file or pipe a child of the unit was given) is it the
/// journal.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr())
        .is_ok_and(|st| dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino))
}

/// The priority prefix journald reads on a stream line (`SyslogLevelPrefix`).
fn journal_priority(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// One event, one line, and nothing a terminal acts on: line breaks become
/// ` | `, every other control character (escape sequences, backspace, C1
/// controls) and every bidirectional override (which would show a line in
/// another order than it is) is written as its escape. Much of what is
/// logged comes from a container (program output, file names, package
/// names).
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => {}
            '\n' => out.push_str(" | "),
            c if c.is_control() || is_bidi_control(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// [`sanitize`]d, and at most `max` bytes: for text from a container that
/// is kept (results, what a node publishes) or printed as JSON.
pub fn bounded(text: &str, max: usize) -> String {
    let mut clean = sanitize(text);
    if clean.len() > max {
        let mut end = max.saturating_sub(" …".len());
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
        clean.push_str(" …");
    }
    clean
}

/// How much of a detail is kept or shown.
pub const DETAIL_MAX: usize = 2048;

/// A size for a person: `83 KB`, `412 MB`, `4.2 GB` (powers of 1000).
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1_000_000 => format!("{} KB", b.div_ceil(1000)),
        b if b < 10_000_000_000 => format!("{} MB", b.div_ceil(1_000_000)),
        b => format!("{:.1} GB", b as f64 / 1e9),
    }
}

/// A URL as it may be logged: no `user:password@`, no query string or
/// fragment (where tokens live).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = match rest.split_once('/') {
        Some((authority, path)) => format!(
            "{}/{path}",
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host)
        ),
        None => rest
            .rsplit_once('@')
            .map_or(rest, |(_, host)| host)
            .to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest,
    }
}

/// `2026-11-25T18:00:00Z`, without a date crate (civil-from-days).
fn utc_now() -> String {
    utc(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

/// A time for a person and a log: `2026-11-27T14:03:00Z` (Howard
/// Hinnant's days-to-civil, proleptic Gregorian).
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_said_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(utc(1_798_761_600), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn nothing_a_terminal_acts_on() {
        assert_eq!(sanitize("a\r\nb"), "a | b");
        assert_eq!(
            sanitize("\x1b]0;pwned\x07\x1b[2J"),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"
        );
        assert_eq!(
            sanitize("x\u{9b}31m\u{8}\u{7f}"),
            "x\\u{9b}31m\\u{8}\\u{7f}"
        );
        assert_eq!(sanitize("tab\there"), "tab\\there");
        assert_eq!(sanitize("plain ünïcode"), "plain ünïcode");
        assert_eq!(
            sanitize("evil\u{202e}txt.exe\u{2066}"),
            "evil\\u{202e}txt.exe\\u{2066}"
        );
    }

    #[test]
    fn a_process_logs_a_bounded_volume() {
        assert_eq!(admit(1000, false), Admit::Line);
        assert_eq!(admit(VOLUME + 1, false), Admit::Drop);
        assert_eq!(admit(VOLUME + 1, true), Admit::Line);
        assert_eq!(admit(VOLUME_HARD + 1, true), Admit::Drop);
        let line = bounded(&"x".repeat(10 << 20), LINE_MAX);
        assert!(line.len() <= LINE_MAX);
    }

    #[test]
    fn bounded_details() {
        assert_eq!(bounded("short\n", 100), "short | ");
        let long = bounded(&"é".repeat(5000), DETAIL_MAX);
        assert!(
            long.len() <= DETAIL_MAX && long.ends_with(" …"),
            "{}",
            long.len()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size(83_484), "84 KB");
        assert_eq!(size(412_000_000), "412 MB");
        assert_eq!(size(4_200_000_000), "4200 MB");
        assert_eq!(size(12_300_000_000), "12.3 GB");
    }

    #[test]
    fn urls_lose_credentials_and_queries() {
        for (url, shown) in [
            (
                "https://user:pw@host/p/a.run?token=1#x",
                "https://host/p/a.run",
            ),
            ("https://host/a.run", "https://host/a.run"),
            ("http://u@host:8080/a.run", "http://host:8080/a.run"),
            ("https://host?secret", "https://host"),
            ("/srv/a.run", "/srv/a.run"),
            ("file:///srv/a.run", "file:///srv/a.run"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
