//! An upstream that echoes the API key: the key reaches no answer, event or
//! log line.

use super::*;

/// The upstream API key of the leak test: what must appear nowhere.
const LEAK_KEY: &str = "sk-leaktest-Key_0123456789abcdefXYZ";

fn leaks(text: &str) -> bool {
    text.contains(LEAK_KEY) || text.contains("Key_0123456789abcdef")
}

/// A fake OpenAI-compatible upstream (exact wire format) that echoes the
/// request's credentials back, as misconfigured gateways do: `[echo-status]`
/// in a 401 JSON error, `[echo-text]` in a 502 text body, `[echo-stream]`
/// in an error event after a first chunk. Counts requests that carried the
/// key, to show the relay did send it. Returns its base URL.
async fn echoing_upstream(with_key: Arc<std::sync::atomic::AtomicUsize>) -> String {
    use axum::response::IntoResponse;
    async fn chat(
        axum::extract::State(with_key): axum::extract::State<Arc<std::sync::atomic::AtomicUsize>>,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> axum::response::Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if auth == format!("Bearer {LEAK_KEY}") {
            with_key.fetch_add(1, Ordering::AcqRel);
        }
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let prompt = req["messages"][0]["content"].as_str().unwrap_or("");
        if prompt.contains("[echo-status]") {
            let err = json!({"error": {
                "message": format!("Invalid Authorization header: {auth}"),
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            return (http::StatusCode::UNAUTHORIZED, axum::Json(err)).into_response();
        }
        if prompt.contains("[echo-text]") {
            let text = format!(
                "proxy error; the request was:\r\nauthorization: {auth}\r\nx-api-key: {LEAK_KEY}\r\napi-key={LEAK_KEY}\r\n"
            );
            return (http::StatusCode::BAD_GATEWAY, text).into_response();
        }
        let chunk = json!({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1,
            "model": "echo", "system_fingerprint": null,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"},
                         "logprobs": null, "finish_reason": null}]});
        let err = json!({"error": {
            "message": format!("backend refused the request with headers {{\"Authorization\": \"{auth}\", \"api-key\": \"{LEAK_KEY}\"}}"),
            "type": "server_error", "param": null, "code": null}});
        (
            [("content-type", "text/event-stream")],
            format!("data: {chunk}\n\ndata: {err}\n\n"),
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(with_key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

/// An upstream echoing the API key: the key reaches no HTTP answer, no event
/// of the generation on any transport, and no line of the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_echoing_the_api_key_leaks_it_nowhere() {
    let with_key = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base = echoing_upstream(with_key.clone()).await;
    let mut cmd = std::process::Command::new(process::BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--llm-upstream",
        &base,
    ])
    .env("HERALD_LLM_API_KEY", LEAK_KEY)
    .env("HERALD_LOG", "debug")
    .stderr(std::process::Stdio::piped());
    let mut server = process::ServeProcess::spawn(cmd);
    let logs = server.capture_stderr();
    let client = server.client.clone();
    for (prompt, status) in [
        ("[echo-status]", 401),
        ("[echo-text]", 502),
        ("[echo-stream]", 200),
    ] {
        let messages = json!([{"role": "user", "content": prompt}]);
        // The OpenAI-compatible endpoint, streaming and not.
        for stream in [true, false] {
            let r = client
                .request(
                    http::Method::POST,
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    json!({"stream": stream, "messages": messages})
                        .to_string()
                        .into(),
                )
                .await
                .unwrap();
            let got = r.status().as_u16();
            let headers = format!("{:?}", r.headers());
            use http_body_util::BodyExt;
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(!leaks(&body) && !leaks(&headers), "{prompt}: {body}");
            if stream || status != 200 {
                assert_eq!(got, status, "{prompt} stream={stream}: {body}");
            } else {
                // The error came mid-stream: a non-streaming answer is a 502.
                assert_eq!(got, 502, "{prompt}: {body}");
            }
            assert!(body.contains("[redacted]"), "{prompt}: {body}");
        }
        // The relay endpoint: the generation's events on every transport.
        let started = generate(&client, prompt).await;
        let topic = started["topic"].as_str().unwrap();
        let cursor = started["cursor"].as_str().unwrap();
        for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
            let mut sub = Sub::open(&client, kind, &[topic], Some(cursor))
                .await
                .unwrap();
            let (text, end) = read_to_end(&mut sub).await;
            assert_eq!(end.event, "error", "{prompt} {kind:?}");
            assert!(
                !leaks(&text) && !leaks(&end.data),
                "{prompt} {kind:?}: {}",
                end.data
            );
            assert!(end.data.contains("[redacted]"), "{}", end.data);
        }
    }
    assert!(
        with_key.load(Ordering::Acquire) >= 9,
        "the relay did not send its key upstream"
    );
    server.signal("TERM");
    let _ = server.child.wait();
    let logs = logs.into_text();
    assert!(logs.contains("LLM relay"), "no logs captured: {logs}");
    assert!(!leaks(&logs), "the key reached the log:\n{logs}");
}
