//! The `herald` binary as a user runs it: serve, flags, config precedence,
//! signals, and the publish/subscribe commands on every transport.

mod spawn;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts `herald serve` with the memory engine unless `args` names
    /// one, so that no test writes a store into the source tree.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(["--listen", "127.0.0.1:0"]);
        if !args.contains(&"--engine") {
            cmd.args(["--engine", "memory"]);
        }
        cmd.args(args)
            .env("HERALD_LOG", "warn")
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let (child, url) = spawn::listening(cmd);
        Server { child, url }
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "herald did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run herald")
}

fn publish(url: &str, topic: &str, data: &str, extra: &[&str]) -> String {
    let out = herald(&[&["publish", topic, data, "--server", url], extra].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn serve_prints_its_address_and_exits_0_on_sigterm() {
    let mut s = Server::start(&["--engine", "memory"], &[]);
    assert!(s.url.starts_with("http://127.0.0.1:"));
    let id = publish(&s.url, "t", r#"{"a":1}"#, &[]);
    assert!(!id.is_empty());
    let st = s.sigterm();
    assert!(st.success(), "{st:?}");
}

#[test]
fn clear_errors_for_bad_flags_and_busy_ports() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--listen", "nonsense"], "--listen"),
        (
            &["serve", "--listen", "127.0.0.1:0", "--engine", "mongo"],
            "--engine",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--keepalive", "soon"],
            "--keepalive",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--history", "0"],
            "--history",
        ),
        (&["serve", "--listen", "0.0.0.0:0"], "--insecure"),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                "/nonexistent.toml",
            ],
            "config",
        ),
        (&["serve", "--bogus-flag"], "bogus"),
        (
            &["serve", "--listen", "127.0.0.1:0", "--commit-delay", "5s"],
            "--commit-delay",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--workers", "0"],
            "--workers",
        ),
    ];
    for (args, needle) in cases {
        let out = herald(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = herald(&["serve", "--listen", &addr, "--engine", "memory"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    // With the default (durable) engine, a busy port fails before the store
    // is created: nothing is left behind.
    let cwd = std::env::temp_dir().join(format!("herald-busy-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &addr])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    assert!(
        !cwd.join("herald-data").exists(),
        "a failed start created the store"
    );
    let _ = std::fs::remove_dir_all(&cwd);
}

/// Events published while a subscriber was away, resumed from a cursor,
/// show how much history the server kept.
fn kept_history(url: &str) -> usize {
    let first = publish(url, "h", "0", &[]);
    for i in 1..=9 {
        publish(url, "h", &i.to_string(), &[]);
    }
    let out = Command::new(BIN)
        .args([
            "subscribe",
            "h",
            "--transport",
            "ws",
            "--since",
            &first,
            "--server",
            url,
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The first event delivered after a gap is the oldest kept.
    let oldest: usize = if line["event"] == "herald.gap" {
        let out = Command::new(BIN)
            .args([
                "subscribe",
                "h",
                "--transport",
                "poll",
                "--since",
                &first,
                "--server",
                url,
                "--count",
                "2",
            ])
            .output()
            .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines[1]["data"].as_u64().unwrap() as usize
    } else {
        1
    };
    10 - oldest
}

#[test]
fn config_file_then_environment_then_flags() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, "history = 2\nkeepalive = \"5s\"\n").unwrap();
    let f = file.to_str().unwrap();
    let s = Server::start(&["--config", f], &[]);
    assert_eq!(kept_history(&s.url), 2);
    let s = Server::start(&["--config", f], &[("HERALD_HISTORY", "3")]);
    assert_eq!(kept_history(&s.url), 3);
    let s = Server::start(
        &["--config", f, "--history", "4"],
        &[("HERALD_HISTORY", "3")],
    );
    assert_eq!(kept_history(&s.url), 4);
    std::fs::write(&file, "histroy = 2\n").unwrap();
    let out = herald(&["serve", "--listen", "127.0.0.1:0", "--config", f]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("histroy"));
}

/// `--data-dir` and `--commit-delay` with an engine that ignores them: the
/// server starts (a launcher may pass the same flags whatever the engine)
/// and says at start that they do nothing.
#[test]
fn embedded_only_flags_with_another_engine_are_named_at_start() {
    let mut s = Server::start(
        &[
            "--engine",
            "memory",
            "--data-dir",
            "/nonexistent/herald-data",
            "--commit-delay",
            "5ms",
        ],
        &[("HERALD_LOG", "warn")],
    );
    assert_eq!(kept_history(&s.url), 9, "the server serves");
    s.sigterm();
    let mut err = String::new();
    std::io::Read::read_to_string(s.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("--data-dir is ignored"), "{err}");
    assert!(err.contains("--commit-delay is ignored"), "{err}");
    assert!(!std::path::Path::new("/nonexistent/herald-data").exists());
}

/// The runtime's worker threads of a running server, by their name, once
/// that many have started (they start beside the first accepts); `None` if
/// the count stays different for 5 s.
fn worker_threads(pid: u32, want: usize) -> Option<usize> {
    let count = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "tokio-rt-worker")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = count();
        if n == want {
            // Still `want` a moment later: no more are on their way.
            std::thread::sleep(Duration::from_millis(300));
            return Some(count());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_flag_file_and_environment_size_the_runtime() {
    let s = Server::start(&["--workers", "1"], &[]);
    assert_eq!(worker_threads(s.child.id(), 1), Some(1));
    assert_eq!(kept_history(&s.url), 9, "a one-thread server serves");
    let s = Server::start(&[], &[("HERALD_WORKERS", "3")]);
    assert_eq!(worker_threads(s.child.id(), 3), Some(3));
    let dir = std::env::temp_dir().join(format!("herald-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, "workers = 2\n").unwrap();
    let s = Server::start(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(worker_threads(s.child.id(), 2), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn subscribe_command_on_every_transport() {
    let s = Server::start(&[], &[]);
    for transport in ["sse", "ws", "poll"] {
        let topic = format!("cli/{transport}");
        let mut sub = Command::new(BIN)
            .args([
                "subscribe",
                &topic,
                "--transport",
                transport,
                "--count",
                "2",
                "--server",
                &s.url,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Give the subscriber time to connect; publishes before that are not "from now".
        std::thread::sleep(Duration::from_millis(400));
        publish(&s.url, &topic, r#"{"n":1}"#, &["--event", "tick"]);
        publish(&s.url, &topic, "plain text", &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sub.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "{transport}: subscriber did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(sub.stdout.as_mut().unwrap(), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{transport}: {out}");
        assert_eq!(lines[0]["event"], "tick", "{transport}");
        let first = &lines[0]["data"];
        assert!(
            first == &serde_json::json!({"n": 1}) || first == r#"{"n":1}"#,
            "{transport}: {first}"
        );
        assert_eq!(lines[1]["data"], "plain text", "{transport}");
    }
}

#[test]
fn sigterm_ends_streams_so_clients_reconnect() {
    let mut s = Server::start(&[], &[]);
    let mut sub = Command::new(BIN)
        .args(["subscribe", "bye", "--server", &s.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    assert!(s.sigterm().success());
    assert!(t.elapsed() < Duration::from_secs(6));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the subscriber's stream was not ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(sub.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("herald.disconnect") && out.contains("shutdown"),
        "{out}"
    );
}
