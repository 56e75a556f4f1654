//! The OpenAI-compatible endpoint: chunks recorded as a stream, the official
//! Python SDK, multi-line data and CRLF.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_endpoint_streams_chunks_and_records_the_stream() {
    let s = start().await;
    let prompt = "compat [tokens:30]";
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            json!({"model": "herald-offline", "stream": true, "messages": [{"role": "user", "content": prompt}]}).to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let topic = r.headers()["x-herald-topic"].to_str().unwrap().to_owned();
    let cursor = r.headers()["x-herald-cursor"].to_str().unwrap().to_owned();
    assert!(topic.ends_with(r.headers()["x-herald-stream-id"].to_str().unwrap()));
    use http_body_util::BodyExt;
    let raw = r.into_body().collect().await.unwrap().to_bytes();
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    // Exactly the OpenAI framing: `data: {chunk}` blocks, then `data: [DONE]`.
    let blocks: Vec<&str> = raw.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert_eq!(*blocks.last().unwrap(), "data: [DONE]");
    let mut text = String::new();
    for b in &blocks[..blocks.len() - 1] {
        let payload = b.strip_prefix("data: ").unwrap_or_else(|| panic!("{b:?}"));
        let v: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    let want = tokens_for(prompt, 30).concat();
    assert_eq!(text, want);
    // The same answer, resumable from the topic.
    let mut sub = Sub::open(&s.client, Kind::Ws, &[&topic], Some(&cursor))
        .await
        .unwrap();
    assert_eq!(read_to_end(&mut sub).await.0, want);
    // Non-streaming requests get one chat.completion.
    let (st, v, _) = post(
        &s.client,
        "/v1/chat/completions",
        json!({"stream": false, "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Bad requests are refused with OpenAI-shaped errors.
    let (st, v, _) = post(&s.client, "/v1/chat/completions", json!({"model": "m"})).await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
}

/// The official `openai` Python SDK (installed by scripts/test.sh) streams
/// through Herald's OpenAI-compatible endpoint and reassembles the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_streams_through_herald() {
    let s = start().await;
    // Chunks spread over several `data:` lines, and CRLF in the answer.
    let prompt = "python sdk [tokens:45] [multiline] [crlf]";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_stream.py");
    let base = format!("{}/v1", s.client.base());
    let out = tokio::process::Command::new("python3")
        .args([script, &base, prompt])
        .output()
        .await
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the openai SDK run failed (scripts/test.sh installs it with pip):\n{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (text, rest) = stdout.split_once("\n---\n").unwrap();
    let want = tokens_for(prompt, 45).concat().replace('\n', "\r\n");
    assert!(want.contains("\r\n"));
    assert_eq!(text, want);
    let mut lines = rest.lines();
    assert_eq!(lines.next(), Some("stop"));
    assert!(lines.next().is_some_and(|id| id.len() > 10), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_data_and_crlf_survive_the_openai_compatible_stream() {
    let s = start().await;
    // The upstream spreads each chunk's JSON over several `data:` lines,
    // and the answer holds CRLF line breaks.
    let prompt = "lines [tokens:40] [multiline] [crlf]";
    let want = tokens_for(prompt, 40).concat().replace('\n', "\r\n");
    assert!(want.contains("\r\n"));
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            json!({"stream": true, "messages": [{"role": "user", "content": prompt}]})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let topic = r.headers()["x-herald-topic"].to_str().unwrap().to_owned();
    let cursor = r.headers()["x-herald-cursor"].to_str().unwrap().to_owned();
    use http_body_util::BodyExt;
    let raw = r.into_body().collect().await.unwrap().to_bytes();
    // Every line is a `data:` field, a comment or the blank line ending an event.
    let body = std::str::from_utf8(&raw).unwrap();
    for line in body.split('\n') {
        assert!(
            line.is_empty() || line.starts_with("data: ") || line.starts_with(':'),
            "not an event-stream line: {line:?}"
        );
    }
    // The WHATWG parser joins each event's lines back into the chunk's JSON.
    let mut parser = herald_client::SseParser::new();
    let (mut text, mut multi_line, mut done) = (String::new(), 0, false);
    for item in parser.feed(&raw) {
        let herald_client::SseItem::Event(e) = item else {
            continue;
        };
        if e.data == "[DONE]" {
            done = true;
            continue;
        }
        multi_line += usize::from(e.data.contains('\n'));
        let v: Value = serde_json::from_str(&e.data).unwrap_or_else(|e2| panic!("{e2}: {e:?}"));
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(done);
    assert!(multi_line >= 40, "{multi_line} multi-line events");
    assert_eq!(text, want);
    // The recorded stream holds the same text, CRLF included, on every transport.
    for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
        let mut sub = Sub::open(&s.client, kind, &[&topic], Some(&cursor))
            .await
            .unwrap();
        assert_eq!(read_to_end(&mut sub).await.0, want, "{kind:?}");
    }
}
