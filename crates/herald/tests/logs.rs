//! Tokens never reach the logs: a real `herald serve` at debug level, a
//! token in the query string, and a look at everything it wrote.

mod process;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use process::{ServeProcess, BIN};

/// How long the server has to stop, and its log to show a line.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn query_tokens_and_cookies_are_not_logged() {
    let secret = "log-test-secret-0123456789abcdef";
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--jwt-secret",
        secret,
    ])
    .env("HERALD_LOG", "debug")
    .stderr(Stdio::piped());
    let mut server = ServeProcess::spawn(cmd);
    let log = server.capture_stderr();
    let addr = server.addr;
    let token = String::from_utf8(
        Command::new(BIN)
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
        let mut s = std::net::TcpStream::connect(addr).unwrap();
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
    // The access log of the first request, before the server stops (its
    // absence still fails the assertion below).
    log.wait_for("token=[redacted]", WAIT);
    server.sigterm(WAIT);
    let logs = log.into_text();
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

/// The LLM upstream's API key goes to the upstream and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_api_key_is_not_logged() {
    let key = "sk-live-key-that-must-never-be-logged-42";
    let model = herald_llm::offline::OfflineModel {
        token_delay: Duration::from_millis(5),
        api_key: Some(key.into()),
        ..Default::default()
    };
    let upstream = herald_llm::offline::spawn(model).await.unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--llm-upstream",
        &upstream,
    ])
    .env("HERALD_LLM_API_KEY", key)
    .env("HERALD_LOG", "debug")
    .stderr(Stdio::piped());
    let mut server = ServeProcess::spawn(cmd);
    let log = server.capture_stderr();
    let client = server.client.clone();
    let (st, v) = {
        let r = client
            .request(
                http::Method::POST,
                "/v1/llm/chat",
                &[("content-type", "application/json")],
                serde_json::json!({"messages": [{"role": "user", "content": "hi [tokens:8]"}]})
                    .to_string()
                    .into(),
            )
            .await
            .unwrap();
        use http_body_util::BodyExt;
        let st = r.status();
        (st, r.into_body().collect().await.unwrap().to_bytes())
    };
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
    let mut stream = client
        .sse(&[v["topic"].as_str().unwrap()], v["cursor"].as_str())
        .await
        .unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next_event())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!e.data.contains(key));
        if e.event == "done" {
            break;
        }
        assert_eq!(e.event, "token", "the upstream accepted the key: {e:?}");
    }
    server.sigterm(WAIT);
    let logs = log.into_text();
    assert!(logs.contains("LLM relay"), "{logs}");
    assert!(!logs.contains(key), "the API key reached the logs:\n{logs}");
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .env("HERALD_LLM_API_KEY", key)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(key));
}
