//! A throw-away `redis-server` for tests: started on a free loopback port
//! in a fresh folder, stopped (by its own pid) and removed on drop. Tests
//! never touch a Redis they did not start.
//!
//! The binary is `redis-server` on `PATH`, or `$HERALD_REDIS_SERVER`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `redis-server` process this test owns. Shareable (`Arc`): stopping
/// and restarting take `&self`.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Mutex<Option<Child>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn binary() -> String {
    std::env::var("HERALD_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk (a restart loses every key).
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Starts a server with an append-only file synced on every write, so a
    /// restart keeps every acknowledged write.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the redis test folder");
        let mut server = RedisServer {
            port: 0,
            dir,
            persistent,
            child: Mutex::new(None),
        };
        // A free port can be taken between our probe and redis binding it: retry.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start {} (is it installed?)", binary());
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) -> bool {
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary()));
        *self.child() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            let mut child = self.child();
            if let Some(Ok(Some(_))) = child.as_mut().map(Child::try_wait) {
                *child = None;
                return false; // exited: most likely the port was taken
            }
            drop(child);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .map(|n| buf[..n].starts_with(b"+PONG"))
                .unwrap_or(false)
    }

    /// `127.0.0.1:PORT`, where the server listens (and listens again after a
    /// restart).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, its pid only) and waits for it to exit.
    pub fn stop(&self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and folder (a persistent server
    /// comes back with its data).
    pub fn restart(&self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// Sends one command (inline protocol, arguments without spaces) and
    /// returns the raw reply, for checks such as `PUBSUB SHARDCHANNELS`.
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(self.addr()).expect("connect to redis");
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let mut line = args.join(" ");
        line.push_str("\r\n");
        s.write_all(line.as_bytes()).expect("write to redis");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the reply stops coming (replies here are small).
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
