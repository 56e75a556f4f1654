//! The `herald` binary as a user runs it: serve, flags, config precedence,
//! signals, and the publish/subscribe commands on every transport.

mod process;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use process::{ServeProcess, BIN};

/// How long a server has to stop on SIGTERM.
const STOP: Duration = Duration::from_secs(10);

/// Starts `herald serve` with the memory engine unless `args` names one, so
/// that no test writes a store into the source tree.
fn start(args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
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
    ServeProcess::spawn(cmd)
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
    let mut s = start(&["--engine", "memory"], &[]);
    assert!(s.base.starts_with("http://127.0.0.1:"));
    let id = publish(&s.base, "t", r#"{"a":1}"#, &[]);
    assert!(!id.is_empty());
    let st = s.sigterm(STOP);
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
    let s = start(&["--config", f], &[]);
    assert_eq!(kept_history(&s.base), 2);
    let s = start(&["--config", f], &[("HERALD_HISTORY", "3")]);
    assert_eq!(kept_history(&s.base), 3);
    let s = start(
        &["--config", f, "--history", "4"],
        &[("HERALD_HISTORY", "3")],
    );
    assert_eq!(kept_history(&s.base), 4);
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
    let mut s = start(
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
    assert_eq!(kept_history(&s.base), 9, "the server serves");
    s.sigterm(STOP);
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
            // Still `want` a moment later: no more are on their way (this
            // sleep is the check, not a wait for something to happen).
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
    let s = start(&["--workers", "1"], &[]);
    assert_eq!(worker_threads(s.child.id(), 1), Some(1));
    assert_eq!(kept_history(&s.base), 9, "a one-thread server serves");
    let s = start(&[], &[("HERALD_WORKERS", "3")]);
    assert_eq!(worker_threads(s.child.id(), 3), Some(3));
    let dir = std::env::temp_dir().join(format!("herald-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, "workers = 2\n").unwrap();
    let s = start(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(worker_threads(s.child.id(), 2), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn subscribe_command_on_every_transport() {
    let s = start(&[], &[]);
    for (i, transport) in ["sse", "ws", "poll"].into_iter().enumerate() {
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
                &s.base,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Publishes before the subscription are not "from now": wait until
        // the server holds its connection and watches its topic (this
        // transport's topic is the test's `i + 1`-th).
        let gauge = format!("herald_connections{{transport=\"{transport}\"}}");
        process::wait_until("the subscriber", Duration::from_secs(10), || {
            let text = process::metrics_text(s.addr);
            process::sample(&text, &gauge).is_some_and(|n| n >= 1.0)
                && process::sample(&text, "herald_topics").is_some_and(|n| n > i as f64)
        });
        publish(&s.base, &topic, r#"{"n":1}"#, &["--event", "tick"]);
        publish(&s.base, &topic, "plain text", &[]);
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
    let mut s = start(&[], &[]);
    let mut sub = Command::new(BIN)
        .args(["subscribe", "bye", "--server", &s.base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    process::wait_until("the subscriber's stream", Duration::from_secs(10), || {
        s.metric("herald_connections{transport=\"sse\"}") == Some(1.0)
    });
    let t = Instant::now();
    assert!(s.sigterm(STOP).success());
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
