//! Cursor and name input, and refusals an `EventSource` understands: a
//! cursor never silently means "from now", temporary refusals are streams that
//! say why, `retry:` is jittered, a shutdown spreads stream ends.

use super::*;

// ---- Cursor and name input -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_never_silently_means_from_now() {
    let s = start(&["--public", "t/**"]);
    let first = publish(&s, "t/a", json!(1)).await;
    let second = publish(&s, "t/a", json!(2)).await;
    let _third = publish(&s, "t/a", json!(3)).await;
    let addr = s.addr;
    let get = move |path: String, extra: Vec<u8>| {
        tokio::task::spawn_blocking(move || raw_get(addr, &path, &extra, Duration::from_secs(2)))
    };
    // A valid cursor followed by a non-ASCII byte in Last-Event-ID: 400,
    // not "absent" (and not the URL's parameter instead).
    let mut extra = format!("Last-Event-ID: {first}").into_bytes();
    extra.push(0xe9);
    extra.extend_from_slice(b"\r\n");
    let (st, text) = get(format!("/v1/sse?topic=t/a&last_event_id={second}"), extra)
        .await
        .unwrap();
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("invalid_cursor"), "{text}");
    // Garbage in any source: 400 invalid_cursor.
    for path in [
        "/v1/sse?topic=t/a&last_event_id=zzz".to_string(),
        "/v1/poll?topic=t/a&timeout=0&cursor=zzz".to_string(),
    ] {
        let (st, text) = get(path.clone(), vec![]).await.unwrap();
        assert_eq!(st, 400, "{path}: {text}");
        assert!(text.contains("invalid_cursor"), "{text}");
    }
    let mut ws = s.client.ws().await.unwrap();
    ws.send_json(&json!({"type": "subscribe", "topic": "t/a", "since": "zzz"}))
        .await
        .unwrap();
    let v = ws.next_json().await.unwrap().unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("invalid_cursor")),
        "{v}"
    );
    // Repeated parameters: the last value wins (a polyfill that appends the
    // newest id must not replay): resuming after `second` gives 3 only.
    let (st, text) = get(
        format!("/v1/poll?topic=t/a&timeout=0&cursor={first}&cursor={second}"),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let data: Vec<_> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(3)]);
    // A topic whose percent-decoding is not UTF-8: 400, never U+FFFD.
    for path in ["/v1/sse?topic=t/a%ff", "/v1/poll?topic=t/a%ff&timeout=0"] {
        let (st, text) = get(path.to_string(), vec![]).await.unwrap();
        assert_eq!(st, 400, "{path}: {text}");
        assert!(text.contains("invalid_topic"), "{text}");
    }
}

// ---- Refusals an EventSource understands -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_refusals_of_sse_are_streams_that_say_why() {
    let s = start(&["--public", "t/**", "--max-connections-per-ip", "2"]);
    let _a = s.client.sse(&["t/a"], None).await.unwrap();
    let _b = s.client.sse(&["t/a"], None).await.unwrap();
    let addr = s.addr;
    let (st, text) = tokio::task::spawn_blocking(move || {
        raw_get(addr, "/v1/sse?topic=t/a", b"", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(st, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    let retry: u64 = text[text.find("retry: ").unwrap() + 7..]
        .split('\n')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The Retry-After (1 s) with ±25 % jitter, never below the usual 2 s.
    assert!((1500..=2500).contains(&retry), "{retry}");
    assert!(
        text.contains("event: herald.disconnect\ndata: {\"reason\":\"rate_limited\"}\n\n"),
        "{text}"
    );
    // 401 stays 401: retrying cannot help.
    let (st, _) = tokio::task::spawn_blocking(move || {
        raw_get(addr, "/v1/sse?topic=users/x", b"", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(st, 401);
    // Other endpoints keep 429 with Retry-After.
    let (st, text) = tokio::task::spawn_blocking(move || {
        raw_get(
            addr,
            "/v1/poll?topic=t/a&timeout=0",
            b"",
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert_eq!(st, 429, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_jittered_per_connection() {
    let s = start(&["--public", "t/**"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut stream = s.client.sse(&["t/j"], None).await.unwrap();
        loop {
            match stream.next_item().await.unwrap().unwrap() {
                herald_client::SseItem::Retry(ms) => {
                    assert!((1500..=2500).contains(&ms), "{ms}");
                    seen.insert(ms);
                    break;
                }
                _ => continue,
            }
        }
    }
    assert!(
        seen.len() >= 5,
        "20 streams share too few retry values: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_spreads_stream_ends_over_the_drain_window() {
    let s = start(&["--public", "t/**", "--shutdown-drain", "2s"]);
    let mut ends = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut stream = s.client.sse(&["t/d"], None).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            while let Ok(Ok(Some(e))) = tokio::time::timeout(WAIT, stream.next_event()).await {
                last = Some(e);
            }
            (Instant::now(), last)
        }));
    }
    let mut ws = s.client.ws().await.unwrap();
    ws.subscribe("t/d", None).await.unwrap();
    assert_eq!(ws.next_json().await.unwrap().unwrap()["type"], "subscribed");
    let stopped = Instant::now();
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for t in tasks {
        let (at, last) = t.await.unwrap();
        let last = last.expect("a disconnect event");
        assert_eq!(
            (last.event.as_str(), last.data.as_str()),
            ("herald.disconnect", r#"{"reason":"shutdown"}"#)
        );
        ends.push(at.duration_since(stopped));
    }
    let v = tokio::time::timeout(WAIT, ws.next_of_type("close"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v["code"], 1000);
    ends.sort();
    let spread = *ends.last().unwrap() - ends[0];
    assert!(
        spread >= Duration::from_millis(500),
        "30 streams ended within {spread:?}: {ends:?}"
    );
    assert!(*ends.last().unwrap() <= Duration::from_secs(5), "{ends:?}");
}
