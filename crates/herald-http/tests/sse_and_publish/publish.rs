//! The publish API: idempotency, batches, every error status, health,
//! readiness and metrics.

use super::*;

#[tokio::test]
async fn idempotent_publish() {
    let s = TestServer::start().await;
    let mut stream = s.client.sse(&["idem"], None).await.unwrap();
    let body = json!({"topic": "idem", "data": "once", "id": "order-7-shipped"}).to_string();
    let (st1, a) = s
        .client
        .publish_raw(body.clone(), "application/json")
        .await
        .unwrap();
    let (st2, b) = s
        .client
        .publish_raw(body.clone(), "application/json")
        .await
        .unwrap();
    assert_eq!((st1.as_u16(), st2.as_u16()), (200, 200));
    assert_eq!(a["id"], b["id"]);
    // Concurrent retries with the same id store one event.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = s.client.clone();
            tokio::spawn(async move {
                let body = json!({"topic": "idem", "data": "burst", "id": "burst-1"}).to_string();
                c.publish_raw(body, "application/json").await.unwrap().1["id"].clone()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // A batch repeating a known id stores only the new event.
    let batch = json!({"events": [
        {"topic": "idem", "data": "once", "id": "order-7-shipped"},
        {"topic": "idem", "data": "new"}
    ]});
    let (st, v) = s
        .client
        .publish_raw(batch.to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 200);
    assert_eq!(v["ids"][0], a["id"]);
    let got: Vec<String> = vec![
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
    ];
    assert_eq!(got, ["once", "burst", "new"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next_event())
            .await
            .is_err()
    );
    // The same id on another topic is another event.
    let other = json!({"topic": "idem2", "data": "x", "id": "order-7-shipped"}).to_string();
    let (_, c) = s
        .client
        .publish_raw(other, "application/json")
        .await
        .unwrap();
    assert_ne!(c["id"], a["id"]);
}

#[tokio::test]
async fn batch_publish() {
    let s = TestServer::start().await;
    let mut stream = s.client.sse(&["b1", "b2"], None).await.unwrap();
    let batch = json!({"events": [
        {"topic": "b1", "data": 1},
        {"topic": "b2", "data": 2, "event": "n"},
        {"topic": "b1", "data": 3}
    ]});
    let (st, v) = s
        .client
        .publish_raw(batch.to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 200);
    assert_eq!(v["ids"].as_array().unwrap().len(), 3);
    let got: Vec<String> = vec![
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
    ];
    assert_eq!(got, ["1", "2", "3"]);
}

#[tokio::test]
async fn every_error_status() {
    let hub = HubConfig {
        max_data_bytes: 100,
        max_batch: 3,
        ..HubConfig::default()
    };
    let http = HttpConfig {
        max_body_bytes: 1000,
        ..quick_http()
    };
    let s = TestServer::start_with(hub, http).await;
    let c = &s.client;
    let json_ct = "application/json";
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("not json", "{".into(), json_ct, 400, "invalid_json"),
        (
            "no topic",
            r#"{"data":1}"#.into(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "no data",
            r#"{"topic":"a"}"#.into(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "empty topic",
            r#"{"topic":"","data":1}"#.into(),
            json_ct,
            400,
            "invalid_topic",
        ),
        (
            "control char",
            "{\"topic\":\"a\\u0007\",\"data\":1}".into(),
            json_ct,
            400,
            "invalid_topic",
        ),
        (
            "long topic",
            format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(1025)),
            json_ct,
            413,
            "too_large",
        ),
        (
            "reserved name",
            r#"{"topic":"a","data":1,"event":"herald.gap"}"#.into(),
            json_ct,
            400,
            "invalid_event",
        ),
        (
            "newline name",
            r#"{"topic":"a","data":1,"event":"a\nb"}"#.into(),
            json_ct,
            400,
            "invalid_event",
        ),
        (
            "unknown field",
            r#"{"topic":"a","data":1,"evnet":"x"}"#.into(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "empty batch",
            r#"{"events":[]}"#.into(),
            json_ct,
            400,
            "invalid_batch",
        ),
        (
            "big batch",
            format!(
                r#"{{"events":[{}]}}"#,
                [r#"{"topic":"a","data":1}"#; 4].join(",")
            ),
            json_ct,
            400,
            "invalid_batch",
        ),
        (
            "data too large",
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(200)),
            json_ct,
            413,
            "too_large",
        ),
        (
            "body too large",
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(2000)),
            json_ct,
            413,
            "too_large",
        ),
        (
            "wrong type",
            r#"{"topic":"a","data":1}"#.into(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, body, ct, status, code) in cases {
        let (st, v) = c.publish_raw(body, ct).await.unwrap();
        assert_eq!(st.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // Nothing of the refused publishes was stored.
    assert_eq!(
        s.hub
            .metrics()
            .events_published
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Routes and methods.
    let get = |path: &'static str| async move {
        let r = c
            .request(http::Method::GET, path, &[], bytes::Bytes::new())
            .await
            .unwrap();
        let st = r.status().as_u16();
        use http_body_util::BodyExt;
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (
            st,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    assert_eq!(get("/nope").await.0, 404);
    assert_eq!(get("/nope").await.1["error"]["code"], "not_found");
    assert_eq!(get("/v1/publish").await.0, 405);
    assert_eq!(get("/v1/sse").await.0, 400);
    assert_eq!(get("/v1/sse?topic=").await.0, 400);
    assert_eq!(
        get("/v1/sse?topic=a&last_event_id=garbage").await.1["error"]["code"],
        "invalid_cursor"
    );
    assert_eq!(get("/v1/poll?topic=a&cursor=zz").await.0, 400);
    assert_eq!(get("/v1/poll?topic=a&timeout=soon").await.0, 400);
}

#[tokio::test]
async fn long_topic_is_refused_as_invalid_topic_when_body_allows() {
    let s = TestServer::start().await;
    let body = format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(1025));
    let (st, v) = s
        .client
        .publish_raw(body, "application/json")
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 400);
    assert_eq!(v["error"]["code"], "invalid_topic");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start().await;
    let c = &s.client;
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200)] {
        let r = c
            .request(http::Method::GET, path, &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
    let _stream = c.sse(&["m"], None).await.unwrap();
    s.publish("m", json!(1), None).await;
    eventually("a delivery", || {
        s.hub
            .metrics()
            .events_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    let r = c
        .request(http::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .unwrap();
    use http_body_util::BodyExt;
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for needle in [
        "herald_events_published_total 1",
        "herald_events_delivered_total 1",
        "herald_connections{transport=\"sse\"} 1",
        "herald_slow_consumer_disconnects_total 0",
        "herald_publish_duration_seconds_count 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
