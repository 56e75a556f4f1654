//! The `herald` binary as a user starts it, for every test that runs it:
//!
//! - [`listening`]: spawn a `herald serve ...` and read the address it prints
//!   on its first line (`herald listening on URL`);
//! - [`ServeProcess`]: that process with its address and a client, killed on
//!   drop, with its resident memory and signals;
//! - [`Herald`]: a `herald serve` on a data dir, for the tests that kill it,
//!   restart it on the same dir, or expect it to refuse to start (bounded in
//!   time, its stderr captured);
//! - [`StderrLog`]: what a process writes to stderr, read as it comes;
//! - [`eventually`], [`wait_until`]: waits on a condition with a deadline,
//!   where a test would otherwise sleep and hope;
//! - [`TempDir`]: a folder removed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use herald_client::Client;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// How long a start (recovery included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Spawns `cmd` (a `herald serve ...`) with its stdout piped and returns the
/// child with the URL of its first line, `herald listening on URL`.
pub fn listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn herald");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("herald listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// A running `herald serve`, killed (SIGKILL) on drop.
pub struct ServeProcess {
    pub child: Child,
    /// The URL it printed: `http://127.0.0.1:PORT` or `https://...`.
    pub base: String,
    /// The socket address of `base`.
    pub addr: SocketAddr,
    /// A client for `http://{addr}` (of no use when the server speaks TLS).
    pub client: Client,
}

impl ServeProcess {
    /// Spawns `cmd` (a `herald serve ... --listen 127.0.0.1:0`) and waits
    /// for its listening line.
    pub fn spawn(cmd: Command) -> ServeProcess {
        let (child, base) = listening(cmd);
        let addr = base
            .split_once("://")
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("{base}"))
            .parse()
            .expect("address");
        ServeProcess {
            child,
            client: Client::new(&format!("http://{addr}")).unwrap(),
            base,
            addr,
        }
    }

    /// `herald serve --listen 127.0.0.1:0 --engine memory ARGS` with
    /// `HERALD_LOG=warn` and its stderr discarded.
    pub fn memory(args: &[&str]) -> ServeProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "memory"])
            .args(args)
            .env("HERALD_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        ServeProcess::spawn(cmd)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }

    /// The sample `name` of its `/metrics` (see [`sample`]).
    pub fn metric(&self, name: &str) -> Option<f64> {
        sample(&metrics_text(self.addr), name)
    }

    /// Sends `signal` (a `kill` name: `TERM`, `HUP`, ...).
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// Asks for a graceful stop with SIGTERM and waits (at most `limit`)
    /// for the exit status.
    pub fn sigterm(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        wait_exit(&mut self.child, limit)
    }

    /// Starts reading its stderr (spawned with `Stdio::piped()`).
    pub fn capture_stderr(&mut self) -> StderrLog {
        StderrLog::capture(&mut self.child)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/metrics` text of the server on `addr` (one plain HTTP/1.1 `GET`,
/// read to the end of the connection); empty if it does not answer.
pub fn metrics_text(addr: SocketAddr) -> String {
    use std::io::Write;
    let Ok(mut sock) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = sock.read_to_string(&mut text);
    text
}

/// The value of the sample `name` (labels included, as printed, e.g.
/// `herald_connections{transport="sse"}`) in a `/metrics` text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What a child writes to stderr, read on a thread of its own as it comes
/// (a debug log never fills the pipe and blocks the server).
pub struct StderrLog {
    text: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StderrLog {
    /// Takes `child`'s piped stderr and starts reading it.
    pub fn capture(child: &mut Child) -> StderrLog {
        let mut pipe = child.stderr.take().expect("a piped stderr");
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        StderrLog {
            text,
            reader: Some(reader),
        }
    }

    /// A log with nothing in it (for a process whose log was taken).
    fn empty() -> StderrLog {
        StderrLog {
            text: Arc::default(),
            reader: None,
        }
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.text.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (at most `limit`) until the log contains `needle`; false if it
    /// did not come.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.text().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Everything the child wrote, once its stderr has closed (it exited).
    pub fn into_text(mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.text()
    }
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/<pid>/status")
}

/// Sends `signal` (a `kill` name: `TERM`, `HUP`, ...) to `pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
}

/// Waits (at most `limit`) for `child` to exit.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "herald did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it holds, for at most `limit`; panics naming `what`
/// otherwise.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for threads without a runtime.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `herald serve --engine embedded --data-dir DIR`.
pub struct Herald {
    child: Child,
    pub url: String,
    stderr: StderrLog,
}

/// A start that did not print the listening line.
#[derive(Debug)]
pub struct Refused {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

fn command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Herald {
    /// Starts Herald on `data_dir` (the embedded engine is the default);
    /// panics with its stderr if it does not come up.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Herald {
        match Herald::try_start(data_dir, extra) {
            Ok(h) => h,
            Err(r) => panic!("herald did not start ({:?}):\n{}", r.status, r.stderr),
        }
    }

    /// Starts Herald, or returns how it refused (bounded in time).
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Herald, Refused> {
        Herald::try_start_with_env(data_dir, extra, &[])
    }

    /// [`Herald::try_start`] with extra environment variables.
    pub fn try_start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Herald, Refused> {
        let mut cmd = command(data_dir, extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn herald");
        let stderr = StderrLog::capture(&mut child);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        match line.trim().strip_prefix("herald listening on ") {
            Some(url) => Ok(Herald {
                child,
                url: url.to_owned(),
                stderr,
            }),
            None => {
                let deadline = Instant::now() + Duration::from_secs(10);
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break Some(st),
                        _ if Instant::now() > deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break None;
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                // The child has exited (or was killed): read its stderr to
                // the end.
                Err(Refused {
                    status,
                    stderr: stderr.into_text(),
                })
            }
        }
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Asks for a graceful stop with SIGTERM; returns the exit status.
    pub fn sigterm(mut self) -> ExitStatus {
        self.stop()
    }

    fn stop(&mut self) -> ExitStatus {
        signal_pid(self.child.id(), "TERM");
        wait_exit(&mut self.child, Duration::from_secs(20))
    }

    /// [`Herald::sigterm`], and what it wrote to stderr (read to the end).
    pub fn sigterm_with_stderr(mut self) -> (ExitStatus, String) {
        let status = self.stop();
        let stderr = std::mem::replace(&mut self.stderr, StderrLog::empty());
        (status, stderr.into_text())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS` in `/proc/<pid>/status`), in
    /// bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("herald-test-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
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
