//! Shared test plumbing: temporary directories, running the binary, and a
//! small HTTP server on 127.0.0.1 that counts requests per path.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const BIN: &str = env!("CARGO_BIN_EXE_pve-nvidia-hook");

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pnh-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A character device node (root only), its folder made first.
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let made = Command::new("mknod")
        .args(["-m", &format!("{mode:o}")])
        .arg(path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(made.success(), "mknod {}", path.display());
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The command exited with `code` and said `needle` on stderr.
pub fn expect_exit(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "{}",
        text(out)
    );
}

/// The command said `needle` on stderr.
pub fn said(out: &Output, needle: &str) {
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "{needle}: {}",
        text(out)
    );
}

/// The binary with its configuration and, first on PATH, `path_prefix`.
pub fn command(args: &[&str], path_prefix: Option<&Path>, config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("PVE_NVIDIA_HOOK_CONFIG", config)
        .env_remove("RUST_BACKTRACE");
    if let Some(prefix) = path_prefix {
        let path = format!(
            "{}:{}",
            prefix.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path);
    }
    cmd
}

pub fn run(args: &[&str], path_prefix: Option<&Path>, config: &Path) -> Output {
    command(args, path_prefix, config).output().unwrap()
}

pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Serves files from a directory over HTTP/1.0 on 127.0.0.1, counting GET
/// requests per path. Stops when dropped.
pub struct FileServer {
    pub port: u16,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    pub fn start(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, c, s) = (root.to_path_buf(), Arc::clone(&counts), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, c) = (root.clone(), Arc::clone(&c));
                std::thread::spawn(move || serve(stream, &root, &c));
            }
        });
        FileServer { port, counts, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn count(&self, path: &str) -> usize {
        *self
            .counts
            .lock()
            .unwrap()
            .get(&format!("/{path}"))
            .unwrap_or(&0)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut stream: TcpStream, root: &Path, counts: &Mutex<HashMap<String, usize>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) <= 2 {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    // A query string (a token) is not part of the file's name.
    let path = path.split('?').next().unwrap_or("/").to_string();
    *counts.lock().unwrap().entry(path.clone()).or_default() += 1;
    // Faults on demand: /fault/<kind>/<file>.
    let (fault, served) = match path.strip_prefix("/fault/").and_then(|p| p.split_once('/')) {
        Some((kind, rest)) => (Some(kind.to_string()), format!("/{rest}")),
        None => (None, path.clone()),
    };
    let file = root.join(served.trim_start_matches('/'));
    match fault.as_deref() {
        Some("500") => {
            let _ = stream
                .write_all(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        Some("hang") => {
            // Bounded: the test's client gives up long before this.
            std::thread::sleep(std::time::Duration::from_secs(20));
            return;
        }
        // Announces 10 GB and sends nothing.
        Some("huge") => {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10000000000\r\n\r\n");
            std::thread::sleep(std::time::Duration::from_secs(20));
            return;
        }
        // No length, and bytes without end (bounded: 64 MB).
        Some("endless") => {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..64 {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
            return;
        }
        // A byte every 100 ms: never stalls, never ends (bounded: 20 s).
        Some("drip") => {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n");
            for _ in 0..200 {
                if stream.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return;
        }
        // The file, after 4 s: a download that takes its time.
        Some("slow") => std::thread::sleep(std::time::Duration::from_secs(4)),
        Some("truncate") => {
            if let Ok(body) = std::fs::read(&file) {
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..body.len() / 2]);
            }
            return;
        }
        _ => {}
    }
    let response = match std::fs::read(&file) {
        Ok(body) if !path.contains("..") => {
            let mut r = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        }
        _ => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    };
    let _ = stream.write_all(&response);
}

/// A process that holds an exclusive flock on `file` (flock(1) takes it
/// itself; `-o`: the `sleep` it runs does not inherit it), returned once
/// the lock is held for sure: a second flock cannot take it.
pub fn flock_holder(file: &Path) -> std::process::Child {
    let holder = Command::new("flock")
        .args(["-x", "-o"])
        .arg(file)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("flock")
        .args(["-n", "-s"])
        .arg(file)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    holder
}

pub fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found on PATH"))
}

/// `program` where the tool looks when no stand-in is on the caller's PATH
/// (its fixed PATH), as `process::find_program` does.
pub fn find_on_safe_path(program: &str) -> Option<PathBuf> {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
