//! Tokens never reach the logs: a real `herald serve` at debug level, a
//! token in the query string, and a look at everything it wrote.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn query_tokens_and_cookies_are_not_logged() {
    let secret = "log-test-secret-0123456789abcdef";
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "memory",
            "--jwt-secret",
            secret,
        ])
        .env("HERALD_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("herald listening on http://")
        .unwrap()
        .to_owned();
    let token = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "token",
                "--jwt-secret",
                secret,
                "--sub",
                "alice",
                "--subscribe",
                "users/{sub}/**",
                "--ttl",
                "2m",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(token.len() > 40);
    let bogus = "bogus-token-that-must-not-appear-in-logs";
    let requests = [
        format!("GET /v1/poll?topic=users/alice/x&timeout=0&token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/poll?topic=users/alice/x&timeout=0&token={bogus} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/poll?topic=users/alice/x&timeout=0 HTTP/1.1\r\nHost: x\r\nCookie: herald_token={bogus}\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/poll?topic=users/alice/x&timeout=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bogus}\r\nConnection: close\r\n\r\n"),
    ];
    let mut statuses = Vec::new();
    for r in &requests {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(&mut s, r.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            !out.contains(bogus) && !out.contains(&token),
            "a token was echoed: {out}"
        );
        statuses.push(out[9..12].to_owned());
    }
    assert_eq!(statuses, ["200", "401", "401", "401"]);
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child.wait().unwrap();
    assert!(
        logs.contains("token=[redacted]"),
        "the access log should show the redacted query:\n{logs}"
    );
    assert!(!logs.contains(&token), "the JWT reached the logs:\n{logs}");
    assert!(!logs.contains(bogus), "a token reached the logs:\n{logs}");
    assert!(
        !logs.contains(secret),
        "the secret reached the logs:\n{logs}"
    );
}
