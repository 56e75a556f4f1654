//! A real `herald serve` process on a loopback port, for the tests that
//! kill it, restart it on the same data dir, or expect it to refuse to start.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// How long a start (recovery included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `herald serve --engine embedded --data-dir DIR`.
pub struct Herald {
    child: Child,
    pub url: String,
    stderr: Arc<Mutex<String>>,
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
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
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
                // Let the stderr reader see the end of the pipe.
                std::thread::sleep(Duration::from_millis(50));
                let stderr = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                Err(Refused { status, stderr })
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
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "herald did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Herald::sigterm`], and what it wrote to stderr.
    pub fn sigterm_with_stderr(self) -> (ExitStatus, String) {
        let stderr = self.stderr.clone();
        let status = self.sigterm();
        // Let the stderr reader see the end of the pipe.
        std::thread::sleep(Duration::from_millis(50));
        let text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        (status, text)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS` in `/proc/<pid>/status`), in
    /// bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
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
